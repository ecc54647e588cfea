"""Shared fixtures: a real redis-server per test session on a free port, cleaned between tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway redis-server process the tests own: start, stop, restart on the same port."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False):
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make install puts it there)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)



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

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small generated data directory (400 training users, 200 items, 100 held-out requests), seed 1."""
    from model.synthetic import generate

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate(out, users=400, items=200, holdout=100, seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_data, tmp_path_factory) -> Path:
    """A real bundle trained on tiny_data in a few seconds (one torch thread: no spinning against other workers)."""
    from model.dataset import load_dataset
    from model.evaluate import read_holdout
    from model.train import TrainConfig, train

    config = TrainConfig(epochs=8, batch_size=512, threads=1, validation_users=40)
    return train(load_dataset(tiny_data), tmp_path_factory.mktemp("bundles") / "tiny", config,
                 holdout=read_holdout(tiny_data))
