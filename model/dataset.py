"""A team's logs as declared in dataset.toml: the schema, the three CSV files, checked once here.

dataset.toml says which file holds users, items and interactions and what each column is
for (docs/own-data.md)::

    [users]         file, id, numeric, categorical, segment, personal
    [items]         file, id, numeric, categorical
    [interactions]  file, user, item, time

Every mistake is a RecguardError whose one-line message names the file, the column and,
for a value, the line. Values are typed once: a declared numeric column as numbers (int
when every value is whole), categorical, segment, personal and id columns as strings, and
every other users column (a contract field: profiled and checked, never read by the model)
as int, float or string, whichever all its values are, except that digits with a leading zero
(a postcode 02139, an account code 007) are a code and stay strings. An empty cell is None. The
time column is read as a time: ISO 8601 (with an offset, or none for UTC) or epoch seconds or
milliseconds, anything else an error naming the line, so that histories are in time order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import RecguardError

DATASET_FILE = "dataset.toml"
HOLDOUT_FILE = "holdout.jsonl"
MAX_UNKNOWN_SHARE = 0.01
"""Interactions naming a user or item absent from users/items are dropped up to this share, refused past it."""
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_LEADING_ZERO = re.compile(r"^0[0-9]+$")
"""Digits with a leading zero: a code (postcode 02139), never a number."""
_KEYS = {
    "users": {"file": str, "id": str, "numeric": list, "categorical": list, "segment": str, "personal": list},
    "items": {"file": str, "id": str, "numeric": list, "categorical": list},
    "interactions": {"file": str, "user": str, "item": str, "time": str},
}
_REQUIRED = {"users": ("file", "id"), "items": ("file", "id"), "interactions": ("file", "user", "item", "time")}


@dataclass(frozen=True)
class Table:
    """One declared CSV file and the roles of its columns."""

    file: Path
    id: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    segment: str | None = None
    personal: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        """Columns the model reads: numeric, then categorical."""
        return self.numeric + self.categorical


@dataclass(frozen=True)
class Events:
    """The interactions file: which columns name the user, the item and the time."""

    file: Path
    user: str
    item: str
    time: str


@dataclass(frozen=True)
class Schema:
    """dataset.toml, read and checked: where the files are and what each column means."""

    path: Path
    users: Table
    items: Table
    interactions: Events

    @property
    def root(self) -> Path:
        """The directory of dataset.toml, which relative file names start from."""
        return self.path.parent

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """The users, items and interactions files, in that order."""
        return self.users.file, self.items.file, self.interactions.file


@dataclass(frozen=True)
class Dataset:
    """The training logs: typed user rows, the catalogue, and each user's items in time order."""

    schema: Schema
    user_fields: tuple[str, ...]
    users: list[dict[str, Any]]
    items: list[dict[str, Any]]
    item_ids: list[str]
    sequences: list[np.ndarray]
    interactions: int
    sha256: str
    dropped: int = 0
    """Interactions left out because they name a user or an item the other files do not have."""
    user_ids: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The directory of the declaration (where holdout.jsonl is looked for)."""
        return self.schema.root

    def column(self, name: str) -> list[Any]:
        """All users' values of one users column, None where empty."""
        return [user[name] for user in self.users]


def _section(path: Path, document: dict[str, Any], section: str) -> dict[str, Any]:
    label = path.name
    table = document.get(section)
    if not isinstance(table, dict):
        raise RecguardError(f"{label}: missing section [{section}]")
    for key, value in table.items():
        expected = _KEYS[section].get(key)
        if expected is None:
            raise RecguardError(f"{label}: [{section}] unknown key {key!r} (known: {', '.join(_KEYS[section])})")
        if expected is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise RecguardError(f"{label}: [{section}] {key} must be a list of column names")
        elif not isinstance(value, str) or not value:
            raise RecguardError(f"{label}: [{section}] {key} must be a column name" if key != "file" else
                                f"{label}: [{section}] file must be a file name")
    for key in _REQUIRED[section]:
        if key not in table:
            raise RecguardError(f"{label}: [{section}] missing key {key!r}")
    return table


def _check_roles(path: Path, section: str, table: dict[str, Any]) -> None:
    """A column has one role (the segment may also be a categorical feature)."""
    seen: dict[str, str] = {}
    roles = [("id", [table["id"]])] + [(key, table.get(key, [])) for key in ("numeric", "categorical", "personal")]
    for role, columns in roles:
        for column in columns:
            if column in seen:
                if seen[column] == role:
                    raise RecguardError(f"{path.name}: [{section}] column {column!r} listed twice in {role}")
                raise RecguardError(f"{path.name}: [{section}] column {column!r} is both {seen[column]} and {role}")
            seen[column] = role
    segment = table.get("segment")
    if segment is not None and seen.get(segment) in ("id", "numeric", "personal"):
        raise RecguardError(f"{path.name}: [{section}] segment {segment!r} is also {seen[segment]}; "
                            f"a segment is a categorical column")


