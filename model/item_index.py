"""The approximate item index of a large catalogue: built at export time, searched by the serving scorer.

A score is an inner product with the item bias folded in: `[embedding, bias] . [u, 1]`
(`scoring_vectors`). Inner-product graphs and cells recall poorly (a vector of large norm is
everyone's neighbour, and cells are drawn around no centre that means anything for a dot
product), so the index searches by distance after the standard reduction of maximum inner
product to nearest neighbour: each item vector x gets one more coordinate sqrt(R^2 - |x|^2),
R the largest norm, and the query q a 0 there; then |q' - x'|^2 = |q|^2 + R^2 - 2 q.x and the
nearest item is the best-scoring one.

The index is faiss's inverted file (`IndexIVFFlat`): k-means cells over the reduced vectors,
a query scans the `nprobe` nearest cells. docs/model.md ("Large catalogues") says why this
one and not an HNSW graph (faiss's or hnswlib's): on our vectors it reached the recall target
at a lower cost per query and builds in seconds instead of many minutes.

This module is imported by serving; faiss is imported only when an index is built or loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.bundle import INDEX_FILE

ANN_MIN_ITEMS = 100_000
"""Catalogues of at least this many items get an index at export; smaller ones are scored exactly
(at 100,000 items an exact answer costs about 0.5 ms on one core, the index about 0.2 ms)."""
CELL_SIZE = 250
"""Items per k-means cell on average: nlist = n / CELL_SIZE."""
NPROBE = 48
"""Cells scanned per query: measured on held-out users (docs/benchmarks.md), recall@10 >= 0.95 at 1M items."""
TRAINING_POINTS_PER_CELL = 40


def scoring_vectors(item_embeddings: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    """Each item's `[embedding, bias]` as float32 rows: its score for a user u is the row dotted with [u, 1]."""
    vectors = np.empty((item_embeddings.shape[0], item_embeddings.shape[1] + 1), dtype=np.float32)
    vectors[:, :-1] = item_embeddings
    vectors[:, -1] = item_bias
    return vectors


def _reduced(vectors: np.ndarray) -> np.ndarray:
    squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    lift = np.sqrt(np.maximum(squared.max() - squared, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, lift[:, None]]))


def index_settings(n_items: int) -> dict[str, Any]:
    """The index's shape for a catalogue of `n_items` (recorded in scoring.json's "index")."""
    nlist = max(1, round(n_items / CELL_SIZE))
    return {"file": INDEX_FILE, "kind": "ivf-flat-l2-reduced", "nlist": nlist, "nprobe": min(NPROBE, nlist)}


def build_index(vectors: np.ndarray, settings: dict[str, Any], seed: int = 0) -> bytes:
    """The serialised faiss index of `scoring_vectors` rows, shaped by `index_settings`."""
    import faiss

    reduced = _reduced(vectors)
    dim, nlist = reduced.shape[1], settings["nlist"]
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    rng = np.random.default_rng(seed)
    sample_size = min(len(reduced), nlist * TRAINING_POINTS_PER_CELL)
    index.cp.seed = seed
    index.train(reduced[np.sort(rng.choice(len(reduced), sample_size, replace=False))])
    index.add(reduced)
    return faiss.serialize_index(index).tobytes()


@dataclass(frozen=True)
class ItemIndex:
    """A loaded index: `candidates(query, n)` gives catalogue positions of about the n best-scoring items."""

    index: Any
    dim: int

    @classmethod
    def from_bytes(cls, data: bytes, settings: dict[str, Any]) -> "ItemIndex":
        """Load a serialised index with its scoring.json settings."""
        import faiss

        # One request is one core's work (a worker per core); faiss's OpenMP pool would only
        # make a single query wait for threads the other workers are using.
        faiss.omp_set_num_threads(1)
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        faiss.extract_index_ivf(index).nprobe = int(settings["nprobe"])
        return cls(index, index.d)

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Positions of the (about) n items whose score `scoring_vector . query` is highest, best first."""
        reduced = np.zeros((1, self.dim), dtype=np.float32)
        reduced[0, :-1] = query
        _, found = self.index.search(reduced, n)
        found = found[0]
        return found[found >= 0]


def recall_at(k: int, found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact top-k that the approximate top-k found."""
    if not exact:
        return math.nan
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / max(1, len(e[:k])) for f, e in zip(found, exact)]))
