"""Load benchmark of the proxy: a bare Flask endpoint, `recguard serve --no-guard` and the guarded
proxy on clean and on all-anomalous traffic, side by side in one run, plus the guard's own cost
per request in-process.

    .venv/bin/python scripts/bench_proxy.py [--bundle bundles/default --data data/default]
        [--concurrency 1,16,64] [--duration 10] [--rounds 1] [--worker-class sync --workers 2 --threads 4]
        [--configs CLASS:WxT,...] [--json out.json]

The load generator is wrk (Debian package `wrk`): written in C, it leaves the two cores to the
servers far better than a Python client would. Every server runs under the same gunicorn settings
(`proxy/http/gunicorn_config.py`: --worker-class, --workers, --threads) on 127.0.0.1, all started before the
first measurement and measured in turn at each concurrency level, so a change in the machine's
load hits every variant alike; --rounds N repeats the whole sweep and keeps each figure's median.

    a  bare      a Flask endpoint that parses the JSON body and answers a fixed response of the same shape
    b  no-guard  `recguard serve --no-guard`: the model alone (the baseline of the drop-in promise)
    c  clean     `recguard serve`, held-out requests (served by the model)
    d  anomalous `recguard serve`, every request anomalous: renamed and merged fields (the model
                 still answers, seven anomalies each), a new market, weight sent as a string,
                 weight in pounds past the training range (the fallback answers)

With --configs CLASS:WORKERSxTHREADS,... it measures instead the guarded proxy on clean traffic
under several gunicorn shapes side by side (e.g. gthread:2x4,gthread:4x1,sync:2x1,sync:4x1): how
the default worker class and count were chosen.

A Redis server of its own is started on a free port (or pass --redis URL). docs/benchmarks.md
records the figures with the command, the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness.servers import free_port, start_redis  # noqa: E402  (the harness the tests use too)

VARIANTS = ("bare", "no-guard", "clean", "anomalous")

WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, ' ..
    '"mean_us": %f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

WRK_SCRIPT = r"""
local requests = {}
local index = 0
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, line)
  end
  -- threads start at different places of the same fixed mix
  index = (id * 997) % #requests
end

function request()
  index = index % #requests + 1
  return requests[index]
end

"""+WRK_DONE



def bare_app():
    """(a) The ceiling: Flask under the same gunicorn settings, JSON in, a fixed JSON answer out."""
    from flask import Flask, Response, request

    app = Flask("bench-bare")
    answer = json.dumps({"items": [f"item_{i:05d}" for i in range(10)], "scores": [0.5] * 10,
                         "source": "model", "model_version": "bench", "anomalies": []})

    @app.post("/predict")
    def predict() -> Response:
        json.loads(request.get_data(cache=False))
        return Response(answer, mimetype="application/json", headers={"X-Recguard-Source": "model"})

    @app.get("/readyz")
    def readyz() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


def anomalous(body: dict[str, Any], i: int) -> dict[str, Any]:
    """Body i of the all-anomalous mix: each of four redesign changes in turn."""
    body = dict(body)
    change = i % 4
    if change == 0:
        body["user_email"] = body.pop("email")
        body["name"] = f"{body.pop('first_name')} {body.pop('last_name')}"
    elif change == 1:
        body["country"] = "XK"
    elif change == 2:
        body["weight_kg"] = str(body["weight_kg"])
    else:
        body["weight_kg"] = round(max(body["weight_kg"], 90.0) * 2.20462, 1)
    return body


def write_mixes(data: Path, out: Path, size: int) -> dict[str, Path]:
    """The request files wrk sends (one compact JSON body per line): clean held-out requests and
    the all-anomalous mix built from the same requests."""
    with open(data / "holdout.jsonl") as lines:
        clean = [json.loads(line)["request"] for line, _ in zip(lines, range(size))]
    files = {"clean": out / "clean.jsonl", "anomalous": out / "anomalous.jsonl"}
    for name, bodies in (("clean", clean), ("anomalous", [anomalous(b, i) for i, b in enumerate(clean)])):
        files[name].write_text("".join(json.dumps(body, separators=(",", ":")) + "\n" for body in bodies))
    return files


class Server:
    """One gunicorn master, started in its own session, stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, log: Path):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name}: server exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: not ready after {timeout:.0f} s; see {self.log}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass(frozen=True)
