"""Altered copies of a bundle, for the tests that it is refused."""

from __future__ import annotations

import shutil
from pathlib import Path


def flipped_copy(bundle: Path, into: Path, name: str) -> Path:
    """A copy of `bundle` in `into` with one bit of its file `name` flipped, halfway through."""
    copy = shutil.copytree(bundle, into / "bundle")
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    return copy
