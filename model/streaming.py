"""A second synthetic world, a film-streaming service, in another shape than the shop.

Users declare age, gender and occupation, plus a postcode and a city that are personal;
films have a genre and a release year. What a viewer watches depends on all of it:

- occupation and age band each have their own taste over genres, gender a milder one;
- age sets the era a viewer prefers (older viewers reach further back in release years);
- every viewer has two favourite genres, which only the history reveals;
- film popularity follows a Zipf law.

Its logs use other names than the shop's (`movie_id`, `watched_at` in epoch seconds) and its
own dataset.toml (occupation is the segment), so nothing downstream can lean on the shop's
columns. Like the shop, one seed gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from model.errors import RecguardError

OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "programmer", "retired",
    "salesman", "scientist", "student", "technician", "writer", "other",
)
_OCCUPATION_SHARE = (6, 4, 2, 8, 9, 3, 4, 3, 2, 2, 2, 3, 9, 6, 2, 4, 16, 4, 4, 7)
_OCCUPATION_AGE = {"student": (21, 4), "retired": (68, 6)}
GENRES = (
    "action", "adventure", "animation", "children", "comedy", "crime", "documentary", "drama",
    "fantasy", "horror", "musical", "mystery", "romance", "sci-fi", "thriller", "western",
)
GENDERS = ("F", "M", "X")
_AGE_BANDS = (18, 30, 45, 60)
_CITY_HEAD = ("Ash", "Brook", "Cal", "Dun", "El", "Fair", "Glen", "Hol", "Kings", "Lang", "Mar", "North",
              "Oak", "Red", "Stan", "West")
_CITY_TAIL = ("ford", "ton", "by", "field", "mouth", "wick", "ham", "stead", "bridge", "port")
_TASTE = {"occupation": 0.6, "age band": 1.5, "gender": 1.5}
"""Standard deviation of each group's taste over genres."""
_ERA_YEARS = 4.0
"""How far (in release years) from a viewer's preferred era a film loses e^-1 of its appeal."""
_POPULARITY = 0.3
_YEAR_SHAPE = 3.0
"""Release years are 2026 minus a gamma(_YEAR_SHAPE, 11) draw: mostly recent, a long tail back to 1930."""
"""Exponent of the Zipf law over films."""
_START = 1_767_225_600  # 2026-01-01T00:00:00Z
_CHUNK = 1000

