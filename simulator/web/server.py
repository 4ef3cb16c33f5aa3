"""The HTTP shell: a threaded stdlib server that dispatches requests to routes.

It knows nothing of what it serves: the daemon (``simulator.web.pages``, ``simulator.web.api``)
and the webhook receiver (``simulator.web.webhook``) hand it their routes. It holds every
client to the same limits: at most ``MAX_CONNECTIONS`` connections at once, a deadline for
each request to arrive, an idle timeout between requests on a kept-alive connection, and
bodies read within limits (``RequestBody``); a body no route read is dropped here, so it can
never be taken for the next request. Anything unexpected becomes a clean error, and each
response leaves in one write. ``start_server`` returns a handle whose ``close()`` stops and
joins the serving thread.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON_TYPE = "application/json"
# Connections served at once (each holds a thread and a file descriptor until it closes); one
# more is answered 503 and closed at once. Well below a default `ulimit -n` of 1024.
MAX_CONNECTIONS = 256
# A request's line, headers and body must all have arrived this long after its first byte (for
# a connection's first request: after the connection was accepted), however the client paces
# them.
REQUEST_DEADLINE_SECONDS = 10.0
# A kept-alive connection on which no next request begins for this long is closed. Longer than
# Prometheus' usual 15 s scrape interval, so that its scrapes reuse their connection.
IDLE_TIMEOUT_SECONDS = 30.0
# A client has this long to take each response off the server's hands.
SEND_TIMEOUT_SECONDS = 10.0
# A body no route read is read and dropped up to this size; a larger one closes the connection.
UNREAD_BODY_LIMIT = 64 * 1024
# When accept() fails for want of file descriptors or memory, wait this long before trying
# again rather than spin on a listening socket that stays readable.
ACCEPT_BACKOFF_SECONDS = 0.1
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Closing a socket with unread input resets the connection, and a reset can destroy the answer
# before the client read it (a refused oversized body, say). So the server first ends its side
# and reads what is still coming, within these bounds, then closes.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1 << 20
# On shutdown, requests already being answered (a scrape mid-render) get this long to finish.
DRAIN_SECONDS = 5.0


@dataclass
class Response:
    """A complete HTTP response."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A JSON response."""
    return Response(status, (json.dumps(payload, indent=None) + "\n").encode(), JSON_TYPE,
                    headers)


