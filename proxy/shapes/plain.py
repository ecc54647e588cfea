"""The plain shape: one JSON object per request and per answer, its parts where RFC 6901 pointers say."""

from __future__ import annotations

import json
from typing import Any, Sequence

from model.recommender import Recommendation
from proxy.pointer import PointerError, assign, resolve, tokens
from proxy.settings import LimitSettings, UpstreamSettings
from proxy.shapes.base import Parsed, RowAnswer, ShapeError, finite, item_ids, scores_of
from proxy.shapes.request import (
    BadRequest,
    PredictRequest,
    check_history,
    check_k,
    decode_json,
    json_type_name,
)
from proxy.words import PLAIN


class PlainShape:
    """A JSON object per request (fields, history and k where the pointers say) and per answer (items, scores)."""

    name = PLAIN

    def __init__(self, upstream: UpstreamSettings, limits: LimitSettings):
        self.fields = upstream.request_fields
        self.history = upstream.request_history
        self.k = upstream.request_k
        self.items = upstream.items
        self.scores = upstream.scores
        self.limits = limits
        # the history and k keys that sit inside the fields object are no signup fields
        prefix = tokens(self.fields)
        self._envelope = {path[-1] for path in (tokens(self.history), tokens(self.k))
                          if path[:-1] == prefix}
        # read on every request: the pointers split into their tokens once
        self._paths = prefix, tokens(self.history), tokens(self.k)

    def parse(self, body: bytes) -> Parsed:
        payload = decode_json(body)
        return Parsed(self.name, body, payload, [self.read_row(payload)])

    def read_row(self, document: Any, where: str = "body") -> PredictRequest:
        """One request from one JSON object (the body, or one instance of a batch)."""
        if not isinstance(document, dict):
            raise BadRequest(f"{where} must be a JSON object, got {json_type_name(document)}")
        fields_path, history_path, k_path = self._paths
        fields = _at(document, fields_path)
        if not isinstance(fields, dict):
            raise BadRequest(f"{where} has no object of signup fields at {self.fields!r}")
        limits = self.limits
        k = check_k(_at(document, k_path), default_k=limits.default_k, max_k=limits.max_k)
        history = check_history(_at(document, history_path), max_history=limits.max_history)
        if self._envelope:
            fields = {key: value for key, value in fields.items() if key not in self._envelope}
        return PredictRequest(fields=fields, history=history, k=k)

    def write_row(self, row: PredictRequest) -> dict[str, Any]:
        """One request as a JSON object at the pointers."""
        document: dict[str, Any] = dict(row.fields) if not self.fields else assign({}, self.fields, dict(row.fields))
        assign(document, self.history, list(row.history))
        assign(document, self.k, row.k)
        return document

    def request_body(self, rows: Sequence[PredictRequest]) -> bytes:
        (row,) = rows
        return json.dumps(self.write_row(row)).encode()

    def subset(self, parsed: Parsed, indices: Sequence[int]) -> bytes:
        raise ValueError("a plain body has one row")

    def read_one(self, document: Any, where: str = "answer") -> Recommendation:
        """The items and scores of one answer object."""
        try:
            items = item_ids(resolve(document, self.items), f"{where} at {self.items!r}")
            scores = (scores_of(resolve(document, self.scores), len(items), f"{where} at {self.scores!r}")
                      if self.scores else [])
        except PointerError:
            raise ShapeError(f"{where} has nothing at {self.items!r}" if not self.scores else
                             f"{where} lacks {self.items!r} or {self.scores!r}") from None
        return Recommendation(items, scores)

    def read_answer(self, payload: Any, count: int) -> list[Recommendation]:
        return [self.read_one(payload)]

    def write_answer(self, answer: RowAnswer) -> Any:
        """One answer at the items (and scores) pointers."""
        if not self.items:
            return list(answer.items)
        document = assign({}, self.items, list(answer.items))
        if self.scores:
            assign(document, self.scores, finite(answer.scores))
        return document

    def render(self, parsed: Parsed, answers: Sequence[RowAnswer], model_version: str) -> Any:
        (answer,) = answers
        return self.write_answer(answer)


def _at(document: dict, path: list[str]) -> Any:
    """The value at a tokenized pointer, None where it names nothing; a top-level key read directly
    (recguard's own body and most plain ones: it is on every request)."""
    if not path:
        return document
    if len(path) == 1:
        return document.get(path[0])
    return resolve(document, path, None)
