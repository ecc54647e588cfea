"""JSON in and out of the request path: orjson where it gives the standard library's answer, the
standard library where it would not.

orjson parses and writes several times faster than `json`, but differs from it on inputs a
client can send and values an answer could hold, and recguard's behaviour on those is the
standard library's (tests/proxy/test_json_codec.py holds the two to each other):

- an integer beyond 64 bits: orjson reads it as a float, `json` as the exact integer (which
  the envelope check then judges): any run of 19 or more digits goes to `json`;
- NaN / Infinity tokens, an overflowing 1e400, lone surrogates, nesting past 1,024 levels,
  invalid UTF-8: orjson refuses them, `json` (with the caller's hooks) gives what it always
  gave, a value or the same error;
- writing NaN: orjson writes null, `json` with allow_nan=False refuses; an integer past 64
  bits or a key that is not a string: orjson refuses. An answer with a null in it (NaN or a
  real None), or one orjson refuses, is written by `json` instead: NaN never leaves.

Both write compact JSON (no spaces, non-ASCII as UTF-8), so an answer's bytes do not depend
on which one wrote it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import orjson

# every digit to "0", every other byte to " ": a run of 19 digits is then a plain substring search,
# several times cheaper than a regular expression over the body
_DIGITS_ONLY = bytes(ord("0") if chr(byte).isdigit() and byte < 128 else ord(" ") for byte in range(256))
_LONG_DIGITS = b"0" * 19
# a null token in compact JSON: the whole document, or after ':', '[' or ','. A string holding
# such text ("missing or null" does not) only sends the answer down the slower, equal path.
_NULL_TOKEN = re.compile(rb"[:\[,]null")


def loads(body: bytes, slow: Callable[[bytes], Any]) -> Any:
    """The JSON value of `body`; whatever orjson would not read exactly as `json` does goes to
    `slow` (the caller's `json.loads` with its hooks and error messages)."""
    if _LONG_DIGITS not in body.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return slow(body)


def dumps(value: Any) -> bytes:
    """Compact JSON of `value`; ValueError for NaN or an infinity (allow_nan=False), as `json` raises."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        encoded = None
    if encoded is None or (b"null" in encoded and (encoded == b"null" or _NULL_TOKEN.search(encoded))):
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    return encoded
