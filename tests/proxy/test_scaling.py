"""Two replicas (two gunicorn masters, two workers each) on one Redis: every count adds up."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from model.bundle import load_bundle
from proxy.drift import cells_from_profile
from tests.proxy.conftest import ProxyProcess
from tests.proxy.test_faults import settle


def test_two_replicas_on_one_redis_add_up_requests_and_drift_windows(tiny_bundle, tiny_holdout, redis_server,
                                                                      redis_client, tmp_path):
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
