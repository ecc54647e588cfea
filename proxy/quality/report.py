"""Live quality over a time range: the quality minute buckets summed per group, with Wilson intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import redis

from proxy.quality.feedback import KINDS, quality_series
from proxy.quality.stats import wilson_interval
from proxy.store.anomaly_query import MAX_RANGE
from proxy.store.client import command, execute

GROUP_KEYS = ("version", "source", "segment")


@dataclass
class Totals:
    """The counts of one group."""

    impressions: int = 0
    feedback: int = 0
    hits: int = 0
    answers_hit: int = 0
    reciprocal_ranks: float = 0.0

    def add(self, kind: str, value: float) -> None:
        if kind == "imp":
            self.impressions += int(value)
        elif kind == "fb":
            self.feedback += int(value)
        elif kind == "hit":
            self.hits += int(value)
        elif kind == "ans":
            self.answers_hit += int(value)
        elif kind == "rr":
            self.reciprocal_ranks += value

    def to_json(self) -> dict[str, Any]:
        """Counts, the hit rate (answers with a hit / answers served), its 95 % Wilson interval, MRR."""
        n = self.impressions
        low, high = wilson_interval(min(self.answers_hit, n), n)
        return {
            "impressions": n, "feedback": self.feedback, "hits": self.hits, "answers_hit": self.answers_hit,
            "hit_rate": round(self.answers_hit / n, 6) if n else None,
            "interval": [round(low, 6), round(high, 6)] if n else None,
            "mrr": round(self.reciprocal_ranks / n, 6) if n else None,
        }


@dataclass
class QualityReport:
    """What GET /quality and `recguard quality` answer."""

    since: datetime
    until: datetime
    by: tuple[str, ...]
    groups: list[tuple[dict[str, str], Totals]]
    series: dict[tuple[str, ...], list[tuple[int, Totals]]] | None = None
    """Per group, the totals of each minute (when asked for)."""
    offline: Mapping[str, Any] = field(default_factory=dict)
    alarms: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since), "until": _iso(self.until), "by": list(self.by),
            "groups": [{**keys, **totals.to_json(), **self._series_of(keys)} for keys, totals in self.groups],
            "offline": dict(self.offline), "alarms": self.alarms,
        }


    def _series_of(self, keys: dict[str, str]) -> dict[str, Any]:
        if self.series is None:
            return {}
        points = self.series.get(tuple(keys.values()), [])
        return {"series": [{"minute": _iso(datetime.fromtimestamp(minute * 60, timezone.utc)), **totals.to_json()}
                           for minute, totals in points]}


def parse_group_keys(text: str | None) -> tuple[str, ...]:
    """The grouping keys of `by=version,source,segment` (any subset, in that order); ValueError naming
    the allowed keys for anything else."""
    if text is None:
        return GROUP_KEYS
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in GROUP_KEYS]
    if unknown or len(set(keys)) != len(keys):
        raise ValueError(f"by: expected a comma-separated subset of {', '.join(GROUP_KEYS)}, got {text!r}")
    return tuple(key for key in GROUP_KEYS if key in keys)


def read_minutes(client: redis.Redis, prefix: str, first: int, last: int) -> list[dict[str, str]]:
    """The raw quality buckets of epoch minutes first..last, one HGETALL each, pipelined per node."""
    series = quality_series(60)
    return execute(client, [command("HGETALL", series.key(prefix, minute)) for minute in range(first, last + 1)])


def split_field(name: str) -> tuple[str, tuple[str, str, str]] | None:
    """(kind, (version, source, segment)) of a bucket field; None for the exactly-once markers."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] not in KINDS:
        return None
    return parts[0], (parts[1], parts[2], parts[3])


def totals_by(buckets: Iterable[Mapping[str, str]], by: Sequence[str],
              segment: str | None = None) -> dict[tuple[str, ...], Totals]:
    """Sum buckets into one Totals per combination of the `by` keys (only `segment`'s counts when given)."""
    positions = [GROUP_KEYS.index(key) for key in by]
    sums: dict[tuple[str, ...], Totals] = {}
    for bucket in buckets:
        for name, value in bucket.items():
            parsed = split_field(name)
            if parsed is None or (segment is not None and parsed[1][2] != segment):
                continue
            kind, group = parsed
            key = tuple(group[i] for i in positions)
            sums.setdefault(key, Totals()).add(kind, float(value))
    return sums


def query_quality(client: redis.Redis, prefix: str, since: datetime, until: datetime,
                  by: Sequence[str] = GROUP_KEYS, *, segment: str | None = None,
                  per_minute: bool = False) -> QualityReport:
    """Live quality of [since, until] grouped by `by`, most impressions first; only one segment's
    counts when `segment` is given; with each group's per-minute series when `per_minute`.
    ValueError for a bad range, redis.RedisError when Redis cannot be read."""
    since, until = since.astimezone(timezone.utc), until.astimezone(timezone.utc)
    if since > until:
        raise ValueError(f"since ({_iso(since)}) is after until ({_iso(until)})")
    if until - since > MAX_RANGE:
        raise ValueError(f"range too long: at most {MAX_RANGE.days} days (counts expire after that)")
    first = int(since.timestamp() // 60)
    buckets = read_minutes(client, prefix, first, int(until.timestamp() // 60))
    sums = totals_by(buckets, by, segment)
    groups = sorted(((dict(zip(by, key)), totals) for key, totals in sums.items()),
                    key=lambda pair: (-pair[1].impressions, tuple(pair[0].values())))
    series = None
    if per_minute:
        series = {key: [] for key in sums}
        for minute, bucket in enumerate(buckets, start=first):
            for key, totals in totals_by([bucket], by, segment).items():
                series[key].append((minute, totals))
    return QualityReport(since, until, tuple(by), groups, series)


def format_quality_table(report: QualityReport) -> str:
    """A table for the terminal: one line per group."""
    headers = [*report.by, "impressions", "feedback", "hit_rate", "95% interval", "mrr"]
    rows = []
    for keys, totals in report.groups:
        shown = totals.to_json()
        rate = "-" if shown["hit_rate"] is None else f"{shown['hit_rate']:.4f}"
        interval = "-" if shown["interval"] is None else f"{shown['interval'][0]:.4f}-{shown['interval'][1]:.4f}"
        mrr = "-" if shown["mrr"] is None else f"{shown['mrr']:.4f}"
        rows.append([*keys.values(), str(totals.impressions), str(totals.feedback), rate, interval, mrr])
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [f"live quality {_iso(report.since)} .. {_iso(report.until)}"]
    for row in [headers, *rows]:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not rows:
        lines.append("(no answers served in this range)")
    if report.offline:
        lines.append("offline (bundle manifest): " + ", ".join(f"{k} {v}" for k, v in report.offline.items()))
    return "\n".join(lines)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
