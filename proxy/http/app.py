"""The Flask app factory: a blueprint per concern over one Runtime. No business logic lives in a route."""

from __future__ import annotations

import logging
from typing import Callable

import redis
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from model.bundle import Bundle, load_bundle
from model.recommender import Recommender
from proxy.http.admin import admin_blueprint
from proxy.http.dashboard import dashboard_blueprint
from proxy.http.feedback import feedback_blueprint
from proxy.http.oip import oip_blueprint
from proxy.http.ops import ops_blueprint
from proxy.http.predict import predict_blueprint
from proxy.http.queries import queries_blueprint
from proxy.http.responses import error_response, reject
from proxy.runtime import Runtime
from proxy.settings import Settings

log = logging.getLogger("recguard.app")


def create_app(
    settings: Settings,
    bundle: Bundle | None = None,
    redis_client: redis.Redis | None = None,
    *,
    bundle_loader: Callable[[str], Bundle] = load_bundle,
    model: Recommender | None = None,
) -> Flask:
    """Build the proxy. With no `bundle`, it is loaded in the background from settings.server.bundle
    (the worker answers /livez at once and /readyz once loaded). `redis_client` replaces the one the
    settings name; `model` replaces the bundle's scorer (a model that fails, in tests)."""
    app = Flask("recguard")
    limits = settings.limits
    # One byte more than allowed: werkzeug stops reading a body without Content-Length (chunked) at
    # this limit and returns what it read, so the limit itself must be a size no body may reach.
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes + 1

    runtime = Runtime(settings, redis_client=redis_client, model=model)
    app.extensions["recguard"] = runtime
    if bundle is not None:
        runtime.install(bundle)
    else:
        runtime.load_in_background(bundle_loader)

    for blueprint in (predict_blueprint(runtime), oip_blueprint(runtime), ops_blueprint(runtime), queries_blueprint(runtime),
                      feedback_blueprint(runtime), admin_blueprint(runtime), dashboard_blueprint()):
        app.register_blueprint(blueprint)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return reject(runtime.metrics, f"body larger than {limits.max_body_bytes} bytes", 413)
        response = error_response(exc.description or exc.name, status)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # RFC 9110: a 405 lists the methods the resource does support
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": request.path})
        return error_response("internal error", 500)

    return app
