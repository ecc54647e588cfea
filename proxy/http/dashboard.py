"""GET /dashboard: one self-contained page that draws the last hour from /anomalies and /healthz.

The page is static (inline script, SVG drawn by hand, no CDN) so it works offline and costs
the proxy nothing: all the numbers come from the JSON endpoints it polls.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

PAGE = Path(__file__).with_name("dashboard.html")


def dashboard_blueprint() -> Blueprint:
    """A blueprint serving the dashboard page at GET /dashboard."""
    blueprint = Blueprint("dashboard", __name__)
    html = PAGE.read_bytes()

    @blueprint.get("/dashboard")
    def dashboard() -> Response:
        return Response(html, mimetype="text/html", headers={
            "Cache-Control": "no-cache",
            # The page loads nothing from elsewhere; say so, so an injected script could not either.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        })

    return blueprint
