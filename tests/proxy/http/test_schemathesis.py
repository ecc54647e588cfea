"""The OpenAPI document describes what the server does: schemathesis against a real gunicorn finds nothing.

Bounded (15 examples per operation, deterministic generation) so it stays a normal test; the run's
settings are in schemathesis.toml beside this file, with the two checks left out and why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.proxy import ProxyProcess

TOKEN = "schemathesis-admin-token"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.system
def test_schemathesis_finds_nothing(tiny_bundle, redis_server, redis_client, tmp_path):
    server = ProxyProcess(tiny_bundle, redis_server.url, workers=2, log_path=tmp_path / "proxy.log",
                          env={"RECGUARD_ADMIN_TOKEN": TOKEN}).start()
    try:
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run",
             f"{server.url}/openapi.json", "--no-shrink", "--workers", "1", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "passed" in run.stdout.lower(), run.stdout[-2000:]
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.stop()
