"""The runs' recent history: what the live page plots, equal to the exported series."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.cli import main
from simulator.config import load_config, load_default
from simulator.daemon import Daemon
from simulator.drills.stack import http_get
from simulator.history import DEFAULT_ENTRIES, FLEET_ENTRIES, default_capacity

WALL = 1_700_000_000.0


class Quiet:
    def info(self, *a: Any, **k: Any) -> None: ...
    warning = error = exception = info


def daemon(config_text: str | None = None, **kw: Any) -> tuple[Daemon, list[float]]:
    now = [0.0]
    config = load_default() if config_text is None else load_config(config_text, "h.yaml")
    d = Daemon(config, clock=lambda: now[0], wall=lambda: WALL + now[0], log=Quiet(), **kw)
    return d, now


def drive(d: Daemon, now: list[float], until: float, dt: float = 0.5) -> None:
    while now[0] < until:
        now[0] += dt
        d.tick()


def exported(d: Daemon) -> dict[tuple[str, str], float]:
    text = d.exposition(openmetrics=False, gzipped=False).decode()
    return {(s.name, s.labels.get("run", "")): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_step_of_the_seed_runs_is_kept_with_its_exported_values() -> None:
    d, now = daemon()
    step_s = d.config.runs[0].step_interval
    seen = []
    while now[0] < 30 * step_s:
        now[0] += step_s / 2
        d.tick()
        seen.append(exported(d))
    h = d.history_view("lr-0.2", 0)["columns"]
    # One entry per step (and step 0), each holding the values /metrics showed after it.
    assert h["step"] == list(range(31))
    for samples in seen:
        step = int(samples[("trainsim_steps_total", "lr-0.2")])
        i = h["step"].index(step)
        for column, metric in (("loss", "trainsim_loss"),
                               ("gradient_norm", "trainsim_gradient_norm"),
                               ("learning_rate", "trainsim_learning_rate"),
                               ("update_norm", "trainsim_update_norm"),
                               ("time", "trainsim_last_step_timestamp_seconds")):
            assert h[column][i] == samples[(metric, "lr-0.2")], (column, step)
    # The closed form of the seed: w_k = 2 + 0.6^k * 3.5.
    assert [p[0] for p in h["parameters"][:5]] == pytest.approx(
        [2 + 0.6**k * 3.5 for k in range(5)], rel=1e-15)
    assert h["state"][-1] == "converged"


def test_since_returns_only_the_new_entries_and_seq_survives_restarts() -> None:
    d, now = daemon("runs:\n  - {name: r, init: 5.5, steps: 5, loop: true, "
                    "optimizer: {learning_rate: 0.2}}\n")
    drive(d, now, 4.5)
    first = d.history_view("r", 0)
    assert first["columns"]["seq"] == [1, 2, 3, 4, 5]
    drive(d, now, 9.5)  # the run loops after step 5: its steps start again at 0
    later = d.history_view("r", first["last"])
    assert later["columns"]["seq"][0] == first["last"] + 1
    assert 0 in later["columns"]["step"] and later["columns"]["attempt"][-1] == 1
    assert d.history_view("r", later["last"])["columns"]["seq"] == []


def test_the_ring_keeps_the_last_entries_of_its_capacity() -> None:
    d, now = daemon("history: 8\nruns:\n  - {name: r, init: 5.5, steps: 1000, "
                    "optimizer: {learning_rate: 0.01}}\n")
    drive(d, now, 40)
    h = d.history_view("r", 0)
    assert h["capacity"] == 8 and h["last"] == 41
    assert h["columns"]["step"] == list(range(33, 41))
    assert d.history_view("r", 35)["columns"]["step"] == list(range(35, 41))


def test_the_default_capacity_bounds_the_fleets_memory() -> None:
    assert default_capacity(4) == DEFAULT_ENTRIES
    assert default_capacity(10_000) * 10_000 <= FLEET_ENTRIES
    assert default_capacity(10**7) == 10


def test_faults_alerts_and_crashes_are_recorded() -> None:
    d, now = daemon("""runs:
  - {name: r, init: 5.5, steps: 1000, optimizer: {learning_rate: 0.05},
     faults: [{kind: hang, at: 5s, duration: 5s}, {kind: crash, at: 15s, duration: 5s}]}
