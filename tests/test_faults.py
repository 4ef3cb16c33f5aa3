"""Each fault kind changes exactly the series it should, from the step it should, until it ends.

Time is driven: the engine is advanced one simulated second at a time (step_interval 1s), and
every series is compared with a fault-free twin of the same run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from simulator.config import load_config
from simulator.engine import ALERTS, STATES, Engine, Snapshot

BASE = """
runs:
  - name: r
    init: 5.5
    optimizer: {learning_rate: 0.05}
"""


def engine_with(faults: str = "", extra: str = "    steps: 1000\n") -> Engine:
    text = BASE + extra + (f"    faults:\n{faults}" if faults else "")
    return Engine(load_config(text, "f.yaml").runs)


def trace(engine: Engine, seconds: int) -> list[Snapshot]:
    """Snapshots at t = 0, 1, ..., seconds."""
    out = []
    for t in range(seconds + 1):
        engine.advance(float(t))
        out.append(engine.snapshot(t))
    return out


def series(snaps: list[Snapshot], field: str) -> list[float]:
    return [float(getattr(s, field)[0]) for s in snaps]


def fault_flag(snap: Snapshot, kind: str) -> bool | None:
    for (row, k), on in zip(snap.fault_pairs, snap.fault_active.tolist(), strict=True):
        if row == 0 and k == kind:
            return bool(on)
    return None


@pytest.fixture(scope="module")
def twin() -> list[Snapshot]:
    return trace(engine_with(), 60)


def first_difference(a: list[float], b: list[float]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            return i
    return None


def test_lr_spike_multiplies_the_learning_rate_of_exactly_the_steps_in_its_window(
        twin: list[Snapshot]) -> None:
    snaps = trace(engine_with("      - {kind: lr_spike, at: 10s, duration: 5s, factor: 3}\n"), 30)
    lr = series(snaps, "learning_rate")
    assert lr[1:10] == [0.05] * 9
    assert lr[10:15] == pytest.approx([0.15] * 5)
    assert lr[15:31] == [0.05] * 16
    assert series(snaps, "loss")[:10] == series(twin, "loss")[:10]
    # Closed form with the spiked factors: z_k = z_{k-1} (1 - 2 lr_k), w = 2 + z.
    z = 3.5
    for k in range(1, 31):
        z *= 1 - 2 * lr[k]
        assert series(snaps, "loss")[k] == pytest.approx(z * z + 1, rel=1e-12)
    assert [fault_flag(s, "lr_spike") for s in snaps[9:16]] == [False] + [True] * 5 + [False]
    assert snaps[30].faults_injected.tolist() == [1.0]


def test_gradient_explosion_scales_the_observed_gradient_and_the_next_update(
        twin: list[Snapshot]) -> None:
    snaps = trace(engine_with(
        "      - {kind: gradient_explosion, at: 10s, steps: 1, factor: 100}\n"), 20)
    g, g0 = series(snaps, "gradient_norm"), series(twin, "gradient_norm")
    assert g[:10] == g0[:10]
    assert g[10] == pytest.approx(100 * g0[10], rel=1e-12)
    loss, loss0 = series(snaps, "loss"), series(twin, "loss")
    assert loss[10] == loss0[10]  # the update of step 10 used step 9's honest gradient
    # The exploded gradient drives the next update: z_11 = z_10 (1 - 0.05 * 2 * 100).
    z10 = 3.5 * 0.9**10
    assert loss[11] == pytest.approx((z10 * (1 - 10.0)) ** 2 + 1, rel=1e-12)
    assert g[12] != pytest.approx(100 * g0[12])  # the window is over


def test_nan_makes_loss_and_gradient_nan_from_its_step_and_diverges_the_run(
        twin: list[Snapshot]) -> None:
    snaps = trace(engine_with("      - {kind: nan, at: 10s, duration: 10s}\n"), 30)
    loss = series(snaps, "loss")
    assert loss[:10] == series(twin, "loss")[:10]
    assert all(math.isnan(x) for x in loss[10:20])
    assert all(math.isnan(x) for x in series(snaps, "gradient_norm")[10:20])
    assert STATES[snaps[10].state[0]] == "diverged"
    assert snaps[10].alerts[0, ALERTS.index("divergence")]
    # After the window the run holds its last finite values (those of step 9).
    assert loss[20:] == [loss[9]] * 11
    # Step 10 was taken (and produced NaN); the diverged run then holds.
    assert series(snaps, "steps")[10:] == [10.0] * 21


def test_plateau_freezes_updates_shrinks_the_gradient_and_raises_a_stall(
        twin: list[Snapshot]) -> None:
    snaps = trace(engine_with("      - {kind: plateau, at: 10s, duration: 30s}\n"), 60)
    loss, g = series(snaps, "loss"), series(snaps, "gradient_norm")
    g0 = series(twin, "gradient_norm")
    assert loss[:10] == series(twin, "loss")[:10]
    assert loss[10:40] == [loss[9]] * 30  # updates frozen: the loss is flat
    assert g[10] == pytest.approx(0.01 * g0[9], rel=1e-12)
    assert series(snaps, "update_norm")[10:40] == [0.0] * 30
    stalled = [bool(s.alerts[0, ALERTS.index("stall")]) for s in snaps]
    # Flat since step 9: both 10-step blocks of the 20-step window lie in the flat stretch
    # from step 28, and the verdict begins once that has held for stall_confirm_steps (10).
    assert stalled.index(True) == 37
    assert STATES[snaps[38].state[0]] == "stalled"
    assert loss[40] < loss[39]  # descent resumes with the step at which the plateau ends
    # Hysteresis: the alert clears once the condition has been false for clear_steps (10).
    first_clear = stalled.index(False, 38)
    assert 40 < first_clear <= 52
    assert not any(stalled[first_clear:])


def test_drift_moves_the_optimum_over_its_window_and_the_loss_climbs_back(
        twin: list[Snapshot]) -> None:
    snaps = trace(engine_with("      - {kind: drift, at: 10s, duration: 10s, shift: -2}\n"),
                  200)
    loss, loss0 = series(snaps, "loss"), series(twin, "loss")
    assert loss[:11] == loss0[:11]  # at its first step the optimum has not moved yet
    assert loss[15] > loss[11] > loss0[11]  # the optimum runs away: the loss climbs back
    w = [float(s.parameters[0][1][0, 0]) for s in snaps]
    assert w[200] == pytest.approx(0.0, abs=1e-6)  # converges to the moved optimum c + shift
    assert min(loss[100:]) >= 1.0


def test_noise_burst_adds_seeded_noise_only_inside_its_window(twin: list[Snapshot]) -> None:
    faults = "      - {kind: noise_burst, at: 10s, duration: 5s, sigma: 0.5, factor: 2}\n"
    a, b = trace(engine_with(faults), 30), trace(engine_with(faults), 30)
    g, g0 = series(a, "gradient_norm"), series(twin, "gradient_norm")
    assert first_difference(g, g0) == 10
    assert series(a, "loss") == series(b, "loss")  # same seed, same noise, bit for bit
    other = trace(engine_with(faults, extra="    steps: 1000\n    seed: 7\n"), 30)
    assert series(other, "loss")[11] != series(a, "loss")[11]


def test_slow_steps_divides_the_step_rate_inside_its_window() -> None:
    snaps = trace(engine_with("      - {kind: slow_steps, at: 10s, duration: 20s, factor: 4}\n"),
                  40)
    steps = series(snaps, "steps")
    assert steps[9] == 9 and steps[10] == 10
    assert steps[29] == 14  # 20 s at a quarter of the rate: 5 steps
    assert steps[30] == 15 and steps[40] == 25


def test_hang_stops_steps_and_freezes_the_timestamp_while_series_stay() -> None:
    engine = engine_with("      - {kind: hang, at: 10s, duration: 20s}\n")
    snaps = trace(engine, 40)
    steps = series(snaps, "steps")
    assert steps[9:30] == [9.0] * 21
    ts = series(snaps, "last_step_timestamp")
    assert ts[9:30] == [9.0] * 21
    assert series(snaps, "loss")[9:30] == [series(snaps, "loss")[9]] * 21
    assert all(s.present[0] for s in snaps)
    assert steps[30] == 10 and steps[40] == 20  # stepping resumes where it stopped


def test_crash_removes_the_run_then_restarts_it_from_scratch() -> None:
    snaps = trace(engine_with("      - {kind: crash, at: 10s, duration: 20s}\n"), 40)
    present = [bool(s.present[0]) for s in snaps]
    assert present[:10] == [True] * 10
    assert present[10:30] == [False] * 20
    assert present[30:] == [True] * 11
    assert series(snaps, "steps")[29] == 9  # no steps while crashed
    assert series(snaps, "steps")[30] == 0 and series(snaps, "steps")[35] == 5
    assert series(snaps, "restarts")[29] == 0 and series(snaps, "restarts")[30] == 1
    assert series(snaps, "loss")[30] == 13.25


def test_faults_follow_the_runs_timeline_across_loop_restarts() -> None:
    snaps = trace(engine_with("      - {kind: lr_spike, at: 5s, duration: 2s}\n",
                              extra="    loop: true\n    steps: 9\n"), 40)
    lr = series(snaps, "learning_rate")
    spiked = [t for t, x in enumerate(lr) if x > 0.05 + 1e-12]
    assert spiked == [5, 6]  # once on the run's timeline, not again in later attempts
    assert series(snaps, "restarts")[40] == 4


def test_results_do_not_depend_on_how_time_is_driven() -> None:
    faults = ("      - {kind: lr_spike, at: 3.5s, duration: 2s, factor: 5}\n"
              "      - {kind: slow_steps, at: 12s, duration: 7s, factor: 3}\n"
              "      - {kind: hang, at: 21s, duration: 4s}\n"
              "      - {kind: noise_burst, at: 30s, duration: 6s}\n"
              "      - {kind: crash, at: 40s, duration: 3s}\n")
    fine, coarse = engine_with(faults), engine_with(faults)
    for t in np.arange(0.0, 60.0, 0.01):
        fine.advance(float(t))
    fine.advance(60.0)
    for t in (7.3, 7.3, 19.0, 44.4, 60.0):
        coarse.advance(t)
    a, b = fine.snapshot(1), coarse.snapshot(1)
    for field in ("loss", "gradient_norm", "steps", "restarts", "learning_rate",
                  "last_step_timestamp"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), field


def test_injected_and_cleared_faults_are_reported_as_events() -> None:
    engine = engine_with("      - {kind: lr_spike, at: 2s, duration: 3s}\n")
    events: list[Any] = []
    for t in range(8):
        events.append(engine.advance(float(t)))
    injected = [e for ev in events for e in ev.faults_injected]
    cleared = [e for ev in events for e in ev.faults_cleared]
    assert [(e.run, e.kind, e.source) for e in injected] == [("r", "lr_spike", "config")]
    assert [(e.run, e.kind) for e in cleared] == [("r", "lr_spike")]
    assert events[2].faults_injected and events[5].faults_cleared


def test_live_injection_and_early_clear() -> None:
    from simulator.faults.catalogue import FaultSpec

    engine = engine_with()
    engine.advance(5.0)
    rec = engine.inject("r", FaultSpec("lr_spike", 0.0, math.inf, (("factor", 2.0),)))
    assert [r.id for r in engine.active_faults("r")] == [rec.id]
    engine.advance(8.0)
    assert float(engine.runs.lr[0]) == pytest.approx(0.1)
    engine.clear("r", rec.id)
    assert engine.active_faults("r") == []
    engine.advance(9.0)
    assert float(engine.runs.lr[0]) == 0.05
    with pytest.raises(KeyError):
        engine.clear("r", "nope")


def test_ended_faults_leave_every_table_and_their_ground_truth_stays() -> None:
    from simulator.faults.catalogue import FaultSpec

    engine = engine_with()
    for i in range(4000):  # one-millisecond faults, each ended before the next begins
        engine.inject("r", FaultSpec("lr_spike", 0.0, 0.001, (("factor", 2.0),)))
        engine.advance(engine.now + 0.002)
        assert engine.timeline.records == [], i
    assert engine.timeline.table.start.size == 0
    # The series of what happened stay: 4000 windows began, none is active.
    snap = engine.snapshot(1)
    assert snap.fault_pairs == ((0, "lr_spike"),)
    assert snap.faults_injected.tolist() == [4000.0]
    assert snap.fault_active.tolist() == [False]
    # A cleared fault leaves too.
    rec = engine.inject("r", FaultSpec("plateau", 0.0, math.inf, (("factor", 0.01),)))
    engine.clear("r", rec.id)
    assert engine.timeline.records == []


def test_a_run_has_at_most_sixteen_faults_active_or_to_come() -> None:
    from simulator.faults.catalogue import FaultSpec
    from simulator.faults.timeline import MAX_FAULTS_PER_RUN, FaultLimitError

    engine = engine_with()
    spike = FaultSpec("lr_spike", 0.0, 60.0, (("factor", 1.01),))
    ids = [engine.inject("r", spike).id for _ in range(MAX_FAULTS_PER_RUN)]
    with pytest.raises(FaultLimitError, match="has 16 faults active or to come"):
        engine.inject("r", spike)
    engine.clear("r", ids[0])
    engine.inject("r", spike)  # room again


def test_an_ended_drift_keeps_the_moved_optimum_until_the_run_restarts(
        twin: list[Snapshot]) -> None:
    engine = engine_with("      - {kind: drift, at: 10s, duration: 10s, shift: -2}\n")
    snaps = trace(engine, 30)
    assert engine.timeline.records == []  # the drift ended at 20 s
    assert float(engine.runs.drift[0]) == -2.0  # ... and the optimum stays moved
    engine.restart("r")
    after = []
    for k in range(30):
        engine.advance(31.0 + k)
        after.append(engine.snapshot(k))
    # A restart is a fresh start: the run descends as its fault-free twin did.
    assert [float(s.loss[0]) for s in after] == series(twin, "loss")[1:31]
    assert snaps[25].loss[0] != twin[25].loss[0]


@pytest.mark.parametrize("kind,param,value,expected", [
    ("drift", "shift", 1e308, "must be between -100 and 100, got 1e+308"),
    ("lr_spike", "factor", 1e7, "must be > 0 and <= 1e+06, got 10000000.0"),
    ("gradient_explosion", "factor", 0, "must be > 0 and <= 1e+06, got 0"),
    ("plateau", "factor", 2, "must be > 0 and <= 1, got 2"),
    ("noise_burst", "sigma", 1e9, "must be > 0 and <= 1000, got 1000000000.0"),
    ("slow_steps", "factor", 0.5, "must be between 1 and 1e+06, got 0.5"),
])
def test_every_fault_parameter_is_bounded(kind: str, param: str, value: float,
                                          expected: str) -> None:
    from simulator.web.api import fault_from_body
    from simulator.web.server import HttpError

    with pytest.raises(HttpError) as raised:
        fault_from_body({"kind": kind, "duration": "1s", "params": {param: value}}, 1.0)
    assert raised.value.status == 422
    assert (raised.value.message, getattr(raised.value, "field", None)) == (
        expected, f"params.{param}")


def test_the_most_extreme_faults_allowed_leave_a_run_that_recovers() -> None:
    # Each at its bound for one second on the seed's lr 0.2 run: the run may blow up, but a
    # restart brings it back to its fault-free descent, and nothing overflows to a warning.
    import warnings

    faults = ("      - {kind: drift, at: 5s, duration: 1s, shift: 100}\n"
              "      - {kind: lr_spike, at: 10s, duration: 1s, factor: 1e6}\n"
              "      - {kind: gradient_explosion, at: 15s, duration: 1s, factor: 1e6}\n"
              "      - {kind: noise_burst, at: 20s, duration: 1s, factor: 1000, sigma: 1000}\n")
    engine = engine_with(faults)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace(engine, 40)
        engine.restart("r")
        fresh = trace(engine_with(), 20)
        for t in range(1, 21):
            engine.advance(40.0 + t)
            assert float(engine.runs.loss[0]) == float(fresh[t].loss[0]), t


def test_a_config_may_schedule_more_faults_on_a_run_than_the_api_may_inject() -> None:
    faults = "".join(f"      - {{kind: lr_spike, at: {i}s, duration: 1s, factor: 1.5}}\n"
                     for i in range(20))
    engine = engine_with(faults)
    assert len(engine.timeline.records) == 20
    snaps = trace(engine, 25)
    assert snaps[-1].faults_injected.tolist() == [20.0]
