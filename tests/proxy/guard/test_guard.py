"""The guard, driven by a small hand-written profile: each anomaly kind, its detail and its routing."""

import math

import pytest

from proxy.guard.checks import Guard, routes_to_fallback
from proxy.shapes.request import PredictRequest

PROFILE = {
    "schema_version": 1,
    "segment_field": "country",
    "fields": {
        "user_id": {"role": "identifier", "type": "string", "personal": False, "presence": 1.0},
        "email": {"role": "identifier", "type": "string", "personal": True, "presence": 1.0},
        "first_name": {"role": "contract", "type": "string", "personal": True, "presence": 1.0},
        "nickname": {"role": "contract", "type": "string", "personal": True, "presence": 0.4},
        "country": {"role": "feature", "type": "string", "personal": False, "presence": 1.0,
                    "domain": {"DE": 0.5, "FR": 0.5}},
        "weight_kg": {"role": "feature", "type": "number", "personal": False, "presence": 1.0,
                      "min": 40.0, "max": 140.0, "mean": 75.0, "std": 15.0},
        "age": {"role": "feature", "type": "integer", "personal": False, "presence": 1.0,
                "min": 18, "max": 80, "mean": 40.0, "std": 12.0},
    },
}
CATALOGUE = ["item_00001", "item_00002"]
CLEAN = {"user_id": "u1", "email": "ana.lopez@example.com", "first_name": "Ana", "country": "DE",
         "weight_kg": 70.0, "age": 30}


@pytest.fixture
def guard():
    return Guard(PROFILE, CATALOGUE, range_tolerance=0.05, required_presence=0.99)


def check(guard, history=(), **changes):
    fields = {**CLEAN, **changes}
    fields = {key: value for key, value in fields.items() if value is not ...}
    return guard.check(PredictRequest(fields=fields, history=list(history), k=10))


def kinds(anomalies):
    return [(a.field, a.kind) for a in anomalies]


def test_clean_request_has_no_anomaly(guard):
    assert check(guard, history=["item_00001"]) == []


def test_optional_field_may_be_absent(guard):
    assert check(guard, nickname=...) == []


def test_renamed_identifier_is_reported_but_the_model_still_answers(guard):
    anomalies = check(guard, email=..., user_email="ana.lopez@example.com")
    assert kinds(anomalies) == [("email", "missing_field"), ("user_email", "unexpected_field")]
    assert not routes_to_fallback(anomalies)


def test_merged_names_are_reported_without_routing(guard):
    anomalies = check(guard, first_name=..., name="Ana Lopez")
    assert kinds(anomalies) == [("first_name", "missing_field"), ("name", "unexpected_field")]
    assert not routes_to_fallback(anomalies)


@pytest.mark.parametrize("changes, expected", [
    ({"weight_kg": ...}, ("weight_kg", "missing_field")),
    ({"weight_kg": None}, ("weight_kg", "missing_field")),
    ({"weight_kg": "70.5"}, ("weight_kg", "type_mismatch")),
    ({"weight_kg": "heavy"}, ("weight_kg", "type_mismatch")),
    ({"weight_kg": True}, ("weight_kg", "type_mismatch")),
    ({"weight_kg": [70]}, ("weight_kg", "type_mismatch")),
    ({"weight_kg": 160.0}, ("weight_kg", "out_of_range")),
    ({"weight_kg": 30.0}, ("weight_kg", "out_of_range")),
    ({"weight_kg": math.nan}, ("weight_kg", "non_finite")),
    ({"weight_kg": math.inf}, ("weight_kg", "non_finite")),
    ({"weight_kg": 10 ** 400}, ("weight_kg", "non_finite")),
    ({"country": "MX"}, ("country", "unknown_category")),
    ({"country": 49}, ("country", "type_mismatch")),
])
def test_feature_anomalies_route_to_the_fallback(guard, changes, expected):
    anomalies = check(guard, **changes)
    assert kinds(anomalies) == [expected]
    assert routes_to_fallback(anomalies)


def test_a_fraction_where_training_had_whole_numbers_is_a_number_checked_against_the_range(guard):
    """A value in another unit with a fraction (a height in inches, round(cm / 2.54, 1)) is out of
    range, not a type error that hides it, and a plausible fraction is served by the model."""
    assert check(guard, age=30.5) == []
    anomalies = check(guard, age=7.5)
    assert kinds(anomalies) == [("age", "out_of_range")] and routes_to_fallback(anomalies)


