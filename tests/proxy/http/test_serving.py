"""End to end: `recguard serve` starts real gunicorn workers; the tests talk HTTP and read a real Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.harness.proxy import ProxyProcess, merged_names, renamed_email
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def requests_counted(proxy: ProxyProcess) -> int:
    return proxy.get("/anomalies?since=10m").json()["requests"]


@pytest.fixture(params=["sync", "gthread"])
def proxy(request, tiny_bundle, redis_server, redis_client, tmp_path):
    """Both worker classes a deployment can choose (RECGUARD_WORKER_CLASS)."""
    server = ProxyProcess(tiny_bundle, redis_server.url, "--worker-class", request.param, workers=2,
                          log_path=tmp_path / "proxy.log").start()
    worker = {"sync": "proxy.http.workers.SyncWorker", "gthread": "gthread"}[request.param]
    assert f"Using worker: {worker}" in (tmp_path / "proxy.log").read_text()
    yield server
    server.stop()


def test_clean_traffic_over_http_counted_exactly_across_two_workers(proxy, tiny_holdout):
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(proxy.predict, tiny_holdout * 3))
    assert all(answer.status_code == 200 for answer in answers)
    sources = [answer.json()["source"] for answer in answers]
    assert sources.count("model") >= 0.995 * len(sources)
    assert wait_for(lambda: requests_counted(proxy) == len(answers)), requests_counted(proxy)


def test_bad_input_over_http_never_kills_a_worker(proxy, tiny_holdout):
    workers = sorted(proxy.worker_pids())
    bodies = [b"", b"\xff", b"[" * 100_000, b'{"k": 1e400}', b'{"history": [' + b'"x",' * 1000 + b'"x"]}',
              b"{" + b" " * (2 * 1024 * 1024) + b"}"]
    statuses = [requests.post(proxy.url + "/predict", data=body, headers={"Content-Type": "application/json"},
                              timeout=10).status_code for body in bodies]
    assert statuses == [400, 400, 400, 400, 400, 413]
    assert requests.post(proxy.url + "/predict", data=b"{}", headers={"Content-Type": "text/csv"}).status_code == 415
    assert proxy.predict(tiny_holdout[0]).status_code == 200
    assert sorted(proxy.worker_pids()) == workers


def test_redesigned_form_is_reported_over_http(proxy, tiny_holdout):
    answer = proxy.predict(merged_names(renamed_email(tiny_holdout[0])))
    assert answer.headers["X-Recguard-Source"] == "model"
    reported = {(a["field"], a["kind"]) for a in answer.json()["anomalies"]}
    assert reported == {("email", "missing_field"), ("first_name", "missing_field"), ("last_name", "missing_field"),
                        ("user_email", "unexpected_field"), ("name", "unexpected_field"),
                        ("user_email", "suspected_rename"), ("name", "suspected_merge")}
    report = wait_for(lambda: proxy.get("/anomalies?since=5m&kind=unexpected_field").json()["by_field"])
    assert report == {"user_email": 1, "name": 1}


def test_no_guard_serves_the_same_answers(tiny_bundle, redis_server, proxy, tiny_holdout):
    bare = ProxyProcess(tiny_bundle, redis_server.url, "--no-guard", workers=1).start()
    try:
        for body in tiny_holdout[:10]:
            assert bare.predict(body).json() == proxy.predict(body).json()
        assert bare.get("/healthz").json()["redis"] == "disabled"
    finally:
        bare.stop()


def test_redis_stopped_and_restarted_no_failed_request_and_no_lost_count(tiny_bundle, tiny_holdout, tmp_path):
    redis = RedisServer(tmp_path / "redis", appendonly=True)
    redis.directory.mkdir()
    redis.start()
    proxy = ProxyProcess(tiny_bundle, redis.url, workers=2, log_path=tmp_path / "proxy.log").start()
    try:
        sent = 0
        for phase in ("before", "during", "after"):
            if phase == "during":
                redis.stop()
                assert wait_for(lambda: proxy.get("/healthz").json()["redis"] == "down")
            if phase == "after":
                redis.start()
            for body in tiny_holdout[:30]:
                assert proxy.predict(body).status_code == 200
                sent += 1
        assert wait_for(lambda: requests_counted(proxy) == sent, timeout=15), requests_counted(proxy)
        assert proxy.get("/healthz").json()["redis"] == "up"
    finally:
        proxy.stop()
        redis.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["SIGTERM", "SIGINT", "SIGQUIT"])
def test_a_stop_signal_flushes_pending_counts(tiny_bundle, redis_server, redis_client, tiny_holdout, sig):
    """Graceful (SIGTERM) or quick (SIGINT, SIGQUIT): every worker flushes before it exits."""
    proxy = ProxyProcess(tiny_bundle, redis_server.url, "--flush-interval", "30", workers=2).start()
    for body in tiny_holdout[:20]:
        assert proxy.predict(body).status_code == 200
    assert proxy.stop(sig) == 0
    buckets = [redis_client.hgetall(key) for key in redis_client.keys("recguard:m:*")]
    assert sum(int(bucket.get("requests", 0)) for bucket in buckets) == 20


def test_serve_refuses_an_altered_bundle_with_one_line(tiny_bundle, redis_server, tmp_path):
    altered = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, altered)
    data = bytearray((altered / "scoring.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (altered / "scoring.npz").write_bytes(bytes(data))
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(altered),
                             "--redis", redis_server.url], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "recguard serve: scoring.npz: checksum does not match the manifest (file altered or corrupt)"]


def test_serve_refuses_a_bad_setting(tiny_bundle, redis_server):
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(tiny_bundle)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "RECGUARD_MODEL_TIMEOUT_MS": "fast"})
    assert result.returncode == 2
    assert "RECGUARD_MODEL_TIMEOUT_MS: expected a number, got 'fast'" in result.stderr
    assert "Traceback" not in result.stderr
