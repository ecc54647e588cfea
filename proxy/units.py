"""Common unit conversions, by the factor a value is multiplied by: shared by the per-request hint
(`out_of_range ... looks like cm→in?`) and the drift alarms' unit names."""

from __future__ import annotations

import math

# Factor a value in the training's unit was multiplied by -> what changed. A mass now sent in
# pounds where training had kilograms is 2.20462 times larger: "kg→lb".
UNIT_CHANGES: tuple[tuple[float, str], ...] = (
    (2.20462, "kg→lb"),
    (1 / 2.20462, "lb→kg"),
    (2.54, "in→cm"),
    (1 / 2.54, "cm→in"),
    (12.0, "years→months or ft→in"),
    (1 / 12, "months→years or in→ft"),
    (100.0, "m→cm or fraction→percent"),
    (0.01, "cm→m or percent→fraction"),
    (1000.0, "s→ms"),
    (0.001, "ms→s"),
)


def unit_hint(value: float, central: tuple[float, float], median: float) -> str | None:
    """The conversions that would bring an out-of-range value back inside the training's central
    range (e.g. its 5th to 95th percentile): the one landing nearest the median first, at most two
    ("kg→lb or in→cm": one value cannot tell them apart); None if none does."""
    low, high = central
    if value <= 0 or low <= 0 or median <= 0:
        return None
    fits = sorted((abs(math.log(value / factor / median)), label) for factor, label in UNIT_CHANGES
                  if low <= value / factor <= high)
    return " or ".join(label for _, label in fits[:2]) or None
