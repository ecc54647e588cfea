"""What a request costs the shared store, and how many requests a three-primary Redis Cluster carries.

    .venv/bin/python scripts/bench_store.py [--bundle bundles/default --data data/default]
        [--workers 2,8,32] [--seconds 20] [--connections 16] [--json out.json]

Cost: a throwaway Redis Cluster (3 primaries + 3 replicas, the tests' `tests/harness/cluster.py`), then
`recguard serve` on it at the default flush interval (0.5 s) and replica wait, with each worker count in
turn, loaded by wrk (`--connections`, `--seconds`, the held-out requests). Around each load run every
primary's `INFO commandstats` and `INFO stats` are read, so the figures are the server's own: commands
the proxy sent (EVALSHA, HGETALL, WAIT, ...), commands its scripts ran inside Redis, bytes in and out of
the primaries and the replication stream, per 1,000 requests and per worker-second, and the share of
the busiest primary.

Capacity: the commands of one measured flush (taken from MONITOR during the first run: the flush script
on the minute bucket and on a drift slot, the alarm refresh's HGETALLs) replayed by redis-benchmark
against one primary, each writer id random so every script call applies its batch, as a real flush
does. From the busiest primary's commands per worker-second and its measured capacity: the workers and
requests/s one primary, and so the cluster, carries.

docs/benchmarks.md ("The store's cost per request") records the figures with the date and the machine.
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
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_proxy import WRK_SCRIPT, Server, run_wrk, write_mixes  # noqa: E402

from tests.harness.cluster import LocalCluster  # noqa: E402  (the tests' throwaway cluster)
from tests.harness.servers import free_port  # noqa: E402  (the harness the tests use too)

# The commands a Lua script runs inside Redis (counted by commandstats, never sent by the proxy).
SCRIPT_INNER = {"hget", "hincrby", "hincrbyfloat", "hset", "hdel", "expire"}
# What this script sends to measure, the clients' connection set-up, and the replicas' own commands.
NOT_THE_PROXY = {"info", "monitor", "cluster", "ping", "command", "hello", "client", "script", "replconf", "psync"}
REQUESTS_PER_WORKER_SECOND = 780
"""A sync worker's throughput on one core (docs/benchmarks.md, "The proxy under load": 1,560
requests/s for two workers on two cores): what a worker does when it has a core to itself."""


def wait_loaded(server: Server, workers: int, timeout: float = 600.0) -> None:
    """Until every worker has loaded its bundle (sync workers take requests in turn: one ready
    worker is not a ready server)."""
    deadline = time.monotonic() + timeout
    while server.log.read_text(errors="replace").count('"msg": "bundle loaded"') < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"{server.name}: workers not loaded after {timeout:.0f} s; see {server.log}")
        time.sleep(0.5)


def node_stats(cluster: LocalCluster) -> dict[int, dict[str, int]]:
    """Per primary: calls of each command, and the byte counters."""
    stats = {}
    for port in cluster.primaries():
        node = cluster.node(port)
        commandstats = node.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in commandstats.items()}
        calls.update({"usec:" + name.removeprefix("cmdstat_"): value["usec"] for name, value in commandstats.items()})
        info = node.info("stats")
        calls.update({key: info[key] for key in ("total_net_input_bytes", "total_net_output_bytes",
                                                 "total_net_repl_output_bytes")})
        stats[port] = calls
    return stats


def delta(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    return {port: {key: value - before.get(port, {}).get(key, 0) for key, value in counts.items()}
            for port, counts in after.items()}


def summarise(changes: dict[int, dict[str, int]], requests: int, workers: int, seconds: float) -> dict[str, Any]:
    """Per 1,000 requests and per worker-second, over all primaries and on the busiest."""
    sent: dict[str, int] = {}
    inner = 0
    busiest = 0
    usec = 0
    for counts in changes.values():
        node_sent = 0
        for key, value in counts.items():
            if key.startswith("usec:"):
                name = key.removeprefix("usec:")
                if name not in SCRIPT_INNER and name.split("|")[0] not in NOT_THE_PROXY:
                    usec += value  # a script's time includes its inner commands'
                continue
            if key.startswith("total_net") or key.split("|")[0] in NOT_THE_PROXY:
                continue
            if key in SCRIPT_INNER:
                inner += value
            else:
                sent[key] = sent.get(key, 0) + value
                node_sent += value
        busiest = max(busiest, node_sent)
    total = sum(sent.values())
    bytes_in = sum(counts["total_net_input_bytes"] for counts in changes.values())
    bytes_out = sum(counts["total_net_output_bytes"] for counts in changes.values())
    replication = sum(counts["total_net_repl_output_bytes"] for counts in changes.values())
    per_k = 1000 / requests
    worker_seconds = workers * seconds
    # per 1,000 requests at a worker's full speed: the store's cost per worker-second is fixed by the
    # flush interval, so per request it falls as traffic rises
    nominal = 1000 / (REQUESTS_PER_WORKER_SECOND * worker_seconds)
    return {
        "workers": workers, "requests": requests, "rps": round(requests / seconds, 1),
        "commands_per_1k": round(total * per_k, 1),
        "by_command_per_1k": {name: round(count * per_k, 1) for name, count in sorted(sent.items()) if count},
        "script_inner_per_1k": round(inner * per_k, 1),
        "bytes_in_per_1k": round(bytes_in * per_k), "bytes_out_per_1k": round(bytes_out * per_k),
        "replication_bytes_per_1k": round(replication * per_k),
        "commands_per_1k_at_full_speed": round(total * nominal, 2),
        "bytes_per_1k_at_full_speed": round((bytes_in + bytes_out + replication) * nominal),
        "commands_per_worker_second": round(total / worker_seconds, 2),
        "bytes_per_worker_second": round((bytes_in + bytes_out + replication) / worker_seconds),
        "busiest_commands_per_worker_second": round(busiest / worker_seconds, 2),
        "server_us_per_worker_second": round(usec / worker_seconds, 1),
        "workers_per_primary_by_cpu": int(1e6 * worker_seconds / usec) if usec else None,
        "busiest_share": round(busiest / total, 3) if total else 0.0,
    }


class Sample:
    """The client commands the primaries run for a while (MONITOR), to replay the same mix."""

    def __init__(self, cluster: LocalCluster, seconds: float):
        self.commands: list[tuple[int, list[str]]] = []
        threads = [threading.Thread(target=self._watch, args=(cluster, port, seconds)) for port in cluster.primaries()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _watch(self, cluster: LocalCluster, port: int, seconds: float) -> None:
        client = redis.Redis(port=port, decode_responses=True, socket_timeout=0.5)
        monitor = client.monitor().__enter__()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = monitor.connection.read_response()
            except redis.TimeoutError:
                break
            header, _, arguments = line.partition("] ")
            if header.endswith(" lua"):
                continue
            args = [re.sub(r"\\(.)", r"\1", arg) for arg in re.findall(r'"((?:[^"\\]|\\.)*)"', arguments)]
            if args:
                self.commands.append((port, args))
        monitor.connection.disconnect()

    @staticmethod
    def kind(args: list[str]) -> str | None:
        """The flush script on a minute bucket or on a drift slot, HGETALL of a drift slot or of the alarm hash."""
        name = args[0].upper()
        if name == "EVALSHA" and len(args) > 3:
            return "flush " + ("minute" if ":m:" in args[3] else "drift slot")
        if name == "HGETALL" and len(args) > 1:
            return "read " + ("alarms" if args[1].endswith(":alarms") else "drift slot" if ":d:" in args[1] else "minute")
        return None

    def representatives(self) -> dict[str, list[str]]:
        """One command per kind: the one with the most fields seen."""
        kinds: dict[str, list[str]] = {}
        for _, args in self.commands:
            kind = self.kind(args)
            if kind is not None and len(args) >= len(kinds.get(kind, [])):
                kinds[kind] = args
        return kinds

    def frequencies(self, worker_seconds: float) -> dict[str, float]:
        """Commands of each kind per worker-second."""
        counts: dict[str, float] = {}
        for _, args in self.commands:
            kind = self.kind(args)
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1 / worker_seconds
        return {kind: round(count, 2) for kind, count in counts.items()}


def benchmark_mix(cluster: LocalCluster, mix: dict[str, list[str]], requests: int) -> dict[str, float]:
    """ops/s of each command on one primary (redis-benchmark, 50 connections, no pipelining)."""
    port = cluster.primaries()[0]
    from proxy.drift.alarms import _CLEAR_ALARM, _SET_ALARM
    from proxy.store.counters import _APPLY_BATCH

    for script in (_APPLY_BATCH, _SET_ALARM, _CLEAR_ALARM):
        cluster.node(port).script_load(script)
    rates = {}
    for kind, args in mix.items():
        args = list(args)
        if args[0].upper() == "EVALSHA":
            args[4] = "w__rand_int__"  # a new writer each call: the batch is applied, never skipped
        # the key, wherever it hashes, is served by this node for the benchmark: a node of its own
        node_key = "{bench}" + args[3 if args[0].upper() == "EVALSHA" else 1]
        args[3 if args[0].upper() == "EVALSHA" else 1] = node_key
        owner = cluster.owner(node_key)
        out = subprocess.run(["redis-benchmark", "-p", str(owner), "-c", "50", "-n", str(requests), "-r", "100000000",
                              "--csv", *args], capture_output=True, text=True, check=True).stdout
        rows = [line for line in out.splitlines() if line.startswith('"') and not line.startswith('"test"')]
        rates[kind] = float(rows[-1].split(",")[1].strip('"'))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--workers", default="2,8,32")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--benchmark-requests", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on the way out
    if not (args.bundle / "manifest.json").exists():
        raise SystemExit(f"{args.bundle}: no bundle (recguard generate, then recguard train)")

    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    (work / "cluster").mkdir()
    print("starting a Redis Cluster (3 primaries + 3 replicas)", flush=True)
    cluster = LocalCluster(work / "cluster").start()
    mixes = write_mixes(args.data, work, 1000)
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT)
    base = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    base.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "RECGUARD_LOG_LEVEL": "INFO"})  # INFO: each worker logs "bundle loaded"
    runs, mix, frequencies = [], {}, {}
    try:
        for workers in (int(count) for count in args.workers.split(",")):
            port = free_port()
            print(f"{workers} workers: starting", flush=True)
            server = Server(f"w{workers}", [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                                            "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                                            "--redis", cluster.url],
                            base, port, work / f"w{workers}.log")
            try:
                server.wait_ready(timeout=300)
                wait_loaded(server, workers)
                run_wrk(server.url, mixes["clean"], script, args.connections, 3)  # every worker warm
                time.sleep(1.0)
                before = node_stats(cluster)
                result = run_wrk(server.url, mixes["clean"], script, args.connections, args.seconds)
                time.sleep(1.0)  # the last flush of every worker
                after = node_stats(cluster)
                run = summarise(delta(before, after), result["requests"], workers, result["seconds"] + 1.0)
                run["p99_ms"] = round(result["p99_us"] / 1000, 1)
                runs.append(run)
                print(json.dumps(run), flush=True)
                if not mix:
                    sampler = threading.Thread(target=run_wrk, args=(server.url, mixes["clean"], script,
                                                                     args.connections, 3))
                    sampler.start()
                    sample = Sample(cluster, 2.0)
                    mix, frequencies = sample.representatives(), sample.frequencies(workers * 2.0)
                    sampler.join()
            finally:
                server.stop()
        print("benchmarking the command mix on one primary", flush=True)
        rates = benchmark_mix(cluster, mix, args.benchmark_requests)
    finally:
        cluster.stop()

    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs, "mix_ops_per_second": rates,
              "mix_fields": {kind: (len(command) - 7) // 2 if command[0].upper() == "EVALSHA" else None
                             for kind, command in mix.items()},
              "mix_per_worker_second": frequencies, "capacity": capacity(frequencies, rates)}
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def capacity(frequencies: dict[str, float], rates: dict[str, float]) -> dict[str, Any]:
    """Workers and requests/s one primary carries when it takes the whole mix.

    Every worker writes the same minute bucket and the same drift slot at the same time, and reads
    the one alarm hash: at any moment those few keys, so the load, sit on one or two primaries
    whatever the cluster's size. A worker costs that node sum(frequency / rate) seconds per second."""
    busy = sum(frequency / rates[kind] for kind, frequency in frequencies.items() if kind in rates)
    workers = 1 / busy if busy else float("inf")
    return {"node_seconds_per_worker_second": round(busy, 6), "workers": int(workers),
            "requests_per_second": int(workers * REQUESTS_PER_WORKER_SECOND)}


