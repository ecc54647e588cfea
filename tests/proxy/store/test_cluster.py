"""The store on a real Redis Cluster (3 primaries, 3 replicas): the URL picks the cluster client,
counts spread over every node add up, redirections and unloaded scripts are followed, a write the
replica has not acknowledged is sent again and counted once, and a primary killed right after a
flush loses nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
import redis

from proxy.redis_url import ClusterURL, parse_cluster_url, valid_redis_url
from proxy.settings import Settings, SettingsError
from proxy.store import client as store_client
from proxy.store.anomaly_query import query_anomalies
from proxy.store.client import ClusterClient, make_redis_client
from proxy.store.counters import Counters, Series, bucket_key
from tests.harness.clock import Clock
from tests.harness.cluster import CommandAudit
from tests.harness.servers import free_port

# the cluster is made by redis-cli (and the CLI and gunicorn run as child processes)
pytestmark = pytest.mark.system

BASE = 29_000_000 * 60  # an epoch minute far from now: buckets of the test's own clock


def requests_in(client, key: str) -> int:
    return int(client.hget(key, "requests") or 0)


def flush_until_written(counters: Counters, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not counters.flush():
        if time.monotonic() > deadline:
            pytest.fail(f"counts not written: {counters.status()}")
        time.sleep(0.1)


def one_request_flushed(cluster) -> tuple[Counters, str, str]:
    """Counters waiting for replicas (100 ms), one request counted and written: the counters, the
    minute's key and the primary that holds it."""
    counters = Counters(make_redis_client(cluster.url), clock=Clock(BASE + 1.0), replica_wait_ms=100)
    key = bucket_key("recguard", BASE // 60)
    counters.record_request("model", [])
    assert counters.flush()
    return counters, key, cluster.owner(key)


def test_the_url_alone_picks_a_cluster_and_names_its_seeds():
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,node-b:7001,[::1]:7002") == ClusterURL(
        (("10.0.0.1", 7000), ("node-b", 7001), ("::1", 7002)))
    assert parse_cluster_url("rediss+cluster://user:p%40ss@h:6380/0") == ClusterURL((("h", 6380),), "user", "p@ss", True)
    assert parse_cluster_url("redis+cluster://h") == ClusterURL((("h", 6379),))
    assert isinstance(make_redis_client("redis+cluster://127.0.0.1:7000"), ClusterClient)
    assert isinstance(make_redis_client("redis://127.0.0.1:7000/0"), redis.Redis)
    assert Settings.from_env({"RECGUARD_REDIS_URL": "redis+cluster://a:7000,b:7001"}).redis.url.startswith("redis+cluster")
    for bad in ("redis+cluster://", "redis+cluster://h:99999", "redis+cluster://h:7000/3", "redis+cluster://h:7000?x=1",
                "redis+cluster://h:7000,:7001", "cluster://h:7000"):
        assert not valid_redis_url(bad), bad
        with pytest.raises(SettingsError, match="RECGUARD_REDIS_URL: expected .*redis\\+cluster://HOST:PORT"):
            Settings.from_env({"RECGUARD_REDIS_URL": bad})
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"RECGUARD_REDIS_URL": "redis+cluster://u:hunter2@h:7000/9"})
    assert "hunter2" not in str(error.value)
    with pytest.raises(SettingsError, match="RECGUARD_REDIS_WAIT_MS: expected 0 or more, below redis_timeout"):
        Settings.from_env({"RECGUARD_REDIS_WAIT_MS": "250"})


