"""The quality alarm's holdback half: QualityMonitor.judge on minute buckets of model and control-group
answers, per segment and over all traffic, the minimum-evidence gate, a manual clear, and the alarm
that goes away by itself once the model is back to the control group's hit rate."""

from __future__ import annotations

import pytest

from proxy.quality.alarm import ALL_SEGMENTS, QualityMonitor, QualityThresholds

pytestmark = pytest.mark.unit

VERSION = "v1"


def bucket(**groups: tuple[int, int]) -> dict[str, str]:
    """One minute's bucket fields: SOURCE_SEGMENT=(answers, answers with a hit), e.g. model_DE=(1000, 100)."""
    fields = {}
    for name, (answers, hit) in groups.items():
        source, segment = name.split("_")
        fields[f"imp|{VERSION}|{source}|{segment}"] = str(answers)
        fields[f"ans|{VERSION}|{source}|{segment}"] = str(hit)
        # another version's counts in the same bucket are not this monitor's business
        fields[f"imp|v0|{source}|{segment}"] = str(answers)
    return fields


def monitor(min_impressions: int = 200) -> QualityMonitor:
    # no offline figure: only the holdback comparison is judged
    return QualityMonitor(None, "recguard", VERSION, None, QualityThresholds(min_impressions=min_impressions))


def minutes(count: int, start: int = 1000, **groups: tuple[int, int]) -> list[tuple[int, dict[str, str]]]:
    return [(start + i, bucket(**groups)) for i in range(count)]


HEALTHY_US = {"model_US": (10_000, 2_000), "holdback_US": (100, 20)}
"""A large market where the model does as well as the control group (0.20)."""
DE_DROPPED = {"model_DE": (1_000, 100), "holdback_DE": (1_000, 200)}
"""The model at half the control group's hit rate in one market (0.10 against 0.20)."""


def ids(alarms) -> set[str]:
    return {alarm.id for alarm in alarms}


def test_a_market_where_the_model_falls_below_the_holdback_alarms_alone():
    alarms = monitor().judge(minutes(10, **HEALTHY_US, **DE_DROPPED), {})
    assert ids(alarms) == {f"quality:{VERSION}:DE:holdback"}
    (alarm,) = alarms
    assert alarm.segment == "DE" and alarm.baseline == "holdback"
    assert alarm.hit_rate == pytest.approx(0.10) and alarm.expected == pytest.approx(0.20)
    assert alarm.statistic >= 12 and alarm.impressions >= 200


def test_the_model_below_the_holdback_everywhere_alarms_per_segment_and_over_all_traffic():
    us_dropped = {"model_US": (1_000, 100), "holdback_US": (1_000, 200)}
    alarms = monitor().judge(minutes(10, **us_dropped, **DE_DROPPED), {})
    assert ids(alarms) == {f"quality:{VERSION}:{segment}:holdback" for segment in ("DE", "US", ALL_SEGMENTS)}


def test_no_alarm_without_enough_model_answers_however_strong_the_evidence():
    strong = minutes(10, **DE_DROPPED)  # 10,000 model answers in DE
    assert ids(monitor(min_impressions=200).judge(strong, {})) == {f"quality:{VERSION}:DE:holdback",
                                                                   f"quality:{VERSION}:{ALL_SEGMENTS}:holdback"}
    assert monitor(min_impressions=20_000).judge(strong, {}) == []


def test_an_equal_model_and_control_group_raise_nothing():
    equal = {"model_DE": (1_000, 200), "holdback_DE": (1_000, 200)}
    assert monitor().judge(minutes(30, **HEALTHY_US, **equal), {}) == []


def test_the_alarm_goes_away_by_itself_once_the_model_is_back_and_a_clear_restarts_the_test():
    judge = monitor()
    dropped = minutes(10, **DE_DROPPED)
    assert f"quality:{VERSION}:DE:holdback" in ids(judge.judge(dropped, {}))
    # the model back at the control group's rate: the evidence for a drop is used up, the CUSUM
    # returns to zero and the alarm is gone, with no clear
    recovered = {"model_DE": (1_000, 220), "holdback_DE": (1_000, 200)}
    back = dropped + minutes(3, start=1010, **recovered)
    assert f"quality:{VERSION}:DE:holdback" in ids(judge.judge(back, {})), "not yet: the drop outweighs 3 minutes"
    assert judge.judge(dropped + minutes(30, start=1010, **recovered), {}) == []
    # a manual clear at minute 1009 restarts that test from there: the drop before it no longer counts
    cleared = {f"quality:{VERSION}:DE:holdback": 1009}
    assert f"quality:{VERSION}:DE:holdback" not in ids(judge.judge(dropped, cleared))
