"""The words every part of the proxy shares: anomaly kinds, answer sources, the name counts past a cap
go under, the upstream protocols and the worker classes.

One module below all the parts, so a word is written once and the CLI's choices, the settings'
checks, the counters' keys and the OpenAPI document all read it from here.
"""

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


MODEL = "model"
FALLBACK = "fallback"
HOLDBACK = "holdback"
SOURCES = (MODEL, FALLBACK, HOLDBACK)
"""Who answered a request: the model, the popularity fallback (a routed request or a failed model), or
the fallback for a clean request of the control group. Their order is part of the ticket format."""

OTHER = "_other"
"""The one name that stands for every field, name or segment past a cap or unsafe to echo."""

RECGUARD_JSON = "recguard"
"""recguard's own JSON: /predict's body and answer (no upstream speaks it)."""
PLAIN = "plain"
KSERVE_V1 = "kserve-v1"
OIP_V2 = "oip-v2"
PROTOCOLS = (PLAIN, KSERVE_V1, OIP_V2)
"""The body shapes an upstream can speak (RECGUARD_UPSTREAM_PROTOCOL)."""

AUTO_WORKER, SYNC_WORKER, GTHREAD_WORKER = "auto", "sync", "gthread"
WORKER_CLASSES = (AUTO_WORKER, SYNC_WORKER, GTHREAD_WORKER)
"""gunicorn worker classes recguard runs (RECGUARD_WORKER_CLASS); auto picks by the model side."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing wrong with a request: which field, what kind, and a detail safe to show anyone."""

    field: str
    kind: str
    detail: str
    routes: bool

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "kind": self.kind, "detail": self.detail}
