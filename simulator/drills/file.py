"""Drill files: the runs to drill, the faults to inject on their timeline, and what the
alerting must do.

A drill file names a config (the runs and, as scheduled faults, the injections) and the
incidents its replayed recordings hold, which alert must reach firing within what budget after
each injection or incident, whether it must notify, how soon
it must resolve after the fault clears, and which alerts must stay silent. All times in a
drill file are run time (seconds of the runs' clock); at ``--speed X`` they pass X times faster
on the wall clock, and the self-contained stack shortens the shipped rules by the same factor
(``simulator.drills.profile``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.config import load_file
from simulator.durations import parse_prometheus, parse_seconds
from simulator.schema.errors import ConfigError
from simulator.schema.fields import Reader, boolean, integer, non_negative_duration, positive
from simulator.schema.loader import LocList, LocMap, read_yaml_file


@dataclass(frozen=True)
class Injection:
    """A fault injected through the control API at run time ``at``, or (``recorded``) an
    incident a replayed recording holds at that time: nothing is sent, the drill's clock for
    its expectations starts there all the same."""

    at: float
    run: str
    kind: str
    duration: float  # seconds of run time; inf: until the drill ends
    params: tuple[tuple[str, float], ...] = ()
    recorded: bool = False

    @property
    def api_duration(self) -> str | None:
        """The duration as the control API is given it (None: the fault kind's default)."""
        return f"{self.duration:g}s" if math.isfinite(self.duration) else None


@dataclass(frozen=True)
class Expectation:
    """What one alert must do in answer to one injection."""

    alert: str
    labels: tuple[tuple[str, str], ...]  # label -> regular expression (full match)
    fault: int  # index of the injection it answers
    firing_within: float
    notify: bool = True
    notify_within: float | None = None
    resolve_within: float | None = None

    @property
    def name(self) -> str:
        """A readable identifier: the alert and its matchers."""
        inner = ",".join(f'{k}=~"{v}"' for k, v in self.labels)
        return f"{self.alert}{{{inner}}}"

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether an alert with ``labels`` is the one expected."""
        return labels.get("alertname") == self.alert and _labels_match(self.labels, labels)


@dataclass(frozen=True)
class Silence:
    """Alerts that must not fire during the drill."""

    alert: str  # regular expression on alertname
    labels: tuple[tuple[str, str], ...]

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether an alert with ``labels`` is covered."""
        return (re.fullmatch(self.alert, labels.get("alertname", "")) is not None
                and _labels_match(self.labels, labels))


def _labels_match(matchers: tuple[tuple[str, str], ...], labels: dict[str, str]) -> bool:
    return all(re.fullmatch(rx, labels.get(k, "")) is not None for k, rx in matchers)


@dataclass(frozen=True)
class Drill:
    """A validated drill file."""

    name: str
    config: Path
    speed: float
    injections: tuple[Injection, ...]
    expectations: tuple[Expectation, ...]
    silent: tuple[Silence, ...]
    source: str
    scrape_interval_ms: int | None = None  # offline: the scrape interval to sample at
    evaluation_interval_ms: int | None = None  # offline: the rules' evaluation interval

    @property
    def horizon(self) -> float:
        """Run time by which every expectation is decided."""
        ends = [0.0]
        for e in self.expectations:
            inj = self.injections[e.fault]
            ends.append(inj.at + max(e.firing_within, e.notify_within or 0.0))
            if e.resolve_within is not None:
                end = inj.at + inj.duration if math.isfinite(inj.duration) else inj.at
                ends.append(end + e.resolve_within)
        return max(ends)


def _regex(value: Any) -> str:
    text = str(value) if isinstance(value, str | int | float) else None
    if text is None:
        raise ValueError(f"must be a string, got {type(value).__name__}")
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return text


def _matchers(r: Reader, m: LocMap, path: str) -> tuple[tuple[str, str], ...]:
    if "labels" not in m:
        return ()
    labels = r.mapping(m["labels"], m.lines["labels"], f"{path}.labels")
    if labels is None:
        return ()
    return tuple((str(k), r.take(labels, f"{path}.labels", str(k), _regex, ".*"))
                 for k in labels)


def _budget(value: Any) -> float:
    seconds = parse_seconds(value)
    if seconds <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return seconds


def _interval(value: Any) -> int:
    """Milliseconds of a Prometheus interval (``15s``, ``1m``)."""
    try:
        ms = parse_prometheus(str(value))
    except ValueError:
        raise ValueError(f"must be a duration like 15s or 1m, got {value!r}") from None
    if ms <= 0:
        raise ValueError(f"must be longer than 0s, got {value!r}")
    return ms


def _timeline_from_config(path: Path) -> tuple[tuple[Injection, ...], set[str]]:
    """The scheduled faults of a config, as injections (the daemon gets the config without
    them, so each happens once, through the API, at the same run time); and its replay
    runs."""
    config = load_file(path)
    out = [Injection(at=f.at, run=run.name, kind=f.kind, duration=f.duration, params=f.params)
           for run in config.runs for f in run.faults]
    return tuple(out), {run.name for run in config.runs if run.replays}


def _incidents(r: Reader, top: LocMap, replays: set[str]) -> list[Injection]:
    """The ``incidents`` list: what the config's recordings hold, each at a run time."""
    items = top.get("incidents", LocList())
    if not isinstance(items, LocList):
        r.error(top.lines["incidents"], "incidents", "must be a list")
        return []
    out = []
    for path_i, m in r.mappings(items, "incidents"):
        r.unknown_keys(m, path_i, ("run", "at", "duration", "summary"))
        run = r.take(m, path_i, "run", str, "", required=True)
        if run and run not in replays:
            have = ", ".join(sorted(replays)) or "none"
            r.error(m.lines["run"], f"{path_i}.run",
                    f"must be a replay run of the config (it has: {have})")
        out.append(Injection(
            at=r.take(m, path_i, "at", non_negative_duration, 0.0, required=True), run=run,
            kind=r.take(m, path_i, "summary", str, "recorded incident"),
            duration=r.take(m, path_i, "duration", _budget, math.inf), recorded=True))
    return out


def is_drill(doc: Any) -> bool:
    """Whether a parsed YAML document is a drill file (it has a ``drill`` or ``expect`` key)
    rather than a run config."""
    return isinstance(doc, LocMap) and ("drill" in doc or "expect" in doc)


def load_drill(path: str | Path) -> Drill:
    """Read and validate a drill file; ConfigError lists every mistake as FILE:LINE: path."""
    return build_drill(read_yaml_file(path), Path(path))


def build_drill(doc: Any, p: Path) -> Drill:
    """Validate a parsed drill file found at ``p`` (its config is relative to it)."""
    source = str(p)
    r = Reader(source)
    top = r.mapping(doc, getattr(doc, "line", 1), "")
    if top is None:
        raise ConfigError(r.issues)
    r.unknown_keys(top, "", ("drill", "config", "speed", "incidents", "expect", "silent",
                             "scrape_interval", "evaluation_interval"))
    name = r.take(top, "", "drill", str, p.stem)
    speed = r.take(top, "", "speed", positive, 20.0)
    config = r.take(top, "", "config", lambda v: (p.parent / str(v)).resolve(), None,
                    required=True)
    injections: tuple[Injection, ...] = ()
    if config is not None:
        try:
            scheduled, replays = _timeline_from_config(config)
            # One timeline, in run-time order: the faults to inject and the recordings'
            # incidents; an expectation's ``fault`` is an index into it.
            injections = tuple(sorted((*scheduled, *_incidents(r, top, replays)),
                                      key=lambda i: i.at))
        except ConfigError as exc:
            r.error(top.lines["config"], "config", f"invalid config: {exc.issues[0]}")
        if not injections and not r.issues:
            r.error(top.lines["config"], "config", "the config schedules no fault to inject "
                                                   "(and the drill lists no incident)")
    expectations = _expectations(r, top, len(injections))
    silent = _silences(r, top)
    scrape = r.take(top, "", "scrape_interval", _interval, None)
    evaluation = r.take(top, "", "evaluation_interval", _interval, None)
    if r.issues:
        raise ConfigError(r.issues)
    return Drill(name=name, config=config, speed=speed, injections=injections,
                 expectations=expectations, silent=silent, source=source,
                 scrape_interval_ms=scrape, evaluation_interval_ms=evaluation)


def _expectations(r: Reader, top: LocMap, injected: int) -> tuple[Expectation, ...]:
    """The ``expect`` list: each expectation answers one of the ``injected`` faults."""
    out: list[Expectation] = []
    items = top.get("expect")
    if not isinstance(items, LocList) or not items:
        r.error(top.lines.get("expect", top.line), "expect", "must be a non-empty list")
        return ()
    for path_i, m in r.mappings(items, "expect"):
        r.unknown_keys(m, path_i, ("alert", "labels", "fault", "firing_within", "notify",
                                   "notify_within", "resolve_within"))
        fault = r.take(m, path_i, "fault", integer(0, 10_000), 0)
        if injected and not 0 <= fault < injected:
            r.error(m.lines.get("fault", m.line), f"{path_i}.fault",
                    f"must name one of the {injected} faults and incidents of the drill's "
                    "timeline, in run-time order (0-based)")
            fault = 0
        out.append(Expectation(
            alert=r.take(m, path_i, "alert", str, "", required=True),
            labels=_matchers(r, m, path_i),
            fault=fault,
            firing_within=r.take(m, path_i, "firing_within", _budget, 60.0, required=True),
            notify=r.take(m, path_i, "notify", boolean, True),
            notify_within=r.take(m, path_i, "notify_within", _budget, None),
            resolve_within=r.take(m, path_i, "resolve_within", _budget, None),
        ))
    return tuple(out)


def _silences(r: Reader, top: LocMap) -> tuple[Silence, ...]:
    """The ``silent`` list: alerts that must not fire."""
    entries = top.get("silent", LocList())
    if not isinstance(entries, LocList):
        r.error(top.lines["silent"], "silent", "must be a list")
        return ()
    out = []
    for path_i, m in r.mappings(entries, "silent"):
        r.unknown_keys(m, path_i, ("alert", "labels"))
        out.append(Silence(alert=r.take(m, path_i, "alert", _regex, ".+"),
                           labels=_matchers(r, m, path_i)))
    return tuple(out)
