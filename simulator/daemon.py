"""The daemon: wires config, engine, collector and clock together. The only place with a clock.

``Daemon.tick()`` reads the clock, advances the engine, logs what changed and swaps in a new
snapshot. Scrapes read the current snapshot and never advance anything. Tests may pass their
own ``clock`` and call ``tick()`` to drive time without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from simulator.collector import DaemonMetrics, Renderer
from simulator.config import Config
from simulator.engine import ALERTS, STATES, Engine, Events, Snapshot
from simulator.server import gzip_bytes

# The loop never sleeps longer than this, so signals and reloads are handled promptly.
MAX_TICK_SECONDS = 0.25
MIN_TICK_SECONDS = 0.001
_EVENT_FOR_STATE = {"running": "run_recovered", "converged": "run_converged",
                    "stalled": "run_stalled", "diverged": "run_diverged",
                    "finished": "run_finished"}


class Daemon:
    """The simulation behind the HTTP server; see the module docstring."""

    def __init__(self, config: Config, *, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 log: Any = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.config = config
        self.speed = speed
        self.clock = clock
        self.log = log if log is not None else structlog.get_logger("trainsim")
        self._t0 = clock()
        self._wall0 = wall()
        self._wall = wall
        self.engine = Engine(config.runs, now=0.0)
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(self._wall0)
        self._renderer = Renderer()
        self._render_lock = threading.Lock()
        self._cache: dict[tuple[bool, bool], tuple[int, bytes]] = {}
        self._generation = 0
        self.snapshot: Snapshot = self._publish()
        for name in self.engine.names:
            self.log.info("run_started", run=name)

    # ------------------------------------------------------------------ time

    def sim_now(self) -> float:
        """Simulated seconds since the daemon started."""
        return (self.clock() - self._t0) * self.speed

    def tick(self) -> Events:
        """Advance every run to now, log what changed, publish a fresh snapshot."""
        events = self.engine.advance(self.sim_now())
        for t in events.transitions:
            self.log.info(_EVENT_FOR_STATE[t.new], run=t.run, previous_state=t.old, step=t.step,
                          loss=t.loss)
        for run, restarts in events.restarts:
            self.log.info("run_restarted", run=run, restarts=restarts)
        self.snapshot = self._publish()
        return events

    def seconds_until_next_step(self) -> float:
        """Wall seconds the loop may wait before the next step falls due."""
        wait = (self.engine.next_due() - self.engine.now) / self.speed
        return min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, wait))

    def _publish(self) -> Snapshot:
        self._generation += 1
        return self.engine.snapshot(self._generation, self._wall0, self.speed)

    # ------------------------------------------------------------------ reload

    def apply(self, config: Config) -> None:
        """Switch to a validated config; unchanged runs keep their progress and series."""
        self.engine.advance(self.sim_now())
        before = {s.name: s for s in self.config.runs}
        self.engine = self.engine.reconfigured(config.runs)
        old, new = set(before), set(self.engine.names)
        kept = sum(1 for s in config.runs if before.get(s.name) == s)
        self.config = config
        for name in sorted(new - old):
            self.log.info("run_started", run=name)
        for name in sorted(old - new):
            self.log.info("run_removed", run=name)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(self._wall())
        self.log.info("config_reloaded", source=config.source, runs=len(config.runs),
                      unchanged_runs=kept)
        self.snapshot = self._publish()

    def reject(self, source: str, errors: list[str]) -> None:
        """Record a failed reload; the running config stays."""
        self.metrics.reload_ok.set(0)
        self.log.error("config_rejected", source=source, errors=errors)
        # Health series live outside the snapshot; a new generation invalidates cached scrapes.
        self.snapshot = self._publish()

    # ------------------------------------------------------------------ views

    def exposition(self, openmetrics: bool, gzipped: bool) -> bytes:
        """The /metrics body for the current snapshot, rendered at most once per snapshot."""
        snap = self.snapshot
        key = (openmetrics, gzipped)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == snap.generation:
            return hit[1]
        with self._render_lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == snap.generation:
                return hit[1]
            if openmetrics:
                own = generate_openmetrics(self.registry).decode()
                own = own.removesuffix("# EOF\n")
                body = (own + self._renderer.render(snap, True) + "# EOF\n").encode()
            else:
                body = generate_latest(self.registry) + self._renderer.render(snap).encode()
            if gzipped:
                body = gzip_bytes(body)
            self._cache[key] = (snap.generation, body)
            return bytes(body)

    def runs_table(self) -> list[dict[str, Any]]:
        """One row per run: name, state, step, loss, active alerts."""
        s = self.snapshot
        return [{"run": s.names[i], "state": STATES[s.state[i]], "step": int(s.steps[i]),
                 "loss": float(s.loss[i]),
                 "alerts": [a for j, a in enumerate(ALERTS) if s.alerts[i, j]]}
                for i in range(len(s))]
