"""`recguard anomalies`: the counters as a table or JSON, and clear one-line errors."""

import json
import subprocess
import sys

import pytest

from proxy.store.counters import Counters

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def record_traffic(client) -> None:
    counters = Counters(client)
    for _ in range(3):
        counters.record_request("model", [])
    counters.record_request("fallback", [("country", "unknown_category")])
    counters.record_request("model", [("email", "missing_field"), ("user_email", "unexpected_field")])
    assert counters.flush()


def test_table_shows_totals_and_counts(redis_server, redis_client):
    record_traffic(redis_client)
    result = run("anomalies", "--since", "10m", "--redis", redis_server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["requests", "5"] for line in lines)
    assert any(line.split() == ["country", "unknown_category", "1"] for line in lines)
    assert any(line.split() == ["user_email", "unexpected_field", "1"] for line in lines)


def test_json_with_a_kind_filter(redis_server, redis_client):
    record_traffic(redis_client)
    result = run("anomalies", "--since", "1h", "--kind", "missing_field", "--json", "--redis", redis_server.url)
    report = json.loads(result.stdout)
    assert report["requests"] == 5 and report["fallback_requests"] == 1
    assert report["by_field"] == {"email": 1}


def test_bad_time_and_unreachable_redis_are_one_line_errors(redis_server):
    bad_time = run("anomalies", "--since", "yesterday", "--redis", redis_server.url)
    assert bad_time.returncode == 2 and len(bad_time.stderr.strip().splitlines()) == 1
    assert bad_time.stderr.startswith("recguard anomalies: ")
    down = run("anomalies", "--redis", "redis://:hunter2@127.0.0.1:1/0")
    assert down.returncode == 2 and "cannot read counters" in down.stderr
    assert "hunter2" not in down.stderr and "Traceback" not in down.stderr


def test_active_alarms_are_listed_with_their_diagnosis(redis_server, redis_client):
    from proxy.drift.alarms import Alarm, alarms_key

    record_traffic(redis_client)
    alarm = Alarm("weight_kg:DE", "weight_kg", "DE", "weight_kg in DE looks x2.205: kg->lb?", "kg->lb", 1_795_000_000.0)
    redis_client.hset(alarms_key("recguard"), "alarm:" + alarm.id, json.dumps(alarm.to_json()))
    table = run("anomalies", "--since", "10m", "--redis", redis_server.url)
    assert table.returncode == 0, table.stderr
    assert any("weight_kg:DE" in line and "kg->lb?" in line for line in table.stdout.splitlines())
    report = json.loads(run("anomalies", "--json", "--redis", redis_server.url).stdout)
    assert [(found["id"], found["unit"]) for found in report["alarms"]] == [("weight_kg:DE", "kg->lb")]


def test_an_unknown_kind_is_refused_not_an_empty_report(redis_server, redis_client):
    record_traffic(redis_client)
    typo = run("anomalies", "--kind", "missing_feild", "--redis", redis_server.url)
    assert typo.returncode == 2 and "missing_feild" in typo.stderr and "missing_field" in typo.stderr
    assert "Traceback" not in typo.stderr


def test_the_table_names_the_most_frequent_invented_names_and_adds_up_the_rest(redis_server, redis_client):
    counters = Counters(redis_client)
    counters.know_names({"country", "email"})
    for number in range(300):
        counters.record_request("model", [(f"junk_{number}", "unexpected_field"), ("user_email", "unexpected_field")])
    assert counters.flush()
    report = json.loads(run("anomalies", "--since", "10m", "--json", "--redis", redis_server.url).stdout)
    assert report["by_field"]["user_email"] == 300 and len(report["by_field"]) <= 21
    assert sum(report["by_field"].values()) == 600 and report["by_field"]["_other"] > 0
    table = run("anomalies", "--since", "10m", "--redis", redis_server.url).stdout.splitlines()
    assert any(line.split() == ["user_email", "unexpected_field", "300"] for line in table)
    assert any(line.split()[:2] == ["_other", "unexpected_field"] for line in table)
