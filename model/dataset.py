"""Read and validate a data directory written by `recguard generate` (or by the shop's own export).

users.csv values are typed once here: a column whose every non-empty value is an integer
becomes int, a numeric one float, anything else stays a string; an empty cell is None.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import RecguardError

TRAINING_FILES = ("users.csv", "items.csv", "interactions.csv")
# Only what training reads is required; every other users.csv column is profiled as it comes.
REQUIRED_COLUMNS = {
    "users.csv": ("user_id", "country", "weight_kg", "height_cm", "age"),
    "items.csv": ("item_id", "category", "size", "price"),
    "interactions.csv": ("user_id", "item_id", "timestamp"),
}
NUMERIC_COLUMNS = {"users.csv": ("weight_kg", "height_cm", "age"), "items.csv": ("price",)}
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class Dataset:
    """The training logs: typed signup rows, the catalogue, and each user's items in time order."""

    root: Path
    user_fields: tuple[str, ...]
    users: list[dict[str, Any]]
    items: list[dict[str, Any]]
    item_ids: list[str]
    sequences: list[np.ndarray]
    interactions: int
    sha256: str

    def column(self, field: str) -> list[Any]:
        """All users' values of one signup field, None where empty."""
        return [user[field] for user in self.users]


def _read_csv(root: Path, name: str) -> tuple[list[str], list[list[str]]]:
    path = root / name
    if not path.is_file():
        raise RecguardError(f"{name}: not found in {root}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise RecguardError(f"{name}: empty file, expected a header line")
    header = rows[0]
    missing = [column for column in REQUIRED_COLUMNS[name] if column not in header]
    if missing:
        raise RecguardError(f"{name}: missing column {', '.join(map(repr, missing))} (found: {', '.join(header)})")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RecguardError(f"{name}: line {number} has {len(row)} fields, the header has {len(header)}")
    return header, rows[1:]


def _typed_column(name: str, column: str, values: list[str]) -> list[Any]:
    present = [v for v in values if v != ""]
    if present and all(_INTEGER.match(v) for v in present):
        return [int(v) if v != "" else None for v in values]
    try:
        return [float(v) if v != "" else None for v in values]
    except ValueError:
        if column in NUMERIC_COLUMNS.get(name, ()):
            bad = next(i for i, v in enumerate(values) if v != "" and not _is_float(v))
            raise RecguardError(f"{name}: column {column!r} must be numeric, line {bad + 2} has {values[bad]!r}") from None
        return [v if v != "" else None for v in values]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _records(name: str, header: list[str], rows: list[list[str]]) -> list[dict[str, Any]]:
    columns = {c: _typed_column(name, c, [row[j] for row in rows]) for j, c in enumerate(header)}
    return [{c: columns[c][i] for c in header} for i in range(len(rows))]


def data_sha256(root: Path) -> str:
    """sha256 over the bytes of users.csv, items.csv and interactions.csv, in that order."""
    digest = hashlib.sha256()
    for name in TRAINING_FILES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def load_dataset(root: str | Path) -> Dataset:
    """Read users.csv, items.csv and interactions.csv from `root`; RecguardError says what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise RecguardError(f"data directory {root} does not exist (run `recguard generate --out {root}`)")
    user_header, user_rows = _read_csv(root, "users.csv")
    item_header, item_rows = _read_csv(root, "items.csv")
    event_header, event_rows = _read_csv(root, "interactions.csv")
    users = _records("users.csv", user_header, user_rows)
    items = _records("items.csv", item_header, item_rows)
    if not users or not items:
        raise RecguardError(f"{'users.csv' if not users else 'items.csv'}: no rows")

    user_index = {str(u["user_id"]): i for i, u in enumerate(users)}
    item_ids = [row[item_header.index("item_id")] for row in item_rows]
    item_index = {item: i for i, item in enumerate(item_ids)}
    u_col, i_col, t_col = (event_header.index(c) for c in ("user_id", "item_id", "timestamp"))
    owners = np.empty(len(event_rows), dtype=np.int64)
    picked = np.empty(len(event_rows), dtype=np.int64)
    for n, row in enumerate(event_rows):
        try:
            owners[n] = user_index[row[u_col]]
            picked[n] = item_index[row[i_col]]
        except KeyError as exc:
            file = "users.csv" if exc.args[0] == row[u_col] else "items.csv"
            raise RecguardError(f"interactions.csv: line {n + 2} refers to {exc.args[0]!r}, which is not in {file}") from None
    stamps = np.array([row[t_col] for row in event_rows])
    order = np.lexsort((stamps, owners)) if len(event_rows) else np.empty(0, dtype=np.int64)
    bounds = np.searchsorted(owners[order], np.arange(len(users) + 1))
    ordered = picked[order]
    sequences = [ordered[bounds[u] : bounds[u + 1]] for u in range(len(users))]
    return Dataset(
        root=root,
        user_fields=tuple(user_header),
        users=users,
        items=items,
        item_ids=item_ids,
        sequences=sequences,
        interactions=len(event_rows),
        sha256=data_sha256(root),
    )
