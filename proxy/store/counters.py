"""Anomaly counters: gathered in memory on the request path, written to Redis by the worker's flusher.

Layout: one Redis hash per minute, `<prefix>:m:<epoch minute>`, with the fields `requests`,
`source:<source>`, `anomalous`, `anomaly:<field>:<kind>` and whatever `Counters.add` is given,
expiring `ttl_seconds` after its last write. A field name the profile does not know was chosen by
a client (an unexpected field): such names are counted by name for at most NAMES_PER_BUCKET per
bucket, the most frequent ones, and the rest together under `anomaly:_other:<kind>`, so a client
inventing names cannot fill Redis (the list of named ones is the field `batch:names`, bookkeeping that readers skip like the writers' `batch:<writer id>` marks). Every worker of every replica writes the same keys.
Other series of time buckets (the drift windows, `<prefix>:d:<slot>`, a few seconds each and kept
minutes, not days) ride the same batches and the same flush through `add_many`.

Exactly once: each `Counters` (one per worker process) has a random writer id and numbers its
batches 1, 2, 3, ... A small Lua script applies one batch to one bucket and records the number in
the bucket's field `batch:<writer id>`; a batch whose number is not above the recorded one was
applied already and is skipped. So a flush retried after a lost reply (Redis applied it, we could
not know) is not counted twice. A writer sends batch n+1 only once batch n is written everywhere,
which is what makes one high-water mark per writer and bucket enough, instead of one marker per
flush. Readers ignore the `batch:` fields. Each script touches one key, and the pipeline is not a
transaction, so the layout works on Redis Cluster: `proxy.store.client.execute` sends one pipeline per
node, and with `replica_wait_ms` a bucket is forgotten only once its shard's replicas acknowledged it
(until then it is sent again, and applied once), so a primary's failover loses no flushed count.

While Redis is down, new increments keep merging into the in-memory buckets (memory grows with
distinct minute x field pairs, not with traffic), bounded by `max_pending` fields: past it the
oldest are dropped and counted. When Redis answers again, the unsent batch and then the rest are
written, once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterable

import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from proxy.store.client import LuaScript, execute, make_redis_client
from proxy.words import OTHER

__all__ = ["Counters", "CounterStatus", "Series", "bucket_key", "make_redis_client"]

log = logging.getLogger("recguard.counters")

MARKER_PREFIX = "batch:"
ANOMALY_PREFIX = "anomaly:"
NAMES_PER_BUCKET = 64
"""Distinct names a client chose (an unexpected field, a suspected rename) counted by name in one
minute bucket, by every writer together; the most frequent win (see _APPLY_BATCH)."""

# KEYS[1]: the bucket. ARGV: writer id, batch number, ttl, the cap on named names, the number of
# plain field/amount pairs, then those pairs, then the pairs counted under a name a client chose
# (`anomaly:<name>:<kind>`). Those are named for at most ARGV[4] distinct names per bucket (listed
# in the field `batch:names`); a newcomer larger than the smallest named one takes its place (the
# smallest one's count moves to `anomaly:_other:<kind>`), any other goes to `anomaly:_other:<kind>`.
_APPLY_BATCH = """
local function add(field, amount)
  if string.find(amount, "[.eE]") then
    redis.call("HINCRBYFLOAT", KEYS[1], field, amount)
  else
    local reply = redis.pcall("HINCRBY", KEYS[1], field, amount)
    -- a sum fed both ints and floats already holds a float: HINCRBY refuses it, HINCRBYFLOAT does not
    if type(reply) == "table" and reply.err then
      redis.call("HINCRBYFLOAT", KEYS[1], field, amount)
    end
  end
end
local function other(field)
  return "{other_prefix}" .. string.match(field, ":([^:]*)$")