def _encode(r: Response, head: bool = False) -> list[bytes]:
    """``r`` as it goes on the wire: its status line and headers, then its body (none for
    HEAD), for ``_send_all``."""
    try:
        reason = HTTPStatus(r.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {r.status} {reason}", "Server: trainsim",
             f"Date: {formatdate(usegmt=True)}", f"Content-Type: {r.content_type}",
             f"Content-Length: {len(r.body)}", *(f"{k}: {v}" for k, v in r.headers)]
    return [("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), b"" if head else r.body]


def _send_all(sock: socket.socket, parts: list[bytes]) -> None:
    """Send ``parts`` with one system call as far as the socket's buffer takes them, then the
    rest: the headers leave with the body, never as a small segment of their own, and a large
    body is not copied to join them."""
    sent = sock.sendmsg(parts)
    for part in parts:
        if sent < len(part):
            sock.sendall(memoryview(part)[sent:])
        sent = max(0, sent - len(part))


Route = Callable[["Handler", str], Response]
_CLOSE = (("Connection", "close"),)
_BUSY = b"".join(_encode(Response(503, b"too many connections; try again shortly\n",
                                 headers=(*_CLOSE, ("Retry-After", "1")))))


class RequestTimeoutError(TimeoutError):
    """A request did not arrive before its deadline, or none began within the idle timeout."""


class _Input(io.RawIOBase):
    """A connection's incoming bytes, waited for until ``deadline`` (on ``clock``): once it has
    passed, what already arrived is still read, and waiting for more raises RequestTimeoutError."""

    def __init__(self, sock: socket.socket, clock: Callable[[], float]) -> None:
        super().__init__()
        self.sock = sock
        self.clock = clock
        self.deadline = 0.0

    def readable(self) -> bool:
        """Always: this is an input."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read what the socket has, waiting at most until the deadline."""
        self.sock.settimeout(max(0.0, self.deadline - self.clock()))
        try:
            return self.sock.recv_into(buffer)
        except (BlockingIOError, TimeoutError):
            raise RequestTimeoutError("the request did not arrive in time") from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: with more concurrent scrapers connecting,
    # the kernel drops SYNs and clients wait 1 s, 3 s, 7 s for the retransmits.
    request_queue_size = socket.SOMAXCONN
    routes: list[tuple[str, Route]]
    lock: threading.Condition
    # Requests being answered right now (idle keep-alive connections do not count).
    in_flight: int
    # Connections open right now, idle or not.
    connections: int
    # The sockets of those waiting for their next request.
    idle: set[socket.socket]
    # Set by ServerHandle.close: no further request is read.
    closing: bool
    # The module's limits, per server: tests change them before connecting, and drive time
    # through ``clock`` and ``backoff`` instead of waiting.
    max_connections = MAX_CONNECTIONS
    request_deadline = REQUEST_DEADLINE_SECONDS
    idle_timeout = IDLE_TIMEOUT_SECONDS
    clock: Callable[[], float] = time.monotonic
    backoff: Callable[[float], None] = time.sleep

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection; out of file descriptors (or memory), back off first."""
        try:
            return self.socket.accept()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:
                self.backoff(ACCEPT_BACKOFF_SECONDS)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on its own thread, or answer 503 when at the cap."""
        with self.lock:
            admitted = self.connections < self.max_connections
            self.connections += admitted
        if not admitted:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve the connection, then count it closed."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self.lock:
            self.connections -= 1

    def _refuse(self, request: socket.socket) -> None:
        """503 on the accepting thread, which must never block: a fresh socket's send buffer
        takes the few bytes at once. Input already there is read before closing, so that the
        close does not reset the connection under the answer."""
        try:
            request.setblocking(False)
            request.send(_BUSY)
            request.shutdown(socket.SHUT_WR)
            while request.recv(65536):
                pass
        except OSError:
            pass
        self.close_request(request)

    def shutdown_request(self, request: Any) -> None:
        """Lingering close: send FIN, drain what the client still sends, then close."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_SECONDS)
            deadline = time.monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_MAX_BYTES and time.monotonic() < deadline:
                chunk = request.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or stalled is no error of ours: drop it quietly. Anything else
        is a bug, printed with its traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Reads requests within the server's limits and dispatches them to the routes; anything
    unexpected becomes a clean error."""

    server: _Server
    # The socket's timeout while writing; reads keep to the request's deadline (``_Input``).
    timeout = SEND_TIMEOUT_SECONDS
    # Each response leaves in one write (``_send_all``), and Nagle's algorithm is off: a write
    # held back for the client's delayed acknowledgement of the one before waits 40 ms on a
    # kept-alive connection.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "trainsim"
    sys_version = ""
    # Whether the current request's body was read (or dropped); see RequestBody.
    body_done = False

    def setup(self) -> None:
        """Buffered input that keeps to the request deadline, which starts now."""
        super().setup()
        self.rfile.close()  # the stdlib's, replaced by one that keeps the deadline
        self.input = _Input(self.connection, self.server.clock)
        self.input.deadline = self.server.clock() + self.server.request_deadline
        self.rfile = self.buffered = io.BufferedReader(self.input)
        self.kept_alive = False

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are off: scrapes would drown everything else."""

    def handle_one_request(self) -> None:
        """Read one request within its deadline and answer it."""
        self.close_connection = True
        try:
            if not self._request_begins():
                return
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414, "request line too long")
            elif self.raw_requestline and self.parse_request():  # else it answered the error
                # Every method (GET, POST, but also OPTIONS, TRACE, made-up tokens) reaches the
                # routes, which answer 405 with Allow to a method they do not take: a client's
                # wrong method is not a 501 server error.
                self._dispatch(self.command)
        except RequestTimeoutError:
            self.send_error(408, f"the request did not arrive within "
                                 f"{self.server.request_deadline:g} s")
            return
        self.kept_alive = True
        self.input.deadline = self.server.clock() + self.server.idle_timeout

    def _request_begins(self) -> bool:
        """Wait for a request's first byte (False: the client closed, or stayed idle too long);
        on a kept-alive connection, the request's deadline starts with it."""
        with self.server.lock:
            if self.server.closing:
                return False
            self.server.idle.add(self.connection)
        try:
            if not self.buffered.peek(1):
                return False
        except RequestTimeoutError:
            return False
        finally:
            with self.server.lock:
                self.server.idle.discard(self.connection)
        if self.kept_alive:
            self.input.deadline = self.server.clock() + self.server.request_deadline
        return True

    def _dispatch(self, method: str) -> None:
        with self.server.lock:
            self.server.in_flight += 1
        try:
            self.body_done = False
            path = self.path.split("?", 1)[0]
            response: Response | None = None
            try:
                for prefix, route in self.server.routes:
                    if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                        response = route(self, method)
                        break
            except HttpError as exc:  # one a route did not turn into its own kind of answer
                response = Response(exc.status, f"{exc.message}\n".encode(), headers=exc.headers)
            if response is None:
                response = Response(404, b"not found\n")
            # Every route's answer passes here, so none can leave a body in the connection.
            response = RequestBody(self, UNREAD_BODY_LIMIT).settle(response)
            self._send(response, head=method == "HEAD")
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
                self.server.lock.notify_all()

    def _send(self, r: Response, head: bool = False) -> None:
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in r.headers):
            self.close_connection = True
        self.connection.settimeout(SEND_TIMEOUT_SECONDS)
        _send_all(self.connection, _encode(r, head))

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """An error the stdlib's request parsing found (400, 408, 414, 431, 505): one line of
        plain text, and the connection closed."""
        text = (message or HTTPStatus(code).phrase)[:200]
        self._send(Response(int(code), f"{text}\n".encode("latin-1", "replace"), headers=_CLOSE))


def method_not_allowed(allowed: str) -> Response:
    """405 with the Allow header."""
    return Response(405, b"method not allowed\n", headers=(("Allow", allowed),))


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); raises ValueError with a clear message."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerHandle:
    """A running server; ``close()`` stops it and joins its thread."""

    server: _Server
    thread: threading.Thread

    @property
    def address(self) -> str:
        """The bound address as HOST:PORT (IPv6 in brackets)."""
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        """Stop accepting, close the connections waiting for a next request, let requests being
        answered finish (up to DRAIN_SECONDS), close the listening socket and join the serving
        thread."""
        self.server.shutdown()
        with self.server.lock:
            self.server.closing = True
            for sock in self.server.idle:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)  # the waiting read sees the end of input
        self.server.server_close()
        with self.server.lock:
            self.server.lock.wait_for(lambda: self.server.in_flight == 0, timeout=DRAIN_SECONDS)
        self.thread.join(timeout=5)


