"""The approximate item index of a large catalogue: what a shopper gets from it is what exact scoring
(the independent reference of tests/model/reference.py) would give, or nearly; never a history item;
the bundle that carries it is verified like every other file; and a bundle exported with the
plain inverted file of before the quantised cells still loads and serves."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import model.item_index
import model.train
from model.bundle import INDEX_FILE, BundleError, load_bundle, write_bundle
from model.dataset import load_dataset
from model.evaluate import read_holdout
from model.item_index import (
    IVF_FLAT_KIND,
    KIND,
    ItemIndex,
    build_index,
    index_settings,
    recall_at,
    scoring_vectors,
)
from model.scorer import Scorer
from model.train import TrainConfig, train
from tests.harness.bundles import flipped_copy
from tests.harness.proxy import ProxyProcess
from tests.model.reference import NumpyScorer


def _indexed(bundle, nlist: int, nprobe: int) -> Scorer:
    settings = {**index_settings(len(bundle.catalogue)), "nlist": nlist, "nprobe": nprobe}
    vectors = scoring_vectors(bundle.arrays["item_embeddings"], bundle.arrays["item_bias"])
    return Scorer(bundle.scoring, bundle.arrays, ItemIndex.from_bytes(build_index(vectors, settings), settings))


def _answers(scorer: Scorer, holdout: list[dict]) -> list[list[str]]:
    return [scorer.recommend(body, body["history"], 10).items for body in holdout]


def _reference_answers(reference: NumpyScorer, holdout: list[dict]) -> list[list[str]]:
    return [[reference.item_ids[i] for i in reference.top_k(body, 10)] for body in holdout]


def test_an_index_that_scans_every_cell_answers_exactly_what_exact_scoring_does(loaded_bundle, tiny_holdout):
    scorer = _indexed(loaded_bundle, nlist=8, nprobe=8)
    reference = NumpyScorer(loaded_bundle.scoring, loaded_bundle.arrays)
    assert _answers(scorer, tiny_holdout) == _reference_answers(reference, tiny_holdout)


def test_scanning_a_third_of_the_cells_still_finds_most_of_the_exact_top_10(loaded_bundle, tiny_holdout):
    # 200 items in 24 cells, 8 scanned: a third of the catalogue is scored per request
    scorer = _indexed(loaded_bundle, nlist=24, nprobe=8)
    reference = NumpyScorer(loaded_bundle.scoring, loaded_bundle.arrays)
    assert recall_at(10, _answers(scorer, tiny_holdout), _reference_answers(reference, tiny_holdout)) >= 0.9


def test_index_answers_leave_out_the_history_and_carry_the_exact_scores(loaded_bundle, tiny_holdout):
    scorer = _indexed(loaded_bundle, nlist=24, nprobe=8)
    reference = NumpyScorer(loaded_bundle.scoring, loaded_bundle.arrays)
    position = {item: i for i, item in enumerate(reference.item_ids)}
    with_history = [body for body in tiny_holdout if body["history"]]
    assert with_history
    for body in with_history:
        answer = scorer.recommend(body, body["history"], 10)
        assert len(answer.items) == 10 and not set(answer.items) & set(body["history"])
        exact = reference.scores([body])[0][[position[item] for item in answer.items]]
        assert answer.scores == pytest.approx(exact.tolist(), rel=1e-5, abs=1e-5)
        assert answer.scores == sorted(answer.scores, reverse=True)


def test_a_history_as_long_as_k_still_leaves_k_items(loaded_bundle, tiny_holdout):
    scorer = _indexed(loaded_bundle, nlist=24, nprobe=8)
    body = tiny_holdout[0]
    first = scorer.recommend(body, [], 10).items
    answer = scorer.recommend(body, first, 10)
    assert len(answer.items) == 10 and not set(answer.items) & set(first)


@pytest.fixture(scope="module")
def indexed_bundle(tiny_data, tmp_path_factory):
    """The tiny data trained with the index threshold lowered below its 200 items: export builds the index."""
    patch = pytest.MonkeyPatch()
    patch.setattr(model.train, "ANN_MIN_ITEMS", 100)
    try:
        config = TrainConfig(epochs=2, batch_size=512, threads=1, validation_users=40)
        return train(load_dataset(tiny_data), tmp_path_factory.mktemp("bundles") / "indexed", config,
                     holdout=read_holdout(tiny_data))
    finally:
        patch.undo()


def test_export_builds_the_index_and_serving_scores_with_it(indexed_bundle, tiny_holdout):
    bundle = load_bundle(indexed_bundle)
    assert INDEX_FILE in bundle.manifest["files"] and bundle.scoring["index"]["file"] == INDEX_FILE
    scorer = Scorer.from_bundle(bundle)
    assert scorer.item_index is not None
    reference = NumpyScorer(bundle.scoring, bundle.arrays)
    # 200 items make one cell: the index scans everything, so the answers are the exact ones
    assert _answers(scorer, tiny_holdout) == _reference_answers(reference, tiny_holdout)


def test_the_index_coded_in_chunks_is_the_index_coded_at_once_and_reports_each_chunk(loaded_bundle, monkeypatch):
    vectors = scoring_vectors(loaded_bundle.arrays["item_embeddings"], loaded_bundle.arrays["item_bias"])
    settings = index_settings(len(vectors)) | {"nlist": 4}
    whole = build_index(vectors, settings)
    monkeypatch.setattr(model.item_index, "ADD_CHUNK", 64)
    reports = []
    assert build_index(vectors, settings, added=lambda done, total: reports.append((done, total))) == whole
    assert reports == [(0, 200), (64, 200), (128, 200), (192, 200), (200, 200)]


@pytest.mark.system  # real gunicorn: faiss loaded in each forked worker, as in production
def test_gunicorn_workers_serve_the_index_answers(indexed_bundle, tiny_holdout):
    scorer = Scorer.from_bundle(load_bundle(indexed_bundle))
    server = ProxyProcess(indexed_bundle, "redis://127.0.0.1:1", "--no-guard", workers=2).start()
    try:
        for body in tiny_holdout[:20]:
            answer = server.predict(body).json()
            expected = scorer.recommend(body, body["history"], 10)
            assert answer["source"] == "model" and answer["items"] == expected.items
            assert answer["scores"] == pytest.approx(expected.scores, rel=1e-6)
    finally:
        server.stop()


def test_an_altered_index_is_refused(indexed_bundle, tmp_path):
    with pytest.raises(BundleError, match=f"^{INDEX_FILE}: checksum does not match"):
        load_bundle(flipped_copy(indexed_bundle, tmp_path, INDEX_FILE))


def test_a_missing_index_is_refused(indexed_bundle, tmp_path):
    copy = shutil.copytree(indexed_bundle, tmp_path / "bundle")
    (copy / INDEX_FILE).unlink()
    with pytest.raises(BundleError, match=f"^{INDEX_FILE}: missing"):
        load_bundle(copy)


def _best(vectors: np.ndarray, query: np.ndarray, positions: np.ndarray, k: int = 10) -> list[int]:
    """The k best of `positions` by exact score, as the serving scorer ranks an index's candidates."""
    return positions[np.argsort(-(vectors[positions] @ query), kind="stable")[:k]].tolist()


