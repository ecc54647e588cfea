"""What docs/api.md, docs/drift.md and docs/reliability.md promise about a worker's life under real
gunicorn: not ready while the bundle loads (and requests wait), not ready but alive when it fails to
load, a new worker applying an active alarm from its first request, and alarms, /anomalies, the
hand clear and /healthz while Redis is down.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.harness.proxy import ProxyProcess
from tests.harness.servers import RedisServer
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.system  # real gunicorn (tests/conftest.py)

POUNDS_PER_KG = 2.20462
TOKEN = "s3cret-admin-token"
ALARM = "weight_kg:DE"

# A slow disk has no real peer here: this hook (loaded by every Python process of the proxy through
# PYTHONPATH) holds each worker's bundle load until the gate file exists, then loads for real. The
# master's own check of the bundle (`recguard serve`, main thread) is not held.
GATE_HOOK = '''
import os, threading, time
import model.bundle

_load_bundle = model.bundle.load_bundle


def _gated(path):
    if threading.current_thread().name == "bundle-loader":
        while not os.path.exists(os.environ["BUNDLE_GATE"]):
            time.sleep(0.01)
    return _load_bundle(path)


model.bundle.load_bundle = _gated
'''



@pytest.fixture
def gated(tmp_path) -> tuple[dict, Path]:
    """The environment that holds bundle loads, and the gate that releases them."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(GATE_HOOK)
    gate = tmp_path / "gate"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "BUNDLE_GATE": str(gate)}
    return env, gate


def test_not_ready_while_the_bundle_loads_and_early_requests_wait(gated, tiny_bundle, tiny_holdout, redis_server,
                                                                  redis_client, tmp_path):
    env, gate = gated
    proxy = ProxyProcess(tiny_bundle, redis_server.url, workers=1, env=env, log_path=tmp_path / "proxy.log")
    proxy.start(wait_ready=False)
    try:
        wait_until(lambda: proxy.get("/livez").status_code == 200, ignoring=(requests.RequestException,), what="/livez answering")
        for _ in range(3):
            ready = proxy.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "loading"
        health = proxy.get("/healthz").json()
        assert health["status"] == "degraded" and "bundle not loaded" in health["reasons"]
        early: list[requests.Response] = []
        waiting = threading.Thread(target=lambda: early.append(proxy.predict(tiny_holdout[0])))
        waiting.start()
        time.sleep(0.3)
        assert early == [], "a request before the bundle loaded was answered without it"
        gate.touch()
        waiting.join(15)
        assert early and early[0].status_code == 200 and early[0].json()["source"] == "model"
        wait_until(lambda: proxy.get("/readyz").status_code == 200, ignoring=(requests.RequestException,), what="/readyz 200 after the load")
    finally:
        proxy.stop()


def test_a_bundle_that_fails_to_load_leaves_the_worker_alive_and_unready(gated, tiny_bundle, redis_server,
                                                                         redis_client, tmp_path):
    """The bundle passes `recguard serve`'s own check, then changes on disk before the worker reads
    it (a rollout overwriting files in place): the worker reports it and stays up, not ready."""
    env, gate = gated
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    proxy = ProxyProcess(bundle, redis_server.url, workers=1, env=env, log_path=tmp_path / "proxy.log")
    proxy.start(wait_ready=False)
    try:
        wait_until(lambda: proxy.get("/livez").status_code == 200, ignoring=(requests.RequestException,), what="/livez answering")
        profile = bundle / "profile.json"
        profile.write_bytes(profile.read_bytes().replace(b"weight_kg", b"weight_lb", 1))
        gate.touch()
        wait_until(lambda: proxy.get("/readyz").json()["status"] == "failed", ignoring=(requests.RequestException,), what="/readyz reporting the failed load")
        ready = proxy.get("/readyz")
        assert ready.status_code == 503 and "profile.json: checksum does not match" in ready.json()["error"]
        refused = proxy.predict({})
        assert refused.status_code == 503 and refused.json() == {"error": "model not loaded yet"}
        assert proxy.get("/livez").status_code == 200
        assert "bundle failed to load" in proxy.get("/healthz").json()["reasons"]
        workers = proxy.worker_pids()
        time.sleep(0.5)
        assert proxy.worker_pids() == workers and proxy.bundles_loaded() == 0, "the worker was replaced"
    finally:
        proxy.stop()


