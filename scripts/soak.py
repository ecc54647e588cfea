"""Soak: `recguard serve` under mixed traffic for a long while, Redis restarted twice on the way
(once with SHUTDOWN, once with SIGKILL; AOF with fsync on every write, so nothing Redis
acknowledged is lost). Reports errors, resident memory per worker over time and whether the counts
in Redis equal the predictions answered.

    .venv/bin/python scripts/soak.py [--minutes 10] [--rate 150] [--bundle bundles/default --data data/default]

The traffic mix, per request: 70 % clean held-out requests, 25 % anomalous ones (the four redesign
changes of scripts/bench_proxy.py), 5 % bad input (not JSON, wrong content type, k out of range).
Client threads pace themselves to --rate requests per second in total. Exits non-zero when a
request failed (5xx or no answer), a worker was replaced, or the counts are off; docs/benchmarks.md
records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

sys.path.insert(0, str(ROOT))
from bench_proxy import anomalous  # noqa: E402

from tests.harness.servers import RedisServer, free_port  # noqa: E402  (the harness the tests use too)

PREFIX = "soak"


class Redis(RedisServer):
    """A redis-server of the soak's own, AOF on with fsync on every write, restartable on the same port."""

    def __init__(self, directory: Path):
        super().__init__(directory, appendonly=True, appendfsync="always")

    def start(self) -> "Redis":
        try:
            return super().start(timeout=30)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def shutdown(self) -> None:
        try:
            # no retries: the server hangs up on this very command
            redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0), socket_timeout=5).shutdown()
        except redis.RedisError:
            pass
        self.process.wait(30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)

    def counted(self) -> int:
        client = self.client()
        return sum(int(client.hget(key, "requests") or 0) for key in client.scan_iter(f"{PREFIX}:m:*"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class Clients:
    """Paced client threads; every answer is tallied by kind of request and status."""

    def __init__(self, url: str, clean: list[dict], threads: int, rate: float, seed: int = 1):
        self.url = url + "/predict"
        self.clean = clean
        self.dirty = [anomalous(body, i) for i, body in enumerate(clean)]
        self.interval = threads / rate
        self.tally: Counter[str] = Counter()
        self.slowest = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(seed + i,), daemon=True) for i in range(threads)]

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        next_at = time.monotonic()
        while not self.stop.is_set():
            draw = rng.random()
            kwargs: dict = {"timeout": 10}
            if draw < 0.70:
                kind, kwargs["json"] = "clean", rng.choice(self.clean)
            elif draw < 0.95:
                kind, kwargs["json"] = "anomalous", rng.choice(self.dirty)
            else:
                kind = "bad"
                kwargs.update(rng.choice([
                    {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
                    {"data": b"{}", "headers": {"Content-Type": "text/csv"}},
                    {"json": {"k": 1000}},
                ]))
            started = time.monotonic()
            try:
                status = str(session.post(self.url, **kwargs).status_code)
            except requests.RequestException:
                status = "no-answer"
                session = requests.Session()
            took = time.monotonic() - started
            with self.lock:
                self.tally[f"{kind}:{status}"] += 1
                self.slowest = max(self.slowest, took)
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--down-seconds", type=float, default=10.0, help="how long Redis stays down each time")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="recguard-soak-"))
    store = Redis(work)
    store.start()
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    env.update({"RECGUARD_REDIS_PREFIX": PREFIX, "RECGUARD_LOG_LEVEL": "WARNING"})
    server = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                               "--bind", f"127.0.0.1:{port}", "--redis", store.url],
                              cwd=ROOT, env=env, stdout=open(work / "proxy.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    summary: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": args.minutes, "rate": args.rate,
                     "load_before": Path("/proc/loadavg").read_text().split()[:3], "redis_restarts": [], "rss": []}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"proxy did not start; see {work / 'proxy.log'}")
            time.sleep(0.2)
        workers = sorted(int(pid) for pid in subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                             text=True).stdout.split())
        with open(args.data / "holdout.jsonl") as lines:
            clean = [json.loads(line)["request"] for line in lines]
        clients = Clients(url, clean, args.clients, args.rate)
        for thread in clients.threads:
            thread.start()

        started = time.monotonic()
        total = args.minutes * 60
        restarts = [(total / 3, "shutdown"), (2 * total / 3, "sigkill")]
        next_sample = 0.0
        while (elapsed := time.monotonic() - started) < total:
            if elapsed >= next_sample:
                summary["rss"].append({"t": round(elapsed), **{str(pid): rss_mib(pid) for pid in workers}})
                next_sample += 30
            if restarts and elapsed >= restarts[0][0]:
                _, how = restarts.pop(0)
                store.shutdown() if how == "shutdown" else store.kill()
                time.sleep(args.down_seconds)
                store.start()
                summary["redis_restarts"].append({"t": round(elapsed), "how": how, "down_s": args.down_seconds})
                print(f"{elapsed:6.0f} s  redis {how}, back after {args.down_seconds:g} s", file=sys.stderr, flush=True)
            time.sleep(0.5)
        clients.stop.set()
        for thread in clients.threads:
            thread.join(15)
        summary["rss"].append({"t": round(time.monotonic() - started), **{str(pid): rss_mib(pid) for pid in workers}})

        answered = sum(n for key, n in clients.tally.items() if key.endswith(":200"))
        deadline = time.monotonic() + 30
        while (counted := store.counted()) != answered and time.monotonic() < deadline:
            time.sleep(0.5)
        after = sorted(int(pid) for pid in subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                           text=True).stdout.split())
        failed = {key: n for key, n in clients.tally.items()
                  if key.endswith(":no-answer") or key.split(":")[1].startswith("5")}
        health = requests.get(url + "/healthz", timeout=5).json()
        summary.update({
            "requests": sum(clients.tally.values()), "tally": dict(sorted(clients.tally.items())),
            "answered_200": answered, "counted_in_redis": counted, "failed": failed,
            "slowest_request_s": round(clients.slowest, 3), "workers_replaced": after != workers,
            "healthz": {key: health[key] for key in ("status", "reasons", "redis", "counters")},
            "load_after": Path("/proc/loadavg").read_text().split()[:3],
        })
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        store.shutdown()

    first, last = summary["rss"][0], summary["rss"][-1]
    print(json.dumps({key: value for key, value in summary.items() if key != "rss"}, indent=2))
    for pid in (key for key in first if key != "t"):
        print(f"worker {pid}: RSS {first[pid]} MiB at {first['t']} s -> {last[pid]} MiB at {last['t']} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    ok = not summary["failed"] and not summary["workers_replaced"] and summary["counted_in_redis"] == answered
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
