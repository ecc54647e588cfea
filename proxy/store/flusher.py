"""A worker's one background thread: what the request path gathered in memory goes to Redis, and what
the other workers wrote comes back, in a stated order, every flush interval.

The request path never waits on Redis: counts, drift windows and feedback gather in memory and this
thread writes them, then reads back what depends on everyone's writes (the alarms). Its steps run
in the order they were given, each once per round; a step that raises is logged and the next one
runs. `wake` runs a round at once instead of at the end of the interval (the drift watch, when a
market looks shifted), at most EARLY_FLUSHES_PER_INTERVAL times an interval whatever keeps asking.
`close` stops the thread and runs the steps that write (the ones given `on_close=True`) a last time,
in the same order, so nothing accepted before a graceful shutdown is lost while Redis answers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("recguard.flusher")

EARLY_FLUSHES_PER_INTERVAL = 10
"""`wake` runs a round at once, but at most this many times per flush interval."""


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the flusher does each round."""

    name: str
    run: Callable[[], object]
    """Returns False when Redis did not take everything (it is tried again next round)."""
    on_close: bool = False
    """Run a last time at shutdown: a step that writes what would otherwise be lost."""


class Flusher:
    """Runs its steps in order, every `interval` seconds or when woken, on one daemon thread.

    Create and `start()` it inside the worker process (after gunicorn forks): a thread does not
    survive a fork."""

    def __init__(self, interval: float, steps: list[Step] | None = None):
        self.interval = interval
        # replaced whole, never changed in place: the thread reads it without a lock
        self._steps: tuple[Step, ...] = tuple(steps or ())
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def steps(self) -> tuple[Step, ...]:
        return self._steps

    def add(self, step: Step, *, before: str | None = None) -> None:
        """Add a step at the end of the round, or just before the step named `before`."""
        names = [existing.name for existing in self._steps]
        at = names.index(before) if before is not None else len(names)
        self._steps = (*self._steps[:at], step, *self._steps[at:])

    def wake(self) -> None:
        """Run a round now instead of at the end of the interval; cheap and callable from any thread."""
        self._wake.set()

    def run_round(self) -> None:
        """Every step once, in order; one that raises is logged and the others still run."""
        for step in self._steps:
            try:
                step.run()
            except Exception:  # the flusher must outlive any bug; the next round tries again
                log.exception("flush step raised", extra={"step": step.name})

    def start(self) -> None:
        """Start the thread: a round every interval, or at once when woken."""
        if self._thread is not None:
            raise RuntimeError("flusher already started")
        self._thread = threading.Thread(target=self._run, name="recguard-flusher", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> list[str]:
        """Stop the thread (waiting up to `timeout` for a round in progress), then run the closing steps
        once more in order, each bounded by the Redis client's timeouts; the names of those that could
        not write everything (graceful shutdown, SIGTERM)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        unwritten = []
        for step in self._steps:
            if not step.on_close:
                continue
            try:
                written = step.run()
            except Exception:  # noqa: BLE001 - shutdown goes on whatever a step does
                log.exception("flush step raised at shutdown", extra={"step": step.name})
                written = False
            if written is False:
                unwritten.append(step.name)
        return unwritten

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.interval)
            if self._stop.is_set():
                return
            self._wake.clear()
            self.run_round()
            if woken and self._stop.wait(self.interval / EARLY_FLUSHES_PER_INTERVAL):
                # early rounds come at most EARLY_FLUSHES_PER_INTERVAL times an interval, whatever keeps asking
                return
