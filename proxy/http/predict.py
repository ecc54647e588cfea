"""POST /predict (and /invocations, SageMaker's path): parse the body in its shape, ask the service, answer.

With the bundle's model the body is recguard's own JSON. In upstream mode (`--upstream`) the same
paths, and KServe v1's `/v1/models/<name>:predict`, take bodies in the upstream's shape: what the
guard lets through is forwarded unchanged and the upstream's status, body and content type come
back unchanged; the fallback answers in that shape. Every route, /v2's infer included, answers
through `answer_in`.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Callable

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from proxy.http.responses import error_response, json_response, reject
from proxy.models.forwarding import REQUEST_ID_HEADER
from proxy.runtime import Loaded, Runtime
from proxy.shapes.base import Encoded, Parsed, Shape, anomaly_list
from proxy.shapes.request import BadRequest
from proxy.words import KSERVE_V1

JSON_TYPES = ("application/json",)
SOURCE_HEADER = "X-Recguard-Source"
TICKET_HEADER = "X-Recguard-Ticket"
# a caller's request id is echoed and signed into the ticket: printable ASCII, bounded
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
ANOMALIES_HEADER = "X-Recguard-Anomalies"


def request_id() -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def is_json(mimetype: str) -> bool:
    """Whether a Content-Type names JSON: application/json or any application/*+json."""
    return mimetype in JSON_TYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_body(runtime: Runtime, *, json_type: bool = True) -> bytes | Response:
    """The request's body, or the 4xx answer that refuses it; `json_type`: its Content-Type must say JSON."""
    if json_type and not is_json(request.mimetype):
        return reject(runtime.metrics, "Content-Type must be application/json", 415)
    try:
        body = request.get_data(cache=False)
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001
        # The WSGI server's own framing errors surface here (gunicorn raises its ParseException
        # for a malformed chunked body): the client's fault, not an internal error.
        return reject(runtime.metrics, "body could not be read: malformed chunked encoding or cut short", 400)
    limit = runtime.settings.limits.max_body_bytes
    if len(body) > limit:
        return reject(runtime.metrics, f"body larger than {limit} bytes", 413)
    return body


def recguard_headers(rid: str, sources: list[str], anomalies: list[str], tickets: list[str]) -> dict[str, str]:
    """X-Request-Id, and X-Recguard-Source, -Anomalies and -Ticket with one entry per row, rows separated by ';'."""
    headers = {REQUEST_ID_HEADER: rid, SOURCE_HEADER: ";".join(sources)}
    if any(anomalies):
        headers[ANOMALIES_HEADER] = ";".join(anomalies)
    if tickets:
        headers[TICKET_HEADER] = ";".join(tickets)
    return headers


def answer_in(runtime: Runtime, loaded: Loaded, shape: Shape, body: bytes,
              parse: Callable[[bytes], Parsed] | None = None) -> Response:
    """The one way every inference route answers: shape.parse (or `parse`, the shape's reader of a framed
    body), the service, then the upstream's own reply (it answered the whole request) or the rows rendered
    in the shape; recguard's headers on either."""
    try:
        parsed = (parse or shape.parse)(body)
    except BadRequest as exc:
        return reject(loaded.metrics, str(exc), exc.status)
    rid = request_id()
    answer = loaded.service.answer(parsed, rid, request.headers.items())
    rows = answer.rows
    headers = recguard_headers(rid, [row.source for row in rows], [anomaly_list(row.anomalies) for row in rows],
                               [row.ticket for row in rows if row.ticket is not None])
    reply = answer.reply
    if reply is not None:
        return Response(reply.body, status=reply.status, content_type=reply.content_type,
                        headers={**reply.headers, **headers})
    rendered = shape.render(parsed, rows, loaded.model_version)
    if isinstance(rendered, Encoded):
        return Response(rendered.body, content_type=rendered.content_type, headers={**rendered.headers, **headers})
    return json_response(rendered, headers=headers)


def predict_blueprint(runtime: Runtime) -> Blueprint:
    """The prediction endpoints of `runtime`: /predict and /invocations in recguard's JSON (the upstream's
    shape in upstream mode), and KServe v1's path in front of a kserve-v1 upstream."""
    blueprint = Blueprint("predict", __name__)

    @blueprint.post("/predict")
    @blueprint.post("/invocations")
    def predict() -> Response:
        started = time.perf_counter()
        loaded = runtime.wait_loaded()
        if loaded is None:
            return error_response("model not loaded yet", 503)
        body = read_body(runtime)
        if isinstance(body, Response):
            return body
        response = answer_in(runtime, loaded, loaded.shape, body)
        loaded.metrics.latency.observe(time.perf_counter() - started)
        return response

    if runtime.settings.upstream.enabled and runtime.settings.upstream.protocol == KSERVE_V1:
        @blueprint.post("/v1/models/<name>:predict")
        def kserve_predict(name: str) -> Response:
            return predict()

    return blueprint
