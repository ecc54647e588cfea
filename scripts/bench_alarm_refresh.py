"""CPU time of one drift-alarm refresh on the flush thread: what each worker spends, holding the
GIL, every flush interval (0.5 s) judging every cell's windows.

    .venv/bin/python scripts/bench_alarm_refresh.py [--bundle bundles/default --data data/default] [--refreshes 300]

Feeds held-out requests to a real DriftWatch, flushes them through real Counters into a
redis-server of its own (free port), and times AlarmMonitor.refresh with time.thread_time (the
CPU of the refreshing thread only: the wait on Redis, which releases the GIL, is left out).
Before each refresh 50 more requests are observed and flushed, as traffic does between two
flushes. Prints the median and p90 in milliseconds; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.servers import start_redis  # noqa: E402  (the harness the tests use too)


def main(argv: list[str] | None = None) -> int:
    """Time the refreshes and print the figures."""
    from model.bundle import load_bundle
    from proxy.drift.build import build_drift
    from proxy.drift.watch import cells_from_profile
    from proxy.settings import Settings
    from proxy.store.counters import Counters

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--refreshes", type=int, default=300)
    args = parser.parse_args(argv)
    # 50 requests repeated are no sample of their markets: alarms are raised, and not the subject here
    logging.getLogger("recguard").setLevel(logging.ERROR)

    server = start_redis(Path(tempfile.mkdtemp(prefix="recguard-refresh-")))
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        bundle = load_bundle(args.bundle)
        settings = Settings.from_env({}, redis_prefix="bench")
        counters = Counters(client, prefix="bench")
        # wired as the runtime wires it
        parts = build_drift(bundle.profile, settings, counters, client, wake=lambda: None)
        watch, monitor, cells = parts.watch, parts.monitor, cells_from_profile(bundle.profile)
        with open(args.data / "holdout.jsonl") as lines:
            requests = [json.loads(line)["request"] for line in lines]
        for request in requests:
            watch.observe(request)
        counters.flush()
        monitor.refresh()  # reads every slot of the window once; later refreshes read the open ones
        cpu = []
        for _ in range(args.refreshes):
            for request in requests[:50]:
                watch.observe(request)
            counters.flush()
            started = time.thread_time()
            monitor.refresh()
            cpu.append(time.thread_time() - started)
    finally:
        server.stop()
    print(f"{len(cells)} cells: refresh CPU median {statistics.median(cpu) * 1e3:.2f} ms, "
          f"p90 {np.percentile(cpu, 90) * 1e3:.2f} ms over {args.refreshes} refreshes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
