"""A circuit breaker per worker in front of the upstream, after Envoy's outlier detection.

`failures` consecutive failed calls eject the upstream for a base time that grows with each
ejection (the n-th lasts n × base, at most `max_ejection`); when an ejection ends, one request
is let through as a probe while the others still go to the fallback. A probe that succeeds
closes the breaker; one that fails ejects again, longer. As in Envoy, the multiplier comes back
down while the upstream stays healthy: by one for every base time without an ejection.
While ejected, a request costs no wait on the upstream at all: the fallback answers at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """What /healthz, /metrics and the dashboard show of a breaker."""

    state: str
    consecutive_failures: int
    ejections: int
    """Ejections so far in this worker."""
    multiplier: int
    """How many base times the current (or the next) ejection lasts."""
    retry_in_seconds: float | None
    """Seconds until the probe, while open."""

    def to_json(self) -> dict:
        return {"state": self.state, "consecutive_failures": self.consecutive_failures, "ejections": self.ejections,
                "multiplier": self.multiplier,
                "retry_in_seconds": None if self.retry_in_seconds is None else round(self.retry_in_seconds, 3)}


class CircuitBreaker:
    """Consecutive-failure ejection with a growing ejection time and a single probe; thread-safe."""

    def __init__(self, failures: int, base_ejection: float, max_ejection: float, *,
                 clock: Callable[[], float] = time.monotonic, on_change: Callable[[str], None] | None = None):
        self.failures = failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._multiplier = 0
        self._ejections = 0
        self._open_until = 0.0
        self._healthy_since = clock()

    def allow(self) -> bool:
        """True when a call may go to the upstream: closed, or the one probe once an ejection ended."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self.clock() >= self._open_until:
                self._state = HALF_OPEN
                changed = HALF_OPEN
            else:
                return False
        self._changed(changed)
        return True

    def success(self) -> None:
        """Record a call that got a usable answer (a 4xx counts: the upstream is up)."""
        with self._lock:
            self._consecutive = 0
            if self._state == CLOSED:
                return
            self._state = CLOSED
            self._healthy_since = self.clock()
        self._changed(CLOSED)

    def failure(self) -> None:
        """Record a failed call; eject when it makes `failures` in a row, or when it was the probe."""
        with self._lock:
            self._consecutive += 1
            if self._state == OPEN or (self._state == CLOSED and self._consecutive < self.failures):
                return
            now = self.clock()
            if self._state == CLOSED:
                healthy_bases = int((now - self._healthy_since) // self.base_ejection)
                self._multiplier = max(0, self._multiplier - healthy_bases)
            self._multiplier += 1
            self._ejections += 1
            self._state = OPEN
            self._open_until = now + min(self.base_ejection * self._multiplier, self.max_ejection)
        self._changed(OPEN)

    def state(self) -> BreakerState:
        """A snapshot for the health report."""
        with self._lock:
            retry = max(0.0, self._open_until - self.clock()) if self._state == OPEN else None
            return BreakerState(self._state, self._consecutive, self._ejections, self._multiplier, retry)

    def _changed(self, state: str) -> None:
        if self.on_change is not None:
            self.on_change(state)
