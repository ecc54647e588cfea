"""What a worker holds once its bundle is loaded, and the loading itself (in the background).

/readyz answers 503 until the bundle is loaded; `Runtime.settled` is set once loading ended,
loaded or failed, so early requests can wait for it instead of failing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from model.bundle import Bundle
from proxy.counters import Counters
from proxy.fallback import PopularityFallback
from proxy.guard import Guard
from proxy.metrics import Metrics
from proxy.scoring import Scorer
from proxy.service import PredictionService, Recommender
from proxy.settings import Settings

log = logging.getLogger("recguard.runtime")


@dataclass
class Loaded:
    """The parts built from one bundle."""

    bundle: Bundle
    service: PredictionService
    metrics: Metrics

    @property
    def model_version(self) -> str:
        return self.bundle.model_version


class Runtime:
    """Loads a bundle once (now or in a background thread) and hands out the loaded parts."""

    def __init__(self, settings: Settings, counters: Counters | None, model: Recommender | None = None):
        self.settings = settings
        self.counters = counters
        self.model = model
        self.loaded: Loaded | None = None
        self.error: str | None = None
        self.settled = threading.Event()

    def install(self, bundle: Bundle) -> None:
        """Build the guard, scorer, fallback and service from a loaded bundle, then mark ready."""
        settings = self.settings
        profile = bundle.profile
        metrics = Metrics(profile["fields"])
        scorer = self.model or Scorer.from_bundle(bundle)
        guard = None
        recorders: list = [metrics]
        if settings.guard:
            guard = Guard(profile, (str(item) for item in bundle.arrays["item_ids"]),
                          range_tolerance=settings.range_tolerance, required_presence=settings.required_presence)
            if self.counters is not None:
                recorders.append(self.counters)
        service = PredictionService(
            scorer, PopularityFallback(bundle.popularity), guard,
            model_timeout=settings.model_timeout_ms / 1000 if settings.guard else None,
            recorders=recorders, executor_threads=settings.threads,
        )
        self.loaded = Loaded(bundle, service, metrics)
        self.settled.set()
        log.info("bundle loaded", extra={"model_version": bundle.model_version, "guard": settings.guard})

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
