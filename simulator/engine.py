"""The simulation core: runs stepped together as numpy arrays (struct-of-arrays).

Pure apart from its own arrays: no clock, no I/O, no logging. Time comes in as a number of
simulated seconds (``now``); the caller decides how that relates to the wall clock. Each run's
step index is a function of its elapsed run time (``progress // step_interval``), so however
irregularly ``advance`` is called, a run is never skipped or doubled, and the values after step
k depend only on the configuration and k: the same inputs give the same series bit for bit.

Runs that share a landscape/optimizer kind and dimension form a ``Group`` and occupy a contiguous
block of rows, so a tick in which every run steps works on slices, not index arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator import detectors, landscapes, optim, rng
from simulator.config import FAULT_KINDS, FaultSpec, RunSpec
from simulator.faults import FaultRecord, FaultTable, Modifiers
from simulator.landscapes import Landscape, QuadraticLandscape

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
# Streaks and hysteresis countdowns: int32 (config caps them at 10^6), half the memory
# traffic of int64 in the per-step detector arithmetic.
Counts = detectors.Counts
Bools = NDArray[np.bool_]
U64 = NDArray[np.uint64]
Index = slice | NDArray[np.intp]

STATES = ("running", "converged", "stalled", "diverged", "finished")
RUNNING, CONVERGED, STALLED, DIVERGED, FINISHED = range(len(STATES))
ALERTS = ("divergence", "stall", "oscillation")

# Parameters are exported as series only for runs this small (cardinality guard).
MAX_EXPORTED_DIMS = 8
# Tolerance when turning elapsed time into a step count, so 3 * 0.1 s counts as 3 steps.
_TIME_EPS = 1e-9
# Random streams of a run (counter-based, see rng.py; landscapes.py uses 10 and up).
_STREAM_GRADIENT_NOISE = 1  # the noise_burst fault
_STREAM_CONFIG_GRADIENT_NOISE = 2  # gradient_noise
_STREAM_LOSS_NOISE = 3  # loss_noise
# The series summed over the stall window (docs/detection.md#stall): the loss, |its change|,
# |g . dw| (the loss change an update accounts for to first order) and the gradient norm.
_SUMS = (_SUM_LOSS, _SUM_DLOSS, _SUM_EFFECT, _SUM_GRAD) = range(4)
_LOSS_SERIES = slice(_SUM_LOSS, _SUM_DLOSS + 1)  # read every step
_UPDATE_SERIES = slice(_SUM_EFFECT, _SUM_GRAD + 1)  # read when some loss is flat
_ROUNDING = 64 * np.finfo(np.float64).eps

__all__ = ["ALERTS", "STATES", "Engine", "Events", "Group", "QuadraticLandscape", "Snapshot"]


@dataclass
class Group:
    """Runs of one landscape/optimizer kind and shape, in fleet rows ``start:stop``.

    The optional parts (optimizer state, schedules, clipping, noise) are None when no member
    uses them, and then cost nothing per step.
    """

    start: int
    stop: int
    landscape: Landscape
    base_lr: Floats
    w0: Floats
    optimizer: optim.Optimizer | None = None
    schedules: optim.Schedules | None = None
    clip: Floats | None = None  # max gradient norm per member (inf: no clipping)
    grad_sigma: Floats | None = None  # gradient_noise per member
    loss_sigma: Floats | None = None  # loss_noise per member
    half: int | None = None  # the stall block length h when every member has the same one
    z0: Floats = field(init=False)
    z: Floats = field(init=False)
    grad: Floats = field(init=False)
    prev_dw: Floats = field(init=False)

    def __post_init__(self) -> None:
        self.z0 = self.landscape.coordinates(self.w0)
        self.z = self.z0.copy()
        self.grad = np.zeros_like(self.w0)
        self.prev_dw = np.zeros_like(self.w0)

    @property
    def random(self) -> bool:
        """Whether observing a loss and gradient draws random numbers."""
        return (self.landscape.stochastic or self.grad_sigma is not None
                or self.loss_sigma is not None)

    def parameters(self, local: Index = slice(None)) -> Floats:
        """Current parameters w of members ``local``."""
        return self.landscape.parameters(self.z[local], local)

    @property
    def dims(self) -> int:
        """Parameters per run in this group."""
        return int(self.w0.shape[1])

    def fleet_rows(self, local: Index) -> Index:
        """Fleet row index for a group-local index."""
        if isinstance(local, slice):
            return slice(self.start, self.stop)
        return local + self.start


def _group_key(spec: RunSpec) -> tuple[str, tuple[object, ...], str, int]:
    ls = spec.landscape
    return (ls.kind, ls.variant, spec.optimizer.algorithm, spec.dims)


def _make_group(start: int, stop: int, block: Sequence[RunSpec], keys: U64) -> Group:
    base_lr = np.array([s.optimizer.learning_rate for s in block], dtype=np.float64)
    dims = block[0].dims
    clip = [s.clip_grad_norm for s in block]
    grad_sigma = [s.gradient_noise for s in block]
    loss_sigma = [s.loss_noise for s in block]
    return Group(
        start=start, stop=stop,
        landscape=landscapes.build(block, keys),
        base_lr=base_lr,
        w0=np.array([s.init for s in block], dtype=np.float64).reshape(len(block), dims),
        optimizer=optim.build_optimizer(block, dims),
        schedules=optim.build_schedules(block, base_lr),
        clip=(np.array([np.inf if c is None else c for c in clip], dtype=np.float64)
              if any(c is not None for c in clip) else None),
        grad_sigma=np.array(grad_sigma, dtype=np.float64) if any(grad_sigma) else None,
        loss_sigma=np.array(loss_sigma, dtype=np.float64) if any(loss_sigma) else None,
    )


@dataclass(frozen=True)
class Transition:
    """A run whose state changed during one ``advance``."""

    run: str
    old: str
    new: str
    step: int
    loss: float


@dataclass(frozen=True)
class FaultEvent:
    """A fault window that began or ended."""

    run: str
    id: str
    kind: str
    source: str


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

    def __len__(self) -> int:
        return len(self.names)


def _row_norm(x: Floats) -> Floats:
    """Euclidean norm of each row (a plain absolute value for one column)."""
    if x.shape[1] == 1:
        return np.abs(x[:, 0])
    result: Floats = np.sqrt(np.einsum("ij,ij->i", x, x))
    return result


def _row_absmax(x: Floats) -> Floats:
    """Largest absolute entry of each row."""
    if x.shape[1] == 1:
        return np.abs(x[:, 0])
    result: Floats = np.max(np.abs(x), axis=1)
    return result


def _row_dot(x: Floats, y: Floats) -> Floats:
    """Dot product of matching rows."""
    if x.shape[1] == 1:
        result: Floats = x[:, 0] * y[:, 0]
        return result
    result = np.einsum("ij,ij->i", x, y)
    return result


def _frozen(a: NDArray[Any]) -> NDArray[Any]:
    out = np.array(a, copy=True)
    out.setflags(write=False)
    return out


class Engine:
    """Steps a fleet of runs through simulated time; see the module docstring.

    Faults live on each run's timeline (seconds since the run started, across restarts).
    ``advance`` cuts time at every fault start and end, so a fault affects exactly the steps
    that fall due inside its window, however the calls to ``advance`` are spaced.
    """

    def __init__(self, specs: Sequence[RunSpec], now: float = 0.0, next_fault_id: int = 1,
                 ) -> None:
        order = sorted(range(len(specs)), key=lambda i: _group_key(specs[i]))
        self.specs: tuple[RunSpec, ...] = tuple(specs[i] for i in order)
        ss = self.specs
        n = len(ss)
        self.names = tuple(s.name for s in ss)
        self._landscape_labels = tuple(s.landscape.kind for s in ss)
        self._optimizer_labels = tuple(s.optimizer.kind for s in ss)
        self._schedule_labels = tuple(s.schedule.label for s in ss)
        self.row_of = {name: i for i, name in enumerate(self.names)}
        self.now = now

        def col(get: Any, dtype: Any) -> NDArray[Any]:
            return np.array([get(s) for s in ss], dtype=dtype)

        self.interval: Floats = col(lambda s: s.step_interval, np.float64)
        self.steps_max: Ints = col(lambda s: s.steps, np.int64)
        self.loop: Bools = col(lambda s: s.loop, np.bool_)
        self.loss_limit: Floats = col(lambda s: s.detect.divergence_loss, np.float64)
        self.param_limit: Floats = col(lambda s: s.detect.divergence_parameter, np.float64)
        growth = col(lambda s: s.detect.divergence_growth_steps, np.int32)
        # A rising streak can never reach this limit: 0 in the config switches the test off.
        self.growth_limit: Counts = np.where(growth > 0, growth, np.iinfo(np.int32).max)
        self.growth_factor: Floats = col(lambda s: s.detect.divergence_growth_factor, np.float64)
        self.window: Ints = col(lambda s: s.detect.stall_window, np.int64)
        self.min_improvement: Floats = col(lambda s: s.detect.stall_min_improvement, np.float64)
        self.tolerance: Floats = col(lambda s: s.detect.converged_gradient_norm, np.float64)
        self.flip_steps: Counts = col(lambda s: s.detect.oscillation_flip_steps, np.int32)
        self.osc_improvement: Floats = col(lambda s: s.detect.oscillation_min_improvement,
                                           np.float64)
        rate = col(lambda s: s.detect.divergence_growth_rate, np.float64)
        # A rate of 0 switches the smoothed-growth test off: no rate exceeds infinity.
        self.growth_rate: Floats = np.where(rate > 0, rate, np.inf)
        self.log_growth_factor: Floats = np.log(self.growth_factor)
        self.beta: Floats = 1.0 / col(lambda s: s.detect.smoothing_steps, np.float64)
        # The stall window is two adjacent blocks of h steps each. Their means are h steps
        # apart, so a relative threshold meant over the K-step window is scaled by h / K.
        self.half: Ints = np.maximum(self.window // 2, 1)
        self.min_improvement *= self.half / self.window
        self.osc_improvement *= self.half / self.window
        self.noise_coef: Floats = (col(lambda s: s.detect.stall_noise_z, np.float64)
                                   * np.sqrt(np.pi / (2.0 * self.half)))
        self.flip_cosine: Floats = -col(lambda s: s.detect.oscillation_flip_cosine, np.float64)
        self.clear_steps: Counts = col(lambda s: s.detect.clear_steps, np.int32)
        self.keys = np.array([rng.run_key(s.seed, s.name) for s in ss], dtype=np.uint64)

        self.groups: list[Group] = []
        start = 0
        while start < n:
            stop = start
            while stop < n and _group_key(ss[stop]) == _group_key(ss[start]):
                stop += 1
            group = _make_group(start, stop, ss[start:stop], self.keys[start:stop])
            halves = {max(s.detect.stall_window // 2, 1) for s in ss[start:stop]}
            group.half = halves.pop() if len(halves) == 1 else None
            self.groups.append(group)
            start = stop

        self.born: Floats = np.full(n, now, np.float64)
        self.paused: Bools = np.zeros(n, np.bool_)
        self.step: Ints = np.zeros(n, np.int64)
        self.progress: Floats = np.zeros(n, np.float64)
        self.restarts: Ints = np.zeros(n, np.int64)
        self.loss: Floats = np.zeros(n, np.float64)
        self.grad_norm: Floats = np.zeros(n, np.float64)
        self.param_absmax: Floats = np.zeros(n, np.float64)
        self.lr: Floats = np.zeros(n, np.float64)
        self.update_norm: Floats = np.zeros(n, np.float64)
        self.drift: Floats = np.zeros(n, np.float64)  # how far each optimum has moved
        self.streak: Counts = np.zeros(n, np.int32)
        self.streak_base: Floats = np.zeros(n, np.float64)
        self.flip_streak: Counts = np.zeros(n, np.int32)
        self.level: Floats = np.zeros(n, np.float64)  # EMA of log J
        self.peak: Floats = np.zeros(n, np.float64)  # its highest value outside growth streaks
        self.rate_streak: Counts = np.zeros(n, np.int32)
        self.cosine: Floats = np.zeros(n, np.float64)  # EMA of the successive-update cosine
        # Running sums since step 0 of the stall window's series (the _SUM_* rows).
        self.sums: Floats = np.zeros((len(_SUMS), n), np.float64)
        # Hysteresis countdowns: an alert stays active while its countdown is positive.
        self.stall_hold: Counts = np.zeros(n, np.int32)
        self.osc_hold: Counts = np.zeros(n, np.int32)
        self.conv_hold: Counts = np.zeros(n, np.int32)
        # A ring buffer of those sums over the last window (2h + 1 entries are read). Its
        # width is a power of two, so ring positions are a bitwise AND instead of a modulo.
        self.hist_width = 1 << int(2 * self.half.max()).bit_length() if n else 1
        # Slot-major (width, series, n): runs at the same step read one contiguous block.
        self.hist: Floats = np.zeros((self.hist_width, len(_SUMS), n), np.float64)
        self._row_index: Ints = np.arange(n, dtype=np.int64)
        self.diverged: Bools = np.zeros(n, np.bool_)
        self.converged: Bools = np.zeros(n, np.bool_)
        self.stalled: Bools = np.zeros(n, np.bool_)
        self.oscillating: Bools = np.zeros(n, np.bool_)
        self.state: NDArray[np.int8] = np.zeros(n, np.int8)
        self.last_step_time: Floats = np.full(n, now, np.float64)

        self._validation_rows: NDArray[np.int64] = np.concatenate(
            [np.arange(g.start, g.stop) for g in self.groups if g.landscape.has_validation]
            or [np.zeros(0, np.int64)]).astype(np.int64)

        self._next_fault_id = next_fault_id
        self.fault_records: list[FaultRecord] = []
        for s in ss:
            for f in s.faults:
                self._add_fault(s.name, f, now + f.at, "config")
        self.injected_counts: dict[tuple[str, str], int] = {}
        self._pending_events: list[tuple[str, FaultEvent]] = []
        self._rebuild_faults()
        for g in self.groups:
            self._reset(g, slice(None), now)
        self._on_boundary(now)

    # ------------------------------------------------------------------ faults

    def _add_fault(self, run: str, spec: FaultSpec, start: float, source: str) -> FaultRecord:
        rec = FaultRecord(id=str(self._next_fault_id), run=run, spec=spec, start=start,
                          end=start + spec.duration, source=source)
        self._next_fault_id += 1
        self.fault_records.append(rec)
        return rec

    def _rebuild_faults(self) -> None:
        self.faults = FaultTable(self.fault_records, self.row_of, len(self.names))
        kinds = {(self.row_of[r.run], r.kind) for r in self.fault_records}
        self.fault_pairs = tuple(sorted(kinds, key=lambda p: (p[0], FAULT_KINDS.index(p[1]))))
        self.mods = self.faults.modifiers(self.now, self.paused)

    def _on_boundary(self, t: float) -> None:
        """Apply what starts or ends at ``t``: count new faults, restart crashed runs."""
        for rec in self.fault_records:
            if not rec.counted and rec.start <= t:
                rec.counted = True
                key = (rec.run, rec.kind)
                self.injected_counts[key] = self.injected_counts.get(key, 0) + 1
                self._pending_events.append(("injected", _fault_event(rec)))
            if rec.end == t:
                self._pending_events.append(("cleared", _fault_event(rec)))
        was_absent = self.mods.absent
        self.mods = self.faults.modifiers(t, self.paused)
        back = was_absent & ~self.mods.absent
        if back.any():  # a crashed job was rescheduled: it starts again from scratch
            self._restart_rows(back, t)

    def inject(self, run: str, spec: FaultSpec) -> FaultRecord:
        """Start a fault on ``run`` now (its ``at`` is ignored); returns its record."""
        rec = self._add_fault(run, spec, self.now, "api")
        self._rebuild_faults()
        self._on_boundary(self.now)
        return rec

    def clear(self, run: str, fault_id: str) -> FaultRecord:
        """End a fault now (or drop it if it has not begun); KeyError if there is none."""
        for rec in self.fault_records:
            if rec.run == run and rec.id == fault_id:
                break
        else:
            raise KeyError(fault_id)
        if rec.start > self.now:
            self.fault_records.remove(rec)
        elif rec.end > self.now:
            rec.end = self.now
            self._pending_events.append(("cleared", _fault_event(rec)))
        self._rebuild_faults()
        self._on_boundary(self.now)
        return rec

    def active_faults(self, run: str) -> list[FaultRecord]:
        """The faults of ``run`` active now."""
        return [r for r in self.fault_records
                if r.run == run and r.start <= self.now < r.end]

    def set_paused(self, run: str, paused: bool) -> None:
        """Pause or resume a run: a paused run keeps its series and takes no steps."""
        self.paused[self.row_of[run]] = paused
        self.mods = self.faults.modifiers(self.now, self.paused)

    def restart(self, run: str) -> None:
        """Restart a run from step 0 now, as a rescheduled job."""
        mask = np.zeros(len(self.names), np.bool_)
        mask[self.row_of[run]] = True
        self._restart_rows(mask, self.now)

    # ------------------------------------------------------------------ stepping

    def _restart_rows(self, mask: Bools, at: float) -> None:
        self.restarts[mask] += 1
        self.progress[mask] = 0.0
        for g in self.groups:
            local = np.flatnonzero(mask[g.start:g.stop])
            if local.size:
                self._reset(g, local, at)

    def _reset(self, g: Group, local: Index, at: float | Floats) -> None:
        """Put group members back at step 0 (start of an attempt) at time ``at``."""
        rows = g.fleet_rows(local)
        g.z[local] = g.z0[local]
        loss0, grad0 = self._observe(g, local, g.z0[local], np.zeros(len(g.z0[local]), np.int64))
        g.grad[local] = grad0
        g.prev_dw[local] = 0.0
        if g.optimizer is not None:
            g.optimizer.reset(local)
        self.drift[rows] = 0.0
        self.step[rows] = 0
        self.loss[rows] = loss0
        self.grad_norm[rows] = _row_norm(grad0)
        self.param_absmax[rows] = _row_absmax(g.w0[local])
        self.lr[rows] = (g.base_lr[local] if g.schedules is None
                         else g.schedules.lr(np.zeros(g.stop - g.start, np.int64))[local])
        self.update_norm[rows] = 0.0
        self.streak[rows] = 0
        self.streak_base[rows] = loss0
        self.flip_streak[rows] = 0
        level0 = detectors.log_loss(loss0)
        self.level[rows] = level0
        self.peak[rows] = level0
        self.rate_streak[rows] = 0
        self.cosine[rows] = 0.0
        start = np.zeros((len(_SUMS), len(loss0)), np.float64)
        start[_SUM_LOSS] = loss0
        start[_SUM_GRAD] = self.grad_norm[rows]
        self.sums[:, rows] = start
        self.hist[:, :, rows] = start
        self.diverged[rows] = False
        self.stalled[rows] = False
        self.oscillating[rows] = False
        self.stall_hold[rows] = 0
        self.osc_hold[rows] = 0
        conv = detectors.converged(self.grad_norm[rows], self.tolerance[rows])
        self.conv_hold[rows] = self.clear_steps[rows] * conv
        self.converged[rows] = conv
        self.last_step_time[rows] = at
        self._update_state(rows)

    def _observe(self, g: Group, local: Index, z: Floats, step: Ints) -> tuple[Floats, Floats]:
        """Reported loss and observed gradient at ``z`` for members ``local`` at ``step`` (of the
        current attempt): the landscape's, plus the configured gradient and loss noise.

        Noise on the reported loss is only reported: the gradient never sees it.
        """
        if not g.random:
            return g.landscape.loss_grad(z, local, None, None)
        rows = g.fleet_rows(local)
        keys = self.keys[rows]
        # One counter per (attempt, step): a restarted run draws fresh numbers.
        counter = (self.restarts[rows].astype(np.uint64) << np.uint64(40)) \
            + step.astype(np.uint64)
        loss, grad = g.landscape.loss_grad(z, local, keys, counter)
        if g.grad_sigma is not None:
            grad = grad + g.grad_sigma[local][:, None] * rng.standard_normal(
                keys, _STREAM_CONFIG_GRADIENT_NOISE, counter, g.dims)
        if g.loss_sigma is not None:
            loss = loss + g.loss_sigma[local] * rng.standard_normal(
                keys, _STREAM_LOSS_NOISE, counter, 1)[:, 0]
        return loss, grad

    def _update_state(self, rows: Index) -> None:
        # converged and stalled exclude each other; finished outranks them, diverged outranks all.
        state = self.converged[rows] * np.int8(CONVERGED) + self.stalled[rows] * np.int8(STALLED)
        state = np.where(self.step[rows] >= self.steps_max[rows], np.int8(FINISHED), state)
        self.state[rows] = np.where(self.diverged[rows], np.int8(DIVERGED), state)

    def _step_group(self, g: Group, mask: Bools | None) -> None:
        """One optimizer step plus detection for the members of ``g`` selected by ``mask``
        (all of them if None).

        Everything is computed on the group's contiguous block and committed through
        ``mask``: with more than a few percent of rows stepping this beats gathering rows.
        Diverged rows are held: their update is zero, so loss and gradient recompute to the same
        bits, and their step count, timestamps and flags stay as they were.
        """
        rows = slice(g.start, g.stop)
        mods: Modifiers | None = self.mods if self.mods.any_effect else None
        held = self.diverged[rows].copy()
        lr = g.base_lr if g.schedules is None else g.schedules.lr(self.step[rows])
        if mods is not None:
            lr = lr * mods.lr_mult[rows]
        moving = ~held if mods is None else ~held & ~mods.frozen[rows]
        z = g.z
        grad = g.grad
        if g.clip is not None:
            grad = optim.clip_grad_norm(grad, self.grad_norm[rows], g.clip)
        new_state: optim.State = {}
        if g.optimizer is None:  # plain SGD: the seed's arithmetic, nothing else
            dw = grad * (-lr * moving)[:, None]
        else:
            w = None
            if g.optimizer.needs_parameters:
                w = g.landscape.parameters(z, slice(None)) + self.drift[rows][:, None]
            direction, new_state = g.optimizer.step(grad, w)
            dw = direction * (-lr * moving)[:, None]
        z_new = z + dw
        step = self.step[rows] + ~held
        # The moment of simulated time at which step k fell due.
        stepped_at = np.where(held, self.last_step_time[rows],
                              self.now - self.progress[rows] + step * self.interval[rows])
        drift = self.drift[rows]
        if mods is not None and self.faults.drifting_rows[rows].any():
            target = self.faults.drift_offset(np.arange(g.start, g.stop), stepped_at)
            drift = np.where(held, drift, target)
            z_new -= (drift - self.drift[rows])[:, None]
        loss, grad = self._observe(g, slice(None), z_new, step)
        if mods is not None:
            grad = grad * mods.grad_scale[rows][:, None]
            sigma = mods.noise_sigma[rows]
            if sigma.any():
                counter = (self.restarts[rows].astype(np.uint64) << np.uint64(40)) \
                    + step.astype(np.uint64)
                grad += sigma[:, None] * rng.standard_normal(
                    self.keys[rows], _STREAM_GRADIENT_NOISE, counter, g.dims)
            nan = mods.nan[rows]
            if nan.any():
                loss = np.where(nan, np.nan, loss)
        grad_norm = _row_norm(grad)
        absmax = _row_absmax(g.landscape.parameters(z_new, slice(None)) + drift[:, None])
        prev_loss = self.loss[rows]

        finite = np.isfinite(loss) & np.isfinite(absmax) & np.isfinite(grad_norm)
        if not finite.all():
            # A run that produced a non-finite value holds its last finite values.
            keep = ~finite
            z_new[keep] = z[keep]
            grad[keep] = g.grad[keep]
            loss[keep] = prev_loss[keep]
            grad_norm[keep] = self.grad_norm[rows][keep]
            absmax[keep] = self.param_absmax[rows][keep]
            dw[keep] = 0.0
            drift = np.where(keep, self.drift[rows], drift)
            moving = moving & finite
        streak = detectors.rising_streak(prev_loss, loss, self.streak[rows])
        base = detectors.streak_base(streak, loss, self.streak_base[rows])
        level, rate = detectors.smoothed_rate(
            self.level[rows], detectors.log_loss(loss), self.beta[rows])
        rate_streak = detectors.count_while(rate > self.growth_rate[rows], self.rate_streak[rows])
        peak = self.peak[rows]
        diverged = detectors.diverging(finite, loss, absmax, streak, base, self.loss_limit[rows],
                                       self.param_limit[rows], self.growth_limit[rows],
                                       self.growth_factor[rows], rate_streak, level, peak,
                                       self.log_growth_factor[rows]) | held
        peak = np.maximum(peak, level, where=rate_streak == 0, out=peak.copy())

        # The stall window: the sums over two adjacent blocks of h steps of each series in
        # _SUMS are differences of running sums kept in a ring buffer. When the whole group is
        # at one step (the usual case) the entries are contiguous blocks.
        half = self.half[rows]
        wrap = self.hist_width - 1
        before = self.sums[:, rows]
        sums = np.empty_like(before)
        np.add(before[_SUM_LOSS], loss, out=sums[_SUM_LOSS])
        np.add(before[_SUM_DLOSS], np.abs(loss - prev_loss), out=sums[_SUM_DLOSS])
        np.add(before[_SUM_EFFECT], np.abs(_row_dot(g.grad, dw)), out=sums[_SUM_EFFECT])
        np.add(before[_SUM_GRAD], grad_norm, out=sums[_SUM_GRAD])
        # Held (diverged) rows do not count: their ring entries are never read before a restart
        # resets them, so the fast path may overwrite them.
        k = int(step[int(np.argmin(held))])
        blocks: Callable[[slice], tuple[Floats, Floats]]
        if mask is None and g.half is not None and bool(((step == k) | held).all()):
            h = g.half
            self.hist[k & wrap, :, rows] = sums
            have_window: Bools | bool = k >= 2 * h
            h_effect: Ints | int = h

            def blocks(series: slice) -> tuple[Floats, Floats]:
                mid = self.hist[(k - h) & wrap, series, rows]
                return mid - self.hist[(k - 2 * h) & wrap, series, rows], sums[series] - mid
        else:
            n = len(self.names)
            flat = self.hist.reshape(-1)
            index = self._row_index[rows]
            offsets = (np.arange(len(_SUMS)) * n)[:, None]

            def at(back: Ints | int) -> Ints:
                """Flat positions of series 0 in the entries ``back`` steps ago."""
                return ((step - back) & wrap) * (len(_SUMS) * n) + index

            slot = at(0) + offsets
            flat.put(slot, sums if mask is None else np.where(mask, sums, flat.take(slot)))
            have_window = step >= 2 * half
            h_effect = half
            mid_at, first_at = at(half), at(2 * half)

            def blocks(series: slice) -> tuple[Floats, Floats]:
                mid = flat.take(mid_at + offsets[series])
                return mid - flat.take(first_at + offsets[series]), sums[series] - mid
        # Each series' sums over the older and the recent block, read when needed.
        (older_loss, older_dloss), (recent_loss, recent_dloss) = blocks(_LOSS_SERIES)
        ok = ~diverged
        clear = self.clear_steps[rows]
        conv_hold = detectors.hold(detectors.converged(grad_norm, self.tolerance[rows]),
                                   self.conv_hold[rows], clear)
        is_converged = (conv_hold > 0) & ok
        step_norm = _row_norm(dw)
        dot = _row_dot(dw, g.prev_dw)
        # In one dimension the cosine is the sign of the product.
        cos = (np.sign(dot) if g.dims == 1
               else detectors.update_cosine(dot, step_norm * self.update_norm[rows]))
        cosine, _ = detectors.smoothed_rate(self.cosine[rows], cos, self.beta[rows])
        flips = detectors.count_while(cosine <= self.flip_cosine[rows], self.flip_streak[rows])

        # Stall and oscillation: each condition is a conjunction; its cheap, usually false
        # parts come first, and the rest is computed only if some row is still in question.
        change = older_loss - recent_loss
        scale = np.abs(older_loss)
        osc = have_window & (flips >= self.flip_steps[rows]) & ~is_converged & ok
        if osc.any():
            osc &= ~detectors.improving(change, scale, self.osc_improvement[rows])
        osc_hold = detectors.hold(osc, self.osc_hold[rows], clear)
        oscillating = (osc_hold > 0) & ~is_converged & ok
        min_improvement = self.min_improvement[rows]
        relative = min_improvement * scale
        # The loss noise (the smaller block's sum of |changes|: a jump must not pass for noise),
        # plus the rounding error of the running sums the block sums are differences of (a
        # frozen loss must read flat, not rising by 1e-12).
        noise = (self.noise_coef[rows] * np.minimum(older_dloss, recent_dloss)
                 + _ROUNDING * np.abs(sums[_SUM_LOSS]))
        stall = have_window & detectors.flat(change, relative, noise) & ~is_converged & ok
        if stall.any():
            (_, older_grad), (recent_effect, recent_grad) = blocks(_UPDATE_SERIES)
            effect = recent_effect * h_effect
            stall &= ~detectors.moving(effect, relative)
            stall &= ~detectors.converging(older_grad, recent_grad, effect, min_improvement)
        stall_hold = detectors.hold(stall, self.stall_hold[rows], clear)
        stalled = (stall_hold > 0) & ~is_converged & ~oscillating & ok
        update_norm = np.where(held, self.update_norm[rows], step_norm)

        column = None if mask is None else mask[:, None]
        # Copied: the group's own arrays, and lr, which may be the group's base_lr itself.
        for dst, src, where in (
            (g.z, z_new, column), (g.grad, grad, column), (g.prev_dw, dw, column),
            (self.lr[rows], lr, mask),
        ):
            if where is None:
                dst[...] = src
            else:
                np.copyto(dst, src, where=where)
        # Arrays computed afresh this step: when the group is the whole fleet and every member
        # stepped, they replace the stored ones instead of being copied into them.
        fresh: tuple[tuple[str, NDArray[Any]], ...] = (
                 ("step", step), ("loss", loss), ("grad_norm", grad_norm),
                 ("param_absmax", absmax), ("drift", drift),
                 ("update_norm", update_norm), ("streak", streak),
                 ("streak_base", base), ("flip_streak", flips), ("level", level),
                 ("peak", peak), ("rate_streak", rate_streak), ("cosine", cosine),
                 ("conv_hold", conv_hold),
                 ("osc_hold", osc_hold), ("stall_hold", stall_hold), ("diverged", diverged),
                 ("converged", is_converged), ("stalled", stalled),
                 ("oscillating", oscillating), ("last_step_time", stepped_at))
        if mask is None and g.start == 0 and g.stop == len(self.names):
            for name, src in fresh:
                setattr(self, name, src)
            self.sums = sums
        else:
            if mask is None:
                self.sums[:, rows] = sums
            else:
                np.copyto(self.sums[:, rows], sums, where=mask)
            for name, src in fresh:
                if mask is None:
                    getattr(self, name)[rows] = src
                else:
                    np.copyto(getattr(self, name)[rows], src, where=mask)
        if new_state:
            # Optimizer state advances only for rows that really updated.
            assert g.optimizer is not None
            commit = moving if mask is None else moving & mask
            every = bool(commit.all())
            for name, value in new_state.items():
                if every:
                    g.optimizer.state[name][...] = value
                else:
                    np.copyto(g.optimizer.state[name], value, where=commit[:, None])
        self._update_state(rows)

    def _due(self, inclusive: bool) -> Ints:
        # Inclusive: steps falling due exactly now are due, for runs that are stepping now.
        # Exclusive (up to a fault boundary): they wait, so that the fault starting at that
        # moment applies to them, or, for a hang or crash, stops them.
        eps = np.where(self.mods.rate > 0, _TIME_EPS, -_TIME_EPS) if inclusive else -_TIME_EPS
        due = np.floor(self.progress / self.interval + eps).astype(np.int64)
        return np.minimum(due, self.steps_max)

    def advance(self, now: float) -> Events:
        """Bring every run to simulated time ``now`` (seconds); return what changed."""
        before_state = self.state.copy()
        before_restarts = self.restarts.copy()
        # Rows that are not stepping are computed too and then masked out; a held, diverged
        # row may overflow there, harmlessly.
        with np.errstate(all="ignore"):
            while True:
                boundary = self.faults.next_boundary(self.now)
                if boundary > now:
                    self._run_until(max(self.now, now), inclusive=True)
                    break
                self._run_until(boundary, inclusive=False)
                self._on_boundary(boundary)
        return self._events(before_state, before_restarts)

    def _run_until(self, t: float, inclusive: bool) -> None:
        """Advance the clock to ``t`` with the current modifiers, stepping what falls due."""
        self.progress += (t - self.now) * self.mods.rate
        self.now = t
        period = (self.steps_max + 1) * self.interval
        while True:
            due = self._due(inclusive)
            need = (self.step < due) & ~self.diverged
            while need.any():
                for g in self.groups:
                    block = need[g.start:g.stop]
                    if (block | self.diverged[g.start:g.stop]).all():
                        self._step_group(g, None)
                    elif block.any():
                        self._step_group(g, block)
                need = (self.step < due) & ~self.diverged
            restart = self.loop & (self.progress >= period - _TIME_EPS)
            if not restart.any():
                break
            leftover = self.progress[restart] - period[restart]
            self._restart_rows(restart, t)
            self.progress[restart] = leftover
            # An attempt restarts one interval after its last step (or at that moment after a
            # divergence), whatever the tick.
            self.last_step_time[restart] = t - leftover

    def next_due(self) -> float:
        """Simulated time at which the next step, restart or fault boundary falls due."""
        rate = self.mods.rate
        next_step = np.where(self.step < self.steps_max, (self.step + 1) * self.interval, np.inf)
        next_step = np.where(self.diverged, np.inf, next_step)
        restart = np.where(self.loop, (self.steps_max + 1) * self.interval, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            wait = np.where(rate > 0, (np.minimum(next_step, restart) - self.progress) / rate,
                            np.inf)
        soonest = float(wait.min()) if len(wait) else float("inf")
        return min(self.now + max(0.0, soonest), self.faults.next_boundary(self.now))

    def _events(self, before_state: NDArray[np.int8], before_restarts: Ints) -> Events:
        changed = np.flatnonzero(self.state != before_state)
        restarted = np.flatnonzero(self.restarts != before_restarts)
        pending, self._pending_events = self._pending_events, []
        return Events(
            transitions=tuple(
                Transition(self.names[i], STATES[before_state[i]], STATES[self.state[i]],
                           int(self.step[i]), float(self.loss[i]))
                for i in changed),
            restarts=tuple((self.names[i], int(self.restarts[i])) for i in restarted),
            faults_injected=tuple(e for what, e in pending if what == "injected"),
            faults_cleared=tuple(e for what, e in pending if what == "cleared"),
        )

    # ------------------------------------------------------------------ views

    def snapshot(self, generation: int, wall_epoch: float = 0.0, speed: float = 1.0) -> Snapshot:
        """An immutable copy of the exported state; times become ``wall_epoch + sim / speed``."""
        alerts = np.stack([self.diverged, self.stalled, self.oscillating], axis=1)
        nan = self.mods.nan
        loss, grad_norm = self.loss, self.grad_norm
        if nan.any():  # the NaN fault shows in the series while it lasts
            loss = np.where(nan, np.nan, loss)
            grad_norm = np.where(nan, np.nan, grad_norm)
        active = self.faults.active(self.now)
        active_pairs = {(int(r), FAULT_KINDS[k])
                        for r, k in zip(self.faults.row[active], self.faults.kind[active],
                                        strict=True)}
        return Snapshot(
            generation=generation,
            names=self.names,
            landscapes=self._landscape_labels,
            optimizers=self._optimizer_labels,
            schedules=self._schedule_labels,
            loss=_frozen(loss),
            gradient_norm=_frozen(grad_norm),
            learning_rate=_frozen(self.lr),
            update_norm=_frozen(self.update_norm),
            steps=_frozen(self.step.astype(np.float64)),
            restarts=_frozen(self.restarts.astype(np.float64)),
            last_step_timestamp=_frozen(wall_epoch + self.last_step_time / speed),
            state=_frozen(self.state),
            alerts=_frozen(alerts),
            parameters=tuple((g.start, _frozen(self._parameters(g))) for g in self.groups
                             if g.dims <= MAX_EXPORTED_DIMS),
            present=_frozen(~self.mods.absent),
            fault_pairs=self.fault_pairs,
            fault_active=_frozen(np.array([p in active_pairs for p in self.fault_pairs],
                                          dtype=np.bool_)),
            faults_injected=_frozen(np.array(
                [float(self.injected_counts.get((self.names[r], k), 0))
                 for r, k in self.fault_pairs])),
            validation_rows=_frozen(self._validation_rows),
            validation_loss=_frozen(self._validation_loss()),
        )

    def _validation_loss(self) -> Floats:
        parts = [g.landscape.validation_loss(g.z, slice(None)) for g in self.groups
                 if g.landscape.has_validation]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _parameters(self, g: Group, local: Index = slice(None)) -> Floats:
        result: Floats = g.parameters(local) + self.drift[g.fleet_rows(local)][:, None]
        return result

    def parameters(self, run: str) -> Floats:
        """The current parameter vector of one run (a copy)."""
        i = self.row_of[run]
        g = self._group_of(i)
        params: Floats = self._parameters(g, np.array([i - g.start]))[0]
        return params

    def reconfigured(self, specs: Sequence[RunSpec]) -> Engine:
        """A new engine for ``specs`` at the same time; runs whose spec is unchanged keep all
        their progress and faults, new or changed runs start from step 0, removed runs are
        dropped."""
        new = Engine(specs, now=self.now, next_fault_id=self._next_fault_id)
        kept = [(self.row_of[s.name], new.row_of[s.name]) for s in new.specs
                if s.name in self.row_of and self.specs[self.row_of[s.name]] == s]
        if not kept:
            return new
        src = np.array([k[0] for k in kept])
        dst = np.array([k[1] for k in kept])
        for name in ("born", "paused", "step", "progress", "restarts", "loss", "grad_norm",
                     "param_absmax", "lr", "update_norm", "drift", "streak", "streak_base",
                     "flip_streak", "level", "peak", "rate_streak", "cosine",
                     "conv_hold", "osc_hold", "stall_hold",
                     "diverged", "converged", "stalled", "oscillating", "state",
                     "last_step_time"):
            getattr(new, name)[dst] = getattr(self, name)[src]
        # Re-index the ring buffers: column (step - j) keeps its meaning for recent j.
        step = self.step[src]
        new.sums[:, dst] = self.sums[:, src]
        for j in range(min(self.hist_width, new.hist_width)):
            # Both indices are arrays around a slice: the result is (runs, series) on each side.
            new.hist[(step - j) % new.hist_width, :, dst] = \
                self.hist[(step - j) % self.hist_width, :, src]
        for s_row, d_row in kept:
            sg = self._group_of(s_row)
            dg = new._group_of(d_row)
            for name in ("z", "grad", "prev_dw"):
                getattr(dg, name)[d_row - dg.start] = getattr(sg, name)[s_row - sg.start]
            if sg.optimizer is not None and dg.optimizer is not None:
                for name, arr in dg.optimizer.state.items():
                    if name in sg.optimizer.state:
                        arr[d_row - dg.start] = sg.optimizer.state[name][s_row - sg.start]
        kept_names = {self.names[i] for i, _ in kept}
        new.fault_records = ([r for r in new.fault_records if r.run not in kept_names]
                             + [r for r in self.fault_records if r.run in kept_names])
        new.injected_counts.update({k: v for k, v in self.injected_counts.items()
                                    if k[0] in kept_names})
        new._rebuild_faults()
        return new

    def _group_of(self, row: int) -> Group:
        for g in self.groups:
            if g.start <= row < g.stop:
                return g
        raise IndexError(row)


def _fault_event(rec: FaultRecord) -> FaultEvent:
    return FaultEvent(rec.run, rec.id, rec.kind, rec.source)
