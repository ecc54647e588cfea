"""Serving helpers for tests and scripts: held-out request bodies, the redesign's changes, and
`recguard serve` as a real gunicorn child process (ProxyProcess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.harness.servers import free_port


def holdout_requests(data_dir: Path) -> list[dict]:
    """The held-out request bodies of a generated data set."""
    with open(data_dir / "holdout.jsonl") as lines:
        return [json.loads(line)["request"] for line in lines]


def renamed_email(body: dict) -> dict:
    """The redesign's first change: `email` sent as `user_email`."""
    body = dict(body)
    body["user_email"] = body.pop("email")
    return body


def merged_names(body: dict) -> dict:
    """The redesign's second change: `first_name` and `last_name` merged into `name`."""
    body = dict(body)
    body["name"] = f"{body.pop('first_name')} {body.pop('last_name')}"
    return body


class ProxyProcess:
    """`recguard serve` in a child process: real gunicorn, real HTTP."""

    def __init__(self, bundle: Path, redis_url: str, *args: str, workers: int = 2, env: dict | None = None,
                 log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(bundle),
                        "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--redis", redis_url, *args]
        self.env = {**os.environ, "RECGUARD_FLUSH_INTERVAL": "0.1", **(env or {})}
        self.workers = workers
        if log_path is None:
            descriptor, name = tempfile.mkstemp(prefix="recguard-proxy-", suffix=".log")
            os.close(descriptor)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> "ProxyProcess":
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=log,
                                            start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /readyz answers and every worker has logged its bundle loaded: sync workers take
        requests in turn, so one ready worker does not make the next request find one. Needs the
        INFO log level (the default): "bundle loaded" is an INFO line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"recguard serve exited with {self.process.returncode}")
            try:
                if (requests.get(self.url + "/readyz", timeout=1).status_code == 200
                        and self.bundles_loaded() >= self.workers):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("proxy did not become ready")

    def bundles_loaded(self) -> int:
        """How many workers have logged "bundle loaded" so far (replacements included)."""
        return self.log_path.read_text(errors="replace").count('"msg": "bundle loaded"')

    def predict(self, body: dict, **kwargs) -> requests.Response:
        return requests.post(self.url + "/predict", json=body, timeout=10, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kwargs)

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def until_every_worker(self, check, what: str, timeout: float = 5.0) -> None:
        """Until every worker's own /healthz passes `check`: health is one worker's view (its alarms,
        breaker, counters) and names the worker, and the kernel, not a rotation, decides which
        worker takes a connection, so "N answers in a row" cannot tell that both workers answered."""
        deadline = time.monotonic() + timeout
        latest: dict[int, bool] = {}
        workers: set[int] = set()
        while time.monotonic() < deadline:
            health = self.get("/healthz").json()
            latest[health["worker"]] = bool(check(health))
            workers = set(self.worker_pids())
            if workers and all(latest.get(pid) for pid in workers):
                return
            time.sleep(0.02)
        pytest.fail(f"not every worker {what} within {timeout} s: workers {sorted(workers)}, last seen {latest}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()
