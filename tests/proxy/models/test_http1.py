"""The lean HTTP/1.1 client against a real TCP peer that answers with scripted bytes: the framings
an upstream may use, keep-alive and its end, and answers it cannot read."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from proxy.models.http1 import ConnectionClosed, Http1Pool, MalformedAnswer


class ScriptedPeer:
    """Accepts connections and answers each request read with the next scripted bytes (empty: close
    the connection instead); `close_after` closes a connection after that many answers. Records every request's raw bytes and connection."""

    def __init__(self, answers: list[bytes], close_after: int | None = None, delay: float = 0.0):
        self.answers = list(answers)
        self.close_after = close_after
        self.delay = delay
        self.requests: list[tuple[int, bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed = 0
        """Connections this side has closed."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self._answer(conn, number)
        finally:
            conn.close()
            self.closed += 1

    def _answer(self, conn: socket.socket, number: int) -> None:
        served, data = 0, b""
        while self.answers:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += conn.recv(65536)
            self.requests.append((number, head + b"\r\n\r\n" + rest[:length]))
            data = rest[length:]
            time.sleep(self.delay)
            answer = self.answers.pop(0)
            if not answer:
                return  # closes the connection without an answer
            conn.sendall(answer)
            served += 1
            if self.close_after is not None and served >= self.close_after:
                return

    def close(self) -> None:
        self.listener.close()


def post(pool: Http1Pool, body: bytes = b'{"a": 1}', timeout: float = 2.0, fresh: bool = False, **headers: str):
    return pool.post("/predict", body, {"Content-Type": "application/json", **headers}, timeout, fresh)


def test_content_length_answers_keep_the_connection_alive():
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"items\":1}"
    peer = ScriptedPeer([ok, ok, ok])
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    answers = [post(pool) for _ in range(3)]
    assert [(a.status, a.body, a.headers["content-type"]) for a in answers] == [(200, b'{"items":1}', "application/json")] * 3
    assert peer.connections == 1  # one connection carried all three
    number, raw = peer.requests[0]
    assert raw.startswith(b"POST /predict HTTP/1.1\r\n") and b"Content-Length: 8\r\n" in raw and raw.endswith(b'{"a": 1}')


def test_chunked_and_interim_answers_are_read_whole():
    chunked = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"it\r\n7\r\nems\":2}\r\n0\r\nX-Trailer: t\r\n\r\n")
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    peer = ScriptedPeer([chunked, ok])
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    assert post(pool).body == b'{"items":2}'
    assert post(pool).body == b"{}" and peer.connections == 1  # the chunked answer's end was found exactly


def test_an_answer_without_a_length_ends_with_its_connection_which_is_not_reused():
    peer = ScriptedPeer([b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"x\": 1}",
                         b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"], close_after=1)
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    assert post(pool).body == b'{"x": 1}'
    assert post(pool).body == b"{}"
    assert post(pool).body == b"[]"
    assert peer.connections == 3


def test_a_kept_connection_closed_under_a_request_is_reported_as_reused():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    peer = ScriptedPeer([ok, b"", ok])  # the second request meets the peer closing the connection
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    assert post(pool).body == b"{}"
    with pytest.raises(ConnectionClosed) as closed:
        post(pool)
    assert closed.value.reused  # worth the one retry: a fresh connection then answers
    assert post(pool, fresh=True).body == b"{}" and peer.connections == 2


def test_answers_that_are_not_http_and_truncated_ones_raise_and_are_not_kept():
    peer = ScriptedPeer([b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\"",
                         b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n"], close_after=1)
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    with pytest.raises(MalformedAnswer):
        post(pool)
    with pytest.raises(ConnectionClosed) as truncated:
        post(pool)
    assert not truncated.value.reused
    with pytest.raises(MalformedAnswer):
        post(pool)


def test_a_slow_peer_times_out_within_the_budget():
    peer = ScriptedPeer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"], delay=1.0)
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post(pool, timeout=0.2)
    assert time.monotonic() - started < 0.8


def test_a_refused_connection_and_a_header_with_a_line_break():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        post(Http1Pool("127.0.0.1", port, 1))
    peer = ScriptedPeer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    with pytest.raises(ValueError, match="line break"):
        post(Http1Pool("127.0.0.1", peer.port, 1), **{"X-Request-Id": "a\r\nX-Injected: 1"})
    assert peer.requests == []  # nothing was sent


def test_idle_connections_the_peer_closed_are_dropped_before_use():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    peer = ScriptedPeer([ok] * 5, close_after=1)
    pool = Http1Pool("127.0.0.1", peer.port, 4)
    threads = [threading.Thread(target=post, args=(pool,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # three idle connections in the pool, each closed by the peer after its answer
    deadline = time.monotonic() + 5
    while peer.closed < 3:
        assert time.monotonic() < deadline, f"the peer closed {peer.closed} of 3 connections"
        time.sleep(0.01)
    assert post(pool).body == b"{}"  # none of them is tried: a new connection answers at once
    assert peer.connections == 4 and len(peer.requests) == 4
