"""Engine: closed-form trajectories, determinism, pacing by elapsed time, detection, reload."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from simulator.collector import TrainsimCollector
from simulator.config import RunSpec, load_config, load_default
from simulator.detectors import Detection
from simulator.engine import ALERTS, STATES, Engine

SEED_RATES = (0.05, 0.2, 0.7, 1.1)
NO_DIVERGENCE = Detection(divergence_loss=1e300, divergence_parameter=1e300,
                          divergence_growth_steps=0)


def one_step_a_second() -> list[RunSpec]:
    """The default config's four runs, stepping once a second (what these tests count in)."""
    return [dataclasses.replace(r, step_interval=1.0, steps=300) for r in load_default().runs]


def seed_runs(detect: Detection = NO_DIVERGENCE) -> list[RunSpec]:
    return [dataclasses.replace(r, detect=detect, loop=False) for r in one_step_a_second()]


def registry_of(engine: Engine) -> CollectorRegistry:
    reg = CollectorRegistry()
    snap = engine.snapshot(1)
    reg.register(TrainsimCollector(lambda: snap))
    return reg


@pytest.mark.parametrize("lr", SEED_RATES)
def test_exported_values_follow_the_closed_form_for_60_steps(lr: float) -> None:
    # J(w) = a (w - c)^2 + b descends as w_k = c + (1 - 2 a lr)^k (w0 - c).
    a, c, b, w0 = 1.0, 2.0, 1.0, 5.5
    run = next(r for r in seed_runs() if r.optimizer.learning_rate == lr)
    engine = Engine([run])
    for k in range(61):
        engine.advance(float(k))
        reg = registry_of(engine)
        displacement = (1 - 2 * a * lr) ** k * (w0 - c)  # w_k - c
        expected = {
            "trainsim_parameter": c + displacement,
            "trainsim_loss": a * displacement**2 + b,
            # above the floor b, with the precision J itself loses once it nears b
            "trainsim_excess_loss": a * displacement**2,
            "trainsim_gradient_norm": abs(2 * a * displacement),
        }
        labels = {"run": run.name}
        assert reg.get_sample_value("trainsim_steps_total", labels) == k
        for metric, want in expected.items():
            extra = {"dim": "0"} if metric == "trainsim_parameter" else {}
            got = reg.get_sample_value(metric, {**labels, **extra})
            assert got == pytest.approx(want, rel=1e-12, abs=0), (metric, k)


def test_same_config_gives_bit_identical_series() -> None:
    runs = one_step_a_second()
    e1, e2 = Engine(runs), Engine(runs)
    for t in np.arange(0, 700, 0.37):
        e1.advance(float(t))
        e2.advance(float(t))
    s1, s2 = e1.snapshot(1), e2.snapshot(1)
    for field in ("loss", "gradient_norm", "learning_rate", "update_norm", "steps", "state",
                  "alerts"):
        assert getattr(s1, field).tobytes() == getattr(s2, field).tobytes(), field
    assert s1.parameters[0][1].tobytes() == s2.parameters[0][1].tobytes()


def test_a_runs_series_and_verdicts_do_not_depend_on_its_fleet_companions() -> None:
    # The detectors' ring buffer is read on a fast path when a whole group is at one step
    # (diverged, held rows included) and gathered row by row otherwise; companions that
    # diverge, or step at another interval, must not change a bit of the other runs.
    subjects = """
  - {name: stall, init: 5.5, optimizer: {learning_rate: 0.01}, loss_noise: 0.05,
     faults: [{kind: plateau, at: 40s, duration: 60s}]}
  - {name: edge, init: 5.5, optimizer: {learning_rate: 1.01},
     detect: {divergence_growth_steps: 0}}
  - {name: slow, init: 5.5, optimizer: {learning_rate: 0.002}}
"""
    companions = """
  - {name: blow-up, init: 5.5, optimizer: {learning_rate: 1.1}}
  - {name: other-pace, init: 5.5, optimizer: {learning_rate: 0.01}, step_interval: 0.7s}
"""
    alone = Engine(load_config("defaults: {steps: 300}\nruns:" + subjects, "a.yaml").runs)
    fleet = Engine(load_config("defaults: {steps: 300}\nruns:" + subjects + companions,
                               "b.yaml").runs)
    seen = set()
    for t in range(1, 200):
        alone.advance(float(t))
        fleet.advance(float(t))
        a, b = alone.snapshot(t), fleet.snapshot(t)
        rows = [b.names.index(n) for n in a.names]
        for field in ("loss", "gradient_norm", "update_norm", "state", "alerts"):
            assert getattr(a, field).tobytes() == getattr(b, field)[rows].tobytes(), (t, field)
        seen |= {ALERTS[j] for j in np.flatnonzero(a.alerts.any(axis=0))}
        seen |= {STATES[x] for x in b.state}
    assert {"stall", "oscillation", "diverged"} <= seen  # every path was exercised


