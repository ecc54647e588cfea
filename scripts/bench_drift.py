"""Benchmark drift detection: false alarms on long clean traffic, requests to quarantine, request-path cost.

    .venv/bin/python scripts/bench_drift.py --bundle bundles/default --data data/default [--clean 1000000]

Runs the real machinery (DriftWatch -> Counters -> its own redis-server -> AlarmMonitor) with
the default settings on a simulated clock: the clock moves 1/rate per request; every simulated
worker flushes and refreshes its alarms each flush interval (0.5 s), and at once when its drift
watch wakes it (recent values that look shifted), as the counters' flush thread does. Rates are
requests per simulated second, shared by two workers.

- clean: held-out requests resampled, never seen in training; counts alarms and reports how
  close the traffic came to one: the largest min(|z| / z_score, |effect| / effect_size) over
  every window judged (1.0 would raise an alarm), and how many of those windows both moved by
  the effect size and fit a partial rollout that counts (judged with the training error; a
  rollout to a few per cent fits almost any window, and matters only where the shift is large).
- switch: after 60 s of clean traffic one market's form sends weight in pounds (every shopper,
  or only those whose pounds stay inside the training range); how many of that market's
  requests are answered before its first quarantined one, at two traffic rates.
- rollout: the same, but only half of the market's requests come from the new form (an A/B
  test): each of them is in pounds with probability 0.5, the others stay in kilograms (every
  shopper of the market), and every request of the market after the switch is a shopper not
  seen before (a busy market, whose shoppers rarely return within the window); the alarm's
  detail and share.
- cost: guard check plus drift bookkeeping per request, in-process, one core.

Prints one JSON object; docs/benchmarks.md records the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from model.bundle import load_bundle
from model.evaluate import CORRUPTIONS, read_holdout
from proxy.drift.alarms import read_alarms
from proxy.drift.build import drift_thresholds
from proxy.drift.watch import (
    Cell,
    DriftWatch,
    assess,
    cells_from_profile,
    nested_windows,
)
from proxy.guard.checks import Guard
from proxy.settings import Settings
from proxy.shapes.request import PredictRequest
from proxy.store.counters import Counters, Series, make_redis_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from tests.harness.clock import Clock  # noqa: E402  (the harness the tests use too)
from tests.harness.drift import DriftWorker  # noqa: E402
from tests.harness.servers import start_redis  # noqa: E402

POUNDS_PER_KG = CORRUPTIONS["lbs"]
PREFIX = "bench"
SETTINGS = Settings.from_env({}, redis_prefix=PREFIX)
THRESHOLDS = drift_thresholds(SETTINGS)
USER_KEY = b"bench-drift-user-hash-key"
STEP = SETTINGS.redis.flush_interval


class Worker(DriftWorker):
    """One simulated gunicorn worker's drift parts, wired by build_drift as the runtime wires them
    (default settings, this benchmark's key prefix and user hash key)."""

    def __init__(self, client, profile: dict, clock: Clock):
        super().__init__(client, profile, clock, settings=SETTINGS, user_key=USER_KEY)
        self.woken_at = float("-inf")

    @property
    def alarms_seen(self) -> int:
        return max((len(alarms) for alarms in self.published), default=0)


class Closeness:
    """The same windows the monitors judge, kept in memory, to tell how near clean traffic came to an alarm."""

    def __init__(self, cells: list[Cell], series: Series):
        self.cells = cells
        self.series = series
        self.index = {(cell.feature, cell.segment): i for i, cell in enumerate(cells)}
        self.slots: dict[int, np.ndarray] = {}
        self.closest = 0.0
        self.largest_effect = 0.0
        self.largest_z = 0.0
        self.rollout_windows = 0

    def add(self, body: dict, segment_field: str, now: float) -> None:
        rows = self.slots.setdefault(self.series.slot(now), np.zeros((len(self.cells), 3)))
        for (feature, segment), i in self.index.items():
            value = body.get(feature)
            if segment == body.get(segment_field) and type(value) in (int, float):
                rows[i] += (1.0, value, value * value)

    def judge(self, now: float) -> None:
        current = self.series.slot(now)
        slots = range(current, current - SETTINGS.drift.window_seconds // SETTINGS.drift.slot_seconds, -1)
        self.slots = {slot: rows for slot, rows in self.slots.items() if slot in slots}
        empty = np.zeros((len(self.cells), 3))
        matrix = np.stack([self.slots.get(slot, empty) for slot in slots])
        for i, cell in enumerate(self.cells):
            for window in nested_windows(matrix[:, i]):
                if window.count >= THRESHOLDS.min_count:
                    shift = assess(window, cell, THRESHOLDS)
                    self.rollout_windows += shift.mixture is not None and abs(shift.effect) >= THRESHOLDS.effect_size
                    self.largest_z = max(self.largest_z, abs(shift.z))
                    self.largest_effect = max(self.largest_effect, abs(shift.effect))
                    self.closest = max(self.closest, min(abs(shift.z) / THRESHOLDS.z_score,
                                                         abs(shift.effect) / THRESHOLDS.effect_size))


def drive(workers: list[Worker], clock: Clock, bodies: Iterable[dict], rate: int,
          on_step: Callable[[float], None] = lambda now: None, on_request: Callable[[dict, tuple], None] = lambda b, a: None
          ) -> None:
    """The clock moves 1/rate per request; every worker ticks each flush interval, and a woken worker
    right after the request that woke it (at most every tenth of an interval, as the flusher allows)."""
    next_step = clock.now + STEP
    for number, body in enumerate(bodies, start=1):
        worker = workers[number % len(workers)]
        on_request(body, worker.watch.observe(body))
        clock.now += 1.0 / rate
        if worker.woken and clock.now - worker.woken_at >= STEP / 10:
            worker.woken_at = clock.now
            worker.early_ticks += 1
            worker.tick()
        if clock.now >= next_step:
            next_step += STEP
            for each in workers:
                each.tick()
            on_step(clock.now)


def clean_run(client, profile: dict, cells: list[Cell], series: Series, holdout: list[dict], count: int,
              rate: int) -> dict:
    client.flushall()
    clock = Clock()
    workers = [Worker(client, profile, clock) for _ in range(2)]
    closeness = Closeness(cells, series)
    rng = random.Random(1)
    quarantined = 0

    def on_request(body: dict, anomalies: tuple) -> None:
        nonlocal quarantined
        quarantined += bool(anomalies)
        closeness.add(body, profile["segment_field"], clock.now)

    started = time.perf_counter()
    drive(workers, clock, (rng.choice(holdout) for _ in range(count)), rate, closeness.judge, on_request)
    return {"requests": count, "rate_per_s": rate, "simulated_s": round(count / rate),
            "alarms": max(worker.alarms_seen for worker in workers), "quarantined_requests": quarantined,
            "early_flushes": sum(worker.early_ticks for worker in workers),
            "closest_to_alarm": round(closeness.closest, 3), "largest_abs_z": round(closeness.largest_z, 2),
            "largest_abs_effect_sd": round(closeness.largest_effect, 3),
            "large_windows_fitting_a_rollout": closeness.rollout_windows, "wall_s": round(time.perf_counter() - started, 1)}


def switch_run(client, profile: dict, cells: list[Cell], series: Series, holdout: list[dict], market: str,
               rate: int, inside_range: bool, rollout: float = 1.0, newcomers_only: bool = True) -> dict:
    """After 60 s of clean traffic, `market` sends weight in pounds: every request (`rollout` 1, the
    shoppers keep their ids), or a share `rollout` of its requests, the rest in kilograms, each
    request a new shopper (or, without `newcomers_only`, the held-out shoppers with their ids)."""
    client.flushall()
    clock = Clock()
    workers = [Worker(client, profile, clock) for _ in range(2)]
    heaviest = profile["fields"]["weight_kg"]["max"] / POUNDS_PER_KG
    shoppers = [body for body in holdout if body[profile["segment_field"]] == market
                and (body["weight_kg"] <= heaviest or not inside_range)]
    switched = [{**body, "weight_kg": round(body["weight_kg"] * POUNDS_PER_KG, 1)} for body in shoppers]
    market_shoppers = [body for body in holdout if body[profile["segment_field"]] == market]
    others = [body for body in holdout if body[profile["segment_field"]] != market]
    share = 1 - len(others) / len(holdout)
    rng = random.Random(2)
    clean = [rng.choice(holdout) for _ in range(60 * rate)]
    newcomers = itertools.count()

    def market_request() -> dict:
        if rollout >= 1.0:
            return rng.choice(switched)
        body = rng.choice(switched) if rng.random() < rollout else rng.choice(market_shoppers)
        return {**body, "user_id": f"newcomer-{next(newcomers)}"} if newcomers_only else body

    after = [market_request() if rng.random() < share else rng.choice(others) for _ in range(60 * rate)]
    state = {"sent": 0, "market_requests": 0, "detected_after": None, "quarantined_before_switch": 0,
             "others_quarantined": 0}

    def on_request(body: dict, anomalies: tuple) -> None:
        state["sent"] += 1
        if body[profile["segment_field"]] != market:
            state["others_quarantined"] += bool(anomalies)
        elif state["sent"] <= len(clean):
            state["quarantined_before_switch"] += bool(anomalies)
        elif state["detected_after"] is None:
            if anomalies:
                state["detected_after"] = state["market_requests"]
            state["market_requests"] += 1

    drive(workers, clock, clean + after, rate, on_request=on_request)
    alarms = {alarm.id: alarm for alarm in read_alarms(client, PREFIX)}
    weight = alarms.get(f"weight_kg:{market}")
    return {"market": market, "share": round(share, 3), "rate_per_s": rate, "inside_range": inside_range,
            "rollout": rollout, "newcomers_only": newcomers_only or rollout >= 1.0,
            "market_requests_before_quarantine": state["detected_after"],
            "quarantined_before_switch": state["quarantined_before_switch"],
            "other_markets_quarantined": state["others_quarantined"],
            "weight_alarm": weight.detail if weight is not None else None,
            "weight_alarm_share": getattr(weight, "share", None),
            "other_alarms": sorted(set(alarms) - {f"weight_kg:{market}"})}


def request_cost(bundle, holdout: list[dict], cells: list[Cell], series: Series, client) -> dict:
    """Per request, best of 5 passes over the held-out requests: the guard; the drift bookkeeping of
    a user not seen in the window (a fresh watch each pass: hash, admit, mark, sums); of a user seen
    already (hash and lookup only); and guard plus a new user's bookkeeping."""
    guard = Guard.from_bundle(bundle, SETTINGS.guard)
    counters = Counters(client, prefix=PREFIX)

    def fresh() -> DriftWatch:
        return DriftWatch(bundle.profile, cells, series, counters.add_many, thresholds=THRESHOLDS, wake=lambda: None,
                          user_key=USER_KEY)

    requests = [PredictRequest({k: v for k, v in body.items() if k != "history"}, body["history"], 10) for body in holdout]
    seen = fresh()
    for request in requests:
        seen.observe(request.fields)
    timings = {}
    for name, make, step in (
            ("guard_us", lambda: None, lambda watch, r: guard.check(r)),
            ("drift_new_user_us", fresh, lambda watch, r: watch.observe(r.fields)),
            ("drift_repeat_us", lambda: seen, lambda watch, r: watch.observe(r.fields)),
            ("guard_and_drift_us", fresh, lambda watch, r: guard.check(r) + list(watch.observe(r.fields)))):
        best = float("inf")
        for _ in range(5):
            watch = make()
            started = time.perf_counter()
            for request in requests:
                step(watch, request)
            best = min(best, (time.perf_counter() - started) / len(requests))
        timings[name] = round(best * 1e6, 2)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--clean", type=int, default=1_000_000, help="clean requests (default 1,000,000)")
    parser.add_argument("--markets", default="DE,US,JP", help="markets to switch to pounds, one at a time")
    parser.add_argument("--rollout-markets", default="JP,DE,US",
                        help="markets where half of the requests switch to pounds, one at a time")
    parser.add_argument("--returning", action="store_true",
                        help="rollout: the held-out shoppers keep their ids (each counts at most 3 times per window)")
    parser.add_argument("--only", choices=["cost", "clean", "switch", "rollout"], action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    holdout, _ = read_holdout(args.data)
    cells = cells_from_profile(bundle.profile)
    series = Series("d", SETTINGS.drift.slot_seconds, SETTINGS.drift.window_seconds + 60)
    result: dict = {"bundle": bundle.model_version, "settings": {
        "flush_interval": STEP, "drift_slot_seconds": SETTINGS.drift.slot_seconds,
        "drift_window_seconds": SETTINGS.drift.window_seconds, "alarm_z_score": THRESHOLDS.z_score,
        "alarm_effect_size": THRESHOLDS.effect_size, "alarm_min_count": THRESHOLDS.min_count}}
    with tempfile.TemporaryDirectory(prefix="recguard-bench-") as scratch:
        server = start_redis(Path(scratch))
        try:
            client = make_redis_client(server.url, timeout=5.0)
            parts = set(args.only or ["cost", "clean", "switch", "rollout"])
            if "cost" in parts:
                result["cost"] = request_cost(bundle, holdout, cells, series, client)
                print(f"bench_drift: cost {result['cost']}", file=sys.stderr)
            if "clean" in parts:
                result["clean"] = clean_run(client, bundle.profile, cells, series, holdout, args.clean, rate=400)
                print(f"bench_drift: clean {result['clean']}", file=sys.stderr)
            for part, markets, rollout in (("switch", args.markets, 1.0), ("rollout", args.rollout_markets, 0.5)):
                if part not in parts:
                    continue
                result[part] = []
                for market in markets.split(","):
                    for rate in (400, 2000):
                        for inside in (False, True):
                            run = switch_run(client, bundle.profile, cells, series, holdout, market, rate, inside,
                                             rollout, newcomers_only=not args.returning)
                            print(f"bench_drift: {part} {run}", file=sys.stderr)
                            result[part].append(run)
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
