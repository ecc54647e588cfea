"""Hold users out of a team's own logs: the training files without them, and holdout.jsonl.

Each held-out user (one with two or more interactions) becomes one line of holdout.jsonl:
their users row as the request's signup fields (typed as the dataset types them, empty cells
left out), every interaction but the last as the history (most recent last), and the last
item as `next_item`. The same data and seed give the same split.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model.dataset import DATASET_FILE, HOLDOUT_FILE, Dataset, read_csv
from model.errors import RecguardError


def _relative(dataset: Dataset, path: Path) -> Path:
    try:
        return path.relative_to(dataset.root)
    except ValueError:
        raise RecguardError(f"{dataset.schema.path.name}: split needs file names relative to it, got {path}") from None


def _write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def split(data: Dataset, out: str | os.PathLike, share: float, seed: int,
          progress: Callable[[str], None] = lambda message: None) -> dict[str, int]:
    """Write DATA minus a `share` of its users (at random among those with two or more interactions)
    to `out`, with holdout.jsonl and a copy of dataset.toml; return the counts."""
    if not 0 < share < 1:
        raise RecguardError(f"--holdout-users must be a share between 0 and 1, got {share:g}")
    target = Path(out)
    if target.resolve() == data.root.resolve():
        raise RecguardError(f"--out {target} is the data directory itself; choose another")
    schema = data.schema
    names = [_relative(data, path) for path in schema.files]
    eligible = np.flatnonzero([len(sequence) >= 2 for sequence in data.sequences])
    count = min(len(eligible), max(1, round(share * len(data.users))))
    if len(eligible) < 2 or count >= len(data.users):
        raise RecguardError(f"{schema.interactions.file.name}: too few users with 2 or more interactions to hold any out")
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(eligible, count, replace=False))
    held_ids = {data.user_ids[u] for u in held}

    user_header, user_rows = read_csv(schema.users.file, [])
    event_header, event_rows = read_csv(schema.interactions.file, [])
    id_column = user_header.index(schema.users.id)
    owner_column = event_header.index(schema.interactions.user)
    target.mkdir(parents=True, exist_ok=True)
    _write_rows(target / names[0], user_header, [row for row in user_rows if row[id_column] not in held_ids])
    (target / names[1]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(schema.items.file, target / names[1])
    kept_events = [row for row in event_rows if row[owner_column] not in held_ids]
    _write_rows(target / names[2], event_header, kept_events)
    shutil.copyfile(schema.path, target / DATASET_FILE)

    lines = []
    for u in held:
        request: dict[str, Any] = {name: value for name, value in data.users[u].items() if value is not None}
        items = [data.item_ids[i] for i in data.sequences[u].tolist()]
        request["history"] = items[:-1]
        lines.append(json.dumps({"request": request, "next_item": items[-1]}, ensure_ascii=False) + "\n")
    (target / HOLDOUT_FILE).write_text("".join(lines), encoding="utf-8")
    counts = {"users": len(user_rows) - len(held), "interactions": len(kept_events), "holdout": len(held)}
    progress(f"wrote {counts['users']} users, {counts['interactions']} interactions and "
             f"{counts['holdout']} held-out users to {target}")
    return counts