def test_tolerance_admits_values_just_outside_the_training_range(guard):
    assert check(guard, weight_kg=144.0) == []
    assert check(guard, age=18.0) == []


def test_unknown_history_items_are_reported_only(guard):
    anomalies = check(guard, history=["item_00001", "item_99999", "nope"])
    assert kinds(anomalies) == [("history", "unknown_item")]
    assert "2 of 3" in anomalies[0].detail
    assert not routes_to_fallback(anomalies)


def test_details_never_echo_personal_values(guard):
    anomalies = check(guard, email=12345, first_name=["Ana"], user_email="ana.lopez@example.com",
                      **{"ana.lopez@example.com": "x"})
    text = " ".join(f"{a.field} {a.detail}" for a in anomalies)
    assert "ana" not in text.lower() and "12345" not in text
    assert ("_other", "unexpected_field") in kinds(anomalies)


def test_numeric_details_say_what_training_saw(guard):
    [anomaly] = check(guard, weight_kg=300.0)
    assert anomaly.detail == "300 outside the training range [40, 140]"


def test_unexpected_fields_are_capped(guard):
    anomalies = check(guard, **{f"extra_{i}": i for i in range(100)})
    assert len(anomalies) == 17
    assert anomalies[-1].field == "_other" and "84 more" in anomalies[-1].detail


def test_names_and_values_with_a_trailing_newline_are_not_echoed(guard):
    # `$` matches before a final newline: "email\n" once passed as a safe name, showing up in counts,
    # the CLI and the dashboard as a second "email" line, and "XX\n" was quoted in a detail
    anomalies = check(guard, **{"email\n": "x"}, country="XX\n")
    assert ("_other", "unexpected_field") in kinds(anomalies)
    assert all("\n" not in f"{a.field}{a.detail}" for a in anomalies)


def test_an_out_of_range_value_that_a_common_unit_factor_brings_back_is_named(loaded_bundle):
    """Per request: the value converted back by a common factor lands in the training's central range."""
    from proxy.settings import Settings
    from proxy.shapes.request import PredictRequest

    guard = Guard.from_bundle(loaded_bundle, Settings().guard)
    fields = loaded_bundle.profile["fields"]
    base = {"country": "DE", "weight_kg": fields["weight_kg"]["quantiles"]["0.5"],
            "height_cm": int(fields["height_cm"]["quantiles"]["0.5"]), "age": int(fields["age"]["quantiles"]["0.5"])}

    def detail(**changes) -> str:
        [anomaly] = [a for a in guard.check(PredictRequest({**base, **changes}, [], 10)) if a.kind == "out_of_range"]
        return anomaly.detail

    assert "; looks like cm→in" in detail(height_cm=round(base["height_cm"] / 2.54, 1))
    assert "; looks like kg→lb" in detail(weight_kg=round(base["weight_kg"] * 2.20462, 1))
    # a heavier shopper in pounds may sit where inches would too: both are named, the nearer first
    assert "kg→lb" in detail(weight_kg=round(base["weight_kg"] * 2.20462 * 1.2, 1))
    assert "; looks like years→months or ft→in" in detail(age=base["age"] * 12)
    assert "; looks like cm→m or percent→fraction" in detail(height_cm=base["height_cm"] / 100)
    # nothing to name: out of range, and no common factor brings it back
    assert "looks like" not in detail(height_cm=5000) and "looks like" not in detail(weight_kg=-3)


def test_a_json_integer_is_the_same_id_where_training_ids_were_decimal():
    numbered = {**PROFILE, "fields": {**PROFILE["fields"],
                                      "user_id": {**PROFILE["fields"]["user_id"], "integer_ids": True}}}
    guard = Guard(numbered, CATALOGUE, range_tolerance=0.05, required_presence=0.99)
    assert check(guard, user_id=6) == [] and check(guard, user_id="6") == []
    for sent in (-6, 6.5, True, [6]):
        assert [(a.field, a.kind) for a in check(guard, user_id=sent)] == [("user_id", "type_mismatch")], sent
    # where the ids were not all decimal ("u1", "007"), a number is not one of them
    plain = Guard(PROFILE, CATALOGUE, range_tolerance=0.05, required_presence=0.99)
    assert [(a.field, a.kind) for a in check(plain, user_id=6)] == [("user_id", "type_mismatch")]
