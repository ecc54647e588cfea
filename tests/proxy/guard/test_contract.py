"""The exported JSON Schema: held-out traffic passes, the redesign's payloads fail, and it agrees with the guard."""

from __future__ import annotations

import argparse
import json

import pytest
from jsonschema import Draft202012Validator

from model.errors import RecguardError
from proxy.cli import contract as contract_commands
from proxy.guard.checks import Guard
from proxy.guard.contract import request_schema
from proxy.settings import LimitSettings, Settings
from proxy.shapes.recguard import RecguardShape
from proxy.shapes.request import BadRequest
from proxy.words import UNKNOWN_ITEM
from tests.harness.proxy import merged_names, renamed_email

POUNDS_PER_KG = 2.20462


@pytest.fixture(scope="module")
def contract_settings(tiny_bundle) -> Settings:
    return Settings.from_env({}, bundle=tiny_bundle)


@pytest.fixture(scope="module")
def validator(loaded_bundle, contract_settings) -> Draft202012Validator:
    schema = request_schema(loaded_bundle.profile, contract_settings, model_version=loaded_bundle.model_version)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def failures(validator: Draft202012Validator, body: dict) -> set[str]:
    """The schema keywords a body breaks, as 'path:keyword' (path '' for the object itself)."""
    return {f"{'/'.join(map(str, error.absolute_path))}:{error.validator}" for error in validator.iter_errors(body)}


def test_every_clean_held_out_request_passes(validator, tiny_holdout):
    broken = [(i, failures(validator, body)) for i, body in enumerate(tiny_holdout) if not validator.is_valid(body)]
    assert broken == []


def test_history_and_k_are_part_of_the_request(validator, tiny_holdout):
    assert validator.is_valid({**tiny_holdout[0], "k": 5, "history": []})
    assert failures(validator, {**tiny_holdout[0], "k": 0}) == {"k:minimum"}
    assert failures(validator, {**tiny_holdout[0], "history": [1]}) == {"history/0:type"}


def test_a_renamed_field_fails(validator, tiny_holdout):
    assert failures(validator, renamed_email(tiny_holdout[0])) == {":required", ":additionalProperties"}


def test_merged_fields_fail(validator, tiny_holdout):
    assert failures(validator, merged_names(tiny_holdout[0])) == {":required", ":additionalProperties"}


def test_weight_in_pounds_fails_on_the_range(validator, tiny_holdout, loaded_bundle):
    top = loaded_bundle.profile["fields"]["weight_kg"]["max"]
    heavy = next(body for body in tiny_holdout if body["weight_kg"] * POUNDS_PER_KG > top * 1.1)
    assert failures(validator, {**heavy, "weight_kg": round(heavy["weight_kg"] * POUNDS_PER_KG, 1)}) == {"weight_kg:maximum"}


@pytest.mark.parametrize("change, expected", [
    ({"country": "MX"}, {"country:enum"}),
    ({"age": "41"}, {"age:type"}),
    ({"age": True}, {"age:type"}),
    ({"weight_kg": None}, {"weight_kg:type"}),
])
def test_unknown_categories_and_wrong_types_fail(validator, tiny_holdout, change, expected):
    assert failures(validator, {**tiny_holdout[0], **change}) == expected


def test_ranges_carry_the_guard_tolerance(loaded_bundle, tiny_bundle):
    spec = loaded_bundle.profile["fields"]["weight_kg"]
    span = spec["max"] - spec["min"]
    for tolerance in (0.0, 0.05):
        schema = request_schema(loaded_bundle.profile, Settings.from_env({}, bundle=tiny_bundle, range_tolerance=tolerance))
        weight = schema["properties"]["weight_kg"]
        assert weight["maximum"] == pytest.approx(spec["max"] + tolerance * span)
        assert weight["minimum"] == pytest.approx(spec["min"] - tolerance * span)


