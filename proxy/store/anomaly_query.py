"""Answers "what went wrong since ...": reads the per-minute counter buckets back from Redis.

Resolution is the minute: a query covers every bucket that overlaps [since, until], so "15m"
may include up to a minute more than fifteen. Range totals (requests, anomalous, fallback) are
never filtered; `field` and `kind` restrict only the anomaly counts. Only the known fields are
read, so the writers' `batch:` markers and other counters (drift sums) never leak into a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta, timezone
from typing import Any

import redis

from proxy.store.client import command, execute
from proxy.store.counters import bucket_key
from proxy.words import OTHER

MAX_RANGE = timedelta(days=7)
"""The longest range one query reads: the buckets' default TTL, 10 081 keys in one pipeline."""

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_ANOMALY_PREFIX = "anomaly:"
TOP_NAMES = 20
"""Field names a report lists by count, in its totals and in each minute; the rest are added up
under `_other` (what a client invents must not make the report unreadable or huge)."""


@dataclass
class AnomalyReport:
    """Counts over a time range, totals and per minute."""

    since: datetime
    until: datetime
    requests: int
    anomalous_requests: int
    fallback_requests: int
    by_field: dict[str, int]
    by_kind: dict[str, int]
    by_field_kind: dict[str, dict[str, int]]
    series: list[dict]
    """Per minute, oldest first: {"minute", "requests", "fallback", "anomalous", "anomalies": {"field:kind": n}}."""
    field: str | None = None
    kind: str | None = None
    alarms: list[dict] = dataclass_field(default_factory=list)
    """Active drift alarms; the caller fills them in."""

    def to_json(self) -> dict[str, Any]:
        """The body of GET /anomalies."""
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "filter": {"field": self.field, "kind": self.kind},
            "requests": self.requests,
            "anomalous_requests": self.anomalous_requests,
            "fallback_requests": self.fallback_requests,
            "anomaly_rate": _rate(self.anomalous_requests, self.requests),
            "fallback_rate": _rate(self.fallback_requests, self.requests),
            "by_field": self.by_field,
            "by_kind": self.by_kind,
            "by_field_kind": self.by_field_kind,
            "series": self.series,
            "alarms": self.alarms,
        }


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time (UTC) from "90s", "15m", "1h", "2d" (that long before `now`) or ISO-8601
    (a timestamp without a zone is UTC)."""
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    try:
        if duration:
            seconds = int(duration[1]) * _UNIT_SECONDS[duration[2]]
            return _utc(now) - timedelta(seconds=seconds)
        return _utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise ValueError(
            f"invalid time {text!r}: use a duration like 90s, 15m, 1h, 2d or an ISO-8601 timestamp "
            "like 2026-11-28T12:00:00Z") from None


def query_anomalies(
    client: redis.Redis,
    prefix: str,
    since: datetime,
    until: datetime,
    field: str | None = None,
    kind: str | None = None,
) -> AnomalyReport:
    """Sum the minute buckets overlapping [since, until] (one HGETALL per minute, pipelined per node).

    A range longer than MAX_RANGE (the counters' TTL) starts MAX_RANGE before `until`. Raises
    ValueError when since is after until, and redis.RedisError when Redis cannot be read."""
    since, until = _utc(since), _utc(until)
    if since > until:
        raise ValueError(f"since ({_iso(since)}) is after until ({_iso(until)})")
    if until - since > MAX_RANGE:
        # counts older than that have expired: the report covers what exists and says so in `since`
        since = until - MAX_RANGE

    first, last = int(since.timestamp() // 60), int(until.timestamp() // 60)
    buckets = execute(client, [command("HGETALL", bucket_key(prefix, minute)) for minute in range(first, last + 1)])

    requests = anomalous = fallback = 0
    by_kind: dict[str, int] = {}
    by_field_kind: dict[str, dict[str, int]] = {}
    series = []
    for minute, raw in zip(range(first, last + 1), buckets):
        bucket = {_text(name): value for name, value in raw.items()}
        point = {
            "minute": _iso(datetime.fromtimestamp(minute * 60, timezone.utc)),
            "requests": _count(bucket.get("requests")),
            "fallback": _count(bucket.get("source:fallback")),
            "anomalous": _count(bucket.get("anomalous")),
            "anomalies": {},
        }
        for name, value in bucket.items():
            if not name.startswith(_ANOMALY_PREFIX):
                continue
            # kinds never hold ':' while a field name might
            anomaly_field, _, anomaly_kind = name[len(_ANOMALY_PREFIX):].rpartition(":")
            if (field is not None and anomaly_field != field) or (kind is not None and anomaly_kind != kind):
                continue
            count = _count(value)
            point["anomalies"][f"{anomaly_field}:{anomaly_kind}"] = count
            by_kind[anomaly_kind] = by_kind.get(anomaly_kind, 0) + count
            kinds = by_field_kind.setdefault(anomaly_field, {})
            kinds[anomaly_kind] = kinds.get(anomaly_kind, 0) + count
        requests += point["requests"]
        fallback += point["fallback"]
        anomalous += point["anomalous"]
        series.append(point)

    by_field_kind = _top_names(by_field_kind)
    for point in series:
        per_name: dict[str, dict[str, int]] = {}
        for name, count in point["anomalies"].items():
            anomaly_field, _, anomaly_kind = name.rpartition(":")
            per_name.setdefault(anomaly_field, {})[anomaly_kind] = count
        point["anomalies"] = {f"{name}:{kind}": count for name, kinds in _top_names(per_name).items()
                              for kind, count in kinds.items()}
    return AnomalyReport(
        since=since, until=until, requests=requests, anomalous_requests=anomalous, fallback_requests=fallback,
        by_field={name: sum(kinds.values()) for name, kinds in by_field_kind.items()}, by_kind=_descending(by_kind),
        by_field_kind=by_field_kind, series=series, field=field, kind=kind,
    )


def _top_names(groups: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The TOP_NAMES largest groups (by total, then name), the rest merged into `_other`; each
    group's kinds largest first, the groups largest first."""
    ordered = _descending_groups(groups)
    kept = {name: dict(kinds) for name, kinds in ordered[:TOP_NAMES] if name != OTHER}
    rest: dict[str, int] = dict(groups.get(OTHER, {}))
    for name, kinds in ordered[TOP_NAMES:]:
        if name == OTHER:
            continue
        for kind, count in kinds.items():
            rest[kind] = rest.get(kind, 0) + count
    if rest:
        kept[OTHER] = rest
    return {name: _descending(kinds) for name, kinds in _descending_groups(kept)}


def format_table(report: AnomalyReport) -> str:
    """The report as plain text for `recguard anomalies`: totals, rates, then counts by field,
    by kind and by field and kind, largest first."""
    lines = [f"Anomalies from {_iso(report.since)} to {_iso(report.until)}"]
    if report.field is not None or report.kind is not None:
        lines.append(f"filter: field={report.field or '*'} kind={report.kind or '*'}")
    lines += [
        "",
        f"{'requests':<22}{report.requests:>10}",
        f"{'anomalous requests':<22}{report.anomalous_requests:>10}  {_percent(report.anomalous_requests, report.requests)}",
        f"{'served by fallback':<22}{report.fallback_requests:>10}  {_percent(report.fallback_requests, report.requests)}",
    ]
    if not report.by_field_kind:
        lines += ["", "no anomalies in this range"]
    else:
        lines += _section(["field"], [((name,), count) for name, count in report.by_field.items()])
        lines += _section(["kind"], [((name,), count) for name, count in report.by_kind.items()])
        pairs = [((name, kind), count) for name, kinds in report.by_field_kind.items() for kind, count in kinds.items()]
        lines += _section(["field", "kind"], sorted(pairs, key=lambda pair: (-pair[1], pair[0])))
    if report.alarms:
        lines += ["", "active drift alarms (traffic of the segment goes to the fallback):"]
        lines += [f"  {alarm['id']}  since {alarm['raised_at']}  {alarm['detail']}" for alarm in report.alarms]
    return "\n".join(lines) + "\n"


def _section(headers: list[str], rows: list[tuple[tuple[str, ...], int]]) -> list[str]:
    widths = [max([len(header)] + [len(labels[i]) for labels, _ in rows]) for i, header in enumerate(headers)]
    count_width = max([5] + [len(str(count)) for _, count in rows])

    def line(labels: list[str] | tuple[str, ...], count: str) -> str:
        cells = "  ".join(label.ljust(width) for label, width in zip(labels, widths))
        return f"{cells}  {count.rjust(count_width)}"

    return ["", line(headers, "count")] + [line(labels, str(count)) for labels, count in rows]


def _descending(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _descending_groups(groups: dict[str, dict[str, int]]) -> list[tuple[str, dict[str, int]]]:
    return sorted(groups.items(), key=lambda item: (-sum(item[1].values()), item[0]))


def _count(value: str | bytes | None) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        return int(float(value))


def _text(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _percent(part: int, whole: int) -> str:
    return f"({100 * part / whole:.1f}%)" if whole else ""
