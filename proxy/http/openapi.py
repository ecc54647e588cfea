"""The OpenAPI 3.1 document of the proxy's HTTP API, served at /openapi.json."""

from __future__ import annotations

import math
from typing import Any, Mapping

from proxy.guard.checks import FieldRule, compile_rules
from proxy.http.oip import OPENAPI_PATHS as OIP_PATHS
from proxy.quality.desk import MAX_ITEM_ID
from proxy.settings import Settings
from proxy.words import HOLDBACK, KINDS, SOURCES

ANOMALY_KINDS = list(KINDS)


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


def _predict(summary: str, upstream: bool) -> dict[str, Any]:
    answer = _json("Prediction", "Recommended items")
    body = {"$ref": "#/components/schemas/PredictRequest"}
    extra: dict[str, Any] = {}
    if upstream:
        # the upstream's shape, not recguard's: its body as it came, its answer as it came
        body = {"type": "object", "description": "A body in the upstream's shape (RECGUARD_UPSTREAM_PROTOCOL and "
                                                 "the request pointers)"}
        answer = {"description": "The upstream's answer as it came, or the fallback's in the upstream's shape",
                  "content": {"application/json": {"schema": {}}}}
        extra = {"4XX": {"description": "The upstream's own refusal of the caller's request, passed back as it came",
                         "content": {"application/json": {"schema": {}}}}}
    return {
        "summary": summary,
        "description": "Checks the request against the training profile; answers from the model, or from the "
                       "popularity fallback when the model cannot be trusted with it. Signup fields of any JSON type "
                       "are accepted and answered (200): a value the model cannot take is an anomaly, not an error.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            **extra,
            "200": {**answer,
                    "headers": {"X-Recguard-Source": {"schema": {"type": "string", "enum": list(SOURCES)}},
                                "X-Request-Id": {"schema": {"type": "string"},
                                                 "description": "The caller's X-Request-Id, else a new one"},
                                "X-Recguard-Anomalies": {"schema": {"type": "string"},
                                                         "description": "The anomalies as field:kind, comma-separated "
                                                                        "(when there are any)"},
                                "X-Recguard-Ticket": {"schema": {"type": "string"},
                                                      "description": "The signed feedback ticket (when feedback is on)"}}},
            "400": _error("Empty, not UTF-8, not JSON, nested too deeply, not an object, bad k or bad history"),
            "405": _NOT_ALLOWED,
            "413": _error("Body over the size limit"),
            "415": _error("Content-Type is not JSON"),
            "503": _error("Bundle not loaded yet"),
        },
    }


_TIME = {"type": "string", "anyOf": [{"pattern": "^[0-9]{1,9}[smhd]$"}, {"format": "date-time"}]}

_NOT_ALLOWED = {**_error("Method not allowed on this path"),
                "headers": {"Allow": {"schema": {"type": "string"}, "description": "The methods the path takes"}}}


def _get(summary: str, response: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": response, "405": _NOT_ALLOWED,
                                                      **extra.pop("responses", {})}, **extra}}


