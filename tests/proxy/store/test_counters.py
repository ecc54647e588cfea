"""Counters against a real redis-server: exact counts, TTL, retries applied once, outages survived; the
flusher thread that writes them."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

import pytest

from proxy.store.anomaly_query import AnomalyReport, query_anomalies
from proxy.store.counters import Counters, make_redis_client
from proxy.store.flusher import EARLY_FLUSHES_PER_INTERVAL, Flusher, Step
from tests.harness.clock import Clock
from tests.harness.servers import RedisRelay, RedisServer, free_port
from tests.harness.waiting import holds_within

pytestmark = pytest.mark.integration  # every test here writes to a real redis-server

PREFIX = "recguard"


def flushing(counters: Counters, interval: float, *after: Step) -> Flusher:
    """A started flusher that writes `counters` every `interval` (then runs `after`), as a worker's does."""
    flusher = Flusher(interval, [Step("counters", counters.flush, on_close=True), *after])
    flusher.start()
    return flusher
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc).timestamp()
MINUTE0 = int(T0 // 60)


def report_around(client, moment: float) -> AnomalyReport:
    """The counts of the hour either side of `moment`."""
    return query_anomalies(client, PREFIX, datetime.fromtimestamp(moment - 3600, timezone.utc),
                           datetime.fromtimestamp(moment + 3600, timezone.utc))



def hammer(counters: Counters, threads: int, per_thread: int) -> None:
    """Record from several threads at once, every third request anomalous."""
    def run() -> None:
        for i in range(per_thread):
            if i % 3 == 0:
                counters.record_request("fallback", [("country", "unknown_category"), ("country", "unknown_category")])
            else:
                counters.record_request("model", [])

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_burst_from_threads_and_two_workers_is_counted_exactly(redis_server, redis_client):
    workers = [Counters(make_redis_client(redis_server.url)) for _ in range(2)]
    flushers = [flushing(counters, 0.01) for counters in workers]
    bursts = [threading.Thread(target=hammer, args=(counters, 4, 5_000)) for counters in workers]
    for burst in bursts:
        burst.start()
    for burst in bursts:
        burst.join()
    for flusher in flushers:
        assert flusher.close() == []

    report = report_around(redis_client, time.time())
    anomalous = 2 * 4 * len(range(0, 5_000, 3))
    assert report.requests == 2 * 4 * 5_000
    assert report.anomalous_requests == report.fallback_requests == anomalous
    assert report.by_field_kind == {"country": {"unknown_category": anomalous}}
    assert all(counters.status().pending == 0 for counters in workers)


def test_bucket_layout_ttl_number_types_and_script_reload(redis_server, redis_client):
    clock = Clock(T0 + 30)
    counters = Counters(make_redis_client(redis_server.url), ttl_seconds=3600, clock=clock)
    counters.record_request("model", [("email", "missing_field"), ("user_email", "unexpected_field")])
    counters.record_request("fallback", [("weight_kg", "out_of_range")])
    counters.add("drift:weight_kg:sum", 70)
    counters.add("drift:height_cm:sum", 1.5)
    assert counters.flush()
    redis_client.script_flush()
    counters.add("drift:weight_kg:sum", 0.25)
    counters.add("drift:height_cm:sum", 2)
    assert counters.flush()

    key = f"{PREFIX}:m:{MINUTE0}"
    assert redis_client.keys("*") == [key]
    stored = redis_client.hgetall(key)
    marker = next(name for name in stored if name.startswith("batch:"))
    assert stored.pop(marker) == "2"
    assert stored == {
        "requests": "2", "source:model": "1", "source:fallback": "1", "anomalous": "2",
        "anomaly:email:missing_field": "1", "anomaly:user_email:unexpected_field": "1",
        "anomaly:weight_kg:out_of_range": "1",
        "drift:weight_kg:sum": "70.25", "drift:height_cm:sum": "3.5",
    }
    assert 3590 < redis_client.ttl(key) <= 3600


def test_add_refuses_what_redis_could_not_store(redis_server):
    counters = Counters(make_redis_client(redis_server.url))
    with pytest.raises(ValueError, match="finite"):
        counters.add("drift:x:sum", float("nan"))
    with pytest.raises(ValueError, match="reserved"):
        counters.add("batch:abc", 1)


def test_flush_retried_after_a_lost_reply_is_applied_once(redis_server, redis_client):
    relay = RedisRelay(redis_server.port)
    counters = Counters(make_redis_client(relay.url), clock=Clock(T0))
    try:
        counters.record_request("model", [])
        assert counters.flush()
        for _ in range(99):
            counters.record_request("model", [])

        relay.drop_replies.set()
        assert not counters.flush()
        assert report_around(redis_client, T0).requests == 100, "Redis ran the flush; only its reply was lost"
        assert counters.status().pending > 0 and not counters.status().redis_up

        relay.drop_replies.clear()
        counters.record_request("model", [])
        assert counters.flush()
        assert report_around(redis_client, T0).requests == 101
        assert counters.status().pending == 0 and counters.status().redis_up
    finally:
        relay.close()


def test_redis_restart_loses_and_doubles_nothing(tmp_path, caplog, monkeypatch):
    server = RedisServer(tmp_path, appendonly=True).start()
    client = make_redis_client(server.url)
    counters = Counters(client, clock=Clock(T0))
    try:
        for _ in range(50):
            counters.record_request("model", [])
        assert counters.flush()
        server.stop()

        caplog.set_level(logging.INFO, logger="recguard.counters")
        # the request path never waits on Redis: not one connection asked for while Redis is down
        # (its cost, about 1 % of a request, is measured in scripts/bench_proxy.py: benchmarks.md)
        checkouts = []
        get_connection = client.connection_pool.get_connection
        monkeypatch.setattr(client.connection_pool, "get_connection",
                            lambda *args, **kwargs: checkouts.append(1) or get_connection(*args, **kwargs))
        for i in range(10_000):
            counters.record_request("fallback", [("country", "unknown_category")] if i % 2 else [])
        assert checkouts == []
        for _ in range(3):
            assert not counters.flush()
        status = counters.status()
        assert not status.redis_up and status.pending == 4 and status.last_error
        assert [record.message for record in caplog.records] == ["redis unreachable: counts wait in memory"]

        server.start()
        assert counters.flush()
        report = report_around(server.client(), T0)
        assert report.requests == 10_050
        assert report.fallback_requests == 10_000 and report.by_kind == {"unknown_category": 5_000}
        assert counters.status().redis_up and counters.status().pending == 0
        assert caplog.records[-1].message == "redis reachable again: buffered counts written"
    finally:
        server.stop()


def test_buffer_bound_drops_the_oldest_and_counts_them(tmp_path):
    port = free_port()
    clock = Clock(T0)
    counters = Counters(make_redis_client(f"redis://127.0.0.1:{port}/0"), max_pending=10, clock=clock)
    for minute in range(20):
        clock.now = T0 + 60 * minute
        counters.record_request("model", [])
    assert counters.status().pending == 40

    assert not counters.flush()
    assert counters.status().pending == 10 and counters.status().dropped == 30

    server = RedisServer(tmp_path, port=port).start()
    try:
        assert counters.flush()
        client = server.client()
        assert sorted(int(key.rsplit(":", 1)[1]) - MINUTE0 for key in client.keys("*")) == [15, 16, 17, 18, 19]
        assert report_around(client, T0).requests == 5
        assert counters.status().dropped == 30
    finally:
        server.stop()


def test_flusher_catches_up_when_redis_appears_after_start(tmp_path):
    port = free_port()
    counters = Counters(make_redis_client(f"redis://127.0.0.1:{port}/0"), clock=Clock(T0))
    flusher = flushing(counters, 0.05)
    server = RedisServer(tmp_path, port=port)
    try:
        for _ in range(100):
            counters.record_request("model", [])
        assert holds_within(lambda: not counters.status().redis_up), "the flusher never found Redis down"

        server.start()
        client = server.client()
        assert holds_within(lambda: report_around(client, T0).requests == 100), report_around(client, T0).requests
        assert counters.status().redis_up
    finally:
        flusher.close()
        server.stop()


def test_a_woken_flusher_flushes_at_once_but_at_most_ten_times_an_interval(redis_server, redis_client):
    """The drift watch's wake-up (Flusher.wake) through the real flusher thread."""
    interval = 0.5
    counters = Counters(make_redis_client(redis_server.url))
    flushed_at: list[float] = []
    flusher = flushing(counters, interval, Step("after", lambda: flushed_at.append(time.monotonic())))
    try:
        time.sleep(0.05)  # the flusher is waiting out its first interval
        asked = time.monotonic()
        counters.record_request("model", [])
        flusher.wake()
        assert holds_within(lambda: flushed_at, timeout=interval), "a woken flusher did not flush within an interval"
        # at once: well before the interval would have ended (a tenth of it for a loaded machine)
        assert flushed_at[0] - asked < interval / 10, flushed_at[0] - asked
        assert report_around(redis_client, time.time()).requests == 1

        flushed_at.clear()
        hammering = time.monotonic()
        while time.monotonic() - hammering < 4 * interval:
            counters.record_request("model", [])
            flusher.wake()
            time.sleep(0.001)
        gaps = [later - earlier for earlier, later in zip(flushed_at, flushed_at[1:])]
        # EARLY_FLUSHES_PER_INTERVAL (10): never two flushes closer than a tenth of the interval,
        # and asked without pause it does flush early (4 intervals would give 4 flushes without it)
        assert min(gaps) >= interval / EARLY_FLUSHES_PER_INTERVAL - 0.002, min(gaps)
        assert 8 < len(flushed_at) <= 4 * EARLY_FLUSHES_PER_INTERVAL + 1, len(flushed_at)
    finally:
        flusher.close()
