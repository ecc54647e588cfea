"""Encoders built from the declared schema: the user tower's input and the item encoder's.

The specs returned by `fit_inputs` are the `inputs` of scoring.json (docs/bundle.md); `encode`
implements them for training, and model/scorer.py for serving and evaluation (a test
holds the two to the same numbers).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # the serving scorer imports this module: the data loader stays out of it
    from model.dataset import Table

MAX_VOCAB = 200
"""At most this many values of a categorical column get a slot of their own (the most frequent);
the rest, like a value training never saw, encode as unknown."""
NUMERIC_BANDS = 8
"""An item's numeric feature enters the item encoder as one of this many quantile bands."""


def _vocab(values: Sequence[Any]) -> list[str]:
    counts: dict[str, int] = {}
    for value in values:
        if value is not None:
            counts[str(value)] = counts.get(str(value), 0) + 1
    frequent = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_VOCAB]
    return sorted(frequent)


def fit_inputs(users: Table, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """scoring.json `inputs` learned from the training users of a declared users table: a one-hot
    vocabulary per categorical column, then mean and std per numeric one (a missing value encodes
    as the mean)."""
    inputs: list[dict[str, Any]] = []
    for name in users.categorical:
        inputs.append({"field": name, "encoding": "one_hot", "vocab": _vocab([r[name] for r in records])})
    for name in users.numeric:
        values = np.array([r[name] for r in records if r[name] is not None], dtype=np.float64)
        mean = float(values.mean()) if values.size else 0.0
        std = float(values.std()) if values.size else 0.0
        inputs.append({"field": name, "encoding": "standard", "mean": mean, "std": std if std > 0 else 1.0,
                       "missing": mean})
    return inputs


def item_features(items: Table, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[int]]:
    """The item encoder's input: per item, one code per declared item feature (a categorical value's
    vocabulary position, a number's quantile band), 0 for a missing or rare value; and the number
    of codes of each column. An item table without features gets one constant column."""
    columns, cardinalities = [], []
    for name in items.categorical:
        position = {value: i + 1 for i, value in enumerate(_vocab([r[name] for r in records]))}
        columns.append([position.get(str(r[name]), 0) if r[name] is not None else 0 for r in records])
        cardinalities.append(len(position) + 1)
    for name in items.numeric:
        raw = np.array([np.nan if r[name] is None else float(r[name]) for r in records])
        present = raw[~np.isnan(raw)]
        edges = np.quantile(present, np.linspace(0, 1, NUMERIC_BANDS + 1)[1:-1]) if present.size else np.empty(0)
        bands = np.searchsorted(edges, np.nan_to_num(raw), side="right") + 1
        columns.append(np.where(np.isnan(raw), 0, bands).tolist())
        cardinalities.append(NUMERIC_BANDS + 1)
    if not columns:
        columns, cardinalities = [[0] * len(records)], [1]
    return np.array(columns, dtype=np.int64).T.copy(), cardinalities


def input_width(inputs: Sequence[Mapping[str, Any]]) -> int:
    """Length of the vector `encode` produces."""
    return sum(len(spec["vocab"]) if spec["encoding"] == "one_hot" else 1 for spec in inputs)


def naive_number(value: Any) -> float:
    """A form value as the naive pipeline (what --no-guard serves) reads a number: numbers,
    booleans and numeric strings as they are, anything else or a missing value as 0
    (docs/bundle.md); shared by training, evaluation and the serving scorer."""
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.copysign(math.inf, value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def encode(inputs: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Encode requests (or training users) into a float32 matrix, one row per record."""
    out = np.zeros((len(records), input_width(inputs)), dtype=np.float32)
    column = 0
    for spec in inputs:
        field = spec["field"]
        if spec["encoding"] == "one_hot":
            position = {value: i for i, value in enumerate(spec["vocab"])}
            for row, record in enumerate(records):
                hit = position.get(record.get(field)) if isinstance(record.get(field), str) else None
                if hit is not None:
                    out[row, column + hit] = 1.0
            column += len(spec["vocab"])
        else:
            missing = spec.get("missing", 0.0)
            raw = np.array([missing if record.get(field) is None else naive_number(record.get(field))
                            for record in records], dtype=np.float64)
            out[:, column] = (raw - spec["mean"]) / spec["std"]
            column += 1
    return out

