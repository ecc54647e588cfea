"""The approximate item index of a large catalogue: what a shopper gets from it is what exact scoring
(the independent reference of tests/model/reference.py) would give, or nearly; never a history item;
and the bundle that carries it is verified like every other file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import model.train
from model.bundle import INDEX_FILE, BundleError, load_bundle
from model.dataset import load_dataset
from model.evaluate import read_holdout
from model.item_index import ItemIndex, build_index, index_settings, recall_at, scoring_vectors
from model.train import TrainConfig, train
from proxy.models.scorer import Scorer
from tests.bundles import flipped_copy
from tests.proxy.conftest import ProxyProcess
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
    assert scorer.ann is not None
    reference = NumpyScorer(bundle.scoring, bundle.arrays)
    # 200 items make one cell: the index scans everything, so the answers are the exact ones
    assert _answers(scorer, tiny_holdout) == _reference_answers(reference, tiny_holdout)


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


def test_the_reduction_to_nearest_neighbours_finds_the_best_inner_product():
    # items of very different norms: a plain nearest-neighbour search would return the items
    # closest to the query, not the best-scoring ones
    rng = np.random.default_rng(3)
    vectors = (rng.normal(size=(2000, 9)) * rng.uniform(0.1, 3.0, size=(2000, 1))).astype(np.float32)
    settings = {**index_settings(2000), "nlist": 4, "nprobe": 4}
    index = ItemIndex.from_bytes(build_index(vectors, settings), settings)
    queries = rng.normal(size=(50, 9)).astype(np.float32)
    found = [index.candidates(q, 10).tolist() for q in queries]
    exact = [np.argsort(-(vectors @ q), kind="stable")[:10].tolist() for q in queries]
    assert recall_at(10, found, exact) == 1.0
