"""The drift parts of one worker, built from the settings: the request path's watch and the alarm
monitor that judges the windows every worker writes. The one place they are wired: the runtime, the
tests and the benchmarks all call `build_drift`, so none of them drifts from what serves."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import redis

from proxy.drift.alarms import Alarm, AlarmMonitor, user_hash_key
from proxy.drift.watch import DriftWatch, Thresholds, cells_from_profile
from proxy.settings import Settings
from proxy.store.counters import Counters, Series


@dataclass(frozen=True)
class DriftParts:
    """A worker's drift watch (a screen of the pipeline) and its alarm monitor (a step of the flusher)."""

    watch: DriftWatch
    monitor: AlarmMonitor


def drift_thresholds(settings: Settings) -> Thresholds:
    """The alarm thresholds the drift settings name."""
    drift = settings.drift
    return Thresholds(drift.alarm_z_score, drift.alarm_effect_size, drift.alarm_min_count, drift.alarm_min_users)


def build_drift(profile: Mapping[str, Any], settings: Settings, counters: Counters, client: redis.Redis, *,
                wake: Callable[[], None] | None, listeners: Iterable[Callable[[list[Alarm]], None]] = (),
                user_key: bytes | None = None, clock: Callable[[], float] = time.time) -> DriftParts:
    """The watch (its windows fed into `counters`, `wake` called when a market looks shifted) and the
    monitor (its alarms quarantine segments in the watch, then go to each of `listeners`). `user_key`
    hashes user ids (default: the deployment's, `user_hash_key`)."""
    drift, store = settings.drift, settings.redis
    series = Series("d", drift.slot_seconds, drift.window_seconds + 60)
    cells = cells_from_profile(profile)
    thresholds = drift_thresholds(settings)
    if user_key is None:
        user_key = user_hash_key(client, store.prefix, drift.user_hash_key)
    watch = DriftWatch(profile, cells, series, counters.add_many, thresholds=thresholds, wake=wake,
                       user_key=user_key, user_window=drift.window_seconds, clock=clock)
    monitor = AlarmMonitor(
        client, store.prefix, cells, series,
        window_slots=math.ceil(drift.window_seconds / drift.slot_seconds),
        thresholds=thresholds,
        # a slot stays open to late writes for one flush interval of every worker
        open_slots=math.ceil(store.flush_interval / drift.slot_seconds) + 1,
        listeners=[watch.quarantine, *listeners],
        recent=watch.take_recent, cleared=watch.forget_before, clock=clock,
    )
    return DriftParts(watch, monitor)
