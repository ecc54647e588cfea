"""Feedback against tickets, counted in a real Redis: once per (ticket, item, event), nothing lost while Redis is away."""

import math
import threading
import time
from datetime import datetime, timezone

import pytest
import redis

from proxy.quality.alarm import QualityMonitor, QualityThresholds
from proxy.quality.feedback import Event, FeedbackLedger
from proxy.quality.report import parse_group_keys, query_quality
from proxy.quality.tickets import Ticket
from proxy.store.counters import Counters, make_redis_client
from tests.harness.clock import Clock
from tests.harness.servers import RedisRelay, RedisServer, free_port

T0 = 1_790_000_000.0


def ledger_on(client: redis.Redis, clock: Clock) -> tuple[Counters, FeedbackLedger]:
    counters = Counters(client, clock=clock)
    return counters, FeedbackLedger(counters, client, prefix="recguard", window_seconds=86_400, ttl_seconds=3600,
                                    clock=clock)


def ticket(request_id: str, source: str = "model", items=(3, 1, 2), segment: str = "JP", at: float = T0) -> Ticket:
    return Ticket(request_id, int(at), "v1", source, segment, tuple(items))


def flush(counters: Counters, ledger: FeedbackLedger) -> None:
    assert ledger.flush()
    assert counters.flush()


def report(client, by="version,source,segment", at: float = T0):
    moment = datetime.fromtimestamp(at, timezone.utc)
    return {tuple(g[k] for k in parse_group_keys(by)): g
            for g in query_quality(client, "recguard", moment, moment, parse_group_keys(by)).to_json()["groups"]}


def report_at(client, at: float) -> dict:
    """The one group's figures of the minute holding `at`."""
    return report(client, at=at)[("v1", "model", "JP")]


def test_hits_ranks_and_duplicates(redis_server, redis_client):
    clock = Clock(T0)
    counters, ledger = ledger_on(make_redis_client(redis_server.url), clock)
    for _ in range(4):
        ledger.impression("v1", "model", "JP")
    first, second = ticket("a"), ticket("b")
    ledger.accept([Event(first, "ka", "item_1", 1, "click"), Event(first, "ka", "item_1", 1, "click"),   # the same click twice
                   Event(first, "ka", "item_2", 2, "purchase"),                                # a second hit, same answer
                   Event(second, "kb", "item_9", 9, "click")])                                 # not served: no hit
    clock.now += 30
    flush(counters, ledger)
    ledger.accept([Event(first, "ka", "item_1", 1, "click")])  # retried by the site a minute later
    flush(counters, ledger)
    group = report(redis_client)[("v1", "model", "JP")]
    assert group["impressions"] == 4 and group["feedback"] == 3 and group["hits"] == 2
    assert group["answers_hit"] == 1 and group["hit_rate"] == 0.25
    assert group["mrr"] == 0.125  # the first hit was at rank 2: 1/2 over 4 answers
    assert group["interval"][0] < 0.25 < group["interval"][1]


def test_many_answers_an_hour_apart_count_exactly_in_few_keys_that_expire(redis_server, redis_client):
    clock = Clock(T0)
    counters, ledger = ledger_on(make_redis_client(redis_server.url), clock)
    for hour in (0, 3600):
        clock.now = T0 + hour
        for _ in range(150):
            ledger.impression("v1", "model", "JP")
    clock.now = T0 + 7200
    # 300 answers issued in two different hours, each clicked on its first item twice (the site
    # retried), bought from at rank 2, and clicked on an item it did not serve
    tickets = [ticket(f"r{i}", at=T0 + (0 if i % 2 else 3600)) for i in range(300)]
    events = [Event(t, f"tag{i}", item, index, kind) for i, t in enumerate(tickets)
              for item, index, kind in (("item_3", 3, "click"), ("item_3", 3, "click"), ("item_1", 1, "purchase"),
                                        ("item_9", 9, "click"))]
    ledger.accept(events[:500])
    flush(counters, ledger)
    ledger.accept(events[500:] + events[:40])  # the rest, and 40 events a second time
    flush(counters, ledger)
    hours = [report_at(redis_client, T0), report_at(redis_client, T0 + 3600)]
    for group in hours:
        assert (group["impressions"], group["feedback"], group["hits"], group["answers_hit"]) == (150, 450, 300, 150)
        assert group["hit_rate"] == 1.0 and group["mrr"] == 1.0  # every first hit at rank 1
    keys = redis_client.keys("recguard:t:*")
    assert 2 <= len(keys) <= 2 * 16
    # kept for the feedback window after the end of each key's hour, not longer
    for key in keys:
        span_end = (int(key.split(":")[2]) + 1) * 600
        # the window, plus the minute of margin the ledger keeps, after the end of the key's ten minutes
        assert abs(redis_client.ttl(key) - (span_end + 86_400 + 60 - clock.now)) <= 2, key


