"""A small model endpoint the tests own, that can be told to misbehave: what no real model does on demand.

It answers every POST with items from a given catalogue, in plain JSON (`{"items", "scores"}`),
KServe v1 (`{"predictions": [...]}`, one per instance) or OIP v2 (`items` and `scores` outputs, one
row per row of the request, JSON tensors; a binary request's JSON header is read for its rows),
over HTTP/1.1 keep-alive, and counts what it was sent. `mode` (settable while it runs) turns it into each fault recguard must survive:

    ok        the answer
    slow      the answer, `delay` seconds late
    trickle   the answer's head at once, then its body one byte every TRICKLE_GAP seconds (a model under
              load, a congested link: every read is quick, the whole is not)
    error     500
    bad       400 with a body of its own (the caller's fault: recguard passes it through)
    garbage   200 with a body that is not JSON
    no_items  200 JSON without the items
    outside   200 with item ids outside the catalogue
    close     closes every connection without answering
    stale     answers the first request of a connection, closes the connection on the next one without
              answering (an idle keep-alive connection the server dropped just as it was reused)
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TRICKLE_GAP = 0.02
TEAM_HEADER = "X-Team-Model-Host"
"""A header of the upstream's own on every answer: recguard must not pass it on."""


class UpstreamServer:
    """A threaded HTTP/1.1 server on a free loopback port; `start()`, `stop()`, `url`."""

    def __init__(self, catalogue: list[str], shape: str = "plain", tls: tuple[Path, Path] | None = None):
        self.catalogue = catalogue
        self.shape = shape
        self.mode = "ok"
        self.delay = 0.0
        self.requests = 0
        self.instances = 0
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        scheme = "http"
        if tls is not None:  # (certificate, key): an https upstream
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.port}/invocations"

    def answer_for(self, body: bytes, header_length: int | None = None) -> bytes:
        """What the server answers a body with in mode ok: the first catalogue items, best first."""
        items = self.catalogue[:5]
        one = {"items": items, "scores": [float(5 - i) for i in range(len(items))]}
        if self.shape == "oip-v2":
            document = json.loads(body[:header_length] if header_length is not None else body)
            rows = next(tensor["shape"][0] for tensor in document["inputs"] if tensor["name"] != "k")
            return json.dumps({"model_name": "team", "outputs": [
                {"name": name, "datatype": datatype, "shape": [rows, len(items)], "data": one[name] * rows}
                for name, datatype in (("items", "BYTES"), ("scores", "FP32"))]}).encode()
        if self.shape == "kserve-v1":
            instances = json.loads(body)["instances"]
            return json.dumps({"predictions": [one for _ in instances], "model": "team"}).encode()
        return json.dumps({**one, "model": "team"}).encode()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                served = getattr(self, "served", 0)  # one handler per connection
                self.served = served + 1
                with owner.lock:
                    owner.requests += 1
                    owner.bodies.append(body)
                    owner.headers.append(dict(self.headers.items()))
                    if owner.shape == "kserve-v1":
                        try:
                            owner.instances += len(json.loads(body)["instances"])
                        except (ValueError, KeyError, TypeError):
                            pass
                mode = owner.mode
                if mode == "close" or (mode == "stale" and served >= 1):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "slow":
                    time.sleep(owner.delay)
                status, payload = {
                    "error": (500, b'{"error": "model crashed"}'),
                    "bad": (400, b'{"error": "team model says: bad request"}'),
                    "garbage": (200, b"<html>not json</html>"),
                    "no_items": (200, b'{"recommendations": []}'),
                    "outside": (200, b'{"items": ["no_such_item_1", "no_such_item_2"]}'),
                }.get(mode, (200, None))
                if payload is None:
                    length = self.headers.get("Inference-Header-Content-Length")
                    payload = owner.answer_for(body, int(length) if length is not None else None)
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header(TEAM_HEADER, "gpu-node-7")
                self.end_headers()
                if mode == "trickle":
                    self.wfile.flush()
                    try:
                        for byte in payload:
                            time.sleep(TRICKLE_GAP)
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                    except OSError:  # recguard gave up at its budget, as it should
                        self.close_connection = True
                    return
                self.wfile.write(payload)

        return Handler

    def start(self) -> "UpstreamServer":
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, made with the openssl command."""
    cert, key = directory / "upstream.pem", directory / "upstream.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key
