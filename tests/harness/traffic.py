"""Client traffic against real proxies over real HTTP, every request's outcome recorded with its times."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

import requests

from tests.harness.waiting import wait_until


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it."""

    started: float
    seconds: float
    status: int | None
    """None when the connection failed (no HTTP answer)."""
    source: str | None
    error: str | None = None
    """Why there was no answer: the requests exception's class name."""
    connected: float | None = None
    """When connect() returned (the connection was in the server's listen backlog), where timed."""


class Traffic:
    """Client threads posting held-out bodies back to back (each on its own keep-alive connection) to
    one proxy or round robin over several, until stopped or for at most `limit` seconds; every
    outcome is recorded with its start time (time.monotonic)."""

    def __init__(self, urls: str | list[str], bodies: list[dict], threads: int = 4, pause: float = 0.002,
                 limit: float = 120.0):
        self.urls = [f"{url}/predict" for url in ([urls] if isinstance(urls, str) else urls)]
        self.bodies = bodies
        self.pause = pause
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        """Stop the clients, wait for their last requests, return every outcome."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return self.outcomes

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` requests have had their outcome."""
        wait_until(lambda: len(self.outcomes) >= count, timeout, f"{count} requests answered")

    def failed(self) -> list[Outcome]:
        """The outcomes that were no 200."""
        return [outcome for outcome in self.outcomes if outcome.status != 200]

    def _run(self, index: int) -> None:
        session = requests.Session()
        i = index
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            body = self.bodies[i % len(self.bodies)]
            url = self.urls[i % len(self.urls)]
            i += len(self._threads)
            started = time.monotonic()
            try:
                answer = session.post(url, json=body, timeout=10)
                outcome = Outcome(started, time.monotonic() - started, answer.status_code,
                                  answer.headers.get("X-Recguard-Source"))
            except requests.RequestException as exc:
                outcome = Outcome(started, time.monotonic() - started, None, None, type(exc).__name__)
                session = requests.Session()
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(self.pause)


class ConnectionTimedTraffic(Traffic):
    """Traffic over raw sockets, a new connection per request (the sync worker closes each after its
    answer), timed from when connect() returned: from then on the kernel holds the connection in the
    listen backlog, and the request is the server's to answer."""

    def __init__(self, url: str, bodies: list[dict], threads: int = 4, pause: float = 0.002):
        super().__init__(url, bodies, threads, pause)
        host, _, port = url.removeprefix("http://").partition(":")
        self.address = (host, int(port))

    def _run(self, index: int) -> None:
        i = index
        while not self._stop.is_set():
            body = json.dumps(self.bodies[i % len(self.bodies)]).encode()
            i += len(self._threads)
            started = time.monotonic()
            connected = status = error = None
            try:
                with socket.create_connection(self.address, timeout=10) as conn:
                    connected = time.monotonic()
                    conn.sendall(b"POST /predict HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
                                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    answer = b""
                    while chunk := conn.recv(65536):
                        answer += chunk
                status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else None
                error = None if status is not None else "no answer"
            except OSError as exc:
                error = type(exc).__name__
            outcome = Outcome(started, time.monotonic() - started, status, None, error, connected)
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(self.pause)
