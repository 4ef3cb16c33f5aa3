"""Scoring a drill: what was seen of the alerts (``Observations``) and the verdict on each
expectation at a moment (``evaluate``). Pure: times are passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from simulator.drills.file import Drill, Expectation

PASS, FAIL, WAITING = "PASS", "FAIL", "WAITING"


@dataclass
class AlertTrack:
    """What was seen of one alert (one label set) during a drill; times in drill seconds."""

    labels: dict[str, str]
    pending: float | None = None
    firing: float | None = None
    notified: float | None = None
    resolved: float | None = None  # left Prometheus' active alerts after firing
    resolved_notified: float | None = None
    last_seen: float | None = None


@dataclass
class Observations:
    """Every alert seen, keyed by its labels, plus when each injection happened."""

    tracks: dict[tuple[tuple[str, str], ...], AlertTrack] = field(default_factory=dict)
    injected: dict[int, float] = field(default_factory=dict)  # injection index -> drill time
    cleared: dict[int, float] = field(default_factory=dict)

    def track(self, labels: dict[str, str]) -> AlertTrack:
        """The track of one label set (created on first sight)."""
        key = tuple(sorted(labels.items()))
        if key not in self.tracks:
            self.tracks[key] = AlertTrack(dict(labels))
        return self.tracks[key]

    def see_active(self, alerts: list[dict[str, Any]], now: float) -> None:
        """Record Prometheus' active alerts (``/api/v1/alerts``) polled at ``now``."""
        active = set()
        for a in alerts:
            t = self.track({str(k): str(v) for k, v in a.get("labels", {}).items()})
            active.add(id(t))
            t.last_seen = now
            if t.pending is None:
                t.pending = now
            if a.get("state") == "firing" and t.firing is None:
                t.firing = now
        for t in self.tracks.values():
            if id(t) not in active and t.firing is not None and t.resolved is None \
                    and t.last_seen is not None and t.last_seen < now:
                t.resolved = now

    def see_notification(self, payload: dict[str, Any], now: float) -> None:
        """Record one Alertmanager webhook notification received at ``now``."""
        for a in payload.get("alerts", []):
            t = self.track({str(k): str(v) for k, v in a.get("labels", {}).items()})
            if a.get("status") == "firing" and t.notified is None:
                t.notified = now
            if a.get("status") == "resolved" and t.resolved_notified is None:
                t.resolved_notified = now


@dataclass
class Result:
    """The verdict on one expectation; times are drill seconds, latencies run-time seconds."""

    expectation: Expectation
    status: str
    message: str
    injected: float | None = None
    pending: float | None = None
    firing: float | None = None
    notified: float | None = None
    resolved: float | None = None
    firing_latency: float | None = None
    notify_latency: float | None = None
    resolve_latency: float | None = None
    deadline: float | None = None  # drill time by which what it waits for must happen

    @property
    def phase(self) -> str:
        """Where the expected alert is: its verdict once decided, else ``awaiting injection``,
        ``inactive``, ``pending``, ``firing``, ``notified`` or ``resolved``."""
        if self.status != WAITING:
            return self.status
        if self.injected is None:
            return "awaiting injection"
        for phase, seen in (("resolved", self.resolved), ("notified", self.notified),
                            ("firing", self.firing), ("pending", self.pending)):
            if seen is not None:
                return phase
        return "inactive"


@dataclass
class Scorecard:
    """Every expectation's result and every alert nobody expected."""

    drill: Drill
    results: list[Result]
    false_positives: list[AlertTrack]  # covered by `silent` and fired
    near_misses: list[AlertTrack]  # covered by `silent`, went pending, never fired
    unexpected: list[AlertTrack]  # fired, covered by nothing
    elapsed: float
    error: str | None = None
    mode: str | None = None  # how it was judged, when not live (offline: promtool, intervals)
    notifications: bool = True  # whether notifications were judged (not offline)

    @property
    def passed(self) -> bool:
        """True only if every expectation passed, nothing forbidden fired and no error."""
        return (self.error is None and not self.false_positives
                and all(r.status == PASS for r in self.results))

    @property
    def decided(self) -> bool:
        """True once no result is still waiting."""
        return all(r.status != WAITING for r in self.results)


def evaluate(drill: Drill, obs: Observations, now: float, final: bool = False,
             notifications: bool = True) -> Scorecard:
    """Score the observations at drill time ``now``; ``final`` turns what is still waiting
    into failures (a timeout is a FAIL). Without ``notifications`` (offline: there is no
    Alertmanager) the notification stage of every expectation is skipped."""
    results = [_judge(drill, e, obs, now, final, notifications) for e in drill.expectations]
    expected = [t for t in obs.tracks.values()
                if any(e.matches(t.labels) for e in drill.expectations)]
    others = [t for t in obs.tracks.values() if t not in expected]
    silenced = [t for t in others if any(s.matches(t.labels) for s in drill.silent)]
    false_positives = [t for t in silenced if t.firing is not None]
    near_misses = [t for t in silenced if t.firing is None]
    unexpected = [t for t in others if t not in silenced and t.firing is not None]
    return Scorecard(drill, results, false_positives, near_misses, unexpected, now,
                     notifications=notifications)


