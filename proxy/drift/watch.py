"""Rolling per-segment drift of the numeric features, judged against the training profile.

What a single request cannot show: a market whose form starts sending a mass in pounds keeps
most values inside the training range (50 kg becomes 110 "kg"), yet the market's mean moves
by more than twice its standard deviation. So every numeric feature with per-segment
statistics in the profile gets one *cell* per segment, and each request adds its value to its
cell's count, sum and sum of squares in the current time slot (`DriftWatch.observe`: memory
only; the counters' next flush writes the slot to Redis with everything else, so all workers
and replicas fill the same windows). `nested_windows` sums a cell's slots, newest first, into
windows of growing length; `judge` decides from them whether the recent window is off, and
`describe` names the unit change it looks like. docs/drift.md explains the test and its
thresholds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from proxy.guard.anomaly import DRIFT_QUARANTINE, Anomaly
from proxy.store.counters import Number, Series

MAX_MAGNITUDE = 1e12
"""Values this large are left out of the sums (their squares would swamp every other value);
the guard reports them as out_of_range anyway."""

UNIT_TOLERANCE = 0.06
"""A window/training mean ratio within 6 % of a known factor is named after it (2.205 and 2.54,
the closest pair, are 15 % apart)."""

# Ratio of the window mean to the training mean -> what changed. The ratio of a field now sent
# in pounds where training had kilograms is 2.20462: "kg→lb".
UNIT_CHANGES: tuple[tuple[float, str], ...] = (
    (2.20462, "kg→lb"),
    (1 / 2.20462, "lb→kg"),
    (2.54, "in→cm"),
    (1 / 2.54, "cm→in"),
    (100.0, "m→cm or fraction→percent"),
    (0.01, "cm→m or percent→fraction"),
    (1000.0, "s→ms"),
    (0.001, "ms→s"),
)


@dataclass(frozen=True, slots=True)
class Cell:
    """One numeric feature in one segment, with its training baseline and its Redis field names."""

    feature: str
    segment: str
    mean: float
    std: float

    @property
    def id(self) -> str:
        """The alarm id of the cell, `<feature>:<segment>`."""
        return f"{self.feature}:{self.segment}"

    @property
    def fields(self) -> tuple[str, str, str]:
        """Hash fields of count, sum and sum of squares in a drift slot (compared, never parsed)."""
        return f"{self.feature}|{self.segment}|n", f"{self.feature}|{self.segment}|s", f"{self.feature}|{self.segment}|q"


def cells_from_profile(profile: Mapping[str, Any]) -> list[Cell]:
    """A cell per (numeric feature, segment) the profile has statistics for; a segment whose
    training values were all equal borrows the field's overall std."""
    cells = []
    for name, spec in profile["fields"].items():
        if spec.get("role") != "feature" or not spec.get("segments"):
            continue
        for segment, stats in spec["segments"].items():
            std = stats.get("std") or spec.get("std") or 0.0
            if stats.get("count", 0) >= 2 and std > 0:
                cells.append(Cell(name, segment, float(stats["mean"]), float(std)))
    return cells


@dataclass(frozen=True, slots=True)
class Window:
    """Count, sum and sum of squares of the values of a span of time."""

    count: float
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def variance(self) -> float:
        return max(0.0, self.total_sq / self.count - self.mean ** 2)


def nested_windows(slots: np.ndarray) -> list[Window]:
    """Windows of the newest 1, 2, 4, 8... slots and of all of them, shortest first, from per-slot
    rows of (count, sum, sum of squares), newest first.

    Short windows show a switch before older clean values dilute it; long ones add up a small
    shift in a quiet market. Doubling keeps the number of tests (and of chances for noise to
    pass one) at log2 of the slots."""
    if len(slots) == 0:
        return []
    totals = np.cumsum(slots, axis=0)
    lengths = sorted({1 << power for power in range(len(slots).bit_length())} | {len(slots)})
    return [Window(*row) for row in totals[np.array(lengths) - 1].tolist()]


@dataclass(frozen=True)
class Thresholds:
    """When a window's shift is statistically clear and practically large enough to alarm."""

    z_score: float
    """Standard errors between the window mean and the training mean."""
    effect_size: float
    """Training standard deviations between them; below half of it, an alarm clears."""
    min_count: int
    """Values a window needs before it can raise or clear an alarm."""


@dataclass(frozen=True, slots=True)
class Shift:
    """How far a window sits from its cell's training baseline."""

    count: int
    mean: float
    std: float
    """Standard deviation of the window's values."""
    z: float
    effect: float
    ratio: float | None


