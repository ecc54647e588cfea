"""Per-request checks of a prediction request against the training profile.

Everything the guard knows comes from profile.json: which fields exist, their role, JSON
type, range and categories. It holds no field name of any form, so the same guard protects
any model whose bundle carries a profile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from proxy.guard.diagnosis import Diagnosis
from proxy.shapes.request import PredictRequest, json_type_name
from proxy.units import unit_hint
from proxy.words import (
    MISSING_FIELD,
    NON_FINITE,
    OTHER,
    OUT_OF_RANGE,
    TYPE_MISMATCH,
    UNEXPECTED_FIELD,
    UNKNOWN_CATEGORY,
    UNKNOWN_ITEM,
    Anomaly,
)

if TYPE_CHECKING:
    from model.bundle import Bundle
    from proxy.settings import GuardSettings

# Field names a client invents are echoed and counted only when they look like names;
# anything else (an e-mail used as a key, binary junk) is reported under one placeholder.
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9 _\-]{1,32}$")
MAX_UNEXPECTED_REPORTED = 16


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What training says about one field, compiled for fast checks."""

    name: str
    feature: bool
    numeric: bool
    integer: bool
    personal: bool
    required: bool
    low: float = -math.inf
    high: float = math.inf
    train_min: float | None = None
    train_max: float | None = None
    domain: frozenset[str] | None = None
    central: tuple[float, float] | None = None
    """The training's 5th to 95th percentile, where an out-of-range value converted back should land."""
    median: float | None = None
    integer_ids: bool = False
    """An id field whose training ids were all decimal numbers: a JSON integer names the same id."""


def compile_rules(profile: Mapping[str, Any], *, range_tolerance: float, required_presence: float) -> list[FieldRule]:
    """One rule per profile field; numeric ranges widened by `range_tolerance` × (max − min)."""
    rules = []
    for name, spec in profile["fields"].items():
        numeric = spec["type"] in ("number", "integer")
        extra: dict[str, Any] = {}
        if numeric and "min" in spec and "max" in spec:
            slack = range_tolerance * (spec["max"] - spec["min"])
            extra = {"low": spec["min"] - slack, "high": spec["max"] + slack,
                     "train_min": spec["min"], "train_max": spec["max"]}
            quantiles = spec.get("quantiles") or {}
            if {"0.05", "0.5", "0.95"} <= set(quantiles):
                extra |= {"central": (quantiles["0.05"], quantiles["0.95"]), "median": quantiles["0.5"]}
        elif not numeric and spec.get("domain"):
            extra = {"domain": frozenset(spec["domain"])}
        rules.append(FieldRule(
            name=name,
            feature=spec["role"] == "feature",
            numeric=numeric,
            integer=spec["type"] == "integer",
            personal=bool(spec.get("personal", False)),
            required=spec.get("presence", 1.0) >= required_presence,
            integer_ids=bool(spec.get("integer_ids", False)),
            **extra,
        ))
    return rules


Diagnose = Callable[[Mapping[str, Any], list[Anomaly]], list[Anomaly]]
"""Given a request's fields and anomalies, more anomalies that explain them (proxy/guard/diagnosis.py)."""