def test_item_ids_with_separators_are_events_of_their_own(redis_server, redis_client):
    counters, ledger = ledger_on(make_redis_client(redis_server.url), Clock(T0))
    answer = ticket("a", items=(4,))
    ledger.accept([Event(answer, "ka", "x\x1fclick\x1fy", None, "click"), Event(answer, "ka", "x", None, "click"),
                   Event(answer, "ka", "x\x1fclick", None, "click"), Event(answer, "ka", "line\nbreak", None, "click")])
    flush(counters, ledger)
    assert report(redis_client)[("v1", "model", "JP")]["feedback"] == 4


def test_events_being_sent_still_count_as_pending(redis_server, redis_client):
    relay = RedisRelay(redis_server.port)
    relay.delay = 0.1  # every exchange with Redis takes a while: the flush is seen in flight
    try:
        counters, ledger = ledger_on(make_redis_client(relay.url, timeout=5.0), Clock(T0))
        ledger.accept([Event(ticket("a"), "ka", "item_3", 3, "click")])
        flusher = threading.Thread(target=ledger.flush)
        flusher.start()
        seen = []
        while flusher.is_alive():
            seen.append(ledger.pending)
        flusher.join()
        # 1 while the flush waits on Redis (hundreds of ms here), 0 only once it has counted the event
        # (microseconds before the thread ends)
        assert seen == sorted(seen, reverse=True) and seen.count(1) > 0.9 * len(seen), \
            f"an event in flight went missing from pending: {seen.count(1)} of {len(seen)} samples saw it"
        assert ledger.pending == 0
    finally:
        relay.close()


def test_a_flush_called_while_another_is_sending_returns_once_that_one_counted(redis_server, redis_client):
    relay = RedisRelay(redis_server.port)
    relay.delay = 0.1
    try:
        counters, ledger = ledger_on(make_redis_client(relay.url, timeout=5.0), Clock(T0))
        ledger.accept([Event(ticket("a"), "ka", "item_3", 3, "click")])
        flusher = threading.Thread(target=ledger.flush)  # the flusher thread's own flush
        flusher.start()
        # until it has taken the event from the queue (`pending` counts it either way)
        deadline = time.monotonic() + 5
        while not ledger._sending:
            assert time.monotonic() < deadline, "the flush never took the event"
        # a final flush at close, or a test's: the event is in the counters when it returns
        assert ledger.flush()
        assert counters.flush()
        flusher.join()
        assert report(redis_client)[("v1", "model", "JP")]["feedback"] == 1
    finally:
        relay.close()


@pytest.mark.integration  # starts a redis-server of its own
def test_feedback_waits_while_redis_is_down_and_counts_once_back(tmp_path):
    server = RedisServer(tmp_path, port=free_port()).start()
    client = make_redis_client(server.url)
    counters, ledger = ledger_on(client, Clock(T0))
    ledger.impression("v1", "model", "JP")
    server.stop()
    ledger.accept([Event(ticket("a"), "ka", "item_3", 3, "click")])
    assert not ledger.flush() and ledger.pending == 1
    assert not counters.flush()
    server.start()
    try:
        flush(counters, ledger)
        group = report(server.client())[("v1", "model", "JP")]
        assert (group["impressions"], group["hits"], group["answers_hit"]) == (1, 1, 1)
        assert ledger.pending == 0 and ledger.dropped == 0
    finally:
        server.stop()


