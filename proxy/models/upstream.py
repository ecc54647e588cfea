"""The team's own model endpoint, over libcurl (proxy/models/transport.py), http and https alike.

`UpstreamClient.call` forwards a request body unchanged and reads the answer's items in the
upstream's shape; `recommend` (the Recommender protocol) asks it for one request that came in
another shape (the OIP endpoints in front of a plain upstream). Items the bundle's catalogue does
not know are no error: the team's model may know products added since (the pipeline notes them). Every way a call can go wrong
raises a ModelError whose `kind` the fallback's answer reports: `upstream_error` (refused, reset,
5xx, not JSON, no items where the pointer says), `model_timeout`
(past the budget: connect, send and every read under one deadline) and `upstream_unavailable` (the breaker is open:
nothing was sent). A 4xx is the caller's own error: returned as it came, with no rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from model.recommender import ModelError, Recommendation
from proxy import json_codec
from proxy.models.breaker import CircuitBreaker
from proxy.models.transport import (
    Answer,
    CurlTransport,
    TransportError,
    TransportTimeout,
)
from proxy.shapes import triton_binary
from proxy.shapes.base import Shape, ShapeError
from proxy.shapes.request import PredictRequest
from proxy.words import MODEL_TIMEOUT, UPSTREAM_ERROR, UPSTREAM_UNAVAILABLE

FORWARDED_HEADERS = ("Content-Type", "Accept", "X-Request-Id", "Authorization")
FORWARDED_PREFIX = "x-amzn-sagemaker-"
"""Request headers that reach the upstream; hop-by-hop and every other header stay behind."""

OK = "ok"
CLIENT_ERROR = "client_error"


class UpstreamError(ModelError):
    """The upstream refused, dropped or failed the call, or answered something unusable."""

    kind = UPSTREAM_ERROR


class UpstreamTimeout(ModelError):
    """The call (connect, send, every read) ran past the model budget."""

    kind = MODEL_TIMEOUT


class UpstreamUnavailable(ModelError):
    """The circuit breaker is open: the upstream was not called."""

    kind = UPSTREAM_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Reply:
    """The upstream's answer as it came, and the items of each row read from it (none for a 4xx)."""

    status: int
    body: bytes
    content_type: str
    rows: list[Recommendation] | None
    headers: Mapping[str, str] = field(default_factory=dict)
    """The answer's headers that frame its body (a binary OIP answer's Inference-Header-Content-Length),
    passed back with it."""


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers that pass through to the upstream."""
    wanted = {name.lower() for name in FORWARDED_HEADERS}
    return {name: value for name, value in headers
            if name.lower() in wanted or name.lower().startswith(FORWARDED_PREFIX)}


class UpstreamClient:
    """Forwards bodies to one upstream URL on pooled keep-alive connections, behind a circuit breaker."""

    bounded = True
    """The whole call runs under one deadline set from the model budget (libcurl's total timeout),
    so it runs on the request thread: an upstream that trickles its answer is cut at the budget."""

    def __init__(self, url: str, shape: Shape, *, timeout: float,
                 breaker: CircuitBreaker, observe: Callable[[str, float], None] | None = None, ca_file: str = ""):
        self.shape = shape
        self.timeout = timeout
        self.breaker = breaker
        self.observe = observe
        self.transport = CurlTransport(url, ca_file=ca_file)

    def call(self, body: bytes, headers: Mapping[str, str], rows: int) -> Reply:
        """Forward one body; the answer and its rows' items, or a ModelError saying what went wrong."""
        if not self.breaker.allow():
            self._observe(UPSTREAM_UNAVAILABLE, 0.0)
            raise UpstreamUnavailable("upstream ejected by the circuit breaker: not called")
        started = time.perf_counter()
        try:
            try:
                reply = self._read(self._send(body, headers, started), rows)
            except ModelError:
                raise
            except Exception as exc:  # whatever else goes wrong, the breaker must hear of it (a probe included)
                raise UpstreamError(f"upstream call failed: {type(exc).__name__}") from None
            if time.perf_counter() - started > self.timeout:
                raise UpstreamTimeout(f"upstream answered past the budget of {self.timeout * 1000:g} ms")
        except ModelError as exc:
            self.breaker.failure()
            self._observe(exc.kind, time.perf_counter() - started)
            raise
        self.breaker.success()
        self._observe(OK if reply.rows is not None else CLIENT_ERROR, time.perf_counter() - started)
        return reply

    def recommend(self, fields: Mapping[str, Any], history: Sequence[str], k: int) -> Recommendation:
        """One request asked of the upstream in its own shape (the Recommender protocol)."""
        body = self.shape.request_body([PredictRequest(dict(fields), list(history), k)])
        reply = self.call(body, {"Content-Type": "application/json", "Accept": "application/json"}, 1)
        if reply.rows is None:
            raise UpstreamError(f"upstream refused the request recguard built from it ({reply.status})")
        return reply.rows[0]

    def _send(self, body: bytes, headers: Mapping[str, str], started: float) -> Answer:
        remaining = self.timeout - (time.perf_counter() - started)
        if remaining <= 0:
            raise self._past_budget()
        try:
            return self.transport.post(body, headers, remaining)
        except TransportTimeout:
            raise self._past_budget() from None
        except TransportError as exc:
            raise UpstreamError(f"upstream {exc.reason}") from None

    def _past_budget(self) -> UpstreamTimeout:
        return UpstreamTimeout(f"upstream past the budget of {self.timeout * 1000:g} ms")

    def _read(self, response: Answer, rows: int) -> Reply:
        status = response.status
        content_type = response.headers.get("content-type", "application/json")
        if 400 <= status < 500:
            return Reply(status, response.body, content_type, None)
        if status >= 500 or not 200 <= status < 300:
            raise UpstreamError(f"upstream answered {status}")
        binary = response.headers.get(triton_binary.BINARY_HEADER.lower())
        framing = {triton_binary.BINARY_HEADER: binary} if binary is not None else {}
        if binary is not None and "content-type" not in response.headers:  # KServe's binary answers have none
            content_type = triton_binary.BINARY_CONTENT_TYPE
        try:
            payload = (triton_binary.read_answer(response.body, binary) if binary is not None
                       else json_codec.loads(response.body, json.loads))
        except triton_binary.BinaryError as exc:
            raise UpstreamError(f"upstream {exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise UpstreamError("upstream answer is not JSON") from None
        try:
            answers = self.shape.read_answer(payload, rows)
        except ShapeError as exc:
            raise UpstreamError(f"upstream {exc}") from None
        return Reply(status, response.body, content_type, answers, framing)

    def _observe(self, outcome: str, seconds: float) -> None:
        if self.observe is not None:
            self.observe(outcome, seconds)

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.transport.close()

