"""The `fleet:` block: generated runs, seeded variation, failures, errors; the series guard."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from simulator.config import ConfigError, load_config
from simulator.daemon import Daemon
from simulator.exposition import Renderer, series_count

FLEET = """
defaults: {steps: 100000, loop: true}
series_limit: 100000
runs:
  - name: hand-written
    optimizer: {learning_rate: 0.1}
fleet:
  count: 2000
  name_prefix: fleet
  seed: 7
  template:
    init: 5.5
    optimizer: {kind: sgd}
  learning_rate: {log_uniform: [1e-3, 1.0]}
  landscapes:
    quadratic: 0.7
    noisy_quadratic: {weight: 0.3, landscape: {dims: 4}, init: 1, optimizer: {kind: adam}}
  failures: {fraction: 0.05, kinds: [lr_spike, hang, nan], between: [5m, 30m], duration: 2m}
"""


def fleet_config(text: str = FLEET, **replace: str) -> Any:
    for old, new in replace.items():
        text = text.replace(old, new)
    return load_config(text, "fleet.yaml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, "fleet.yaml")
    return [str(i) for i in info.value.issues]


def test_fleet_generates_named_runs_after_the_hand_written_ones() -> None:
    cfg = fleet_config()
    names = [s.name for s in cfg.runs]
    assert names[0] == "hand-written"
    assert names[1:4] == ["fleet-00000", "fleet-00001", "fleet-00002"]
    assert names[-1] == "fleet-01999"
    assert len(set(names)) == len(names) == 2001
    assert cfg.series_limit == 100000


def test_same_seed_gives_the_same_fleet_and_another_seed_a_different_one() -> None:
    a, b = fleet_config(), fleet_config()
    assert a.runs == b.runs
    other = fleet_config(**{"seed: 7": "seed: 8"})
    assert [s.optimizer.learning_rate for s in other.runs] != \
        [s.optimizer.learning_rate for s in a.runs]


def test_a_run_keeps_its_values_when_the_fleet_grows() -> None:
    small = {s.name: s for s in fleet_config(**{"count: 2000": "count: 100"}).runs}
    for s in fleet_config().runs[:101]:
        if s.name in small:
            assert small[s.name].optimizer == s.optimizer
            assert small[s.name].landscape == s.landscape


def test_learning_rates_are_log_uniform_within_bounds() -> None:
    lrs = np.array([s.optimizer.learning_rate for s in fleet_config().runs[1:]])
    assert lrs.min() >= 1e-3 and lrs.max() <= 1.0
    # log10 uniform on [-3, 0]: a quarter of the draws in each of four equal bins
    counts, _ = np.histogram(np.log10(lrs), bins=4, range=(-3, 0))
    assert all(abs(c - 500) < 90 for c in counts), counts


def test_landscapes_follow_their_weights_and_sub_templates() -> None:
    runs = fleet_config().runs[1:]
    kinds = Counter(s.landscape.kind for s in runs)
    assert abs(kinds["noisy_quadratic"] / len(runs) - 0.3) < 0.04
    noisy = next(s for s in runs if s.landscape.kind == "noisy_quadratic")
    assert noisy.landscape.dims == 4 and noisy.init == (1.0,) * 4
    assert noisy.optimizer.kind == "adam"
    plain = next(s for s in runs if s.landscape.kind == "quadratic")
    assert plain.init == (5.5,) and plain.optimizer.kind == "sgd"
    assert plain.steps == 100000 and plain.loop  # from defaults


def test_exactly_the_failure_fraction_of_runs_gets_one_fault_in_the_window() -> None:
    runs = fleet_config().runs[1:]
    faulty = [s for s in runs if s.faults]
    assert len(faulty) == 100  # 5% of 2000
    for s in faulty:
        (f,) = s.faults
        assert f.kind in ("lr_spike", "hang", "nan")
        assert 300 <= f.at <= 1800
        assert f.duration == 120
    assert set(Counter(s.faults[0].kind for s in faulty)) == {"lr_spike", "hang", "nan"}


def test_failures_without_duration_use_the_kinds_default() -> None:
    cfg = fleet_config(**{", duration: 2m}": "}", "[lr_spike, hang, nan]": "[drift, hang]"})
    durations = {s.faults[0].kind: s.faults[0].duration for s in cfg.runs if s.faults}
    assert durations == {"drift": 60.0, "hang": math.inf}


def test_fleet_alone_needs_no_runs_list_and_a_constant_learning_rate_works() -> None:
    cfg = load_config("fleet: {count: 3, template: {optimizer: {learning_rate: 0.2}}}", "f")
    assert [s.name for s in cfg.runs] == ["fleet-00000", "fleet-00001", "fleet-00002"]
    assert {s.optimizer.learning_rate for s in cfg.runs} == {0.2}
    cfg = load_config("fleet: {count: 2, learning_rate: 0.3, init: {uniform: [1, 2]}}", "f")
    assert {s.optimizer.learning_rate for s in cfg.runs} == {0.3}
    assert all(1 <= s.init[0] <= 2 for s in cfg.runs)


def test_generating_100k_runs_takes_well_under_a_few_seconds() -> None:
    # A coarse guard against a per-run slow path, not a benchmark (bench_fleet.py has figures).
    t = time.perf_counter()
    cfg = fleet_config(**{"count: 2000": "count: 100000"})
    assert len(cfg.runs) == 100001
    assert time.perf_counter() - t < 5


def test_fleet_mistakes_are_reported_together_with_file_and_line() -> None:
    text = """\
