"""The trained model: exported faithfully, deterministic, better than popularity, and dependent on its inputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from model.bundle import load_bundle
from model.dataset import load_dataset
from model.evaluate import corrupt, evaluate, parse_corruption, read_holdout
from model.features import encode
from model.gcn import NO_ITEM
from model.synthetic import SIZES, fitting_size
from model.train import TrainConfig, build_model, prepare, train
from tests.model.reference import NumpyScorer

QUICK = TrainConfig(epochs=2, batch_size=512, validation_users=40)


@pytest.fixture(scope="module")
def quick_bundle(tiny_data, tmp_path_factory):
    return train(load_dataset(tiny_data), tmp_path_factory.mktemp("quick") / "bundle", QUICK)


def _odd_requests(requests):
    """Requests off the beaten path: no history, unknown and repeated items, an unseen country, a missing weight."""
    first = requests[0]
    return [
        {k: v for k, v in first.items() if k != "history"},
        first | {"history": ["item_99999", first["history"][0], first["history"][0]]},
        first | {"country": "ZZ"},
        {k: v for k, v in first.items() if k != "weight_kg"},
    ]


def test_numpy_scores_from_the_loaded_bundle_equal_the_torch_model(tiny_data, quick_bundle):
    bundle = load_bundle(quick_bundle)
    prepared = prepare(load_dataset(tiny_data), bundle.scoring["inputs"], QUICK)
    model = build_model(prepared, QUICK)
    model.load_state_dict(torch.load(quick_bundle / "model.pt"))
    model.eval()
    requests, _ = read_holdout(tiny_data)
    requests = requests + _odd_requests(requests)

    scorer = NumpyScorer(bundle.scoring, bundle.arrays)
    width = max(len(r.get("history", [])) for r in requests)
    history = torch.full((len(requests), width), NO_ITEM)
    for row, request in enumerate(requests):
        known = scorer.history_indices(request)
        history[row, : len(known)] = torch.tensor(known, dtype=torch.long)
    with torch.no_grad():
        items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.graph)
        users = model.user_vectors(torch.from_numpy(encode(bundle.scoring["inputs"], requests)), history,
                                   model.history_embeddings(items))
        expected = model.scores(users, items).numpy()
    np.testing.assert_allclose(scorer.scores(requests), expected, rtol=1e-5, atol=1e-5)


def test_encoding_follows_the_contract():
    inputs = [{"field": "country", "encoding": "one_hot", "vocab": ["DE", "FR"]},
              {"field": "weight_kg", "encoding": "standard", "mean": 70.0, "std": 10.0}]
    rows = encode(inputs, [
        {"country": "FR", "weight_kg": 90.0},
        {"country": "XX"},
        {"country": None, "weight_kg": "80"},
        {"country": 1, "weight_kg": "heavy"},
        {"weight_kg": True},
    ])
    np.testing.assert_allclose(rows, [[0, 1, 2.0], [0, 0, -7.0], [0, 0, 1.0], [0, 0, -7.0], [0, 0, -6.9]], rtol=1e-6)


def test_a_missing_number_encodes_as_its_declared_missing_value():
    inputs = [{"field": "age", "encoding": "standard", "mean": 40.0, "std": 10.0, "missing": 40.0}]
    np.testing.assert_allclose(encode(inputs, [{}, {"age": None}, {"age": 50}, {"age": "x"}]), [[0.0], [0.0], [1.0], [-4.0]])


def test_training_is_deterministic_for_a_seed(tiny_data, quick_bundle, tmp_path):
    again = load_bundle(train(load_dataset(tiny_data), tmp_path / "again", QUICK))
    first = load_bundle(quick_bundle)
    for key, array in first.arrays.items():
        np.testing.assert_array_equal(array, again.arrays[key], err_msg=key)


def test_the_model_beats_popularity(tiny_bundle, tiny_data):
    figures = evaluate(tiny_bundle, tiny_data)
    assert figures["model"]["hit_rate@10"] >= 2 * figures["popularity"]["hit_rate@10"]
    assert figures["model"]["ndcg@10"] > figures["popularity"]["ndcg@10"]


@pytest.mark.parametrize("corruption", ["weight_kg:lbs", "height_cm:inches"])
def test_a_unit_mistake_hurts_the_model_and_not_popularity(tiny_bundle, tiny_data, corruption):
    clean = evaluate(tiny_bundle, tiny_data)
    broken = evaluate(tiny_bundle, tiny_data, [corruption])
    assert broken["model"]["hit_rate@10"] <= 0.75 * clean["model"]["hit_rate@10"]
    assert broken["popularity"] == clean["popularity"]


def test_weight_in_pounds_recommends_the_wrong_sizes(tiny_bundle, tiny_data):
    with (tiny_data / "items.csv").open(newline="") as handle:
        size_of = {row["item_id"]: SIZES.index(row["size"]) for row in csv.DictReader(handle)}
    bundle = load_bundle(tiny_bundle)
    scorer = NumpyScorer(bundle.scoring, bundle.arrays)
    requests, _ = read_holdout(tiny_data)

    def fitting_share(sent):
        fits = 0
        for true, request in zip(requests, sent):
            size = fitting_size(np.array([true["weight_kg"]]), np.array([true["height_cm"]]))[0]
            fits += sum(size_of[scorer.item_ids[i]] == size for i in scorer.top_k(request))
        return fits / (10 * len(requests))

    assert fitting_share(requests) > 2 * fitting_share(corrupt(requests, parse_corruption("weight_kg:lbs")))


@pytest.mark.parametrize(("spec", "expected"), [
    ("weight_kg:scale=2", {"weight_kg": 140.0, "country": "DE", "email": "a@b"}),
    ("weight_kg:lbs", {"weight_kg": pytest.approx(70 * 2.20462), "country": "DE", "email": "a@b"}),
    ("weight_kg:scale=1/2.54", {"weight_kg": pytest.approx(70 / 2.54), "country": "DE", "email": "a@b"}),
    ("email:rename=user_email", {"weight_kg": 70.0, "country": "DE", "user_email": "a@b"}),
    ("email:drop", {"weight_kg": 70.0, "country": "DE"}),
    ("country:map=DE=AT", {"weight_kg": 70.0, "country": "AT", "email": "a@b"}),
    ("country:map=FR=AT", {"weight_kg": 70.0, "country": "DE", "email": "a@b"}),
])
def test_corruptions_change_what_a_redesigned_form_would(spec, expected):
    request = {"weight_kg": 70.0, "country": "DE", "email": "a@b"}
    assert corrupt([request], parse_corruption(spec)) == [expected]
    assert request == {"weight_kg": 70.0, "country": "DE", "email": "a@b"}


def test_the_schedule_follows_the_data():
    from model.train import MAX_BATCH, schedule

    assert schedule(TrainConfig(), 338_841) == (MAX_BATCH, 19)       # the default shop
    assert schedule(TrainConfig(), 6_591) == (823, 23)                # 9 steps an epoch, ~200 steps
    assert schedule(TrainConfig(), 100) == (256, 100)                 # one step an epoch, at most 100
    assert schedule(TrainConfig(epochs=3, batch_size=10), 100) == (10, 3)


def test_validation_is_scored_like_the_holdout(tiny_data):
    from model.features import fit_inputs
    from model.train import history_window

    data = load_dataset(tiny_data)
    inputs = fit_inputs(data.schema.users, data.users)
    short = prepare(data, inputs, TrainConfig(), history_lengths=[2, 2, 2])
    known = (short.validation.history != NO_ITEM).sum(dim=1)
    assert short.validation.history.shape[1] == 2 and set(known.tolist()) == {2}
    whole = prepare(data, inputs, TrainConfig())
    for row, user in enumerate(whole.validation.users.tolist()):
        sequence = data.sequences[user]
        assert whole.validation.target[row] == sequence[-1]
        assert (whole.validation.history[row] != NO_ITEM).sum() == len(sequence) - 1
    assert history_window(TrainConfig(), [1, 3, 2]) == 3 and history_window(TrainConfig(), []) == 10


def test_encoders_come_from_the_declared_schema(monkeypatch):
    from model import features
    from model.dataset import Table

    monkeypatch.setattr(features, "MAX_VOCAB", 2)
    users = Table(file=None, id="id", numeric=("years",), categorical=("job",))
    records = [{"job": "cook", "years": 20}, {"job": "cook", "years": 40}, {"job": "pilot", "years": None},
               {"job": "poet", "years": 30}, {"job": "pilot", "years": 30}]
    inputs = features.fit_inputs(users, records)
    assert inputs == [{"field": "job", "encoding": "one_hot", "vocab": ["cook", "pilot"]},
                      {"field": "years", "encoding": "standard", "mean": 30.0, "std": pytest.approx(50 ** 0.5),
                       "missing": 30.0}]
    # the rare "poet" encodes like a value never seen: the all-zero "unknown" slot
    assert encode(inputs, [{"job": "poet", "years": 30}]).tolist() == [[0.0, 0.0, 0.0]]

    items = Table(file=None, id="id", numeric=("year",), categorical=("genre",))
    rows = [{"genre": "drama", "year": 1990}, {"genre": None, "year": 2020}, {"genre": "horror", "year": None}]
    codes, cardinalities = features.item_features(items, rows)
    assert cardinalities == [3, features.NUMERIC_BANDS + 1]
    assert codes[:, 0].tolist() == [1, 0, 2] and codes[2, 1] == 0 and 0 < codes[0, 1] < codes[1, 1]
    assert features.item_features(Table(file=None, id="id"), rows)[1] == [1]
