"""Durations in Prometheus' notation (``250ms``, ``1m30s``, ``1h``), read and written.

One grammar for every duration trainsim reads: counts with units from ``y`` down to ``ms``, in
that order, each unit at most once, as Prometheus writes them. Config files may also give a
decimal count (``1.5s``) or a plain number of seconds; rule files are held to Prometheus' own
grammar, so that a rule trainsim accepts is one Prometheus accepts.
"""

from __future__ import annotations

import math
import re
from typing import Any

UNIT_MS: dict[str, int] = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
_UNIT_SECONDS = {u: 0.001 if u == "ms" else ms / 1000 for u, ms in UNIT_MS.items()}
_COUNT = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile("".join(f"(?:{_COUNT}{u})?" for u in UNIT_MS))


def _parts(text: str) -> list[tuple[str, str]] | None:
    """The (count, unit) pairs of ``text`` in the grammar above; None if it is not one."""
    match = _DURATION_RE.fullmatch(text)
    if match is None or not any(match.groups()):
        return None
    return [(c, u) for c, u in zip(match.groups(), UNIT_MS, strict=True) if c is not None]


def parse_seconds(value: Any) -> float:
    """Seconds from a config value: a duration (``250ms``, ``1m30s``, ``1.5s``) or a number of
    seconds. ValueError says what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 250ms, 1s or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        parts = _parts(value.strip()) if isinstance(value, str) else None
        if parts is None:
            raise ValueError(f"must be a duration like 250ms, 1s or 2m, got {value!r}")
        seconds = sum(float(c) * _UNIT_SECONDS[u] for c, u in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"must be finite, got {value!r}")
    return seconds


def parse_prometheus(text: str) -> int:
    """Milliseconds of a duration in Prometheus' own grammar (``1h30m``, ``250ms``; no
    fractions). ValueError for anything Prometheus itself would reject."""
    parts = _parts(text.strip())
    if parts is None or any("." in c for c, _ in parts):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(c) * UNIT_MS[u] for c, u in parts)


def format_prometheus(ms: int) -> str:
    """Milliseconds as a Prometheus duration (``90000`` -> ``1m30s``, ``0`` -> ``0s``).

    Days and longer are written in hours, so the output reads the same in every rule.
    """
    if ms < 0:
        raise ValueError(f"negative duration: {ms} ms")
    if ms == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("h", "m", "s", "ms"):
        count, ms = divmod(ms, UNIT_MS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
