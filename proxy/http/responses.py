"""JSON answers shared by every blueprint: NaN never leaves, errors are `{"error": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, request

from proxy import json_codec
from proxy.metrics import Metrics

log = logging.getLogger("recguard.app")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response; NaN never leaves the proxy (proxy/json_codec.py)."""
    return Response(json_codec.dumps(body), status=status, mimetype="application/json", headers=headers)


def error_response(message: str, status: int) -> Response:
    """A 4xx/5xx answer whose body names what went wrong."""
    return json_response({"error": message}, status)


def reject(metrics: Metrics | None, message: str, status: int) -> Response:
    """A refused request: counted in the metrics (once there are any: a bundle is loaded) and logged
    (without the body), then answered."""
    if metrics is not None:
        metrics.rejected.labels(str(status)).inc()
    log.info("request rejected", extra={"status": status, "reason": message, "path": request.path})
    return error_response(message, status)
