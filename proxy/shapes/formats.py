"""The body shapes a model endpoint speaks: plain JSON, KServe v1 and the Open Inference Protocol v2.

A shape reads a request body into rows (one PredictRequest per instance of a batch), writes rows
as a body in its shape (a batch of which only some rows go to the upstream; a request that came
in another shape), reads the items and scores of each row from a model's answer, and writes an
answer in its shape (the fallback's, or a batch that mixes both). It knows nothing of HTTP.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from model.recommender import Recommendation
from proxy.pointer import PointerError, assign, resolve, tokens
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.request import (
    HISTORY_FIELD,
    K_FIELD,
    BadRequest,
    PredictRequest,
    check_history,
    check_k,
    decode_json,
    json_type_name,
)
from proxy.words import Anomaly

PLAIN = "plain"
KSERVE_V1 = "kserve-v1"
OIP_V2 = "oip-v2"

ITEMS_OUTPUT = "items"
SCORES_OUTPUT = "scores"
OIP_TYPES = {"string": "BYTES", "number": "FP64", "integer": "INT64"}
"""The OIP datatype of each profile type."""


class ShapeError(ValueError):
    """A model's answer does not have the shape recguard was told to expect."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request body read by a shape: the decoded document and one request per row."""

    payload: Any
    rows: list[PredictRequest]
    request_id: str | None = None
    """The OIP request `id`, echoed in the answer."""


@dataclass(frozen=True, slots=True)
class RowAnswer:
    """What one row of a request got, from the model or the fallback."""

    items: list[str]
    scores: list[float]
    source: str
    anomalies: list[Anomaly] = field(default_factory=list)


class Shape(Protocol):
    """One protocol's bodies, both ways."""

    name: str

    def parse(self, body: bytes) -> Parsed:
        """The rows of a request body; BadRequest when it is not of this shape."""
        ...

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        """A request body in this shape for these rows."""
        ...

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        """The request body with only these rows, everything else as sent."""
        ...

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        """The items (and scores, when the answer has them) of each of `count` rows; ShapeError if absent."""
        ...

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> dict[str, Any]:
        """An answer in this shape."""
        ...


def make_shape(upstream: UpstreamSettings, limits: LimitSettings, model_name: str) -> Shape:
    """The shape the settings name (upstream_protocol) with their pointers and limits."""
    if upstream.protocol == KSERVE_V1:
        return KServeV1Shape(upstream, limits)
    if upstream.protocol == OIP_V2:
        return OipV2Shape(limits, model_name)
    return PlainShape(upstream, limits)


def _object_with_list(body: bytes, key: str, of: str) -> tuple[dict[str, Any], list[Any]]:
    """A batch body: a JSON object and its non-empty list under `key` (a list of `of`); BadRequest else."""
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object, got {json_type_name(payload)}")
    entries = payload.get(key)
    if not isinstance(entries, list) or not entries:
        raise BadRequest(f'body must hold "{key}": a non-empty list of {of}')
    return payload, entries


def _item_ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, (str, int)) and not isinstance(item, bool)
                                              for item in value):
        raise ShapeError(f"{where} is not a list of item ids")
    return [str(item) for item in value]


def _scores(value: Any, count: int, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(score, (int, float)) and not isinstance(score, bool) for score in value):
        raise ShapeError(f"{where} is not a list of {count} numbers")
    return [float(score) for score in value]


def _finite(scores: Sequence[float]) -> list[float]:
    # the fallback's scores are popularity shares: finite; a model's non-finite score never reaches JSON
    return [score if math.isfinite(score) else 0.0 for score in scores]


