"""The quality alarm: the model's live hit rate significantly below its control group's or its offline figure.

Every worker judges the same shared minute buckets (proxy/quality/feedback.py) with the same
CUSUM (proxy/quality/stats.py), so all workers and replicas agree without storing a verdict; only
a manual clear is stored (`<prefix>:quality:cleared`, alarm id -> epoch minute), and the test then
looks only at the buckets after it. Tests, per model version:

- `holdback`: per segment and over all traffic, the model's answers against the holdback's
  (same traffic, served by the fallback); needs a holdback (RECGUARD_HOLDBACK > 0).
- `offline`: over all traffic, the model's hit rate against the hit_rate@10 `recguard train`
  recorded in the manifest. It assumes the site reports the shopper's next take for each answer,
  as the replay does; a site that posts only clicks on what was recommended has a far lower live
  rate and should turn it off (RECGUARD_QUALITY_OFFLINE=0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import redis

from proxy.quality.report import Totals, read_minutes, split_field
from proxy.quality.stats import Drop, drop_below_control, drop_below_rate
from proxy.words import HOLDBACK, MODEL

log = logging.getLogger("recguard.quality")

QUALITY = "quality"
ALL_SEGMENTS = "_all"


@dataclass(frozen=True)
class QualityThresholds:
    """What makes a quality alarm."""

    relative_drop: float = 0.2
    """The drop the test looks for: the model's hit rate this share below its baseline."""
    threshold: float = 12.0
    """CUSUM threshold h (log of the likelihood ratio): false alarms at most (buckets) × e^-h."""
    min_impressions: int = 200
    """Model answers since the CUSUM's last restart an alarm needs at the least."""
    window_minutes: int = 60
    """Minutes of buckets judged at each refresh."""


@dataclass(frozen=True)
class QualityAlarm:
    """An active quality alarm on one model version and segment against one baseline."""

    id: str
    version: str
    segment: str
    baseline: str
    detail: str
    statistic: float
    impressions: int
    hit_rate: float
    expected: float | None

    def to_json(self) -> dict[str, Any]:
        """As shown in /healthz, /alarms and /quality."""
        return {"id": self.id, "kind": QUALITY, "version": self.version, "segment": self.segment,
                "baseline": self.baseline, "detail": self.detail, "statistic": round(self.statistic, 3),
                "impressions": self.impressions, "hit_rate": round(self.hit_rate, 4),
                "expected": None if self.expected is None else round(self.expected, 4)}


def cleared_key(prefix: str) -> str:
    """The Redis hash of manual clears: alarm id -> the epoch minute the clear applies from."""
    return f"{prefix}:quality:cleared"


