"""The model side of the pipeline: what answers the rows the screens let through.

The pipeline asks one `ModelSide` for the rows of a request it lets through and gets, per row, the
model's items or the anomaly that says why the model could not answer (the fallback then does).
Which model that is (the bundle's scorer, the team's endpoint, a model under test) and how it is
reached (on the request thread, on a pool within the budget, one forwarded body for a whole batch)
is the side's business alone: KServe's model server works the same way, where a remote predictor
only changes what predict calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

from model.recommender import Recommendation
from proxy.models.upstream import Reply
from proxy.shapes.base import Parsed
from proxy.words import Anomaly


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    """What the model side made of the rows it was asked."""

    results: Mapping[int, Recommendation | Anomaly] = field(default_factory=dict)
    """Per row index asked: the model's items, or the anomaly that sends the row to the fallback."""
    reply: Reply | None = None
    """The upstream's own answer to a forwarded body, returned to the caller unchanged when it answers
    every row of the request; with `reply.rows` None it refused them (a 4xx) and nothing else is read."""

    @property
    def refused(self) -> bool:
        """The upstream answered the caller's own error (a 4xx): returned as it came, no row answered."""
        return self.reply is not None and self.reply.rows is None


class ModelSide(Protocol):
    """Answers the rows of a request the screens let through."""

    def answer(self, parsed: Parsed, rows: Sequence[int], request_id: str,
               headers: Iterable[tuple[str, str]]) -> ModelAnswer:
        """The model's answer for each of `rows` (indices into `parsed.rows`); never raises for what the
        model does. `headers` are the caller's: a remote model is sent those it may see, and the request id."""
        ...

    def close(self) -> None:
        """Release threads and connections."""
        ...
