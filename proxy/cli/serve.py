"""Serving-side subcommands of `recguard`: serve, and the team's queries of Redis (anomalies, quality)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from proxy.words import KINDS, PROTOCOLS, WORKER_CLASSES


def register(sub: argparse._SubParsersAction) -> None:
    """Add the serving-side subcommands to the `recguard` parser."""
    serve = sub.add_parser("serve", help="serve a bundle behind the guard with gunicorn",
                           description="Serve a bundle with gunicorn. Flags override RECGUARD_* variables.")
    serve.add_argument("--bundle", help="bundle directory (RECGUARD_BUNDLE)")
    serve.add_argument("--bind", help="HOST:PORT (RECGUARD_BIND, default 127.0.0.1:8000)")
    serve.add_argument("--workers", type=int, help="worker processes (RECGUARD_WORKERS)")
    serve.add_argument("--worker-class", choices=WORKER_CLASSES,
                       help="gunicorn worker class (RECGUARD_WORKER_CLASS, default auto: sync, gthread with --upstream)")
    serve.add_argument("--threads", type=int, help="threads per worker with gthread (RECGUARD_THREADS)")
    serve.add_argument("--redis", dest="redis_url", help="Redis URL (RECGUARD_REDIS_URL)")
    serve.add_argument("--redis-prefix", help="Redis key prefix (RECGUARD_REDIS_PREFIX)")
    serve.add_argument("--model-timeout-ms", type=float, help="model budget per request (RECGUARD_MODEL_TIMEOUT_MS)")
    serve.add_argument("--flush-interval", type=float, help="seconds between counter flushes (RECGUARD_FLUSH_INTERVAL)")
    serve.add_argument("--no-guard", dest="guard", action="store_const", const=False,
                       help="serve the bare model: no checks, no counters (the baseline)")
    serve.add_argument("--model-name", help="the model's name on the /v2 endpoints (RECGUARD_MODEL_NAME, default recguard)")
    upstream = serve.add_argument_group("upstream mode", "stand in front of the team's own model endpoint "
                                                         "(docs/upstream.md)")
    upstream.add_argument("--upstream", dest="upstream_url", metavar="URL",
                          help="forward what the guard lets through to this endpoint (RECGUARD_UPSTREAM_URL)")
    upstream.add_argument("--upstream-protocol", choices=PROTOCOLS,
                          help="the body shape it speaks (RECGUARD_UPSTREAM_PROTOCOL, default plain)")
    upstream.add_argument("--upstream-ca", metavar="PEM",
                          help="CA bundle an https upstream's certificate is checked against (RECGUARD_UPSTREAM_CA)")
    upstream.add_argument("--upstream-items", metavar="POINTER",
                          help="JSON pointer to the item ids in its answer (RECGUARD_UPSTREAM_ITEMS, default /items)")
    upstream.add_argument("--upstream-scores", metavar="POINTER",
                          help="JSON pointer to the scores in its answer (RECGUARD_UPSTREAM_SCORES, default none)")
    upstream.add_argument("--request-fields", metavar="POINTER",
                          help="JSON pointer to the signup fields in a request (RECGUARD_REQUEST_FIELDS, default the top level)")
    upstream.add_argument("--request-history", metavar="POINTER",
                          help="JSON pointer to the history in a request (RECGUARD_REQUEST_HISTORY, default /history)")
    upstream.add_argument("--request-k", metavar="POINTER",
                          help="JSON pointer to k in a request (RECGUARD_REQUEST_K, default /k)")
    upstream.add_argument("--oip-input", dest="oip_inputs", metavar="NAME=FIELD[,FIELD...][:DATATYPE]",
                          action="append",
                          help="an OIP v2 input tensor of a tensor model, [B, fields] holding those request fields "
                               "(datatype default FP32); once per tensor (RECGUARD_OIP_INPUTS, ';' between tensors)")
    upstream.add_argument("--oip-items-output", metavar="NAME",
                          help="the OIP v2 output holding the item ids (RECGUARD_OIP_ITEMS_OUTPUT, default items)")
    upstream.add_argument("--oip-scores-output", metavar="NAME",
                          help="the OIP v2 output holding the scores (RECGUARD_OIP_SCORES_OUTPUT, default scores; "
                               "empty: none)")
    serve.set_defaults(handler=serve_command)

    anomalies = sub.add_parser("anomalies", help="what went wrong since a time, from the counters in Redis")
    anomalies.add_argument("--since", default="1h", help="90s, 15m, 1h, 2d or an ISO-8601 time (default 1h)")
    anomalies.add_argument("--until", help="like --since (default now)")
    anomalies.add_argument("--field", help="only anomalies of this field")
    anomalies.add_argument("--kind", choices=KINDS, metavar="KIND",
                           help=f"only anomalies of this kind ({', '.join(KINDS)})")
    anomalies.add_argument("--redis", dest="redis_url", help="Redis URL (RECGUARD_REDIS_URL)")
    anomalies.add_argument("--redis-prefix", help="Redis key prefix (RECGUARD_REDIS_PREFIX)")
    anomalies.add_argument("--json", action="store_true", help="print JSON instead of a table")
    anomalies.set_defaults(handler=anomalies_command)

    quality = sub.add_parser("quality", help="live hit rates from the site's feedback, per version, source and segment")
    quality.add_argument("--since", default="1h", help="90s, 15m, 1h, 2d or an ISO-8601 time (default 1h)")
    quality.add_argument("--until", help="like --since (default now)")
    quality.add_argument("--by", default="version,source,segment",
                         help="comma-separated grouping keys: version, source, segment (default all three)")
    quality.add_argument("--bundle", help="a bundle whose offline figures to show beside the live ones")
    quality.add_argument("--redis", dest="redis_url", help="Redis URL (RECGUARD_REDIS_URL)")
    quality.add_argument("--redis-prefix", help="Redis key prefix (RECGUARD_REDIS_PREFIX)")
    quality.add_argument("--json", action="store_true", help="print JSON instead of a table")
    quality.set_defaults(handler=quality_command)


def _settings(args: argparse.Namespace, names: tuple[str, ...]):
    from proxy.settings import Settings

    values = {name: getattr(args, name, None) for name in names}
    # a flag given once per entry (--oip-input) is one setting, its entries separated by ';'
    return Settings.from_env(**{name: ";".join(value) if isinstance(value, list) else value
                                for name, value in values.items()})


def serve_command(args: argparse.Namespace) -> int:
    """Validate settings and the bundle here, then replace this process with gunicorn."""
    from model.bundle import load_bundle
    from model.errors import RecguardError
    from proxy.oip_inputs import parse_inputs
    from proxy.settings import redact_url

    settings = _settings(args, ("bundle", "bind", "workers", "worker_class", "threads", "redis_url", "redis_prefix",
                                "model_timeout_ms", "flush_interval", "guard", "model_name", "upstream_url",
                                "upstream_protocol", "upstream_ca", "upstream_items", "upstream_scores", "request_fields",
                                "request_history", "request_k", "oip_inputs", "oip_items_output", "oip_scores_output"))
    bundle = load_bundle(settings.server.bundle)
    if not bundle.has_model and not settings.upstream.enabled:
        raise RecguardError(f"{settings.server.bundle} is a guard-only bundle (no model to serve): it needs --upstream URL, "
                            f"the endpoint of your own model")
    mapped = [field for tensor in parse_inputs(settings.upstream.oip_inputs) for field in tensor.fields
              if field not in bundle.profile["fields"]]
    if mapped:
        raise RecguardError(f"--oip-input names {', '.join(map(repr, mapped))}, not a field of the bundle's profile "
                            f"(its fields: {', '.join(bundle.profile['fields'])})")
    target = (f"in front of {redact_url(settings.upstream.url)} ({settings.upstream.protocol})"
              if settings.upstream.enabled else bundle.model_version)
    print(f"recguard: serving {target} on {settings.server.bind} "
          f"({settings.server.workers} {settings.worker_class} workers, guard {'on' if settings.guard.enabled else 'off'})", file=sys.stderr)
    env = dict(os.environ)
    env.update(settings.to_env())
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recguard-metrics-")
    # One BLAS thread per worker: workers are the parallelism, oversubscription only adds latency.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    command = [sys.executable, "-m", "gunicorn", "-c", "python:proxy.http.gunicorn_config", "proxy.http.wsgi:app"]
    os.execvpe(command[0], command, env)
    return 0


def _query_redis(args: argparse.Namespace, what: str, query):
    """Run `query(client, prefix, since, until)` on the Redis the settings name over the time range
    of --since/--until; a bad time or an unreachable Redis becomes a one-line RecguardError naming
    `what` it could not read (the URL's password redacted)."""
    from datetime import datetime, timezone

    import redis

    from model.errors import RecguardError
    from proxy.settings import redact_url
    from proxy.store.anomaly_query import parse_time
    from proxy.store.client import make_redis_client

    settings = _settings(args, ("redis_url", "redis_prefix"))
    now = datetime.now(timezone.utc)
    try:
        since = parse_time(args.since, now)
        until = parse_time(args.until, now) if args.until else now
        return query(make_redis_client(settings.redis.url, timeout=2.0), settings.redis.prefix, since, until)
    except ValueError as exc:
        raise RecguardError(str(exc)) from None
    except redis.RedisError as exc:
        reason = str(exc).replace(settings.redis.url, redact_url(settings.redis.url))
        raise RecguardError(f"cannot read {what} from {redact_url(settings.redis.url)}: {reason}") from None


def anomalies_command(args: argparse.Namespace) -> int:
    """Print the anomaly counts of a time range, read straight from Redis."""
    from proxy.drift.alarms import read_alarms
    from proxy.store.anomaly_query import format_table, query_anomalies

    def query(client, prefix, since, until):
        report = query_anomalies(client, prefix, since, until, field=args.field, kind=args.kind)
        report.alarms = [alarm.to_json() for alarm in read_alarms(client, prefix)]
        return report

    report = _query_redis(args, "counters", query)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_table(report))
    return 0


def quality_command(args: argparse.Namespace) -> int:
    """Print the live quality of a time range, read straight from Redis."""
    from model.bundle import load_bundle
    from proxy.quality.report import (
        format_quality_table,
        parse_group_keys,
        query_quality,
    )
    from proxy.runtime import offline_figures

    def query(client, prefix, since, until):
        return query_quality(client, prefix, since, until, parse_group_keys(args.by))

    report = _query_redis(args, "counts", query)
    if args.bundle:
        report.offline = offline_figures(load_bundle(args.bundle))
    print(json.dumps(report.to_json(), indent=2) if args.json else format_quality_table(report))
    return 0
