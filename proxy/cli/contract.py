"""Data-contract subcommands of `recguard`: contract (export the JSON Schema), check (validate payloads offline)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add `contract` and `check` to the `recguard` parser."""
    contract = sub.add_parser(
        "contract", help="write the JSON Schema (draft 2020-12) of a request the guard accepts",
        description="Derive a JSON Schema of a clean /predict body from the bundle's training profile, "
                    "with the guard's tolerances (RECGUARD_RANGE_TOLERANCE, RECGUARD_REQUIRED_PRESENCE).")
    contract.add_argument("--bundle", required=True, help="bundle directory")
    contract.add_argument("--out", help="file to write (default: standard output)")
    contract.set_defaults(handler=contract_command)

    check = sub.add_parser(
        "check", help="check a JSONL file of request bodies with the proxy's guard; exit 1 on any problem",
        description="Parse and check every line of FILE as the proxy would. Exit 0 when every request would be "
                    "served by the model without an anomaly, 1 when any would go to the fallback, be refused, "
                    "or breaks the contract (a missing or unexpected field).")
    check.add_argument("--bundle", required=True, help="bundle directory")
    check.add_argument("--show", type=int, default=50, metavar="N", help="findings listed line by line (default 50)")
    check.add_argument("file", metavar="FILE.jsonl", help="one JSON request body per line")
    check.set_defaults(handler=check_command)


def contract_command(args: argparse.Namespace) -> int:
    """Print or write the request schema of a bundle."""
    import json
    from pathlib import Path

    from model.bundle import load_bundle
    from model.errors import RecguardError
    from proxy.guard.contract import request_schema
    from proxy.settings import Settings

    settings = Settings.from_env(bundle=args.bundle)
    bundle = load_bundle(settings.server.bundle)
    text = json.dumps(request_schema(bundle.profile, settings, model_version=bundle.model_version), indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RecguardError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Check a JSONL file; exit status 0 when clean, 1 otherwise."""
    from pathlib import Path

    from model.bundle import load_bundle
    from model.errors import RecguardError
    from proxy.guard.report import check_file, format_report
    from proxy.settings import Settings

    path = Path(args.file)
    if not path.is_file():
        raise RecguardError(f"{path}: no such file")
    settings = Settings.from_env(bundle=args.bundle)
    report = check_file(path, load_bundle(settings.server.bundle), settings)
    print(format_report(report, str(path), show=max(args.show, 0)), end="")
    return 0 if report.ok else 1
