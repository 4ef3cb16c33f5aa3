"""The HTTP shell under abuse: connection cap, request deadline, idle timeout, accept errors,
bodies nobody reads, one write per response, content negotiation, and the webhook's limits.

Servers are real, on loopback (``simulator.web.server`` in-process, or a `trainsim run`
process); protocol-level abuse goes through raw sockets. Time is driven through the server's
``clock`` where the server can be made to look at it; where it cannot (an idle wait), the
limit is made short instead. Nothing here asserts how long anything took.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pytest

from simulator.drills.stack import http_get
from simulator.web import pages
from simulator.web.server import (
    REQUEST_DEADLINE_SECONDS,
    UNREAD_BODY_LIMIT,
    Handler,
    RequestBody,
    Response,
    ServerHandle,
    bind,
    parse_listen_address,
    serve,
)
from simulator.web.webhook import Notification, WebhookReceiver
from tests.conftest import wait_for

# ------------------------------------------------------------------------------- helpers


def ok(h: Handler, method: str) -> Response:
    return Response(200, b"ok\n")


def echo(h: Handler, method: str) -> Response:
    """Reads the body (up to 1 KiB) and answers with it."""
    return Response(200, RequestBody(h, 1024).read(required=False))


class Clock:
    """A monotonic clock the test moves; ``read`` is set once the server has looked at it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.read = threading.Event()

    def __call__(self) -> float:
        self.read.set()
        return self.now


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def read_reply(f: BinaryIO) -> Reply:
    """One response from a connection's reader (which may hold the next one after it)."""
    status_line = f.readline()
    assert status_line, "the connection closed without an answer"
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, f.read(int(headers["content-length"])))


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def exchange(address: str, data: bytes) -> tuple[Reply, bool]:
    """Send ``data`` on a new connection; the first answer, and whether the server then closed
    the connection (so a request that keeps its connection alive must say Connection: close)."""
    with connect(address) as sock, sock.makefile("rb") as f:
        sock.sendall(data)
        reply = read_reply(f)
        return reply, f.read(1) == b""


@pytest.fixture
def server() -> Iterator[Callable[..., ServerHandle]]:
    """Start in-process servers (routes default to /ok and /echo) with limits changed as
    keyword arguments; closed at the end of the test."""
    started: list[ServerHandle] = []

    def start(routes: list[tuple[str, Any]] | None = None, **limits: Any) -> ServerHandle:
        bound = bind("127.0.0.1:0")
        for name, value in limits.items():
            setattr(bound, name, value)
        handle = serve(bound, routes or [("/ok", ok), ("/echo", echo)])
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.close()


# ------------------------------------------------------------------- connections and time


def test_connections_beyond_the_cap_get_503_and_the_others_are_served(
        server: Callable[..., ServerHandle]) -> None:
    s = server(max_connections=2)
    first, second = connect(s.address), connect(s.address)
    try:
        with connect(s.address) as third, third.makefile("rb") as f:
            reply = read_reply(f)
            assert reply.status == 503 and reply.headers["connection"] == "close"
            assert reply.body.count(b"\n") == 1
            assert f.read(1) == b""
        with first.makefile("rb") as f:
            first.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(f).status == 200
    finally:
        first.close()
        second.close()
    # Their slots free up once the server has closed them.
    again = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    wait_for(lambda: exchange(s.address, again)[0].status == 200,
             what="a new connection to be served")


def test_headers_trickled_past_the_request_deadline_are_answered_408(
        server: Callable[..., ServerHandle]) -> None:
    clock = Clock()
    s = server(clock=clock)
    with connect(s.address) as sock, sock.makefile("rb") as f:
        assert clock.read.wait(5), "the server never started the request's deadline"
        sock.sendall(b"GET /ok HTTP/1.1\r\n")
        clock.now += REQUEST_DEADLINE_SECONDS + 1
        sock.sendall(b"X-Trickle: 1\r\n")  # data keeps coming, but too late
        reply = read_reply(f)
        assert reply.status == 408 and reply.headers["connection"] == "close"
        assert f.read(1) == b""


def test_a_body_trickled_past_the_request_deadline_is_408_and_closes_the_connection(
        server: Callable[..., ServerHandle]) -> None:
    clock = Clock()
    s = server(clock=clock)
    with connect(s.address) as sock, sock.makefile("rb") as f:
        assert clock.read.wait(5)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        clock.now += REQUEST_DEADLINE_SECONDS + 1
        sock.sendall(b"c")
        reply = read_reply(f)
        assert reply.status == 408, reply
        assert f.read(1) == b""


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
        server: Callable[..., ServerHandle]) -> None:
    s = server(idle_timeout=0.2)
    with connect(s.address) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_reply(f)
        assert reply.status == 200 and "connection" not in reply.headers
        assert f.read(1) == b""  # closed by the server, long before this socket's 5 s timeout


def test_closing_the_server_closes_its_idle_kept_alive_connections(
        server: Callable[..., ServerHandle]) -> None:
    s = server()
    with connect(s.address) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(f).status == 200
        wait_for(lambda: s.server.idle, what="the connection to wait for a next request")
        s.close()
        assert f.read(1) == b""


