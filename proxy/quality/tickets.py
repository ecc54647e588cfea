"""Signed feedback tickets: what an answer served, handed to the site and back with the click.

A ticket is `<payload>.<tag>`, both unpadded base64url. The payload packs the format version,
the issue time (epoch seconds), the source, the request id, the model version, the segment and
the served items as catalogue indices; the tag is HMAC-SHA256 over the payload under the
deployment's secret, cut to 16 bytes (RFC 2104 allows truncation to half the output; 128 bits is
far past what an attacker could guess online). No state is kept anywhere: any replica holding the
secret can check a ticket, and the site stores nothing. Nothing personal goes in: the segment is a
declared segment value (a market) and the items are positions in the catalogue.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import struct
from typing import NamedTuple

from proxy.words import SOURCES

VERSION = 1
TAG_BYTES = 16
MAX_TEXT = 255
"""Longest request id, model version or segment a ticket carries, in UTF-8 bytes."""
MAX_ITEMS = 10_000
_HEAD = struct.Struct(">BIB")
_BLOCK = 64
"""SHA-256's block size in bytes, as HMAC pads its key."""


class TicketError(ValueError):
    """A ticket that cannot be trusted; `status` is the HTTP answer: 400 malformed, 403 forged or
    altered, 410 expired."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Ticket(NamedTuple):
    """What one answer served, as the ticket says. A named tuple: one is built on every answer, and
    a frozen dataclass costs several times as much to build."""

    request_id: str
    issued_at: int
    model_version: str
    source: str
    segment: str
    items: tuple[int, ...]
    """Catalogue indices of the served items, best first."""

    def rank_of(self, index: int) -> int | None:
        """1-based rank of a catalogue index among the served items, None when it was not served."""
        try:
            return self.items.index(index) + 1
        except ValueError:
            return None


@functools.lru_cache(maxsize=64)
def _items(count: int) -> struct.Struct:
    return struct.Struct(f">{count}I")


def _text(value: str, name: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if len(data) > MAX_TEXT:
        raise ValueError(f"{name} longer than {MAX_TEXT} bytes")
    return bytes((len(data),)) + data


_URLSAFE = bytes.maketrans(b"+/", b"-_")
_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "", "==", "=")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    # binascii in strict mode: base64.urlsafe_b64decode would skip characters outside the alphabet
    return binascii.a2b_base64((text + _PADDING[len(text) % 4]).encode("ascii").translate(_STANDARD), strict_mode=True)


class _Key:
    """HMAC-SHA256 (RFC 2104) under one secret from two pre-keyed SHA-256 states: Python's hmac
    module costs about 10 µs a call over OpenSSL 3 against about 1.5 µs for this, on every answer
    (docs/benchmarks.md); tests check it against hmac.digest."""

    def __init__(self, secret: str | bytes):
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, payload: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TAG_BYTES]


class TicketSigner:
    """Issues and checks tickets under one secret, valid for `window_seconds` after issue.

    With `previous` (the secret before a rotation), tickets signed with it are still accepted until
    `previous_until` (epoch seconds): the site's outstanding tickets keep counting for one window
    after the rotation instead of all turning into 403s."""

    def __init__(self, secret: str | bytes, window_seconds: float, *, previous: str | bytes = "",
                 previous_until: float = 0.0):
        if not secret:
            raise ValueError("a ticket secret must not be empty")
        self._key = _Key(secret)
        self._previous = _Key(previous) if previous else None
        self.previous_until = previous_until
        self.window_seconds = window_seconds

    def _tag(self, payload: bytes) -> bytes:
        return self._key.tag(payload)

    def _signed(self, payload: bytes, tag: bytes, now: float) -> bool:
        if hmac.compare_digest(tag, self._key.tag(payload)):
            return True
        return (self._previous is not None and now < self.previous_until
                and hmac.compare_digest(tag, self._previous.tag(payload)))

    def issue(self, ticket: Ticket) -> str:
        """The signed token of `ticket`."""
        if len(ticket.items) > MAX_ITEMS:
            raise ValueError(f"a ticket carries at most {MAX_ITEMS} items")
        payload = b"".join((
            _HEAD.pack(VERSION, ticket.issued_at, SOURCES.index(ticket.source)),
            _text(ticket.request_id, "request id"), _text(ticket.model_version, "model version"),
            _text(ticket.segment, "segment"),
            _items(len(ticket.items)).pack(*ticket.items),
        ))
        return f"{_b64(payload)}.{_b64(self._tag(payload))}"

    def verify(self, token: str, now: float) -> Ticket:
        """The ticket `token` carries; TicketError saying why when it is malformed, forged, altered,
        issued in the future or older than the window."""
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 64 * 1024:
            raise TicketError("malformed ticket: expected <payload>.<signature> as issued in X-Recguard-Ticket")
        payload_text, tag_text = token.split(".")
        try:
            payload, tag = _unb64(payload_text), _unb64(tag_text)
        except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
            raise TicketError("malformed ticket: not base64url") from None
        if not self._signed(payload, tag, now):
            raise TicketError("ticket signature does not match: forged, altered, or signed with another secret", 403)
        ticket = _unpack(payload)
        age = now - ticket.issued_at
        if age > self.window_seconds:
            raise TicketError(f"ticket expired: issued {age:.0f} s ago, feedback is accepted for "
                              f"{self.window_seconds:.0f} s", 410)
        if age < -60:
            raise TicketError("ticket issued in the future: clocks of the replicas disagree")
        return ticket


def _unpack(payload: bytes) -> Ticket:
    # A signed payload was packed by us; these checks only guard against a secret shared with an
    # older or broken issuer.
    try:
        version, issued_at, source = _HEAD.unpack_from(payload, 0)
        if version != VERSION or source >= len(SOURCES):
            raise TicketError(f"ticket of an unknown format (version {version})")
        offset = _HEAD.size
        texts = []
        for _ in range(3):
            length = payload[offset]
            texts.append(payload[offset + 1:offset + 1 + length].decode("utf-8"))
            offset += 1 + length
        rest = payload[offset:]
        if len(rest) % 4:
            raise TicketError("malformed ticket payload")
        items = _items(len(rest) // 4).unpack(rest)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise TicketError("malformed ticket payload") from None
    return Ticket(texts[0], issued_at, texts[1], SOURCES[source], texts[2], tuple(items))