def test_the_reduction_to_nearest_neighbours_finds_the_best_inner_product():
    # items of very different norms: a plain nearest-neighbour search would return the items
    # closest to the query, not the best-scoring ones
    rng = np.random.default_rng(3)
    vectors = (rng.normal(size=(2000, 9)) * rng.uniform(0.1, 3.0, size=(2000, 1))).astype(np.float32)
    queries = rng.normal(size=(50, 9)).astype(np.float32)
    exact = [np.argsort(-(vectors @ q), kind="stable")[:10].tolist() for q in queries]
    recall = {}
    for kind in (KIND, IVF_FLAT_KIND):
        settings = {**index_settings(2000), "kind": kind, "nlist": 4, "nprobe": 4}
        index = ItemIndex.from_bytes(build_index(vectors, settings), settings)
        recall[kind] = recall_at(10, [_best(vectors, q, index.candidates(q, 10)) for q in queries], exact)
    # every cell scanned: exact distances find exactly the best; 4-bit codes of 10 coordinates
    # choose 40 candidates of 2,000 that hold nearly all of them
    assert recall[IVF_FLAT_KIND] == 1.0
    assert recall[KIND] >= 0.95


def test_quantised_cells_rescored_recall_what_exact_distances_over_the_same_cells_do():
    # 20,000 items of 33 coordinates in 80 cells. The codes' 4 bits per coordinate only choose
    # the candidates: scanning every cell finds nearly the exact top 10, and scanning 16 finds
    # about what the plain inverted file's exact distances find in the same cells (an isotropic
    # normal, far harder for cells than trained vectors: most misses are the cells')
    rng = np.random.default_rng(5)
    embeddings = (rng.normal(size=(20_000, 32)) * rng.uniform(0.3, 1.5, size=(20_000, 1))).astype(np.float32)
    vectors = scoring_vectors(embeddings, rng.normal(scale=0.5, size=20_000).astype(np.float32))
    queries = np.hstack([rng.normal(size=(200, 32)), np.ones((200, 1))]).astype(np.float32)
    exact = [np.argsort(-(vectors @ q), kind="stable")[:10].tolist() for q in queries]
    recall = {}
    for kind in (KIND, IVF_FLAT_KIND):
        settings = {**index_settings(20_000), "kind": kind, "nlist": 80}
        data = build_index(vectors, settings)
        for nprobe in (80, 16):
            index = ItemIndex.from_bytes(data, {**settings, "nprobe": nprobe})
            recall[kind, nprobe] = recall_at(10, [_best(vectors, q, index.candidates(q, 10)) for q in queries], exact)
            if kind == KIND:
                assert all(len(index.candidates(q, 10)) == 10 * settings["rerank"] for q in queries[:20])
    assert recall[KIND, 80] >= 0.95
    assert recall[KIND, 16] >= recall[IVF_FLAT_KIND, 16] - 0.02


