"""The serving image, built for real and run: it serves a full bundle and a guard-only bundle, is ready
within 5 s, weighs under 500 MB and holds no torch.

Building takes a minute or more of both cores, so these tests run only when asked:
IMAGE_TEST=1 (not a RECGUARD_* name, which `recguard serve` would refuse as an unknown setting).
They need a builder (buildah, or docker with a running daemon) and a base image (PYTHON_IMAGE,
else python:3.11-slim or scripts/make_base_image.sh's image if either is there); without one
they are skipped with the reason. docs/operations.md has the figures.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from model.bundle import load_bundle
from model.dataset import load_dataset
from model.profile import write_guard_bundle
from tests.deploy.conftest import ROOT
from tests.harness.proxy import ProxyProcess
from tests.harness.servers import free_port
from tests.harness.upstream_server import UpstreamServer

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.environ.get("IMAGE_TEST") != "1",
                       reason="builds the container image (a minute or more of both cores): IMAGE_TEST=1 runs it"),
]

BASES = ("python:3.11-slim", "localhost/recguard-base:bookworm")
"""Base images tried in turn when PYTHON_IMAGE is not set; the second is scripts/make_base_image.sh's."""
TAG = "localhost/recguard-test:runtime"
MAX_BYTES = 500_000_000
START_SECONDS = 5.0


def _ok(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, timeout=60, check=False).returncode == 0


def find_builder() -> str:
    """buildah, or docker when its daemon answers; skips the module with the reason otherwise."""
    if shutil.which("buildah"):
        # chroot isolation runs where buildah itself is in a container (no cgroup controllers of its own).
        os.environ.setdefault("BUILDAH_ISOLATION", "chroot")
        return "buildah"
    if shutil.which("docker"):
        if _ok("docker", "info"):
            return "docker"
        pytest.skip("no image builder: docker is installed but no daemon answers, and buildah is not installed")
    pytest.skip("no image builder: neither buildah nor docker is installed")


def has_image(builder: str, name: str) -> bool:
    if builder == "buildah":
        return _ok("buildah", "inspect", "--type", "image", name)
    return _ok("docker", "image", "inspect", name)


def find_base(builder: str) -> str:
    wanted = os.environ.get("PYTHON_IMAGE")
    for name in [wanted] if wanted else BASES:
        if has_image(builder, name):
            return name
    pytest.skip(f"no base image among {[wanted] if wanted else list(BASES)} (no registry to pull from here): "
                f"scripts/make_base_image.sh makes {BASES[1]}, or set PYTHON_IMAGE")


def image_bytes(builder: str, name: str) -> int:
    if builder == "docker":
        return int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", name], capture_output=True,
                                  text=True, check=True).stdout)
    shown = subprocess.run(["buildah", "images", "--format", "{{.Size}}", name], capture_output=True, text=True,
                           check=True).stdout.split("\n")[0]
    number, unit = re.fullmatch(r"([0-9.]+)\s*([kMG]?B)", shown.strip()).groups()
    return int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


class Image:
    """The built serving image and how to run a command in it, on the host's network."""

    def __init__(self, builder: str, tag: str):
        self.builder, self.tag = builder, tag
        self.containers: list[str] = []

    def command(self, *args: str, mounts: dict[Path, str] | None = None, env: dict[str, str] | None = None) -> list[str]:
        """The command line that runs `args` (the image's own CMD when empty) in a fresh container."""
        volumes = [item for source, target in (mounts or {}).items() for item in ("-v", f"{source}:{target}:ro")]
        variables = [item for key, value in (env or {}).items() for item in ("--env", f"{key}={value}")]
        if self.builder == "docker":
            return ["docker", "run", "--rm", "--network", "host", *volumes, *variables, self.tag, *args]
        container = subprocess.run(["buildah", "from", "--pull-never", self.tag], capture_output=True, text=True,
                                   check=True).stdout.strip()
        self.containers.append(container)
        # buildah run needs the command spelled out: the image's CMD, as the Dockerfile says.
        return ["buildah", "run", "--network", "host", *volumes, *variables, container, "--",
                *(args or ("recguard", "serve"))]

    def remove(self) -> None:
        for container in self.containers:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        remove = ["docker", "rmi"] if self.builder == "docker" else ["buildah", "rmi"]
        subprocess.run([*remove, self.tag], capture_output=True, check=False)