def read_schema(path: str | Path) -> Schema:
    """Read and check dataset.toml at `path`; RecguardError names the file, the section and the key."""
    path = Path(path)
    if not path.is_file():
        raise RecguardError(f"{path.name}: not found in {path.parent} (declare the data: docs/own-data.md)")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecguardError(f"{path.name}: not valid TOML ({exc})") from None
    unknown = sorted(set(document) - set(_KEYS))
    if unknown:
        raise RecguardError(f"{path.name}: unknown section [{unknown[0]}] (known: users, items, interactions)")
    sections = {name: _section(path, document, name) for name in _KEYS}
    for name in ("users", "items"):
        _check_roles(path, name, sections[name])
    users, items, events = sections["users"], sections["items"], sections["interactions"]
    return Schema(
        path=path,
        users=Table(path.parent / users["file"], users["id"], tuple(users.get("numeric", ())),
                    tuple(users.get("categorical", ())), users.get("segment"), tuple(users.get("personal", ()))),
        items=Table(path.parent / items["file"], items["id"], tuple(items.get("numeric", ())),
                    tuple(items.get("categorical", ()))),
        interactions=Events(path.parent / events["file"], events["user"], events["item"], events["time"]),
    )


def locate_schema(data: str | Path | None, dataset: str | Path | None) -> Path:
    """The dataset.toml to read: `dataset` when given, else DATA/dataset.toml."""
    if dataset is not None:
        return Path(dataset)
    if data is None:
        raise RecguardError("say where the data is: --data DIR (with DIR/dataset.toml) or --dataset FILE")
    root = Path(data)
    if not root.is_dir():
        raise RecguardError(f"data directory {root} does not exist (run `recguard generate --out {root}`)")
    return root / DATASET_FILE


