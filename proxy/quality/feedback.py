"""Feedback counted against tickets: impressions on the request path, events de-duplicated in Redis.

Layout: the minute hashes `<prefix>:q:<epoch minute>` (the counters' series "q", written with the
same exactly-once batches as the anomaly counters) hold, per group `<version>|<source>|<segment>`:

    imp|<group>   answers served                 fb|<group>    feedback events accepted
    hit|<group>   events on a served item        ans|<group>   answers with at least one hit
    rr|<group>    sum over those answers of 1 / rank of their first hit

Impressions count in the minute they were served, and feedback in the minute of the answer it is
about (the ticket's time), so a minute's hit rate is that of the answers served in it however late
their clicks come. De-duplication: one small hash per ticket that got feedback,
`<prefix>:t:<ticket signature>`, kept for the feedback window; one Lua script per event touches that
one key, so it works on Redis Cluster. Events wait in a bounded in-memory queue until the flusher
thread has them de-duplicated; while Redis is away they wait there, and past `max_pending` the oldest
are dropped and counted. A reply lost after Redis applied a batch makes its events look seen when
retried: such a batch is not counted (never twice), which is the one way an event can be lost.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import redis

from proxy.quality.tickets import Ticket
from proxy.store.client import LuaScript, execute
from proxy.store.counters import Counters, Series

log = logging.getLogger("recguard.feedback")

QUALITY_TAG = "q"
EVENTS = ("click", "purchase")
KINDS = ("imp", "fb", "hit", "ans", "rr")

# KEYS[1]: the ticket's key. ARGV: event field, 1 if the event's item was served, ttl seconds.
# Returns {new event, first hit of this answer}.
_SEEN = """
local new = redis.call("HSETNX", KEYS[1], ARGV[1], "1")
local first = 0
if new == 1 then
  if ARGV[2] == "1" then first = redis.call("HSETNX", KEYS[1], "hit", "1") end
  redis.call("EXPIRE", KEYS[1], ARGV[3])
end
return {new, first}
"""


def group_field(kind: str, version: str, source: str, segment: str) -> str:
    """The minute-hash field of one kind of count for one group."""
    return f"{kind}|{version}|{source}|{segment}"


def quality_series(ttl_seconds: int) -> Series:
    """The minute buckets of the quality counts."""
    return Series(QUALITY_TAG, 60, ttl_seconds)


@dataclass(frozen=True, slots=True)
class Event:
    """One accepted feedback event, waiting to be de-duplicated."""

    ticket: Ticket
    key: str
    """The ticket's de-duplication key (from its signature)."""
    item: str
    """The id of the item the user took."""
    index: int | None
    """Its catalogue index; None for an item outside the catalogue (feedback, never a hit)."""
    kind: str


class FeedbackLedger:
    """Counts impressions and feedback of one worker into the counters' quality series."""

    def __init__(self, counters: Counters, client: redis.Redis, *, prefix: str, window_seconds: int,
                 ttl_seconds: int, max_pending: int = 100_000,
                 listener: Callable[[str, str, str, bool], None] | None = None):
        self._counters = counters
        self._client = client
        self._prefix = prefix
        self._window = int(window_seconds) + 60
        self.series = quality_series(ttl_seconds)
        self._script = LuaScript(_SEEN)
        self._queue: deque[Event] = deque()
        self._lock = threading.Lock()
        self._max_pending = max_pending
        self.dropped = 0
        self.last_error: str | None = None
        self._listener = listener
        """Called with (version, source, event, hit) for every event found new."""

    def impression(self, version: str, source: str, segment: str) -> None:
        """Count one answer served. Memory only."""
        self._counters.add_many(((group_field("imp", version, source, segment), 1),), self.series)

    def accept(self, events: Iterable[Event]) -> None:
        """Queue verified events for de-duplication and counting on the next flush. Memory only."""
        with self._lock:
            self._queue.extend(events)
            self._trim()

    def _trim(self) -> None:
        excess = len(self._queue) - self._max_pending
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.dropped += excess
            log.warning("feedback queue full: dropping the oldest events", extra={"dropped": self.dropped})

    @property
    def pending(self) -> int:
        """Events accepted but not yet de-duplicated."""
        return len(self._queue)

    def flush(self) -> bool:
        """De-duplicate the queued events in Redis and count the new ones; True when the queue is empty.
        Runs on the counters' flusher thread, after each counter flush."""
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
        if not batch:
            return True
        replies = self._send(batch)
        failed = []
        for event, reply in zip(batch, replies):
            if isinstance(reply, Exception):
                self.last_error = f"{type(reply).__name__}: {reply}"
                failed.append(event)
                continue
            new, first = (int(value) for value in reply)
            if new:
                self._count(event, bool(first))
        self._requeue(failed)
        return not failed

    def _requeue(self, events: list[Event]) -> None:
        """Put events back at the head of the queue, oldest first, keeping the bound."""
        with self._lock:
            self._queue.extendleft(reversed(events))
            self._trim()

    def _send(self, batch: list[Event]) -> list:
        """One script call per event, pipelined (per node on a cluster); each reply or its error."""
        calls = []
        for event in batch:
            served = event.index is not None and event.ticket.rank_of(event.index) is not None
            calls.append(self._script.call(f"{self._prefix}:t:{event.key}", f"{event.item}\x1f{event.kind}",
                                           "1" if served else "0", self._window))
        return execute(self._client, calls, raise_on_error=False)

    def _count(self, event: Event, first_hit: bool) -> None:
        ticket = event.ticket
        group = (ticket.model_version, ticket.source, ticket.segment)
        amounts: list[tuple[str, int | float]] = [(group_field("fb", *group), 1)]
        rank = None if event.index is None else ticket.rank_of(event.index)
        if rank is not None:
            amounts.append((group_field("hit", *group), 1))
            if first_hit:
                amounts += [(group_field("ans", *group), 1), (group_field("rr", *group), 1.0 / rank)]
        self._counters.add_many(amounts, self.series, at=ticket.issued_at)
        if self._listener is not None:
            self._listener(ticket.model_version, ticket.source, event.kind, rank is not None)
