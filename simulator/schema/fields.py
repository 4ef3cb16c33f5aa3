"""Typed values out of located YAML, with every mistake collected.

A ``Reader`` walks a document for one file and records each mistake as a ``ConfigIssue``
instead of stopping at the first; converters (``finite``, ``bounded``, ``integer``, ...) turn
one value into a typed one or raise ValueError with the sentence the user reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from simulator.durations import parse_seconds
from simulator.schema.errors import ConfigIssue
from simulator.schema.loader import LocList, LocMap

# Names of runs, fleets and faults: the ``run`` label's values, safe in every exposition.
NAME_CHARS = "[a-zA-Z0-9_.-]+"
MAX_NAME_LENGTH = 128
_NAME_RE = re.compile(NAME_CHARS)
MAX_DIMS = 10_000
MAX_STEPS = 10**12
MAX_SEED = 2**63 - 1


def is_name(value: object) -> bool:
    """Whether ``value`` is a string of name characters only (at any length)."""
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


def join(path: str, key: str) -> str:
    """``path.key`` (``key`` alone at the top level)."""
    return f"{path}.{key}" if path else key


def describe(value: Any) -> str:
    """A value as an error message names it: ``a mapping``, ``str 'x'``, ``nothing``."""
    if value is None:
        return "nothing"
    if isinstance(value, LocMap):
        return "a mapping"
    if isinstance(value, LocList):
        return "a list"
    return f"{type(value).__name__} {value!r}"


class Reader:
    """Reads typed values out of located mappings, recording every mistake."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []

    def error(self, line: int, path: str, message: str) -> None:
        """Record one mistake."""
        self.issues.append(ConfigIssue(line, path, message, self.source))

    def mapping(self, value: Any, line: int, path: str) -> LocMap | None:
        """``value`` if it is a mapping; otherwise a recorded mistake and None."""
        if isinstance(value, LocMap):
            return value
        self.error(line, path, f"must be a mapping, got {describe(value)}")
        return None

    def unknown_keys(self, m: LocMap, path: str, allowed: Iterable[str]) -> None:
        """Record every key of ``m`` that is not in ``allowed``."""
        known = set(allowed)
        for key in m:
            if key not in known:
                hint = ", ".join(sorted(known))
                self.error(m.lines[key], join(path, str(key)),
                           f"unknown key (expected one of: {hint})")

    def mappings(self, seq: LocList, path: str) -> Iterator[tuple[str, LocMap]]:
        """Each item of a list that is a mapping, with its path; other items are mistakes."""
        for i, item in enumerate(seq):
            item_path = f"{path}[{i}]"
            m = self.mapping(item, seq.lines[i], item_path)
            if m is not None:
                yield item_path, m

    def section(self, m: LocMap, key: str, path: str, allowed: tuple[str, ...]) -> LocMap:
        """The optional sub-mapping ``m[key]`` with only ``allowed`` keys (others are
        mistakes); an empty mapping when it is absent or not a mapping."""
        if key in m:
            sub = self.mapping(m[key], m.lines[key], path)
            if sub is not None:
                self.unknown_keys(sub, path, allowed)
                return sub.only(allowed)
        return LocMap.at(m.line)

    def take(self, m: LocMap, path: str, key: str, convert: Callable[[Any], Any],
             default: Any = None, required: bool = False) -> Any:
        """``convert(m[key])``; ``default`` when the key is absent (a mistake if
        ``required``) or its value is wrong (the mistake is recorded)."""
        if key not in m:
            if required:
                self.error(m.line, join(path, key), "required key is missing")
            return default
        try:
            return convert(m[key])
        except ValueError as exc:
            self.error(m.lines[key], join(path, key), str(exc))
            return default


# --------------------------------------------------------------------------- converters


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be a number, got {describe(value)}")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"must be a finite number, got {value!r}") from None
    if isinstance(value, str):  # PyYAML reads 1e5 (no dot) as a string; accept it as a number
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"must be a number, got {describe(value)}")


def finite(value: Any) -> float:
    """A finite float."""
    x = _number(value)
    if not math.isfinite(x):
        raise ValueError(f"must be finite, got {value!r}")
    return x


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        if lo_open and hi_open:
            return f"strictly between {lo:g} and {hi:g}"
        if lo_open:
            return f"> {lo:g} and <= {hi:g}"
        return f"between {lo:g} and {hi:g}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def bounded(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, of: Callable[[Any], float] = finite,
            ) -> Callable[[Any], float]:
    """A converter (``of``: a finite number by default, or a duration) checked against a range;
    its error says the range, e.g. ``must be > 0, got -0.1``."""
    text = _range_text(lo, hi, lo_open, hi_open)

    def convert(value: Any) -> float:
        x = of(value)
        if ((lo is not None and (x <= lo if lo_open else x < lo))
                or (hi is not None and (x >= hi if hi_open else x > hi))):
            raise ValueError(f"must be {text}, got {value!r}")
        return x
    convert.__doc__ = f"a number {text}" if of is finite else f"a duration {text}"
    convert.range = text  # type: ignore[attr-defined]  # what the reference tables show
    return convert


positive = bounded(0, lo_open=True)
non_negative = bounded(0)
unit = bounded(0, 1)
open_unit = bounded(0, 1, lo_open=True, hi_open=True)
half_open_unit = bounded(0, 1, lo_open=True)
at_least_one = bounded(1)
non_negative_duration = bounded(0, of=parse_seconds)
positive_duration = bounded(0, lo_open=True, of=parse_seconds)


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    """A converter to an int in [lo, hi] (floats with a fraction and bools are rejected)."""
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {describe(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value
    # What the reference tables show; a bound of a million or more is no bound to a reader.
    convert.range = f"integer >= {lo}" if hi >= 10**6 else f"integer {lo}..{hi}"  # type: ignore[attr-defined]
    return convert


def boolean(value: Any) -> bool:
    """A YAML boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {describe(value)}")
    return value


def interval(value: Any) -> float:
    """A step interval: a duration of at least 1ms."""
    seconds = parse_seconds(value)
    if seconds < 0.001:
        raise ValueError(f"must be at least 1ms, got {value!r}")
    return seconds


def scalar_or_list(value: Any) -> float | tuple[float, ...]:
    """A number, or a list of 1 to ``MAX_DIMS`` numbers (one per dimension)."""
    if isinstance(value, LocList):
        if not value or len(value) > MAX_DIMS:
            raise ValueError(f"must be a number or a list of 1 to {MAX_DIMS} numbers, "
                             f"got a list of {len(value)}")
        return tuple(finite(v) for v in value)
    return finite(value)


def name(value: Any) -> str:
    """A run name: name characters only, at most ``MAX_NAME_LENGTH`` of them."""
    if not is_name(value):
        raise ValueError(f"must match {NAME_CHARS}, got {describe(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    return str(value)
