"""Benchmark the model side: generation and training wall time at the default size, the serving
scorer's latency beside a bare matrix-vector product and top-k over a size sweep of catalogues,
exact and approximate (recall@10 against exact), and the size and load time of a bundle with an index.

    .venv/bin/python scripts/bench_model.py [--work DIR] [--bundle B --data D]
        [--sizes 5000,50000,500000,1000000] [--rounds 3000] [--large-rounds 600] [--plain-ivf-from N]

Without --bundle/--data it generates and trains the default data set in --work (a few minutes);
with them it only measures scoring and memory on an existing bundle. Catalogues larger than the
bundle's are the bundle's own items followed by items drawn from a normal distribution with the
mean and covariance of the trained item vectors (embedding, bias and history embedding together),
so held-out histories still name real items. At each size three ways are timed on the same
requests: `bare` (`E @ u + b`, `argpartition` top-10: the hardware's own cost, u the request's user
vector) and `exact` (the serving Scorer) interleaved request by request, the order alternating; then
`approximate` (the Scorer with an item index, model/item_index.py, built at that size) in a pass of
its own, as a server with an index would run it; with --plain-ivf-from N, from N items on also
`plain_ivf`, the Scorer with the inverted file of exact vectors that bundles had before the
quantised cells (kind ivf-flat-l2-reduced, same cells and nprobe), its passes alternating with
the approximate ones (two each, half the rounds in each). Prints one JSON object;
docs/benchmarks.md records the figures.
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

from model.bundle import Bundle, load_bundle, write_bundle  # noqa: E402
from model.evaluate import read_holdout  # noqa: E402
from model.item_index import (  # noqa: E402
    IVF_FLAT_KIND,
    ItemIndex,
    build_index,
    index_settings,
    recall_at,
    scoring_vectors,
)
from model.scorer import Scorer  # noqa: E402

K = 10
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
_LOAD_PROBE = """
import sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
started = time.perf_counter()
from model.bundle import load_bundle
from model.scorer import Scorer
scorer = Scorer.from_bundle(load_bundle(sys.argv[1]))
print(time.perf_counter() - started, rss())
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