class PlainShape:
    """A JSON object per request (fields, history and k where the pointers say) and per answer (items, scores)."""

    name = PLAIN

    def __init__(self, upstream: UpstreamSettings, limits: LimitSettings):
        self.fields = upstream.request_fields
        self.history = upstream.request_history
        self.k = upstream.request_k
        self.items = upstream.items
        self.scores = upstream.scores
        self.limits = limits
        # the history and k keys that sit inside the fields object are no signup fields
        prefix = tokens(self.fields)
        self._envelope = {path[-1] for path in (tokens(self.history), tokens(self.k))
                          if path[:-1] == prefix}

    def parse(self, body: bytes) -> Parsed:
        payload = decode_json(body)
        return Parsed(payload, [self.read_row(payload)])

    def read_row(self, document: Any, where: str = "body") -> PredictRequest:
        """One request from one JSON object (the body, or one instance of a batch)."""
        if not isinstance(document, dict):
            raise BadRequest(f"{where} must be a JSON object, got {json_type_name(document)}")
        fields = resolve(document, self.fields, None)
        if not isinstance(fields, dict):
            raise BadRequest(f"{where} has no object of signup fields at {self.fields!r}")
        limits = self.limits
        k = check_k(resolve(document, self.k, None), default_k=limits.default_k, max_k=limits.max_k)
        history = check_history(resolve(document, self.history, None), max_history=limits.max_history)
        if self._envelope:
            fields = {key: value for key, value in fields.items() if key not in self._envelope}
        return PredictRequest(fields=fields, history=history, k=k)

    def write_row(self, row: PredictRequest) -> dict[str, Any]:
        """One request as a JSON object at the pointers."""
        document: dict[str, Any] = dict(row.fields) if not self.fields else assign({}, self.fields, dict(row.fields))
        assign(document, self.history, list(row.history))
        assign(document, self.k, row.k)
        return document

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        (row,) = rows
        return json.dumps(self.write_row(row)).encode()

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        raise ValueError("a plain body has one row")

    def read_one(self, document: Any, where: str = "answer") -> Recommendation:
        """The items and scores of one answer object."""
        try:
            items = _item_ids(resolve(document, self.items), f"{where} at {self.items!r}")
            scores = (_scores(resolve(document, self.scores), len(items), f"{where} at {self.scores!r}")
                      if self.scores else [])
        except PointerError:
            raise ShapeError(f"{where} has nothing at {self.items!r}" if not self.scores else
                             f"{where} lacks {self.items!r} or {self.scores!r}") from None
        return Recommendation(items, scores)

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        return [self.read_one(payload)]

    def write_answer(self, answer: RowAnswer) -> Any:
        """One answer at the items (and scores) pointers."""
        if not self.items:
            return list(answer.items)
        document = assign({}, self.items, list(answer.items))
        if self.scores:
            assign(document, self.scores, _finite(answer.scores))
        return document

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> Any:
        (answer,) = answers
        return self.write_answer(answer)


class KServeV1Shape:
    """KServe's v1 data plane: `{"instances": [...]}` in, `{"predictions": [...]}` out, one per instance;
    each instance and prediction laid out as a plain body (the same pointers)."""

    name = KSERVE_V1

    def __init__(self, upstream: UpstreamSettings, limits: LimitSettings):
        self.plain = PlainShape(upstream, limits)

    def parse(self, body: bytes) -> Parsed:
        payload, instances = _object_with_list(body, "instances", "objects")
        return Parsed(payload, [self.plain.read_row(instance, f"instance {i}") for i, instance in enumerate(instances)])

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        return json.dumps({"instances": [self.plain.write_row(row) for row in rows]}).encode()

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        instances = parsed.payload["instances"]
        return json.dumps({**parsed.payload, "instances": [instances[i] for i in indices]}).encode()

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        predictions = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(predictions, list) or len(predictions) != count:
            raise ShapeError(f'answer has no "predictions" list of {count}')
        return [self.plain.read_one(prediction, f"prediction {i}") for i, prediction in enumerate(predictions)]

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> dict[str, Any]:
        return {"predictions": [self.plain.write_answer(answer) for answer in answers]}


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for value in data:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def anomaly_list(anomalies: Sequence[Anomaly]) -> str:
    """The compact `field:kind,field:kind` list of X-Recguard-Anomalies and the OIP `anomalies` parameter."""
    return ",".join(f"{anomaly.field}:{anomaly.kind}" for anomaly in anomalies)


