"""Triton's binary tensor data extension in the OIP v2 shape: bodies written by tritonclient itself (its
defaults are binary), answers read back by tritonclient, and a clear 400 for every malformed binary body."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.settings import LimitSettings
from proxy.shapes.base import Encoded, RowAnswer
from proxy.shapes.oip import OipV2Shape
from proxy.shapes.request import BadRequest
from proxy.shapes.triton_binary import (
    BINARY_HEADER,
    BinaryError,
    header_length,
    read_answer,
)

pytestmark = pytest.mark.unit

SHAPE = OipV2Shape(LimitSettings(default_k=10, max_k=100, max_history=5), "recguard")
ROWS = [{"country": "DE", "weight_kg": 70.5, "age": 31, "history": ["item_1", "item_2"]},
        {"country": "FR", "weight_kg": 61.25, "age": 44, "history": ["item_3"]}]


def inputs(binary: bool, rows=ROWS, k: int = 3) -> list[triton.InferInput]:
    """The tensors a team's client sends for `rows`, as tritonclient writes them."""
    tensors = []
    for name, datatype, dtype in (("country", "BYTES", object), ("weight_kg", "FP64", np.float64),
                                  ("age", "INT64", np.int64)):
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(np.array([row[name] for row in rows], dtype=dtype), binary_data=binary)
        tensors.append(tensor)
    width = max(len(row["history"]) for row in rows)
    history = triton.InferInput("history", [len(rows), width], "BYTES")
    history.set_data_from_numpy(np.array([[*row["history"], *[""] * (width - len(row["history"]))] for row in rows],
                                         dtype=object), binary_data=binary)
    count = triton.InferInput("k", [1], "INT32")
    count.set_data_from_numpy(np.array([k], dtype=np.int32), binary_data=binary)
    return [*tensors, history, count]


def body_of(tensors, outputs=None, request_id: str = "") -> tuple[bytes, int | None]:
    return triton.InferenceServerClient.generate_request_body(tensors, outputs=outputs, request_id=request_id)


def test_tritonclients_binary_body_reads_as_its_json_twin():
    binary, length = body_of(inputs(binary=True), request_id="r-7")
    text, no_length = body_of(inputs(binary=False), request_id="r-7")
    assert length is not None and no_length is None and len(binary) > length
    from_binary, from_json = SHAPE.parse(binary, json_length=length), SHAPE.parse(text)
    assert from_binary.rows == from_json.rows
    assert from_binary.rows[0].fields == {"country": "DE", "weight_kg": 70.5, "age": 31}
    assert from_binary.rows[1].history == ["item_3"] and from_binary.rows[1].k == 3
    assert from_binary.document_id == "r-7" and from_binary.json_length == length
    assert from_json.json_length is None


def test_fp32_and_bool_inputs_are_read_in_their_width():
    weight = triton.InferInput("weight_kg", [2], "FP32")
    weight.set_data_from_numpy(np.array([70.5, 61.25], dtype=np.float32))
    member = triton.InferInput("member", [2], "BOOL")
    member.set_data_from_numpy(np.array([True, False]))
    body, length = body_of([weight, member])
    parsed = SHAPE.parse(body, json_length=length)
    assert [row.fields for row in parsed.rows] == [{"weight_kg": 70.5, "member": True},
                                                   {"weight_kg": 61.25, "member": False}]


ANSWERS = [RowAnswer(["item_9", "item_8"], [0.75, 0.5], "model"), RowAnswer(["item_7"], [0.25], "fallback")]


def rendered(outputs=None) -> tuple[Encoded | dict, bytes]:
    body, length = body_of(inputs(binary=True), outputs=outputs, request_id="r-1")
    answer = SHAPE.render(SHAPE.parse(body, json_length=length), ANSWERS, "v1")
    return answer, body


def result_of(answer: Encoded | dict) -> triton.InferResult:
    if isinstance(answer, Encoded):
        return triton.InferenceServerClient.parse_response_body(
            answer.body, header_length=int(answer.headers[BINARY_HEADER]))
    return triton.InferenceServerClient.parse_response_body(json.dumps(answer).encode())


def test_no_outputs_named_means_every_output_in_binary_as_tritonclient_asks():
    answer, _ = rendered()
    assert isinstance(answer, Encoded) and answer.content_type == "application/octet-stream"
    header = json.loads(answer.body[:int(answer.headers[BINARY_HEADER])])
    assert all("data" not in output and output["parameters"]["binary_data_size"] > 0 for output in header["outputs"])
    result = result_of(answer)
    assert result.as_numpy("items").tolist() == [[b"item_9", b"item_8"], [b"item_7", b""]]
    assert result.as_numpy("scores").dtype == np.float32
    assert result.as_numpy("scores").tolist() == [[0.75, 0.5], [0.25, 0.0]]
    assert result.get_response()["parameters"]["source"] == "model;fallback" and result.get_response()["id"] == "r-1"


