"""The JSON control API on the daemon's port: /api/v1/runs and the run and fault operations.

Every request goes through the same checks, in order, and the first that fails answers:
route (404), method (405), control API switched off (403), cross-origin browser request (403),
bearer token (401), names in the path (400), body framing and size (411, 413), content type
(415), JSON (400), then the daemon's own validation (404, 400, 422). Nothing reaches the
daemon before every check passed, so a bad request changes nothing. Errors are
``{"error": message, "field": path-or-null}``; see docs/api.md.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from simulator.arrays import Floats
from simulator.engine import STATES
from simulator.faults.catalogue import FAULTS, FaultSpec, read_fault
from simulator.faults.timeline import FaultLimitError, FaultTargetError
from simulator.schema.fields import MAX_NAME_LENGTH, NAME_CHARS, Reader, is_name
from simulator.schema.loader import LocMap
from simulator.web.auth import ControlSettings, authorize
from simulator.web.server import JSON_TYPE, Handler, HttpError, RequestBody, Response, Route
from simulator.web.views import MAX_POINTS, SORT_KEYS, FleetQuery

PREFIX = "/api/v1/"
MAX_BODY_BYTES = 64 * 1024
MUTATING = frozenset({"POST", "DELETE"})
ACTIONS = ("pause", "resume", "restart")
_FAULT_KEYS = ("kind", "duration", "steps", "params")


class NotFoundError(LookupError):
    """A control request names a run or fault the daemon does not have (404)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Controller(Protocol):
    """What the API needs from the daemon (``simulator.daemon.Daemon`` provides it); an
    unknown run or fault is a ``NotFoundError`` whose message the client reads."""

    log: Any

    def runs_view(self) -> list[dict[str, Any]]:
        """Every run."""

    def run_view(self, run: str) -> dict[str, Any]:
        """One run."""

    def fleet_view(self, query: FleetQuery) -> dict[str, Any]:
        """A page of the fleet table."""

    def history_view(self, run: str, since: int) -> dict[str, Any]:
        """A run's history entries after seq ``since``."""

    def landscape_view(self, run: str, lo: Floats, hi: Floats, points: int) -> dict[str, Any]:
        """A run's landscape on a grid."""

    def step_interval(self, run: str) -> float | None:
        """The run's seconds per step (None for an unknown run)."""

    def inject(self, run: str, spec: FaultSpec) -> dict[str, Any]:
        """Inject a fault now."""

    def clear(self, run: str, fault_id: str) -> dict[str, Any]:
        """End a fault now."""

    def pause(self, run: str) -> dict[str, Any]:
        """Pause a run."""

    def resume(self, run: str) -> dict[str, Any]:
        """Resume a run."""

    def restart(self, run: str) -> dict[str, Any]:
        """Restart a run."""