end
local mark = "batch:" .. ARGV[1]
local number = tonumber(ARGV[2])
local applied = 0
if tonumber(redis.call("HGET", KEYS[1], mark) or "0") < number then
  local plain_end = 6 + 2 * tonumber(ARGV[5]) - 1
  for i = 6, plain_end, 2 do
    add(ARGV[i], ARGV[i + 1])
  end
  if #ARGV > plain_end then
    local cap = tonumber(ARGV[4])
    local listed = redis.call("HGET", KEYS[1], "batch:names")
    local names = listed and cjson.decode(listed) or {}
    local counts = {}
    for _, name in ipairs(names) do
      counts[name] = tonumber(redis.call("HGET", KEYS[1], name) or "0")
    end
    for i = plain_end + 1, #ARGV, 2 do
      local field, amount = ARGV[i], tonumber(ARGV[i + 1])
      if counts[field] ~= nil then
        counts[field] = counts[field] + amount
        redis.call("HINCRBY", KEYS[1], field, amount)
      elseif #names < cap then
        table.insert(names, field)
        counts[field] = amount
        redis.call("HINCRBY", KEYS[1], field, amount)
      else
        local smallest, at = nil, nil
        for index, name in ipairs(names) do
          if smallest == nil or counts[name] < counts[smallest] then smallest, at = name, index end
        end
        if smallest ~= nil and amount > counts[smallest] then
          redis.call("HINCRBY", KEYS[1], other(smallest), counts[smallest])
          redis.call("HDEL", KEYS[1], smallest)
          counts[smallest] = nil
          names[at] = field
          counts[field] = amount
          redis.call("HINCRBY", KEYS[1], field, amount)
        else
          redis.call("HINCRBY", KEYS[1], other(field), amount)
        end
      end
    end
    redis.call("HSET", KEYS[1], "batch:names", cjson.encode(names))
  end
  redis.call("HSET", KEYS[1], mark, number)
  applied = 1