@pytest.fixture(scope="module")
def plain_ivf_bundle(indexed_bundle, tmp_path_factory):
    """The indexed bundle written again as before the quantised cells: kind ivf-flat-l2-reduced, 24 cells, 8 scanned."""
    bundle = load_bundle(indexed_bundle)
    settings = {"file": INDEX_FILE, "kind": IVF_FLAT_KIND, "nlist": 24, "nprobe": 8}
    vectors = scoring_vectors(bundle.arrays["item_embeddings"], bundle.arrays["item_bias"])
    return write_bundle(tmp_path_factory.mktemp("bundles") / "plain-ivf", profile=bundle.profile,
                        popularity=bundle.popularity, catalogue=bundle.catalogue,
                        scoring={**bundle.scoring, "index": settings}, arrays=bundle.arrays,
                        model_state=(indexed_bundle / "model.pt").read_bytes(),
                        item_index=build_index(vectors, settings))


def test_a_bundle_with_the_plain_inverted_file_still_loads_and_serves(plain_ivf_bundle, tiny_holdout):
    bundle = load_bundle(plain_ivf_bundle)
    assert bundle.scoring["index"]["kind"] == IVF_FLAT_KIND
    scorer = Scorer.from_bundle(bundle)
    reference = NumpyScorer(bundle.scoring, bundle.arrays)
    position = {item: i for i, item in enumerate(reference.item_ids)}
    answers = _answers(scorer, tiny_holdout)
    assert recall_at(10, answers, _reference_answers(reference, tiny_holdout)) >= 0.9
    for body, items in zip(tiny_holdout, answers):
        assert len(items) == 10 and not set(items) & set(body["history"])
        answer = scorer.recommend(body, body["history"], 10)
        exact = reference.scores([body])[0][[position[item] for item in answer.items]]
        assert answer.scores == pytest.approx(exact.tolist(), rel=1e-5, abs=1e-5)


def test_an_index_of_an_unknown_kind_is_refused(loaded_bundle):
    settings = {**index_settings(len(loaded_bundle.catalogue)), "nlist": 8, "nprobe": 8}
    vectors = scoring_vectors(loaded_bundle.arrays["item_embeddings"], loaded_bundle.arrays["item_bias"])
    data = build_index(vectors, settings)
    with pytest.raises(ValueError, match="unknown item index kind 'hnsw'"):
        ItemIndex.from_bytes(data, {**settings, "kind": "hnsw"})
