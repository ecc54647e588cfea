"""profile.json and popularity.json on a data set small enough to check by hand."""

from __future__ import annotations

import hashlib
from statistics import pstdev

import pytest

from model.dataset import load_dataset
from model.fallback import PopularityFallback
from model.popularity import build_popularity
from model.profile import build_profile
from model.synthetic import DATASET_TOML

USERS = """user_id,email,first_name,last_name,country,weight_kg,height_cm,age
u1,ann@example.com,Ann,Lee,DE,60.0,170,30
u2,bob@example.com,Bob,Ray,DE,80.0,180,40
u3,,Cid,Roe,FR,70.5,175,50
u4,dee@example.com,Dee,Fox,FR,90.0,165,20
"""
ITEMS = """item_id,category,size,price
item_00000,tops,M,19.00
item_00001,jeans,L,59.90
item_00002,coats,S,129.00
"""
INTERACTIONS = """user_id,item_id,timestamp,event
u1,item_00001,2026-03-02T10:00:00Z,view
u1,item_00000,2026-03-01T10:00:00Z,view
u2,item_00000,2026-03-01T11:00:00Z,purchase
u3,item_00002,2026-03-01T12:00:00Z,view
u3,item_00000,2026-03-03T12:00:00Z,add_to_cart
u4,item_00002,2026-03-04T12:00:00Z,view
"""


@pytest.fixture
def data(tmp_path):
    for name, text in (("users.csv", USERS), ("items.csv", ITEMS), ("interactions.csv", INTERACTIONS),
                       ("dataset.toml", DATASET_TOML)):
        (tmp_path / name).write_text(text)
    return load_dataset(tmp_path)


def test_sequences_are_in_time_order(data):
    assert [s.tolist() for s in data.sequences] == [[0, 1], [0], [2, 0], [2]]


def test_profile_by_hand(data, tmp_path):
    profile = build_profile(data)
    expected_hash = hashlib.sha256((USERS + ITEMS + INTERACTIONS).encode()).hexdigest()
    assert profile["schema_version"] == 1 and profile["data_sha256"] == expected_hash
    assert profile["rows"] == 4
    assert (profile["segment_field"], profile["history_field"]) == ("country", "history")
    assert profile["catalogue"] == {"item_id_pattern": "^item_[0-9]{5}$", "count": 3}

    fields = profile["fields"]
    shapes = {name: entry.pop("shape", None) for name, entry in fields.items()}
    assert [name for name, shape in shapes.items() if shape] == ["user_id", "email", "first_name", "last_name", "country"]
    assert list(fields) == ["user_id", "email", "first_name", "last_name", "country", "weight_kg", "height_cm", "age"]
    assert fields["user_id"] == {"role": "identifier", "type": "string", "personal": False, "presence": 1.0}
    assert fields["email"] == {"role": "contract", "type": "string", "personal": True, "presence": 0.75}
    assert fields["first_name"] == {"role": "contract", "type": "string", "personal": True, "presence": 1.0}
    assert fields["country"] == {"role": "feature", "type": "string", "personal": False, "presence": 1.0,
                                 "domain": {"DE": 0.5, "FR": 0.5}}

    weight = fields["weight_kg"]
    assert (weight["role"], weight["type"], weight["min"], weight["max"]) == ("feature", "number", 60.0, 90.0)
    assert weight["mean"] == pytest.approx(75.125)
    assert weight["std"] == pytest.approx(pstdev([60.0, 80.0, 70.5, 90.0]), abs=1e-6)
    assert weight["quantiles"]["0.5"] == pytest.approx(75.25)
    assert weight["quantiles"]["0.001"] == pytest.approx(60.0 + 0.003 * 10.5)
    assert weight["segments"] == {"DE": {"count": 2, "mean": 70.0, "std": 10.0},
                                  "FR": {"count": 2, "mean": 80.25, "std": 9.75}}
    assert fields["height_cm"]["type"] == "integer" and fields["age"]["type"] == "integer"
    assert fields["age"]["segments"]["FR"] == {"count": 2, "mean": 35.0, "std": 15.0}


