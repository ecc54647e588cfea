"""Inference from a bundle with numpy alone: no torch, no torch-geometric, no graph.

Implements the formula of docs/bundle.md: a small user tower over the encoded signup
fields, plus the mean embedding of the known history items, dotted with the exported item
embeddings. Encoding is the naive pipeline a model endpoint without checks applies (a
missing number counts as its `missing` value, a non-number as 0, an unseen category as no
category): the guard, not the scorer, decides whether the model can be trusted with a request.
The one scorer: serving answers with it and `recguard evaluate` measures it (model/evaluate.py).

Where a request's time goes is set at load, not per request. The encoding and the tower's first
layer are one step: a category selects a row of the first layer's weights (with its bias added
in), the numbers are one small product. Every later layer carries the previous one's bias as the
weight of a unit that is always 1, and the last one ends in that 1: its output is [u, 1]. The
items are `[embedding, bias]` rows (model/item_index.py), so scoring a catalogue exactly is one
matrix-vector product, [u, 1] times the item vectors negated and transposed once at load: the
product is ready for `argpartition` without a copy. A bundle with an item index (large
catalogues) asks it for candidates instead and scores only those, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from model.bundle import Bundle
from model.features import naive_number
from model.item_index import ItemIndex, scoring_vectors
from model.recommender import ModelError, Recommendation

MEAN_WEIGHTS_UP_TO = 64
"""Histories up to this long find their mean's weights (1/n each) made at load; a longer one makes its own."""


@dataclass(frozen=True, slots=True)
class _Number:
    field: str
    mean: float
    std: float
    missing: float


