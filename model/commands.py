"""Training-side subcommands of `recguard`: generate, train, evaluate (filled in by the training-side work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training-side subcommands to the `recguard` parser."""
