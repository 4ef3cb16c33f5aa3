"""Drills: inject faults on a timeline, watch the alerting, and score it.

A drill file names a config (the runs), the faults to inject and what the alerting must do:
which alert must reach firing within what budget after the injection, whether it must notify,
how soon it must resolve after the fault clears, and which alerts must stay silent. All times
in a drill file are run time (seconds of the runs' clock); at ``--speed X`` they pass X times
faster on the wall clock, and the self-contained stack shortens the shipped rules by the same
factor (``simulator.rules_profile``).

The module splits like the rest of the package: ``load_drill`` (YAML -> validated ``Drill``),
``evaluate`` (pure: observations -> scorecard), ``render_*`` (scorecard -> text, JSON, JUnit),
and ``run_drill`` (the shell that starts or reaches the servers, injects and watches).
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree

import yaml

from simulator import stack
from simulator.client import Client, ClientError
from simulator.config import (
    ConfigError,
    ConfigIssue,
    LocList,
    LocMap,
    _Reader,
    boolean,
    integer,
    load_file,
    parse_duration,
    parse_yaml,
    positive,
)
from simulator.rules_profile import (
    fast_alertmanager_config,
    fast_profile,
    fast_prometheus_config,
)
from simulator.webhook import Notification, WebhookReceiver

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
POLL_SECONDS = 0.25
PASS, FAIL, WAITING = "PASS", "FAIL", "WAITING"


# --------------------------------------------------------------------------- drill files


@dataclass(frozen=True)
class Injection:
    """A fault injected through the control API at run time ``at``."""

    at: float
    run: str
    kind: str
    duration: float  # seconds of run time; inf: until the drill ends
    params: tuple[tuple[str, float], ...] = ()


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


def _matchers(r: _Reader, m: LocMap, path: str) -> tuple[tuple[str, str], ...]:
    if "labels" not in m:
        return ()
    labels = r.mapping(m["labels"], m.lines["labels"], f"{path}.labels")
    if labels is None:
        return ()
    return tuple((str(k), r.take(labels, f"{path}.labels", str(k), _regex, ".*"))
                 for k in labels)


def _budget(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return seconds


def _timeline_from_config(path: Path) -> tuple[Injection, ...]:
    """The scheduled faults of a config, as injections (the daemon gets the config without
    them, so each happens once, through the API, at the same run time)."""
    config = load_file(path)
    out = [Injection(at=f.at, run=run.name, kind=f.kind, duration=f.duration, params=f.params)
           for run in config.runs for f in run.faults]
    return tuple(sorted(out, key=lambda i: i.at))


def load_drill(path: str | Path) -> Drill:
    """Read and validate a drill file; ConfigError lists every mistake as FILE:LINE: path."""
    p = Path(path)
    source = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(0, "", f"cannot read: {exc.strerror}", source)]) from None
    doc = parse_yaml(data, source)
    r = _Reader(source)
    top = r.mapping(doc, getattr(doc, "line", 1), "")
    if top is None:
        raise ConfigError(r.issues)
    r.unknown_keys(top, "", ("drill", "config", "speed", "expect", "silent"))
    name = r.take(top, "", "drill", str, p.stem)
    speed = r.take(top, "", "speed", positive, 20.0)
    config = r.take(top, "", "config", lambda v: (p.parent / str(v)).resolve(), None,
                    required=True)
    injections: tuple[Injection, ...] = ()
    if config is not None:
        try:
            injections = _timeline_from_config(config)
        except ConfigError as exc:
            r.error(top.lines["config"], "config", f"invalid config: {exc.issues[0]}")
        if not injections and not r.issues:
            r.error(top.lines["config"], "config", "the config schedules no fault to inject")
    expectations: list[Expectation] = []
    items = top.get("expect")
    if not isinstance(items, LocList) or not items:
        r.error(top.lines.get("expect", top.line), "expect", "must be a non-empty list")
    else:
        for path_i, m in r.mappings(items, "expect"):
            r.unknown_keys(m, path_i, ("alert", "labels", "fault", "firing_within", "notify",
                                       "notify_within", "resolve_within"))
            fault = r.take(m, path_i, "fault", integer(0, 10_000), 0)
            if injections and not 0 <= fault < len(injections):
                r.error(m.lines.get("fault", m.line), f"{path_i}.fault",
                        f"must name one of the {len(injections)} injected faults (0-based)")
                fault = 0
            expectations.append(Expectation(
                alert=r.take(m, path_i, "alert", str, "", required=True),
                labels=_matchers(r, m, path_i),
                fault=fault,
                firing_within=r.take(m, path_i, "firing_within", _budget, 60.0, required=True),
                notify=r.take(m, path_i, "notify", boolean, True),
                notify_within=r.take(m, path_i, "notify_within", _budget, None),
                resolve_within=r.take(m, path_i, "resolve_within", _budget, None),
            ))
    silent: list[Silence] = []
    entries = top.get("silent", LocList())
    if not isinstance(entries, LocList):
        r.error(top.lines["silent"], "silent", "must be a list")
    else:
        for path_i, m in r.mappings(entries, "silent"):
            r.unknown_keys(m, path_i, ("alert", "labels"))
            silent.append(Silence(alert=r.take(m, path_i, "alert", _regex, ".+"),
                                  labels=_matchers(r, m, path_i)))
    if r.issues:
        raise ConfigError(r.issues)
    return Drill(name=name, config=config, speed=speed, injections=injections,
                 expectations=tuple(expectations), silent=tuple(silent), source=source)




# --------------------------------------------------------------------------- observations


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


# --------------------------------------------------------------------------- scoring


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

    @property
    def passed(self) -> bool:
        """True only if every expectation passed, nothing forbidden fired and no error."""
        return (self.error is None and not self.false_positives
                and all(r.status == PASS for r in self.results))

    @property
    def decided(self) -> bool:
        """True once no result is still waiting."""
        return all(r.status != WAITING for r in self.results)


def evaluate(drill: Drill, obs: Observations, now: float, final: bool = False) -> Scorecard:
    """Score the observations at drill time ``now``; ``final`` turns what is still waiting
    into failures (a timeout is a FAIL)."""
    results = [_judge(drill, e, obs, now, final) for e in drill.expectations]
    expected = [t for t in obs.tracks.values()
                if any(e.matches(t.labels) for e in drill.expectations)]
    others = [t for t in obs.tracks.values() if t not in expected]
    silenced = [t for t in others if any(s.matches(t.labels) for s in drill.silent)]
    false_positives = [t for t in silenced if t.firing is not None]
    near_misses = [t for t in silenced if t.firing is None]
    unexpected = [t for t in others if t not in silenced and t.firing is not None]
    return Scorecard(drill, results, false_positives, near_misses, unexpected, now)


def _judge(drill: Drill, e: Expectation, obs: Observations, now: float, final: bool) -> Result:
    speed = drill.speed
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
    track = tracks[0] if tracks else None
    if track is not None:
        res.pending, res.firing = track.pending, track.firing
        res.notified, res.resolved = track.notified, track.resolved

    def run_time(t: float) -> float:
        return (t - t_inj) * speed

    deadline = t_inj + e.firing_within / speed
    if res.firing is None:
        if now > deadline or final:
            res.status = FAIL
            res.message = (f"did not fire within {_fmt(e.firing_within)}"
                           + (" (only pending)" if res.pending is not None else ""))
        else:
            res.message = "waiting for firing"
        return res
    res.firing_latency = run_time(res.firing)
    if res.firing_latency > e.firing_within:
        res.status = FAIL
        res.message = (f"fired after {_fmt(res.firing_latency)}, budget "
                       f"{_fmt(e.firing_within)}")
        return res
    notify_budget = e.notify_within if e.notify_within is not None else e.firing_within + 60.0
    notify_deadline = t_inj + notify_budget / speed
    if e.notify:
        if res.notified is None:
            if now > notify_deadline or final:
                res.status, res.message = FAIL, f"no notification within {_fmt(notify_budget)}"
            else:
                res.message = "fired; waiting for the notification"
            return res
        res.notify_latency = run_time(res.notified)
        if res.notify_latency > notify_budget:
            res.status = FAIL
            res.message = (f"notified after {_fmt(res.notify_latency)}, budget "
                           f"{_fmt(notify_budget)}")
            return res
    elif res.notified is not None:
        res.status, res.message = FAIL, "notified, but must not notify"
        return res
    elif now <= notify_deadline and not final:
        res.message = "fired; making sure it does not notify"
        return res
    if e.resolve_within is not None:
        inj = drill.injections[e.fault]
        t_clear = obs.cleared.get(e.fault)
        if t_clear is None and math.isfinite(inj.duration):
            t_clear = t_inj + inj.duration / speed
        if t_clear is None:
            res.status, res.message = FAIL, "the fault never cleared, so it cannot resolve"
            return res
        resolved = res.resolved
        if resolved is None or resolved < t_clear:
            if resolved is not None and resolved < t_clear:
                res.resolve_latency = 0.0
            elif now > t_clear + e.resolve_within / speed or final:
                res.status = FAIL
                res.message = f"did not resolve within {_fmt(e.resolve_within)} of the clear"
                return res
            else:
                res.message = "waiting for the alert to resolve"
                return res
        else:
            res.resolve_latency = (resolved - t_clear) * speed
            if res.resolve_latency > e.resolve_within:
                res.status = FAIL
                res.message = (f"resolved {_fmt(res.resolve_latency)} after the clear, budget "
                               f"{_fmt(e.resolve_within)}")
                return res
    res.status, res.message = PASS, "ok"
    return res


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 120:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.1f}s"


# --------------------------------------------------------------------------- output


def render_table(card: Scorecard) -> str:
    """The human scorecard."""
    d = card.drill
    lines = [f"drill {d.name} ({d.source}), speed {d.speed:g}: "
             f"{'PASS' if card.passed else 'FAIL'}",
             "run-time seconds after the injection (pending / firing / notified), after the "
             "clear (resolved)", ""]
    header = ("expectation", "injected", "pending", "firing", "notified", "resolved", "result")
    rows = [header]
    for r in card.results:
        t0 = r.injected

        def rel(t: float | None, base: float | None = t0) -> str:
            if t is None or base is None:
                return "-"
            return _fmt((t - base) * d.speed)

        rows.append((r.expectation.name, "-" if t0 is None else f"t={t0 * d.speed:.0f}s",
                     rel(r.pending), rel(r.firing), rel(r.notified),
                     _fmt(r.resolve_latency),
                     r.status if r.status == PASS else f"{r.status}: {r.message}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
                     + "  " + row[-1])
    if card.false_positives:
        lines += ["", "false positives (alerts that had to stay silent):"]
        lines += [f"  {_alert_name(t)} firing={_fmt(_opt(t.firing, d.speed))} "
                  f"pending={_fmt(_opt(t.pending, d.speed))}" for t in card.false_positives]
    if card.near_misses:
        lines += ["", "went pending but never fired (not failures):"]
        lines += [f"  {_alert_name(t)} pending={_fmt(_opt(t.pending, d.speed))}"
                  for t in card.near_misses]
    if card.unexpected:
        lines += ["", "other alerts that fired (not scored):"]
        lines += [f"  {_alert_name(t)}" for t in card.unexpected]
    if card.error:
        lines += ["", f"error: {card.error}"]
    return "\n".join(lines) + "\n"


def _opt(t: float | None, speed: float) -> float | None:
    return None if t is None else t * speed


def _alert_name(t: AlertTrack) -> str:
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(t.labels.items()) if k != "alertname")
    return f"{t.labels.get('alertname', '?')}{{{rest}}}"


def render_json(card: Scorecard) -> str:
    """The scorecard as JSON (times in run-time seconds since the drill started)."""
    speed = card.drill.speed

    def rt(t: float | None) -> float | None:
        return None if t is None else round(t * speed, 3)

    return json.dumps({
        "drill": card.drill.name,
        "source": card.drill.source,
        "speed": speed,
        "passed": card.passed,
        "error": card.error,
        "elapsed_seconds": round(card.elapsed, 3),
        "expectations": [{
            "alert": r.expectation.alert,
            "labels": dict(r.expectation.labels),
            "fault": r.expectation.fault,
            "status": r.status,
            "message": r.message,
            "injected_at": rt(r.injected),
            "pending_at": rt(r.pending),
            "firing_at": rt(r.firing),
            "notified_at": rt(r.notified),
            "resolved_at": rt(r.resolved),
            "firing_latency_seconds": r.firing_latency,
            "firing_budget_seconds": r.expectation.firing_within,
            "notify_latency_seconds": r.notify_latency,
            "resolve_latency_seconds": r.resolve_latency,
        } for r in card.results],
        "false_positives": [{"labels": t.labels, "pending_at": rt(t.pending),
                             "firing_at": rt(t.firing)} for t in card.false_positives],
        "near_misses": [{"labels": t.labels, "pending_at": rt(t.pending)}
                        for t in card.near_misses],
        "unexpected": [{"labels": t.labels, "firing_at": rt(t.firing)}
                       for t in card.unexpected],
    }, indent=2) + "\n"


def render_junit(card: Scorecard) -> str:
    """The scorecard as a JUnit XML report: one testcase per expectation and per silence."""
    cases = []
    for r in card.results:
        cases.append((r.expectation.name, r.status == PASS, r.message,
                      (r.firing_latency or 0.0) / max(card.drill.speed, 1e-9)))
    for s in card.drill.silent:
        hits = [t for t in card.false_positives if s.matches(t.labels)]
        inner = ",".join(f'{k}=~"{v}"' for k, v in s.labels)
        cases.append((f"silent {s.alert}{{{inner}}}", not hits,
                      "fired: " + ", ".join(_alert_name(t) for t in hits), 0.0))
    if card.error:
        cases.append(("drill infrastructure", False, card.error, 0.0))
    suite = ElementTree.Element("testsuite", name=f"trainsim drill {card.drill.name}",
                                tests=str(len(cases)),
                                failures=str(sum(1 for c in cases if not c[1])),
                                errors="0", time=f"{card.elapsed:.3f}")
    for name, ok, message, seconds in cases:
        case = ElementTree.SubElement(suite, "testcase", classname=f"drill.{card.drill.name}",
                                      name=name, time=f"{seconds:.3f}")
        if not ok:
            failure = ElementTree.SubElement(case, "failure", message=message, type="FAIL")
            failure.text = message
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


# --------------------------------------------------------------------------- the shell


class DrillError(Exception):
    """The drill could not run (a server unreachable or failing to start): not a verdict."""


@dataclass
class Endpoints:
    """The servers a drill talks to."""

    daemon: str
    prometheus: str
    alertmanager: str | None
    token: str | None = None
    # Self-contained: what the servers said, for the error message when one dies.
    diagnose: Callable[[], str] | None = field(default=None, repr=False)


def _strip_faults(config: Path, target: Path) -> None:
    """Write ``config`` without its scheduled faults (the drill injects them)."""
    doc = yaml.safe_load(config.read_text())
    for run in doc.get("runs", []):
        run.pop("faults", None)
    for key in ("defaults",):
        if isinstance(doc.get(key), dict):
            doc[key].pop("faults", None)
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextmanager
def local_stack(drill: Drill, workdir: Path, webhook_url: str,
                rules_dir: Path | None = None) -> Iterator[tuple[Endpoints, float]]:
    """Start Alertmanager, Prometheus (fast profile of the rules) and, last, the daemon on
    loopback; yields the endpoints and the monotonic time at which the runs started.

    Every scraped series carries drill="true" (a target label), so every alert does too.
    """
    rules_dir = rules_dir or REPO_CONFIGS / "prometheus" / "rules"
    with ExitStack() as stack_:
        config = workdir / "runs.yaml"
        _strip_faults(drill.config, config)
        am_port, daemon_port = stack.free_port(), stack.free_port()
        am_text = fast_alertmanager_config(
            (REPO_CONFIGS / "alertmanager" / "alertmanager.yml").read_text(), drill.speed,
            webhook_url=webhook_url)
        prom_doc = yaml.safe_load(fast_prometheus_config(
            (REPO_CONFIGS / "prometheus" / "prometheus.yml").read_text(),
            target=f"127.0.0.1:{daemon_port}", alertmanager=f"127.0.0.1:{am_port}"))
        for job in prom_doc["scrape_configs"]:
            if job.get("job_name") == "trainsim":
                for static in job.get("static_configs", []):
                    static.setdefault("labels", {})["drill"] = "true"
        rules_out = workdir / "rules"
        rules_out.mkdir(parents=True, exist_ok=True)
        for f in sorted(rules_dir.glob("*.yml")):
            (rules_out / f.name).write_text(fast_profile(f.read_text(), drill.speed))
        try:
            am = stack.start_alertmanager(workdir / "alertmanager", am_text, port=am_port)
            stack_.callback(am.close)
            prom = stack.start_prometheus(workdir / "prometheus", yaml.safe_dump(prom_doc),
                                          rule_files=sorted(rules_out.glob("*.yml")))
            stack_.callback(prom.close)
            daemon = stack.start_daemon(
                workdir, config=config, speed=drill.speed,
                extra_args=("--web.listen-address", f"127.0.0.1:{daemon_port}"))
            stack_.callback(daemon.close)
        except (stack.StartupError, stack.MissingBinaryError) as exc:
            raise DrillError(str(exc)) from None
        def diagnose() -> str:
            lines = []
            for name, proc in (("daemon", daemon), ("prometheus", prom), ("alertmanager", am)):
                if proc.proc.poll() is not None:
                    tail = "".join(proc.lines[-10:]).rstrip()
                    lines.append(f"{name} exited with status {proc.proc.returncode}:\n{tail}")
            return "\n".join(lines)

        yield (Endpoints(daemon.url, prom.url, am.url, diagnose=diagnose),
               _runs_started(daemon))


def _runs_started(daemon: stack.DaemonProcess) -> float:
    """The monotonic time of the daemon's run time 0, from its first log event's timestamp."""
    from datetime import datetime

    first = next(e for e in daemon.events() if e.get("event") == "run_started")
    started = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    return time.monotonic() - max(0.0, time.time() - started.timestamp())


def _prometheus_alerts(url: str) -> list[dict[str, Any]]:
    try:
        status, body = stack.http_get(f"{url}/api/v1/alerts", timeout=5)
    except OSError as exc:
        raise DrillError(f"Prometheus at {url} is unreachable: {exc}") from None
    if status != 200:
        raise DrillError(f"Prometheus at {url} answered {status} to /api/v1/alerts")
    try:
        return list(json.loads(body)["data"]["alerts"])
    except (ValueError, KeyError, TypeError):
        raise DrillError(f"{url} did not answer like Prometheus' /api/v1/alerts") from None


def watch(drill: Drill, endpoints: Endpoints, obs: Observations, start: float,
          progress: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
          ) -> Scorecard:
    """Inject on the timeline and poll until every expectation is decided (or time is up)."""
    client = Client(endpoints.daemon, endpoints.token)
    speed = drill.speed
    horizon = start + drill.horizon / speed + 5.0
    pending = list(enumerate(drill.injections))
    tty = progress is not None and progress.isatty()
    last_line = ""
    while True:
        now = clock() - start
        while pending and drill.injections[pending[0][0]].at / speed <= now:
            i, inj = pending.pop(0)
            duration = f"{inj.duration:g}s" if math.isfinite(inj.duration) else None
            try:
                client.inject(inj.run, inj.kind, duration=duration, params=dict(inj.params))
            except ClientError as exc:
                detail = endpoints.diagnose() if endpoints.diagnose else ""
                raise DrillError(f"injecting {inj.kind} into {inj.run}: {exc}"
                                 + (f"\n{detail}" if detail else "")) from None
            obs.injected[i] = clock() - start
        try:
            obs.see_active(_prometheus_alerts(endpoints.prometheus), clock() - start)
        except DrillError as exc:
            detail = endpoints.diagnose() if endpoints.diagnose else ""
            raise DrillError(f"{exc}\n{detail}" if detail else str(exc)) from None
        card = evaluate(drill, obs, clock() - start)
        if progress is not None:
            done = sum(1 for r in card.results if r.status != WAITING)
            line = (f"[{drill.name}] {done}/{len(card.results)} decided, "
                    f"{len(obs.injected)}/{len(drill.injections)} injected, "
                    f"{len(card.false_positives)} false positives")
            if tty:  # a live line on a terminal; a line per change in a log
                progress.write(f"\r{line}  t={now * speed:6.0f}s run time ")
                progress.flush()
            elif line != last_line:
                progress.write(f"{line}  (t={now * speed:.0f}s run time)\n")
            last_line = line
        if (card.decided and not pending) or clock() > horizon:
            break
        time.sleep(POLL_SECONDS)
    if tty:
        progress.write("\n")  # type: ignore[union-attr]
    return evaluate(drill, obs, clock() - start, final=True)


def run_drill(drill: Drill, endpoints: Endpoints | None = None,
              progress: TextIO | None = sys.stderr, webhook_port: int = 0,
              rules_dir: Path | None = None) -> Scorecard:
    """Run a drill: self-contained when ``endpoints`` is None, else against a running stack."""
    obs = Observations()
    lock = threading.Lock()
    t0 = [time.monotonic()]

    def received(notification: Notification) -> None:
        with lock:
            obs.see_notification(notification.payload, time.monotonic() - t0[0])

    receiver = WebhookReceiver(port=webhook_port, on_notification=received)
    try:
        if endpoints is None:
            with tempfile.TemporaryDirectory(prefix="trainsim-drill-") as tmp, \
                    local_stack(drill, Path(tmp), receiver.url, rules_dir) as (eps, started):
                t0[0] = started
                return watch(drill, eps, obs, t0[0], progress)
        if progress is not None:
            progress.write(_receiver_hint(receiver.url))
        t0[0] = time.monotonic()
        return watch(drill, endpoints, obs, t0[0], progress)
    except DrillError as exc:
        card = evaluate(drill, obs, time.monotonic() - t0[0], final=True)
        card.error = str(exc)
        return card
    finally:
        receiver.close()


def _receiver_hint(url: str) -> str:
    port = urllib.parse.urlsplit(url).port
    return (f"drill webhook receiver listening on {url}\n"
            "route drill alerts to it in alertmanager.yml:\n"
            "  route:\n    routes:\n      - matchers: ['drill=\"true\"']\n"
            "        receiver: trainsim-drill-runner\n        continue: true\n"
            "  receivers:\n    - name: trainsim-drill-runner\n      webhook_configs:\n"
            f"        - url: http://<this host>:{port}/drill\n          send_resolved: true\n")
