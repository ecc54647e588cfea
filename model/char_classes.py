"""The "shape" of a string field in profile.json: character classes, shared by training and serving.

Training counts, per string field, the share of values holding each class (model/profile.py);
the proxy classifies a new field's value the same way to tell what it looks like
(proxy/guard/diagnosis.py). Only the classes are kept, never the characters.
"""

from __future__ import annotations

CHAR_CLASSES = ("lower", "upper", "letter", "digit", "space", "at", "punct")
"""Lower- and upper-case letters, letters without case, digits, white space, '@', anything else."""


def char_class(char: str) -> str:
    """The class of one character (one of CHAR_CLASSES)."""
    if char == "@":
        return "at"
    if char.isspace():
        return "space"
    if char.isdigit():
        return "digit"
    if char.isupper():
        return "upper"
    if char.islower():
        return "lower"
    return "letter" if char.isalpha() else "punct"


def char_classes(value: str) -> frozenset[str]:
    """The classes of the characters of a value."""
    return frozenset(char_class(char) for char in value)