def bind(address: str) -> _Server:
    """A server bound to ``address`` and listening, not yet answering (OSError when the address
    cannot be bound): what ``serve`` starts."""
    host, port = parse_listen_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    cls: type[_Server] = type("Server", (_Server,), {"address_family": family})
    return cls((host, port), Handler)


def start_server(address: str, routes: list[tuple[str, Route]]) -> ServerHandle:
    """Bind ``address`` and serve ``routes`` (path, or prefix ending in ``/``) on a background
    thread."""
    return serve(bind(address), routes)


def serve(server: _Server, routes: list[tuple[str, Route]]) -> ServerHandle:
    """Answer requests to a bound server with ``routes`` on a background thread."""
    server.in_flight = 0
    server.connections = 0
    server.idle = set()
    server.closing = False
    server.lock = threading.Condition()
    # Longest prefix first, so /api/v1/runs/ wins over /.
    server.routes = sorted(routes, key=lambda r: -len(r[0]))
    thread = threading.Thread(target=server.serve_forever, name="trainsim-http",
                              kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return ServerHandle(server, thread)


# --------------------------------------------------------------------------- request bodies


class HttpError(Exception):
    """A request the shell or a route refuses: status, message, and extra headers."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class RequestBody:
    """The body of one request, read at most once, never beyond ``limit`` bytes, and within
    the request's deadline. Whether it was read is kept on the handler, so that the shell
    knows after any route."""

    def __init__(self, h: Handler, limit: int) -> None:
        self.h = h
        self.limit = limit

    @property
    def consumed(self) -> bool:
        """Whether the body was read or dropped already."""
        return self.h.body_done

    @property
    def present(self) -> bool:
        """Whether the request announces a body (or frames it so badly that it may have one)."""
        headers = self.h.headers
        return ("Transfer-Encoding" in headers
                or any(v.strip() != "0" for v in headers.get_all("Content-Length") or []))

    def length(self, required: bool) -> int:
        """The announced length; HttpError for a missing (when ``required``), malformed or
        oversized one, or a chunked body."""
        headers = self.h.headers
        if "Transfer-Encoding" in headers:
            raise HttpError(411, "Transfer-Encoding is not supported: send the body with "
                                 "Content-Length")
        values = headers.get_all("Content-Length") or []
        if not values:
            if required:
                raise HttpError(411, "Content-Length is required")
            return 0
        text = values[0].strip()
        if len(values) > 1 or not text.isdigit() or not text.isascii():
            raise HttpError(400, "invalid Content-Length")
        length = int(text)
        if length > self.limit:
            raise HttpError(413, f"body too large: {length} bytes (limit {self.limit})")
        return length

    def read(self, required: bool) -> bytes:
        """The whole body (empty when optional and absent)."""
        length = self.length(required)
        self.h.body_done = True
        try:
            data = self.h.rfile.read(length)
        except TimeoutError:
            # What is left of the body is still coming: the connection cannot be reused.
            raise HttpError(408, "timed out reading the request body", _CLOSE) from None
        if len(data) != length:
            raise HttpError(400, f"request body ended after {len(data)} of {length} bytes",
                            _CLOSE)
        return bytes(data)

    def discard(self) -> bool:
        """Read and drop a body the request was refused without reading, so that the connection
        stays in step (and closing it cannot reset it under the client before it has read the
        answer); False when that is not possible."""
        self.h.body_done = True
        try:
            length = self.length(required=True)
            return len(self.h.rfile.read(length)) == length
        except (HttpError, OSError):
            return False

    def settle(self, response: Response) -> Response:
        """``response``, after dealing with a body nobody read: an unread body would be parsed
        as the next request on this connection, so it is dropped, or the connection closed."""
        if not self.consumed and self.present and not self.discard():
            response.headers = (*response.headers, *_CLOSE)
        return response
