"""The second world end to end: a film service's own columns, trained, profiled, served by real
gunicorn and guarded over HTTP as the shop is, with nothing of the shop's columns anywhere."""

from __future__ import annotations

import json

import pytest

from model.bundle import load_bundle
from model.dataset import load_dataset
from model.evaluate import evaluate, read_holdout
from model.synthetic import generate
from model.train import TrainConfig, train
from proxy.cli.main import main
from tests.harness.proxy import ProxyProcess

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


@pytest.fixture(scope="module")
def streaming_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("streaming") / "data"
    generate(out, world="streaming", users=600, items=300, holdout=150, seed=1)
    return out


@pytest.fixture(scope="module")
def streaming_bundle(streaming_data, tmp_path_factory):
    config = TrainConfig(epochs=8, batch_size=512, validation_users=60)
    return train(load_dataset(streaming_data), tmp_path_factory.mktemp("streaming") / "bundle", config,
                 holdout=read_holdout(streaming_data))


@pytest.fixture(scope="module")
def requests_(streaming_data):
    return read_holdout(streaming_data)[0]


@pytest.fixture(scope="module")
def proxy(streaming_bundle, redis_server):
    process = ProxyProcess(streaming_bundle, redis_server.url, workers=1).start()
    yield process
    process.stop()


def test_its_own_columns_are_declared_and_profiled(streaming_data, streaming_bundle):
    assert (streaming_data / "movies.csv").read_text().startswith("movie_id,genre,year\n")
    bundle = load_bundle(streaming_bundle)
    fields = bundle.profile["fields"]
    assert bundle.profile["segment_field"] == "occupation"
    assert {name for name, spec in fields.items() if spec["role"] == "feature"} == {"age", "gender", "occupation"}
    assert {name for name, spec in fields.items() if spec["personal"]} == {"postcode", "city"}
    assert "domain" not in fields["postcode"] and "01234" not in json.dumps(fields["postcode"])
    assert [spec["field"] for spec in bundle.scoring["inputs"]] == ["gender", "occupation", "age"]
    assert bundle.manifest["evaluation"] == evaluate(streaming_bundle, streaming_data)


def test_clean_traffic_is_served_by_the_model(proxy, requests_):
    for body in requests_[:40]:
        answer = proxy.predict(body)
        assert answer.status_code == 200
        assert answer.json()["source"] == "model" and answer.json()["anomalies"] == []
        assert len(answer.json()["items"]) == 10 and not set(answer.json()["items"]) & set(body["history"])


def _kinds(answer) -> set[tuple[str, str]]:
    return {(anomaly["field"], anomaly["kind"]) for anomaly in answer.json()["anomalies"]}


def test_an_unknown_occupation_goes_to_the_fallback(proxy, requests_):
    answer = proxy.predict(requests_[0] | {"occupation": "astronaut"})
    assert answer.json()["source"] == "fallback" and ("occupation", "unknown_category") in _kinds(answer)


def test_age_in_months_goes_to_the_fallback(proxy, requests_):
    body = requests_[1]
    answer = proxy.predict(body | {"age": body["age"] * 12})
    assert answer.json()["source"] == "fallback" and ("age", "out_of_range") in _kinds(answer)


def test_a_renamed_personal_field_is_named_and_never_echoed(proxy, requests_):
    body = dict(requests_[2])
    body["zip_code"] = body.pop("postcode")
    answer = proxy.predict(body)
    assert answer.json()["source"] == "model"
    assert ("zip_code", "suspected_rename") in _kinds(answer)
    assert body["zip_code"] not in answer.text
    details = {anomaly["kind"]: anomaly["detail"] for anomaly in answer.json()["anomalies"]}
    assert details["suspected_rename"] == "postcode → zip_code"


def test_a_merged_field_is_named(proxy, requests_):
    body = dict(requests_[3])
    body["address"] = f"{body.pop('postcode')} {body.pop('city')}"
    answer = proxy.predict(body)
    assert answer.json()["source"] == "model" and ("address", "suspected_merge") in _kinds(answer)
    assert body["address"] not in answer.text


def test_the_guard_only_bundle_of_the_same_data_checks_the_same_way(streaming_data, requests_, tmp_path, capsys):
    assert main(["profile", "--data", str(streaming_data), "--out", str(tmp_path / "guard")]) == 0
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(body) + "\n" for body in requests_))
    assert main(["check", "--bundle", str(tmp_path / "guard"), str(bodies)]) == 0
    capsys.readouterr()
    bodies.write_text(json.dumps(requests_[0] | {"age": requests_[0]["age"] * 12}) + "\n")
    assert main(["check", "--bundle", str(tmp_path / "guard"), str(bodies)]) == 1
    assert "out_of_range" in capsys.readouterr().out
