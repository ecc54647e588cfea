"""`recguard split` (a holdout from a team's own logs) and `recguard profile` (a guard-only bundle)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from model.bundle import GUARD_FILES, MANIFEST, load_bundle
from model.dataset import load_dataset
from proxy.cli.main import main


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def split_data(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "a"
    assert main(["split", "--data", str(tiny_data), "--out", str(out), "--holdout-users", "0.1", "--seed", "3"]) == 0
    return out


def test_split_holds_out_whole_users_with_their_last_item_as_target(tiny_data, split_data):
    original = load_dataset(tiny_data)
    held = [json.loads(line) for line in (split_data / "holdout.jsonl").read_text().splitlines()]
    assert len(held) == 40
    kept_users = {row["user_id"] for row in _rows(split_data / "users.csv")}
    kept_owners = {row["user_id"] for row in _rows(split_data / "interactions.csv")}
    assert len(kept_users) == 360 and kept_owners <= kept_users
    for line in held:
        request = line["request"]
        assert request["user_id"] not in kept_users
        u = original.user_ids.index(request["user_id"])
        items = [original.item_ids[i] for i in original.sequences[u]]
        assert request["history"] + [line["next_item"]] == items
        assert {k: v for k, v in request.items() if k != "history"} == original.users[u]
        assert isinstance(request["weight_kg"], float) and isinstance(request["country"], str)
    assert (split_data / "dataset.toml").read_bytes() == (tiny_data / "dataset.toml").read_bytes()
    assert (split_data / "items.csv").read_bytes() == (tiny_data / "items.csv").read_bytes()
    assert load_dataset(split_data).interactions == original.interactions - sum(
        len(line["request"]["history"]) + 1 for line in held)


def test_split_is_deterministic_per_seed(tiny_data, split_data, tmp_path):
    for name, seed in (("same", "3"), ("other", "4")):
        assert main(["split", "--data", str(tiny_data), "--out", str(tmp_path / name), "--seed", seed]) == 0
    for file in ("users.csv", "interactions.csv", "holdout.jsonl"):
        assert (tmp_path / "same" / file).read_bytes() == (split_data / file).read_bytes()
    assert (tmp_path / "other" / "holdout.jsonl").read_bytes() != (split_data / "holdout.jsonl").read_bytes()


@pytest.mark.parametrize(("argv", "message"), [
    (["--holdout-users", "1.5"], "argument --holdout-users: must be between 0 and 1, got 1.5"),
])
def test_split_refuses_a_bad_share(capsys, tiny_data, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["split", "--data", str(tiny_data), "--out", str(tmp_path / "s"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_split_refuses_to_overwrite_its_input(capsys, tiny_data):
    assert main(["split", "--data", str(tiny_data), "--out", str(tiny_data)]) == 2
    assert capsys.readouterr().err.endswith(f"\nrecguard split: --out {tiny_data} is the data directory itself; choose another\n")


PROFILE_WITHOUT_TORCH = """
import sys
from proxy.cli.main import main
code = main(["profile", "--data", sys.argv[1], "--out", sys.argv[2]])
print(code, "torch" in sys.modules, "torch_geometric" in sys.modules)
"""


@pytest.fixture(scope="module")
def guard_bundle(split_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("guard") / "bundle"
    result = subprocess.run([sys.executable, "-c", PROFILE_WITHOUT_TORCH, str(split_data), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["0", "False", "False"], result.stderr
    return out


@pytest.mark.system
def test_profile_writes_a_guard_only_bundle_without_importing_torch(guard_bundle, tiny_data):
    assert sorted(p.name for p in guard_bundle.iterdir()) == sorted([MANIFEST, *GUARD_FILES])
    bundle = load_bundle(guard_bundle)
    assert not bundle.has_model and bundle.manifest["kind"] == "guard-only"
    assert bundle.catalogue == load_dataset(tiny_data).item_ids
    assert bundle.profile["segment_field"] == "country" and bundle.profile["fields"]["weight_kg"]["role"] == "feature"


@pytest.mark.system
def test_evaluate_on_a_guard_only_bundle_scores_its_fallback(capsys, guard_bundle, split_data):
    assert main(["evaluate", "--bundle", str(guard_bundle), "--data", str(split_data)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"popularity", "holdout_users"} and figures["holdout_users"] == 40


@pytest.mark.system
def test_held_out_requests_pass_check_against_a_guard_only_bundle(guard_bundle, split_data, tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    lines = [json.dumps(json.loads(line)["request"]) for line in (split_data / "holdout.jsonl").read_text().splitlines()]
    bodies.write_text("\n".join(lines) + "\n")
    assert main(["check", "--bundle", str(guard_bundle), str(bodies)]) == 0


@pytest.mark.system
def test_serve_refuses_a_guard_only_bundle_without_an_upstream(guard_bundle):
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(guard_bundle)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"recguard serve: {guard_bundle} is a guard-only bundle (no model to serve): "
                             f"it needs --upstream URL, the endpoint of your own model\n")
