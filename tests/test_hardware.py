"""Hardware runs: the throughput, MFU and step-time invariants hold exactly, every fault moves
every GPU signal the way it would in a real job, the series are dcgm-exporter's names and
labels, and runs without hardware export exactly what they did."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from simulator.collector import TrainsimCollector
from simulator.config import ConfigError, load_file
from simulator.daemon.core import Daemon, DrivenClock, SilentLog
from simulator.exposition import Renderer, series_count
from simulator.faults.catalogue import FaultSpec
from simulator.faults.timeline import FaultTargetError
from simulator.hardware import GPU_MODELS

H100 = GPU_MODELS["NVIDIA H100 80GB HBM3"]
JOB = """
defaults: {init: 5.5, steps: 100000, step_interval: 1s, loop: false}
runs:
  - name: job
    optimizer: {learning_rate: 0.001}
    hardware: {gpus: 8, tokens_per_step: 1048576%s}
  - name: twin
    optimizer: {learning_rate: 0.001}
  - name: plain
    optimizer: {learning_rate: 0.2}
"""


def daemon(tmp_path: Path, extra: str = "") -> tuple[Daemon, DrivenClock]:
    path = tmp_path / "job.yaml"
    path.write_text(JOB % extra)
    clock = DrivenClock()
    return Daemon(load_file(path), clock=clock, wall=lambda: 0.0, log=SilentLog()), clock


def scrape(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(d.exposition(False, False).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_value(values: dict[Any, float], name: str, run: str = "job") -> float:
    return values[(name, (("run", run),))]


def gpus(values: dict[Any, float], name: str, run: str = "job") -> dict[str, float]:
    return {dict(k[1])["gpu"]: v for k, v in values.items()
            if k[0] == name and dict(k[1]).get("run") == run}


def inject(d: Daemon, kind: str, duration: float = 600.0, **params: float) -> None:
    d.inject("job", FaultSpec(kind, 0.0, duration, tuple(params.items())))


# --------------------------------------------------------------------------- invariants


def test_the_invariants_hold_exactly_through_faults_and_jitter(tmp_path: Path) -> None:
    d, clock = daemon(tmp_path, ", step_time_jitter: 0.2")
    spec = d.engine.specs[d.engine.row_of["job"]].hardware
    assert spec is not None
    checked = 0
    plan = {60: ("slow_steps", {"factor": 4.0}), 200: ("straggler", {"factor": 3.0, "rank": 5}),
            400: ("thermal_throttle", {"factor": 1.5}), 600: ("dataloader_stall", {})}
    for t in range(5, 900, 7):
        for at, (kind, params) in plan.items():
            if at - 7 < t <= at:
                inject(d, kind, 120.0, **params)
        clock.now = float(t)
        d.tick()
        v = scrape(d)
        steps = run_value(v, "trainsim_steps_total")
        # Samples (tokens) counted = steps x samples (tokens) per step.
        assert run_value(v, "trainsim_samples_total") == steps * spec.samples_per_step
        assert run_value(v, "trainsim_tokens_total") == steps * 1048576
        # The histogram counts every step; throughput and MFU are the last step's.
        assert run_value(v, "trainsim_step_duration_seconds_count") == steps
        last = float(d.engine.durations.last[d.engine.row_of["job"]])
        assert run_value(v, "trainsim_throughput_samples_per_second") == (
            spec.samples_per_step / last)
        assert run_value(v, "trainsim_model_flops_utilization_ratio") == (
            spec.flops_per_step / (last * spec.peak_flops * spec.gpus))
        checked += 1
    assert checked > 100
    total = run_value(scrape(d), "trainsim_step_duration_seconds_sum")
    assert total == pytest.approx(float(d.engine.durations.total[d.engine.row_of["job"]]))


def test_the_step_duration_is_the_interval_times_the_slowdown(tmp_path: Path) -> None:
    d, clock = daemon(tmp_path)
    clock.now = 100.0
    d.tick()
    v = scrape(d)
    assert run_value(v, "trainsim_step_duration_seconds_sum") == 100.0
    assert v[("trainsim_step_duration_seconds_bucket", (("le", "0.5"), ("run", "job")))] == 0
    assert v[("trainsim_step_duration_seconds_bucket", (("le", "1.0"), ("run", "job")))] == 100
    inject(d, "slow_steps", 400.0, factor=4.0)
    clock.now = 500.0
    d.tick()
    v = scrape(d)
    assert run_value(v, "trainsim_steps_total") == 200
    assert run_value(v, "trainsim_step_duration_seconds_sum") == 100.0 + 100 * 4.0
    assert v[("trainsim_step_duration_seconds_bucket", (("le", "2.5"), ("run", "job")))] == 100
    assert v[("trainsim_step_duration_seconds_bucket", (("le", "5.0"), ("run", "job")))] == 200
    assert run_value(v, "trainsim_throughput_samples_per_second") == 256 / 4
    assert run_value(v, "trainsim_model_flops_utilization_ratio") == pytest.approx(0.1)


# --------------------------------------------------------------------------- per fault


def at(tmp_path: Path, kind: str | None, t: float = 400.0, **params: float,
       ) -> tuple[dict[Any, float], dict[Any, float]]:
    """The series before (at 100 s) and during a fault injected at 100 s."""
    d, clock = daemon(tmp_path)
    clock.now = 100.0
    d.tick()
    before = scrape(d)
    if kind is not None:
        inject(d, kind, 1000.0, **params)
    clock.now = t
    d.tick()
    return before, scrape(d)


HEALTHY = {"DCGM_FI_DEV_GPU_UTIL": 90.0, "DCGM_FI_DEV_POWER_USAGE": 70 + 630 * 0.9,
           "DCGM_FI_DEV_GPU_TEMP": 66.0, "DCGM_FI_DEV_SM_CLOCK": 1980.0,
           "DCGM_FI_DEV_FB_USED": round(0.85 * H100.memory_mib),
           "DCGM_FI_DEV_FB_FREE": H100.memory_mib - round(0.85 * H100.memory_mib),
           "DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.855, "DCGM_FI_DEV_XID_ERRORS": 0.0}


def test_a_healthy_job_reports_busy_gpus(tmp_path: Path) -> None:
    _, v = at(tmp_path, None)
    for name, value in HEALTHY.items():
        assert gpus(v, name) == {str(g): value for g in range(8)}, name
    assert run_value(v, "trainsim_model_flops_utilization_ratio") == 0.4


def test_a_hang_idles_the_gpus_and_holds_their_memory(tmp_path: Path) -> None:
    before, v = at(tmp_path, "hang")
    assert run_value(v, "trainsim_steps_total") == run_value(before, "trainsim_steps_total")
    assert set(gpus(v, "DCGM_FI_DEV_GPU_UTIL").values()) == {0.0}
    assert set(gpus(v, "DCGM_FI_DEV_POWER_USAGE").values()) == {H100.idle_watts}
    assert set(gpus(v, "DCGM_FI_DEV_SM_CLOCK").values()) == {H100.idle_clock_mhz}
    assert set(gpus(v, "DCGM_FI_DEV_GPU_TEMP").values()) == {35.0}
    assert gpus(v, "DCGM_FI_DEV_FB_USED") == gpus(before, "DCGM_FI_DEV_FB_USED")
    assert set(gpus(v, "DCGM_FI_DEV_XID_ERRORS").values()) == {0.0}


@pytest.mark.parametrize("kind", ["slow_steps", "dataloader_stall"])
def test_slow_steps_and_a_dataloader_stall_starve_the_gpus(tmp_path: Path, kind: str) -> None:
    _, v = at(tmp_path, kind, factor=4.0)
    assert run_value(v, "trainsim_steps_total") == 100 + 300 / 4
    assert run_value(v, "trainsim_throughput_samples_per_second") == 256 / 4
    assert run_value(v, "trainsim_model_flops_utilization_ratio") == pytest.approx(0.1)
    assert set(gpus(v, "DCGM_FI_DEV_GPU_UTIL").values()) == {round(90 / 4)}
    assert set(gpus(v, "DCGM_FI_DEV_SM_CLOCK").values()) == {1980.0}
    # The loss is unaffected: at each step it is the healthy twin's loss at that step.
    d, clock = daemon(tmp_path)
    clock.now = 175.0
    d.tick()
    assert run_value(v, "trainsim_loss") == run_value(scrape(d), "trainsim_loss", "twin")


def test_a_straggler_keeps_its_rank_busy_while_the_others_wait(tmp_path: Path) -> None:
    _, v = at(tmp_path, "straggler", factor=3.0, rank=5)
    assert run_value(v, "trainsim_steps_total") == 200
    util = gpus(v, "DCGM_FI_DEV_GPU_UTIL")
    assert util.pop("5") == 90.0
    assert set(util.values()) == {30.0}
    assert run_value(v, "trainsim_throughput_samples_per_second") == 256 / 3


def test_a_thermal_throttle_caps_clocks_and_power_and_keeps_the_gpus_busy(
        tmp_path: Path) -> None:
    _, v = at(tmp_path, "thermal_throttle", factor=1.5)
    assert run_value(v, "trainsim_steps_total") == 300
    assert set(gpus(v, "DCGM_FI_DEV_SM_CLOCK").values()) == {1320.0}
    assert set(gpus(v, "DCGM_FI_DEV_GPU_TEMP").values()) == {88.0}
    assert set(gpus(v, "DCGM_FI_DEV_GPU_UTIL").values()) == {90.0}
    assert max(gpus(v, "DCGM_FI_DEV_POWER_USAGE").values()) < 70 + 630 * 0.9
    assert run_value(v, "trainsim_step_duration_seconds_sum") == 100 + 200 * 1.5


def test_a_lost_gpu_reports_xid_79_alone_and_the_job_hangs(tmp_path: Path) -> None:
    before, v = at(tmp_path, "gpu_lost", gpu=3)
    assert run_value(v, "trainsim_steps_total") == run_value(before, "trainsim_steps_total")
    assert gpus(v, "DCGM_FI_DEV_XID_ERRORS")["3"] == 79.0
    assert set(gpus(v, "DCGM_FI_DEV_XID_ERRORS").values()) == {0.0, 79.0}
    for name in HEALTHY:
        if name != "DCGM_FI_DEV_XID_ERRORS":
            assert sorted(gpus(v, name)) == ["0", "1", "2", "4", "5", "6", "7"], name
    assert set(gpus(v, "DCGM_FI_DEV_GPU_UTIL").values()) == {0.0}


def test_a_crash_takes_the_gpu_series_away_and_nan_leaves_them_alone(tmp_path: Path) -> None:
    _, v = at(tmp_path, "crash", t=110.0)
    assert not [k for k in v if dict(k[1]).get("run") == "job"]
    _, v = at(tmp_path, "nan")
    assert math.isnan(run_value(v, "trainsim_loss"))
    for name, value in HEALTHY.items():
        assert set(gpus(v, name).values()) == {value}, name


# --------------------------------------------------------------------------- exposition


def test_the_renderer_matches_prometheus_client_byte_for_byte(tmp_path: Path) -> None:
    d, clock = daemon(tmp_path)
    clock.now = 50.0
    d.tick()
    d.inject("job", FaultSpec("gpu_lost", 0.0, 30.0, (("gpu", 6),)))
    for t in (60.0, 100.0):  # a lost GPU, then the job back
        clock.now = t
        d.tick()
        registry = CollectorRegistry()
        registry.register(TrainsimCollector(lambda: d.snapshot))
        assert Renderer().render(d.snapshot) == generate_latest(registry).decode()
        body = Renderer().render(d.snapshot)
        assert series_count(d.snapshot) == sum(
            1 for ln in body.splitlines() if ln and not ln.startswith("#"))
    om = Renderer().render(d.snapshot, openmetrics=True) + "# EOF\n"
    fams = {f.name: f for f in om_families(om)}  # the strict OpenMetrics parser
    assert fams["trainsim_step_duration_seconds"].type == "histogram"
    assert fams["DCGM_FI_DEV_GPU_UTIL"].type == "gauge"


def test_the_gpu_labels_are_dcgm_exporters(tmp_path: Path) -> None:
    _, v = at(tmp_path, None, t=10.0)
    labels = [dict(k[1]) for k in v if k[0] == "DCGM_FI_DEV_GPU_UTIL"]
    assert len(labels) == 8
    for lv in labels:
        assert set(lv) == {"gpu", "UUID", "device", "modelName", "Hostname", "run"}
        assert lv["modelName"] == "NVIDIA H100 80GB HBM3"
        assert lv["device"] == f"nvidia{lv['gpu']}" and lv["Hostname"] == "job-node-0"
        assert lv["UUID"].startswith("GPU-") and len(lv["UUID"]) == 40
    assert len({lv["UUID"] for lv in labels}) == 8


def test_a_fleet_without_hardware_exports_no_hardware_family(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("runs: [{name: a, optimizer: {learning_rate: 0.1}}]\n")
    d = Daemon(load_file(path), clock=DrivenClock(), wall=lambda: 0.0, log=SilentLog())
    body = d.exposition(False, False).decode()
    assert "DCGM" not in body and "step_duration" not in body and "samples" not in body


# --------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize("block, message", [
    ("{hosts: 2}", "runs[0].hardware.gpus: required key is missing"),
    ("{gpus: 2, hosts: 3}", "runs[0].hardware.hosts: must be at most gpus (2), got 3"),
    ("{gpus: 8, step_time: 2s}", "runs[0].hardware.step_time: must be at most the run's "
     "step_interval (1s): the GPUs cannot compute longer than a step lasts, got 2"),
    ("{gpus: 8, step_time: soon}", "runs[0].hardware.step_time: must be a duration"),
    ("{gpus: 8, memory_used: 90000}", "runs[0].hardware.memory_used: must be at most the "
     "NVIDIA H100 80GB HBM3's 81559 MiB, got 90000"),
    ("{gpus: 8, fans: 3}", "runs[0].hardware.fans: unknown key"),
    ("8", "runs[0].hardware: must be a mapping, got int 8"),
])
def test_hardware_mistakes_name_the_file_line_and_key(tmp_path: Path, block: str,
                                                     message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"runs:\n  - name: a\n    optimizer: {{learning_rate: 0.1}}\n"
                    f"    hardware: {block}\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    (issue,) = str(info.value).splitlines()
    assert issue.startswith(f"{path}:4: {message}")


def test_a_fault_on_a_gpu_the_run_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("runs:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n"
                    "    hardware: {gpus: 4}\n    faults:\n"
                    "      - {kind: gpu_lost, at: 1m, gpu: 4}\n"
                    "  - name: b\n    optimizer: {learning_rate: 0.1}\n    faults:\n"
                    "      - {kind: straggler, at: 1m}\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value).splitlines() == [
        f"{path}:6: runs[0].faults[0]: gpu: the run has 4 GPUs (0-3), got 4",
        f"{path}:10: runs[1].faults[0]: straggler needs a run with a hardware block (its GPUs)"]
    d, _ = daemon(tmp_path)
    with pytest.raises(FaultTargetError, match="run 'plain': gpu_lost needs a run with a "
                                               "hardware block"):
        d.inject("plain", FaultSpec("gpu_lost", 0.0, 10.0))


def test_defaults_and_fleet_templates_carry_hardware(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("defaults: {hardware: {gpus: 8}}\n"
                    "runs: [{name: a, optimizer: {learning_rate: 0.1}}]\n"
                    "fleet: {count: 3, learning_rate: 0.1, "
                    "template: {hardware: {gpus: 16, hosts: 2}}}\n")
    config = load_file(path)
    assert [r.hardware.gpus if r.hardware else None for r in config.runs] == [8, 16, 16, 16]
    assert config.runs[1].hardware is not None and config.runs[1].hardware.gpus_per_host == 8


def test_every_step_of_a_looping_run_lasts_its_interval_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("defaults: {init: 5.5, steps: 10, step_interval: 30s, loop: true}\n"
                    "runs: [{name: j, optimizer: {learning_rate: 0.05}, hardware: {gpus: 2}}]\n")
    clock = DrivenClock()
    d = Daemon(load_file(path), clock=clock, wall=lambda: 0.0, log=SilentLog())
    restarts = 0.0
    for t in range(0, 2000, 7):  # irregular ticks across five restarts
        clock.now = float(t)
        d.tick()
        v = scrape(d)
        steps = run_value(v, "trainsim_steps_total", "j")
        assert run_value(v, "trainsim_step_duration_seconds_sum", "j") == 30.0 * steps
        restarts = run_value(v, "trainsim_run_restarts_total", "j")
    assert restarts >= 5
