"""Where answers and feedback meet the quality loop: stamp each answer, read each feedback body.

`TicketDesk.stamp` counts the answer's impression and issues its ticket; `TicketDesk.read` turns
a POST /feedback body into verified events or per-event errors. Both are plain code, no HTTP.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from proxy.quality.feedback import EVENTS, Event, FeedbackLedger
from proxy.quality.tickets import Ticket, TicketError, TicketSigner
from proxy.words import OTHER

MAX_EVENTS = 1000
MAX_ITEM_ID = 256
NO_SEGMENT = "_none"


class FeedbackError(ValueError):
    """A feedback body or event that cannot be counted; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Reading:
    """What one feedback body holds: the events to count and, by position, the ones refused."""

    events: list[Event]
    errors: list[tuple[int, FeedbackError]]
    batch: bool
    """True for the `{"events": [...]}` form."""


class TicketDesk:
    """Counts impressions and issues tickets for one model version; verifies feedback against them."""

    def __init__(self, signer: TicketSigner, ledger: FeedbackLedger, version: str, catalogue: Sequence[str],
                 segment_field: str | None, segments: Sequence[str], clock: Callable[[], float] = time.time,
                 on_impression: Callable[[str, str], None] | None = None):
        self.signer = signer
        self.ledger = ledger
        self.version = version
        self.index = {str(item): i for i, item in enumerate(catalogue)}
        self.segment_field = segment_field
        # only segment values seen in training name a group: what a client invents cannot grow the keys
        self.segments = frozenset(segments)
        self.clock = clock
        self.on_impression = on_impression
        """Called with (version, source) for every answer stamped (the Prometheus counter)."""

    def segment_of(self, fields: Mapping[str, Any]) -> str:
        """The request's segment as the quality counts name it."""
        if self.segment_field is None:
            return NO_SEGMENT
        value = fields.get(self.segment_field)
        return value if isinstance(value, str) and value in self.segments else OTHER

    def stamp(self, source: str, items: Sequence[str], fields: Mapping[str, Any], request_id: str) -> str:
        """Count the answer served and return its ticket."""
        segment = self.segment_of(fields)
        self.ledger.impression(self.version, source, segment)
        if self.on_impression is not None:
            self.on_impression(self.version, source)
        served = tuple(position for position in map(self.index.get, items) if position is not None)
        return self.signer.issue(Ticket(request_id[:200], int(self.clock()), self.version, source, segment, served))

    def read(self, body: bytes) -> Reading:
        """The events of a feedback body; FeedbackError for a body that is not one."""
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise FeedbackError("body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise FeedbackError("body must be a JSON object: {\"ticket\", \"item\", \"event\"} or {\"events\": [...]}")
        if "events" in payload:
            entries = payload["events"]
            if set(payload) != {"events"} or not isinstance(entries, list):
                raise FeedbackError("\"events\" must be a list and the only key of a batch")
            if not 1 <= len(entries) <= MAX_EVENTS:
                raise FeedbackError(f"a batch holds 1 to {MAX_EVENTS} events, got {len(entries)}")
            batch = True
        else:
            entries, batch = [payload], False
        now = self.clock()
        events, errors = [], []
        for position, entry in enumerate(entries):
            try:
                events.append(self._event(entry, now))
            except FeedbackError as exc:
                errors.append((position, exc))
        return Reading(events, errors, batch)

    def _event(self, entry: Any, now: float) -> Event:
        if not isinstance(entry, dict):
            raise FeedbackError("an event must be an object {\"ticket\", \"item\", \"event\"}")
        unknown = sorted(set(entry) - {"ticket", "item", "event"})
        if unknown:
            raise FeedbackError(f"unknown key(s) {', '.join(repr(k)[:40] for k in unknown[:5])}: "
                                "an event has ticket, item and event")
        token, item, kind = entry.get("ticket"), entry.get("item"), entry.get("event", "click")
        if not isinstance(token, str):
            raise FeedbackError("\"ticket\" must be the string the answer carried in X-Recguard-Ticket")
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ITEM_ID:
            raise FeedbackError(f"\"item\" must be an item id: a string of 1 to {MAX_ITEM_ID} characters")
        if kind not in EVENTS:
            raise FeedbackError(f"\"event\" must be one of {', '.join(EVENTS)}")
        try:
            ticket = self.signer.verify(token, now)
        except TicketError as exc:
            raise FeedbackError(str(exc), exc.status) from None
        return Event(ticket, token.rpartition(".")[2], item, self.index.get(item), kind)