DATASET_TOML = """\
# The synthetic streaming service (recguard generate --world streaming): what each column means.
[users]
file = "users.csv"
id = "user_id"
numeric = ["age"]
categorical = ["gender", "occupation"]
segment = "occupation"
personal = ["postcode", "city"]

[items]
file = "movies.csv"
id = "movie_id"
numeric = ["year"]
categorical = ["genre"]

[interactions]
file = "views.csv"
user = "user_id"
item = "movie_id"
time = "watched_at"
"""


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def generate_streaming(out: Path, *, users: int = 10_000, items: int = 2_000, holdout: int | None = None, seed: int = 0,
                       progress: Callable[[str], None] = lambda message: None) -> dict[str, int]:
    """Write users.csv, movies.csv, views.csv, dataset.toml and holdout.jsonl to `out`; return row counts.

    `holdout` more viewers (default users // 10) go to holdout.jsonl only, each with their first
    1-4 films as the history and the next one as `next_item`."""
    holdout = users // 10 if holdout is None else holdout
    if users < 1 or items < 5 or holdout < 0:
        raise RecguardError("generate needs at least 1 user, 5 items and a holdout of 0 or more users")
    rng = np.random.default_rng(seed)
    total = users + holdout

    genre = rng.integers(0, len(GENRES), items)
    year = np.clip(np.round(2026 - rng.gamma(_YEAR_SHAPE, 11.0, items)), 1930, 2026).astype(np.int64)
    log_popularity = -_POPULARITY * np.log1p(rng.permutation(items))

    shares = np.array(_OCCUPATION_SHARE, dtype=np.float64)
    occupation = rng.choice(len(OCCUPATIONS), total, p=shares / shares.sum())
    gender = rng.choice(len(GENDERS), total, p=(0.48, 0.48, 0.04))
    centre = np.array([_OCCUPATION_AGE.get(name, (38, 11))[0] for name in OCCUPATIONS], dtype=np.float64)
    spread = np.array([_OCCUPATION_AGE.get(name, (38, 11))[1] for name in OCCUPATIONS], dtype=np.float64)
    age = np.clip(np.round(rng.normal(centre[occupation], spread[occupation])), 13, 90).astype(np.int64)
    postcode = rng.integers(10_000, 99_999, total)
    city_head = rng.integers(0, len(_CITY_HEAD), total)
    city_tail = rng.integers(0, len(_CITY_TAIL), total)
    favourites = np.stack([rng.choice(len(GENRES), 2, replace=False) for _ in range(total)])

    by_occupation = rng.normal(0.0, _TASTE["occupation"], (len(OCCUPATIONS), len(GENRES)))
    by_band = rng.normal(0.0, _TASTE["age band"], (len(_AGE_BANDS) + 1, len(GENRES)))
    by_gender = rng.normal(0.0, _TASTE["gender"], (len(GENDERS), len(GENRES)))
    band = np.searchsorted(_AGE_BANDS, age, side="right")
    preferred_year = 2026.0 - 0.55 * (age - 13.0)

    is_holdout = np.zeros(total, dtype=bool)
    is_holdout[rng.choice(total, holdout, replace=False)] = True
    lengths = np.clip(np.round(np.exp(rng.normal(np.log(16.0), 0.7, total))), 2, 150).astype(np.int64)
    lengths[is_holdout] = rng.integers(1, 5, total)[is_holdout] + 1
    lengths = np.minimum(lengths, items)

    sequences: list[np.ndarray] = []
    for start in range(0, total, _CHUNK):
        rows = slice(start, min(start + _CHUNK, total))
        n = rows.stop - rows.start
        taste = by_occupation[occupation[rows]] + by_band[band[rows]] + by_gender[gender[rows]]
        taste[np.arange(n)[:, None], favourites[rows]] += 1.5
        era = (year[None, :] - preferred_year[rows, None]) / _ERA_YEARS
        logits = taste[:, genre] - era * era + log_popularity[None, :]
        keys = logits - np.log(-np.log(rng.random((n, items)) + 1e-12))
        longest = int(lengths[rows].max())
        top = np.argpartition(-keys, longest - 1, axis=1)[:, :longest]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        picked = np.take_along_axis(top, order, axis=1)
        sequences.extend(picked[i, : lengths[rows.start + i]] for i in range(n))
        progress(f"sampled views for {rows.stop}/{total} users")

    movie_ids = [f"m_{i:05d}" for i in range(items)]
    user_ids = [f"v_{u + 1:06d}" for u in range(total)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.toml").write_text(DATASET_TOML, encoding="utf-8")
    _write(out / "movies.csv", ["movie_id,genre,year"] + [f"{movie_ids[i]},{GENRES[genre[i]]},{year[i]}" for i in range(items)])

    def signup(u: int) -> dict:
        return {"user_id": user_ids[u], "age": int(age[u]), "gender": GENDERS[gender[u]],
                "occupation": OCCUPATIONS[occupation[u]], "postcode": f"{postcode[u]:05d}",
                "city": _CITY_HEAD[city_head[u]] + _CITY_TAIL[city_tail[u]]}

    train_users = np.flatnonzero(~is_holdout)
    _write(out / "users.csv", ["user_id,age,gender,occupation,postcode,city"] + [
        ",".join(str(value) for value in signup(u).values()) for u in train_users])
    gaps = rng.integers(60, 3 * 86400, int(lengths[train_users].sum()))
    first = rng.integers(0, 150 * 86400, len(train_users))
    lines, cursor = ["user_id,movie_id,watched_at"], 0
    for row, u in enumerate(train_users):
        stamps = _START + first[row] + np.cumsum(gaps[cursor: cursor + lengths[u]])
        cursor += lengths[u]
        lines.extend(f"{user_ids[u]},{movie_ids[i]},{t}" for i, t in zip(sequences[u].tolist(), stamps.tolist()))
    _write(out / "views.csv", lines)

    held = []
    for u in np.flatnonzero(is_holdout):
        films = [movie_ids[i] for i in sequences[u].tolist()]
        held.append(json.dumps({"request": signup(u) | {"history": films[:-1]}, "next_item": films[-1]}))
    _write(out / "holdout.jsonl", held)
    progress(f"wrote {len(train_users)} users, {items} films, {len(lines) - 1} views, {holdout} held-out users to {out}")
    return {"users": len(train_users), "items": items, "interactions": len(lines) - 1, "holdout": holdout}
