"""orjson on the request path gives exactly what the standard library gave: the same value or the
same refusal for every body, the same answer (and the same refusal of NaN) for every value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import json_codec
from proxy.shapes.request import BadRequest, _decode_exactly, decode_json

scalars = (st.none() | st.booleans() | st.text(max_size=8)
           | st.integers() | st.integers(min_value=-2**80, max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                      max_leaves=12)


def _same(a, b) -> bool:
    # NaN != NaN: compare what a reader of the value would see
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _outcome(decode, body: bytes):
    try:
        return "value", decode(body)
    except BadRequest as exc:
        return "refused", (str(exc), exc.status)


@given(values)
def test_any_body_the_standard_library_writes_decodes_to_the_same_value(value):
    body = json.dumps(value).encode()  # NaN, Infinity and integers of any size, as a client may send them
    kind, got = _outcome(decode_json, body)
    expected_kind, expected = _outcome(_decode_exactly, body)
    assert kind == expected_kind and _same(got, expected)


@pytest.mark.parametrize("body", [
    b'{"weight_kg": 123456789012345678901234567890}',   # past 64 bits: orjson would read a float
    b'{"weight_kg": 18446744073709551616}', b'{"weight_kg": -9223372036854775809}',
    b'{"weight_kg": ' + b"9" * 400 + b"}",                 # past 300 digits: an infinity the guard names
    b'{"weight_kg": 1e400}', b'{"weight_kg": NaN}', b'{"weight_kg": -Infinity}',
    b'{"name": "\\ud800"}', b'{"a": 1, "a": 2}', b"[" * 5000 + b"]" * 5000, b'\xef\xbb\xbf{"a": 1}',
    b'{"a": 1}\x00', b'{"a": "\xff"}', b'{"a": 0.1234567890123456789}', b'{"a": -0.0}', b"{'a': 1}", b'{"a": 1,}',
    b'"just a string"', b"  7  ",
])
def test_the_awkward_bodies_decode_or_are_refused_as_before(body):
    kind, got = _outcome(decode_json, body)
    expected_kind, expected = _outcome(_decode_exactly, body)
    assert kind == expected_kind and _same(got, expected), (got, expected)


def test_a_huge_integer_stays_an_exact_integer():
    assert decode_json(b'{"k": 123456789012345678901234567890}') == {"k": 123456789012345678901234567890}
    assert isinstance(decode_json(b'{"k": 18446744073709551616}')["k"], int)


@given(values)
def test_an_answer_is_the_same_json_value_or_refused_for_the_same_reason(value):
    try:
        expected = json.dumps(value, allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError):
            json_codec.dumps(value)
        return
    assert _same(json.loads(json_codec.dumps(value)), json.loads(expected))


@pytest.mark.parametrize("value", [{"scores": [0.5, math.nan]}, {"scores": [math.inf]}, {"x": -math.inf}])
def test_nan_never_leaves(value):
    with pytest.raises(ValueError):
        json_codec.dumps(value)


def test_what_orjson_refuses_is_written_as_the_standard_library_writes_it():
    assert json.loads(json_codec.dumps({"n": 2**70})) == {"n": 2**70}
    assert json.loads(json_codec.dumps({1: "a", "b": None})) == {"1": "a", "b": None}
    assert json_codec.dumps({"items": ["é"], "score": 0.5}) == '{"items":["é"],"score":0.5}'.encode()
