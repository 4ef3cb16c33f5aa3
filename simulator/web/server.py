"""The HTTP shell: a threaded stdlib server that dispatches requests to routes.

It knows nothing of what it serves: the daemon (``simulator.web.pages``, ``simulator.web.api``)
and the webhook receiver (``simulator.web.webhook``) hand it their routes. It reads request
bodies for them within limits (``RequestBody``) and turns anything unexpected into a clean
error. ``start_server`` returns a handle whose ``close()`` stops and joins the serving thread.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

JSON_TYPE = "application/json"
# A client that sends nothing for this long is dropped, so idle connections cannot pile up.
REQUEST_TIMEOUT_SECONDS = 10.0
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


Route = Callable[["Handler", str], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: with more concurrent scrapers connecting,
    # the kernel drops SYNs and clients wait 1 s, 3 s, 7 s for the retransmits.
    request_queue_size = socket.SOMAXCONN
    routes: list[tuple[str, Route]]
    # Requests being answered right now (idle keep-alive connections do not count).
    in_flight: int
    in_flight_lock: threading.Condition

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


class Handler(BaseHTTPRequestHandler):
    """Dispatches requests to the routes; anything unexpected becomes a clean error."""

    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"
    server_version = "trainsim"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are off: scrapes would drown everything else."""

    def _dispatch(self, method: str) -> None:
        with self.server.in_flight_lock:
            self.server.in_flight += 1
        try:
            path = self.path.split("?", 1)[0]
            response: Response | None = None
            for prefix, route in self.server.routes:
                if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                    response = route(self, method)
                    break
            if response is None:
                response = Response(404, b"not found\n")
            self._send(response, head=method == "HEAD")
        finally:
            with self.server.in_flight_lock:
                self.server.in_flight -= 1
                self.server.in_flight_lock.notify_all()

    def _send(self, r: Response, head: bool = False) -> None:
        self.send_response(r.status)
        self.send_header("Content-Type", r.content_type)
        self.send_header("Content-Length", str(len(r.body)))
        for k, v in r.headers:
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(r.body)

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute
        def __getattr__(self, name: str) -> Callable[[], None]:
            # Every method (GET, POST, but also OPTIONS, TRACE, made-up tokens) reaches the
            # routes, which answer 405 with Allow to a method they do not take: a client's
            # wrong method is not a 501 server error.
            if name.startswith("do_"):
                return lambda: self._dispatch(name[3:])
            raise AttributeError(name)


def method_not_allowed(allowed: str) -> Response:
    """405 with the Allow header."""
    return Response(405, b"method not allowed\n", headers=(("Allow", allowed),))


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); raises ValueError with a clear message."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
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
        """Stop accepting, let requests being answered finish (up to DRAIN_SECONDS), close the
        listening socket and join the serving thread."""
        self.server.shutdown()
        self.server.server_close()
        with self.server.in_flight_lock:
            self.server.in_flight_lock.wait_for(lambda: self.server.in_flight == 0,
                                                timeout=DRAIN_SECONDS)
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
    server.in_flight_lock = threading.Condition()
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
    """The body of one request, read at most once and never beyond ``limit`` bytes."""

    def __init__(self, h: Handler, limit: int) -> None:
        self.h = h
        self.limit = limit
        self.consumed = False

    @property
    def present(self) -> bool:
        """Whether the request announces a body."""
        headers = self.h.headers
        return ("Transfer-Encoding" in headers
                or headers.get("Content-Length", "0").strip() not in ("", "0"))

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
        self.consumed = True
        try:
            data = self.h.rfile.read(length)
        except TimeoutError:
            raise HttpError(408, "timed out reading the request body") from None
        if len(data) != length:
            raise HttpError(400, f"request body ended after {len(data)} of {length} bytes")
        return bytes(data)

    def discard(self) -> bool:
        """Read and drop a body the request was refused without reading, so that the connection
        stays in step (and closing it cannot reset it under the client before it has read the
        answer); False when that is not possible."""
        self.consumed = True
        try:
            length = self.length(required=True)
            return len(self.h.rfile.read(length)) == length
        except (HttpError, OSError):
            return False

    def settle(self, response: Response) -> Response:
        """``response``, after dealing with a body nobody read: an unread body would be parsed
        as the next request on this connection, so it is dropped, or the connection closed."""
        if not self.consumed and self.present and not self.discard():
            self.h.close_connection = True
            response.headers = (*response.headers, ("Connection", "close"))
        return response
