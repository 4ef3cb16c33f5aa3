"""Offline drills: the series are the daemon's bit for bit, promtool reads them back exactly,
every shipped drill passes offline and as an emitted promtool test, and broken rules fail
with the alert and the expectation named. promtool is Debian's; a missing one fails."""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from simulator.config import load_file
from simulator.daemon.core import Daemon, DrivenClock
from simulator.drills import offline
from simulator.drills.file import load_drill
from simulator.web import pages
from simulator.web.api import ControlApi
from simulator.web.auth import ControlSettings
from simulator.web.client import Client
from simulator.web.server import start_server
from tests.conftest import need_binary, trainsim

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "configs" / "drills"
SHIPPED = sorted(DRILLS.glob("*.yaml"))
RULES = REPO / "configs" / "prometheus" / "rules"


@pytest.fixture(autouse=True)
def _promtool() -> None:
    need_binary("promtool")


def bits(value: float | None) -> object:
    return None if value is None else struct.pack("<d", value)


# --------------------------------------------------------------------------- notation


def _random_series(rng: random.Random, n: int) -> list[float | None]:
    out: list[float | None] = []
    while len(out) < n:
        kind = rng.choice(["const", "ramp", "noise", "gap", "special"])
        size = rng.randint(1, 12)
        if kind == "const":
            out += [rng.choice([0.0, -0.0, 1.0, rng.uniform(-1e6, 1e6)])] * size
        elif kind == "ramp":
            start, step = rng.choice([(0.0, 1.0), (1000.0, 15.0), (rng.random(), 0.1),
                                      (5.0, -1.5)])
            acc = start
            for _ in range(size):
                out.append(acc)
                acc += step
        elif kind == "noise":
            out += [rng.lognormvariate(0, 30) * rng.choice([1, -1]) for _ in range(size)]
        elif kind == "gap":
            out += [None] * size
        else:
            out += [rng.choice([math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308])
                    for _ in range(size)]
    return out[:n]


def test_notation_round_trips_every_value_bit_for_bit() -> None:
    rng = random.Random(17)
    for _ in range(300):
        values = _random_series(rng, rng.randint(1, 80))
        text = offline.notation(values)
        back = offline.expand(text)
        # A series that ends absent is written up to its last sample (stale at the first gap).
        want = list(values)
        while want and want[-1] is None:
            want.pop()
        got = back[:len(want)]
        assert [bits(v) for v in got] == [bits(v) for v in want], text
        assert all(v is None for v in back[len(want):])


def test_notation_compresses_what_repeats_and_what_counts() -> None:
    assert offline.notation([1.0] * 100) == "1.0x99"
    assert offline.notation([float(k) for k in range(100)]) == "0.0+1.0x99"
    assert offline.notation([5.0, 3.5, 2.0, 0.5]) == "5.0-1.5x3"
    assert offline.notation([None, None, 1.0, 1.0, None, None, 2.0]) == "_x2 1.0x1 stale _ 2.0"
    assert offline.notation([math.nan, math.nan, math.inf]) == "NaN NaN Inf"
    # 0.1 + 0.1 + ... is not 0.1 * k: only values promtool's repeated addition gives back.
    tenths = [k / 10 for k in range(1, 11)]
    assert "0.1+0.1x9" not in offline.notation(tenths)
    assert offline.expand(offline.notation(tenths)) == tenths


