"""Offline drills: a drill file judged by ``promtool test rules``, with no server running.

The data's path:

1. ``sample``: the real ``Daemon`` on a driven clock (speed 1, wall clock at Unix time 0, so
   the series' timestamps are promtool's ``time()``) takes the drill's config without its
   scheduled faults, and each fault is injected the way a live drill injects it (the control
   API's body, ``fault_from_body``, ``Daemon.inject``) at its run time. At every scrape instant
   the series the rules read are taken from its snapshot, bit for bit what it would export,
   with the labels Prometheus adds to a drill's scrape (``job``, ``instance``,
   ``drill="true"``, the shipped metric relabelling) and ``up``.
2. ``input_series``: those values in promtool's notation, compressed (``axN``, ``a+bxN`` only
   where promtool's repeated addition gives back every value exactly, ``_xN`` for instants a
   series is absent, ``stale`` where it disappears, as a scrape writes a staleness marker).
3. ``probe``: one ``promtool test rules`` run that asks for the rule engine's ``ALERTS`` at
   every evaluation instant; what promtool prints is the timeline of every alert, pending and
   firing, which ``simulator.drills.scoring`` judges as it judges a live drill's polls.
4. ``contract``: the promtool test file ``--emit`` writes, which states the drill's
   expectations at the real intervals (see ``contract``), for a team to run in its own CI.

Times offline are run-time seconds: the scorecard's ``speed`` is 1, and a firing time is the
evaluation instant at which promtool's rule evaluation first had the alert firing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulator import resources
from simulator.backfill import Scrape, own_metrics, shipped_scrape
from simulator.config import Config, load_file
from simulator.daemon.core import Daemon, DrivenClock, SilentLog
from simulator.drills.file import Drill, Expectation
from simulator.drills.scoring import Observations, Scorecard, evaluate
from simulator.durations import format_prometheus, parse_prometheus
from simulator.exposition import FAMILIES, HARDWARE_FAMILIES, layout, sample_values
from simulator.web.api import fault_from_body
from simulator.web.client import fault_body

PROBE = "last_over_time(ALERTS[1ms])"
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABELS = re.compile(r'\{((?:[^"{}]|"(?:[^"\\]|\\.)*")*)\}\s+(\S+?)(?=,\s*\{|\s*$)')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_PROBE_LINE = re.compile(r'^\s*expr: "' + re.escape(PROBE) + r'", time: (\S+),\s*$')
_GOT_LINE = re.compile(r"^\s*got: (.*)$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_NUMBER = r"\d+(?:\.\d*)?(?:e[+-]\d+)?"
_REPEAT = re.compile(rf"(-?{_NUMBER})(?:([+-])({_NUMBER}))?x(\d+)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class OfflineError(Exception):
    """promtool is missing, or failed in a way that is not a verdict: one line."""


@dataclass(frozen=True)
class Intervals:
    """The scrape and rule-evaluation intervals an offline drill runs at, in milliseconds."""

    scrape_ms: int
    evaluation_ms: int

    def describe(self) -> str:
        """As the scorecard says it."""
        return (f"offline (promtool test rules), scrape {format_prometheus(self.scrape_ms)}, "
                f"evaluation {format_prometheus(self.evaluation_ms)}")


def shipped_intervals() -> Intervals:
    """The shipped prometheus.yml's scrape interval of trainsim and its evaluation interval."""
    doc = yaml.safe_load(resources.read_text("prometheus", "prometheus.yml"))
    scrape, _ = shipped_scrape()
    evaluation = doc.get("global", {}).get("evaluation_interval", "1m")
    return Intervals(scrape.interval_ms, parse_prometheus(str(evaluation)))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rules:
    """The rule files an offline drill evaluates: (path, text) of each."""

    files: tuple[tuple[Path, str], ...]

    @classmethod
    def load(cls, rules_dir: Path | None) -> Rules:
        """``rules_dir``'s ``*.yml``, or the shipped rule files."""
        if rules_dir is not None:
            paths = sorted(rules_dir.glob("*.yml"))
        else:
            shipped = resources.shipped("prometheus", "rules")
            paths = sorted((Path(str(f)) for f in shipped.iterdir() if f.name.endswith(".yml")),
                           key=lambda p: p.name)
        return cls(tuple((p, p.read_text(encoding="utf-8")) for p in paths))

    def paths(self) -> list[Path]:
        """The rule files' absolute paths."""
        return [p.resolve() for p, _ in self.files]

    def metric_names(self) -> set[str] | None:
        """The metric names the rules' expressions mention (a superset of those they read);
        None if an expression selects by ``__name__``, so that every series must be kept."""
        names: set[str] = set()
        for _, text in self.files:
            for group in (yaml.safe_load(text) or {}).get("groups") or []:
                for rule in group.get("rules") or []:
                    expr = str(rule.get("expr", ""))
                    if "__name__" in expr:
                        return None
                    names.update(_IDENTIFIER.findall(expr))
        return names


