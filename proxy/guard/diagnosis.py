"""Which missing training field a new field looks like: renames and merges, named.

A request that lacks a training field and carries one training never saw is usually one
change, not two: the form renamed `mail` to `user_mail`, or merged `given` and `family`
into `name`. The guard reports both sides (missing_field, unexpected_field); this
adds what the change looks like, by comparing the new field's value with what the profile
knows of the missing one: its numeric range, its category domain, or the shape of its strings
(length, token count, character classes). The value itself is never echoed, and a suspicion
never routes a request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable, Mapping, Sequence

from model.char_classes import char_classes
from proxy.words import (
    MISSING_FIELD,
    OTHER,
    SUSPECTED_MERGE,
    SUSPECTED_RENAME,
    UNEXPECTED_FIELD,
    Anomaly,
)

REQUIRED_SHARE = 0.99
"""A character class in at least this share of training values must be in a look-alike (the @ of an e-mail)."""
ALLOWED_SHARE = 0.01
"""A character class in fewer training values than this must not be in a look-alike (a space in a first name)."""
LENGTH_SLACK = 0.25
"""Lengths within the training range widened by this fraction of it (at least 2 characters) look alike."""
SEPARATOR_CLASSES = frozenset({"space", "punct"})
"""What may join two merged values ("Ann Lee", "Lee, Ann")."""


@dataclass(frozen=True)
class Shape:
    """What a string field's training values looked like, compiled from its profile "shape"."""

    min_length: float
    max_length: float
    mean_length: float
    std_length: float
    min_tokens: int
    max_tokens: int
    required: frozenset[str]
    allowed: frozenset[str]

    @classmethod
    def from_profile(cls, shape: Mapping[str, Any]) -> "Shape":
        length, tokens, classes = shape["length"], shape["tokens"], shape["classes"]
        slack = max(2.0, LENGTH_SLACK * (length["max"] - length["min"]))
        return cls(length["min"] - slack, length["max"] + slack, length["mean"], length["std"],
                   tokens["min"], tokens["max"],
                   frozenset(name for name, share in classes.items() if share >= REQUIRED_SHARE),
                   frozenset(name for name, share in classes.items() if share >= ALLOWED_SHARE))

    def distance(self, value: str, classes: frozenset[str]) -> float | None:
        """How unlike a typical training value `value` is (in length std), or None when it does not fit at all."""
        if not (self.min_length <= len(value) <= self.max_length and self.min_tokens <= len(value.split()) <= self.max_tokens):
            return None
        if not (self.required <= classes <= self.allowed):
            return None
        return abs(len(value) - self.mean_length) / max(self.std_length, 1.0)


def merged_fit(first: Shape, second: Shape, value: str, classes: frozenset[str]) -> bool:
    """True when `value` looks like a value of `first` and one of `second` joined by a separator."""
    tokens = len(value.split())
    return (first.min_tokens + second.min_tokens <= tokens <= first.max_tokens + second.max_tokens
            and first.min_length + second.min_length <= len(value) <= first.max_length + second.max_length + 2
            and first.required | second.required <= classes <= first.allowed | second.allowed | SEPARATOR_CLASSES)


def _numeric_likeness(spec: Mapping[str, Any], range_tolerance: float) -> Callable[[Any], float | None]:
    slack = range_tolerance * (spec["max"] - spec["min"])
    low, high = spec["min"] - slack, spec["max"] + slack
    integer = spec["type"] == "integer"
    mean, std = spec.get("mean", 0.0), spec.get("std") or 1.0

    def likeness(value: Any) -> float | None:
        if type(value) not in (int, float) or not (low <= value <= high) or (integer and value != math.floor(value)):
            return None
        return abs(value - mean) / std

    return likeness


def _domain_likeness(domain: Mapping[str, float]) -> Callable[[Any], float | None]:
    return lambda value: 0.0 if isinstance(value, str) and value in domain else None


def _shape_likeness(shape: Shape) -> Callable[[Any], float | None]:
    return lambda value: shape.distance(value, char_classes(value)) if isinstance(value, str) else None


class Diagnosis:
    """Names suspected renames and merges from a request's missing and unexpected fields."""

    def __init__(self, profile: Mapping[str, Any], *, range_tolerance: float):
        self._likeness: dict[str, Callable[[Any], float | None]] = {}
        self._shapes: dict[str, Shape] = {}
        for name, spec in profile["fields"].items():
            if spec["type"] in ("number", "integer") and "min" in spec and "max" in spec:
                self._likeness[name] = _numeric_likeness(spec, range_tolerance)
            elif spec.get("domain"):
                self._likeness[name] = _domain_likeness(spec["domain"])
            elif spec.get("shape"):
                self._shapes[name] = Shape.from_profile(spec["shape"])
                self._likeness[name] = _shape_likeness(self._shapes[name])

    def diagnose(self, fields: Mapping[str, Any], anomalies: Sequence[Anomaly]) -> list[Anomaly]:
        """One suspected_merge or suspected_rename per unexpected field that looks like missing ones.

        A merge is tried first: a value that fits two missing string fields joined together
        ("Ann Lee") is not a rename of either."""
        missing = [a.field for a in anomalies if a.kind == MISSING_FIELD and a.field in self._likeness]
        unexpected = [a.field for a in anomalies if a.kind == UNEXPECTED_FIELD and a.field != OTHER]
        if not missing or not unexpected:
            return []
        pairs = list(combinations([name for name in missing if name in self._shapes], 2))
        found = []
        for new in unexpected:
            value = fields.get(new)
            if isinstance(value, str) and pairs:
                classes = char_classes(value)
                pair = next((pair for pair in pairs
                             if merged_fit(self._shapes[pair[0]], self._shapes[pair[1]], value, classes)), None)
                if pair is not None:
                    found.append(Anomaly(new, SUSPECTED_MERGE, f"{pair[0]} + {pair[1]} → {new}", False))
                    continue
            distances = [(distance, old) for old in missing if (distance := self._likeness[old](value)) is not None]
            if distances:
                old = min(distances)[1]
                found.append(Anomaly(new, SUSPECTED_RENAME, f"{old} → {new}", False))
        return found
