"""Upstream mode end to end: recguard (real gunicorn) in front of real model endpoints over HTTP.

The clean upstream is `recguard serve --no-guard` of the tiny bundle: what the site called
before, so answers through recguard must be the very bytes it gives directly. The faulty one is
tests/harness/upstream_server.py, told to fail in each way recguard must survive.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from model.bundle import load_bundle
from tests.harness.proxy import ProxyProcess, renamed_email
from tests.harness.servers import free_port
from tests.harness.upstream_server import TEAM_HEADER, UpstreamServer, self_signed
from tests.harness.waiting import wait_until

# the clean-path proxies: a budget that a loaded shared machine cannot exceed, as these tests are about
# what comes back, not about the budget (the fault tests have their own)
ROOMY = {"RECGUARD_MODEL_TIMEOUT_MS": "3000"}
FAST_BREAKER = {"RECGUARD_BREAKER_FAILURES": "3", "RECGUARD_BREAKER_BASE_EJECTION_MS": "600",
                "RECGUARD_MODEL_TIMEOUT_MS": "300"}

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


def own_prefix() -> list[str]:
    """A Redis prefix of its own for each proxy: the same few bodies sent again and again raise drift
    alarms, which must not quarantine the next test's markets through the shared Redis."""
    return ["--redis-prefix", f"up{uuid.uuid4().hex[:10]}"]


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """One sample of the proxy's /metrics (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if labels
                         else rf"^{re.escape(name)} (\S+)$", re.M)
    found = pattern.search(proxy.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def post_raw(url: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=10)


def wrong_weight(body: dict) -> dict:
    """A request the guard routes to the fallback: weight sent as a string."""
    return {**body, "weight_kg": str(body["weight_kg"])}


@pytest.fixture(scope="module")
def catalogue(tiny_bundle) -> list[str]:
    return list(load_bundle(tiny_bundle).catalogue)


@pytest.fixture(scope="module")
def model_endpoint(tiny_bundle, redis_server):
    """The team's model as it was before recguard: the tiny bundle served bare."""
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--no-guard", "--worker-class", "gthread", "--threads", "4",
                          workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def in_front(tiny_bundle, redis_server, model_endpoint):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", model_endpoint.url + "/predict",
                          workers=2, env=ROOMY).start()
    yield server
    server.stop()


def test_clean_requests_are_byte_identical_through_recguard_and_direct(in_front, model_endpoint, tiny_holdout):
    for body in tiny_holdout[:25]:
        raw = json.dumps(body).encode()
        direct = post_raw(model_endpoint.url + "/predict", raw)
        through = post_raw(in_front.url + "/predict", raw)
        assert through.status_code == direct.status_code == 200
        assert through.content == direct.content
        assert through.headers["Content-Type"] == direct.headers["Content-Type"]
        assert through.headers["X-Recguard-Source"] == "model"


def test_routed_requests_never_reach_the_upstream_and_get_its_shape(in_front, model_endpoint, tiny_holdout, catalogue):
    before = metric(model_endpoint, "recguard_requests_total", source="model")
    for body in tiny_holdout[:10]:
        answer = in_front.predict(wrong_weight(body))
        assert answer.status_code == 200
        assert answer.headers["X-Recguard-Source"] == "fallback"
        assert "weight_kg:type_mismatch" in answer.headers["X-Recguard-Anomalies"]
        payload = answer.json()
        assert set(payload) == {"items"} and len(payload["items"]) == 10 and set(payload["items"]) <= set(catalogue)
        assert not set(payload["items"]) & set(body["history"])
    # anomalies that do not route (a renamed field) still reach the model, and are reported
    renamed = in_front.predict(renamed_email(tiny_holdout[0]))
    assert renamed.headers["X-Recguard-Source"] == "model"
    assert "user_email:unexpected_field" in renamed.headers["X-Recguard-Anomalies"]
    assert metric(model_endpoint, "recguard_requests_total", source="model") == before + 1


def test_bad_bodies_get_a_clear_4xx_and_never_reach_the_upstream(in_front, model_endpoint, tiny_holdout):
    before = metric(model_endpoint, "recguard_requests_total", source="model")
    cases = [(b"not json", 400, "not valid JSON"), (b"[1, 2]", 400, "JSON object"),
             (json.dumps({**tiny_holdout[0], "k": 0}).encode(), 400, "k must be"),
             (json.dumps({**tiny_holdout[0], "history": "item_00001"}).encode(), 400, "history must be")]
    for body, status, message in cases:
        answer = post_raw(in_front.url + "/predict", body)
        assert answer.status_code == status and message in answer.json()["error"]
    answer = requests.post(in_front.url + "/predict", data=b"{}", headers={"Content-Type": "text/plain"}, timeout=5)
    assert answer.status_code == 415
    assert metric(in_front, "recguard_rejected_requests_total", status="400") == 4
    assert metric(model_endpoint, "recguard_requests_total", source="model") == before


