"""The composition root: settings in, the parts of one worker out, wired; and their start and close.

`Runtime` builds the Redis client, the counters and the flusher at once, and the screens (guard,
drift watch, quality quarantine, holdback), the model side and the prediction service from the
bundle once it is loaded (now or in the background). /readyz answers 503 until then;
`Runtime.settled` is set once loading ended, loaded or failed, so early requests can wait for it
instead of failing. Nothing else in proxy/ builds a part.

The flusher, the worker's one background thread, runs in this order every flush interval: the
feedback ledger (de-duplicated feedback becomes counts), the counters (every count and drift
window to Redis), the drift alarms (judged on what every worker wrote), the quality alarms. At
shutdown it writes the feedback and then the counts a last time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import redis

from model.bundle import Bundle
from model.fallback import PopularityFallback
from model.recommender import Recommender
from model.scorer import Scorer
from proxy.drift.alarms import AlarmMonitor
from proxy.drift.build import build_drift
from proxy.drift.watch import DriftWatch
from proxy.guard.checks import Guard
from proxy.metrics import Metrics
from proxy.models.breaker import CircuitBreaker
from proxy.models.embedded import RowByRow
from proxy.models.forwarding import Forwarder
from proxy.models.side import ModelSide
from proxy.models.upstream import UpstreamClient
from proxy.pipeline import (
    PredictionService,
    Screen,
    fields_screen,
    guard_screen,
    holdback_screen,
)
from proxy.quality.alarm import QualityMonitor, QualityThresholds
from proxy.quality.desk import TicketDesk
from proxy.quality.feedback import FeedbackLedger
from proxy.quality.holdback import Holdback
from proxy.quality.tickets import TicketSigner
from proxy.settings import Settings, redact_url
from proxy.shapes.base import Shape
from proxy.shapes.oip import OipV2Shape
from proxy.shapes.protocols import make_shape, oip_shape
from proxy.shapes.recguard import RecguardShape
from proxy.store.client import make_redis_client
from proxy.store.counters import Counters
from proxy.store.flusher import Flusher, Step
from proxy.words import MODEL, QUALITY_QUARANTINE, Anomaly

log = logging.getLogger("recguard.runtime")

FEEDBACK_STEP, COUNTERS_STEP, DRIFT_STEP, QUALITY_STEP = "feedback", "counters", "drift alarms", "quality alarms"
"""The flusher's steps, in the order it runs them."""


def offline_figures(bundle: Bundle) -> dict[str, Any]:
    """The offline figures `recguard train` recorded in the manifest (model and popularity on the
    holdout), or {} for a bundle without them."""
    return dict(bundle.manifest.get("evaluation") or {})


def offline_hit_rate(bundle: Bundle) -> float | None:
    """The model's offline hit_rate@10, if the manifest has it."""
    figure = (offline_figures(bundle).get("model") or {}).get("hit_rate@10")
    return float(figure) if isinstance(figure, (int, float)) else None


def offline_baseline(bundle: Bundle, *, upstream_mode: bool) -> tuple[float | None, str]:
    """The hit rate the quality alarm holds the live one against, and why there is none when there
    is none: a guard-only bundle has no offline figure, and in upstream mode the manifest's figure
    is the built-in GCN's, not the team's model's (comparing the two would alarm on a model that
    is merely different)."""
    if upstream_mode:
        return None, "upstream mode: the bundle's offline hit rate is the built-in model's, not the upstream's"
    rate = offline_hit_rate(bundle)
    if rate is None:
        return None, "the bundle records no offline hit rate (a guard-only bundle)"
    return rate, ""


@dataclass
class Loaded:
    """The parts built from one bundle."""

    bundle: Bundle
    service: PredictionService
    metrics: Metrics
    shape: Shape
    """What /predict and /invocations speak: recguard's own JSON, or the upstream's shape in upstream mode."""
    oip: OipV2Shape
    """recguard's own Open Inference Protocol v2 bodies (the /v2 endpoints)."""
    drift_monitor: AlarmMonitor | None = None
    """Drift alarms as this worker sees them (None without the guard)."""
    desk: TicketDesk | None = None
    """Tickets and feedback (None while no feedback secret is configured)."""
    quality_monitor: QualityMonitor | None = None
    """Quality alarms as this worker sees them (None while feedback is off)."""
    upstream: UpstreamClient | None = None
    """The team's own endpoint, in upstream mode (its breaker is on /healthz)."""
    guard: Guard | None = None
    """The guard's checks (the first screen; None with the guard off)."""
    drift: DriftWatch | None = None
    """The request path's drift watch (a screen; None without the guard or Redis)."""

    @property
    def model_version(self) -> str:
        return self.bundle.model_version


