"""What a Redis URL says: one server (`redis://`, `rediss://`, `unix://`) or the seed nodes of a Redis
Cluster (`redis+cluster://[user:password@]host:port[,host:port...]`, `rediss+cluster://` for TLS).

The grammar alone, with no client: the settings check a URL with it at start, and the store's client
builds its connections from what it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SINGLE_SCHEMES = ("redis", "rediss", "unix")
_DEFAULT_PORT = 6379


@dataclass(frozen=True)
class ClusterURL:
    """What a `redis+cluster://` URL says: the seed nodes and how to connect to each."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_cluster_url(url: str) -> bool:
    """True for a `redis+cluster://` or `rediss+cluster://` URL."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def valid_redis_url(url: str) -> bool:
    """True for a URL `make_redis_client` accepts."""
    scheme = url.partition("://")[0].lower()
    if scheme in SINGLE_SCHEMES:
        return "://" in url
    try:
        parse_cluster_url(url)
    except ValueError:
        return False
    return True


def parse_cluster_url(url: str) -> ClusterURL:
    """The seeds and credentials of `redis+cluster://[user:password@]host:port[,host:port...][/0]`.

    Raises ValueError (its message never holds the password) for anything else."""
    expected = "expected redis+cluster://HOST:PORT[,HOST:PORT...]"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(expected)
    netloc, _, path = rest.partition("/")
    if "?" in netloc or path not in ("", "0"):
        raise ValueError(f"{expected}: a cluster has only database 0 and takes no options in the URL")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    seeds = []
    for part in netloc.split(","):
        host, port = _host_port(part)
        if not host:
            raise ValueError(f"{expected}: empty host in {part!r}")
        seeds.append((host, port))
    return ClusterURL(tuple(seeds), username, password, CLUSTER_SCHEMES[scheme.lower()] == "rediss")


def _host_port(part: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:7000
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if not port:
        return host, _DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected redis+cluster://HOST:PORT[,HOST:PORT...]: bad port in {part!r}")
    return host, int(port)
