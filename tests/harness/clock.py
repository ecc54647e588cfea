"""A clock that moves only when the test says so: pass it as `clock=` to any part that takes one."""

from __future__ import annotations

T0 = 1_795_000_000.0
"""An epoch second in 2026, far from any minute or slot boundary a test cares about."""


class Clock:
    """Time in epoch seconds that stands still until `now` is set or `advance` is called."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