def _with_unit(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A layer's (inputs + 1) x (outputs + 1) weights: its bias as the weight of the always-1 input, and
    an always-1 output for the next layer."""
    rows, columns = weight.shape
    folded = np.zeros((rows + 1, columns + 1), dtype=np.float32)
    folded[:rows, :columns] = weight
    folded[rows, :columns] = bias
    folded[rows, columns] = 1.0
    return folded


class Scorer:
    """Scores requests against the catalogue with the exported arrays of a bundle."""

    bounded = True
    """Its run time is set by the bundle's shapes, k and the history limit (no I/O, no locks)."""

    def __init__(self, scoring: Mapping[str, Any], arrays: Mapping[str, np.ndarray], item_index: ItemIndex | None = None):
        self.item_ids: list[str] = [str(item) for item in arrays["item_ids"]]
        self.catalogue = self.item_ids
        self.position_of = {item: i for i, item in enumerate(self.item_ids)}
        """Each item id's row in the catalogue's arrays."""
        weights = [np.asarray(arrays[f"{name}_weight"], dtype=np.float32).T for name in scoring["layers"]]
        biases = [np.asarray(arrays[f"{name}_bias"], dtype=np.float32) for name in scoring["layers"]]
        first = _with_unit(weights[0], biases[0])
        self._later_layers = [np.ascontiguousarray(_with_unit(w, b)) for w, b in zip(weights[1:], biases[1:])]
        self._base = first[-1]
        self._categories: list[tuple[str, dict[str, np.ndarray]]] = []
        self._numbers: list[_Number] = []
        number_rows, offset = [], 0
        for spec in scoring["inputs"]:
            if spec["encoding"] == "one_hot":
                rows = {value: first[offset + i] for i, value in enumerate(spec["vocab"])}
                self._categories.append((spec["field"], rows))
                offset += len(rows)
            elif spec["encoding"] == "standard":
                self._numbers.append(_Number(spec["field"], float(spec["mean"]), float(spec["std"]) or 1.0,
                                            float(spec.get("missing", 0.0))))
                number_rows.append(first[offset])
                offset += 1
            else:
                raise ValueError(f"scoring.json: unknown encoding {spec['encoding']!r}")
        self._number_weights = np.ascontiguousarray(np.array(number_rows, dtype=np.float32).reshape(-1, first.shape[1]))
        history = np.asarray(arrays["history_embeddings"], dtype=np.float32)
        self._history = np.zeros((history.shape[0], history.shape[1] + 1), dtype=np.float32)
        self._history[:, :-1] = history
        self._mean_weights = [np.full(n, 1.0 / n, dtype=np.float32) for n in range(1, MEAN_WEIGHTS_UP_TO + 1)]
        vectors = scoring_vectors(arrays["item_embeddings"], arrays["item_bias"])
        self.item_index = item_index
        """The approximate item index of a large catalogue (None: every item is scored)."""
        if item_index is None:
            self._negated_items = np.ascontiguousarray(-vectors.T)
        else:
            self._vectors = vectors

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "Scorer":
        """The scorer of a full bundle, with its item index when it has one."""
        index = None
        if bundle.item_index is not None:
            index = ItemIndex.from_bytes(bundle.item_index, bundle.scoring["index"])
        return cls(bundle.scoring, bundle.arrays, index)

    def history_indices(self, history: Sequence[str]) -> list[int]:
        """Catalogue positions of the known history items; unknown ids are ignored."""
        index = self.position_of
        return [index[item] for item in history if item in index]

    def user_vector(self, fields: Mapping[str, Any], seen: list[int]) -> np.ndarray:
        """[u, 1] for the signup fields as the naive pipeline reads them (a missing number is its
        `missing` value, an unseen category no category) and the known history's positions: the
        tower's output plus the mean history embedding, and the bias coordinate."""
        values = []
        for number in self._numbers:
            value = fields.get(number.field)
            raw = number.missing if value is None else naive_number(value)
            values.append((raw - number.mean) / number.std)
        h = np.array(values, dtype=np.float32) @ self._number_weights
        h += self._base
        for field, rows in self._categories:
            value = fields.get(field)
            row = rows.get(value) if isinstance(value, str) else None
            if row is not None:
                h += row
        for weight in self._later_layers:
            np.maximum(h, 0.0, out=h)
            h = h @ weight
        if seen:
            n = len(seen)
            mean = self._mean_weights[n - 1] if n <= len(self._mean_weights) else np.full(n, 1.0 / n, dtype=np.float32)
            h += mean @ self._history.take(seen, axis=0)
        return h

    def recommend(self, fields: Mapping[str, Any], history: Sequence[str], k: int) -> Recommendation:
        """Top-k items for a request, history items excluded, ties in catalogue order; raise ModelError
        on non-finite scores."""
        seen = self.history_indices(history)
        query = self.user_vector(fields, seen)
        k = min(k, len(self.item_ids) - (len(set(seen)) if seen else 0))
        if k <= 0:
            return Recommendation([], [])
        if self.item_index is None:
            # A non-finite user vector needs no check of its own here: it makes a best score
            # non-finite (NaN spreads to every score, an infinity to the items it meets).
            negated = query @ self._negated_items
            if seen:
                negated[seen] = np.inf
            top = np.argpartition(negated, k - 1)[:k]
            values = negated[top].tolist()
        else:
            if not np.isfinite(query).all():
                raise ModelError("user vector is not finite")
            top, values = self._approximate(query, seen, k)
        # the sum of k float32 values is finite exactly when every one of them is
        if not math.isfinite(sum(values)):
            raise ModelError("scores are not finite")
        ranked = sorted(zip(values, top.tolist()))
        ids = self.item_ids
        return Recommendation([ids[i] for _, i in ranked], [-value for value, _ in ranked])

    def _approximate(self, query: np.ndarray, seen: list[int], k: int) -> tuple[np.ndarray, list[float]]:
        """The k best candidates of the index, history excluded, with their negated exact scores."""
        # Over-fetch by the history so that k remain once it is taken out (the index returns a
        # multiple of what it is asked for, its `rerank`); the candidates are scored exactly, so
        # an answer's scores and order are the exact ones of the items found.
        found = self.item_index.candidates(query, k + len(seen))
        if seen:
            found = found[~(found[:, None] == np.asarray(seen)[None, :]).any(axis=1)]
        negated = self._vectors[found] @ -query
        top = np.argpartition(negated, k - 1)[:k] if k < found.size else np.arange(found.size)
        return found[top], negated[top].tolist()
