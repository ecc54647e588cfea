"""The quality alarm on replayed feedback: no alarm on clean replays, and how much evidence a silent change needs.

    .venv/bin/python scripts/bench_quality.py [--bundle bundles/default --data data/default]
        [--replays 20] [--per-minute 100] [--holdback 0.05] [--control-per-minute 3000] [--json out.json]

The held-out shoppers are served by the bundle's own scorer (the serving code, in-process) and
each one "clicks" their real next item when it was served, as the replay's site does. Answers are
cut into minutes of --per-minute answers and written as the quality buckets Redis would hold;
`QualityMonitor.judge` (the alarm every worker runs) then looks at them after each minute, with
the default thresholds, against the offline figure (the scorer's hit rate on the same holdout)
and against a holdback of --holdback of the users served by the popularity fallback. Scenarios:

    clean            --replays shuffles of the holdout, each a different order and holdback draw:
                     every alarm is a false alarm
    history_dropped  the site stops sending the history (no input check can see it): answers and
                     feedback events until the offline alarm fires, per replay
    unhelpful        the model answers with the least popular items (a model that stopped helping):
                     answers until an alarm fires, per replay
    unhelpful_holdback_only  the same with the offline test off (RECGUARD_QUALITY_OFFLINE=0, a site
                     that posts only clicks on recommendations): the holdback comparison alone, at the
                     default holdback of 1 % and --control-per-minute answers a minute (it rests on the
                     control group's hits within the 60-minute window, so it needs traffic: 3,000 a
                     minute is 50 requests a second); a quarter of --replays, up to 40 passes each
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.bundle import load_bundle  # noqa: E402
from model.evaluate import read_holdout  # noqa: E402
from model.fallback import PopularityFallback  # noqa: E402
from model.scorer import Scorer  # noqa: E402
from proxy.quality.alarm import QualityMonitor, QualityThresholds  # noqa: E402
from proxy.quality.feedback import group_field  # noqa: E402

K = 10
VERSION = "v"


def replay(requests: list[dict[str, Any]], targets: list[str], order: list[int], answer: Callable, popular: Callable,
           holdback: set[int], per_minute: int, monitor: QualityMonitor, segment_field: str) -> dict[str, Any]:
    """Serve `order`, one bucket per `per_minute` answers, the answers numbered in `holdback` by the
    fallback; the first minute an alarm shows, or None."""
    buckets: list[tuple[int, dict[str, str]]] = []
    current: dict[str, float] = {}
    served = hits = 0
    for count, index in enumerate(order, start=1):
        fields = {key: value for key, value in requests[index].items() if key != "history"}
        source = "holdback" if count in holdback else "model"
        items = (popular if source == "holdback" else answer)(fields, requests[index].get("history", []))
        segment = str(fields.get(segment_field))
        hit = targets[index] in items
        for kind, amount in (("imp", 1), ("ans", int(hit))):
            key = group_field(kind, VERSION, source, segment)
            current[key] = current.get(key, 0) + amount
        served += source == "model"
        hits += hit and source == "model"
        if count % per_minute == 0 or count == len(order):
            buckets.append((len(buckets), {key: str(value) for key, value in current.items()}))
            current = {}
            alarms = monitor.judge(buckets[-monitor.thresholds.window_minutes:], {})
            if alarms:
                return {"alarm": [a.to_json() for a in alarms], "answers": count, "model_answers": served,
                        "feedback_events": hits}
    return {"alarm": None, "answers": len(order), "model_answers": served, "feedback_events": hits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles/default")
    parser.add_argument("--data", type=Path, default=ROOT / "data/default")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--per-minute", type=int, default=100)
    parser.add_argument("--holdback", type=float, default=0.05)
    parser.add_argument("--control-per-minute", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    bundle = load_bundle(args.bundle)
    scorer, fallback = Scorer.from_bundle(bundle), PopularityFallback(bundle.popularity)
    requests, targets = read_holdout(args.data)
    segment_field = bundle.profile["segment_field"]

    def model(fields, history):
        return scorer.recommend(fields, history, K).items

    def popular(fields, history):
        return fallback.recommend(fields, history, K).items

    least_popular = [item for item, _ in reversed(fallback.global_ranking)][:K]

    def unhelpful(fields, history):
        return least_popular

    def no_history(fields, history):
        return scorer.recommend(fields, [], K).items

    offline = sum(targets[i] in model({k: v for k, v in r.items() if k != "history"}, r["history"])
                  for i, r in enumerate(requests)) / len(requests)
    thresholds = QualityThresholds()
    report: dict[str, Any] = {"offline_hit_rate@10": round(offline, 4), "holdout": len(requests),
                              "per_minute": args.per_minute, "holdback": args.holdback,
                              "thresholds": vars(thresholds), "scenarios": {}}
    print(f"offline hit_rate@10 {offline:.4f} on {len(requests)} held-out shoppers", file=sys.stderr)
    # (name, model, offline test on, passes over the holdout): the holdback comparison rests on the
    # control group's hits alone, a few per hundred answers, so it gets more passes
    plain = (args.per_minute, args.holdback)
    scenarios = (("clean", model, True, 1, args.replays, plain),
                 ("history_dropped", no_history, True, 5, args.replays, plain),
                 ("unhelpful", unhelpful, True, 5, args.replays, plain),
                 ("unhelpful_holdback_only", unhelpful, False, 40, max(1, args.replays // 4),
                  (args.control_per_minute, 0.01)))
    for name, answer, use_offline, passes, replays, (per_minute, share) in scenarios:
        runs = []
        for seed in range(replays):
            rng = random.Random(seed)
            order = rng.sample(range(len(requests)), len(requests)) * passes
            # by answer, not by shopper: each pass of the holdout stands for new users
            holdback = {count for count in range(1, len(order) + 1) if rng.random() < share}
            monitor = QualityMonitor(None, "bench", VERSION, offline, thresholds, use_offline=use_offline)
            runs.append(replay(requests, targets, order, answer, popular, holdback, per_minute, monitor,
                               segment_field))
        alarmed = [run for run in runs if run["alarm"]]
        summary = {"replays": len(runs), "alarmed": len(alarmed), "per_minute": per_minute, "holdback": share,
                   "baselines": sorted({a["baseline"] for run in alarmed for a in run["alarm"]})}
        if alarmed:
            summary["answers_to_alarm_median"] = statistics.median(run["answers"] for run in alarmed)
            summary["answers_to_alarm_max"] = max(run["answers"] for run in alarmed)
            summary["feedback_events_to_alarm_median"] = statistics.median(run["feedback_events"] for run in alarmed)
        report["scenarios"][name] = summary
        print(f"{name}: {summary}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
