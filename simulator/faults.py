"""Faults on the runs' timelines and the per-run modifiers they imply. Pure: time is passed in.

A fault is active on [start, end) in simulated seconds. ``FaultTable`` holds every fault of the
fleet as arrays, so that the modifiers for all runs at a moment (``modifiers``) and the next
moment at which any fault starts or ends (``next_boundary``) are a few vectorized operations.
docs/faults.md describes each kind, what it does to the series and which alert it should raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.config import FAULT_KINDS, FaultSpec

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

KIND_CODE = {k: i for i, k in enumerate(FAULT_KINDS)}
(LR_SPIKE, GRADIENT_EXPLOSION, NAN, PLATEAU, DRIFT, NOISE_BURST, SLOW_STEPS, HANG,
 CRASH) = (KIND_CODE[k] for k in ("lr_spike", "gradient_explosion", "nan", "plateau", "drift",
                                  "noise_burst", "slow_steps", "hang", "crash"))


@dataclass
class FaultRecord:
    """One fault of one run: its id, where it came from, and its window in simulated time."""

    id: str
    run: str
    spec: FaultSpec
    start: float
    end: float
    source: str  # "config" or "api"
    counted: bool = False  # counted in faults_injected_total once its window began

    @property
    def kind(self) -> str:
        """The fault kind."""
        return self.spec.kind


@dataclass(frozen=True)
class Modifiers:
    """What the active faults (and pauses) do to each run at one moment."""

    lr_mult: Floats
    grad_scale: Floats
    frozen: Bools
    nan: Bools
    noise_sigma: Floats
    rate: Floats
    absent: Bools
    any_effect: bool  # False when nothing is active: the engine skips the modifier arithmetic


class FaultTable:
    """Every fault of the fleet as arrays (rebuilt whenever a fault is added or cleared)."""

    def __init__(self, records: list[FaultRecord], row_of: dict[str, int], n: int) -> None:
        self.records = records
        self.n = n
        self.row = np.array([row_of[r.run] for r in records], dtype=np.int64)
        self.kind = np.array([KIND_CODE[r.kind] for r in records], dtype=np.int64)
        self.start = np.array([r.start for r in records], dtype=np.float64)
        self.end = np.array([r.end for r in records], dtype=np.float64)
        self.p1 = np.array([_first_param(r.spec) for r in records], dtype=np.float64)
        self.sigma = np.array([r.spec.param("sigma") if r.kind == "noise_burst" else 0.0
                               for r in records], dtype=np.float64)
        drift = self.kind == DRIFT
        self.drift_rows = self.row[drift]
        self.drift_start = self.start[drift]
        self.drift_end = self.end[drift]
        # The planned window sets the speed; clearing a drift early stops it where it is.
        planned = np.array([r.spec.duration for r in records], dtype=np.float64)
        self.drift_rate = self.p1[drift] / planned[drift]
        self.drifting_rows: Bools = np.zeros(n, np.bool_)
        self.drifting_rows[self.drift_rows] = True

    def active(self, t: float) -> Bools:
        """Which faults are active at time ``t``."""
        result: Bools = (self.start <= t) & (t < self.end)
        return result

    def next_boundary(self, t: float) -> float:
        """The first start or end of a fault strictly after ``t`` (inf if none)."""
        times = np.concatenate([self.start, self.end])
        later = times[times > t]
        return float(later.min()) if later.size else float("inf")

    def modifiers(self, t: float, paused: Bools) -> Modifiers:
        """The per-run effect of the faults active at ``t``, plus pauses."""
        n = self.n
        act = self.active(t)
        lr_mult = np.ones(n)
        grad_scale = np.ones(n)
        rate = np.where(paused, 0.0, 1.0)
        frozen = np.zeros(n, np.bool_)
        nan = np.zeros(n, np.bool_)
        absent = np.zeros(n, np.bool_)
        noise = np.zeros(n)
        if act.any():
            rows, kind, p1 = self.row[act], self.kind[act], self.p1[act]
            np.multiply.at(lr_mult, rows[kind == LR_SPIKE], p1[kind == LR_SPIKE])
            scaled = (kind == GRADIENT_EXPLOSION) | (kind == PLATEAU)
            np.multiply.at(grad_scale, rows[scaled], p1[scaled])
            np.multiply.at(rate, rows[kind == SLOW_STEPS], 1.0 / p1[kind == SLOW_STEPS])
            rate[rows[(kind == HANG) | (kind == CRASH)]] = 0.0
            frozen[rows[kind == PLATEAU]] = True
            nan[rows[kind == NAN]] = True
            absent[rows[kind == CRASH]] = True
            burst = kind == NOISE_BURST
            np.add.at(noise, rows[burst], self.sigma[act][burst] * p1[burst])
        any_effect = bool(act.any() or self.drift_rows.size)
        return Modifiers(lr_mult, grad_scale, frozen, nan, noise, rate, absent, any_effect)

    def drift_offset(self, rows: Ints, times: Floats) -> Floats:
        """How far the optimum of each run in ``rows`` has moved by ``times`` (one per row).

        A drift moves it linearly by ``shift`` over its window and leaves it there.
        """
        out = np.zeros(len(rows))
        if not self.drift_rows.size:
            return out
        pos = np.searchsorted(rows, self.drift_rows)  # rows is sorted (a block of the fleet)
        pos = np.minimum(pos, len(rows) - 1)
        mine = rows[pos] == self.drift_rows
        t = times[pos[mine]]
        elapsed = np.clip(np.minimum(t, self.drift_end[mine]) - self.drift_start[mine], 0.0,
                          None)
        np.add.at(out, pos[mine], self.drift_rate[mine] * elapsed)
        return out


def _first_param(spec: FaultSpec) -> float:
    names = {"lr_spike": "factor", "gradient_explosion": "factor", "plateau": "factor",
             "drift": "shift", "noise_burst": "factor", "slow_steps": "factor"}
    name = names.get(spec.kind)
    return spec.param(name) if name else 0.0
