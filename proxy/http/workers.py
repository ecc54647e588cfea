"""The gunicorn worker class behind RECGUARD_WORKER_CLASS=sync (the default)."""

from __future__ import annotations

import time

from gunicorn.workers.sync import SyncWorker as GunicornSyncWorker

DRAIN_SECONDS = 1.0
"""How long a stopping worker keeps answering connections that are already waiting."""


class SyncWorker(GunicornSyncWorker):
    """gunicorn's sync worker, plus a drain on a graceful stop (SIGTERM).

    gunicorn's own sync worker leaves its accept loop as soon as its current request is done;
    connections the kernel had already accepted into the listen backlog, requests a client sent
    before the stop, are reset when the last worker closes the socket. This one answers what is
    waiting first, until the backlog is empty or for at most DRAIN_SECONDS (clients that keep
    sending after the stop would otherwise hold it open), then exits as gunicorn's does.
    A quick stop (SIGINT, SIGQUIT) exits without draining, as in gunicorn.
    """

    def run(self) -> None:
        super().run()
        if not self.alive:
            self._drain()

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_SECONDS
        for listener in self.sockets:
            while time.monotonic() < deadline:
                self.notify()
                try:
                    self.accept(listener)
                except OSError:  # EAGAIN: nobody waits; or the listener is gone
                    break
