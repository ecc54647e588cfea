"""KServe's v1 data plane: `{"instances": [...]}` in, `{"predictions": [...]}` out."""

from __future__ import annotations

import json
from typing import Any, Sequence

from model.recommender import Recommendation
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.base import Parsed, RowAnswer, ShapeError, object_with_list
from proxy.shapes.plain import PlainShape
from proxy.shapes.request import PredictRequest
from proxy.words import KSERVE_V1


class KServeV1Shape:
    """KServe's v1 data plane: `{"instances": [...]}` in, `{"predictions": [...]}` out, one per instance;
    each instance and prediction laid out as a plain body (the same pointers)."""

    name = KSERVE_V1

    def __init__(self, upstream: UpstreamSettings, limits: LimitSettings):
        self.plain = PlainShape(upstream, limits)

    def parse(self, body: bytes) -> Parsed:
        payload, instances = object_with_list(body, "instances", "objects")
        return Parsed(self.name, body, payload,
                      [self.plain.read_row(instance, f"instance {i}") for i, instance in enumerate(instances)])

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
