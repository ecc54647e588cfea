"""Training: from a declared data set to a verified bundle (docs/bundle.md).

Training mirrors serving on purpose. Each training example is one interaction of a
training user, with the user's signup form and the few items they interacted with just
before it as the history: exactly what a request carries. Validation users are held out of
the graph and of the loss and scored the way the holdout is: a history as long as the
holdout's (drawn from its history lengths; without a holdout, everything but the last
item), the item after it as the target. So the per-epoch validation figure predicts what
`recguard evaluate` will print.

What the data decides (docs/model.md): the batch size (at least MIN_STEPS_PER_EPOCH steps per
epoch), the epoch budget (about TARGET_STEPS optimiser steps), early stopping (no better
validation hit rate for `patience` epochs), the validation users (a tenth of those with two
or more interactions, at most `validation_users`) and the history window of the examples.
What the clock decides, with a `time_budget` only: how many of those epochs fit it.
"""

from __future__ import annotations

import copy
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.bundle import write_bundle
from model.dataset import Dataset
from model.errors import RecguardError
from model.evaluate import evaluate_parts, ranking_metrics
from model.fallback import PopularityFallback
from model.features import encode, fit_inputs, item_features
from model.gcn import (
    NO_ITEM,
    GraphRecommender,
    ItemEncoder,
    UserTower,
    propagation_matrix,
)
from model.item_index import (
    ANN_MIN_ITEMS,
    ItemIndex,
    build_index,
    index_settings,
    scoring_vectors,
)
from model.popularity import build_popularity
from model.profile import build_profile
from model.scorer import Scorer

TARGET_STEPS = 200
MIN_STEPS_PER_EPOCH = 8
MIN_EPOCHS, MAX_EPOCHS = 8, 100
MAX_BATCH, MIN_BATCH = 32768, 256
MAX_HISTORY_WINDOW = 10


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; None means "chosen from the data" (see the module docstring)."""

    epochs: int | None = None
    """At most this many epochs (early stopping may end sooner)."""
    seed: int = 0
    dim: int = 64
    hidden: int = 128
    num_layers: int = 2
    # Every step re-propagates the whole graph, so few large batches beat many small ones.
    batch_size: int | None = None
    lr: float = 0.02
    negatives: int = 8
    history_window: int | None = None
    patience: int = 5
    # At most this many, and at most a tenth of the users with two or more interactions.
    validation_users: int = 1000
    # One thread: with two, OpenMP spin-waiting against any other busy process (a test
    # server, a second training run) made epochs up to 50x slower on a 2-core machine.
    threads: int = 1
    time_budget: float | None = None
    """Seconds the epochs may take: no epoch starts that would end after it, by the epochs so far
    (the first always runs). None: every epoch of the schedule, until early stopping."""


@dataclass(frozen=True)
class Examples:
    """Rows to score: whose form (`users`, into the encoded user matrix), padded `history`, the `target` item."""

    users: Tensor
    history: Tensor
    target: Tensor


@dataclass(frozen=True)
class Prepared:
    """Everything training needs as tensors, built once from the data set."""

    user_x: Tensor
    train_users: Tensor
    graph: Tensor
    """The user-item graph of the training users, normalised for propagation (gcn.propagation_matrix)."""
    edges: int
    """Its user-item edges (each is in `graph` in both directions)."""
    item_features: Tensor
    item_cardinalities: list[int]
    train: Examples
    validation: Examples


Meter = Callable[[str, int, int, float | None], None]
"""Progress within a stage: (label, done, total, seconds left or None), e.g. a terminal's bar."""


def _no_meter(label: str, done: int, total: int, seconds_left: float | None) -> None:
    pass