def test_each_outputs_binary_data_is_honoured_and_only_the_named_outputs_come_back():
    answer, _ = rendered([triton.InferRequestedOutput("items", binary_data=True),
                          triton.InferRequestedOutput("scores", binary_data=False)])
    header = json.loads(answer.body[:int(answer.headers[BINARY_HEADER])])
    by_name = {output["name"]: output for output in header["outputs"]}
    assert "data" not in by_name["items"] and by_name["scores"]["data"] == [0.75, 0.5, 0.25, 0.0]
    assert result_of(answer).as_numpy("items")[0].tolist() == [b"item_9", b"item_8"]

    only_items, _ = rendered([triton.InferRequestedOutput("items", binary_data=False)])
    assert isinstance(only_items, dict) and [output["name"] for output in only_items["outputs"]] == ["items"]


def test_a_binary_request_forwarded_in_part_becomes_json_that_keeps_the_output_choice():
    body, length = body_of(inputs(binary=True))
    subset = json.loads(SHAPE.subset(SHAPE.parse(body, json_length=length), [1]))
    assert subset["parameters"] == {"binary_data_output": True}
    assert all("binary_data_size" not in tensor.get("parameters", {}) for tensor in subset["inputs"])
    assert SHAPE.parse(json.dumps(subset).encode()).rows == [SHAPE.parse(body, json_length=length).rows[1]]


def test_a_models_binary_answer_is_read_back_into_items_and_scores():
    answer, _ = rendered()
    document = read_answer(answer.body, answer.headers[BINARY_HEADER])
    recommendations = SHAPE.read_answer(document, 2)
    assert [r.items for r in recommendations] == [["item_9", "item_8"], ["item_7"]]
    assert [r.scores for r in recommendations] == [[0.75, 0.5], [0.25]]
    with pytest.raises(BinaryError, match="does not fit"):
        read_answer(answer.body, str(len(answer.body) + 1))
    with pytest.raises(BinaryError, match="bytes after the last binary output"):
        read_answer(answer.body + b"\0", answer.headers[BINARY_HEADER])


def binary_request(tensors: list[dict], raw: bytes, **document) -> tuple[bytes, int]:
    header = json.dumps({"inputs": tensors, **document}).encode()
    return header + raw, len(header)


def age(size: int, datatype: str = "INT64", shape=(1,), **more) -> dict:
    return {"name": "age", "shape": list(shape), "datatype": datatype, "parameters": {"binary_data_size": size},
            **more}