def enlarged(arrays: dict[str, np.ndarray], n_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The bundle's arrays with the catalogue grown to `n_items`: its own items first, then items drawn
    from the normal distribution of its [embedding, bias, history embedding] rows."""
    have = len(arrays["item_ids"])
    if n_items <= have:
        return {**arrays, **{key: arrays[key][:n_items] for key in ("item_ids", "item_embeddings", "item_bias", "history_embeddings")}}
    dim = arrays["item_embeddings"].shape[1]
    rows = np.hstack([arrays["item_embeddings"], arrays["item_bias"][:, None], arrays["history_embeddings"]]).astype(np.float64)
    drawn = np.random.default_rng(seed).multivariate_normal(rows.mean(axis=0), np.cov(rows, rowvar=False),
                                                            size=n_items - have, method="cholesky").astype(np.float32)
    return {
        **arrays,
        "item_ids": np.array([*arrays["item_ids"].tolist(), *(f"synthetic_{i:07d}" for i in range(n_items - have))]),
        "item_embeddings": np.ascontiguousarray(np.vstack([arrays["item_embeddings"], drawn[:, :dim]])),
        "item_bias": np.ascontiguousarray(np.concatenate([arrays["item_bias"], drawn[:, dim]])),
        "history_embeddings": np.ascontiguousarray(np.vstack([arrays["history_embeddings"], drawn[:, dim + 1:]])),
    }


def _percentiles(samples: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4)}


def _indexed(scoring: dict, arrays: dict[str, np.ndarray], settings: dict) -> tuple[Scorer, dict[str, float]]:
    started = time.perf_counter()
    index_bytes = build_index(scoring_vectors(arrays["item_embeddings"], arrays["item_bias"]), settings)
    build_s = time.perf_counter() - started
    return (Scorer(scoring, arrays, ItemIndex.from_bytes(index_bytes, settings)),
            {**settings, "build_s": round(build_s, 1), "mib": round(len(index_bytes) / 2**20, 1)})


def sweep_size(scoring: dict, arrays: dict[str, np.ndarray], requests: list[dict], rounds: int,
               plain_ivf: bool = False) -> dict[str, object]:
    """Bare, exact and approximate scoring at one catalogue size, interleaved; recall@10 of approximate
    (and of the plain inverted file, with `plain_ivf`)."""
    n_items = len(arrays["item_ids"])
    exact = Scorer(scoring, arrays)
    settings = index_settings(n_items)
    approximate, index_figures = _indexed(scoring, arrays, settings)
    indexes = {"approximate": approximate}
    if plain_ivf:
        plain_settings = {key: settings[key] for key in ("file", "nlist", "nprobe")} | {"kind": IVF_FLAT_KIND}
        indexes["plain_ivf"], plain_figures = _indexed(scoring, arrays, plain_settings)
    embeddings, bias = arrays["item_embeddings"], arrays["item_bias"]
    users = [exact.user_vector(r, exact.history_indices(r["history"]))[:-1].copy() for r in requests]

    def bare(i: int) -> None:
        scores = embeddings @ users[i] + bias
        np.argpartition(-scores, K - 1)[:K]

    ways = {"bare": bare, "exact": lambda i: exact.recommend(requests[i], requests[i]["history"], K)}
    ways |= {name: (lambda i, scorer=scorer: scorer.recommend(requests[i], requests[i]["history"], K))
             for name, scorer in indexes.items()}
    samples: dict[str, list[float]] = {name: [] for name in ways}
    answers: dict[str, list[list[str]]] = {name: [] for name in ways if name != "bare"}

    def run(names: list[str], rounds: int, first: int = 0) -> None:
        for i in range(min(50, len(requests))):
            for name in names:
                ways[name](i)
        for r in range(first, first + rounds):
            i = r % len(requests)
            for name in names[r % len(names):] + names[:r % len(names)]:
                started = time.perf_counter()
                answer = ways[name](i)
                samples[name].append(time.perf_counter() - started)
                if answer is not None and r < len(requests):
                    answers[name].append(answer.items)

    # Bare and exact interleaved: the same work, the same caches. An indexed scorer in passes
    # of its own, as a server with an index runs: between two of its requests no full scan of the
    # catalogue has evicted the index's centroids and the hot cells from the cache. Two indexes
    # alternate passes, so that a change of load on the machine meets both.
    run(["bare", "exact"], rounds)
    if len(indexes) == 1:
        run(["approximate"], rounds)
    else:
        half = rounds // 2
        for first, count in ((0, half), (half, rounds - half)):
            for name in indexes:
                run([name], count, first)
    figures = {name: _percentiles(values) for name, values in samples.items()}
    bare_p50 = figures["bare"]["p50_ms"]
    report = {
        "items": n_items,
        **figures,
        "exact_over_bare_p50": round(figures["exact"]["p50_ms"] / bare_p50, 3),
        "exact_over_bare_mean": round(float(np.mean(samples["exact"]) / np.mean(samples["bare"])), 3),
        "recall@10": round(recall_at(K, answers["approximate"], answers["exact"]), 4),
        "recall_users": len(answers["exact"]),
        "index": index_figures,
    }
    if plain_ivf:
        report |= {"plain_ivf_recall@10": round(recall_at(K, answers["plain_ivf"], answers["exact"]), 4),
                   "approximate_over_plain_ivf_p50": round(figures["approximate"]["p50_ms"] / figures["plain_ivf"]["p50_ms"], 3),
                   "approximate_over_plain_ivf_mean": round(float(np.mean(samples["approximate"]) / np.mean(samples["plain_ivf"])), 3),
                   "plain_ivf_index": plain_figures}
    return report


def bundle_with_index(loaded: Bundle, arrays: dict[str, np.ndarray], out: Path) -> dict[str, float]:
    """Write a full bundle of the enlarged catalogue with its index; its size on disk, and the time a
    fresh process takes to import, load and verify it and build the scorer, and its RSS then."""
    scoring = {**loaded.scoring, "index": index_settings(len(arrays["item_ids"]))}
    index = build_index(scoring_vectors(arrays["item_embeddings"], arrays["item_bias"]), scoring["index"])
    catalogue = [str(item) for item in arrays["item_ids"]]
    path = write_bundle(out, profile=loaded.profile, popularity=loaded.popularity, catalogue=catalogue,
                        scoring=scoring, arrays=arrays, model_state=b"", item_index=index)
    size = sum(file.stat().st_size for file in path.iterdir())
    probe = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(path)], check=True, capture_output=True, text=True)
    seconds, rss = map(float, probe.stdout.split())
    return {"bundle_mib": round(size / 2**20, 1), "index_mib": round(len(index) / 2**20, 1),
            "load_and_scorer_s": round(seconds, 2), "rss_with_scorer_mib": round(rss, 1)}


def resident_mib(bundle: Path) -> dict[str, float]:
    """RSS of a fresh process before and after load_bundle (numpy only, as serving loads it)."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(bundle)], check=True, capture_output=True, text=True)
    before, after = map(float, out.stdout.split())
    return {"rss_before_mib": round(before, 1), "rss_loaded_mib": round(after, 1), "bundle_mib": round(after - before, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="where to generate and train, and to write the large bundle "
                                                  "(default: a temporary directory)")
    parser.add_argument("--bundle", type=Path, help="existing bundle: skip generation and training")
    parser.add_argument("--data", type=Path, help="data directory with holdout.jsonl (with --bundle)")
    parser.add_argument("--sizes", default="5000,50000,500000,1000000", help="catalogue sizes of the sweep")
    parser.add_argument("--rounds", type=int, default=3000, help="requests timed per size (each way)")
    parser.add_argument("--large-rounds", type=int, default=600, help="requests timed per size from 500,000 items on")
    parser.add_argument("--plain-ivf-from", type=int, default=0,
                        help="from this many items on, also time the plain inverted file of earlier bundles (0: never)")
    parser.add_argument("--bundle-size", type=int, default=1_000_000,
                        help="write and load a bundle with an index of this many items (0: skip)")
    args = parser.parse_args(argv)

    report: dict[str, object] = {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    work = args.work or Path(tempfile.mkdtemp(prefix="recguard-bench-"))
    if args.bundle and args.data:
        data, bundle = args.data, args.bundle
    else:
        data, bundle, times = build(work)
        report |= times
    loaded = load_bundle(bundle)
    requests, _ = read_holdout(data)
    sweep = []
    for n_items in (int(size) for size in args.sizes.split(",")):
        rounds = args.rounds if n_items < 500_000 else args.large_rounds
        figures = sweep_size(loaded.scoring, enlarged(loaded.arrays, n_items), requests, rounds,
                             plain_ivf=bool(args.plain_ivf_from) and n_items >= args.plain_ivf_from)
        figures["load_average"] = os.getloadavg()[0]
        print(json.dumps(figures), file=sys.stderr, flush=True)
        sweep.append(figures)
    report["sweep"] = sweep
    if args.bundle_size:
        report["bundle_with_index"] = {"items": args.bundle_size,
                                       **bundle_with_index(loaded, enlarged(loaded.arrays, args.bundle_size),
                                                           work / "bundle-with-index")}
    report |= resident_mib(bundle)
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
