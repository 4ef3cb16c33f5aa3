"""A small client for the control API (stdlib urllib only), used by the CLI subcommands and
the drill runner.

Every failure becomes a ``ClientError`` with one line fit for a terminal: the daemon's status,
message and field, why the daemon could not be reached, or what was wrong with its answer.
A URL's ``user:password@`` part never appears in a message (``redact``); it is sent as basic
authentication when no bearer token is (``with_credentials``).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from simulator.schema.errors import UsageError
from simulator.web.auth import TOKEN_FLAG, read_token

DEFAULT_URL = "http://127.0.0.1:9310"
TOKEN_ENV = "TRAINSIM_CONTROL_TOKEN"

TRANSPORT_ERRORS = (OSError, http.client.HTTPException, ValueError)
"""What urllib raises when a server cannot be reached, does not answer in HTTP, or the URL
cannot be sent; ``reason`` says which in one line."""


def fault_body(kind: str, *, duration: str | None = None, steps: int | None = None,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The control API's body that injects a fault (``POST /api/v1/runs/RUN/faults``)."""
    body: dict[str, Any] = {"kind": kind}
    if duration is not None:
        body["duration"] = duration
    if steps is not None:
        body["steps"] = steps
    if params:
        body["params"] = params
    return body


class ClientError(Exception):
    """A request that failed; ``status`` is the HTTP status, or None if there was no answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Client:
    """The control API of the daemon at ``url``."""

    url: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    timeout: float = 10.0

    def runs(self) -> list[dict[str, Any]]:
        """Every run as the API shows it."""
        answer = self._request("GET", "runs")
        if not isinstance(answer, list) or not all(map(_is_run, answer)):
            raise self._unexpected("not a list of runs")
        return answer

    def run(self, run: str) -> dict[str, Any]:
        """One run."""
        return self._object(self._request("GET", _run_path(run)), "run", "state")

    def inject(self, run: str, kind: str, duration: str | None = None, steps: int | None = None,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inject a fault now; returns the fault (its ``id`` clears it)."""
        body = fault_body(kind, duration=duration, steps=steps, params=params)
        return self._object(self._request("POST", f"{_run_path(run)}/faults", body),
                            "id", "kind")

    def clear(self, run: str, fault_id: str) -> dict[str, Any]:
        """End a fault now."""
        path = f"{_run_path(run)}/faults/{_q(fault_id, 'ID')}"
        return self._object(self._request("DELETE", path), "id", "kind")

    def action(self, run: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``restart`` a run; returns the run."""
        return self._object(self._request("POST", f"{_run_path(run)}/{action}"),
                            "run", "state")

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if method != "GET":
            data = b"" if body is None else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            url, auth = with_credentials(f"{self.url.rstrip('/')}/api/v1/{path}", self.token)
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            for name, value in auth.items():  # unredirected: never sent on to another host
                req.add_unredirected_header(name, value)
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ClientError(_describe(exc.code, exc.reason, _body(exc)), exc.code) from None
        except TRANSPORT_ERRORS as exc:
            raise self._failure(exc) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise self._unexpected("not JSON") from None

    def _failure(self, exc: Exception) -> ClientError:
        """A request that got no answer, or an answer that is not HTTP, as one line."""
        if _not_http(exc):
            return self._unexpected(reason(exc))
        return ClientError(f"cannot reach the daemon at {redact(self.url)}: {reason(exc)}")

    def _object(self, answer: Any, *keys: str) -> dict[str, Any]:
        """``answer`` if it is a JSON object with ``keys``; ClientError otherwise."""
        if isinstance(answer, dict) and all(k in answer for k in keys):
            return answer
        raise self._unexpected(f"not an object with {' and '.join(keys)}")

    def _unexpected(self, what: str) -> ClientError:
        return ClientError(f"unexpected answer from {redact(self.url)}: {what}; is it a "
                           "trainsim daemon?")


def _is_run(r: Any) -> bool:
    """Whether ``r`` has the shape of a run as ``format_runs`` reads it."""
    if not isinstance(r, dict) or not all(k in r for k in ("run", "state", "step")):
        return False
    alerts, faults = r.get("alerts") or [], r.get("faults") or []
    return (isinstance(r.get("loss"), int | float | None)
            and isinstance(alerts, list) and all(isinstance(a, str) for a in alerts)
            and isinstance(faults, list)
            and all(isinstance(f, dict) and "kind" in f and "id" in f for f in faults))


def _not_http(exc: Exception) -> bool:
    """Whether ``exc`` says a server answered, but not in HTTP."""
    return (isinstance(exc, http.client.HTTPException)
            and not isinstance(exc, http.client.InvalidURL | ConnectionError))


def reason(exc: Exception) -> str:
    """Why a request failed with one of ``TRANSPORT_ERRORS``, in one line."""
    if _not_http(exc):
        return "not HTTP"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, ValueError | http.client.InvalidURL):
        return f"invalid URL: {_line(str(cause))}"
    return _line(str(cause))


def _body(exc: urllib.error.HTTPError) -> bytes:
    """An error answer's body, or nothing if it cannot be read in full."""
    try:
        return exc.read()
    except TRANSPORT_ERRORS:
        return b""


def _run_path(run: str) -> str:
    return f"runs/{_q(run, 'RUN')}"


def _q(segment: str, name: str) -> str:
    """``segment`` (the argument ``name``) percent-encoded as UTF-8. Bytes that arrived
    undecodable on the command line (surrogate escapes) are sent as they came; UsageError if
    they are not UTF-8 either, as no run or fault can be named so."""
    try:
        raw = segment.encode("utf-8", "surrogateescape")
        raw.decode("utf-8")
    except UnicodeError:
        raise UsageError(f"{name}: {segment!r} is not valid UTF-8") from None
    return urllib.parse.quote(raw, safe="")


def _line(text: str) -> str:
    """``text`` from a server as one printable line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _describe(status: int, reason: str, raw: bytes) -> str:
    try:
        payload = json.loads(raw)
        message = str(payload["error"])
        fld = payload.get("field")
    except (ValueError, KeyError, TypeError, RecursionError):
        message, fld = reason, None
    text = _line(f"{status} {message}" + (f" (field: {fld})" if fld else ""))
    if status == 401:
        text += (f"; pass the daemon's token with {TOKEN_FLAG} FILE or the "
                 f"{TOKEN_ENV} environment variable")
    return text


def token(token_file: str | None) -> str | None:
    """The control token a client sends: from ``token_file``, else from the
    TRAINSIM_CONTROL_TOKEN environment variable, else none. UsageError for an unusable file."""
    if token_file is not None:
        return read_token(token_file, TOKEN_FLAG)
    return os.environ.get(TOKEN_ENV, "").strip() or None


# A URL's user:password@ part: after the scheme (if it is followed by a slash), up to the last
# "@" before the path, query or fragment.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:/+)?[^/?#]*@")


def redact(url: str) -> str:
    """``url`` with its ``user:password@`` part, if any, shown as ``***@``."""
    return _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", url, count=1)


def with_credentials(url: str, token: str | None = None) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` part, and the Authorization header to send: the
    bearer ``token`` if there is one, else basic authentication with that part, else none.
    ValueError for a URL that cannot be parsed."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if token is not None:
        headers = {"Authorization": f"Bearer {token}"}
    elif at:
        user, _, password = userinfo.partition(":")
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        headers = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    else:
        headers = {}
    return (urllib.parse.urlunsplit(parts._replace(netloc=host)) if at else url), headers


def check_url(url: str, flag: str = "--url") -> str:
    """``url`` if it is an http(s) URL with a host, a port from 1 to 65535 if any, and no
    spaces or control characters; ValueError naming ``flag`` otherwise."""
    shown = redact(url)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"{flag}: must not contain spaces or control characters, "
                         f"got {shown!r}")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # a bracketed host that is not an IPv6 address
        raise ValueError(f"{flag}: {exc}, got {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{flag}: must be an http:// or https:// URL with a host, "
                         f"got {shown!r}")
    try:
        valid_port = parts.port != 0
    except ValueError:
        valid_port = False
    if not valid_port:
        raise ValueError(f"{flag}: the port must be a number from 1 to 65535, got {shown!r}")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise ValueError(f"{flag}: invalid host name, got {shown!r}") from None
    return url


def format_runs(runs: list[dict[str, Any]]) -> str:
    """The runs as an aligned text table."""
    header = ("RUN", "STATE", "STEP", "LOSS", "ALERTS", "FAULTS")
    rows = [header]
    for r in runs:
        state = str(r["state"]) + (" (paused)" if r.get("paused") else "")
        loss = "-" if r.get("loss") is None else f"{r['loss']:.6g}"
        alerts = ",".join(r.get("alerts") or []) or "-"
        faults = ",".join(f"{f['kind']}#{f['id']}" for f in r.get("faults") or []) or "-"
        rows.append((str(r["run"]), state, str(r["step"]), loss, alerts, faults))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