series_limit: -3
fleet:
  count: 0
  name_prefix: "bad prefix"
  colour: red
  template:
    name: x
  learning_rate: {log_uniform: [0, 1]}
  landscapes:
    banana: 1
    noisy_quadratic: {weight: 1, landscape: {kind: plateau}}
  failures: {fraction: 1.5, kinds: [boom], between: [30m, 5m]}
"""
    assert errors(text) == [
        "fleet.yaml:1: series_limit: must be between 1 and 1000000000000, got -3",
        "fleet.yaml:3: fleet.count: must be between 1 and 1000000, got 0",
        "fleet.yaml:4: fleet.name_prefix: must match [a-zA-Z0-9_.-]+, got str 'bad prefix'",
        "fleet.yaml:5: fleet.colour: unknown key (expected one of: count, failures, init, "
        "landscapes, learning_rate, name_prefix, seed, template)",
        "fleet.yaml:7: fleet.template.name: unknown key (expected one of: clip_grad_norm, "
        "detect, faults, gradient_noise, hardware, init, landscape, loop, loss_noise, "
        "optimizer, replay, schedule, seed, step_interval, steps)",
        "fleet.yaml:8: fleet.learning_rate.log_uniform: must be > 0, got 0",
        "fleet.yaml:10: fleet.landscapes.banana: unknown landscape kind 'banana' (expected "
        "one of: quadratic, rosenbrock, noisy_quadratic, plateau, logistic_regression)",
        "fleet.yaml:11: fleet.landscapes.noisy_quadratic.landscape.kind: must be "
        "'noisy_quadratic' (the key it is listed under) or left out",
        "fleet.yaml:12: fleet.failures.between: must satisfy 0 <= earliest <= latest, got "
        "[1800s, 300s]",
        "fleet.yaml:12: fleet.failures.fraction: must be between 0 and 1, got 1.5",
        "fleet.yaml:12: fleet.failures.kinds[0]: unknown fault kind 'boom' (expected one of: "
        "lr_spike, gradient_explosion, nan, plateau, drift, noise_burst, slow_steps, hang, "
        "crash, dataloader_stall, straggler, thermal_throttle, gpu_lost, loss_spike)",
    ]


def test_template_mistakes_are_named_by_their_template_path_once() -> None:
    text = """\
