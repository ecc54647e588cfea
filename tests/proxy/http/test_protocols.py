"""Each protocol end to end, clean and anomalous: recguard's own OIP v2 endpoints asked by a real OIP
client (tritonclient), an OIP v2 upstream and a KServe v1 upstream behind recguard."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model.bundle import load_bundle
from tests.harness.proxy import ProxyProcess
from tests.harness.upstream_server import UpstreamServer
from tests.proxy.models.test_upstream import ROOMY, own_prefix, post_raw, wrong_weight

SIGNUP_TYPES = {"string": ("BYTES", object), "number": ("FP64", np.float64), "integer": ("INT64", np.int64)}

pytestmark = pytest.mark.system  # real gunicorn or child processes (tests/conftest.py)


def oip_inputs(profile: dict, rows: list[dict], k: int = 10, binary: bool = False) -> list[triton.InferInput]:
    """tritonclient inputs for a batch of request bodies, typed from the profile, JSON tensors (or binary
    ones, tritonclient's default)."""
    inputs = []
    for name, spec in profile["fields"].items():
        datatype, dtype = SIGNUP_TYPES[spec["type"]]
        tensor = triton.InferInput(name, [len(rows)], datatype)
        tensor.set_data_from_numpy(np.array([row[name] for row in rows], dtype=dtype), binary_data=binary)
        inputs.append(tensor)
    width = max(len(row.get("history", [])) for row in rows)
    if width:
        history = triton.InferInput("history", [len(rows), width], "BYTES")
        padded = [[*row.get("history", []), *[""] * (width - len(row.get("history", [])))] for row in rows]
        history.set_data_from_numpy(np.array(padded, dtype=object), binary_data=binary)
        inputs.append(history)
    count = triton.InferInput("k", [1], "INT32")
    count.set_data_from_numpy(np.array([k], dtype=np.int32), binary_data=binary)
    inputs.append(count)
    return inputs


def infer(client: triton.InferenceServerClient, profile: dict, rows: list[dict], request_id: str = "r-1"):
    outputs = [triton.InferRequestedOutput("items", binary_data=False),
               triton.InferRequestedOutput("scores", binary_data=False)]
    return client.infer("recguard", oip_inputs(profile, rows), request_id=request_id, outputs=outputs)


def items_of(result) -> list[list[str]]:
    return [[item.decode() if isinstance(item, bytes) else item for item in row if item]
            for row in result.as_numpy("items").tolist()]


@pytest.fixture(scope="module")
def profile(tiny_bundle) -> dict:
    return load_bundle(tiny_bundle).profile


@pytest.fixture(scope="module")
def embedded(tiny_bundle, redis_server):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), workers=1).start()
    yield server
    server.stop()


