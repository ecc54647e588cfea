"""The training profile (profile.json): what every signup field looked like in training.

The guard checks each request against it and the drift detector takes its per-segment
statistics as the baseline; docs/bundle.md is the contract for every key. String fields carry
a "shape" (length, token count, character classes) so the proxy can recognise a renamed or
merged field by what its values look like, without the profile holding a single raw value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from model.char_classes import CHAR_CLASSES, char_classes
from model.dataset import Dataset, Table

SCHEMA_VERSION = 1
HISTORY_FIELD = "history"
QUANTILES = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)
# A string field with at most this many distinct values is categorical and gets a domain.
MAX_DOMAIN = 100
_DIGITS = 6


_DECIMAL = re.compile(r"0|[1-9][0-9]*")
"""An id a JSON integer can name: decimal digits without a leading zero (007 is not 7)."""


def _json_type(values: list[Any]) -> str:
    if all(isinstance(v, int) for v in values):
        return "integer"
    if all(isinstance(v, (int, float)) for v in values):
        return "number"
    return "string"


def _role(users: Table, field: str) -> str:
    if field in users.features:
        return "feature"
    return "identifier" if field == users.id else "contract"


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"count": int(values.size), "mean": round(float(values.mean()), _DIGITS), "std": round(float(values.std()), _DIGITS)}


def _numeric(values: list[float], segments: list[Any] | None) -> dict[str, Any]:
    array = np.array(values, dtype=np.float64)
    entry: dict[str, Any] = {
        "min": float(array.min()),
        "max": float(array.max()),
        "mean": round(float(array.mean()), _DIGITS),
        "std": round(float(array.std()), _DIGITS),
        "quantiles": {str(q): round(float(v), _DIGITS) for q, v in zip(QUANTILES, np.quantile(array, QUANTILES))},
    }
    if segments is not None:
        # users without a segment value count in the field's statistics, in no segment's
        keys = np.array(["" if s is None else str(s) for s in segments])
        entry["segments"] = {key: _stats(array[keys == key]) for key in sorted(set(keys.tolist()) - {""})}
    return entry


def _shape(values: list[str]) -> dict[str, Any]:
    """What the values look like, as aggregates only: length, whitespace-separated tokens, and the
    share of values holding each character class (an e-mail field has "at" 1.0, a name "space" 0.0)."""
    lengths = np.array([len(v) for v in values], dtype=np.float64)
    tokens = np.array([len(v.split()) for v in values], dtype=np.int64)
    holding = dict.fromkeys(CHAR_CLASSES, 0)
    for value in values:
        for name in char_classes(value):
            holding[name] += 1
    return {
        "length": {"min": int(lengths.min()), "max": int(lengths.max()),
                   "mean": round(float(lengths.mean()), _DIGITS), "std": round(float(lengths.std()), _DIGITS)},
        "tokens": {"min": int(tokens.min()), "max": int(tokens.max())},
        "classes": {name: round(count / len(values), _DIGITS) for name, count in holding.items()},
    }


def _domain(values: list[str]) -> dict[str, float] | None:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    if len(counts) > MAX_DOMAIN:
        return None
    return {value: round(counts[value] / len(values), _DIGITS) for value in sorted(counts)}


def item_id_pattern(item_ids: list[str]) -> str:
    """A regular expression every catalogue id matches: prefix plus fixed-width digits when they share one."""
    parts = [re.fullmatch(r"(.*?)([0-9]+)", item) for item in item_ids]
    if all(parts):
        prefixes = {p.group(1) for p in parts}
        widths = {len(p.group(2)) for p in parts}
        if len(prefixes) == 1 and len(widths) == 1:
            return f"^{re.escape(prefixes.pop())}[0-9]{{{widths.pop()}}}$"
    return "^.+$"


def build_profile(data: Dataset) -> dict[str, Any]:
    """The profile of the users in `data`: role, type, presence and statistics of every users column
    (docs/bundle.md), roles and personal fields as dataset.toml declares them."""
    users = data.schema.users
    segment_field = users.segment
    rows = len(data.users)
    fields: dict[str, Any] = {}
    for field in data.user_fields:
        column = data.column(field)
        present = [v for v in column if v is not None]
        json_type = _json_type(present)
        entry: dict[str, Any] = {
            "role": _role(users, field),
            "type": json_type,
            "personal": field in users.personal,
            "presence": round(len(present) / rows, _DIGITS),
        }
        if present and json_type != "string":
            with_segments = entry["role"] == "feature" and segment_field is not None
            segments = [u[segment_field] for u in data.users if u[field] is not None] if with_segments else None
            entry |= _numeric(present, segments)
        elif present:
            entry["shape"] = _shape([str(v) for v in present])
            if entry["role"] == "identifier" and all(_DECIMAL.fullmatch(str(v)) for v in present):
                entry["integer_ids"] = True
            if not entry["personal"] and entry["role"] != "identifier":
                domain = _domain([str(v) for v in present])
                if domain is not None:
                    entry["domain"] = domain
        fields[field] = entry
    return {
        "schema_version": SCHEMA_VERSION,
        "data_sha256": data.sha256,
        "rows": rows,
        "segment_field": segment_field,
        "history_field": HISTORY_FIELD,
        "fields": fields,
        "catalogue": {"item_id_pattern": item_id_pattern(data.item_ids), "count": len(data.item_ids)},
    }


def write_guard_bundle(data: Dataset, out: str | os.PathLike) -> Path:
    """A guard-only bundle for `data` (docs/bundle.md): profile, popularity and catalogue, no model;
    what `recguard profile` writes for a team that serves its own model behind --upstream."""
    from model.bundle import write_bundle
    from model.popularity import build_popularity

    return write_bundle(out, profile=build_profile(data), popularity=build_popularity(data), catalogue=data.item_ids)
