"""A Recommender asked row by row within the model budget: the bundle's scorer, the team's endpoint
asked in its own shape for a request that came in another, or a model under test."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Iterable, Sequence

from model.recommender import ModelError, Recommendation, Recommender
from proxy.models.side import ModelAnswer
from proxy.shapes.base import Parsed
from proxy.shapes.request import PredictRequest
from proxy.words import MODEL, MODEL_ERROR, MODEL_TIMEOUT, Anomaly

log = logging.getLogger("recguard.service")


class RowByRow:
    """Asks a Recommender for each row; a call past the budget, or one that raises, is an anomaly."""

    def __init__(self, model: Recommender, *, budget: float | None, threads: int = 4):
        self.model = model
        self.budget = budget
        # A hung model call can only be abandoned, not interrupted: it runs on a pool thread
        # while the request thread waits at most the budget, then answers from the fallback.
        # A `bounded` model (the bundle's numpy Scorer, the upstream client with its own deadline)
        # cannot hang, and the hop to the pool thread and back would cost more than the scorer's own
        # ~0.1 ms (docs/benchmarks.md): it runs on the request thread, and a call found past the budget
        # afterwards is answered from the fallback all the same.
        self._executor = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="model")
                          if budget and not model.bounded else None)

    def answer(self, parsed: Parsed, rows: Sequence[int], request_id: str = "",
               headers: Iterable[tuple[str, str]] = ()) -> ModelAnswer:
        return ModelAnswer({i: self.ask(parsed.rows[i]) for i in rows})

    def ask(self, request: PredictRequest) -> Recommendation | Anomaly:
        """The model's items for one request, or the anomaly saying why there are none."""
        try:
            if self._executor is None:
                started = time.perf_counter()
                recommendation = self.model.recommend(request.fields, request.history, request.k)
                if self.budget is not None and time.perf_counter() - started > self.budget:
                    return self._timeout()
                return recommendation
            future = self._executor.submit(self.model.recommend, request.fields, request.history, request.k)
            try:
                return future.result(timeout=self.budget)
            except FutureTimeout:
                future.cancel()
                return self._timeout()
        except ModelError as exc:
            return Anomaly(MODEL, exc.kind, str(exc), True)
        except Exception as exc:  # the model is third-party code: whatever it raises, the fallback answers
            log.error("model raised", extra={"error": type(exc).__name__})
            return Anomaly(MODEL, MODEL_ERROR, f"model raised {type(exc).__name__}", True)

    def _timeout(self) -> Anomaly:
        return Anomaly(MODEL, MODEL_TIMEOUT, f"model ran past its budget of {self.budget * 1000:g} ms", True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