def encoded_text(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


MALFORMED = [
    ("size past the body", binary_request([age(16)], struct.pack("<q", 30)), "runs past the body's end"),
    ("bytes left over", binary_request([age(8)], struct.pack("<q", 30) + b"\0\0"), "2 bytes after the last binary"),
    ("size not dtype x shape", binary_request([age(8, shape=[2])], struct.pack("<q", 30)),
     "8 bytes do not hold 2 INT64 values (16 bytes)"),
    ("INT32 size for INT64", binary_request([age(4)], struct.pack("<i", 30)), "4 bytes do not hold 1 INT64"),
    ("unsupported dtype", binary_request([age(2, "BF16")], b"\0\0"), "datatype 'BF16' is not supported"),
    ("unknown dtype", binary_request([age(8, "COMPLEX")], b"\0" * 8), "datatype 'COMPLEX' is not supported"),
    ("negative size", binary_request([age(-1)], b""), "binary_data_size must be a non-negative integer"),
    ("size not an integer", binary_request([age("8")], struct.pack("<q", 30)), "must be a non-negative integer"),
    ("data and size both", binary_request([age(8, data=[30])], struct.pack("<q", 30)), "both data and"),
    ("bad shape", binary_request([age(8, shape=["1"])], struct.pack("<q", 30)), "shape must be a list"),
    ("BYTES cut length", binary_request([{"name": "country", "shape": [1], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": 2}}], b"\x02\0"), "cut-off length"),
    ("BYTES element past its size", binary_request([{"name": "country", "shape": [1], "datatype": "BYTES",
                                                     "parameters": {"binary_data_size": 6}}], b"\x09\0\0\0DE"),
     "says 9 bytes, 2 are left"),
    ("BYTES count not the shape", binary_request([{"name": "country", "shape": [2], "datatype": "BYTES",
                                                   "parameters": {"binary_data_size": 6}}], encoded_text(b"DE")),
     "1 BYTES elements where the shape holds 2"),
    ("BYTES not UTF-8", binary_request([{"name": "country", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": 6}}], encoded_text(b"\xff\xfe")),
     "is not UTF-8"),
    ("header not JSON", (b"{inputs: 1}" + b"\0" * 8, 11), "JSON header of a binary request"),
    ("header cut inside the JSON", (b'{"inputs": []}', 5), "JSON header of a binary request"),
    ("header not an object", (b"[1]", 3), "must be a JSON object"),
    ("unknown output", binary_request([age(8)], struct.pack("<q", 30), outputs=[{"name": "INPUT__0"}]),
     "no output named 'INPUT__0'"),
    ("binary_data not a boolean", binary_request([age(8)], struct.pack("<q", 30),
                                                 outputs=[{"name": "items", "parameters": {"binary_data": 1}}]),
     "binary_data true or false"),
]


@pytest.mark.parametrize("body, length, message", [(body, length, message) for _, (body, length), message in MALFORMED],
                         ids=[case for case, _, _ in MALFORMED])
def test_every_malformed_binary_body_is_a_clear_400(body, length, message):
    with pytest.raises(BadRequest, match=re.escape(message)) as raised:
        SHAPE.parse(body, json_length=length)
    assert raised.value.status == 400


def test_a_json_body_naming_binary_inputs_without_the_header_is_told_so():
    body, _ = binary_request([age(8)], b"")
    with pytest.raises(BadRequest, match=f"has no {BINARY_HEADER} header"):
        SHAPE.parse(body)


@pytest.mark.parametrize("value, message", [("abc", "must be the JSON header's length"),
                                            ("-3", "must be the JSON header's length"),
                                            ("", "must be the JSON header's length"),
                                            ("٣", "must be the JSON header's length"),
                                            ("99", "says 99 bytes of JSON but the body has 10")])
def test_the_header_length_must_be_a_byte_count_within_the_body(value, message):
    with pytest.raises(BadRequest, match=message):
        header_length(value, 10)
    assert header_length(None, 10) is None and header_length(" 10 ", 10) == 10


@st.composite
def damaged_bodies(draw) -> tuple[bytes, int | None]:
    """A body tritonclient wrote, binary or JSON (or a binary one's JSON part sent alone, without the header),
    then damaged: a tensor's parameters, datatype, shape, name or data replaced by anything JSON holds, or
    taken out; for a binary one, bytes changed, cut or added and the header length moved too."""
    sent = draw(st.sampled_from(["binary", "json", "binary header alone"]))
    binary = sent == "binary"
    rows = [{**ROWS[0], "country": draw(st.text(max_size=5)), "history": draw(st.lists(st.text(max_size=4),
                                                                                        max_size=3))}]
    body, length = body_of(inputs(binary=sent != "json", rows=rows),
                           outputs=draw(st.sampled_from([None, [triton.InferRequestedOutput("items")]])))
    header = json.loads(body if length is None else body[:length])
    scalars = st.none() | st.booleans() | st.integers(-3, 40) | st.text(max_size=6)
    for _ in range(draw(st.integers(1, 2))):
        tensor = draw(st.sampled_from(header["inputs"]))
        key = draw(st.sampled_from(["parameters", "datatype", "shape", "name", "data"]))
        if draw(st.integers(0, 4)) == 0:
            tensor.pop(key, None)
            continue
        containers = st.lists(scalars, max_size=3) | st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "x"]), scalars, max_size=2)
        tensor[key] = draw(scalars if draw(st.booleans()) else containers)
    encoded = json.dumps(header).encode()
    if not binary:
        return encoded, None
    raw = bytearray(body[length:])
    for _ in range(draw(st.integers(0, 2))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=8))
    shift = draw(st.integers(-3, 3)) if draw(st.integers(0, 3)) == 0 else 0
    return encoded + bytes(raw), min(max(len(encoded) + shift, 0), len(encoded) + len(raw))


@settings(max_examples=400, deadline=None, database=None)
@given(damaged_bodies())
def test_a_damaged_binary_body_is_read_or_refused_with_a_400_never_anything_else(case):
    body, length = case
    try:
        parsed = SHAPE.parse(body, json_length=length)
    except BadRequest as exc:
        assert exc.status == 400 and str(exc)
        return
    rendered = SHAPE.render(parsed, [RowAnswer(["item_9"], [0.5], "model") for _ in parsed.rows], "v1")
    assert isinstance(rendered, (Encoded, dict))


def test_a_score_past_fp32s_range_is_its_infinity_in_a_binary_answer():
    body, length = body_of(inputs(binary=True, rows=ROWS[:1]))
    answer = SHAPE.render(SHAPE.parse(body, json_length=length),
                          [RowAnswer(["item_9", "item_8", "item_7"], [1e300, -1e300, 3.0e38], "model")], "v1")
    scores = result_of(answer).as_numpy("scores").tolist()
    assert scores[0][:2] == [float("inf"), float("-inf")] and scores[0][2] == pytest.approx(3.0e38, rel=1e-6)
