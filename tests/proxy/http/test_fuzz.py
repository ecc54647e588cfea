"""Hostile input at volume against a real gunicorn proxy: thousands of generated bodies, content
types, headers and raw HTTP requests. Never a 5xx, never a dead worker, and the counters in Redis
hold exactly the predictions answered with a 200.

FUZZ_EXAMPLES (default 1200) sets the examples of the HTTP-level test and a quarter of that for the
raw-socket one; docs/reliability.md records a long campaign run with a large value.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import uuid

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.proxy import ProxyProcess
from tests.proxy.http.test_faults import settle

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None)

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**400, max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.sampled_from(["80", "1e400", "NaN", "", " ", "DE", "item_00001", "\u0000", "\ud800"]))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=6)
                           | st.dictionaries(st.text(max_size=12), children, max_size=6), max_leaves=25)


@st.composite
def mutated_request(draw, holdout: list[dict]) -> dict:
    """A held-out request with fields dropped, renamed, retyped or added, and a hostile k or history."""
    body = dict(draw(st.sampled_from(holdout)))
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "rename", "retype", "null"]))
        value = body.pop(name)
        if action == "rename":
            body[draw(st.text(min_size=1, max_size=20))] = value
        elif action == "retype":
            body[name] = draw(json_values)
        elif action == "null":
            body[name] = None
    body.update(draw(st.dictionaries(st.text(max_size=70), json_values, max_size=20)))
    if draw(st.booleans()):
        body["k"] = draw(st.integers(-5, 120) | json_values)
    if draw(st.booleans()):
        body["history"] = draw(st.lists(st.sampled_from(["item_00001", "item_00002", "nope"]) | st.text(max_size=12),
                                        max_size=600) | json_values)
    return body


def encode(value, style: str) -> bytes:
    if style == "compact":
        return json.dumps(value, allow_nan=True, separators=(",", ":")).encode()
    if style == "unicode":
        return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "latin-1":
        return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("latin-1", "replace")
    return (json.dumps(value, allow_nan=True, indent=1) + "\n").encode()


@st.composite
def bodies(draw, holdout: list[dict]) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "nested", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.integers(1, 3000))
        opener = draw(st.sampled_from(['[', '{"a":', '{"history":[']))
        return (opener * depth).encode()
    value = draw(mutated_request(holdout)) if kind == "mutated" else draw(json_values)
    data = encode(value, draw(st.sampled_from(["compact", "unicode", "latin-1", "pretty"])))
    if kind == "truncated":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    return data


content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "APPLICATION/JSON", "application/problem+json", "application/vnd.recguard.v1+json", "application/jsonx",
    "text/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/octet-stream", "", "*/*", "application/json;;;", "application/json; charset=\"",
]) | st.from_regex(r"[!-~]([ -~]{0,38}[!-~])?", fullmatch=True)

header_names = st.sampled_from(["Accept", "Accept-Encoding", "Content-Encoding", "X-Forwarded-For", "User-Agent",
                                "Expect", "Cookie", "Authorization", "X-Request-Id", "Origin", "Range"]) | \
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
# what `requests` lets through; arbitrary header bytes go over the raw socket below
header_values = st.from_regex(r"[!-~]([ -~]{0,78}[!-~])?", fullmatch=True)


@pytest.fixture(scope="module")
def fuzzed_proxy(tiny_bundle, redis_server, tmp_path_factory):
    # a prefix of its own: counts of other tests' proxies (same Redis) stay out of the sums
    prefix = "fuzz" + uuid.uuid4().hex[:8]
    proxy = ProxyProcess(tiny_bundle, redis_server.url, "--redis-prefix", prefix, workers=2,
                         log_path=tmp_path_factory.mktemp("fuzz") / "proxy.log").start()
    proxy.prefix = prefix
    yield proxy
    proxy.stop()


def check_answer(answer: requests.Response, answered: list[int]) -> None:
    assert answer.status_code < 500, answer.text[:300]
    if answer.headers.get("Content-Type") != "application/json":
        # refused by gunicorn's HTTP parser before the app (e.g. 417 for an unknown Expect):
        # a client error in gunicorn's own plain format
        assert 400 <= answer.status_code < 500 and "Recguard" not in str(answer.headers), answer.headers
        return
    body = answer.json()
    if answer.status_code == 200:
        assert set(body) == {"items", "scores", "source", "model_version", "anomalies"}
        assert all(math.isfinite(score) for score in body["scores"])
        answered.append(1)
    else:
        assert set(body) == {"error"}


def test_generated_bodies_headers_and_content_types_never_5xx_and_counts_stay_exact(
        fuzzed_proxy, redis_server, tiny_holdout):
    proxy = fuzzed_proxy
    workers = sorted(proxy.worker_pids())
    session = requests.Session()
    answered: list[int] = []
    statuses: set[int] = set()

    @FUZZ
    @given(body=bodies(tiny_holdout), content_type=content_types, path=st.sampled_from(["/predict", "/invocations"]),
           headers=st.dictionaries(header_names, header_values, max_size=4))
    def send(body: bytes, content_type: str, path: str, headers: dict[str, str]) -> None:
        answer = session.post(proxy.url + path, data=body, timeout=10,
                              headers={**headers, "Content-Type": content_type})
        statuses.add(answer.status_code)
        check_answer(answer, answered)

    send()
    assert 200 in statuses and 400 in statuses and 415 in statuses
    assert sorted(proxy.worker_pids()) == workers
    client = redis_server.client()
    assert settle(client, len(answered), prefix=proxy.prefix) == len(answered)
    metrics = proxy.get("/metrics").text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("recguard_requests_total{"))
    assert served == len(answered)


def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes, half-close, read until the server closes. A server that goes quiet for 5 s
    raises socket.timeout (the test fails); a reset ends the read with what came before it (a
    server that answered 413 and hung up on the rest of a large body resets the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (413) and hung up before reading it all
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


header_line_bytes = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@st.composite
def raw_http(draw, holdout: list[dict]) -> bytes:
    """An HTTP/1.1 POST with hostile framing: odd or duplicated headers, chunked bodies (some
    malformed), a Content-Length that lies low, garbage request lines."""
    body = draw(bodies(holdout))
    headers = [b"Host: fuzz", b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/plain"]))]
    headers += [draw(header_line_bytes) + b": " + draw(header_line_bytes)
                for _ in range(draw(st.integers(0, 3)))]
    framing = draw(st.sampled_from(["length", "short-length", "chunked", "bad-chunked", "none",
                                    "garbage-line", "double-length"]))
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short-length":
        headers.append(b"Content-Length: %d" % draw(st.integers(0, len(body))))
    elif framing == "double-length":
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: 3"]
    elif framing in ("chunked", "bad-chunked"):
        headers.append(b"Transfer-Encoding: chunked")
        if framing == "bad-chunked":
            body = b"%x\r\n%s\r\n" % (len(body) + draw(st.integers(1, 50)), body) + b"zz\r\n"
        else:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    line = b"POST /predict HTTP/1.1"
    if framing == "garbage-line":
        line = draw(header_line_bytes) + b" /predict HTTP/1.1"
    return line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_raw_http_with_hostile_framing_never_5xx_nor_kills_a_worker(fuzzed_proxy, redis_server, tiny_holdout):
    proxy = fuzzed_proxy
    workers = sorted(proxy.worker_pids())
    client = redis_server.client()
    before = settle(client, prefix=proxy.prefix)
    answered = 0

    @settings(FUZZ, max_examples=max(50, EXAMPLES // 4))
    @given(data=raw_http(tiny_holdout))
    def send(data: bytes) -> None:
        nonlocal answered
        reply = raw_request(proxy.port, data)
        # every response on the connection (a lying Content-Length leaves a second, garbage request)
        status_lines = [line for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.")]
        # every request gets an HTTP answer, if only gunicorn's 400: a bare close would be a failure
        assert status_lines, f"closed without an answer: {data[:200]!r}"
        for status_line in status_lines:
            status = int(status_line.split()[1])
            assert status < 500, reply[:400]
            answered += status == 200

    send()
    assert sorted(proxy.worker_pids()) == workers
    assert proxy.predict(random.choice(tiny_holdout)).status_code == 200
    answered += 1
    assert settle(client, before + answered, prefix=proxy.prefix) == before + answered


@pytest.mark.parametrize("chunks, expected", [
    (b"5\r\n{}   zz\r\n", 400),                          # no CRLF after the chunk (was a 500)
    (b"2\r\n{}\r\n", 400),                               # cut short: no last chunk (was a 500)
    (b"3;" + b"x" * 2000 + b"\r\n{}\r\n0\r\n\r\n", 400),   # oversized chunk extension
    (b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(17)) + b"0\r\n\r\n", 413),  # over 1 MiB
], ids=["missing-terminator", "cut-short", "long-extension", "over-the-limit"])
def test_malformed_or_oversized_chunked_body_is_a_client_error(fuzzed_proxy, chunks, expected):
    reply = raw_request(fuzzed_proxy.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert int(head.split(b" ", 2)[1]) == expected, reply[:300]
    assert json.loads(body.split(b"HTTP/1.1")[0])["error"]
    assert fuzzed_proxy.predict({}).status_code == 200
