"""A small client for the control API (stdlib urllib only), used by the CLI subcommands and
the drill runner.

Every failure becomes a ``ClientError`` with one line fit for a terminal: the daemon's status,
message and field, or why the daemon could not be reached.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from simulator.web.auth import read_token

DEFAULT_URL = "http://127.0.0.1:9310"
TOKEN_ENV = "TRAINSIM_CONTROL_TOKEN"


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
        return list(self._request("GET", "runs"))

    def run(self, run: str) -> dict[str, Any]:
        """One run."""
        return dict(self._request("GET", f"runs/{_q(run)}"))

    def inject(self, run: str, kind: str, duration: str | None = None, steps: int | None = None,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inject a fault now; returns the fault (its ``id`` clears it)."""
        body: dict[str, Any] = {"kind": kind}
        if duration is not None:
            body["duration"] = duration
        if steps is not None:
            body["steps"] = steps
        if params:
            body["params"] = params
        return dict(self._request("POST", f"runs/{_q(run)}/faults", body))

    def clear(self, run: str, fault_id: str) -> dict[str, Any]:
        """End a fault now."""
        return dict(self._request("DELETE", f"runs/{_q(run)}/faults/{_q(fault_id)}"))

    def action(self, run: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``restart`` a run; returns the run."""
        return dict(self._request("POST", f"runs/{_q(run)}/{action}"))

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.url.rstrip('/')}/api/v1/{path}"
        headers = {"Accept": "application/json"}
        data = None
        if method != "GET":
            data = b"" if body is None else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ClientError(_describe(exc.code, exc.reason, exc.read()), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the daemon at {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(f"{url} did not answer with JSON: is it a trainsim daemon?"
                              ) from None


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _describe(status: int, reason: str, raw: bytes) -> str:
    try:
        payload = json.loads(raw)
        message = str(payload["error"])
        fld = payload.get("field")
    except (ValueError, KeyError, TypeError):
        message, fld = reason, None
    text = f"{status} {message}" + (f" (field: {fld})" if fld else "")
    if status == 401:
        text += (f"; pass the daemon's token with --web.control-token-file FILE or the "
                 f"{TOKEN_ENV} environment variable")
    return text


def token(token_file: str | None) -> str | None:
    """The control token a client sends: from ``token_file``, else from the
    TRAINSIM_CONTROL_TOKEN environment variable, else none. UsageError for an unusable file."""
    if token_file is not None:
        return read_token(token_file, "--token-file")
    return os.environ.get(TOKEN_ENV, "").strip() or None


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError otherwise."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--url must be an http:// or https:// URL, got {url!r}")
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
