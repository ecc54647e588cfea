"""The proxy in-process, with a real bundle and a real redis-server: routing, bad input, health, counts."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from model.bundle import load_bundle
from proxy.http.app import create_app
from proxy.settings import Settings
from tests.harness.proxy import merged_names, renamed_email

POUNDS_PER_KG = 2.20462


def flushed(app) -> None:
    assert app.extensions["recguard"].counters.flush()


def post(client, body, **kwargs):
    return client.post("/predict", json=body, **kwargs)


def test_clean_holdout_traffic_is_served_by_the_model(client, tiny_holdout):
    sources = [post(client, body).get_json()["source"] for body in tiny_holdout]
    assert sources.count("fallback") <= 0.005 * len(sources)


def test_response_shape_and_source_header(client, tiny_holdout, loaded_bundle):
    body = {**tiny_holdout[0], "k": 5}
    response = post(client, body)
    assert response.status_code == 200
    answer = response.get_json()
    assert set(answer) == {"items", "scores", "source", "model_version", "anomalies"}
    assert len(answer["items"]) == 5 and len(answer["scores"]) == 5
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert not set(answer["items"]) & set(body["history"])
    assert answer["model_version"] == loaded_bundle.model_version
    assert response.headers["X-Recguard-Source"] == answer["source"] == "model"


def test_invocations_is_an_alias_of_predict(client, tiny_holdout):
    assert client.post("/invocations", json=tiny_holdout[0]).get_json() == post(client, tiny_holdout[0]).get_json()


def test_same_answer_without_the_guard(settings, loaded_bundle, tiny_holdout):
    bare = create_app(Settings.from_env(settings.to_env(), guard=False), loaded_bundle)
    guarded = create_app(settings, loaded_bundle)
    try:
        for body in tiny_holdout[:20]:
            assert bare.test_client().post("/predict", json=body).get_json() == \
                guarded.test_client().post("/predict", json=body).get_json()
    finally:
        guarded.extensions["recguard"].close()


def kinds(answer):
    return {(a["field"], a["kind"]) for a in answer["anomalies"]}


def test_email_renamed_model_answers_and_both_sides_are_reported(client, tiny_holdout):
    body = renamed_email(tiny_holdout[0])
    answer = post(client, body).get_json()
    assert answer["source"] == "model"
    assert kinds(answer) == {("email", "missing_field"), ("user_email", "unexpected_field"),
                             ("user_email", "suspected_rename")}
    assert {"field": "user_email", "kind": "suspected_rename", "detail": "email → user_email"} in answer["anomalies"]
    assert body["user_email"] not in str(answer)


def test_names_merged_model_answers_and_is_reported(client, tiny_holdout):
    answer = post(client, merged_names(tiny_holdout[0])).get_json()
    assert answer["source"] == "model"
    assert kinds(answer) == {("first_name", "missing_field"), ("last_name", "missing_field"),
                             ("name", "unexpected_field"), ("name", "suspected_merge")}
    assert {"field": "name", "kind": "suspected_merge", "detail": "first_name + last_name → name"} in answer["anomalies"]


def test_weight_in_pounds_sends_heavy_users_to_the_fallback(client, tiny_holdout, loaded_bundle):
    top = loaded_bundle.profile["fields"]["weight_kg"]["max"]
    heavy = [b for b in tiny_holdout if b["weight_kg"] * POUNDS_PER_KG > top * 1.1]
    assert heavy, "the tiny data set has users heavy enough to leave the range in pounds"
    for body in heavy[:10]:
        answer = post(client, {**body, "weight_kg": round(body["weight_kg"] * POUNDS_PER_KG, 1)}).get_json()
        assert answer["source"] == "fallback"
        assert ("weight_kg", "out_of_range") in kinds(answer)


def test_new_market_goes_to_the_fallback(client, tiny_holdout, loaded_bundle):
    assert "MX" not in loaded_bundle.profile["fields"]["country"]["domain"]
    answer = post(client, {**tiny_holdout[0], "country": "MX"}).get_json()
    assert answer["source"] == "fallback"
    assert kinds(answer) == {("country", "unknown_category")}
    assert len(answer["items"]) == 10


@pytest.mark.parametrize("data, content_type, status, message", [
    (b"", "application/json", 400, "empty body"),
    (b"{oops", "application/json", 400, "not valid JSON"),
    (b"\xff\xfe\x00", "application/json", 400, "UTF-8"),
    (b"[]", "application/json", 400, "JSON object"),
    (b'{"k": 0}', "application/json", 400, "k must be"),
    (b'{"k": 1000000}', "application/json", 400, "k must be"),
    (b'{"history": "item_00001"}', "application/json", 400, "history must be"),
    (b'{"history": [1]}', "application/json", 400, "history must be"),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", 400, "nested too deeply"),
    (b"{}", "text/plain", 415, "Content-Type"),
    (b"{}", None, 415, "Content-Type"),
    (b"{" + b" " * (2 * 1024 * 1024) + b"}", "application/json", 413, "larger than"),
])
def test_bad_input_gets_a_clear_json_error(client, data, content_type, status, message):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/predict", data=data, headers=headers)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_unknown_route_and_method_are_json_errors(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").get_json()
    assert client.get("/predict").status_code == 405 and "error" in client.get("/predict").get_json()


def test_non_finite_values_are_reported_and_never_leak_as_nan(client, tiny_holdout):
    response = client.post("/predict", data=b'{"weight_kg": NaN, "country": "' + tiny_holdout[0]["country"].encode() + b'"}',
                           content_type="application/json")
    assert response.status_code == 200
    json.loads(response.data, parse_constant=lambda token: pytest.fail(f"{token} token in the response"))
    assert ("weight_kg", "non_finite") in kinds(response.get_json())


def test_counts_are_exact_after_a_burst(app, client, tiny_holdout, redis_client):
    threads = [threading.Thread(target=lambda: [post(app.test_client(), b) for b in tiny_holdout[:25]]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    post(client, {**tiny_holdout[0], "country": "MX"})
    flushed(app)
    report = client.get("/anomalies?since=5m").get_json()
    assert report["requests"] == 101
    assert report["fallback_requests"] == 1
    assert report["by_kind"]["unknown_category"] == 1


def test_nothing_personal_reaches_redis(app, client, tiny_holdout, redis_client):
    body = dict(tiny_holdout[0])
    email, first = body.pop("email"), body["first_name"]
    post(client, {**body, "user_email": email, email: 1, "first_name": 42})
    flushed(app)
    dump = str({key: redis_client.hgetall(key) for key in redis_client.keys("*")})
    assert email not in dump and first not in dump and body["user_id"] not in dump


def test_healthz_reports_model_redis_and_rates(app, client, tiny_holdout):
    post(client, tiny_holdout[0])
    flushed(app)
    health = client.get("/healthz").get_json()
    assert health["status"] == "ok" and health["redis"] == "up"
    assert health["model_version"] == app.extensions["recguard"].loaded.model_version
    assert health["rates"]["requests_per_second"] > 0


def test_metrics_count_predictions_but_not_health_checks(client, tiny_holdout):
    post(client, tiny_holdout[0])
    post(client, {**tiny_holdout[0], "country": "MX"})
    for path in ("/healthz", "/livez", "/readyz"):
        client.get(path)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'recguard_requests_total{source="model"} 1.0' in text
    assert 'recguard_requests_total{source="fallback"} 1.0' in text
    assert 'recguard_anomalies_total{field="country",kind="unknown_category"} 1.0' in text
    assert "recguard_request_duration_seconds_count 2.0" in text


def test_readiness_waits_for_the_bundle_and_early_requests_wait_too(settings, tiny_bundle, tiny_holdout, redis_client):
    release = threading.Event()

    def slow_loader(path):
        release.wait(10)
        return load_bundle(path)

    app = create_app(settings, bundle_loader=slow_loader)
    client = app.test_client()
    try:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.get("/ping").status_code == 503
        threading.Timer(0.3, release.set).start()
        assert post(client, tiny_holdout[0]).get_json()["source"] == "model"
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/ping").status_code == 200
        assert post(client, tiny_holdout[0]).get_json()["source"] == "model"
    finally:
        app.extensions["recguard"].close()


def test_bundle_that_fails_to_load_keeps_the_worker_alive_and_unready(settings, tmp_path, redis_client):
    app = create_app(Settings.from_env(settings.to_env(), bundle=tmp_path))
    client = app.test_client()
    try:
        deadline = time.monotonic() + 5
        while client.get("/readyz").get_json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and "manifest.json" in answer.get_json()["error"]
        refused = client.post("/predict", json={})
        assert refused.status_code == 503 and refused.get_json() == {"error": "model not loaded yet"}
        assert client.get("/livez").status_code == 200
    finally:
        app.extensions["recguard"].close()


class RaisingModel:
    bounded = False
    catalogue = ["item_1"]

    def recommend(self, fields, history, k):
        raise RuntimeError("boom")


class HangingModel:
    bounded = False
    catalogue = ["item_1"]

    def __init__(self):
        self.release = threading.Event()

    def recommend(self, fields, history, k):
        self.release.wait(30)
        raise RuntimeError("released")


@pytest.mark.parametrize("model_class, kind", [(RaisingModel, "model_error"), (HangingModel, "model_timeout")])
def test_a_failing_model_is_answered_by_the_fallback(settings, loaded_bundle, tiny_holdout, redis_client,
                                                      model_class, kind):
    model = model_class()
    app = create_app(Settings.from_env(settings.to_env(), model_timeout_ms=50), loaded_bundle, model=model)
    client = app.test_client()
    try:
        for _ in range(6):
            started = time.monotonic()
            answer = post(client, tiny_holdout[0]).get_json()
            assert time.monotonic() - started < 1.0
            assert answer["source"] == "fallback" and kinds(answer) == {("model", kind)}
        assert client.get("/readyz").status_code == 200
    finally:
        getattr(model, "release", threading.Event()).set()
        app.extensions["recguard"].close()


def test_openapi_document_lists_every_endpoint(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
              for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes == set(document["paths"])


@pytest.mark.parametrize("method, path, allowed", [
    ("get", "/predict", {"POST", "OPTIONS"}),
    ("delete", "/anomalies", {"GET", "HEAD", "OPTIONS"}),
    ("put", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("get", "/alarms/weight_kg:DE/clear", {"POST", "OPTIONS"}),
])
def test_a_wrong_method_is_a_405_that_names_the_allowed_ones(client, method, path, allowed):
    answer = getattr(client, method)(path)
    assert answer.status_code == 405 and "error" in answer.get_json()
    assert set(answer.headers["Allow"].split(", ")) == allowed


def test_an_unknown_kind_is_a_400_listing_the_kinds_not_an_empty_report(client):
    answer = client.get("/anomalies?kind=bogus")
    assert answer.status_code == 400
    assert "unknown kind 'bogus'" in answer.get_json()["error"] and "out_of_range" in answer.get_json()["error"]
    assert client.get("/anomalies?kind=out_of_range").status_code == 200
    for query in ("since=", "until=", "since=15m&until=2000-01-01T00:00:00Z"):
        assert client.get(f"/anomalies?{query}").status_code == 400, query


def test_the_openapi_request_schema_lists_the_profile_fields_nulls_and_errors(client, loaded_bundle):
    document = client.get("/openapi.json").get_json()
    request = document["components"]["schemas"]["PredictRequest"]
    assert set(loaded_bundle.profile["fields"]) <= set(request["properties"])
    assert "in [" in request["properties"]["weight_kg"]["description"]
    assert "null" in request["properties"]["k"]["type"] and "null" in request["properties"]["history"]["type"]
    predict = document["paths"]["/predict"]["post"]["responses"]
    assert {"400", "405", "413", "415", "503"} <= set(predict)
    clear = document["paths"]["/alarms/{alarm_id}/clear"]["post"]["responses"]
    assert {"401", "403", "404"} <= set(clear) and "WWW-Authenticate" in clear["401"]["headers"]
    kinds = [p for p in document["paths"]["/anomalies"]["get"]["parameters"] if p["name"] == "kind"][0]
    assert "bogus" not in kinds["schema"]["enum"] and "drift_quarantine" in kinds["schema"]["enum"]
