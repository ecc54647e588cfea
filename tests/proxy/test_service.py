"""The model budget in PredictionService, without HTTP: where the model runs and when the fallback answers."""

from __future__ import annotations

import threading
import time

from proxy.guard.anomaly import MODEL_TIMEOUT
from proxy.models.recommender import Recommendation
from proxy.models.service import PredictionService
from proxy.request import PredictRequest

REQUEST = PredictRequest(fields={}, history=[], k=2)


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
    return PredictionService(model, Fixed(), None, model_timeout=timeout)


def test_a_bounded_model_runs_on_the_request_thread():
    model = Fixed(bounded=True)
    prediction = service(model).predict(REQUEST)
    assert prediction.source == "model" and model.threads == [threading.current_thread().name]


def test_a_bounded_model_found_past_its_budget_is_answered_by_the_fallback():
    prediction = service(Fixed(delay=0.08, bounded=True)).predict(REQUEST)
    assert prediction.source == "fallback"
    assert [(a.field, a.kind) for a in prediction.anomalies] == [("model", MODEL_TIMEOUT)]


def test_any_other_model_runs_on_the_budget_pool_and_is_abandoned_at_the_budget():
    model = Fixed(delay=0.5)
    started = time.monotonic()
    prediction = service(model).predict(REQUEST)
    assert time.monotonic() - started < 0.3
    assert prediction.source == "fallback" and model.threads[0].startswith("model")