@dataclass
class EpochClock:
    """How many of `epochs` will run within `budget` seconds (None: all), and how long they will take,
    from the durations of the epochs so far (the mean of the last three: the load of a shared
    machine changes)."""

    epochs: int
    budget: float | None = None
    durations: list[float] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        """One more epoch done, in `seconds`."""
        self.durations.append(seconds)

    def _recent(self) -> float | None:
        recent = self.durations[-3:]
        return sum(recent) / len(recent) if recent else None

    def planned(self, per_epoch: float | None = None) -> int:
        """The epochs that run unless early stopping ends them sooner: every one, or with a budget
        those done and as many more as would end within it (`per_epoch` seconds each, by default
        the recent epochs' mean); at least one."""
        done = len(self.durations)
        per_epoch = per_epoch or self._recent()
        if self.budget is None or not per_epoch:
            return self.epochs
        more = int((self.budget - sum(self.durations)) // per_epoch)
        return max(done, 1, min(self.epochs, done + more))

    def seconds_left(self, elapsed: float = 0.0, fraction: float = 0.0) -> float | None:
        """Seconds until the planned epochs end, with `fraction` of the current one done in `elapsed`
        seconds (the estimate before the first epoch ends); None while nothing is known."""
        per_epoch = self._recent() or (elapsed / fraction if fraction > 0 else None)
        if per_epoch is None:
            return None
        return max(0.0, (self.planned(per_epoch) - len(self.durations) - fraction) * per_epoch)


def _rated(meter: Meter, label: str) -> Callable[[int, int], None]:
    """`meter` for a stage that reports (done, total), the time left from its rate since its first report."""
    began: float | None = None

    def report(done: int, total: int) -> None:
        nonlocal began
        now = time.perf_counter()
        began = now if began is None else began
        meter(label, done, total, (now - began) * (total - done) / done if done else None)

    return report


def _sliding_examples(users: np.ndarray, sequences: list[np.ndarray], window: int) -> Examples:
    """One example per interaction of `users`: the item as target, up to `window` items before it as history."""
    lengths = np.array([len(sequences[u]) for u in users], dtype=np.int64)
    flat = np.concatenate([sequences[u] for u in users]) if len(users) else np.empty(0, dtype=np.int64)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    history = np.full((len(flat), window), NO_ITEM, dtype=np.int64)
    for k in range(window):
        back = window - k
        valid = position >= back
        history[valid, k] = flat[np.flatnonzero(valid) - back]
    return Examples(torch.from_numpy(np.repeat(users, lengths)), torch.from_numpy(history), torch.from_numpy(flat))


def _holdout_examples(users: np.ndarray, sequences: list[np.ndarray], rng: np.random.Generator,
                      history_lengths: Sequence[int]) -> Examples:
    """Like a held-out request: a history of a length drawn from `history_lengths` (all but the last
    item when empty), the item after it as the target."""
    lengths = [min(int(rng.choice(history_lengths)) if len(history_lengths) else len(sequences[u]) - 1,
                   len(sequences[u]) - 1) for u in users]
    history = np.full((len(users), max(max(lengths, default=1), 1)), NO_ITEM, dtype=np.int64)
    target = np.empty(len(users), dtype=np.int64)
    for row, (u, h) in enumerate(zip(users, lengths)):
        h = max(h, 1)
        history[row, :h] = sequences[u][:h]
        target[row] = sequences[u][h]
    return Examples(torch.from_numpy(users), torch.from_numpy(history), torch.from_numpy(target))


def history_window(config: TrainConfig, history_lengths: Sequence[int]) -> int:
    """How many items before a training example's target form its history: as many as the longest
    held-out history, at most MAX_HISTORY_WINDOW."""
    if config.history_window is not None:
        return config.history_window
    return max(1, min(max(history_lengths, default=MAX_HISTORY_WINDOW), MAX_HISTORY_WINDOW))


def prepare(data: Dataset, inputs: list[dict[str, Any]], config: TrainConfig,
            history_lengths: Sequence[int] = ()) -> Prepared:
    """Encode users, split off validation users, build the user-item graph and the training examples;
    `history_lengths` are the held-out requests' (validation mimics them)."""
    rng = np.random.default_rng(config.seed)
    eligible = np.flatnonzero([len(s) >= 2 for s in data.sequences])
    if len(eligible) < 2:
        raise RecguardError(f"{data.schema.interactions.file.name}: fewer than 2 users with 2 or more interactions, "
                            f"too few to train and validate")
    n_validation = min(config.validation_users, max(1, len(eligible) // 10))
    validation = np.sort(rng.choice(eligible, n_validation, replace=False))
    train_users = np.setdiff1d(np.arange(len(data.users)), validation)

    lengths = np.array([len(data.sequences[u]) for u in train_users], dtype=np.int64)
    graph_users = np.repeat(np.arange(len(train_users)), lengths)
    graph_items = np.concatenate([data.sequences[u] for u in train_users]) + len(train_users)
    edge_index = torch.from_numpy(np.stack([np.concatenate([graph_users, graph_items]),
                                            np.concatenate([graph_items, graph_users])]))
    nodes = len(train_users) + len(data.item_ids)
    codes, cardinalities = item_features(data.schema.items, data.items)
    return Prepared(
        user_x=torch.from_numpy(encode(inputs, data.users)),
        train_users=torch.from_numpy(train_users),
        graph=propagation_matrix(edge_index, nodes),
        edges=len(graph_users),
        item_features=torch.from_numpy(codes),
        item_cardinalities=cardinalities,
        train=_sliding_examples(train_users, data.sequences, history_window(config, history_lengths)),
        validation=_holdout_examples(validation, data.sequences, rng, history_lengths),
    )


def schedule(config: TrainConfig, examples: int) -> tuple[int, int]:
    """Batch size and most epochs for `examples` training examples (see the module docstring)."""
    batch = config.batch_size or max(MIN_BATCH, min(MAX_BATCH, examples // MIN_STEPS_PER_EPOCH))
    steps = max(1, math.ceil(examples / batch))
    epochs = config.epochs or max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps)))
    return batch, epochs


def build_model(prepared: Prepared, config: TrainConfig) -> GraphRecommender:
    """A freshly initialised recommender sized for the prepared data."""
    tower = UserTower(prepared.user_x.size(1), config.hidden, config.dim)
    items = ItemEncoder(prepared.item_features, prepared.item_cardinalities, config.dim)
    return GraphRecommender(tower, items, config.dim, config.num_layers)


def bpr_loss(model: GraphRecommender, prepared: Prepared, batch: Examples, negatives: Tensor) -> Tensor:
    """BPR: each target should outscore each of its sampled negatives for the same user vector."""
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.graph)
    users = model.user_vectors(prepared.user_x[batch.users], batch.history, model.history_embeddings(items))
    positive = (users * items[batch.target]).sum(-1) + model.item_bias[batch.target]
    # One column of negatives at a time: a batch x dim product stays under glibc's mmap threshold
    # (32 MB) and reuses freed memory, where the batch x negatives x dim tensor of one gather (67 MB
    # at the default batch) is mapped afresh and page-faulted in at every step (three times slower,
    # forward and backward; einsum's batched matmul was slower still).
    negative = torch.stack([(users * items[column]).sum(-1) for column in negatives.T], dim=1) + model.item_bias[negatives]
    return -F.logsigmoid(positive.unsqueeze(1) - negative).mean()


@torch.no_grad()
def validate(model: GraphRecommender, prepared: Prepared, k: int = 10) -> dict[str, float]:
    """hit_rate@k and ndcg@k on the validation users, history items excluded from the answer."""
    model.eval()
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.graph)
    v = prepared.validation
    users = model.user_vectors(prepared.user_x[v.users], v.history, model.history_embeddings(items))
    scores = model.scores(users, items)
    rows = torch.arange(len(v.users)).unsqueeze(1).expand_as(v.history)
    known = v.history != NO_ITEM
    scores[rows[known], v.history[known]] = float("-inf")
    top = torch.topk(scores, k, dim=1).indices.numpy()
    return ranking_metrics(top, v.target.numpy())


