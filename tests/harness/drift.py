"""What one gunicorn worker runs for drift, wired by `build_drift` exactly as the runtime wires it, on a
clock of the test's: its counters, the drift watch and the alarm monitor; `tick` is one round of its
flusher (the counters written, then the alarms judged)."""

from __future__ import annotations

from typing import Any

import redis

from proxy.drift.build import build_drift
from proxy.settings import Settings
from proxy.store.counters import Counters
from tests.harness.clock import Clock


class DriftWorker:
    """One worker's drift parts; `woken` says its watch asked for an early round since the last tick (the
    test's loop decides whether to run one, as the flusher would)."""

    def __init__(self, client: redis.Redis, profile: dict[str, Any], clock: Clock, *,
                 settings: Settings | None = None, user_key: bytes | None = None):
        settings = settings or Settings()
        self.counters = Counters(client, prefix=settings.redis.prefix, clock=clock)
        self.woken = False
        self.early_ticks = 0
        self.published: list[list] = []
        """Every list of active alarms the monitor handed on, in order."""
        parts = build_drift(profile, settings, self.counters, client, wake=self._wake,
                            listeners=[self.published.append], user_key=user_key, clock=clock)
        self.watch, self.monitor = parts.watch, parts.monitor

    def _wake(self) -> None:
        self.woken = True

    def tick(self) -> bool:
        """One flusher round: the counters written, then the alarms judged; True when Redis took the counts."""
        self.woken = False
        written = self.counters.flush()
        self.monitor.refresh()
        return written