class OipV2Shape:
    """The Open Inference Protocol v2 (KServe's v2 data plane, Triton's HTTP API), JSON tensors.

    One input per signup field, shape [B] (or [B, 1]) for a batch of B; `history` BYTES [B, n]
    (or [n] for one row), "" padding a shorter row; `k` INT32 [1]. Outputs `items` BYTES and
    `scores` FP32, shape [B, n]; `source` and `anomalies` in the answer's parameters (one
    comma-separated value per row, rows separated by ';').
    """

    name = OIP_V2

    def __init__(self, limits: LimitSettings, model_name: str):
        self.limits = limits
        self.model_name = model_name

    def parse(self, body: bytes) -> Parsed:
        payload, inputs = _object_with_list(body, "inputs", "tensors")
        tensors: dict[str, list[Any]] = {}
        shapes: dict[str, list[int]] = {}
        for i, tensor in enumerate(inputs):
            if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) \
                    or not isinstance(tensor.get("datatype"), str) or "data" not in tensor:
                raise BadRequest(f"input {i} must be an object with name, shape, datatype and data")
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
                raise BadRequest(f"input {tensor['name'][:64]!r}: shape must be a list of non-negative integers")
            data = _flatten(tensor["data"])
            if math.prod(shape) != len(data):
                raise BadRequest(f"input {tensor['name'][:64]!r}: shape {shape} does not hold {len(data)} values")
            tensors[tensor["name"]] = data
            shapes[tensor["name"]] = shape
        fields = {name: data for name, data in tensors.items() if name not in (HISTORY_FIELD, K_FIELD)}
        batch = self._batch(fields, shapes)
        histories = self._histories(tensors.get(HISTORY_FIELD), shapes.get(HISTORY_FIELD), batch)
        k = self._k(tensors.get(K_FIELD))
        rows = [PredictRequest({name: data[row] for name, data in fields.items()}, histories[row], k)
                for row in range(batch)]
        request_id = payload.get("id")
        return Parsed(payload, rows, request_id if isinstance(request_id, str) else None)

    @staticmethod
    def _batch(fields: Mapping[str, list[Any]], shapes: Mapping[str, list[int]]) -> int:
        sizes = {name: shapes[name][0] if shapes[name] else 1 for name in fields}
        for name, data in fields.items():
            if len(data) != sizes[name]:
                raise BadRequest(f"input {name[:64]!r}: one value per row expected, shape [B] or [B, 1]")
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

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        names = list(dict.fromkeys(name for row in rows for name in row.fields))
        inputs = []
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
            data = _flatten(tensor["data"])
            width = len(data) // batch
            kept = [value for i in indices for value in data[i * width:(i + 1) * width]]
            inputs.append({**tensor, "shape": [len(indices), *tensor["shape"][1:]], "data": kept})
        return json.dumps({**payload, "inputs": inputs}).encode()

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        outputs = payload.get("outputs") if isinstance(payload, dict) else None
        if not isinstance(outputs, list):
            raise ShapeError('answer has no "outputs" list')
        by_name = {output.get("name"): output for output in outputs if isinstance(output, dict)}
        if ITEMS_OUTPUT not in by_name:
            raise ShapeError(f'answer has no output named "{ITEMS_OUTPUT}"')
        items = _flatten(by_name[ITEMS_OUTPUT].get("data"))
        if not items and count:
            return [Recommendation([], []) for _ in range(count)]
        if len(items) % count:
            raise ShapeError(f'output "{ITEMS_OUTPUT}" does not split into {count} rows')
        width = len(items) // count
        scores = _flatten(by_name[SCORES_OUTPUT].get("data")) if SCORES_OUTPUT in by_name else None
        if scores is not None and len(scores) != len(items):
            raise ShapeError(f'output "{SCORES_OUTPUT}" has {len(scores)} values for {len(items)} items')
        answers = []
        for row in range(count):
            cut = slice(row * width, (row + 1) * width)
            row_items = _item_ids(items[cut], f'output "{ITEMS_OUTPUT}"')
            kept = [i for i, item in enumerate(row_items) if item]
            row_scores = _scores(scores[cut], width, f'output "{SCORES_OUTPUT}"') if scores is not None else []
            answers.append(Recommendation([row_items[i] for i in kept], [row_scores[i] for i in kept] if row_scores else []))
        return answers

    def render(self, parsed: Parsed | None, answers: Sequence[RowAnswer], model_version: str) -> dict[str, Any]:
        width = max((len(answer.items) for answer in answers), default=0)
        items = [item for answer in answers for item in [*answer.items, *[""] * (width - len(answer.items))]]
        scores = [score for answer in answers
                  for score in [*_finite(answer.scores), *[0.0] * (width - len(answer.scores))]]
        body: dict[str, Any] = {
            "model_name": self.model_name,
            "model_version": model_version,
            "parameters": {"source": ";".join(answer.source for answer in answers),
                           "anomalies": ";".join(anomaly_list(answer.anomalies) for answer in answers)},
            "outputs": [
                {"name": ITEMS_OUTPUT, "datatype": "BYTES", "shape": [len(answers), width], "data": items},
                {"name": SCORES_OUTPUT, "datatype": "FP32", "shape": [len(answers), width], "data": scores},
            ],
        }
        if parsed is not None and parsed.request_id is not None:
            body["id"] = parsed.request_id
        return body
