"""The Redis client every part of recguard uses: one server or a Redis Cluster, chosen by the URL alone.

`redis://`, `rediss://` and `unix://` name one server. `redis+cluster://[user:password@]host:port[,host:port...]`
(`rediss+cluster://` for TLS) names seed nodes of a Redis Cluster: any one that answers is enough, the
client learns the rest (redis-py's `RedisCluster`, built at its first use so that a worker starts and
serves while no node answers, exactly as it does while a single Redis is away).

`execute` runs a list of one-key commands pipelined: one pipeline on a single server; on a cluster one
pipeline per node, each command sent to the primary of its key's hash slot, MOVED and ASK redirections
followed (a slot migrating while we write), a script a node has not loaded (a new or promoted node)
loaded and the command resent. No command ever spans two slots, so none can be refused as CROSSSLOT.

With `wait_ms`, each node's pipeline on a cluster ends in `WAIT <replicas of that shard> <wait_ms>`,
on the same connection as the writes: a write whose shard's replicas did not all acknowledge it comes
back as `NotReplicatedError`, so the caller keeps it and sends it again (the counters' batches are
applied once whatever the number of sends). A SIGKILLed primary then loses nothing that was reported
written: its replica, promoted, holds every write that was. A shard the client knows no replica of is
not waited for, and the topology is read again every REPLICA_RECHECK_SECONDS while that lasts: Redis
lists a replica in CLUSTER SLOTS only once it has synced, seconds after it joined (the old primary
back after a failover, a new node), and a client that read the topology before would otherwise never
wait for it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.retry import Retry

from proxy.redis_url import ClusterURL, is_cluster_url, parse_cluster_url

log = logging.getLogger("recguard.store")

# A redirection (MOVED, ASK) or a missing script costs one more round; a slot moving twice while we
# write is left to the caller's next attempt.
_ROUNDS = 3
REPLICA_RECHECK_SECONDS = 5.0
"""How often a cluster client that writes to a shard without a known replica reads the topology again."""
_rechecked: "weakref.WeakKeyDictionary[RedisCluster, float]" = weakref.WeakKeyDictionary()
_rechecked_lock = threading.Lock()


class ClusterUnavailable(redis.ConnectionError):
    """No node of the cluster could be reached, or the key's slot has no known owner right now."""


class NotReplicatedError(RedisError):
    """The node applied the write, but not every replica of its shard acknowledged it within `wait_ms`."""


class ClusterClient:
    """A redis-py `RedisCluster`, built at its first use and rebuilt while no node has answered yet.

    Every attribute is the cluster client's; its methods raise `ClusterUnavailable` (a
    redis.ConnectionError) where redis-py raises its own RedisClusterException, so callers handle one
    kind of "Redis is away" whatever the deployment."""

    def __init__(self, url: ClusterURL, timeout: float):
        self.url = url
        self._timeout = timeout
        self._cluster: RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> RedisCluster:
        """The connected cluster client (raises ClusterUnavailable while no seed answers)."""
        cluster = self._cluster
        if cluster is not None:
            return cluster
        with self._lock:
            if self._cluster is None:
                try:
                    self._cluster = RedisCluster(
                        startup_nodes=[ClusterNode(host, port) for host, port in self.url.seeds],
                        username=self.url.username, password=self.url.password, ssl=self.url.ssl,
                        socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                        # one retry, after a topology refresh: a failover or a moved slot, not an outage
                        retry=Retry(NoBackoff(), 1), require_full_coverage=False, decode_responses=True,
                    )
                except (RedisClusterException, RedisError) as exc:
                    raise ClusterUnavailable(f"no Redis Cluster node answered: {_safe(exc, self.url)}") from None
            return self._cluster

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.cluster, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except RedisClusterException as exc:
                raise ClusterUnavailable(_safe(exc, self.url)) from None

        return call

    def close(self) -> None:
        """Close every node's connections."""
        if self._cluster is not None:
            self._cluster.close()

    def __repr__(self) -> str:
        return f"ClusterClient(seeds={list(self.url.seeds)})"


