"""What a long command shows on stderr while it works: lines, and on a terminal a bar with an ETA.

Lines are for the record (a log, CI, `make run` piped to a file): one per step, each saying how
long is left where that is known. The bar is for a person watching: redrawn in place at most ten
times a second, and only when stderr is a terminal, so a redirected run gets the lines alone.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24
REDRAW_EVERY = 0.1


def duration(seconds: float) -> str:
    """`seconds` for a person: "40 s", "2 min 05 s"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class Progress:
    """Callable with a line (printed as is), and `bar(label, done, total, seconds_left)` for a stage's
    progress within a line (drawn on a terminal only)."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None,
                 clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._clock = clock
        self._drawn = False
        self._last_draw = float("-inf")

    def __call__(self, message: str) -> None:
        self._clear()
        print(message, file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int, seconds_left: float | None = None) -> None:
        """Redraw the bar: `done` of `total` units of the stage `label`, about `seconds_left` to go."""
        if not self.interactive:
            return
        now = self._clock()
        if done < total and now - self._last_draw < REDRAW_EVERY:
            return
        self._last_draw = now
        filled = BAR_WIDTH * done // max(total, 1)
        left = f"  about {duration(seconds_left)} left" if seconds_left is not None else ""
        self.stream.write(f"\r{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}{left}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