def test_step_index_depends_on_elapsed_time_not_on_how_often_advance_is_called() -> None:
    runs = seed_runs()
    smooth, jumpy = Engine(runs), Engine(runs)
    for t in np.arange(0.0, 40.0, 0.1):
        smooth.advance(float(t))
    jumpy.advance(3.3)
    jumpy.advance(3.3)  # a repeated time does not double a step
    jumpy.advance(39.95)
    assert smooth.runs.step.tolist() == jumpy.runs.step.tolist() == [39] * 4
    assert smooth.runs.loss.tobytes() == jumpy.runs.loss.tobytes()


def test_step_interval_and_speed_of_time_set_the_step_count() -> None:
    cfg = load_config("runs:\n  - name: fast\n    step_interval: 250ms\n"
                      "    optimizer: {learning_rate: 0.1}\n    steps: 1000\n", "f.yaml")
    engine = Engine(cfg.runs)
    engine.advance(10.0)
    assert int(engine.runs.step[0]) == 40


def test_default_config_lr_1_1_diverges_and_the_others_converge_without_alerts() -> None:
    engine = Engine(one_step_a_second())
    seen_alerts: dict[str, set[str]] = {n: set() for n in engine.names}
    seen_states: dict[str, set[str]] = {n: set() for n in engine.names}
    for t in range(0, 300):
        engine.advance(float(t))
        snap = engine.snapshot(1)
        for i, name in enumerate(snap.names):
            seen_states[name].add(STATES[snap.state[i]])
            seen_alerts[name].update(a for j, a in enumerate(ALERTS) if snap.alerts[i, j])
    assert "diverged" in seen_states["lr-1.1"]
    assert seen_alerts["lr-1.1"] == {"divergence"}
    for name in ("lr-0.2", "lr-0.7", "lr-0.05"):
        assert "converged" in seen_states[name], name
        assert seen_alerts[name] == set(), name
        assert "diverged" not in seen_states[name]
        assert "stalled" not in seen_states[name]


def test_divergence_is_detected_after_the_configured_rising_streak_and_the_run_holds() -> None:
    engine = Engine([r for r in one_step_a_second() if r.name == "lr-1.1"])
    engine.advance(9.0)
    assert STATES[engine.runs.state[0]] == "running"
    engine.advance(10.0)
    assert STATES[engine.runs.state[0]] == "diverged"
    held = (engine.runs.loss.copy(), int(engine.runs.step[0]))
    engine.advance(200.0)
    assert engine.runs.loss.tobytes() == held[0].tobytes()
    assert int(engine.runs.step[0]) == held[1] == 10


def test_a_non_finite_step_holds_the_last_finite_values() -> None:
    # Growth 1.44x per step from 12.25 overflows float64 after ~1900 steps.
    run = dataclasses.replace(seed_runs()[3], steps=5000)
    engine = Engine([run])
    engine.advance(4000.0)
    assert STATES[engine.runs.state[0]] == "diverged"
    assert np.isfinite(engine.runs.loss).all()
    assert np.isfinite(engine.parameters(run.name)).all()
    assert 1000 < int(engine.runs.step[0]) < 4000


def test_loss_threshold_divergence_uses_the_configured_limit() -> None:
    detect = Detection(divergence_loss=1000.0, divergence_growth_steps=0)
    engine = Engine([dataclasses.replace(seed_runs(detect)[3])])
    engine.advance(100.0)
    # loss_k = 1 + 12.25 * 1.44^k first exceeds 1000 at k = 13
    assert int(engine.runs.step[0]) == 13
    assert STATES[engine.runs.state[0]] == "diverged"


def test_stall_fires_on_a_flat_loss_and_not_on_a_slow_but_steady_descent() -> None:
    cfg = load_config("""
defaults: {steps: 500, init: 5.5, detect: {stall_window: 20, stall_min_improvement: 1e-4}}
runs:
  - name: crawl          # lr so small that the loss barely moves: a stall
    optimizer: {learning_rate: 1e-7}
  - name: slow-steady    # small but real progress every window
    optimizer: {learning_rate: 1e-3}
""", "f.yaml")
    engine = Engine(cfg.runs)
    engine.advance(19.0)
    assert [STATES[s] for s in engine.runs.state] == ["running", "running"]  # window not yet full
    engine.advance(28.0)  # the condition has held since step 19, for 9 steps
    assert [STATES[s] for s in engine.runs.state] == ["running", "running"]
    engine.advance(29.0)  # ... and now for stall_confirm_steps (10)
    assert [STATES[s] for s in engine.runs.state] == ["stalled", "running"]
    assert engine.snapshot(1).alerts[:, ALERTS.index("stall")].tolist() == [True, False]


