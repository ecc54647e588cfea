"""What can be wrong with a request, and the kinds the guard, the drift watch and the models report."""

from __future__ import annotations

from dataclasses import dataclass

from model.recommender import MODEL_ERROR

MISSING_FIELD = "missing_field"
UNEXPECTED_FIELD = "unexpected_field"
TYPE_MISMATCH = "type_mismatch"
OUT_OF_RANGE = "out_of_range"
UNKNOWN_CATEGORY = "unknown_category"
NON_FINITE = "non_finite"
UNKNOWN_ITEM = "unknown_item"
MODEL_TIMEOUT = "model_timeout"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
DRIFT_QUARANTINE = "drift_quarantine"
SUSPECTED_RENAME = "suspected_rename"
SUSPECTED_MERGE = "suspected_merge"
QUALITY_QUARANTINE = "quality_quarantine"

KINDS = (MISSING_FIELD, UNEXPECTED_FIELD, TYPE_MISMATCH, OUT_OF_RANGE, UNKNOWN_CATEGORY, NON_FINITE, UNKNOWN_ITEM,
         MODEL_ERROR, MODEL_TIMEOUT, UPSTREAM_ERROR, UPSTREAM_UNAVAILABLE, DRIFT_QUARANTINE, SUSPECTED_RENAME,
         SUSPECTED_MERGE, QUALITY_QUARANTINE)
"""Every kind of anomaly, in the order the docs list them."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing wrong with a request: which field, what kind, and a detail safe to show anyone."""

    field: str
    kind: str
    detail: str
    routes: bool

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "kind": self.kind, "detail": self.detail}