def test_promtool_reads_the_notation_back_exactly(tmp_path: Path) -> None:
    rng = random.Random(3)
    series = {f'x{{i="{i}"}}': _random_series(rng, 40) for i in range(12)}
    series['x{i="ramp"}'] = [1000.0 + 15.0 * k for k in range(40)]
    test = tmp_path / "readback.yml"
    rule = tmp_path / "none.yml"
    rule.write_text("groups: []\n")
    test.write_text(yaml.safe_dump({
        "rule_files": [rule.name], "evaluation_interval": "15s",
        "tests": [{"interval": "15s",
                   "input_series": [{"series": k, "values": offline.notation(v)}
                                    for k, v in series.items()],
                   "promql_expr_test": [{"expr": "last_over_time(x[1ms])",
                                         "eval_time": f"{15 * k}s", "exp_samples": []}
                                        for k in range(40)]}]}, width=1 << 16))
    res = subprocess.run(["promtool", "test", "rules", test.name], cwd=tmp_path,
                         capture_output=True, text=True)
    output = res.stdout + res.stderr
    seen: dict[tuple[str, int], float] = {}
    k = None
    for line in output.splitlines():
        line = line.strip()
        if line.startswith('expr: "last_over_time'):
            k = int(offline.go_duration(line.split("time: ")[1].rstrip(",")) // 15)
        elif line.startswith("got:") and k is not None:
            for labels, value in offline._LABELS.findall(line[4:]):
                i = offline._pairs(labels)["i"]
                seen[(i, k)] = float(value.replace("E", "e").replace("+Inf", "inf")
                                     .replace("-Inf", "-inf").replace("Inf", "inf"))
    checked = 0
    for name, values in series.items():
        i = name.split('"')[1]
        for k, v in enumerate(values):
            got = seen.get((i, k))
            if v is None:
                continue  # absent, or a gap inside lookback; promtool shows the last sample
            assert got is not None, (name, k)
            assert bits(got) == bits(v) or (math.isnan(got) and math.isnan(v)), (name, k, got, v)
            checked += 1
    assert checked > 300


# --------------------------------------------------------------------------- the series


def test_the_series_equal_a_live_daemons_scrapes_at_the_same_instants_faults_included() -> None:
    """A daemon serving /metrics and the control API over HTTP on a driven clock, with each
    fault injected through the API as a live drill does: every sample it exposes at each
    instant, with the drill's target labels added, is the offline series' sample, bit for bit,
    and it exposes nothing the offline series lack."""
    drill = load_drill(DRILLS / "mixed-fleet.yaml")  # lr_spike, plateau, nan, hang, crash, ...
    rules = offline.Rules.load(None)
    wanted = rules.metric_names()
    assert wanted is not None
    interval_ms, end = 15_000, 840.0
    sampled = offline.sample(drill, interval_ms, end, wanted)
    written = {s["series"]: offline.expand(s["values"]) for s in offline.input_series(sampled)}

    clock = DrivenClock()
    daemon = Daemon(offline.without_faults(load_file(drill.config)), clock=clock,
                    wall=lambda: 0.0)
    handle = start_server("127.0.0.1:0", ControlApi(daemon, ControlSettings()).routes()
                          + pages.routes(daemon))
    scrape = offline.drill_scrape()
    try:
        api = Client(f"http://{handle.address}")
        pending = sorted(drill.injections, key=lambda i: i.at)
        crashed_seen = False
        for k in range(sampled.count):
            now = k * interval_ms / 1000
            while pending and pending[0].at <= now:
                inj = pending.pop(0)
                clock.now = inj.at
                daemon.tick()
                api.inject(inj.run, inj.kind, duration=inj.api_duration,
                           params=dict(inj.params))
            clock.now = now
            daemon.tick()
            body = _get(f"http://{handle.address}/metrics")
            live: dict[str, float] = {}
            for fam in text_string_to_metric_families(body):
                for s in fam.samples:
                    if s.name in wanted:
                        labels = scrape.series_labels(dict(s.labels))
                        live[f"{s.name}{{{labels}}}"] = s.value
            live[f"up{{{scrape.series_labels({})}}}"] = 1.0
            at_k = {name: v[k] for name, v in written.items()
                    if k < len(v) and v[k] is not None}
            assert set(live) == set(at_k), (now, set(live) ^ set(at_k))
            for name, value in live.items():
                assert bits(value) == bits(at_k[name]) or (
                    math.isnan(value) and math.isnan(at_k[name])), (now, name)  # type: ignore[arg-type]
            crashed_seen |= not any('run="train-29"' in n for n in live)
    finally:
        handle.close()
    assert crashed_seen  # the crash fault took train-29's series away at some instant
    assert any(v is not None and math.isnan(v) for n, vs in written.items()
               if n.startswith('trainsim_loss{') and 'train-19' in n for v in vs)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def test_only_the_series_the_rules_read_are_written(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "one.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Nan\n    expr: trainsim_loss != trainsim_loss\n"
        "    for: 1m\n")
    drill = load_drill(DRILLS / "nan-loss.yaml")
    names = offline.Rules.load(rules).metric_names()
    sampled = offline.sample(drill, 15_000, 300.0, names)
    assert {name.split("{")[0] for name in sampled.values} == {"trainsim_loss"}


# --------------------------------------------------------------------------- shipped drills


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", "drill", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_shipped_drill_passes_offline_at_the_shipped_intervals(path: Path) -> None:
    start = time.monotonic()
    res = run_cli("--offline", str(path), "--output", "json")
    elapsed = time.monotonic() - start
    assert res.returncode == 0, (res.stdout, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and doc["mode"] == "offline"
    assert doc["judged_by"] == "offline (promtool test rules), scrape 15s, evaluation 15s"
    for exp in doc["expectations"]:
        assert exp["status"] == "PASS"
        # Firing is an evaluation instant of the 15 s grid, after the injection.
        assert exp["firing_at"] % 15 == 0
        assert 0 < exp["firing_latency_seconds"] <= exp["firing_budget_seconds"]
    print(f"{path.stem}: {elapsed:.2f}s offline")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_each_emitted_test_passes_promtool_on_its_own(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ci"
    res = run_cli("--emit", str(out), str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    test = out / f"{load_drill(path).name}.test.yml"
    assert res.stderr == f"{path}: wrote {test} (passes as drilled)\n"
    check = subprocess.run(["promtool", "check", "rules", *sorted(map(str, (out / "rules")
                                                                        .glob("*.yml")))],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    moved = tmp_path / "elsewhere"  # the directory stands alone: copy it anywhere and run it
    shutil.copytree(out, moved)
    run = subprocess.run(["promtool", "test", "rules", test.name], cwd=moved,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = yaml.safe_load(test.read_text())
    (group,) = doc["tests"]
    assert doc["evaluation_interval"] == "15s" and group["interval"] == "15s"
    assert len(group["alert_rule_test"]) == len(load_drill(path).expectations)
    size = test.stat().st_size
    samples = sum(len(offline.expand(s["values"])) for s in group["input_series"])
    print(f"{path.stem}: {size} bytes, {len(group['input_series'])} series, {samples} samples")
    assert size < 40 * samples  # compressed: well under the ~20-byte float of every sample


def test_several_drills_at_once_give_one_json_array_and_one_junit_report(
        tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    res = run_cli("--offline", str(DRILLS / "hung-job.yaml"), str(DRILLS / "nan-loss.yaml"),
                  "--output", "json", "--junit", str(junit))
    assert res.returncode == 0, res.stderr
    assert [d["drill"] for d in json.loads(res.stdout)] == ["hung-job", "nan-loss"]
    root = ElementTree.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0"
    assert [s.get("name") for s in root] == ["trainsim drill hung-job", "trainsim drill nan-loss"]


def test_the_scrape_interval_is_the_flags_then_the_drill_files(tmp_path: Path) -> None:
    drill = tmp_path / "hung.yaml"
    drill.write_text((DRILLS / "hung-job.yaml").read_text().replace(
        "config: ../scenarios/", f"config: {REPO}/configs/scenarios/")
        + "scrape_interval: 30s\nevaluation_interval: 30s\n")
    res = run_cli("--offline", str(drill), "--output", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["judged_by"].endswith("scrape 30s, evaluation 30s")
    assert doc["expectations"][0]["firing_at"] % 30 == 0
    res = run_cli("--offline", str(drill), "--scrape-interval", "10s", "--evaluation-interval",
                  "20s", "--output", "json")
    assert json.loads(res.stdout)["judged_by"].endswith("scrape 10s, evaluation 20s")


# --------------------------------------------------------------------------- broken rules


def broken(tmp_path: Path, old: str, new: str) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "trainsim-alerts.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return rules


BREAKAGES = {
    "threshold never reached": (
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 1',
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 2',
        "did not fire within 180.0s"),
    "for longer than the budget": (
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 1\n'
        "        for: 1m",
        'expr: max without (alert) (trainsim_alert_active{alert="divergence"}) == 1\n'
        "        for: 4m",
        "did not fire within 180.0s (only pending)"),
    "label matcher typo": (
        'trainsim_alert_active{alert="divergence"}',
        'trainsim_alert_active{alert="divergance"}',
        "did not fire within 180.0s"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_rule_fails_offline_naming_the_alert_and_the_expectation(
        breakage: str, tmp_path: Path) -> None:
    old, new, message = BREAKAGES[breakage]
    rules = broken(tmp_path, old, new)
    res = run_cli("--offline", str(DRILLS / "lr-spike-divergence.yaml"), "--rules", str(rules))
    assert res.returncode == 1, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith(": FAIL")
    (row,) = [ln for ln in lines if ln.startswith("TrainsimRunDiverging{")]
    assert row.startswith('TrainsimRunDiverging{run=~"victim",severity=~"critical",'
                          'drill=~"true"}')
    assert row.endswith(f"FAIL: {message}")
    # The emitted test fails under promtool on the same rules, on the same alert.
    out = tmp_path / "ci"
    emitted = run_cli("--emit", str(out), "--rules", str(rules),
                      str(DRILLS / "lr-spike-divergence.yaml"))
    assert emitted.returncode == 0 and "(FAILS as drilled)" in emitted.stderr
    run = subprocess.run(["promtool", "test", "rules", "lr-spike-divergence.test.yml"],
                         cwd=out, capture_output=True, text=True)
    assert run.returncode == 1
    assert 'alertname="TrainsimRunDiverging"' in run.stdout + run.stderr


def test_a_rule_that_fires_on_healthy_runs_is_a_false_positive_offline(tmp_path: Path) -> None:
    rules = broken(tmp_path, "  - name: trainsim.detectors\n    rules:\n",
                   "  - name: trainsim.detectors\n    rules:\n"
                   "      - alert: TrainsimLossAlwaysHigh\n"
                   "        expr: trainsim_loss > 0\n"
                   "        for: 10s\n"
                   "        labels: {severity: warning}\n")
    res = run_cli("--offline", str(DRILLS / "hung-job.yaml"), "--rules", str(rules),
                  "--output", "json")
    assert res.returncode == 1
    doc: dict[str, Any] = json.loads(res.stdout)
    assert doc["expectations"][0]["status"] == "PASS"
    assert {fp["labels"]["run"] for fp in doc["false_positives"]} == {"baseline"}


# --------------------------------------------------------------------------- mistakes


def test_mistakes_are_one_line_before_anything_runs(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    hung = str(DRILLS / "hung-job.yaml")
    code, _, err = trainsim(capsys, "drill", "--offline", hung, "--daemon", "http://x:1")
    assert (code, err) == (2, "trainsim: drill: --daemon is for live drills, not --offline or "
                              "--emit\n")
    code, _, err = trainsim(capsys, "drill", hung, str(DRILLS / "nan-loss.yaml"))
    assert (code, err) == (2, "trainsim: drill: a live drill takes one drill file (--offline "
                              "takes several)\n")
    code, _, err = trainsim(capsys, "drill", "--offline", hung, "--scrape-interval", "0s")
    assert code == 2 and len(err.splitlines()) == 1 and "--scrape-interval" in err
    code, _, err = trainsim(capsys, "drill", hung, "--scrape-interval", "15s")
    assert (code, err) == (2, "trainsim: drill: --scrape-interval is for --offline and --emit\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"config: {REPO}/configs/scenarios/hung-job.yaml\nscrape_interval: soon\n"
                   "expect: [{alert: X, firing_within: 1m}]\n")
    code, _, err = trainsim(capsys, "drill", "--offline", str(bad))
    assert code == 2
    assert err == (f"{bad}:2: scrape_interval: must be a duration like 15s or 1m, got 'soon'\n")


def test_without_promtool_it_is_one_line_and_exit_3(tmp_path: Path) -> None:
    res = run_cli("--offline", str(DRILLS / "hung-job.yaml"), env={"PATH": str(tmp_path)})
    assert res.returncode == 3
    assert res.stderr == ("trainsim: drill could not run: offline drills need promtool, which "
                          "is not on PATH (Debian's prometheus package has it)\n")


def test_rules_promtool_cannot_load_are_one_line_and_exit_3(tmp_path: Path) -> None:
    rules = broken(tmp_path, "for: 1m", "for: 1 minute")
    res = run_cli("--offline", str(DRILLS / "nan-loss.yaml"), "--rules", str(rules))
    assert res.returncode == 3
    (line,) = res.stderr.splitlines()
    assert line.startswith("trainsim: drill could not run: promtool test rules failed")
