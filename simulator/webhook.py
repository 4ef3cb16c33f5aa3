"""An Alertmanager webhook receiver that records, logs and lists the notifications it gets.

``trainsim webhook`` runs it as the demo stack's ``trainsim-webhook`` service, to which the
shipped alertmanager.yml sends every route; the drill runner and the end-to-end tests start
one in-process on loopback. POST (any path, the route's path is kept): one Alertmanager
notification, a JSON object; GET ``/``: the recent ones as JSON, oldest first; GET
``/healthz``: ``ok``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 10 * 1024 * 1024  # Alertmanager's own payloads are far smaller


@dataclass(frozen=True)
class Notification:
    """One notification: the path it was POSTed to, when (Unix time) and its JSON body."""

    path: str
    received: float
    payload: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """What a log line says of it: receiver, status and each alert's identifying labels."""
        alerts = [a for a in self.payload.get("alerts", []) if isinstance(a, dict)]
        return {
            "path": self.path,
            "receiver": self.payload.get("receiver"),
            "status": self.payload.get("status"),
            "alerts": [{"status": a.get("status"),
                        **{k: v for k, v in (a.get("labels") or {}).items()
                           if k in ("alertname", "run", "severity", "drill")}}
                       for a in alerts],
        }


class WebhookReceiver:
    """Serves on ``host:port`` (0: a free port) in a thread until ``close``; keeps the last
    ``keep`` notifications and calls ``on_notification`` with each one as it arrives."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 on_notification: Callable[[Notification], None] | None = None,
                 keep: int = 1000) -> None:
        self._recent: deque[Notification] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._on_notification = on_notification
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(413, {"error": f"body larger than {MAX_BODY} bytes"})
                    self.close_connection = True
                    return
                try:
                    payload = json.loads(self.rfile.read(length))
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    self._reply(400, {"error": "body must be a JSON object"})
                    return
                receiver._record(Notification(self.path, time.time(), payload))
                self._reply(200, {})

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._reply(200, "ok\n")
                elif path == "/":
                    self._reply(200, {"notifications": [
                        {"received": n.received, "path": n.path, **n.payload}
                        for n in receiver.received()]})
                else:
                    self._reply(404, {"error": "not found; GET / lists the notifications"})

            def _reply(self, status: int, body: dict[str, Any] | str) -> None:
                data = (body if isinstance(body, str) else json.dumps(body) + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8"
                                 if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="webhook-receiver")
        self.thread.start()

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self._recent.append(notification)
        if self._on_notification is not None:
            self._on_notification(notification)

    def received(self) -> list[Notification]:
        """The notifications kept so far, in arrival order."""
        with self._lock:
            return list(self._recent)

    @property
    def address(self) -> str:
        """The bound address as HOST:PORT (IPv6 in brackets)."""
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return f"http://{self.address}"

    def close(self) -> None:
        """Stop serving and join the thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
