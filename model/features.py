"""The user tower's input: which signup fields it reads and how a request becomes a vector.

The specs returned by `fit_inputs` are the `inputs` of scoring.json (docs/bundle.md), and
`encode` is the one implementation of them used both to train and to evaluate, so the
torch model and the exported numpy scorer see identical inputs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

CATEGORICAL_FEATURES = ("country",)
NUMERIC_FEATURES = ("weight_kg", "height_cm", "age")
FEATURES = CATEGORICAL_FEATURES + NUMERIC_FEATURES


def fit_inputs(users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """scoring.json `inputs` learned from training users: one-hot vocabularies and standardisation statistics."""
    inputs: list[dict[str, Any]] = []
    for field in CATEGORICAL_FEATURES:
        vocab = sorted({str(u[field]) for u in users if u[field] is not None})
        inputs.append({"field": field, "encoding": "one_hot", "vocab": vocab})
    for field in NUMERIC_FEATURES:
        values = np.array([u[field] for u in users if u[field] is not None], dtype=np.float64)
        std = float(values.std())
        inputs.append({"field": field, "encoding": "standard", "mean": float(values.mean()), "std": std if std > 0 else 1.0})
    return inputs


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
            raw = np.array([naive_number(record.get(field)) for record in records], dtype=np.float64)
            out[:, column] = (raw - spec["mean"]) / spec["std"]
            column += 1
    return out

