"""Kinds: the landscapes, optimizers and schedules a file can name, each declared once.

A kind is a frozen dataclass whose ``param`` fields are the keys of its YAML mapping: the
field's converter, default and help line are the schema. A ``Registry`` holds the kinds of one
family; reading a mapping looks its ``kind`` up there (an unknown kind is a mistake, never a
fall-through to some default), checks the keys against the kind's, and reads each one.
Documentation tables are rendered from the same declarations (``simulator.reference``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar

from simulator.schema.fields import Reader, join
from simulator.schema.loader import LocMap

_ABSENT = object()  # a key missing or wrong: its field keeps the dataclass default


@dataclass(frozen=True)
class Param:
    """One key of a kind's mapping."""

    field: str  # the dataclass field it fills
    key: str  # the YAML key
    convert: Callable[[Any], Any]
    default: Any
    help: str
    required: bool = False
    shown: str | None = None  # the default as the docs show it, when not the value itself


def param(default: Any, convert: Callable[[Any], Any], help: str, *, key: str | None = None,
          required: bool = False, shown: str | None = None) -> Any:
    """A dataclass field that is also a key of its kind's mapping (``key``: when the YAML key
    is not the field's name; ``required``: ``default`` only stands in after the mistake)."""
    meta = {"param": (key, convert, help, required, shown)}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Kind:
    """Base of the kinds; see the module docstring."""

    kind: ClassVar[str]
    # What the kind does, as the docs' tables say it (a formula or update rule).
    summary: ClassVar[str] = ""

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The keys of this kind's mapping, in declaration order."""
        out = []
        for f in dataclasses.fields(cls):
            if "param" in f.metadata:
                key, convert, help_, required, shown = f.metadata["param"]
                out.append(Param(f.name, key or f.name, convert, f.default, help_, required,
                                 shown))
        return tuple(out)

    @classmethod
    def read(cls, r: Reader, m: LocMap, path: str, **context: Any) -> Self:
        """Read every key given (the kind's keys were already checked); ``resolve`` finishes."""
        values = {}
        for p in cls.params():
            if p.key in m or p.required:
                value = r.take(m, path, p.key, p.convert, _ABSENT, p.required)
                if value is not _ABSENT:
                    values[p.field] = value
        return cls.resolve(r, m, path, values, **context)

    @classmethod
    def read_mapping(cls, r: Reader, value: Any, line: int, path: str, **context: Any) -> Self:
        """A mapping of this kind's keys alone (no ``kind`` key); the defaults after a
        mistake."""
        m = r.mapping(value, line, path)
        if m is None:
            return cls()
        r.unknown_keys(m, path, (p.key for p in cls.params()))
        return cls.read(r, m, path, **context)

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """The spec from the values given and valid (the others take their defaults); kinds
        with rules across keys check them here."""
        return cls(**values)


K = TypeVar("K", bound=Kind)


class Registry(Generic[K]):
    """The kinds of one family (landscape, optimizer, schedule), by name, in docs order."""

    def __init__(self, what: str, *kinds: type[K], default: str) -> None:
        self.what = what
        self._kinds = {k.kind: k for k in kinds}
        self.default = default
        assert default in self._kinds and len(self._kinds) == len(kinds)

    def __getitem__(self, name: str) -> type[K]:
        return self._kinds[name]

    def __iter__(self) -> Iterator[type[K]]:
        return iter(self._kinds.values())

    @property
    def names(self) -> tuple[str, ...]:
        """Every kind's name."""
        return tuple(self._kinds)

    def fallback(self) -> K:
        """The default kind with its defaults: stands in after a mistake, so that the rest of
        the file is still checked."""
        return self._kinds[self.default]()

    def read(self, r: Reader, value: Any, line: int, path: str, extra: tuple[str, ...] = (),
             **context: Any) -> K:
        """The spec of a mapping ``{kind: NAME, ...}`` (``extra``: keys every kind of the family
        takes, read by the caller); after a mistake, ``fallback()``."""
        m = r.mapping(value, line, path)
        if m is None:
            return self.fallback()
        kind = m.get("kind", self.default)
        if not isinstance(kind, str) or kind not in self._kinds:
            r.error(m.lines.get("kind", m.line), join(path, "kind"),
                    f"unknown {self.what} kind {kind!r} (expected one of: "
                    f"{', '.join(self._kinds)})")
            return self.fallback()
        cls = self._kinds[kind]
        r.unknown_keys(m, path, ("kind", *extra, *(p.key for p in cls.params())))
        return cls.read(r, m, path, **context)