def test_health_and_metrics_show_the_upstream(in_front):
    health = in_front.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["upstream"]["protocol"] == "plain"
    assert health["upstream"]["breaker"]["state"] == "closed"
    assert metric(in_front, "recguard_upstream_breaker_open") == 0


@pytest.fixture
def faulty(catalogue):
    server = UpstreamServer(catalogue).start()
    yield server
    server.stop()


@pytest.fixture
def guarded_faulty(tiny_bundle, redis_server, faulty):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", faulty.url, workers=1, env=FAST_BREAKER).start()
    yield server
    server.stop()


def test_headers_pass_through_and_hop_by_hop_ones_do_not(guarded_faulty, faulty, tiny_holdout):
    answer = post_raw(guarded_faulty.url + "/invocations", json.dumps(tiny_holdout[0]).encode(),
                      **{"X-Request-Id": "req-7", "Authorization": "Bearer team-token", "Accept": "application/json",
                         "X-Amzn-SageMaker-Custom-Attributes": "trace=1", "Keep-Alive": "timeout=99",
                         "Proxy-Authorization": "Basic eA==", "Cookie": "session=1"})
    assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"
    assert answer.content == faulty.answer_for(b"")
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    seen = {name.lower(): value for name, value in faulty.headers[-1].items()}
    assert seen["x-request-id"] == "req-7" and seen["authorization"] == "Bearer team-token"
    assert seen["x-amzn-sagemaker-custom-attributes"] == "trace=1" and seen["accept"] == "application/json"
    assert "proxy-authorization" not in seen and "cookie" not in seen and seen.get("keep-alive") is None
    assert faulty.bodies[-1] == json.dumps(tiny_holdout[0]).encode()


def test_a_request_without_an_id_gets_one_sent_upstream_and_returned_and_the_upstreams_headers_stay_behind(
        guarded_faulty, faulty, tiny_holdout):
    answer = post_raw(guarded_faulty.url + "/invocations", json.dumps(tiny_holdout[0]).encode())
    generated = answer.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert {name.lower(): value for name, value in faulty.headers[-1].items()}["x-request-id"] == generated
    # the upstream's body and Content-Type come back; its own other headers do not
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert TEAM_HEADER not in answer.headers
    again = post_raw(guarded_faulty.url + "/invocations", json.dumps(tiny_holdout[0]).encode())
    assert again.headers["X-Request-Id"] != generated


FAULTS = [
    ("error", "upstream_error", "answered 500"),
    ("garbage", "upstream_error", "not JSON"),
    ("no_items", "upstream_error", "nothing at '/items'"),
    ("close", "upstream_error", "closed the connection"),
    ("slow", "model_timeout", "budget of 300 ms"),
    ("trickle", "model_timeout", "budget of 300 ms"),
]
BUDGET = float(FAST_BREAKER["RECGUARD_MODEL_TIMEOUT_MS"]) / 1000
MARGIN = 0.5
"""What an answer may take past the budget: the fallback, recording, HTTP both ways on a loaded machine."""


@pytest.mark.parametrize("mode,kind,detail", FAULTS, ids=[fault[0] for fault in FAULTS])
def test_each_fault_is_answered_by_the_fallback(guarded_faulty, faulty, tiny_holdout, mode, kind, detail):
    faulty.mode, faulty.delay = mode, 1.0
    started = time.monotonic()
    answer = guarded_faulty.predict(tiny_holdout[0])
    # the budget, not the upstream, decides how long it takes (a trickled answer would take seconds)
    assert time.monotonic() - started < BUDGET + MARGIN
    assert answer.status_code == 200
    assert answer.headers["X-Recguard-Source"] == "fallback"
    assert answer.headers["X-Recguard-Anomalies"] == f"model:{kind}"
    assert set(answer.json()) == {"items"} and len(answer.json()["items"]) == 10
    assert metric(guarded_faulty, "recguard_anomalies_total", field="model", kind=kind) == 1
    assert metric(guarded_faulty, "recguard_upstream_calls_total", outcome=kind) == 1
    assert faulty.requests == 1  # no retry on a fresh connection