class ApiError(HttpError):
    """An error response: status, message, offending field, extra headers."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, message, headers)
        self.field = field


@dataclass(frozen=True)
class _Match:
    """A request path resolved to an endpoint."""

    # runs | fleet | fault-kinds | run | history | landscape | faults | fault | pause | resume
    # | restart
    endpoint: str
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
        body = RequestBody(h, MAX_BODY_BYTES)
        try:
            response = self._handle(h, method, body)
        except HttpError as exc:
            response = _error(exc.status, exc.message, getattr(exc, "field", None), exc.headers)
        except NotFoundError as exc:
            response = _error(404, str(exc))
        except FaultLimitError as exc:
            response = _error(409, str(exc))
        except FaultTargetError as exc:
            response = _error(422, str(exc))
        except Exception:
            # A bug, not the client's mistake: log it with its traceback, tell the client little.
            self.controller.log.exception("api_request_failed", method=method,
                                          path=h.path[:200])
            response = _error(500, "internal error; see the daemon's log")
        return response  # the shell drops or refuses a body nobody read

    def _handle(self, h: Handler, method: str, body: RequestBody) -> Response:
        m = _match(h.path.split("?", 1)[0])
        if method not in m.allowed:
            allow = ", ".join(m.allowed)
            raise ApiError(405, f"method {method[:20]} not allowed here (allowed: {allow})",
                           headers=(("Allow", allow),))
        if method in MUTATING:
            authorize(h, self.settings)
        for value, what in ((m.run, "run name"), (m.fault_id, "fault id")):
            if value is not None:
                _check_name(value, what)
        c, query = self.controller, Query(h.path)
        if m.endpoint == "runs":
            return _ok(200, c.runs_view())
        if m.endpoint == "fleet":
            return _ok(200, c.fleet_view(_fleet_query(query)))
        if m.endpoint == "fault-kinds":
            return _ok(200, FAULT_KINDS_VIEW)
        assert m.run is not None
        if m.endpoint == "run":
            return _ok(200, c.run_view(m.run))
        if m.endpoint == "history":
            return _ok(200, c.history_view(m.run, query.integer("since", 0, 2**62, 0)))
        if m.endpoint == "landscape":
            lo, hi = query.floats("lo"), query.floats("hi")
            if len(lo) != len(hi) or not all(a < b for a, b in zip(lo, hi, strict=True)):
                raise ApiError(400, "lo and hi must have as many values, each lo below its hi",
                               "hi")
            points = query.integer("points", 2, MAX_POINTS.get(len(lo), 2), 100)
            return _ok(200, c.landscape_view(m.run, np.array(lo), np.array(hi), points))
        if m.endpoint in ("faults", "fault"):
            return self._faults(h, method, body, m)
        fields = _read_json(h, body, required=False)
        if fields not in (None, {}):
            if not isinstance(fields, dict):
                raise ApiError(400, "body must be empty or a JSON object")
            raise ApiError(422, f"{m.endpoint} takes no fields", str(next(iter(fields))))
        action: Callable[[str], dict[str, Any]] = getattr(c, m.endpoint)
        return _ok(200, action(m.run))

    def _faults(self, h: Handler, method: str, body: RequestBody, m: _Match) -> Response:
        """A run's faults: list them, inject one; one fault: show it, clear it."""
        c = self.controller
        assert m.run is not None
        if m.endpoint == "faults" and method != "POST":
            return _ok(200, c.run_view(m.run)["faults"])
        if m.endpoint == "faults":
            spec = fault_from_body(_read_json(h, body, required=True), c.step_interval(m.run))
            fault = c.inject(m.run, spec)
            location = (f"{PREFIX}runs/{urllib.parse.quote(m.run, safe='')}/faults/"
                        f"{urllib.parse.quote(str(fault['id']), safe='')}")
            return _ok(201, fault, (("Location", location),))
        assert m.fault_id is not None
        if method == "DELETE":
            return _ok(200, c.clear(m.run, m.fault_id))
        for f in c.run_view(m.run)["faults"]:
            if f["id"] == m.fault_id:
                return _ok(200, f)
        raise ApiError(404, f"run {m.run!r} has no active fault {m.fault_id!r}")


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
    if n == 1 and parts[0] in ("fleet", "fault-kinds"):
        return _Match(parts[0], ("GET", "HEAD"))
    if parts[0] == "runs":
        if n == 1:
            return _Match("runs", ("GET", "HEAD"))
        run = parts[1]
        if n == 2:
            return _Match("run", ("GET", "HEAD"), run)
        if n == 3 and parts[2] in ("history", "landscape"):
            return _Match(parts[2], ("GET", "HEAD"), run)
        if n == 3 and parts[2] == "faults":
            return _Match("faults", ("GET", "HEAD", "POST"), run)
        if n == 4 and parts[2] == "faults":
            return _Match("fault", ("GET", "HEAD", "DELETE"), run, parts[3])
        if n == 3 and parts[2] in ACTIONS:
            return _Match(parts[2], ("POST",), run)
    raise ApiError(404, "no such endpoint")


def _check_name(value: str, what: str) -> None:
    if len(value) > MAX_NAME_LENGTH or not is_name(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ApiError(400, f"invalid {what} {shown!r}: must match {NAME_CHARS} "
                       f"(at most {MAX_NAME_LENGTH} characters)")


def _read_json(h: Handler, body: RequestBody, required: bool) -> Any:
    """The body parsed as JSON (None when optional and empty)."""
    if body.length(required) == 0 and not required:
        return None
    ctype = h.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != JSON_TYPE:
        raise ApiError(415, f"Content-Type must be {JSON_TYPE}")
    data = body.read(required)
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"invalid JSON: {str(exc)[:200]}") from None


