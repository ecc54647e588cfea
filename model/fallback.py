"""The popularity fallback: what a request gets when the model cannot be trusted with it."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from model.recommender import Recommendation


class PopularityFallback:
    """Top items of the request's segment (e.g. its market) when known, else of all traffic."""

    bounded = True
    """A walk down precomputed lists: it cannot hang."""

    def __init__(self, popularity: Mapping[str, Any]):
        self.segment_field: str | None = popularity.get("segment_field")
        self.global_ranking = self._ranking(popularity["global"])
        self.segment_rankings = {name: self._ranking(table) for name, table in popularity.get("segments", {}).items()}
        self.catalogue = [item for item, _ in self.global_ranking]

    @staticmethod
    def _ranking(table: Mapping[str, Any]) -> list[tuple[str, float]]:
        return [(item, float(score)) for item, score in zip(table["items"], table["scores"])]

    def recommend(self, fields: Mapping[str, Any], history: Sequence[str], k: int) -> Recommendation:
        """Top-k popular items for the request's segment, history excluded, topped up from the global list."""
        segment = fields.get(self.segment_field) if self.segment_field else None
        ranking = self.segment_rankings.get(segment, self.global_ranking) if isinstance(segment, str) else self.global_ranking
        excluded = set(history)
        items: list[str] = []
        scores: list[float] = []
        for candidates in (ranking, self.global_ranking):
            for item, score in candidates:
                if len(items) == k:
                    return Recommendation(items, scores)
                if item not in excluded:
                    excluded.add(item)
                    items.append(item)
                    scores.append(score)
        return Recommendation(items, scores)