@pytest.fixture(scope="module")
def image():
    builder = find_builder()
    base = find_base(builder)
    build = (["buildah", "bud", "--format", "docker"] if builder == "buildah" else ["docker", "build"])
    started = time.monotonic()
    run = subprocess.run([*build, "--build-arg", f"PYTHON_IMAGE={base}", "-t", TAG, str(ROOT)],
                         capture_output=True, text=True, timeout=1800, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"built {TAG} on {base} with {builder} in {time.monotonic() - started:.1f} s")
    built = Image(builder, TAG)
    yield built
    built.remove()


def serve(image: Image, bundle: Path, redis_url: str, tmp_path: Path, *, env: dict[str, str] | None = None):
    """The image's own command serving `bundle` (mounted at /bundle, as docs/operations.md runs it)."""
    port = free_port()
    server = ProxyProcess(bundle, redis_url, log_path=tmp_path / "serve.log")
    server.command = image.command(mounts={bundle: "/bundle"},
                                   env={"RECGUARD_BIND": f"0.0.0.0:{port}", "RECGUARD_REDIS_URL": redis_url, **(env or {})})
    server.env, server.port, server.url = {**os.environ}, port, f"http://127.0.0.1:{port}"
    return server


def stop(server: ProxyProcess) -> None:
    """SIGTERM to the builder's process group: the server in the container is in it too."""
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


def test_the_serving_image_is_under_500_mb(image):
    size = image_bytes(image.builder, image.tag)
    print(f"{image.tag}: {size / 1e6:.0f} MB")
    assert size < MAX_BYTES


def started_within_limit(server, what: str) -> None:
    """Start the containerised server and hold it to START_SECONDS until /readyz answers."""
    started = time.monotonic()
    server.start(timeout=30)
    ready = time.monotonic() - started
    print(f"{what} ready in {ready:.2f} s")
    assert ready < START_SECONDS, f"ready after {ready:.1f} s"


def test_the_image_serves_a_full_bundle_and_is_ready_within_5_s(image, tiny_bundle, tiny_holdout, redis_server,
                                                                  tmp_path):
    server = serve(image, tiny_bundle, redis_server.url, tmp_path)
    try:
        started_within_limit(server, "full bundle (both workers loaded it)")
        answer = server.predict(tiny_holdout[0])
        assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"
        assert server.get("/livez").status_code == 200
    finally:
        stop(server)


def test_the_image_serves_a_guard_only_bundle_in_front_of_an_upstream(image, tiny_data, tiny_holdout, redis_server,
                                                                      tmp_path):
    guard = write_guard_bundle(load_dataset(tiny_data), tmp_path / "guard")
    upstream = UpstreamServer(list(load_bundle(guard).catalogue)).start()
    server = serve(image, guard, redis_server.url, tmp_path, env={"RECGUARD_UPSTREAM_URL": upstream.url})
    try:
        started_within_limit(server, "guard-only bundle")
        answer = server.post("/invocations", json=tiny_holdout[0])
        assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"
        assert upstream.requests == 1
    finally:
        stop(server)
        upstream.stop()


def test_the_image_has_no_torch_and_train_says_what_to_install(image):
    no_torch = subprocess.run(image.command("python", "-c", "import torch"), capture_output=True, text=True,
                              timeout=120, check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    train = subprocess.run(image.command("recguard", "train", "--data", "/nowhere", "--out", "/tmp/bundle"),
                           capture_output=True, text=True, timeout=120, check=False)
    assert train.returncode == 2
    said = [line for line in train.stderr.splitlines() if line.startswith("recguard train:")]  # buildah adds its own
    assert len(said) == 1 and said[0].endswith("pip install 'recguard[train]'"), train.stderr
