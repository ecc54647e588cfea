"""Per-request cost of each stage of the guarded hot path, in-process on one thread.

    .venv/bin/python scripts/bench_stages.py [--bundle bundles/default --data data/default]
        [--requests 2000] [--repeat 5] [--redis URL] [--json out.json]

Stages, timed over the same fixed mix of held-out requests (clean, and the all-anomalous mix of
scripts/bench_proxy.py), median of --repeat passes, µs per request. By default they run in
sequence, request by request, as on the request path (each stage finds the caches as the previous
one left them: the scorer's item matrices evict the guard's tables); --alone times each in a
loop of its own, the warm-cache floor:

    parse      RecguardShape.parse: bytes -> the request's row (JSON decode, envelope checks)
    guard      Guard.check: the per-request checks (the "guard's own cost" of the target < 20 µs)
    drift      DriftWatch.observe: feeding the drift windows
    score      the bundle's Scorer.recommend (the model itself)
    fallback   the popularity fallback's recommend
    counters   Counters.record_request with the request's anomalies (memory only)
    encode     the JSON answer (proxy/json_codec.py, as the answer path writes it); encode_stdlib the
               same with json.dumps, as it was written before
    decode     the JSON body alone (proxy/json_codec.py); decode_stdlib the standard library's path
    ticket     TicketDesk.stamp: count the impression and sign the answer's feedback ticket
    pool_hop   submit + result of a no-op on a one-thread pool: what running the model on a pool
               thread to enforce its budget adds to each request, on an idle machine
    service    PredictionService.answer of a parsed /predict body, guarded, minus the same call with guard=False
    flask      a whole POST /predict through the Flask test client, guarded and --no-guard

bench_proxy.py measures the same over real gunicorn and HTTP; this one splits the total so a
regression can be pinned to a stage. It needs a Redis for the counters (a redis-server of its own
on a free port unless --redis is given); nothing is written there but this run's counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_proxy import anomalous, load_average, per_request_us  # noqa: E402

from tests.harness.servers import start_redis  # noqa: E402  (the harness the tests use too)


def measure(bundle_dir: Path, data: Path, redis_url: str, size: int, repeat: int,
            alone: bool = False) -> dict[str, dict[str, float]]:
    """Every stage's µs per request for the clean and the anomalous mix."""
    from model.bundle import load_bundle
    from proxy import json_codec
    from proxy.http.app import create_app
    from proxy.settings import Settings
    from proxy.shapes.recguard import RecguardShape
    from proxy.shapes.request import _decode_exactly, decode_json

    with open(data / "holdout.jsonl") as lines:
        clean = [json.loads(line)["request"] for line, _ in zip(lines, range(size))]
    mixes = {"clean": clean, "anomalous": [anomalous(body, i) for i, body in enumerate(clean)]}

    bundle = load_bundle(bundle_dir)
    guarded_app = create_app(Settings.from_env({}, bundle=bundle_dir, redis_url=redis_url,
                                               redis_prefix=f"benchstages{os.getpid()}"), bundle)
    bare_app = create_app(Settings.from_env({}, bundle=bundle_dir, guard=False), bundle)
    loaded = guarded_app.extensions["recguard"].loaded
    guarded = loaded.service
    bare = bare_app.extensions["recguard"].loaded.service
    shape = RecguardShape(guarded_app.extensions["recguard"].settings.limits)
    counters = guarded_app.extensions["recguard"].counters
    desk = ticket_desk(guarded_app.extensions["recguard"], bundle)
    pool = ThreadPoolExecutor(max_workers=1)
    figures: dict[str, dict[str, float]] = {}
    try:
        for mix, bodies in mixes.items():
            raw = [json.dumps(body, separators=(",", ":")).encode() for body in bodies]
            parsed = [shape.parse(body) for body in raw]
            requests = [one.rows[0] for one in parsed]
            checked = [(request, loaded.guard.check(request)) for request in requests]
            answers = [guarded.answer(one).rows[0] for one in parsed]
            bodies_out = [{"items": a.items, "scores": a.scores, "source": a.source, "model_version": "v",
                           "anomalies": [anomaly.to_json() for anomaly in a.anomalies]} for a in answers]
            stages: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]] = {
                "parse": (shape.parse, raw),
                "guard": (loaded.guard.check, requests),
                "score": (lambda r: guarded.model.model.recommend(r.fields, r.history, r.k), requests),
                "fallback": (lambda r: guarded.fallback.recommend(r.fields, r.history, r.k), requests),
                "counters": (lambda ra: counters.record_request(
                    "model", [(anomaly.field, anomaly.kind) for anomaly in ra[1]]), checked),
                "encode": (json_codec.dumps, bodies_out),
                "encode_stdlib": (lambda body: json.dumps(body, allow_nan=False), bodies_out),
                "decode": (decode_json, raw),
                "decode_stdlib": (_decode_exactly, raw),
                "ticket": (lambda ra: desk.stamp(ra[1].source, ra[1].items, ra[0].fields, "0123456789abcdef"),
                           list(zip(requests, answers))),
                "pool_hop": (lambda _: pool.submit(int).result(), requests),
                "service_guarded": (guarded.answer, parsed),
                "service_unguarded": (bare.answer, parsed),
            }
            if loaded.drift is not None:
                stages["drift"] = (lambda r: loaded.drift.observe(r.fields), requests)
            figures[mix] = per_request_us(stages, repeat, alone)
            figures[mix]["service_guard_total"] = round(figures[mix]["service_guarded"]
                                                        - figures[mix]["service_unguarded"], 2)
            # the whole request through werkzeug's test client (its environ building included): fewer
            # inputs, it is ten times slower than everything above
            clients = {name: app.test_client() for name, app in (("flask_guarded", guarded_app),
                                                                   ("flask_unguarded", bare_app))}
            figures[mix].update(per_request_us(
                {name: (lambda body, c=client: c.post("/predict", data=body, content_type="application/json"),
                        raw[: max(200, len(raw) // 4)]) for name, client in clients.items()}, repeat))
            counters.flush()
    finally:
        pool.shutdown()
        guarded_app.extensions["recguard"].close()
        bare_app.extensions["recguard"].close()
    return figures


def ticket_desk(runtime: Any, bundle: Any) -> Any:
    """A ticket desk over the guarded app's counters, as `RECGUARD_FEEDBACK_SECRET` would build it."""
    from proxy.quality.desk import TicketDesk
    from proxy.quality.feedback import FeedbackLedger
    from proxy.quality.tickets import TicketSigner

    ledger = FeedbackLedger(runtime.counters, runtime.redis_client, prefix=runtime.settings.redis.prefix,
                            window_seconds=86_400, ttl_seconds=3600)
    profile = bundle.profile
    segments = profile["fields"][profile["segment_field"]].get("domain") or {}
    return TicketDesk(TicketSigner("bench", 86_400), ledger, bundle.model_version,
                      bundle.catalogue, profile["segment_field"], list(segments))


def main(argv: list[str] | None = None) -> int:
    """Run the stage benchmark and print one table (µs per request, per mix)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis", help="Redis URL (default: a redis-server of our own on a free port)")
    parser.add_argument("--alone", action="store_true",
                        help="time each stage in a loop of its own (warm caches) instead of in sequence")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # the anomalous mix raises drift alarms (pounds, a new market): expected, and not the subject here
    logging.getLogger("recguard").setLevel(logging.ERROR)

    server = None
    redis_url = args.redis
    if redis_url is None:
        server = start_redis(Path(tempfile.mkdtemp(prefix="recguard-stages-")))
        redis_url = server.url
    try:
        load_before = load_average()
        figures = measure(args.bundle, args.data, redis_url, args.requests, args.repeat, args.alone)
    finally:
        if server is not None:
            server.stop()
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "alone": args.alone,
              "load_before": load_before,
              "load_after": load_average(), "us_per_request": figures}
    names = list(figures["clean"])
    mode = "each stage alone" if args.alone else "stages in sequence"
    print(f"µs per request, one thread, {mode} (load {load_before} -> {report['load_after']})")
    print(f"{'stage':<20} {'clean':>9} {'anomalous':>9}")
    for name in names:
        print(f"{name:<20} {figures['clean'][name]:>9.2f} {figures['anomalous'].get(name, float('nan')):>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
