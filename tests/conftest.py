"""Shared fixtures: a real redis-server per test session on a free port, cleaned between tests;
the unit / integration / system marks; the hypothesis profiles.

Marks (registered in pyproject.toml, `--strict-markers`): a test marked `system` by its module
(`pytestmark`) or itself runs real gunicorn or other child processes; otherwise a test that uses
`redis_server` or `redis_client` (directly or through `app`, `client`, `settings`) is
`integration`; every other test is `unit`. The marks are checked while the tests run: a unit test
that starts any process, or an integration test that starts anything but redis-server, fails and
says which mark it needs. `pytest -m unit` is the fast loop (no server, no Redis).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.harness.servers import RedisServer

# CI replays the same examples every run (a failure there is reproducible by rerunning);
# elsewhere each run draws new ones. HYPOTHESIS_PROFILE picks either explicitly.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

KINDS = ("unit", "integration", "system")
REDIS_FIXTURES = {"redis_server", "redis_client"}
CLUSTER_GROUP = "redis-cluster"


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        marked = [kind for kind in KINDS if item.get_closest_marker(kind)]
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked {' and '.join(marked)}; one kind per test")
        if not marked:
            item.add_marker("integration" if REDIS_FIXTURES & set(item.fixturenames) else "unit")
        # For pytest-xdist's --dist loadgroup (make test): a test file runs on one worker, so its
        # module fixtures are built once, and every test of the Redis Cluster on the same worker,
        # so the suite starts one six-node cluster rather than one per worker.
        item.add_marker(pytest.mark.xdist_group(
            CLUSTER_GROUP if "redis_cluster" in item.fixturenames else item.nodeid.split("::")[0]))


_current: list = [None]
"""The test being set up, run or torn down (its fixtures included, whatever their scope)."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item
    try:
        return (yield)
    finally:
        _current[0] = None


_popen_init = subprocess.Popen.__init__


def _checked_popen_init(self, args, *rest, **kwargs):
    """Fail a unit test that starts a process, or an integration test that starts one other than
    redis-server (fixtures of any scope count for the test they are set up for): the mark would lie
    about what `pytest -m unit` or `-m "not system"` runs."""
    item = _current[0]
    if item is not None and not item.get_closest_marker("system"):
        program = Path(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0])).name
        kind = "unit" if item.get_closest_marker("unit") else "integration"
        if kind == "unit" or program != "redis-server":
            needed = "system" if program != "redis-server" else "integration"
            pytest.fail(f"{item.nodeid}: a {kind} test started {program!r}: mark it {needed}", pytrace=False)
    _popen_init(self, args, *rest, **kwargs)


subprocess.Popen.__init__ = _checked_popen_init


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """One real Redis Cluster (3 primaries + 3 replicas) for the whole session: started once."""
    from tests.harness.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(redis_cluster):
    """The session's cluster, whole again (nodes a previous test killed restarted) and empty."""
    redis_cluster.repair()
    redis_cluster.flushall()
    yield redis_cluster
    redis_cluster.repair()
    redis_cluster.flushall()


@pytest.fixture(scope="session")
def tiny_holdout(tiny_data) -> list[dict]:
    """The held-out request bodies of tiny_data."""
    from tests.harness.proxy import holdout_requests

    return holdout_requests(tiny_data)


@pytest.fixture(scope="session")
def loaded_bundle(tiny_bundle):
    """tiny_bundle, loaded."""
    from model.bundle import load_bundle

    return load_bundle(tiny_bundle)
