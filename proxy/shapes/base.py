"""What every body shape shares: a parsed request, a row's answer, the Shape protocol and the readers
the shapes have in common.

A shape reads a request body into rows (one PredictRequest per instance of a batch), writes rows
as a body in its shape (a batch of which only some rows go to the upstream; a request that came
in another shape), reads the items and scores of each row from a model's answer, and writes an
answer in its shape (the fallback's, or a batch that mixes both). It knows nothing of HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from model.recommender import Recommendation
from proxy.shapes.request import BadRequest, PredictRequest, decode_json, json_type_name
from proxy.words import Anomaly


class ShapeError(ValueError):
    """A model's answer does not have the shape recguard was told to expect."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request body read by a shape: the body as it came, the decoded document and one request per row."""

    shape: str
    """The name of the shape that read it: the body can go to an upstream of that shape unchanged."""
    body: bytes
    payload: Any
    rows: list[PredictRequest]
    document_id: str | None = None
    """The request document's own id (OIP's `id`), echoed in the answer."""
    json_length: int | None = None
    """A binary body's JSON header length (Triton's Inference-Header-Content-Length); None for JSON."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """An answer a shape wrote as bytes itself (binary tensors): the body, its type and the headers that frame it."""

    body: bytes
    content_type: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class RowAnswer:
    """What one row of a request got, from the model or the fallback: the one answer type every shape renders."""

    items: list[str]
    scores: list[float]
    source: str
    anomalies: list[Anomaly] = field(default_factory=list)
    ticket: str | None = None
    """The signed feedback ticket of this answer (None while feedback is off)."""


class Shape(Protocol):
    """How an endpoint reads its requests and writes its answers."""

    name: str

    def parse(self, body: bytes) -> Parsed:
        """The rows of a request body; BadRequest when it is not of this shape."""
        ...

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> Any:
        """An answer in this shape: a JSON document, or an Encoded body when the request asked for binary."""
        ...


class UpstreamShape(Shape, Protocol):
    """A shape a model endpoint speaks too: recguard writes requests in it and reads the model's answers."""

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        """A request body in this shape for these rows."""
        ...

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        """The request body with only these rows, everything else as sent."""
        ...

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        """The items (and scores, when the answer has them) of each of `count` rows; ShapeError if absent."""
        ...


def object_with_list(body: bytes, key: str, of: str) -> tuple[dict[str, Any], list[Any]]:
    """A batch body: a JSON object and its non-empty list under `key` (a list of `of`); BadRequest else."""
    return list_of(decode_json(body), key, of)


def list_of(payload: Any, key: str, of: str) -> tuple[dict[str, Any], list[Any]]:
    """A decoded batch document: the object and its non-empty list under `key` (a list of `of`); BadRequest else."""
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object, got {json_type_name(payload)}")
    entries = payload.get(key)
    if not isinstance(entries, list) or not entries:
        raise BadRequest(f'body must hold "{key}": a non-empty list of {of}')
    return payload, entries


def item_ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, (str, int)) and not isinstance(item, bool)
                                              for item in value):
        raise ShapeError(f"{where} is not a list of item ids")
    return [str(item) for item in value]


def scores_of(value: Any, count: int, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(score, (int, float)) and not isinstance(score, bool) for score in value):
        raise ShapeError(f"{where} is not a list of {count} numbers")
    return [float(score) for score in value]


def finite(scores: Sequence[float]) -> list[float]:
    # the fallback's scores are popularity shares: finite; a model's non-finite score never reaches JSON
    return [score if math.isfinite(score) else 0.0 for score in scores]


def flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for value in data:
        flat.extend(flatten(value) if isinstance(value, list) else [value])
    return flat


def anomaly_list(anomalies: Sequence[Anomaly]) -> str:
    """The compact `field:kind,field:kind` list of X-Recguard-Anomalies and the OIP `anomalies` parameter."""
    return ",".join(f"{anomaly.field}:{anomaly.kind}" for anomaly in anomalies)
