"""The recent past of every run, as the daemon exported it: what the live page plots.

The daemon hands every snapshot it publishes to ``History.record``. Each run that took a step,
restarted, or changed state, alerts or faults since the previous one gets an entry: its
exported values at that moment, bit for bit. Entries go to a ring of ``capacity`` per run
(arrays slot x run, so one publication writes a few contiguous rows), numbered by ``seq``,
which counts every entry the run ever had and never goes back, so a client asks for what is
new with ``since`` even across restarts, where the step counts start again.

Pure apart from its own arrays: no clock, no I/O.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Ints
from simulator.engine import ALERTS, STATES, Snapshot
from simulator.faults.catalogue import FAULT_KINDS

# Entries per run by default, and across the whole fleet at most. An entry is 85 bytes, plus 8
# a parameter for the path of runs of at most 8 parameters (as wide as the widest of them): for
# the seed's runs 93 bytes, 600 entries 55 KiB a run; a fleet of 10,000 1-D runs keeps 50
# entries each (about 44 MiB in all).
DEFAULT_ENTRIES = 600
FLEET_ENTRIES = 500_000
# Parameters are kept for the runs whose parameters are exported (at most MAX_EXPORTED_DIMS):
# the live page draws the path of those of one or two.
# The exported float series kept, by their name in the API, and the snapshot field of each.
FLOATS = (("step", "steps"), ("time", "last_step_timestamp"), ("attempt", "restarts"),
          ("loss", "loss"), ("excess_loss", "excess_loss_by_run"),
          ("validation_loss", "validation_loss_by_run"), ("gradient_norm", "gradient_norm"),
          ("learning_rate", "learning_rate"), ("update_norm", "update_norm"),
          ("parameter_absmax", "parameter_absmax"))
_ALERT_BITS = (1 << np.arange(len(ALERTS))).astype(np.uint8)


def default_capacity(runs: int) -> int:
    """Entries per run when the config does not say: ``DEFAULT_ENTRIES``, fewer in fleets
    so large that the whole would pass ``FLEET_ENTRIES`` (at least 10)."""
    return max(10, min(DEFAULT_ENTRIES, FLEET_ENTRIES // max(runs, 1)))


class History:
    """The last ``capacity`` entries of every run of one fleet; see the module docstring."""

    def __init__(self, snap: Snapshot, capacity: int) -> None:
        n = len(snap)
        self.names = snap.names
        self.row_of = {name: i for i, name in enumerate(snap.names)}
        self.capacity = capacity
        self.count: Ints = np.zeros(n, np.int64)  # entries ever recorded: the last one's seq
        self.floats = {name: np.zeros((capacity, n)) for name, _ in FLOATS}
        self.state = np.zeros((capacity, n), np.int8)
        self.alerts = np.zeros((capacity, n), np.uint8)
        self.faults = np.zeros((capacity, n), np.uint16)
        self.present = np.zeros((capacity, n), np.bool_)
        # The path of the runs whose parameters the snapshot carries, in their own slots, as
        # wide as the widest of them.
        small = [(first + i, w.shape[1]) for first, w in snap.parameters
                 for i in range(w.shape[0])]
        self.path_slot = {row: k for k, (row, _) in enumerate(small)}
        self.dims = {row: d for row, d in small}
        self._path_of = np.full(n, -1, np.int64)  # the same, as an array: -1 for no path
        self._path_of[[row for row, _ in small]] = np.arange(len(small))
        width = max((d for _, d in small), default=0)
        self.path = np.full((capacity, len(small), width), np.nan)
        # What each run's last entry was recorded from; a run with none yet is fresh.
        self._last: tuple[NDArray[Any], ...] = tuple(np.zeros(n) for _ in range(6))
        self._fresh = np.ones(n, np.bool_)
        self._lock = threading.Lock()

    def record(self, snap: Snapshot) -> None:
        """Add an entry for every run whose step, attempt, state, alerts, faults or presence
        changed since its last one."""
        if not self.capacity:
            return
        alerts = snap.alerts.astype(np.uint8) @ _ALERT_BITS
        key = (snap.steps, snap.restarts, snap.state, alerts, snap.fault_bits(), snap.present)
        changed = self._fresh.copy()
        for now, before in zip(key, self._last, strict=True):
            changed |= now != before
        self._last = key
        self._fresh[:] = False
        changed_rows = np.flatnonzero(changed)
        if not changed_rows.size:
            return
        with self._lock:
            slot: Any = self.count[changed_rows] % self.capacity
            rows: Any = changed_rows
            if rows.size == len(changed) and (slot == slot[0]).all():
                # Every run at the same slot (the usual tick): one contiguous row per column.
                rows, slot = slice(None), slot[0]
            for name, field in FLOATS:
                self.floats[name][slot, rows] = getattr(snap, field)[rows]
            self.state[slot, rows] = snap.state[rows]
            self.alerts[slot, rows] = alerts[rows]
            self.faults[slot, rows] = key[4][rows]
            self.present[slot, rows] = snap.present[rows]
            self._record_paths(snap, changed)
            self.count[rows] += 1

    def _record_paths(self, snap: Snapshot, changed: NDArray[np.bool_]) -> None:
        for first, w in snap.parameters:
            local = np.flatnonzero(changed[first:first + w.shape[0]])
            if local.size:
                rows = local + first
                self.path[self.count[rows] % self.capacity, self._path_of[rows],
                          :w.shape[1]] = w[local]

    def carried(self, snap: Snapshot, capacity: int) -> History:
        """A history for ``snap``'s fleet (after a reload) that keeps the entries of the runs
        it still has, under their names and seqs; ``record(snap)`` comes next."""
        new = History(snap, capacity)
        kept = [(self.row_of[name], i) for i, name in enumerate(new.names)
                if name in self.row_of]
        if not kept or not capacity or not self.capacity:
            return new
        src, dst = (np.array(side, dtype=np.int64) for side in zip(*kept, strict=True))
        with self._lock:
            # Every (entry back, run) pair at once: seq, and the slot it has on each side.
            seq = self.count[src][None, :] - np.arange(min(self.capacity, capacity))[:, None]
            ok = seq >= 1
            s, d = np.broadcast_to(src, seq.shape)[ok], np.broadcast_to(dst, seq.shape)[ok]
            old, fresh = (seq[ok] - 1) % self.capacity, (seq[ok] - 1) % capacity
            for name in self.floats:
                new.floats[name][fresh, d] = self.floats[name][old, s]
            for mine, theirs in ((new.state, self.state), (new.alerts, self.alerts),
                                 (new.faults, self.faults), (new.present, self.present)):
                mine[fresh, d] = theirs[old, s]
            paths = (self._path_of[s] >= 0) & (new._path_of[d] >= 0)
            width = min(self.path.shape[2], new.path.shape[2])
            new.path[fresh[paths], new._path_of[d[paths]], :width] = \
                self.path[old[paths], self._path_of[s[paths]], :width]
        new.count[dst] = self.count[src]
        new._last = tuple(np.zeros(len(new.names), a.dtype) for a in self._last)
        for mine, theirs in zip(new._last, self._last, strict=True):
            mine[dst] = theirs[src]
        new._fresh[dst] = False
        return new

    def entries(self, run: str, since: int = 0) -> dict[str, Any]:
        """The entries of ``run`` after seq ``since``, oldest first, as columns (KeyError for
        an unknown run)."""
        i = self.row_of[run]
        with self._lock:
            last = int(self.count[i])
            first = max(since, last - self.capacity, 0)
            seq = np.arange(first + 1, last + 1, dtype=np.int64)
            slots = (seq - 1) % max(self.capacity, 1)
            columns: dict[str, Any] = {"seq": seq.tolist()}
            for name, _ in FLOATS:
                columns[name] = self.floats[name][slots, i].tolist()
            for name in ("step", "attempt"):
                columns[name] = [int(v) for v in columns[name]]
            columns["state"] = [STATES[s] for s in self.state[slots, i].tolist()]
            columns["alerts"] = [[a for b, a in enumerate(ALERTS) if bits >> b & 1]
                                 for bits in self.alerts[slots, i].tolist()]
            columns["faults"] = [[k for b, k in enumerate(FAULT_KINDS) if bits >> b & 1]
                                 for bits in self.faults[slots, i].tolist()]
            columns["present"] = self.present[slots, i].tolist()
            if i in self.path_slot:
                columns["parameters"] = self.path[slots, self.path_slot[i], :self.dims[i]].tolist()
        return {"run": run, "capacity": self.capacity, "last": last, "columns": columns}
