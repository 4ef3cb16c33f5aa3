"""The JSON control API on the daemon's port: /api/v1/runs and the run and fault operations.

Every request goes through the same checks, in order, and the first that fails answers:
route (404), method (405), control API switched off (403), cross-origin browser request (403),
bearer token (401), names in the path (400), body framing and size (411, 413), content type
(415), JSON (400), then the daemon's own validation (404, 400, 422). Nothing reaches the
daemon before every check passed, so a bad request changes nothing. Errors are
``{"error": message, "field": path-or-null}``; see docs/api.md.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from simulator.daemon import ControlError
from simulator.server import Handler, Response, Route

PREFIX = "/api/v1/"
MAX_BODY_BYTES = 64 * 1024
MAX_NAME_LENGTH = 128
NAME_RE = re.compile(r"[a-zA-Z0-9_.-]+")
JSON_TYPE = "application/json"
MUTATING = frozenset({"POST", "DELETE"})
ACTIONS = ("pause", "resume", "restart")
_ENABLE_HINT = ("the control API is disabled on this daemon; start it with "
                "--web.enable-control-api to allow changes")


class Controller(Protocol):
    """What the API needs from the daemon (``simulator.daemon.Daemon`` provides it)."""

    log: Any

    def runs_view(self) -> list[dict[str, Any]]:
        """Every run."""

    def run_view(self, run: str) -> dict[str, Any]:
        """One run; ControlError(404) if unknown."""

    def inject(self, run: str, body: Any) -> dict[str, Any]:
        """Inject a fault from a parsed JSON body."""

    def clear(self, run: str, fault_id: str) -> dict[str, Any]:
        """End a fault now."""

    def pause(self, run: str) -> dict[str, Any]:
        """Pause a run."""

    def resume(self, run: str) -> dict[str, Any]:
        """Resume a run."""

    def restart(self, run: str) -> dict[str, Any]:
        """Restart a run."""


@dataclass(frozen=True)
class ControlSettings:
    """Whether mutations are allowed, and the bearer token they need (None: no token)."""

    enabled: bool = True
    token: bytes | None = field(default=None, repr=False)


class ApiError(Exception):
    """An error response: status, message, offending field, extra headers."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers


@dataclass(frozen=True)
class _Match:
    """A request path resolved to an endpoint."""

    endpoint: str  # runs | run | faults | fault | pause | resume | restart
    allowed: tuple[str, ...]
    run: str | None = None
    fault_id: str | None = None


class ControlApi:
    """Turns HTTP requests into calls on a ``Controller``; see the module docstring.

    ``settings`` may be replaced while requests are served (a new token on SIGHUP): each
    request reads it once.
    """

    def __init__(self, controller: Controller, settings: ControlSettings) -> None:
        self.controller = controller
        self.settings = settings

    def routes(self) -> list[tuple[str, Route]]:
        """The API's routes for ``simulator.server.start_server``."""
        # Everything under /api answers in JSON, including paths that match no endpoint.
        return [("/api", self.handle), ("/api/", self.handle)]

    def handle(self, h: Handler, method: str) -> Response:
        """Answer one request; never raises."""
        body = _Body(h)
        try:
            response = self._handle(h, method, body)
        except ApiError as exc:
            response = _error(exc.status, exc.message, exc.field, exc.headers)
        except ControlError as exc:
            response = _error(exc.status, exc.message, exc.field)
        except Exception:
            # A bug, not the client's mistake: log it with its traceback, tell the client little.
            self.controller.log.exception("api_request_failed", method=method,
                                          path=h.path[:200])
            response = _error(500, "internal error; see the daemon's log")
        if not body.consumed and _has_body(h) and not body.discard():
            # An unread body would be parsed as the next request on this connection.
            h.close_connection = True
            response.headers = (*response.headers, ("Connection", "close"))
        return response

    def _handle(self, h: Handler, method: str, body: _Body) -> Response:
        m = _match(h.path.split("?", 1)[0])
        if method not in m.allowed:
            allow = ", ".join(m.allowed)
            raise ApiError(405, f"method {method[:20]} not allowed here (allowed: {allow})",
                           headers=(("Allow", allow),))
        if method in MUTATING:
            self._authorize(h)
        for value, what in ((m.run, "run name"), (m.fault_id, "fault id")):
            if value is not None:
                _check_name(value, what)
        c = self.controller
        if m.endpoint == "runs":
            return _ok(200, c.runs_view())
        assert m.run is not None
        if m.endpoint == "run":
            return _ok(200, c.run_view(m.run))
        if m.endpoint == "faults" and method != "POST":
            return _ok(200, c.run_view(m.run)["faults"])
        if m.endpoint == "faults":
            fault = c.inject(m.run, body.json(required=True))
            location = (f"{PREFIX}runs/{urllib.parse.quote(m.run, safe='')}/faults/"
                        f"{urllib.parse.quote(str(fault['id']), safe='')}")
            return _ok(201, fault, (("Location", location),))
        if m.endpoint == "fault":
            assert m.fault_id is not None
            if method == "DELETE":
                return _ok(200, c.clear(m.run, m.fault_id))
            for f in c.run_view(m.run)["faults"]:
                if f["id"] == m.fault_id:
                    return _ok(200, f)
            raise ApiError(404, f"run {m.run!r} has no active fault {m.fault_id!r}")
        fields = body.json(required=False)
        if fields not in (None, {}):
            if not isinstance(fields, dict):
                raise ApiError(400, "body must be empty or a JSON object")
            raise ApiError(422, f"{m.endpoint} takes no fields", str(next(iter(fields))))
        action: Callable[[str], dict[str, Any]] = getattr(c, m.endpoint)
        return _ok(200, action(m.run))

    def _authorize(self, h: Handler) -> None:
        if not self.settings.enabled:
            raise ApiError(403, _ENABLE_HINT)
        origin = h.headers.get("Origin")
        if origin is not None and not _same_origin(origin, h.headers.get("Host", "")):
            # Browsers send Origin; refusing cross-site pages keeps a loopback daemon without a
            # token from being driven by any web page its user happens to open.
            raise ApiError(403, "cross-origin requests may not change anything")
        token = self.settings.token
        if token is None:
            return
        scheme, _, given = h.headers.get("Authorization", "").strip().partition(" ")
        challenge = (("WWW-Authenticate", 'Bearer realm="trainsim"'),)
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <token>)",
                           headers=challenge)
        # Header values arrive decoded as latin-1: encoding back yields the bytes as sent.
        if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), token):
            raise ApiError(401, "invalid bearer token",
                           headers=(("WWW-Authenticate",
                                     'Bearer realm="trainsim", error="invalid_token"'),))