def fit(prepared: Prepared, config: TrainConfig, progress: Callable[[str], None],
        meter: Meter = _no_meter) -> GraphRecommender:
    """Train with Adam on BPR, one line per epoch with the time left and `meter` per batch, until the
    epoch budget, `patience` epochs without a better validation hit rate or the time budget; return
    the model of the best validation epoch."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(prepared, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    n_items = prepared.item_features.size(0)
    batch_size, epochs = schedule(config, len(prepared.train.target))
    budget = f", within {config.time_budget:g} s" if config.time_budget is not None else ""
    progress(f"batches of {batch_size}, at most {epochs} epochs, stopping after {config.patience} "
             f"without progress{budget}")
    clock = EpochClock(epochs, config.time_budget)
    steps = math.ceil(len(prepared.train.target) / batch_size)
    best = (-1.0, copy.deepcopy(model.state_dict()), 0)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(prepared.train.target), generator=generator)
        total, batches = 0.0, 0
        meter(f"training epoch {epoch}/{epochs}", 0, steps, clock.seconds_left())
        for rows in order.split(batch_size):
            batch = Examples(prepared.train.users[rows], prepared.train.history[rows], prepared.train.target[rows])
            negatives = torch.randint(n_items, (len(rows), config.negatives), generator=generator)
            loss = bpr_loss(model, prepared, batch, negatives)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
            meter(f"training epoch {epoch}/{epochs}", batches, steps,
                  clock.seconds_left(time.perf_counter() - started, batches / steps))
        metrics = validate(model, prepared)
        clock.record(time.perf_counter() - started)
        left = clock.seconds_left()
        progress(
            f"epoch {epoch}/{epochs}  loss {total / batches:.4f}  "
            f"val hit_rate@10 {metrics['hit_rate@10']:.4f}  ndcg@10 {metrics['ndcg@10']:.4f}  "
            f"({clock.durations[-1]:.1f}s" + (f"; at most {left:.0f} s to go)" if left and epoch < epochs else ")")
        )
        if metrics["hit_rate@10"] > best[0]:
            best = (metrics["hit_rate@10"], copy.deepcopy(model.state_dict()), epoch)
        elif epoch - best[2] >= config.patience and epoch >= min(MIN_EPOCHS, epochs):
            progress(f"stopped: no better validation hit rate since epoch {best[2]}")
            break
        if epoch < epochs and epoch >= clock.planned():
            progress(f"stopped: the time budget ({config.time_budget:g} s) has no room for epoch {epoch + 1} of "
                     f"{epochs} (about {clock.durations[-1]:.1f} s each); best validation epoch {best[2]}")
            break
    model.load_state_dict(best[1])
    model.eval()
    return model


@torch.no_grad()
def export_arrays(model: GraphRecommender, prepared: Prepared, item_ids: list[str]) -> dict[str, np.ndarray]:
    """The scoring.npz arrays: precomputed item vectors and the tower's weights, float32."""
    model.eval()
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.graph)
    arrays = {
        "item_ids": np.array(item_ids),
        "item_embeddings": items.numpy().astype(np.float32),
        "item_bias": model.item_bias.numpy().astype(np.float32),
        "history_embeddings": model.history_embeddings(items).numpy().astype(np.float32),
    }
    for i, layer in enumerate(model.tower.layers):
        arrays[f"tower_{i}_weight"] = layer.weight.numpy().astype(np.float32)
        arrays[f"tower_{i}_bias"] = layer.bias.numpy().astype(np.float32)
    return arrays


