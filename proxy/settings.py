"""Serving settings: one typed object, read from RECGUARD_* variables and `recguard serve` flags, validated once.

A malformed value or an unknown RECGUARD_* variable (a typo) stops the start with a message
naming the variable; nothing falls back silently to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from model.errors import RecguardError

ENV_PREFIX = "RECGUARD_"
WORKER_CLASSES = ("sync", "gthread")


class SettingsError(RecguardError):
    """A setting is malformed or unknown."""


@dataclass(frozen=True)
class Settings:
    """Everything the proxy can be told; each field is the env variable RECGUARD_<NAME>."""

    bundle: Path = Path("bundles/default")
    """Bundle directory to serve."""
    bind: str = "127.0.0.1:8000"
    """host:port gunicorn listens on."""
    workers: int = 2
    """gunicorn worker processes."""
    worker_class: str = "sync"
    """gunicorn worker class: sync (one request at a time per worker: the lowest tail latency,
    measured in docs/benchmarks.md) or gthread (`threads` per worker: keep-alive, slow clients)."""
    threads: int = 4
    """Threads per worker with gthread; also the size of each worker's model-budget pool."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis for counters and drift windows, shared by all workers and replicas."""
    redis_prefix: str = "recguard"
    """Key prefix of every Redis key recguard writes."""
    redis_timeout: float = 0.25
    """Seconds before a Redis call gives up (never on the request path)."""
    counter_ttl_seconds: int = 7 * 24 * 3600
    """How long a minute bucket lives in Redis."""
    flush_interval: float = 0.5
    """Seconds between two flushes of the in-memory counters."""
    max_pending_counts: int = 200_000
    """Counter fields kept in memory while Redis is down; past it the oldest are dropped and counted."""
    max_body_bytes: int = 1024 * 1024
    """Largest accepted request body."""
    max_history: int = 500
    """Longest accepted history list."""
    default_k: int = 10
    """Items returned when the request has no k."""
    max_k: int = 100
    """Largest accepted k."""
    model_timeout_ms: float = 250.0
    """Budget of one model call; past it the fallback answers (model_timeout)."""
    range_tolerance: float = 0.05
    """Slack around the training range, as a fraction of (max - min), before out_of_range."""
    required_presence: float = 0.99
    """A field present in at least this share of training rows is required (missing_field)."""
    guard: bool = True
    """False serves the bare model endpoint: no checks, no counters (the baseline)."""
    drift_slot_seconds: int = 2
    """Seconds of one drift-window slot in Redis: the finest time step of the drift windows."""
    drift_window_seconds: int = 300
    """The longest window a drift alarm looks back over."""
    alarm_z_score: float = 8.0
    """A drift alarm needs a window mean this many standard errors from the training mean (statistically clear)."""
    alarm_effect_size: float = 0.5
    """... and this many training standard deviations from it (practically large); it clears below half of that."""
    alarm_min_count: int = 20
    """Values a drift window needs before it can raise or clear an alarm."""
    admin_token: str = field(default="", repr=False)
    """Token for admin endpoints; empty turns them off."""
    log_level: str = "INFO"
    """Python logging level name."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build from RECGUARD_* variables, then `overrides` (CLI flags; None means not given)."""
        environ = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                raise SettingsError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
            values[name] = _parse(name, raw, key)
        for name, value in overrides.items():
            if value is not None:
                values[name] = _parse(name, value, f"--{name.replace('_', '-')}") if isinstance(value, str) else value
        settings = replace(cls(), **values)
        settings.validate()
        return settings

    def to_env(self) -> dict[str, str]:
        """The RECGUARD_* variables that rebuild these settings in another process (gunicorn workers)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            env[ENV_PREFIX + f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return env

    def validate(self) -> None:
        """Raise SettingsError for a value out of its range."""
        checks = [
            (self.workers >= 1, "workers", "at least 1"),
            (self.worker_class in WORKER_CLASSES, "worker_class", " or ".join(WORKER_CLASSES)),
            (self.threads >= 1, "threads", "at least 1"),
            (self.redis_url.startswith(("redis://", "rediss://", "unix://")), "redis_url", "a redis://, rediss:// or unix:// URL"),
            (bool(self.redis_prefix) and ":" not in self.redis_prefix, "redis_prefix", "non-empty, without ':'"),
            (self.redis_timeout > 0, "redis_timeout", "positive"),
            (self.counter_ttl_seconds >= 60, "counter_ttl_seconds", "at least 60"),
            (0 < self.flush_interval <= 60, "flush_interval", "in (0, 60]"),
            (self.max_pending_counts >= 100, "max_pending_counts", "at least 100"),
            (self.max_body_bytes >= 1024, "max_body_bytes", "at least 1024"),
            (self.max_history >= 0, "max_history", "0 or more"),
            (1 <= self.max_k <= 10_000, "max_k", "in 1..10000"),
            (1 <= self.default_k <= self.max_k, "default_k", "in 1..max_k"),
            (self.model_timeout_ms > 0, "model_timeout_ms", "positive"),
            (0 <= self.range_tolerance <= 10, "range_tolerance", "in 0..10"),
            (0 < self.required_presence <= 1, "required_presence", "in (0, 1]"),
            (1 <= self.drift_slot_seconds <= 60, "drift_slot_seconds", "in 1..60"),
            (self.drift_slot_seconds <= self.drift_window_seconds <= 3600, "drift_window_seconds",
             "in drift_slot_seconds..3600"),
            (self.alarm_z_score >= 1, "alarm_z_score", "at least 1"),
            (self.alarm_effect_size > 0, "alarm_effect_size", "positive"),
            (self.alarm_min_count >= 2, "alarm_min_count", "at least 2"),
            (self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "log_level", "DEBUG, INFO, WARNING or ERROR"),
            (_valid_bind(self.bind), "bind", "HOST:PORT"),
        ]
        for ok, name, expected in checks:
            if not ok:
                shown = redact_url(self.redis_url) if name == "redis_url" else getattr(self, name)
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: expected {expected}, got {shown!r}")


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _valid_bind(bind: str) -> bool:
    host, _, port = bind.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


_DESCRIPTIONS = {"bool": "a boolean (1/0, true/false)", "int": "an integer", "float": "a number"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(name: str, raw: str, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    text = raw.strip()
    try:
        if kind == "bool":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "Path":
            return Path(text)
        return text
    except ValueError:
        raise SettingsError(f"{source}: expected {_DESCRIPTIONS[kind]}, got {raw!r}") from None
