"""Where a guarded worker's time goes under load: py-spy samples a real `recguard serve` worker
while wrk sends it held-out traffic, and the samples are summed per stage of the request.

    .venv/bin/python scripts/profile_proxy.py [--bundle bundles/default --data data/default]
        [--mix clean|anomalous] [--connections 16] [--seconds 15] [--out DIR]

Needs wrk and py-spy (`pip install py-spy`; sampling another process needs root or ptrace
rights). Writes DIR/<worker pid>.txt (py-spy's collapsed stacks, for a flame graph tool) and
prints, for the busiest worker, each stage's share of the samples taken while it handled a
request (a stack counts for the first stage it passes through, innermost first) and the
functions with the most samples of their own.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

sys.path.insert(0, str(ROOT))
from bench_proxy import WRK_SCRIPT, Server, write_mixes  # noqa: E402

from tests.harness.servers import free_port, start_redis  # noqa: E402  (the harness the tests use too)

# (stage, a substring of a py-spy frame "function (file:line)"): a stack counts for the first that matches
STAGES = [
    ("model: Scorer.recommend", "recommend (model/scorer.py"),
    ("fallback", "(model/fallback.py"),
    ("guard: Guard.check", "check (proxy/guard/checks.py"),
    ("drift: DriftWatch.observe", "observe (proxy/drift/watch.py"),
    ("counters: record", "(proxy/store/counters.py"),
    ("metrics", "(proxy/metrics.py"),
    ("parse the body", "read_row (proxy/shapes/plain.py"),
    ("the view (reading the body, the request id, the JSON answer)", "(proxy/http/predict.py"),
    ("flask", "(flask/"),
    ("werkzeug (WSGI request and response objects)", "(werkzeug/"),
    ("gunicorn (HTTP parsing, writing the answer)", "(gunicorn/"),
]


REQUEST = ".handle (gunicorn/workers/"
"""A frame every stack of a request being handled passes through (sync and gthread workers)."""


def summarise(path: Path) -> tuple[int, int, collections.Counter, collections.Counter]:
    """From py-spy's raw (collapsed) output: samples in all, samples of requests being handled,
    and, among those, samples per stage and per innermost function."""
    stages: collections.Counter = collections.Counter()
    functions: collections.Counter = collections.Counter()
    total = handling = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if not any(REQUEST in frame for frame in frames):
            continue  # idle waits, the counters' flush thread, the alarm monitor
        handling += count
        functions[frames[-1].split(" (")[0] + " (" + frames[-1].rpartition("/")[2]] += count
        for name, needle in STAGES:
            if any(needle in frame for frame in frames):
                stages[name] += count
                break
        else:
            stages["other"] += count
    return total, handling, stages, functions


def main(argv: list[str] | None = None) -> int:
    """Serve, load, sample and print the per-stage profile."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--mix", choices=("clean", "anomalous"), default="clean")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None and not (Path(sys.executable).parent / tool).exists():
            raise SystemExit(f"{tool} is not installed")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    work = Path(tempfile.mkdtemp(prefix="recguard-profile-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    redis = start_redis(work)
    redis_url = redis.url
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    env.update({"RECGUARD_LOG_LEVEL": "ERROR", "OPENBLAS_NUM_THREADS": "1"})
    server = Server("guarded", [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                                "--bind", f"127.0.0.1:{port}", "--redis", redis_url],
                    env, port, work / "proxy.log")
    try:
        server.wait_ready()
        mixes = write_mixes(args.data, work, 2000)
        script = work / "mix.lua"
        script.write_text(WRK_SCRIPT)
        load = subprocess.Popen(["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{round(args.seconds) + 5}s",
                                 "-s", str(script), server.url, "--", str(mixes[args.mix])],
                                stdout=subprocess.DEVNULL)
        time.sleep(2)  # past the warm-up
        samplers = {pid: subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "250", "--duration",
                                           str(round(args.seconds)), "--format", "raw", "--nonblocking",
                                           "--output", str(out / f"{pid}.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for pid in server.worker_pids()}
        for sampler in samplers.values():
            sampler.wait()
        load.wait()
    finally:
        server.stop()
        redis.stop()
    profiles = {pid: summarise(out / f"{pid}.txt") for pid in samplers if (out / f"{pid}.txt").exists()}
    pid, (total, handling, stages, functions) = max(profiles.items(), key=lambda item: item[1][1])
    print(f"worker {pid}: {total} samples over {args.seconds:g} s ({args.mix} traffic, {args.connections} "
          f"connections), {handling / total:.0%} of them handling a request; stacks in {out}")
    print("share of the request handling samples, per stage:")
    for name, count in stages.most_common():
        print(f"  {count / handling:6.1%}  {name}")
    print("most samples of their own:")
    for name, count in functions.most_common(12):
        print(f"  {count / handling:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
