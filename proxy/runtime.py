"""What a worker holds once its bundle is loaded, and the loading itself (in the background).

/readyz answers 503 until the bundle is loaded; `Runtime.settled` is set once loading ended,
loaded or failed, so early requests can wait for it instead of failing.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import redis

from model.bundle import Bundle
from proxy.drift.alarms import AlarmMonitor
from proxy.drift.watch import DriftWatch, Thresholds, cells_from_profile
from proxy.guard.report import build_guard
from proxy.http.metrics import Metrics
from proxy.models.fallback import PopularityFallback
from proxy.models.scorer import Scorer
from proxy.models.service import PredictionService, Recommender
from proxy.settings import Settings
from proxy.store.counters import Counters, Series

log = logging.getLogger("recguard.runtime")


@dataclass
class Loaded:
    """The parts built from one bundle."""

    bundle: Bundle
    service: PredictionService
    metrics: Metrics
    alarms: AlarmMonitor | None = None
    """Drift alarms as this worker sees them (None without the guard)."""

    @property
    def model_version(self) -> str:
        return self.bundle.model_version


class Runtime:
    """Loads a bundle once (now or in a background thread) and hands out the loaded parts."""

    def __init__(self, settings: Settings, counters: Counters | None, model: Recommender | None = None,
                 redis_client: redis.Redis | None = None):
        self.settings = settings
        self.counters = counters
        self.model = model
        self.redis_client = redis_client
        self.loaded: Loaded | None = None
        self.error: str | None = None
        self.settled = threading.Event()

    def install(self, bundle: Bundle) -> None:
        """Build the guard, scorer, fallback and service from a loaded bundle, then mark ready."""
        settings = self.settings
        profile = bundle.profile
        metrics = Metrics(profile["fields"])
        scorer = self.model or Scorer.from_bundle(bundle)
        guard = drift = alarms = None
        recorders: list = [metrics]
        if settings.guard:
            guard = build_guard(bundle, settings)
            if self.counters is not None:
                recorders.append(self.counters)
                if self.redis_client is not None:
                    drift, alarms = self._drift(profile, metrics)
        service = PredictionService(
            scorer, PopularityFallback(bundle.popularity), guard,
            model_timeout=settings.model_timeout_ms / 1000 if settings.guard else None,
            recorders=recorders, executor_threads=settings.threads, drift=drift,
        )
        self.loaded = Loaded(bundle, service, metrics, alarms)
        self.settled.set()
        log.info("bundle loaded", extra={"model_version": bundle.model_version, "guard": settings.guard})

    def _drift(self, profile: Mapping[str, Any], metrics: Metrics) -> tuple[DriftWatch, AlarmMonitor]:
        """The drift windows (fed by requests, written by the counters' flush) and this worker's
        alarm monitor, refreshed on the flush thread right after each flush."""
        settings = self.settings
        series = Series("d", settings.drift_slot_seconds, settings.drift_window_seconds + 60)
        cells = cells_from_profile(profile)
        thresholds = Thresholds(settings.alarm_z_score, settings.alarm_effect_size, settings.alarm_min_count)
        watch = DriftWatch(profile, cells, series, self.counters.add_many, thresholds=thresholds,
                           wake=self.counters.flush_soon)
        monitor = AlarmMonitor(
            self.redis_client, settings.redis_prefix, cells, series,
            window_slots=math.ceil(settings.drift_window_seconds / settings.drift_slot_seconds),
            thresholds=thresholds,
            # a slot stays open to late writes for one flush interval of every worker
            open_slots=math.ceil(settings.flush_interval / settings.drift_slot_seconds) + 1,
            listeners=[watch.quarantine, lambda active: metrics.alarms.set(len(active))],
            recent=watch.take_recent,
        )
        # alarms other workers raised apply from this worker's first request on
        monitor.refresh()
        self.counters.on_flush(monitor.refresh)
        return watch, monitor

    def load_in_background(self, loader: Callable[[str], Bundle]) -> threading.Thread:
        """Load the configured bundle on a thread so the worker answers /livez and /readyz meanwhile."""
        def run() -> None:
            try:
                self.install(loader(str(self.settings.bundle)))
            except Exception as exc:  # reported by /readyz; the worker stays alive and not ready
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("bundle failed to load", extra={"error": self.error})
                self.settled.set()

        thread = threading.Thread(target=run, name="bundle-loader", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the model pool and flush pending counts (graceful shutdown)."""
        if self.loaded is not None:
            self.loaded.service.close()
        if self.counters is not None:
            self.counters.close()
