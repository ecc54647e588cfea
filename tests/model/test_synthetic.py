"""The generator: byte-identical for a seed, and a world whose signup fields matter."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from statistics import mean

import pytest

from model.synthetic import generate

FILES = ("users.csv", "items.csv", "interactions.csv", "holdout.jsonl")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate(out, users=3000, items=600, seed=5)
    return out


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(tmp_path / name, users=300, items=120, seed=seed)
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / "interactions.csv").read_bytes() != (tmp_path / "c" / "interactions.csv").read_bytes()


def test_files_have_the_documented_columns(world):
    headers = {name: (world / name).read_text().splitlines()[0] for name in FILES[:3]}
    assert headers == {
        "users.csv": "user_id,email,first_name,last_name,country,weight_kg,height_cm,age",
        "items.csv": "item_id,category,size,price",
        "interactions.csv": "user_id,item_id,timestamp,event",
    }
    items = _rows(world / "items.csv")
    assert len(items) == 600 and all(re.fullmatch(r"item_\d{5}", i["item_id"]) for i in items)
    assert len(_rows(world / "users.csv")) == 3000


def test_held_out_users_are_complete_requests_never_seen_in_training(world):
    training = {u["user_id"] for u in _rows(world / "users.csv")}
    training |= {row["user_id"] for row in _rows(world / "interactions.csv")}
    lines = [json.loads(line) for line in (world / "holdout.jsonl").read_text().splitlines()]
    assert len(lines) == 300
    for line in lines:
        request = line["request"]
        assert set(request) == {"user_id", "email", "first_name", "last_name", "country",
                                "weight_kg", "height_cm", "age", "history"}
        assert request["user_id"] not in training
        assert 1 <= len(request["history"]) <= 3
        assert line["next_item"] not in request["history"]
        assert isinstance(request["weight_kg"], float) and isinstance(request["age"], int)


def test_bodies_are_plausible_and_differ_by_market(world):
    users = _rows(world / "users.csv")
    weights = defaultdict(list)
    for user in users:
        weights[user["country"]].append(float(user["weight_kg"]))
        assert 45 <= float(user["weight_kg"]) <= 140 and 145 <= int(user["height_cm"]) <= 205
        assert 18 <= int(user["age"]) <= 80 and re.fullmatch(r"[a-z]+\.[a-z]+\d+@[a-z.]+", user["email"])
    assert len(weights) >= 6
    means = {country: mean(values) for country, values in weights.items()}
    assert means["US"] - means["JP"] > 8


def test_popularity_has_a_long_tail(world):
    counts = defaultdict(int)
    for row in _rows(world / "interactions.csv"):
        counts[row["item_id"]] += 1
    ranked = sorted(counts.values(), reverse=True)
    top_share = sum(ranked[: len(ranked) // 20]) / sum(ranked)
    assert top_share > 0.15, "the top 5% of items should take over 3x their even share"


def test_the_streaming_world_is_byte_identical_for_a_seed_and_declares_itself(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, world="streaming", users=200, items=80, seed=seed)
    files = ("dataset.toml", "users.csv", "movies.csv", "views.csv", "holdout.jsonl")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(files)
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / "views.csv").read_bytes() != (tmp_path / "c" / "views.csv").read_bytes()
    from model.dataset import load_dataset

    data = load_dataset(tmp_path / "a")
    assert data.schema.users.features == ("age", "gender", "occupation") and len(data.users) == 200
    assert all(len(sequence) >= 2 for sequence in data.sequences)
    held = [json.loads(line) for line in (tmp_path / "a" / "holdout.jsonl").read_text().splitlines()]
    assert len(held) == 20 and all(1 <= len(line["request"]["history"]) <= 4 for line in held)
    assert all(isinstance(line["request"]["postcode"], str) for line in held)


def test_an_unknown_world_is_a_clear_error(tmp_path):
    from model.errors import RecguardError

    with pytest.raises(RecguardError, match="unknown world 'zoo' \\(known: shop, streaming\\)"):
        generate(tmp_path, world="zoo")