class Spec:
    """One server to measure: what it serves, with which gunicorn settings, and the traffic it gets."""

    name: str
    kind: str
    """bare, no-guard or guarded"""
    mix: str
    """clean or anomalous"""
    workers: int
    threads: int
    worker_class: str


def start_servers(specs: list[Spec], bundle: Path, redis_url: str, work: Path) -> dict[str, Server]:
    """Every server at once, each on its own port and (guarded) its own Redis prefix: the
    all-anomalous traffic raises drift alarms, which must not quarantine the clean run's markets."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    base.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "RECGUARD_LOG_LEVEL": "WARNING"})
    servers: dict[str, Server] = {}
    for spec in specs:
        port = free_port()
        env = {**base, "RECGUARD_WORKERS": str(spec.workers), "RECGUARD_THREADS": str(spec.threads),
               "RECGUARD_REDIS_PREFIX": "bench" + "".join(c for c in spec.name if c.isalnum()),
               # the worker class through recguard's own setting: proxy/http/gunicorn_config.py gives
               # gunicorn threads only for gthread (a --worker-class flag alone would run 1 thread)
               "RECGUARD_WORKER_CLASS": spec.worker_class}
        if spec.kind == "bare":
            command = [sys.executable, "-m", "gunicorn", "-c", "python:proxy.http.gunicorn_config",
                       "--pythonpath", str(ROOT / "scripts"), "bench_proxy:bare_app()"]
            env["RECGUARD_BIND"] = f"127.0.0.1:{port}"
        else:
            command = [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(bundle),
                       "--bind", f"127.0.0.1:{port}", "--redis", redis_url,
                       *(["--no-guard"] if spec.kind == "no-guard" else [])]
        servers[spec.name] = Server(spec.name, command, env, port, work / f"{spec.name.replace(':', '-')}.log")
    for server in servers.values():
        server.wait_ready()
    return servers


def model_share(server: Server) -> float | None:
    """The share of a guarded server's answers that came from the model, from its own counters."""
    try:
        with urllib.request.urlopen(server.url + "/anomalies?since=1h", timeout=5) as answer:
            report = json.load(answer)
    except OSError:
        return None
    return round(1 - report["fallback_requests"] / report["requests"], 4) if report["requests"] else None


