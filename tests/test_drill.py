"""Drills: the scorecard's logic on driven observations, its outputs, and real drills end to end
(daemon, Debian's Prometheus and Alertmanager on loopback) that pass, fail and error honestly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from simulator.config import ConfigError
from simulator.drills.file import load_drill
from simulator.drills.report import render_json, render_junit, render_table
from simulator.drills.runner import POLL_SECONDS
from simulator.drills.scoring import (
    FAIL,
    PASS,
    WAITING,
    Observations,
    evaluate,
    progress_line,
)
from tests.conftest import need_binary

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "configs" / "drills"
SHIPPED = sorted(DRILLS.glob("*.yaml"))
# The self-contained stack scrapes and evaluates every second of wall time; offline evaluates
# at the shipped 15 s.
LIVE_SCRAPE = LIVE_EVALUATION = 1.0
OFFLINE_EVALUATION = 15.0

QUICK_SCENARIO = """
defaults: {init: 5.5, steps: 600, step_interval: 1s, loop: true}
runs:
  - name: victim
    optimizer: {learning_rate: 0.05}
    faults:
      - {kind: lr_spike, at: 20s, duration: 60s, factor: 30}
  - name: healthy
    optimizer: {learning_rate: 0.2}
"""


def quick_drill(tmp_path: Path, firing_within: str = "3m", extra_silent: str = "") -> Path:
    (tmp_path / "scenario.yaml").write_text(QUICK_SCENARIO)
    drill = tmp_path / "drill.yaml"
    drill.write_text(f"""drill: quick
config: scenario.yaml
speed: 20
expect:
  - alert: TrainsimRunDiverging
    labels: {{run: victim, drill: "true"}}
    firing_within: {firing_within}
    notify_within: 4m
silent:
  - alert: .+
    labels: {{run: healthy}}
{extra_silent}""")
    return drill


# --------------------------------------------------------------------------- drill files


def test_every_scenario_has_a_drill_and_every_drill_loads() -> None:
    scenarios = {p.stem for p in (REPO / "configs" / "scenarios").glob("*.yaml")}
    assert {p.stem for p in SHIPPED} == scenarios
    for path in SHIPPED:
        drill = load_drill(path)
        assert drill.injections, path
        assert drill.expectations, path
        assert all(e.firing_within > 0 for e in drill.expectations)


def test_a_drill_takes_its_timeline_from_the_scenarios_scheduled_faults(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    assert [(i.at, i.run, i.kind, i.duration, dict(i.params)) for i in drill.injections] == [
        (20.0, "victim", "lr_spike", 60.0, {"factor": 30.0})]


def test_drill_file_mistakes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(QUICK_SCENARIO)
    bad = tmp_path / "bad.yaml"
    bad.write_text("""drill: bad
config: scenario.yaml
colour: blue
expect:
  - alert: TrainsimRunDiverging
    fault: 4
    firing_within: soon
    labels: {run: "("}
