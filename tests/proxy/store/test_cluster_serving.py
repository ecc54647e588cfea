"""The proxy served by real gunicorn on a real Redis Cluster, checked as a user would: counts exact,
drift alarms raised and shared by two replicas, /anomalies and `recguard anomalies` right, every
command one hash slot; and, while requests flow, a primary SIGKILLed, slots migrated, a node slow."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time

import pytest
import requests
from redis.crc import key_slot

from proxy.store.counters import bucket_key
from tests.harness.cluster import CommandAudit
from tests.harness.proxy import ProxyProcess
from tests.harness.traffic import Traffic
from tests.proxy.http.test_faults import counted, settle

# the cluster is made by redis-cli (and the CLI and gunicorn run as child processes)
pytestmark = pytest.mark.system

POUNDS_PER_KG = 2.20462
TOKEN = "cluster-admin-token"
ALARM = "weight_kg:DE"


def served(tiny_bundle, cluster, tmp_path, name: str = "proxy", workers: int = 2, **env: str) -> ProxyProcess:
    return ProxyProcess(tiny_bundle, cluster.url, workers=workers, log_path=tmp_path / f"{name}.log", env=env)


def assert_clean_logs(*proxies: ProxyProcess) -> None:
    for proxy in proxies:
        log = proxy.log_path.read_text()
        assert "refused a counter bucket" not in log and "Traceback" not in log, log[-3000:]


def quarantined(answer: dict) -> bool:
    return any(anomaly["kind"] == "drift_quarantine" for anomaly in answer["anomalies"])


def test_two_replicas_on_a_cluster_count_exactly_share_alarms_and_send_one_slot_per_command(
        tiny_bundle, tiny_holdout, loaded_bundle, cluster, tmp_path):
    audit = CommandAudit(cluster)
    env = {"RECGUARD_ADMIN_TOKEN": TOKEN, "RECGUARD_DRIFT_SLOT_SECONDS": "1", "RECGUARD_DRIFT_WINDOW_SECONDS": "60",
           # feedback on (clicks on a few answers), and no quality alarm against the bundle's offline figure
           "RECGUARD_FEEDBACK_SECRET": "cluster-feedback-secret", "RECGUARD_HOLDBACK": "0", "RECGUARD_QUALITY_OFFLINE": "0"}
    replicas = [served(tiny_bundle, cluster, tmp_path, f"replica{index}", **env) for index in range(2)]
    for replica in replicas:
        replica.start(wait_ready=False)
    try:
        for replica in replicas:
            replica.wait_ready()
        sent, answers = 0, []
        for index, body in enumerate(tiny_holdout * 2):
            answer = replicas[index % 2].predict(body)
            assert answer.status_code == 200
            answers.append(answer.json())
            sent += 1
        # clicks on the first 30 answers, each sent three times, to the replica that did not answer it
        clicked = answers[:30]
        for index, answer in enumerate(clicked):
            for _ in range(3):
                event = {"ticket": answer["ticket"], "item": answer["items"][0], "event": "click"}
                assert requests.post(f"{replicas[(index + 1) % 2].url}/feedback", json=event, timeout=10).status_code == 202

        # one market switches to pounds; whichever worker raises the alarm, every worker of both replicas
        # quarantines the market
        weight = loaded_bundle.profile["fields"]["weight_kg"]
        rng = random.Random(0)
        germans = [body for body in tiny_holdout if body["country"] == "DE"]
        others = [body for body in tiny_holdout if body["country"] != "DE"]
        for attempt in range(400):
            kilograms = rng.uniform(weight["min"], weight["max"] / POUNDS_PER_KG)
            # each request a shopper of its own: drift evidence counts distinct users
            answer = replicas[attempt % 2].predict({**rng.choice(germans), "weight_kg": round(kilograms * POUNDS_PER_KG, 1),
                                                    "user_id": f"shopper-{attempt}"})
            sent += 1
            if quarantined(answer.json()):
                break
        else:
            pytest.fail("no alarm after 400 requests in pounds")
        # every worker applies it at its next refresh (a flush interval): until each worker of each
        # replica lists it in its own /healthz, for at most 2 s
        for replica in replicas:
            replica.until_every_worker(lambda health: [alarm["id"] for alarm in health["alarms"]] == [ALARM],
                                       "quarantines DE", timeout=2.0)
            for _ in range(4):
                german = replica.predict(germans[0]).json()
                other = replica.predict(others[0]).json()
                sent += 2
                assert german["source"] == "fallback" and quarantined(german)
                assert other["source"] == "model" and not quarantined(other)
            assert [alarm["id"] for alarm in replica.get("/alarms").json()["alarms"]] == [ALARM]

        # a clear by hand on one replica holds on the other
        cleared = requests.post(f"{replicas[0].url}/alarms/{ALARM}/clear", headers={"Authorization": f"Bearer {TOKEN}"},
                                timeout=10)
        assert cleared.json() == {"cleared": ALARM}
        # the other replica's workers, each at its next refresh, within 2 s
        replicas[1].until_every_worker(lambda health: health["alarms"] == [], "is clear", timeout=2.0)
        for _ in range(4):
            assert not quarantined(replicas[1].predict(germans[0]).json())
            sent += 1
        assert replicas[1].get("/alarms").json()["alarms"] == []

        client = cluster.client()
        assert settle(client, sent) == sent
        for replica in replicas:
            report = replica.get("/anomalies?since=10m").json()
            assert report["requests"] == sent and report["by_field"]["weight_kg"] >= 1
            assert replica.get("/healthz").json()["redis"] == "up"
            groups = replica.get("/quality?since=10m&by=source").json()["groups"]
            assert sum(group["impressions"] for group in groups) == sent
            assert sum(group["feedback"] for group in groups) == sum(group["hits"] for group in groups) == len(clicked)
        cli = subprocess.run([sys.executable, "-m", "proxy.cli.main", "anomalies", "--since", "10m", "--json",
                              "--redis", cluster.url], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["requests"] == sent
        cli = subprocess.run([sys.executable, "-m", "proxy.cli.main", "quality", "--since", "10m", "--by", "source",
                              "--json", "--redis", cluster.url], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert sum(group["feedback"] for group in json.loads(cli.stdout)["groups"]) == len(clicked)

        commands = audit.stop()
        assert audit.cluster_risks() == [], "commands Redis Cluster could refuse"
        # every primary took flushes: the layout spreads over the cluster
        assert {port for port, client_type, args in commands if args and args[0].upper() == "EVALSHA"} == set(cluster.primaries())
        assert_clean_logs(*replicas)
    finally:
        audit.stop()
        for replica in replicas:
            replica.stop()


def test_a_primary_sigkilled_under_traffic_fails_no_request_and_loses_no_count(tiny_bundle, tiny_holdout, cluster,
                                                                                tmp_path):
    proxy = served(tiny_bundle, cluster, tmp_path).start()
    client = cluster.client()
    try:
        with Traffic(proxy.url, tiny_holdout, pause=0.0, limit=60.0) as traffic:
            traffic.wait_for(300)
            hot = cluster.owner(bucket_key("recguard", int(time.time() // 60)))
            # its replica falls behind (cut off), then the primary dies with writes no replica has:
            # flushes it applied but its replica did not acknowledge are still in the workers, sent again
            cluster.cut_replication(hot)
            time.sleep(0.5)
            flushed_before = counted(client)  # what the cluster holds the moment before the kill
            cluster.kill(hot)
            killed_at = time.monotonic()
            promoted = cluster.wait_failover(hot)
            promoted_after = time.monotonic() - killed_at
            traffic.wait_for(len(traffic.outcomes) + 300)
        sent = len(traffic.outcomes)
        assert traffic.failed() == []
        assert settle(client, sent) == sent >= flushed_before
        # docs/reliability.md: promoted in 2-4 s with the 1.5 s node timeout (3.5 s measured on a loaded
        # machine); held to twice that
        assert promoted > 0 and promoted_after < 2 * 4, promoted_after
        health = proxy.get("/healthz").json()
        assert health["redis"] == "up" and health["counters"]["pending"] == 0 and health["counters"]["dropped"] == 0
        assert proxy.get("/anomalies?since=10m").json()["requests"] == sent
        assert_clean_logs(proxy)
    finally:
        proxy.stop()


def every_request_answered_and_counted(proxy, client, traffic) -> int:
    """After traffic: no request failed, every one is counted in the cluster, nothing waits to be
    written, the log is clean. How many were sent."""
    sent = len(traffic.outcomes)
    assert traffic.failed() == []
    assert settle(client, sent) == sent
    assert proxy.get("/healthz").json()["counters"]["pending"] == 0
    assert_clean_logs(proxy)
    return sent


def test_slots_migrated_while_serving_lose_and_double_no_count(tiny_bundle, tiny_holdout, cluster, tmp_path):
    proxy = served(tiny_bundle, cluster, tmp_path).start()
    client = cluster.client()
    try:
        with Traffic(proxy.url, tiny_holdout, pause=0.0, limit=60.0) as traffic:
            traffic.wait_for(200)
            minute = int(time.time() // 60)
            hot = [bucket_key("recguard", minute + step) for step in range(2)] + ["recguard:alarms"]
            for key in hot:  # the busiest keys, one by one, to another primary, while they are written
                source = cluster.owner(key)
                target = next(port for port in cluster.primaries() if port != source)
                cluster.move_slot(key_slot(key.encode()), target)
                assert cluster.owner(key) == target
            source, target = cluster.primaries()[:2]
            cluster.wait_agreed(source)
            reshard = subprocess.run(
                ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", cluster.node_id(source),
                 "--cluster-to", cluster.node_id(target), "--cluster-slots", "300", "--cluster-yes"],
                capture_output=True, text=True, timeout=120)
            assert reshard.returncode == 0, reshard.stdout[-2000:]
            traffic.wait_for(len(traffic.outcomes) + 200)
        sent = every_request_answered_and_counted(proxy, client, traffic)
        assert proxy.get("/anomalies?since=10m").json()["requests"] == sent
    finally:
        proxy.stop()


def test_a_slow_node_slows_no_request_and_its_late_writes_count_once(tiny_bundle, tiny_holdout, cluster, tmp_path):
    proxy = served(tiny_bundle, cluster, tmp_path).start()
    client = cluster.client()
    try:
        with Traffic(proxy.url, tiny_holdout, pause=0.0, limit=60.0) as traffic:
            traffic.wait_for(200)
            hot = cluster.owner(bucket_key("recguard", int(time.time() // 60)))
            slow = cluster.node(hot)
            began = time.monotonic()
            # busy for 0.4 s at a time (the proxy gives up on a call after 0.25 s), answering in between:
            # writes time out after the node applied them, and are sent again
            while time.monotonic() - began < 4:
                slow.execute_command("DEBUG", "SLEEP", "0.4")
                time.sleep(0.03)
            ended = time.monotonic()
            traffic.wait_for(len(traffic.outcomes) + 200)
        every_request_answered_and_counted(proxy, client, traffic)
        during = [outcome.seconds for outcome in traffic.outcomes if began <= outcome.started <= ended]
        assert len(during) > 50 and statistics.median(during) < 0.1, "requests waited on the slow node"
        assert "TimeoutError" in proxy.log_path.read_text()  # the flush did time out, and nothing was doubled
    finally:
        proxy.stop()
