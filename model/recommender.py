"""The one interface every model behind recguard has: the bundle's scorer, an upstream endpoint, the fallback.

What the request path needs to know about a model is declared, not probed: whether a call is
`bounded` (it cannot hang, so it runs on the request thread) and the `catalogue` of item ids it
may answer with (what the guard checks a history against, and what an answer must stay inside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

MODEL_ERROR = "model_error"
"""The anomaly kind of an answer the model could not give (proxy/words.py lists every kind)."""


class ModelError(Exception):
    """The model could not give a trustworthy answer (it raised, or its scores are not finite); `kind` is
    the anomaly kind the fallback's answer reports."""

    kind = MODEL_ERROR


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top-k item ids with their scores, best first."""

    items: list[str]
    scores: list[float]


class Recommender(Protocol):
    """Answers a request's signup fields and history with the top k items of its catalogue."""

    bounded: bool
    """True when a call's run time is fixed by the model's shapes and k (no I/O, no locks): it cannot
    hang, so the prediction service runs it on the request thread instead of its budget pool."""
    catalogue: Sequence[str]
    """Every item id the model can answer with, in catalogue order."""

    def recommend(self, fields: Mapping[str, Any], history: Sequence[str], k: int) -> Recommendation:
        """Top-k items for a request, history items excluded; ModelError when it cannot answer."""
        ...
