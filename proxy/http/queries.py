"""What anyone on the team may ask: anomaly counts over a time range and the active drift alarms."""

from __future__ import annotations

from datetime import datetime, timezone

import redis
from flask import Blueprint, Response, request

from proxy.http.responses import error_response, json_response
from proxy.runtime import Runtime
from proxy.store.anomaly_query import parse_time, query_anomalies

DEFAULT_SINCE = "15m"


def queries_blueprint(runtime: Runtime) -> Blueprint:
    """GET /anomalies and GET /alarms of `runtime`."""
    blueprint = Blueprint("queries", __name__)
    prefix = runtime.settings.redis.prefix

    @blueprint.get("/anomalies")
    def anomalies() -> Response:
        client = runtime.redis_client
        if client is None:
            return error_response("anomaly counting is off (--no-guard)", 404)
        now = datetime.now(timezone.utc)
        try:
            since = parse_time(request.args.get("since", DEFAULT_SINCE), now)
            until = parse_time(request.args["until"], now) if "until" in request.args else now
            report = query_anomalies(client, prefix, since, until,
                                     field=request.args.get("field"), kind=request.args.get("kind"))
        except ValueError as exc:
            return error_response(str(exc), 400)
        except redis.RedisError:
            return error_response("redis unavailable: anomaly counts cannot be read right now", 503)
        monitor = runtime.loaded.alarms if runtime.loaded is not None else None
        if monitor is not None:
            report.alarms = [alarm.to_json() for alarm in monitor.active]
        return json_response(report.to_json())

    @blueprint.get("/alarms")
    def alarms() -> Response:
        monitor = runtime.loaded.alarms if runtime.loaded is not None else None
        if monitor is None:
            return error_response("drift alarms are off (--no-guard, or the bundle is not loaded yet)", 404)
        return json_response({"alarms": [alarm.to_json() for alarm in monitor.active],
                              "last_error": monitor.last_error})

    return blueprint
