"""The Open Inference Protocol v2 (KServe's v2 data plane, Triton's HTTP API): JSON tensors, and binary
ones (Triton's binary tensor data extension, proxy/shapes/triton_binary.py) in and out."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from model.recommender import Recommendation
from proxy.oip_inputs import TensorInput
from proxy.settings import LimitSettings
from proxy.shapes import triton_binary
from proxy.shapes.base import (
    Encoded,
    Parsed,
    RowAnswer,
    ShapeError,
    anomaly_list,
    finite,
    flatten,
    item_ids,
    list_of,
    object_with_list,
    scores_of,
)
from proxy.shapes.request import (
    HISTORY_FIELD,
    K_FIELD,
    BadRequest,
    PredictRequest,
    check_history,
    check_k,
)
from proxy.words import OIP_V2

ITEMS_OUTPUT = "items"
SCORES_OUTPUT = "scores"
OIP_TYPES = {"string": "BYTES", "number": "FP64", "integer": "INT64"}
"""The OIP datatype of each profile type."""


class OipV2Shape:
    """The Open Inference Protocol v2 (KServe's v2 data plane, Triton's HTTP API), JSON or binary tensors.

    One input per signup field, shape [B] (or [B, 1]) for a batch of B, except the fields of a
    tensor model's mapped inputs (`inputs`: tensor NAME, [B, its fields], column j its j-th field);
    `history` BYTES [B, n] (or [n] for one row), "" padding a shorter row; `k` INT32 [1]. Outputs
    items (BYTES) and scores (FP32), shape [B, n], under the names given (`items`, `scores`);
    `source` and `anomalies` in the answer's parameters (one comma-separated value per row, rows
    separated by ';'). A request that names `outputs` gets those only; an output goes back in binary
    when the request asks for it (`binary_data`, `binary_data_output`).
    """

    name = OIP_V2

    def __init__(self, limits: LimitSettings, model_name: str, inputs: Sequence[TensorInput] = (),
                 items_output: str = ITEMS_OUTPUT, scores_output: str = SCORES_OUTPUT):
        self.limits = limits
        self.model_name = model_name
        self.inputs = list(inputs)
        self.items_output = items_output
        self.scores_output = scores_output
        """Empty: the model gives no scores."""
        self._mapped = {field for tensor in self.inputs for field in tensor.fields}

    def parse(self, body: bytes, json_length: int | None = None) -> Parsed:
        """The rows of a JSON body, or of a binary one whose JSON header is `json_length` bytes long."""
        if json_length is None:
            payload, inputs = object_with_list(body, "inputs", "tensors")
        else:
            payload, inputs = list_of(triton_binary.read_request(body, json_length), "inputs", "tensors")
        tensors: dict[str, list[Any]] = {}
        shapes: dict[str, list[int]] = {}
        datatypes: dict[str, str] = {}
        for i, tensor in enumerate(inputs):
            if isinstance(tensor, dict) and "data" not in tensor and json_length is None \
                    and isinstance(tensor.get("parameters"), dict) and triton_binary.SIZE_PARAMETER in tensor["parameters"]:
                raise BadRequest(f"input {i} is binary ({triton_binary.SIZE_PARAMETER}) but the request has no "
                                 f"{triton_binary.BINARY_HEADER} header")
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) \
                    or not isinstance(tensor.get("datatype"), str) or "data" not in tensor:
                raise BadRequest(f"input {i} must be an object with name, shape, datatype and data")
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
                raise BadRequest(f"input {tensor['name'][:64]!r}: shape must be a list of non-negative integers")
            data = flatten(tensor["data"])
            if math.prod(shape) != len(data):
                raise BadRequest(f"input {tensor['name'][:64]!r}: shape {shape} does not hold {len(data)} values")
            tensors[tensor["name"]] = data
            shapes[tensor["name"]] = shape
            datatypes[tensor["name"]] = tensor["datatype"]
        sizes: dict[str, int] = {}
        fields = self._columns(tensors, shapes, datatypes, sizes)
        for name, data in tensors.items():
            if name in (HISTORY_FIELD, K_FIELD) or name in fields:
                continue
            sizes[name] = shapes[name][0] if shapes[name] else 1
            if len(data) != sizes[name]:
                raise BadRequest(f"input {name[:64]!r}: one value per row expected, shape [B] or [B, 1]")
            fields[name] = data
        batch = self._batch(sizes)
        histories = self._histories(tensors.get(HISTORY_FIELD), shapes.get(HISTORY_FIELD), batch)
        k = self._k(tensors.get(K_FIELD))
        rows = [PredictRequest({name: data[row] for name, data in fields.items()}, histories[row], k)
                for row in range(batch)]
        self._check_outputs(payload)
        document_id = payload.get("id")
        return Parsed(self.name, body, payload, rows, document_id if isinstance(document_id, str) else None,
                      json_length)

    def _check_outputs(self, payload: Mapping[str, Any]) -> None:
        outputs = payload.get("outputs")
        if outputs is None:
            return
        if not isinstance(outputs, list) or not all(isinstance(entry, dict) and isinstance(entry.get("name"), str)
                                                    for entry in outputs):
            raise BadRequest('"outputs" must be a list of objects with a name')
        known = self.output_names()
        for entry in outputs:
            if entry["name"] not in known:
                raise BadRequest(f"no output named {entry['name'][:64]!r}; the outputs are "
                                 f"{' and '.join(map(repr, known))}")
            parameters = entry.get("parameters", {})
            if not isinstance(parameters, dict) or not isinstance(parameters.get(triton_binary.BINARY_OUTPUT, False),
                                                                  bool):
                raise BadRequest(f"output {entry['name']!r}: parameters must be an object, "
                                 f"{triton_binary.BINARY_OUTPUT} true or false")

    def _columns(self, tensors: dict[str, list[Any]], shapes: Mapping[str, list[int]], datatypes: Mapping[str, str],
                 sizes: dict[str, int]) -> dict[str, list[Any]]:
        """The fields of the mapped input tensors sent, one value per row each (taken out of `tensors`)."""
        fields: dict[str, list[Any]] = {}
        for tensor in self.inputs:
            if tensor.name not in tensors:
                continue
            data, shape = tensors.pop(tensor.name), shapes[tensor.name]
            width = len(tensor.fields)
            if datatypes[tensor.name] != tensor.datatype:
                raise BadRequest(f"input {tensor.name!r} must be {tensor.datatype}, got {datatypes[tensor.name][:16]!r}")
            if not (len(shape) == 2 and shape[1] == width or len(shape) == 1 and (width == 1 or shape[0] == width)):
                raise BadRequest(f"input {tensor.name!r} must have shape [B, {width}] (its fields: "
                                 f"{', '.join(tensor.fields)}); got {shape}")
            sizes[tensor.name] = len(data) // width
            for column, name in enumerate(tensor.fields):
                if name in tensors:
                    raise BadRequest(f"field {name[:64]!r} sent twice: in input {tensor.name!r} and as an input of its own")
                fields[name] = data[column::width]
        return fields

    @staticmethod
    def _batch(sizes: Mapping[str, int]) -> int:
        batch = max(sizes.values(), default=1)
        if batch < 1 or any(size != batch for size in sizes.values()):
            raise BadRequest(f"every signup input must have the same batch size; got {sorted(set(sizes.values()))}")
        return batch

    def _histories(self, data: list[Any] | None, shape: list[int] | None, batch: int) -> list[list[str]]:
        if data is None:
            return [[] for _ in range(batch)]
        if not all(isinstance(item, str) for item in data):
            raise BadRequest("history must be BYTES: item ids as strings")
        if batch == 1 and len(shape) == 1:
            rows = [data]
        elif len(shape) == 2 and shape[0] == batch:
            width = shape[1]
            rows = [data[row * width:(row + 1) * width] for row in range(batch)]
        else:
            raise BadRequest(f"history must have shape [B, n] (or [n] for one row); got {shape}")
        return [check_history([item for item in row if item], max_history=self.limits.max_history) for row in rows]

    def _k(self, data: list[Any] | None) -> int:
        limits = self.limits
        if data is None:
            return limits.default_k
        if len(data) != 1:
            raise BadRequest("k must be one INT32 value, shape [1]")
        return check_k(data[0], default_k=limits.default_k, max_k=limits.max_k)

    def output_names(self) -> list[str]:
        """The outputs this shape answers with: items, and scores unless the model gives none."""
        return [name for name in (self.items_output, self.scores_output) if name]

    def metadata(self, profile: Mapping[str, Any], name: str, version: str) -> dict[str, Any]:
        """The OIP model metadata: the mapped input tensors, an input per other signup field of the profile,
        history and k; the outputs."""
        inputs = [{"name": tensor.name, "datatype": tensor.datatype, "shape": [-1, len(tensor.fields)]}
                  for tensor in self.inputs]
        inputs += [{"name": field, "datatype": OIP_TYPES.get(spec["type"], "BYTES"), "shape": [-1]}
                   for field, spec in profile["fields"].items() if field not in self._mapped]
        inputs += [{"name": HISTORY_FIELD, "datatype": "BYTES", "shape": [-1, -1]},
                   {"name": K_FIELD, "datatype": "INT32", "shape": [1]}]
        outputs = [{"name": self.items_output, "datatype": "BYTES", "shape": [-1, -1]}]
        if self.scores_output:
            outputs.append({"name": self.scores_output, "datatype": "FP32", "shape": [-1, -1]})
        return {"name": name, "versions": [version], "platform": "recguard", "inputs": inputs, "outputs": outputs}

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        inputs = [{"name": tensor.name, "shape": [len(rows), len(tensor.fields)], "datatype": tensor.datatype,
                   "data": [row.fields.get(field) for row in rows for field in tensor.fields]}
                  for tensor in self.inputs]
        names = list(dict.fromkeys(name for row in rows for name in row.fields if name not in self._mapped))
        for name in names:
            values = [row.fields.get(name) for row in rows]
            present = [value for value in values if value is not None]
            datatype = ("BYTES" if any(isinstance(v, str) for v in present) else
                        "FP64" if any(isinstance(v, float) for v in present) else "INT64")
            inputs.append({"name": name, "shape": [len(rows)], "datatype": datatype, "data": values})
        width = max((len(row.history) for row in rows), default=0)
        if width:
            inputs.append({"name": HISTORY_FIELD, "shape": [len(rows), width], "datatype": "BYTES",
                           "data": [item for row in rows for item in [*row.history, *[""] * (width - len(row.history))]]})
        inputs.append({"name": K_FIELD, "shape": [1], "datatype": "INT32", "data": [rows[0].k]})
        return json.dumps({"inputs": inputs}).encode()

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        payload = parsed.payload
        batch = len(parsed.rows)
        inputs = []
        for tensor in payload["inputs"]:
            if tensor["name"] == K_FIELD:
                inputs.append(tensor)
                continue
            data = flatten(tensor["data"])
            width = len(data) // batch
            kept = [value for i in indices for value in data[i * width:(i + 1) * width]]
            inputs.append({**tensor, "shape": [len(indices), *tensor["shape"][1:]], "data": kept})
        return json.dumps({**payload, "inputs": inputs}).encode()

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list):
            raise ShapeError('answer has no "outputs" list')
        by_name = {output.get("name"): output for output in outputs if isinstance(output, dict)}
        items_name, scores_name = self.items_output, self.scores_output
        if items_name not in by_name:
            raise ShapeError(f'answer has no output named "{items_name}"')
        items = flatten(by_name[items_name].get("data"))
        if not items and count:
            return [Recommendation([], []) for _ in range(count)]
        if len(items) % count:
            raise ShapeError(f'output "{items_name}" does not split into {count} rows')
        width = len(items) // count
        scores = flatten(by_name[scores_name].get("data")) if scores_name and scores_name in by_name else None
        if scores is not None and len(scores) != len(items):
            raise ShapeError(f'output "{scores_name}" has {len(scores)} values for {len(items)} items')
        answers = []
        for row in range(count):
            cut = slice(row * width, (row + 1) * width)
            row_items = item_ids(items[cut], f'output "{items_name}"')
            kept = [i for i, item in enumerate(row_items) if item]
            row_scores = scores_of(scores[cut], width, f'output "{scores_name}"') if scores is not None else []
            answers.append(Recommendation([row_items[i] for i in kept], [row_scores[i] for i in kept] if row_scores else []))
        return answers

    def render(self, parsed: Parsed | None, answers: Sequence[RowAnswer],
               model_version: str) -> dict[str, Any] | Encoded:
        width = max((len(answer.items) for answer in answers), default=0)
        items = [item for answer in answers for item in [*answer.items, *[""] * (width - len(answer.items))]]
        scores = [score for answer in answers
                  for score in [*finite(answer.scores), *[0.0] * (width - len(answer.scores))]]
        body: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": model_version,
            "parameters": {"source": ";".join(answer.source for answer in answers),
                           "anomalies": ";".join(anomaly_list(answer.anomalies) for answer in answers)},
            "outputs": [{"name": self.items_output, "datatype": "BYTES", "shape": [len(answers), width], "data": items}],
        }
        if self.scores_output:
            body["outputs"].append({"name": self.scores_output, "datatype": "FP32", "shape": [len(answers), width],
                                    "data": scores})
        tickets = [answer.ticket for answer in answers if answer.ticket is not None]
        if tickets:
            body["parameters"]["ticket"] = ";".join(tickets)
        if parsed is None:
            return body
        if parsed.document_id is not None:
            body["id"] = parsed.document_id
        asked = parsed.payload.get("outputs")
        if asked:  # the outputs asked for, as Triton answers
            names = {entry["name"] for entry in asked}
            body["outputs"] = [output for output in body["outputs"] if output["name"] in names]
        binary = triton_binary.binary_outputs(parsed.payload, [output["name"] for output in body["outputs"]])
        if not binary:
            return body
        encoded, length = triton_binary.write(body, binary)
        return Encoded(encoded, triton_binary.BINARY_CONTENT_TYPE, {triton_binary.BINARY_HEADER: str(length)})
