"""`recguard check`: the proxy's own parser and guard, offline, with a report a front-end developer can act on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from model.errors import RecguardError
from proxy.cli import contract as contract_commands
from proxy.guard.checks import Guard
from proxy.guard.report import (
    BAD_REQUEST,
    CLEAN,
    CONTRACT,
    FALLBACK,
    REJECTED,
    check_lines,
)
from proxy.settings import Settings
from tests.harness.proxy import merged_names, renamed_email


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="recguard")
    contract_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def write_jsonl(path: Path, bodies: list) -> Path:
    path.write_text("".join((body if isinstance(body, str) else json.dumps(body)) + "\n" for body in bodies))
    return path


def test_clean_held_out_traffic_passes(tiny_bundle, tiny_holdout, tmp_path, capsys):
    bodies = write_jsonl(tmp_path / "clean.jsonl", tiny_holdout)
    assert run("check", "--bundle", str(tiny_bundle), str(bodies)) == 0
    out = capsys.readouterr().out
    assert f"{len(tiny_holdout)} requests" in out
    assert out.rstrip().endswith("PASS")


def test_the_redesign_fails_with_line_field_kind_and_what_training_saw(tiny_bundle, tiny_holdout, loaded_bundle,
                                                                         tmp_path, capsys):
    clean = tiny_holdout[0]
    bodies = write_jsonl(tmp_path / "redesign.jsonl", [
        clean,                                   # line 1
        renamed_email(clean),                    # line 2
        merged_names(clean),                     # line 3
        {**clean, "weight_kg": 400.0},           # line 4
        {**clean, "country": "MX"},              # line 5
        "",                                      # line 6: blank, skipped
        '{"email": oops',                        # line 7: not JSON
    ])
    assert run("check", "--bundle", str(tiny_bundle), str(bodies)) == 1
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:3]) for line in out.splitlines() if line[:1].isdigit()}
    assert {("2", "email", "missing_field"), ("2", "user_email", "unexpected_field"), ("2", "user_email", "suspected_rename"),
            ("3", "first_name", "missing_field"), ("3", "last_name", "missing_field"), ("3", "name", "unexpected_field"),
            ("3", "name", "suspected_merge"),
            ("4", "weight_kg", "out_of_range"), ("5", "country", "unknown_category"),
            ("7", "-", BAD_REQUEST)} == rows
    weight = loaded_bundle.profile["fields"]["weight_kg"]
    assert f"number in [{weight['min']:g}, {weight['max']:g}]" in out
    assert "training fields absent here: email" in out
    assert "training fields absent here: first_name, last_name" in out
    countries = sorted(loaded_bundle.profile["fields"]["country"]["domain"])
    assert f"{len(countries)} values: {', '.join(countries[:3])}" in out
    assert "not valid JSON" in out
    assert "FAIL" in out
    assert clean["email"] not in out and clean["first_name"] not in out


def test_outcomes_follow_the_proxy_routing(loaded_bundle, tiny_holdout):
    settings = Settings.from_env({}, bundle=loaded_bundle.path)
    clean = tiny_holdout[0]
    lines = [json.dumps(body).encode() for body in (
        clean, renamed_email(clean), {**clean, "country": "MX"}, {**clean, "history": ["item_99999"]})] + [b"[]"]
    report = check_lines(lines, Guard.from_bundle(loaded_bundle, settings.guard), loaded_bundle.profile, settings)
    assert dict(report.outcomes) == {CLEAN: 2, CONTRACT: 1, FALLBACK: 1, REJECTED: 1}
    assert not report.ok
    assert [(f.line, f.kind) for f in report.findings if f.line == 4] == [(4, "unknown_item")]


def test_an_unknown_history_item_alone_is_reported_but_passes(tiny_bundle, tiny_holdout, tmp_path, capsys):
    bodies = write_jsonl(tmp_path / "new_items.jsonl", [{**tiny_holdout[0], "history": ["item_99999"]}])
    assert run("check", "--bundle", str(tiny_bundle), str(bodies)) == 0
    assert "unknown_item" in capsys.readouterr().out


def test_check_finds_what_the_proxy_reports(client, loaded_bundle, tiny_holdout):
    """Same guard, same settings: per line, the proxy's anomalies and source match the check's findings."""
    settings = Settings.from_env({}, bundle=loaded_bundle.path)
    bodies = [tiny_holdout[2], renamed_email(tiny_holdout[3]), merged_names(tiny_holdout[4]),
              {**tiny_holdout[5], "weight_kg": 400.0}, {**tiny_holdout[6], "age": "41"}, {**tiny_holdout[7], "extra": True}]
    report = check_lines([json.dumps(body).encode() for body in bodies], Guard.from_bundle(loaded_bundle, settings.guard),
                         loaded_bundle.profile, settings)
    for number, body in enumerate(bodies, start=1):
        answer = client.post("/predict", json=body).get_json()
        assert {(a["field"], a["kind"], a["detail"]) for a in answer["anomalies"]} == \
            {(f.field, f.kind, f.detail) for f in report.findings if f.line == number}
    routed = sum(client.post("/predict", json=body).get_json()["source"] == "fallback" for body in bodies)
    assert routed == report.outcomes[FALLBACK]


def test_settings_apply_as_in_the_proxy(tiny_bundle, tiny_holdout, loaded_bundle, tmp_path, monkeypatch):
    weight = loaded_bundle.profile["fields"]["weight_kg"]
    bodies = write_jsonl(tmp_path / "edge.jsonl", [{**tiny_holdout[0], "weight_kg": weight["max"] + 0.5}])
    monkeypatch.setenv("RECGUARD_RANGE_TOLERANCE", "0.05")
    assert run("check", "--bundle", str(tiny_bundle), str(bodies)) == 0
    monkeypatch.setenv("RECGUARD_RANGE_TOLERANCE", "0")
    assert run("check", "--bundle", str(tiny_bundle), str(bodies)) == 1


def test_long_reports_are_cut_but_counted(tiny_bundle, tiny_holdout, tmp_path, capsys):
    bodies = write_jsonl(tmp_path / "many.jsonl", [{**body, "country": "MX"} for body in tiny_holdout[:30]])
    assert run("check", "--bundle", str(tiny_bundle), "--show", "5", str(bodies)) == 1
    out = capsys.readouterr().out
    assert "25 more findings" in out
    assert "routed to the popularity fallback:             30" in out


@pytest.mark.parametrize("bundle_exists, file_exists, message", [
    (True, False, "no such file"),
    (False, True, "manifest.json"),
])
def test_user_errors_are_clear(tiny_bundle, tmp_path, bundle_exists, file_exists, message):
    bodies = write_jsonl(tmp_path / "bodies.jsonl", [{}]) if file_exists else tmp_path / "missing.jsonl"
    bundle = tiny_bundle if bundle_exists else tmp_path / "no-bundle"
    with pytest.raises(RecguardError, match=message):
        run("check", "--bundle", str(bundle), str(bodies))