def format_report(report: dict[str, Any]) -> str:
    lines = ["| workers | req/s (measured) | commands / 1k req | of which / 1k | inside scripts / 1k | bytes in + out / 1k "
             "| replication bytes / 1k | commands / worker-s | bytes / worker-s | / 1k req at 780 req/s per worker "
             "| busiest primary | server µs / worker-s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        parts = ", ".join(f"{name} {count}" for name, count in run["by_command_per_1k"].items())
        lines.append(f"| {run['workers']} | {run['rps']:.0f} | {run['commands_per_1k']} | {parts} | "
                     f"{run['script_inner_per_1k']} | {run['bytes_in_per_1k'] + run['bytes_out_per_1k']:,} | "
                     f"{run['replication_bytes_per_1k']:,} | {run['commands_per_worker_second']} | "
                     f"{run['bytes_per_worker_second']:,} | {run['commands_per_1k_at_full_speed']} commands, "
                     f"{run['bytes_per_1k_at_full_speed']:,} bytes | {run['busiest_share']:.0%} | "
                     f"{run['server_us_per_worker_second']} |")
    lines += ["", "| command (one primary, redis-benchmark -c 50) | ops/s |", "|---|---|"]
    lines += [f"| {kind} ({report['mix_fields'][kind]} fields) | {rate:,.0f} |" if report["mix_fields"][kind]
              else f"| {kind} | {rate:,.0f} |" for kind, rate in report["mix_ops_per_second"].items()]
    cap = report["capacity"]
    mix = ", ".join(f"{kind} {count}" for kind, count in report["mix_per_worker_second"].items())
    lines += ["", f"per worker-second: {mix}; one primary taking all of it: {cap['node_seconds_per_worker_second'] * 1000:.2f} ms "
              f"per worker-second, so {cap['workers']:,} workers, about {cap['requests_per_second']:,} requests/s "
              f"at {REQUESTS_PER_WORKER_SECOND} per worker"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
