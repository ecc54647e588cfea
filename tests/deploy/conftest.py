"""Fixtures for the deployment files: the repository root, the parsed Dockerfile, the app's real routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.errors import RecguardError
from proxy.http.app import create_app
from proxy.settings import Settings
from tests.deploy.dockerfile import Stage, parse

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stages() -> list[Stage]:
    return parse(ROOT / "Dockerfile")


@pytest.fixture(scope="session")
def get_routes() -> set[str]:
    """Every path create_app answers to GET (no bundle or Redis needed to build the url map)."""
    def no_bundle(path: str):
        raise RecguardError("the url map needs no bundle")

    app = create_app(Settings.from_env({}, guard=False), bundle_loader=no_bundle)
    try:
        return {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
    finally:
        app.extensions["recguard"].close()