def _request_schema(profile: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """PredictRequest: the profile's fields as the model expects them (described, not constrained: the
    proxy answers any value), history and k as the proxy checks them (a 400 otherwise)."""
    limits = settings.limits
    properties: dict[str, Any] = {}
    if profile is not None:
        rules = compile_rules(profile, range_tolerance=settings.guard.range_tolerance,
                              required_presence=settings.guard.required_presence)
        properties = {rule.name: {"description": _expected(rule)} for rule in rules}
    properties["history"] = {"type": ["array", "null"], "items": {"type": "string"}, "maxItems": limits.max_history,
                             "description": "Item ids, most recent last; null is none"}
    properties["k"] = {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_k, "default": limits.default_k,
                       "description": "Items to return: a number with no fractional part (10, 10.0, 1e1); null is the default"}
    return {"type": "object", "description": "The signup fields of the training profile, plus history and k. "
                                             "See `recguard contract` for the schema of a request the guard passes untouched.",
            "properties": properties, "additionalProperties": True}


def _expected(rule: FieldRule) -> str:
    role = "model feature" if rule.feature else "checked, not read by the model"
    if rule.numeric:
        shown = "a number" + (f" in [{rule.low:g}, {rule.high:g}]" if math.isfinite(rule.low) else "")
    elif rule.domain is not None:
        shown = "one of " + ", ".join(sorted(rule.domain)[:20])
    else:
        shown = "a string"
    need = "required" if rule.required else "optional"
    return f"{role}, {need}: {shown}; anything else is answered from the fallback with an anomaly"


def openapi_document(profile: Mapping[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """The whole document, for the bundle's profile (None before it is loaded)."""
    ready = {"200": _json("Status", "Ready"), "405": _NOT_ALLOWED, "503": _json("Status", "Loading or failed")}
    not_ready = {"503": _error("Bundle not loaded yet")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "recguard", "version": "1", "description": "A guarded drop-in endpoint for a recommender."},
        "paths": {
            "/predict": {"post": {**_predict("Recommend items for a signup request", settings.upstream.enabled),
                                  "operationId": "predict"}},
            "/invocations": {"post": {**_predict("SageMaker alias of /predict", settings.upstream.enabled),
                                      "operationId": "invocations"}},
            "/livez": _get("Process alive (never depends on Redis)", _json("Status", "Alive")),
            "/readyz": {"get": {"summary": "Ready once the bundle is loaded", "responses": ready}},
            "/ping": {"get": {"summary": "SageMaker alias of /readyz", "responses": ready}},
            "/healthz": _get("Health for load balancers and monitors", _json("Health", "Health report")),
            "/anomalies": _get(
                "Anomaly counts over a time range", _json("AnomalyReport", "Counts"),
                parameters=[
                    {"name": "since", "in": "query", "schema": {**_TIME, "default": "15m"},
                     "description": "A duration back from now (90s, 15m, 1h, 2d) or an ISO-8601 time; empty is a 400. "
                                    "At most 7 days before until (older counts have expired)"},
                    {"name": "until", "in": "query", "schema": _TIME,
                     "description": "Like since, not before it; default now; empty is a 400"},
                    {"name": "field", "in": "query", "schema": {"type": "string"}},
                    {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ANOMALY_KINDS},
                     "description": "Any other value is a 400 listing the kinds"},
                ],
                responses={"400": _error("Bad or empty time, since after until, unknown kind"),
                           "404": _error("Anomaly counting is off (no guard)"), "503": _error("Redis unavailable")},
            ),
            "/alarms": _get(
                "The active drift alarms, shared by every worker and replica", _json("AlarmList", "Active alarms"),
                responses={"404": _error("Drift alarms are off (no guard, or the bundle is not loaded yet)")}),
            "/alarms/{alarm_id}/clear": {"post": {
                "operationId": "clearAlarm",
                "summary": "Clear a drift alarm by hand (its segment goes back to the model)",
                "description": "Needs `Authorization: Bearer <RECGUARD_ADMIN_TOKEN>`. The cell is judged again only on "
                               "data that arrives after the clear.",
                "security": [{"adminToken": []}],
                "parameters": [{"name": "alarm_id", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "The alarm's id, `<field>:<segment>`"}],
                "responses": {
                    "200": {"description": "Cleared", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["cleared"], "properties": {"cleared": {"type": "string"}}}}}},
                    "401": {**_error("No Authorization header"), "headers": {"WWW-Authenticate": {
                        "schema": {"type": "string"}, "description": "Bearer"}}},
                    "403": _error("Admin token wrong"),
                    "405": _NOT_ALLOWED,
                    "404": _error("No such active alarm, or no admin token configured (endpoint off)"),
                    "503": _error("Redis unavailable"),
                },
            }},
            "/admin/reload": {"post": {
                "operationId": "reload",
                "summary": "Serve the bundle on disk again without a restart (gunicorn's graceful reload)",
                "description": "Needs `Authorization: Bearer <RECGUARD_ADMIN_TOKEN>`. The bundle is checked first; "
                               "then new workers load it and the old ones finish what they hold.",
                "security": [{"adminToken": []}],
                "responses": {
                    "202": {"description": "Reloading", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["reloading", "model_version", "serving"],
                        "properties": {"reloading": {"type": "string"}, "model_version": {"type": "string"},
                                       "serving": {"type": ["string", "null"]}}}}}},
                    "401": {**_error("No Authorization header"), "headers": {"WWW-Authenticate": {
                        "schema": {"type": "string"}, "description": "Bearer"}}},
                    "403": _error("Admin token wrong"),
                    "404": _error("No admin token configured (endpoint off)"),
                    "405": _NOT_ALLOWED,
                    "409": _error("Not running under gunicorn"),
                    "422": _error("The bundle on disk cannot be served (nothing reloaded)"),
                },
            }},
            "/feedback": {"post": {
                "operationId": "feedback",
                "summary": "Report what the user took after an answer: its ticket, the item, the event",
                "description": "One event `{ticket, item, event}` or a batch `{events: [...]}` of up to 1,000. "
                               "The same (ticket, item, event) counts once. Needs `Authorization: Bearer "
                               "<RECGUARD_FEEDBACK_TOKEN>` when that is set.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/FeedbackRequest"}}}},
                "responses": {
                    "202": {"description": "Accepted for counting", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["accepted", "rejected"],
                        "properties": {"accepted": {"type": "integer"}, "rejected": {"type": "array"}}}}}},
                    "400": _error("Malformed body, event or ticket"),
                    "401": _error("Feedback token missing"),
                    "403": _error("Ticket forged or altered, or feedback token wrong"),
                    "404": _error("Feedback is off (no RECGUARD_FEEDBACK_SECRET)"),
                    "405": _NOT_ALLOWED,
                    "410": _error("Ticket expired"),
                    "413": _error("Body over the size limit"),
                    "415": _error("Content-Type is not JSON"),
                },
            }},
            "/quality": _get(
                "Live hit rates per model version, source and segment, with 95 % Wilson intervals",
                _json("QualityReport", "Live quality"),
                parameters=[
                    {"name": "since", "in": "query", "schema": {**_TIME, "default": "1h"}},
                    {"name": "until", "in": "query", "schema": _TIME,
                     "description": "Like since, not before it; default now; empty is a 400"},
                    {"name": "by", "in": "query", "schema": {"type": "string", "default": "version,source,segment"},
                     "description": "Comma-separated subset of version, source, segment"},
                ],
                responses={"400": _error("Bad time range or grouping"), "404": _error("Feedback is off"),
                           "503": _error("Redis unavailable")},
            ),
            "/metrics": _get("Prometheus metrics", {"description": "Prometheus text format",
                                                     "content": {"text/plain": {"schema": {"type": "string"}}}},
                             responses=not_ready),
            "/dashboard": _get("The anomaly dashboard (a self-contained HTML page)",
                               {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}),
            **OIP_PATHS,
            "/openapi.json": _get("This document", {"description": "OpenAPI 3.1",
                                                    "content": {"application/json": {"schema": {"type": "object"}}}}),
        },
        "components": {"schemas": {
            "PredictRequest": _request_schema(profile, settings),
            "Anomaly": {"type": "object", "required": ["field", "kind", "detail"], "properties": {
                "field": {"type": "string"}, "kind": {"type": "string", "enum": ANOMALY_KINDS}, "detail": {"type": "string"}}},
            "Prediction": {"type": "object", "required": ["items", "scores", "source", "model_version", "anomalies"],
                           "properties": {
                               "items": {"type": "array", "items": {"type": "string"}},
                               "scores": {"type": "array", "items": {"type": "number"}},
                               "source": {"type": "string", "enum": list(SOURCES)},
                               "model_version": {"type": "string"},
                               "ticket": {"type": "string", "description": "The feedback ticket, when feedback is on"},
                               "anomalies": {"type": "array", "items": {"$ref": "#/components/schemas/Anomaly"}}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Alarm": {"type": "object", "required": ["id", "kind", "field", "segment", "detail", "raised_at"],
                      "properties": {
                          "id": {"type": "string", "description": "`<field>:<segment>`"},
                          "kind": {"type": "string", "enum": ["drift"]},
                          "field": {"type": "string"}, "segment": {"type": "string"},
                          "detail": {"type": "string",
                                     "description": "e.g. `<field> in <segment> looks ×2.205: kg→lb?`"},
                          "unit": {"type": ["string", "null"], "description": "The unit change it looks like, if any"},
                          "raised_at": {"type": "string", "format": "date-time"},
                          "ratio": {"type": ["number", "null"], "description": "Window mean / training mean"},
                          "z": {"type": ["number", "null"], "description": "Standard errors from the training mean"},
                          "window": {"type": ["object", "null"], "description": "The window the alarm quotes: count, mean, std"},
                          "training": {"type": ["object", "null"], "description": "The training baseline: mean, std"},
                          "share": {"type": ["number", "null"],
                                    "description": "The share of values that look scaled by the unit, when only a share does"}}},
            "QualityAlarm": {"type": "object", "required": ["id", "kind", "version", "segment", "baseline", "detail"],
                             "properties": {
                                 "id": {"type": "string", "description": "`quality:<version>:<segment>:<baseline>`"},
                                 "kind": {"type": "string", "enum": ["quality"]},
                                 "version": {"type": "string"}, "segment": {"type": "string"},
                                 "baseline": {"type": "string", "enum": [HOLDBACK, "offline"]},
                                 "detail": {"type": "string"}, "statistic": {"type": "number"},
                                 "impressions": {"type": "integer"}, "hit_rate": {"type": "number"},
                                 "expected": {"type": ["number", "null"]}}},
            "AnyAlarm": {"oneOf": [{"$ref": "#/components/schemas/Alarm"}, {"$ref": "#/components/schemas/QualityAlarm"}]},
            "FeedbackEvent": {"type": "object", "required": ["ticket", "item"], "additionalProperties": False,
                              "properties": {"ticket": {"type": "string", "minLength": 1},
                                             "item": {"type": "string", "minLength": 1, "maxLength": MAX_ITEM_ID},
                                             "event": {"type": "string", "enum": ["click", "purchase"],
                                                       "default": "click"}}},
            "FeedbackRequest": {"oneOf": [
                {"$ref": "#/components/schemas/FeedbackEvent"},
                {"type": "object", "required": ["events"], "additionalProperties": False, "properties": {
                    "events": {"type": "array", "minItems": 1, "maxItems": 1000,
                               "items": {"$ref": "#/components/schemas/FeedbackEvent"}}}}]},
            "QualityReport": {"type": "object", "required": ["since", "until", "by", "groups"], "properties": {
                "since": {"type": "string"}, "until": {"type": "string"}, "by": {"type": "array"},
                "groups": {"type": "array", "items": {"type": "object", "properties": {
                    "version": {"type": "string"}, "source": {"type": "string"}, "segment": {"type": "string"},
                    "impressions": {"type": "integer"}, "feedback": {"type": "integer"}, "hits": {"type": "integer"},
                    "answers_hit": {"type": "integer"}, "hit_rate": {"type": ["number", "null"]},
                    "interval": {"type": ["array", "null"]}, "mrr": {"type": ["number", "null"]}}}},
                "offline": {"type": "object"},
                "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/QualityAlarm"}}}},
            "AlarmList": {"type": "object", "required": ["alarms"], "properties": {
                "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/AnyAlarm"}},
                "last_error": {"type": ["string", "null"],
                               "description": "Why the last refresh failed (the last known alarms stay in force)"}}},
            "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
            "Health": {"type": "object", "required": ["status", "redis", "alarms"], "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "worker": {"type": "integer", "description": "The answering worker's process id: health is one worker's view"},
                "model_version": {"type": ["string", "null"]},
                "redis": {"type": "string", "enum": ["up", "down", "disabled"]},
                "rates": {"type": ["object", "null"]},
                "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/AnyAlarm"}},
                "feedback": {"type": ["object", "null"]}}},
            "AnomalyReport": {"type": "object", "required": ["requests", "anomalous_requests", "fallback_requests"],
                              "properties": {
                                  "requests": {"type": "integer"}, "anomalous_requests": {"type": "integer"},
                                  "fallback_requests": {"type": "integer"},
                                  "by_field": {"type": "object"}, "by_kind": {"type": "object"},
                                  "series": {"type": "array", "items": {"type": "object"}},
                                  "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/AnyAlarm"}}}},
        }, "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "RECGUARD_ADMIN_TOKEN"}}},
    }
