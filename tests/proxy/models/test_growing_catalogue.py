"""A catalogue that grows: new products known to a guard-only bundle without new logs profiled, and
served without a restart (`recguard profile --catalogue-only`, POST /admin/reload)."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import requests

from model.bundle import load_bundle
from proxy.cli.main import main
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream_server import UpstreamServer

pytestmark = pytest.mark.system  # real gunicorn (tests/conftest.py)

NEW_ITEMS = ["no_such_item_1", "no_such_item_2"]
"""What the test upstream answers in its 'outside' mode: the products added since the bundle."""
TOKEN = "catalogue-admin-token"


def with_new_items(tiny_data, into):
    """A copy of the logs whose items.csv lists the new products (as a catalogue export would)."""
    copy = shutil.copytree(tiny_data, into)
    items = (copy / "items.csv").read_text().splitlines()
    last = items[-1].split(",")
    items += [",".join([item, *last[1:]]) for item in NEW_ITEMS]
    (copy / "items.csv").write_text("\n".join(items) + "\n")
    return copy


def test_catalogue_only_keeps_the_profile_and_adds_the_items(tiny_data, tmp_path, capsys):
    assert main(["profile", "--data", str(tiny_data), "--out", str(tmp_path / "guard")]) == 0
    before = load_bundle(tmp_path / "guard")
    grown = with_new_items(tiny_data, tmp_path / "grown")
    capsys.readouterr()
    assert main(["profile", "--catalogue-only", "--data", str(grown), "--out", str(tmp_path / "guard")]) == 0
    assert "2 items added" in capsys.readouterr().err
    after = load_bundle(tmp_path / "guard")
    assert after.catalogue == before.catalogue + NEW_ITEMS
    assert after.profile["fields"] == before.profile["fields"] and after.profile["data_sha256"] == before.profile["data_sha256"]
    assert after.profile["catalogue"]["count"] == len(before.catalogue) + 2
    assert after.model_version != before.model_version


def test_catalogue_only_refuses_a_bundle_with_the_built_in_model(tiny_bundle, tiny_data, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "full")
    assert main(["profile", "--catalogue-only", "--data", str(tiny_data), "--out", str(copy)]) == 2
    assert "scores only the items it was trained on: retrain it" in capsys.readouterr().err
    assert load_bundle(copy).model_version == load_bundle(tiny_bundle).model_version


def test_a_reload_serves_the_new_catalogue_without_a_failed_request(tiny_data, redis_server, tiny_holdout, tmp_path):
    assert main(["profile", "--data", str(tiny_data), "--out", str(tmp_path / "guard")]) == 0
    upstream = UpstreamServer(list(load_bundle(tmp_path / "guard").catalogue)).start()
    upstream.mode = "outside"
    proxy = ProxyProcess(tmp_path / "guard", redis_server.url, "--upstream", upstream.url, workers=2,
                         log_path=tmp_path / "proxy.log",
                         env={"RECGUARD_ADMIN_TOKEN": TOKEN, "RECGUARD_REDIS_PREFIX": "growing"}).start()
    statuses, anomalies, stop = [], [], threading.Event()

    def traffic():
        session = requests.Session()
        while not stop.is_set():
            for body in tiny_holdout[:20]:
                answer = session.post(proxy.url + "/predict", json=body, timeout=10)
                statuses.append(answer.status_code)
                anomalies.append(answer.headers.get("X-Recguard-Anomalies", ""))

    try:
        old_version = proxy.get("/healthz").json()["model_version"]
        assert proxy.predict(tiny_holdout[0]).headers["X-Recguard-Anomalies"] == "model:unknown_item"
        sender = threading.Thread(target=traffic)
        sender.start()
        grown = with_new_items(tiny_data, tmp_path / "grown")
        assert main(["profile", "--catalogue-only", "--data", str(grown), "--out", str(tmp_path / "guard")]) == 0
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = proxy.post("/admin/reload", headers=auth)
        assert answer.status_code == 202, answer.text
        new_version = answer.json()["model_version"]
        assert answer.json()["serving"] == old_version != new_version
        deadline = time.monotonic() + 30
        while proxy.get("/healthz").json()["model_version"] != new_version or len(statuses) < 50:
            assert time.monotonic() < deadline, "the new bundle was never served"
            time.sleep(0.2)
        time.sleep(1.0)  # both new workers answer; the old ones are gone
        stop.set()
        sender.join(timeout=30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert anomalies[-1] == "" and proxy.predict(tiny_holdout[0]).headers.get("X-Recguard-Anomalies") is None
        assert "model:unknown_item" in anomalies  # the traffic did run across the reload
        assert proxy.post("/admin/reload").status_code == 401
        assert proxy.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
        # a bundle broken on disk is refused before any worker goes
        with (tmp_path / "guard" / "profile.json").open("a") as handle:
            handle.write(" ")
        refused = proxy.post("/admin/reload", headers=auth)
        assert refused.status_code == 422 and "profile.json: checksum does not match" in refused.json()["error"]
        time.sleep(1.0)
        assert proxy.get("/healthz").json()["model_version"] == new_version
        assert proxy.predict(tiny_holdout[0]).status_code == 200
    finally:
        stop.set()
        proxy.stop()
        upstream.stop()
