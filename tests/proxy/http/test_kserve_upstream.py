"""recguard in front of a real KServe ModelServer (tests/harness/kserve_model.py), asked by tritonclient with
its defaults (binary tensors in and out) and with JSON tensors, which tritonclient sends with no Content-Type;
and in front of a tensor model (INPUT__0 FP32 [B, 3] -> OUTPUT__0, OUTPUT__1) through the input map."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from model.bundle import load_bundle
from tests.harness.kserve_model import (
    TENSOR_INPUT,
    TENSOR_ITEMS,
    TENSOR_SCORES,
    KServeServer,
    kserve_missing,
    recommend,
    tensor_recommend,
)
from tests.harness.proxy import ProxyProcess
from tests.proxy.http.test_protocols import client_of, items_of, oip_inputs
from tests.proxy.models.test_upstream import ROOMY, own_prefix

pytestmark = [pytest.mark.system,
              pytest.mark.skipif(kserve_missing() is not None, reason=kserve_missing() or "")]

MODEL = "recsys"


@pytest.fixture(scope="module")
def catalogue(tiny_bundle) -> list[str]:
    return list(load_bundle(tiny_bundle).catalogue)


@pytest.fixture(scope="module")
def profile(tiny_bundle) -> dict:
    return load_bundle(tiny_bundle).profile


@pytest.fixture(scope="module")
def kserve(catalogue, tmp_path_factory):
    server = KServeServer(catalogue, tmp_path_factory.mktemp("kserve"), MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def in_front(tiny_bundle, redis_server, kserve):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", kserve.infer_url,
                          "--upstream-protocol", "oip-v2", "--model-name", MODEL, workers=1, env=ROOMY).start()
    yield server
    server.stop()


def expected(catalogue: list[str], rows: list[dict], k: int = 10) -> list[list[str]]:
    return [recommend(catalogue, row.get("history", []), k) for row in rows]


def test_tritonclient_defaults_through_recguard_to_kserve(in_front, kserve, catalogue, profile, tiny_holdout):
    rows = [tiny_holdout[0], tiny_holdout[1]]
    inputs = oip_inputs(profile, rows, binary=True)
    result = client_of(in_front).infer(MODEL, inputs, request_id="ks-1")
    response = result.get_response()
    assert all("binary_data_size" in output["parameters"] for output in response["outputs"])
    assert items_of(result) == expected(catalogue, rows)
    assert result.as_numpy("scores").dtype == np.float32
    direct = client_of_url(kserve.url).infer(MODEL, inputs, request_id="ks-1")
    assert items_of(direct) == items_of(result) and direct.get_response()["id"] == response["id"] == "ks-1"


def client_of_url(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def test_json_tensors_without_a_content_type_reach_kserve_as_json(in_front, kserve, catalogue, profile,
                                                                   tiny_holdout):
    rows = [tiny_holdout[2]]
    inputs = oip_inputs(profile, rows)
    body, length = triton.InferenceServerClient.generate_request_body(inputs)
    assert length is None
    # KServe itself refuses JSON that does not say it is JSON: what recguard must not forward as is
    refused = requests.post(kserve.infer_url, data=body, timeout=10)
    assert refused.status_code == 400 and "inference-header-content-length" in refused.text
    outputs = [triton.InferRequestedOutput("items", binary_data=False),
               triton.InferRequestedOutput("scores", binary_data=False)]
    result = client_of(in_front).infer(MODEL, inputs, outputs=outputs)
    assert result.get_response()["outputs"][0]["data"][:10] == expected(catalogue, rows)[0]
    answer = requests.post(in_front.url + f"/v2/models/{MODEL}/infer", data=body, timeout=10)
    assert answer.status_code == 200 and answer.headers["X-Recguard-Source"] == "model"


def test_a_routed_row_is_answered_by_the_fallback_the_rest_by_kserve_in_binary(in_front, catalogue, profile,
                                                                                 tiny_holdout):
    rows = [{**tiny_holdout[3], "country": "XX"}, tiny_holdout[4]]
    result = client_of(in_front).infer(MODEL, oip_inputs(profile, rows, binary=True))
    response = result.get_response()
    assert response["parameters"]["source"] == "fallback;model"
    assert response["parameters"]["anomalies"] == "country:unknown_category;"
    assert all("binary_data_size" in output["parameters"] for output in response["outputs"])
    fallback, model = items_of(result)
    assert model == expected(catalogue, rows[1:])[0]
    assert len(fallback) == 10


TENSOR_MODEL = "tabular"
TENSOR_MAP = ["--oip-input", f"{TENSOR_INPUT}=weight_kg,height_cm,age:FP32", "--oip-input", "INPUT__1=country:BYTES",
              "--oip-items-output", TENSOR_ITEMS, "--oip-scores-output", TENSOR_SCORES]
"""A typical tensor model: the numbers in one FP32 tensor; the country beside it (a real model would
take its code; this one ignores it, recguard's guard reads it)."""


@pytest.fixture(scope="module")
def tensor_kserve(catalogue, tmp_path_factory):
    server = KServeServer(catalogue, tmp_path_factory.mktemp("kserve-tensor"), TENSOR_MODEL, tensor=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tensor_in_front(tiny_bundle, redis_server, tensor_kserve):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", tensor_kserve.infer_url,
                          "--upstream-protocol", "oip-v2", "--model-name", TENSOR_MODEL, *TENSOR_MAP, workers=1,
                          env=ROOMY).start()
    yield server
    server.stop()


def tensor_inputs(rows: list[dict]) -> list[triton.InferInput]:
    """What a team's client sends a tensor model, with tritonclient's defaults (binary)."""
    features = triton.InferInput(TENSOR_INPUT, [len(rows), 3], "FP32")
    features.set_data_from_numpy(np.array([[row["weight_kg"], row["height_cm"], row["age"]] for row in rows],
                                          dtype=np.float32))
    country = triton.InferInput("INPUT__1", [len(rows), 1], "BYTES")
    country.set_data_from_numpy(np.array([[row["country"]] for row in rows], dtype=object))
    return [features, country]


def tensor_items(result) -> list[list[str]]:
    return [[item.decode() for item in row if item] for row in result.as_numpy(TENSOR_ITEMS).tolist()]


def test_a_tensor_model_behind_recguard_with_the_input_map(tensor_in_front, tensor_kserve, catalogue, tiny_holdout):
    rows = [tiny_holdout[0], tiny_holdout[1]]
    result = client_of(tensor_in_front).infer(TENSOR_MODEL, tensor_inputs(rows))
    assert tensor_items(result) == [tensor_recommend(catalogue, [row["weight_kg"], row["height_cm"], row["age"]])
                                    for row in rows]
    assert tensor_items(client_of_url(tensor_kserve.url).infer(TENSOR_MODEL, tensor_inputs(rows))) == \
        tensor_items(result)
    assert result.as_numpy(TENSOR_SCORES).shape == (2, 10)

    # the guard reads the fields inside the tensors: an unknown market is the fallback's, under the model's names
    routed = client_of(tensor_in_front).infer(TENSOR_MODEL, tensor_inputs([tiny_holdout[2],
                                                                            {**tiny_holdout[3], "country": "XX"}]))
    assert routed.get_response()["parameters"]["source"] == "model;fallback"
    clean_row, routed_row = routed.get_response()["parameters"]["anomalies"].split(";")
    assert "country:unknown_category" in routed_row.split(",") and "country" not in clean_row
    model, fallback = tensor_items(routed)
    row = tiny_holdout[2]
    assert model == tensor_recommend(catalogue, [row["weight_kg"], row["height_cm"], row["age"]])
    assert len(fallback) == 10 and set(fallback) <= set(catalogue)


def test_recguard_describes_the_tensor_models_inputs(tensor_in_front):
    metadata = client_of(tensor_in_front).get_model_metadata(TENSOR_MODEL)
    inputs = {tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["inputs"]}
    assert inputs[TENSOR_INPUT] == ("FP32", [-1, 3]) and inputs["INPUT__1"] == ("BYTES", [-1, 1])
    assert "weight_kg" not in inputs and "country" not in inputs
    assert [output["name"] for output in metadata["outputs"]] == [TENSOR_ITEMS, TENSOR_SCORES]
