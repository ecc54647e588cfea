"""A synthetic clothing shop: signup forms, a catalogue and browsing logs in which the form fields matter.

The world (docs/model.md tells the whole story):

- body measures decide which size fits: a frame index from weight (mostly) and height picks
  one of XS..XXL, and shoppers rarely touch items two sizes off;
- each market (country) has its own taste over categories, and its own body statistics;
- age shifts style: every item has a style between young (0) and classic (1);
- a hidden sex, half guessable from height and weight, steers towards women's or men's lines;
- every shopper has two favourite brands and two favourite categories, which only the
  history reveals;
- item popularity follows a Zipf law, so a few items take a large share of the traffic.

Each shopper's items are drawn one after another without replacement (Gumbel top-k, the
Plackett-Luce order), so the first items of a sequence are the shopper's most likely ones.
Every random draw comes from one numpy Generator in a fixed order, and every file is
formatted by hand, so a seed gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.errors import RecguardError

SIZES = ("XS", "S", "M", "L", "XL", "XXL")
CATEGORIES = (
    "tops", "shirts", "jeans", "trousers", "dresses", "skirts",
    "knitwear", "coats", "sportswear", "swimwear", "suits", "loungewear",
)
# Mean style per category, 0 = young, 1 = classic.
_CATEGORY_STYLE = (0.3, 0.6, 0.35, 0.6, 0.5, 0.45, 0.65, 0.6, 0.25, 0.35, 0.8, 0.4)
_CATEGORY_PRICE = (19, 39, 59, 49, 59, 39, 69, 129, 45, 29, 199, 35)
_WOMEN_ONLY = {"dresses", "skirts"}


@dataclass(frozen=True)
class Market:
    """One country: its share of shoppers and its body statistics."""

    code: str
    share: float
    height_women: float
    height_men: float
    bmi: float


MARKETS = (
    Market("US", 0.22, 163, 177, 28.5),
    Market("DE", 0.16, 166, 180, 26.5),
    Market("GB", 0.14, 164, 176, 27.5),
    Market("FR", 0.12, 163, 176, 24.8),
    Market("BR", 0.10, 160, 173, 26.5),
    Market("IT", 0.09, 162, 175, 25.2),
    Market("JP", 0.09, 158, 171, 22.5),
    Market("ES", 0.08, 162, 174, 26.0),
)

_FIRST_WOMEN = (
    "Anna", "Maria", "Sofia", "Emma", "Laura", "Julia", "Clara", "Lucia", "Chloe", "Yuki",
    "Hana", "Ines", "Marta", "Paula", "Grace", "Olivia", "Camille", "Lea", "Giulia", "Beatriz",
    "Emily", "Sarah", "Nina", "Elena", "Aiko", "Carmen", "Isabel", "Manon", "Frida", "Ruth",
)
_FIRST_MEN = (
    "Lukas", "Jonas", "Paul", "Louis", "Hugo", "Marco", "Luca", "Pedro", "Joao", "Kenji",
    "Haruto", "Pablo", "Diego", "James", "Oliver", "Jack", "Noah", "Felix", "Tom", "Matteo",
    "Rafael", "Daniel", "Samuel", "Adam", "Ren", "Carlos", "Leon", "Theo", "Max", "David",
)
_LAST_HEAD = (
    "Bar", "Kel", "Mor", "Dan", "Lin", "Hart", "Fer", "Ros", "Val", "Tan",
    "Sil", "Brun", "Cas", "Wes", "Nak", "Mar", "Lau", "Ber", "Hol", "Ven",
)
_LAST_TAIL = (
    "ton", "mann", "ard", "ini", "ez", "sen", "ley", "ova", "ura", "eau",
    "berg", "ford", "etti", "ido", "well", "ami",
)
_MAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example")
_EVENTS = ("view", "add_to_cart", "purchase")
_EVENT_SHARES = (0.65, 0.22, 0.13)

_N_BRANDS = 40
_START = np.datetime64("2026-01-01T00:00:00", "s")
_CHUNK = 1000


@dataclass(frozen=True)
class Catalogue:
    """Items with their public features and hidden traits."""

    category: np.ndarray
    size: np.ndarray
    price: np.ndarray
    style: np.ndarray
    gender: np.ndarray
    brand: np.ndarray
    log_popularity: np.ndarray


@dataclass(frozen=True)
class Shoppers:
    """Users with their signup fields and hidden traits."""

    country: np.ndarray
    female: np.ndarray
    height_cm: np.ndarray
    weight_kg: np.ndarray
    age: np.ndarray
    first_name: list[str]
    last_name: list[str]
    email: list[str]
    brands: np.ndarray
    favourites: np.ndarray


def fitting_size(weight_kg: np.ndarray, height_cm: np.ndarray) -> np.ndarray:
    """The index into SIZES that fits a body: weight decides, height shifts by about one size per 40 cm."""
    frame = (weight_kg - 48.0) / 13.0 + (height_cm - 170.0) / 40.0
    return np.clip(np.floor(frame), 0, len(SIZES) - 1).astype(np.int64)


def _catalogue(rng: np.random.Generator, n_items: int) -> Catalogue:
    category = rng.integers(0, len(CATEGORIES), n_items)
    size = rng.integers(0, len(SIZES), n_items)
    style = np.clip(rng.normal(np.take(_CATEGORY_STYLE, category), 0.15), 0.0, 1.0)
    # 0 women, 1 men, 2 unisex
    gender = rng.choice(3, n_items, p=(0.45, 0.45, 0.10))
    women_only = np.isin(category, [CATEGORIES.index(c) for c in _WOMEN_ONLY])
    gender[women_only] = 0
    suits = category == CATEGORIES.index("suits")
    gender[suits] = rng.choice(2, int(suits.sum()), p=(0.2, 0.8))
    price = np.take(_CATEGORY_PRICE, category) * np.exp(rng.normal(0.4 * (style - 0.5), 0.3))
    brand = rng.integers(0, _N_BRANDS, n_items)
    rank = rng.permutation(n_items)
    log_popularity = -0.65 * np.log1p(rank)
    return Catalogue(category, size, np.round(price, 2), style, gender, brand, log_popularity)


def _shoppers(rng: np.random.Generator, n_users: int) -> Shoppers:
    shares = np.array([m.share for m in MARKETS])
    country = rng.choice(len(MARKETS), n_users, p=shares / shares.sum())
    female = rng.random(n_users) < 0.5
    mean_height = np.where(
        female, [MARKETS[c].height_women for c in country], [MARKETS[c].height_men for c in country]
    )
    height = np.clip(np.round(rng.normal(mean_height, 7.0)), 145, 205)
    age = np.clip(np.round(18 + rng.gamma(2.2, 9.0, n_users)), 18, 80)
    bmi = np.array([MARKETS[c].bmi for c in country]) + 0.06 * (age - 35) + rng.normal(0.0, 3.6, n_users)
    weight = np.clip(np.round(bmi * (height / 100.0) ** 2, 1), 45.0, 140.0)
    first_women = rng.integers(0, len(_FIRST_WOMEN), n_users)
    first_men = rng.integers(0, len(_FIRST_MEN), n_users)
    head = rng.integers(0, len(_LAST_HEAD), n_users)
    tail = rng.integers(0, len(_LAST_TAIL), n_users)
    domain = rng.integers(0, len(_MAIL_DOMAINS), n_users)
    first = [_FIRST_WOMEN[w] if f else _FIRST_MEN[m] for f, w, m in zip(female, first_women, first_men)]
    last = [_LAST_HEAD[h] + _LAST_TAIL[t] for h, t in zip(head, tail)]
    email = [
        f"{f.lower()}.{l.lower()}{i + 1}@{_MAIL_DOMAINS[d]}"
        for i, (f, l, d) in enumerate(zip(first, last, domain))
    ]
    brands = np.stack([rng.choice(_N_BRANDS, 2, replace=False) for _ in range(n_users)])
    favourites = np.stack([rng.choice(len(CATEGORIES), 2, replace=False) for _ in range(n_users)])
    return Shoppers(country, female, height, weight, age, first, last, email, brands, favourites)


def _affinity(cat: Catalogue, people: Shoppers, rows: slice, taste: np.ndarray) -> np.ndarray:
    """Log-weights (users in `rows` x items, float32) of how likely each user is to pick each item."""
    n = rows.stop - rows.start
    span = np.arange(n)[:, None]

    by_category = taste[people.country[rows]]
    by_category[span, people.favourites[rows]] += 1.0
    by_brand = np.zeros((n, _N_BRANDS))
    by_brand[span, people.brands[rows]] = 1.5

    # An item's size and line together: kind = size * 3 + gender (0 women, 1 men, 2 unisex).
    size_gap = np.abs(fitting_size(people.weight_kg[rows], people.height_cm[rows])[:, None] - np.arange(len(SIZES)))
    size_term = -np.select([size_gap == 0, size_gap == 1], [0.0, 2.5], 5.0)
    wearer = np.where(people.female[rows], 0, 1)[:, None]
    line_term = -np.where(np.arange(3) == 2, 0.3, np.where(np.arange(3) == wearer, 0.0, 3.0))
    by_kind = (size_term[:, :, None] + line_term[:, None, :]).reshape(n, -1)

    logits = (
        by_category.astype(np.float32)[:, cat.category]
        + by_brand.astype(np.float32)[:, cat.brand]
        + by_kind.astype(np.float32)[:, cat.size * 3 + cat.gender]
    )
    preferred_style = ((people.age[rows] - 18.0) / 55.0).astype(np.float32)
    style_gap = (cat.style.astype(np.float32)[None, :] - preferred_style[:, None]) / np.float32(0.22)
    logits -= style_gap * style_gap
    logits += cat.log_popularity.astype(np.float32)
    return logits


def _draw_sequences(
    rng: np.random.Generator,
    cat: Catalogue,
    people: Shoppers,
    lengths: np.ndarray,
    progress: Callable[[str], None],
) -> list[np.ndarray]:
    """Per user, `lengths[u]` distinct items in the order they were picked."""
    taste = rng.normal(0.0, 0.9, (len(MARKETS), len(CATEGORIES)))
    n_users = len(lengths)
    n_items = len(cat.category)
    sequences: list[np.ndarray] = []
    for start in range(0, n_users, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n_users))
        uniform = rng.random((rows.stop - rows.start, n_items), dtype=np.float32)
        keys = _affinity(cat, people, rows, taste) - np.log(-np.log(uniform + np.float32(1e-12)))
        longest = int(lengths[rows].max())
        top = np.argpartition(-keys, longest - 1, axis=1)[:, :longest]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        picked = np.take_along_axis(top, order, axis=1)
        sequences.extend(picked[i, : lengths[rows.start + i]] for i in range(rows.stop - rows.start))
        progress(f"sampled interactions for {rows.stop}/{n_users} users")
    return sequences


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _timestamps(rng: np.random.Generator, lengths: np.ndarray) -> list[str]:
    """Per user, `lengths[u]` increasing UTC times: a first visit in the first half of 2026, then minutes to days apart."""
    starts = rng.integers(0, 180 * 86400, len(lengths))
    gaps = rng.exponential(0.75 * 86400.0, int(lengths.sum())).astype(np.int64) + 60
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[first] = starts
    running = np.cumsum(gaps)
    # Restart the running sum at each user's first row.
    elapsed = running - np.repeat(running[first] - gaps[first], lengths)
    return [f"{stamp}Z" for stamp in np.datetime_as_string(_START + elapsed.astype("timedelta64[s]"), unit="s").tolist()]


def _signup(people: Shoppers, user_ids: list[str], u: int) -> dict[str, Any]:
    return {
        "user_id": user_ids[u], "email": people.email[u], "first_name": people.first_name[u],
        "last_name": people.last_name[u], "country": MARKETS[people.country[u]].code,
        "weight_kg": float(people.weight_kg[u]), "height_cm": int(people.height_cm[u]), "age": int(people.age[u]),
    }


DATASET_TOML = """\
# The synthetic shop (recguard generate): what each column means.
[users]
file = "users.csv"
id = "user_id"
numeric = ["weight_kg", "height_cm", "age"]
categorical = ["country"]
segment = "country"
personal = ["email", "first_name", "last_name"]

