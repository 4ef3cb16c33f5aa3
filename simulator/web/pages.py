"""The daemon's own routes: /metrics, /healthz, and the live page at / with its files.

The page (``static/``: HTML, CSS, a script, and uPlot vendored under ``static/vendor``) is
package data, served from memory: it needs no network, no CDN and nothing outside the
installed package. It draws what the control API (``simulator.web.api``) serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Protocol

from simulator.web.server import Handler, Response, Route, method_not_allowed

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8"}
# The page's own files and uPlot's may change between releases: revalidate, cheaply (ETag).
_CACHE = (("Cache-Control", "no-cache"),)


class Pages(Protocol):
    """What the pages need from the daemon."""

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body."""


def _get_only(route: Callable[[Handler], Response]) -> Route:
    def checked(h: Handler, method: str) -> Response:
        if method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        return route(h)
    return checked


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """Every file of the page, by its URL path: (content, type, ETag)."""
    out = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1]
            if suffix in _TYPES:
                data = child.read_bytes()
                tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                out[prefix + child.name] = (data, _TYPES[suffix], tag)

    walk(files("simulator.web").joinpath("static"), "/static/")
    return out


def routes(daemon: Pages) -> list[tuple[str, Route]]:
    """/metrics, /healthz, the page at / and its files under /static/, for ``daemon``."""
    static = _static_files()
    index = static["/static/index.html"]

    def metrics(h: Handler) -> Response:
        accept = h.headers.get("Accept", "")
        openmetrics = "application/openmetrics-text" in accept
        gzipped = "gzip" in h.headers.get("Accept-Encoding", "")
        body = daemon.exposition(openmetrics, gzipped)
        headers = (("Content-Encoding", "gzip"),) if gzipped else ()
        return Response(200, body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE, headers)

    def serve(h: Handler, found: tuple[bytes, str, str]) -> Response:
        data, ctype, tag = found
        headers = (*_CACHE, ("ETag", tag))
        if h.headers.get("If-None-Match") == tag:
            return Response(304, b"", ctype, headers)
        return Response(200, data, ctype, headers)

    def landing(h: Handler) -> Response:
        path = h.path.split("?", 1)[0]
        if path == "/":
            return serve(h, index)
        if path in static:
            return serve(h, static[path])
        return Response(404, b"not found\n")

    return [("/metrics", _get_only(metrics)),
            ("/healthz", _get_only(lambda h: Response(200, b"ok\n"))),
            ("/", _get_only(landing))]