def test_items_the_bundle_does_not_know_are_served_as_the_models_and_counted(guarded_faulty, faulty, tiny_holdout):
    # the day the team adds products its model knows and the bundle's catalogue does not
    faulty.mode = "outside"
    answers = [guarded_faulty.predict(body) for body in tiny_holdout[:6]]  # twice the breaker's 3 failures
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["X-Recguard-Source"] == "model"
        assert answer.headers["X-Recguard-Anomalies"] == "model:unknown_item"
        assert answer.json() == {"items": ["no_such_item_1", "no_such_item_2"]}  # the upstream's answer, as it came
    assert faulty.requests == 6, "the breaker stayed closed"
    assert metric(guarded_faulty, "recguard_upstream_calls_total", outcome="upstream_error") == 0
    assert metric(guarded_faulty, "recguard_anomalies_total", field="model", kind="unknown_item") == 6
    deadline = time.monotonic() + 10
    while guarded_faulty.get("/anomalies?since=1d&kind=unknown_item").json()["by_kind"].get("unknown_item") != 6:
        assert time.monotonic() < deadline, guarded_faulty.get("/anomalies?since=1d").json()
        time.sleep(0.1)


def test_an_https_upstream_is_trusted_through_its_ca_and_refused_without_it(tiny_bundle, redis_server, catalogue,
                                                                           tiny_holdout, tmp_path):
    cert, key = self_signed(tmp_path)
    upstream = UpstreamServer(catalogue, tls=(cert, key)).start()
    trusting = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", upstream.url,
                            "--upstream-ca", str(cert), workers=1, env=ROOMY).start()
    doubting = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", upstream.url,
                            workers=1, env=ROOMY).start()
    # no --upstream-ca: the system's store decides, here made to hold the certificate (SSL_CERT_FILE)
    system = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", upstream.url,
                          workers=1, env={**ROOMY, "SSL_CERT_FILE": str(cert)}).start()
    try:
        assert system.predict(tiny_holdout[0]).headers["X-Recguard-Source"] == "model"
        upstream.requests = 0
        answer = trusting.predict(tiny_holdout[0])
        assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"
        assert answer.json()["items"] == catalogue[:5] and upstream.requests == 1
        # a certificate nobody vouches for: no model answer, the fallback's instead
        refused = doubting.predict(tiny_holdout[0])
        assert refused.status_code == 200 and refused.headers["X-Recguard-Source"] == "fallback"
        assert refused.headers["X-Recguard-Anomalies"] == "model:upstream_error"
        assert upstream.requests == 1
    finally:
        trusting.stop()
        doubting.stop()
        system.stop()
        upstream.stop()


def test_refused_connection_is_answered_by_the_fallback(tiny_bundle, redis_server, tiny_holdout):
    nobody = f"http://127.0.0.1:{free_port()}/invocations"
    proxy = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", nobody, workers=1, env=FAST_BREAKER).start()
    try:
        answer = proxy.predict(tiny_holdout[0])
        assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "fallback"
        assert answer.headers["X-Recguard-Anomalies"] == "model:upstream_error"
    finally:
        proxy.stop()


def test_a_4xx_is_the_callers_own_and_passes_through_counted(guarded_faulty, faulty, tiny_holdout):
    faulty.mode = "bad"
    for _ in range(4):  # more than the breaker's failures: a 4xx is no upstream failure
        answer = guarded_faulty.predict(tiny_holdout[0])
        assert answer.status_code == 400
        assert answer.content == b'{"error": "team model says: bad request"}'
        assert answer.headers["X-Recguard-Source"] == "model"
    assert metric(guarded_faulty, "recguard_upstream_calls_total", outcome="client_error") == 4
    assert guarded_faulty.get("/healthz").json()["upstream"]["breaker"]["state"] == "closed"


def test_a_dropped_idle_connection_gets_one_retry(guarded_faulty, faulty, tiny_holdout):
    faulty.mode = "stale"
    for body in tiny_holdout[:5]:
        answer = guarded_faulty.predict(body)
        assert answer.headers["X-Recguard-Source"] == "model"
    # the first request opened the connection; each later one met it closed and went again, once, on a
    # new one (libcurl finds some of them closed before it sends: those reach the upstream only once)
    assert 1 + 4 <= faulty.requests <= 1 + 2 * 4
    assert metric(guarded_faulty, "recguard_upstream_calls_total", outcome="ok") == 5


def ejection_over(proxy: ProxyProcess, timeout: float = 10.0) -> None:
    """Until the (one) worker's breaker lets a probe through: no fixed sleep that must fit the ejection."""
    wait_until(lambda: proxy.get("/healthz").json()["upstream"]["breaker"]["retry_in_seconds"] == 0, timeout,
               "the breaker's ejection to end")