def test_accept_backs_off_when_out_of_file_descriptors_and_serves_again(
        server: Callable[..., ServerHandle]) -> None:
    fillers: list[int] = []
    backoffs: list[float] = []

    def backoff(seconds: float) -> None:
        backoffs.append(seconds)
        if fillers:
            os.close(fillers.pop())  # a descriptor frees up

    s = server(backoff=backoff)
    host, port = s.address.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        os.close(fillers.pop())  # room for the client's socket, none for the server's accept
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect((host, int(port)))
        client.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if client is not None:
            client.close()
    assert backoffs and all(seconds > 0 for seconds in backoffs)
    assert answer.startswith(b"HTTP/1.1 200 ")


# ------------------------------------------------------------------------ bodies nobody reads


INNER = b"POST /api/v1/runs/lr-0.2/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def smuggle(path: str, inner: bytes) -> bytes:
    """``curl -X GET --data-binary @inner``: a GET whose body is another request, followed by a
    plain GET /healthz on the same connection."""
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
            f"\r\nContent-Length: {len(inner)}\r\n\r\n").encode() + inner + \
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_body_on_a_route_that_reads_none_is_dropped_not_run_as_a_request(
        daemon_factory: Any) -> None:
    d = daemon_factory()
    for path in ("/metrics", "/healthz", "/", "/static/index.html", "/nowhere"):
        with connect(d.address) as sock, sock.makefile("rb") as f:
            sock.sendall(smuggle(path, INNER))
            read_reply(f)
            after = read_reply(f)
            assert (after.status, after.body) == (200, b"ok\n"), (path, after)
    status, body = http_get(f"{d.url}/api/v1/runs/lr-0.2")
    assert status == 200 and json.loads(body)["paused"] is False
    assert not [e for e in d.events() if e.get("event") == "run_paused"]


