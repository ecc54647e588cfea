"""Prometheus metrics of the prediction path (health and metrics requests are not counted).

Under gunicorn, `recguard serve` sets PROMETHEUS_MULTIPROC_DIR before any worker starts, so
every worker writes its samples to shared files and /metrics adds them up, whichever
worker answers the scrape.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Label values come from the profile; any other field name a client sends shares one label,
# so a hostile client cannot grow the number of series.
UNEXPECTED_LABEL = "_unexpected"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess_enabled() -> bool:
    """True under gunicorn, where samples are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """The proxy's counters and histograms, in a registry of its own (one per app)."""

    def __init__(self, known_fields: Iterable[str]):
        self.known_fields = frozenset(known_fields) | {"model", "history"}
        self.registry = CollectorRegistry()
        self.requests = Counter("recguard_requests", "Prediction requests answered, by source.",
                                ["source"], registry=self.registry)
        self.anomalous = Counter("recguard_anomalous_requests", "Prediction requests with at least one anomaly.",
                                 registry=self.registry)
        self.anomalies = Counter("recguard_anomalies", "Anomalies seen, by field and kind.",
                                 ["field", "kind"], registry=self.registry)
        self.rejected = Counter("recguard_rejected_requests", "Requests refused with a 4xx, by status.",
                                ["status"], registry=self.registry)
        self.admin_refused = Counter("recguard_admin_refused_requests",
                                     "Admin requests refused: 401 without credentials, 403 with wrong ones.",
                                     ["status"], registry=self.registry)
        self.latency = Histogram("recguard_request_duration_seconds", "Time to answer a prediction request.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        # livemax: a worker that died with an alarm active must not hold the gauge up for ever
        self.alarms = Gauge("recguard_active_alarms", "Drift alarms active, as last seen by a worker.",
                            registry=self.registry, multiprocess_mode="livemax")
        self.quality_alarms = Gauge("recguard_active_quality_alarms", "Quality alarms active, as last seen by a worker.",
                                    registry=self.registry, multiprocess_mode="livemax")
        # version and source: a bundle has one version, sources are model, fallback, holdback
        self.impressions = Counter("recguard_impressions", "Answers served with a feedback ticket.",
                                   ["version", "source"], registry=self.registry)
        self._impression_children: dict[tuple[str, str], Any] = {}
        self.feedback = Counter("recguard_feedback_events", "Feedback events counted (after de-duplication).",
                                ["version", "source", "event"], registry=self.registry)
        self.hits = Counter("recguard_feedback_hits", "Feedback events on an item the answer served.",
                            ["version", "source"], registry=self.registry)
        self.feedback_rejected = Counter("recguard_feedback_rejected", "Feedback events refused, by status.",
                                         ["status"], registry=self.registry)
        self.upstream_calls = Counter("recguard_upstream_calls", "Calls to the upstream model endpoint, by outcome.",
                                      ["outcome"], registry=self.registry)
        self.upstream_latency = Histogram("recguard_upstream_duration_seconds",
                                          "Time of one call to the upstream (not counted while the breaker is open).",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        self.breaker_ejections = Counter("recguard_upstream_ejections", "Times a worker's circuit breaker ejected the upstream.",
                                         registry=self.registry)
        # livesum: how many live workers have the upstream ejected (open or probing) right now
        self.breaker_open = Gauge("recguard_upstream_breaker_open", "Workers whose circuit breaker has the upstream ejected.",
                                  registry=self.registry, multiprocess_mode="livesum")

    def record_impression(self, version: str, source: str) -> None:
        """Count one answer stamped with a ticket (on every answer: the labelled child is looked up once)."""
        child = self._impression_children.get((version, source))
        if child is None:
            child = self._impression_children[(version, source)] = self.impressions.labels(version, source)
        child.inc()

    def record_feedback(self, version: str, source: str, event: str, hit: bool) -> None:
        """Count one feedback event the ledger found new."""
        self.feedback.labels(version, source, event).inc()
        if hit:
            self.hits.labels(version, source).inc()

    def upstream_call(self, outcome: str, seconds: float) -> None:
        """Count one upstream call (or one skipped by the open breaker, which takes no time)."""
        self.upstream_calls.labels(outcome).inc()
        if outcome != "upstream_unavailable":
            self.upstream_latency.observe(seconds)

    def breaker_changed(self, state: str) -> None:
        """Follow the breaker: an ejection counted, the open gauge set."""
        if state == "open":
            self.breaker_ejections.inc()
        self.breaker_open.set(0 if state == "closed" else 1)

    def record_request(self, source: str, anomalies: Sequence[tuple[str, str]]) -> None:
        """Count one answered prediction request."""
        self.requests.labels(source).inc()
        if anomalies:
            self.anomalous.inc()
            for field, kind in anomalies:
                label = field if field in self.known_fields else UNEXPECTED_LABEL
                self.anomalies.labels(label, kind).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text for /metrics and its content type."""
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
