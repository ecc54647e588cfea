"""Drift alarms, shared by every worker and replica through one Redis hash.

Each worker runs `AlarmMonitor.refresh` on its flusher thread, right after its own
counts are written: one pipelined read of the open drift slots and of the alarm hash, a
`judge` per cell, then the raises, updates and clears it decided (a second round trip, only
when something changed). A slot older than a flush interval no longer changes (every worker
has flushed into it), so it is read once and kept in memory; a worker's counts written late,
after a Redis outage, reach only the monitors that read the slot after them. Workers judge the
same windows and so agree; the hash is the one truth, and the monitor hands its alarms to the
`DriftWatch` (quarantine) and to the metrics.

Layout, one key so Redis Cluster never sees a multi-key command: `<prefix>:alarms`, fields
`alarm:<id>` (the alarm as JSON), `cleared:<id>` (when it was last cleared, by hand or because
its window was back to normal) and `user_hash_key` (the deployment's key for hashing user ids,
unless RECGUARD_USER_HASH_KEY sets one). A cleared cell is judged only on slots that began after that
moment: the data that raised the alarm cannot raise it again (no flapping while old values
leave the window), new data can. A raise is written only if no one cleared the cell since the
hash was read (a check-and-set script), so a clear is never undone by a stale judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import redis

from proxy.drift.watch import (
    REPEAT_FIELD_PREFIX,
    USER_FIELD_PREFIX,
    Cell,
    Evidence,
    Shift,
    Thresholds,
    describe,
    distinct_prefix,
    judge,
    named_share,
    nested_windows,
)
from proxy.store.client import LuaScript, command, execute
from proxy.store.counters import Series

log = logging.getLogger("recguard.alarms")

DRIFT = "drift"
_ALARM = "alarm:"
_CLEARED = "cleared:"
_HASH_KEY = "user_hash_key"

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
    share: float | None = None
    """The share of the values that look scaled by the unit, when only a share does (a partial rollout)."""

    @classmethod
    def raise_for(cls, cell: Cell, shift: Shift, raised_at: float) -> "Alarm":
        """The alarm a cell's shift calls for, diagnosis included."""
        detail, unit = describe(cell, shift)
        share = named_share(shift)
        return cls(cell.id, cell.feature, cell.segment, detail, unit, raised_at,
                   None if shift.ratio is None else round(shift.ratio, 4), round(shift.z, 2),
                   {"count": shift.count, "mean": _round(shift.mean), "std": _round(shift.std)},
                   {"mean": _round(cell.mean), "std": _round(cell.std)},
                   None if share is None else round(share, 2))

    def to_json(self) -> dict[str, Any]:
        """As shown in /healthz, /anomalies, /alarms and stored in Redis."""
        raised = datetime.fromtimestamp(self.raised_at, timezone.utc).isoformat(timespec="seconds")
        return {"id": self.id, "kind": DRIFT, "field": self.field, "segment": self.segment,
                "detail": self.detail, "unit": self.unit, "raised_at": raised.replace("+00:00", "Z"),
                "ratio": self.ratio, "z": self.z, "window": self.window, "training": self.training,
                "share": self.share}

    @classmethod
    def from_json(cls, text: str) -> "Alarm":
        """An alarm as stored in Redis (the statistics are optional: older writers left them out)."""
        data = json.loads(text)
        raised = datetime.fromisoformat(data["raised_at"].replace("Z", "+00:00")).timestamp()
        return cls(data["id"], data["field"], data["segment"], data["detail"], data.get("unit"), raised,
                   data.get("ratio"), data.get("z"), data.get("window"), data.get("training"), data.get("share"))


def _round(value: float) -> float:
    return float(f"{value:.5g}")


SlotRow = tuple[np.ndarray, dict[str, frozenset[str]]]
"""A drift slot as the monitor keeps it: (cells x 4) count, sum, sum of squares and requests of
the cell's segment counted again; the users marked per segment."""


def alarms_key(prefix: str) -> str:
    """The Redis hash holding every alarm of a deployment."""
    return f"{prefix}:alarms"


