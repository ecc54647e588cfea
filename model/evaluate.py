"""Offline evaluation of a bundle on held-out users, with the numpy reference scorer of docs/bundle.md.

Evaluation reads only the bundle (never torch), so the figures it prints are those of the
exported model, scored exactly as the contract says serving scores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from model.bundle import load_bundle
from model.errors import RecguardError
from model.features import encode
from model.popularity import recommend

K = 10
# Unit mistakes a form can make: the factor that turns the trained unit into the wrong one.
CORRUPTIONS = {"lbs": 2.20462, "inches": 1 / 2.54}


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

    def user_vectors(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """One user vector per request: the tower over the encoded form, plus the mean known-history embedding."""
        h = encode(self.inputs, requests)
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight.T + bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        for row, request in enumerate(requests):
            known = self.history_indices(request)
            if known:
                h[row] += self.history_embeddings[known].mean(axis=0)
        return h

    def scores(self, requests: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Scores of every catalogue item (columns, in catalogue order) for every request (rows)."""
        return self.user_vectors(requests) @ self.item_embeddings.T + self.item_bias

    def top_k(self, request: Mapping[str, Any], k: int = K) -> list[int]:
        """Indices of the k best items for one request, history excluded, ties in catalogue order."""
        scores = self.scores([request])[0]
        scores[self.history_indices(request)] = -np.inf
        return top_indices(scores, k)


def top_indices(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, ties broken by the lower index, without sorting the whole array."""
    k = min(k, scores.size)
    threshold = np.partition(scores, scores.size - k)[scores.size - k]
    candidates = np.flatnonzero(scores >= threshold)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]].tolist()


def ranking_metrics(top: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """hit_rate@k and ndcg@k (one relevant item per row) of ranked item lists `top` (rows x k)."""
    k = top.shape[1]
    hits = top == np.asarray(targets)[:, None]
    rank = hits.argmax(axis=1)
    found = hits.any(axis=1)
    gain = np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hit_rate@{k}": round(float(found.mean()), 4), f"ndcg@{k}": round(float(gain.mean()), 4)}


def parse_corruption(spec: str) -> tuple[str, str]:
    """'weight_kg:lbs' -> ('weight_kg', 'lbs'); RecguardError for anything else."""
    field, _, kind = spec.partition(":")
    if not field or kind not in CORRUPTIONS:
        raise RecguardError(f"--corrupt {spec!r}: expected FIELD:KIND with KIND one of {', '.join(CORRUPTIONS)}")
    return field, kind


def corrupt(requests: list[dict[str, Any]], field: str, kind: str) -> list[dict[str, Any]]:
    """Copies of `requests` with `field` converted to the wrong unit `kind`."""
    if not any(isinstance(r.get(field), (int, float)) for r in requests):
        raise RecguardError(f"--corrupt {field}:{kind}: the held-out requests have no numeric field {field!r}")
    factor = CORRUPTIONS[kind]
    return [r | {field: r[field] * factor} if isinstance(r.get(field), (int, float)) else r for r in requests]


def read_holdout(data_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """Requests and next items of holdout.jsonl."""
    path = Path(data_dir) / "holdout.jsonl"
    if not path.is_file():
        raise RecguardError(f"holdout.jsonl: not found in {data_dir}")
    requests, targets = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                request, target = row["request"], row["next_item"]
            except (ValueError, KeyError, TypeError):
                request, target = None, None
            history = request.get("history", []) if isinstance(request, dict) else None
            if not isinstance(target, str) or not isinstance(history, list) or not all(isinstance(i, str) for i in history):
                raise RecguardError(
                    f"holdout.jsonl: line {number} is not {{\"request\": {{..., \"history\": [item ids]}}, \"next_item\": item id}}"
                )
            requests.append(request)
            targets.append(target)
    if not requests:
        raise RecguardError("holdout.jsonl: no held-out users")
    return requests, targets


def evaluate(bundle_path: str | os.PathLike, data_dir: str | os.PathLike, corruptions: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """hit_rate@10 and ndcg@10 of the bundle's model and of its popularity fallback on the held-out users."""
    bundle = load_bundle(bundle_path)
    requests, targets = read_holdout(data_dir)
    for spec in corruptions:
        requests = corrupt(requests, *parse_corruption(spec))
    scorer = NumpyScorer(bundle.scoring, bundle.arrays)
    scores = scorer.scores(requests)
    model_top, popular_top = [], []
    for row, request in enumerate(requests):
        history = set(request.get("history") or [])
        scores[row, scorer.history_indices(request)] = -np.inf
        model_top.append([scorer.item_ids[i] for i in top_indices(scores[row], K)])
        popular = recommend(bundle.popularity, request, K, exclude=history)
        popular_top.append(popular + [""] * (K - len(popular)))
    return {
        "model": ranking_metrics(np.array(model_top), np.array(targets)),
        "popularity": ranking_metrics(np.array(popular_top), np.array(targets)),
    }
