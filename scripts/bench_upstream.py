"""The cost of the hop: the same upstream called directly, through recguard and through nginx, side by side.

    .venv/bin/python scripts/bench_upstream.py [--bundle bundles/default --data data/default]
        [--concurrency 1,16,64] [--duration 10] [--rounds 1] [--upstreams fixed,gcn] [--json out.json]

Two upstreams, each reached three ways, measured in turn at each concurrency (wrk, clean held-out
requests, POST /predict), so a change in the machine's load hits every way alike:

    upstreams   fixed  a Flask endpoint that sleeps 2 ms and answers ten catalogue items (gunicorn gthread,
                       2 workers x 32 threads: never the bottleneck)
                gcn    the embedded GCN, `recguard serve --no-guard` of the bundle (default sync workers)
    ways        direct    wrk -> upstream
                recguard  wrk -> `recguard serve --upstream` (guard on, its own Redis) -> upstream, one way per
                          gunicorn shape in --recguard (default sync:2x1, the default, and gthread:2x8)
                nginx     wrk -> nginx (proxy_pass, HTTP/1.1 upstream keepalive 64, 2 workers) -> upstream

Besides latency and throughput it reports each proxy's CPU seconds per forwarded request, from
/proc/<pid>/stat of its processes before and after each run: on two shared cores every proxy's own
CPU competes with the upstream and wrk. With the fixed upstream it also times the hop in-process
(getrusage, no scheduler queue): a guarded /predict of the embedded model, the same request
forwarded, and the upstream client's call alone. wrk and nginx are Debian's packages: the script installs
them with apt-get when they are missing (as root), or says how. docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench_proxy import ROOT, WRK_SCRIPT, Server, load_average, run_wrk, write_mixes  # noqa: E402

from tests.harness.servers import free_port, start_redis  # noqa: E402  (the harness the tests use too)

SLEEP_SECONDS = 0.002
TICKS = os.sysconf("SC_CLK_TCK")


def fixed_cost_app():
    """The fixed-cost upstream: parse the JSON body, sleep 2 ms, answer the catalogue's first ten items."""
    from flask import Flask, Response, request

    app = Flask("bench-fixed-cost")
    items = json.loads(os.environ["BENCH_ITEMS"])
    answer = json.dumps({"items": items, "scores": [float(10 - i) for i in range(len(items))]})

    @app.post("/predict")
    def predict() -> Response:
        json.loads(request.get_data(cache=False))
        time.sleep(SLEEP_SECONDS)
        return Response(answer, mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        return Response('{"status": "ready"}', mimetype="application/json")

    return app


NGINX_CONF = """
worker_processes 2;
daemon off;
pid {work}/nginx-{name}.pid;
error_log {work}/nginx-{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-tmp/body;
  proxy_temp_path {work}/nginx-tmp/proxy;
  fastcgi_temp_path {work}/nginx-tmp/fastcgi;
  uwsgi_temp_path {work}/nginx-tmp/uwsgi;
  scgi_temp_path {work}/nginx-tmp/scgi;
  upstream model {{
    server 127.0.0.1:{upstream_port};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def ensure_tools() -> None:
    """wrk and nginx from Debian's packages, installed when missing and we are root."""
    missing = [package for package, binary in (("wrk", "wrk"), ("nginx-light", "nginx"))
               if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"needs {' and '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx(Server):
    """nginx in front of one upstream, in the foreground of its own session."""

    def __init__(self, name: str, upstream_port: int, work: Path):
        port = free_port()
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        # nginx's workers run as nobody when it is started as root
        for path in (work, work / "nginx-tmp", *(work / "nginx-tmp").iterdir()):
            path.chmod(0o777)
        conf = work / f"nginx-{name}.conf"
        conf.write_text(NGINX_CONF.format(work=work, name=name, upstream_port=upstream_port, port=port))
        super().__init__(name, [nginx_binary(), "-c", str(conf), "-p", str(work)], dict(os.environ), port,
                         work / f"nginx-{name}.log")


def cpu_seconds(server: Server) -> float:
    """User + system CPU of a server's master and its workers so far."""
    total = 0
    for pid in [server.process.pid, *server.worker_pids()]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICKS


def start_all(args: argparse.Namespace, work: Path, redis_url: str) -> dict[str, dict[str, Server]]:
    """Every upstream, and recguard and nginx in front of each, all running before the first measurement."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    base.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "RECGUARD_LOG_LEVEL": "WARNING"})
    from model.bundle import load_bundle

    catalogue = list(load_bundle(args.bundle).catalogue)
    servers: dict[str, dict[str, Server]] = {}
    for upstream in args.upstreams.split(","):
        port = free_port()
        if upstream == "fixed":
            env = {**base, "RECGUARD_BIND": f"127.0.0.1:{port}", "RECGUARD_WORKERS": "2",
                   "RECGUARD_WORKER_CLASS": "gthread", "RECGUARD_THREADS": "32", "BENCH_ITEMS": json.dumps(catalogue[:10])}
            command = [sys.executable, "-m", "gunicorn", "-c", "python:proxy.http.gunicorn_config",
                       "--pythonpath", str(ROOT / "scripts"), "bench_upstream:fixed_cost_app()"]
        elif upstream == "gcn":
            env = dict(base)
            command = [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                       "--bind", f"127.0.0.1:{port}", "--no-guard", "--redis", redis_url]
        else:
            raise SystemExit(f"unknown upstream {upstream!r}: fixed or gcn")
        direct = Server(f"{upstream}-direct", command, env, port, work / f"{upstream}-direct.log")
        direct.wait_ready()
        ways: dict[str, Server] = {"direct": direct}
        for config in args.recguard.split(","):
            worker_class, shape = config.split(":")
            workers, threads = shape.split("x")
            front_port = free_port()
            front_env = {**base, "RECGUARD_REDIS_PREFIX": f"bench{upstream}{worker_class}{workers}{threads}",
                         "RECGUARD_WORKERS": workers, "RECGUARD_WORKER_CLASS": worker_class, "RECGUARD_THREADS": threads}
            name = f"recguard {config}"
            ways[name] = Server(f"{upstream}-{name}",
                                [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                                 "--bind", f"127.0.0.1:{front_port}", "--redis", redis_url,
                                 "--upstream", f"{direct.url}/predict"], front_env, front_port,
                                work / f"{upstream}-recguard-{worker_class}-{shape}.log")
        ways["nginx"] = Nginx(f"{upstream}-nginx", port, work)
        servers[upstream] = ways
    for ways in servers.values():
        for server in ways.values():
            server.wait_ready()
    return servers


def measure(server: Server, mix: Path, script: Path, connections: int, seconds: float) -> dict[str, Any]:
    """One wrk run, with the CPU milliseconds per request of the server wrk calls (the proxy; the upstream when direct)."""
    before = cpu_seconds(server)
    result = run_wrk(server.url, mix, script, connections, seconds)
    spent = cpu_seconds(server) - before
    result["cpu_ms_per_request"] = round(1000 * spent / result["requests"], 4) if result["requests"] else None
    return result


def hop_cpu(args: argparse.Namespace, redis_url: str, upstream_url: str, count: int = 300) -> dict[str, float]:
    """In-process CPU milliseconds per request (getrusage), median of three passes over `count` held-out
    requests through Flask's test client: a guarded /predict of the embedded model, the same request
    forwarded to the upstream, the upstream client's call alone (libcurl through pycurl), and the same
    call over urllib3 (the https path before pycurl). No scheduler queue in these: what the hop itself costs."""
    import resource

    from model.bundle import load_bundle
    from proxy.http.app import create_app
    from proxy.settings import Settings

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    bundle = load_bundle(args.bundle)
    with open(args.data / "holdout.jsonl") as lines:
        bodies = [json.dumps(json.loads(line)["request"]).encode() for line, _ in zip(lines, range(count))]
    apps = {name: create_app(Settings.from_env({}, bundle=args.bundle, redis_url=redis_url, redis_prefix=f"hop{name}",
                                               **extra), bundle)
            for name, extra in (("embedded", {}), ("forwarded", {"upstream_url": upstream_url}))}
    clients = {name: app.test_client() for name, app in apps.items()}
    upstream = apps["forwarded"].extensions["recguard"].loaded.upstream
    steps = {name: (lambda body, client=client: client.post("/predict", data=body, content_type="application/json"))
             for name, client in clients.items()}
    steps["client call alone"] = lambda body: upstream.call(body, {"Content-Type": "application/json"}, 1)
    # the same call over urllib3 (a test dependency through requests), which served https before pycurl
    import urllib3

    pool = urllib3.connection_from_url(upstream_url, maxsize=1, retries=False)
    steps["urllib3 call alone"] = lambda body: pool.urlopen(
        "POST", urllib3.util.parse_url(upstream_url).path, body=body, headers={"Content-Type": "application/json"},
        retries=False, timeout=urllib3.Timeout(total=0.25), assert_same_host=False, redirect=False).data
    samples: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for round_ in range(4):
            for name, step in steps.items():
                before = cpu()
                for body in bodies:
                    step(body)
                if round_:  # the first pass warms up
                    samples[name].append(1000 * (cpu() - before) / len(bodies))
    finally:
        for app in apps.values():
            app.extensions["recguard"].close()
    return {name: round(statistics.median(values), 3) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load on each way before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; each figure is the median")
    parser.add_argument("--upstreams", default="fixed,gcn", help="fixed (2 ms), gcn (the bundle's model), or both")
    parser.add_argument("--requests", type=int, default=2000, help="distinct held-out requests in the mix")
    parser.add_argument("--recguard", default="sync:2x1,gthread:2x8",
                        help="recguard's gunicorn shapes, CLASS:WORKERSxTHREADS,... (each one a way)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    ensure_tools()

    levels = [int(level) for level in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="recguard-bench-upstream-"))
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    mix = write_mixes(args.data, work, args.requests)["clean"]
    redis_server = start_redis(work)
    redis_url = redis_server.url
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "nproc": os.cpu_count(),
                              "duration_s": args.duration, "rounds": args.rounds, "load_before": load_average(),
                              "results": {}}
    servers: dict[str, dict[str, Server]] = {}
    try:
        servers = start_all(args, work, redis_url)
        for ways in servers.values():
            for server in ways.values():
                run_wrk(server.url, mix, script, 16, args.warmup)
        samples: dict[str, list[dict[str, Any]]] = {}
        for round_ in range(args.rounds):
            for level in levels:
                for upstream, ways in servers.items():
                    # a different way goes first each round: none always runs on the coolest machine
                    names = list(ways)
                    order = names[round_ % len(names):] + names[:round_ % len(names)]
                    for way in order:
                        result = measure(ways[way], mix, script, level, args.duration)
                        samples.setdefault(f"{upstream}/{way}/{level}", []).append(result)
                        print(f"round {round_ + 1} {upstream:5s} {way:8s} c={level:<3d} {result['rps']:8.0f} req/s  "
                              f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms  "
                              f"cpu {result['cpu_ms_per_request']} ms/req  errors {result['errors']}",
                              file=sys.stderr, flush=True)
        for key, runs in samples.items():
            report["results"][key] = {field: statistics.median(run[field] for run in runs)
                                      for field in ("rps", "p50_us", "p99_us", "cpu_ms_per_request")}
            report["results"][key]["errors"] = sum(sum(run["errors"].values()) for run in runs)
        if "fixed" in servers:
            report["hop_cpu_ms"] = hop_cpu(args, redis_url, servers["fixed"]["direct"].url + "/predict")
            print(f"in-process CPU ms per request: {report['hop_cpu_ms']}", file=sys.stderr, flush=True)
        report["model_share"] = {}
        for upstream, ways in servers.items():
            for name, server in ways.items():
                if name.startswith("recguard"):
                    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as answer:
                        text = answer.read().decode()
                    report["model_share"][f"{upstream} {name}"] = [
                        line for line in text.splitlines()
                        if line.startswith(("recguard_requests_total", "recguard_upstream_calls_total"))]
    finally:
        for ways in servers.values():
            for server in ways.values():
                server.stop()
        redis_server.stop()
    report["load_after"] = load_average()
    print_table(report, levels)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict[str, Any], levels: list[int]) -> None:
    """The figures as docs/benchmarks.md shows them: per upstream and concurrency, each way and its overhead."""
    results = report["results"]
    print("| upstream | conns | way | req/s | vs direct | p50 ms | +p50 ms | p99 ms | +p99 ms | proxy CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    upstreams = sorted({key.split("/")[0] for key in results}, key=lambda name: ("fixed", "gcn").index(name))
    for upstream in upstreams:
        for level in levels:
            direct = results[f"{upstream}/direct/{level}"]
            for way in sorted({key.split("/")[1] for key in results if key.startswith(upstream + "/")},
                              key=lambda name: (name != "direct", name == "nginx", name)):
                row = results[f"{upstream}/{way}/{level}"]
                print(f"| {upstream} | {level} | {way} | {row['rps']:.0f} | {row['rps'] / direct['rps']:.2f}x | "
                      f"{row['p50_us'] / 1000:.2f} | {(row['p50_us'] - direct['p50_us']) / 1000:+.2f} | "
                      f"{row['p99_us'] / 1000:.2f} | {(row['p99_us'] - direct['p99_us']) / 1000:+.2f} | "
                      f"{row['cpu_ms_per_request']}{' (upstream)' if way == 'direct' else ''} |")
    print(f"\nload average before {report['load_before']}, after {report['load_after']}; {report['nproc']} cores")
    if "hop_cpu_ms" in report:
        print("in-process CPU ms per request: " + ", ".join(f"{name} {value}" for name, value in report["hop_cpu_ms"].items()))
    for upstream, lines in report.get("model_share", {}).items():
        print(f"{upstream} recguard counters: " + "; ".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
