"""The bundle a real training run writes: complete, loadable, and refused once altered."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from model.bundle import REQUIRED_FILES, BundleError, load_bundle
from tests.harness.bundles import flipped_copy


def test_trained_bundle_loads_with_every_contract_array(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    layers = bundle.scoring["layers"]
    expected = {"item_ids", "item_embeddings", "item_bias", "history_embeddings"}
    expected |= {f"{name}_{part}" for name in layers for part in ("weight", "bias")}
    assert set(bundle.arrays) == expected
    n_items = bundle.profile["catalogue"]["count"]
    assert bundle.arrays["item_embeddings"].shape[0] == n_items == bundle.arrays["history_embeddings"].shape[0]
    assert bundle.arrays["item_ids"].dtype.kind == "U"
    assert all(bundle.arrays[key].dtype.name == "float32" for key in expected - {"item_ids"})
    assert set(bundle.manifest["files"]) == set(REQUIRED_FILES) and bundle.manifest["kind"] == "full"
    assert bundle.catalogue == bundle.arrays["item_ids"].tolist()


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_a_flipped_byte_is_refused_naming_the_file(tiny_bundle, tmp_path, name):
    with pytest.raises(BundleError, match=f"^{name}: checksum does not match"):
        load_bundle(flipped_copy(tiny_bundle, tmp_path, name))


def test_a_missing_file_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (copy / "scoring.npz").unlink()
    with pytest.raises(BundleError, match="^scoring.npz: missing"):
        load_bundle(copy)


@pytest.mark.system
def test_cli_refuses_an_altered_bundle_in_one_line(tiny_bundle, tiny_data, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    with (copy / "profile.json").open("a") as handle:
        handle.write(" ")
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", "evaluate", "--bundle", str(copy), "--data", str(tiny_data)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "recguard evaluate: profile.json: checksum does not match the manifest (file altered or corrupt)"


def test_a_written_bundle_is_readable_by_other_users(tiny_bundle):
    # The container's non-root user reads a bundle mounted from the host as it came from training.
    assert tiny_bundle.stat().st_mode & 0o755 == 0o755
    for file in tiny_bundle.iterdir():
        assert file.stat().st_mode & 0o044 == 0o044, file.name


@pytest.mark.system
def test_a_bundle_written_under_a_private_umask_is_readable_by_other_users(tiny_data, tmp_path):
    # a CI job or a hardened shell with umask 077 must not write a bundle the container cannot read
    import os

    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "profile", "--data", str(tiny_data),
                             "--out", str(tmp_path / "guard")],
                            capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0o077))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "guard").stat().st_mode & 0o777 == 0o755
    for file in (tmp_path / "guard").iterdir():
        assert file.stat().st_mode & 0o777 == 0o644, file.name
