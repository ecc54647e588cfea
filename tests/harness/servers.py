"""Throwaway servers for the tests and the scripts: a free loopback port and a redis-server of our own.

One copy for both, in the test harness that the tests and the scripts import (the scripts put the
repository root on their path). It lives here and not in the package because the product never
starts a server: only the tests and the benchmarks do.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process of our own on 127.0.0.1, nothing saved unless asked: start, stop,
    restart on the same port (`appendonly` keeps an AOF in `directory` across restarts;
    `appendfsync` sets its fsync policy)."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False,
                 appendfsync: str | None = None):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start the server and wait until it answers PING; RuntimeError when it does not."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make install puts it there)")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
                   "--logfile", str(self.directory / "redis.log")]
        if self.appendfsync:
            command += ["--appendfsync", self.appendfsync]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                # ours, not a server another test process started on the same port in the moment
                # between free_port() and our bind (ours then exits)
                if client.info("server")["process_id"] == self.process.pid:
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.directory / 'redis.log'})")

    def stop(self) -> None:
        """Terminate the server (SIGTERM) and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def client(self, **kwargs) -> redis.Redis:
        """A plain client that decodes replies."""
        return redis.Redis(port=self.port, decode_responses=True, **kwargs)


def start_redis(directory: Path) -> RedisServer:
    """A throwaway redis-server on a free port, nothing persisted, already answering."""
    return RedisServer(directory).start()


class RedisRelay:
    """A TCP relay in front of a Redis server, for faults no real server can be asked for:
    `delay` holds every chunk, either way, that many seconds (a slow network or an overloaded
    server, settable while it runs); `drop_replies` set swallows the replies (Redis runs the
    commands, the client never hears back)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.drop_replies = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()
        self.listener.close()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                if not (replies and self.drop_replies.is_set()):
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self.closed.set()
