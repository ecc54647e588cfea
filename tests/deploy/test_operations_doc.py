"""docs/operations.md stays true: every setting is documented, every metric it names exists."""

from __future__ import annotations

import re

from proxy.metrics import Metrics
from proxy.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import ROOT

OPERATIONS = ROOT / "docs" / "operations.md"


def test_every_setting_is_documented():
    text = OPERATIONS.read_text()
    missing = [name for name in (ENV_PREFIX + name.upper() for name in Settings.names()) if f"`{name}`" not in text]
    assert missing == [], "add these settings to the table in docs/operations.md"


def test_every_documented_setting_exists():
    known = {ENV_PREFIX + name.upper() for name in Settings.names()}
    assert set(re.findall(r"`(RECGUARD_[A-Z_]+)`", OPERATIONS.read_text())) <= known


def test_every_metric_named_exists():
    exposed = set()
    for family in Metrics(["weight_kg"]).registry.collect():
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
    assert set(re.findall(r"\b(recguard_[a-z_]+)", OPERATIONS.read_text())) <= exposed