def read_csv(path: Path, declared: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one CSV file; every declared column must be in the header, every row as wide."""
    name = path.name
    if not path.is_file():
        raise RecguardError(f"{name}: not found in {path.parent}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RecguardError(f"{name}: line {line} is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise RecguardError(f"{name}: line {reader.line_num} is not CSV ({exc})") from None
    if not rows:
        raise RecguardError(f"{name}: empty file, expected a header line")
    header = rows[0]
    missing = [column for column in declared if column not in header]
    if missing:
        raise RecguardError(f"{name}: missing column {', '.join(map(repr, missing))} (found: {', '.join(header)})")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RecguardError(f"{name}: line {number} has {len(row)} fields, the header has {len(header)}")
    return header, rows[1:]


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _numbers(name: str, column: str, values: list[str]) -> list[Any]:
    for line, value in enumerate(values, start=2):
        if value != "" and not _is_float(value):
            raise RecguardError(f"{name}: column {column!r} is declared numeric, line {line} has {value!r}")
    present = [v for v in values if v != ""]
    if present and all(_INTEGER.match(v) for v in present):
        return [int(v) if v != "" else None for v in values]
    return [float(v) if v != "" else None for v in values]


def _inferred(values: list[str]) -> list[Any]:
    """An undeclared column as the JSON type all its values share; a code with leading zeros stays text."""
    present = [v for v in values if v != ""]
    if any(_LEADING_ZERO.match(v) for v in present):
        return [v if v != "" else None for v in values]
    if present and all(_INTEGER.match(v) for v in present):
        return [int(v) if v != "" else None for v in values]
    if present and all(_is_float(v) for v in present):
        return [float(v) if v != "" else None for v in values]
    return [v if v != "" else None for v in values]


def typed_columns(table: Table, header: list[str], rows: list[list[str]]) -> dict[str, list[Any]]:
    """Every column of a users or items file, typed by its declared role (see the module docstring)."""
    strings = {table.id, *table.categorical, *table.personal} | ({table.segment} if table.segment else set())
    columns = {}
    for j, column in enumerate(header):
        values = [row[j] for row in rows]
        if column in table.numeric:
            columns[column] = _numbers(table.file.name, column, values)
        elif column in strings:
            columns[column] = [v if v != "" else None for v in values]
        else:
            columns[column] = _inferred(values)
    return columns


def _ids(table: Table, header: list[str], rows: list[list[str]]) -> dict[str, int]:
    column = header.index(table.id)
    index: dict[str, int] = {}
    for n, row in enumerate(rows):
        value = row[column]
        if value == "":
            raise RecguardError(f"{table.file.name}: column {table.id!r} (the id) is empty on line {n + 2}")
        if value in index:
            raise RecguardError(f"{table.file.name}: column {table.id!r} (the id) repeats {value!r} on line {n + 2} "
                                f"(first on line {index[value] + 2})")
        index[value] = n
    return index


def _records(columns: dict[str, list[Any]], header: list[str], count: int) -> list[dict[str, Any]]:
    return [{c: columns[c][i] for c in header} for i in range(count)]


EPOCH_MILLISECONDS_FROM = 1e11
"""A numeric time column whose values reach this is in milliseconds: 1e11 seconds is the year 5138,
1e11 milliseconds March 1973."""


def _time_order(name: str, column: str, stamps: list[str]) -> np.ndarray:
    """The time column as epoch seconds: every value ISO 8601 (an offset, or none for UTC), or every
    value a number (epoch seconds, or milliseconds when they reach EPOCH_MILLISECONDS_FROM)."""
    for line, stamp in enumerate(stamps, start=2):
        if stamp == "":
            raise RecguardError(f"{name}: column {column!r} (the time) is empty on line {line}")
    if stamps and all(_is_float(s) for s in stamps):
        seconds = np.array([float(s) for s in stamps])
        for line, value in enumerate(seconds, start=2):
            if not np.isfinite(value):
                raise RecguardError(f"{name}: column {column!r} (the time) is not a time on line {line}: "
                                    f"{stamps[line - 2]!r}")
        return seconds / 1000 if len(seconds) and np.abs(seconds).max() >= EPOCH_MILLISECONDS_FROM else seconds
    parse, utc = datetime.fromisoformat, timezone.utc
    try:
        moments = [parse(stamp) for stamp in stamps]
    except ValueError:
        for line, stamp in enumerate(stamps, start=2):
            _iso_seconds(name, column, line, stamp)
        raise
    return np.array([(moment if moment.tzinfo else moment.replace(tzinfo=utc)).timestamp() for moment in moments])


def _iso_seconds(name: str, column: str, line: int, stamp: str) -> float:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise RecguardError(
            f"{name}: column {column!r} (the time) is not a time on line {line}: {stamp[:40]!r} (expected ISO 8601 "
            "such as 2026-03-01T10:00:00Z or +01:00, or epoch seconds or milliseconds)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def data_sha256(schema: Schema) -> str:
    """sha256 over the bytes of the users, items and interactions files, in that order."""
    digest = hashlib.sha256()
    for path in schema.files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _unknown_refs(events: Events, rows: list[list[str]], column: int, known: dict[str, int], what: str,
                  target: str) -> np.ndarray:
    """Row mask of interactions whose `column` names something `known` lacks; refused past MAX_UNKNOWN_SHARE."""
    unknown = np.array([row[column] not in known for row in rows], dtype=bool)
    count = int(unknown.sum())
    if count and count > MAX_UNKNOWN_SHARE * len(rows):
        first = int(np.flatnonzero(unknown)[0])
        name = events.user if what == "a user" else events.item
        raise RecguardError(
            f"{events.file.name}: column {name!r}: {count} of {len(rows)} rows name {what} not in {target} "
            f"(first on line {first + 2}: {rows[first][column]!r}); at most {MAX_UNKNOWN_SHARE:.0%} may")
    return unknown


def load_dataset(data: str | Path | None = None, dataset: str | Path | None = None) -> Dataset:
    """Read the data declared by DATA/dataset.toml (or by the `dataset` file); RecguardError says what is wrong."""
    schema = read_schema(locate_schema(data, dataset))
    users_t, items_t, events = schema.users, schema.items, schema.interactions
    user_header, user_rows = read_csv(users_t.file, [users_t.id, *users_t.numeric, *users_t.categorical,
                                                      *users_t.personal, *([users_t.segment] if users_t.segment else [])])
    item_header, item_rows = read_csv(items_t.file, [items_t.id, *items_t.numeric, *items_t.categorical])
    event_header, event_rows = read_csv(events.file, [events.user, events.item, events.time])
    if not user_rows or not item_rows:
        raise RecguardError(f"{(users_t if not user_rows else items_t).file.name}: no rows")
    user_index = _ids(users_t, user_header, user_rows)
    item_index = _ids(items_t, item_header, item_rows)
    users = _records(typed_columns(users_t, user_header, user_rows), user_header, len(user_rows))
    items = _records(typed_columns(items_t, item_header, item_rows), item_header, len(item_rows))

    u_col, i_col, t_col = (event_header.index(c) for c in (events.user, events.item, events.time))
    unknown = (_unknown_refs(events, event_rows, u_col, user_index, "a user", users_t.file.name)
               | _unknown_refs(events, event_rows, i_col, item_index, "an item", items_t.file.name))
    kept = [row for row, bad in zip(event_rows, unknown) if not bad]
    stamps = _time_order(events.file.name, events.time, [row[t_col] for row in event_rows])[~unknown]
    owners = np.array([user_index[row[u_col]] for row in kept], dtype=np.int64)
    picked = np.array([item_index[row[i_col]] for row in kept], dtype=np.int64)
    order = np.lexsort((stamps, owners)) if len(kept) else np.empty(0, dtype=np.int64)
    bounds = np.searchsorted(owners[order], np.arange(len(users) + 1))
    ordered = picked[order]
    return Dataset(
        schema=schema,
        user_fields=tuple(user_header),
        users=users,
        items=items,
        item_ids=[row[item_header.index(items_t.id)] for row in item_rows],
        sequences=[ordered[bounds[u]: bounds[u + 1]] for u in range(len(users))],
        interactions=len(kept),
        sha256=data_sha256(schema),
        dropped=int(unknown.sum()),
        user_ids=[row[user_header.index(users_t.id)] for row in user_rows],
    )
