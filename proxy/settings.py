"""Serving settings: typed groups read from RECGUARD_* variables and `recguard serve` flags, validated once.

Each setting has one flat name, the same as its variable without the prefix (`redis_url` is
RECGUARD_REDIS_URL, and `recguard serve --redis` overrides it) and lives in the group of the part that uses it
(`settings.redis.url`). A malformed value or an unknown RECGUARD_* variable (a typo) stops the start
with a message naming the variable; nothing falls back silently to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

from model.errors import RecguardError
from proxy.oip_inputs import valid_inputs
from proxy.pointer import valid_pointer
from proxy.redis_url import valid_redis_url
from proxy.words import (
    AUTO_WORKER,
    GTHREAD_WORKER,
    PLAIN,
    PROTOCOLS,
    SYNC_WORKER,
    WORKER_CLASSES,
)

ENV_PREFIX = "RECGUARD_"
SECRET_SETTINGS = frozenset({"admin_token", "user_hash_key", "feedback_secret", "feedback_secret_previous",
                             "feedback_token"})
"""Never shown in an error message or a log line."""


class SettingsError(RecguardError):
    """A setting is malformed or unknown."""


MIN_SECRET_CHARACTERS = 16
"""Shortest feedback secret taken: a ticket's HMAC is only as strong as its key."""
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def setting(name: str, default: Any, **kwargs: Any) -> Any:
    """A group field whose flat name (variable RECGUARD_<NAME>, flag override) is `name`."""
    return field(default=default, metadata={"name": name}, **kwargs)