def test_breaker_ejects_probes_and_closes(guarded_faulty, faulty, tiny_holdout):
    pids = guarded_faulty.worker_pids()
    faulty.mode = "error"
    for _ in range(3):
        assert guarded_faulty.predict(tiny_holdout[0]).headers["X-Recguard-Anomalies"] == "model:upstream_error"
    health = guarded_faulty.get("/healthz").json()
    assert health["status"] == "degraded" and health["upstream"]["breaker"]["state"] == "open"
    assert any("circuit breaker" in reason for reason in health["reasons"])
    assert metric(guarded_faulty, "recguard_upstream_breaker_open") == 1

    # while open nothing reaches the upstream and nobody waits for it (it would take a second)
    faulty.mode, faulty.delay = "slow", 1.0
    for _ in range(5):
        started = time.monotonic()
        answer = guarded_faulty.predict(tiny_holdout[0])
        assert time.monotonic() - started < BUDGET
        assert answer.status_code == 200 and answer.headers["X-Recguard-Anomalies"] == "model:upstream_unavailable"
    assert faulty.requests == 3

    # the ejection ends: one probe, which fails (too slow), ejects again for twice as long
    ejection_over(guarded_faulty)
    assert guarded_faulty.predict(tiny_holdout[0]).headers["X-Recguard-Anomalies"] == "model:model_timeout"
    assert faulty.requests == 4
    breaker = guarded_faulty.get("/healthz").json()["upstream"]["breaker"]
    assert breaker["state"] == "open" and breaker["multiplier"] == 2 and breaker["retry_in_seconds"] > 0.7
    assert guarded_faulty.predict(tiny_holdout[0]).headers["X-Recguard-Anomalies"] == "model:upstream_unavailable"

    # the upstream recovers: the next probe succeeds and the breaker closes
    faulty.mode = "ok"
    ejection_over(guarded_faulty)
    answer = guarded_faulty.predict(tiny_holdout[0])
    assert answer.headers["X-Recguard-Source"] == "model"
    health = guarded_faulty.get("/healthz").json()
    assert health["status"] == "ok" and health["upstream"]["breaker"]["state"] == "closed"
    assert metric(guarded_faulty, "recguard_upstream_breaker_open") == 0
    assert metric(guarded_faulty, "recguard_upstream_ejections_total") == 2

    # counts exact: 3 failed + 5 skipped + 1 failed probe + 1 skipped + 1 good probe, 11 answered
    assert metric(guarded_faulty, "recguard_requests_total", source="fallback") == 10
    assert metric(guarded_faulty, "recguard_requests_total", source="model") == 1
    assert metric(guarded_faulty, "recguard_upstream_calls_total", outcome="upstream_unavailable") == 6
    assert guarded_faulty.worker_pids() == pids


def test_the_dashboard_shows_the_open_breaker(guarded_faulty, faulty, tiny_holdout, tmp_path):
    from tests.proxy.http.test_dashboard import render

    faulty.mode = "error"
    for _ in range(3):
        guarded_faulty.predict(tiny_holdout[0])
    dashboard = render(guarded_faulty.url + "/dashboard", tmp_path)
    assert dashboard.texts["upstream"] == f"{faulty.url} (plain)"
    assert dashboard.texts["breaker"].startswith("open, probe in ") and dashboard.texts["breaker"].endswith(", ejections: 1")
    assert dashboard.texts["status"] == "degraded" and "circuit breaker" in dashboard.texts["reasons"]


def test_a_guard_only_bundle_serves_in_front_of_the_model(tiny_data, redis_server, model_endpoint, tiny_holdout,
                                                          tmp_path):
    from proxy.cli.main import main

    assert main(["profile", "--data", str(tiny_data), "--out", str(tmp_path / "guard")]) == 0
    assert not load_bundle(tmp_path / "guard").has_model
    proxy = ProxyProcess(tmp_path / "guard", redis_server.url, *own_prefix(), "--upstream", model_endpoint.url + "/predict",
                         workers=1, env=ROOMY).start()
    try:
        raw = json.dumps(tiny_holdout[3]).encode()
        assert post_raw(proxy.url + "/predict", raw).content == post_raw(model_endpoint.url + "/predict", raw).content
        assert proxy.predict(wrong_weight(tiny_holdout[3])).headers["X-Recguard-Source"] == "fallback"
    finally:
        proxy.stop()
