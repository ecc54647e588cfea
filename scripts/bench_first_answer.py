"""How long a newcomer waits for the first answer: `make run` from no data to the first 200 from /predict.

    .venv/bin/python scripts/bench_first_answer.py [--tree DIR ...] [--rounds 1] [--venv .venv]
        [--train-budget 90] [--epochs-sweep 3,4,5,6,8] [--work DIR] [--json out.json]

For each --tree (a checkout of recguard: this one by default; give two to compare, e.g. main's and a
branch's), runs that tree's `make run` with its code first on PYTHONPATH and the venv given (already
installed: make is told not to reinstall it), into empty data and bundle directories of its own, a
redis-server of our own (the harness's, on a free port) and a free port to serve on, and records
when each step ended, as the user sees it on make's output: the data generated (`recguard
generate`'s last line), the bundle written (`recguard train`'s), and the first 200 from POST
/predict with the first held-out request, polled from when the bundle exists; then stops make and
its gunicorn. The trees take turns, round by round, the order alternating, so a change in the
machine's load meets both. Also reads the bundle's manifest: the model's and popularity's held-out
hit_rate@10 and how many epochs ran.

--epochs-sweep trains the last tree's default data (from its first run) again with its `recguard
train --epochs N` for each N and reports the held-out hit rate: what a time budget costs when it
stops the epochs after N.

Prints one JSON object; docs/benchmarks.md ("The first answer") records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The harness the tests use too.
from tests.harness.servers import free_port, start_redis

MILESTONES = {
    "generated": re.compile(r"^wrote \d+ users, .* held-out users to "),
    "trained": re.compile(r"^bundle written to "),
}
EPOCH = re.compile(r"^epoch (\d+)/(\d+) ")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def revision(tree: Path) -> str:
    """The tree's commit, with `+` when it has uncommitted changes; its path when it is no git checkout
    (e.g. `git archive COMMIT | tar -x -C DIR`, a commit's files without the repository)."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--show-toplevel", "--short", "HEAD"],
                          check=False, capture_output=True, text=True)
    lines = head.stdout.split()
    if head.returncode != 0 or Path(lines[0]).resolve() != tree.resolve():
        return str(tree)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           check=False, capture_output=True, text=True)
    return lines[1] + ("+" if dirty.stdout.strip() else "")


def _first_request(data: Path) -> bytes:
    with (data / "holdout.jsonl").open(encoding="utf-8") as handle:
        return json.dumps(json.loads(handle.readline())["request"]).encode()


def _answers(url: str, body: bytes) -> bool:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def make_run(tree: Path, venv: Path, work: Path, budget: float | None, timeout: float) -> dict[str, object]:
    """One `make run` of `tree` into `work`: seconds from the command to each milestone and to the first 200."""
    data, bundle = work / "data", work / "bundle"
    redis = start_redis(work / "redis")
    port = free_port()
    command = ["make", "--no-print-directory", "-C", str(tree), "-o", f"{venv}/.installed", "run",
               f"VENV={venv}", f"DATA={data}", f"BUNDLE={bundle}", f"BIND=127.0.0.1:{port}",
               f"REDIS_URL={redis.url}", "WORKERS=2"]
    if budget is not None:
        command.append(f"TRAIN_BUDGET={budget:g}")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    figures: dict[str, object] = {"load_average_start": load_average()}
    epochs: list[int] = []
    log: list[str] = []
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)

    def read() -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            log.append(line)
            for name, pattern in MILESTONES.items():
                if pattern.match(line) and f"{name}_s" not in figures:
                    figures[f"{name}_s"] = round(time.monotonic() - started, 1)
            if match := EPOCH.match(line):
                epochs.append(int(match.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/predict"
        body = None
        while time.monotonic() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"make run ended with {process.returncode}:\n" + "\n".join(log[-20:]))
            if body is None and (bundle / "manifest.json").is_file():
                body = _first_request(data)
            if body is not None and _answers(url, body):
                figures["first_200_s"] = round(time.monotonic() - started, 1)
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"no 200 from {url} within {timeout} s:\n" + "\n".join(log[-20:]))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(timeout=5)
        redis.stop()
    figures["serve_s"] = round(figures["first_200_s"] - figures["trained_s"], 1)
    figures["train_s"] = round(figures["trained_s"] - figures["generated_s"], 1)
    evaluation = json.loads((bundle / "manifest.json").read_text())["evaluation"]
    model, popularity = evaluation["model"]["hit_rate@10"], evaluation["popularity"]["hit_rate@10"]
    figures |= {"epochs_ran": max(epochs, default=0), "model_hit_rate@10": model,
                "popularity_hit_rate@10": popularity, "model_over_popularity": round(model / popularity, 2),
                "load_average_end": load_average()}
    return figures


def epochs_sweep(tree: Path, venv: Path, data: Path, work: Path, counts: list[int]) -> list[dict[str, object]]:
    """The held-out hit rate of the default bundle trained for each of `counts` epochs at most."""
    rows = []
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for count in counts:
        out = work / f"epochs-{count}"
        started = time.monotonic()
        subprocess.run([str(venv / "bin" / "recguard"), "train", "--data", str(data), "--out", str(out),
                        "--epochs", str(count)], check=True, capture_output=True, env=env)
        evaluation = json.loads((out / "manifest.json").read_text())["evaluation"]
        model, popularity = evaluation["model"]["hit_rate@10"], evaluation["popularity"]["hit_rate@10"]
        rows.append({"epochs": count, "train_s": round(time.monotonic() - started, 1), "model_hit_rate@10": model,
                     "model_over_popularity": round(model / popularity, 2), "load_average": load_average()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append",
                        help="a recguard checkout to time (repeatable; default: this one)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="an installed venv (make is told not to reinstall it)")
    parser.add_argument("--rounds", type=int, default=1, help="make runs per tree, taking turns")
    parser.add_argument("--train-budget", type=float, help="TRAIN_BUDGET for make (default: the Makefile's)")
    parser.add_argument("--epochs-sweep", default="", help="comma-separated epoch counts to train the last tree's data for")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the first 200 of one run")
    parser.add_argument("--work", type=Path, help="where the runs write (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    work = args.work or Path(tempfile.mkdtemp(prefix="recguard-first-"))
    report: dict[str, object] = {"cpus": os.cpu_count(), "venv": str(args.venv),
                                 "trees": {str(tree): revision(tree) for tree in trees}, "runs": []}
    for round_ in range(args.rounds):
        order = trees if round_ % 2 == 0 else trees[::-1]
        for tree in order:
            run = {"tree": revision(tree), "round": round_ + 1,
                   **make_run(tree, args.venv, work / f"{trees.index(tree)}-{round_}", args.train_budget, args.timeout)}
            print(json.dumps(run), file=sys.stderr, flush=True)
            report["runs"].append(run)
    if len(trees) == 2:
        first, second = (revision(tree) for tree in trees)
        mean = {tree: sum(r["first_200_s"] for r in report["runs"] if r["tree"] == tree) / args.rounds
                for tree in (first, second)}
        report["first_200_ratio"] = {f"{second}/{first}": round(mean[second] / mean[first], 3)}
    if args.epochs_sweep:
        last = len(trees) - 1
        report["epochs_sweep"] = epochs_sweep(trees[last], args.venv, work / f"{last}-0" / "data", work,
                                              [int(n) for n in args.epochs_sweep.split(",")])
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
