"""The envelope of a /predict body: every bad input a careless or hostile client sends gets a clear 400."""

import math

import pytest

from proxy.settings import LimitSettings
from proxy.shapes.recguard import RecguardShape
from proxy.shapes.request import BadRequest


def parse(body: bytes, **limits):
    options = {"default_k": 10, "max_k": 100, "max_history": 5, **limits}
    (request,) = RecguardShape(LimitSettings(**options)).parse(body).rows
    return request


def test_clean_body_splits_fields_history_and_k():
    parsed = parse(b'{"country": "DE", "weight_kg": 70.5, "history": ["item_00001"], "k": 3}')
    assert parsed.fields == {"country": "DE", "weight_kg": 70.5}
    assert parsed.history == ["item_00001"]
    assert parsed.k == 3


def test_defaults_when_k_and_history_are_absent_or_null():
    parsed = parse(b'{"country": "DE", "k": null, "history": null}')
    assert parsed.k == 10 and parsed.history == []


@pytest.mark.parametrize("body, message", [
    (b"", "empty body"),
    (b"   \n", "empty body"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"a": "\xc3\x28"}', "not valid UTF-8"),
    (b"[1, 2]", "must be a JSON object, got array"),
    (b'"text"', "must be a JSON object, got string"),
    (b"null", "must be a JSON object, got null"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"k": 0}', "k must be an integer from 1 to 100"),
    (b'{"k": 101}', "k must be an integer from 1 to 100"),
    (b'{"k": 10000000000000000000000}', "k must be an integer"),
    (b'{"k": "5"}', "k must be an integer"),
    (b'{"k": 2.5}', "k must be an integer"),
    (b'{"k": true}', "k must be an integer"),
    (b'{"k": 10.5}', "k must be an integer"),
    (b'{"k": 1e400}', "k must be an integer"),
    (b'{"k": NaN}', "k must be an integer"),
    (b'{"k": 0.0}', "k must be an integer from 1 to 100"),
    (b'{"k": 1.01e2}', "k must be an integer from 1 to 100"),
    (b'{"history": "item_00001"}', "history must be a list"),
    (b'{"history": {"a": 1}}', "history must be a list"),
    (b'{"history": [1, 2]}', "history must be a list"),
    (b'{"history": [null]}', "history must be a list"),
    (b'{"history": [["item_00001"]]}', "history must be a list"),
    (b'{"history": ["a", "b", "c", "d", "e", "f"]}', "at most 5"),
])
def test_bad_envelopes_are_refused_with_a_clear_message(body, message):
    with pytest.raises(BadRequest) as caught:
        parse(body)
    assert caught.value.status == 400
    assert message in str(caught.value)


@pytest.mark.parametrize("text", [b"10", b"10.0", b"1e1", b"1.0E+1", b"100.000"])
def test_k_is_a_json_number_with_no_fractional_part(text):
    """JSON Schema's integer, what the exported contract and any validator (ajv) accept."""
    assert parse(b'{"k": ' + text + b"}").k == int(float(text))
    assert type(parse(b'{"k": ' + text + b"}").k) is int


def test_nan_infinity_and_overflowing_numbers_become_non_finite_values():
    parsed = parse(b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": ' + b"9" * 5000 + b"}")
    assert math.isnan(parsed.fields["a"])
    assert parsed.fields["b"] == math.inf and parsed.fields["c"] == -math.inf
    assert parsed.fields["d"] == math.inf and parsed.fields["e"] == math.inf
