"""A lean HTTP/1.1 client for plain-http upstreams: keep-alive connections in a per-worker pool.

Why not urllib3 (which recguard uses for https): on the forward path, every request of upstream
mode, urllib3 and the http.client under it cost about 0.6 ms of CPU per call on our machine,
most of it building and parsing headers through the email package, against about 0.1 ms for
this (scripts/bench_upstream.py, docs/benchmarks.md "The cost of the hop"). It does only what the
forward path needs: one POST at a time per connection, Content-Length or chunked answers (or
read to the end), keep-alive, the socket timeout set from what is left of the budget before
every blocking step.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass
from typing import Mapping

MAX_LINE = 65_536
MAX_HEADERS = 100
NO_BODY = (204, 304)


class ConnectionClosed(ConnectionError):
    """The upstream closed the connection before a whole answer came (`reused`: it had carried a
    request before, so it may have been closed while idle: worth one retry)."""

    def __init__(self, message: str, reused: bool):
        super().__init__(message)
        self.reused = reused


class MalformedAnswer(ValueError):
    """What came back is not an HTTP/1.x answer recguard can read."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection:
    __slots__ = ("sock", "reader", "used")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=MAX_LINE)
        self.used = False

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


class Http1Pool:
    """Keep-alive connections to one host, at most `maxsize` kept idle; safe to share between threads
    (a connection serves one request at a time: each caller takes its own)."""

    def __init__(self, host: str, port: int, maxsize: int):
        self.host, self.port, self.maxsize = host, port, maxsize
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: float, fresh: bool = False) -> Answer:
        """POST `body` and read the whole answer, each blocking step bounded by `timeout` seconds, on an
        idle connection that the peer has not closed (checked first, as urllib3 does) or, with `fresh`
        or none idle, a new one. Raises ConnectionRefusedError, TimeoutError (socket.timeout),
        ConnectionClosed, MalformedAnswer or another OSError."""
        request = self._request(path, body, headers)
        connection = self._take(timeout, fresh)
        try:
            connection.sock.settimeout(timeout)
            try:
                connection.sock.sendall(request)
                answer, keep = self._read(connection)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # on a connection that sat idle, the peer's close shows as a reset at the first read
                raise ConnectionClosed(type(exc).__name__, connection.used) from None
        except BaseException:
            connection.close()
            raise
        connection.used = True
        if keep:
            self._give_back(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _request(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1\r\n".encode("latin-1"), self._host_header,
                 b"Content-Length: %d\r\n" % len(body)]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name[:40]!r} cannot be sent: a line break or colon in it")
            if name.lower() not in ("content-length", "host", "connection", "transfer-encoding"):
                lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
        lines += (b"\r\n", body)
        return b"".join(lines)

    def _take(self, timeout: float, fresh: bool) -> _Connection:
        while not fresh:
            with self._lock:
                if not self._idle:
                    break
                connection = self._idle.pop()
            # an idle connection with something to read has been closed by the peer (or sent junk)
            if not select.select([connection.sock], [], [], 0)[0]:
                return connection
            connection.close()
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        # requests go out in one write; without this an answer's ACK can wait on delayed ACKs
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock)

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(connection)
                return
        connection.close()

    def _read(self, connection: _Connection) -> tuple[Answer, bool]:
        """The answer, and whether the connection may carry another request."""
        reader = connection.reader
        while True:
            line = reader.readline(MAX_LINE)
            if not line:
                raise ConnectionClosed("RemoteDisconnected", connection.used)
            version, _, rest = line.partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise MalformedAnswer("not an HTTP/1.x status line")
            status = int(code)
            headers = self._headers(reader)
            if status >= 200:
                break  # an interim 1xx answer is followed by the real one
        encoding = headers.get("transfer-encoding", "").lower()
        connection_header = headers.get("connection", "").lower()
        keep = (version == b"HTTP/1.1" and "close" not in connection_header) or "keep-alive" in connection_header
        if status in NO_BODY:
            body = b""
        elif "chunked" in encoding:
            body = self._chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise MalformedAnswer("Content-Length is not a number") from None
            body = reader.read(length)
            if len(body) < length:
                raise ConnectionClosed("IncompleteRead", False)
        else:
            body, keep = reader.read(), False  # the answer ends where the connection does
        return Answer(status, headers, body), keep

    @staticmethod
    def _headers(reader) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = reader.readline(MAX_LINE)
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise ConnectionClosed("IncompleteRead", False)
            name, colon, value = line.partition(b":")
            if not colon:
                raise MalformedAnswer("a header line without a colon")
            key = name.strip().decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        raise MalformedAnswer(f"more than {MAX_HEADERS} headers")

    @staticmethod
    def _chunked(reader) -> bytes:
        parts = []
        while True:
            line = reader.readline(MAX_LINE)
            if not line:
                raise ConnectionClosed("IncompleteRead", False)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise MalformedAnswer("a chunk size that is not hexadecimal") from None
            if size == 0:
                while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            chunk = reader.read(size)
            if len(chunk) < size:
                raise ConnectionClosed("IncompleteRead", False)
            parts.append(chunk)
            reader.readline(MAX_LINE)
