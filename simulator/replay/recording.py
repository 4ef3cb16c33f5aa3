"""A recording made ready to replay: its steps and metrics as arrays on disk, mapped, not read.

``load`` streams a file's chunks (``simulator.replay.formats``) through per-metric checks into
temporary files, then lines the metrics up on the loss's steps, so memory stays bounded by a
chunk whatever the file's length; the arrays a ``Recording`` holds are memory-mapped.

The rules, each with its answer:

- The loss's steps are the replay's steps: a record without a loss is not a step.
- Steps are integers that increase per metric: a metric's step that repeats or goes back is a
  mistake at its line (a resumed run logs steps again: keep one attempt's rows).
- A missing value (an empty cell, ``null``, no record at that step) keeps the metric's last
  value, as a gauge does; the replay begins at the first step where every recorded training
  metric (gradient norm, learning rate) has a value; the validation loss is NaN until its
  first evaluation.
- NaN or infinity in the loss or gradient norm is replayed: the run diverges there, as a
  training job does. A learning rate must be finite and >= 0, a gradient norm >= 0, a time
  finite and not going back.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from simulator.arrays import Floats, Ints
from simulator.replay.formats import (
    DEFAULT_NAMES,
    METRICS,
    Chunk,
    Names,
    RecordingError,
    event_files,
    read,
)

# Steps are exact in a float64 up to 2^53.
_MAX_STEP = 2.0**53
# Rows lined up at a time when the metrics are joined on the loss's steps.
_JOIN_BLOCK = 1 << 20
# Recordings kept loaded, by file identity: a reload of an unchanged config reads none again.
_CACHE_SIZE = 8


def _mapped(f: IO[bytes], n: int) -> Floats:
    """An array of ``n`` floats on the (temporary) file ``f``, mapped read-write."""
    if n == 0:
        return np.zeros(0)
    out: Floats = np.memmap(f, dtype=np.float64, mode="w+", shape=(n,))
    return out


class _Series:
    """One metric's (step, value, time) records, appended chunk by chunk to temporary files
    and checked on the way: steps integral and increasing."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        # Closed by arrays() or close(): they outlive this call.
        self.files = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115
        self.n = 0
        self.last_step = -np.inf
        self.last_time = -np.inf
        self.last_line = 0
        self.last_file: str | None = None

    def add(self, lines: Ints, steps: Floats, times: Floats, values: Floats,
            file: str | None = None, unit: str = "line") -> None:
        """Append records (only those with a value: the caller selected them) of ``file``
        (None: the recording itself), whose ``lines`` count ``unit``s."""
        if not len(lines):
            return
        try:
            self._check(lines, steps, times, values, file, unit)
        except RecordingError as exc:
            raise RecordingError(exc.line, exc.message, file) from None
        for f, arr in zip(self.files, (steps.astype(np.int64), values, times), strict=True):
            f.write(np.ascontiguousarray(arr).tobytes())
        self.n += len(lines)
        self.last_step = float(steps[-1])
        self.last_line = int(lines[-1])
        self.last_file = file

    def _check(self, lines: Ints, steps: Floats, times: Floats, values: Floats,
               file: str | None, unit: str) -> None:
        """Steps integral and increasing, times finite and not going back, values valid."""
        bad = ~np.isfinite(steps) | (steps != np.floor(steps)) | (np.abs(steps) > _MAX_STEP)
        if bad.any():
            i = int(np.argmax(bad))
            raise RecordingError(int(lines[i]), f"step {float(steps[i])!r} is not an integer")
        prev = np.concatenate([[self.last_step], steps[:-1]])
        back = steps <= prev
        if back.any():
            i = int(np.argmax(back))
            before = f"{unit} {int(lines[i - 1]) if i else self.last_line}"
            if not i and self.last_file != file and self.last_file is not None:
                before += f" of {Path(self.last_file).name}"
            if steps[i] == prev[i]:
                raise RecordingError(int(lines[i]), f"{self.metric}: step {int(steps[i])} "
                                     f"repeats ({before} has it too): log a step once")
            raise RecordingError(int(lines[i]), f"{self.metric}: step {int(steps[i])} comes "
                                 f"after step {int(prev[i])} ({before}): steps must "
                                 f"increase (a resumed run? keep one attempt's rows)")
        self._check_values(lines, values)
        if not np.isnan(times).all():
            tprev = np.concatenate([[self.last_time], times[:-1]])
            late = ~np.isfinite(times) | (times < tprev)
            if late.any():
                i = int(np.argmax(late))
                raise RecordingError(int(lines[i]), f"time {float(times[i])!r} is "
                                     + ("not finite" if not np.isfinite(times[i])
                                        else "before the previous record's"))
            self.last_time = float(times[-1])

    def _check_values(self, lines: Ints, values: Floats) -> None:
        if self.metric == "learning_rate":
            bad = ~np.isfinite(values) | (values < 0)
            rule = "a learning rate must be finite and >= 0"
        elif self.metric == "gradient_norm":
            bad = values < 0
            rule = "a gradient norm is never negative"
        else:
            return
        if bad.any():
            i = int(np.argmax(bad))
            raise RecordingError(int(lines[i]), f"{self.metric}: {float(values[i])!r}: {rule}")

    def arrays(self) -> tuple[Ints, Floats, Floats]:
        """Steps, values and times, mapped from the temporary files (which are closed)."""
        out: list[Any] = []
        for f, dtype in zip(self.files, (np.int64, np.float64, np.float64), strict=True):
            f.flush()
            out.append(np.memmap(f, dtype=dtype, mode="r", shape=(self.n,)) if self.n
                       else np.zeros(0, dtype))
            f.close()
        return out[0], out[1], out[2]

    def close(self) -> None:
        for f in self.files:
            f.close()


