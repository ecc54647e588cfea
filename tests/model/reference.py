"""An independent implementation of docs/bundle.md's scoring formula, for tests only.

The serving scorer (model/scorer.py) answers requests and `recguard evaluate`
measures it; this reference, built on the training side's encoder (model/features.py) and
checked against the torch model, holds it to the contract."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from model.features import encode


class NumpyScorer:
    """Scores requests from scoring.json + scoring.npz alone, following docs/bundle.md to the letter."""

    def __init__(self, scoring: Mapping[str, Any], arrays: Mapping[str, np.ndarray]):
        self.inputs = scoring["inputs"]
        self.layers = [(arrays[f"{name}_weight"], arrays[f"{name}_bias"]) for name in scoring["layers"]]
        self.item_ids = [str(item) for item in arrays["item_ids"]]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.item_embeddings = arrays["item_embeddings"]
        self.item_bias = arrays["item_bias"]
        self.history_embeddings = arrays["history_embeddings"]

    def history_indices(self, request: Mapping[str, Any]) -> list[int]:
        """Catalogue indices of the request's known history items; unknown ids are ignored."""
        history = request.get("history") or []
        return [self.index[item] for item in history if isinstance(item, str) and item in self.index]

    def scores(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Scores of every catalogue item (columns, in catalogue order) for every request (rows)."""
        h = encode(self.inputs, requests)
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight.T + bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        for row, request in enumerate(requests):
            known = self.history_indices(request)
            if known:
                h[row] += self.history_embeddings[known].mean(axis=0)
        return h @ self.item_embeddings.T + self.item_bias

    def top_k(self, request: Mapping[str, Any], k: int = 10) -> list[int]:
        """Indices of the k best items for one request, history excluded, ties in catalogue order."""
        scores = self.scores([request])[0]
        scores[self.history_indices(request)] = -np.inf
        order = np.lexsort((np.arange(scores.size), -scores))
        return order[:k].tolist()