def test_a_body_on_the_webhooks_healthz_is_not_taken_for_a_notification() -> None:
    receiver = WebhookReceiver()
    try:
        inner = (b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
        with connect(receiver.address) as sock, sock.makefile("rb") as f:
            sock.sendall(smuggle("/healthz", inner))
            assert read_reply(f).status == 200
            assert read_reply(f).body == b"ok\n"
        assert receiver.received() == []
    finally:
        receiver.close()


def test_an_oversized_body_on_a_route_that_reads_none_closes_the_connection(
        server: Callable[..., ServerHandle]) -> None:
    s = server()
    reply, closed = exchange(s.address, f"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                        f"{UNREAD_BODY_LIMIT + 1}\r\n\r\n".encode())
    assert reply.status == 200 and reply.headers["connection"] == "close" and closed


# ----------------------------------------------------------------------------- the wire


def test_a_response_is_one_write_on_a_socket_without_nagle(
        server: Callable[..., ServerHandle]) -> None:
    writes: list[tuple[str, int]] = []
    nodelay: list[int] = []

    class Counted:
        """A socket, or a file over it, counting the writes to it."""

        def __init__(self, sock: Any) -> None:
            self.sock = sock

        def __getattr__(self, name: str) -> Any:
            attribute = getattr(self.sock, name)
            if name not in ("send", "sendall", "sendmsg", "sendfile", "write"):
                return attribute

            def counted(data: Any, *args: Any) -> Any:
                size = sum(len(p) for p in data) if name == "sendmsg" else len(data)
                writes.append((name, size))
                return attribute(data, *args)
            return counted

    def probe(h: Handler, method: str) -> Response:
        nodelay.append(h.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        h.connection = Counted(h.connection)
        h.wfile = Counted(h.wfile)  # type: ignore[assignment]
        return Response(200, b"x" * 5000)

    s = server([("/probe", probe)])
    reply, _ = exchange(s.address, b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.status == 200 and reply.body == b"x" * 5000
    assert len(writes) == 1 and writes[0][1] > 5000, writes
    assert nodelay[0] != 0


def test_a_client_hanging_up_mid_response_leaves_no_traceback(
        server: Callable[..., ServerHandle], capfd: pytest.CaptureFixture[str]) -> None:
    s = server([("/big", lambda h, m: Response(200, b"x" * (16 << 20)))])
    host, port = s.address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, int(port)))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(1) == b"H"  # the server is writing
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, mid-response
    wait_for(lambda: s.server.connections == 0, what="the server to drop the connection")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /ok HTTP/9.9\r\n\r\n", 505),
    (b"GET /ok HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
])
def test_a_malformed_request_is_one_line_of_text_and_a_closed_connection(
        server: Callable[..., ServerHandle], request_bytes: bytes, status: int) -> None:
    reply, closed = exchange(server().address, request_bytes)
    assert reply.status == status and closed
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.body.endswith(b"\n") and reply.body.count(b"\n") == 1, reply.body


@pytest.mark.parametrize("address", [
    "127.0.0.1:\u00b2",  # superscript two: a digit to str.isdigit, not to int()
    "127.0.0.1:\uff19\uff13\uff11\uff10",  # fullwidth 9310: int() would take it
    "127.0.0.1:\u0663",  # Arabic-Indic three
    ":-1", "127.0.0.1: 80", "127.0.0.1:65536"])
def test_a_listen_port_must_be_ascii_digits(address: str) -> None:
    with pytest.raises(ValueError, match="listen address must be HOST:PORT"):
        parse_listen_address(address)


# ------------------------------------------------------------------ content negotiation

ENCODINGS = ("gzip", "identity")
FORMATS = ("text/plain", "application/openmetrics-text")
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


@pytest.mark.parametrize("header, offers, chosen", [
    ("", ENCODINGS, None),
    ("gzip", ENCODINGS, "gzip"),
    ("GZIP", ENCODINGS, "gzip"),
    ("gzip;q=0", ENCODINGS, None),
    ("gzip; Q=0", ENCODINGS, None),
    ("identity, gzip;q=0", ENCODINGS, "identity"),
    ("gzip;q=0.5, identity", ENCODINGS, "identity"),
    ("identity;q=0.5, gzip;q=0.500", ENCODINGS, "gzip"),  # a tie: the server's preference
    ("*", ENCODINGS, "gzip"),
    ("*;q=0", ENCODINGS, None),
    ("gzip;q=0, *;q=0.1", ENCODINGS, "identity"),  # the named coding wins over the wildcard
    ("deflate, br", ENCODINGS, None),
    ("gzip;q=2, identity;q=0.1", ENCODINGS, "identity"),  # a malformed q skips its element
    ("gzip;q=0.0001", ENCODINGS, None),
    ("application/openmetrics-text; q=0, text/plain", FORMATS, "text/plain"),
    ("application/openmetrics-text;version=1.0.0", FORMATS, "application/openmetrics-text"),
    ("Application/OpenMetrics-Text", FORMATS, "application/openmetrics-text"),
    ("*/*", FORMATS, "text/plain"),
    ("text/*;q=0.3, application/openmetrics-text;q=0.2", FORMATS, "text/plain"),
    ("text/*, text/plain;q=0", FORMATS, None),  # the more specific range decides
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", FORMATS, "text/plain"),
    (PROMETHEUS_ACCEPT, FORMATS, "application/openmetrics-text"),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2", FORMATS, "text/plain"),
])
def test_negotiate_weighs_q_values_as_rfc_9110_does(header: str, offers: tuple[str, ...],
                                                     chosen: str | None) -> None:
    assert pages.negotiate(header, offers) == chosen


class _Exposition:
    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        return b"exposition"


@pytest.mark.parametrize("accept, accept_encoding, openmetrics, gzipped", [
    (None, "gzip;q=0", False, False),
    (None, "identity, gzip;q=0", False, False),
    (None, "GZIP", False, True),
    ("application/openmetrics-text; q=0, text/plain", None, False, False),
    ("application/openmetrics-text", "gzip", True, True),
])
def test_metrics_negotiates_format_and_encoding_and_says_so_in_vary(
        server: Callable[..., ServerHandle], accept: str | None, accept_encoding: str | None,
        openmetrics: bool, gzipped: bool) -> None:
    s = server(pages.routes(_Exposition()))
    headers = {k: v for k, v in (("Accept", accept), ("Accept-Encoding", accept_encoding))
               if v is not None}
    conn = http.client.HTTPConnection(s.address, timeout=5)
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith(
        "application/openmetrics-text" if openmetrics else "text/plain")
    assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped
    assert resp.headers["Vary"] == "Accept, Accept-Encoding"


# ----------------------------------------------------------------------------- the webhook


@pytest.mark.parametrize("length", ["abc", "1e3", "-1", "+2", "2, 2", ""])
def test_the_webhook_answers_a_bad_content_length_with_one_line_400(
        length: str, capfd: pytest.CaptureFixture[str]) -> None:
    receiver = WebhookReceiver()
    try:
        reply, closed = exchange(receiver.address, (
            f"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n{{}}").encode())
        assert reply.status == 400 and closed
        assert json.loads(reply.body) == {"error": "invalid Content-Length"}
        assert receiver.received() == []
    finally:
        receiver.close()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000])
def test_the_webhook_refuses_json_nested_too_deeply_with_400(
        body: bytes, capfd: pytest.CaptureFixture[str]) -> None:
    receiver = WebhookReceiver()
    try:
        reply, _ = exchange(receiver.address, (
            f"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        assert reply.status == 400
        assert json.loads(reply.body) == {"error": "body must be a JSON object"}
    finally:
        receiver.close()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("payload", [
    {"alerts": 5}, {"alerts": [{"labels": [1]}, 7]}, {"alerts": [{"labels": None}]}])
def test_the_webhook_records_and_summarizes_a_notification_of_any_shape(
        payload: dict[str, Any]) -> None:
    summaries: list[dict[str, Any]] = []

    def log(n: Notification) -> None:
        summaries.append(n.summary())

    receiver = WebhookReceiver(on_notification=log)
    try:
        body = json.dumps(payload).encode()
        reply, _ = exchange(receiver.address, (
            f"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        assert reply.status == 200
        assert [n.payload for n in receiver.received()] == [payload]
        assert summaries[0]["path"] == "/alerts"
    finally:
        receiver.close()