@dataclass(frozen=True, eq=False)
class Recording:
    """A recording's steps and metrics, lined up on the loss's steps (see the module
    docstring); equal to another when read from the same unchanged files the same way."""

    source: str
    identity: tuple[object, ...]  # the files' paths, sizes and change times, and how read
    steps: Ints  # the recorded step of each row
    loss: Floats
    gradient_norm: Floats | None = None
    learning_rate: Floats | None = None
    validation_loss: Floats | None = None
    elapsed: Floats | None = None  # seconds since the first row, when the file has times
    columns: tuple[tuple[str, str], ...] = field(default=())  # metric -> name read

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recording) and self.identity == other.identity

    def __hash__(self) -> int:
        return hash(self.identity)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics it holds, in ``METRICS`` order."""
        return tuple(m for m in METRICS if getattr(self, m) is not None)

    def row_of_step(self, step: int) -> int:
        """The first row at or after recorded step ``step``."""
        return int(np.searchsorted(self.steps, step, side="left"))


class _Builder:
    """Takes a file's chunks, keeps one ``_Series`` per metric (per candidate name in the long
    form), and joins them into a ``Recording``."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.series: dict[str, _Series] = {}
        self.rows = 0  # records seen without a step column: their index is their step
        self.keys: dict[str, None] = {}  # metric names a long file holds, in order
        self.sources: dict[str, str] = {}  # wide: metric -> the column it was read from
        self.wanted = {n for m in METRICS for n in names.candidates(m)}

    def _series(self, name: str) -> _Series:
        s = self.series.get(name)
        if s is None:
            s = self.series[name] = _Series(name)
        return s

    def add(self, chunk: Chunk) -> None:
        steps = chunk.steps
        if np.isnan(steps).all() and not chunk.by_key:
            steps = np.arange(self.rows, self.rows + len(chunk.lines), dtype=np.float64)
        self.rows += len(chunk.lines)
        for name, (values, present) in chunk.values.items():
            if chunk.by_key:
                if len(self.keys) < 10_000:
                    self.keys.setdefault(name, None)
                if name not in self.wanted:
                    continue
            self._series(name).add(chunk.lines[present], steps[present],
                                   chunk.times[present], values[present], chunk.file,
                                   chunk.unit)
        self.sources.update(chunk.sources)

    def _pick(self, metric: str, by_key: bool) -> _Series | None:
        if not by_key:
            return self.series.get(metric)
        name = self.names.pick(metric, self.series)
        if name is None and self.names.mapped(metric) is not None:
            have = ", ".join(repr(k) for k in list(self.keys)[:20]) or "none"
            raise RecordingError(0, f"no values for {self.names.mapped(metric)!r} "
                                    f"(columns.{metric}); the file has: {have}")
        if name is not None:
            self.series[name].metric = metric
        return None if name is None else self.series[name]

    def finish(self, source: str, identity: tuple[object, ...], by_key: bool,
               time_unit: float) -> Recording:
        chosen = {m: self._pick(m, by_key) for m in METRICS}
        loss = chosen["loss"]
        if loss is None or loss.n == 0:
            looked = ", ".join(self.names.candidates("loss"))
            raise RecordingError(0, f"no loss values (looked for {looked}; map the loss with "
                                    f"columns.loss)")
        steps, loss_values, times = loss.arrays()
        joined = {m: _join(s, steps) for m, s in chosen.items() if m != "loss" and s is not None}
        # The replay begins where every recorded training metric has a value.
        start = max((_first_value(j) for m, j in joined.items()
                     if m in ("gradient_norm", "learning_rate")), default=0)
        if start >= len(steps):
            raise RecordingError(0, "no step has a loss, a gradient norm and a learning rate "
                                    "together")
        elapsed = None
        if not np.isnan(times[start]):
            t0 = times[start]
            elapsed = _fill(len(steps) - start,
                            lambda b, e: (times[start + b:start + e] - t0) * time_unit)
        names = ({m: n for n, s in self.series.items() for m in METRICS if chosen[m] is s}
                 if by_key else self.sources)
        return Recording(
            source=source, identity=identity, steps=steps[start:], loss=loss_values[start:],
            elapsed=elapsed,
            columns=tuple((m, names[m]) for m in METRICS if m in names),
            **{m: j[start:] for m, j in joined.items()})

    def close(self) -> None:
        for s in self.series.values():
            s.close()


