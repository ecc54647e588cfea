"""What operations poll: liveness, readiness, health, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response

from proxy.http.health import health_report
from proxy.http.openapi import openapi_document
from proxy.http.responses import error_response, json_response
from proxy.runtime import Runtime


def ops_blueprint(runtime: Runtime) -> Blueprint:
    """/livez, /readyz (alias /ping), /healthz, /metrics and /openapi.json of `runtime`."""
    blueprint = Blueprint("ops", __name__)

    @blueprint.get("/livez")
    def livez() -> Response:
        return json_response({"status": "alive"})

    @blueprint.get("/readyz")
    @blueprint.get("/ping")
    def readyz() -> Response:
        if runtime.loaded is not None:
            return json_response({"status": "ready", "model_version": runtime.loaded.model_version})
        if runtime.error is not None:
            return json_response({"status": "failed", "error": runtime.error}, 503)
        return json_response({"status": "loading"}, 503)

    @blueprint.get("/healthz")
    def healthz() -> Response:
        return json_response(health_report(runtime, runtime.redis_client, runtime.settings.redis.prefix))

    @blueprint.get("/metrics")
    def metrics() -> Response:
        if runtime.loaded is None:
            return error_response("model not loaded yet", 503)
        payload, content_type = runtime.loaded.metrics.render()
        return Response(payload, content_type=content_type)

    built: list[dict] = []

    @blueprint.get("/openapi.json")
    def openapi() -> Response:
        # generated from the bundle's profile once it is loaded (the request schema lists its fields)
        loaded = runtime.loaded
        if loaded is None:
            return json_response(openapi_document(None, runtime.settings))
        if not built:
            built.append(openapi_document(loaded.bundle.profile, runtime.settings))
        return json_response(built[0])

    return blueprint
