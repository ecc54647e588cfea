"""The team's own endpoint as the model side: a body in its shape goes to it as it came.

A request in the upstream's own shape is forwarded in one call: the body unchanged when the screens
let every row through, else the same body with only those rows; the upstream's answer comes back to
the caller unchanged when it answers the whole request. A request in another shape (recguard's OIP
endpoints in front of a plain upstream) is asked of the upstream row by row in its own shape.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from model.recommender import ModelError
from proxy.models.embedded import RowByRow
from proxy.models.side import ModelAnswer
from proxy.models.upstream import UpstreamClient, forwarded_headers
from proxy.shapes.base import Parsed
from proxy.words import MODEL, Anomaly

REQUEST_ID_HEADER = "X-Request-Id"
"""The request id every answer carries (the caller's or a new one), sent upstream under the same name."""


class Forwarder:
    """Forwards what the screens let through to the upstream, one call per request."""

    def __init__(self, upstream: UpstreamClient, other_shapes: RowByRow):
        self.upstream = upstream
        self.other_shapes = other_shapes

    def answer(self, parsed: Parsed, rows: Sequence[int], request_id: str = "",
               headers: Iterable[tuple[str, str]] = ()) -> ModelAnswer:
        shape = self.upstream.shape
        if parsed.shape != shape.name:
            return self.other_shapes.answer(parsed, rows, request_id, headers)
        sent = parsed.body if len(rows) == len(parsed.rows) else shape.subset(parsed, rows)
        # the upstream sees the request id the answer carries, the caller's or a new one
        sent_headers = forwarded_headers(headers)
        if request_id:
            sent_headers[REQUEST_ID_HEADER] = request_id
        try:
            reply = self.upstream.call(sent, sent_headers, len(rows))
        except ModelError as exc:
            failure = Anomaly(MODEL, exc.kind, str(exc), True)
            return ModelAnswer({i: failure for i in rows})
        if reply.rows is None:
            return ModelAnswer(reply=reply)
        return ModelAnswer(dict(zip(rows, reply.rows)), reply)

    def close(self) -> None:
        self.other_shapes.close()
        self.upstream.close()