def train(
    data: Dataset,
    out: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[str], None] = lambda message: None,
    holdout: tuple[list[dict[str, Any]], list[str]] | None = None,
    meter: Meter = _no_meter,
) -> Path:
    """Train on `data` (see model.dataset.load_dataset) and write the bundle to `out`; return the bundle
    path. With `holdout` (requests, next items), validation mimics it and the manifest records the
    bundle's figures on it, scored as `recguard evaluate` scores them. `progress` gets a line per
    step, `meter` the progress within the epochs and the item index's coding."""
    torch.set_num_threads(config.threads)
    inputs = fit_inputs(data.schema.users, data.users)
    lengths = [len(request.get("history") or []) for request in holdout[0]] if holdout else []
    prepared = prepare(data, inputs, config, lengths)
    progress(
        f"graph: {len(prepared.train_users)} users, {prepared.edges} edges; "
        f"{len(prepared.train.target)} training examples, {len(prepared.validation.target)} validation users"
    )
    model = fit(prepared, config, progress, meter)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    scoring = {
        "inputs": inputs,
        "layers": [f"tower_{i}" for i in range(len(model.tower.layers))],
        "activation": "relu",
    }
    arrays = export_arrays(model, prepared, data.item_ids)
    index = None
    if len(data.item_ids) >= ANN_MIN_ITEMS:
        scoring["index"] = index_settings(len(data.item_ids))
        progress(f"item index: k-means into {scoring['index']['nlist']} cells, then a 4-bit code for each of "
                 f"{len(data.item_ids)} items")
        started = time.perf_counter()
        index = build_index(scoring_vectors(arrays["item_embeddings"], arrays["item_bias"]), scoring["index"],
                            config.seed, added=_rated(meter, "item index: coding"))
        progress(f"item index: {scoring['index']['nlist']} cells over {len(data.item_ids)} items "
                 f"({time.perf_counter() - started:.1f} s)")
    popularity = build_popularity(data)
    evaluation = None
    if holdout:
        scorer = Scorer(scoring, arrays, ItemIndex.from_bytes(index, scoring["index"]) if index else None)
        evaluation = evaluate_parts(scorer, PopularityFallback(popularity), *holdout)
        progress(f"held-out users: model {evaluation['model']}, popularity {evaluation['popularity']}")
    return write_bundle(
        out,
        profile=build_profile(data),
        popularity=popularity,
        catalogue=data.item_ids,
        scoring=scoring,
        arrays=arrays,
        model_state=state.getvalue(),
        item_index=index,
        evaluation=evaluation,
    )