def _safe(exc: BaseException, url: ClusterURL) -> str:
    text = str(exc)
    return text.replace(url.password, "***") if url.password else text


def make_redis_client(url: str, timeout: float = 0.25) -> redis.Redis | ClusterClient:
    """A client for the counter and query paths: fails fast, never retries on its own.

    Counter flushes are idempotent and retried by the flusher at the next interval, so a
    library-level retry with backoff would only hold the flusher (or a /healthz call) longer.
    """
    if is_cluster_url(url):
        return ClusterClient(parse_cluster_url(url), timeout)
    # No health_check_interval: the pool already replaces a connection the server closed (it
    # checks readability at checkout), and a PING before each flush would double its round trips.
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )


def cluster_of(client: Any) -> RedisCluster | None:
    """The RedisCluster behind a client, None for a single server (raises ClusterUnavailable)."""
    if isinstance(client, ClusterClient):
        return client.cluster
    return client if isinstance(client, RedisCluster) else None


@dataclass(frozen=True)
class LuaScript:
    """A Lua script run by EVALSHA; its source loads it on a server (or node) that has not seen it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def call(self, key: str, *args: Any) -> "Command":
        """EVALSHA of this script on one key."""
        return Command(key, ("EVALSHA", self.sha, 1, key, *args), self)


@dataclass(frozen=True)
class Command:
    """One Redis command that touches exactly one key (`key`, which routes it on a cluster)."""

    key: str
    args: tuple
    script: LuaScript | None = None


def command(name: str, key: str, *args: Any) -> Command:
    """A one-key command whose key is its first argument (HGETALL key, HSET key field value, ...)."""
    return Command(key, (name, key, *args))


def execute(client: Any, commands: Sequence[Command], *, raise_on_error: bool = True, wait_ms: int = 0) -> list[Any]:
    """Run `commands` pipelined (per node on a cluster); the replies in order.

    With `raise_on_error` the first failed command's error is raised; without, each failed command's
    error (redis.RedisError) is its reply: a connection lost, a node away, a reply error,
    `NotReplicatedError`. `wait_ms` (a cluster only, for writes) waits for each shard's replicas."""
    if not commands:
        return []
    try:
        cluster = cluster_of(client)
    except ClusterUnavailable as exc:
        replies: list[Any] = [exc] * len(commands)
    else:
        replies = _on_single(client, commands) if cluster is None else _on_cluster(cluster, commands, wait_ms)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


def _pipeline(client: redis.Redis, commands: Sequence[Command], asking: bool = False,
              wait: int = 0, wait_ms: int = 0) -> tuple[list[Any], Any]:
    """One pipeline on one server: the commands' replies and, with `wait`, WAIT's reply."""
    pipe = client.pipeline(transaction=False)
    for item in commands:
        if asking:
            pipe.execute_command("ASKING")
        pipe.execute_command(*item.args)
    if wait:
        pipe.execute_command("WAIT", wait, wait_ms)
    try:
        replies = pipe.execute(raise_on_error=False)
    except RedisError as exc:  # the connection, not one command: every reply is lost
        return [exc] * len(commands), exc
    waited = replies.pop() if wait else None
    return (replies[1::2] if asking else replies), waited


def _load_scripts(client: redis.Redis, commands: Sequence[Command], replies: list[Any]) -> list[int]:
    """Load the scripts a server answered NOSCRIPT to; the positions to send again."""
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    for script in {commands[index].script for index in missing} - {None}:
        client.script_load(script.source)
    return missing


