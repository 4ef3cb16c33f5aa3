"""The daemon's own routes: /metrics, /healthz, and the live page at / with its files.

The page (``static/``: HTML, CSS, a script, and uPlot vendored under ``static/vendor``) is
package data, served from memory: it needs no network, no CDN and nothing outside the
installed package. It draws what the control API (``simulator.web.api``) serves. /metrics
answers in the format and encoding the scraper prefers (``negotiate``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
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
# /metrics answers differ by these request headers: caches must keep them apart.
_VARY = (("Vary", "Accept, Accept-Encoding"),)
# What /metrics offers, in order of preference: the classic text format on a tie (`*/*`, a
# browser's Accept); gzip on a tie with identity (`*`).
_FORMATS = ("text/plain", "application/openmetrics-text")
_CODINGS = ("gzip", "identity")
# RFC 9110's qvalue: 0 to 1, at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


class Pages(Protocol):
    """What the pages need from the daemon."""

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body."""


def negotiate(header: str, offers: Sequence[str]) -> str | None:
    """The first of ``offers`` (lower-case media types or content codings, in the server's
    order of preference) with the highest quality in an Accept or Accept-Encoding value, as
    RFC 9110 weighs them: tokens compare case-insensitively, an element's ``q`` defaults to 1
    and 0 means not acceptable, ``*`` and ``type/*`` match what is not named more specifically,
    and parameters other than ``q`` are ignored. None when no offer is acceptable (an empty or
    absent header included); elements with a malformed ``q`` are skipped."""
    ranges: list[tuple[str, float]] = []
    for element in header.split(","):
        token, *params = (part.strip() for part in element.split(";"))
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE.fullmatch(value) else None
        if token and q is not None:
            ranges.append((token.lower(), q))
    best, best_q = None, 0.0
    for offer in offers:
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    """The quality the most specific matching ranges give ``offer`` (their highest, if several
    match it equally specifically); 0 when none matches."""
    found, quality = 0, 0.0
    for token, q in ranges:
        if token == offer:
            specificity = 3
        elif token in ("*", "*/*"):
            specificity = 1
        elif token.endswith("/*") and offer.startswith(token[:-1]):
            specificity = 2
        else:
            continue
        if specificity > found:
            found, quality = specificity, q
        elif specificity == found:
            quality = max(quality, q)
    return quality


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
        # Text, unless OpenMetrics is preferred; identity, unless gzip is acceptable and
        # preferred (identity stays acceptable when nothing else is, whatever the header said).
        accept = ", ".join(h.headers.get_all("Accept") or [])
        encodings = ", ".join(h.headers.get_all("Accept-Encoding") or [])
        openmetrics = negotiate(accept, _FORMATS) == "application/openmetrics-text"
        gzipped = negotiate(encodings, _CODINGS) == "gzip"
        body = daemon.exposition(openmetrics, gzipped)
        headers = (*_VARY, ("Content-Encoding", "gzip")) if gzipped else _VARY
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