def assess(window: Window, cell: Cell) -> Shift:
    """The shift of a (non-empty) window from the cell's training mean.

    The standard error takes the larger of the training and the window variance: a single
    absurd value inflates the window's variance as much as its mean, so it cannot make a shift
    look clear on its own.
    """
    difference = window.mean - cell.mean
    error = math.sqrt(max(cell.std ** 2, window.variance) / window.count)
    ratio = window.mean / cell.mean if cell.mean != 0 else None
    return Shift(int(window.count), window.mean, math.sqrt(window.variance), difference / error,
                 difference / cell.std, ratio)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cell should be in alarm, and the most recent shift (None: too few values to tell)."""

    alarm: bool
    recent: Shift | None
    strongest: Shift | None = None
    """The clear and large window with the largest |z| (None: no window is both)."""

    @property
    def shown(self) -> Shift | None:
        """The shift an alarm reports: `recent` when it sits near a unit change (the purest view of
        a switch), else the window that makes the case, so a detail never quotes a z below the
        threshold that raised it."""
        if self.recent is not None and unit_change(self.recent.ratio) is not None:
            return self.recent
        return self.strongest or self.recent


def judge(windows: Sequence[Window], cell: Cell, thresholds: Thresholds, active: bool) -> Verdict:
    """Judge a cell from nested windows, shortest first (`nested_windows`).

    `recent` is the shortest window holding `min_count` values. An alarm is raised when any
    window is both clear (|z| >= z_score) and large (|effect| >= effect_size) in the direction
    `recent` still shows; it clears once `recent` is back within half the effect size. Without
    enough values the state is kept.
    """
    # The test of `assess` on plain floats (every worker judges every cell's windows every flush
    # interval, holding the GIL): Shifts are built only for the two windows a verdict keeps.
    large = thresholds.effect_size * cell.std
    z_squared = thresholds.z_score ** 2
    training_variance = cell.std ** 2
    recent: Window | None = None
    recent_difference = 0.0
    strongest: Window | None = None
    strongest_z_squared = 0.0
    for window in windows:
        count = window.count
        if count < thresholds.min_count:
            continue
        mean = window.total / count
        difference = mean - cell.mean
        if recent is None:
            recent, recent_difference = window, difference
        if difference * recent_difference > 0:
            window_z_squared = _large_z_squared(count, window.total, window.total_sq, cell.mean, large,
                                               training_variance)
            if window_z_squared >= z_squared and (strongest is None or window_z_squared > strongest_z_squared):
                strongest, strongest_z_squared = window, window_z_squared
    if recent is None:
        return Verdict(active, None)
    recent_shift = assess(recent, cell)
    if abs(recent_shift.effect) < thresholds.effect_size / 2:
        return Verdict(False, recent_shift)
    strongest_shift = assess(strongest, cell) if strongest is not None else None
    return Verdict(active or strongest_shift is not None, recent_shift, strongest_shift)


def unit_change(ratio: float | None) -> tuple[float, str] | None:
    """The known unit conversion (factor, label) whose factor the ratio sits near, if any."""
    if ratio is None or ratio <= 0:
        return None
    factor, label = min(UNIT_CHANGES, key=lambda change: abs(math.log(ratio / change[0])))
    return (factor, label) if abs(math.log(ratio / factor)) <= math.log1p(UNIT_TOLERANCE) else None


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"


def describe(cell: Cell, shift: Shift) -> tuple[str, str | None]:
    """The alarm's detail and the unit change it names (or None), e.g.
    ("<feature> in <segment> looks ×2.205: kg→lb?", "kg→lb") or "<feature> in <segment> shifted:
    mean 95.1 vs 78.0 in training (z=12.3)". Aggregates only, never a single value."""
    change = unit_change(shift.ratio)
    if change is not None:
        factor, label = change
        return f"{cell.feature} in {cell.segment} looks ×{factor:.4g}: {label}?", label
    return (f"{cell.feature} in {cell.segment} shifted: mean {_number(shift.mean)} vs {_number(cell.mean)} "
            f"in training (z={shift.z:.1f})"), None


