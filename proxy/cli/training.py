"""Training-side subcommands of `recguard`: generate, train, evaluate.

Only argparse is imported here; each handler imports what it needs, so `recguard serve`
never pays for (or depends on) torch.
"""

from __future__ import annotations

import argparse


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.synthetic import generate

    generate(Path(args.out), users=args.users, items=args.items, holdout=args.holdout, seed=args.seed, progress=_say)
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.dataset import load_dataset

    # Bad data fails here, before the seconds it takes to import torch.
    data = load_dataset(args.data)
    _say(f"loaded {len(data.users)} users, {len(data.item_ids)} items, {data.interactions} interactions")
    from model.train import TrainConfig, train

    overrides = {"epochs": args.epochs, "seed": args.seed, "threads": args.threads}
    config = TrainConfig(**{name: value for name, value in overrides.items() if value is not None})
    path = train(data, args.out, config, progress=_say)
    _say(f"bundle written to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from model.evaluate import evaluate

    print(json.dumps(evaluate(args.bundle, args.data, args.corrupt or ())))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training-side subcommands to the `recguard` parser."""
    generate = sub.add_parser("generate", help="write synthetic shop logs and held-out requests")
    generate.add_argument("--out", required=True, help="directory to write the CSV files and holdout.jsonl to")
    generate.add_argument("--users", type=_positive, default=20_000, help="training users (default 20000)")
    generate.add_argument("--items", type=_positive, default=5_000, help="catalogue size (default 5000)")
    generate.add_argument("--holdout", type=int, default=None, help="held-out users (default users/10)")
    generate.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    generate.set_defaults(handler=_generate)

    train = sub.add_parser("train", help="train the recommender and write a bundle")
    train.add_argument("--data", required=True, help="directory written by `recguard generate`")
    train.add_argument("--out", required=True, help="bundle directory to write")
    train.add_argument("--epochs", type=_positive, help="training epochs (default: TrainConfig.epochs)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--threads", type=_positive, help="torch CPU threads (default 1)")
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="hit rate and NDCG of a bundle's model and its popularity fallback")
    evaluate.add_argument("--bundle", required=True, help="bundle directory")
    evaluate.add_argument("--data", required=True, help="directory with holdout.jsonl")
    evaluate.add_argument(
        "--corrupt", action="append", metavar="FIELD:KIND",
        help="send FIELD in a wrong unit before scoring: KIND lbs (x2.20462) or inches (/2.54); repeatable",
    )
    evaluate.set_defaults(handler=_evaluate)
