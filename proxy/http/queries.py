"""What anyone on the team may ask: anomaly counts over a time range, the active drift and quality alarms, live quality."""

from __future__ import annotations

from datetime import datetime, timezone

import redis
from flask import Blueprint, Response, request

from proxy.http.responses import error_response, json_response
from proxy.quality.report import parse_group_keys, query_quality
from proxy.runtime import Runtime, offline_figures
from proxy.store.anomaly_query import parse_time, query_anomalies
from proxy.words import KINDS

DEFAULT_SINCE = "15m"
DEFAULT_QUALITY_SINCE = "1h"


def active_alarms(runtime: Runtime) -> list[dict]:
    """Every active alarm of this worker as JSON: drift alarms, then quality alarms."""
    loaded = runtime.loaded
    if loaded is None:
        return []
    drift = [alarm.to_json() for alarm in loaded.drift_monitor.active] if loaded.drift_monitor is not None else []
    quality = [alarm.to_json() for alarm in loaded.quality_monitor.active] if loaded.quality_monitor is not None else []
    return drift + quality


def queries_blueprint(runtime: Runtime) -> Blueprint:
    """GET /anomalies and GET /alarms of `runtime`."""
    blueprint = Blueprint("queries", __name__)
    prefix = runtime.settings.redis.prefix

    @blueprint.get("/anomalies")
    def anomalies() -> Response:
        client = runtime.redis_client
        if client is None:
            return error_response("anomaly counting is off (--no-guard)", 404)
        kind = request.args.get("kind")
        if kind is not None and kind not in KINDS:
            return error_response(f"unknown kind {kind[:40]!r}: one of {', '.join(KINDS)}", 400)
        now = datetime.now(timezone.utc)
        try:
            since = parse_time(request.args.get("since", DEFAULT_SINCE), now)
            until = parse_time(request.args["until"], now) if "until" in request.args else now
            report = query_anomalies(client, prefix, since, until,
                                     field=request.args.get("field"), kind=kind)
        except ValueError as exc:
            return error_response(str(exc), 400)
        except redis.RedisError:
            return error_response("redis unavailable: anomaly counts cannot be read right now", 503)
        report.alarms = active_alarms(runtime)
        return json_response(report.to_json())

    @blueprint.get("/alarms")
    def alarms() -> Response:
        monitor = runtime.loaded.drift_monitor if runtime.loaded is not None else None
        if monitor is None:
            return error_response("drift alarms are off (--no-guard, or the bundle is not loaded yet)", 404)
        quality = runtime.loaded.quality_monitor
        return json_response({"alarms": active_alarms(runtime),
                              "last_error": monitor.last_error or (quality.last_error if quality else None)})

    @blueprint.get("/quality")
    def quality() -> Response:
        loaded = runtime.loaded
        if loaded is None or loaded.quality_monitor is None:
            return error_response("live quality is off: no RECGUARD_FEEDBACK_SECRET is configured "
                                  "(or the bundle is not loaded yet)", 404)
        now = datetime.now(timezone.utc)
        try:
            since = parse_time(request.args.get("since", DEFAULT_QUALITY_SINCE), now)
            until = parse_time(request.args["until"], now) if "until" in request.args else now
            per_minute = request.args.get("series", "0")
            if per_minute not in ("0", "1"):
                raise ValueError(f"series: expected 0 or 1, got {per_minute!r}")
            report = query_quality(runtime.redis_client, prefix, since, until, parse_group_keys(request.args.get("by")),
                                   segment=request.args.get("segment"), per_minute=per_minute == "1")
        except ValueError as exc:
            return error_response(str(exc), 400)
        except redis.RedisError:
            return error_response("redis unavailable: quality counts cannot be read right now", 503)
        report.offline = offline_figures(loaded.bundle)
        report.alarms = [alarm.to_json() for alarm in loaded.quality_monitor.active]
        return json_response(report.to_json())

    return blueprint
