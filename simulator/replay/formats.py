"""Reading recorded training runs: CSV and JSON lines (wide or long), TensorBoard event files.

Every reader turns its file into the same stream of ``Chunk``s, a few tens of thousands of
records at a time, so no file is ever held whole: a chunk is the source line of each record,
its step and time (NaN where the file has none), and per metric the values it holds (NaN
where the record has none; ``present`` tells a missing value from a NaN the file wrote).

- Wide: one record per step, one column per metric (W&B's run history export, pandas'
  ``to_csv``, a ``{"step": 1, "loss": ...}`` line per step).
- Long: one record per metric value, with the metric's name in a ``key`` column (MLflow's
  metric history: ``key, value, step, timestamp``).
- TensorBoard: the scalars of ``events.out.tfevents.*`` files, read with TensorBoard's own
  reader (the optional ``tensorboard`` extra); a metric is chosen by its tag.

A mistake in a file is a ``RecordingError`` naming its line (or, in an event file, its event).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Bools, Floats, Ints

# What a replay exports, in order: the loss drives the steps, the others follow it.
METRICS = ("loss", "gradient_norm", "learning_rate", "validation_loss")
# The columns (wide), keys (long) or tags (TensorBoard) a metric is looked for under when the
# config maps none: the names W&B, MLflow, PyTorch Lightning, Hugging Face's Trainer and
# TensorBoard's examples log under, first match wins.
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "step": ("step", "_step", "global_step", "Step", "iteration", "iter", "trainer/global_step"),
    "time": ("_timestamp", "timestamp", "time", "wall_time", "Wall time"),
    "loss": ("loss", "train/loss", "train_loss", "training_loss", "Loss", "train/loss_step",
             "Loss/train"),
    "gradient_norm": ("grad_norm", "gradient_norm", "train/grad_norm", "grad-norm",
                      "grad_norm/total", "train/gradient_norm", "Gradient norm"),
    "learning_rate": ("lr", "learning_rate", "train/learning_rate", "train/lr", "lr-SGD",
                      "lr-Adam", "lr-AdamW", "Learning rate"),
    "validation_loss": ("val_loss", "val/loss", "eval/loss", "eval_loss", "validation_loss",
                        "valid/loss", "Loss/val"),
}
# The columns of the long form: the metric's name, its value, its step and time.
LONG_KEY = ("key", "metric", "tag", "name")
LONG_VALUE = "value"
FORMATS = ("csv", "jsonl", "tensorboard")
LAYOUTS = ("auto", "wide", "long")
# Records per chunk: large enough that numpy does the work, small enough to bound memory.
CHUNK = 1 << 16


class RecordingError(Exception):
    """A mistake in a recording: at ``line`` (0: the file as a whole) of ``file`` (None: the
    recording's own path; an event file of a TensorBoard folder names itself), ``message``."""

    def __init__(self, line: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.file = file


@dataclass
class Chunk:
    """Records of a file: their lines, steps and times (NaN: none), and per metric the values
    (NaN where ``present`` is False)."""

    lines: Ints
    steps: Floats
    times: Floats
    values: dict[str, tuple[Floats, Bools]]
    by_key: bool = False  # values are keyed by the file's metric names (long), not METRICS
    sources: dict[str, str] = field(default_factory=dict)  # wide: metric -> its column
    file: str | None = None  # the event file of a TensorBoard folder the records come from
    unit: str = "line"  # what ``lines`` count: lines of a text file, events of an event file


@dataclass(frozen=True)
class Names:
    """Where each metric is read from: a column, key or tag per name of ``METRICS``, ``step``
    and ``time``; None where the config maps nothing (the defaults are looked for)."""

    given: tuple[tuple[str, str], ...] = ()

    def mapped(self, what: str) -> str | None:
        """The name the config gives ``what``, if any."""
        return dict(self.given).get(what)

    def candidates(self, what: str) -> tuple[str, ...]:
        """The names ``what`` may have: the mapped one alone, else the defaults."""
        name = self.mapped(what)
        return (name,) if name is not None else DEFAULT_NAMES[what]

    def pick(self, what: str, available: Iterable[str]) -> str | None:
        """The first of ``what``'s candidates in ``available``."""
        have = set(available)
        return next((c for c in self.candidates(what) if c in have), None)


def format_of(path: Path) -> str:
    """The format a file's name says: ``.csv``, ``.jsonl``/``.ndjson``/``.json``, an event
    file or a folder of them (TensorBoard)."""
    name = path.name
    if path.is_dir() or ".tfevents." in name:
        return "tensorboard"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"


def open_binary(path: Path) -> BinaryIO:
    """A regular file opened for streaming (no FIFO, device or folder: those block or never
    end); OSError with the reason otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def parse_numbers(cells: Sequence[bytes], lines: Ints, column: str) -> tuple[Floats, Bools]:
    """Numbers of a column of cells (an empty cell: missing); RecordingError at the first cell
    that is not a number."""
    raw = np.array(cells, dtype=np.bytes_)
    present = raw != b""
    try:
        values = (raw if present.all() else np.where(present, raw, b"nan")).astype(np.float64)
    except ValueError:
        for line, cell in zip(lines.tolist(), cells, strict=True):
            try:
                float(cell.strip() or b"nan")
            except ValueError:
                shown = cell.decode("utf-8", "replace")
                raise RecordingError(line, f"{column}: {shown!r} is not a number") from None
        raise
    return values, present


# --------------------------------------------------------------------------- CSV

# Bytes read at a time: whole lines of them make a batch of records.
_BLOCK = 2 << 20


def _line_blocks(f: BinaryIO) -> Iterator[tuple[int, list[bytes]]]:
    """The file's lines (without their end), a block at a time, with the number of each
    block's first line."""
    line, rest = 1, b""
    while True:
        data = f.read(_BLOCK)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if not cut:
            rest = data
            continue
        lines = data[:cut].split(b"\n")[:-1]
        rest = data[cut:]
        yield line, lines
        line += len(lines)
    if rest:
        yield line, [rest]


def _split(first: int, lines: list[bytes], width: int) -> tuple[Ints, list[list[bytes]]]:
    """The cells of each non-blank line, by column: split on commas in C when no cell is
    quoted, by the csv module when one is."""
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    keep = [i for i, ln in enumerate(lines) if ln.strip()]
    numbers = np.array(keep, dtype=np.int64) + first
    rows = [lines[i] for i in keep] if len(keep) != len(lines) else lines
    if any(b'"' in ln for ln in rows):
        text = [ln.decode("utf-8") for ln in rows]
        parsed = [[c.encode() for c in r] for r in csv.reader(text)]
    else:
        cells = b",".join(rows).split(b",")
        if len(cells) == width * len(rows):
            return numbers, [cells[j::width] for j in range(width)]
        parsed = [ln.split(b",") for ln in rows]
    for n, row in zip(numbers.tolist(), parsed, strict=True):
        if len(row) != width:
            raise RecordingError(n, f"{len(row)} cells where the header has {width}")
    return numbers, [list(col) for col in zip(*parsed, strict=True)] if parsed else \
        [[] for _ in range(width)]


def _records(f: BinaryIO) -> tuple[list[str], Iterator[tuple[Ints, list[list[bytes]]]]]:
    """The header's column names and the batches of records after it."""
    blocks = _line_blocks(f)
    first = next(blocks, None)
    while first is not None and not first[1]:
        first = next(blocks, None)
    if first is None or not first[1][0].strip():
        raise RecordingError(0, "the file is empty (expected a header line)")
    start, lines = first
    head = lines[0].decode("utf-8").removeprefix("\ufeff").rstrip("\r")
    header = [c.strip() for c in next(csv.reader([head]))]

    def batches() -> Iterator[tuple[Ints, list[list[bytes]]]]:
        yield _split(start + 1, lines[1:], len(header))
        for n, more in blocks:
            yield _split(n, more, len(header))
    return header, batches()


def _column_index(header: list[str], names: Names, what: str, needed: bool) -> int | None:
    found = names.pick(what, header)
    if found is None:
        if names.mapped(what) is not None or needed:
            shown = ", ".join(repr(h) for h in header if h) or "none"
            wanted = (f"column {names.mapped(what)!r} (columns.{what})" if names.mapped(what)
                      else f"{what} column (looked for {', '.join(DEFAULT_NAMES[what])}; "
                           f"map one with columns.{what})")
            raise RecordingError(1, f"the header has no {wanted}; it has: {shown}")
        return None
    return header.index(found)


def read_csv(path: Path, layout: str, names: Names) -> Iterator[Chunk]:
    """The chunks of a CSV file with a header line, wide or long."""
    with open_binary(path) as f:
        try:
            header, batches = _records(f)
            long = layout == "long" or (layout == "auto" and _is_long(header))
            yield from (_long_csv(batches, header, names) if long
                        else _wide_csv(batches, header, names))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RecordingError(0, f"not a readable CSV file: {exc}") from None


def _is_long(header: Sequence[str]) -> bool:
    return LONG_VALUE in header and any(k in header for k in LONG_KEY)


def _numbers(cols: list[list[bytes]], i: int | None, lines: Ints, header: list[str],
             required: bool) -> tuple[Floats, Bools]:
    """Column ``i``'s numbers (all missing when there is no such column); a ``required``
    column may not have an empty cell."""
    if i is None:
        return np.full(len(lines), np.nan), np.zeros(len(lines), np.bool_)
    values, present = parse_numbers(cols[i], lines, header[i])
    if required and not present.all():
        raise RecordingError(int(lines[np.argmin(present)]), f"{header[i]}: the cell is empty")
    return values, present


def _wide_csv(batches: Iterator[tuple[Ints, list[list[bytes]]]], header: list[str],
              names: Names) -> Iterator[Chunk]:
    where = {m: _column_index(header, names, m, m == "loss") for m in METRICS}
    step_col = _column_index(header, names, "step", False)
    time_col = _column_index(header, names, "time", False)
    for lines, cols in batches:
        if not len(lines):
            continue
        yield Chunk(
            lines=lines,
            steps=_numbers(cols, step_col, lines, header, True)[0],
            times=_numbers(cols, time_col, lines, header, True)[0],
            values={m: _numbers(cols, i, lines, header, False)
                    for m, i in where.items() if i is not None},
            sources={m: header[i] for m, i in where.items() if i is not None})


def _long_csv(batches: Iterator[tuple[Ints, list[list[bytes]]]], header: list[str],
              names: Names) -> Iterator[Chunk]:
    key_col = next(header.index(k) for k in LONG_KEY if k in header)
    value_col = header.index(LONG_VALUE)
    step_col = _column_index(header, names, "step", True)
    time_col = _column_index(header, names, "time", False)
    for lines, cols in batches:
        if not len(lines):
            continue
        keys = np.array(cols[key_col], dtype=np.bytes_)
        values, present = _numbers(cols, value_col, lines, header, False)
        yield from long_chunks(lines, keys, _numbers(cols, step_col, lines, header, True)[0],
                               _numbers(cols, time_col, lines, header, True)[0],
                               values, present)


def long_chunks(lines: Ints, keys: Sequence[str] | NDArray[np.bytes_], steps: Floats,
                times: Floats, values: Floats, present: Bools, file: str | None = None,
                ) -> Iterator[Chunk]:
    """Long records as one chunk per key, in file order (the builder maps keys to metrics)."""
    key_arr = np.asarray(keys)
    for key in dict.fromkeys(key_arr.tolist()):
        sel = key_arr == key
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        yield Chunk(lines=lines[sel], steps=steps[sel], times=times[sel],
                    values={name: (values[sel], present[sel])}, by_key=True, file=file,
                    unit="line" if file is None else "event")


# --------------------------------------------------------------------------- JSON lines


def _json_number(value: object, line: int, field: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RecordingError(line, f"{field}: {value!r} is not a number")
    try:
        return float(value)
    except ValueError:
        raise RecordingError(line, f"{field}: {value!r} is not a number") from None


def _json_records(f: io.TextIOWrapper) -> Iterator[tuple[int, dict[str, object]]]:
    for n, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise RecordingError(n, f"not a JSON object: {exc}") from None
        if not isinstance(record, dict):
            raise RecordingError(n, f"not a JSON object: {type(record).__name__}")
        yield n, record


def read_jsonl(path: Path, layout: str, names: Names) -> Iterator[Chunk]:
    """The chunks of a JSON-lines file: one object per line, wide or long (as the first
    object's keys say, unless ``layout`` does)."""
    with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="") as f:
        records = _json_records(f)
        long: bool | None = None if layout == "auto" else layout == "long"
        try:
            while batch := list(islice(records, CHUNK)):
                if long is None:
                    long = _is_long(list(batch[0][1]))
                yield from (_long_json(batch, names) if long else [_wide_json(batch, names)])
        except UnicodeDecodeError as exc:
            raise RecordingError(0, f"not UTF-8 text: {exc}") from None


def _field(batch: list[tuple[int, dict[str, object]]], names: Names, what: str,
           needed: bool) -> str | None:
    seen: set[str] = set()
    for _, rec in batch:
        seen.update(rec)
    found = names.pick(what, seen)
    if found is None and needed:
        raise RecordingError(batch[0][0], f"no {what} field (looked for "
                                          f"{', '.join(names.candidates(what))}; map one with "
                                          f"columns.{what})")
    return found


def _json_column(batch: list[tuple[int, dict[str, object]]], field: str) -> tuple[Floats, Bools]:
    values = np.array([_json_number(rec.get(field), n, field) for n, rec in batch])
    present = np.array([rec.get(field) is not None for _, rec in batch], dtype=np.bool_)
    return values, present


def _required(values: Floats, present: Bools, lines: Ints, field: str) -> Floats:
    if not present.all():
        raise RecordingError(int(lines[np.argmin(present)]), f"{field}: the value is missing")
    return values


def _wide_json(batch: list[tuple[int, dict[str, object]]], names: Names) -> Chunk:
    lines = np.fromiter((n for n, _ in batch), np.int64, len(batch))
    step, time = _field(batch, names, "step", False), _field(batch, names, "time", False)
    out: dict[str, tuple[Floats, Bools]] = {}
    sources: dict[str, str] = {}
    for m in METRICS:
        found = _field(batch, names, m, False)
        if found is not None:
            out[m] = _json_column(batch, found)
            sources[m] = found
    return Chunk(lines=lines,
                 steps=(np.full(len(lines), np.nan) if step is None
                        else _required(*_json_column(batch, step), lines, step)),
                 times=(np.full(len(lines), np.nan) if time is None
                        else _required(*_json_column(batch, time), lines, time)),
                 values=out, sources=sources)


def _long_json(batch: list[tuple[int, dict[str, object]]], names: Names) -> Iterator[Chunk]:
    lines = np.fromiter((n for n, _ in batch), np.int64, len(batch))
    key_field = next((k for k in LONG_KEY if k in batch[0][1]), LONG_KEY[0])
    keys = []
    for n, rec in batch:
        key = rec.get(key_field)
        if not isinstance(key, str):
            raise RecordingError(n, f"{key_field}: {key!r} is not a metric name")
        keys.append(key)
    step = _field(batch, names, "step", True)
    assert step is not None
    time = _field(batch, names, "time", False)
    values, present = _json_column(batch, LONG_VALUE)
    yield from long_chunks(
        lines, keys, _required(*_json_column(batch, step), lines, step),
        (np.full(len(lines), np.nan) if time is None
         else _required(*_json_column(batch, time), lines, time)),
        values, present)


# --------------------------------------------------------------------------- TensorBoard


def event_files(path: Path) -> list[Path]:
    """A run's event files: the file itself, or a folder's ``*tfevents*`` files in the order
    TensorBoard reads them (by name: their names begin with the time they were opened)."""
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if ".tfevents." in p.name and p.is_file())
    if not found:
        raise RecordingError(0, "the folder holds no TensorBoard event file "
                                "(events.out.tfevents.*)")
    return found


def read_tensorboard(path: Path, names: Names) -> Iterator[Chunk]:
    """The scalar values of a run's event files, one chunk per tag per batch of events; a
    record's "line" is the event's number in its file."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
        from tensorboard.util import tensor_util
    except ImportError:
        raise RecordingError(0, "reading TensorBoard event files needs TensorBoard: "
                                "pip install 'trainsim[tensorboard]'") from None
    for file in event_files(path):
        with open_binary(file):  # a regular file, readable: before TensorBoard's reader opens it
            pass
        batch: list[tuple[int, str, float, float, float]] = []
        try:
            for n, event in enumerate(EventFileLoader(str(file)).Load(), start=1):
                for value in event.summary.value:
                    if value.metadata.plugin_data.plugin_name == "scalars":
                        number = float(tensor_util.make_ndarray(value.tensor).item())
                        batch.append((n, value.tag, float(event.step), event.wall_time,
                                      number))
                if len(batch) >= CHUNK:
                    yield from _tb_chunks(batch, str(file))
                    batch = []
        except RecordingError:
            raise
        except Exception as exc:  # a damaged record: TensorBoard's reader raises its own types
            raise RecordingError(0, f"not a readable event file ({type(exc).__name__}: "
                                    f"{exc})", str(file)) from None
        yield from _tb_chunks(batch, str(file))


def _tb_chunks(batch: list[tuple[int, str, float, float, float]], file: str,
               ) -> Iterator[Chunk]:
    if not batch:
        return
    lines, tags, steps, times, values = zip(*batch, strict=True)
    yield from long_chunks(np.array(lines, np.int64), tags, np.array(steps), np.array(times),
                           np.array(values), np.ones(len(values), np.bool_), file)


def read(path: Path, fmt: str, layout: str, names: Names) -> Iterator[Chunk]:
    """The chunks of a recording in format ``fmt``."""
    if fmt == "tensorboard":
        return read_tensorboard(path, names)
    if fmt == "jsonl":
        return read_jsonl(path, layout, names)
    return read_csv(path, layout, names)


