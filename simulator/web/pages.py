"""The daemon's own routes: /metrics, /healthz and the landing page."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any, Protocol

from simulator.web.server import Handler, Response, Route, method_not_allowed

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Pages(Protocol):
    """What the pages need from the daemon."""

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body."""

    def runs_table(self) -> list[dict[str, Any]]:
        """One row per run for the landing page."""


def _get_only(route: Callable[[Handler], Response]) -> Route:
    def checked(h: Handler, method: str) -> Response:
        if method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        return route(h)
    return checked


def routes(daemon: Pages) -> list[tuple[str, Route]]:
    """/metrics, /healthz and / for ``daemon``."""

    def metrics(h: Handler) -> Response:
        accept = h.headers.get("Accept", "")
        openmetrics = "application/openmetrics-text" in accept
        gzipped = "gzip" in h.headers.get("Accept-Encoding", "")
        body = daemon.exposition(openmetrics, gzipped)
        headers = (("Content-Encoding", "gzip"),) if gzipped else ()
        return Response(200, body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE, headers)

    def landing(h: Handler) -> Response:
        if h.path.split("?", 1)[0] != "/":
            return Response(404, b"not found\n")
        return Response(200, _landing_page(daemon.runs_table()).encode(),
                        "text/html; charset=utf-8")

    return [("/metrics", _get_only(metrics)),
            ("/healthz", _get_only(lambda h: Response(200, b"ok\n"))),
            ("/", _get_only(landing))]


def _landing_page(table: list[dict[str, Any]]) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>"
                         for k in ("run", "state", "step", "loss", "alerts")) + "</tr>"
        for r in table)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>trainsim</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style>
</head><body><h1>trainsim</h1>
<p><a href="/metrics">Metrics</a> &middot; <a href="/healthz">Health</a> &middot;
<a href="/api/v1/runs">Runs (JSON)</a></p>
<table><thead><tr><th>run</th><th>state</th><th>step</th><th>loss</th><th>alerts</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""