def test_fields_often_absent_in_training_are_optional(loaded_bundle, contract_settings, tiny_holdout):
    newsletter = {"role": "contract", "type": "string", "personal": False, "presence": 0.4,
                  "domain": {"no": 0.5, "yes": 0.5}}
    profile = {**loaded_bundle.profile, "fields": {**loaded_bundle.profile["fields"], "newsletter": newsletter}}
    schema = request_schema(profile, contract_settings)
    validator = Draft202012Validator(schema)
    assert "newsletter" not in schema["required"]
    for body in (tiny_holdout[0], {**tiny_holdout[0], "newsletter": None}, {**tiny_holdout[0], "newsletter": "yes"}):
        assert validator.is_valid(body)
    assert failures(validator, {**tiny_holdout[0], "newsletter": "maybe"}) == {"newsletter:enum"}


def test_schema_and_guard_agree(validator, loaded_bundle, contract_settings, tiny_holdout):
    """What the schema rejects the guard reports, and the reverse (catalogue membership aside)."""
    guard = Guard.from_bundle(loaded_bundle, contract_settings.guard)
    weight = loaded_bundle.profile["fields"]["weight_kg"]
    high = weight["max"] + contract_settings.guard.range_tolerance * (weight["max"] - weight["min"])
    base = tiny_holdout[1]
    variants = [base, renamed_email(base), merged_names(base), {**base, "country": "MX"}, {**base, "age": "41"},
                {**base, "weight_kg": high - 0.01}, {**base, "weight_kg": high + 0.01}, {**base, "height_cm": -1},
                {**base, "history": ["item_99999"]}, {**base, "extra": 1}, {k: v for k, v in base.items() if k != "age"},
                # a JSON number is a number: a fraction where training had whole numbers is range-checked
                {**base, "age": 41.5}, {**base, "height_cm": 170.5}, {**base, "height_cm": 61.4},
                # k: a number with no fractional part, as JSON Schema's integer
                {**base, "k": 10.0}, {**base, "k": 1e1}, {**base, "k": 10.5}, {**base, "k": 0}, {**base, "k": None},
                {**base, "k": True}, {**base, "k": "5"}, {**base, "history": None}]
    for body in variants:
        try:
            (request,) = RecguardShape(LimitSettings()).parse(json.dumps(body).encode()).rows
        except BadRequest as refused:
            reported = [str(refused)]
        else:
            reported = [a for a in guard.check(request) if a.kind != UNKNOWN_ITEM]
        assert validator.is_valid(body) == (not reported), (body, reported)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="recguard")
    contract_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_contract_command_writes_the_schema(tiny_bundle, tmp_path, validator, tiny_holdout):
    out = tmp_path / "request.schema.json"
    assert run("contract", "--bundle", str(tiny_bundle), "--out", str(out)) == 0
    schema = json.loads(out.read_text())
    assert schema == validator.schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_contract_command_prints_to_stdout(tiny_bundle, capsys, validator):
    assert run("contract", "--bundle", str(tiny_bundle)) == 0
    assert json.loads(capsys.readouterr().out) == validator.schema


def test_contract_command_names_a_missing_bundle(tmp_path):
    with pytest.raises(RecguardError, match="manifest.json"):
        run("contract", "--bundle", str(tmp_path / "nope"))


def test_the_contract_takes_a_json_integer_for_decimal_ids(loaded_bundle, contract_settings, tiny_holdout):
    profile = json.loads(json.dumps(loaded_bundle.profile))
    id_field = next(name for name, spec in profile["fields"].items() if spec["role"] == "identifier")
    body = {**tiny_holdout[0], id_field: 6}
    strict = Draft202012Validator(request_schema(profile, contract_settings))
    assert failures(strict, body) == {f"{id_field}:type"}
    profile["fields"][id_field]["integer_ids"] = True
    schema = request_schema(profile, contract_settings)
    Draft202012Validator.check_schema(schema)
    numbered = Draft202012Validator(schema)
    assert numbered.is_valid(body) and numbered.is_valid(tiny_holdout[0])
    assert failures(numbered, {**body, id_field: -1}) == {f"{id_field}:minimum"}
