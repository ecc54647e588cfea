"""The business of one request, free of HTTP: guard, route, score or fall back, count.

The Flask layer parses the body into a PredictRequest and turns a Prediction into JSON;
everything between lives here and is unit tested without a server.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from model.recommender import ModelError, Recommendation, Recommender
from proxy.guard.checks import Guard
from proxy.models.upstream import Reply
from proxy.shapes.base import Parsed, RowAnswer, Shape
from proxy.shapes.request import PredictRequest
from proxy.words import FALLBACK, HOLDBACK, MODEL, MODEL_ERROR, MODEL_TIMEOUT, Anomaly

log = logging.getLogger("recguard.service")

class RequestRecorder(Protocol):
    def record_request(self, source: str, anomalies: Sequence[tuple[str, str]]) -> None: ...


class DriftObserver(Protocol):
    def observe(self, fields: dict) -> Sequence[Anomaly]: ...


class ControlGroup(Protocol):
    def holds(self, fields: dict) -> bool: ...


class AnswerStamp(Protocol):
    def stamp(self, source: str, items: Sequence[str], fields: dict, request_id: str) -> str: ...


class Upstream(Protocol):
    def call(self, body: bytes, headers: Mapping[str, str], rows: int) -> Reply: ...


@dataclass(frozen=True, slots=True)
class Prediction:
    """The answer to one request and how it was reached."""

    items: list[str]
    scores: list[float]
    source: str
    anomalies: list[Anomaly] = field(default_factory=list)
    ticket: str | None = None
    """The signed feedback ticket of this answer (None while feedback is off)."""


@dataclass(frozen=True, slots=True)
class Forwarding:
    """The answer to a body forwarded in the upstream's own shape."""

    reply: Reply | None
    """The upstream's answer, to return unchanged: every row went to it (or it refused them with a 4xx)."""
    rows: list[RowAnswer]
    """Each row's answer, to write in the shape when `reply` is None (the fallback's, or a mixed batch)."""
    tickets: list[str] = field(default_factory=list)
    """The rows' feedback tickets (none while feedback is off, or for a 4xx)."""


