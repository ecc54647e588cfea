"""What feedback costs /predict: wrk on /predict alone, and beside a paced stream of POST /feedback, interleaved.

    .venv/bin/python scripts/bench_feedback.py [--bundle bundles/default --data data/default]
        [--duration 10] [--rounds 3] [--connections 16] [--events-per-second 1000] [--batch 100]
        [--tickets 100000] [--hold-connection] [--json out.json]

Starts a redis-server of its own and `recguard serve` (2 sync workers, feedback on, holdback 1 %),
signs --tickets tickets with the proxy's secret (as its answers carry them), then alternates two runs
of --duration seconds:

    alone     wrk, --connections on /predict (the held-out requests)
    feedback  the same, and at the same time a poster sending feedback (`{ticket, item, event}`, half
              on a served item, half not; --batch events per POST as `{"events": [...]}`) at
              --events-per-second, as a site's back end would: it connects when it has a body and
              sends it whole

and reports /predict's throughput and p99 in each, the ratio, the feedback events per second reached
and the proxy's CPU seconds per /predict request (from /proc). The load generators share the two
cores with the proxy, as a site's own front end would not: the ratio is an upper bound on the cost.

--hold-connection paces the feedback as `wrk` with a delay does: it connects right after each answer
and sends the next body only when its pause is over, so a sync worker sits idle on the open
connection for the whole pause (a slow client; docs/benchmarks.md shows what that costs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

sys.path.insert(0, str(ROOT))
from bench_proxy import WRK_SCRIPT, Server, load_average, run_wrk, write_mixes  # noqa: E402

from tests.harness.servers import free_port, start_redis  # noqa: E402  (the harness the tests use too)

SECRET = "bench-secret"
def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def feedback_bodies(bundle_dir: Path, secret: str, out: Path, count: int, batch: int) -> Path:
    """`count` feedback events on tickets signed with the proxy's secret, as its answers carry them
    (signed here: asking the proxy for 200,000 answers first would take minutes); every other
    event is on a served item."""
    from model.bundle import load_bundle
    from proxy.quality.tickets import Ticket, TicketSigner

    bundle = load_bundle(bundle_dir)
    signer, now = TicketSigner(secret, 86_400), int(time.time())
    catalogue, segments = bundle.catalogue, ("DE", "US", "GB", "FR")
    lines_out = []
    for i in range(count):
        served = tuple((i * 7 + j * 131) % len(catalogue) for j in range(10))
        token = signer.issue(Ticket(f"bench-{i}", now, bundle.model_version, "model", segments[i % 4], served))
        item = catalogue[served[i % 10]] if i % 2 == 0 else "item_not_served"
        lines_out.append({"ticket": token, "item": item, "event": "click"})
    if batch > 1:
        lines_out = [{"events": lines_out[i:i + batch]} for i in range(0, len(lines_out), batch)]
    lines_out = [json.dumps(body) for body in lines_out]
    path = out / "feedback.jsonl"
    path.write_text("\n".join(lines_out) + "\n")
    return path


class FeedbackPoster(threading.Thread):
    """Posts the bodies of a feedback file to /feedback at a steady rate, on a connection of its own
    per POST (a sync worker closes each one after its answer)."""

    def __init__(self, port: int, bodies: list[bytes], posts_per_second: float, seconds: float, start_at: int,
                 hold_connection: bool):
        super().__init__(daemon=True)
        self.port, self.bodies, self.seconds = port, bodies, seconds
        self.interval = 1.0 / posts_per_second
        self.index = start_at
        self.hold_connection = hold_connection
        self.posted = self.errors = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        started = time.monotonic()
        next_post = started
        connection = None
        while time.monotonic() - started < self.seconds:
            if self.hold_connection and connection is None:
                connection = self._connect()  # open during the pause, as wrk's delay() does
            pause = next_post - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            next_post += self.interval
            body = self.bodies[self.index % len(self.bodies)]
            self.index += 1
            sent = time.monotonic()
            try:
                connection = connection or self._connect()
                connection.request("POST", "/feedback", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                self.errors += answer.status != 202
            except OSError:
                self.errors += 1
            finally:
                if connection is not None:
                    connection.close()
                connection = None
            self.latencies.append(time.monotonic() - sent)
            self.posted += 1
        self.elapsed = time.monotonic() - started

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.connect()
        return connection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--events-per-second", type=float, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="events per POST /feedback (default 100)")
    parser.add_argument("--hold-connection", action="store_true",
                        help="connect before each pause, as wrk with a delay does (a slow client)")
    parser.add_argument("--tickets", type=int, default=100_000,
                        help="answers whose tickets the feedback stream posts (enough that none repeats)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="recguard-bench-feedback-") as scratch:
        work = Path(scratch)
        redis_server = start_redis(work)
        redis_url = redis_server.url
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
        env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "RECGUARD_LOG_LEVEL": "WARNING",
                    "RECGUARD_FEEDBACK_SECRET": SECRET, "RECGUARD_WORKERS": "2"})
        server = Server("recguard", [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(args.bundle),
                                     "--bind", f"127.0.0.1:{port}", "--redis", redis_url], env, port, work / "proxy.log")
        try:
            server.wait_ready()
            mixes = write_mixes(args.data, work, 2000)
            predict_script = work / "predict.lua"
            predict_script.write_text(WRK_SCRIPT)
            bodies = feedback_bodies(args.bundle, SECRET, work, args.tickets, args.batch).read_bytes().splitlines()
            pids = server.worker_pids()
            runs: dict[str, list[dict[str, Any]]] = {"alone": [], "feedback": []}
            for round_number in range(args.rounds):
                for mode in ("alone", "feedback"):
                    poster = None
                    if mode == "feedback":
                        # each round posts tickets of its own: a repeat would only be de-duplicated
                        poster = FeedbackPoster(port, bodies, args.events_per_second / args.batch, args.duration,
                                                round_number * len(bodies) // args.rounds, args.hold_connection)
                        poster.start()
                    cpu_before = cpu_seconds(pids)
                    result = run_wrk(server.url, mixes["clean"], predict_script, args.connections, args.duration)
                    result["cpu_s_per_request"] = (cpu_seconds(pids) - cpu_before) / max(result["requests"], 1)
                    if poster is not None:
                        poster.join()
                        result["feedback_rps"] = poster.posted * args.batch / poster.elapsed
                        result["feedback_p99_us"] = 1e6 * sorted(poster.latencies)[int(0.99 * (len(poster.latencies) - 1))]
                        result["feedback_errors"] = poster.errors
                    runs[mode].append(result)
                    print(f"round {round_number + 1} {mode}: {result['rps']:.0f} req/s, p99 {result['p99_us'] / 1000:.1f} ms"
                          + (f", feedback {result['feedback_rps']:.0f} events/s" if mode == "feedback" else ""),
                          file=sys.stderr, flush=True)
        finally:
            server.stop()
            redis_server.stop()

    alone = statistics.median(run["rps"] for run in runs["alone"])
    beside = statistics.median(run["rps"] for run in runs["feedback"])
    report = {
        "load_average": load_average(), "connections": args.connections, "batch": args.batch,
        "hold_connection": args.hold_connection, "rounds": args.rounds,
        "predict_rps_alone": round(alone, 1), "predict_rps_with_feedback": round(beside, 1),
        "ratio": round(beside / alone, 3),
        "ratios_per_round": [round(b["rps"] / a["rps"], 3) for a, b in zip(runs["alone"], runs["feedback"])],
        "p99_ms_alone": round(statistics.median(r["p99_us"] for r in runs["alone"]) / 1000, 2),
        "p99_ms_with_feedback": round(statistics.median(r["p99_us"] for r in runs["feedback"]) / 1000, 2),
        "feedback_events_per_second": round(statistics.median(r["feedback_rps"] for r in runs["feedback"]), 1),
        "cpu_ms_per_predict_alone": round(1000 * statistics.median(r["cpu_s_per_request"] for r in runs["alone"]), 3),
        "cpu_ms_per_predict_with_feedback": round(
            1000 * statistics.median(r["cpu_s_per_request"] for r in runs["feedback"]), 3),
        "errors": [r["errors"] for r in runs["alone"] + runs["feedback"]]
                  + [r["feedback_errors"] for r in runs["feedback"]],
    }
    print(json.dumps({key: value for key, value in report.items() if key != "errors"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
