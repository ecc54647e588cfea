"""gunicorn configuration for `recguard serve` (and for a plain `gunicorn proxy.http.wsgi:app` in the repo root).

Workers are sync by default (RECGUARD_WORKER_CLASS): a request is a few hundred microseconds
of CPU, so threads in a worker add only GIL hand-offs, and gthread's keep-alive connections
pin a client to one worker and unbalance the two; measured in docs/benchmarks.md ("Choosing
the worker class"). gthread stays a setting for clients that are slow or hold connections open
without a buffering load balancer in front. Choose it with RECGUARD_WORKER_CLASS, not with
gunicorn's --worker-class flag: threads are given to gthread only. In upstream mode (auto) workers
are gthread: a request there waits on the network, and threads overlap the waits
(docs/benchmarks.md, "The cost of the hop").
The bundle is loaded in each worker after the fork (no preload): nothing torch-like runs in
the master, and each worker's flusher thread is started where it will live.
"""

import logging
import os
import shutil

from gunicorn import glogging

from proxy.settings import Settings
from proxy.words import SYNC_WORKER


class Logger(glogging.Logger):
    """gunicorn's logger, minus building every request's access-log fields when the access
    logger would drop the line: gunicorn builds them whenever a logconfig is set, about 1 % of
    a request's time in scripts/profile_proxy.py (docs/benchmarks.md)."""

    def access(self, resp, req, environ, request_time):
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


_settings = Settings.from_env()

bind = _settings.server.bind
workers = _settings.server.workers
# gunicorn quietly swaps sync for gthread when threads > 1: sync means one thread
threads = _settings.worker_threads
# sync is gunicorn's sync worker plus a drain of the listen backlog on SIGTERM (proxy/http/workers.py)
worker_class = "proxy.http.workers.SyncWorker" if _settings.worker_class == SYNC_WORKER else _settings.worker_class
timeout = 30
graceful_timeout = 10
keepalive = 5
preload_app = False
# gunicorn's runtime control socket sits at one fixed path per user: two instances on one
# host (replicas, tests) would fight over it, and we do not use it.
control_socket_disable = True
accesslog = None
# (a custom logger_class also means gunicorn's statsd logger is not switched in by --statsd-host:
# recguard's metrics are Prometheus, /metrics)
logger_class = Logger
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "proxy.http.logs.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stderr"], "level": _settings.server.log_level.upper()},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def on_exit(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


def post_fork(server, worker):
    # POST /admin/reload signals the arbiter (proxy/http/reload.py)
    from proxy.http.reload import note_arbiter

    note_arbiter(worker.ppid)


def worker_exit(server, worker):
    # SIGTERM and max-requests restarts end here: flush the worker's pending counts before it goes.
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("recguard") if app is not None else None
    if runtime is not None:
        runtime.close()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
