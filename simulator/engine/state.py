"""The engine's per-run state, declared once.

Every per-run quantity is one field here and one array (fleet row order) in the engine. The
fields drive everything done to them: allocation (``RunState.zeros``), the start of an attempt
and each step (an ``Attempt`` holds every value an attempt starts with or a step computes, and
``RunState.write`` stores it, through a mask), and a reload (``RunState.fields`` are moved row
by row). A field added here cannot be forgotten by any of them: building an ``Attempt``
without it fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Self

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Bools, Counts, Floats, Index, Ints
from simulator.engine.snapshot import CONVERGED, DIVERGED, FINISHED, STALLED

States = NDArray[np.int8]


# Field metadata: the dtype of each per-run array.
_F64 = {"dtype": np.dtype(np.float64)}
_I64 = {"dtype": np.dtype(np.int64)}
_I32 = {"dtype": np.dtype(np.int32)}
_I8 = {"dtype": np.dtype(np.int8)}
_BOOL = {"dtype": np.dtype(np.bool_)}


@dataclass
class Attempt:
    """What an attempt starts with and each step computes, for a block of runs."""

    step: Ints = field(metadata=_I64)  # steps taken in this attempt
    loss: Floats = field(metadata=_F64)
    grad_norm: Floats = field(metadata=_F64)
    param_absmax: Floats = field(metadata=_F64)  # max |w_i|, drift included
    lr: Floats = field(metadata=_F64)  # the learning rate of the last step
    update_norm: Floats = field(metadata=_F64)
    drift: Floats = field(metadata=_F64)  # how far the optimum has moved (the drift fault)
    last_step_time: Floats = field(metadata=_F64)  # simulated time the last step fell due
    # Divergence: the rising streak and the loss before it; the EMA of log J, its highest
    # value outside growth streaks, and the streak of fast growth.
    streak: Counts = field(metadata=_I32)
    streak_base: Floats = field(metadata=_F64)
    level: Floats = field(metadata=_F64)
    peak: Floats = field(metadata=_F64)
    rate_streak: Counts = field(metadata=_I32)
    # Oscillation: the EMA of the successive-update cosine and the streak of flips.
    cosine: Floats = field(metadata=_F64)
    flip_streak: Counts = field(metadata=_I32)
    # Hysteresis countdowns: a verdict stays while its countdown is positive.
    conv_hold: Counts = field(metadata=_I32)
    conv_floor: Floats = field(metadata=_F64)  # the lowest loss since converged (inf: not)
    osc_hold: Counts = field(metadata=_I32)
    stall_hold: Counts = field(metadata=_I32)
    stall_streak: Counts = field(metadata=_I32)  # consecutive steps the stall condition held
    diverged: Bools = field(metadata=_BOOL)
    converged: Bools = field(metadata=_BOOL)
    stalled: Bools = field(metadata=_BOOL)
    oscillating: Bools = field(metadata=_BOOL)
    state: States = field(metadata=_I8)  # index into STATES


@dataclass
class RunState(Attempt):
    """Every per-run array of the engine: an attempt's, and what outlives attempts."""

    paused: Bools = field(metadata=_BOOL)
    progress: Floats = field(metadata=_F64)  # run time of the current attempt, in seconds
    restarts: Ints = field(metadata=_I64)

    @classmethod
    def zeros(cls, n: int) -> Self:
        """Every field for ``n`` runs, zero."""
        return cls(**{f.name: np.zeros(n, f.metadata["dtype"]) for f in dataclasses.fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field's name."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def write(self, rows: Index, new: Attempt, mask: Bools | None = None) -> None:
        """Store ``new`` (the rows ``rows``), where ``mask`` holds (everywhere for None)."""
        for name in _ATTEMPT:
            dst = getattr(self, name)
            if mask is None:
                dst[rows] = getattr(new, name)
            else:
                np.copyto(dst[rows], getattr(new, name), where=mask)

    def replace(self, new: Attempt) -> None:
        """Take ``new``'s arrays as the whole fleet's (every run stepped): no copy."""
        vars(self).update(vars(new))


_ATTEMPT = tuple(f.name for f in dataclasses.fields(Attempt))


def state_of(converged: Bools, stalled: Bools, diverged: Bools, step: Ints,
             steps_max: Ints) -> States:
    """The STATES index of each run: converged and stalled exclude each other; finished
    outranks them, diverged outranks all."""
    state = converged * np.int8(CONVERGED) + stalled * np.int8(STALLED)
    state = np.where(step >= steps_max, np.int8(FINISHED), state)
    result: States = np.where(diverged, np.int8(DIVERGED), state)
    return result
