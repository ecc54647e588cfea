"""A tensor model's input map (`--oip-input NAME=FIELD[,FIELD...][:DATATYPE]`) and output names: a request
made for `INPUT__0` FP32 [B, N] reads as its fields, the fallback answers under the model's output names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from proxy.oip_inputs import TensorInput, parse_inputs
from proxy.settings import LimitSettings, Settings, SettingsError
from proxy.shapes.base import Encoded, RowAnswer
from proxy.shapes.oip import OipV2Shape
from proxy.shapes.request import BadRequest, PredictRequest

pytestmark = pytest.mark.unit

LIMITS = LimitSettings(default_k=10, max_k=100, max_history=5)
MAP = [TensorInput("INPUT__0", ("weight_kg", "height_cm", "age"), "FP32"), TensorInput("INPUT__1", ("country",), "BYTES")]
SHAPE = OipV2Shape(LIMITS, "recguard", MAP, "OUTPUT__0", "OUTPUT__1")


def test_the_map_grammar():
    assert parse_inputs("INPUT__0=weight_kg, height_cm,age ; INPUT__1=country:bytes") == MAP[:1] + [
        TensorInput("INPUT__1", ("country",), "BYTES")]
    assert parse_inputs("") == [] and parse_inputs("x=a")[0].datatype == "FP32"


@pytest.mark.parametrize("text, message", [
    ("INPUT__0", "is not NAME=FIELD"),
    ("=age", "is not NAME=FIELD"),
    ("INPUT__0=age,,height_cm", "is not NAME=FIELD"),
    ("INPUT__0=age:FLOAT", "datatype 'FLOAT' is not one of"),
    ("INPUT__0=age;INPUT__0=height_cm", "tensor 'INPUT__0' named twice"),
    ("INPUT__0=age;INPUT__1=age", "field 'age' named twice"),
])
def test_a_bad_map_is_refused_naming_the_entry(text, message):
    with pytest.raises(ValueError, match=message):
        parse_inputs(text)
    with pytest.raises(SettingsError, match="RECGUARD_OIP_INPUTS: expected NAME=FIELD"):
        Settings.from_env({"RECGUARD_OIP_INPUTS": text})


def test_the_items_output_must_be_named_and_not_the_scores_one():
    with pytest.raises(SettingsError, match="RECGUARD_OIP_ITEMS_OUTPUT"):
        Settings.from_env({"RECGUARD_OIP_ITEMS_OUTPUT": ""})
    with pytest.raises(SettingsError, match="RECGUARD_OIP_ITEMS_OUTPUT"):
        Settings.from_env({"RECGUARD_OIP_ITEMS_OUTPUT": "out", "RECGUARD_OIP_SCORES_OUTPUT": "out"})
    assert Settings.from_env({"RECGUARD_OIP_SCORES_OUTPUT": ""}).upstream.oip_scores_output == ""


def tensor_inputs(rows: list[dict], binary: bool) -> list[triton.InferInput]:
    features = triton.InferInput("INPUT__0", [len(rows), 3], "FP32")
    features.set_data_from_numpy(np.array([[row["weight_kg"], row["height_cm"], row["age"]] for row in rows],
                                          dtype=np.float32), binary_data=binary)
    country = triton.InferInput("INPUT__1", [len(rows), 1], "BYTES")
    country.set_data_from_numpy(np.array([[row["country"]] for row in rows], dtype=object), binary_data=binary)
    return [features, country]


ROWS = [{"weight_kg": 70.5, "height_cm": 175, "age": 31, "country": "DE"},
        {"weight_kg": 61.25, "height_cm": 160, "age": 44, "country": "FR"}]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_tensor_request_reads_as_its_fields(binary):
    body, length = triton.InferenceServerClient.generate_request_body(tensor_inputs(ROWS, binary))
    parsed = SHAPE.parse(body, json_length=length)
    assert [row.fields for row in parsed.rows] == ROWS
    assert all(row.history == [] and row.k == 10 for row in parsed.rows)
    # the rows the guard let through go up in the same tensors
    subset = json.loads(SHAPE.subset(parsed, [1]))
    assert SHAPE.parse(json.dumps(subset).encode()).rows == parsed.rows[1:]
    assert {tensor["name"]: tensor["shape"] for tensor in subset["inputs"]} == {"INPUT__0": [1, 3], "INPUT__1": [1, 1]}


def test_one_row_may_come_as_a_vector_and_a_one_field_tensor_as_b():
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [3], "datatype": "FP32", "data": [70.5, 175, 31]},
                                  {"name": "INPUT__1", "shape": [1], "datatype": "BYTES", "data": ["DE"]}]}).encode()
    assert SHAPE.parse(body).rows[0].fields == ROWS[0]


@pytest.mark.parametrize("tensors, message", [
    ([{"name": "INPUT__0", "shape": [1, 3], "datatype": "FP64", "data": [70.5, 175, 31]}],
     "input 'INPUT__0' must be FP32, got 'FP64'"),
    ([{"name": "INPUT__0", "shape": [1, 2], "datatype": "FP32", "data": [70.5, 175]}],
     "input 'INPUT__0' must have shape [B, 3] (its fields: weight_kg, height_cm, age); got [1, 2]"),
    ([{"name": "INPUT__0", "shape": [1, 3], "datatype": "FP32", "data": [70.5, 175, 31]},
      {"name": "age", "shape": [1], "datatype": "INT64", "data": [31]}],
     "field 'age' sent twice: in input 'INPUT__0' and as an input of its own"),
    ([{"name": "INPUT__0", "shape": [2, 3], "datatype": "FP32", "data": [70.5, 175, 31] * 2},
      {"name": "INPUT__1", "shape": [1, 1], "datatype": "BYTES", "data": ["DE"]}],
     "every signup input must have the same batch size; got [1, 2]"),
])
def test_a_tensor_that_does_not_fit_the_map_is_a_400(tensors, message):
    with pytest.raises(BadRequest) as raised:
        SHAPE.parse(json.dumps({"inputs": tensors}).encode())
    assert str(raised.value) == message and raised.value.status == 400


def test_the_model_is_read_and_the_fallback_answers_under_the_models_output_names():
    answer = {"outputs": [{"name": "OUTPUT__0", "datatype": "INT64", "shape": [2, 2], "data": [7, 9, 3, 4]},
                          {"name": "OUTPUT__1", "datatype": "FP32", "shape": [2, 2], "data": [0.5, 0.25, 1.0, 0.0]}]}
    assert [(r.items, r.scores) for r in SHAPE.read_answer(answer, 2)] == [(["7", "9"], [0.5, 0.25]),
                                                                           (["3", "4"], [1.0, 0.0])]
    body, length = triton.InferenceServerClient.generate_request_body(tensor_inputs(ROWS[:1], True))
    rendered = SHAPE.render(SHAPE.parse(body, json_length=length), [RowAnswer(["i1", "i2"], [0.5, 0.25], "fallback")],
                            "v1")
    assert isinstance(rendered, Encoded)
    result = triton.InferenceServerClient.parse_response_body(rendered.body, header_length=int(
        rendered.headers["Inference-Header-Content-Length"]))
    assert result.as_numpy("OUTPUT__0").tolist() == [[b"i1", b"i2"]]
    assert result.as_numpy("OUTPUT__1").tolist() == [[0.5, 0.25]]
    with pytest.raises(BadRequest, match="no output named 'items'; the outputs are 'OUTPUT__0' and 'OUTPUT__1'"):
        SHAPE.parse(json.dumps({"inputs": [{"name": "INPUT__1", "shape": [1], "datatype": "BYTES", "data": ["DE"]}],
                                "outputs": [{"name": "items"}]}).encode())


def test_without_scores_the_model_gives_items_only():
    shape = OipV2Shape(LIMITS, "recguard", MAP, "OUTPUT__0", "")
    answer = {"outputs": [{"name": "OUTPUT__0", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]},
                          {"name": "OUTPUT__1", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    assert shape.read_answer(answer, 1)[0].scores == []
    rendered = shape.render(None, [RowAnswer(["a"], [0.5], "fallback")], "v1")
    assert [output["name"] for output in rendered["outputs"]] == ["OUTPUT__0"]


def test_recguard_writes_and_describes_the_mapped_tensors():
    sent = json.loads(SHAPE.request_body([PredictRequest({**ROWS[0], "email": "x"}, ["i1"], 5)]))
    by_name = {tensor["name"]: tensor for tensor in sent["inputs"]}
    assert by_name["INPUT__0"] == {"name": "INPUT__0", "shape": [1, 3], "datatype": "FP32", "data": [70.5, 175, 31]}
    assert by_name["INPUT__1"]["data"] == ["DE"] and by_name["email"]["data"] == ["x"]
    assert "age" not in by_name and by_name["k"]["data"] == [5]
    profile = {"fields": {"weight_kg": {"type": "number"}, "height_cm": {"type": "integer"},
                          "age": {"type": "integer"}, "country": {"type": "string"}, "email": {"type": "string"}}}
    metadata = SHAPE.metadata(profile, "recguard", "v1")
    assert [(tensor["name"], tensor["datatype"], tensor["shape"]) for tensor in metadata["inputs"]] == [
        ("INPUT__0", "FP32", [-1, 3]), ("INPUT__1", "BYTES", [-1, 1]), ("email", "BYTES", [-1]),
        ("history", "BYTES", [-1, -1]), ("k", "INT32", [1])]
    assert [output["name"] for output in metadata["outputs"]] == ["OUTPUT__0", "OUTPUT__1"]
