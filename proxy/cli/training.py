"""Training-side subcommands of `recguard`: generate, train, profile, evaluate, split.

Only argparse is imported here; each handler imports what it needs, so `recguard serve`
never pays for (or depends on) torch, and `recguard profile` never imports it. torch and
torch-geometric come with the `train` extra only; `recguard train` without them says so in one line.
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds like 90, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a share like 0.1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def _load(args: argparse.Namespace):
    from model.dataset import load_dataset

    data = load_dataset(args.data, args.dataset)
    dropped = f" ({data.dropped} naming unknown users or items left out)" if data.dropped else ""
    _say(f"loaded {len(data.users)} users, {len(data.item_ids)} items, {data.interactions} interactions{dropped}")
    return data


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.synthetic import generate

    generate(Path(args.out), world=args.world, users=args.users, items=args.items, holdout=args.holdout,
             seed=args.seed, progress=_say)
    return 0


TRAINING_MODULES = ("torch", "torch_geometric")
"""What only `recguard train` imports: the `train` extra (pyproject.toml), not in the serving install."""


def require_training_extra() -> None:
    """Raise a one-line RecguardError naming the install command when torch or torch-geometric is missing."""
    import importlib.util

    from model.errors import RecguardError

    missing = []
    for name in TRAINING_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise RecguardError(f"training needs {' and '.join(missing)}, not installed here (the serving install "
                            f"leaves them out): pip install 'recguard[train]'")


def _train(args: argparse.Namespace) -> int:
    import time

    require_training_extra()
    started = time.monotonic()
    # Bad data fails here, before the seconds it takes to import torch.
    data = _load(args)
    from model.evaluate import read_holdout

    holdout_file = data.root / "holdout.jsonl"
    holdout = read_holdout(holdout_file) if holdout_file.is_file() else None
    if holdout is None:
        _say(f"no holdout.jsonl beside {data.schema.path.name}: no offline figures in the manifest "
             f"(`recguard split` makes one)")
    from model.train import TrainConfig, train
    from proxy.cli.progress import Progress, duration

    overrides = {"epochs": args.epochs, "seed": args.seed, "threads": args.threads, "time_budget": args.time_budget}
    config = TrainConfig(**{name: value for name, value in overrides.items() if value is not None})
    progress = Progress()
    path = train(data, args.out, config, progress=progress, holdout=holdout, meter=progress.bar)
    progress(f"bundle written to {path} ({duration(time.monotonic() - started)})")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from model.profile import refresh_catalogue, write_guard_bundle

    if args.catalogue_only:
        path, added = refresh_catalogue(_load(args), args.out)
        _say(f"catalogue of {path} refreshed, profile kept ({added} items added); "
             "POST /admin/reload (or SIGHUP to recguard serve) serves it without a restart")
        return 0
    path = write_guard_bundle(_load(args), args.out)
    _say(f"guard-only bundle written to {path} (serve it with --upstream URL in front of your model)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from model.evaluate import evaluate, holdout_path

    print(json.dumps(evaluate(args.bundle, holdout_path(args.data, args.dataset), args.corrupt or ())))
    return 0


def _split(args: argparse.Namespace) -> int:
    from model.split import split

    split(_load(args), args.out, args.holdout_users, args.seed, progress=_say)
    return 0


def _data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--data", metavar="DIR", help="data directory with dataset.toml (and holdout.jsonl)")
    where.add_argument("--dataset", metavar="FILE", help="a dataset.toml elsewhere (files relative to it)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training-side subcommands to the `recguard` parser."""
    generate = sub.add_parser("generate", help="write synthetic logs, dataset.toml and held-out requests")
    generate.add_argument("--out", required=True, help="directory to write the CSV files, dataset.toml and holdout.jsonl to")
    generate.add_argument("--world", choices=("shop", "streaming"), default="shop",
                          help="shop (clothing, the default) or streaming (films: age, gender, occupation)")
    generate.add_argument("--users", type=_positive, default=None, help="training users (default 20000 shop, 10000 streaming)")
    generate.add_argument("--items", type=_positive, default=None, help="catalogue size (default 5000 shop, 2000 streaming)")
    generate.add_argument("--holdout", type=int, default=None, help="held-out users (default users/10)")
    generate.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    generate.set_defaults(handler=_generate)

    train = sub.add_parser("train", help="train the recommender on declared data and write a bundle")
    _data_arguments(train)
    train.add_argument("--out", required=True, help="bundle directory to write")
    train.add_argument("--epochs", type=_positive, help="at most this many epochs (default: chosen from the data)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--threads", type=_positive, help="torch CPU threads (default 1)")
    train.add_argument("--time-budget", type=_seconds, metavar="SECONDS",
                       help="stop the epochs when the next would end after SECONDS of training (`make run`: 90); "
                            "default: every epoch of the schedule, until early stopping")
    train.set_defaults(handler=_train)

    profile = sub.add_parser("profile", help="write a guard-only bundle (no model) for a model of your own")
    _data_arguments(profile)
    profile.add_argument("--out", required=True, help="bundle directory to write")
    profile.add_argument("--catalogue-only", action="store_true",
                         help="refresh the catalogue and popularity of the guard-only bundle at --out, keeping its profile")
    profile.set_defaults(handler=_profile)

    evaluate = sub.add_parser("evaluate", help="hit rate and NDCG of a bundle's model and its popularity fallback")
    evaluate.add_argument("--bundle", required=True, help="bundle directory")
    _data_arguments(evaluate)
    evaluate.add_argument(
        "--corrupt", action="append", metavar="FIELD:KIND",
        help="change FIELD in every held-out request before scoring: scale=F, rename=NEW, drop, map=OLD=NEW, "
             "or the units lbs (scale=2.20462) and inches (scale=1/2.54); repeatable",
    )
    evaluate.set_defaults(handler=_evaluate)

    split = sub.add_parser("split", help="hold users out of your logs: training files and holdout.jsonl")
    _data_arguments(split)
    split.add_argument("--out", required=True, help="directory for the training files, dataset.toml and holdout.jsonl")
    split.add_argument("--holdout-users", type=_share, default=0.1, help="share of users to hold out (default 0.1)")
    split.add_argument("--seed", type=int, default=0, help="random seed; same seed, same split")
    split.set_defaults(handler=_split)
