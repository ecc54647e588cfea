"""Inference from a bundle with numpy alone: no torch, no torch-geometric, no graph.

Implements the formula of docs/bundle.md: a small user tower over the encoded signup
fields, plus the mean embedding of the known history items, dotted with the exported item
embeddings. Encoding is the naive pipeline a model endpoint without checks applies (a
missing number counts as its `missing` value, a non-number as 0, an unseen category as no
category): the guard, not the scorer, decides whether the model can be trusted with a request.
The one scorer: serving answers with it and `recguard evaluate` measures it (model/evaluate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from model.bundle import Bundle
from model.features import naive_number
from proxy.models.recommender import ModelError, Recommendation


@dataclass(frozen=True, slots=True)
class _Input:
    field: str
    one_hot: dict[str, int] | None
    mean: float
    std: float
    missing: float
    offset: int


class Scorer:
    """Scores requests against the catalogue with the exported arrays of a bundle."""

    bounded = True
    """Its run time is set by the bundle's shapes, k and the history limit (no I/O, no locks)."""

    def __init__(self, scoring: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        self.item_ids: list[str] = [str(item) for item in arrays["item_ids"]]
        self.catalogue = self.item_ids
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.item_embeddings = np.ascontiguousarray(arrays["item_embeddings"], dtype=np.float32)
        self.item_bias = np.ascontiguousarray(arrays["item_bias"], dtype=np.float32)
        self.history_embeddings = np.ascontiguousarray(arrays["history_embeddings"], dtype=np.float32)
        self.layers = [
            (np.ascontiguousarray(arrays[f"{name}_weight"].T, dtype=np.float32),
             np.asarray(arrays[f"{name}_bias"], dtype=np.float32))
            for name in scoring["layers"]
        ]
        self.inputs: list[_Input] = []
        offset = 0
        for spec in scoring["inputs"]:
            if spec["encoding"] == "one_hot":
                vocab = {value: i for i, value in enumerate(spec["vocab"])}
                self.inputs.append(_Input(spec["field"], vocab, 0.0, 1.0, 0.0, offset))
                offset += len(vocab)
            elif spec["encoding"] == "standard":
                self.inputs.append(_Input(spec["field"], None, float(spec["mean"]), float(spec["std"]) or 1.0,
                                          float(spec.get("missing", 0.0)), offset))
                offset += 1
            else:
                raise ValueError(f"scoring.json: unknown encoding {spec['encoding']!r}")
        self.input_width = offset

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Scorer":
        return cls(bundle.scoring, bundle.arrays)

    def encode(self, fields: Mapping[str, Any]) -> np.ndarray:
        """The user-tower input for the signup fields, as the naive pipeline sees them."""
        x = np.zeros(self.input_width, dtype=np.float32)
        for spec in self.inputs:
            value = fields.get(spec.field)
            if spec.one_hot is not None:
                position = spec.one_hot.get(value) if isinstance(value, str) else None
                if position is not None:
                    x[spec.offset + position] = 1.0
            else:
                raw = spec.missing if value is None else naive_number(value)
                x[spec.offset] = (raw - spec.mean) / spec.std
        return x

    def history_indices(self, history: Sequence[str]) -> list[int]:
        """Catalogue positions of the known history items; unknown ids are ignored."""
        index = self.item_index
        return [index[item] for item in history if item in index]

    def recommend(self, fields: Mapping[str, Any], history: Sequence[str], k: int) -> Recommendation:
        """Top-k items for a request, history items excluded; raise ModelError on non-finite scores."""
        h = self.encode(fields)
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight + bias
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        seen = self.history_indices(history)
        if seen:
            h = h + self.history_embeddings[seen].mean(axis=0)
        if not np.isfinite(h).all():
            raise ModelError("user vector is not finite")
        scores = self.item_embeddings @ h + self.item_bias
        if seen:
            scores[seen] = -np.inf
        k = min(k, len(self.item_ids) - len(set(seen)))
        if k <= 0:
            return Recommendation([], [])
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        best = scores[top]
        if not np.isfinite(best).all():
            raise ModelError("scores are not finite")
        return Recommendation([self.item_ids[i] for i in top], [float(s) for s in best])