@dataclass(frozen=True)
class ServerSettings:
    """The gunicorn server and what it serves."""

    bundle: Path = setting("bundle", Path("bundles/default"))
    """Bundle directory to serve."""
    bind: str = setting("bind", "127.0.0.1:8000")
    """host:port gunicorn listens on."""
    workers: int = setting("workers", 2)
    """gunicorn worker processes."""
    worker_class: str = setting("worker_class", AUTO_WORKER)
    """gunicorn worker class: sync (one request at a time per worker: the lowest tail latency,
    measured in docs/benchmarks.md) or gthread (`threads` per worker: keep-alive, slow clients, and
    requests that wait on an upstream); auto is sync for the bundle's model, gthread in upstream mode."""
    threads: int = setting("threads", 4)
    """Threads per worker with gthread; also the size of each worker's model-budget pool."""
    log_level: str = setting("log_level", "INFO")
    """Python logging level name."""
    model_name: str = setting("model_name", "recguard")
    """The model's name on recguard's Open Inference Protocol v2 endpoints (/v2/models/<name>)."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.workers >= 1, "workers", "at least 1"),
            (self.worker_class in WORKER_CLASSES, "worker_class", " or ".join(WORKER_CLASSES)),
            (self.threads >= 1, "threads", "at least 1"),
            (self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "log_level", "DEBUG, INFO, WARNING or ERROR"),
            (_valid_bind(self.bind), "bind", "HOST:PORT"),
            (bool(_MODEL_NAME.fullmatch(self.model_name)), "model_name", "letters, digits, '.', '_' or '-'"),
        ]


@dataclass(frozen=True)
class RedisSettings:
    """The shared store: where it is and how counts reach it."""

    url: str = setting("redis_url", "redis://127.0.0.1:6379/0")
    """Redis for counters and drift windows, shared by all workers and replicas: one server
    (redis://, rediss://, unix://) or a Redis Cluster (redis+cluster://HOST:PORT[,HOST:PORT...])."""
    prefix: str = setting("redis_prefix", "recguard")
    """Key prefix of every Redis key recguard writes."""
    timeout: float = setting("redis_timeout", 0.25)
    """Seconds before a Redis call gives up (never on the request path)."""
    counter_ttl_seconds: int = setting("counter_ttl_seconds", 7 * 24 * 3600)
    """How long a minute bucket lives in Redis."""
    flush_interval: float = setting("flush_interval", 0.5)
    """Seconds between two flushes of the in-memory counters."""
    max_pending_counts: int = setting("max_pending_counts", 200_000)
    """Counter fields kept in memory while Redis is down; past it the oldest are dropped and counted."""
    wait_ms: int = setting("redis_wait_ms", 100)
    """Redis Cluster: how long a flush waits (WAIT) for each shard's replicas to acknowledge its writes;
    counts not acknowledged are sent again, so a failover loses none. 0 turns the wait off."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (valid_redis_url(self.url), "redis_url",
             "a redis://, rediss:// or unix:// URL, or redis+cluster://HOST:PORT[,HOST:PORT...]"),
            (bool(self.prefix) and ":" not in self.prefix, "redis_prefix", "non-empty, without ':'"),
            (self.timeout > 0, "redis_timeout", "positive"),
            (self.counter_ttl_seconds >= 60, "counter_ttl_seconds", "at least 60"),
            (0 < self.flush_interval <= 60, "flush_interval", "in (0, 60]"),
            (self.max_pending_counts >= 100, "max_pending_counts", "at least 100"),
            # past the socket timeout the connection would give up before WAIT answers
            (0 <= self.wait_ms < self.timeout * 1000, "redis_wait_ms", "0 or more, below redis_timeout in ms"),
        ]


@dataclass(frozen=True)
class LimitSettings:
    """What one request may ask for, and the model's time budget."""

    max_body_bytes: int = setting("max_body_bytes", 1024 * 1024)
    """Largest accepted request body."""
    max_history: int = setting("max_history", 500)
    """Longest accepted history list."""
    default_k: int = setting("default_k", 10)
    """Items returned when the request has no k."""
    max_k: int = setting("max_k", 100)
    """Largest accepted k."""
    model_timeout_ms: float = setting("model_timeout_ms", 250.0)
    """Budget of one model call; past it the fallback answers (model_timeout)."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (self.max_body_bytes >= 1024, "max_body_bytes", "at least 1024"),
            (self.max_history >= 0, "max_history", "0 or more"),
            (1 <= self.max_k <= 10_000, "max_k", "in 1..10000"),
            (1 <= self.default_k <= self.max_k, "default_k", "in 1..max_k"),
            (self.model_timeout_ms > 0, "model_timeout_ms", "positive"),
        ]


@dataclass(frozen=True)
class GuardSettings:
    """The input checks compiled from the training profile."""

    enabled: bool = setting("guard", True)
    """False serves the bare model endpoint: no checks, no counters (the baseline)."""
    range_tolerance: float = setting("range_tolerance", 0.05)
    """Slack around the training range, as a fraction of (max - min), before out_of_range."""
    required_presence: float = setting("required_presence", 0.99)
    """A field present in at least this share of training rows is required (missing_field)."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (0 <= self.range_tolerance <= 10, "range_tolerance", "in 0..10"),
            (0 < self.required_presence <= 1, "required_presence", "in (0, 1]"),
        ]


