"""Wilson intervals against a hand-computed case; the drop test alarms on a drop and not on noise."""

import numpy as np
import pytest

from proxy.quality.stats import drop_below_control, drop_below_rate, wilson_interval


def test_wilson_interval_of_8_in_20():
    # p = 0.4, z = 1.96: centre (0.4 + z²/40) / (1 + z²/20) = 0.41611, half-width
    # z / (1 + z²/20) * sqrt(0.4 * 0.6 / 20 + z² / 1600) = 0.19731
    low, high = wilson_interval(8, 20)
    assert low == pytest.approx(0.21880, abs=5e-5) and high == pytest.approx(0.61342, abs=5e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.09
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.91 < low < 0.95


def minutes(rng, rate, per_minute, count):
    return [(per_minute, int(rng.binomial(per_minute, rate))) for _ in range(count)]


def test_no_alarm_at_the_expected_rate_over_many_days_of_traffic():
    # 40 seeds x 1 day of 60 answers a minute at exactly the offline rate
    for seed in range(40):
        rng = np.random.default_rng(seed)
        drop = drop_below_rate(minutes(rng, 0.22, 60, 1440), expected=0.22, relative_drop=0.2, threshold=12)
        assert not drop.alarm


def test_a_real_drop_alarms_within_the_expected_evidence():
    # 0.22 -> 0.17 after an hour of good traffic; the log-likelihood ratio gains about 0.008 per
    # answer at 0.17, so h = 12 takes about 1,500 answers (25 minutes at 60 a minute): allow 2x.
    rng = np.random.default_rng(7)
    good, bad = minutes(rng, 0.22, 60, 60), minutes(rng, 0.17, 60, 120)
    for cut in range(1, len(bad) + 1):
        if drop_below_rate(good + bad[:cut], 0.22, 0.2, 12).alarm:
            break
    assert cut * 60 <= 3000, f"took {cut * 60} answers"
    assert not drop_below_rate(good, 0.22, 0.2, 12).alarm


def test_control_test_needs_no_rates_only_where_hits_fell():
    rng = np.random.default_rng(3)
    clean = [(990, int(rng.binomial(990, 0.2)), 10, int(rng.binomial(10, 0.2))) for _ in range(1440)]
    assert not drop_below_control(clean, 0.2, 12).alarm
    # the model falls to half the control's rate
    worse = [(500, int(rng.binomial(500, 0.1)), 500, int(rng.binomial(500, 0.2))) for _ in range(30)]
    assert drop_below_control(clean[:60] + worse, 0.2, 12).alarm
    # buckets without a control contribute nothing
    assert drop_below_control([(100, 0, 0, 0)] * 100, 0.2, 12).statistic == 0.0
