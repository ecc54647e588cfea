"""POST /predict (and /invocations, SageMaker's path): parse the body, ask the service, answer."""

from __future__ import annotations

import re
import time
import uuid

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from proxy.http.responses import error_response, json_response, reject
from proxy.request import BadRequest, parse_predict_body
from proxy.runtime import Runtime

JSON_TYPES = ("application/json",)
SOURCE_HEADER = "X-Recguard-Source"
REQUEST_ID_HEADER = "X-Request-Id"
TICKET_HEADER = "X-Recguard-Ticket"
# a caller's request id is echoed and signed into the ticket: printable ASCII, bounded
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
STARTUP_WAIT_SECONDS = 5.0


def request_id() -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def _is_json(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def predict_blueprint(runtime: Runtime) -> Blueprint:
    """The prediction endpoints of `runtime`."""
    blueprint = Blueprint("predict", __name__)
    limits = runtime.settings.limits

    @blueprint.post("/predict")
    @blueprint.post("/invocations")
    def predict() -> Response:
        started = time.perf_counter()
        loaded = runtime.loaded
        # A worker that just booted takes connections while its bundle loads (a fraction of a
        # second): waiting briefly beats failing a request another worker would have answered.
        if loaded is None and runtime.settled.wait(STARTUP_WAIT_SECONDS):
            loaded = runtime.loaded
        if loaded is None:
            return error_response("model not loaded yet", 503)
        if not _is_json(request.mimetype):
            return reject(runtime, "Content-Type must be application/json", 415)
        try:
            body = request.get_data(cache=False)
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001
            # The WSGI server's own framing errors surface here (gunicorn raises its ParseException
            # for a malformed chunked body): the client's fault, not an internal error.
            return reject(runtime, "body could not be read: malformed chunked encoding or cut short", 400)
        if len(body) > limits.max_body_bytes:
            return reject(runtime, f"body larger than {limits.max_body_bytes} bytes", 413)
        try:
            parsed = parse_predict_body(body, default_k=limits.default_k, max_k=limits.max_k,
                                        max_history=limits.max_history)
        except BadRequest as exc:
            return reject(runtime, str(exc), exc.status)
        rid = request_id()
        prediction = loaded.service.predict(parsed, rid)
        answer = {"items": prediction.items, "scores": prediction.scores, "source": prediction.source,
                  "model_version": loaded.model_version,
                  "anomalies": [anomaly.to_json() for anomaly in prediction.anomalies]}
        headers = {SOURCE_HEADER: prediction.source, REQUEST_ID_HEADER: rid}
        if prediction.ticket is not None:
            answer["ticket"] = headers[TICKET_HEADER] = prediction.ticket
        response = json_response(answer, headers=headers)
        loaded.metrics.latency.observe(time.perf_counter() - started)
        return response

    return blueprint
