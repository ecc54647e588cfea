"""POST /feedback: the site hands back an answer's ticket with the item the user took.

From a browser too: pages of the origins in RECGUARD_FEEDBACK_ORIGINS may post cross-origin (CORS,
preflight answered), with `fetch` and a JSON body or with `navigator.sendBeacon`, whose string body
goes as text/plain (a CORS simple request, so text/plain is taken only from those origins).
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from proxy.http.predict import is_json
from proxy.http.responses import error_response, json_response
from proxy.quality.desk import FeedbackError
from proxy.runtime import Runtime

PREFLIGHT_MAX_AGE = 600
"""Seconds a browser may keep a preflight's answer."""


def feedback_blueprint(runtime: Runtime) -> Blueprint:
    """POST /feedback of `runtime`; off (404) while no feedback secret is configured."""
    blueprint = Blueprint("feedback", __name__)
    settings = runtime.settings
    origins = frozenset(settings.feedback.origin_list)

    def allowed_origin() -> str | None:
        """What Access-Control-Allow-Origin answers the request's Origin with, None: not allowed."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    @blueprint.after_request
    def cross_origin(response: Response) -> Response:
        if request.endpoint != "feedback.feedback":
            return response
        response.headers.add("Vary", "Origin")
        allowed = allowed_origin()
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
        return response

    def preflight() -> Response:
        if allowed_origin() is None:
            return error_response("this origin may not post feedback: it is not in RECGUARD_FEEDBACK_ORIGINS", 403)
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        return response

    @blueprint.route("/feedback", methods=["POST", "OPTIONS"])
    def feedback() -> Response:
        if request.method == "OPTIONS":
            return preflight()
        loaded = runtime.wait_loaded()
        desk = loaded.desk if loaded is not None else None
        if desk is None:
            return error_response("feedback is off: no RECGUARD_FEEDBACK_SECRET is configured "
                                  "(or the bundle is not loaded yet)", 404)
        token = settings.feedback.token
        if token:
            supplied = request.headers.get("Authorization", "")
            if not supplied:
                return _unauthorized()
            if not hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode()):
                return error_response("feedback token wrong", 403)
        beacon = request.mimetype == "text/plain" and allowed_origin() is not None
        if not (is_json(request.mimetype) or beacon):
            return error_response("Content-Type must be application/json (text/plain only from the browser "
                                  "origins of RECGUARD_FEEDBACK_ORIGINS, as navigator.sendBeacon sends it)", 415)
        body = request.get_data(cache=False)
        if len(body) > settings.limits.max_body_bytes:
            return error_response(f"body larger than {settings.limits.max_body_bytes} bytes", 413)
        try:
            reading = desk.read(body)
        except FeedbackError as exc:
            loaded.metrics.feedback_rejected.labels(str(exc.status)).inc()
            return error_response(str(exc), exc.status)
        for _, error in reading.errors:
            loaded.metrics.feedback_rejected.labels(str(error.status)).inc()
        if not reading.batch and reading.errors:
            error = reading.errors[0][1]
            return error_response(str(error), error.status)
        rejected = [{"index": index, "status": error.status, "error": str(error)} for index, error in reading.errors]
        if not reading.events:
            return json_response({"error": "no event could be counted", "accepted": 0, "rejected": rejected},
                                 reading.errors[0][1].status)
        desk.ledger.accept(reading.events)
        return json_response({"accepted": len(reading.events), "rejected": rejected}, 202)

    def _unauthorized() -> Response:
        response = error_response("feedback token missing (Authorization: Bearer <token>)", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="recguard feedback"'
        return response

    return blueprint
