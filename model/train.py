"""Training: from a data directory to a verified bundle (docs/bundle.md).

Training mirrors serving on purpose. Each training example is one interaction of a
training user, with the user's signup form and the few items they interacted with just
before it as the history: exactly what a request carries. Validation users are held out of
the graph and of the loss and scored like held-out requests (history = their first 1-3
items, target = the next one).
"""

from __future__ import annotations

import copy
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.bundle import write_bundle
from model.dataset import Dataset
from model.errors import RecguardError
from model.evaluate import ranking_metrics
from model.features import encode, fit_inputs
from model.popularity import build_popularity
from model.profile import build_profile
from model.recommender import NO_ITEM, GraphRecommender, ItemEncoder, UserTower

PRICE_BANDS = 8


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults train the default data set in a few minutes on 2 cores."""

    epochs: int = 12
    seed: int = 0
    dim: int = 64
    hidden: int = 128
    num_layers: int = 2
    # Every step re-propagates the whole graph, so few large batches beat many small ones.
    batch_size: int = 32768
    lr: float = 0.02
    negatives: int = 8
    history_window: int = 3
    # At most this many, and at most a tenth of the users with two or more interactions.
    validation_users: int = 1000
    # One thread: with two, OpenMP spin-waiting against any other busy process (a test
    # server, a second training run) made epochs up to 50x slower on a 2-core machine.
    threads: int = 1


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
    edge_index: Tensor
    item_features: Tensor
    item_cardinalities: list[int]
    train: Examples
    validation: Examples


def _item_features(items: list[dict[str, Any]]) -> tuple[Tensor, list[int]]:
    columns = []
    cardinalities = []
    for field in ("category", "size"):
        values = [str(item[field]) for item in items]
        vocab = {v: i for i, v in enumerate(sorted(set(values)))}
        columns.append([vocab[v] for v in values])
        cardinalities.append(len(vocab))
    prices = np.array([float(item["price"]) for item in items])
    edges = np.quantile(prices, np.linspace(0, 1, PRICE_BANDS + 1)[1:-1])
    columns.append(np.searchsorted(edges, prices, side="right").tolist())
    cardinalities.append(PRICE_BANDS)
    return torch.tensor(columns, dtype=torch.long).T.contiguous(), cardinalities


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


def _holdout_examples(users: np.ndarray, sequences: list[np.ndarray], rng: np.random.Generator) -> Examples:
    """Like a held-out request: the first 1-3 items as history, the next one as target."""
    history = np.full((len(users), 3), NO_ITEM, dtype=np.int64)
    target = np.empty(len(users), dtype=np.int64)
    for row, u in enumerate(users):
        h = min(int(rng.integers(1, 4)), len(sequences[u]) - 1)
        history[row, :h] = sequences[u][:h]
        target[row] = sequences[u][h]
    return Examples(torch.from_numpy(users), torch.from_numpy(history), torch.from_numpy(target))


def prepare(data: Dataset, inputs: list[dict[str, Any]], config: TrainConfig) -> Prepared:
    """Encode users, split off validation users, build the user-item graph and the training examples."""
    rng = np.random.default_rng(config.seed)
    eligible = np.flatnonzero([len(s) >= 2 for s in data.sequences])
    if len(eligible) < 2:
        raise RecguardError("interactions.csv: fewer than 2 users with 2 or more interactions, too few to train and validate")
    n_validation = min(config.validation_users, max(1, len(eligible) // 10))
    validation = np.sort(rng.choice(eligible, n_validation, replace=False))
    train_users = np.setdiff1d(np.arange(len(data.users)), validation)

    lengths = np.array([len(data.sequences[u]) for u in train_users], dtype=np.int64)
    graph_users = np.repeat(np.arange(len(train_users)), lengths)
    graph_items = np.concatenate([data.sequences[u] for u in train_users]) + len(train_users)
    edge_index = torch.from_numpy(np.stack([np.concatenate([graph_users, graph_items]),
                                            np.concatenate([graph_items, graph_users])]))
    item_features, cardinalities = _item_features(data.items)
    return Prepared(
        user_x=torch.from_numpy(encode(inputs, data.users)),
        train_users=torch.from_numpy(train_users),
        edge_index=edge_index,
        item_features=item_features,
        item_cardinalities=cardinalities,
        train=_sliding_examples(train_users, data.sequences, config.history_window),
        validation=_holdout_examples(validation, data.sequences, rng),
    )


def build_model(prepared: Prepared, config: TrainConfig) -> GraphRecommender:
    """A freshly initialised recommender sized for the prepared data."""
    tower = UserTower(prepared.user_x.size(1), config.hidden, config.dim)
    items = ItemEncoder(prepared.item_features, prepared.item_cardinalities, config.dim)
    return GraphRecommender(tower, items, config.dim, config.num_layers)


def bpr_loss(model: GraphRecommender, prepared: Prepared, batch: Examples, negatives: Tensor) -> Tensor:
    """BPR: each target should outscore each of its sampled negatives for the same user vector."""
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.edge_index)
    users = model.user_vectors(prepared.user_x[batch.users], batch.history, model.history_embeddings(items))
    positive = (users * items[batch.target]).sum(-1) + model.item_bias[batch.target]
    negative = torch.einsum("bd,bkd->bk", users, items[negatives]) + model.item_bias[negatives]
    return -F.logsigmoid(positive.unsqueeze(1) - negative).mean()


@torch.no_grad()
def validate(model: GraphRecommender, prepared: Prepared, k: int = 10) -> dict[str, float]:
    """hit_rate@k and ndcg@k on the validation users, history items excluded from the answer."""
    model.eval()
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.edge_index)
    v = prepared.validation
    users = model.user_vectors(prepared.user_x[v.users], v.history, model.history_embeddings(items))
    scores = model.scores(users, items)
    rows = torch.arange(len(v.users)).unsqueeze(1).expand_as(v.history)
    known = v.history != NO_ITEM
    scores[rows[known], v.history[known]] = float("-inf")
    top = torch.topk(scores, k, dim=1).indices.numpy()
    return ranking_metrics(top, v.target.numpy())


def fit(prepared: Prepared, config: TrainConfig, progress: Callable[[str], None]) -> GraphRecommender:
    """Train with Adam on BPR, one line per epoch; return the model of the best validation epoch."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(prepared, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    n_items = prepared.item_features.size(0)
    best = (-1.0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(prepared.train.target), generator=generator)
        total, batches = 0.0, 0
        for rows in order.split(config.batch_size):
            batch = Examples(prepared.train.users[rows], prepared.train.history[rows], prepared.train.target[rows])
            negatives = torch.randint(n_items, (len(rows), config.negatives), generator=generator)
            loss = bpr_loss(model, prepared, batch, negatives)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + loss.item(), batches + 1
        metrics = validate(model, prepared)
        progress(
            f"epoch {epoch}/{config.epochs}  loss {total / batches:.4f}  "
            f"val hit_rate@10 {metrics['hit_rate@10']:.4f}  ndcg@10 {metrics['ndcg@10']:.4f}  "
            f"({time.perf_counter() - started:.1f}s)"
        )
        if metrics["hit_rate@10"] > best[0]:
            best = (metrics["hit_rate@10"], copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[1])
    model.eval()
    return model


@torch.no_grad()
def export_arrays(model: GraphRecommender, prepared: Prepared, item_ids: list[str]) -> dict[str, np.ndarray]:
    """The scoring.npz arrays: precomputed item vectors and the tower's weights, float32."""
    model.eval()
    items = model.item_embeddings(prepared.user_x[prepared.train_users], prepared.edge_index)
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
) -> Path:
    """Train on `data` (see model.dataset.load_dataset) and write the bundle to `out`; return the bundle path."""
    torch.set_num_threads(config.threads)
    inputs = fit_inputs(data.users)
    prepared = prepare(data, inputs, config)
    progress(
        f"graph: {len(prepared.train_users)} users, {prepared.edge_index.size(1) // 2} edges; "
        f"{len(prepared.train.target)} training examples, {len(prepared.validation.target)} validation users"
    )
    model = fit(prepared, config, progress)
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    scoring = {
        "inputs": inputs,
        "layers": [f"tower_{i}" for i in range(len(model.tower.layers))],
        "activation": "relu",
    }
    return write_bundle(
        out,
        profile=build_profile(data),
        popularity=build_popularity(data),
        scoring=scoring,
        arrays=export_arrays(model, prepared, data.item_ids),
        model_state=state.getvalue(),
    )