class QualityMonitor:
    """One worker's view of the quality alarms, refreshed from Redis on the flusher thread."""

    def __init__(self, client: redis.Redis, prefix: str, version: str, offline_hit_rate: float | None,
                 thresholds: QualityThresholds, *, use_offline: bool = True, refresh_seconds: float = 5.0,
                 clock: Callable[[], float] = time.time,
                 listeners: Sequence[Callable[[list[QualityAlarm]], None]] = ()):
        self._client = client
        self._prefix = prefix
        self.version = version
        self.offline = offline_hit_rate if use_offline else None
        self.thresholds = thresholds
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._listeners = list(listeners)
        self._next_refresh = 0.0
        self.active: list[QualityAlarm] = []
        self.last_error: str | None = None

    def maybe_refresh(self) -> None:
        """Refresh when the last refresh is older than refresh_seconds (called after every flush)."""
        if self._clock() >= self._next_refresh:
            self.refresh()

    def refresh(self) -> list[QualityAlarm]:
        """Judge the last window of buckets; keep the old verdict when Redis cannot be read."""
        now = self._clock()
        self._next_refresh = now + self._refresh_seconds
        last = int(now // 60)
        first = last - self.thresholds.window_minutes + 1
        try:
            buckets = read_minutes(self._client, self._prefix, first, last)
            cleared = {name: int(value) for name, value in self._client.hgetall(cleared_key(self._prefix)).items()}
        except redis.RedisError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            return self.active
        self.last_error = None
        self.active = self.judge(list(zip(range(first, last + 1), buckets)), cleared)
        for listener in self._listeners:
            listener(self.active)
        return self.active

    def judge(self, buckets: list[tuple[int, dict[str, str]]], cleared: dict[str, int]) -> list[QualityAlarm]:
        """The alarms the (minute, bucket) pairs call for, each test starting after its manual clear."""
        per_minute: list[tuple[int, dict[tuple[str, str], Totals]]] = []
        segments = {ALL_SEGMENTS}
        for minute, bucket in buckets:
            sums: dict[tuple[str, str], Totals] = {}
            for name, value in bucket.items():
                parsed = split_field(name)
                if parsed is None or parsed[1][0] != self.version:
                    continue
                kind, (_, source, segment) = parsed
                segments.add(segment)
                for seg in (segment, ALL_SEGMENTS):
                    sums.setdefault((source, seg), Totals()).add(kind, float(value))
            per_minute.append((minute, sums))
        alarms = []
        for segment in sorted(segments):
            alarm_id = f"{QUALITY}:{self.version}:{segment}:{HOLDBACK}"
            since = cleared.get(alarm_id, -1)
            rows = [(s.get((MODEL, segment), Totals()), s.get((HOLDBACK, segment), Totals()))
                    for minute, s in per_minute if minute > since]
            drop = drop_below_control(((m.impressions, m.answers_hit, c.impressions, c.answers_hit)
                                       for m, c in rows), self.thresholds.relative_drop, self.thresholds.threshold)
            control = sum(c.answers_hit for _, c in rows), sum(c.impressions for _, c in rows)
            expected = control[0] / control[1] if control[1] else None
            alarm = self._alarm(alarm_id, segment, HOLDBACK, drop, expected)
            if alarm is not None:
                alarms.append(alarm)
        if self.offline is not None:
            alarm_id = f"{QUALITY}:{self.version}:{ALL_SEGMENTS}:offline"
            since = cleared.get(alarm_id, -1)
            rows = [s.get((MODEL, ALL_SEGMENTS), Totals()) for minute, s in per_minute if minute > since]
            drop = drop_below_rate(((m.impressions, m.answers_hit) for m in rows), self.offline,
                                   self.thresholds.relative_drop, self.thresholds.threshold)
            alarm = self._alarm(alarm_id, ALL_SEGMENTS, "offline", drop, self.offline)
            if alarm is not None:
                alarms.append(alarm)
        return alarms

    def _alarm(self, alarm_id: str, segment: str, baseline: str, drop: Drop,
               expected: float | None) -> QualityAlarm | None:
        if not drop.alarm or drop.impressions < self.thresholds.min_impressions:
            return None
        rate = drop.hits / drop.impressions
        where = "all traffic" if segment == ALL_SEGMENTS else f"segment {segment}"
        against = ("its offline hit_rate@10" if baseline == "offline" else "the holdback's")
        shown = "?" if expected is None else f"{expected:.3f}"
        detail = (f"model {self.version} on {where}: live hit rate {rate:.3f} over {drop.impressions} answers, "
                  f"significantly below {against} {shown} (CUSUM {drop.statistic:.1f} >= {self.thresholds.threshold:g})")
        return QualityAlarm(alarm_id, self.version, segment, baseline, detail, drop.statistic, drop.impressions,
                            rate, expected)

    def clear(self, alarm_id: str) -> bool:
        """Restart the test of an active alarm from the current minute; False when no such alarm is active."""
        if all(alarm.id != alarm_id for alarm in self.active):
            # another worker may have seen it first: this one refreshes at most every few seconds
            self.refresh()
            if all(alarm.id != alarm_id for alarm in self.active):
                return False
        self._client.hset(cleared_key(self._prefix), alarm_id, int(self._clock() // 60))
        self.refresh()
        return True

    def quarantined(self, segment: str | None) -> QualityAlarm | None:
        """The active alarm that covers a request of `segment` (its own, or one on all traffic)."""
        for alarm in self.active:
            if alarm.segment in (ALL_SEGMENTS, segment):
                return alarm
        return None