""")
    with pytest.raises(ConfigError) as info:
        load_drill(bad)
    assert str(info.value).splitlines() == [
        f"{bad}:3: colour: unknown key (expected one of: config, drill, evaluation_interval, "
        "expect, incidents, scrape_interval, silent, speed)",
        f"{bad}:6: expect[0].fault: must name one of the 1 faults and incidents of the "
        "drill's timeline, in run-time order (0-based)",
        f"{bad}:7: expect[0].firing_within: must be a duration like 250ms, 1s or 2m, "
        "got 'soon'",
        f"{bad}:8: expect[0].labels.run: not a valid regular expression: missing ), "
        "unterminated subpattern at position 0",
    ]


# --------------------------------------------------------------------------- scoring


def observed(firing: float | None, notified: float | None = None, pending: float = 0.5,
             resolved: float | None = None) -> Observations:
    """One victim alert seen at drill times (wall seconds; the drill runs at speed 20)."""
    obs = Observations()
    obs.injected[0] = 1.0
    labels = {"alertname": "TrainsimRunDiverging", "run": "victim", "drill": "true"}
    obs.see_active([{"labels": labels, "state": "pending"}], 1.0 + pending)
    if firing is not None:
        obs.see_active([{"labels": labels, "state": "firing"}], 1.0 + firing)
    if notified is not None:
        obs.see_notification({"alerts": [{"status": "firing", "labels": labels}]},
                             1.0 + notified)
    if resolved is not None:
        obs.see_active([], 1.0 + resolved)
    return obs


def test_scorecard_passes_within_budget_and_reports_run_time_latencies(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    card = evaluate(drill, observed(firing=6.0, notified=7.0), now=20.0)
    (r,) = card.results
    assert (r.status, r.firing_latency, r.notify_latency) == (PASS, 120.0, 140.0)
    assert card.passed


def test_a_late_alert_fails_on_latency(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path, firing_within="1m"))
    (r,) = evaluate(drill, observed(firing=6.0, notified=7.0), now=20.0).results
    assert r.status == FAIL
    assert r.message == "fired after 120.0s, budget 60.0s"


def test_a_missing_alert_waits_then_times_out_as_a_failure(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    obs = observed(firing=None)
    assert evaluate(drill, obs, now=5.0).results[0].status == WAITING
    late = evaluate(drill, obs, now=1.0 + 180 / 20 + 0.1).results[0]
    assert (late.status, late.message) == (FAIL, "did not fire within 180.0s (only pending)")
    final = evaluate(drill, obs, now=2.0, final=True)
    assert final.results[0].status == FAIL and not final.passed


def test_a_missing_notification_fails_and_a_forbidden_one_fails(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    r = evaluate(drill, observed(firing=6.0), now=1.0 + 240 / 20 + 0.1).results[0]
    assert (r.status, r.message) == (FAIL, "no notification within 240.0s")
    import dataclasses

    quiet = dataclasses.replace(drill, expectations=(
        dataclasses.replace(drill.expectations[0], notify=False),))
    r = evaluate(quiet, observed(firing=6.0, notified=7.0), now=20.0).results[0]
    assert (r.status, r.message) == (FAIL, "notified, but must not notify")


def test_silent_alerts_that_fire_are_false_positives_and_pending_ones_near_misses(
        tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    obs = observed(firing=6.0, notified=7.0)
    obs.see_active([{"labels": {"alertname": "TrainsimLossRising", "run": "healthy"},
                     "state": "pending"}], 3.0)
    card = evaluate(drill, obs, now=20.0)
    assert card.passed and [t.labels["run"] for t in card.near_misses] == ["healthy"]
    obs.see_active([{"labels": {"alertname": "TrainsimLossRising", "run": "healthy"},
                     "state": "firing"}], 4.0)
    card = evaluate(drill, obs, now=20.0)
    assert not card.passed
    assert [t.labels["alertname"] for t in card.false_positives] == ["TrainsimLossRising"]


def test_progress_names_each_alerts_phase_and_the_budget_left(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))  # speed 20, firing within 180 s, notify 240 s
    quiet = Observations()
    assert progress_line(evaluate(drill, quiet, now=0.5), 0.5) == (
        "[quick] t=10s: TrainsimRunDiverging awaiting injection")
    obs = observed(firing=None)  # injected at drill time 1.0 (run time 20 s), pending since 1.5
    assert progress_line(evaluate(drill, obs, now=2.0), 2.0) == (
        "[quick] t=40s: TrainsimRunDiverging pending, 160s left")
    obs = observed(firing=6.0)  # firing: now waits on the 240 s notification budget
    assert progress_line(evaluate(drill, obs, now=7.0), 7.0) == (
        "[quick] t=140s: TrainsimRunDiverging firing, 120s left")
    obs = observed(firing=6.0, notified=7.0)
    obs.see_active([{"labels": {"alertname": "TrainsimLossRising", "run": "healthy"},
                     "state": "firing"}], 7.5)
    assert progress_line(evaluate(drill, obs, now=8.0), 8.0) == (
        "[quick] t=160s: TrainsimRunDiverging PASS; 1 false positive")


def test_the_scorecard_says_every_time_in_seconds(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path))
    card = evaluate(drill, observed(firing=6.3, notified=7.295, pending=0.5), now=20.0)
    table = render_table(card).splitlines()
    assert table[1].startswith("seconds of run time")
    header, row = table[3].split(), table[4].split()
    assert header[:7] == ["expectation", "injected", "pending", "firing", "budget",
                          "notified", "resolved"]
    # injected at run time 20 s; pending 10 s, firing 126 s and notified 145.9 s after it.
    assert row[1:8] == ["20.0", "10.0", "126.0", "180.0", "145.9", "-", "PASS"]


def test_json_and_junit_outputs_have_their_schema(tmp_path: Path) -> None:
    drill = load_drill(quick_drill(tmp_path, firing_within="1m"))
    card = evaluate(drill, observed(firing=6.0, notified=7.0), now=20.0, final=True)
    doc = json.loads(render_json(card))
    assert doc["passed"] is False and doc["drill"] == "quick"
    (exp,) = doc["expectations"]
    assert exp["status"] == "FAIL" and exp["firing_latency_seconds"] == 120.0
    assert exp["firing_budget_seconds"] == 60.0
    suite = ElementTree.fromstring(render_junit(card))
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ['TrainsimRunDiverging{run=~"victim",drill=~"true"}',
                                             'silent .+{run=~"healthy"}']
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    (failure,) = cases[0].findall("failure")
    assert failure.get("message") == "fired after 120.0s, budget 60.0s"
    assert cases[1].findall("failure") == []
    assert "FAIL" in render_table(card)


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def servers() -> None:
    for name in ("prometheus", "promtool"):
        need_binary(name)
    need_binary("prometheus-alertmanager", "alertmanager")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", "drill", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_shipped_drill_passes_end_to_end(path: Path, servers: None, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    start = time.monotonic()
    res = run_cli(str(path), "--output", "json", "--junit", str(junit))
    doc = json.loads(res.stdout)
    assert res.returncode == 0, (res.stdout, res.stderr[-3000:])
    assert doc["passed"] is True
    assert all(e["status"] == "PASS" for e in doc["expectations"])
    assert ElementTree.parse(junit).getroot().get("failures") == "0"
    print(f"{path.stem}: {time.monotonic() - start:.1f}s wall")
    # The same drill offline, at the shipped intervals: the same verdict, and each firing
    # latency within the live stack's scrape offset, evaluation interval and polling, plus one
    # more evaluation interval of scheduling lag on a loaded machine (all scaled back to run
    # time), plus one offline evaluation interval (docs/drills.md, "Which mode when").
    res = run_cli("--offline", str(path), "--output", "json")
    assert res.returncode == 0, res.stderr
    offline = json.loads(res.stdout)
    assert offline["passed"] is doc["passed"]
    slack = ((LIVE_SCRAPE + 2 * LIVE_EVALUATION + POLL_SECONDS) * doc["speed"]
             + OFFLINE_EVALUATION)
    for live_exp, offline_exp in zip(doc["expectations"], offline["expectations"], strict=True):
        assert offline_exp["status"] == live_exp["status"]
        live_s = live_exp["firing_latency_seconds"]
        offline_s = offline_exp["firing_latency_seconds"]
        print(f"  {live_exp['alert']}: live {live_s:.1f}s, offline {offline_s:.1f}s, "
              f"slack {slack:.1f}s")
        assert abs(live_s - offline_s) <= slack, (live_exp["alert"], live_s, offline_s)


def broken_rules(tmp_path: Path, replace: dict[str, str]) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "configs" / "prometheus" / "rules", rules)
    path = rules / "trainsim-alerts.yml"
    text = path.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return rules


def test_a_rule_that_never_fires_fails_the_drill(servers: None, tmp_path: Path) -> None:
    rules = broken_rules(tmp_path, {
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 1':
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 2'})
    res = run_cli(str(quick_drill(tmp_path)), "--rules", str(rules))
    assert res.returncode == 1, res.stderr[-3000:]
    assert "did not fire within 180.0s" in res.stdout
    assert res.stdout.startswith("drill quick") and ": FAIL" in res.stdout.splitlines()[0]


def test_a_rule_that_fires_on_healthy_runs_is_reported_as_a_false_positive(
        servers: None, tmp_path: Path) -> None:
    rules = broken_rules(tmp_path, {
        "  - name: trainsim.detectors\n    rules:\n":
        "  - name: trainsim.detectors\n    rules:\n"
        "      - alert: TrainsimLossAlwaysHigh\n"
        "        expr: trainsim_loss > 0\n"
        "        for: 10s\n"
        "        labels: {severity: warning}\n"
        "        annotations: {summary: x, description: x, runbook_url: x}\n"})
    res = run_cli(str(quick_drill(tmp_path)), "--rules", str(rules), "--output", "json")
    assert res.returncode == 1, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["expectations"][0]["status"] == "PASS"
    runs = {fp["labels"]["run"] for fp in doc["false_positives"]}
    assert runs == {"healthy"}
    assert {fp["labels"]["alertname"] for fp in doc["false_positives"]} == {
        "TrainsimLossAlwaysHigh"}


def test_a_budget_too_tight_fails_on_latency(servers: None, tmp_path: Path) -> None:
    res = run_cli(str(quick_drill(tmp_path, firing_within="20s")), "--output", "json")
    assert res.returncode == 1, res.stderr[-3000:]
    (exp,) = json.loads(res.stdout)["expectations"]
    assert exp["status"] == "FAIL"
    assert exp["message"].startswith("fired after") or exp["message"].startswith(
        "did not fire within 20.0s")


def test_an_unreachable_prometheus_is_an_error_not_a_pass(tmp_path: Path,
                                                          daemon_factory: Any) -> None:
    from simulator.drills.stack import free_port

    d = daemon_factory(speed=20)
    res = run_cli(str(quick_drill(tmp_path)), "--daemon", d.url, "--prometheus",
                  f"http://127.0.0.1:{free_port()}", timeout=60)
    assert res.returncode == 3
    assert "Prometheus at http://127.0.0.1:" in res.stderr
    assert "unreachable" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_stack_that_cannot_start_is_one_line_and_exit_3(tmp_path: Path) -> None:
    need_binary("prometheus-alertmanager", "alertmanager")
    bad = tmp_path / "alertmanager.yml"  # the drill uses the Alertmanager config it is given
    bad.write_text("route: {receiver: nobody}\nreceivers: [{name: someone}]\n")
    res = run_cli(str(quick_drill(tmp_path)), "--alertmanager.config", str(bad), timeout=60)
    assert res.returncode == 3
    assert res.stdout == ""
    (line,) = res.stderr.splitlines()
    assert line.startswith("trainsim: drill could not run: alertmanager exited with status 1 "
                           "during start-up: ")
    assert line.endswith(
        'Loading configuration file failed: undefined receiver "nobody" used in route')


def test_an_unreadable_alertmanager_config_is_a_usage_error(tmp_path: Path) -> None:
    res = run_cli(str(quick_drill(tmp_path)), "--alertmanager.config",
                  str(tmp_path / "missing.yml"), timeout=60)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"trainsim: drill: --alertmanager.config: cannot read {tmp_path / 'missing.yml'}: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'missing.yml'}'"]


def test_a_bad_drill_file_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("drill: x\nexpect: []\n")
    res = run_cli(str(bad), timeout=60)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"{bad}:1: config: required key is missing",
                                       f"{bad}:2: expect: must be a non-empty list"]
