"""The approximate item index of a large catalogue: built at export time, searched by the serving scorer.

A score is an inner product with the item bias folded in: `[embedding, bias] . [u, 1]`
(`scoring_vectors`). Inner-product graphs and cells recall poorly (a vector of large norm is
everyone's neighbour, and cells are drawn around no centre that means anything for a dot
product), so the index searches by distance after the standard reduction of maximum inner
product to nearest neighbour: each item vector x gets one more coordinate sqrt(R^2 - |x|^2),
R the largest norm, and the query q a 0 there; then |q' - x'|^2 = |q|^2 + R^2 - 2 q.x and the
nearest item is the best-scoring one.

The index is faiss's inverted file: k-means cells over the reduced vectors, a query scans the
`nprobe` nearest cells. The cells hold 4-bit product-quantised codes (`IndexIVFPQFastScan`, one
sub-quantizer per coordinate, 33 bytes an item at 66 coordinates), scanned with SIMD lookup tables,
and the scan ranks by inner product, not by the reduced distance: each code is the item's
residual from its cell's centre c, so a score reads `q . c + q . code`. The reduced distance
would also count the code's error in the added coordinate, which the query's 0 there makes no
part of a score: that coordinate is about R for most items (R is set by the few largest), so its
error, doubled and times R, outweighed the rest: ranked by reduced distance, 8 times the candidates
held 0.70-0.77 of the exact top 10 at 1M items, by inner product 0.95-0.97 (docs/model.md).
The cells are still chosen by the reduced distance, the nearest of `[q, 0]`, but here and not in
faiss's search: its quantizer is L2 and would choose the same cells, then add the distance to
each centre where the scan needs `q . c`. The scan returns `RERANK` times the
candidates asked for, which the serving scorer scores exactly, so an answer's order and scores
are exact. docs/model.md ("Large catalogues") says why this index and not the plain inverted file
(`IndexIVFFlat`, still loaded and served for older bundles) or an HNSW graph.

This module is imported by serving; faiss is imported only when an index is built or loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
RERANK = 4
"""Candidates returned per item asked for, to be scored exactly: the codes' ranking is approximate
(at 1M items, 4 gave recall@10 0.969 against 0.975 for exact distances over the same cells)."""
ADD_CHUNK = 50_000
"""Items coded and added at a time, so that a long export can show how far it is (the same index bytes)."""
TRAINING_POINTS_PER_CELL = 40
MIN_TRAINING_POINTS = 16 * 64
"""At least this many training points (when there are as many items): 64 for each of a sub-quantizer's 16 centres."""
KIND = "ivf-pq4fs-ip-l2-reduced-cells-rescored"
"""scoring.json's index "kind" written today."""
IVF_FLAT_KIND = "ivf-flat-l2-reduced"
"""The kind of bundles exported before the quantised cells: an `IndexIVFFlat`, still served."""


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
    return {"file": INDEX_FILE, "kind": KIND, "nlist": nlist, "nprobe": min(NPROBE, nlist), "rerank": RERANK}


def build_index(vectors: np.ndarray, settings: dict[str, Any], seed: int = 0,
                added: Callable[[int, int], None] = lambda done, total: None) -> bytes:
    """The serialised faiss index of `scoring_vectors` rows, shaped by `index_settings` (either kind);
    `added(done, total)` after the k-means and after each chunk of items coded into the cells."""
    import faiss

    reduced = _reduced(vectors)
    dim, nlist = reduced.shape[1], settings["nlist"]
    rng = np.random.default_rng(seed)
    sample_size = min(len(reduced), max(nlist * TRAINING_POINTS_PER_CELL, MIN_TRAINING_POINTS))
    sample = reduced[np.sort(rng.choice(len(reduced), sample_size, replace=False))]
    quantizer = faiss.IndexFlatL2(dim)
    if settings["kind"] == IVF_FLAT_KIND:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    elif settings["kind"] == KIND:
        # 4 bits for each coordinate, blocks of 32 codes (faiss's SIMD layout); the residual from
        # the cell's centre is coded, with the centre found by the L2 quantizer at add
        index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, dim, 4, faiss.METRIC_INNER_PRODUCT, 32)
        index.by_residual = True
        # faiss makes an inner-product index's k-means spherical (unit centres); these cells are
        # the plain file's, k-means by distance over the reduced vectors
        index.cp.spherical = False
    else:
        raise ValueError(f"unknown item index kind {settings['kind']!r}")
    index.cp.seed = seed
    index.train(sample)
    added(0, len(reduced))
    for start in range(0, len(reduced), ADD_CHUNK):
        index.add(reduced[start:start + ADD_CHUNK])
        added(min(start + ADD_CHUNK, len(reduced)), len(reduced))
    return faiss.serialize_index(index).tobytes()


