"""Drift judged on synthetic windows: shifts caught, units named, noise ignored; the request-path watch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from proxy.counters import Series
from proxy.drift import (Cell, DriftWatch, Thresholds, Verdict, Window, cells_from_profile, describe, judge,
                         nested_windows, unit_change)

POUNDS_PER_KG = 2.20462
DE = Cell("weight_kg", "DE", mean=80.0, std=14.0)
THRESHOLDS = Thresholds(z_score=6.0, effect_size=0.5, min_count=20)


def windows(*slot_values) -> list[Window]:
    """The nested windows of slots given newest first, each as its values."""
    rows = [[len(values), float(np.sum(values)), float(np.sum(np.square(values)))] for values in map(np.asarray, slot_values)]
    return nested_windows(np.array(rows, dtype=np.float64).reshape(-1, 3))


def clean(rng, per_slot: int, count: int, scale: float = 1.0, cell: Cell = DE) -> list[np.ndarray]:
    return [rng.normal(cell.mean, cell.std, per_slot) * scale for _ in range(count)]


@pytest.mark.parametrize("ratio, label", [
    (2.21, "kg→lb"), (1 / 2.19, "lb→kg"), (2.53, "in→cm"), (0.39, "cm→in"), (101.0, "m→cm or fraction→percent"),
    (0.0099, "cm→m or percent→fraction"), (1003.0, "s→ms"), (0.00098, "ms→s"),
    (1.5, None), (2.37, None), (1.0, None), (-2.2, None), (None, None),
])
def test_known_unit_changes_are_named_from_the_mean_ratio(ratio, label):
    change = unit_change(ratio)
    assert (change[1] if change else None) == label


def test_a_market_switching_to_pounds_is_caught_and_named():
    rng = np.random.default_rng(1)
    verdict = judge(windows(*clean(rng, 30, 3, scale=POUNDS_PER_KG)), DE, THRESHOLDS, active=False)
    assert verdict.alarm and verdict.recent.ratio == pytest.approx(POUNDS_PER_KG, rel=0.06)
    assert describe(DE, verdict.recent) == ("weight_kg in DE looks ×2.205: kg→lb?", "kg→lb")


def test_centimetres_sent_as_inches_are_named():
    height = Cell("height_cm", "JP", mean=164.0, std=9.5)
    verdict = judge(windows(*clean(np.random.default_rng(2), 25, 1, scale=1 / 2.54, cell=height)), height, THRESHOLDS, False)
    assert verdict.alarm and describe(height, verdict.recent)[0] == "height_cm in JP looks ×0.3937: cm→in?"


def test_a_shift_without_a_known_unit_is_described_in_standard_deviations():
    values = np.random.default_rng(3).normal(DE.mean + 3 * DE.std, DE.std, 200)
    verdict = judge(windows(values), DE, THRESHOLDS, active=False)
    assert verdict.alarm
    detail, unit = describe(DE, verdict.recent)
    assert unit is None and detail.startswith("weight_kg in DE shifted +3.") and "sd from training (mean ×1.5" in detail


def test_a_fresh_switch_shows_before_a_long_clean_past_dilutes_it():
    rng = np.random.default_rng(4)
    history = [rng.normal(DE.mean, DE.std, 40) * POUNDS_PER_KG] + clean(rng, 300, 59)
    assert judge(windows(*history), DE, THRESHOLDS, active=False).alarm


def test_a_small_steady_shift_in_a_quiet_market_adds_up_over_the_long_windows():
    rng = np.random.default_rng(5)
    shifted = [rng.normal(DE.mean + 0.8 * DE.std, DE.std, 4) for _ in range(60)]
    assert not judge(windows(*shifted[:4]), DE, THRESHOLDS, active=False).alarm
    assert judge(windows(*shifted), DE, THRESHOLDS, active=False).alarm


def test_statistically_clear_but_practically_small_shifts_do_not_alarm():
    values = np.random.default_rng(6).normal(DE.mean + 0.3 * DE.std, DE.std, 50_000)
    verdict = judge(windows(values), DE, THRESHOLDS, active=False)
    assert verdict.recent.z > 30 and not verdict.alarm


def test_too_few_values_neither_raise_nor_clear():
    assert judge(windows([DE.mean * POUNDS_PER_KG] * 19), DE, THRESHOLDS, active=False) == Verdict(False, None)
    assert judge(windows([DE.mean] * 19), DE, THRESHOLDS, active=True) == Verdict(True, None)
    assert judge([], DE, THRESHOLDS, active=True) == Verdict(True, None)


def test_one_absurd_value_does_not_make_a_shift_clear():
    rng = np.random.default_rng(7)
    values = np.append(rng.normal(DE.mean, DE.std, 99), 1e9)
    verdict = judge(windows(values), DE, THRESHOLDS, active=False)
    assert abs(verdict.recent.effect) > 1000 and abs(verdict.recent.z) < 2 and not verdict.alarm


def test_an_alarm_holds_while_shifted_and_clears_when_the_recent_window_is_back_to_normal():
    rng = np.random.default_rng(8)
    pounds = clean(rng, 30, 10, scale=POUNDS_PER_KG)
    partly = np.append(rng.normal(DE.mean, DE.std, 24), rng.normal(DE.mean, DE.std, 6) * POUNDS_PER_KG)
    assert judge(windows(partly, *pounds), DE, THRESHOLDS, active=True).alarm
    recovered = judge(windows(*clean(rng, 30, 1), *pounds), DE, THRESHOLDS, active=True)
    assert not recovered.alarm and abs(recovered.recent.effect) < THRESHOLDS.effect_size / 2


@pytest.mark.parametrize("skewed", [False, True])
def test_no_alarm_on_clean_noise(skewed):
    """1,000 histories of 60 slots of clean values (normal, or gamma-skewed like ages), judged whole."""
    rng = np.random.default_rng(9)
    alarms = 0
    for _ in range(1000):
        per_slot = int(rng.integers(1, 80))
        if skewed:
            shape = 2.2
            values = DE.mean + (rng.gamma(shape, 1.0, (60, per_slot)) - shape) / math.sqrt(shape) * DE.std
        else:
            values = rng.normal(DE.mean, DE.std, (60, per_slot))
        alarms += judge(windows(*values), DE, THRESHOLDS, active=False).alarm
    assert alarms == 0


def test_nested_windows_double_up_to_the_whole_span():
    rows = np.array([[1.0, 2.0, 4.0]] * 6)
    assert [w.count for w in nested_windows(rows)] == [1, 2, 4, 6]
    assert nested_windows(rows[:4])[-1] == Window(4.0, 8.0, 16.0) and nested_windows(rows[:0]) == []


def test_cells_come_from_the_profile_segments():
    profile = {"segment_field": "market", "fields": {
        "market": {"role": "feature", "type": "string", "domain": {"A": 0.5, "B": 0.5}},
        "size": {"role": "feature", "type": "number", "std": 3.0,
                 "segments": {"A": {"count": 10, "mean": 5.0, "std": 2.0}, "B": {"count": 10, "mean": 6.0, "std": 0.0},
                              "C": {"count": 1, "mean": 6.0, "std": 0.0}}},
        "score": {"role": "contract", "type": "number", "segments": {"A": {"count": 10, "mean": 1.0, "std": 1.0}}},
    }}
    assert cells_from_profile(profile) == [Cell("size", "A", 5.0, 2.0), Cell("size", "B", 6.0, 3.0)]


def test_the_watch_feeds_numbers_of_known_segments_and_quarantines_only_alarmed_ones():
    profile = {"segment_field": "market", "fields": {}}
    cells = [Cell("size", "A", 5.0, 2.0), Cell("size", "B", 5.0, 2.0), Cell("age", "A", 30.0, 9.0)]
    fed = []
    watch = DriftWatch(profile, cells, Series("d", 5, 360), lambda amounts, series: fed.append(list(amounts)))

    assert watch.observe({"market": "A", "size": 4, "age": 31.5}) == ()
    assert fed.pop() == [("size|A|n", 1), ("size|A|s", 4.0), ("size|A|q", 16.0),
                         ("age|A|n", 1), ("age|A|s", 31.5), ("age|A|q", 992.25)]
    for body in ({"market": "A", "size": True, "age": float("nan")}, {"market": "A", "size": "4", "age": 1e13},
                 {"market": "Z", "size": 4}, {"market": ["A"], "size": 4}, {"size": 4}):
        watch.observe(body)
    assert fed == []

    watch.quarantine([SimpleNamespace(field="size", segment="A", detail="size in A looks ×2.54: in→cm?")])
    [anomaly] = watch.observe({"market": "A", "size": 4})
    assert (anomaly.field, anomaly.kind, anomaly.routes) == ("size", "drift_quarantine", True)
    assert anomaly.detail == "quarantined: size in A looks ×2.54: in→cm?"
    assert watch.observe({"market": "B", "size": 4}) == ()
    watch.quarantine([])
    assert watch.observe({"market": "A", "size": 4}) == ()
