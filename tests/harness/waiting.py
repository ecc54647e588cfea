"""Polling for what happens in the background (a flusher, a worker, a server), instead of fixed sleeps."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Poll `condition()` until it is truthy and return its value; fail the test, naming `what`,
    after `timeout` seconds. Exceptions of the `ignoring` types count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def holds_within(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll `condition()` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