# --------------------------------------------------------------------------- sampling


@dataclass
class Sampled:
    """Every series the rules read, at every scrape instant: ``values[series][k]`` is its
    sample at instant k (``interval_ms`` apart from 0), None where it has none."""

    interval_ms: int
    count: int
    values: dict[str, list[float | None]] = field(default_factory=dict)

    def put(self, series: str, k: int, value: float) -> None:
        """Set ``series``' sample at instant ``k``."""
        row = self.values.get(series)
        if row is None:
            row = self.values[series] = [None] * self.count
        row[k] = value


def without_faults(config: Config) -> Config:
    """``config`` without its scheduled faults: a drill injects them on its timeline."""
    return dataclasses.replace(config, runs=tuple(
        dataclasses.replace(run, faults=()) for run in config.runs))


def drill_scrape() -> Scrape:
    """The shipped scrape of trainsim, with the ``drill="true"`` target label a drill adds."""
    scrape, _ = shipped_scrape()
    return dataclasses.replace(scrape, labels=tuple(sorted({**dict(scrape.labels),
                                                             "drill": "true"}.items())))


def sample(drill: Drill, interval_ms: int, end_s: float, wanted: set[str] | None,
           config: Config | None = None) -> Sampled:
    """Step the drill's runs from run time 0 to ``end_s``, injecting its faults, and take the
    series named in ``wanted`` (None: all) every ``interval_ms``."""
    config = without_faults(config or load_file(drill.config))
    clock = DrivenClock()
    daemon = Daemon(config, clock=clock, wall=lambda: 0.0, log=SilentLog())
    scrape = drill_scrape()
    count = int(end_s * 1000 // interval_ms) + 1
    out = Sampled(interval_ms, count)
    families = [f for f in FAMILIES + HARDWARE_FAMILIES
                if wanted is None or set(f.sample_names) & wanted]
    prefixes: dict[tuple[str, tuple[str, ...]], str | None] = {}
    pending = sorted((i for i in drill.injections if not i.recorded), key=lambda i: i.at)
    up = _series("up", dict(scrape.labels))
    for k in range(count):
        now = k * interval_ms / 1000
        while pending and pending[0].at <= now:
            inj = pending.pop(0)
            clock.now = inj.at
            daemon.tick()
            body = fault_body(inj.kind, duration=inj.api_duration, params=dict(inj.params))
            daemon.inject(inj.run, fault_from_body(body, daemon.step_interval(inj.run)))
        clock.now = now
        daemon.tick()
        snap = daemon.snapshot
        rows_of = layout(snap)
        presence = snap.presence
        for fam in families:
            if fam.name not in rows_of:  # a hardware family of a fleet without hardware
                continue
            labels, rows = rows_of[fam.name]
            values = sample_values(snap, fam).tolist()
            present = presence[rows].tolist() if len(rows) else []
            for lv, value, here in zip(labels, values, present, strict=True):
                if not here:
                    continue
                key = (fam.name, lv)
                if key not in prefixes:
                    sample_name, pairs = fam.sample(lv)
                    labelled = scrape.series_labels(dict(pairs))
                    prefixes[key] = (None if labelled is None
                                     else f"{sample_name}{{{labelled}}}")
                name = prefixes[key]
                if name is not None:
                    out.put(name, k, value)
        for metric in own_metrics(daemon):
            for s in metric.samples:
                if wanted is None or s.name in wanted:
                    labelled = scrape.series_labels(dict(s.labels))
                    if labelled is not None:
                        out.put(f"{s.name}{{{labelled}}}", k, float(s.value))
        if wanted is None or "up" in wanted:
            out.put(up, k, 1.0)
    return out


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


# --------------------------------------------------------------------------- notation


def promtool_number(value: float) -> str:
    """A float as promtool reads it back exactly (NaN, Inf and -Inf spelled its way)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(value)


def _same(a: float, b: float) -> bool:
    """The same float bit for bit (finite values: equal, and -0.0 apart from 0.0)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def notation(values: Sequence[float | None]) -> str:
    """``values`` (None: no sample) in promtool's series notation, compressed: ``axN`` for a
    repeated value, ``a+bxN`` where adding b N times (as promtool does) gives each value
    exactly, ``stale`` where a series disappears after a sample and ``_xN`` while it stays
    away. NaN and infinities are written one by one (promtool repeats no such value)."""
    parts: list[str] = []
    i, n = 0, len(values)
    while i < n:
        v = values[i]
        if v is None:
            j = i
            while j < n and values[j] is None:
                j += 1
            if j == n and i > 0:  # nothing after: leave the tail out
                parts.append("stale")
                break
            if i > 0:
                parts.append("stale")
                i += 1
            if j > i:
                parts.append("_" if j - i == 1 else f"_x{j - i}")
            i = j
            continue
        if not math.isfinite(v):
            parts.append(promtool_number(v))
            i += 1
            continue
        j = i + 1
        while j < n and values[j] is not None and _same(values[j], v):  # type: ignore[arg-type]
            j += 1
        if j - i >= 2:
            parts.append(f"{promtool_number(v)}x{j - i - 1}")
            i = j
            continue
        nxt = values[i + 1] if i + 1 < n else None
        if nxt is not None and math.isfinite(nxt):
            step = nxt - v
            acc, j = v, i + 1
            while j < n and values[j] is not None and math.isfinite(values[j]):  # type: ignore[arg-type]
                if not _same(acc + step, values[j]):  # type: ignore[arg-type]
                    break
                acc += step
                j += 1
            if j - i >= 3 and math.isfinite(step) and step != 0 and _reads_back(step):
                sign = "-" if step < 0 or (step == 0 and math.copysign(1, step) < 0) else "+"
                parts.append(f"{promtool_number(v)}{sign}{promtool_number(abs(step))}"
                             f"x{j - i - 1}")
                i = j
                continue
        parts.append(promtool_number(v))
        i += 1
    return " ".join(parts)


def _reads_back(step: float) -> bool:
    return float(promtool_number(abs(step))) == abs(step)


def expand(text: str) -> list[float | None]:
    """promtool's reading of ``notation``'s output (None: no sample, stale included)."""
    out: list[float | None] = []
    for part in text.split():
        if part == "stale" or part == "_":
            out.append(None)
            continue
        if part.startswith("_x"):
            out += [None] * int(part[2:])
            continue
        m = _REPEAT.fullmatch(part)
        if m is None:
            out.append(float(part.replace("Inf", "inf")))
            continue
        acc, times = float(m[1]), int(m[4])
        if m[2] is None:  # a repeat: the same value, -0.0 included
            out += [acc] * (times + 1)
            continue
        step = float(m[3]) if m[2] == "+" else -float(m[3])
        for _ in range(times + 1):
            out.append(acc)
            acc += step
    return out


def input_series(sampled: Sampled) -> list[dict[str, str]]:
    """The sampled series as promtool ``input_series``."""
    return [{"series": name, "values": notation(values)}
            for name, values in sorted(sampled.values.items())]


# --------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class Alert:
    """One alert at one evaluation instant, as promtool's rule engine had it; annotations
    only where the probe asked for them (``pinned_instants``)."""

    labels: dict[str, str]
    state: str  # "pending" or "firing"
    annotations: dict[str, str] = field(default_factory=dict)


def deadline_of(drill: Drill, exp: Expectation, grid: float) -> float:
    """The last evaluation instant (seconds) within an expectation's firing budget."""
    return math.floor((drill.injections[exp.fault].at + exp.firing_within) / grid) * grid


def pinned_instants(drill: Drill, grid: float) -> list[tuple[float, str]]:
    """(instant, alert name) of every evaluation within an expectation's budget: the probe
    asks for those alerts' annotations, which the contract pins."""
    out = set()
    for exp in drill.expectations:
        at, t = drill.injections[exp.fault].at, deadline_of(drill, exp, grid)
        while t > at:
            out.add((t, exp.alert))
            t = round(t - grid, 9)
    return sorted(out)


def probe_file(rules: Sequence[Path], intervals: Intervals, series: list[dict[str, str]],
               end_ms: int, pinned: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """A promtool test that prints every alert at every evaluation instant up to ``end_ms``,
    and the annotations of the ``pinned`` ones: each asks for no alert, so promtool shows
    the ones there are."""
    instants = range(0, end_ms + 1, intervals.evaluation_ms)
    return {
        "rule_files": [str(p) for p in rules],
        "evaluation_interval": format_prometheus(intervals.evaluation_ms),
        "tests": [{
            "interval": format_prometheus(intervals.scrape_ms),
            "input_series": series,
            "promql_expr_test": [{"expr": PROBE, "eval_time": _seconds(t / 1000),
                                  "exp_samples": []} for t in instants],
            "alert_rule_test": [{"eval_time": _seconds(t), "alertname": name,
                                 "exp_alerts": []} for t, name in pinned],
        }],
    }


_ALERT_HEAD = re.compile(r"^\s*alertname: (\S+), time: (\S+),\s*$")
_ALERT_LABELS = re.compile(r"^\s*Labels:\{(.*)\}\s*$")
_ALERT_ANNOTATIONS = re.compile(r"^\s*Annotations:\{(.*)\},?\s*$")


def parse_probe(output: str) -> dict[float, list[Alert]] | None:
    """The alerts at each instant (seconds) of promtool's output for ``probe_file`` (instants
    with no alert are absent); None if the output holds no answer to the probe at all."""
    timeline: dict[float, list[Alert]] = {}
    annotated: dict[float, list[Alert]] = {}
    answered = False
    at: float | None = None
    pinned: float | None = None
    labels: dict[str, str] | None = None
    for line in output.splitlines():
        if (m := _PROBE_LINE.match(line)) is not None:
            at, pinned, answered = go_duration(m[1]), None, True
        elif (m := _ALERT_HEAD.match(line)) is not None:
            at, pinned, answered = None, go_duration(m[2]), True
        elif (m := _GOT_LINE.match(line)) is not None and at is not None:
            timeline[at] = [_alert(inner) for inner, _ in _LABELS.findall(m[1])]
            at = None
        elif pinned is not None and (m := _ALERT_LABELS.match(line)) is not None:
            labels = _pairs(m[1])
        elif pinned is not None and labels is not None \
                and (m := _ALERT_ANNOTATIONS.match(line)) is not None:
            annotated.setdefault(pinned, []).append(Alert(labels, "firing", _pairs(m[1])))
            labels = None
    if not answered:
        return None
    for t, alerts in annotated.items():
        rest = [a for a in timeline.get(t, []) if all(a.labels != b.labels for b in alerts)]
        timeline[t] = rest + alerts
    return timeline


def _pairs(inner: str) -> dict[str, str]:
    return {k: _unquote(v) for k, v in _PAIR.findall(inner)}


def _alert(inner: str) -> Alert:
    labels = _pairs(inner)
    labels.pop("__name__", None)
    state = labels.pop("alertstate", "firing")
    return Alert(labels, state)


def _unquote(text: str) -> str:
    """A Go-quoted string's contents (``strconv.Quote``'s escapes)."""
    if "\\" not in text:
        return text
    text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: f"\\u00{m[1]}", text)
    text = re.sub(r"\\U([0-9a-fA-F]{8})", lambda m: chr(int(m[1], 16)), text)
    text = text.replace("\\a", "\\u0007").replace("\\v", "\\u000b")
    result: str = json.loads(f'"{text}"')
    return result


def go_duration(text: str) -> float:
    """Seconds of a Go duration as promtool prints it (``1m30s``, ``2h0m0s``, ``500ms``)."""
    if text == "0s":
        return 0.0
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(a) * _GO_UNITS[u] for a, u in parts)


