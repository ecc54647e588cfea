"""The model bundle: one directory with everything serving needs, and a manifest that vouches for it.

Layout (see docs/bundle.md for the contract of each file)::

    BUNDLE/
      manifest.json   versions, kind, created_at, model_version, sha256 of every other file,
                      the offline evaluation when there was a holdout
      profile.json    the training profile the guard checks requests against
      popularity.json global and per-segment top-N, for the fallback
      catalogue.json  the item ids
      scoring.json    how a request becomes the user-tower input (feature order, scaling, vocabularies)  } full
      scoring.npz     exported numpy arrays: item ids and embeddings, user-tower weights                } bundles
      model.pt        the torch state_dict, for inspection and retraining; serving never reads it        } only
      items.faiss     the approximate item index, for a catalogue of model/item_index.ANN_MIN_ITEMS or more  } (optional)

A *guard-only* bundle (`recguard profile`) has no model files: it guards a team's own model
served behind `--upstream`. Bundles of format 1 (no catalogue.json, always full) still load.

This module is imported by serving, so it imports neither torch nor torch_geometric.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from model.errors import RecguardError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
GUARD_FILES = ("profile.json", "popularity.json", "catalogue.json")
MODEL_FILES = ("scoring.json", "scoring.npz", "model.pt")
REQUIRED_FILES = GUARD_FILES + MODEL_FILES
INDEX_FILE = "items.faiss"
FULL = "full"
GUARD_ONLY = "guard-only"
_LIBRARIES = ("recguard", "torch", "torch_geometric", "numpy")


class BundleError(RecguardError):
    """A bundle is missing, incomplete or altered; the message names the file and the reason."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle loaded into memory."""

    path: Path
    manifest: dict[str, Any]
    profile: dict[str, Any]
    popularity: dict[str, Any]
    catalogue: list[str]
    scoring: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] | None = None
    item_index: bytes | None = None
    """The serialised approximate item index (model/item_index.py), when the catalogue is large."""

    @property
    def model_version(self) -> str:
        return self.manifest["model_version"]

    @property
    def has_model(self) -> bool:
        """False for a guard-only bundle: nothing here can score a request."""
        return self.scoring is not None

    def without_scoring_data(self) -> "Bundle":
        """This bundle without its arrays and item index, for keeping once a scorer holds what it
        needs of them: at a million items they are most of a worker's memory."""
        if not self.arrays and self.item_index is None:
            return self
        return dataclasses.replace(self, arrays={}, item_index=None)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_bundle(
    out: str | os.PathLike,
    *,
    profile: Mapping[str, Any],
    popularity: Mapping[str, Any],
    catalogue: list[str],
    scoring: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    model_state: bytes | None = None,
    item_index: bytes | None = None,
    evaluation: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> Path:
    """Write a bundle to `out` atomically (a half-written bundle is never visible) and return its path:
    full with `scoring`, `arrays` and `model_state` (and `item_index` for a large catalogue, with its
    settings in `scoring["index"]`), guard-only without any of them."""
    model_parts = (scoring, arrays, model_state)
    if any(part is None for part in model_parts) and any(part is not None for part in model_parts):
        raise ValueError("a full bundle needs scoring, arrays and model_state; a guard-only bundle none of them")
    if (item_index is not None) != (scoring is not None and "index" in scoring):
        raise ValueError('an item index goes with its settings in scoring["index"], and only with them')
    files = {
        "profile.json": _json_bytes(profile),
        "popularity.json": _json_bytes(popularity),
        "catalogue.json": _json_bytes({"item_ids": list(catalogue)}),
    }
    if scoring is not None:
        files |= {"scoring.json": _json_bytes(scoring), "scoring.npz": _npz_bytes(arrays), "model.pt": model_state}
    if item_index is not None:
        files[INDEX_FILE] = item_index
    checksums = {name: _sha256(data) for name, data in files.items()}
    created = (created_at or datetime.now(timezone.utc)).replace(microsecond=0)
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    content_hash = _sha256("".join(checksums[n] for n in sorted(checksums)).encode())
    manifest = {
        "format": FORMAT_VERSION,
        "kind": FULL if scoring is not None else GUARD_ONLY,
        "created_at": stamp,
        "model_version": f"{stamp}-{content_hash[:4]}",
        "libraries": _library_versions(),
        "files": checksums,
    }
    if evaluation is not None:
        manifest["evaluation"] = dict(evaluation)
    files[MANIFEST] = _json_bytes(manifest)

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # mkdtemp makes the directory private (0700) and a private umask the files; a bundle is read
    # by other users too (the container's non-root user, a mounted volume), so both get
    # ordinary permissions whatever the umask of the training job.
    for name, data in files.items():
        (staging / name).write_bytes(data)
        os.chmod(staging / name, 0o644)
    os.chmod(staging, 0o755)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def _read_verified(path: Path, name: str, expected: str) -> bytes:
    file = path / name
    if not file.is_file():
        raise BundleError(f"{name}: missing from bundle {path}")
    data = file.read_bytes()
    if _sha256(data) != expected:
        raise BundleError(f"{name}: checksum does not match the manifest (file altered or corrupt)")
    return data


def _parse_json(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BundleError(f"{name}: not valid JSON ({exc})") from None


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load and verify a bundle; raise BundleError naming the first missing or altered file."""
    root = Path(path)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"{MANIFEST}: missing; {root} is not a recguard bundle")
    manifest = _parse_json(MANIFEST, manifest_file.read_bytes())
    checksums = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise BundleError(f"{MANIFEST}: unsupported or malformed manifest (expected format {FORMAT_VERSION})")
    kind = manifest.get("kind", FULL)
    if kind not in (FULL, GUARD_ONLY):
        raise BundleError(f"{MANIFEST}: unknown bundle kind {kind!r} (expected {FULL} or {GUARD_ONLY})")
    required = (GUARD_FILES if manifest["format"] > 1 else GUARD_FILES[:2]) + (MODEL_FILES if kind == FULL else ())
    if kind == FULL and INDEX_FILE in checksums:
        required += (INDEX_FILE,)
    for name in required:
        if name not in checksums:
            raise BundleError(f"{name}: not listed in the manifest")

    blobs = {name: _read_verified(root, name, checksums[name]) for name in required}
    arrays = scoring = None
    if kind == FULL:
        try:
            with np.load(io.BytesIO(blobs["scoring.npz"]), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as exc:
            raise BundleError(f"scoring.npz: unreadable ({exc})") from None
        scoring = _parse_json("scoring.json", blobs["scoring.json"])
        if ("index" in scoring) != (INDEX_FILE in blobs):
            raise BundleError(f'scoring.json: its "index" settings and {INDEX_FILE} go together, one is missing')
    if "catalogue.json" in blobs:
        listed = _parse_json("catalogue.json", blobs["catalogue.json"])
        catalogue = listed.get("item_ids") if isinstance(listed, dict) else None
        if not isinstance(catalogue, list) or not all(isinstance(item, str) for item in catalogue):
            raise BundleError('catalogue.json: expected {"item_ids": [item ids]}')
    else:
        catalogue = [str(item) for item in arrays["item_ids"]]
    return Bundle(
        path=root,
        manifest=manifest,
        profile=_parse_json("profile.json", blobs["profile.json"]),
        popularity=_parse_json("popularity.json", blobs["popularity.json"]),
        catalogue=catalogue,
        scoring=scoring,
        arrays=arrays,
        item_index=blobs.get(INDEX_FILE),
    )
