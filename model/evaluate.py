"""Offline evaluation of a bundle on held-out users, with the serving scorer and the serving fallback.

Evaluation reads only the bundle (never torch) and answers each held-out request with the
very objects the proxy answers with (model/scorer.py, model/fallback.py), so
the figures it prints are those of the exported model as it is served.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from model.bundle import load_bundle
from model.dataset import HOLDOUT_FILE
from model.errors import RecguardError
from model.fallback import PopularityFallback
from model.recommender import ModelError
from model.scorer import Scorer

K = 10
# Unit mistakes a form can make: the factor that turns the trained unit into the wrong one.
CORRUPTIONS = {"lbs": 2.20462, "inches": 1 / 2.54}
_KINDS = "scale=F, rename=NEW, drop, map=OLD=NEW, " + ", ".join(CORRUPTIONS)


@dataclass(frozen=True)
class Corruption:
    """One change a redesigned form makes to every held-out request that has the field."""

    spec: str
    field: str
    kind: str
    argument: Any = None


def ranking_metrics(top: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """hit_rate@k and ndcg@k (one relevant item per row) of ranked item lists `top` (rows x k)."""
    k = top.shape[1]
    hits = top == np.asarray(targets)[:, None]
    rank = hits.argmax(axis=1)
    found = hits.any(axis=1)
    gain = np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hit_rate@{k}": round(float(found.mean()), 4), f"ndcg@{k}": round(float(gain.mean()), 4)}


def parse_corruption(spec: str) -> Corruption:
    """A --corrupt spec: FIELD:scale=F (a number or a fraction A/B), FIELD:rename=NEW, FIELD:drop, FIELD:map=OLD=NEW, or a unit
    shorthand of CORRUPTIONS (FIELD:lbs is FIELD:scale=2.20462); RecguardError for anything else."""
    field, _, kind = spec.partition(":")
    name, _, argument = kind.partition("=")
    bad = RecguardError(f"--corrupt {spec!r}: expected FIELD:KIND with KIND one of {_KINDS}")
    if not field:
        raise bad
    if kind in CORRUPTIONS:
        return Corruption(spec, field, "scale", CORRUPTIONS[kind])
    if name == "scale":
        numerator, _, denominator = argument.partition("/")
        try:
            factor = float(numerator) / float(denominator) if denominator else float(numerator)
        except (ValueError, ZeroDivisionError):
            raise RecguardError(f"--corrupt {spec!r}: scale needs a number or a fraction A/B, "
                                f"got {argument!r}") from None
        if not math.isfinite(factor):
            raise RecguardError(f"--corrupt {spec!r}: scale needs a finite number")
        return Corruption(spec, field, "scale", factor)
    if name == "rename" and argument:
        return Corruption(spec, field, "rename", argument)
    if kind == "drop":
        return Corruption(spec, field, "drop")
    if name == "map" and "=" in argument:
        old, _, new = argument.partition("=")
        return Corruption(spec, field, "map", (old, new))
    raise bad


def corrupt(requests: list[dict[str, Any]], change: Corruption) -> list[dict[str, Any]]:
    """Copies of `requests` as the changed form would send them."""
    field = change.field
    if change.kind == "scale":
        if not any(_is_number(r.get(field)) for r in requests):
            raise RecguardError(f"--corrupt {change.spec}: the held-out requests have no numeric field {field!r}")
        return [r | {field: r[field] * change.argument} if _is_number(r.get(field)) else r for r in requests]
    if not any(field in r for r in requests):
        raise RecguardError(f"--corrupt {change.spec}: the held-out requests have no field {field!r}")
    if change.kind == "rename":
        return [{(change.argument if k == field else k): v for k, v in r.items()} for r in requests]
    if change.kind == "drop":
        return [{k: v for k, v in r.items() if k != field} for r in requests]
    old, new = change.argument
    return [r | {field: new} if r.get(field) == old else r for r in requests]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def holdout_path(data: str | os.PathLike | None, dataset: str | os.PathLike | None) -> Path:
    """holdout.jsonl in DATA, or beside the `dataset` file."""
    if data is not None:
        return Path(data) / HOLDOUT_FILE
    if dataset is not None:
        return Path(dataset).parent / HOLDOUT_FILE
    raise RecguardError("say where the held-out users are: --data DIR (with DIR/holdout.jsonl) or --dataset FILE")


def read_holdout(data_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """Requests and next items of DATA_DIR/holdout.jsonl (or of the holdout.jsonl file given)."""
    path = Path(data_dir)
    if path.is_dir() or path.name != HOLDOUT_FILE:
        path = path / HOLDOUT_FILE
    if not path.is_file():
        raise RecguardError(f"{HOLDOUT_FILE}: not found in {path.parent}")
    requests, targets = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                request, target = row["request"], row["next_item"]
            except (ValueError, KeyError, TypeError):
                request, target = None, None
            history = request.get("history", []) if isinstance(request, dict) else None
            if not isinstance(target, str) or not isinstance(history, list) or not all(isinstance(i, str) for i in history):
                raise RecguardError(
                    f"{HOLDOUT_FILE}: line {number} is not {{\"request\": {{..., \"history\": [item ids]}}, \"next_item\": item id}}"
                )
            requests.append(request)
            targets.append(target)
    if not requests:
        raise RecguardError(f"{HOLDOUT_FILE}: no held-out users")
    return requests, targets


Recommend = Callable[[Mapping[str, Any], Sequence[str], int], Any]


def score(recommend: Recommend, requests: Sequence[Mapping[str, Any]], targets: Sequence[str]) -> dict[str, float]:
    """hit_rate@K and ndcg@K of a recommender (the serving Scorer's or fallback's `recommend`) on
    held-out requests; a request it cannot answer (ModelError) counts as a miss."""
    top = []
    for request in requests:
        fields = {key: value for key, value in request.items() if key != "history"}
        try:
            items = recommend(fields, request.get("history") or [], K).items
        except ModelError:
            items = []
        top.append(items[:K] + [""] * (K - len(items[:K])))
    return ranking_metrics(np.array(top, dtype=object), np.array(targets, dtype=object))


def evaluate_parts(scorer: Scorer | None, fallback: PopularityFallback, requests: list[dict[str, Any]],
                   targets: list[str]) -> dict[str, Any]:
    """Figures of the model (when there is one) and of popularity on the held-out requests."""
    figures: dict[str, Any] = {}
    if scorer is not None:
        figures["model"] = score(scorer.recommend, requests, targets)
    figures["popularity"] = score(fallback.recommend, requests, targets)
    figures["holdout_users"] = len(requests)
    return figures


def evaluate(bundle_path: str | os.PathLike, data_dir: str | os.PathLike, corruptions: Sequence[str] = ()) -> dict[str, Any]:
    """hit_rate@10 and ndcg@10 of the bundle's model (a full bundle) and of its popularity fallback on
    the held-out users, after the `corruptions` (FIELD:KIND, see parse_corruption)."""
    bundle = load_bundle(bundle_path)
    changes = [parse_corruption(spec) for spec in corruptions]
    requests, targets = read_holdout(data_dir)
    for change in changes:
        requests = corrupt(requests, change)
    scorer = Scorer.from_bundle(bundle) if bundle.has_model else None
    return evaluate_parts(scorer, PopularityFallback(bundle.popularity), requests, targets)