class PredictionService:
    """Routes each request to the model or the fallback and records what happened."""

    def __init__(
        self,
        model: Recommender,
        fallback: Recommender,
        guard: Guard | None,
        *,
        model_timeout: float | None,
        recorders: Sequence[RequestRecorder] = (),
        executor_threads: int = 4,
        drift: DriftObserver | None = None,
        holdback: ControlGroup | None = None,
        stamp: AnswerStamp | None = None,
        quarantine: Callable[[dict], Anomaly | None] | None = None,
        upstream: Upstream | None = None,
    ):
        self.model = model
        self.upstream = upstream
        self.fallback = fallback
        self.guard = guard
        self.drift = drift
        self.holdback = holdback
        self.stamp = stamp
        self.quarantine = quarantine
        self.model_timeout = model_timeout
        self.recorders = list(recorders)
        # A hung model call can only be abandoned, not interrupted: it runs on a pool thread
        # while the request thread waits at most model_timeout, then answers from the fallback.
        # A `bounded` model (the bundle's numpy Scorer) cannot hang, and the hop to the pool thread
        # and back would cost more than its own ~0.1 ms (docs/benchmarks.md): it runs on the request
        # thread and a call found past the budget afterwards is answered from the fallback all the same.
        self._inline = model.bounded
        self._executor = (ThreadPoolExecutor(max_workers=executor_threads, thread_name_prefix="model")
                          if model_timeout and not self._inline else None)

    def predict(self, request: PredictRequest, request_id: str = "") -> Prediction:
        """Answer one request; never raises for anything the model does."""
        anomalies = self._screen(request)
        if any(anomaly.routes for anomaly in anomalies):
            prediction = self._fallback(request, anomalies)
        elif self._held(request):
            # a clean request of the control group: the fallback's answer, counted apart
            recommendation = self.fallback.recommend(request.fields, request.history, request.k)
            prediction = Prediction(recommendation.items, recommendation.scores, HOLDBACK, anomalies)
        else:
            failure, recommendation = self._run_model(request)
            if failure is not None:
                prediction = self._fallback(request, [*anomalies, failure])
            else:
                prediction = Prediction(recommendation.items, recommendation.scores, MODEL, anomalies)
        self._record(prediction.source, prediction.anomalies)
        if self.stamp is not None:
            ticket = self.stamp.stamp(prediction.source, prediction.items, request.fields, request_id)
            prediction = Prediction(prediction.items, prediction.scores, prediction.source, prediction.anomalies, ticket)
        return prediction

    def forward(self, parsed: Parsed, body: bytes, headers: Mapping[str, str], shape: Shape,
                request_id: str = "") -> Forwarding:
        """Answer a body in the upstream's shape: the rows the guard lets through go to the upstream (the
        body unchanged when that is all of them); routed rows, the control group's and any the upstream
        fails are answered by the fallback."""
        screened = [self._screen(row) for row in parsed.rows]
        answers: dict[int, RowAnswer] = {}
        for i, (row, anomalies) in enumerate(zip(parsed.rows, screened)):
            if not any(anomaly.routes for anomaly in anomalies) and self._held(row):
                held = self.fallback.recommend(row.fields, row.history, row.k)
                answers[i] = RowAnswer(held.items, held.scores, HOLDBACK, anomalies)
        clean = [i for i, anomalies in enumerate(screened)
                 if i not in answers and not any(anomaly.routes for anomaly in anomalies)]
        reply = None
        if clean:
            sent = body if len(clean) == len(parsed.rows) else shape.subset(parsed, clean)
            try:
                reply = self.upstream.call(sent, headers, len(clean))
            except ModelError as exc:
                failure = Anomaly("model", exc.kind, str(exc), True)
                for i in clean:
                    screened[i] = [*screened[i], failure]
            else:
                if reply.rows is None:  # a 4xx: the caller's own error, passed back as it came
                    for anomalies in screened:
                        self._record(MODEL, anomalies)
                    return Forwarding(reply, [RowAnswer([], [], MODEL, anomalies) for anomalies in screened])
                for i, recommendation in zip(clean, reply.rows):
                    answers[i] = RowAnswer(recommendation.items, recommendation.scores, MODEL, screened[i])
        rows = []
        for i, request in enumerate(parsed.rows):
            answer = answers.get(i)
            if answer is None:
                fallback = self.fallback.recommend(request.fields, request.history, request.k)
                answer = RowAnswer(fallback.items, fallback.scores, FALLBACK, screened[i])
            self._record(answer.source, answer.anomalies)
            rows.append(answer)
        tickets = ([self.stamp.stamp(answer.source, answer.items, request.fields, request_id)
                    for answer, request in zip(rows, parsed.rows)] if self.stamp is not None else [])
        whole = reply is not None and len(clean) == len(parsed.rows)
        return Forwarding(reply if whole else None, rows, tickets)

    def _screen(self, request: PredictRequest) -> list[Anomaly]:
        anomalies = self.guard.check(request) if self.guard is not None else []
        if self.drift is not None:
            # feeds the drift windows and adds drift_quarantine when the segment is under an alarm
            anomalies += self.drift.observe(request.fields)
        if self.quarantine is not None:
            held = self.quarantine(request.fields)
            if held is not None:
                anomalies.append(held)
        return anomalies

    def _held(self, request: PredictRequest) -> bool:
        return self.holdback is not None and self.holdback.holds(request.fields)

    def _record(self, source: str, anomalies: Sequence[Anomaly]) -> None:
        if self.recorders:
            pairs = [(anomaly.field, anomaly.kind) for anomaly in anomalies]
            for recorder in self.recorders:
                recorder.record_request(source, pairs)

    def _run_model(self, request: PredictRequest) -> tuple[Anomaly | None, Recommendation | None]:
        call: Callable[[], Recommendation] = lambda: self.model.recommend(request.fields, request.history, request.k)
        try:
            if self._executor is None:
                started = time.perf_counter()
                recommendation = call()
                if self.model_timeout is not None and time.perf_counter() - started > self.model_timeout:
                    return self._timeout(), None
                return None, recommendation
            future = self._executor.submit(call)
            try:
                return None, future.result(timeout=self.model_timeout)
            except FutureTimeout:
                future.cancel()
                return self._timeout(), None
        except ModelError as exc:
            return Anomaly("model", exc.kind, str(exc), True), None
        except Exception as exc:  # the model is third-party code: whatever it raises, the fallback answers
            log.error("model raised", extra={"error": type(exc).__name__})
            return Anomaly("model", MODEL_ERROR, f"model raised {type(exc).__name__}", True), None

    def _timeout(self) -> Anomaly:
        return Anomaly("model", MODEL_TIMEOUT, f"model ran past its budget of {self.model_timeout * 1000:g} ms", True)

    def _fallback(self, request: PredictRequest, anomalies: list[Anomaly]) -> Prediction:
        recommendation = self.fallback.recommend(request.fields, request.history, request.k)
        return Prediction(recommendation.items, recommendation.scores, FALLBACK, anomalies)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
