"""A share of a cell's values scaled by a unit factor, told from a window's count, sum and sum of squares.

Half of a market's requests come from a new form that sends pounds (an A/B test): its mean moves
by 0.6 of the way to pounds, a ratio no unit explains, and its values split in two groups, so its
variance grows far beyond the training one. When a share p of the values is multiplied by a
factor f and the rest is as in training (mean μ, standard deviation σ), then whatever the shape
of the training distribution

    E[x]  = μ (1 − p + p f)
    E[x²] = (σ² + μ²)(1 − p + p f²)

so the window's mean gives p for each known factor, and its variance says whether that mixture
explains the spread. A single absurd value inflates the variance far more than any mixture of its
mean would; a market that shifted as a whole (everyone heavier, or everyone scaled by a factor no
unit has) shows almost none of the mixture's extra variance. docs/drift.md gives the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.units import UNIT_CHANGES

MIXTURE_SPREAD = 2.0
"""The window's variance must lie within this factor of the variance the mixture predicts. Measured
on the default bundle's Japanese weights, a half rollout to pounds sits at 1.0 (every shopper) and
0.6 (only light shoppers, whose pounds stay inside the training range); a market scaled as a whole
by 1.5 at 0.18, one absurd value among 20 at 6."""

MAX_SHARE = 1.1
"""A share estimated above this (noise around a full switch allowed) is no mixture with that factor."""


@dataclass(frozen=True, slots=True)
class Mixture:
    """A share of the values multiplied by a known unit factor, the rest as in training."""

    factor: float
    label: str
    """What changed, e.g. "kg→lb"."""
    share: float
    """The share of values scaled (0..1), estimated from the window mean."""


def fit_mixture(count: float, total: float, total_sq: float, mean: float, variance: float,
                min_scaled: float) -> Mixture | None:
    """The unit mixture whose predicted variance lies nearest the window's (within MIXTURE_SPREAD),
    given the window's count, sum and sum of squares and the cell's training mean and variance;
    None when none explains it, when its scaled share holds fewer than `min_scaled` values (one
    client's few values are no rollout), or when the values are not positive on average."""
    window_mean = total / count
    window_variance = total_sq / count - window_mean * window_mean
    if mean <= 0 or window_mean <= 0 or window_variance <= 0:
        return None
    ratio = window_mean / mean
    second_moment = variance + mean * mean
    best: Mixture | None = None
    best_misfit = math.log(MIXTURE_SPREAD)
    for factor, label in UNIT_CHANGES:
        if (factor - 1.0) * (ratio - 1.0) <= 0:
            continue
        share = (ratio - 1.0) / (factor - 1.0)
        if share > MAX_SHARE or share * count < min_scaled:
            continue
        predicted = second_moment * (1.0 + share * (factor * factor - 1.0)) - window_mean * window_mean
        if predicted <= 0:
            continue
        misfit = abs(math.log(window_variance / predicted))
        if misfit <= best_misfit:
            best, best_misfit = Mixture(factor, label, min(share, 1.0)), misfit
    return best


_SHARE_WORDS = ((0.15, "a tenth"), (0.35, "a quarter"), (0.7, "half"), (0.9, "three quarters"),
                (math.inf, "nearly all"))


def share_words(share: float) -> str:
    """The share in words: a tenth (below 0.15), a quarter (to 0.35), half (to 0.7), three quarters
    (to 0.9), nearly all. Coarse on purpose: on the 40-odd values that first raise an alarm, the
    estimate of a half rollout spreads from about 0.4 to 0.65, and leans high (the scaled share
    must hold 20 values: on 40, only an estimate of at least half passes)."""
    return next(words for upper, words in _SHARE_WORDS if share < upper)