def _fill(n: int, block: Callable[[int, int], Floats]) -> Floats:
    """A mapped array of ``n`` floats filled block by block from ``block(begin, end)``."""
    with tempfile.TemporaryFile() as f:
        out = _mapped(f, n)
        for b in range(0, n, _JOIN_BLOCK):
            e = min(n, b + _JOIN_BLOCK)
            out[b:e] = block(b, e)
    return out


def _first_value(values: Floats) -> int:
    """The index of the first value that is not NaN (``len(values)`` if none), a block at a
    time."""
    for b in range(0, len(values), _JOIN_BLOCK):
        found = np.flatnonzero(~np.isnan(values[b:b + _JOIN_BLOCK]))
        if found.size:
            return b + int(found[0])
    return len(values)


def _join(s: _Series, steps: Ints) -> Floats:
    """``s``'s value at each of ``steps``: its latest at or before it, NaN before its first."""
    own_steps, values, _ = s.arrays()

    def block(b: int, e: int) -> Floats:
        i = np.searchsorted(own_steps, steps[b:e], side="right") - 1
        return np.where(i >= 0, values[np.maximum(i, 0)], np.nan)
    return _fill(len(steps), block)


def _identity(files: Iterable[Path]) -> tuple[object, ...]:
    out: list[object] = []
    for p in files:
        info = os.stat(p)
        out.append((str(p.resolve()), info.st_size, info.st_mtime_ns))
    return tuple(out)


_cache: OrderedDict[tuple[object, ...], Recording] = OrderedDict()
_cache_lock = threading.Lock()


def load(path: Path, fmt: str, layout: str, names: Names, time_unit: float = 1.0) -> Recording:
    """The recording at ``path``; RecordingError (a line of the file where there is one) or
    OSError (unreadable, or the disk too full for its arrays)."""
    files = event_files(path) if fmt == "tensorboard" else [path]
    identity = (_identity(files), fmt, layout, names, time_unit)
    with _cache_lock:
        hit = _cache.get(identity)
        if hit is not None:
            _cache.move_to_end(identity)
            return hit
    builder = _Builder(names)
    try:
        by_key = False
        for chunk in read(path, fmt, layout, names):
            by_key = by_key or chunk.by_key
            builder.add(chunk)
        recording = builder.finish(str(path), identity, by_key, time_unit)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        # The arrays go to temporary files, not memory: a disk too small is the limit.
        raise RecordingError(0, f"no room for its arrays in {tempfile.gettempdir()} "
                                f"({exc.strerror}): set TMPDIR to a larger disk") from None
    finally:
        builder.close()
    with _cache_lock:
        _cache[identity] = recording
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return recording


__all__ = ["DEFAULT_NAMES", "Recording", "RecordingError", "load"]
