"""Hostile input at volume against the app in-process (Flask test client, real Redis): fast enough to
try thousands of inputs in a few seconds, and to check more than the HTTP-level fuzz can see.

For every generated body, content type and header set, guarded and --no-guard alike: never a 5xx,
always the documented JSON (a prediction with finite scores, or {"error"}). At the end the counts
the guarded app flushed to Redis agree with its 200 answers field by field: `requests`, each
`source:`, `anomalous`, and each `anomaly:<field>:<kind>` (once per distinct pair per request).
The query endpoints (/anomalies, /alarms/<id>/clear) get generated query strings and tokens.

tests/proxy/http/test_fuzz.py does the same over real gunicorn (framing, dead workers). FUZZ_EXAMPLES
scales both (default here 600, about 7 s).
"""

from __future__ import annotations

import math
import os
import uuid
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.app import create_app
from proxy.settings import Settings
from tests.proxy.http.test_fuzz import (
    bodies,
    content_types,
    header_names,
    header_values,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None)
PREDICTION_KEYS = {"items", "scores", "source", "model_version", "anomalies"}

# bytes that are not UTF-8 (lone continuation bytes, overlongs, surrogates encoded, truncated
# sequences), spliced into otherwise valid bodies
invalid_utf8 = st.sampled_from([b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff"])


@st.composite
def hostile_bodies(draw, holdout: list[dict]) -> bytes:
    """The HTTP-level fuzz's bodies, sometimes with bytes that are not UTF-8 spliced in."""
    data = draw(bodies(holdout))
    if data and draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(invalid_utf8) + data[at:]
    return data


@pytest.fixture(scope="module")
def apps(tiny_bundle, redis_server):
    from model.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    # a prefix of its own: the session's other tests share this Redis
    guarded_settings = Settings.from_env({}, bundle=tiny_bundle, redis_url=redis_server.url,
                                         redis_prefix="fuzzapp" + uuid.uuid4().hex[:8], flush_interval=0.2,
                                         admin_token="s3cret-token")
    guarded = create_app(guarded_settings, bundle)
    bare = create_app(Settings.from_env({}, bundle=tiny_bundle, guard=False), bundle)
    yield guarded, bare, guarded_settings.redis.prefix
    guarded.extensions["recguard"].close()


def checked(response) -> dict:
    """The decoded JSON answer, after checking it is no 5xx and has the documented shape."""
    assert response.status_code < 500, response.get_data()[:300]
    assert response.mimetype == "application/json", response.headers
    body = response.get_json()
    if response.status_code == 200:
        assert set(body) == PREDICTION_KEYS
        assert body["source"] in ("model", "fallback") and response.headers["X-Recguard-Source"] == body["source"]
        assert len(body["items"]) == len(body["scores"]) and all(math.isfinite(s) for s in body["scores"])
        assert all(set(anomaly) == {"field", "kind", "detail"} for anomaly in body["anomalies"])
    else:
        assert set(body) == {"error"} and isinstance(body["error"], str)
    return body


def flushed_counts(app, redis_client, prefix: str) -> Counter:
    assert app.extensions["recguard"].counters.flush()
    totals: Counter = Counter()
    for key in redis_client.scan_iter(f"{prefix}:m:*"):
        for name, value in redis_client.hgetall(key).items():
            if not name.startswith("batch:"):
                totals[name] += int(value)
    return totals


def test_generated_requests_in_process_never_5xx_and_counts_match_answers_field_by_field(
        apps, redis_server, tiny_holdout):
    guarded, bare, prefix = apps
    clients = (guarded.test_client(), bare.test_client())
    expected: Counter = Counter()
    statuses: Counter = Counter()

    @FUZZ
    @given(body=hostile_bodies(tiny_holdout), content_type=content_types,
           headers=st.dictionaries(header_names, header_values, max_size=4),
           path=st.sampled_from(["/predict", "/invocations"]))
    def one(body: bytes, content_type: str, headers: dict[str, str], path: str) -> None:
        headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
        if content_type:
            headers["Content-Type"] = content_type
        guarded_answer, bare_answer = (checked(client.post(path, data=body, headers=headers)) for client in clients)
        statuses[guarded_answer.get("source", "refused")] += 1
        if "error" in guarded_answer:
            # the guard refuses nothing on its own: the envelope decides, guarded or not
            assert "error" in bare_answer
            return
        expected["requests"] += 1
        expected["source:" + guarded_answer["source"]] += 1
        pairs = {(anomaly["field"], anomaly["kind"]) for anomaly in guarded_answer["anomalies"]}
        if pairs:
            expected["anomalous"] += 1
        for field, kind in pairs:
            expected[f"anomaly:{field}:{kind}"] += 1

    one()
    assert statuses["refused"] and statuses["model"] + statuses["fallback"], statuses
    counted = flushed_counts(guarded, redis_server.client(), prefix)
    # drift windows and other writers' extra fields are not request counts: compare what we expect
    assert {name: counted[name] for name in expected} == dict(expected)
    assert counted["requests"] == sum(counted[name] for name in counted if name.startswith("source:"))


query_text = st.text(max_size=30) | st.sampled_from(["15m", "1h", "-5m", "0m", "99999999999d", "2026-11-28T00:00:00Z",
                                                     "2026-13-45T99:99:99", "nan", "inf", "1e400", ""])


@settings(max_examples=max(100, EXAMPLES // 2), deadline=None, database=None)
@given(since=query_text, until=st.none() | query_text, field=st.none() | query_text, kind=st.none() | query_text)
def test_generated_anomaly_queries_never_5xx(apps, since, until, field, kind):
    guarded = apps[0]
    query = {name: value for name, value in (("since", since), ("until", until), ("field", field), ("kind", kind))
             if value is not None}
    response = guarded.test_client().get("/anomalies", query_string=query)
    assert response.status_code in (200, 400), response.get_data()[:300]
    assert response.mimetype == "application/json"


@settings(max_examples=max(100, EXAMPLES // 4), deadline=None, database=None)
@given(alarm_id=st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s and s not in (".", "..")),
       authorization=st.none() | header_values | st.just("Bearer s3cret-token"))
def test_generated_alarm_clears_never_5xx_and_never_pass_without_the_token(apps, alarm_id, authorization):
    guarded = apps[0]
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = guarded.test_client().post(f"/alarms/{quote(alarm_id, safe='')}/clear", headers=headers)
    assert response.status_code < 500, response.get_data()[:300]
    # an id werkzeug's path converter does not route (a newline in it) is a 404 before any check
    if authorization != "Bearer s3cret-token":
        assert response.status_code in (401, 403, 404)
    else:
        assert response.status_code == 404  # no alarm is active
