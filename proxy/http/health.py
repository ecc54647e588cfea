"""The /healthz body: is this worker serving, is Redis there, how does recent traffic look."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

import redis

from proxy.models.breaker import CLOSED
from proxy.runtime import Runtime
from proxy.settings import redact_url
from proxy.store.anomaly_query import query_anomalies

RATE_WINDOW = timedelta(minutes=5)


def health_report(runtime: Runtime, client: redis.Redis | None, prefix: str) -> dict[str, Any]:
    """Status `ok` or `degraded` with the reasons, model version, Redis state, 5-minute rates and alarms.

    It is one worker's view (each gunicorn worker holds its own alarms, counters and breaker), so it
    names the worker: its process id."""
    reasons = []
    loaded = runtime.loaded
    if loaded is None:
        reasons.append("bundle not loaded" if runtime.error is None else "bundle failed to load")

    counters = runtime.counters.status() if runtime.counters is not None else None
    rates = None
    redis_state = "disabled"
    if client is not None:
        now = datetime.now(timezone.utc)
        try:
            report = query_anomalies(client, prefix, now - RATE_WINDOW, now)
        except redis.RedisError:
            redis_state = "down"
        else:
            redis_state = "up"
            seconds = RATE_WINDOW.total_seconds()
            rates = {
                "window_seconds": int(seconds),
                "requests_per_second": round(report.requests / seconds, 3),
                "fallback_rate": round(report.fallback_requests / report.requests, 4) if report.requests else 0.0,
                "anomaly_rate": round(report.anomalous_requests / report.requests, 4) if report.requests else 0.0,
            }
    if redis_state == "down":
        reasons.append("redis down: counts wait in memory")
    if counters is not None and counters.dropped:
        reasons.append(f"{counters.dropped} counts dropped while redis was down")
    alarms = loaded.drift_monitor.active if loaded is not None and loaded.drift_monitor is not None else []
    reasons.extend(f"drift alarm {alarm.id}: {alarm.detail}" for alarm in alarms)
    quality = loaded.quality_monitor.active if loaded is not None and loaded.quality_monitor is not None else []
    reasons.extend(f"quality alarm {alarm.id}: {alarm.detail}" for alarm in quality)
    upstream = None
    if loaded is not None and loaded.upstream is not None:
        breaker = loaded.upstream.breaker.state()
        upstream = {"url": redact_url(runtime.settings.upstream.url), "protocol": loaded.upstream.shape.name,
                    "breaker": breaker.to_json()}
        if breaker.state != CLOSED:
            retry = "probing now" if breaker.retry_in_seconds is None else f"probe in {breaker.retry_in_seconds:.1f} s"
            reasons.append(f"upstream ejected by this worker's circuit breaker after {breaker.consecutive_failures} "
                           f"failures in a row ({retry}): the fallback answers")

    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "worker": os.getpid(),
        "model_version": loaded.model_version if loaded else None,
        "guard": runtime.settings.guard.enabled,
        "redis": redis_state,
        "counters": None if counters is None else {
            "pending": counters.pending, "dropped": counters.dropped, "last_error": counters.last_error,
        },
        "rates": rates,
        "alarms": [alarm.to_json() for alarm in [*alarms, *quality]],
        "feedback": None if loaded is None or loaded.desk is None else {
            "pending": loaded.desk.ledger.pending, "dropped": loaded.desk.ledger.dropped,
            "last_error": loaded.desk.ledger.last_error,
        },
        "upstream": upstream,
    }
