"""Serving fixtures: the proxy in-process (Flask test client); tests.harness.proxy runs it as a real
gunicorn process over HTTP."""

from __future__ import annotations

import pytest

from proxy.http.app import create_app
from proxy.settings import Settings


@pytest.fixture
def settings(tiny_bundle, redis_server) -> Settings:
    return Settings.from_env({}, bundle=tiny_bundle, redis_url=redis_server.url, flush_interval=0.05)


@pytest.fixture
def app(settings, loaded_bundle, redis_client):
    application = create_app(settings, loaded_bundle)
    yield application
    application.extensions["recguard"].close()


@pytest.fixture
def client(app):
    return app.test_client()
