"""The simulation core: runs stepped together as numpy arrays (struct-of-arrays).

Pure apart from its own arrays: no clock, no I/O, no logging. Time comes in as a number of
simulated seconds (``now``); the caller decides how that relates to the wall clock. Each run's
step index is a function of its elapsed run time (``progress // step_interval``), so however
irregularly ``advance`` is called, a run is never skipped or doubled, and the values after step
k depend only on the configuration and k: the same inputs give the same series bit for bit.

A step of a group goes through named phases (``_step_group``): propose the update, observe the
loss and gradient where it lands (with the faults' effects), hold a run that produced a
non-finite value, detect, commit. Faults live on each run's timeline (seconds since the run
started, across restarts); ``advance`` cuts time at every fault start and end, so a fault
affects exactly the steps that fall due inside its window, however the calls are spaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from simulator import detectors, hardware, optimizers, rng
from simulator.arrays import U64, Bools, Counts, Floats, Index, Ints
from simulator.config.run import RunSpec
from simulator.engine.group import Group, group_key, make_groups
from simulator.engine.snapshot import (
    ALERTS,
    STATES,
    Events,
    Snapshot,
    Transition,
    frozen,
)
from simulator.engine.state import Attempt, RunState, state_of
from simulator.engine.window import (
    DLOSS,
    EFFECT,
    GRAD,
    LOSS,
    LOSS_SERIES,
    UPDATE_SERIES,
    Blocks,
    StallWindow,
)
from simulator.faults.catalogue import FAULTS, FaultSpec, recording_problem
from simulator.faults.timeline import FaultRecord, FaultTargetError, FaultTimeline, Modifiers
from simulator.replay.spec import RecordedLandscape, Replay
from simulator.rng import Stream

__all__ = ["ALERTS", "STATES", "Engine", "Events", "Snapshot"]

# Parameters are exported as series only for runs this small (cardinality guard).
MAX_EXPORTED_DIMS = 8
# Tolerance when turning elapsed time into a step count, so 3 * 0.1 s counts as 3 steps.
_TIME_EPS = 1e-9
# The rounding error of the running sums a block sum is a difference of: a frozen loss must
# read flat, not rising by 1e-12.
_ROUNDING = 64 * np.finfo(np.float64).eps


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


def _unrecorded(groups: Sequence[Group]) -> tuple[tuple[str, Ints], ...]:
    """The per-run series replay runs do not have: a gradient norm or learning rate their file
    does not record, and the update norm (a recording holds no parameters)."""
    missing: dict[str, list[Ints]] = {"gradient_norm": [], "learning_rate": [],
                                      "update_norm": []}
    for g in groups:
        if isinstance(g.landscape, RecordedLandscape):
            rows = np.arange(g.start, g.stop, dtype=np.int64)
            rec = g.landscape.recording
            missing["update_norm"].append(rows)
            for attr in ("gradient_norm", "learning_rate"):
                if getattr(rec, attr) is None:
                    missing[attr].append(rows)
    return tuple((attr, np.concatenate(parts)) for attr, parts in missing.items() if parts)


@dataclass
class _Step:
    """One step of one group in the making: what each phase leaves for the next."""

    rows: slice
    held: Bools  # diverged runs: they take no step, their values stay
    mods: Modifiers | None  # None when no fault is active anywhere
    lr: Floats = field(init=False)
    moving: Bools = field(init=False)  # runs whose parameters move
    dw: Floats = field(init=False)
    z: Floats = field(init=False)
    step: Ints = field(init=False)
    stepped_at: Floats = field(init=False)
    drift: Floats = field(init=False)
    opt_state: optimizers.State = field(init=False)
    loss: Floats = field(init=False)
    grad: Floats = field(init=False)
    grad_norm: Floats = field(init=False)
    absmax: Floats = field(init=False)
    prev_loss: Floats = field(init=False)
    finite: Bools = field(init=False)


@dataclass
class _Flat:
    """The loss over the stall window's two blocks: its fall from the older to the recent
    one, the older block's size, and the noise the window cannot resolve."""

    change: Floats
    scale: Floats
    noise: Floats


@dataclass
class _Oscillation:
    """The oscillation detector's values after a step."""

    step_norm: Floats
    cosine: Floats
    flips: Counts
    hold: Counts
    oscillating: Bools


