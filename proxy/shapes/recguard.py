"""recguard's own JSON, the body of /predict and /invocations with the bundle's model: the signup
fields at the top level beside `history` and `k`; the answer's items and scores with how they were
reached (source, model version, anomalies, the feedback ticket)."""

from __future__ import annotations

from typing import Any, Sequence

from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.base import Parsed, RowAnswer
from proxy.shapes.plain import PlainShape
from proxy.shapes.request import HISTORY_FIELD, K_FIELD, decode_json
from proxy.words import RECGUARD_JSON

POINTERS = UpstreamSettings(request_fields="", request_history=f"/{HISTORY_FIELD}", request_k=f"/{K_FIELD}")
"""Where a recguard body holds its parts: a plain body with these request pointers (the answer is
recguard's own, written by `render`)."""


class RecguardShape:
    """A /predict body in, one row; recguard's answer out."""

    name = RECGUARD_JSON

    def __init__(self, limits: LimitSettings):
        self.plain = PlainShape(POINTERS, limits)

    def parse(self, body: bytes) -> Parsed:
        payload = decode_json(body)
        return Parsed(self.name, body, payload, [self.plain.read_row(payload)])

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> dict[str, Any]:
        (answer,) = answers
        document = {"items": answer.items, "scores": answer.scores, "source": answer.source,
                    "model_version": model_version, "anomalies": [anomaly.to_json() for anomaly in answer.anomalies]}
        if answer.ticket is not None:
            document["ticket"] = answer.ticket
        return document
