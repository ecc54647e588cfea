"""The Flask app: parse, delegate, answer. No business logic lives in a route."""

from __future__ import annotations

import hmac
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

import redis
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from model.bundle import Bundle, load_bundle
from proxy.http.dashboard import dashboard_blueprint
from proxy.http.health import health_report
from proxy.http.openapi import openapi_document
from proxy.models.service import Recommender
from proxy.request import BadRequest, parse_predict_body
from proxy.runtime import Runtime
from proxy.settings import Settings
from proxy.store.anomaly_query import parse_time, query_anomalies
from proxy.store.counters import Counters, make_redis_client

log = logging.getLogger("recguard.app")

JSON_TYPES = ("application/json",)
SOURCE_HEADER = "X-Recguard-Source"
DEFAULT_SINCE = "15m"
STARTUP_WAIT_SECONDS = 5.0


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; NaN never leaves the proxy (allow_nan=False)."""
    return Response(json.dumps(body, allow_nan=False), status=status, mimetype="application/json", headers=headers)


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _is_json(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def create_app(
    settings: Settings,
    bundle: Bundle | None = None,
    redis_client: redis.Redis | None = None,
    *,
    bundle_loader: Callable[[str], Bundle] = load_bundle,
    model: Recommender | None = None,
) -> Flask:
    """Build the proxy. With no `bundle`, it is loaded in the background from settings.bundle
    (the worker answers /livez at once and /readyz once loaded). `model` replaces the bundle's
    scorer (a model that fails, in tests)."""
    app = Flask("recguard")
    # One byte more than allowed: werkzeug stops reading a body without Content-Length (chunked) at
    # this limit and returns what it read, so the limit itself must be a size no body may reach.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1

    counters = None
    if settings.guard:
        redis_client = redis_client or make_redis_client(settings.redis_url, settings.redis_timeout)
        counters = Counters(redis_client, prefix=settings.redis_prefix, ttl_seconds=settings.counter_ttl_seconds,
                            flush_interval=settings.flush_interval, max_pending=settings.max_pending_counts)
        counters.start()
    else:
        redis_client = None
    runtime = Runtime(settings, counters, model, redis_client)
    app.extensions["recguard"] = runtime
    if bundle is not None:
        runtime.install(bundle)
    else:
        runtime.load_in_background(bundle_loader)

    def reject(message: str, status: int) -> Response:
        if runtime.loaded is not None:
            runtime.loaded.metrics.rejected.labels(str(status)).inc()
        log.info("request rejected", extra={"status": status, "reason": message, "path": request.path})
        return error_response(message, status)

    @app.post("/predict")
    @app.post("/invocations")
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
            return reject("Content-Type must be application/json", 415)
        try:
            body = request.get_data(cache=False)
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001
            # The WSGI server's own framing errors surface here (gunicorn raises its ParseException
            # for a malformed chunked body): the client's fault, not an internal error.
            return reject("body could not be read: malformed chunked encoding or cut short", 400)
        if len(body) > settings.max_body_bytes:
            return reject(f"body larger than {settings.max_body_bytes} bytes", 413)
        try:
            parsed = parse_predict_body(body, default_k=settings.default_k, max_k=settings.max_k,
                                        max_history=settings.max_history)
        except BadRequest as exc:
            return reject(str(exc), exc.status)
        prediction = loaded.service.predict(parsed)
        response = json_response(
            {"items": prediction.items, "scores": prediction.scores, "source": prediction.source,
             "model_version": loaded.model_version,
             "anomalies": [anomaly.to_json() for anomaly in prediction.anomalies]},
            headers={SOURCE_HEADER: prediction.source},
        )
        loaded.metrics.latency.observe(time.perf_counter() - started)
        return response

    @app.get("/livez")
    def livez() -> Response:
        return json_response({"status": "alive"})

    @app.get("/readyz")
    @app.get("/ping")
    def readyz() -> Response:
        if runtime.loaded is not None:
            return json_response({"status": "ready", "model_version": runtime.loaded.model_version})
        if runtime.error is not None:
            return json_response({"status": "failed", "error": runtime.error}, 503)
        return json_response({"status": "loading"}, 503)

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response(health_report(runtime, redis_client, settings.redis_prefix))

    @app.get("/anomalies")
    def anomalies() -> Response:
        if redis_client is None:
            return error_response("anomaly counting is off (--no-guard)", 404)
        now = datetime.now(timezone.utc)
        try:
            since = parse_time(request.args.get("since", DEFAULT_SINCE), now)
            until = parse_time(request.args["until"], now) if "until" in request.args else now
            report = query_anomalies(redis_client, settings.redis_prefix, since, until,
                                     field=request.args.get("field"), kind=request.args.get("kind"))
        except ValueError as exc:
            return error_response(str(exc), 400)
        except redis.RedisError:
            return error_response("redis unavailable: anomaly counts cannot be read right now", 503)
        monitor = runtime.loaded.alarms if runtime.loaded is not None else None
        if monitor is not None:
            report.alarms = [alarm.to_json() for alarm in monitor.active]
        return json_response(report.to_json())

    @app.get("/alarms")
    def alarms() -> Response:
        monitor = runtime.loaded.alarms if runtime.loaded is not None else None
        if monitor is None:
            return error_response("drift alarms are off (--no-guard, or the bundle is not loaded yet)", 404)
        return json_response({"alarms": [alarm.to_json() for alarm in monitor.active],
                              "last_error": monitor.last_error})

    @app.post("/alarms/<path:alarm_id>/clear")
    def clear_alarm(alarm_id: str) -> Response:
        monitor = runtime.loaded.alarms if runtime.loaded is not None else None
        if not settings.admin_token or monitor is None:
            return error_response("admin endpoints are off: no admin token is configured", 404)
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, f"Bearer {settings.admin_token}".encode()):
            log.warning("alarm clear refused: admin token missing or wrong",
                        extra={"alarm": alarm_id, "remote": request.remote_addr})
            return error_response("admin token missing or wrong (Authorization: Bearer <token>)", 403)
        try:
            cleared = monitor.clear(alarm_id)
        except redis.RedisError:
            return error_response("redis unavailable: the alarm cannot be cleared right now", 503)
        if not cleared:
            return error_response("no active alarm with this id", 404)
        return json_response({"cleared": alarm_id})

    @app.get("/metrics")
    def metrics() -> Response:
        if runtime.loaded is None:
            return error_response("model not loaded yet", 503)
        payload, content_type = runtime.loaded.metrics.render()
        return Response(payload, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return json_response(openapi_document())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return reject(f"body larger than {settings.max_body_bytes} bytes", 413)
        return error_response(exc.description or exc.name, status)

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": request.path})
        return error_response("internal error", 500)

    app.register_blueprint(dashboard_blueprint())
    return app
