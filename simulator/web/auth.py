"""The control API's guard: whether changes are allowed, and the bearer token they need.

A change (POST, DELETE) passes only if the API's changes are enabled, the request does not
come from another origin's web page, and, when the daemon has a token, it carries that token
(compared in constant time, never logged).
"""

from __future__ import annotations

import hmac
import urllib.parse
from dataclasses import dataclass, field

from simulator.files import MAX_TOKEN_BYTES, FileReadError, read_regular
from simulator.schema.errors import UsageError
from simulator.web.server import Handler, HttpError, is_loopback, parse_listen_address

_ENABLE_HINT = ("the control API is disabled on this daemon; start it with "
                "--web.enable-control-api to allow changes")


@dataclass(frozen=True)
class ControlSettings:
    """Whether mutations are allowed, and the bearer token they need (None: no token)."""

    enabled: bool = True
    token: bytes | None = field(default=None, repr=False)


def _same_origin(origin: str, host: str) -> bool:
    parsed = urllib.parse.urlsplit(origin)
    return bool(parsed.scheme in ("http", "https") and host and parsed.netloc == host)


def authorize(h: Handler, settings: ControlSettings) -> None:
    """Let a change through, or raise the HttpError (403, 401) that refuses it."""
    if not settings.enabled:
        raise HttpError(403, _ENABLE_HINT)
    origin = h.headers.get("Origin")
    if origin is not None and not _same_origin(origin, h.headers.get("Host", "")):
        # Browsers send Origin; refusing cross-site pages keeps a loopback daemon without a
        # token from being driven by any web page its user happens to open.
        raise HttpError(403, "cross-origin requests may not change anything")
    token = settings.token
    if token is None:
        return
    scheme, _, given = h.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HttpError(401, "a bearer token is required (Authorization: Bearer <token>)",
                        (("WWW-Authenticate", 'Bearer realm="trainsim"'),))
    # Header values arrive decoded as latin-1: encoding back yields the bytes as sent.
    if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), token):
        raise HttpError(401, "invalid bearer token",
                        (("WWW-Authenticate", 'Bearer realm="trainsim", error="invalid_token"'),))


def read_token(path: str, flag: str) -> str:
    """The token in ``path``, surrounding whitespace stripped; UsageError if unusable."""
    try:
        raw = read_regular(path, MAX_TOKEN_BYTES)
    except FileReadError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.reason}") from None
    token = raw.strip()
    if not token:
        raise UsageError(f"{flag}: {path} is empty")
    # It travels in an Authorization header: printable ASCII, no spaces.
    if not all(0x21 <= b <= 0x7E for b in token):
        raise UsageError(f"{flag}: the token in {path} must be printable ASCII without spaces")
    return token.decode()


TOKEN_FLAG = "--web.control-token-file"


def control_settings(enabled: bool, token_file: str | None,
                     listen_address: str) -> ControlSettings:
    """The daemon's settings from its flags; UsageError for an unsafe or broken setup."""
    token = read_token(token_file, TOKEN_FLAG).encode() if token_file is not None else None
    host, _ = parse_listen_address(listen_address)
    if enabled and token is None and not is_loopback(host):
        raise UsageError(
            f"refusing to listen on {listen_address} with the control API enabled and no "
            f"token: pass {TOKEN_FLAG} FILE, --no-web.enable-control-api, or a loopback address")
    return ControlSettings(enabled=enabled, token=token)
