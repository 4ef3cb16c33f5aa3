"""What the engine hands out: immutable snapshots of every run, and the events of a tick."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Bools, Floats
from simulator.faults.catalogue import FAULT_KINDS
from simulator.faults.timeline import FaultEvent
from simulator.hardware import Fleet, Telemetry

STATES = ("running", "converged", "stalled", "diverged", "finished")
RUNNING, CONVERGED, STALLED, DIVERGED, FINISHED = range(len(STATES))
ALERTS = ("divergence", "stall", "oscillation")


@dataclass(frozen=True)
class Transition:
    """A run whose state changed during one ``advance``."""

    run: str
    old: str
    new: str
    step: int
    loss: float


@dataclass(frozen=True)
class Events:
    """What happened during one ``advance``: state transitions, restarts, fault windows."""

    transitions: tuple[Transition, ...] = ()
    restarts: tuple[tuple[str, int], ...] = ()
    faults_injected: tuple[FaultEvent, ...] = ()
    faults_cleared: tuple[FaultEvent, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """An immutable, self-consistent view of every run, swapped in whole after each tick.

    Arrays are read-only copies in fleet row order; ``generation`` increases with every swap.
    """

    generation: int
    names: tuple[str, ...]
    landscapes: tuple[str, ...]
    optimizers: tuple[str, ...]
    schedules: tuple[str, ...]
    loss: Floats
    gradient_norm: Floats
    learning_rate: Floats
    update_norm: Floats
    parameter_absmax: Floats  # max |w_i|: the parameters' infinity norm
    steps: Floats
    restarts: Floats
    last_step_timestamp: Floats
    state: NDArray[np.int8]
    alerts: Bools  # (n, len(ALERTS))
    # (first row, parameter matrix) for groups small enough to export their parameters
    parameters: tuple[tuple[int, Floats], ...]
    present: Bools  # False while a run is crashed: its series vanish
    # Ground truth of faults: one entry per (row, kind) the run has ever had scheduled or injected
    fault_pairs: tuple[tuple[int, str], ...] = ()
    fault_active: Bools = field(default_factory=lambda: np.zeros(0, np.bool_))
    faults_injected: Floats = field(default_factory=lambda: np.zeros(0))
    # Held-out loss of the runs that have one (logistic_regression), and their rows
    validation_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    validation_loss: Floats = field(default_factory=lambda: np.zeros(0))
    # Loss above the landscape's minimum, for the runs whose landscape knows it, and their rows
    excess_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    excess_loss: Floats = field(default_factory=lambda: np.zeros(0))
    # The runs with a hardware block and their GPUs (None: no run has one), and their series
    hardware: Fleet | None = None
    telemetry: Telemetry | None = None
    # Per-run series some runs do not have (a replay whose file records no gradient norm or
    # learning rate; no replay has an update norm): the attribute and those runs' rows
    unrecorded: tuple[tuple[str, NDArray[np.int64]], ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def rows_of(self, attr: str) -> NDArray[np.int64] | None:
        """The rows that have the per-run series ``attr`` (None: every run)."""
        for name, skip in self.unrecorded:
            if name == attr:
                keep: NDArray[np.int64] = np.setdiff1d(np.arange(len(self)), skip)
                return keep
        return None

    @property
    def presence(self) -> Bools:
        """Which series exist, indexed by the rows ``simulator.exposition.layout`` gives: one
        entry per run (``present``), then, with hardware, one per GPU (its series but the XID
        one) and one per GPU again (its XID series)."""
        if self.telemetry is None:
            return self.present
        return np.concatenate([self.present, self.telemetry.gpu_present,
                               self.telemetry.xid_present])

    @property
    def excess_loss_by_run(self) -> Floats:
        """The excess loss of every run, NaN for the runs whose landscape has no known
        minimum."""
        out = np.full(len(self), np.nan)
        out[self.excess_rows] = self.excess_loss
        return out

    @property
    def validation_loss_by_run(self) -> Floats:
        """The validation loss of every run, NaN for the runs that have none."""
        out = np.full(len(self), np.nan)
        out[self.validation_rows] = self.validation_loss
        return out

    def fault_bits(self) -> NDArray[np.uint16]:
        """For each run, one bit per fault kind active on it (bit i: ``FAULT_KINDS[i]``)."""
        bits = np.zeros(len(self), np.uint16)
        if self.fault_pairs:
            rows = np.array([r for r, _ in self.fault_pairs], dtype=np.int64)
            kinds = np.array([1 << FAULT_KINDS.index(k) for _, k in self.fault_pairs],
                             np.uint16)
            np.bitwise_or.at(bits, rows[self.fault_active], kinds[self.fault_active])
        return bits


def frozen(a: NDArray[Any]) -> NDArray[Any]:
    """A read-only copy."""
    out = np.array(a, copy=True)
    out.setflags(write=False)
    return out
