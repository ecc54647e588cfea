"""`recguard check`: run a file of request bodies through the proxy's own parser and guard, offline.

Each line of the file is one /predict body, read by the proxy's own `RecguardShape` and checked by
the `Guard` the proxy builds, with the same settings, so a line passes here exactly when the
proxy would answer it from the model without an anomaly. No model runs and no Redis is
needed: it is meant for a front-end team's CI.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from model.bundle import Bundle
from model.errors import RecguardError
from proxy.guard.checks import FieldRule, Guard
from proxy.settings import Settings
from proxy.shapes.recguard import RecguardShape
from proxy.shapes.request import BadRequest, PredictRequest
from proxy.words import (
    MISSING_FIELD,
    NON_FINITE,
    OTHER,
    OUT_OF_RANGE,
    TYPE_MISMATCH,
    UNEXPECTED_FIELD,
    UNKNOWN_CATEGORY,
    UNKNOWN_ITEM,
    Anomaly,
)

BAD_REQUEST = "bad_request"
"""A line the proxy would refuse with a 4xx before any check (not JSON, not an object, bad k or history)."""

# A history item missing from the catalogue is news about the catalogue (items added after
# training), not a mistake of the form: reported, but it does not fail the check.
NOT_A_BREACH = frozenset({UNKNOWN_ITEM})

CLEAN, CONTRACT, FALLBACK, REJECTED = "clean", "contract", "fallback", "rejected"
MAX_DOMAIN_SHOWN = 12


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem on one line, with what training saw of the field."""

    line: int
    field: str
    kind: str
    detail: str
    training: str


@dataclass
class CheckReport:
    """The outcome of every line: counts per outcome and every finding in file order."""

    outcomes: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> bool:
        """True when every line would be served by the model and keeps the contract."""
        return self.outcomes[CLEAN] == self.requests


def check_lines(lines: Iterable[bytes], guard: Guard, profile: Mapping[str, Any], settings: Settings) -> CheckReport:
    """Check each non-blank line as a /predict body; line numbers start at 1."""
    report = CheckReport()
    rules = {rule.name: rule for rule in guard.rules}
    shape = RecguardShape(settings.limits)
    for number, line in enumerate(lines, start=1):
        body = line.rstrip(b"\r\n")
        if not body.strip():
            continue
        try:
            if len(body) > settings.limits.max_body_bytes:
                raise BadRequest(f"body larger than {settings.limits.max_body_bytes} bytes", 413)
            (request,) = shape.parse(body).rows
        except BadRequest as exc:
            report.outcomes[REJECTED] += 1
            report.findings.append(Finding(number, "-", BAD_REQUEST, f"HTTP {exc.status}: {exc}", "a JSON object per line"))
            continue
        anomalies = guard.check(request)
        report.outcomes[_outcome(anomalies)] += 1
        report.findings.extend(Finding(number, a.field, a.kind, a.detail, _training_view(a, request, profile, rules))
                               for a in anomalies)
    return report


def check_file(path: Path, bundle: Bundle, settings: Settings) -> CheckReport:
    """Check a JSONL file of request bodies against `bundle`; RecguardError when it cannot be read."""
    try:
        with open(path, "rb") as lines:
            return check_lines(lines, Guard.from_bundle(bundle, settings.guard), bundle.profile, settings)
    except OSError as exc:
        raise RecguardError(f"cannot read {path}: {exc.strerror or exc}") from None


def _outcome(anomalies: list[Anomaly]) -> str:
    if any(anomaly.routes for anomaly in anomalies):
        return FALLBACK
    if any(anomaly.kind not in NOT_A_BREACH for anomaly in anomalies):
        return CONTRACT
    return CLEAN


def _training_view(anomaly: Anomaly, request: PredictRequest, profile: Mapping[str, Any],
                   rules: Mapping[str, FieldRule]) -> str:
    """What training saw of the anomaly's field, never a raw value of a personal field."""
    if anomaly.kind == UNEXPECTED_FIELD or anomaly.field == OTHER:
        absent = [name for name, rule in rules.items() if rule.required and request.fields.get(name) is None]
        return "not a training field" + (f"; training fields absent here: {', '.join(absent)}" if absent else "")
    if anomaly.kind == UNKNOWN_ITEM:
        catalogue = profile.get("catalogue", {})
        return f"{catalogue.get('count', '?')} catalogue ids like {catalogue.get('item_id_pattern', '?')}"
    spec = profile["fields"].get(anomaly.field)
    rule = rules.get(anomaly.field)
    if spec is None or rule is None:
        return ""
    role = "feature" if rule.feature else spec["role"]
    if anomaly.kind == MISSING_FIELD:
        return f"{spec['type']} ({role}), present in {spec.get('presence', 1.0):.1%} of training rows"
    if anomaly.kind in (OUT_OF_RANGE, NON_FINITE) and rule.train_min is not None:
        return (f"{spec['type']} in [{rule.train_min:g}, {rule.train_max:g}], "
                f"accepted [{rule.low:g}, {rule.high:g}]")
    if anomaly.kind == UNKNOWN_CATEGORY and rule.domain is not None:
        values = sorted(rule.domain)
        shown = ", ".join(values[:MAX_DOMAIN_SHOWN]) + (", ..." if len(values) > MAX_DOMAIN_SHOWN else "")
        return f"{len(values)} values: {shown}"
    if anomaly.kind == TYPE_MISMATCH:
        return f"JSON {spec['type']}"
    return f"{spec['type']} ({role})"


def format_report(report: CheckReport, source: str, *, show: int = 50) -> str:
    """The report as text: the first `show` findings line by line, counts by field and kind, the verdict."""
    lines = [f"recguard check {source}: {report.requests} requests"]
    if report.findings:
        rows = [(str(f.line), f.field, f.kind, f.detail, f.training) for f in report.findings[:show]]
        lines += [""] + _table(("line", "field", "kind", "detail", "training saw"), rows)
        if len(report.findings) > show:
            lines.append(f"... {len(report.findings) - show} more findings (all counted below; --show N lists more)")
        by_pair = Counter((f.field, f.kind) for f in report.findings)
        pairs = sorted(by_pair.items(), key=lambda item: (-item[1], item[0]))
        lines += [""] + _table(("field", "kind", "lines"), [(name, kind, str(count)) for (name, kind), count in pairs])
    outcomes = report.outcomes
    lines += [
        "",
        f"clean (served by the model, contract kept):   {outcomes[CLEAN]}",
        f"contract broken (the model still answers):     {outcomes[CONTRACT]}",
        f"routed to the popularity fallback:             {outcomes[FALLBACK]}",
        f"refused by the proxy (4xx, never checked):     {outcomes[REJECTED]}",
        "",
        "PASS" if report.ok else "FAIL: fix the payloads above, or retrain the model on the new form",
    ]
    return "\n".join(lines) + "\n"


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cells[i]) for cells in [headers, *rows]) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return [line(headers)] + [line(row) for row in rows]