def run_wrk(url: str, requests_file: Path, script: Path, connections: int, seconds: float,
            path: str = "/predict", extra: Sequence[str] = ()) -> dict[str, Any]:
    """One wrk run of `script` against url + path (its arguments: the requests file, then `extra`);
    the RESULT line the script's done() prints, with rps."""
    threads = min(connections, 2)
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "5s",
               "-s", str(script), url + path, "--", str(requests_file), *extra]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def per_request_us(stages: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]], repeat: int,
                   alone: bool = False) -> dict[str, float]:
    """Median over `repeat` passes (after one warm-up pass) of each stage's mean time per input, in
    microseconds. The stages run interleaved, input by input, as they do on a request, so a change in
    the machine's load during the run hits every stage alike; `alone` times each stage in a loop of
    its own instead (warm caches: a floor, not what a request sees)."""
    if alone and len(stages) > 1:
        return {name: per_request_us({name: stage}, repeat)[name] for name, stage in stages.items()}
    clock = time.perf_counter_ns
    count = min(len(inputs) for _, inputs in stages.values())
    samples: dict[str, list[float]] = {name: [] for name in stages}
    for round_ in range(repeat + 1):
        spent = dict.fromkeys(stages, 0)
        for i in range(count):
            for name, (step, inputs) in stages.items():
                started = clock()
                step(inputs[i])
                spent[name] += clock() - started
        if round_:
            for name in stages:
                samples[name].append(spent[name] / count / 1000)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def guard_cost(args: argparse.Namespace, redis_url: str, mixes: dict[str, Path], repeat: int = 5) -> dict[str, float]:
    """Microseconds per request, in-process on one thread: guard.check alone, the drift windows'
    observe, the counters' record, the whole guarded service.answer minus the unguarded one, and
    the model call inline (as the bundle's scorer runs) against the same call on the budget pool."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from model.bundle import load_bundle
    from proxy.http.app import create_app
    from proxy.models.embedded import RowByRow
    from proxy.settings import Settings
    from proxy.shapes.recguard import RecguardShape

    bundle = load_bundle(args.bundle)
    guarded = Settings.from_env({}, bundle=args.bundle, redis_url=redis_url, redis_prefix="benchcost")
    apps = {"guarded": create_app(guarded, bundle), "bare": create_app(Settings.from_env({}, guard=False), bundle)}
    figures: dict[str, float] = {}
    loaded = apps["guarded"].extensions["recguard"].loaded
    inline = loaded.service.model
    pooled = RowByRow(Unbounded(inline.model), budget=guarded.limits.model_timeout_ms / 1000)
    shape = RecguardShape(guarded.limits)
    try:
        for mix, path in mixes.items():
            parsed = [shape.parse(line.encode()) for line in path.read_text().splitlines()]
            requests = [one.rows[0] for one in parsed]
            bare = apps["bare"].extensions["recguard"].loaded.service
            steps: dict[str, tuple[Callable[[Any], Any], list]] = {
                "guard_check": (loaded.guard.check, requests),
                "service_guarded": (loaded.service.answer, parsed),
                "service_unguarded": (bare.answer, parsed),
            }
            if loaded.drift is not None:
                steps["drift_observe"] = (lambda r: loaded.drift.observe(r.fields), requests)
            counters = apps["guarded"].extensions["recguard"].counters
            steps["counters_record"] = (lambda r: counters.record_request("model", [("email", "missing_field")]),
                                        requests)
            # the model budget both ways: the bundle's scorer inline (as served), and the same scorer
            # behind a wrapper that does not declare itself bounded, run on the budget pool
            steps["model_inline"] = (inline.ask, requests)
            steps["model_via_budget_pool"] = (pooled.ask, requests)
            timed = per_request_us(steps, repeat)
            figures.update({f"{mix}.{name}_us": microseconds for name, microseconds in timed.items()})
            figures[f"{mix}.guard_total_us"] = round(figures[f"{mix}.service_guarded_us"]
                                                     - figures[f"{mix}.service_unguarded_us"], 2)
    finally:
        apps["guarded"].extensions["recguard"].close()
        pooled.close()
    return figures


class Unbounded:
    """The scorer declared not `bounded`: the service runs it on its budget pool."""

    bounded = False

    def __init__(self, model: Any):
        self.catalogue = model.catalogue
        self.recommend = model.recommend


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the first measurement of a server")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; each figure is the median")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of every server")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (gthread)")
    parser.add_argument("--worker-class", default="sync", choices=("sync", "gthread"),
                        help="gunicorn worker class of every server (default sync, as recguard serve)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--configs", help="instead of the four variants: guarded servers on clean traffic, one per "
                                           "CLASS:WORKERSxTHREADS, e.g. gthread:2x4,gthread:4x1,sync:2x1")
    parser.add_argument("--redis", help="Redis URL (default: a redis-server of our own on a free port)")
    parser.add_argument("--requests", type=int, default=2000, help="distinct held-out requests in the mix")
    parser.add_argument("--skip-guard-cost", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    levels = [int(level) for level in args.concurrency.split(",")]
    if args.configs:
        specs = []
        for config in args.configs.split(","):
            worker_class, _, shape = config.partition(":")
            workers, _, threads = shape.partition("x")
            specs.append(Spec(config, "guarded", "clean", int(workers), int(threads), worker_class))
    else:
        kinds = {"bare": ("bare", "clean"), "no-guard": ("no-guard", "clean"),
                 "clean": ("guarded", "clean"), "anomalous": ("guarded", "anomalous")}
        specs = [Spec(variant, *kinds[variant], args.workers, args.threads, args.worker_class)
                 for variant in args.variants.split(",") if variant]
    variants = [spec.name for spec in specs]

    work = Path(tempfile.mkdtemp(prefix="recguard-bench-"))
    redis_server = None
    redis_url = args.redis
    if redis_url is None:
        redis_server = start_redis(work)
        redis_url = redis_server.url
    mixes = write_mixes(args.data, work, args.requests)
    script = work / "mix.lua"
    script.write_text(WRK_SCRIPT)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                              "workers": args.workers, "threads": args.threads, "worker_class": args.worker_class, "configs": args.configs, "duration_s": args.duration,
                              "rounds": args.rounds, "load_before": load_average(), "results": {}}
    servers: dict[str, Server] = {}
    try:
        servers = start_servers(specs, args.bundle, redis_url, work)
        for spec in specs:
            run_wrk(servers[spec.name].url, mixes[spec.mix], script, 16, args.warmup)
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for level in levels:
                for spec in specs:
                    variant = spec.name
                    result = run_wrk(servers[variant].url, mixes[spec.mix], script, level, args.duration)
                    samples.setdefault((variant, level), []).append(result)
                    print(f"  {variant:>9} c={level:<3} {result['rps']:8.0f} req/s  p50 {result['p50_us'] / 1000:6.2f} ms"
                          f"  p99 {result['p99_us'] / 1000:6.2f} ms  p99.9 {result['p999_us'] / 1000:6.2f} ms"
                          f"  errors {sum(result['errors'].values())}", file=sys.stderr, flush=True)
        for (variant, level), results in samples.items():
            report["results"].setdefault(variant, {})[str(level)] = {
                key: statistics.median(result[key] for result in results)
                for key in ("rps", "p50_us", "p99_us", "p999_us", "max_us")
            } | {"errors": sum(sum(result["errors"].values()) for result in results)}
        report["rss_mib_per_worker"] = {name: [rss_mib(pid) for pid in server.worker_pids()]
                                        for name, server in servers.items()}
        report["model_share"] = {spec.name: model_share(servers[spec.name]) for spec in specs if spec.kind == "guarded"}
    finally:
        for server in servers.values():
            server.stop()
    report["load_after"] = load_average()
    if not args.skip_guard_cost and not args.configs:
        report["guard_cost"] = guard_cost(args, redis_url, mixes)
    if redis_server is not None:
        redis_server.stop()
    print(format_report(report, levels, variants))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def format_report(report: dict[str, Any], levels: list[int], variants: list[str]) -> str:
    results = report["results"]
    threads = f" x {report['threads']} threads" if report["worker_class"] == "gthread" else ""
    shape = report["configs"] or f"{report['worker_class']} {report['workers']} workers{threads}"
    lines = [f"{report['date']}  {report['cpus']} CPUs  load {report['load_before']} -> {report['load_after']}  "
             f"{shape}  {report['duration_s']:g} s x "
             f"{report['rounds']} round(s) per figure", "",
             f"{'variant':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'errors':>6}"]
    for level in levels:
        for variant in variants:
            figure = results[variant][str(level)]
            lines.append(f"{variant:<10} {level:>5} {figure['rps']:>8.0f} {figure['p50_us'] / 1000:>7.2f} "
                         f"{figure['p99_us'] / 1000:>7.2f} {figure['p999_us'] / 1000:>8.2f} {figure['errors']:>6}")
    lines.append("")
    lines.append("answered by the model: " + ", ".join(f"{name} {share:.1%}" if share is not None else f"{name} ?"
                                                       for name, share in report.get("model_share", {}).items()))
    ratios = [("clean / no-guard", "clean", "no-guard"), ("anomalous / clean", "anomalous", "clean"),
              ("no-guard / bare", "no-guard", "bare")]
    for label, top, bottom in ratios:
        if top in results and bottom in results:
            cells = "  ".join(f"c={level}: {results[top][str(level)]['rps'] / results[bottom][str(level)]['rps']:.3f}"
                              for level in levels)
            lines.append(f"throughput {label:<18} {cells}")
    if "guard_cost" in report:
        lines.append("")
        lines += [f"{name:<34} {value:8.2f} µs" for name, value in report["guard_cost"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