def client_of(proxy: ProxyProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(proxy.url.removeprefix("http://"))


def test_oip_client_sees_a_live_ready_model_with_the_profile_inputs(embedded, profile):
    client = client_of(embedded)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("recguard")
    assert not client.is_model_ready("another")
    metadata = client.get_model_metadata("recguard")
    types = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
    assert types == {**{name: SIGNUP_TYPES[spec["type"]][0] for name, spec in profile["fields"].items()},
                     "history": "BYTES", "k": "INT32"}
    assert {tensor["name"] for tensor in metadata["outputs"]} == {"items", "scores"}
    assert client.get_server_metadata()["name"] == "recguard"
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("another")


def test_oip_infer_on_the_embedded_model_clean_and_anomalous(embedded, profile, tiny_holdout):
    client = client_of(embedded)
    clean, anomalous = tiny_holdout[0], wrong_weight(tiny_holdout[1])
    result = infer(client, profile, [clean], request_id="req-42")
    response = result.get_response()
    assert response["id"] == "req-42" and response["parameters"] == {"source": "model", "anomalies": ""}
    assert items_of(result) == [embedded.predict(clean).json()["items"]]
    assert result.as_numpy("scores").shape == (1, 10)

    # weight as a string: BYTES where the profile says FP64; the fallback answers that row only
    inputs = oip_inputs(profile, [clean, tiny_holdout[1]])
    weight = next(tensor for tensor in inputs if tensor.name() == "weight_kg")
    inputs[inputs.index(weight)] = string_weight = triton.InferInput("weight_kg", [2], "BYTES")
    string_weight.set_data_from_numpy(np.array([str(clean["weight_kg"]), anomalous["weight_kg"]], dtype=object),
                                      binary_data=False)
    result = client.infer("recguard", inputs, outputs=[triton.InferRequestedOutput("items", binary_data=False)])
    assert result.get_response()["parameters"]["source"] == "fallback;fallback"
    assert items_of(result)[1] == embedded.predict(anomalous).json()["items"]

    batch = infer(client, profile, [clean, tiny_holdout[2]])
    assert batch.get_response()["parameters"]["source"] == "model;model"
    assert items_of(batch) == [embedded.predict(body).json()["items"] for body in (clean, tiny_holdout[2])]


def test_oip_bad_requests_get_a_clear_4xx(embedded):
    url = embedded.url + "/v2/models/recguard/infer"
    cases = [
        (b"[]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "inputs"),
        (b'{"inputs": [{"name": "age", "shape": [2], "datatype": "INT64", "data": [1]}]}', 400, "does not hold"),
        (b'{"inputs": [{"name": "k", "shape": [1], "datatype": "INT32", "data": [0]}]}', 400, "k must be"),
        (b'{"inputs": [{"name": "age", "shape": [1], "datatype": "INT64", "data": [30]}, '
         b'{"name": "history", "shape": [1], "datatype": "BYTES", "data": [7]}]}', 400, "history"),
    ]
    for body, status, message in cases:
        answer = post_raw(url, body)
        assert answer.status_code == status and message in answer.json()["error"], body
    assert post_raw(embedded.url + "/v2/models/other/infer", b"{}").status_code == 404


def binary_body(datatype: str, size: int, raw: bytes, shape=(1,)) -> bytes:
    header = json.dumps({"inputs": [{"name": "age", "shape": list(shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": size}}]}).encode()
    return header + raw


@pytest.mark.parametrize("body, length, message", [
    (binary_body("INT64", 8, b"\0" * 8), "9999", "says 9999 bytes of JSON but the body has"),
    (binary_body("INT64", 8, b"\0" * 8), "eight", "must be the JSON header's length"),
    (b"{not json" + b"\0" * 8, "9", "JSON header of a binary request"),
    (binary_body("INT64", 16, b"\0" * 8), None, "runs past the body's end"),
    (binary_body("INT64", 8, b"\0" * 8, shape=(2,)), None, "8 bytes do not hold 2 INT64 values"),
    (binary_body("BF16", 2, b"\0\0"), None, "datatype 'BF16' is not supported"),
], ids=["length past the body", "length not a number", "header not JSON", "size past the body",
        "size not dtype x shape", "unsupported dtype"])
def test_malformed_binary_bodies_get_a_clear_400_json(embedded, body, length, message):
    if length is None:
        length = str(body.index(b"}]}") + 3)
    answer = requests.post(embedded.url + "/v2/models/recguard/infer", data=body, timeout=5,
                           headers={"Inference-Header-Content-Length": length})
    assert answer.status_code == 400 and answer.headers["Content-Type"] == "application/json"
    assert message in answer.json()["error"]


def test_tritonclient_with_its_defaults_binary_in_and_out(embedded, profile, tiny_holdout):
    client = client_of(embedded)
    clean, other = tiny_holdout[0], tiny_holdout[2]
    result = client.infer("recguard", oip_inputs(profile, [clean, other], binary=True), request_id="bin-1")
    response = result.get_response()
    assert response["id"] == "bin-1" and response["parameters"]["source"] == "model;model"
    assert all("data" not in output and output["parameters"]["binary_data_size"] > 0 for output in response["outputs"])
    assert items_of(result) == [embedded.predict(body).json()["items"] for body in (clean, other)]
    assert result.as_numpy("scores").dtype == np.float32 and result.as_numpy("scores").shape == (2, 10)

    # binary inputs, one output asked for in JSON: only it comes back, as JSON
    result = client.infer("recguard", oip_inputs(profile, [clean], binary=True),
                          outputs=[triton.InferRequestedOutput("items", binary_data=False)])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["items"]
    assert result.get_response()["outputs"][0]["data"][:10] == embedded.predict(clean).json()["items"]


@pytest.fixture(scope="module")
def oip_upstream(tiny_bundle, redis_server):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--no-guard", "--worker-class", "gthread", workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oip_in_front(tiny_bundle, redis_server, oip_upstream):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", oip_upstream.url + "/v2/models/recguard/infer",
                          "--upstream-protocol", "oip-v2", workers=1, env=ROOMY).start()
    yield server
    server.stop()


def test_oip_upstream_clean_forwarded_unchanged_anomalous_from_the_fallback(oip_in_front, oip_upstream, profile,
                                                                             tiny_holdout):
    body = json.dumps({"id": "a", "inputs": [tensor._get_tensor() for tensor in oip_inputs(profile, [tiny_holdout[0]])]})
    direct = post_raw(oip_upstream.url + "/v2/models/recguard/infer", body.encode())
    through = post_raw(oip_in_front.url + "/v2/models/recguard/infer", body.encode())
    assert through.status_code == 200 and through.content == direct.content
    assert through.headers["X-Recguard-Source"] == "model"

    client = client_of(oip_in_front)
    assert items_of(infer(client, profile, [tiny_holdout[1]])) == items_of(infer(client_of(oip_upstream), profile,
                                                                                 [tiny_holdout[1]]))
    # /predict in front of an OIP upstream takes the OIP shape too
    assert post_raw(oip_in_front.url + "/predict", body.encode()).content == direct.content

    inputs = oip_inputs(profile, [tiny_holdout[0], {**tiny_holdout[1], "country": "XX"}])
    result = client.infer("recguard", inputs, outputs=[triton.InferRequestedOutput("items", binary_data=False)])
    parameters = result.get_response()["parameters"]
    assert parameters["source"] == "model;fallback"
    assert parameters["anomalies"] == ";country:unknown_category"
    assert items_of(result)[0] == items_of(infer(client_of(oip_upstream), profile, [tiny_holdout[0]]))[0]


def test_tritonclient_defaults_through_recguard_to_an_oip_upstream(oip_in_front, oip_upstream, profile,
                                                                   tiny_holdout):
    inputs = oip_inputs(profile, [tiny_holdout[0], tiny_holdout[1]], binary=True)
    body, length = triton.InferenceServerClient.generate_request_body(inputs, request_id="b")
    headers = {"Inference-Header-Content-Length": str(length)}
    direct = requests.post(oip_upstream.url + "/v2/models/recguard/infer", data=body, headers=headers, timeout=5)
    through = requests.post(oip_in_front.url + "/v2/models/recguard/infer", data=body, headers=headers, timeout=5)
    assert through.status_code == 200 and through.content == direct.content
    assert through.headers["Inference-Header-Content-Length"] == direct.headers["Inference-Header-Content-Length"]
    assert through.headers["X-Recguard-Source"] == "model;model"

    client = client_of(oip_in_front)
    result = client.infer("recguard", inputs)
    assert items_of(result) == items_of(client_of(oip_upstream).infer("recguard", inputs))

    mixed = client.infer("recguard", oip_inputs(profile, [tiny_holdout[0], {**tiny_holdout[1], "country": "XX"}],
                                                binary=True))
    assert mixed.get_response()["parameters"]["source"] == "model;fallback"
    assert mixed.get_response()["parameters"]["anomalies"] == ";country:unknown_category"
    assert items_of(mixed)[0] == items_of(result)[0]


@pytest.fixture(scope="module")
def recording_oip_upstream(tiny_bundle):
    server = UpstreamServer(list(load_bundle(tiny_bundle).catalogue), "oip-v2").start()
    yield server
    server.stop()


def test_what_an_oip_upstream_is_sent_says_what_it_is(tiny_bundle, redis_server, recording_oip_upstream, profile,
                                                      tiny_holdout):
    upstream = recording_oip_upstream
    proxy = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", upstream.url,
                         "--upstream-protocol", "oip-v2", workers=1, env=ROOMY).start()
    try:
        client = client_of(proxy)
        catalogue_head = list(load_bundle(tiny_bundle).catalogue)[:5]
        # tritonclient sends JSON tensors with no Content-Type: the upstream is told it is JSON
        result = client.infer("recguard", oip_inputs(profile, [tiny_holdout[0]]),
                              outputs=[triton.InferRequestedOutput("items", binary_data=False)])
        assert items_of(result) == [catalogue_head]
        assert upstream.headers[-1]["Content-Type"] == "application/json"
        assert "Inference-Header-Content-Length" not in upstream.headers[-1]

        # binary tensors as they came, with their framing
        inputs = oip_inputs(profile, [tiny_holdout[0], tiny_holdout[1]], binary=True)
        assert items_of(client.infer("recguard", inputs)) == [catalogue_head, catalogue_head]
        body, length = triton.InferenceServerClient.generate_request_body(inputs)
        assert upstream.bodies[-1] == body
        assert upstream.headers[-1]["Inference-Header-Content-Length"] == str(length)
        assert upstream.headers[-1]["Content-Type"] == "application/octet-stream"

        # one row held back: the rest goes as JSON, and says so
        result = client.infer("recguard", oip_inputs(profile, [{**tiny_holdout[0], "country": "XX"}, tiny_holdout[1]],
                                                     binary=True))
        assert result.get_response()["parameters"]["source"] == "fallback;model"
        assert items_of(result)[1] == catalogue_head
        sent = json.loads(upstream.bodies[-1])
        assert upstream.headers[-1]["Content-Type"] == "application/json"
        assert "Inference-Header-Content-Length" not in upstream.headers[-1]
        assert {tensor["shape"][0] for tensor in sent["inputs"] if tensor["name"] != "k"} == {1}
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def kserve_upstream(tiny_bundle):
    server = UpstreamServer(list(load_bundle(tiny_bundle).catalogue), "kserve-v1").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kserve_in_front(tiny_bundle, redis_server, kserve_upstream):
    server = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", kserve_upstream.url, "--upstream-protocol",
                          "kserve-v1", "--upstream-scores", "/scores", workers=1, env=ROOMY).start()
    yield server
    server.stop()


def test_kserve_upstream_clean_and_anomalous_in_its_shape(kserve_in_front, kserve_upstream, tiny_holdout):
    url = kserve_in_front.url + "/v1/models/team:predict"
    clean = json.dumps({"instances": [tiny_holdout[0], tiny_holdout[1]]}).encode()
    answer = post_raw(url, clean)
    assert answer.status_code == 200 and answer.content == kserve_upstream.answer_for(clean)
    assert answer.headers["X-Recguard-Source"] == "model;model"

    seen = kserve_upstream.instances
    anomalous = json.dumps({"instances": [wrong_weight(tiny_holdout[0])]}).encode()
    answer = post_raw(url, anomalous)
    assert answer.headers["X-Recguard-Source"] == "fallback"
    predictions = answer.json()["predictions"]
    assert len(predictions) == 1 and set(predictions[0]) == {"items", "scores"} and len(predictions[0]["items"]) == 10
    assert kserve_upstream.instances == seen

    mixed = json.dumps({"instances": [tiny_holdout[2], wrong_weight(tiny_holdout[3])]}).encode()
    answer = post_raw(kserve_in_front.url + "/predict", mixed)
    assert answer.headers["X-Recguard-Source"] == "model;fallback"
    assert answer.headers["X-Recguard-Anomalies"] == ";weight_kg:type_mismatch"
    first, second = answer.json()["predictions"]
    assert first == {key: value for key, value in json.loads(kserve_upstream.answer_for(b'{"instances": [{}]}'))[
        "predictions"][0].items()}
    assert len(second["items"]) == 10
    assert kserve_upstream.instances == seen + 1  # only the clean instance went up
    assert json.loads(kserve_upstream.bodies[-1]) == {"instances": [tiny_holdout[2]]}

    refused = post_raw(url, b'{"instances": "not a list"}')
    assert refused.status_code == 400 and "instances" in refused.json()["error"]


def test_oip_endpoints_in_front_of_a_plain_upstream_ask_it_in_its_shape(tiny_bundle, redis_server, oip_upstream,
                                                                         profile, tiny_holdout):
    proxy = ProxyProcess(tiny_bundle, redis_server.url, *own_prefix(), "--upstream", oip_upstream.url + "/predict", workers=1,
                         env=ROOMY).start()
    try:
        client = client_of(proxy)
        rows = [tiny_holdout[4], wrong_weight(tiny_holdout[5])]
        inputs = oip_inputs(profile, [tiny_holdout[4], tiny_holdout[5]])
        result = client.infer("recguard", inputs, outputs=[triton.InferRequestedOutput("items", binary_data=False)])
        assert result.get_response()["parameters"]["source"] == "model;model"
        assert items_of(result) == [oip_upstream.predict(body).json()["items"] for body in tiny_holdout[4:6]]
        assert proxy.predict(rows[1]).headers["X-Recguard-Source"] == "fallback"
    finally:
        proxy.stop()


@pytest.mark.parametrize("entry, message", [
    ("INPUT__0=weight_lb,age", "--oip-input names 'weight_lb', not a field of the bundle's profile (its fields: "),
    ("INPUT__0=age:FLOAT", "RECGUARD_OIP_INPUTS: expected NAME=FIELD[,FIELD...][:DATATYPE] entries separated by ;"),
])
def test_serve_refuses_an_input_map_it_cannot_follow(tiny_bundle, entry, message):
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(tiny_bundle),
                             "--upstream", "http://127.0.0.1:9/v2/models/m/infer", "--upstream-protocol", "oip-v2",
                             "--oip-input", entry], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("recguard serve: ") and message in result.stderr and result.stderr.count("\n") == 1
