"""Faults on the runs' timelines and what they do to each run at a moment. Pure: time is
passed in.

A fault is active on [start, end) in simulated seconds. ``FaultTimeline`` keeps the faults of
the fleet that are active or still to come (scheduled by the config or injected through the
API; at most ``MAX_FAULTS_PER_RUN`` a run), gives them ids, counts the windows that began and
reports the ones that began or ended. A fault that ended leaves every table, so the cost of a
change depends on the faults alive, not on how many there ever were; what an ended drift did
(the optimum stays where it moved) is kept per run until the run restarts. ``FaultTable``
holds the faults as arrays, so that the modifiers for all runs at a moment (``modifiers``)
and the next moment at which any fault starts or ends (``next_boundary``) are a few
vectorized operations. Each kind's effects come from its declaration in
``simulator.faults.catalogue``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.arrays import Bools, Floats, Ints
from simulator.faults.catalogue import FAULT_KINDS, FAULTS, FaultSpec

# Faults active or to come on one run at a time: an injection beyond it is refused.
MAX_FAULTS_PER_RUN = 16


class FaultTargetError(ValueError):
    """A fault that cannot apply to the run it targets (a GPU the run does not have)."""


class FaultLimitError(ValueError):
    """A run already has ``MAX_FAULTS_PER_RUN`` faults active or to come."""


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
class FaultEvent:
    """A fault window that began or ended."""

    run: str
    id: str
    kind: str
    source: str

    @classmethod
    def of(cls, rec: FaultRecord) -> FaultEvent:
        """The event of a record."""
        return cls(rec.run, rec.id, rec.kind, rec.source)


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
    # Hardware: how many times slower every GPU computes (thermal throttle), the straggling
    # rank and how much slower it computes, the GPU lost (-1: none).
    throttle: Floats
    straggler: Ints
    straggler_factor: Floats
    lost_gpu: Ints
    loss_mult: Floats  # the reported loss is multiplied (loss_spike)


def _effect(spec: FaultSpec, name: str | None, neutral: float) -> float:
    return spec.param(name) if name is not None else neutral


class FaultTable:
    """Every fault of the fleet as arrays (rebuilt whenever a fault is added or cleared).

    Each record carries every effect, the neutral value (1 for a factor, 0 for noise) where its
    kind has none, so that one multiplication per effect over the active records, in record
    order, applies them all.
    """

    def __init__(self, records: Sequence[FaultRecord], row_of: Mapping[str, int],
                 n: int, settled_drift: Mapping[str, float] | None = None) -> None:
        self.n = n
        kinds = [FAULTS[r.kind] for r in records]
        both = list(zip((r.spec for r in records), kinds, strict=True))
        self.row = np.array([row_of[r.run] for r in records], dtype=np.int64)
        self.kind = np.array([FAULT_KINDS.index(r.kind) for r in records], dtype=np.int64)
        self.start = np.array([r.start for r in records], dtype=np.float64)
        self.end = np.array([r.end for r in records], dtype=np.float64)
        self.lr = np.array([_effect(s, k.scales_lr, 1.0) for s, k in both])
        self.grad = np.array([_effect(s, k.scales_gradient, 1.0) for s, k in both])
        self.loss = np.array([_effect(s, k.scales_loss, 1.0) for s, k in both])
        self.rate = np.array([1.0 / s.param(k.slows) if k.slows else 1.0 for s, k in both])
        self.noise = np.array([math.prod(s.param(p) for p in k.noise) if k.noise else 0.0
                               for s, k in both])
        self.stops = np.array([k.stops for k in kinds], dtype=np.bool_)
        self.freezes = np.array([k.freezes for k in kinds], dtype=np.bool_)
        self.nan = np.array([k.nan for k in kinds], dtype=np.bool_)
        self.absent = np.array([k.absent for k in kinds], dtype=np.bool_)
        self.throttle = np.array([_effect(s, k.throttles, 1.0) for s, k in both])
        self.straggler = np.array([int(s.param(k.straggles[0])) if k.straggles else -1
                                   for s, k in both], dtype=np.int64)
        self.straggler_factor = np.array([s.param(k.straggles[1]) if k.straggles else 1.0
                                          for s, k in both])
        self.lost_gpu = np.array([int(s.param(k.loses_gpu)) if k.loses_gpu else -1
                                  for s, k in both], dtype=np.int64)
        drift = np.array([k.drifts is not None for k in kinds], dtype=np.bool_)
        self.drift_rows = self.row[drift]
        self.drift_start = self.start[drift]
        self.drift_end = self.end[drift]
        # The planned window sets the speed; clearing a drift early stops it where it is.
        self.drift_rate = np.array([s.param(k.drifts) / s.duration for s, k in both
                                    if k.drifts is not None])
        # Where ended drifts left each run's optimum (0 for most runs).
        self.settled: Floats = np.zeros(n)
        for run, offset in (settled_drift or {}).items():
            self.settled[row_of[run]] = offset
        self.drifting_rows: Bools = self.settled != 0.0
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
        throttle = np.ones(n)
        straggler = np.full(n, -1, np.int64)
        straggler_factor = np.ones(n)
        lost = np.full(n, -1, np.int64)
        loss_mult = np.ones(n)
        if act.any():
            rows = self.row[act]
            np.multiply.at(lr_mult, rows, self.lr[act])
            np.multiply.at(grad_scale, rows, self.grad[act])
            np.multiply.at(loss_mult, rows, self.loss[act])
            np.multiply.at(rate, rows, self.rate[act])
            rate[rows[self.stops[act]]] = 0.0
            frozen[rows[self.freezes[act]]] = True
            nan[rows[self.nan[act]]] = True
            absent[rows[self.absent[act]]] = True
            np.add.at(noise, rows, self.noise[act])
            np.multiply.at(throttle, rows, self.throttle[act])
            # One straggler and one lost GPU per run at a time: the latest record wins.
            strag = self.straggler[act] >= 0
            straggler[rows[strag]] = self.straggler[act][strag]
            straggler_factor[rows[strag]] = self.straggler_factor[act][strag]
            gone = self.lost_gpu[act] >= 0
            lost[rows[gone]] = self.lost_gpu[act][gone]
        any_effect = bool(act.any() or self.drifting_rows.any())
        return Modifiers(lr_mult, grad_scale, frozen, nan, noise, rate, absent, any_effect,
                         throttle, straggler, straggler_factor, lost, loss_mult)

    def drift_offset(self, rows: Ints, times: Floats) -> Floats:
        """How far the optimum of each run in ``rows`` has moved by ``times`` (one per row).

        A drift moves it linearly by ``shift`` over its window and leaves it there.
        """
        out = self.settled[rows]
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


class FaultTimeline:
    """Every fault of a fleet on its runs' clocks; see the module docstring.

    ``cross(t)`` must be called at every fault boundary (and after every change) to count the
    windows that began and to collect the events, which ``drain`` hands out.
    """

    def __init__(self, row_of: Mapping[str, int], next_id: int = 1) -> None:
        self.row_of = row_of
        self.next_id = next_id
        self.records: list[FaultRecord] = []  # active or to come
        # Windows begun per (run, kind): trainsim_faults_injected_total.
        self.injected: dict[tuple[str, str], int] = {}
        # Where ended drifts left each run's optimum, until the run restarts.
        self.settled_drift: dict[str, float] = {}
        self._events: list[tuple[str, FaultEvent]] = []
        self.table = FaultTable([], row_of, len(row_of))
        self.pairs: tuple[tuple[int, str], ...] = ()

    def add(self, run: str, spec: FaultSpec, start: float, source: str) -> FaultRecord:
        """Put a fault on ``run``'s timeline at ``start``; ``rebuild`` makes it count. An
        injection (``source`` "api") beyond ``MAX_FAULTS_PER_RUN`` faults active or to come on
        the run is a FaultLimitError; a config's schedule is bounded by the config itself."""
        if source == "api" and sum(1 for r in self.records
                                   if r.run == run) >= MAX_FAULTS_PER_RUN:
            raise FaultLimitError(f"run {run!r} has {MAX_FAULTS_PER_RUN} faults active or to "
                                  "come, the most a run can have: clear one first")
        rec = FaultRecord(id=str(self.next_id), run=run, spec=spec, start=start,
                          end=start + spec.duration, source=source)
        self.next_id += 1
        self.records.append(rec)
        return rec

    def rebuild(self) -> None:
        """Rebuild the arrays after records were added, changed or removed."""
        self.table = FaultTable(self.records, self.row_of, len(self.row_of),
                                self.settled_drift)
        # A (run, kind) keeps its ground-truth series once it had a fault, ended or not.
        kinds = ({(self.row_of[r.run], r.kind) for r in self.records}
                 | {(self.row_of[run], kind) for run, kind in self.injected})
        self.pairs = tuple(sorted(kinds, key=lambda p: (p[0], FAULT_KINDS.index(p[1]))))

    def cross(self, t: float) -> None:
        """Count the windows begun by ``t``, note those that begin or end at ``t``, and drop
        the faults that have ended by ``t``."""
        ended = []
        for rec in self.records:
            if not rec.counted and rec.start <= t:
                rec.counted = True
                key = (rec.run, rec.kind)
                self.injected[key] = self.injected.get(key, 0) + 1
                self._events.append(("injected", FaultEvent.of(rec)))
            if rec.end == t:
                self._events.append(("cleared", FaultEvent.of(rec)))
            if rec.end <= t:
                ended.append(rec)
        if ended:
            for rec in ended:
                drifts = FAULTS[rec.kind].drifts
                if drifts is not None and rec.end > rec.start:
                    # Moved at the planned window's speed, for as long as it lasted.
                    moved = rec.spec.param(drifts) * (rec.end - rec.start) / rec.spec.duration
                    self.settled_drift[rec.run] = self.settled_drift.get(rec.run, 0.0) + moved
            self.records = [r for r in self.records if r.end > t]
            self.rebuild()

    def restarted(self, runs: Sequence[str]) -> None:
        """Runs that start afresh: what ended drifts did to them is gone."""
        if any(self.settled_drift.pop(run, None) is not None for run in runs):
            self.rebuild()

    def clear(self, run: str, fault_id: str, now: float) -> FaultRecord:
        """End a fault now (or drop it if it has not begun); KeyError if the run has no such
        fault active or to come (one that ended is gone, as for a read)."""
        for rec in self.records:
            if rec.run == run and rec.id == fault_id and rec.end > now:
                break
        else:
            raise KeyError(fault_id)
        if rec.start > now:
            self.records.remove(rec)
        else:
            rec.end = now
            self._events.append(("cleared", FaultEvent.of(rec)))
        self.rebuild()
        return rec

    def active(self, run: str, now: float) -> list[FaultRecord]:
        """The faults of ``run`` active at ``now``."""
        return [r for r in self.records if r.run == run and r.start <= now < r.end]

    def drain(self) -> tuple[tuple[FaultEvent, ...], tuple[FaultEvent, ...]]:
        """The windows that began and those that ended since the last call."""
        events, self._events = self._events, []
        return (tuple(e for what, e in events if what == "injected"),
                tuple(e for what, e in events if what == "cleared"))

    def ground_truth(self, now: float, names: Sequence[str]) -> tuple[Bools, Floats]:
        """For each of ``pairs``: whether a fault of that kind is active on the run, and how
        many of its windows began (``names``: the run of each row)."""
        act = self.table.active(now)
        active = {(int(r), FAULT_KINDS[k])
                  for r, k in zip(self.table.row[act], self.table.kind[act], strict=True)}
        return (np.array([p in active for p in self.pairs], dtype=np.bool_),
                np.array([float(self.injected.get((names[r], k), 0)) for r, k in self.pairs]))

    def carry_over(self, old: FaultTimeline, runs: set[str]) -> None:
        """Take over ``old``'s faults and counts of ``runs`` (kept across a reload), in place of
        this timeline's own for them."""
        self.records = ([r for r in self.records if r.run not in runs]
                        + [r for r in old.records if r.run in runs])
        self.injected.update({k: v for k, v in old.injected.items() if k[0] in runs})
        self.settled_drift.update({k: v for k, v in old.settled_drift.items() if k in runs})
        self.rebuild()
