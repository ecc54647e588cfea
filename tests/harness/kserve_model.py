"""A real KServe ModelServer serving a small recommender over the Open Inference Protocol v2.

KServe cannot live in the suite's venv (kserve 0.21 pins psutil and python-dateutil below what the
venv holds), so it has a venv of its own (`make kserve`: .venv-kserve, or KSERVE_PYTHON naming
another interpreter) and this file is two things: run with that interpreter it is the server
(`python kserve_model.py --catalogue FILE --model_name NAME --http_port PORT`), imported by a test
it is `KServeServer`, which starts it as a child process on a free port and stops it.

The model answers each row with the first k catalogue items not in the row's history, best first,
as `items` (BYTES) and `scores` (FP32) of shape [B, k]: what it answers shows that the rows, their
history and k arrived as they were sent. With `tensor=True` it is a tensor model instead, as a
Triton or KServe model usually is: one input `INPUT__0`, FP32 [B, N], and outputs `OUTPUT__0`
(item ids, BYTES) and `OUTPUT__1` (scores, FP32), [B, 10]; each row's items are the ten catalogue
items from the position its last column's value names (`tensor_recommend`). KServe's own code reads the request (JSON, or binary
tensors after an `inference-header-content-length` header) and writes the answer (binary where
the request asked for it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = Path(os.environ.get("KSERVE_PYTHON", ROOT / ".venv-kserve" / "bin" / "python"))
"""The interpreter with kserve installed."""


def kserve_missing() -> str | None:
    """Why a KServe server cannot be started here, or None when it can."""
    if not KSERVE_PYTHON.exists():
        return f"no KServe interpreter at {KSERVE_PYTHON} (make kserve, or KSERVE_PYTHON)"
    return None


TENSOR_INPUT, TENSOR_ITEMS, TENSOR_SCORES = "INPUT__0", "OUTPUT__0", "OUTPUT__1"


def recommend(catalogue: list[str], history: list[str], k: int) -> list[str]:
    """The model: the first k catalogue items the row has not seen."""
    seen = set(history)
    return [item for item in catalogue if item not in seen][:k]


def tensor_recommend(catalogue: list[str], row: list[float]) -> list[str]:
    """The tensor model: ten catalogue items from the position the row's last value names, round the end."""
    start = int(row[-1]) % len(catalogue)
    return [catalogue[(start + i) % len(catalogue)] for i in range(10)]


class KServeServer:
    """`python kserve_model.py` under the KServe interpreter, on a free loopback port."""

    def __init__(self, catalogue: list[str], directory: Path, model_name: str = "recsys", tensor: bool = False):
        self.catalogue = catalogue
        self.model_name = model_name
        self.tensor = tensor
        self.catalogue_file = directory / f"{model_name}_catalogue.txt"
        self.catalogue_file.write_text("\n".join(catalogue))
        self.log = directory / f"{model_name}.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.infer_url = f"{self.url}/v2/models/{model_name}/infer"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "KServeServer":
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(KSERVE_PYTHON), __file__, "--catalogue", str(self.catalogue_file), "--model_name",
                 self.model_name, "--http_port", str(self.port), "--enable_grpc", "false", "--workers", "1",
                 *(["--tensor"] if self.tensor else [])],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"KServe server exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"KServe server not ready within {timeout} s: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/v2/models/{self.model_name}/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve() -> None:
    """The server's side: a kserve.Model answering OIP v2 requests with recommend()."""
    import argparse

    import kserve
    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse

    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--catalogue", required=True)
    parser.add_argument("--tensor", action="store_true")
    args, _ = parser.parse_known_args()
    catalogue = Path(args.catalogue).read_text().split("\n")

    class Recommender(kserve.Model):
        def __init__(self, name: str):
            super().__init__(name)
            self.ready = True

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            tensors = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            if args.tensor:
                return self.tensor_predict(payload, tensors)
            k = int(tensors["k"].reshape(-1)[0]) if "k" in tensors else 10
            batch = next(len(values) for name, values in tensors.items() if name != "k")
            history = tensors.get("history")
            rows = []
            for row in range(batch):
                seen = [] if history is None else [item.decode() if isinstance(item, bytes) else str(item)
                                                  for item in np.atleast_2d(history)[row] if item]
                rows.append(recommend(catalogue, seen, k))
            width = max(len(items) for items in rows)
            items = np.array([[*items, *[""] * (width - len(items))] for items in rows], dtype=object)
            scores = np.array([[float(width - i) for i in range(width)] for _ in rows], dtype=np.float32)
            outputs = [InferOutput("items", list(items.shape), "BYTES"), InferOutput("scores", list(scores.shape), "FP32")]
            outputs[0].set_data_from_numpy(items)
            outputs[1].set_data_from_numpy(scores)
            return self.answer(payload, outputs)

        def tensor_predict(self, payload: InferRequest, tensors: dict) -> InferResponse:
            values = np.atleast_2d(tensors[TENSOR_INPUT])
            items = np.array([tensor_recommend(catalogue, row.tolist()) for row in values], dtype=object)
            scores = np.array([[float(10 - i) for i in range(10)] for _ in values], dtype=np.float32)
            outputs = [InferOutput(TENSOR_ITEMS, list(items.shape), "BYTES"),
                       InferOutput(TENSOR_SCORES, list(scores.shape), "FP32")]
            outputs[0].set_data_from_numpy(items)
            outputs[1].set_data_from_numpy(scores)
            return self.answer(payload, outputs)

        def answer(self, payload: InferRequest, outputs: list) -> InferResponse:
            # KServe's REST answer must have an id; Triton's echoes the request's only when it has one
            return InferResponse(payload.id or uuid.uuid4().hex, self.name, outputs,
                                 use_binary_outputs=payload.use_binary_outputs,
                                 requested_outputs=payload.request_outputs)

    kserve.ModelServer().start([Recommender(args.model_name)])


if __name__ == "__main__":
    sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT]
    serve()
