"""Two replicas (two gunicorn masters, two workers each) on one Redis: every count adds up, and
every command they send would run on Redis Cluster (one key each, no transaction)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from model.bundle import load_bundle
from proxy.drift.watch import cells_from_profile
from tests.harness.proxy import ProxyProcess
from tests.proxy.http.test_faults import settle, wait_for

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)

# Commands that name no key, or exactly one (their first argument); EVALSHA is checked apart.
KEYLESS = {"PING", "HELLO", "CLIENT", "SCRIPT", "INFO", "SELECT", "COMMAND"}
ONE_KEY = {"HGETALL", "HGET", "HSET", "HSETNX", "HDEL", "HINCRBY", "HINCRBYFLOAT", "EXPIRE", "TTL"}


MONITOR_LINE = re.compile(r"(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)", re.S)
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_monitor_line(line: str) -> tuple[str, list[str]] | None:
    """(client, [command, args...]) of one MONITOR line, or None when it is not one."""
    match = MONITOR_LINE.fullmatch(line)
    if match is None:
        return None
    _, _, client, rest = match.groups()
    words = QUOTED.findall(rest)
    # every word is one quoted string, separated by single spaces: anything else is not understood
    if not words or " ".join(f'"{word}"' for word in words) != rest:
        return None
    return client, words


class CommandLog:
    """Every command clients send to the server (MONITOR, its lines parsed here, not by redis-py,
    whose parser gives up on some: a line that cannot be parsed is kept, and counts as a risk)."""

    def __init__(self, client):
        self.commands: list[list[str]] = []
        self.unparsed: list[str] = []
        self._client = client  # its connection pool closes the monitor's connection when collected
        self._stopping = False
        self._monitor = client.monitor().__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection = self._monitor.connection
        while True:
            try:
                line = connection.read_response()
            except Exception as exc:  # noqa: BLE001  (the log's end, or a failure the test must show)
                if not self._stopping:
                    self.unparsed.append(f"monitor stopped: {type(exc).__name__}: {exc}")
                return
            if isinstance(line, bytes):
                line = line.decode("utf-8", "backslashreplace")
            parsed = parse_monitor_line(line)
            if parsed is None:
                self.unparsed.append(line[:200])
            elif parsed[0] != "lua":  # a script's own commands touch its one key
                self.commands.append(parsed[1])

    def stop(self) -> list[list[str]]:
        self._stopping = True
        self._monitor.connection.disconnect()
        self._thread.join(5)
        return self.commands


def cross_slot_risks(commands: list[list[str]]) -> list[str]:
    """The commands Redis Cluster could refuse: more than one key, a transaction, or unknown ones."""
    risky = []
    for name, *args in commands:
        name = name.upper()
        if name == "EVALSHA" and int(args[1]) <= 1:
            continue
        if name not in KEYLESS and name not in ONE_KEY:
            risky.append(" ".join([name, *args])[:120])
    return risky


def test_monitor_lines_are_parsed_or_refused():
    assert parse_monitor_line('1700000000.1 [0 127.0.0.1:5000] "EVALSHA" "ab" "1" "k" "a \\"b\\" c"') == \
        ("127.0.0.1:5000", ["EVALSHA", "ab", "1", "k", 'a \\"b\\" c'])
    assert parse_monitor_line('1700000000.1 [0 lua] "HGET" "k" "f"') == ("lua", ["HGET", "k", "f"])
    assert parse_monitor_line('1700000000.1 [0 127.0.0.1:5000] "HGET" "k" junk') is None
    assert parse_monitor_line("OK") is None


def test_two_replicas_on_one_redis_add_up_requests_and_drift_windows(tiny_bundle, tiny_holdout, redis_server,
                                                                      redis_client, tmp_path):
    # no read timeout: the replicas may send nothing for seconds while they start
    commands = CommandLog(redis_server.client(socket_timeout=None))
    replicas = [ProxyProcess(tiny_bundle, redis_server.url, workers=2, log_path=tmp_path / f"replica{i}.log")
                for i in range(2)]
    for replica in replicas:
        replica.start(wait_ready=False)
    try:
        for replica in replicas:
            replica.wait_ready()
        # each a shopper of their own: a user's repeats count once in the drift windows
        bodies = [{**body, "user_id": f"shopper-{number}"} for number, body in enumerate(tiny_holdout * 3)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda ib: replicas[ib[0] % 2].predict(ib[1]), enumerate(bodies)))
        assert all(answer.status_code == 200 for answer in answers)
        # every answer flushed (and alarms refreshed after it) before the command log stops
        for replica in replicas:
            assert wait_for(lambda: replica.get("/anomalies?since=10m").json()["requests"] == len(bodies))
            assert replica.get("/healthz").json()["redis"] == "up"
        sent = commands.stop()
        # counter flushes, drift windows, alarm refreshes, /healthz and /anomalies queries
        assert commands.unparsed == [], "MONITOR lines not understood: their commands go unchecked"
        assert sum(command[0].upper() == "EVALSHA" for command in sent) > 0, sent[:20]
        assert cross_slot_risks(sent) == [], "commands Redis Cluster could refuse"

        assert settle(redis_client, len(bodies)) == len(bodies)

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