def test_grouping_keys(redis_server, redis_client):
    counters, ledger = ledger_on(make_redis_client(redis_server.url), Clock(T0))
    for source, segment in [("model", "JP"), ("model", "DE"), ("holdback", "JP"), ("fallback", "DE")]:
        ledger.impression("v1", source, segment)
    flush(counters, ledger)
    assert set(report(redis_client, "source")) == {("model",), ("holdback",), ("fallback",)}
    assert report(redis_client, "source")[("model",)]["impressions"] == 2
    assert set(report(redis_client, "segment,version")) == {("v1", "JP"), ("v1", "DE")}


def test_the_monitor_alarms_when_the_model_falls_below_its_offline_figure(redis_server, redis_client):
    clock = Clock(T0)
    counters, ledger = ledger_on(make_redis_client(redis_server.url), clock)
    monitor = QualityMonitor(make_redis_client(redis_server.url), "recguard", "v1", 0.22,
                             QualityThresholds(min_impressions=200), clock=clock)
    # the minute the alarm must come, from the counts alone: Page's CUSUM of "rate 0.22 x 0.8" against
    # "rate 0.22" (ln 0.8 a hit, ln(0.824/0.78) a miss) reaching h = 12 with at least 200 answers
    statistic, expected = 0.0, None
    for minute in range(30):
        hits = 22 - (12 if minute >= 10 else 0)
        statistic = max(0.0, statistic + hits * math.log(0.8) + (100 - hits) * math.log((1 - 0.176) / (1 - 0.22)))
        if statistic >= 12:
            expected = minute
            break
    served = 0
    for minute in range(30):
        for i in range(100):
            ledger.impression("v1", "model", "JP")
            request = ticket(f"r{served}", at=clock.now)
            served += 1
            if i < 22 - (12 if minute >= 10 else 0):  # 22 % for ten minutes, then 10 %
                ledger.accept([Event(request, f"k{served}", "item_3", 3, "click")])
        flush(counters, ledger)
        alarms = monitor.refresh()
        clock.now += 60
        if minute < 10:
            assert alarms == [], f"clean minute {minute}"
        elif alarms:
            break
    assert alarms and alarms[0].baseline == "offline" and minute == expected, (minute, expected)  # minute 14
    assert monitor.clear(alarms[0].id) and monitor.active == []


@pytest.mark.integration  # starts a redis-server of its own
def test_a_full_queue_keeps_the_newest_100000_events_and_says_how_many_it_dropped(tmp_path, caplog):
    """docs/quality.md: while Redis is down, events wait in a bounded queue in memory (100,000 per
    worker). Past it the oldest go, counted and logged; the rest are counted once Redis is back."""
    server = RedisServer(tmp_path, port=free_port()).start()
    client = make_redis_client(server.url)
    counters, ledger = ledger_on(client, Clock(T0))  # the ledger's default bound, as the runtime builds it
    server.stop()
    events = [Event(ticket(f"r{i}"), f"k{i}", "item_3", 3, "click") for i in range(100_250)]
    for start in range(0, len(events), 1_000):  # as /feedback posts them: up to 1,000 a body
        ledger.accept(events[start:start + 1_000])
    assert ledger.pending == 100_000 and ledger.dropped == 250
    assert "feedback queue full: dropping the oldest events" in caplog.text
    assert not ledger.flush() and ledger.pending == 100_000  # nothing lost by a failed flush either
    server.start()
    try:
        flush(counters, ledger)
        group = report(server.client())[("v1", "model", "JP")]
        assert group["feedback"] == 100_000 and ledger.pending == 0
        # the oldest were dropped: the first 250 tickets' clicks, sent again now, are new
        ledger.accept(events[:250] + events[-10:])
        flush(counters, ledger)
        assert report(server.client())[("v1", "model", "JP")]["feedback"] == 100_250
    finally:
        server.stop()
