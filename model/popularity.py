"""The popularity fallback (popularity.json): the most interacted-with items, overall and per segment.

A segment's counts are shrunk toward the global ones, `(segment count + s x global share) /
(segment total + s)`: a large segment keeps its own taste, a small one borrows the global
list's. The strength `s` is chosen on held-out interactions (every user's last item, counted
out of the lists it is scored against): the one whose lists hit most often at 10, the
strongest among equals, and "global only" when no segment list beats the global one. The
serving fallback (model/fallback.py) is the one ranker that reads the lists.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model.dataset import Dataset

TOP_N = 200
K = 10
STRENGTHS = (0.0, 10.0, 30.0, 100.0, 300.0, 1_000.0, 3_000.0, 10_000.0, 30_000.0, 100_000.0, math.inf)
"""Candidate shrinkage strengths, in interactions; infinity keeps the global list for every segment."""


def _ranking(scores: np.ndarray, item_ids: list[str], top_n: int) -> dict[str, list]:
    # Stable sort on the negated scores: ties keep catalogue order.
    order = np.argsort(-scores, kind="stable")[:top_n]
    order = order[scores[order] > 0]
    return {"items": [item_ids[i] for i in order], "scores": [float(scores[i]) for i in order]}


def _shrunk(counts: np.ndarray, global_share: np.ndarray, strength: float) -> np.ndarray:
    if math.isinf(strength):
        return global_share
    return (counts + strength * global_share) / (counts.sum() + strength)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def choose_strength(per_segment: dict[str, np.ndarray], last: dict[str, np.ndarray]) -> float:
    """The strength whose shrunk lists best predict each segment's held-out `last` items at K, given
    `per_segment` counts that exclude those items."""
    overall = sum(per_segment.values(), np.zeros_like(next(iter(per_segment.values()))))
    total = overall.sum()
    global_share = overall / total if total else overall.astype(np.float64)
    best, best_hits = math.inf, -1
    for strength in sorted(STRENGTHS, reverse=True):
        hits = 0
        for segment, counts in per_segment.items():
            targets = last.get(segment)
            if targets is not None and len(targets):
                hits += int(np.isin(targets, _top(_shrunk(counts, global_share, strength), K)).sum())
        if hits > best_hits:
            best, best_hits = strength, hits
    return best


def build_popularity(data: Dataset, top_n: int = TOP_N) -> dict[str, Any]:
    """Global and per-segment top-`top_n` items; a score is the item's (shrunk) share of the interactions."""
    n_items = len(data.item_ids)
    segment_field = data.schema.users.segment
    overall = np.zeros(n_items, dtype=np.int64)
    for sequence in data.sequences:
        np.add.at(overall, sequence, 1)
    global_share = overall / max(int(overall.sum()), 1)
    popularity: dict[str, Any] = {"segment_field": segment_field, "top_n": top_n,
                                  "global": _ranking(global_share, data.item_ids, top_n), "segments": {}}
    if segment_field is None:
        return popularity

    per_segment: dict[str, np.ndarray] = {}
    held_in: dict[str, np.ndarray] = {}
    last: dict[str, list[int]] = {}
    for user, sequence in zip(data.users, data.sequences):
        segment = user[segment_field]
        if segment is None or not len(sequence):
            continue
        per_segment.setdefault(segment, np.zeros(n_items, dtype=np.int64))
        np.add.at(per_segment[segment], sequence, 1)
        held_in.setdefault(segment, np.zeros(n_items, dtype=np.int64))
        if len(sequence) >= 2:
            np.add.at(held_in[segment], sequence[:-1], 1)
            last.setdefault(segment, []).append(int(sequence[-1]))
        else:
            np.add.at(held_in[segment], sequence, 1)
    if not per_segment:
        return popularity
    strength = choose_strength(held_in, {s: np.array(items) for s, items in last.items()})
    popularity["shrinkage"] = None if math.isinf(strength) else strength
    if not math.isinf(strength):
        popularity["segments"] = {
            s: _ranking(_shrunk(per_segment[s], global_share, strength), data.item_ids, top_n) for s in sorted(per_segment)
        }
    return popularity
