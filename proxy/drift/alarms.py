"""Drift alarms, shared by every worker and replica through one Redis hash.

Each worker runs `AlarmMonitor.refresh` on its counters' flush thread, right after its own
counts are written: one pipelined read of the open drift slots and of the alarm hash, a
`judge` per cell, then the raises, updates and clears it decided (a second round trip, only
when something changed). A slot older than a flush interval no longer changes (every worker
has flushed into it), so it is read once and kept in memory; a worker's counts written late,
after a Redis outage, reach only the monitors that read the slot after them. Workers judge the
same windows and so agree; the hash is the one truth, and the monitor hands its alarms to the
`DriftWatch` (quarantine) and to the metrics.

Layout, one key so Redis Cluster never sees a multi-key command: `<prefix>:alarms`, fields
`alarm:<id>` (the alarm as JSON) and `cleared:<id>` (when it was last cleared, by hand or because
its window was back to normal). A cleared cell is judged only on slots that began after that
moment: the data that raised the alarm cannot raise it again (no flapping while old values
leave the window), new data can. A raise is written only if no one cleared the cell since the
hash was read (a check-and-set script), so a clear is never undone by a stale judge.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import redis

from proxy.drift.watch import Cell, Evidence, Shift, Thresholds, describe, judge, nested_windows
from proxy.store.counters import Series

log = logging.getLogger("recguard.alarms")

DRIFT = "drift"
_ALARM = "alarm:"
_CLEARED = "cleared:"

# KEYS[1]: the alarm hash. ARGV: id, the manual-clear marker the judge saw ("" for none), alarm JSON.
# Returns -1 when a clear came in between, else the number of new fields (1: raised, 0: updated).
_SET_ALARM = """
if (redis.call("HGET", KEYS[1], "cleared:" .. ARGV[1]) or "") ~= ARGV[2] then return -1 end
return redis.call("HSET", KEYS[1], "alarm:" .. ARGV[1], ARGV[3])
"""

# KEYS[1]: the alarm hash. ARGV: id, clock time of the clear. Returns 1 when an alarm was cleared.
_CLEAR_ALARM = """
if redis.call("HDEL", KEYS[1], "alarm:" .. ARGV[1]) == 0 then return 0 end
redis.call("HSET", KEYS[1], "cleared:" .. ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Alarm:
    """An active drift alarm on one numeric feature in one segment."""

    id: str
    field: str
    segment: str
    detail: str
    unit: str | None
    raised_at: float
    ratio: float | None = None
    """Window mean / training mean when the alarm was raised (or its unit diagnosis last changed)."""
    z: float | None = None
    """Standard errors between the window mean and the training mean, at the same moment."""
    window: dict[str, float] | None = None
    """The window the alarm quotes (the recent one when it names a unit, else the one that raised
    it), at the same moment: count, mean, std."""
    training: dict[str, float] | None = None
    """The training baseline of the cell: mean, std."""

    @classmethod
    def raise_for(cls, cell: Cell, shift: Shift, raised_at: float) -> "Alarm":
        """The alarm a cell's shift calls for, diagnosis included."""
        detail, unit = describe(cell, shift)
        return cls(cell.id, cell.feature, cell.segment, detail, unit, raised_at,
                   None if shift.ratio is None else round(shift.ratio, 4), round(shift.z, 2),
                   {"count": shift.count, "mean": _round(shift.mean), "std": _round(shift.std)},
                   {"mean": _round(cell.mean), "std": _round(cell.std)})

    def to_json(self) -> dict[str, Any]:
        """As shown in /healthz, /anomalies, /alarms and stored in Redis."""
        raised = datetime.fromtimestamp(self.raised_at, timezone.utc).isoformat(timespec="seconds")
        return {"id": self.id, "kind": DRIFT, "field": self.field, "segment": self.segment,
                "detail": self.detail, "unit": self.unit, "raised_at": raised.replace("+00:00", "Z"),
                "ratio": self.ratio, "z": self.z, "window": self.window, "training": self.training}

    @classmethod
    def from_json(cls, text: str) -> "Alarm":
        """An alarm as stored in Redis (the statistics are optional: older writers left them out)."""
        data = json.loads(text)
        raised = datetime.fromisoformat(data["raised_at"].replace("Z", "+00:00")).timestamp()
        return cls(data["id"], data["field"], data["segment"], data["detail"], data.get("unit"), raised,
                   data.get("ratio"), data.get("z"), data.get("window"), data.get("training"))


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def alarms_key(prefix: str) -> str:
    """The Redis hash holding every alarm of a deployment."""
    return f"{prefix}:alarms"


def read_alarms(client: redis.Redis, prefix: str) -> list[Alarm]:
    """The active alarms, oldest first, straight from Redis (for `recguard anomalies`)."""
    state = client.hgetall(alarms_key(prefix))
    return _alarms(state)


def _alarms(state: dict[str, str]) -> list[Alarm]:
    alarms = [Alarm.from_json(value) for name, value in state.items() if name.startswith(_ALARM)]
    return sorted(alarms, key=lambda alarm: (alarm.raised_at, alarm.id))


class AlarmMonitor:
    """One worker's view of the alarms: judges the shared windows and keeps the alarm hash current."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        cells: Iterable[Cell],
        series: Series,
        window_slots: int,
        thresholds: Thresholds,
        *,
        open_slots: int = 2,
        listeners: Sequence[Callable[[list[Alarm]], None]] = (),
        recent: Callable[[], Mapping[str, Evidence]] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._client = client
        self._prefix = prefix
        self._key = alarms_key(prefix)
        self._cells = list(cells)
        self._series = series
        self._window_slots = window_slots
        self._open_slots = open_slots
        self._thresholds = thresholds
        self._fields = [name for cell in self._cells for name in cell.fields]
        # slot -> (cells x 3) array of count, sum, sum of squares, for slots that no longer change
        self._settled: dict[int, np.ndarray] = {}
        self._listeners = list(listeners)
        self._recent = recent
        self._clock = clock
        self._set_alarm = client.register_script(_SET_ALARM)
        self._clear_alarm = client.register_script(_CLEAR_ALARM)
        self._lock = threading.Lock()
        self._active: list[Alarm] = []
        # Bumped by every clear by hand: a refresh that read the hash before it does not apply.
        self._generation = 0
        self.last_error: str | None = None

    @property
    def active(self) -> list[Alarm]:
        """The active alarms as last read or written by this worker, oldest first."""
        return self._active

    def refresh(self) -> None:
        """Read the windows and the alarm hash, raise, update and clear alarms, publish the result.

        While Redis is unreachable the last known alarms stay in force."""
        generation = self._generation
        # this worker's freshest values that look shifted on their own, already flushed to Redis
        evidence = self._recent() if self._recent is not None else {}
        now = self._clock()
        current = self._series.slot(now)
        slots = range(current, current - self._window_slots, -1)
        unread = [slot for slot in slots if slot > current - self._open_slots or slot not in self._settled]
        try:
            pipe = self._client.pipeline(transaction=False)
            for slot in unread:
                pipe.hgetall(self._series.key(self._prefix, slot))
            pipe.hgetall(self._key)
            *buckets, state = pipe.execute()
            read = {slot: self._row(bucket) for slot, bucket in zip(unread, buckets)}
            self._settled = {slot: read.get(slot, self._settled.get(slot)) for slot in slots[self._open_slots:]}
            matrix = np.stack([read.get(slot, self._settled.get(slot)) for slot in slots])
            alarms = {alarm.id: alarm for alarm in _alarms(state)}
            self._judge_all(alarms, state, matrix, slots, now, evidence)
        except redis.RedisError as exc:
            if self.last_error is None:
                log.warning("drift alarms not refreshed: redis unreachable", extra={"error": type(exc).__name__})
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        self.last_error = None
        with self._lock:
            if generation == self._generation:
                self._publish(sorted(alarms.values(), key=lambda alarm: (alarm.raised_at, alarm.id)))

    def clear(self, alarm_id: str) -> bool:
        """Clear an alarm by hand (the admin endpoint); False when no such alarm is active."""
        with self._lock:
            self._generation += 1
            if not self._clear_alarm(keys=[self._key], args=[alarm_id, repr(self._clock())]):
                return False
            self._publish([alarm for alarm in self._active if alarm.id != alarm_id])
        log.warning("drift alarm cleared by hand", extra={"alarm": alarm_id})
        return True

    def _judge_all(self, alarms: dict[str, Alarm], state: dict[str, str], matrix: np.ndarray, slots: range,
                   now: float, evidence: Mapping[str, Evidence]) -> None:
        """Judge every cell on `matrix` (slots newest first x cells x 3), its evidence first when it
        has some, write what changed in one pipeline, and update `alarms` to match."""
        raises: list[tuple[str, Alarm]] = []
        clears: list[str] = []
        for index, cell in enumerate(self._cells):
            marker = state.get(_CLEARED + cell.id, "")
            usable = len(slots)
            if marker:
                # judged only on slots that began after the clear by hand
                usable = sum(1 for slot in slots if slot * self._series.seconds >= float(marker))
            existing = alarms.get(cell.id)
            windows = nested_windows(matrix[:usable, index])
            recent = evidence.get(cell.id)
            if recent is not None and (not marker or recent.started_at >= float(marker)):
                windows.insert(0, recent.window)
            verdict = judge(windows, cell, self._thresholds, active=existing is not None)
            if verdict.alarm and verdict.recent is not None:
                raised_at = existing.raised_at if existing is not None else now
                alarm = Alarm.raise_for(cell, verdict.shown, raised_at)
                # The diagnosis stays as raised while the window recovers (a half-mixed window names no
                # unit); it is rewritten only when a unit is newly named, not on every new statistic.
                if existing is None or existing.window is None or alarm.unit not in (None, existing.unit):
                    raises.append((marker, alarm))
            elif not verdict.alarm and existing is not None:
                clears.append(cell.id)
        if not raises and not clears:
            return
        pipe = self._client.pipeline(transaction=False)
        for marker, alarm in raises:
            self._set_alarm(keys=[self._key], args=[alarm.id, marker, json.dumps(alarm.to_json())], client=pipe)
        for alarm_id in clears:
            self._clear_alarm(keys=[self._key], args=[alarm_id, repr(now)], client=pipe)
        replies = pipe.execute()
        for (_, alarm), reply in zip(raises, replies):
            if reply == -1:
                continue
            alarms[alarm.id] = alarm
            if reply == 1:
                log.warning("drift alarm raised", extra={"alarm": alarm.id, "detail": alarm.detail})
        for alarm_id, reply in zip(clears, replies[len(raises):]):
            del alarms[alarm_id]
            if reply == 1:
                log.info("drift alarm cleared: the window is back to normal", extra={"alarm": alarm_id})

    def _row(self, bucket: dict[str, str]) -> np.ndarray:
        """A slot's hash as a (cells x 3) array."""
        return np.array([float(bucket.get(name) or 0.0) for name in self._fields]).reshape(-1, 3)

    def _publish(self, alarms: list[Alarm]) -> None:
        self._active = alarms
        for listener in self._listeners:
            listener(alarms)