def raise_the_alarm(proxy: ProxyProcess, germans: list[dict], weight: dict, rng: random.Random) -> None:
    """German weights in pounds (all inside the training range) until the market is quarantined; each
    request a shopper of its own (drift evidence counts distinct users, the tiny data has 19 Germans)."""
    for number in range(200):
        kilograms = rng.uniform(weight["min"], weight["max"] / POUNDS_PER_KG)
        answer = proxy.predict({**rng.choice(germans), "weight_kg": round(kilograms * POUNDS_PER_KG, 1),
                                "user_id": f"shopper-{number}"}).json()
        if any(anomaly["kind"] == "drift_quarantine" for anomaly in answer["anomalies"]):
            return
    pytest.fail("DE not quarantined after 200 requests in pounds")


def quarantined(answer: requests.Response) -> bool:
    return any(anomaly["kind"] == "drift_quarantine" for anomaly in answer.json()["anomalies"])


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


ALARM_ENV = {"RECGUARD_ADMIN_TOKEN": TOKEN, "RECGUARD_DRIFT_SLOT_SECONDS": "1"}


def test_a_worker_started_while_an_alarm_is_active_applies_it_from_its_first_request(
        own_redis, tiny_bundle, tiny_holdout, loaded_bundle, tmp_path):
    germans = [body for body in tiny_holdout if body["country"] == "DE"]
    first = ProxyProcess(tiny_bundle, own_redis.url, workers=2, env=ALARM_ENV, log_path=tmp_path / "first.log").start()
    try:
        raise_the_alarm(first, germans, loaded_bundle.profile["fields"]["weight_kg"], random.Random(3))
    finally:
        first.stop()
    # a new replica (a scale-up, a restart): its only worker, its very first request, a clean German
    second = ProxyProcess(tiny_bundle, own_redis.url, workers=1, env=ALARM_ENV, log_path=tmp_path / "second.log")
    second.start()
    try:
        answer = second.predict(germans[0])
        assert answer.json()["source"] == "fallback" and quarantined(answer)
        assert not quarantined(second.predict(next(body for body in tiny_holdout if body["country"] != "DE")))
    finally:
        second.stop()


def test_while_redis_is_down_alarms_stay_nothing_raises_or_clears_and_the_readers_answer_503(
        own_redis, tiny_bundle, tiny_holdout, loaded_bundle, tmp_path):
    weight = loaded_bundle.profile["fields"]["weight_kg"]
    germans = [body for body in tiny_holdout if body["country"] == "DE"]
    americans = [body for body in tiny_holdout if body["country"] == "US"]
    proxy = ProxyProcess(tiny_bundle, own_redis.url, workers=2, env=ALARM_ENV, log_path=tmp_path / "proxy.log")
    proxy.start()
    try:
        raise_the_alarm(proxy, germans, weight, random.Random(4))
        proxy.until_every_worker(lambda health: [alarm["id"] for alarm in health["alarms"]] == [ALARM],
                                 "quarantines DE")
        assert proxy.get("/healthz").json()["rates"]["requests_per_second"] > 0

        own_redis.stop()
        wait_until(lambda: proxy.get("/healthz").json()["redis"] == "down", ignoring=(requests.RequestException,), what="/healthz saying redis down")
        # the last alarms seen stay in force, on every worker, for Germans back in kilograms too
        assert all(quarantined(proxy.predict(body)) for body in germans * 2)
        # ... nothing raises: Americans in pounds are judged by the range check alone
        heaviest = weight["max"] / POUNDS_PER_KG
        for body in americans * 3:
            if body["weight_kg"] <= heaviest:
                answer = proxy.predict({**body, "weight_kg": round(body["weight_kg"] * POUNDS_PER_KG, 1)})
                assert answer.status_code == 200 and not quarantined(answer)
        # ... and nothing clears, by hand or by itself
        cleared = requests.post(f"{proxy.url}/alarms/{ALARM}/clear", headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=10)
        assert cleared.status_code == 503 and "redis unavailable" in cleared.json()["error"]
        assert [alarm["id"] for alarm in proxy.get("/alarms").json()["alarms"]] == [ALARM]
        anomalies = proxy.get("/anomalies?since=5m")
        assert anomalies.status_code == 503 and "redis unavailable" in anomalies.json()["error"]
        health = proxy.get("/healthz").json()
        assert health["status"] == "degraded" and health["rates"] is None
        assert "redis down: counts wait in memory" in health["reasons"]
        assert [alarm["id"] for alarm in health["alarms"]] == [ALARM]
        assert all(quarantined(proxy.predict(body)) for body in germans)
    finally:
        proxy.stop()
