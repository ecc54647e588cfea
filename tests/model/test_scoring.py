"""The serving scorer (also what `recguard evaluate` measures) must agree with the independent
reference of tests/model/reference.py (itself checked against the torch model) on every request."""

import math

import pytest

from model.evaluate import corrupt, parse_corruption
from model.recommender import ModelError
from model.scorer import Scorer
from tests.model.reference import NumpyScorer


@pytest.fixture(scope="module")
def scorers(loaded_bundle):
    return Scorer.from_bundle(loaded_bundle), NumpyScorer(loaded_bundle.scoring, loaded_bundle.arrays)


def variants(holdout):
    yield from holdout
    yield from corrupt(holdout, parse_corruption("weight_kg:lbs"))
    for body in holdout[:10]:
        yield {**body, "country": "MX", "age": "41", "height_cm": None, "history": ["item_99999", *body["history"]]}
        yield {key: value for key, value in body.items() if key not in ("weight_kg", "history")}


def test_same_top_items_and_scores_as_the_reference(scorers, tiny_holdout):
    serving, reference = scorers
    for body in variants(tiny_holdout):
        fields = {key: value for key, value in body.items() if key != "history"}
        answer = serving.recommend(fields, body.get("history", []), 10)
        expected = reference.top_k(body, 10)
        assert answer.items == [reference.item_ids[i] for i in expected]
        assert answer.scores == pytest.approx(reference.scores([body])[0][expected].tolist(), rel=1e-5, abs=1e-5)


def test_non_finite_input_is_a_model_error_not_a_garbage_answer(scorers, tiny_holdout):
    serving, _ = scorers
    fields = {**tiny_holdout[0], "weight_kg": math.nan}
    with pytest.raises(ModelError):
        serving.recommend(fields, [], 10)


def test_k_larger_than_what_is_left_returns_everything_else(scorers, loaded_bundle):
    serving, _ = scorers
    catalogue = [str(item) for item in loaded_bundle.arrays["item_ids"]]
    answer = serving.recommend({}, catalogue[:5], len(catalogue) + 10)
    assert len(answer.items) == len(catalogue) - 5 and not set(answer.items) & set(catalogue[:5])


def test_long_and_repeated_histories_score_as_the_reference(scorers, tiny_holdout, loaded_bundle):
    serving, reference = scorers
    catalogue = [str(item) for item in loaded_bundle.arrays["item_ids"]]
    for length in (2, 64, 65, 130):
        history = [catalogue[(7 * i) % 50] for i in range(length)]  # repeats: the mean counts each mention
        body = {**tiny_holdout[1], "history": history}
        answer = serving.recommend(tiny_holdout[1], history, 10)
        expected = reference.top_k(body, 10)
        assert answer.items == [reference.item_ids[i] for i in expected]
        assert answer.scores == pytest.approx(reference.scores([body])[0][expected].tolist(), rel=1e-5, abs=1e-5)


def test_a_serving_worker_keeps_no_second_copy_of_the_item_vectors(tiny_bundle, tiny_holdout):
    import gc
    import weakref

    from model.bundle import load_bundle
    from proxy.http.app import create_app
    from proxy.settings import Settings

    bundle = load_bundle(tiny_bundle)
    reference = Scorer.from_bundle(bundle).recommend(tiny_holdout[0], tiny_holdout[0]["history"], 10)
    item_vectors = weakref.ref(bundle.arrays["item_embeddings"])
    app = create_app(Settings.from_env({}, bundle=tiny_bundle, guard=False), bundle)
    del bundle
    gc.collect()
    # the scorer keeps its own [embedding, bias] rows: the bundle's arrays are let go of
    assert item_vectors() is None, "the loaded bundle's item embeddings are still held"
    runtime = app.extensions["recguard"]
    assert runtime.loaded.bundle.arrays == {} and runtime.loaded.bundle.has_model
    answer = app.test_client().post("/predict", json=tiny_holdout[0]).get_json()
    assert answer["items"] == reference.items and answer["source"] == "model"
    runtime.close()
