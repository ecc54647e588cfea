"""What changes state, behind the admin token: clearing an alarm, reloading the bundle."""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from typing import Callable

import redis
from flask import Blueprint, Response, request

from model.bundle import BundleError, load_bundle
from proxy.http.reload import reload_workers
from proxy.http.responses import error_response, json_response
from proxy.runtime import Runtime

log = logging.getLogger("recguard.app")


REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two log lines about refused admin requests (each line gives the count since the last)."""


class RefusalLog:
    """Logs refused admin attempts at most once per interval, with their count: a fuzzer or a
    password-guessing client must not fill the log (a line per attempt was 38,946 lines in one run)."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._unlogged = 0
        self._logged_at = -math.inf

    def refused(self, status: int) -> None:
        """Count one refusal; log the count when the interval since the last line is over."""
        with self._lock:
            self._unlogged += 1
            now = self._clock()
            if now - self._logged_at < self._interval:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        log.warning("admin requests refused: token missing or wrong",
                    extra={"refused": count, "last_status": status, "remote": request.remote_addr})


def admin_blueprint(runtime: Runtime) -> Blueprint:
    """POST /alarms/<id>/clear and POST /admin/reload of `runtime`; off (404) while no admin token is configured."""
    blueprint = Blueprint("admin", __name__)
    token = runtime.settings.admin.token
    refusals = RefusalLog()

    def refuse(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        if runtime.loaded is not None:
            runtime.loaded.metrics.admin_refused.labels(str(status)).inc()
        refusals.refused(status)
        return json_response({"error": message}, status, headers)

    @blueprint.post("/alarms/<path:alarm_id>/clear")
    def clear_alarm(alarm_id: str) -> Response:
        loaded = runtime.loaded
        monitor = loaded.drift_monitor if loaded is not None else None
        if alarm_id.startswith("quality:") and loaded is not None:
            monitor = loaded.quality_monitor
        if not token or monitor is None:
            return error_response("admin endpoints are off: no admin token is configured", 404)
        refused = unauthorized()
        if refused is not None:
            return refused
        try:
            cleared = monitor.clear(alarm_id)
        except redis.RedisError:
            return error_response("redis unavailable: the alarm cannot be cleared right now", 503)
        if not cleared:
            return error_response("no active alarm with this id", 404)
        return json_response({"cleared": alarm_id})

    @blueprint.post("/admin/reload")
    def reload() -> Response:
        if not token:
            return error_response("admin endpoints are off: no admin token is configured", 404)
        refused = unauthorized()
        if refused is not None:
            return refused
        path = runtime.settings.server.bundle
        try:
            bundle = load_bundle(path)
        except (BundleError, OSError) as exc:
            return error_response(f"the bundle at {path} cannot be served, nothing reloaded: {exc}", 422)
        serving = runtime.loaded.bundle.model_version if runtime.loaded is not None else None
        if not reload_workers():
            return error_response("not running under gunicorn (recguard serve): restart to load the bundle", 409)
        log.info("reload asked for", extra={"serving": serving, "loading": bundle.model_version})
        return json_response({"reloading": str(path), "model_version": bundle.model_version, "serving": serving}, 202)

    def unauthorized() -> Response | None:
        supplied = request.headers.get("Authorization", "")
        if not supplied:
            # RFC 9110/6750: no credentials is 401 with the scheme to use; wrong ones are 403
            return refuse("admin token missing (Authorization: Bearer <token>)", 401,
                          {"WWW-Authenticate": 'Bearer realm="recguard admin"'})
        if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
            return refuse("admin token wrong (Authorization: Bearer <token>)", 403)
        return None

    return blueprint