@dataclass(frozen=True)
class DriftSettings:
    """Drift windows and the alarms raised from them."""

    slot_seconds: int = setting("drift_slot_seconds", 2)
    """Seconds of one drift-window slot in Redis: the finest time step of the drift windows."""
    window_seconds: int = setting("drift_window_seconds", 300)
    """The longest window a drift alarm looks back over."""
    alarm_z_score: float = setting("alarm_z_score", 8.0)
    """A drift alarm needs a window mean this many standard errors from the training mean (statistically clear)."""
    alarm_effect_size: float = setting("alarm_effect_size", 0.5)
    """... and this many training standard deviations from it (practically large); it clears below half of that."""
    alarm_min_count: int = setting("alarm_min_count", 20)
    """Values a drift window needs before it can raise or clear an alarm."""
    alarm_min_users: int = setting("alarm_min_users", 20)
    """Distinct users those values must come from: one client repeating itself is no evidence."""
    user_hash_key: str = setting("user_hash_key", "", repr=False)
    """Key that hashes user ids before they reach Redis; empty: a random key kept in Redis."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (1 <= self.slot_seconds <= 60, "drift_slot_seconds", "in 1..60"),
            (self.slot_seconds <= self.window_seconds <= 3600, "drift_window_seconds", "in drift_slot_seconds..3600"),
            (self.alarm_z_score >= 1, "alarm_z_score", "at least 1"),
            (self.alarm_effect_size > 0, "alarm_effect_size", "positive"),
            (self.alarm_min_count >= 2, "alarm_min_count", "at least 2"),
            (1 <= self.alarm_min_users <= self.alarm_min_count, "alarm_min_users", "in 1..alarm_min_count"),
            (not self.user_hash_key or len(self.user_hash_key) >= 8, "user_hash_key",
             "empty or at least 8 characters"),
        ]


@dataclass(frozen=True)
class FeedbackSettings:
    """Tickets, feedback, the holdback control group and the quality alarm."""

    secret: str = setting("feedback_secret", "", repr=False)
    """Key of the HMAC that signs tickets, the same on every replica; empty: no tickets, /feedback off."""
    secret_previous: str = setting("feedback_secret_previous", "", repr=False)
    """The secret before a rotation: its tickets are still accepted for one window after start."""
    origins: str = setting("feedback_origins", "")
    """Comma-separated origins (https://shop.example) whose pages may post to /feedback from the
    browser (CORS); `*` any; empty: none (server-to-server only)."""
    window: int = setting("feedback_window", 24 * 3600)
    """Seconds after an answer during which its ticket is accepted (and de-duplicated)."""
    token: str = setting("feedback_token", "", repr=False)
    """When set, POST /feedback needs `Authorization: Bearer <token>`."""
    holdback: float = setting("holdback", 0.01)
    """Share of users (by a hash of their id) whose clean requests the fallback answers as the control group."""
    quality_window_minutes: int = setting("quality_window_minutes", 60)
    """Minutes of live counts the quality alarm judges."""
    quality_drop: float = setting("quality_drop", 0.2)
    """Relative drop of the hit rate the quality alarm tests for."""
    quality_threshold: float = setting("quality_threshold", 12.0)
    """CUSUM threshold of the quality alarm (log likelihood ratio; false alarms at most minutes × e^-h)."""
    quality_min_impressions: int = setting("quality_min_impressions", 200)
    """Model answers a quality alarm needs at the least."""
    quality_offline: bool = setting("quality_offline", True)
    """Also test the live hit rate against the bundle's offline figure (the site reports every next take)."""
    quality_quarantine: bool = setting("quality_quarantine", False)
    """Route a segment to the fallback while a quality alarm holds on it."""

    @property
    def origin_list(self) -> tuple[str, ...]:
        """The browser origins allowed to post feedback, as configured."""
        return tuple(origin.strip().rstrip("/") for origin in self.origins.split(",") if origin.strip())

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (not self.secret or len(self.secret) >= MIN_SECRET_CHARACTERS, "feedback_secret",
             f"empty or at least {MIN_SECRET_CHARACTERS} characters (openssl rand -hex 32)"),
            (not self.secret_previous or (len(self.secret_previous) >= MIN_SECRET_CHARACTERS
                                          and self.secret and self.secret_previous != self.secret),
             "feedback_secret_previous",
             f"empty, or at least {MIN_SECRET_CHARACTERS} characters beside a new RECGUARD_FEEDBACK_SECRET"),
            (all(origin == "*" or _ORIGIN.fullmatch(origin) for origin in self.origin_list),
             "feedback_origins", "'*' or origins such as https://shop.example or http://localhost:3000, comma-separated"),
            (self.window >= 60, "feedback_window", "at least 60"),
            (0 <= self.holdback < 1, "holdback", "in [0, 1)"),
            (1 <= self.quality_window_minutes <= 7 * 24 * 60, "quality_window_minutes", "in 1..10080"),
            (0 < self.quality_drop < 1, "quality_drop", "in (0, 1)"),
            (self.quality_threshold > 0, "quality_threshold", "positive"),
            (self.quality_min_impressions >= 1, "quality_min_impressions", "at least 1"),
        ]