""")
    drive(d, now, 25)
    c = d.history_view("r", 0)["columns"]
    hung = [f for f, s in zip(c["faults"], c["step"], strict=True) if f == ["hang"]]
    assert hung, "the hang's start is an entry even though no step was taken"
    assert ["crash"] in c["faults"]
    assert False in c["present"] and c["present"][-1] is True


def test_a_reload_keeps_the_history_of_unchanged_runs() -> None:
    text = ("runs:\n  - {name: keep, init: 5.5, steps: 1000, optimizer: {learning_rate: 0.1}}\n"
            "  - {name: drop, init: 5.5, steps: 1000, optimizer: {learning_rate: 0.1}}\n")
    d, now = daemon(text)
    drive(d, now, 10)
    before = d.history_view("keep", 0)
    d.apply(load_config(text.replace("drop", "added"), "h2.yaml"))
    drive(d, now, 12)
    after = d.history_view("keep", 0)
    assert after["columns"]["seq"][:len(before["columns"]["seq"])] == before["columns"]["seq"]
    assert after["columns"]["loss"][:len(before["columns"]["loss"])] == \
        before["columns"]["loss"]
    assert d.history_view("added", 0)["columns"]["step"][0] == 0


def test_runs_of_up_to_8_parameters_keep_their_path_and_every_run_its_largest_one() -> None:
    d, now = daemon("""runs:
  - {name: big, init: 1, landscape: {kind: noisy_quadratic, dims: 20},
     optimizer: {learning_rate: 0.1}}
  - {name: three, init: [1, 2, 3], landscape: {kind: quadratic, curvatures: [1, 2, 3]},
     optimizer: {learning_rate: 0.1}}
