"""JSON Pointers (RFC 6901): where the signup fields, the history, k and the items sit in a team's own body shapes."""

from __future__ import annotations

from typing import Any

_MISSING = object()


class PointerError(ValueError):
    """A pointer names nothing in a document, or goes through a value that is not a container."""


def valid_pointer(pointer: str) -> bool:
    """True for the empty pointer (the whole document) and for one starting with '/' whose escapes are ~0 or ~1."""
    if pointer == "":
        return True
    if not pointer.startswith("/"):
        return False
    return all(token.replace("~0", "").replace("~1", "").count("~") == 0 for token in pointer[1:].split("/"))


def tokens(pointer: str) -> list[str]:
    """The reference tokens of a pointer, unescaped (~1 is '/', ~0 is '~')."""
    if pointer == "":
        return []
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def resolve(document: Any, pointer: str | list[str], default: Any = _MISSING) -> Any:
    """The value the pointer names; `default` (or PointerError without one) when it names nothing."""
    value = document
    for token in tokens(pointer) if isinstance(pointer, str) else pointer:
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and (token == "0" or not token.startswith("0")) \
                and int(token) < len(value):
            value = value[int(token)]
        else:
            if default is _MISSING:
                raise PointerError(f"nothing at {pointer if isinstance(pointer, str) else '/' + '/'.join(pointer)}")
            return default
    return value


def assign(document: dict, pointer: str, value: Any) -> dict:
    """Set the value at a pointer in a document of nested objects, making the objects on the way; the document."""
    path = tokens(pointer)
    if not path:
        raise PointerError("the empty pointer names the whole document: nothing to assign into")
    target = document
    for token in path[:-1]:
        target = target.setdefault(token, {})
        if not isinstance(target, dict):
            raise PointerError(f"{pointer} goes through a value that is not an object")
    target[path[-1]] = value
    return document
