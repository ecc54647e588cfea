"""What changes state: clearing a drift alarm, behind the admin token."""

from __future__ import annotations

import hmac
import logging

import redis
from flask import Blueprint, Response, request

from proxy.http.responses import error_response, json_response
from proxy.runtime import Runtime

log = logging.getLogger("recguard.app")


def admin_blueprint(runtime: Runtime) -> Blueprint:
    """POST /alarms/<id>/clear of `runtime`; off (404) while no admin token is configured."""
    blueprint = Blueprint("admin", __name__)
    token = runtime.settings.admin.token

    @blueprint.post("/alarms/<path:alarm_id>/clear")
    def clear_alarm(alarm_id: str) -> Response:
        loaded = runtime.loaded
        monitor = loaded.alarms if loaded is not None else None
        if alarm_id.startswith("quality:") and loaded is not None:
            monitor = loaded.quality
        if not token or monitor is None:
            return error_response("admin endpoints are off: no admin token is configured", 404)
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, f"Bearer {token}".encode()):
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

    return blueprint