def test_oscillation_fires_when_updates_flip_without_progress() -> None:
    # lr = 1 on a = 1 gives factor -1: w bounces between 5.5 and -1.5 forever.
    cfg = load_config("runs:\n  - name: bounce\n    init: 5.5\n    steps: 100\n"
                      "    optimizer: {learning_rate: 1.0}\n", "f.yaml")
    engine = Engine(cfg.runs)
    engine.advance(30.0)
    snap = engine.snapshot(1)
    assert snap.alerts[0].tolist() == [False, False, True]
    assert STATES[snap.state[0]] == "running"


def test_converged_then_finished_then_restarted_when_looping() -> None:
    run = dataclasses.replace(one_step_a_second()[1], steps=40)
    engine = Engine([run])
    engine.advance(39.0)
    assert STATES[engine.runs.state[0]] == "converged"
    events = engine.advance(40.0)
    assert STATES[engine.runs.state[0]] == "finished"
    assert [(t.old, t.new) for t in events.transitions] == [("converged", "finished")]
    events = engine.advance(41.0)
    assert events.restarts == (("lr-0.2", 1),)
    assert int(engine.runs.step[0]) == 0
    assert float(engine.runs.loss[0]) == 13.25
    engine.advance(41.0 + 40 * 41.0)  # forty more attempts in one jump
    assert int(engine.runs.restarts[0]) == 41


def test_non_looping_run_stays_finished() -> None:
    run = dataclasses.replace(one_step_a_second()[1], steps=10, loop=False)
    engine = Engine([run])
    engine.advance(1000.0)
    assert STATES[engine.runs.state[0]] == "finished"
    assert int(engine.runs.step[0]) == 10
    assert int(engine.runs.restarts[0]) == 0


def test_reconfigured_keeps_unchanged_runs_and_restarts_changed_ones() -> None:
    runs = one_step_a_second()
    engine = Engine(runs)
    engine.advance(15.0)
    before = engine.snapshot(1)
    changed = dataclasses.replace(runs[1], steps=200)
    added = dataclasses.replace(runs[0], name="new-run")
    new = engine.reconfigured([runs[0], changed, runs[3], added])
    snap = new.snapshot(2)
    rows = {n: i for i, n in enumerate(snap.names)}
    old_rows = {n: i for i, n in enumerate(before.names)}
    for kept in ("lr-0.05", "lr-1.1"):
        assert snap.steps[rows[kept]] == before.steps[old_rows[kept]] == 15 if kept == "lr-0.05" \
            else snap.steps[rows[kept]] == 10
        assert snap.loss[rows[kept]] == before.loss[old_rows[kept]]
    assert snap.steps[rows["lr-0.2"]] == 0
    assert snap.steps[rows["new-run"]] == 0
    assert "lr-0.7" not in rows
    new.advance(16.0)
    assert new.runs.step[new.row_of["lr-0.05"]] == 16
    assert new.runs.step[new.row_of["new-run"]] == 1


def test_a_reload_carries_every_per_run_field_of_an_unchanged_run() -> None:
    # Every field of the per-run state (detector memory included) and the stall window keep
    # their bits, whatever the kept run's new row; then it steps exactly as if never reloaded.
    from simulator.engine.state import RunState

    text = """
  - {name: noisy, init: 5.5, optimizer: {kind: momentum, learning_rate: 0.01}, loss_noise: 0.1,
     faults: [{kind: plateau, at: 20s, duration: 30s}]}
  - {name: ring, init: 5.5, optimizer: {learning_rate: 0.7}}
"""
    runs = load_config("defaults: {steps: 1000}\nruns:" + text, "a.yaml").runs
    other = load_config("runs:\n  - {name: a-first, init: 1, optimizer: {learning_rate: 0.1}}",
                        "b.yaml").runs
    engine, reference = Engine(runs), Engine(runs)
    engine.advance(40.0)
    reference.advance(40.0)
    new = engine.reconfigured([*other, *runs])
    assert RunState.names()  # the fields are what is compared, not a list written here
    for name in RunState.names():
        for run in ("noisy", "ring"):
            got = getattr(new.runs, name)[new.row_of[run]]
            want = getattr(engine.runs, name)[engine.row_of[run]]
            assert np.array_equal(got, want), (name, run)
    for t in range(41, 120):
        new.advance(float(t))
        reference.advance(float(t))
        for run in ("noisy", "ring"):
            i, j = new.row_of[run], reference.row_of[run]
            for name in RunState.names():
                assert getattr(new.runs, name)[i] == getattr(reference.runs, name)[j], (t, name)