def _match(path: str) -> _Match:
    if not path.startswith(PREFIX):
        raise ApiError(404, "no such endpoint (the API lives under /api/v1/)")
    parts = path[len(PREFIX):].split("/")
    try:
        # Split first, decode second: an encoded slash stays inside its segment.
        parts = [urllib.parse.unquote(p, errors="strict") for p in parts]
    except UnicodeDecodeError:
        raise ApiError(400, "path is not valid percent-encoded UTF-8") from None
    n = len(parts)
    if parts[0] == "runs":
        if n == 1:
            return _Match("runs", ("GET", "HEAD"))
        run = parts[1]
        if n == 2:
            return _Match("run", ("GET", "HEAD"), run)
        if n == 3 and parts[2] == "faults":
            return _Match("faults", ("GET", "HEAD", "POST"), run)
        if n == 4 and parts[2] == "faults":
            return _Match("fault", ("GET", "HEAD", "DELETE"), run, parts[3])
        if n == 3 and parts[2] in ACTIONS:
            return _Match(parts[2], ("POST",), run)
    raise ApiError(404, "no such endpoint")


def _check_name(value: str, what: str) -> None:
    if len(value) > MAX_NAME_LENGTH or not NAME_RE.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ApiError(400, f"invalid {what} {shown!r}: must match [a-zA-Z0-9_.-]+ "
                       f"(at most {MAX_NAME_LENGTH} characters)")


def _same_origin(origin: str, host: str) -> bool:
    parsed = urllib.parse.urlsplit(origin)
    return bool(parsed.scheme in ("http", "https") and host and parsed.netloc == host)


def _has_body(h: Handler) -> bool:
    return ("Transfer-Encoding" in h.headers
            or h.headers.get("Content-Length", "0").strip() not in ("", "0"))


def _content_length(h: Handler, required: bool) -> int:
    if "Transfer-Encoding" in h.headers:
        raise ApiError(411, "Transfer-Encoding is not supported: send the body with "
                            "Content-Length")
    values = h.headers.get_all("Content-Length") or []
    if not values:
        if required:
            raise ApiError(411, "Content-Length is required")
        return 0
    if len(values) > 1 or not values[0].strip().isdigit() or not values[0].strip().isascii():
        raise ApiError(400, "invalid Content-Length")
    length = int(values[0].strip())
    if length > MAX_BODY_BYTES:
        raise ApiError(413, f"body too large: {length} bytes (limit {MAX_BODY_BYTES})")
    return length


class _Body:
    """The request body, read at most once."""

    def __init__(self, h: Handler) -> None:
        self.h = h
        self.consumed = False

    def json(self, required: bool) -> Any:
        """The body parsed as JSON (None when optional and empty)."""
        h = self.h
        length = _content_length(h, required)
        if length == 0 and not required:
            return None
        ctype = h.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != JSON_TYPE:
            raise ApiError(415, f"Content-Type must be {JSON_TYPE}")
        self.consumed = True
        try:
            data = h.rfile.read(length)
        except TimeoutError:
            raise ApiError(408, "timed out reading the request body") from None
        if len(data) != length:
            raise ApiError(400, f"request body ended after {len(data)} of {length} bytes")
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except RecursionError:
            raise ApiError(400, "invalid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ApiError(400, f"invalid JSON: {str(exc)[:200]}") from None

    def discard(self) -> bool:
        """Read and drop a body the request was refused without reading, so that the connection
        stays in step (and closing it cannot reset it under the client before it has read the
        answer); False when that is not possible."""
        self.consumed = True
        try:
            length = _content_length(self.h, required=True)
            return len(self.h.rfile.read(length)) == length
        except (ApiError, OSError):
            return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _ok(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return _json(status, payload, headers)


def _error(status: int, message: str, field: str | None = None,
           headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return _json(status, {"error": message, "field": field}, headers)


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...]) -> Response:
    body = json.dumps(_finite(payload), allow_nan=False) + "\n"
    return Response(status, body.encode(), JSON_TYPE,
                    (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                     *headers))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: strict JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
