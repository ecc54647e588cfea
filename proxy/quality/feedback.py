r"""Feedback counted against tickets: impressions on the request path, events de-duplicated in Redis.

Layout: the minute hashes `<prefix>:q:<epoch minute>` (the counters' series "q", written with the
same exactly-once batches as the anomaly counters) hold, per group `<version>|<source>|<segment>`:

    imp|<group>   answers served                 fb|<group>    feedback events accepted
    hit|<group>   events on a served item        ans|<group>   answers with at least one hit
    rr|<group>    sum over those answers of 1 / rank of their first hit

Impressions count in the minute they were served, and feedback in the minute of the answer it is
about (the ticket's time), so a minute's hit rate is that of the answers served in it however late
their clicks come. De-duplication: the events seen, by ticket, in hashes of the ten minutes the
tickets were issued in, spread over SHARDS keys, `<prefix>:t:<span>:<shard>` (field `<ticket
tag>\x1f<event>\x1f<item>` per event, `<ticket tag>\x1fhit` once the answer got a hit), each kept
until the feedback window of its span's last ticket has passed. A flush makes one Lua call per
such key with all of its events (one key per call: Redis Cluster safe; the shards spread the
keys over the primaries), so the cost per event is a few bytes of one call rather than a call.
Events wait in a bounded in-memory queue until the flusher thread has them de-duplicated; while
Redis is away they wait there, and past `max_pending` the oldest are dropped and counted. A reply
lost after Redis applied a call makes its events look seen when retried: they are not counted
(never twice), which is the one way an event can be lost.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import redis

from proxy.quality.tickets import Ticket
from proxy.store.client import LuaScript, execute
from proxy.store.counters import Counters, Series

log = logging.getLogger("recguard.feedback")

QUALITY_TAG = "q"
EVENTS = ("click", "purchase")
KINDS = ("imp", "fb", "hit", "ans", "rr")

SHARDS = 16
"""De-duplication keys per span of tickets: one call per key and flush, the keys spread over a cluster."""
SPAN_SECONDS = 600
"""Tickets issued in one span share its keys. Short enough that a key stays a few MB at 1,000 answers
with feedback a second (Redis frees an expired key in one go); long enough that a flush's events,
mostly on answers of the last minutes, fall in a few keys."""
CALL_EVENTS = 500
"""Events per Lua call at most: a backlog after an outage is sent in calls that each hold Redis briefly."""

# KEYS[1]: one span-and-shard hash. ARGV[1]: seconds to keep it. ARGV[2..]: one event each,
# "<1 if its item was served, else 0><ticket tag>\x1f<event>\x1f<item>". Returns a string of two
# digits per event: new event, first hit of its answer.
_SEEN = """
local answers = {}
for i = 2, #ARGV do
  local event = ARGV[i]
  local field = string.sub(event, 2)
  local new = redis.call("HSETNX", KEYS[1], field, "1")
  local first = 0
  if new == 1 and string.sub(event, 1, 1) == "1" then
    local tag = string.sub(field, 1, string.find(field, "\\31", 1, true) - 1)
    first = redis.call("HSETNX", KEYS[1], tag .. "\\31hit", "1")
  end
  answers[#answers + 1] = new .. first
end
local ttl = tonumber(ARGV[1])
if redis.call("TTL", KEYS[1]) < ttl then redis.call("EXPIRE", KEYS[1], ttl) end
return table.concat(answers)
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
                 listener: Callable[[str, str, str, bool], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self._counters = counters
        self._client = client
        self._prefix = prefix
        self._window = int(window_seconds) + 60
        self.series = quality_series(ttl_seconds)
        self._script = LuaScript(_SEEN)
        self._queue: deque[Event] = deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        """One flush at a time (the flusher thread's, a final one at close): a flush that returns has
        every event taken before it counted or back in the queue, as the counters' flush does."""
        self._max_pending = max_pending
        self.dropped = 0
        self.last_error: str | None = None
        self._listener = listener
        """Called with (version, source, event, hit) for every event found new."""
        self._clock = clock
        self._impression_fields: dict[tuple[str, str, str], str] = {}
        self._sending = 0
        """Events the flusher has taken from the queue and not yet counted or put back."""

    def impression(self, version: str, source: str, segment: str) -> None:
        """Count one answer served. Memory only."""
        field = self._impression_fields.get((version, source, segment))
        if field is None:
            # segments are the training's (or one catch-all): the names stay few
            field = self._impression_fields[(version, source, segment)] = group_field("imp", version, source, segment)
        self._counters.increment(field, self.series)

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
        """Events accepted but not yet de-duplicated (those the flusher is sending included)."""
        with self._lock:
            return len(self._queue) + self._sending

    def flush(self) -> bool:
        """De-duplicate the queued events in Redis and count the new ones; True when the queue is empty.
        Runs on the worker's flusher thread just before the counters are written (that write carries
        the counts it adds); a call while another flush is under way waits for it."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> bool:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._sending = len(batch)
        if not batch:
            return True
        failed: list[Event] = []
        try:
            groups = self._groups(batch)
            replies = execute(self._client, [self._call(key, span, events) for key, span, events in groups],
                              raise_on_error=False)
            counted: list[tuple[Event, bool]] = []
            for (_, _, events), reply in zip(groups, replies):
                if isinstance(reply, Exception):
                    self.last_error = f"{type(reply).__name__}: {reply}"
                    failed += events
                    continue
                flags = reply.decode() if isinstance(reply, bytes) else str(reply)
                counted += [(event, flags[2 * i + 1] == "1") for i, event in enumerate(events) if flags[2 * i] == "1"]
            self._count(counted)
            if failed and len(groups) > 1:
                position = {id(event): i for i, event in enumerate(batch)}
                failed.sort(key=lambda event: position[id(event)])
        finally:
            # back at the head of the queue, oldest first, and no longer in flight, in one step:
            # `pending` never misses them
            with self._lock:
                self._queue.extendleft(reversed(failed))
                self._trim()
                self._sending = 0
        return not failed

    def _groups(self, batch: list[Event]) -> list[tuple[str, int, list[Event]]]:
        """The batch by de-duplication key (span of issue, shard of the ticket), with the span, in
        calls of at most CALL_EVENTS events."""
        by_key: dict[tuple[int, int], list[Event]] = defaultdict(list)
        for event in batch:
            by_key[(event.ticket.issued_at // SPAN_SECONDS, zlib.crc32(event.key.encode()) % SHARDS)].append(event)
        return [(f"{self._prefix}:t:{span}:{shard}", span, events[start:start + CALL_EVENTS])
                for (span, shard), events in by_key.items() for start in range(0, len(events), CALL_EVENTS)]

    def _call(self, key: str, span: int, events: list[Event]) -> Any:
        # kept until the window of the span's last possible ticket has passed
        ttl = max(60, int((span + 1) * SPAN_SECONDS + self._window - self._clock()))
        return self._script.call(key, ttl, *(
            f"{'1' if event.index is not None and event.ticket.rank_of(event.index) is not None else '0'}"
            f"{event.key}\x1f{event.kind}\x1f{event.item}" for event in events))

    def _count(self, counted: list[tuple[Event, bool]]) -> None:
        """Count the new events (with whether each is its answer's first hit), one counter update per
        minute of issue."""
        by_minute: dict[int, dict[str, int | float]] = defaultdict(lambda: defaultdict(int))
        for event, first_hit in counted:
            ticket = event.ticket
            group = (ticket.model_version, ticket.source, ticket.segment)
            amounts = by_minute[self.series.slot(ticket.issued_at)]
            amounts[group_field("fb", *group)] += 1
            rank = None if event.index is None else ticket.rank_of(event.index)
            if rank is not None:
                amounts[group_field("hit", *group)] += 1
                if first_hit:
                    amounts[group_field("ans", *group)] += 1
                    amounts[group_field("rr", *group)] += 1.0 / rank
            if self._listener is not None:
                self._listener(ticket.model_version, ticket.source, event.kind, rank is not None)
        for slot, amounts in by_minute.items():
            self._counters.add_many(amounts.items(), self.series, at=slot * self.series.seconds)
