"""`recguard quality`: live hit rates as a table or JSON, and clear one-line errors."""

import json
import subprocess
import sys
import time

import pytest

from proxy.quality.feedback import Event, FeedbackLedger
from proxy.quality.tickets import Ticket
from proxy.store.counters import Counters

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def test_table_and_json(redis_server, redis_client):
    counters = Counters(redis_client)
    ledger = FeedbackLedger(counters, redis_client, prefix="recguard", window_seconds=3600, ttl_seconds=3600)
    now = time.time()
    for i in range(4):
        ledger.impression("v1", "model", "JP")
    ledger.impression("v1", "holdback", "JP")
    ledger.accept([Event(Ticket("r", int(now), "v1", "model", "JP", (5, 6)), "k", "item_6", 6, "click")])
    assert ledger.flush() and counters.flush()
    table = run("quality", "--since", "10m", "--by", "source", "--redis", redis_server.url)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert rows["model"][1:4] == ["4", "1", "0.2500"] and rows["holdback"][1] == "1"
    report = json.loads(run("quality", "--json", "--redis", redis_server.url).stdout)
    model = next(g for g in report["groups"] if g["source"] == "model")
    assert (model["version"], model["segment"], model["answers_hit"], model["mrr"]) == ("v1", "JP", 1, 0.125)


def test_bad_grouping_and_unreachable_redis_are_one_line_errors(redis_server):
    bad = run("quality", "--by", "country", "--redis", redis_server.url)
    assert bad.returncode == 2 and bad.stderr.startswith("recguard quality: by: expected")
    down = run("quality", "--redis", "redis://:hunter2@127.0.0.1:1/0")
    assert down.returncode == 2 and "cannot read counts" in down.stderr and "hunter2" not in down.stderr
