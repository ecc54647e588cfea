"""Serving-side subcommands of `recguard`: serve, anomalies."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the serving-side subcommands to the `recguard` parser."""