@dataclass(frozen=True)
class UpstreamSettings:
    """The team's own model endpoint recguard stands in front of (empty url: the bundle's model answers)."""

    url: str = setting("upstream_url", "")
    """The endpoint every request the guard lets through is forwarded to (http:// or https://)."""
    protocol: str = setting("upstream_protocol", PLAIN)
    """The body shape the upstream speaks: plain, kserve-v1 ({"instances"} -> {"predictions"}) or oip-v2."""
    items: str = setting("upstream_items", "/items")
    """RFC 6901 pointer to the list of item ids in the upstream's answer (in each prediction with kserve-v1)."""
    scores: str = setting("upstream_scores", "")
    """Pointer to the scores beside the items in the upstream's answer; empty: it gives none."""
    request_fields: str = setting("request_fields", "")
    """Pointer to the object holding the signup fields in a request body (in each instance with kserve-v1);
    empty: the top level."""
    request_history: str = setting("request_history", "/history")
    """Pointer to the history list in a request body."""
    request_k: str = setting("request_k", "/k")
    """Pointer to k in a request body."""
    ca_file: str = setting("upstream_ca", "")
    """A PEM file of the certificate authorities an https upstream's certificate is checked against
    (a private CA); empty: the system's."""
    oip_inputs: str = setting("oip_inputs", "")
    """A tensor model's OIP v2 inputs, `NAME=FIELD[,FIELD...][:DATATYPE]` separated by ';' (proxy/oip_inputs.py):
    tensor NAME [B, fields] holds those request fields; empty: one input per field, named after it."""
    oip_items_output: str = setting("oip_items_output", "items")
    """The OIP v2 output holding the item ids."""
    oip_scores_output: str = setting("oip_scores_output", "scores")
    """The OIP v2 output holding the scores beside them; empty: the model gives none."""
    breaker_failures: int = setting("breaker_failures", 5)
    """Consecutive failed upstream calls that eject the upstream (Envoy's consecutive_5xx)."""
    breaker_base_ejection_ms: float = setting("breaker_base_ejection_ms", 30_000.0)
    """How long the first ejection lasts; the n-th lasts n times this (Envoy's base_ejection_time)."""
    breaker_max_ejection_ms: float = setting("breaker_max_ejection_ms", 300_000.0)
    """The longest an ejection lasts (Envoy's max_ejection_time)."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [
            (not self.url or (self.url.startswith(("http://", "https://")) and bool(urlsplit(self.url).hostname)),
             "upstream_url", "empty or an http:// or https:// URL"),
            (self.protocol in PROTOCOLS, "upstream_protocol", " or ".join(PROTOCOLS)),
            (not self.ca_file or Path(self.ca_file).is_file(), "upstream_ca", "empty or a readable PEM file"),
            (valid_pointer(self.items), "upstream_items", "a JSON pointer (RFC 6901): empty or starting with /"),
            (valid_pointer(self.scores), "upstream_scores", "a JSON pointer (RFC 6901): empty or starting with /"),
            (valid_pointer(self.request_fields), "request_fields", "a JSON pointer (RFC 6901): empty or starting with /"),
            (valid_pointer(self.request_history) and bool(self.request_history), "request_history",
             "a JSON pointer starting with /"),
            (valid_pointer(self.request_k) and bool(self.request_k), "request_k", "a JSON pointer starting with /"),
            (valid_inputs(self.oip_inputs), "oip_inputs", "NAME=FIELD[,FIELD...][:DATATYPE] entries separated by ;"),
            (bool(self.oip_items_output) and self.oip_items_output != self.oip_scores_output, "oip_items_output",
             "an output name, not the scores output's"),
            (self.breaker_failures >= 1, "breaker_failures", "at least 1"),
            (self.breaker_base_ejection_ms > 0, "breaker_base_ejection_ms", "positive"),
            (self.breaker_max_ejection_ms >= self.breaker_base_ejection_ms, "breaker_max_ejection_ms",
             "at least breaker_base_ejection_ms"),
        ]


@dataclass(frozen=True)
class AdminSettings:
    """Who may change state through the admin endpoints."""

    token: str = setting("admin_token", "", repr=False)
    """Token for admin endpoints; empty turns them off."""

    def checks(self) -> list[tuple[bool, str, str]]:
        return []


@dataclass(frozen=True)
class Settings:
    """Everything the proxy can be told, in groups; each part is handed the group it needs."""

    server: ServerSettings = field(default_factory=ServerSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build from RECGUARD_* variables, then `overrides` by flat name (CLI flags; None means not given)."""
        environ = os.environ if environ is None else environ
        known = {name: spec for name, spec in _specs()}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                raise SettingsError(f"{key}: unknown setting (known: {', '.join(sorted(known))})")
            values[name] = _parse(known[name], raw, key)
        for name, value in overrides.items():
            if name not in known:
                raise TypeError(f"unknown setting {name!r}")
            if value is not None:
                values[name] = _parse(known[name], value, f"--{name.replace('_', '-')}") if isinstance(value, str) else value
        groups = {}
        for group in fields(cls):
            group_values = {f.name: values[f.metadata["name"]] for f in fields(group.default_factory)
                            if f.metadata["name"] in values}
            groups[group.name] = replace(group.default_factory(), **group_values)
        settings = cls(**groups)
        settings.validate()
        return settings

    @staticmethod
    def names() -> list[str]:
        """Every flat setting name, in declaration order (RECGUARD_<NAME> upper-cased)."""
        return [name for name, _ in _specs()]

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        return {f.metadata["name"]: getattr(getattr(self, group.name), f.name)
                for group in fields(self) for f in fields(getattr(self, group.name))}

    def to_env(self) -> dict[str, str]:
        """The RECGUARD_* variables that rebuild these settings in another process (gunicorn workers)."""
        return {ENV_PREFIX + name.upper(): ("1" if value else "0") if isinstance(value, bool) else str(value)
                for name, value in self.flat().items()}

    @property
    def worker_class(self) -> str:
        """The gunicorn worker class to run: `server.worker_class`, with auto resolved (gthread in upstream
        mode, where a request waits on the network and threads overlap the waits; else sync)."""
        if self.server.worker_class != AUTO_WORKER:
            return self.server.worker_class
        return GTHREAD_WORKER if self.upstream.enabled else SYNC_WORKER

    @property
    def worker_threads(self) -> int:
        """Threads per worker: `server.threads` with gthread, 1 with sync (gunicorn would swap sync for gthread)."""
        return self.server.threads if self.worker_class == GTHREAD_WORKER else 1

    def validate(self) -> None:
        """Raise SettingsError for a value out of its range."""
        for group in fields(self):
            for ok, name, expected in getattr(self, group.name).checks():
                if not ok:
                    shown = self.flat()[name]
                    shown = redact_url(shown) if name in ("redis_url", "upstream_url") else shown
                    if name in SECRET_SETTINGS:
                        shown = f"<{len(shown)} characters>"
                    raise SettingsError(f"{ENV_PREFIX}{name.upper()}: expected {expected}, got {shown!r}")


def _specs() -> Iterator[tuple[str, dataclasses.Field]]:
    for group in fields(Settings):
        for f in fields(group.default_factory):
            yield f.metadata["name"], f


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _valid_bind(bind: str) -> bool:
    host, _, port = bind.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


_DESCRIPTIONS = {"bool": "a boolean (1/0, true/false)", "int": "an integer", "float": "a number"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(spec: dataclasses.Field, raw: str, source: str) -> Any:
    kind = spec.type
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