def user_hash_key(client: redis.Redis, prefix: str, configured: str = "") -> bytes:
    """The deployment's key for hashing user ids: RECGUARD_USER_HASH_KEY when set, else a random key
    created once in the alarm hash (field `user_hash_key`, HSETNX: the first worker to start wins)
    and read by every worker and replica of the deployment.

    With Redis unreachable at start and no key configured, a key of this process's own: its users
    then hash apart from other workers', so one user may count once per worker (docs/drift.md)."""
    if configured:
        # any length of text: BLAKE2b takes keys of at most 64 bytes
        return hashlib.sha256(configured.encode()).hexdigest().encode()
    try:
        client.hsetnx(alarms_key(prefix), _HASH_KEY, secrets.token_hex(32))
        shared = client.hget(alarms_key(prefix), _HASH_KEY)
    except redis.RedisError as exc:
        log.warning("user hash key not read: redis unreachable, using a key of this worker",
                    extra={"error": type(exc).__name__})
        shared = None
    if isinstance(shared, bytes):
        shared = shared.decode()
    return (shared if isinstance(shared, str) else secrets.token_hex(32)).encode()


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
        cleared: Callable[[Mapping[str, float]], None] | None = None,
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
        self._fields = [name for cell in self._cells for name in (*cell.fields, REPEAT_FIELD_PREFIX + cell.segment)]
        # slot -> ((cells x 4) array of count, sum, sum of squares, requests of the cell's segment
        # counted again; segment -> users marked), for slots that no longer change
        self._settled: dict[int, SlotRow] = {}
        self._listeners = list(listeners)
        self._recent = recent
        # told when each segment was last cleared: users counted before it may count again
        self._cleared = cleared
        self._clock = clock
        self._set_alarm = LuaScript(_SET_ALARM)
        self._clear_alarm = LuaScript(_CLEAR_ALARM)
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
            reads = [command("HGETALL", self._series.key(self._prefix, slot)) for slot in unread]
            *buckets, state = execute(self._client, reads + [command("HGETALL", self._key)])
            read = {slot: self._row(bucket) for slot, bucket in zip(unread, buckets)}
            self._settled = {slot: read.get(slot, self._settled.get(slot)) for slot in slots[self._open_slots:]}
            rows = [read.get(slot, self._settled.get(slot)) for slot in slots]
            matrix = np.stack([row[0] for row in rows])
            alarms = {alarm.id: alarm for alarm in _alarms(state)}
            if self._cleared is not None:
                self._cleared(self._clear_times(state))
            self._judge_all(alarms, state, matrix, [row[1] for row in rows], slots, now, evidence)
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
            if not execute(self._client, [self._clear_alarm.call(self._key, alarm_id, repr(self._clock()))])[0]:
                return False
            self._publish([alarm for alarm in self._active if alarm.id != alarm_id])
        segment = next((cell.segment for cell in self._cells if cell.id == alarm_id), None)
        if self._cleared is not None and segment is not None:
            self._cleared({segment: self._clock()})
        log.warning("drift alarm cleared by hand", extra={"alarm": alarm_id})
        return True

    def _judge_all(self, alarms: dict[str, Alarm], state: dict[str, str], matrix: np.ndarray,
                   users: list[dict[str, frozenset[str]]], slots: range, now: float,
                   evidence: Mapping[str, Evidence]) -> None:
        """Judge every cell on `matrix` (slots newest first x cells x 4, `_row`) and the users of each
        slot, its evidence first when it has some, write what changed in one pipeline, and update
        `alarms` to match."""
        raises: list[tuple[str, Alarm]] = []
        clears: list[str] = []
        distinct: dict[str, list[int]] = {}
        for index, cell in enumerate(self._cells):
            if cell.segment not in distinct:
                distinct[cell.segment] = distinct_prefix([slot_users.get(cell.segment, ()) for slot_users in users],
                                                         self._thresholds.min_users)
            marker = state.get(_CLEARED + cell.id, "")
            usable = len(slots)
            if marker:
                # judged only on slots that began after the clear by hand
                usable = sum(1 for slot in slots if slot * self._series.seconds >= float(marker))
            existing = alarms.get(cell.id)
            windows = nested_windows(matrix[:usable, index], distinct[cell.segment])
            recent = evidence.get(cell.id)
            if recent is not None and (not marker or recent.started_at >= float(marker)):
                windows.insert(0, recent.window)
            verdict = judge(windows, cell, self._thresholds, active=existing is not None)
            if verdict.alarm and verdict.recent is not None:
                raised_at = existing.raised_at if existing is not None else now
                alarm = Alarm.raise_for(cell, verdict.shown, raised_at)
                # The diagnosis stays as raised while the window recovers (a half-mixed window names no
                # unit); it is rewritten only when a unit is newly named, or a share of it becomes the
                # whole market, not on every new statistic.
                if (existing is None or existing.window is None or alarm.unit not in (None, existing.unit)
                        or (alarm.unit is not None and existing.share is not None and alarm.share is None)):
                    raises.append((marker, alarm))
            elif not verdict.alarm and existing is not None:
                clears.append(cell.id)
        if not raises and not clears:
            return
        writes = [self._set_alarm.call(self._key, alarm.id, marker, json.dumps(alarm.to_json())) for marker, alarm in raises]
        writes += [self._clear_alarm.call(self._key, alarm_id, repr(now)) for alarm_id in clears]
        replies = execute(self._client, writes)
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

    def _clear_times(self, state: Mapping[str, str]) -> dict[str, float]:
        """The latest clear of any cell of each segment, from the alarm hash."""
        times: dict[str, float] = {}
        for cell in self._cells:
            marker = state.get(_CLEARED + cell.id)
            if marker:
                times[cell.segment] = max(times.get(cell.segment, 0.0), float(marker))
        return times

    def _row(self, bucket: dict[str, str]) -> SlotRow:
        """A slot's hash as a (cells x 4) array of count, sum, sum of squares and requests of the
        cell's segment counted again, and the users marked per segment."""
        marked: dict[str, set[str]] = {}
        for name in bucket:
            if name.startswith(USER_FIELD_PREFIX):
                segment, _, user = name[len(USER_FIELD_PREFIX):].rpartition("|")
                marked.setdefault(segment, set()).add(user)
        array = np.array([float(bucket.get(name) or 0.0) for name in self._fields]).reshape(-1, 4)
        return array, {segment: frozenset(found) for segment, found in marked.items()}

    def _publish(self, alarms: list[Alarm]) -> None:
        # the listeners first (the watch quarantines from them): what `active` shows is in force
        for listener in self._listeners:
            listener(alarms)
        self._active = alarms
