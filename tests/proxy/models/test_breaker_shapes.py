"""The circuit breaker on a clock the test turns, JSON pointers, and the shapes' bodies both ways."""

from __future__ import annotations

import json

import pytest

from proxy.models.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from proxy.pointer import PointerError, assign, resolve, valid_pointer
from proxy.settings import LimitSettings, Settings, SettingsError, UpstreamSettings
from proxy.shapes.base import RowAnswer, ShapeError
from proxy.shapes.kserve import KServeV1Shape
from proxy.shapes.oip import OipV2Shape
from proxy.shapes.plain import PlainShape
from proxy.shapes.request import BadRequest
from tests.harness.clock import Clock


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(3, 10.0, 25.0, clock=clock)


def test_breaker_ejects_after_consecutive_failures_only():
    clock = Clock(100.0)
    b = breaker(clock)
    for _ in range(5):  # a success in between starts the count again
        b.failure(), b.failure(), b.success()
    assert b.state().state == CLOSED and b.allow()
    b.failure(), b.failure(), b.failure()
    assert b.state().state == OPEN and not b.allow()
    assert b.state().retry_in_seconds == 10.0


def test_breaker_lets_one_probe_through_and_grows_the_ejection():
    clock = Clock(100.0)
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 10
    assert b.allow() and b.state().state == HALF_OPEN
    assert not b.allow()  # only the probe
    b.failure()
    assert b.state().state == OPEN and b.state().multiplier == 2 and b.state().retry_in_seconds == 20.0
    clock.now += 20
    assert b.allow()
    b.failure()
    assert b.state().retry_in_seconds == 25.0  # capped at max_ejection
    clock.now += 25
    assert b.allow()
    b.success()
    assert b.state().state == CLOSED and b.allow() and b.state().ejections == 3


def test_breaker_multiplier_comes_down_while_healthy():
    clock = Clock(100.0)
    b = breaker(clock)
    for _ in range(2):
        for _ in range(3):
            b.failure()
        clock.now += 30
        assert b.allow()
        b.success()
    assert b.state().multiplier == 2
    clock.now += 15  # one base time healthy: one step down
    for _ in range(3):
        b.failure()
    assert b.state().multiplier == 2 and b.state().retry_in_seconds == 20.0


def test_pointers():
    document = {"a": {"b~c": [1, {"d/e": 2}]}}
    assert resolve(document, "") is document
    assert resolve(document, "/a/b~0c/1/d~1e") == 2
    assert resolve(document, "/a/x", None) is None
    with pytest.raises(PointerError):
        resolve(document, "/a/b~0c/01")
    assert assign({}, "/x/y", 3) == {"x": {"y": 3}}
    assert valid_pointer("") and valid_pointer("/items") and not valid_pointer("items") and not valid_pointer("/a~2")


def test_pointer_settings_are_checked_at_start():
    with pytest.raises(SettingsError, match="RECGUARD_UPSTREAM_ITEMS"):
        Settings.from_env({"RECGUARD_UPSTREAM_ITEMS": "items"})
    with pytest.raises(SettingsError, match="RECGUARD_UPSTREAM_URL"):
        Settings.from_env({"RECGUARD_UPSTREAM_URL": "ftp://model"})
    with pytest.raises(SettingsError, match="RECGUARD_UPSTREAM_PROTOCOL"):
        Settings.from_env({"RECGUARD_UPSTREAM_PROTOCOL": "grpc"})


def test_plain_shape_with_nested_pointers():
    upstream = UpstreamSettings(items="/result/ids", scores="/result/scores", request_fields="/user",
                                request_history="/user/history", request_k="/options/k")
    shape = PlainShape(upstream, LimitSettings())
    parsed = shape.parse(b'{"user": {"age": 30, "history": ["i1"]}, "options": {"k": 3}}')
    (row,) = parsed.rows
    assert row.fields == {"age": 30} and row.history == ["i1"] and row.k == 3
    assert json.loads(shape.request_body([row])) == {"user": {"age": 30, "history": ["i1"]}, "options": {"k": 3}}
    assert shape.read_answer({"result": {"ids": ["a", "b"], "scores": [2, 1]}}, 1)[0].items == ["a", "b"]
    with pytest.raises(ShapeError):
        shape.read_answer({"result": {"ids": ["a"]}}, 1)
    with pytest.raises(ShapeError):
        shape.read_answer({"result": {"ids": ["a"], "scores": [1, 2]}}, 1)
    assert shape.render(parsed, [RowAnswer(["x"], [0.5], "fallback")], "v") == {"result": {"ids": ["x"], "scores": [0.5]}}
    for body in (b'{"user": 3}', b'{"user": {}, "options": {"k": "3"}}', b'{"user": {"history": "i1"}}', b"[1]"):
        with pytest.raises(BadRequest):
            shape.parse(body)


def test_kserve_shape_subsets_and_reads_predictions():
    shape = KServeV1Shape(UpstreamSettings(), LimitSettings())
    parsed = shape.parse(b'{"instances": [{"age": 1}, {"age": 2, "k": 2}], "parameters": {"x": 1}}')
    assert [row.k for row in parsed.rows] == [10, 2]
    assert json.loads(shape.subset(parsed, [1])) == {"instances": [{"age": 2, "k": 2}], "parameters": {"x": 1}}
    with pytest.raises(ShapeError):
        shape.read_answer({"predictions": [{"items": ["a"]}]}, 2)
    with pytest.raises(BadRequest, match="instance 1"):
        shape.parse(b'{"instances": [{}, []]}')


def test_oip_shape_batches_histories_and_subsets():
    shape = OipV2Shape(LimitSettings(), "recguard")
    body = {"id": "q", "inputs": [
        {"name": "age", "shape": [2, 1], "datatype": "INT64", "data": [[30], [40]]},
        {"name": "country", "shape": [2], "datatype": "BYTES", "data": ["GB", "DE"]},
        {"name": "history", "shape": [2, 2], "datatype": "BYTES", "data": ["i1", "", "i2", "i3"]},
        {"name": "k", "shape": [1], "datatype": "INT32", "data": [4]}]}
    parsed = shape.parse(json.dumps(body).encode())
    assert [row.fields for row in parsed.rows] == [{"age": 30, "country": "GB"}, {"age": 40, "country": "DE"}]
    assert [row.history for row in parsed.rows] == [["i1"], ["i2", "i3"]] and parsed.rows[0].k == 4
    second = shape.parse(shape.subset(parsed, [1]))
    assert second.rows[0].fields == {"age": 40, "country": "DE"} and second.rows[0].history == ["i2", "i3"]
    again = shape.parse(shape.request_body(parsed.rows))
    assert [row.fields for row in again.rows] == [row.fields for row in parsed.rows]
    rendered = shape.render(parsed, [RowAnswer(["a", "b"], [2.0, 1.0], "model"), RowAnswer(["c"], [1.0], "fallback")], "v")
    assert rendered["id"] == "q" and rendered["outputs"][0]["shape"] == [2, 2]
    assert [answer.items for answer in shape.read_answer(rendered, 2)] == [["a", "b"], ["c"]]
    with pytest.raises(BadRequest, match="same batch size"):
        shape.parse(b'{"inputs": [{"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]}, '
                    b'{"name": "b", "shape": [1], "datatype": "INT64", "data": [1]}]}')
