"""The OpenAPI document describes what the server does: schemathesis against a real gunicorn finds nothing.

Bounded (15 examples per operation, deterministic generation) so it stays a normal test; the run's
settings are in schemathesis.toml beside this file, with the two checks left out and why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.bundle import load_bundle
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream_server import UpstreamServer

TOKEN = "schemathesis-admin-token"
CONFIG = Path(__file__).with_name("schemathesis.toml")


MODES = ["bundle", "feedback", "upstream"]
"""The server as it runs: the bundle's model; with feedback on (/feedback and /quality exist, answers
carry tickets, alarms can be cleared); in upstream mode in front of a team's endpoint."""


@pytest.mark.system
@pytest.mark.parametrize("mode", MODES)
def test_schemathesis_finds_nothing(tiny_bundle, tiny_holdout, redis_server, redis_client, tmp_path, mode):
    env = {"RECGUARD_ADMIN_TOKEN": TOKEN}
    upstream = None
    if mode == "feedback":
        env["RECGUARD_FEEDBACK_SECRET"] = "schemathesis-feedback-secret-0123456789"
    if mode == "upstream":
        upstream = UpstreamServer(list(load_bundle(tiny_bundle).catalogue)).start()
        env["RECGUARD_UPSTREAM_URL"] = upstream.url
    server = ProxyProcess(tiny_bundle, redis_server.url, workers=2, log_path=tmp_path / "proxy.log", env=env).start()
    try:
        if mode == "feedback":  # the document the server serves must hold what feedback adds
            paths = server.get("/openapi.json").json()["paths"]
            assert {"/feedback", "/quality"} <= set(paths)
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run",
             f"{server.url}/openapi.json", "--no-shrink", "--workers", "1", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "passed" in run.stdout.lower(), run.stdout[-2000:]
        assert "Traceback" not in server.log_path.read_text()
        if upstream is not None:  # the server did stand in front of the upstream: a clean request reaches it
            answer = server.predict(tiny_holdout[0])
            assert answer.headers["X-Recguard-Source"] == "model" and upstream.requests >= 1
    finally:
        server.stop()
        if upstream is not None:
            upstream.stop()
