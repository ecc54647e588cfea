"""The pipeline without HTTP: where the model runs, when the fallback answers, which rows a forward sends."""

from __future__ import annotations

import json
import threading
import time

from model.recommender import Recommendation
from proxy.models.embedded import RowByRow
from proxy.models.forwarding import Forwarder
from proxy.models.upstream import Reply
from proxy.pipeline import PredictionService, fields_screen, holdback_screen
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.base import Parsed
from proxy.shapes.kserve import KServeV1Shape
from proxy.shapes.recguard import RecguardShape
from proxy.words import DRIFT_QUARANTINE, MODEL_TIMEOUT, Anomaly

REQUEST = RecguardShape(LimitSettings()).parse(b'{"k": 2}')


class Fixed:
    """A recommender that answers after `delay` seconds, noting the thread it ran on."""

    def __init__(self, delay: float = 0.0, bounded: bool = False):
        self.delay = delay
        self.bounded = bounded
        self.catalogue = ["item_1", "item_2"]
        self.threads: list[str] = []

    def recommend(self, fields, history, k) -> Recommendation:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return Recommendation(["item_1", "item_2"], [0.9, 0.8])


def service(model: Fixed, timeout: float = 0.05) -> PredictionService:
    return PredictionService(RowByRow(model, budget=timeout), Fixed())


def predict(svc: PredictionService, parsed: Parsed = REQUEST):
    (row,) = svc.answer(parsed).rows
    return row


def test_a_bounded_model_runs_on_the_request_thread():
    model = Fixed(bounded=True)
    prediction = predict(service(model))
    assert prediction.source == "model" and model.threads == [threading.current_thread().name]


def test_a_bounded_model_found_past_its_budget_is_answered_by_the_fallback():
    prediction = predict(service(Fixed(delay=0.08, bounded=True)))
    assert prediction.source == "fallback"
    assert [(a.field, a.kind) for a in prediction.anomalies] == [("model", MODEL_TIMEOUT)]


def test_any_other_model_runs_on_the_budget_pool_and_is_abandoned_at_the_budget():
    model = Fixed(delay=0.5)
    started = time.monotonic()
    prediction = predict(service(model))
    assert time.monotonic() - started < 0.3
    assert prediction.source == "fallback" and model.threads[0].startswith("model")


class Upstream:
    """An upstream that answers each row it is sent with item_1, noting the bodies."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.shape = KServeV1Shape(UpstreamSettings(), LimitSettings())

    def close(self):
        pass

    def call(self, body, headers, rows):
        self.bodies.append(body)
        return Reply(200, b"as it came", "application/json", [Recommendation(["item_1"], [1.0])] * rows)


def test_forward_sends_the_clean_rows_only_and_answers_the_rest_from_the_fallback():
    class Users:
        def holds(self, fields):
            return fields.get("user") == "held"

    class Stamp:
        def stamp(self, source, items, fields, request_id):
            return f"{request_id}:{fields['user']}:{source}"

    upstream = Upstream()
    routed = lambda fields: Anomaly("user", DRIFT_QUARANTINE, "", True) if fields.get("user") == "routed" else None
    svc = PredictionService(Forwarder(upstream, RowByRow(Fixed(bounded=True), budget=0.05)), Fixed(),
                            screens=[fields_screen(routed), holdback_screen(Users())], stamp=Stamp())
    shape = upstream.shape
    body = b'{"instances": [{"user": "a"}, {"user": "held"}, {"user": "routed"}]}'
    outcome = svc.answer(shape.parse(body), "r1")
    assert outcome.reply is None
    assert [row.source for row in outcome.rows] == ["model", "holdback", "fallback"]
    assert json.loads(upstream.bodies[-1]) == {"instances": [{"user": "a"}]}
    assert [row.ticket for row in outcome.rows] == ["r1:a:model", "r1:held:holdback", "r1:routed:fallback"]

    clean = b'{"instances": [{"user": "a"}, {"user": "b"}]}'
    outcome = svc.answer(shape.parse(clean), "r2")
    assert upstream.bodies[-1] == clean and outcome.reply.body == b"as it came"


def test_a_request_in_another_shape_is_asked_of_the_upstream_row_by_row():
    """The /v2 endpoints in front of a kserve-v1 upstream: no body of another shape is forwarded as it came."""
    upstream = Upstream()
    asked = Fixed(bounded=True)
    svc = PredictionService(Forwarder(upstream, RowByRow(asked, budget=0.05)), Fixed())
    outcome = svc.answer(REQUEST)
    assert upstream.bodies == [] and len(asked.threads) == 1
    assert [row.source for row in outcome.rows] == ["model"] and outcome.reply is None
