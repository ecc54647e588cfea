"""The popularity fallback (popularity.json): the most interacted-with items, overall and per segment."""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from model.dataset import Dataset
from model.profile import SEGMENT_FIELD

TOP_N = 200


def _ranking(counts: np.ndarray, item_ids: list[str], top_n: int) -> dict[str, list]:
    total = counts.sum()
    # Stable sort on the negated counts: ties keep catalogue order.
    order = np.argsort(-counts, kind="stable")[:top_n]
    order = order[counts[order] > 0]
    return {"items": [item_ids[i] for i in order], "scores": [float(counts[i] / total) for i in order]}


def build_popularity(data: Dataset, top_n: int = TOP_N) -> dict[str, Any]:
    """Global and per-segment top-`top_n` items; each score is the item's share of the (segment's) interactions."""
    n_items = len(data.item_ids)
    per_segment: dict[str, np.ndarray] = {}
    for user, sequence in zip(data.users, data.sequences):
        segment = str(user[SEGMENT_FIELD])
        per_segment.setdefault(segment, np.zeros(n_items, dtype=np.int64))
        np.add.at(per_segment[segment], sequence, 1)
    overall = sum(per_segment.values(), np.zeros(n_items, dtype=np.int64))
    return {
        "segment_field": SEGMENT_FIELD,
        "top_n": top_n,
        "global": _ranking(overall, data.item_ids, top_n),
        "segments": {s: _ranking(per_segment[s], data.item_ids, top_n) for s in sorted(per_segment)},
    }


def recommend(popularity: Mapping[str, Any], request: Mapping[str, Any], k: int, exclude: Collection[str] = ()) -> list[str]:
    """Top-`k` items for a request: its segment's ranking, or the global one for an unknown segment."""
    segment = request.get(popularity["segment_field"])
    ranking = popularity["segments"].get(segment) if isinstance(segment, str) else None
    items = (ranking or popularity["global"])["items"]
    return [item for item in items if item not in exclude][:k]
