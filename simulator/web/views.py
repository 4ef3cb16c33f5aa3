"""The simulation as the control API and the live page show it: JSON-shaped views of the
engine and its latest snapshot. Pure: the daemon calls them under its lock."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.arrays import Bools, Floats
from simulator.engine import ALERTS, STATES, Engine, Snapshot
from simulator.faults.catalogue import FAULT_KINDS
from simulator.faults.timeline import FaultRecord

# How the fleet table orders runs by severity: a diverged run first, a converged or finished
# one last; within a state, more alerts and an active fault come first.
_STATE_SEVERITY = {"diverged": 3, "stalled": 2, "running": 1, "converged": 0, "finished": 0}
SORT_KEYS = ("severity", "run", "state", "step", "loss", "learning_rate")
# The most points a landscape view evaluates per dimension.
MAX_POINTS = {1: 500, 2: 100}


def finite_or_none(x: float) -> float | None:
    """``x``, or None for NaN and infinities (JSON has no spelling for them)."""
    return x if math.isfinite(x) else None


def fault_view(rec: FaultRecord, now: float) -> dict[str, Any]:
    """One fault."""
    return {
        "id": rec.id,
        "run": rec.run,
        "kind": rec.kind,
        "source": rec.source,
        "active": rec.start <= now < rec.end,
        "duration_seconds": finite_or_none(rec.spec.duration),
        "remaining_seconds": finite_or_none(max(0.0, rec.end - now)),
        "params": rec.spec.all_params(),
    }


def run_view(engine: Engine, snap: Snapshot, i: int) -> dict[str, Any]:
    """Run ``i`` (engine row) now."""
    r = engine.runs
    name = engine.names[i]
    return {
        "run": name,
        "state": STATES[r.state[i]],
        "step": int(r.step[i]),
        "loss": finite_or_none(float(snap.loss[i])) if i < len(snap) else None,
        "gradient_norm": finite_or_none(float(r.grad_norm[i])),
        "learning_rate": float(r.lr[i]),
        "restarts": int(r.restarts[i]),
        "paused": bool(r.paused[i]),
        "present": bool(~engine.mods.absent[i]),
        "alerts": [a for a, on in zip(ALERTS, (r.diverged[i], r.stalled[i],
                                                r.oscillating[i]), strict=True) if on],
        "faults": [fault_view(f, engine.now) for f in engine.active_faults(name)],
    }


@dataclass(frozen=True)
class FleetQuery:
    """Which page of the fleet table, in which order, filtered how."""

    offset: int = 0
    limit: int = 50
    sort: str = "severity"
    descending: bool = True
    text: str = ""  # a part of the run's name
    state: str | None = None


def _order(snap: Snapshot, faults: np.ndarray[Any, Any], sort: str,
           descending: bool) -> np.ndarray[Any, Any]:
    """Row indices in the order of ``sort``; ties, and NaN losses last, in name order."""
    by_name = np.argsort(np.array(snap.names, dtype=object), kind="stable")
    if sort == "run":
        return by_name[::-1] if descending else by_name
    key: np.ndarray[Any, Any]
    if sort == "severity":
        severity = np.array([_STATE_SEVERITY[s] for s in STATES])[snap.state] * 8
        key = severity + snap.alerts.sum(axis=1) * 2 + (faults != 0)
    else:
        columns: dict[str, np.ndarray[Any, Any]] = {
            "state": snap.state, "step": snap.steps, "loss": snap.loss,
            "learning_rate": snap.learning_rate}
        key = columns[sort]
    key = key.astype(np.float64)
    return by_name[np.argsort(-key[by_name] if descending else key[by_name], kind="stable")]


def fleet_view(snap: Snapshot, paused: Bools, q: FleetQuery) -> dict[str, Any]:
    """A page of the fleet table: counts by state, and the rows of the runs asked for."""
    faults = snap.fault_bits()
    keep = np.ones(len(snap), np.bool_)
    if q.text:
        keep &= np.array([q.text in name for name in snap.names], dtype=np.bool_)
    if q.state is not None:
        keep &= snap.state == STATES.index(q.state)
    order = _order(snap, faults, q.sort, q.descending)
    order = order[keep[order]]
    rows = order[q.offset:q.offset + q.limit].tolist()
    counts = np.bincount(snap.state, minlength=len(STATES)).tolist()
    return {
        "total": len(snap),
        "matched": int(keep.sum()),
        "states": dict(zip(STATES, counts, strict=True)),
        "runs": [{
            "run": snap.names[i],
            "state": STATES[snap.state[i]],
            "step": int(snap.steps[i]),
            "loss": finite_or_none(float(snap.loss[i])),
            "gradient_norm": finite_or_none(float(snap.gradient_norm[i])),
            "learning_rate": float(snap.learning_rate[i]),
            "alerts": [a for j, a in enumerate(ALERTS) if snap.alerts[i, j]],
            "faults": [k for b, k in enumerate(FAULT_KINDS) if int(faults[i]) >> b & 1],
            "paused": bool(paused[i]),
            "present": bool(snap.present[i]),
        } for i in rows],
    }


def landscape_view(engine: Engine, run: str, lo: Floats, hi: Floats,
                   points: int) -> dict[str, Any]:
    """``run``'s loss (noise-free, as the landscape stands now) on a grid over [lo, hi]
    (one axis per parameter, 1 or 2 of them), and at the current parameters its loss and
    gradient: the cost curve and its tangent, or the contour map."""
    axes = [np.linspace(a, b, points) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    grid = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    w = engine.parameters(run)
    with np.errstate(all="ignore"):
        loss, _ = engine.surface(run, grid)
        at_loss, at_grad = engine.surface(run, w[None, :])
    values = loss.reshape([points] * len(axes))
    return {
        "run": run,
        "axes": [a.tolist() for a in axes],
        "loss": np.where(np.isfinite(values), values, np.nan).tolist(),
        "at": {"parameters": w.tolist(), "loss": float(at_loss[0]),
               "gradient": at_grad[0].tolist()},
    }