class Guard:
    """Checks requests against a compiled profile; `check` is the hot path."""

    def __init__(self, profile: Mapping[str, Any], catalogue: Iterable[str], *,
                 range_tolerance: float = 0.05, required_presence: float = 0.99, diagnose: Diagnose | None = None):
        self.rules = compile_rules(profile, range_tolerance=range_tolerance, required_presence=required_presence)
        self.known_fields = frozenset(rule.name for rule in self.rules)
        self.catalogue = frozenset(catalogue)
        self.diagnose = diagnose

    @classmethod
    def from_bundle(cls, bundle: Bundle, rules: GuardSettings) -> Guard:
        """The guard of a bundle's profile and catalogue under the guard settings, with rename and merge
        diagnosis: the one the proxy serves with and `recguard check` runs offline."""
        diagnosis = Diagnosis(bundle.profile, range_tolerance=rules.range_tolerance)
        return cls(bundle.profile, bundle.catalogue, range_tolerance=rules.range_tolerance,
                   required_presence=rules.required_presence, diagnose=diagnosis.diagnose)

    def check(self, request: PredictRequest) -> list[Anomaly]:
        """Every anomaly of the request, in profile order, then unexpected fields, then history, then
        what `diagnose` makes of them (suspected renames and merges)."""
        fields = request.fields
        anomalies = []
        for rule in self.rules:
            anomaly = _check_field(rule, fields.get(rule.name))
            if anomaly is not None:
                anomalies.append(anomaly)
        if len(fields) > len(self.known_fields) or not self.known_fields.issuperset(fields):
            anomalies.extend(self._unexpected(fields))
        if request.history:
            unknown = sum(1 for item in request.history if item not in self.catalogue)
            if unknown:
                anomalies.append(Anomaly("history", UNKNOWN_ITEM,
                                         f"{unknown} of {len(request.history)} history items are not in the catalogue", False))
        # a rename or a merge takes a missing field and an unexpected one: two anomalies at least
        if self.diagnose is not None and len(anomalies) > 1:
            anomalies.extend(self.diagnose(fields, anomalies))
        return anomalies

    def _unexpected(self, fields: Mapping[str, Any]) -> list[Anomaly]:
        names = sorted(name for name in fields if name not in self.known_fields)
        safe = [name for name in names if _SAFE_NAME.fullmatch(name)][:MAX_UNEXPECTED_REPORTED]
        anomalies = [Anomaly(name, UNEXPECTED_FIELD, "field never seen in training", False) for name in safe]
        if len(safe) < len(names):
            anomalies.append(Anomaly(OTHER, UNEXPECTED_FIELD,
                                     f"{len(names) - len(safe)} more unexpected fields not listed by name", False))
        return anomalies


def _check_field(rule: FieldRule, value: Any) -> Anomaly | None:
    if value is None:
        if rule.required:
            return Anomaly(rule.name, MISSING_FIELD, "field present in training is missing or null", rule.feature)
        return None
    if rule.numeric:
        return _check_number(rule, value)
    if not isinstance(value, str):
        if rule.integer_ids and type(value) is int and value >= 0:
            # a site's JSON sends user 6 where the logs held the text "6": the same user
            return None
        return Anomaly(rule.name, TYPE_MISMATCH, f"expected a string, got {json_type_name(value)}", rule.feature)
    if rule.domain is not None and value not in rule.domain:
        shown = f"'{value}'" if not rule.personal and _SAFE_VALUE.fullmatch(value) else "a value"
        return Anomaly(rule.name, UNKNOWN_CATEGORY, f"{shown} never seen in training", rule.feature)
    return None


def _check_number(rule: FieldRule, value: Any) -> Anomaly | None:
    if isinstance(value, bool):
        return Anomaly(rule.name, TYPE_MISMATCH, "boolean sent for a number", rule.feature)
    if isinstance(value, str):
        detail = "number sent as a string" if _looks_numeric(value) else "expected a number, got string"
        return Anomaly(rule.name, TYPE_MISMATCH, detail, rule.feature)
    if not isinstance(value, (int, float)):
        return Anomaly(rule.name, TYPE_MISMATCH, f"expected a number, got {json_type_name(value)}", rule.feature)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        return Anomaly(rule.name, NON_FINITE, "NaN, Infinity or a number too large for a float", rule.feature)
    if number < rule.low or number > rule.high:
        shown = "value" if rule.personal else f"{number:g}"
        detail = f"{shown} outside the training range [{rule.train_min:g}, {rule.train_max:g}]"
        hint = unit_hint(number, rule.central, rule.median) if rule.central is not None else None
        if hint is not None:
            detail += f"; looks like {hint}?"
        return Anomaly(rule.name, OUT_OF_RANGE, detail, rule.feature)
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def routes_to_fallback(anomalies: Iterable[Anomaly]) -> bool:
    """True when any anomaly means the model cannot be trusted with the request."""
    return any(anomaly.routes for anomaly in anomalies)
