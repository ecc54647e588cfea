"""The training-side CLI: a user's mistake is one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from proxy.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def broken_data(tiny_data, tmp_path):
    """A writable copy of tiny_data to damage."""
    return shutil.copytree(tiny_data, tmp_path / "data")


def _rewrite(path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_generate_shows_progress_and_writes_every_file(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--out", str(tmp_path / "d"), "--users", "50", "--items", "40", "--seed", "2")
    assert code == 0
    assert "sampled interactions for 55/55 users" in err
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "dataset.toml", "holdout.jsonl", "interactions.csv", "items.csv", "users.csv"]


def test_evaluate_prints_the_figures_the_manifest_recorded(capsys, tiny_bundle, tiny_data):
    code, out, _ = run(capsys, "evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_data))
    figures = json.loads(out)
    assert code == 0 and set(figures) == {"model", "popularity", "holdout_users"}
    assert set(figures["model"]) == {"hit_rate@10", "ndcg@10"} and figures["holdout_users"] == 100
    recorded = json.loads((tiny_bundle / "manifest.json").read_text())["evaluation"]
    assert recorded == figures


def test_dataset_points_to_a_declaration_elsewhere(capsys, tiny_bundle, tiny_data, tmp_path):
    elsewhere = tmp_path / "declared.toml"
    text = (tiny_data / "dataset.toml").read_text()
    for name in ("users.csv", "items.csv", "interactions.csv"):
        text = text.replace(f'"{name}"', f'"{tiny_data / name}"')
    elsewhere.write_text(text)
    (tmp_path / "holdout.jsonl").write_bytes((tiny_data / "holdout.jsonl").read_bytes())
    code, _, err = run(capsys, "profile", "--dataset", str(elsewhere), "--out", str(tmp_path / "b"))
    assert code == 0 and "guard-only bundle written" in err
    code, out, _ = run(capsys, "evaluate", "--bundle", str(tiny_bundle), "--dataset", str(elsewhere))
    assert code == 0 and json.loads(out)["holdout_users"] == 100


def test_missing_data_directory(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert code == 2
    assert err == f"recguard train: data directory {tmp_path / 'nope'} does not exist (run `recguard generate --out {tmp_path / 'nope'}`)\n"


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("users.csv", "weight_kg", "weight_lbs", "users.csv: missing column 'weight_kg' (found: user_id, email"),
        ("users.csv", ",DE,", ",DE,heavy", "users.csv: column 'weight_kg' is declared numeric, line"),
        ("interactions.csv", "item_000", "item_900", "interactions.csv: column 'item_id': 3839 of 7227 rows name an item not in items.csv "
                                                 "(first on line 2: 'item_90033'); at most 1% may"),
        ("items.csv", "item_id,", "id,", "items.csv: missing column 'item_id'"),
    ],
)
def test_bad_training_data_is_named(capsys, broken_data, tmp_path, file, old, new, message):
    _rewrite(broken_data / file, old, new)
    code, _, err = run(capsys, "train", "--data", str(broken_data), "--out", str(tmp_path / "b"))
    assert code == 2 and err.startswith(f"recguard train: {message}") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_missing_training_file(capsys, broken_data, tmp_path):
    (broken_data / "items.csv").unlink()
    code, _, err = run(capsys, "train", "--data", str(broken_data), "--out", str(tmp_path / "b"))
    assert (code, err) == (2, f"recguard train: items.csv: not found in {broken_data}\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--corrupt", "weight_kg:stone"], "--corrupt 'weight_kg:stone': expected FIELD:KIND with KIND one of "
                                           "scale=F, rename=NEW, drop, map=OLD=NEW, lbs, inches"),
        (["--corrupt", "weight_kg:scale=heavy"], "--corrupt 'weight_kg:scale=heavy': scale needs a number or a "
                                                 "fraction A/B, got 'heavy'"),
        (["--corrupt", "weight_kg:scale=1/0"], "--corrupt 'weight_kg:scale=1/0': scale needs a number or a "
                                               "fraction A/B, got '1/0'"),
        (["--corrupt", "shoe_size:lbs"], "--corrupt shoe_size:lbs: the held-out requests have no numeric field 'shoe_size'"),
        (["--corrupt", "shoe_size:drop"], "--corrupt shoe_size:drop: the held-out requests have no field 'shoe_size'"),
    ],
)
def test_bad_corruption(capsys, tiny_bundle, tiny_data, argv, message):
    code, _, err = run(capsys, "evaluate", "--bundle", str(tiny_bundle), "--data", str(tiny_data), *argv)
    assert (code, err) == (2, f"recguard evaluate: {message}\n")


def test_evaluate_without_holdout_or_bundle(capsys, tiny_bundle, broken_data, tmp_path):
    (broken_data / "holdout.jsonl").unlink()
    code, _, err = run(capsys, "evaluate", "--bundle", str(tiny_bundle), "--data", str(broken_data))
    assert (code, err) == (2, f"recguard evaluate: holdout.jsonl: not found in {broken_data}\n")
    code, _, err = run(capsys, "evaluate", "--bundle", str(tmp_path), "--data", str(broken_data))
    assert (code, err) == (2, f"recguard evaluate: manifest.json: missing; {tmp_path} is not a recguard bundle\n")


@pytest.mark.system
def test_the_installed_command_reports_bad_data_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli.main", "train", "--data", str(tmp_path), "--out", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"recguard train: dataset.toml: not found in {tmp_path} (declare the data: docs/own-data.md)\n"


def test_a_malformed_holdout_line_is_named(capsys, tiny_bundle, broken_data):
    with (broken_data / "holdout.jsonl").open("a") as handle:
        handle.write('{"request": {"history": "item_00001"}, "next_item": "item_00002"}\n')
    code, _, err = run(capsys, "evaluate", "--bundle", str(tiny_bundle), "--data", str(broken_data))
    assert code == 2 and err.startswith("recguard evaluate: holdout.jsonl: line 101 is not {")


def test_train_without_a_holdout_says_so_and_records_no_figures(capsys, broken_data, tmp_path):
    (broken_data / "holdout.jsonl").unlink()
    code, _, err = run(capsys, "train", "--data", str(broken_data), "--out", str(tmp_path / "b"), "--epochs", "1")
    assert code == 0 and "no holdout.jsonl beside dataset.toml: no offline figures in the manifest" in err
    assert "epoch 1/1  loss" in err
    assert "evaluation" not in json.loads((tmp_path / "b" / "manifest.json").read_text())


def test_a_time_budget_ends_training_early_says_so_and_still_writes_a_scored_bundle(capsys, tiny_data, tmp_path):
    code, _, err = run(capsys, "train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--time-budget", "0.001")
    assert code == 0
    assert "epoch 1/23  loss" in err and "epoch 2/" not in err
    assert "stopped: the time budget (0.001 s) has no room for epoch 2 of 23" in err
    assert "bundle written to" in err and "\r" not in err       # not a terminal: lines only, no bar
    assert set(json.loads((tmp_path / "b" / "manifest.json").read_text())["evaluation"]) == {
        "model", "popularity", "holdout_users"}


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_a_time_budget_must_be_a_positive_number_of_seconds(capsys, tiny_data, tmp_path, value):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--time-budget", value])
    assert exit_.value.code == 2 and "argument --time-budget: must be a" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
