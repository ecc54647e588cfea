"""recguard's own Open Inference Protocol v2 endpoints (KServe's v2 data plane), JSON and binary tensors.

GET /v2, /v2/health/live, /v2/health/ready, /v2/models/<name>, /v2/models/<name>/ready and
POST /v2/models/<name>/infer, for the embedded model and in upstream mode: with an oip-v2
upstream the infer body is forwarded as it came; with another upstream each row is asked of it
in its own shape. The inputs are the profile's signup fields, typed from it (or, for a tensor model, the
tensors of the input map, --oip-input), plus history and k.
"""

from __future__ import annotations

import time
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from flask import Blueprint, Response, request

from proxy.http.predict import answer_in, read_body
from proxy.http.responses import error_response, json_response, reject
from proxy.runtime import Runtime
from proxy.shapes import triton_binary
from proxy.shapes.request import BadRequest

EXTENSION = "binary_tensor_data"
"""Triton's binary tensor data extension, named in GET /v2 as Triton names it."""


def _oip_get(summary: str, description: str, *errors: tuple[str, str]) -> dict:
    responses = {"200": {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}}
    responses.update({status: {"description": text, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}} for status, text in errors})
    return {"summary": summary, "responses": responses}


def _with_binary_answer(operation: dict) -> dict:
    """The operation with its 200 also in binary: a JSON header, then the tensors' bytes."""
    answer = operation["responses"]["200"]
    answer["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    answer["headers"] = {triton_binary.BINARY_HEADER: {
        "description": "With a binary answer: the length of its JSON header in bytes", "schema": {"type": "integer"}}}
    return operation


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "The model's name, RECGUARD_MODEL_NAME (default recguard)"}]
OPENAPI_PATHS = {
    "/v2": {"get": _oip_get("OIP v2 server metadata", "name, version, extensions")},
    "/v2/health/live": {"get": _oip_get("OIP v2 liveness", "`{\"live\": true}`")},
    "/v2/health/ready": {"get": _oip_get("OIP v2 readiness", "`{\"ready\": true}`", ("503", "Not loaded yet"))},
    "/v2/models/{name}": {"get": {**_oip_get("OIP v2 model metadata: an input per signup field, history, k",
                                             "name, versions, platform, inputs, outputs",
                                             ("404", "No model of this name"), ("503", "Not loaded yet")),
                                  "parameters": _NAME}},
    "/v2/models/{name}/ready": {"get": {**_oip_get("OIP v2 model readiness", "`{\"name\", \"ready\"}`",
                                                   ("404", "No model of this name"), ("503", "Not loaded yet")),
                                        "parameters": _NAME}},
    "/v2/models/{name}/infer": {"post": _with_binary_answer({
        **_oip_get("OIP v2 inference, JSON tensors or binary ones (Triton's binary tensor data extension, "
                   "with Inference-Header-Content-Length); outputs items and scores, source and anomalies in "
                   "parameters",
                   "The inference response", ("400", "Not an OIP v2 request, a malformed binary body, bad k or "
                                                     "history"),
                   ("404", "No model of this name"), ("413", "Body over the size limit"),
                   ("503", "Not loaded yet")),
        "parameters": _NAME,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})},
}
"""The /v2 endpoints in the OpenAPI document."""


def _recguard_version() -> str:
    try:
        return package_version("recguard")
    except PackageNotFoundError:
        return "unknown"


def oip_blueprint(runtime: Runtime) -> Blueprint:
    """The /v2 endpoints of `runtime`."""
    blueprint = Blueprint("oip", __name__)
    model_name = runtime.settings.server.model_name
    version = _recguard_version()

    def unknown(name: str) -> Response | None:
        if name != model_name:
            return error_response(f"no model named {name[:64]!r} here; this one is {model_name!r}", 404)
        return None

    @blueprint.get("/v2")
    def server_metadata() -> Response:
        return json_response({"name": "recguard", "version": version, "extensions": [EXTENSION]})

    @blueprint.get("/v2/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @blueprint.get("/v2/health/ready")
    def ready() -> Response:
        return json_response({"ready": runtime.loaded is not None}, 200 if runtime.loaded is not None else 503)

    @blueprint.get("/v2/models/<name>/ready")
    def model_ready(name: str) -> Response:
        return unknown(name) or json_response({"name": name, "ready": runtime.loaded is not None},
                                              200 if runtime.loaded is not None else 503)

    @blueprint.get("/v2/models/<name>")
    def metadata(name: str) -> Response:
        if (refused := unknown(name)) is not None:
            return refused
        loaded = runtime.wait_loaded()
        if loaded is None:
            return error_response("model not loaded yet", 503)
        return json_response(loaded.oip.metadata(loaded.bundle.profile, name, loaded.model_version))

    @blueprint.post("/v2/models/<name>/infer")
    def infer(name: str) -> Response:
        if (refused := unknown(name)) is not None:
            return refused
        started = time.perf_counter()
        response = _infer()
        if runtime.loaded is not None:
            runtime.loaded.metrics.latency.observe(time.perf_counter() - started)
        return response

    def _infer() -> Response:
        loaded = runtime.wait_loaded()
        if loaded is None:
            return error_response("model not loaded yet", 503)
        # OIP clients need not say what they send (tritonclient sends no Content-Type): the body decides,
        # JSON, or binary tensors after a JSON header when Inference-Header-Content-Length says how long it is
        body = read_body(runtime, json_type=False)
        if isinstance(body, Response):
            return body
        try:
            length = triton_binary.header_length(request.headers.get(triton_binary.BINARY_HEADER), len(body))
        except BadRequest as exc:
            return reject(loaded.metrics, str(exc), exc.status)
        parse = None if length is None else partial(loaded.oip.parse, json_length=length)
        # in front of an oip-v2 upstream the body goes to it as it came; before another, row by row in its shape
        return answer_in(runtime, loaded, loaded.oip, body, parse)

    return blueprint
