"""Replay a website redesign through a real recguard proxy and measure what it saves.

    .venv/bin/python scripts/replay_redesign.py --bundle bundles/default --data data/default --out out/replay

Starts its own redis-server on a free port and `recguard serve` (real gunicorn) on another,
then sends the same held-out requests over HTTP in every phase, each a state of the site (so a
difference between two phases is the change, not a different sample of shoppers):

    baseline       the form the model was trained on
    history_dropped the new site stops sending the history: no field check can see it, the
                   quality alarm has to
    email_renamed  `email` sent as `user_email`
    name_merged    `first_name` + `last_name` sent as one `name`
    weight_lbs     the --lbs-markets send weight in pounds
    new_market     a share of the traffic comes from markets the model never saw
    all_changes    all of the above at once

Per phase: hit_rate@10 of what the site would have shown without recguard (the bundle's model
fed the request as sent, through the naive preprocessing `recguard serve --no-guard` applies,
computed in this process), of the proxy's answers, and of the popularity fallback alone; the
share of answers from the fallback; how many of the phase's requests were answered before the
first drift alarm (in /healthz, or on a quarantined answer); the anomalies reported, by kind. Alarms
still active when a phase starts are cleared with the admin token, so a phase is never credited with
(or quarantined by) the previous phase's alarm.

Feedback: every shopper whose real next item was among the answer's clicks it (POST /feedback with
the answer's ticket), so each phase also has the live hit rate of the model's answers as /quality
counts it, beside the same answers' hit rate computed here (they must agree: same requests, same
model), and how many feedback events the phase had posted when the first quality alarm showed.

Writes OUT/report.json, OUT/report.png and prints a table. The proxy runs with its default
settings (counters flushed every 0.5 s, 2 s drift slots) but for two: feedback on (a random
secret) and the holdback off: 1 % of a phase's 2,000 shoppers is 20 answers, too few to compare
with, and it would make the proxy's answers differ from the model's in the clean phases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import requests

from model.bundle import load_bundle
from model.evaluate import CORRUPTIONS, read_holdout
from model.fallback import PopularityFallback
from model.scorer import Scorer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from tests.harness.servers import free_port, start_redis  # noqa: E402  (the harness the tests use too)

K = 10
POUNDS_PER_KG = CORRUPTIONS["lbs"]
QUARANTINE = "drift_quarantine"
DRIFT, QUALITY = "drift", "quality"


@dataclass(frozen=True)
class Phase:
    """One state of the site: what it does to a signup form before sending it."""

    name: str
    change: Callable[[dict[str, Any], random.Random], dict[str, Any]]


def redesign(lbs_markets: frozenset[str], new_markets: list[str], new_market_share: float) -> list[Phase]:
    """The six phases of the replay, in order."""
    def email_renamed(body: dict, rng: random.Random) -> dict:
        body = dict(body)
        body["user_email"] = body.pop("email")
        return body

    def name_merged(body: dict, rng: random.Random) -> dict:
        body = dict(body)
        body["name"] = f"{body.pop('first_name')} {body.pop('last_name')}"
        return body

    def weight_lbs(body: dict, rng: random.Random) -> dict:
        if body["country"] not in lbs_markets:
            return body
        return {**body, "weight_kg": round(body["weight_kg"] * POUNDS_PER_KG, 1)}

    def new_market(body: dict, rng: random.Random) -> dict:
        return {**body, "country": rng.choice(new_markets)} if rng.random() < new_market_share else body

    def all_changes(body: dict, rng: random.Random) -> dict:
        return new_market(weight_lbs(name_merged(email_renamed(body, rng), rng), rng), rng)

    def history_dropped(body: dict, rng: random.Random) -> dict:
        return {key: value for key, value in body.items() if key != "history"}

    # the silent change comes right after the baseline: the quality test restarts a minute after a
    # hand clear, and a replayed phase lasts seconds, so it must not follow a phase with an alarm
    return [Phase("baseline", lambda body, rng: body), Phase("history_dropped", history_dropped),
            Phase("email_renamed", email_renamed),
            Phase("name_merged", name_merged), Phase("weight_lbs", weight_lbs), Phase("new_market", new_market),
            Phase("all_changes", all_changes)]


@dataclass
class PhaseResult:
    """What one phase measured."""

    name: str
    requests: int = 0
    unguarded_hits: int = 0
    guarded_hits: int = 0
    fallback_hits: int = 0
    fallback_answers: int = 0
    detection: int | None = None
    feedback: int = 0
    """Feedback events posted (one per answer that served the shopper's next item)."""
    model_answers: int = 0
    model_hits: int = 0
    """Answers the model gave, and those that served the next item, as this script saw them."""
    live: dict[str, int] | None = None
    """The phase's model impressions and answers with a hit, as /quality counted them."""
    quality_detection: int | None = None
    """Feedback events posted in the phase when the first quality alarm showed."""
    anomalies: Counter = field(default_factory=Counter)
    market_requests: Counter = field(default_factory=Counter)
    market_detection: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The phase as report.json has it."""
        return {
            "name": self.name,
            "unguarded_hit_rate@10": round(self.unguarded_hits / self.requests, 4),
            "guarded_hit_rate@10": round(self.guarded_hits / self.requests, 4),
            "fallback_hit_rate@10": round(self.fallback_hits / self.requests, 4),
            "fallback_rate": round(self.fallback_answers / self.requests, 4),
            "requests_to_detection": self.detection,
            "anomalies": dict(self.anomalies.most_common()),
            "feedback_events": self.feedback,
            "model_answer_hit_rate@10": _rate(self.model_hits, self.model_answers),
            "live_model_hit_rate@10": _rate(self.live["answers_hit"], self.live["impressions"]) if self.live else None,
            "feedback_to_quality_alarm": self.quality_detection,
        }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@dataclass
class Timeline:
    """Per request, in replay order: phase index, hits of the three answers, whether the fallback answered."""

    phase: list[int] = field(default_factory=list)
    unguarded: list[bool] = field(default_factory=list)
    guarded: list[bool] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)
    fallback_answer: list[bool] = field(default_factory=list)


def start_proxy(bundle: Path, redis_url: str, workers: int, log: Path, admin_token: str,
                alarm_min_users: int | None = None) -> tuple[subprocess.Popen, str]:
    """`recguard serve` with its default settings, as `make run` starts it, and an admin token."""
    port = free_port()
    command = [sys.executable, "-m", "proxy.cli.main", "serve", "--bundle", str(bundle), "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--redis", redis_url]
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECGUARD_")}
    env.update({"RECGUARD_ADMIN_TOKEN": admin_token, "RECGUARD_FEEDBACK_SECRET": secrets.token_hex(16),
                "RECGUARD_HOLDBACK": "0"})
    if alarm_min_users is not None:
        env["RECGUARD_ALARM_MIN_USERS"] = str(alarm_min_users)
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(url), f"the proxy did not become ready (see {log})", process, timeout=60)
    return process, url


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_until(condition: Callable[[], bool], message: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"replay: {message}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def active_alarms(session: requests.Session, url: str) -> list[dict[str, Any]]:
    """The alarms (drift and quality) /healthz shows now."""
    return session.get(url + "/healthz", timeout=10).json().get("alarms") or []


def model_counts(session: requests.Session, url: str, since: str) -> dict[str, int]:
    """The model's impressions and answers with a hit since `since`, as /quality counts them."""
    groups = session.get(url + "/quality", params={"since": since, "by": "source"}, timeout=10).json()["groups"]
    model = next((group for group in groups if group["source"] == "model"), {})
    return {"impressions": model.get("impressions", 0), "answers_hit": model.get("answers_hit", 0),
            "all_impressions": sum(group["impressions"] for group in groups)}


def settled_counts(session: requests.Session, url: str, since: str, answers: int, model_hits: int) -> dict[str, int]:
    """/quality's counts once every answer and feedback event sent so far is in them (a few flushes)."""
    deadline = time.monotonic() + 20
    while True:
        counts = model_counts(session, url, since)
        if (counts["all_impressions"] >= answers and counts["answers_hit"] >= model_hits) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def clear_alarms(session: requests.Session, url: str, admin_token: str) -> None:
    """Clear every active alarm by hand: the next phase starts with none."""
    for alarm in active_alarms(session, url):
        answer = session.post(f"{url}/alarms/{alarm['id']}/clear", headers={"Authorization": f"Bearer {admin_token}"},
                              timeout=10)
        if answer.status_code != 404:  # 404: it cleared itself meanwhile
            answer.raise_for_status()
    # each worker drops the alarm at its next refresh (a flush interval): until six /healthz answers in
    # a row (the workers take requests in turn) show none, for at most 5 s, so the next phase's first
    # requests do not meet a worker still quarantining for the last one
    deadline, in_a_row = time.monotonic() + 5.0, 0
    while in_a_row < 6 and time.monotonic() < deadline:
        in_a_row = in_a_row + 1 if not session.get(f"{url}/healthz", timeout=10).json().get("alarms") else 0


def replay(url: str, phases: list[Phase], holdout: list[dict], targets: list[str], scorer: Scorer,
           fallback: PopularityFallback, per_phase: int, seed: int, admin_token: str,
           progress: Callable[[str], None]) -> tuple[list[PhaseResult], Timeline]:
    """Send `per_phase` held-out requests per phase, one at a time: the same shoppers in the same
    order in every phase (a seeded shuffle of the holdout, repeated when it is shorter)."""
    rng = random.Random(seed)
    order = rng.sample(range(len(holdout)), len(holdout))
    picks = [order[number % len(order)] for number in range(per_phase)]
    timeline = Timeline()
    results = []
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    answered = model_hits = 0
    before = {"impressions": 0, "answers_hit": 0}
    with requests.Session() as session:
        for index, phase in enumerate(phases):
            clear_alarms(session, url, admin_token)
            result = PhaseResult(phase.name)
            started = time.monotonic()
            for number, pick in enumerate(picks):
                body, target = phase.change(holdout[pick], rng), targets[pick]
                fields = {key: value for key, value in body.items() if key != "history"}
                answer = session.post(url + "/predict", json=body, timeout=30)
                answer.raise_for_status()
                answer = answer.json()
                history = body.get("history", [])
                unguarded = target in scorer.recommend(fields, history, K).items
                popular = target in fallback.recommend(fields, history, K).items
                guarded = target in answer["items"]
                served_by_fallback = answer["source"] == "fallback"
                if guarded:  # the shopper clicks their next item: it was on the page
                    session.post(url + "/feedback", json={"ticket": answer["ticket"], "item": target},
                                 timeout=10).raise_for_status()
                    result.feedback += 1
                if answer["source"] == "model":
                    result.model_answers += 1
                    result.model_hits += guarded
                    model_hits += guarded
                result.requests += 1
                result.unguarded_hits += unguarded
                result.guarded_hits += guarded
                result.fallback_hits += popular
                result.fallback_answers += served_by_fallback
                result.anomalies.update(a["kind"] for a in answer["anomalies"])
                market = str(body.get("country"))
                result.market_requests[market] += 1
                alarms = active_alarms(session, url) if None in (result.detection, result.quality_detection) else []
                if any(a["kind"] == QUARANTINE for a in answer["anomalies"]):
                    if result.detection is None:
                        result.detection = number
                    result.market_detection.setdefault(market, result.market_requests[market] - 1)
                elif result.detection is None and any(alarm["kind"] == DRIFT for alarm in alarms):
                    result.detection = number + 1
                if result.quality_detection is None and any(alarm["kind"] == QUALITY for alarm in alarms):
                    result.quality_detection = result.feedback
                for series, value in ((timeline.phase, index), (timeline.unguarded, unguarded),
                                      (timeline.guarded, guarded), (timeline.fallback, popular),
                                      (timeline.fallback_answer, served_by_fallback)):
                    series.append(value)
                if (number + 1) % max(1, per_phase // 4) == 0 and number + 1 < per_phase:
                    progress(f"{phase.name}: {number + 1}/{per_phase}, guarded {result.guarded_hits / result.requests:.3f}, "
                             f"unguarded {result.unguarded_hits / result.requests:.3f}")
            answered += per_phase
            counts = settled_counts(session, url, started_at, answered, model_hits)
            result.live = {key: counts[key] - before[key] for key in ("impressions", "answers_hit")}
            before = counts
            progress(f"{phase.name}: {per_phase} requests in {time.monotonic() - started:.1f} s, "
                     f"guarded {result.guarded_hits / per_phase:.3f}, unguarded {result.unguarded_hits / per_phase:.3f}, "
                     f"fallback answered {result.fallback_answers / per_phase:.1%}, live model hit rate "
                     f"{result.to_json()['live_model_hit_rate@10']}, quality alarm after "
                     f"{result.quality_detection} feedback events")
            results.append(result)
    return results, timeline


def format_table(results: list[PhaseResult]) -> str:
    """The report as a plain-text table, then where each quarantine started."""
    header = ("phase", "unguarded@10", "guarded@10", "fallback@10", "fallback rate", "detected after", "live model@10",
              "quality alarm", "anomalies (top 3)")
    rows = []
    for result in results:
        report = result.to_json()
        top = ", ".join(f"{name} {count}" for name, count in result.anomalies.most_common(3)) or "-"
        rows.append((result.name, f"{report['unguarded_hit_rate@10']:.4f}", f"{report['guarded_hit_rate@10']:.4f}",
                     f"{report['fallback_hit_rate@10']:.4f}", f"{report['fallback_rate']:.1%}",
                     "-" if result.detection is None else f"{result.detection} requests",
                     "-" if report["live_model_hit_rate@10"] is None else f"{report['live_model_hit_rate@10']:.4f}",
                     "-" if result.quality_detection is None else f"after {result.quality_detection} clicks", top))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    for result in results:
        for market, before in sorted(result.market_detection.items()):
            lines.append(f"{result.name}: {market} quarantined after {before} of its requests in the phase")
    return "\n".join(lines)


def plot(path: Path, results: list[PhaseResult], timeline: Timeline) -> None:
    """Hit rate and fallback rate over the replay, rolling means, one band per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = len(timeline.phase)
    span = max(10, min(400, total // (4 * len(results))))
    x = np.arange(total)

    def rolling(values: list[bool]) -> np.ndarray:
        sums = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
        low = np.maximum(x + 1 - span, 0)
        return (sums[x + 1] - sums[low]) / (x + 1 - low)

    figure, (hits, fallback) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True, height_ratios=(3, 1.3))
    hits.plot(x, rolling(timeline.unguarded), color="#c0392b", lw=1.4, label="without recguard (model fed as sent)")
    hits.plot(x, rolling(timeline.guarded), color="#1e8449", lw=1.8, label="with recguard")
    hits.plot(x, rolling(timeline.fallback), color="#7f8c8d", lw=1.2, ls="--", label="popularity fallback alone")
    fallback.plot(x, rolling(timeline.fallback_answer), color="#2e86c1", lw=1.4)
    start = 0
    for index, result in enumerate(results):
        end = start + result.requests
        for axis in (hits, fallback):
            axis.axvspan(start, end, color="#eaf2f8" if index % 2 else "#fdfefe", zorder=0)
            if result.detection is not None:
                axis.axvline(start + result.detection, color="#2e86c1", lw=0.8, ls=":")
        hits.text((start + end) / 2, 1.0, result.name.replace("_", " "), transform=hits.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=8.5)
        start = end
    hits.set_ylabel(f"hit rate@{K} (rolling {span})")
    hits.set_ylim(bottom=0)
    hits.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fallback.set_ylabel("fallback rate")
    fallback.set_ylim(0, 1)
    fallback.set_xlabel("requests replayed (dotted: first drift alarm of the phase)")
    fallback.set_xlim(0, total)
    figure.suptitle("A website redesign, replayed through recguard", y=0.995, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    parser.add_argument("--data", required=True, type=Path, help="data directory with holdout.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="where report.json and report.png go")
    parser.add_argument("--requests-per-phase", type=int, default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--lbs-markets", default="DE,US", help="markets that switch to pounds (default DE,US)")
    parser.add_argument("--new-markets", default="NL,PL,SE", help="market codes the model never saw (default NL,PL,SE)")
    parser.add_argument("--new-market-share", type=float, default=0.25, help="share of traffic from them (default 0.25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alarm-min-users", type=int,
                        help="RECGUARD_ALARM_MIN_USERS for the proxy (default: the proxy's own, 20); a small "
                             "data set's markets may hold fewer held-out shoppers than that")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"replay: {message}", file=sys.stderr, flush=True)

    bundle = load_bundle(args.bundle)
    known = set(bundle.profile["fields"][bundle.profile["segment_field"]].get("domain", {}))
    new_markets = args.new_markets.split(",")
    if known & set(new_markets):
        parser.error(f"--new-markets must be unseen in training; {sorted(known & set(new_markets))} are known")
    holdout, targets = read_holdout(args.data)
    phases = redesign(frozenset(args.lbs_markets.split(",")), new_markets, args.new_market_share)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="recguard-replay-") as scratch:
        redis_server = start_redis(Path(scratch))
        redis_url = redis_server.url
        try:
            admin_token = secrets.token_hex(16)
            proxy_process, url = start_proxy(args.bundle, redis_url, args.workers, args.out / "proxy.log", admin_token,
                                             args.alarm_min_users)
            try:
                progress(f"proxy {bundle.model_version} at {url}, redis at {redis_url}; "
                         f"{len(phases)} phases of {args.requests_per_phase} requests")
                results, timeline = replay(url, phases, holdout, targets, Scorer.from_bundle(bundle),
                                           PopularityFallback(bundle.popularity), args.requests_per_phase, args.seed,
                                           admin_token, progress)
            finally:
                stop(proxy_process)
        finally:
            redis_server.stop()

    (args.out / "report.json").write_text(json.dumps({"phases": [r.to_json() for r in results]}, indent=2) + "\n")
    plot(args.out / "report.png", results, timeline)
    print(format_table(results))
    progress(f"wrote {args.out / 'report.json'} and {args.out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