@dataclass(frozen=True)
class ItemIndex:
    """A loaded index: `candidates(query, n)` gives catalogue positions among which, most likely, are
    the n best-scoring items; the caller scores them exactly."""

    index: Any
    dim: int
    nprobe: int
    rerank: int
    centres: np.ndarray | None = None
    """Quantised kind: the cells' centres without their added coordinate (the query's 0 meets it)."""
    half_norms: np.ndarray | None = None
    """Quantised kind: half of each full centre's squared norm, for choosing cells by reduced distance."""

    @classmethod
    def from_bytes(cls, data: bytes, settings: dict[str, Any]) -> "ItemIndex":
        """Load a serialised index with its scoring.json settings (either kind)."""
        import faiss

        # One request is one core's work (a worker per core); faiss's OpenMP pool would only
        # make a single query wait for threads the other workers are using.
        faiss.omp_set_num_threads(1)
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        ivf = faiss.extract_index_ivf(index)
        nprobe = min(int(settings["nprobe"]), ivf.nlist)
        ivf.nprobe = nprobe
        if settings["kind"] == IVF_FLAT_KIND:
            return cls(index, index.d, nprobe, 1)
        if settings["kind"] != KIND:
            raise ValueError(f"scoring.json: unknown item index kind {settings['kind']!r}")
        centres = faiss.downcast_index(index.quantizer).reconstruct_n(0, index.nlist)
        half_norms = (np.einsum("ij,ij->i", centres, centres, dtype=np.float64) / 2).astype(np.float32)
        return cls(index, index.d, nprobe, int(settings["rerank"]), np.ascontiguousarray(centres[:, :-1]), half_norms)

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Positions of about `rerank` * n items among which those whose score `scoring_vector . query`
        is highest most likely are (the plain inverted file: the n best of its cells, best first)."""
        import faiss

        reduced = np.zeros((1, self.dim), dtype=np.float32)
        reduced[0, :-1] = query
        if self.centres is None:
            _, found = self.index.search(reduced, n)
            found = found[0]
            return found[found >= 0]
        # The nearest cells of [q, 0]: |[q, 0] - c|^2 = |q|^2 + |c|^2 - 2 q . c, so the highest
        # q . c - |c|^2 / 2; their q . c is the centre's share of every score in the cell. numpy
        # does in one product what faiss's quantizer search would, and gives q . c besides.
        dots = self.centres @ query
        cells = np.argpartition(dots - self.half_norms, -self.nprobe)[-self.nprobe:].astype(np.int64)
        # float32 for faiss's float pointers: a float64 query would make float64 dots
        coarse = np.ascontiguousarray(dots[cells], dtype=np.float32)
        wanted = n * self.rerank
        distances = np.empty((1, wanted), dtype=np.float32)
        found = np.empty((1, wanted), dtype=np.int64)
        # the C entry point: its Python wrapper's checks and copies cost more than the scan of a cell
        self.index.search_preassigned_c(1, faiss.swig_ptr(reduced), wanted, faiss.swig_ptr(cells),
                                        faiss.swig_ptr(coarse), faiss.swig_ptr(distances), faiss.swig_ptr(found), False)
        found = found[0]
        return found[found >= 0]


def recall_at(k: int, found: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact top-k that the approximate top-k found."""
    if not exact:
        return math.nan
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / max(1, len(e[:k])) for f, e in zip(found, exact)]))
