"""The reference tables of docs/config.md, docs/faults.md and docs/replay.md, rendered from the
declarations.

Each table stands in its page between ``<!-- generated: NAME -->`` and ``<!-- end -->``;
``python -m simulator.reference docs/config.md docs/faults.md docs/replay.md`` (``make docs``)
rewrites them,
and a test checks that the pages hold what the code declares.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from simulator import landscapes, optimizers, schedules
from simulator.detectors import Detection
from simulator.faults.catalogue import FAULTS
from simulator.replay.spec import Replay
from simulator.schema.kinds import Kind, Param

_BLOCK_RE = re.compile(r"(<!-- generated: (\w+) -->\n)(.*?)(<!-- end -->)", re.S)


def _number(x: float) -> str:
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-2):
        mantissa, exponent = f"{x:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def default_text(p: Param) -> str:
    """A key's default as the tables show it."""
    if p.required:
        return "required"
    if p.shown is not None:
        return p.shown
    if isinstance(p.default, bool):
        return str(p.default).lower()
    if isinstance(p.default, tuple):
        return "[" + ", ".join(_number(v) for v in p.default) + "]"
    if isinstance(p.default, str):
        return f"`{p.default}`"
    return "none" if p.default is None else _number(p.default)


def range_text(p: Param) -> str:
    """The values a key takes, when its converter says (``> 0``, ``1..10000``)."""
    return str(getattr(p.convert, "range", ""))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _keys(params: Iterable[Param]) -> str:
    return ", ".join(f"`{p.key}` ({', '.join(filter(None, (default_text(p), range_text(p))))})"
                     for p in params)


def kinds_table(registry: Iterable[type[Kind]], what: str) -> str:
    """One row per kind: what it computes, its keys with their defaults; then one row per key
    of every kind with its meaning."""
    kinds = _table(("kind", what, "keys (default)"),
                   ((f"`{k.kind}`", k.summary, _keys(k.params())) for k in registry))
    keys = _table(("kind", "key", "default", "range", "meaning"),
                  ((f"`{k.kind}`", f"`{p.key}`", default_text(p), range_text(p), p.help)
                   for k in registry for p in k.params()))
    return kinds + "\n" + keys


def detect_table() -> str:
    """The ``detect:`` keys."""
    return _table(("key", "default", "range", "meaning"),
                  ((f"`{p.key}`", f"`{default_text(p)}`", range_text(p), p.help)
                   for p in Detection.params()))


def faults_table() -> str:
    """The fault kinds, their parameters and effects."""
    return _table(("kind", "parameters (default)", "what it does to the series",
                   "alert it should raise"),
                  ((f"`{k.name}`", _keys(k.params) or "none", k.summary, k.alert)
                   for k in FAULTS.values()))


def replay_table() -> str:
    """The keys of a run's ``replay:`` block."""
    return _table(("key", "default", "range", "meaning"),
                  ((f"`{p.key}`", default_text(p), range_text(p), p.help)
                   for p in Replay.params()))


def recording_faults_table() -> str:
    """What each fault kind does to a replay run."""
    return _table(("kind", "on a replay run"),
                  ((f"`{k.name}`", k.on_recording) for k in FAULTS.values()))


TABLES: dict[str, Callable[[], str]] = {
    "landscapes": lambda: kinds_table(landscapes.KINDS, "formula"),
    "optimizers": lambda: kinds_table(optimizers.KINDS, "update"),
    "schedules": lambda: kinds_table(schedules.KINDS, "lr(t), torch's closed form"),
    "detect": detect_table,
    "faults": faults_table,
    "replay": replay_table,
    "recording_faults": recording_faults_table,
}


def render(text: str) -> str:
    """``text`` with every generated table rendered afresh."""
    return _BLOCK_RE.sub(lambda m: m[1] + TABLES[m[2]]() + m[4], text)


def main(paths: Sequence[str]) -> int:
    """Rewrite the generated tables of each page in ``paths``."""
    for path in map(Path, paths):
        text = path.read_text()
        path.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
