"""One request's way through recguard, free of HTTP, the same for every endpoint and shape.

    shape.parse ─► screens, in order, per row ─► the model side for the rows they let through
                ─► the fallback for the rest ─► record, stamp ─► shape.render

A screen looks at one row and says what it finds: the guard's anomalies, the drift watch's (it
also feeds the drift windows), a quality quarantine, the holdback (a clean row of the control
group is answered by the fallback and counted apart). A row any anomaly routes goes to the
fallback; the others go to the model side in one call, which answers each or says why it could
not (the fallback then answers that row too). Items of a model's answer that the bundle's catalogue
does not know (a team's model that already serves the products added since) are served as the
model's and noted with an `unknown_item` anomaly that routes nothing. Every row is recorded (metrics, counters) and
stamped with its feedback ticket. The HTTP layer turns the `Answer` into a response: the
upstream's own reply when it answered the whole request, else the rows rendered in the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, Protocol, Sequence

from model.recommender import Recommendation, Recommender
from proxy.models.side import ModelSide
from proxy.models.upstream import Reply
from proxy.shapes.base import Parsed, RowAnswer
from proxy.shapes.request import PredictRequest
from proxy.words import FALLBACK, HOLDBACK, MODEL, UNKNOWN_ITEM, Anomaly


@dataclass(slots=True)
class Screening:
    """What the screens found out about one row so far."""

    row: PredictRequest
    anomalies: list[Anomaly]
    source: str | None = None
    """Who answers, once a screen decided it (HOLDBACK); None: the model, unless an anomaly routes."""

    @property
    def routed(self) -> bool:
        """An anomaly means the model cannot be trusted with the row: the fallback answers it."""
        return bool(self.anomalies) and any(anomaly.routes for anomaly in self.anomalies)


Screen = Callable[[Screening], None]
"""Looks at a row, adds what it finds to its anomalies, or decides who answers it."""


class RequestRecorder(Protocol):
    def record_request(self, source: str, anomalies: Sequence[tuple[str, str]]) -> None: ...


class AnswerStamp(Protocol):
    def stamp(self, source: str, items: Sequence[str], fields: dict, request_id: str) -> str: ...


class ControlGroup(Protocol):
    def holds(self, fields: dict) -> bool: ...


def guard_screen(check: Callable[[PredictRequest], list[Anomaly]]) -> Screen:
    """The guard's checks against the training profile (`Guard.check`)."""
    def screen(screening: Screening) -> None:
        screening.anomalies.extend(check(screening.row))
    return screen


def fields_screen(observe: Callable[[dict], Sequence[Anomaly] | Anomaly | None]) -> Screen:
    """A screen of the signup fields alone: the drift watch (which also feeds its windows) or a quarantine."""
    def screen(screening: Screening) -> None:
        found = observe(screening.row.fields)
        if isinstance(found, Anomaly):
            screening.anomalies.append(found)
        elif found:
            screening.anomalies.extend(found)
    return screen


def holdback_screen(group: ControlGroup) -> Screen:
    """The control group: a clean row whose user the holdback holds is answered by the fallback, apart."""
    def screen(screening: Screening) -> None:
        if screening.source is None and not screening.routed and group.holds(screening.row.fields):
            screening.source = HOLDBACK
    return screen


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request got: one answer per row, and the upstream's reply when it is to be returned as it came."""

    rows: list[RowAnswer]
    reply: Reply | None = None
    """The upstream's own answer: it answered every row (or refused the request with a 4xx)."""


class PredictionService:
    """Runs the screens, the model side and the fallback for every request, and records what happened."""

    def __init__(self, model: ModelSide, fallback: Recommender, *, screens: Sequence[Screen] = (),
                 recorders: Sequence[RequestRecorder] = (), stamp: AnswerStamp | None = None,
                 catalogue: Collection[str] | None = None):
        self.model = model
        self.catalogue = catalogue
        """The items the bundle knows, to note the others a remote model answers; None: not checked."""
        self.fallback = fallback
        self.screens = list(screens)
        self.recorders = list(recorders)
        self.stamp = stamp

    def answer(self, parsed: Parsed, request_id: str = "", headers: Iterable[tuple[str, str]] = ()) -> Answer:
        """Answer every row of a parsed request; never raises for anything the model does. `request_id`
        is signed into the tickets and sent to a remote model with those of the caller's `headers` it may see."""
        screenings = [self.screen(row) for row in parsed.rows]
        asked = [i for i, screening in enumerate(screenings) if screening.source is None and not screening.routed]
        reply = None
        found: Mapping[int, Recommendation | Anomaly] = {}
        if asked:
            outcome = self.model.answer(parsed, asked, request_id, headers)
            if outcome.refused:  # the caller's own error, passed back as it came
                rows = [RowAnswer([], [], MODEL, screening.anomalies) for screening in screenings]
                for row in rows:
                    self._record(row.source, row.anomalies)
                return Answer(rows, outcome.reply)
            found = outcome.results
            if len(asked) == len(parsed.rows):
                reply = outcome.reply
        rows = []
        for i, screening in enumerate(screenings):
            result = found.get(i)
            request = screening.row
            if isinstance(result, Recommendation):
                source = MODEL
                if self.catalogue is not None:
                    unknown = sum(1 for item in result.items if item not in self.catalogue)
                    if unknown:
                        screening.anomalies.append(Anomaly(
                            MODEL, UNKNOWN_ITEM, f"{unknown} of {len(result.items)} items the model answered are "
                            "not in the bundle's catalogue: served as they are", False))
            else:
                if result is not None:
                    screening.anomalies.append(result)
                result = self.fallback.recommend(request.fields, request.history, request.k)
                source = screening.source or FALLBACK
            self._record(source, screening.anomalies)
            ticket = (self.stamp.stamp(source, result.items, request.fields, request_id)
                      if self.stamp is not None else None)
            rows.append(RowAnswer(result.items, result.scores, source, screening.anomalies, ticket))
        return Answer(rows, reply)

    def screen(self, row: PredictRequest) -> Screening:
        """Run the screens over one row, in order."""
        screening = Screening(row, [])
        for screen in self.screens:
            screen(screening)
        return screening

    def _record(self, source: str, anomalies: Sequence[Anomaly]) -> None:
        if self.recorders:
            pairs = [(anomaly.field, anomaly.kind) for anomaly in anomalies]
            for recorder in self.recorders:
                recorder.record_request(source, pairs)

    def close(self) -> None:
        """Stop the model side's threads and close its connections."""
        self.model.close()
