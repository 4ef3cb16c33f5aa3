"""An Alertmanager webhook receiver that records, logs and lists the notifications it gets.

``trainsim webhook`` runs it as the demo stack's ``trainsim-webhook`` service, to which the
shipped alertmanager.yml sends every route; the drill runner and the end-to-end tests start
one in-process on loopback. It is served by the same HTTP shell as the daemon, with its
limits. POST (any path, the route's path is kept): one Alertmanager notification, a JSON
object; GET ``/``: the recent ones as JSON, oldest first; GET ``/healthz``: ``ok``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator import __version__
from simulator.signals import handled
from simulator.web.server import (
    Handler,
    HttpError,
    RequestBody,
    Response,
    json_response,
    method_not_allowed,
    start_server,
)

MAX_BODY = 10 * 1024 * 1024  # Alertmanager's own payloads are far smaller


@dataclass(frozen=True)
class Notification:
    """One notification: the path it was POSTed to, when (Unix time) and its JSON body."""

    path: str
    received: float
    payload: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """What a log line says of it: receiver, status and each alert's identifying labels."""
        listed = self.payload.get("alerts")
        alerts = [a for a in listed if isinstance(a, dict)] if isinstance(listed, list) else []
        return {
            "path": self.path,
            "receiver": self.payload.get("receiver"),
            "status": self.payload.get("status"),
            "alerts": [{"status": a.get("status"), **_identity(a.get("labels"))}
                       for a in alerts],
        }


def _identity(labels: Any) -> dict[str, Any]:
    """The labels that identify an alert, from what should be its label set."""
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if k in ("alertname", "run", "severity", "drill")}


class WebhookReceiver:
    """Serves on ``address`` (port 0: a free port) until ``close``; keeps the last ``keep``
    notifications and calls ``on_notification`` with each one as it arrives."""

    def __init__(self, address: str = "127.0.0.1:0",
                 on_notification: Callable[[Notification], None] | None = None,
                 keep: int = 1000) -> None:
        self._recent: deque[Notification] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._on_notification = on_notification
        self._server = start_server(address, [("/healthz", self._healthz), ("/", self._root)])

    def _healthz(self, h: Handler, method: str) -> Response:
        if method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        return Response(200, b"ok\n")

    def _root(self, h: Handler, method: str) -> Response:
        # A body nobody reads here (a GET's, say) is dropped by the shell.
        if method == "POST":
            try:
                return self._receive(h.path, RequestBody(h, MAX_BODY))
            except HttpError as exc:
                return json_response(exc.status, {"error": exc.message}, exc.headers)
        if method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD, POST")
        if h.path.split("?", 1)[0] == "/":
            return json_response(200, {"notifications": [
                {"received": n.received, "path": n.path, **n.payload}
                for n in self.received()]})
        return json_response(404, {"error": "not found; GET / lists the notifications"})

    def _receive(self, path: str, body: RequestBody) -> Response:
        try:
            payload = json.loads(body.read(required=True))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deeply
            payload = None
        if not isinstance(payload, dict):
            return json_response(400, {"error": "body must be a JSON object"})
        notification = Notification(path, time.time(), payload)
        with self._lock:
            self._recent.append(notification)
        if self._on_notification is not None:
            self._on_notification(notification)
        return json_response(200, {})

    def received(self) -> list[Notification]:
        """The notifications kept so far, in arrival order."""
        with self._lock:
            return list(self._recent)

    @property
    def address(self) -> str:
        """The bound address as HOST:PORT (IPv6 in brackets)."""
        return self._server.address

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return f"http://{self.address}"

    def close(self) -> None:
        """Stop serving and join the thread."""
        self._server.close()


def serve(address: str, log: Any) -> None:
    """``trainsim webhook``: receive and log notifications until SIGTERM or SIGINT; OSError if
    the address cannot be bound."""
    receiver = WebhookReceiver(
        address, on_notification=lambda n: log.info("notification_received", **n.summary()))
    with handled((signal.SIGTERM, signal.SIGINT)) as received:
        log.info("listening", address=receiver.address, version=__version__)
        try:
            while signal.SIGTERM not in received and signal.SIGINT not in received:
                received.sleep(None)
        finally:
            receiver.close()
    log.info("stopped")