def _judge(drill: Drill, e: Expectation, obs: Observations, now: float, final: bool,
           notifications: bool) -> Result:
    t_inj = obs.injected.get(e.fault)
    res = Result(e, WAITING, "waiting for the injection", injected=t_inj)
    if t_inj is None:
        if final:
            res.status, res.message = FAIL, "the fault was never injected"
        return res
    # The first matching alert that became active after the injection.
    tracks = sorted((t for t in obs.tracks.values() if e.matches(t.labels)
                     and t.pending is not None and (t.firing or t.pending) >= t_inj - 1e-9),
                    key=lambda t: (t.firing if t.firing is not None else math.inf))
    if tracks:
        res.pending, res.firing = tracks[0].pending, tracks[0].firing
        res.notified, res.resolved = tracks[0].notified, tracks[0].resolved
    judge = _Judge(drill, e, obs, res, t_inj, now, final)
    if judge.firing() and (not notifications or judge.notification()) and judge.resolution():
        res.status, res.message = PASS, "ok"
    return res


@dataclass
class _Judge:
    """The stages of one expectation's verdict, in order; each returns whether the verdict
    goes on to the next (False: it failed, or is still waiting, with its message set)."""

    drill: Drill
    e: Expectation
    obs: Observations
    res: Result
    t_inj: float
    now: float
    final: bool

    def _late(self, deadline: float) -> bool:
        return self.now > deadline or self.final

    def _fail(self, message: str) -> bool:
        self.res.status, self.res.message = FAIL, message
        return False

    def _wait(self, message: str, deadline: float) -> bool:
        self.res.message, self.res.deadline = message, deadline
        return False

    def firing(self) -> bool:
        """The alert fired within its budget after the injection."""
        e, res, speed = self.e, self.res, self.drill.speed
        if res.firing is None:
            if self._late(self.t_inj + e.firing_within / speed):
                return self._fail(f"did not fire within {fmt_seconds(e.firing_within)}"
                                  + (" (only pending)" if res.pending is not None else ""))
            return self._wait("waiting for firing", self.t_inj + e.firing_within / speed)
        res.firing_latency = (res.firing - self.t_inj) * speed
        if res.firing_latency > e.firing_within:
            return self._fail(f"fired after {fmt_seconds(res.firing_latency)}, budget "
                              f"{fmt_seconds(e.firing_within)}")
        return True

    def notification(self) -> bool:
        """It notified within its budget, or, with ``notify: false``, it did not."""
        e, res, speed = self.e, self.res, self.drill.speed
        budget = e.notify_within if e.notify_within is not None else e.firing_within + 60.0
        deadline = self.t_inj + budget / speed
        if not e.notify:
            if res.notified is not None:
                return self._fail("notified, but must not notify")
            if not self._late(deadline):
                return self._wait("fired; making sure it does not notify", deadline)
            return True
        if res.notified is None:
            if self._late(deadline):
                return self._fail(f"no notification within {fmt_seconds(budget)}")
            return self._wait("fired; waiting for the notification", deadline)
        res.notify_latency = (res.notified - self.t_inj) * speed
        if res.notify_latency > budget:
            return self._fail(f"notified after {fmt_seconds(res.notify_latency)}, budget "
                              f"{fmt_seconds(budget)}")
        return True

    def resolution(self) -> bool:
        """With ``resolve_within``: the alert resolved within it after the fault cleared."""
        e, res, speed = self.e, self.res, self.drill.speed
        if e.resolve_within is None:
            return True
        inj = self.drill.injections[e.fault]
        t_clear = self.obs.cleared.get(e.fault)
        if t_clear is None and math.isfinite(inj.duration):
            t_clear = self.t_inj + inj.duration / speed
        if t_clear is None:
            return self._fail("the fault never cleared, so it cannot resolve")
        if res.resolved is not None and res.resolved < t_clear:
            res.resolve_latency = 0.0
            return True
        if res.resolved is None:
            if self._late(t_clear + e.resolve_within / speed):
                return self._fail(f"did not resolve within {fmt_seconds(e.resolve_within)} "
                                  "of the clear")
            return self._wait("waiting for the alert to resolve",
                              t_clear + e.resolve_within / speed)
        res.resolve_latency = (res.resolved - t_clear) * speed
        if res.resolve_latency > e.resolve_within:
            return self._fail(f"resolved {fmt_seconds(res.resolve_latency)} after the clear, "
                              f"budget {fmt_seconds(e.resolve_within)}")
        return True


def fmt_seconds(seconds: float | None) -> str:
    """A duration as the scorecard's messages say it, always in seconds: ``-`` or ``125.5s``."""
    return "-" if seconds is None else f"{seconds:.1f}s"


def progress_line(card: Scorecard, now: float) -> str:
    """One line on a drill under way at drill time ``now``: each expected alert's phase and
    the run-time seconds left in the budget it is waiting on."""
    speed = card.drill.speed
    parts = []
    for r in card.results:
        left = ("" if r.status != WAITING or r.deadline is None
                else f", {max(0.0, (r.deadline - now) * speed):.0f}s left")
        parts.append(f"{r.expectation.alert} {r.phase}{left}")
    fp = len(card.false_positives)
    return (f"[{card.drill.name}] t={now * speed:.0f}s: " + "; ".join(parts)
            + (f"; {fp} false positive{'' if fp == 1 else 's'}" if fp else ""))
