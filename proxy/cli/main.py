"""The `recguard` command line: training commands come from proxy.cli.training, serving ones from proxy.cli.serve.

Both command modules import only argparse at import time, so `recguard serve` never loads
training code and `recguard train` never loads Flask.
"""

from __future__ import annotations

import argparse
import sys

from model.errors import RecguardError
from proxy.cli import contract, serve, training


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand with its handler in `handler`."""
    parser = argparse.ArgumentParser(
        prog="recguard",
        description="Guard a recommendation model: train a bundle, serve it behind checks, ask what went wrong.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training.register(sub)
    serve.register(sub)
    contract.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a RecguardError becomes a one-line message and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RecguardError as exc:
        print(f"recguard {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