def test_string_shapes_by_hand(data):
    fields = build_profile(data)["fields"]
    assert fields["email"]["shape"] == {
        "length": {"min": 15, "max": 15, "mean": 15.0, "std": 0.0},
        "tokens": {"min": 1, "max": 1},
        "classes": {"lower": 1.0, "upper": 0.0, "letter": 0.0, "digit": 0.0, "space": 0.0, "at": 1.0, "punct": 1.0},
    }
    names = fields["first_name"]["shape"]
    assert names["length"] == {"min": 3, "max": 3, "mean": 3.0, "std": 0.0} and names["tokens"] == {"min": 1, "max": 1}
    assert {name for name, share in names["classes"].items() if share} == {"lower", "upper"}
    assert "Ann" not in str(fields["first_name"]) and "example" not in str(fields["email"])


def test_popularity_by_hand(data):
    popularity = build_popularity(data, top_n=2)
    assert popularity["segment_field"] == "country" and popularity["top_n"] == 2
    assert popularity["global"] == {"items": ["item_00000", "item_00002"], "scores": [0.5, pytest.approx(2 / 6)]}
    # Held out (each user's last item): DE u1's item_00001, FR u3's item_00000. Unshrunk lists of the
    # rest hit both; so do the global ones. The strongest shrinkage among equals wins: global only.
    assert popularity["shrinkage"] is None and popularity["segments"] == {}


def test_popularity_keeps_distinct_segments_and_shrinks_small_ones_toward_global(tmp_path):
    # 60 users in A take two of a0..a11, 60 in B two of b0..b11: their own lists predict their held-out
    # last items better than the global mix does. C's two users take c0, c1 and c1, c2: C's list borrows.
    groups = [("A", "a", 60), ("B", "b", 60), ("C", "c", 2)]
    users, events, n = [], [], 0
    for segment, prefix, count in groups:
        for k in range(count):
            users.append(f"u{n},,x,y,{segment},70,170,30")
            events += [f"u{n},{prefix}{k % 12},1,view", f"u{n},{prefix}{(k + 1) % 12},2,view"]
            n += 1
    items = [f"{prefix}{k},tops,M,1" for prefix in "abc" for k in range(12)]
    texts = {"users.csv": "user_id,email,first_name,last_name,country,weight_kg,height_cm,age\n" + "\n".join(users) + "\n",
             "items.csv": "item_id,category,size,price\n" + "\n".join(items) + "\n",
             "interactions.csv": "user_id,item_id,timestamp,event\n" + "\n".join(events) + "\n",
             "dataset.toml": DATASET_TOML}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    popularity = build_popularity(load_dataset(tmp_path))
    assert popularity["shrinkage"] is not None
    assert all(item.startswith("a") for item in popularity["segments"]["A"]["items"][:10])
    small = popularity["segments"]["C"]["items"]
    assert small[0] == "c1" and len(small) >= 10 and any(item[0] != "c" for item in small[:10])


def test_one_ranker_for_evaluation_and_serving(data):
    fallback = PopularityFallback(build_popularity(data))
    assert fallback.recommend({"country": "FR"}, ["item_00002"], 2).items == ["item_00000", "item_00001"]
    assert fallback.recommend({"country": "XX"}, [], 1).items == ["item_00000"]
    assert fallback.recommend({}, [], 3).items == ["item_00000", "item_00002", "item_00001"]


@pytest.mark.parametrize(("ids", "integer_ids"), [(["6", "12", "0", "1042"], True), (["6", "007", "12", "13"], None),
                                                   (["u1", "u2", "u3", "u4"], None)])
def test_decimal_ids_are_recorded_so_a_json_integer_names_the_same_user(tmp_path, ids, integer_ids):
    users = USERS
    interactions = INTERACTIONS
    for old, new in zip(["u1", "u2", "u3", "u4"], ids):
        users, interactions = users.replace(f"{old},", f"{new},"), interactions.replace(f"{old},", f"{new},")
    for name, text in (("users.csv", users), ("items.csv", ITEMS), ("interactions.csv", interactions),
                       ("dataset.toml", DATASET_TOML)):
        (tmp_path / name).write_text(text)
    user_id = build_profile(load_dataset(tmp_path))["fields"]["user_id"]
    assert user_id["type"] == "string" and user_id.get("integer_ids") is integer_ids
