"""Two replicas (two gunicorn masters, two workers each) on one Redis: every count adds up, and
every command they send would run on Redis Cluster (one key each, no transaction)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from model.bundle import load_bundle
from proxy.drift.watch import cells_from_profile
from tests.proxy.conftest import ProxyProcess
from tests.proxy.test_faults import settle

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)

# Commands that name no key, or exactly one (their first argument); EVALSHA is checked apart.
KEYLESS = {"PING", "HELLO", "CLIENT", "SCRIPT", "INFO", "SELECT", "COMMAND"}
ONE_KEY = {"HGETALL", "HGET", "HSET", "HDEL", "HINCRBY", "HINCRBYFLOAT", "EXPIRE", "TTL"}


class CommandLog:
    """Every command clients send to the server (MONITOR), from a background thread."""

    def __init__(self, client):
        self.commands: list[str] = []
        self._client = client  # its connection pool closes the monitor's connection when collected
        self._stopping = False
        self._monitor = client.monitor().__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                command = self._monitor.next_command()
            except Exception as exc:  # noqa: BLE001
                if self._stopping or isinstance(exc, (redis.ConnectionError, OSError)):
                    return
                self.commands.append(f"UNPARSED {exc}")  # a line redis-py cannot split (a script's source)
                continue
            if command["client_type"] != "lua":  # a script's own commands touch its one key
                self.commands.append(command["command"])

    def stop(self) -> list[str]:
        self._stopping = True
        self._monitor.connection.disconnect()
        self._thread.join(5)
        return self.commands


def cross_slot_risks(commands: list[str]) -> list[str]:
    """The commands Redis Cluster could refuse: more than one key, a transaction, or unknown ones."""
    risky = []
    for command in commands:
        name, *args = command.split()
        name = name.upper()
        if name == "EVALSHA" and int(args[1]) <= 1 or name == "UNPARSED":
            continue
        if name not in KEYLESS and name not in ONE_KEY:
            risky.append(command[:120])
    return risky


def test_two_replicas_on_one_redis_add_up_requests_and_drift_windows(tiny_bundle, tiny_holdout, redis_server,
                                                                      redis_client, tmp_path):
    commands = CommandLog(redis_server.client())
    replicas = [ProxyProcess(tiny_bundle, redis_server.url, workers=2, log_path=tmp_path / f"replica{i}.log")
                for i in range(2)]
    for replica in replicas:
        replica.start(wait_ready=False)
    try:
        for replica in replicas:
            replica.wait_ready()
        bodies = tiny_holdout * 3
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda ib: replicas[ib[0] % 2].predict(ib[1]), enumerate(bodies)))
        assert all(answer.status_code == 200 for answer in answers)
        time.sleep(1.0)  # flushes and alarm refreshes
        for replica in replicas:
            assert replica.get("/healthz").json()["redis"] == "up"
            assert replica.get("/anomalies?since=10m").status_code == 200
        sent = commands.stop()
        # counter flushes, drift windows, alarm refreshes, /healthz and /anomalies queries
        assert sum(command.startswith("EVALSHA") for command in sent) > 0
        assert cross_slot_risks(sent) == [], "commands Redis Cluster could refuse"

        assert settle(redis_client, len(bodies)) == len(bodies)
        for replica in replicas:
            assert replica.get("/anomalies?since=10m").json()["requests"] == len(bodies)

        profile = load_bundle(tiny_bundle).profile
        expected: Counter[str] = Counter()
        for body in bodies:
            for cell in cells_from_profile(profile):
                value = body.get(cell.feature)
                if body.get(profile["segment_field"]) == cell.segment and isinstance(value, (int, float)):
                    expected[cell.fields[0]] += 1
        stored: Counter[str] = Counter()
        for key in redis_client.scan_iter("recguard:d:*"):
            for name, value in redis_client.hgetall(key).items():
                if name.endswith("|n"):
                    stored[name] += int(float(value))
        assert stored == expected and sum(expected.values()) >= len(bodies)
    finally:
        for replica in replicas:
            replica.stop()