end
redis.call("EXPIRE", KEYS[1], ARGV[3])
return applied
""".replace("{other_prefix}", f"{ANOMALY_PREFIX}{OTHER}:")

# Server replies that say "not now" rather than "never": the bucket is kept and retried.
# (LOADING, after a restart, arrives as BusyLoadingError, a ConnectionError: Redis counts as down.)
_TRANSIENT_ERRORS = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError, AskError)
_TRANSIENT_PREFIXES = ("BUSY", "NOREPLICAS")

Number = int | float

def bucket_key(prefix: str, minute: int) -> str:
    """The Redis key of the bucket of one epoch minute."""
    return f"{prefix}:m:{minute}"


@dataclass(frozen=True, eq=False)
class Series:
    """A family of time buckets: one hash per `seconds`-long slot, `<prefix>:<tag>:<slot>`, kept `ttl_seconds`.

    Compared by identity: it keys the in-memory buckets on the request path, where hashing the
    fields on every lookup would cost more than the lookup."""

    tag: str
    seconds: int
    ttl_seconds: int

    def slot(self, now: float) -> int:
        """The slot number of a clock time."""
        return int(now // self.seconds)

    def key(self, prefix: str, slot: int) -> str:
        """The Redis key of one slot."""
        return f"{prefix}:{self.tag}:{slot}"


_Bucket = tuple[Series, int]


@dataclass(frozen=True)
class CounterStatus:
    """What /healthz reports about the counters of this worker."""

    redis_up: bool
    """False since a write failed, until one succeeds (True before the first write)."""
    pending: int
    """Counter fields (minute x field) held in memory, not yet known to be in Redis."""
    dropped: int
    """Counter fields discarded because the buffer was full or Redis refused them for good."""
    last_error: str | None
    """The most recent write error, kept after Redis recovers."""
    last_flush_at: float | None
    """Clock time of the last write Redis accepted in full."""


@dataclass
class _Batch:
    number: int
    buckets: dict[_Bucket, dict[str, Number]]


class Counters:
    """Per-minute counters of requests and anomalies, shared through Redis by all workers.

    Create it inside the worker process (after gunicorn forks): the writer id must differ between
    workers. `flush` writes what is pending; the worker's Flusher (proxy/store/flusher.py) calls it
    every flush interval and once more at shutdown.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "recguard",
        ttl_seconds: int = 7 * 86400,
        max_pending: int = 200_000,
        replica_wait_ms: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        self._client = client
        self._wait_ms = replica_wait_ms
        self._prefix = prefix
        self._max_pending = max_pending
        self._clock = clock
        self._script = LuaScript(_APPLY_BATCH)
        self._writer = uuid.uuid4().hex
        self._minutes = Series("m", 60, ttl_seconds)
        # field names of the profile: any other name in an anomaly field was chosen by a client
        self._known: frozenset[str] | None = None

        self._lock = threading.Lock()
        self._current: dict[_Bucket, defaultdict[str, Number]] = {}

        # Everything below belongs to whoever holds _flush_lock (the flusher, or close()).
        self._flush_lock = threading.Lock()
        self._unsent: _Batch | None = None
        self._unsent_size = 0
        self._next_number = 1
        self._redis_up = True
        self._dropped = 0
        self._drop_logged = False
        self._last_error: str | None = None
        self._last_flush_at: float | None = None

    def record_request(self, source: str, anomalies: Iterable[tuple[str, str]]) -> None:
        """Count one request: `requests`, `source:<source>`, and when it had anomalies, `anomalous`
        and `anomaly:<field>:<kind>` once per distinct pair. Memory only; never touches Redis."""
        names = {f"anomaly:{field}:{kind}" for field, kind in anomalies}
        source_field = "source:" + source
        minute = (self._minutes, int(self._clock() // 60))
        with self._lock:
            bucket = self._bucket(minute)
            bucket["requests"] += 1
            bucket[source_field] += 1
            if names:
                bucket["anomalous"] += 1
                for name in names:
                    bucket[name] += 1

    def know_names(self, names: Iterable[str]) -> None:
        """The field names of the profile (and the guard's own, like `history`): anomalies under any
        other name are counted by name only for the NAMES_PER_BUCKET most frequent per minute."""
        self._known = frozenset(names) | {OTHER}

    def add(self, field: str, amount: Number = 1) -> None:
        """Add `amount` to `field` of the current minute's bucket (ints stay exact, floats are sums)."""
        self.add_many(((field, amount),))

    def add_many(self, amounts: Iterable[tuple[str, Number]], series: Series | None = None,
                 at: float | None = None) -> None:
        """Add each (field, amount) to the bucket of `series` (default: the minute buckets) that holds the
        clock time `at` (default: now), under one lock. Memory only; written by the next flush, in the
        same batch as everything else."""
        amounts = list(amounts)
        for field, amount in amounts:
            if isinstance(amount, float) and not math.isfinite(amount):
                raise ValueError(f"counter {field!r}: amount must be finite, got {amount}")
            if field.startswith(MARKER_PREFIX):
                raise ValueError(f"counter {field!r}: the prefix {MARKER_PREFIX!r} is reserved")
        series = series or self._minutes
        slot = (series, series.slot(self._clock() if at is None else at))
        with self._lock:
            bucket = self._bucket(slot)
            for field, amount in amounts:
                bucket[field] += amount

    def increment(self, field: str, series: Series) -> None:
        """Add 1 to `field` of the current bucket of `series`: `add_many`'s work for one known field
        (no marker check: call it with names of your own), for a count taken on every answer."""
        slot = (series, series.slot(self._clock()))
        with self._lock:
            self._bucket(slot)[field] += 1

    def _bucket(self, slot: _Bucket) -> dict[str, Number]:
        """The in-memory bucket of a (series, slot), made on first use (call under the lock)."""
        bucket = self._current.get(slot)
        if bucket is None:
            bucket = self._current[slot] = defaultdict(int)
        return bucket

    def flush(self) -> bool:
        """Write everything pending to Redis; True when Redis took it all.

        In steady state this is one pipeline. After a failure, the unsent batch is retried first
        (same number, so never applied twice) and newer counts wait in memory until it is in.
        """
        with self._flush_lock:
            self._trim()
            if self._unsent is not None and not self._write_unsent():
                return False
            with self._lock:
                if not self._current:
                    return True
                self._unsent = _Batch(self._next_number, self._current)
                self._unsent_size = sum(len(fields) for fields in self._current.values())
                self._current = {}
            self._next_number += 1
            return self._write_unsent()

    def status(self) -> CounterStatus:
        """Redis reachability as the flusher last saw it, and what waits in memory."""
        with self._lock:
            current = sum(len(fields) for fields in self._current.values())
        return CounterStatus(
            redis_up=self._redis_up, pending=current + self._unsent_size, dropped=self._dropped,
            last_error=self._last_error, last_flush_at=self._last_flush_at,
        )

    def _write_unsent(self) -> bool:
        """Send the unsent batch, one script call per bucket; forget each bucket Redis applied (and, on a
        cluster with a replica wait, its shard's replicas acknowledged)."""
        batch = self._unsent
        buckets = list(batch.buckets)
        replies = dict(zip(buckets, self._send(batch, buckets)))

        retry_error: redis.RedisError | None = None
        for (series, slot), reply in replies.items():
            if not isinstance(reply, Exception):
                self._unsent_size -= len(batch.buckets.pop((series, slot)))
            elif not isinstance(reply, ResponseError) or _is_transient(reply):
                retry_error = reply
            else:
                fields = batch.buckets.pop((series, slot))
                self._unsent_size -= len(fields)
                self._dropped += len(fields)
                log.error("redis refused a counter bucket; its counts are dropped",
                          extra={"key": series.key(self._prefix, slot), "fields": len(fields), "error": str(reply)})
        if retry_error is not None:
            self._mark_down(retry_error)
            return False
        self._unsent = None
        self._last_flush_at = self._clock()
        if not self._redis_up:
            self._redis_up = True
            self._drop_logged = False
            log.info("redis reachable again: buffered counts written", extra={"dropped": self._dropped})
        return True

    def _send(self, batch: _Batch, buckets: list[_Bucket]) -> list:
        """One script call per bucket, pipelined (per node on a cluster); each reply or its error."""
        calls = []
        for series, slot in buckets:
            plain, invented = self._split(batch.buckets[(series, slot)])
            calls.append(self._script.call(
                series.key(self._prefix, slot), self._writer, batch.number, series.ttl_seconds, NAMES_PER_BUCKET,
                len(plain), *chain.from_iterable((field, _wire(value)) for field, value in plain.items()),
                *chain.from_iterable((field, _wire(value)) for field, value in invented)))
        return execute(self._client, calls, raise_on_error=False, wait_ms=self._wait_ms)

    def _split(self, fields: dict[str, Number]) -> tuple[dict[str, Number], list[tuple[str, Number]]]:
        """The fields as they are, and those counted under a name a client chose: the most frequent
        NAMES_PER_BUCKET of them, the rest added to `anomaly:_other:<kind>` here already (a batch
        sent again splits the same way)."""
        if self._known is None:
            return fields, []
        plain: dict[str, Number] = {}
        invented: list[tuple[str, Number]] = []
        for field, amount in fields.items():
            if field.startswith(ANOMALY_PREFIX):
                name = field[len(ANOMALY_PREFIX):].rpartition(":")[0]
                if name not in self._known:
                    invented.append((field, amount))
                    continue
            plain[field] = amount
        if len(invented) > NAMES_PER_BUCKET:
            invented.sort(key=lambda pair: (-pair[1], pair[0]))
            for field, amount in invented[NAMES_PER_BUCKET:]:
                other = f"{ANOMALY_PREFIX}{OTHER}:{field.rpartition(':')[2]}"
                plain[other] = plain.get(other, 0) + amount
            invented = invented[:NAMES_PER_BUCKET]
        return plain, invented

    def _mark_down(self, exc: redis.RedisError) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._redis_up:
            self._redis_up = False
            log.warning("redis unreachable: counts wait in memory", extra={"error": self._last_error})

    def _trim(self) -> None:
        """Drop the oldest fields past max_pending: the unsent batch first, then older buckets."""
        with self._lock:
            excess = self._unsent_size + sum(len(fields) for fields in self._current.values()) - self._max_pending
            if excess <= 0:
                return
            dropped = excess
            if self._unsent is not None:
                excess = self._drop_oldest(self._unsent.buckets, excess)
                self._unsent_size -= dropped - excess
                if not self._unsent.buckets:
                    self._unsent = None
            self._drop_oldest(self._current, excess)
        self._dropped += dropped
        if not self._drop_logged:
            self._drop_logged = True
            log.warning("counter buffer full: dropping the oldest counts",
                        extra={"max_pending": self._max_pending, "dropped": self._dropped})

    @staticmethod
    def _drop_oldest(buckets: dict[_Bucket, dict[str, Number]], excess: int) -> int:
        """Remove up to `excess` fields, oldest bucket first; return how many are still to remove."""
        for bucket in sorted(buckets, key=lambda item: item[1] * item[0].seconds):
            if excess <= 0:
                break
            fields = buckets[bucket]
            if len(fields) <= excess:
                excess -= len(fields)
                del buckets[bucket]
            else:
                for field in list(fields)[:excess]:
                    del fields[field]
                excess = 0
        return excess


def _wire(value: Number) -> str:
    # The script picks HINCRBYFLOAT when the text has a '.' or an exponent: repr(float) always does.
    return str(value) if isinstance(value, int) else repr(float(value))


def _is_transient(error: ResponseError) -> bool:
    return isinstance(error, _TRANSIENT_ERRORS) or str(error).startswith(_TRANSIENT_PREFIXES)