def _on_single(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    replies, _ = _pipeline(client, commands)
    try:
        missing = _load_scripts(client, commands, replies)
    except RedisError as exc:
        return [exc] * len(commands)
    if missing:
        resent, _ = _pipeline(client, [commands[index] for index in missing])
        for index, reply in zip(missing, resent):
            replies[index] = reply
    return replies


def _on_cluster(cluster: RedisCluster, commands: Sequence[Command], wait_ms: int) -> list[Any]:
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    asked: dict[int, ClusterNode] = {}
    refresh = lonely = False
    for _ in range(_ROUNDS):
        groups: dict[tuple[str, bool], tuple[ClusterNode, list[int], int]] = {}
        for index in todo:
            node, replicas = asked.get(index), 0
            if node is None:
                shard = cluster.nodes_manager.slots_cache.get(cluster.keyslot(commands[index].key))
                if not shard:  # mid-failover, or a topology read while part of the cluster was away
                    replies[index] = ClusterUnavailable("the key's slot has no known owner")
                    refresh = True
                    continue
                node, replicas = shard[0], len(shard) - 1
            group = groups.setdefault((node.name, index in asked), (node, [], replicas))
            group[1].append(index)
        retry: list[int] = []
        for (_, asking), (node, indices, replicas) in groups.items():
            client = cluster.get_redis_connection(node)
            batch = [commands[index] for index in indices]
            wait = (_replicas_of(cluster, node) if asking else replicas) if wait_ms else 0
            lonely = lonely or (wait_ms and not wait)
            node_replies, waited = _pipeline(client, batch, asking=asking, wait=wait, wait_ms=wait_ms)
            if wait and not (isinstance(waited, int) and waited >= wait):
                short = NotReplicatedError(f"{waited} of {wait} replicas of {node.name} acknowledged within {wait_ms} ms")
                node_replies = [reply if isinstance(reply, Exception) else short for reply in node_replies]
                refresh = True  # a replica may have left the shard
            try:
                missing = set(_load_scripts(client, batch, node_replies))
            except RedisError as exc:
                missing = set()
                node_replies = [exc] * len(batch)
            for position, (index, reply) in enumerate(zip(indices, node_replies)):
                replies[index] = reply
                if position in missing:  # resent to the same node (with ASKING again, if asked)
                    retry.append(index)
                    continue
                asked.pop(index, None)
                if isinstance(reply, MovedError):
                    cluster.nodes_manager.move_slot(reply)
                    retry.append(index)
                elif isinstance(reply, AskError):
                    asked[index] = cluster.nodes_manager.get_node(reply.host, reply.port) or ClusterNode(reply.host, reply.port)
                    retry.append(index)
                elif isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
                    refresh = True
        if not retry:
            break
        todo = retry
    if refresh:
        _refresh(cluster)
    elif lonely and _recheck_due(cluster):
        # nothing failed: keep the connections (redis-py's re-read drops a startup node's idle ones)
        _refresh(cluster, disconnect=False)
    return replies


def _recheck_due(cluster: RedisCluster) -> bool:
    """True at most once every REPLICA_RECHECK_SECONDS per cluster client (the first time at once)."""
    now = time.monotonic()
    with _rechecked_lock:
        if now - _rechecked.get(cluster, -math.inf) < REPLICA_RECHECK_SECONDS:
            return False
        _rechecked[cluster] = now
        return True


def _replicas_of(cluster: RedisCluster, node: ClusterNode) -> int:
    """Replicas of the shard whose primary is `node` (an ASK target: rare, so a scan is fine)."""
    for shard in cluster.nodes_manager.slots_cache.values():
        if shard and shard[0].name == node.name:
            return len(shard) - 1
    return 0


def _refresh(cluster: RedisCluster, disconnect: bool = True) -> None:
    """Read the cluster's topology again (a node died, a replica was promoted, a slot moved, a
    replica may have joined)."""
    try:
        cluster.nodes_manager.initialize(disconnect_startup_nodes_pools=disconnect)
    except (RedisClusterException, RedisError) as exc:
        log.info("redis cluster topology not refreshed", extra={"error": type(exc).__name__})
