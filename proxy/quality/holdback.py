"""The holdback: a small, stable share of users answered by the fallback, as the model's control group."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence


class Holdback:
    """Picks the control group by a hash of the user's id, so a user stays in it (or out) across requests.

    The id is the first identifier field of the profile the request carries; a request with none is
    keyed by its model features instead (the same signup form, the same group). The hash is only
    computed, never stored or sent anywhere.
    """

    def __init__(self, share: float, id_fields: Sequence[str], feature_fields: Sequence[str]):
        self.share = share
        self.id_fields = tuple(id_fields)
        self.feature_fields = tuple(sorted(feature_fields))
        self._cut = int(share * 2**64)

    @classmethod
    def from_profile(cls, share: float, profile: Mapping[str, Any]) -> "Holdback":
        """The holdback over a profile's identifier fields, non-personal ones first."""
        fields = profile["fields"]
        ids = sorted((name for name, spec in fields.items() if spec.get("role") == "identifier"),
                     key=lambda name: (bool(fields[name].get("personal")), name))
        features = [name for name, spec in fields.items() if spec.get("role") == "feature"]
        return cls(share, ids, features)

    def user_key(self, fields: Mapping[str, Any]) -> bytes:
        """The bytes the group is chosen by."""
        for name in self.id_fields:
            value = fields.get(name)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                return f"{name}\x1f{value}".encode("utf-8", "replace")
        return json.dumps([fields.get(name) for name in self.feature_fields], default=str).encode()

    def holds(self, fields: Mapping[str, Any]) -> bool:
        """True when this user belongs to the control group."""
        if self._cut == 0:
            return False
        digest = hashlib.blake2b(self.user_key(fields), digest_size=8, person=b"holdback").digest()
        return int.from_bytes(digest, "big") < self._cut
