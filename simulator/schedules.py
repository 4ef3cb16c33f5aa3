"""Learning-rate schedules: each kind's config keys and its closed form, side by side.

lr(t) = warmup(t) * main(max(t - W, 0)) for t the updates already taken: a linear warmup over
W updates multiplies by start + (1 - start) min(t, W) / W and delays the main schedule by W.
The main schedules are torch's closed forms. ``LearningRates`` evaluates them for a block of
runs at once; ``KINDS`` registers them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Floats, Ints
from simulator.schema.fields import (
    MAX_STEPS,
    Reader,
    half_open_unit,
    integer,
    join,
    non_negative,
    positive,
)
from simulator.schema.kinds import Kind, Registry, param
from simulator.schema.loader import LocMap

Columns = dict[str, Floats]

_STEPS = integer(1, MAX_STEPS)
_WARMUP_START = 1.0 / 3.0  # torch's LinearLR default start_factor


@dataclass(frozen=True)
class Schedule(Kind):
    """Base of the schedule kinds: the warmup every kind may have, and the main schedule."""

    warmup_steps: int = 0
    warmup_start_factor: float = _WARMUP_START

    @property
    def label(self) -> str:
        """The ``schedule`` label of trainsim_run_info."""
        return f"warmup+{self.kind}" if self.warmup_steps else self.kind

    @classmethod
    def read(cls, r: Reader, m: LocMap, path: str, **context: Any) -> Self:
        """The kind's keys, and ``warmup: {steps, start_factor}``."""
        spec = super().read(r, m, path, **context)
        if "warmup" not in m:
            return spec
        wpath = join(path, "warmup")
        w = r.mapping(m["warmup"], m.lines["warmup"], wpath)
        if w is None:
            return spec
        r.unknown_keys(w, wpath, ("steps", "start_factor"))
        return dataclasses.replace(
            spec, warmup_steps=r.take(w, wpath, "steps", _STEPS, 1, required=True),
            warmup_start_factor=r.take(w, wpath, "start_factor", half_open_unit, _WARMUP_START))

    @staticmethod
    def main(base: Floats, t: Floats, cols: Columns) -> Floats:
        """The main schedule's lr after ``t`` updates, for every run of a block (``cols``: the
        kind's parameters, one value per run)."""
        return base


@dataclass(frozen=True)
class Constant(Schedule):
    """The base learning rate throughout."""

    kind: ClassVar[str] = "constant"
    summary: ClassVar[str] = "base"


@dataclass(frozen=True)
class Step(Schedule):
    """torch.optim.lr_scheduler.StepLR."""

    kind: ClassVar[str] = "step"
    summary: ClassVar[str] = "base gamma^floor(t / step_size) (StepLR)"

    step_size: int = param(1, _STEPS, "updates between two decays", required=True)
    gamma: float = param(0.1, positive, "factor of each decay")

    @staticmethod
    def main(base: Floats, t: Floats, cols: Columns) -> Floats:
        """See the class summary."""
        result: Floats = base * cols["gamma"] ** np.floor(t / cols["step_size"])
        return result


@dataclass(frozen=True)
class Exponential(Schedule):
    """torch.optim.lr_scheduler.ExponentialLR."""

    kind: ClassVar[str] = "exponential"
    summary: ClassVar[str] = "base gamma^t (ExponentialLR)"

    gamma: float = param(1.0, positive, "factor of each update's decay", required=True)

    @staticmethod
    def main(base: Floats, t: Floats, cols: Columns) -> Floats:
        """See the class summary."""
        result: Floats = base * cols["gamma"] ** t
        return result


@dataclass(frozen=True)
class Cosine(Schedule):
    """torch.optim.lr_scheduler.CosineAnnealingLR."""

    kind: ClassVar[str] = "cosine"
    summary: ClassVar[str] = ("eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2 "
                              "(CosineAnnealingLR; like torch's closed form it rises again "
                              "after T_max)")

    t_max: int = param(1, _STEPS, "updates of a half period", key="T_max",
                       shown="the run's `steps`")
    eta_min: float = param(0.0, non_negative, "the lowest learning rate")

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """``T_max`` defaults to the run's ``steps``."""
        return cls(**{"t_max": context["steps"], **values})

    @staticmethod
    def main(base: Floats, t: Floats, cols: Columns) -> Floats:
        """See the class summary."""
        eta_min = cols["eta_min"]
        cos = 0.5 * (1.0 + np.cos(np.pi * t / cols["t_max"]))
        result: Floats = eta_min + (base - eta_min) * cos
        return result


KINDS: Registry[Schedule] = Registry(
    "schedule", Constant, Step, Exponential, Cosine, default="constant")


class LearningRates:
    """The learning-rate schedules of a block of runs: lr(t) for t updates already taken."""

    def __init__(self, specs: Sequence[Schedule], base_lr: Floats) -> None:
        self.base = base_lr
        # One (members, kind, parameter columns) part per scheduled kind in the block; the
        # columns hold the kind's defaults for the rows of other kinds, which are discarded.
        self.parts: list[tuple[NDArray[np.bool_], type[Schedule], Columns]] = []
        for kind in KINDS:
            mask = np.array([type(s) is kind for s in specs])
            if kind is Constant or not mask.any():
                continue
            names = [f.name for f in fields(kind) if "param" in f.metadata]
            cols = {n: np.array([getattr(s, n) if type(s) is kind else getattr(kind(), n)
                                 for s in specs], dtype=np.float64) for n in names}
            self.parts.append((mask, kind, cols))
        self.warmup = np.array([s.warmup_steps for s in specs], dtype=np.float64)
        self.start = np.array([s.warmup_start_factor for s in specs], dtype=np.float64)
        self.any_warmup = bool(self.warmup.any())

    @property
    def trivial(self) -> bool:
        """Every run of the block is constant without warmup."""
        return not self.parts and not self.any_warmup

    def lr(self, steps: Ints) -> Floats:
        """The learning rate of the update that follows ``steps`` updates, per run."""
        t = steps.astype(np.float64)
        tm = np.maximum(t - self.warmup, 0.0) if self.any_warmup else t
        lr = self.base
        for mask, kind, cols in self.parts:
            lr = np.where(mask, kind.main(self.base, tm, cols), lr)
        if self.any_warmup:
            w = np.maximum(self.warmup, 1.0)
            ramp = self.start + (1.0 - self.start) * np.minimum(t, w) / w
            lr = np.where(self.warmup > 0, lr * ramp, lr)
        result: Floats = lr
        return result


def learning_rates(specs: Sequence[Schedule], base_lr: Floats) -> LearningRates | None:
    """The schedules of a block; None when every run's learning rate is constant."""
    rates = LearningRates(specs, base_lr)
    return None if rates.trivial else rates
