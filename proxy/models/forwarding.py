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
from proxy.shapes.triton_binary import BINARY_CONTENT_TYPE, BINARY_HEADER
from proxy.words import MODEL, Anomaly

CONTENT_TYPE = "Content-Type"
JSON_CONTENT_TYPE = "application/json"
REQUEST_ID_HEADER = "X-Request-Id"
"""The request id every answer carries (the caller's or a new one), sent upstream under the same name."""


def body_headers(parsed: Parsed, whole: bool, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers that say what the body sent upstream is. A binary OIP body as it came keeps its framing
    (Inference-Header-Content-Length); every other body recguard sends is JSON and says so: the caller's
    JSON type as it came, else application/json (an OIP client need not send a Content-Type at all, and
    KServe's server then reads the body as binary tensors and refuses it)."""
    caller = next((value for name, value in headers if name.lower() == CONTENT_TYPE.lower()), None)
    if whole and parsed.json_length is not None:
        return {CONTENT_TYPE: caller or BINARY_CONTENT_TYPE, BINARY_HEADER: str(parsed.json_length)}
    mimetype = (caller or "").partition(";")[0].strip().lower()
    if mimetype == JSON_CONTENT_TYPE or (mimetype.startswith("application/") and mimetype.endswith("+json")):
        return {CONTENT_TYPE: caller}
    return {CONTENT_TYPE: JSON_CONTENT_TYPE}


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
        headers = list(headers)
        whole = len(rows) == len(parsed.rows)
        sent = parsed.body if whole else shape.subset(parsed, rows)
        # the upstream sees the request id the answer carries, the caller's or a new one
        sent_headers = {name: value for name, value in forwarded_headers(headers).items()
                        if name.lower() != CONTENT_TYPE.lower()}
        sent_headers.update(body_headers(parsed, whole, headers))
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
