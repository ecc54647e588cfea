"""Turn an HTTP body into a prediction request, or a clear client error.

Only the envelope is checked here (JSON, an object, k, history); the signup fields are the
guard's business. NaN/Infinity tokens and numbers that overflow a float are kept as
non-finite floats so the guard can name the field they came in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from proxy import json_codec

HISTORY_FIELD = "history"
K_FIELD = "k"


class BadRequest(Exception):
    """The body cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A parsed body: the signup fields as sent, the history and k."""

    fields: dict[str, Any]
    history: list[str]
    k: int


def _parse_constant(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


def _parse_int(text: str) -> int | float:
    # Python refuses to convert integers of more than 4300 digits; such a number is an
    # overflow for every numeric feature, so it becomes an infinity the guard reports.
    if len(text) > 300:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def json_type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def decode_json(body: bytes) -> Any:
    """Decode a JSON body; raise BadRequest for empty, non-UTF-8, malformed or too deeply nested input."""
    if not body.strip():
        raise BadRequest("empty body: send a JSON object")
    return json_codec.loads(body, _decode_exactly)


def _decode_exactly(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_parse_constant, parse_int=_parse_int)
    except RecursionError:
        raise BadRequest("JSON nested too deeply") from None
    except ValueError as exc:
        detail = f": {exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadRequest(f"body is not valid JSON{detail}") from None


def check_k(k: Any, *, default_k: int, max_k: int) -> int:
    """k as sent (None: the default); BadRequest unless an integer from 1 to max_k."""
    if k is None:
        return default_k
    # JSON has numbers, not integers: 10.0 and 1e1 are the integer 10 (as JSON Schema says), 10.5 is not
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadRequest(f"k must be an integer from 1 to {max_k}")
    return k


def check_history(history: Any, *, max_history: int) -> list[str]:
    """The history as sent (None: empty); BadRequest unless a list of at most max_history strings."""
    if history is None:
        return []
    if not isinstance(history, list):
        raise BadRequest("history must be a list of item ids (strings), most recent last")
    if len(history) > max_history:
        raise BadRequest(f"history has {len(history)} items; at most {max_history} are accepted")
    if not all(isinstance(item, str) for item in history):
        raise BadRequest("history must be a list of item ids (strings), most recent last")
    return history