""")
    drive(d, now, 5)
    big = d.history_view("big", 0)["columns"]
    assert "parameters" not in big
    assert all(v > 0 for v in big["parameter_absmax"])
    three = d.history_view("three", 0)["columns"]
    assert three["parameters"][0] == [1.0, 2.0, 3.0]
    assert three["parameter_absmax"][0] == 3.0


def test_history_can_be_switched_off() -> None:
    d, now = daemon("history: 0\nruns:\n  - {name: r, optimizer: {learning_rate: 0.1}}\n")
    drive(d, now, 3)
    assert d.history_view("r", 0)["columns"]["seq"] == []


# ------------------------------------------------------------------------------ over HTTP


def get_json(url: str) -> tuple[int, Any]:
    status, body = http_get(url)
    return status, json.loads(body)


@pytest.fixture
def seed(daemon_factory: Any) -> Any:
    return daemon_factory(speed=20.0)


def test_the_history_endpoint_equals_the_scraped_series_bit_for_bit(seed: Any) -> None:
    # A paused run takes no step: its last entry and the scrape describe the same moment.
    pause = urllib.request.Request(f"{seed.url}/api/v1/runs/lr-0.05/pause", data=b"",
                                   method="POST")
    with urllib.request.urlopen(pause, timeout=5) as resp:
        assert resp.status == 200
    status, h = get_json(f"{seed.url}/api/v1/runs/lr-0.05/history")
    assert status == 200 and h["dims"] == 1 and h["optimum"] == 1.0
    _, metrics = http_get(f"{seed.url}/metrics")
    samples = {(s.name, s.labels.get("run")): s.value
               for f in text_string_to_metric_families(metrics.decode()) for s in f.samples}
    last = {k: v[-1] for k, v in h["columns"].items()}
    assert last["loss"] == samples[("trainsim_loss", "lr-0.05")]
    assert last["gradient_norm"] == samples[("trainsim_gradient_norm", "lr-0.05")]
    assert last["step"] == samples[("trainsim_steps_total", "lr-0.05")]
    assert last["parameters"][0] == samples[("trainsim_parameter", "lr-0.05")]


def test_the_landscape_endpoint_draws_the_seed_bowl_and_the_tangent(seed: Any) -> None:
    status, v = get_json(f"{seed.url}/api/v1/runs/lr-0.2/landscape?lo=0&hi=4&points=5")
    assert status == 200
    assert v["axes"] == [[0.0, 1.0, 2.0, 3.0, 4.0]]
    assert v["loss"] == [(w - 2) ** 2 + 1 for w in (0.0, 1.0, 2.0, 3.0, 4.0)]
    w = v["at"]["parameters"][0]
    assert v["at"]["loss"] == pytest.approx((w - 2) ** 2 + 1, rel=1e-12)
    assert v["at"]["gradient"][0] == pytest.approx(2 * (w - 2), abs=1e-12)


@pytest.mark.parametrize(("query", "field"), [
    ("history?since=-1", "since"), ("history?since=x", "since"),
    ("landscape?lo=0", "hi"), ("landscape?lo=1&hi=0", "hi"), ("landscape?lo=nan&hi=1", "lo"),
    ("landscape?lo=0&hi=1&points=100000", "points"), ("landscape?lo=0,0,0&hi=1,1,1", "lo"),
])
def test_bad_query_values_are_400_naming_the_parameter(seed: Any, query: str,
                                                       field: str) -> None:
    status, body = get_json(f"{seed.url}/api/v1/runs/lr-0.2/{query}")
    assert status == 400 and body["field"] == field


def test_the_fleet_endpoint_pages_sorts_and_filters(seed: Any) -> None:
    status, f = get_json(f"{seed.url}/api/v1/fleet?sort=run&order=asc&limit=2")
    assert status == 200 and f["total"] == f["matched"] == 4
    assert [r["run"] for r in f["runs"]] == ["lr-0.05", "lr-0.2"]
    _, f = get_json(f"{seed.url}/api/v1/fleet?sort=run&order=asc&offset=2&limit=2")
    assert [r["run"] for r in f["runs"]] == ["lr-0.7", "lr-1.1"]
    _, f = get_json(f"{seed.url}/api/v1/fleet?q={urllib.parse.quote('0.')}")
    assert f["matched"] == 3
    status, body = get_json(f"{seed.url}/api/v1/fleet?sort=nope")
    assert status == 400 and body["field"] == "sort"


def test_the_fleet_puts_the_diverged_run_first(seed: Any) -> None:
    deadline = time.monotonic() + 20
    while True:
        _, f = get_json(f"{seed.url}/api/v1/fleet")
        if f["states"]["diverged"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f["runs"][0]["run"] == "lr-1.1" and f["runs"][0]["state"] == "diverged"
    assert sum(f["states"].values()) == 4


def test_the_fault_kinds_are_the_catalogues(seed: Any) -> None:
    from simulator.faults.catalogue import FAULTS

    _, kinds = get_json(f"{seed.url}/api/v1/fault-kinds")
    assert [k["kind"] for k in kinds] == list(FAULTS)
    spike = next(k for k in kinds if k["kind"] == "lr_spike")
    assert spike["params"] == [{"name": "factor", "default": 10.0,
                                "help": "multiplies the learning rate"}]


def test_a_daemon_started_ten_minutes_in_is_the_one_that_ran_them_bit_for_bit() -> None:
    # `trainsim run --start.elapsed 10m`: the runs are where ten minutes would have taken them,
    # the history (what the live page draws) holds the steps they took, and the exported
    # series are those of a daemon that did run for ten minutes.
    elapsed = 600.0
    ran, now = daemon()
    drive(ran, now, elapsed, dt=0.25)
    started = [0.0]
    late = Daemon(load_default(), clock=lambda: started[0], wall=lambda: WALL + elapsed,
                  log=Quiet(), elapsed=elapsed)
    assert late.sim_now() == elapsed

    def series(d: Daemon) -> list[str]:  # every line of /metrics but the process' own
        text = d.exposition(openmetrics=False, gzipped=False).decode()
        return [line for line in text.splitlines() if "process_" not in line]

    assert series(late) == series(ran)
    for run in ("lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"):
        had, has = ran.history_view(run, 0)["columns"], late.history_view(run, 0)["columns"]
        for column in ("step", "time", "attempt", "loss", "excess_loss", "state", "alerts"):
            assert has[column] == had[column], (run, column)
    steps = late.history_view("lr-0.2", 0)["columns"]["step"]
    assert steps == list(range(21))  # step 0 and the 20 steps of 30 s in ten minutes
    # And from there on it keeps stepping as the other does.
    for t in (15.0, 30.0, 45.0, 300.0):
        started[0] = t
        now[0] = elapsed + t
        late.tick()
        ran.tick()
        assert series(late) == series(ran), t


def test_start_elapsed_is_a_duration_of_at_most_a_day(capsys: pytest.CaptureFixture[str]) -> None:
    for bad, why in (("1x", "must be a duration"), ("2d", "must be at most 1d"),
                     ("-5m", "must be a duration")):
        with pytest.raises(SystemExit) as info:
            main(["run", f"--start.elapsed={bad}"])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--start.elapsed" in err and why in err, err