def promtool() -> str:
    """Path of promtool; OfflineError if it is missing."""
    found = shutil.which("promtool")
    if found is None:
        raise OfflineError("offline drills need promtool, which is not on PATH (Debian's "
                           "prometheus package has it)")
    return found


def run_promtool(test: Path) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` on ``test``, from its directory."""
    return subprocess.run([promtool(), "test", "rules", test.name], cwd=test.parent,
                          capture_output=True, text=True, errors="replace")


# --------------------------------------------------------------------------- judging


@dataclass
class Offline:
    """What an offline drill produced: the sampled series, promtool's alert timeline and the
    scorecard."""

    sampled: Sampled
    timeline: dict[float, list[Alert]]
    card: Scorecard


def end_of(drill: Drill, intervals: Intervals) -> int:
    """The last evaluation instant (ms) the drill needs: its horizon, on the grid."""
    e = intervals.evaluation_ms
    return math.ceil(drill.horizon * 1000 / e) * e


def judge(drill: Drill, rules: Rules, intervals: Intervals, workdir: Path) -> Offline:
    """Sample, probe with promtool and score the drill (times in run-time seconds, speed 1);
    OfflineError if promtool is missing or fails without answering."""
    drill = dataclasses.replace(drill, speed=1.0)
    end_ms = end_of(drill, intervals)
    sampled = sample(drill, intervals.scrape_ms, end_ms / 1000, rules.metric_names())
    pinned = pinned_instants(drill, intervals.evaluation_ms / 1000)
    test = workdir / f"{drill.name}.probe.yml"
    test.write_text(_dump(
        probe_file(rules.paths(), intervals, input_series(sampled), end_ms, pinned),
        sort_keys=False, width=1 << 16))
    res = run_promtool(test)
    timeline = parse_probe(res.stdout + res.stderr)
    if res.returncode not in (0, 1) or (res.returncode == 1 and timeline is None):
        raise OfflineError(f"promtool test rules failed (exit status {res.returncode}): "
                           f"{_last_line(res.stdout + res.stderr)}")
    card = score(drill, timeline or {}, intervals.evaluation_ms, end_ms)
    card.mode = intervals.describe()
    return Offline(sampled, timeline or {}, card)


def score(drill: Drill, timeline: dict[float, list[Alert]], evaluation_ms: int,
          end_ms: int) -> Scorecard:
    """Judge the timeline as a live drill judges its polls, one poll per evaluation instant,
    until every expectation is decided; notifications are not judged (no Alertmanager)."""
    obs = Observations()
    for i, inj in enumerate(drill.injections):
        obs.injected[i] = inj.at
    now = 0.0
    for t_ms in range(0, end_ms + 1, evaluation_ms):
        now = t_ms / 1000
        obs.see_active([{"labels": a.labels, "state": a.state}
                        for a in timeline.get(now, [])], now)
        if evaluate(drill, obs, now, notifications=False).decided:
            break
    return evaluate(drill, obs, now, final=True, notifications=False)


def _last_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- the contract


def _selector(alert: str, labels: Iterable[tuple[str, str]], *, regex_name: bool = False,
              state: str | None = None) -> str:
    """``ALERTS`` of an alert (name or, with ``regex_name``, a regular expression) whose
    labels fully match the drill's regular expressions, in ``state`` (None: either)."""
    parts = [f'alertname{"=~" if regex_name else "="}{json.dumps(alert)}']
    if state is not None:
        parts.append(f"alertstate={json.dumps(state)}")
    parts += [f"{k}=~{json.dumps(v)}" for k, v in labels]
    return "ALERTS{" + ", ".join(parts) + "}"


def contract(drill: Drill, offline: Offline, rule_files: Sequence[str],
             intervals: Intervals) -> dict[str, Any]:
    """The drill as a promtool test file at the real intervals, from its expectations:

    - per expectation, a ``promql_expr_test`` that a matching alert was firing at an
      evaluation in (injection, injection + budget]; and an ``alert_rule_test`` at the last
      such instant at which promtool had it firing, with every firing alert of that name as
      promtool evaluated it (labels and annotations, which promtool compares exactly);
    - with ``resolve_within``, that no matching alert is active (pending or firing) at the
      last evaluation within that budget after the fault's end;
    - per ``silent`` entry, that nothing it covers, and no expectation claims, fired at any
      evaluation of the drill.
    """
    grid = intervals.evaluation_ms / 1000
    end = offline.card.elapsed
    alert_tests: list[dict[str, Any]] = []
    expr_tests: list[dict[str, Any]] = []
    for exp in drill.expectations:
        inj = drill.injections[exp.fault]
        deadline = deadline_of(drill, exp, grid)
        firing = _selector(exp.alert, exp.labels, state="firing")
        expr_tests.append({
            "expr": f"count(max_over_time({firing}[{_seconds(deadline - inj.at)}])) > bool 0",
            "eval_time": _seconds(deadline),
            "exp_samples": [{"labels": "{}", "value": 1}]})
        alert_tests.append(_pinned(exp, offline.timeline, inj.at, deadline, grid))
        if exp.resolve_within is not None:
            clear = inj.at + inj.duration if math.isfinite(inj.duration) else inj.at
            at = math.floor((clear + exp.resolve_within) / grid) * grid
            expr_tests.append({"expr": f"count({_selector(exp.alert, exp.labels)})",
                               "eval_time": _seconds(at), "exp_samples": []})
    claimed = "".join(f" unless {_selector(e.alert, e.labels)}" for e in drill.expectations)
    for s in drill.silent:
        covered = _selector(s.alert, s.labels, regex_name=True, state="firing")
        expr_tests.append({
            "expr": f"max_over_time(({covered}{claimed})[{_seconds(end)}:{_seconds(grid)}])",
            "eval_time": _seconds(end), "exp_samples": []})
    return {
        "rule_files": list(rule_files),
        "evaluation_interval": format_prometheus(intervals.evaluation_ms),
        "tests": [{
            "name": f"trainsim drill {drill.name}",
            "interval": format_prometheus(intervals.scrape_ms),
            "input_series": input_series(offline.sampled),
            "alert_rule_test": alert_tests,
            "promql_expr_test": expr_tests,
        }],
    }


def _pinned(exp: Expectation, timeline: dict[float, list[Alert]], injected: float,
            deadline: float, grid: float) -> dict[str, Any]:
    """The ``alert_rule_test`` of one expectation: at the last instant within its budget at
    which a matching alert fired, every firing alert of that name; with none, the alert with
    the expectation's literal labels at the deadline (a test that fails, as the drill does)."""
    t = deadline
    while t > injected:
        alerts = [a for a in timeline.get(t, []) if a.state == "firing"
                  and a.labels.get("alertname") == exp.alert]
        if any(exp.matches(a.labels) for a in alerts):
            return {"eval_time": _seconds(t), "alertname": exp.alert, "exp_alerts": [
                {"exp_labels": {k: v for k, v in sorted(a.labels.items()) if k != "alertname"},
                 "exp_annotations": dict(sorted(a.annotations.items()))} for a in alerts]}
        t = round(t - grid, 9)
    literal = {k: v for k, v in exp.labels if re.escape(v) == v}
    return {"eval_time": _seconds(deadline), "alertname": exp.alert,
            "exp_alerts": [{"exp_labels": literal}]}


def _dump(doc: Any, **kwargs: Any) -> str:
    """YAML text of ``doc`` (libyaml's emitter when PyYAML has it: input series are long)."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    result: str = yaml.dump(doc, Dumper=dumper, **kwargs)
    return result


def _seconds(seconds: float) -> str:
    ms = round(seconds * 1000)
    return format_prometheus(ms) if ms else "0s"


def emit(drill: Drill, rules: Rules, rules_dir: Path | None, intervals: Intervals,
         out_dir: Path, workdir: Path) -> tuple[Offline, list[Path]]:
    """Judge the drill and write it as a promtool test file into ``out_dir``, with a copy of
    the shipped rules under ``out_dir/rules`` when no ``rules_dir`` is given (otherwise the
    test names ``rules_dir``'s files relative to ``out_dir``); the paths written."""
    offline = judge(drill, rules, intervals, workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if rules_dir is None:
        (out_dir / "rules").mkdir(exist_ok=True)
        rule_files = []
        for path, text in rules.files:
            copy = out_dir / "rules" / path.name
            copy.write_text(text, encoding="utf-8")
            written.append(copy)
            rule_files.append(f"rules/{path.name}")
    else:
        rule_files = [os.path.relpath(p.resolve(), out_dir.resolve()) for p in rules.paths()]
    doc = contract(dataclasses.replace(drill, speed=1.0), offline, rule_files, intervals)
    target = out_dir / f"{drill.name}.test.yml"
    header = (f"# The trainsim drill {drill.name} ({drill.source}) as a promtool unit test, "
              f"at scrape {format_prometheus(intervals.scrape_ms)} and evaluation "
              f"{format_prometheus(intervals.evaluation_ms)}.\n"
              "# Written by `trainsim drill --emit`; run it with `promtool test rules`.\n")
    target.write_text(header + _dump(doc, sort_keys=False, width=1 << 16))
    written.append(target)
    return offline, written
