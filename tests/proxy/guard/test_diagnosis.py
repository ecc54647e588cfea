"""Renames and merges named from what the new field's values look like, never echoing them."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.guard.checks import Guard
from proxy.settings import Settings
from proxy.shapes.request import PredictRequest
from tests.harness.proxy import merged_names, renamed_email


@pytest.fixture(scope="module")
def guard(loaded_bundle):
    return Guard.from_bundle(loaded_bundle, Settings.from_env({}).guard)


def suspicions(guard, body: dict) -> set[tuple[str, str, str]]:
    anomalies = guard.check(PredictRequest(body, [], 10))
    found = {(a.field, a.kind, a.detail) for a in anomalies if a.kind.startswith("suspected_")}
    shown = " ".join(a.detail for a in anomalies)
    assert not any(str(value) in shown for key, value in body.items() if key not in ("country",) and len(str(value)) > 3)
    return found


def renamed(body: dict, old: str, new: str) -> dict:
    body = dict(body)
    body[new] = body.pop(old)
    return body


def test_renamed_email_is_named(guard, tiny_holdout):
    assert suspicions(guard, renamed_email(tiny_holdout[0])) == {("user_email", "suspected_rename", "email → user_email")}


def test_merged_names_are_named(guard, tiny_holdout):
    assert suspicions(guard, merged_names(tiny_holdout[1])) == \
        {("name", "suspected_merge", "first_name + last_name → name")}


def test_a_merge_joined_another_way_is_still_a_merge(guard, tiny_holdout):
    body = {k: v for k, v in tiny_holdout[2].items() if k not in ("first_name", "last_name")}
    body["full_name"] = f"{tiny_holdout[2]['last_name']}, {tiny_holdout[2]['first_name']}"
    assert suspicions(guard, body) == {("full_name", "suspected_merge", "first_name + last_name → full_name")}


def test_the_whole_redesign_at_once(guard, tiny_holdout):
    body = merged_names(renamed_email(tiny_holdout[3]))
    assert suspicions(guard, body) == {("user_email", "suspected_rename", "email → user_email"),
                                       ("name", "suspected_merge", "first_name + last_name → name")}


@pytest.mark.parametrize("old, new", [("weight_kg", "weight"), ("country", "market"), ("age", "age_years"),
                                      ("first_name", "given_name")])
def test_numbers_categories_and_strings_renamed(guard, tiny_holdout, old, new):
    assert suspicions(guard, renamed(tiny_holdout[4], old, new)) == {(new, "suspected_rename", f"{old} → {new}")}


def test_a_single_name_in_a_new_field_is_a_rename_not_a_merge(guard, tiny_holdout):
    body = {k: v for k, v in tiny_holdout[5].items() if k not in ("first_name", "last_name")}
    body["name"] = tiny_holdout[5]["first_name"]
    assert ("name", "suspected_rename", "first_name → name") in suspicions(guard, body)


@pytest.mark.parametrize("new_value", ["SAVE10", 3, True, None, ["a@b.c"], "not an e-mail at all"])
def test_values_that_look_like_nothing_missing_are_not_diagnosed(guard, tiny_holdout, new_value):
    body = {k: v for k, v in tiny_holdout[6].items() if k != "email"}
    body["coupon"] = new_value
    assert suspicions(guard, body) == set()


def test_unexpected_fields_alone_or_missing_fields_alone_are_not_diagnosed(guard, tiny_holdout):
    assert suspicions(guard, {**tiny_holdout[7], "user_email": tiny_holdout[7]["email"]}) == set()
    assert suspicions(guard, {k: v for k, v in tiny_holdout[7].items() if k != "email"}) == set()


def test_a_bundle_without_string_shapes_still_diagnoses_numbers(loaded_bundle, tiny_holdout):
    profile = {**loaded_bundle.profile, "fields": {
        name: {key: value for key, value in spec.items() if key != "shape"}
        for name, spec in loaded_bundle.profile["fields"].items()}}
    guard = Guard.from_bundle(dataclasses.replace(loaded_bundle, profile=profile), Settings.from_env({}).guard)
    assert suspicions(guard, renamed_email(tiny_holdout[0])) == set()
    assert suspicions(guard, renamed(tiny_holdout[0], "weight_kg", "weight")) == \
        {("weight", "suspected_rename", "weight_kg → weight")}


def answer_of(client, body: dict) -> dict:
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    return response.get_json()


def test_over_http_a_rename_is_named_reported_only(client, tiny_holdout):
    body = renamed_email(tiny_holdout[10])
    answer = answer_of(client, body)
    assert {"field": "user_email", "kind": "suspected_rename", "detail": "email → user_email"} in answer["anomalies"]
    assert answer["source"] == "model"
    assert body["user_email"] not in str(answer["anomalies"])


def test_over_http_a_merge_is_named_reported_only(client, tiny_holdout):
    body = merged_names(tiny_holdout[11])
    answer = answer_of(client, body)
    assert {"field": "name", "kind": "suspected_merge", "detail": "first_name + last_name → name"} in answer["anomalies"]
    assert answer["source"] == "model"
    shown = str(answer["anomalies"])
    assert all(part not in shown for part in body["name"].split())


def test_over_http_a_number_for_a_missing_email_is_not_a_rename(client, tiny_holdout):
    body = {k: v for k, v in tiny_holdout[12].items() if k != "email"} | {"user_email": 12345}
    kinds = {anomaly["kind"] for anomaly in answer_of(client, body)["anomalies"]}
    assert kinds == {"missing_field", "unexpected_field"}


def test_over_http_suspicions_are_counted_in_redis(app, client, tiny_holdout):
    answer_of(client, merged_names(renamed_email(tiny_holdout[13])))
    assert app.extensions["recguard"].counters.flush()
    by_kind = client.get("/anomalies?since=5m").get_json()["by_kind"]
    assert by_kind["suspected_rename"] == 1 and by_kind["suspected_merge"] == 1
