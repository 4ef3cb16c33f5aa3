"""A run's ``replay:`` block, and the block of runs that replay one recording together.

A replay run takes the place of a landscape and an optimizer: its loss, gradient norm,
learning rate and validation loss at step k are the recording's at row ``start + k * stride``.
To the engine it is a landscape whose internal coordinate is the run's place in the recording
(``RecordedLandscape``): a step moves it one row on, a frozen step (``plateau``) keeps it, a
restart brings it back; the detectors then see the replayed values exactly as they see a
synthetic run's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from simulator.arrays import U64, Floats, Index, Ints
from simulator.landscapes import Landscape, LandscapeSpec
from simulator.replay.formats import FORMATS, LAYOUTS, METRICS, Names, RecordingError, format_of
from simulator.replay.recording import Recording, load
from simulator.schema.errors import ConfigIssue
from simulator.schema.fields import MAX_STEPS, Reader, describe, integer, join, positive
from simulator.schema.kinds import param
from simulator.schema.loader import LocMap

TIMINGS = ("steps", "recorded")
TIME_UNITS = {"s": 1.0, "ms": 1e-3}
COLUMN_KEYS = ("step", "time", *METRICS)
DEFAULT_COLUMNS = Names()


def _file(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a file path, got {describe(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Any:
    def convert(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {describe(value)}")
        return str(value)
    convert.range = " | ".join(options)  # type: ignore[attr-defined]
    return convert


def _columns(value: Any) -> Names:
    if not isinstance(value, LocMap):
        raise ValueError(f"must be a mapping of {', '.join(COLUMN_KEYS)} to names, "
                         f"got {describe(value)}")
    given = []
    for key, name in value.items():
        if key not in COLUMN_KEYS:
            raise ValueError(f"unknown key {key!r} (expected one of: {', '.join(COLUMN_KEYS)})")
        if not isinstance(name, str | int) or isinstance(name, bool) or not str(name):
            raise ValueError(f"{key}: must be a column, key or tag name, got {describe(name)}")
        given.append((str(key), str(name)))
    return Names(tuple(given))


@dataclass(frozen=True)
class Replay(LandscapeSpec):
    """A recorded run: ``file`` read as ``format``, its metrics under ``columns``."""

    kind: ClassVar[str] = "replay"
    summary: ClassVar[str] = "the loss, gradient norm and learning rate of a recorded run"

    file: str = param("", _file, "the recording: a CSV or JSON-lines file, a TensorBoard "
                                 "event file or its folder (relative to the config file)",
                      required=True)
    format: str | None = param(None, _choice(FORMATS), "the file's format",
                               shown="from the file name")
    layout: str = param("auto", _choice(LAYOUTS), "CSV/JSON lines: `wide` (a column per "
                                                  "metric), `long` (key, value, step rows)")
    columns: Names = param(  # noqa: RUF009 (Names is frozen)
        DEFAULT_COLUMNS, _columns, "where each metric is read: `{loss: train/loss, "
        "gradient_norm: grad_norm, ...}`; also `step`, `time`", shown="common names")
    from_step: int | None = param(None, integer(0, MAX_STEPS), "start at this recorded step",
                                  shown="the first")
    stride: int = param(1, integer(1, 10**9), "replay every stride-th row (recorded step) "
                                              "from there")
    timing: str | None = param(None, _choice(TIMINGS), "`recorded`: steps fall due at the "
                                                       "recording's own times; `steps`: every "
                                                       "`step_interval`",
                               shown="recorded when the file has times")
    time_scale: float = param(1.0, positive, "recorded seconds per simulated second (timing: "
                                             "recorded)")
    time_unit: str = param("s", _choice(tuple(TIME_UNITS)), "the unit of the time column "
                                                            "(MLflow: ms)")
    recording: Recording | None = None

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """Load the recording (relative to ``context['base']``); its mistakes name its lines."""
        spec = cls(**values)
        if "file" not in values:
            return spec
        base: Path = context.get("base") or Path(".")
        where = Path(os.path.normpath(base / spec.file))
        fmt = spec.format or format_of(where)
        try:
            rec = load(where, fmt, spec.layout, spec.columns, TIME_UNITS[spec.time_unit])
        except RecordingError as exc:
            r.issues.append(ConfigIssue(exc.line, "", f"{exc.message} (the recording of "
                                        f"{path}, {r.source}:{m.lines['file']})",
                                        exc.file or str(where)))
            return spec
        except OSError as exc:
            r.error(m.lines["file"], join(path, "file"),
                    f"{where}: cannot read: {exc.strerror or exc}")
            return spec
        spec = cls(**{**values, "format": fmt, "recording": rec})
        if spec.start >= len(rec):
            r.error(m.lines["from_step"], join(path, "from_step"),
                    f"is past the recording's last step ({int(rec.steps[-1])})")
        elif spec.timing == "recorded" and rec.elapsed is None:
            r.error(m.lines["timing"], join(path, "timing"),
                    "the recording has no time column (map one with columns.time)")
        return spec

    @property
    def dims(self) -> int:
        """One coordinate: the place in the recording."""
        return 1

    @property
    def timed(self) -> bool:
        """Whether steps fall due at the recording's own times."""
        rec = self.recording
        return rec is not None and rec.elapsed is not None and self.timing != "steps"

    @property
    def variant(self) -> tuple[object, ...]:
        """Runs stepped together replay one recording with one timing (its identity as text:
        variants are sorted)."""
        return (repr(None if self.recording is None else self.recording.identity), self.timed,
                self.time_scale)

    @property
    def start(self) -> int:
        """The recording's row of step 0."""
        rec = self.recording
        return 0 if rec is None or self.from_step is None else rec.row_of_step(self.from_step)

    @property
    def available(self) -> int:
        """Steps after step 0 the recording holds from ``start`` at ``stride``."""
        n = 0 if self.recording is None else len(self.recording)
        return max(0, (n - 1 - self.start) // self.stride)

    @cached_property
    def nominal_interval(self) -> float | None:
        """The median time between replayed steps (of the first 100,000), in simulated
        seconds (timed only)."""
        rec = self.recording
        if not self.timed or rec is None or rec.elapsed is None:
            return None
        rows = np.arange(self.start, min(len(rec), self.start + 100_001 * self.stride),
                         self.stride)
        gaps = np.diff(np.asarray(rec.elapsed[rows]))
        gaps = gaps[gaps > 0]
        return float(np.median(gaps)) / self.time_scale if len(gaps) else None

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``RecordedLandscape``."""
        return RecordedLandscape(specs)


class RecordedLandscape(Landscape):
    """Runs replaying one recording: the coordinate z of a run is its cursor, the number of
    rows it has moved on since ``start`` (``stride`` rows each)."""

    replays = True

    def __init__(self, specs: Sequence[Replay]) -> None:
        super().__init__(specs)
        rec = specs[0].recording
        assert rec is not None
        self.recording = rec
        self.has_validation = rec.validation_loss is not None
        self.start: Ints = np.array([s.start for s in specs], dtype=np.int64)
        self.stride: Ints = np.array([s.stride for s in specs], dtype=np.int64)
        self.timed = specs[0].timed
        self.scale = specs[0].time_scale

    def coordinates(self, w: Floats) -> Floats:
        """Every run begins at its first row."""
        return np.zeros_like(w)

    def parameters(self, z: Floats, sel: Index) -> Floats:
        """A recording has no parameters to show."""
        return np.zeros_like(z)

    def rows(self, z: Floats, sel: Index) -> Ints:
        """The recording's row under each cursor (the last row past the end)."""
        at = self.start[sel] + z[:, 0].astype(np.int64) * self.stride[sel]
        result: Ints = np.minimum(at, len(self.recording) - 1)
        return result

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """The recorded loss, and the recorded gradient norm as a one-coordinate gradient
        (0 where the file has none)."""
        rows = self.rows(z, sel)
        rec = self.recording
        loss = np.asarray(rec.loss[rows], dtype=np.float64)
        grad = (np.zeros(len(rows)) if rec.gradient_norm is None
                else np.asarray(rec.gradient_norm[rows], dtype=np.float64))
        return loss, grad[:, None]

    def learning_rate(self, z: Floats, sel: Index) -> Floats:
        """The recorded learning rate (0 where the file has none)."""
        rec = self.recording
        if rec.learning_rate is None:
            return np.zeros(len(z))
        return np.asarray(rec.learning_rate[self.rows(z, sel)], dtype=np.float64)

    def validation_loss(self, z: Floats, sel: Index) -> Floats:
        """The recorded validation loss (its last evaluation; NaN before the first)."""
        rec = self.recording
        assert rec.validation_loss is not None
        return np.asarray(rec.validation_loss[self.rows(z, sel)], dtype=np.float64)

    def surface(self, z: Floats, member: int) -> tuple[Floats, Floats]:
        """A recording has no landscape to draw."""
        raise LookupError("a replay run has no landscape: its loss comes from a recording")

    # Timing from the recording's own times (``timed``): step k of a member falls due when
    # its run has progressed by (elapsed[start + k stride] - elapsed[start]) / scale.

    def step_times(self, steps: Ints, sel: Index) -> Floats:
        """The progress at which each member's step falls due (inf past the recording)."""
        rec = self.recording
        assert rec.elapsed is not None
        start = self.start[sel]
        rows = start + steps * self.stride[sel]
        inside = rows < len(rec)
        at = np.asarray(rec.elapsed[np.where(inside, rows, start)], dtype=np.float64)
        base = np.asarray(rec.elapsed[start], dtype=np.float64)
        return np.where(inside, (at - base) / self.scale, np.inf)

    def due_steps(self, progress: Floats, sel: Index) -> Ints:
        """The last step of each member due at ``progress``."""
        rec = self.recording
        assert rec.elapsed is not None
        start, stride = self.start[sel], self.stride[sel]
        base = np.asarray(rec.elapsed[start], dtype=np.float64)
        last = np.searchsorted(rec.elapsed, base + progress * self.scale, side="right") - 1
        result: Ints = np.maximum(last - start, 0) // stride
        return result


def base_dir(source: str) -> Path:
    """The folder a config's recordings are relative to: the config file's own."""
    return Path(source).parent