[items]
file = "items.csv"
id = "item_id"
numeric = ["price"]
categorical = ["category", "size"]

[interactions]
file = "interactions.csv"
user = "user_id"
item = "item_id"
time = "timestamp"
"""
WORLDS = ("shop", "streaming")


def generate(
    out: Path,
    *,
    world: str = "shop",
    users: int | None = None,
    items: int | None = None,
    holdout: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, int]:
    """Write a world's logs, its dataset.toml and holdout.jsonl to `out`; return row counts.

    The shop (default 20,000 users, 5,000 items) writes users.csv, items.csv and
    interactions.csv; the streaming world (model/streaming.py) its own files. `users` go to the
    training files and `holdout` more (default users // 10) to holdout.jsonl only, each with a
    short history and the item picked next.
    """
    if world == "streaming":
        from model.streaming import generate_streaming

        sizes = {name: value for name, value in (("users", users), ("items", items)) if value is not None}
        return generate_streaming(out, holdout=holdout, seed=seed, progress=progress, **sizes)
    if world != "shop":
        raise RecguardError(f"unknown world {world!r} (known: {', '.join(WORLDS)})")
    users = 20_000 if users is None else users
    items = 5_000 if items is None else items
    holdout = users // 10 if holdout is None else holdout
    if users < 1 or items < 4 or holdout < 0:
        raise RecguardError("generate needs at least 1 user, 4 items and a holdout of 0 or more users")
    rng = np.random.default_rng(seed)
    total = users + holdout
    cat = _catalogue(rng, items)
    people = _shoppers(rng, total)
    is_holdout = np.zeros(total, dtype=bool)
    is_holdout[rng.choice(total, holdout, replace=False)] = True

    lengths = np.clip(np.round(np.exp(rng.normal(np.log(14.0), 0.7, total))), 2, 150).astype(np.int64)
    history_lengths = rng.integers(1, 4, total)
    lengths[is_holdout] = history_lengths[is_holdout] + 1
    lengths = np.minimum(lengths, items)
    sequences = _draw_sequences(rng, cat, people, lengths, progress)

    item_ids = [f"item_{i:05d}" for i in range(items)]
    user_ids = [f"u_{u + 1:06d}" for u in range(total)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.toml").write_text(DATASET_TOML, encoding="utf-8")
    _write(
        out / "items.csv",
        ["item_id,category,size,price"]
        + [f"{item_ids[i]},{CATEGORIES[cat.category[i]]},{SIZES[cat.size[i]]},{cat.price[i]:.2f}" for i in range(items)],
    )

    train_users = np.flatnonzero(~is_holdout)
    _write(
        out / "users.csv",
        ["user_id,email,first_name,last_name,country,weight_kg,height_cm,age"]
        + [
            f"{s['user_id']},{s['email']},{s['first_name']},{s['last_name']},{s['country']},"
            f"{s['weight_kg']:.1f},{s['height_cm']},{s['age']}"
            for s in (_signup(people, user_ids, u) for u in train_users)
        ],
    )

    owners = np.repeat(train_users, lengths[train_users]).tolist()
    picked = np.concatenate([sequences[u] for u in train_users]).tolist()
    stamps = _timestamps(rng, lengths[train_users])
    events = rng.choice(len(_EVENTS), len(picked), p=_EVENT_SHARES).tolist()
    _write(
        out / "interactions.csv",
        ["user_id,item_id,timestamp,event"]
        + [f"{user_ids[u]},{item_ids[i]},{t},{_EVENTS[e]}" for u, i, t, e in zip(owners, picked, stamps, events)],
    )

    held = []
    for u in np.flatnonzero(is_holdout):
        choices = [item_ids[i] for i in sequences[u].tolist()]
        request = _signup(people, user_ids, u) | {"history": choices[:-1]}
        held.append(json.dumps({"request": request, "next_item": choices[-1]}, separators=(", ", ": ")))
    _write(out / "holdout.jsonl", held)
    progress(f"wrote {len(train_users)} users, {items} items, {len(picked)} interactions, {holdout} held-out users to {out}")
    return {"users": len(train_users), "items": items, "interactions": len(picked), "holdout": holdout}