def test_two_workers_counts_spread_over_every_node_add_up_exactly(cluster):
    clock = Clock(BASE + 1.0)
    workers = [Counters(make_redis_client(cluster.url), clock=clock, replica_wait_ms=100) for _ in range(2)]
    drift = Series("d", 2, 600)
    expected: dict[int, int] = {}
    for minute in range(40):  # forty minute keys: every primary holds some
        clock.now = BASE + minute * 60 + 1
        for index, worker in enumerate(workers):
            for _ in range(minute % 5 + index + 1):
                worker.record_request("model", [("email", "missing_field")])
                worker.add_many((("weight_kg:DE|n", 1), ("weight_kg:DE|s", 70.5)), series=drift)
            expected[minute] = expected.get(minute, 0) + minute % 5 + index + 1
        if minute % 7 == 0:
            for worker in workers:
                assert worker.flush()
    for worker in workers:
        assert worker.flush() and worker.status().pending == 0

    keys = [bucket_key("recguard", BASE // 60 + minute) for minute in expected]
    assert len({cluster.owner(key) for key in keys}) == 3
    reader = cluster.client()
    assert {minute: requests_in(reader, key) for minute, key in zip(expected, keys)} == expected
    report = query_anomalies(make_redis_client(cluster.url), "recguard", datetime.fromtimestamp(BASE, timezone.utc),
                             datetime.fromtimestamp(BASE + 39 * 60, timezone.utc))
    assert report.requests == report.anomalous_requests == sum(expected.values())
    assert report.by_field_kind == {"email": {"missing_field": sum(expected.values())}}
    drift_counts = sum(int(float(reader.hget(key, "weight_kg:DE|n"))) for key in reader.scan_iter("recguard:d:*"))
    assert drift_counts == sum(expected.values())


def test_a_moved_slot_and_a_migrating_slot_are_followed(cluster):
    clock = Clock(BASE + 1.0)
    counters = Counters(make_redis_client(cluster.url), clock=clock)
    counters.record_request("model", [])
    assert counters.flush()  # the client knows the topology as it was

    moved = bucket_key("recguard", BASE // 60)
    source = cluster.owner(moved)
    target = next(port for port in cluster.primaries() if port != source)
    cluster.move_slot(redis.crc.key_slot(moved.encode()), target)
    for _ in range(3):
        counters.record_request("model", [])
    assert counters.flush(), counters.status()
    assert cluster.owner(moved) == target and requests_in(cluster.node(target), moved) == 4

    clock.now += 60  # a bucket that does not exist yet, in a slot that is migrating: ASK
    asked = bucket_key("recguard", BASE // 60 + 1)
    slot = redis.crc.key_slot(asked.encode())
    source = cluster.slot_owner(slot)
    target = next(port for port in cluster.primaries() if port != source)
    cluster.begin_migration(slot, target)
    counters.record_request("fallback", [])
    assert counters.flush(), counters.status()
    pipe = cluster.node(target).pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.hget(asked, "requests")
    assert pipe.execute()[1] == "1"
    assert cluster.node(source).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    cluster.end_migration(slot, source, target)
    assert requests_in(cluster.client(), asked) == 1


def test_a_write_its_replica_has_not_acknowledged_is_sent_again_and_counted_once(cluster):
    counters, key, primary = one_request_flushed(cluster)

    replica = cluster.replica_of(primary)
    # asleep (for less than the node timeout, 1.5 s: no failover) past the probe's 0.4 s and the
    # flush's 100 ms wait for it, however slow the machine
    asleep = threading.Thread(target=lambda: cluster.node(replica).execute_command("DEBUG", "SLEEP", "1.0"))
    asleep.start()
    cluster.until_busy(replica)
    for _ in range(9):
        counters.record_request("model", [])
    assert not counters.flush()  # applied by the primary, not acknowledged in time
    status = counters.status()
    assert status.pending > 0 and "NotReplicatedError" in status.last_error
    assert requests_in(cluster.node(primary), key) == 10
    asleep.join()
    flush_until_written(counters)
    assert counters.status().pending == 0 and requests_in(cluster.node(primary), key) == 10


def test_a_primary_killed_right_after_a_flush_loses_none_of_it(cluster):
    counters, key, primary = one_request_flushed(cluster)

    # From now on writes reach the primary alone, which dies before its replica catches up: without
    # WAIT the flush would report them written and forget them, and the promoted replica never had them.
    cluster.cut_replication(primary)
    for _ in range(6):
        counters.record_request("model", [])
    counters.flush()
    cluster.kill(primary)
    promoted = cluster.wait_failover(primary)
    flush_until_written(counters)
    assert cluster.owner(key) == promoted
    assert requests_in(cluster.client(), key) == 7

    for _ in range(3):
        counters.record_request("model", [])
    flush_until_written(counters)
    assert requests_in(cluster.client(), key) == 10


def test_a_replica_that_joins_after_a_failover_is_waited_for_within_the_recheck(cluster, monkeypatch):
    # the product's period is 5 s; the same code with 1 s keeps the test short
    monkeypatch.setattr(store_client, "REPLICA_RECHECK_SECONDS", 1.0)
    counters, key, primary = one_request_flushed(cluster)
    cluster.kill(primary)
    promoted = cluster.wait_failover(primary)
    counters.record_request("model", [])
    flush_until_written(counters)  # the promoted primary has no replica yet: nothing to wait for
    cluster.repair()  # the killed node is back, a replica of the promoted one, listed once synced
    rejoined = cluster.replica_of(promoted)

    # within the recheck period (twice it, and a flush interval), a write the rejoined replica has
    # not acknowledged is kept, and counted once when it has
    deadline = time.monotonic() + 2 * store_client.REPLICA_RECHECK_SECONDS + 1
    recorded = 2
    while True:
        asleep = threading.Thread(target=lambda: cluster.node(rejoined).execute_command("DEBUG", "SLEEP", "1.0"))
        asleep.start()
        cluster.until_busy(rejoined)
        counters.record_request("model", [])
        recorded += 1
        refused = not counters.flush()
        asleep.join()
        if refused:
            break
        assert time.monotonic() < deadline, "a write to the shard of the rejoined replica is still not waited for"
    assert "NotReplicatedError" in counters.status().last_error
    flush_until_written(counters)
    assert counters.status().pending == 0 and requests_in(cluster.client(), key) == recorded


def test_a_worker_starts_and_counts_while_no_cluster_node_answers():
    client = make_redis_client(f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    counters = Counters(client)
    counters.record_request("model", [("email", "missing_field")])
    assert not counters.flush()
    status = counters.status()
    assert not status.redis_up and status.pending == 4 and "no Redis Cluster node answered" in status.last_error
    with pytest.raises(redis.ConnectionError):
        query_anomalies(client, "recguard", datetime.now(timezone.utc), datetime.now(timezone.utc))


def test_the_command_audit_flags_what_a_cluster_would_refuse(cluster):
    audit = CommandAudit(cluster)
    audit.stop()
    audit.commands = [(0, "c", ("HGETALL", "recguard:m:1")), (0, "c", ("EVALSHA", "ab" * 20, "1", "recguard:d:5", "x")),
                      (0, "c", ("PING",)), (0, "c", ("MGET", "recguard:m:1", "recguard:m:2")), (0, "c", ("MULTI",)),
                      (0, "c", ("EVALSHA", "ab" * 20, "2", "recguard:m:1", "recguard:m:2"))]
    assert audit.cluster_risks() == ["cross-slot: MGET recguard:m:1 recguard:m:2", "transaction: MULTI",
                                     f"cross-slot: EVALSHA {'ab' * 20} 2 recguard:m:1 recguard:m:2"]


def test_recguard_anomalies_on_an_unreachable_cluster_is_one_line_without_the_password():
    url = f"redis+cluster://ops:hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "anomalies", "--redis", url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("recguard anomalies: cannot read counters from redis+cluster://ops:***@127.0.0.1:")
    assert "no Redis Cluster node answered" in result.stderr and "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
