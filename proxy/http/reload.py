"""A new bundle without a restart: gunicorn's own graceful reload, asked for over HTTP.

SIGHUP to gunicorn's arbiter starts new workers, which load the bundle from disk as every worker
does, and stops the old ones gracefully once the new ones are up: no connection is refused and no
request fails on the way (a new worker's first requests wait for its bundle, as at start).
POST /admin/reload checks the bundle on disk first, so a broken one is refused before any worker
goes. The arbiter's pid is noted in each worker after the fork (proxy/http/gunicorn_config.py).
"""

from __future__ import annotations

import os
import signal

ARBITER_PID: int | None = None
"""gunicorn's arbiter, set in each worker after the fork; None outside gunicorn (tests' app)."""


def note_arbiter(pid: int) -> None:
    """Remember the process that SIGHUP reloads (called by gunicorn's post_fork hook)."""
    global ARBITER_PID
    ARBITER_PID = pid


def reload_workers() -> bool:
    """Ask gunicorn for new workers; False when not running under gunicorn."""
    if ARBITER_PID is None:
        return False
    os.kill(ARBITER_PID, signal.SIGHUP)
    return True
