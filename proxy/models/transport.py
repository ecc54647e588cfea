"""HTTP to the team's upstream over libcurl (pycurl): one handle per thread, kept alive between calls.

Why libcurl: keep-alive, chunked answers, interim answers, TLS and HTTP/2 with decades of hardening
behind it, and one deadline over the whole call: `CURLOPT_TIMEOUT_MS` bounds connect, send and every
read together, so an upstream that trickles its answer a byte at a time is cut at the budget, not
at the budget per read. Its CPU per call is the hand-written HTTP/1.1 client's it replaces and a
quarter of urllib3's (docs/benchmarks.md, "The cost of the hop").

Each thread has its own `Curl` handle (a handle is not for two threads at once), and each handle
its own connection cache: a gthread worker's threads each keep their connection to the upstream
open. libcurl sends a request again, once, on a new connection when a kept-alive one turns out
closed before any answer came (the peer dropped it while idle); nothing else is retried.
"""

from __future__ import annotations

import os
import ssl
import threading
from dataclasses import dataclass
from typing import Mapping

import pycurl

# the request headers libcurl would add by itself and we do not want: a POST body over 1 KB would wait
# for "100 Continue", and a body without a Content-Type would be called a form
_SUPPRESSED = ("Expect:", "Content-Type:")


class TransportError(Exception):
    """The call did not end in an HTTP answer; `reason` is a short word for what happened."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class TransportTimeout(TransportError):
    """The deadline passed before the whole answer came."""


REFUSED, CLOSED, NOT_HTTP, TLS, FAILED = ("refused the connection", "closed the connection", "answer is not HTTP",
                                          "TLS failed", "connection failed")
_REASONS = {
    pycurl.E_COULDNT_CONNECT: REFUSED,
    pycurl.E_COULDNT_RESOLVE_HOST: REFUSED,
    pycurl.E_GOT_NOTHING: CLOSED,
    pycurl.E_RECV_ERROR: CLOSED,
    pycurl.E_SEND_ERROR: CLOSED,
    pycurl.E_PARTIAL_FILE: CLOSED,
    8: NOT_HTTP,  # CURLE_WEIRD_SERVER_REPLY (pycurl still names it E_FTP_WEIRD_SERVER_REPLY)
    pycurl.E_UNSUPPORTED_PROTOCOL: NOT_HTTP,
    pycurl.E_SSL_CONNECT_ERROR: TLS,
    pycurl.E_PEER_FAILED_VERIFICATION: TLS,
    pycurl.E_SSL_CACERT_BADFILE: TLS,
}


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer: status, headers (names lower-cased, the final answer's only) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes
    reused: bool
    """The call went over a connection kept alive from an earlier one."""


class CurlTransport:
    """POSTs to one URL, each thread on its own kept-alive handle."""

    def __init__(self, url: str, *, ca_file: str = ""):
        self.url = url
        # The system's certificate store when none is given, as Python's ssl finds it (SSL_CERT_FILE
        # honoured): the libcurl inside pycurl's wheel was built to look where Red Hat keeps it.
        self.ca_file = ca_file or _system_ca_file()
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def post(self, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """POST `body` with `headers` and read the whole answer, all within `timeout` seconds.

        Raises TransportTimeout past the deadline, TransportError when no HTTP answer came, and
        ValueError (nothing sent) for a header value holding a line break."""
        lines = list(_SUPPRESSED)
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        handle = self._handle()
        received: dict[str, str] = {}
        chunks: list[bytes] = []

        def header(line: bytes) -> None:
            text = line.decode("latin-1").rstrip("\r\n")
            if text.startswith("HTTP/"):
                received.clear()  # a new answer: an interim one (100 Continue) is forgotten
            elif ":" in text:
                name, _, value = text.partition(":")
                received[name.strip().lower()] = value.strip()

        milliseconds = max(1, int(timeout * 1000))
        handle.setopt(pycurl.TIMEOUT_MS, milliseconds)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, milliseconds)
        handle.setopt(pycurl.HTTPHEADER, lines)
        handle.setopt(pycurl.POSTFIELDSIZE, len(body))
        handle.setopt(pycurl.POSTFIELDS, body)
        handle.setopt(pycurl.HEADERFUNCTION, header)
        handle.setopt(pycurl.WRITEFUNCTION, chunks.append)
        try:
            handle.perform()
        except pycurl.error as exc:
            code, message = exc.args[0], str(exc.args[1]) if len(exc.args) > 1 else ""
            if code == pycurl.E_OPERATION_TIMEDOUT:
                raise TransportTimeout("past the deadline", message) from None
            raise TransportError(_REASONS.get(code, FAILED), message or f"curl error {code}") from None
        finally:
            # the callbacks hold this call's buffers: drop them with the call
            handle.setopt(pycurl.HEADERFUNCTION, _ignore)
            handle.setopt(pycurl.WRITEFUNCTION, _ignore)
        reused = handle.getinfo(pycurl.NUM_CONNECTS) == 0
        return Answer(handle.getinfo(pycurl.RESPONSE_CODE), received, b"".join(chunks), reused)

    def _handle(self) -> pycurl.Curl:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = pycurl.Curl()
            handle.setopt(pycurl.URL, self.url)
            handle.setopt(pycurl.NOSIGNAL, 1)  # timeouts without SIGALRM: safe in a threaded worker
            handle.setopt(pycurl.FOLLOWLOCATION, 0)
            handle.setopt(pycurl.TCP_NODELAY, 1)
            handle.setopt(pycurl.NOPROGRESS, 1)
            if self.ca_file:
                handle.setopt(pycurl.CAINFO, self.ca_file)
            self._local.handle = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def close(self) -> None:
        """Close every thread's handle and its connections."""
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()
        self._local = threading.local()


def _ignore(data: bytes) -> None:
    return None


def _system_ca_file() -> str:
    """The system's CA bundle, as Python's ssl module finds it ("" when there is none)."""
    cafile = ssl.get_default_verify_paths().cafile
    return cafile if cafile and os.path.isfile(cafile) else ""
