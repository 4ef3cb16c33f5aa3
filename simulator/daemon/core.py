"""The daemon: wires config, engine, exposition and clock together. The only place with a
clock.

``Daemon.tick()`` reads the clock, advances the engine, logs what changed and swaps in a new
snapshot. Scrapes read the current snapshot and never advance anything. Tests may pass their
own ``clock`` and call ``tick()`` to drive time without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from simulator.arrays import Floats
from simulator.collector import DaemonMetrics
from simulator.config import Config
from simulator.engine import Engine, Events, Snapshot
from simulator.exposition import Exposition, series_count
from simulator.faults.catalogue import FaultSpec
from simulator.history import History, default_capacity
from simulator.replay import Replay
from simulator.web import views
from simulator.web.api import NotFoundError

# The loop never sleeps longer than this, so signals and reloads are handled promptly.
MAX_TICK_SECONDS = 0.25
MIN_TICK_SECONDS = 0.001
# Beyond this many runs started or removed at once, one summary event replaces the per-run ones.
MAX_RUN_EVENTS = 1000
_EVENT_FOR_STATE = {"running": "run_recovered", "converged": "run_converged",
                    "stalled": "run_stalled", "diverged": "run_diverged",
                    "finished": "run_finished"}


_NO_EVENTS = Events()


class DrivenClock:
    """A clock its caller sets: ``now`` seconds. A daemon on it is driven through time instead
    of following it (backfill, offline drills)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SilentLog:
    """A logger that drops everything: a driven daemon's run events are nobody's business."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Daemon:
    """The simulation behind the HTTP server; see the module docstring."""

    def __init__(self, config: Config, *, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 log: Any = None, elapsed: float = 0.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if not 0 <= elapsed < float("inf"):
            raise ValueError(f"elapsed must be >= 0 and finite, got {elapsed}")
        self.config = config
        self.speed = speed
        self.clock = clock
        self.log = log if log is not None else structlog.get_logger("trainsim")
        # A daemon that starts ``elapsed`` simulated seconds into its runs: they began that
        # long ago on the wall clock, as if it had been running since.
        self._elapsed = elapsed
        self._t0 = clock()
        self._wall0 = wall() - elapsed / speed
        self._wall = wall
        self.engine = Engine(config.runs, now=0.0)
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(self._wall0)
        self._exposition = Exposition(self.registry)
        # Serializes everything that touches the engine: ticks, reloads, control requests.
        self._engine_lock = threading.RLock()
        self._generation = 0
        # The health registry's sample count is fixed once its metrics exist.
        self._own_series = sum(len(m.samples) for m in self.registry.collect())
        self._over_limit = False
        self.history: History | None = None
        self.snapshot: Snapshot = self._publish()
        self._log_runs("run_started", [s.name for s in config.runs])
        self._catch_up()

    def _catch_up(self) -> None:
        """Take the steps of the ``elapsed`` seconds before the start, publishing after each,
        so the history holds them as if they had been taken live (their events are not
        logged: they are the past)."""
        if not self._elapsed:
            return
        e = self.engine
        while (due := e.next_due()) <= self._elapsed:
            e.advance(due)
            self.snapshot = self._publish()
        e.advance(self._elapsed)
        self.snapshot = self._publish()
        self.log.info("caught_up", elapsed_seconds=self._elapsed, generation=self._generation)

    # ------------------------------------------------------------------ time

    def sim_now(self) -> float:
        """Simulated seconds since the runs started (the daemon's start, less ``elapsed``)."""
        return (self.clock() - self._t0) * self.speed + self._elapsed

    def tick(self) -> Events:
        """Advance every run to now, log what changed, publish a fresh snapshot if anything
        did (the loop wakes several times per step: an unchanged snapshot keeps its
        generation, so scrapes keep hitting the rendered cache)."""
        with self._engine_lock:
            e = self.engine
            steps, stepped_at, mods = e.runs.step.copy(), e.runs.last_step_time.copy(), e.mods
            events = e.advance(self.sim_now())
            self._log_events(events)
            if (events != _NO_EVENTS or e.mods is not mods
                    or not np.array_equal(e.runs.step, steps)
                    or not np.array_equal(e.runs.last_step_time, stepped_at)):
                self.snapshot = self._publish()
        return events

    def _log_events(self, events: Events) -> None:
        for f in events.faults_injected:
            self.log.info("fault_injected", run=f.run, fault_id=f.id, fault=f.kind,
                          source=f.source)
        for f in events.faults_cleared:
            self.log.info("fault_cleared", run=f.run, fault_id=f.id, fault=f.kind,
                          source=f.source)
        restarted = {run for run, _ in events.restarts}
        for t in events.transitions:
            if t.new == "running" and t.run in restarted:
                continue  # a new attempt runs: run_restarted says so, there is no recovery
            self.log.info(_EVENT_FOR_STATE[t.new], run=t.run, previous_state=t.old, step=t.step,
                          loss=t.loss)
        for run, restarts in events.restarts:
            self.log.info("run_restarted", run=run, restarts=restarts)

    def seconds_until_next_step(self) -> float:
        """Wall seconds the loop may wait before the next step falls due."""
        wait = (self.engine.next_due() - self.engine.now) / self.speed
        return min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, wait))

    def _publish(self) -> Snapshot:
        self._generation += 1
        snap = self.engine.snapshot(self._generation, self._wall0, self.speed)
        self._guard_series(snap)
        self._remember(snap)
        return snap

    def _remember(self, snap: Snapshot) -> None:
        """Add the snapshot to the runs' history (a new one, keeping what the runs that stay
        had, after a reload)."""
        capacity = self.config.history
        if capacity is None:
            capacity = default_capacity(len(snap))
        if self.history is None:
            self.history = History(snap, capacity)
        elif self.history.names != snap.names or self.history.capacity != capacity:
            self.history = self.history.carried(snap, capacity)
        self.history.record(snap)

    def _guard_series(self, snap: Snapshot) -> None:
        """Export the series count; warn once each time it crosses above ``series_limit``."""
        series = series_count(snap) + self._own_series
        self.metrics.exposed_series.set(series)
        limit = self.config.series_limit
        over = limit is not None and series > limit
        if over and not self._over_limit:
            self.log.warning("series_limit_exceeded", series=series, series_limit=limit,
                             runs=len(snap))
        elif self._over_limit and not over:
            self.log.info("series_limit_ok", series=series, series_limit=limit, runs=len(snap))
        self._over_limit = over

    def _log_runs(self, event: str, names: Sequence[str]) -> None:
        if len(names) <= MAX_RUN_EVENTS:
            for name in names:
                self.log.info(event, run=name)
        else:
            self.log.info(event.replace("run_", "runs_"), runs=len(names), first=names[0],
                          last=names[-1])

    # ------------------------------------------------------------------ reload

    def apply(self, config: Config) -> None:
        """Switch to a validated config; unchanged runs keep their progress and series."""
        with self._engine_lock:
            self._apply(config)

    def _apply(self, config: Config) -> None:
        self._log_events(self.engine.advance(self.sim_now()))
        before = {s.name: s for s in self.config.runs}
        self.engine = self.engine.reconfigured(config.runs)
        old, new = set(before), set(self.engine.names)
        kept = sum(1 for s in config.runs if before.get(s.name) == s)
        self.config = config
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(self._wall())
        # Published before the log says so: whoever reads these lines scrapes the new runs.
        self.snapshot = self._publish()
        self._log_runs("run_started", sorted(new - old))
        self._log_runs("run_removed", sorted(old - new))
        self.log.info("config_reloaded", source=config.source, runs=len(config.runs),
                      unchanged_runs=kept)

    def reject(self, source: str, errors: list[str]) -> None:
        """Record a failed reload; the running config stays."""
        self.metrics.reload_ok.set(0)
        self.log.error("config_rejected", source=source, errors=errors)
        # Health series live outside the snapshot; a new generation invalidates cached scrapes.
        self.snapshot = self._publish()

    # ------------------------------------------------------------------ views

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body for the current snapshot, rendered at most once per snapshot."""
        return self._exposition.body(self.snapshot, openmetrics, gzipped)

    # ------------------------------------------------------------------ control

    @contextmanager
    def _control(self, run: str) -> Iterator[None]:
        """Bring the engine to now, run a change under the lock, publish the result."""
        with self._engine_lock:
            self._row(run)
            self._log_events(self.engine.advance(self.sim_now()))
            yield
            self._log_events(self.engine.advance(self.engine.now))
            self.snapshot = self._publish()

    def step_interval(self, run: str) -> float | None:
        """The run's seconds per step (None for an unknown run)."""
        with self._engine_lock:
            row = self.engine.row_of.get(run)
            return None if row is None else self.engine.specs[row].interval

    def inject(self, run: str, spec: FaultSpec) -> dict[str, Any]:
        """Inject a fault now."""
        with self._control(run):
            rec = self.engine.inject(run, spec)
        return views.fault_view(rec, self.engine.now)

    def clear(self, run: str, fault_id: str) -> dict[str, Any]:
        """End an injected or scheduled fault of ``run`` now."""
        with self._control(run):
            try:
                rec = self.engine.clear(run, fault_id)
            except KeyError:
                raise NotFoundError(f"run {run!r} has no active fault {fault_id!r}") from None
        return views.fault_view(rec, self.engine.now)

    def pause(self, run: str) -> dict[str, Any]:
        """Stop a run from stepping (its series stay)."""
        with self._control(run):
            self.engine.set_paused(run, True)
        self.log.info("run_paused", run=run)
        return self.run_view(run)

    def resume(self, run: str) -> dict[str, Any]:
        """Let a paused run step again."""
        with self._control(run):
            self.engine.set_paused(run, False)
        self.log.info("run_resumed", run=run)
        return self.run_view(run)

    def restart(self, run: str) -> dict[str, Any]:
        """Restart a run from step 0, as a rescheduled job."""
        with self._control(run):
            self.engine.restart(run)
        return self.run_view(run)

    def run_view(self, run: str) -> dict[str, Any]:
        """One run as the API shows it."""
        with self._engine_lock:
            return views.run_view(self.engine, self.snapshot, self._row(run))

    def runs_view(self) -> list[dict[str, Any]]:
        """Every run as the API shows it, in configuration order."""
        with self._engine_lock:
            rows = [self.engine.row_of[s.name] for s in self.config.runs
                    if s.name in self.engine.row_of]
            return [views.run_view(self.engine, self.snapshot, i) for i in rows]

    def fleet_view(self, query: views.FleetQuery) -> dict[str, Any]:
        """A page of the fleet table."""
        with self._engine_lock:
            return views.fleet_view(self.snapshot, self.engine.runs.paused.copy(), query)

    def history_view(self, run: str, since: int) -> dict[str, Any]:
        """``run``'s recent entries after seq ``since``, and what the page needs to draw
        them."""
        with self._engine_lock:
            spec = self.engine.specs[self._row(run)]
            history = self.history
        assert history is not None
        view = history.entries(run, since)
        if isinstance(spec.landscape, Replay) and spec.landscape.recording is not None:
            # What /metrics does not export for a replay run is null here too.
            columns = view["columns"]
            rec = spec.landscape.recording
            for name in ("update_norm", "parameter_absmax", "gradient_norm", "learning_rate"):
                if name in ("update_norm", "parameter_absmax") or getattr(rec, name) is None:
                    columns[name] = [None] * len(columns["seq"])
        view.update(landscape=spec.labels[0], optimizer=spec.labels[1],
                    dims=spec.dims, optimum=spec.landscape.optimum,
                    step_interval=spec.interval)
        return view

    def landscape_view(self, run: str, lo: Floats, hi: Floats, points: int) -> dict[str, Any]:
        """``run``'s landscape on a grid, and its loss and gradient where the run stands."""
        with self._engine_lock:
            if self.engine.specs[self._row(run)].replays:
                raise NotFoundError(f"run {run!r} replays a recording: it has no landscape")
            return views.landscape_view(self.engine, run, lo, hi, points)

    def _row(self, run: str) -> int:
        row = self.engine.row_of.get(run)
        if row is None:
            raise NotFoundError(f"unknown run {run!r}")
        return row