RECENT_BLOCKS = 4
"""A cell's recent values start afresh after this many min_counts of them: a switch after a busy
clean stretch shows in the next block instead of being diluted by it."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """Recent values of one cell, seen by this worker since its last flush, that pass the alarm test alone."""

    window: Window
    started_at: float
    """Clock time of the first of these values (a clear by hand after it makes them stale)."""


class DriftWatch:
    """The request-path half of drift detection: fills the windows and answers "is this segment quarantined?".

    With `thresholds` and `wake`, it also sums each cell's values since the last flush, in blocks
    of at most RECENT_BLOCKS x min_count, and as soon as a block passes the alarm test alone keeps
    it as `Evidence` and calls `wake` (flush and judge now). Redis windows are time slots: a switch
    in a busy market shares its slot with thousands of clean values before it, while the block
    holds only values after it. So detection waits for min_count values of the market, not for
    the flush interval or the slot to roll over; clean traffic never wakes the flusher.
    """

    def __init__(self, profile: Mapping[str, Any], cells: Iterable[Cell], series: Series,
                 add_many: Callable[[Iterable[tuple[str, Number]], Series], None], *,
                 thresholds: Thresholds | None = None, wake: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.segment_field: str = profile["segment_field"]
        self.series = series
        self._add_many = add_many
        self._wake = wake if thresholds is not None else None
        self._min_count = thresholds.min_count if thresholds is not None else 0
        self._clock = clock
        # per segment: (feature, count, sum and square field names, cell id, mean, |shift| that is
        # large, z_score² and training variance), so the per-request test is a few float operations
        self._cells: dict[str, list[tuple[str, str, str, str, str, float, float, float, float]]] = {}
        for cell in cells:
            large = thresholds.effect_size * cell.std if thresholds is not None else 0.0
            z_squared = thresholds.z_score ** 2 if thresholds is not None else 0.0
            self._cells.setdefault(cell.segment, []).append(
                (cell.feature, *cell.fields, cell.id, cell.mean, large, z_squared, cell.std ** 2))
        # Replaced whole by the alarm monitor, never mutated: a request reads one consistent map.
        self._quarantined: dict[str, tuple[Anomaly, ...]] = {}
        # Replaced whole by take_recent. Per segment, per cell: [count, sum, sum of squares, start].
        self._recent: dict[str, list[list[float]]] = {}
        self._evidence: dict[str, Evidence] = {}

    def observe(self, fields: Mapping[str, Any]) -> tuple[Anomaly, ...]:
        """Add the request's numeric features to its segment's current slot (memory only) and
        return a drift_quarantine anomaly per active alarm of its segment."""
        segment = fields.get(self.segment_field)
        if not isinstance(segment, str):
            return ()
        cells = self._cells.get(segment)
        if cells is None:
            return ()
        quarantined = self._quarantined.get(segment, ())
        # once a segment is quarantined or has evidence waiting, there is no hurry left
        watch_recent = self._wake is not None and not quarantined and not self._evidence
        if watch_recent:
            recent = self._recent.get(segment)
            if recent is None:
                now = self._clock()
                recent = self._recent[segment] = [[0.0, 0.0, 0.0, now] for _ in cells]
        amounts: list[tuple[str, Number]] = []
        for index, (feature, count_name, sum_name, square_name, cell_id, mean, large, z_squared,
                    variance) in enumerate(cells):
            value = fields.get(feature)
            # bool is not a number here, and NaN fails the range test
            if (type(value) is float or type(value) is int) and -MAX_MAGNITUDE < value < MAX_MAGNITUDE:
                value = float(value)
                amounts += ((count_name, 1), (sum_name, value), (square_name, value * value))
                if watch_recent:
                    sums = recent[index]
                    sums[0] += 1.0
                    sums[1] += value
                    sums[2] += value * value
                    if sums[0] >= self._min_count:
                        if _large_z_squared(sums[0], sums[1], sums[2], mean, large, variance) >= z_squared:
                            self._evidence = {**self._evidence,
                                              cell_id: Evidence(Window(sums[0], sums[1], sums[2]), sums[3])}
                        elif sums[0] >= RECENT_BLOCKS * self._min_count:
                            recent[index] = [0.0, 0.0, 0.0, self._clock()]
        if amounts:
            self._add_many(amounts, self.series)
        if watch_recent and self._evidence:
            self._wake()
        return quarantined

    def take_recent(self) -> dict[str, Evidence]:
        """The evidence gathered since the last call (by cell id), and a fresh start of the recent
        sums: the flusher calls it right after writing them to Redis."""
        evidence = self._evidence
        self._recent = {}
        self._evidence = {}
        return evidence

    def quarantine(self, alarms: Iterable[Any]) -> None:
        """Route every segment with an active alarm to the fallback from now on (alarms: objects
        with `field`, `segment` and `detail`)."""
        quarantined: dict[str, tuple[Anomaly, ...]] = {}
        for alarm in alarms:
            anomaly = Anomaly(alarm.field, DRIFT_QUARANTINE, f"quarantined: {alarm.detail}", True)
            quarantined[alarm.segment] = (*quarantined.get(alarm.segment, ()), anomaly)
        self._quarantined = quarantined


def _large_z_squared(count: float, total: float, total_sq: float, mean: float, large: float,
                    variance: float) -> float:
    """z² of a window (count, sum, sum of squares) against a training mean when its shift is
    large (|difference| >= `large`), else 0: `assess`'s test on plain floats, shared by `judge`
    and the request-path watch. The standard error takes the larger of the training `variance`
    and the window's own, as `assess` does."""
    window_mean = total / count
    difference = window_mean - mean
    if abs(difference) < large:
        return 0.0
    return difference * difference * count / max(variance, total_sq / count - window_mean * window_mean)