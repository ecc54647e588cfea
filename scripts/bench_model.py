"""Benchmark the training side: generation and training wall time at the default size,
single-request numpy inference latency at 5k and 50k items, resident memory of a loaded bundle.

    .venv/bin/python scripts/bench_model.py [--work DIR] [--bundle B --data D]

Without --bundle/--data it generates and trains the default data set in --work (a few
minutes); with them it only measures inference and memory on an existing bundle. Prints
one JSON object; docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Inference is measured on one core: a BLAS pool would make the single-request figure depend on idle cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from model.bundle import load_bundle  # noqa: E402
from model.evaluate import read_holdout  # noqa: E402
from proxy.models.scorer import Scorer  # noqa: E402

_RSS_PROBE = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from model.bundle import load_bundle
before = rss()
bundle = load_bundle(sys.argv[1])
print(before, rss())
"""


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return round(time.perf_counter() - started, 1)


def build(work: Path) -> tuple[Path, Path, dict[str, float]]:
    """Generate and train the default data set in `work`; return data, bundle and wall times."""
    data, bundle = work / "data", work / "bundle"
    recguard = [sys.executable, "-m", "proxy.cli.main"]
    times = {
        "generate_s": _timed(lambda: subprocess.run([*recguard, "generate", "--out", str(data)], check=True, capture_output=True)),
        "train_s": _timed(lambda: subprocess.run([*recguard, "train", "--data", str(data), "--out", str(bundle)], check=True, capture_output=True)),
    }
    return data, bundle, times


def latency(scorer: Scorer, requests: list[dict], rounds: int) -> dict[str, float]:
    """p50/p99 in ms of one request's top-10 with the serving scorer (encode, tower, history, scores,
    top-k), after a warm-up."""
    for request in requests[:50]:
        scorer.recommend(request, request["history"], 10)
    samples = []
    for i in range(rounds):
        request = requests[i % len(requests)]
        started = time.perf_counter()
        scorer.recommend(request, request["history"], 10)
        samples.append(time.perf_counter() - started)
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def widened(scoring: dict, arrays: dict[str, np.ndarray], n_items: int) -> Scorer:
    """A scorer with the bundle's tower and its item arrays tiled to `n_items` rows: cost depends only on shapes."""
    reps = -(-n_items // len(arrays["item_ids"]))
    wide = dict(arrays, item_ids=np.array([f"item_{i:05d}" for i in range(n_items)]))
    for key in ("item_embeddings", "history_embeddings", "item_bias"):
        tiled = np.tile(arrays[key], (reps,) + (1,) * (arrays[key].ndim - 1))[:n_items]
        wide[key] = np.ascontiguousarray(tiled)
    return Scorer(scoring, wide)


def resident_mib(bundle: Path) -> dict[str, float]:
    """RSS of a fresh process before and after load_bundle (numpy only, as serving loads it)."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(bundle)], check=True, capture_output=True, text=True)
    before, after = map(float, out.stdout.split())
    return {"rss_before_mib": round(before, 1), "rss_loaded_mib": round(after, 1), "bundle_mib": round(after - before, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where to generate and train (default: a temporary directory)")
    parser.add_argument("--bundle", type=Path, help="existing bundle: skip generation and training")
    parser.add_argument("--data", type=Path, help="data directory with holdout.jsonl (with --bundle)")
    parser.add_argument("--rounds", type=int, default=5000, help="requests timed per catalogue size")
    args = parser.parse_args(argv)

    report: dict[str, object] = {"cpus": os.cpu_count()}
    if args.bundle and args.data:
        data, bundle = args.data, args.bundle
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="recguard-bench-"))
        data, bundle, times = build(work)
        report |= times
    loaded = load_bundle(bundle)
    requests, _ = read_holdout(data)
    for n_items in (5_000, 50_000):
        scorer = widened(loaded.scoring, loaded.arrays, n_items)
        report[f"inference_{n_items // 1000}k"] = latency(scorer, requests, args.rounds)
    report |= resident_mib(bundle)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