class Engine:
    """Steps a fleet of runs through simulated time; see the module docstring."""

    def __init__(self, specs: Sequence[RunSpec], now: float = 0.0, next_fault_id: int = 1,
                 ) -> None:
        order = sorted(range(len(specs)), key=lambda i: group_key(specs[i]))
        self.specs: tuple[RunSpec, ...] = tuple(specs[i] for i in order)
        ss = self.specs
        self.names = tuple(s.name for s in ss)
        self._labels = (tuple(s.labels[0] for s in ss), tuple(s.labels[1] for s in ss),
                        tuple(s.labels[2] for s in ss))
        self.row_of = {name: i for i, name in enumerate(self.names)}
        self.now = now
        self.interval: Floats = np.array([s.interval for s in ss], dtype=np.float64)
        self.steps_max: Ints = np.array([s.steps for s in ss], dtype=np.int64)
        self.loop: Bools = np.array([s.loop for s in ss], dtype=np.bool_)
        self.th = detectors.Thresholds([s.detect for s in ss])
        # A recording without a gradient norm reads 0 there: it must not pass for converged.
        no_grad = [i for i, s in enumerate(ss) if isinstance(s.landscape, Replay)
                   and s.landscape.recording is not None
                   and s.landscape.recording.gradient_norm is None]
        self.th.tolerance[no_grad] = -np.inf
        self.th.release[no_grad] = -np.inf
        self.keys = np.array([rng.run_key(s.seed, s.name) for s in ss], dtype=np.uint64)
        self.groups = make_groups(ss, self.keys)
        self._unrecorded = _unrecorded(self.groups)
        # Replays whose steps fall due at their recording's own times.
        self._timed = [g for g in self.groups
                       if isinstance(g.landscape, RecordedLandscape) and g.landscape.timed]
        self.runs = RunState.zeros(len(ss))
        self.window = StallWindow(len(ss), int(self.th.half.max()) if ss else 0)
        self._validation_rows: Ints = np.concatenate(
            [np.arange(g.start, g.stop) for g in self.groups if g.landscape.has_validation]
            or [np.zeros(0, np.int64)]).astype(np.int64)
        self._excess_rows: Ints = np.flatnonzero(
            [s.landscape.optimum is not None for s in ss]).astype(np.int64)
        hw = [s.hardware for s in ss]
        self.hardware = (hardware.Fleet.of(self.names, hw, self.interval)
                         if any(h is not None for h in hw) else None)
        self.durations = hardware.StepDurations(len(ss))
        self._jitter: Floats = np.array([h.step_time_jitter if h else 0.0 for h in hw])
        self.timeline = FaultTimeline(self.row_of, next_fault_id)
        for s in ss:
            for f in s.faults:
                self.timeline.add(s.name, f, now + f.at, "config")
        self.timeline.rebuild()
        self.mods = self.timeline.table.modifiers(now, self.runs.paused)
        for g in self.groups:
            self._reset(g, slice(None), now)
        self._on_boundary(now)

    # ------------------------------------------------------------------ faults and control

    def _on_boundary(self, t: float) -> None:
        """Apply what starts or ends at ``t``: count new faults, restart crashed runs."""
        self.timeline.cross(t)
        was_absent = self.mods.absent
        self.mods = self.timeline.table.modifiers(t, self.runs.paused)
        back = was_absent & ~self.mods.absent
        if back.any():  # a crashed job was rescheduled: it starts again from scratch
            self._restart_rows(back, t)

    def inject(self, run: str, spec: FaultSpec) -> FaultRecord:
        """Start a fault on ``run`` now (its ``at`` is ignored); returns its record.
        FaultTargetError if it cannot apply to the run."""
        target = self.specs[self.row_of[run]]
        problem = hardware.fault_problem(FAULTS[spec.kind], spec.all_params(), target.hardware)
        if problem is None and target.replays:
            problem = recording_problem(spec.kind)
        if problem is not None:
            raise FaultTargetError(f"run {run!r}: {problem}")
        rec = self.timeline.add(run, spec, self.now, "api")
        self.timeline.rebuild()
        self._faults_changed()
        return rec

    def clear(self, run: str, fault_id: str) -> FaultRecord:
        """End a fault now (or drop it if it has not begun); KeyError if the run has none such
        active or to come."""
        rec = self.timeline.clear(run, fault_id, self.now)
        self._faults_changed()
        return rec

    def _faults_changed(self) -> None:
        # The modifiers take the change at once: a crash cleared early brings the run's series
        # back in its current attempt, without the restart that ends a crash's full window.
        self.mods = self.timeline.table.modifiers(self.now, self.runs.paused)
        self._on_boundary(self.now)

    def active_faults(self, run: str) -> list[FaultRecord]:
        """The faults of ``run`` active now."""
        return self.timeline.active(run, self.now)

    def set_paused(self, run: str, paused: bool) -> None:
        """Pause or resume a run: a paused run keeps its series and takes no steps."""
        self.runs.paused[self.row_of[run]] = paused
        self.mods = self.timeline.table.modifiers(self.now, self.runs.paused)

    def restart(self, run: str) -> None:
        """Restart a run from step 0 now, as a rescheduled job."""
        mask = np.zeros(len(self.names), np.bool_)
        mask[self.row_of[run]] = True
        self._restart_rows(mask, self.now)

    def _restart_rows(self, mask: Bools, at: float) -> None:
        self.timeline.restarted([self.names[i] for i in np.flatnonzero(mask)])
        self.mods = self.timeline.table.modifiers(at, self.runs.paused)
        self.runs.restarts[mask] += 1
        self.runs.progress[mask] = 0.0
        for g in self.groups:
            local = np.flatnonzero(mask[g.start:g.stop])
            if local.size:
                self._reset(g, local, at)

    def _counter(self, rows: Index, step: Ints) -> U64:
        return rng.attempt_counter(self.runs.restarts[rows], step)

    def _reset(self, g: Group, local: Index, at: float) -> None:
        """Put group members back at step 0 (the start of an attempt) at time ``at``."""
        rows = g.fleet_rows(local)
        z0 = g.z0[local]
        m = len(z0)
        step = np.zeros(m, np.int64)
        keys, counter = (self.keys[rows], self._counter(rows, step)) if g.random else (None, None)
        with np.errstate(all="ignore"):  # a start far out (init: 1e308) overflows to inf
            loss0, grad0 = g.observe(z0, local, keys, counter)
        g.z[local] = z0
        g.grad[local] = grad0
        g.prev_dw[local] = 0.0
        if g.optimizer is not None:
            g.optimizer.reset(local)
        grad_norm = _row_norm(grad0)
        level0 = detectors.log_loss(loss0)
        conv = detectors.converged(grad_norm, self.th.tolerance[rows])
        no = np.zeros(m, np.bool_)
        zero = np.zeros(m, np.int32)
        self.runs.write(rows, Attempt(
            step=step, loss=loss0, grad_norm=grad_norm, param_absmax=_row_absmax(g.w0[local]),
            lr=self._first_lr(g, z0, local),
            update_norm=np.zeros(m), drift=np.zeros(m), last_step_time=np.broadcast_to(at, m),
            streak=zero, streak_base=loss0, level=level0, peak=level0, rate_streak=zero,
            cosine=np.zeros(m), flip_streak=zero,
            conv_hold=self.th.clear_steps[rows] * conv, osc_hold=zero, stall_hold=zero,
            stall_streak=zero, conv_floor=np.where(conv, loss0, np.inf),
            diverged=no, converged=conv, stalled=no, oscillating=no,
            state=state_of(conv, no, no, step, self.steps_max[rows])))
        self.window.reset(rows, loss0, grad_norm)
        if self.hardware is not None:
            self.durations.reset(rows, at, self.interval[rows])

    def _first_lr(self, g: Group, z0: Floats, local: Index) -> Floats:
        """The learning rate shown at step 0: the schedule's (or a recording's) first."""
        if isinstance(g.landscape, RecordedLandscape):
            return g.landscape.learning_rate(z0, local)
        if g.schedules is None:
            result: Floats = g.base_lr[local]
            return result
        return g.schedules.lr(np.zeros(g.stop - g.start, np.int64))[local]

    # ------------------------------------------------------------------ one step of a group

    def _step_group(self, g: Group, mask: Bools | None) -> None:
        """One optimizer step plus detection for the members of ``g`` selected by ``mask``
        (all of them if None).

        Everything is computed on the group's contiguous block and committed through
        ``mask``: with more than a few percent of rows stepping this beats gathering rows.
        Diverged rows are held: their update is zero, so loss and gradient recompute to the same
        bits, and their step count, timestamps and flags stay as they were.
        """
        s = _Step(g.rows, self.runs.diverged[g.rows].copy(),
                  self.mods if self.mods.any_effect else None)
        self._propose(g, s)
        self._observe(g, s)
        self._hold_non_finite(g, s)
        new, sums = self._detect(g, s, mask)
        self._commit(g, s, mask, new, sums)

    def _propose(self, g: Group, s: _Step) -> None:
        """The update each run takes, where it lands, and the moment it falls due."""
        r, rows, held, mods = self.runs, s.rows, s.held, s.mods
        lr = g.base_lr if g.schedules is None else g.schedules.lr(r.step[rows])
        if mods is not None:
            lr = lr * mods.lr_mult[rows]
        # A fresh array: it is stored as the runs' lr, and base_lr must not be.
        s.lr = lr.copy() if lr is g.base_lr else lr
        s.moving = ~held if mods is None else ~held & ~mods.frozen[rows]
        grad = g.grad
        if g.clip is not None:
            grad = optimizers.clip_grad_norm(grad, r.grad_norm[rows], g.clip)
        s.opt_state = {}
        if isinstance(g.landscape, RecordedLandscape):
            self._replay_step(g, s)
            return
        if g.optimizer is None:  # plain SGD: the seed's arithmetic, nothing else
            direction = grad
        else:
            w = None
            if g.optimizer.needs_parameters:
                w = g.landscape.parameters(g.z, slice(None)) + r.drift[rows][:, None]
            direction, s.opt_state = g.optimizer.step(grad, w)
        s.dw = direction * (-s.lr * s.moving)[:, None]
        s.z = g.z + s.dw
        self._step_and_moment(g, s)
        s.drift = r.drift[rows]
        if mods is not None and self.timeline.table.drifting_rows[rows].any():
            target = self.timeline.table.drift_offset(np.arange(g.start, g.stop), s.stepped_at)
            s.drift = np.where(held, s.drift, target)
            s.z -= (s.drift - r.drift[rows])[:, None]

    def _step_and_moment(self, g: Group, s: _Step) -> None:
        """The step each run reaches and the moment of simulated time it fell due."""
        r = self.runs
        s.step = r.step[s.rows] + ~s.held
        due = self._step_times(g, s.step, slice(None))
        s.stepped_at = np.where(s.held, r.last_step_time[s.rows],
                                self.now - r.progress[s.rows] + due)

    def _replay_step(self, g: Group, s: _Step) -> None:
        """A replay run moves one row on in its recording (none while frozen) and takes the
        learning rate recorded there. A recording holds no update: the detectors see none, so
        the stall verdict is the flat-loss test alone (a recorded gradient norm is a
        minibatch's, too noisy to tell a falling gradient from its noise) and the
        oscillation verdict never comes."""
        ls = g.landscape
        assert isinstance(ls, RecordedLandscape)
        s.z = g.z + s.moving[:, None]
        s.lr = ls.learning_rate(s.z, slice(None))
        s.dw = np.zeros_like(g.grad)
        self._step_and_moment(g, s)
        s.drift = self.runs.drift[s.rows]

    def _step_times(self, g: Group, steps: Ints, local: Index) -> Floats:
        """The progress at which each member's step ``steps`` falls due."""
        if isinstance(g.landscape, RecordedLandscape) and g.landscape.timed:
            return g.landscape.step_times(steps, local)
        result: Floats = steps * self.interval[g.fleet_rows(local)]
        return result

    def _observe(self, g: Group, s: _Step) -> None:
        """The loss and gradient where the update landed, as the faults make them look."""
        rows, mods = s.rows, s.mods
        keys = self.keys[rows] if g.random else None
        s.loss, s.grad = g.observe(s.z, slice(None), keys,
                                   self._counter(rows, s.step) if g.random else None)
        if mods is not None:
            s.grad = s.grad * mods.grad_scale[rows][:, None]
            sigma = mods.noise_sigma[rows]
            if sigma.any():
                s.grad += sigma[:, None] * rng.standard_normal(
                    self.keys[rows], Stream.NOISE_BURST, self._counter(rows, s.step), g.dims)
            s.loss = s.loss * mods.loss_mult[rows]
            nan = mods.nan[rows]
            if nan.any():
                s.loss = np.where(nan, np.nan, s.loss)
        s.grad_norm = _row_norm(s.grad)
        s.absmax = _row_absmax(g.landscape.parameters(s.z, slice(None)) + s.drift[:, None])
        s.prev_loss = self.runs.loss[s.rows]

    def _hold_non_finite(self, g: Group, s: _Step) -> None:
        """A run that produced a non-finite value holds its last finite values."""
        r, rows = self.runs, s.rows
        s.finite = np.isfinite(s.loss) & np.isfinite(s.absmax) & np.isfinite(s.grad_norm)
        if s.finite.all():
            return
        keep = ~s.finite
        s.z[keep] = g.z[keep]
        s.grad[keep] = g.grad[keep]
        s.loss[keep] = s.prev_loss[keep]
        s.grad_norm[keep] = r.grad_norm[rows][keep]
        s.absmax[keep] = r.param_absmax[rows][keep]
        s.dw[keep] = 0.0
        s.drift = np.where(keep, r.drift[rows], s.drift)
        s.moving = s.moving & s.finite

    def _detect(self, g: Group, s: _Step, mask: Bools | None) -> tuple[Attempt, Floats]:
        """Every detector's verdict on the step: the new per-run values, and the stall
        window's running sums."""
        r, th, rows = self.runs, self.th, s.rows
        streak = detectors.rising_streak(s.prev_loss, s.loss, r.streak[rows])
        base = detectors.streak_base(streak, s.loss, r.streak_base[rows])
        level, rate = detectors.smoothed_rate(r.level[rows], detectors.log_loss(s.loss),
                                              th.beta[rows])
        rate_streak = detectors.count_while(rate > th.growth_rate[rows], r.rate_streak[rows])
        peak = r.peak[rows]
        diverged = detectors.diverging(
            s.finite, s.loss, s.absmax, streak, base, th.loss_limit[rows], th.param_limit[rows],
            th.growth_limit[rows], th.growth_factor[rows], rate_streak, level, peak,
            th.log_growth_factor[rows]) | s.held
        peak = np.maximum(peak, level, where=rate_streak == 0, out=peak.copy())
        sums = self._window_sums(g, s)
        # The step of every run of the block when they are all at one (the usual case). Held
        # (diverged) rows do not count: their ring entries are never read before a restart
        # resets them, so the fast path may overwrite them.
        k: int | None = None
        if mask is None and g.half is not None:
            k = int(s.step[int(np.argmin(s.held))])
            if not bool(((s.step == k) | s.held).all()):
                k = None
        blocks = self.window.push(rows, sums, s.step, th.half[rows], g.half, k, mask)
        (older_loss, older_dloss), (recent_loss, recent_dloss) = blocks.read(LOSS_SERIES)
        # The loss noise (the smaller block's sum of |changes|: a jump must not pass for noise),
        # plus the rounding error of the running sums the block sums are differences of.
        flat = _Flat(older_loss - recent_loss, np.abs(older_loss),
                     th.noise_coef[rows] * np.minimum(older_dloss, recent_dloss)
                     + _ROUNDING * np.abs(sums[LOSS]))
        ok = ~diverged
        was = r.converged[rows]
        floor = r.conv_floor[rows]
        conv = detectors.converged(s.grad_norm, th.tolerance[rows])
        if was.any():
            conv |= was & detectors.still_converged(s.grad_norm, s.loss, floor,
                                                    th.release[rows], th.rise[rows])
        conv_hold = detectors.hold(conv, r.conv_hold[rows], th.clear_steps[rows])
        converged = (conv_hold > 0) & ok
        floor = np.where(converged, np.minimum(np.where(was, floor, s.loss), s.loss), np.inf)
        osc = self._oscillation(g, s, blocks, flat, ~converged & ok)
        stall_streak, stall_hold = self._stall(s, blocks, flat, ~converged & ok)
        stalled = (stall_hold > 0) & ~converged & ~osc.oscillating & ok
        return Attempt(
            step=s.step, loss=s.loss, grad_norm=s.grad_norm, param_absmax=s.absmax, lr=s.lr,
            update_norm=np.where(s.held, r.update_norm[rows], osc.step_norm), drift=s.drift,
            last_step_time=s.stepped_at, streak=streak, streak_base=base, level=level,
            peak=peak, rate_streak=rate_streak, cosine=osc.cosine, flip_streak=osc.flips,
            conv_hold=conv_hold, conv_floor=floor, osc_hold=osc.hold, stall_hold=stall_hold,
            stall_streak=stall_streak, diverged=diverged,
            converged=converged, stalled=stalled, oscillating=osc.oscillating,
            state=state_of(converged, stalled, diverged, s.step, self.steps_max[rows])), sums

    def _window_sums(self, g: Group, s: _Step) -> Floats:
        """The stall window's running sums after this step: loss, |its change|, |g . dw| with
        the gradient the step used, and the gradient norm."""
        before = self.window.sums[:, s.rows]
        sums = np.empty_like(before)
        np.add(before[LOSS], s.loss, out=sums[LOSS])
        np.add(before[DLOSS], np.abs(s.loss - s.prev_loss), out=sums[DLOSS])
        np.add(before[EFFECT], np.abs(_row_dot(g.grad, s.dw)), out=sums[EFFECT])
        np.add(before[GRAD], s.grad_norm, out=sums[GRAD])
        return sums

    def _oscillation(self, g: Group, s: _Step, blocks: Blocks, flat: _Flat,
                     open_: Bools) -> _Oscillation:
        """Oscillation: the smoothed cosine of successive updates stayed at or below minus
        its threshold for ``flip_steps`` steps while the loss did not improve (``open_``: not
        converged, not diverged)."""
        r, th, rows = self.runs, self.th, s.rows
        step_norm = _row_norm(s.dw)
        dot = _row_dot(s.dw, g.prev_dw)
        # In one dimension the cosine is the sign of the product.
        cos = (np.sign(dot) if g.dims == 1
               else detectors.update_cosine(dot, step_norm * r.update_norm[rows]))
        cosine, _ = detectors.smoothed_rate(r.cosine[rows], cos, th.beta[rows])
        flips = detectors.count_while(cosine <= th.flip_cosine[rows], r.flip_streak[rows])
        osc = blocks.full & (flips >= th.flip_steps[rows]) & open_
        if osc.any():
            osc &= ~detectors.improving(flat.change, flat.scale, th.osc_improvement[rows])
        hold = detectors.hold(osc, r.osc_hold[rows], th.clear_steps[rows])
        return _Oscillation(step_norm, cosine, flips, hold, (hold > 0) & open_)

    def _stall(self, s: _Step, blocks: Blocks, flat: _Flat,
               open_: Bools) -> tuple[Counts, Counts]:
        """Stall: the loss is flat beyond its noise, the updates barely move it and the
        gradient is not falling (``open_``: not converged, not diverged), on ``stall_confirm``
        consecutive steps; its streak and its countdown."""
        r, th, rows = self.runs, self.th, s.rows
        min_improvement = th.min_improvement[rows]
        relative = min_improvement * flat.scale
        stall = blocks.full & detectors.flat(flat.change, relative, flat.noise) & open_
        if stall.any():
            (_, older_grad), (recent_effect, recent_grad) = blocks.read(UPDATE_SERIES)
            effect = recent_effect * blocks.h
            stall &= ~detectors.moving(effect, relative)
            stall &= ~detectors.converging(older_grad, recent_grad, effect, min_improvement)
        # It begins after stall_confirm steps of the condition; once active, the condition
        # keeps it as for any verdict.
        streak = detectors.count_while(stall, r.stall_streak[rows])
        held = r.stall_hold[rows]
        return streak, detectors.hold(stall & ((streak >= th.stall_confirm[rows]) | (held > 0)),
                                      held, th.clear_steps[rows])

    def _commit(self, g: Group, s: _Step, mask: Bools | None, new: Attempt,
                sums: Floats) -> None:
        """Store the step where ``mask`` holds; the optimizer state only for runs that really
        moved."""
        column = None if mask is None else mask[:, None]
        for dst, src in ((g.z, s.z), (g.grad, s.grad), (g.prev_dw, s.dw)):
            if column is None:
                dst[...] = src
            else:
                np.copyto(dst, src, where=column)
        # Arrays computed afresh this step: when the group is the whole fleet and every member
        # stepped, they replace the stored ones instead of being copied into them.
        if mask is None and g.start == 0 and g.stop == len(self.names):
            self.runs.replace(new)
        else:
            self.runs.write(s.rows, new, mask)
        self.window.commit(s.rows, sums, mask)
        if self.hardware is not None:
            self._time_steps(g, s, mask)
        if s.opt_state:
            assert g.optimizer is not None
            commit = s.moving if mask is None else s.moving & mask
            every = bool(commit.all())
            for name, value in s.opt_state.items():
                if every:
                    g.optimizer.state[name][...] = value
                else:
                    np.copyto(g.optimizer.state[name], value, where=commit[:, None])

    def _time_steps(self, g: Group, s: _Step, mask: Bools | None) -> None:
        """Each step taken lasted from the moment its previous step fell due to its own (the
        step interval over the slow-down of the active faults, a pause or hang included),
        times the run's jitter: the step-duration histogram observes it."""
        took = ~s.held if mask is None else ~s.held & mask
        rows = np.flatnonzero(took) + g.start
        if not rows.size:
            return
        # The moment the step fell due: when the run's progress reached it, at this
        # segment's rate (exactly now for a step due at a fault boundary).
        r, rate, step = self.runs, self.mods.rate[rows], self.runs.step[rows]
        behind = r.progress[rows] - self._times_at(step, rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            moment = self.now - np.where(rate > 0, np.maximum(behind, 0.0) / rate, 0.0)
        jitter = None
        if self._jitter[rows].any():
            z = rng.standard_normal(self.keys[rows], Stream.STEP_TIME,
                                    self._counter(rows, step), 1)[:, 0]
            jitter = np.maximum(0.05, 1.0 + self._jitter[rows] * z)
        self.durations.observe(rows, moment, jitter)

    # ------------------------------------------------------------------ time

    def _due(self, inclusive: bool) -> Ints:
        # Inclusive: steps falling due exactly now are due, for runs that are stepping now.
        # Exclusive (up to a fault boundary): they wait, so that the fault starting at that
        # moment applies to them, or, for a hang or crash, stops them.
        eps = np.where(self.mods.rate > 0, _TIME_EPS, -_TIME_EPS) if inclusive else -_TIME_EPS
        progress = self.runs.progress
        due = np.floor(progress / self.interval + eps).astype(np.int64)
        if self._timed:
            ahead: Floats = progress + eps * self.interval
            for g in self._timed:
                ls = g.landscape
                assert isinstance(ls, RecordedLandscape)
                due[g.rows] = ls.due_steps(ahead[g.rows], slice(None))
        return np.minimum(due, self.steps_max)

    def _times_at(self, steps: Ints, rows: Ints | None = None) -> Floats:
        """The progress at which each run (of ``rows``; all by default) reaches ``steps``:
        ``steps * step_interval``, or the recording's own time for a timed replay."""
        out: Floats = steps * (self.interval if rows is None else self.interval[rows])
        for g in self._timed:
            ls = g.landscape
            assert isinstance(ls, RecordedLandscape)
            if rows is None:
                out[g.rows] = ls.step_times(steps[g.rows], slice(None))
                continue
            sel = (rows >= g.start) & (rows < g.stop)
            if sel.any():
                out[sel] = ls.step_times(steps[sel], rows[sel] - g.start)
        return out

    def advance(self, now: float) -> Events:
        """Bring every run to simulated time ``now`` (seconds); return what changed."""
        before_state = self.runs.state.copy()
        before_restarts = self.runs.restarts.copy()
        # Rows that are not stepping are computed too and then masked out; a held, diverged
        # row may overflow there, harmlessly.
        with np.errstate(all="ignore"):
            while True:
                boundary = self.timeline.table.next_boundary(self.now)
                if boundary > now:
                    self._run_until(max(self.now, now), inclusive=True)
                    break
                self._run_until(boundary, inclusive=False)
                self._on_boundary(boundary)
        return self._events(before_state, before_restarts)

    def _run_until(self, t: float, inclusive: bool) -> None:
        """Advance the clock to ``t`` with the current modifiers, stepping what falls due."""
        r = self.runs
        r.progress += (t - self.now) * self.mods.rate
        self.now = t
        period = self._times_at(self.steps_max) + self.interval
        while True:
            due = self._due(inclusive)
            need = (r.step < due) & ~r.diverged
            while need.any():
                for g in self.groups:
                    block = need[g.start:g.stop]
                    if (block | r.diverged[g.start:g.stop]).all():
                        self._step_group(g, None)
                    elif block.any():
                        self._step_group(g, block)
                need = (r.step < due) & ~r.diverged
            restart = self.loop & (r.progress >= period - _TIME_EPS)
            if not restart.any():
                break
            leftover = r.progress[restart] - period[restart]
            self._restart_rows(restart, t)
            r.progress[restart] = leftover
            # An attempt restarts one interval after its last step (or at that moment after a
            # divergence), whatever the tick.
            r.last_step_time[restart] = t - leftover
            self.durations.at[restart] = t - leftover

    def next_due(self) -> float:
        """Simulated time at which the next step, restart or fault boundary falls due."""
        r, rate = self.runs, self.mods.rate
        next_step = np.where(r.step < self.steps_max, self._times_at(r.step + 1), np.inf)
        next_step = np.where(r.diverged, np.inf, next_step)
        restart = np.where(self.loop, self._times_at(self.steps_max) + self.interval, np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            wait = np.where(rate > 0, (np.minimum(next_step, restart) - r.progress) / rate,
                            np.inf)
        soonest = float(wait.min()) if len(wait) else float("inf")
        return min(self.now + max(0.0, soonest), self.timeline.table.next_boundary(self.now))

    def _events(self, before_state: NDArray[np.int8], before_restarts: Ints) -> Events:
        r = self.runs
        changed = np.flatnonzero(r.state != before_state)
        restarted = np.flatnonzero(r.restarts != before_restarts)
        injected, cleared = self.timeline.drain()
        return Events(
            transitions=tuple(
                Transition(self.names[i], STATES[before_state[i]], STATES[r.state[i]],
                           int(r.step[i]), float(r.loss[i]))
                for i in changed),
            restarts=tuple((self.names[i], int(r.restarts[i])) for i in restarted),
            faults_injected=injected,
            faults_cleared=cleared,
        )

    # ------------------------------------------------------------------ views

    def snapshot(self, generation: int, wall_epoch: float = 0.0, speed: float = 1.0) -> Snapshot:
        """An immutable copy of the exported state; times become ``wall_epoch + sim / speed``."""
        r = self.runs
        alerts = np.stack([r.diverged, r.stalled, r.oscillating], axis=1)
        nan = self.mods.nan
        loss, grad_norm = r.loss, r.grad_norm
        if nan.any():  # the NaN fault shows in the series while it lasts
            loss = np.where(nan, np.nan, loss)
            grad_norm = np.where(nan, np.nan, grad_norm)
        active, injected = self.timeline.ground_truth(self.now, self.names)
        return Snapshot(
            generation=generation, names=self.names, landscapes=self._labels[0],
            optimizers=self._labels[1], schedules=self._labels[2],
            loss=frozen(loss), gradient_norm=frozen(grad_norm), learning_rate=frozen(r.lr),
            update_norm=frozen(r.update_norm), parameter_absmax=frozen(r.param_absmax),
            steps=frozen(r.step.astype(np.float64)),
            restarts=frozen(r.restarts.astype(np.float64)),
            last_step_timestamp=frozen(wall_epoch + r.last_step_time / speed),
            state=frozen(r.state), alerts=frozen(alerts),
            parameters=tuple((g.start, frozen(self._parameters(g))) for g in self.groups
                             if g.dims <= MAX_EXPORTED_DIMS
                             and not isinstance(g.landscape, RecordedLandscape)),
            present=frozen(~self.mods.absent), fault_pairs=self.timeline.pairs,
            fault_active=frozen(active), faults_injected=frozen(injected),
            validation_rows=frozen(self._validation_rows),
            validation_loss=frozen(self._validation_loss()),
            excess_rows=frozen(self._excess_rows),
            excess_loss=frozen(self._excess_loss(nan)),
            hardware=self.hardware,
            telemetry=self._telemetry(),
            unrecorded=self._unrecorded,
        )

    def _telemetry(self) -> hardware.Telemetry | None:
        """The hardware series now: a job computes while steps fall due and it has not
        finished (a diverged run's job goes on computing NaN)."""
        if self.hardware is None:
            return None
        r, m = self.runs, self.mods
        computing = (m.rate > 0) & ~m.absent & (r.step < self.steps_max)
        return hardware.telemetry(
            self.hardware, self.durations, r.step.astype(np.float64), ~m.absent, computing,
            m.rate, m.throttle, m.straggler, m.straggler_factor, m.lost_gpu)

    def _excess_loss(self, nan: Bools) -> Floats:
        """The loss above the minimum of the runs whose landscape knows it (NaN while the NaN
        fault lasts, as the loss)."""
        rows = self._excess_rows
        if not len(rows):
            return np.zeros(0)
        with np.errstate(all="ignore"):  # a diverged run's loss overflows to inf
            excess = np.concatenate([g.landscape.excess(g.z, slice(None)) for g in self.groups])
        return np.where(nan[rows], np.nan, excess[rows])

    def _validation_loss(self) -> Floats:
        with np.errstate(all="ignore"):  # a diverged run's held-out loss overflows to inf
            parts = [g.landscape.validation_loss(g.z, slice(None)) for g in self.groups
                     if g.landscape.has_validation]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _parameters(self, g: Group, local: Index = slice(None)) -> Floats:
        w = g.landscape.parameters(g.z[local], local)
        result: Floats = w + self.runs.drift[g.fleet_rows(local)][:, None]
        return result

    def parameters(self, run: str) -> Floats:
        """The current parameter vector of one run (a copy)."""
        i = self.row_of[run]
        g = self._group_of(i)
        params: Floats = self._parameters(g, np.array([i - g.start]))[0]
        return params

    def surface(self, run: str, w: Floats) -> tuple[Floats, Floats]:
        """The noise-free loss and gradient of ``run``'s landscape, as it stands now (drift
        included), at the parameter vectors ``w`` (rows)."""
        i = self.row_of[run]
        g = self._group_of(i)
        local = i - g.start
        z = w - self.runs.drift[i] - g.landscape.c[local]
        return g.landscape.surface(z, local)

    def reconfigured(self, specs: Sequence[RunSpec]) -> Engine:
        """A new engine for ``specs`` at the same time; runs whose spec is unchanged keep all
        their progress and faults, new or changed runs start from step 0, removed runs are
        dropped."""
        new = Engine(specs, now=self.now, next_fault_id=self.timeline.next_id)
        kept = [(self.row_of[s.name], new.row_of[s.name]) for s in new.specs
                if s.name in self.row_of and self.specs[self.row_of[s.name]] == s]
        if not kept:
            return new
        src = np.array([k[0] for k in kept])
        dst = np.array([k[1] for k in kept])
        for name in RunState.names():
            getattr(new.runs, name)[dst] = getattr(self.runs, name)[src]
        new.window.take_over(self.window, src, dst, self.runs.step[src])
        new.durations.take_over(self.durations, src, dst)
        for s_row, d_row in kept:
            sg, dg = self._group_of(s_row), new._group_of(d_row)
            dg.take_row(d_row - dg.start, sg, s_row - sg.start)
        new.timeline.carry_over(self.timeline, {self.names[i] for i, _ in kept})
        new.mods = new.timeline.table.modifiers(new.now, new.runs.paused)
        return new

    def _group_of(self, row: int) -> Group:
        for g in self.groups:
            if g.start <= row < g.stop:
                return g
        raise IndexError(row)