def fault_from_body(body: Any, step_interval: float | None) -> FaultSpec:
    """A fault to inject now from an API body ``{kind, duration|steps, params}``; 400 or 422
    naming the field for a body that is wrong (``step_interval``: the run's, for ``steps``)."""
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    for key in body:
        if key not in _FAULT_KEYS:
            raise ApiError(422, f"unknown field (expected one of: {', '.join(_FAULT_KEYS)})",
                           str(key))
    if not isinstance(body.get("kind", ""), str):
        raise ApiError(422, "must be a string", "kind")
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(422, "must be an object", "params")
    kind = body.get("kind")
    flat = {k: v for k, v in body.items() if k != "params"}
    for key, value in params.items():
        if kind in FAULTS and key not in (p.key for p in FAULTS[kind].params):
            expected = (", ".join(p.key for p in FAULTS[kind].params)
                        or "none, it takes no parameters")
            raise ApiError(422, f"not a parameter of fault kind {kind} (expected: {expected})",
                           f"params.{key}")
        if key in flat or key in ("at", "at_step"):  # with an unknown kind
            raise ApiError(422, "not a parameter of this fault kind", f"params.{key}")
        flat[key] = value
    reader = Reader("<request>")
    located = LocMap.at(0, {k: (v, 0) for k, v in flat.items()})
    spec = read_fault(reader, located, 0, "", step_interval or 1.0, at_default=0.0)
    if spec is None:
        issue = reader.issues[0]
        field = issue.path if issue.path in ("kind", "duration", "steps") or not issue.path \
            else f"params.{issue.path}"
        raise ApiError(422, issue.message, field or None)
    return spec


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


# --------------------------------------------------------------------------- queries


class Query:
    """The query string of a request; wrong values are 400s naming the parameter."""

    def __init__(self, path: str) -> None:
        raw = path.split("?", 1)[1] if "?" in path else ""
        try:
            self.values = dict(urllib.parse.parse_qsl(raw, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "query is not valid percent-encoded UTF-8") from None

    def text(self, name: str, default: str = "") -> str:
        """A string parameter."""
        return self.values.get(name, default)[:200]

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        """One of ``choices``."""
        value = self.values.get(name, default)
        if value is not None and value not in choices:
            raise ApiError(400, f"must be one of: {', '.join(choices)}", name)
        return value

    def integer(self, name: str, lo: int, hi: int, default: int) -> int:
        """A whole number in [lo, hi]."""
        raw = self.values.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
            raise ApiError(400, f"must be a whole number from {lo} to {hi}", name)
        return int(raw)

    def floats(self, name: str) -> list[float]:
        """One or two finite numbers, comma-separated (required)."""
        raw = self.values.get(name)
        try:
            values = [float(v) for v in (raw or "").split(",")]
        except ValueError:
            values = []
        if not 1 <= len(values) <= 2 or not all(math.isfinite(v) for v in values):
            raise ApiError(400, "must be one or two finite numbers, comma-separated", name)
        return values


def _fleet_query(q: Query) -> FleetQuery:
    return FleetQuery(
        offset=q.integer("offset", 0, 10**7, 0), limit=q.integer("limit", 1, 1000, 50),
        sort=q.choice("sort", SORT_KEYS, "severity") or "severity",
        descending=q.choice("order", ("asc", "desc"), "desc") == "desc",
        text=q.text("q"), state=q.choice("state", STATES, None))


# The fault kinds, as the live page's "break it" panel offers them.
FAULT_KINDS_VIEW = [
    {"kind": k.name, "summary": k.summary,
     "default_duration_seconds": k.default_duration if math.isfinite(k.default_duration)
     else None,
     "params": [{"name": p.key, "default": p.default, "help": p.help} for p in k.params],
     "replays": k.replays, "on_recording": k.on_recording}
    for k in FAULTS.values()]