fleet:
  count: 10
  template:
    optimizer: {kind: sgd, learning_rate: -1}
  landscapes:
    quadratic: 1
    plateau: {weight: 1, init: [1, 2]}
"""
    assert errors(text) == [
        "fleet.yaml:4: fleet.template.optimizer.learning_rate: must be > 0, got -1",
        "fleet.yaml:7: fleet.landscapes.plateau.init: the plateau landscape has 1 parameter, "
        "got a list of 2",
    ]


def test_a_hand_written_run_may_not_take_a_generated_name() -> None:
    text = """\
runs:
  - name: fleet-00001
    optimizer: {learning_rate: 0.1}
fleet: {count: 5, learning_rate: 0.1}
"""
    assert errors(text) == ["fleet.yaml:2: runs: run name 'fleet-00001' is also generated by "
                            "the fleet (line 4)"]


# --------------------------------------------------------------------------- series guard


def test_exposed_series_counts_every_sample_of_the_exposition() -> None:
    cfg = fleet_config(**{"count: 2000": "count: 200",
                          "between: [5m, 30m]": "between: [0s, 1s]"})
    now = [0.0]
    d = Daemon(cfg, clock=lambda: now[0], log=structlog.get_logger("test"))
    for t in (0.5, 2.0, 200.0):  # the nan and hang faults are active after 1 s
        now[0] = t
        d.tick()
        text = d.exposition(openmetrics=False, gzipped=False).decode()
        samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        assert d.registry.get_sample_value("trainsim_exposed_series") == len(samples)
    snap = d.snapshot
    per_run = Renderer().render(snap).splitlines()
    assert series_count(snap) == sum(1 for ln in per_run if not ln.startswith("#"))


def test_crashed_runs_do_not_count_as_exposed_series() -> None:
    text = """
runs:
  - name: a
    optimizer: {learning_rate: 0.1}
    faults: [{kind: crash, at: 1s, duration: 1m}]
  - name: b
    optimizer: {learning_rate: 0.1}
"""
    now = [0.0]
    d = Daemon(load_config(text, "c"), clock=lambda: now[0], log=structlog.get_logger("t"))
    before = d.registry.get_sample_value("trainsim_exposed_series")
    now[0] = 2.0
    d.tick()
    after = d.registry.get_sample_value("trainsim_exposed_series")
    assert before is not None and after is not None
    assert before - after == 18 + 2  # a's 18 per-run series and its 2 fault series


def test_series_limit_warns_once_per_crossing() -> None:
    base = "series_limit: {limit}\nfleet: {{count: {count}, learning_rate: 0.1}}\n"
    now = [0.0]
    with capture_logs() as logs:
        d = Daemon(load_config(base.format(limit=500, count=10), "c"), clock=lambda: now[0])
        for count in (40, 50, 10, 60):  # 18 series per run, plus the daemon's own
            now[0] += 1
            d.apply(load_config(base.format(limit=500, count=count), "c"))
            d.tick()
            d.tick()
    guard = [(e["event"], e["series"]) for e in logs
             if e["event"] in ("series_limit_exceeded", "series_limit_ok")]
    own = d.registry.get_sample_value("trainsim_exposed_series") - 60 * 18  # type: ignore[operator]
    assert guard == [("series_limit_exceeded", 40 * 18 + own), ("series_limit_ok", 10 * 18 + own),
                     ("series_limit_exceeded", 60 * 18 + own)]
    warning = next(e for e in logs if e["event"] == "series_limit_exceeded")
    assert warning["log_level"] == "warning" and warning["series_limit"] == 500


def test_a_large_fleet_logs_one_summary_instead_of_a_line_per_run(tmp_path: Path) -> None:
    with capture_logs() as logs:
        Daemon(load_config("fleet: {count: 1001, learning_rate: 0.1}", "c"))
    started = [e for e in logs if e["event"] in ("run_started", "runs_started")]
    assert started == [{"event": "runs_started", "runs": 1001, "first": "fleet-00000",
                        "last": "fleet-01000", "log_level": "info"}]