class Runtime:
    """One worker's parts: the store's client and counters at once, the rest once a bundle is installed.

    `redis_client` replaces the client the settings name (a test's own server); `model` replaces the
    bundle's scorer (a model that fails, in tests). With the guard off there is no Redis at all.
    """

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None,
                 model: Recommender | None = None):
        self.settings = settings
        self.model = model
        self.redis_client: redis.Redis | None = None
        self.counters: Counters | None = None
        self.flusher: Flusher | None = None
        if settings.guard.enabled:
            store = settings.redis
            self.redis_client = redis_client or make_redis_client(store.url, store.timeout)
            self.counters = Counters(self.redis_client, prefix=store.prefix, ttl_seconds=store.counter_ttl_seconds,
                                     max_pending=store.max_pending_counts, replica_wait_ms=store.wait_ms)
            self.flusher = Flusher(store.flush_interval, [Step(COUNTERS_STEP, self.counters.flush, on_close=True)])
            self.flusher.start()
        self.loaded: Loaded | None = None
        self.error: str | None = None
        self.settled = threading.Event()

    def install(self, bundle: Bundle) -> None:
        """Build the screens, the model side, the fallback and the service from a loaded bundle, then mark ready."""
        settings = self.settings
        profile = bundle.profile
        metrics = Metrics(profile["fields"])
        upstream = self._upstream(bundle, metrics) if settings.upstream.enabled else None
        model = self.model or upstream or Scorer.from_bundle(bundle)
        # the scorer has its own copies: the bundle's would double a large catalogue's memory
        bundle = bundle.without_scoring_data()
        guard = drift = drift_monitor = desk = quality_monitor = None
        screens: list[Screen] = []
        recorders: list = [metrics]
        if settings.guard.enabled:
            guard = Guard.from_bundle(bundle, settings.guard)
            screens.append(guard_screen(guard.check))
            if self.counters is not None:
                self.counters.know_names(metrics.known_fields)
                recorders.append(self.counters)
                if self.redis_client is not None:
                    drift, drift_monitor = self._drift(profile, metrics)
                    # feeds the drift windows and adds drift_quarantine when the segment is under an alarm
                    screens.append(fields_screen(drift.observe))
                    if settings.feedback.secret:
                        desk, quality_monitor = self._quality(bundle, metrics)
                        if settings.feedback.quality_quarantine:
                            screens.append(fields_screen(self._quality_quarantine(quality_monitor, desk)))
                        screens.append(holdback_screen(Holdback.from_profile(settings.feedback.holdback, profile)))
        budget = settings.limits.model_timeout_ms / 1000 if settings.guard.enabled else None
        model_side: ModelSide = RowByRow(model, budget=budget, threads=settings.server.threads)
        if upstream is not None:
            model_side = Forwarder(upstream, model_side)
        service = PredictionService(model_side, PopularityFallback(bundle.popularity), screens=screens,
                                    recorders=recorders, stamp=desk,
                                    catalogue=frozenset(bundle.catalogue) if upstream is not None else None)
        shape = upstream.shape if upstream is not None else RecguardShape(settings.limits)
        oip = oip_shape(settings.upstream, settings.limits, settings.server.model_name)
        self.loaded = Loaded(bundle, service, metrics, shape, oip, drift_monitor, desk, quality_monitor, upstream,
                             guard, drift)
        self.settled.set()
        log.info("bundle loaded", extra={"model_version": bundle.model_version, "guard": settings.guard.enabled,
                                         "upstream": redact_url(settings.upstream.url) or None})

    def _upstream(self, bundle: Bundle, metrics: Metrics) -> UpstreamClient:
        """The client of the team's endpoint: a kept-alive connection per worker thread, behind a breaker."""
        settings = self.settings
        up = settings.upstream
        breaker = CircuitBreaker(up.breaker_failures, up.breaker_base_ejection_ms / 1000, up.breaker_max_ejection_ms / 1000,
                                 on_change=metrics.breaker_changed)
        metrics.breaker_changed("closed")
        shape: Shape = make_shape(up, settings.limits, settings.server.model_name)
        return UpstreamClient(up.url, shape, timeout=settings.limits.model_timeout_ms / 1000,
                              breaker=breaker, observe=metrics.upstream_call, ca_file=up.ca_file)

    def _drift(self, profile: Mapping[str, Any], metrics: Metrics) -> tuple[DriftWatch, AlarmMonitor]:
        """The drift windows (fed by requests, written with the counters) and this worker's
        alarm monitor, refreshed by the flusher right after the counters are written."""
        parts = build_drift(profile, self.settings, self.counters, self.redis_client, wake=self.flusher.wake,
                            listeners=[lambda active: metrics.alarms.set(len(active))])
        # alarms other workers raised apply from this worker's first request on
        parts.monitor.refresh()
        self.flusher.add(Step(DRIFT_STEP, parts.monitor.refresh))
        return parts.watch, parts.monitor

    def _quality(self, bundle: Bundle, metrics: Metrics) -> tuple[TicketDesk, QualityMonitor]:
        """The ticket desk (impressions and tickets on the request path, feedback de-duplicated on the
        flusher, just before the counters) and this worker's quality monitor, refreshed after them."""
        feedback, store = self.settings.feedback, self.settings.redis
        ledger = FeedbackLedger(self.counters, self.redis_client, prefix=store.prefix,
                                window_seconds=feedback.window, ttl_seconds=store.counter_ttl_seconds,
                                listener=metrics.record_feedback)
        profile = bundle.profile
        segment_field = profile.get("segment_field")
        segments = (profile["fields"].get(segment_field, {}).get("domain") or {}) if segment_field else {}
        signer = TicketSigner(feedback.secret, feedback.window, previous=feedback.secret_previous,
                              previous_until=time.time() + feedback.window)
        if feedback.secret_previous:
            log.info("feedback: tickets of the previous secret are accepted for %d s more (one window); "
                     "remove RECGUARD_FEEDBACK_SECRET_PREVIOUS after that", feedback.window)
        desk = TicketDesk(signer, ledger, bundle.model_version,
                          bundle.catalogue, segment_field, list(segments),
                          on_impression=metrics.record_impression)
        thresholds = QualityThresholds(feedback.quality_drop, feedback.quality_threshold,
                                       feedback.quality_min_impressions, feedback.quality_window_minutes)
        offline, why_none = offline_baseline(bundle, upstream_mode=self.settings.upstream.enabled)
        if feedback.quality_offline and offline is None:
            log.info("quality: the comparison with the offline figure is off (%s); the holdback's remains", why_none)
        monitor = QualityMonitor(self.redis_client, store.prefix, bundle.model_version, offline,
                                 thresholds, use_offline=feedback.quality_offline,
                                 listeners=[lambda active: metrics.quality_alarms.set(len(active))])
        # feedback counted first: the counters' write in the same round carries it
        self.flusher.add(Step(FEEDBACK_STEP, ledger.flush, on_close=True), before=COUNTERS_STEP)
        self.flusher.add(Step(QUALITY_STEP, monitor.maybe_refresh))
        monitor.refresh()
        return desk, monitor

    @staticmethod
    def _quality_quarantine(monitor: QualityMonitor, desk: TicketDesk) -> Callable[[dict], Anomaly | None]:
        def quarantine(fields: dict) -> Anomaly | None:
            alarm = monitor.quarantined(desk.segment_of(fields))
            if alarm is None:
                return None
            return Anomaly(MODEL, QUALITY_QUARANTINE, f"quality alarm {alarm.id}: {alarm.detail}", True)
        return quarantine

    @property
    def metrics(self) -> Metrics | None:
        """This worker's metrics, once a bundle is loaded (they are labelled by its profile's fields)."""
        return self.loaded.metrics if self.loaded is not None else None

    def wait_loaded(self, timeout: float = 5.0) -> Loaded | None:
        """The loaded parts, waiting up to `timeout` seconds for a load in progress: a worker that just
        booted takes connections while its bundle loads (a fraction of a second), and waiting briefly
        beats failing a request another worker would have answered."""
        if self.loaded is None:
            self.settled.wait(timeout)
        return self.loaded

    def load_in_background(self, loader: Callable[[str], Bundle]) -> threading.Thread:
        """Load the configured bundle on a thread so the worker answers /livez and /readyz meanwhile."""
        def run() -> None:
            try:
                self.install(loader(str(self.settings.server.bundle)))
            except Exception as exc:  # reported by /readyz; the worker stays alive and not ready
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("bundle failed to load", extra={"error": self.error})
                self.settled.set()

        thread = threading.Thread(target=run, name="bundle-loader", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop the model side, then the flusher, which writes pending feedback and counts a last time
        in its order (graceful shutdown)."""
        if self.loaded is not None:
            self.loaded.service.close()
        if self.flusher is not None:
            unwritten = self.flusher.close()
            if unwritten:
                desk = self.loaded.desk if self.loaded is not None else None
                log.warning("not written at shutdown", extra={
                    "steps": unwritten, "pending_counts": self.counters.status().pending,
                    "pending_feedback": desk.ledger.pending if desk is not None else 0})
