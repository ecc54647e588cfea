"""The serving install has no torch: `recguard serve` of a full bundle and of a guard-only bundle answer
without ever trying to import torch or torch_geometric, and `recguard train` says in one line what to
install. torch is hidden by tests/harness/without_torch (on PYTHONPATH for the child and its workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.bundle import load_bundle
from model.dataset import load_dataset
from model.profile import write_guard_bundle
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream_server import UpstreamServer

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)

WITHOUT_TORCH = Path(__file__).resolve().parents[2] / "harness" / "without_torch"
ROOT = Path(__file__).resolve().parents[3]


def without_torch(attempts: Path) -> dict[str, str]:
    """The environment of a child that cannot import torch and logs every attempt to `attempts`."""
    path = os.pathsep.join([str(WITHOUT_TORCH), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path.rstrip(os.pathsep), "TORCH_IMPORT_ATTEMPTS": str(attempts)}


def tried(attempts: Path) -> list[str]:
    return attempts.read_text().splitlines() if attempts.exists() else []


def test_the_blocker_hides_torch_and_logs_the_attempt(tmp_path):
    """The harness itself: without it torch imports here, with it the import fails and is logged."""
    attempts = tmp_path / "attempts"
    run = subprocess.run([sys.executable, "-c", "import torch_geometric"], capture_output=True, text=True,
                         env={**os.environ, **without_torch(attempts)}, timeout=60, check=False)
    assert run.returncode != 0 and "ModuleNotFoundError" in run.stderr
    assert [line.split()[1] for line in tried(attempts)] == ["torch_geometric"]


def test_serve_of_a_full_bundle_never_imports_torch(tiny_bundle, tiny_holdout, redis_server, tmp_path):
    attempts = tmp_path / "attempts"
    server = ProxyProcess(tiny_bundle, redis_server.url, workers=1, env=without_torch(attempts),
                          log_path=tmp_path / "serve.log").start()
    try:
        answers = [server.predict(body) for body in tiny_holdout[:5]]
        assert [answer.status_code for answer in answers] == [200] * 5
        assert answers[0].headers["X-Recguard-Source"] == "model"
    finally:
        server.stop()
    assert tried(attempts) == []


@pytest.fixture(scope="module")
def guard_only(tiny_data, tmp_path_factory) -> Path:
    return write_guard_bundle(load_dataset(tiny_data), tmp_path_factory.mktemp("guard") / "bundle")


def test_serve_of_a_guard_only_bundle_never_imports_torch(guard_only, tiny_holdout, redis_server, tmp_path):
    upstream = UpstreamServer(list(load_bundle(guard_only).catalogue)).start()
    attempts = tmp_path / "attempts"
    server = ProxyProcess(guard_only, redis_server.url, "--upstream", upstream.url, workers=1,
                          env=without_torch(attempts), log_path=tmp_path / "serve.log").start()
    try:
        answer = server.post("/invocations", json=tiny_holdout[0])
        assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"
        assert upstream.requests == 1
    finally:
        server.stop()
        upstream.stop()
    assert tried(attempts) == []


def test_train_without_the_train_extra_names_the_install_in_one_line(tiny_data, tmp_path):
    attempts = tmp_path / "attempts"
    run = subprocess.run([sys.executable, "-m", "proxy.cli.main", "train", "--data", str(tiny_data),
                          "--out", str(tmp_path / "bundle")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **without_torch(attempts)}, check=False)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [(
        "recguard train: training needs torch and torch_geometric, not installed here (the serving install "
        "leaves them out): pip install 'recguard[train]'")]
    assert not (tmp_path / "bundle").exists()
