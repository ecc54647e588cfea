"""The upstream transport (libcurl) against a real TCP peer that answers with scripted bytes: the
framings an upstream may use, keep-alive and its end, answers it cannot read, and one deadline over
the whole call (an answer trickled a byte at a time is cut at the budget)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from proxy.models.transport import (
    CLOSED,
    NOT_HTTP,
    REFUSED,
    CurlTransport,
    TransportError,
    TransportTimeout,
)


class ScriptedPeer:
    """Accepts connections and answers each request read with the next scripted bytes (empty: close
    the connection instead); `close_after` closes a connection after that many answers. Records every request's raw bytes and connection."""

    def __init__(self, answers: list[bytes], close_after: int | None = None, delay: float = 0.0,
                 trickle: float = 0.0):
        self.answers = list(answers)
        self.close_after = close_after
        self.delay = delay
        self.trickle = trickle
        """Seconds between the bytes of an answer's body: its head goes at once, then a byte at a time."""
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
        except OSError:  # the client gave up on a trickled answer: what the test wants
            pass
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
            if self.trickle:
                head, _, body = answer.partition(b"\r\n\r\n")
                conn.sendall(head + b"\r\n\r\n")
                for byte in body:
                    time.sleep(self.trickle)
                    conn.sendall(bytes([byte]))
            else:
                conn.sendall(answer)
            served += 1
            if self.close_after is not None and served >= self.close_after:
                return

    def close(self) -> None:
        self.listener.close()


def post(transport: CurlTransport, body: bytes = b'{"a": 1}', timeout: float = 2.0, **headers: str):
    return transport.post(body, {"Content-Type": "application/json", **headers}, timeout)


def transport_to(peer: ScriptedPeer) -> CurlTransport:
    return CurlTransport(f"http://127.0.0.1:{peer.port}/predict")


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


def test_content_length_answers_keep_the_connection_alive():
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"items\":1}"
    peer = ScriptedPeer([ok, ok, ok])
    transport = transport_to(peer)
    answers = [post(transport) for _ in range(3)]
    assert [(a.status, a.body, a.headers["content-type"]) for a in answers] == [(200, b'{"items":1}', "application/json")] * 3
    assert [a.reused for a in answers] == [False, True, True]
    assert peer.connections == 1  # one connection carried all three
    number, raw = peer.requests[0]
    assert raw.startswith(b"POST /predict HTTP/1.1\r\n") and b"Content-Length: 8\r\n" in raw and raw.endswith(b'{"a": 1}')
    assert b"Expect:" not in raw  # no wait for 100 Continue


def test_a_body_sent_without_a_content_type_gets_none():
    peer = ScriptedPeer([OK])
    transport_to(peer).post(b'{"a": 1}', {}, 2.0)
    assert b"content-type" not in peer.requests[0][1].lower()  # not called a form


def test_chunked_and_interim_answers_are_read_whole():
    chunked = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"it\r\n7\r\nems\":2}\r\n0\r\nX-Trailer: t\r\n\r\n")
    peer = ScriptedPeer([chunked, OK])
    transport = transport_to(peer)
    first = post(transport)
    assert first.body == b'{"items":2}' and "transfer-encoding" in first.headers
    assert post(transport).body == b"{}" and peer.connections == 1  # the chunked answer's end was found exactly


def test_an_answer_without_a_length_ends_with_its_connection_which_is_not_reused():
    peer = ScriptedPeer([b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"x\": 1}", OK], close_after=1)
    transport = transport_to(peer)
    assert post(transport).body == b'{"x": 1}'
    assert post(transport).body == b"{}"
    assert peer.connections == 2


def test_a_connection_close_answer_is_not_reused_though_the_peer_keeps_it_open():
    """The peer says `Connection: close` and keeps the connection open anyway: the next request must
    still go on a new one (reusing it would wait on a connection the peer means to drop)."""
    peer = ScriptedPeer([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", OK, OK])
    transport = transport_to(peer)
    answers = [post(transport) for _ in range(2)]
    assert [a.body for a in answers] == [b"{}", b"{}"]
    assert [a.reused for a in answers] == [False, False] and peer.connections == 2
    assert [number for number, _ in peer.requests] == [1, 2]


def test_a_kept_connection_closed_under_a_request_is_sent_again_once_on_a_new_one():
    peer = ScriptedPeer([OK, b"", OK])  # the second request meets the peer closing the connection
    transport = transport_to(peer)
    assert post(transport).body == b"{}"
    assert post(transport).body == b"{}"  # libcurl's one retry: a fresh connection answers
    assert peer.connections == 2 and [number for number, _ in peer.requests] == [1, 1, 2]


def test_answers_that_are_not_http_and_truncated_ones_are_errors_that_say_so():
    peer = ScriptedPeer([b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\"",
                         b"", ], close_after=1)
    transport = transport_to(peer)
    with pytest.raises(TransportError) as not_http:
        post(transport)
    assert not_http.value.reason == NOT_HTTP
    with pytest.raises(TransportError) as truncated:
        post(transport)
    assert truncated.value.reason == CLOSED
    with pytest.raises(TransportError) as nothing:
        post(transport)
    assert nothing.value.reason == CLOSED


def test_a_slow_peer_times_out_within_the_budget():
    peer = ScriptedPeer([OK], delay=1.0)
    started = time.monotonic()
    with pytest.raises(TransportTimeout):
        post(transport_to(peer), timeout=0.2)
    assert time.monotonic() - started < 0.2 + 0.15


def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_budget_not_at_the_budget_per_read():
    """Headers at once, then the body one byte every 20 ms (a model under load, a congested link): each
    read is quick, the whole is not. The old client's per-read socket timeout let this run for seconds."""
    body = b'{"items": ["' + b"x" * 200 + b'"]}'
    peer = ScriptedPeer([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body], trickle=0.02)
    started = time.monotonic()
    with pytest.raises(TransportTimeout):
        post(transport_to(peer), timeout=0.2)
    assert time.monotonic() - started < 0.2 + 0.15


def test_a_refused_connection_and_a_header_with_a_line_break():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(TransportError) as refused:
        post(CurlTransport(f"http://127.0.0.1:{port}/predict"))
    assert refused.value.reason == REFUSED
    peer = ScriptedPeer([OK])
    with pytest.raises(ValueError, match="line break"):
        post(transport_to(peer), **{"X-Request-Id": "a\r\nX-Injected: 1"})
    assert peer.requests == []  # nothing was sent


def test_idle_connections_the_peer_closed_are_dropped_before_use():
    peer = ScriptedPeer([OK] * 5, close_after=1)
    transport = transport_to(peer)
    threads = [threading.Thread(target=post, args=(transport,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 5
    while peer.closed < 3:
        assert time.monotonic() < deadline, f"the peer closed {peer.closed} of 3 connections"
        time.sleep(0.01)
    # this thread's handle is new; the three idle connections of the others are not tried
    assert post(transport).body == b"{}"
    assert peer.connections == 4 and len(peer.requests) == 4
    transport.close()
