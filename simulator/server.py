"""HTTP shell: /metrics, /healthz and the landing page, on a threaded stdlib server.

The server knows nothing of the simulation: it asks an ``App`` for the exposition and the run
table. ``start_server`` returns a handle whose ``close()`` stops and joins the serving thread.
"""

from __future__ import annotations

import gzip
import html
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# A client that sends nothing for this long is dropped, so idle connections cannot pile up.
REQUEST_TIMEOUT_SECONDS = 10.0
# Closing a socket with unread input resets the connection, and a reset can destroy the answer
# before the client read it (a refused oversized body, say). So the server first ends its side
# and reads what is still coming, within these bounds, then closes.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1 << 20
# On shutdown, requests already being answered (a scrape mid-render) get this long to finish.
DRAIN_SECONDS = 5.0


class App(Protocol):
    """What the HTTP shell needs from the daemon."""

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body."""

    def runs_table(self) -> list[dict[str, Any]]:
        """One row per run for the landing page."""


@dataclass
class Response:
    """A complete HTTP response."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """A JSON response."""
    return Response(status, (json.dumps(payload, indent=None) + "\n").encode(),
                    "application/json", headers)


Route = Callable[["Handler", str], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default listen backlog is 5: with more concurrent scrapers connecting,
    # the kernel drops SYNs and clients wait 1 s, 3 s, 7 s for the retransmits.
    request_queue_size = socket.SOMAXCONN
    app: App
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

    def do_GET(self) -> None:
        """GET."""
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        """HEAD."""
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        """POST."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """PUT."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """DELETE."""
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        """PATCH."""
        self._dispatch("PATCH")

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute
        def __getattr__(self, name: str) -> Callable[[], None]:
            # Any other method (OPTIONS, TRACE, made-up tokens) reaches the routes too, which
            # answer 405 with Allow: a client's wrong method is not a 501 server error.
            if name.startswith("do_"):
                return lambda: self._dispatch(name[3:])
            raise AttributeError(name)


def method_not_allowed(allowed: str) -> Response:
    """405 with the Allow header."""
    return Response(405, b"method not allowed\n", headers=(("Allow", allowed),))


def _metrics(h: Handler, method: str) -> Response:
    if method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    accept = h.headers.get("Accept", "")
    openmetrics = "application/openmetrics-text" in accept
    gzipped = "gzip" in h.headers.get("Accept-Encoding", "")
    body = h.server.app.exposition(openmetrics, gzipped)
    headers = (("Content-Encoding", "gzip"),) if gzipped else ()
    return Response(200, body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE, headers)


def _healthz(h: Handler, method: str) -> Response:
    if method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    return Response(200, b"ok\n")


def _landing(h: Handler, method: str) -> Response:
    if method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    if h.path.split("?", 1)[0] != "/":
        return Response(404, b"not found\n")
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>"
                         for k in ("run", "state", "step", "loss", "alerts")) + "</tr>"
        for r in h.server.app.runs_table())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>trainsim</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style>
</head><body><h1>trainsim</h1>
<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a> &middot;
<a href="/api/v1/runs">Runs (JSON)</a></p>
<table><thead><tr><th>run</th><th>state</th><th>step</th><th>loss</th><th>alerts</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""
    return Response(200, page.encode(), "text/html; charset=utf-8")


BASE_ROUTES: list[tuple[str, Route]] = [
    ("/metrics", _metrics), ("/healthz", _healthz), ("/", _landing)]


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
    if host in ("localhost",):
        return True
    try:
        import ipaddress

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


def start_server(address: str, app: App,
                 routes: list[tuple[str, Route]] | None = None) -> ServerHandle:
    """Bind ``address`` and serve ``app`` on a background thread."""
    host, port = parse_listen_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    cls: type[_Server] = type("Server", (_Server,), {"address_family": family})
    server = cls((host, port), Handler)
    server.app = app
    server.in_flight = 0
    server.in_flight_lock = threading.Condition()
    # Longest prefix first, so /api/v1/runs/ wins over /.
    all_routes = (routes or []) + BASE_ROUTES
    server.routes = sorted(all_routes, key=lambda r: -len(r[0]))
    thread = threading.Thread(target=server.serve_forever, name="trainsim-http",
                              kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return ServerHandle(server, thread)


def gzip_bytes(data: bytes) -> bytes:
    """Fast gzip (level 1): scrapes are large and frequent, bandwidth on loopback is cheap."""
    return gzip.compress(data, compresslevel=1, mtime=0)
