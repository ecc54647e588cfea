"""Reading the counters back: ranges, filters, time parsing and the CLI table, on a real redis-server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import redis

from proxy.store.anomaly_query import (
    AnomalyReport,
    format_table,
    parse_time,
    query_anomalies,
)
from proxy.store.counters import Counters, make_redis_client
from tests.harness.servers import free_port

PREFIX = "recguard"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 28, 12, 30, 15, tzinfo=timezone.utc)


@pytest.fixture
def traffic(redis_server, redis_client) -> None:
    """Ten minutes of recorded traffic: minute 0 and minute 5 have requests, minute 5 the most anomalies."""
    moment = T0.timestamp()
    counters = Counters(make_redis_client(redis_server.url), clock=lambda: moment)
    counters.record_request("model", [])
    counters.record_request("model", [("email", "missing_field"), ("user_email", "unexpected_field")])
    counters.record_request("fallback", [("country", "unknown_category")])
    moment += 5 * 60 + 59
    for _ in range(3):
        counters.record_request("fallback", [("weight_kg", "out_of_range"), ("country", "unknown_category")])
    counters.record_request("model", [("email", "missing_field")])
    counters.record_request("model", [])
    counters.add("drift:weight_kg:sum", 212.5)
    assert counters.flush()


def query(client, minutes: int = 10, **filters) -> AnomalyReport:
    return query_anomalies(client, PREFIX, T0, T0 + timedelta(minutes=minutes), **filters)


def test_totals_breakdowns_and_series(traffic, redis_client):
    report = query(redis_client)

    assert (report.requests, report.anomalous_requests, report.fallback_requests) == (8, 6, 4)
    assert report.by_field == {"country": 4, "weight_kg": 3, "email": 2, "user_email": 1}
    assert list(report.by_kind.items()) == [("unknown_category", 4), ("out_of_range", 3), ("missing_field", 2),
                                            ("unexpected_field", 1)]
    assert report.by_field_kind["country"] == {"unknown_category": 4}
    assert list(report.by_field_kind) == ["country", "weight_kg", "email", "user_email"]

    assert len(report.series) == 11
    assert report.series[0] == {
        "minute": "2026-11-28T12:00:00Z", "requests": 3, "fallback": 1, "anomalous": 2,
        "anomalies": {"email:missing_field": 1, "user_email:unexpected_field": 1, "country:unknown_category": 1},
    }
    assert report.series[1]["requests"] == 0 and report.series[1]["anomalies"] == {}
    assert report.series[5]["minute"] == "2026-11-28T12:05:00Z" and report.series[5]["requests"] == 5


def test_range_covers_the_minutes_it_overlaps(traffic, redis_client):
    later = query_anomalies(redis_client, PREFIX, T0 + timedelta(minutes=5, seconds=30), T0 + timedelta(minutes=9))
    assert later.requests == 5
    assert query_anomalies(redis_client, PREFIX, T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)).requests == 0


def test_filters_restrict_anomaly_counts_but_not_totals(traffic, redis_client):
    by_field = query(redis_client, field="country")
    assert by_field.by_field == {"country": 4} and by_field.by_kind == {"unknown_category": 4}
    assert by_field.series[0]["anomalies"] == {"country:unknown_category": 1}
    assert by_field.requests == 8 and by_field.anomalous_requests == 6

    by_kind = query(redis_client, kind="missing_field")
    assert by_kind.by_field_kind == {"email": {"missing_field": 2}}

    both = query(redis_client, field="email", kind="out_of_range")
    assert both.by_field == {} and both.by_field_kind == {}


def test_json_body(traffic, redis_client):
    report = query(redis_client, field="weight_kg")
    body = json.loads(json.dumps(report.to_json()))

    assert body["since"] == "2026-11-28T12:00:00Z" and body["until"] == "2026-11-28T12:10:00Z"
    assert body["filter"] == {"field": "weight_kg", "kind": None}
    assert (body["requests"], body["anomalous_requests"], body["fallback_requests"]) == (8, 6, 4)
    assert body["fallback_rate"] == 0.5 and body["anomaly_rate"] == 0.75
    assert body["by_field_kind"] == {"weight_kg": {"out_of_range": 3}}
    assert body["alarms"] == []  # the query reads counters only; /anomalies adds the alarms (test_drift_serving.py)
    assert "batch:" not in json.dumps(body) and "drift" not in json.dumps(body)


def test_a_reversed_range_is_refused_and_a_long_one_covers_the_seven_days_that_exist(redis_client):
    with pytest.raises(ValueError, match="after"):
        query_anomalies(redis_client, PREFIX, T0, T0 - timedelta(seconds=1))
    report = query_anomalies(redis_client, PREFIX, T0 - timedelta(days=30), T0)
    assert report.since == T0 - timedelta(days=7) and len(report.series) == 7 * 24 * 60 + 1


def test_unreachable_redis_raises_a_redis_error():
    client = make_redis_client(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        query_anomalies(client, PREFIX, T0, T0 + timedelta(minutes=1))


@pytest.mark.parametrize("text, expected", [
    ("15m", NOW - timedelta(minutes=15)),
    ("90s", NOW - timedelta(seconds=90)),
    (" 1h ", NOW - timedelta(hours=1)),
    ("2d", NOW - timedelta(days=2)),
    ("0m", NOW),
    ("2026-11-28T12:00:00Z", T0),
    ("2026-11-28T12:00:00", T0),
    ("2026-11-28T13:00:00+01:00", T0),
])
def test_parse_time_accepts_durations_and_iso(text, expected):
    parsed = parse_time(text, NOW)
    assert parsed == expected and parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "15", "m", "-5m", "1w", "1.5h", "yesterday", "99999999999999d",
                                  "2026-13-01T00:00:00"])
def test_parse_time_refuses_anything_else_clearly(text):
    with pytest.raises(ValueError, match="invalid time .*duration like 90s, 15m, 1h, 2d or an ISO-8601"):
        parse_time(text, NOW)


def test_table_shows_totals_rates_and_largest_counts_first(traffic, redis_client):
    table = format_table(query(redis_client))
    lines = table.splitlines()

    assert lines[0] == "Anomalies from 2026-11-28T12:00:00Z to 2026-11-28T12:10:00Z"
    assert "requests                       8" in table
    assert "served by fallback             4  (50.0%)" in table
    assert "anomalous requests             6  (75.0%)" in table
    field_header = lines.index("field       count")
    assert lines[field_header + 1].split() == ["country", "4"]
    assert lines[field_header + 4].split() == ["user_email", "1"]
    kind_header = next(i for i, line in enumerate(lines) if line.startswith("kind "))
    assert lines[kind_header + 1].split() == ["unknown_category", "4"]
    pair_header = next(i for i, line in enumerate(lines) if line.split() == ["field", "kind", "count"])
    assert lines[pair_header + 1].split() == ["country", "unknown_category", "4"]


def test_table_of_a_quiet_range(redis_client):
    table = format_table(query(redis_client, field="email"))
    assert "no anomalies in this range" in table and "filter: field=email kind=*" in table
