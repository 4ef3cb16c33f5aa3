"""The job around the loss: a run's GPUs, what each step costs them, and what they report.

A run with a ``hardware:`` block (``HardwareSpec``) is a job on ``gpus`` GPUs (one rank
each) spread over ``hosts`` hosts. Each optimizer step takes the run's step duration: its
``step_interval`` times the slow-down of the faults active at that step (``slow_steps``,
``dataloader_stall``, ``straggler``, ``thermal_throttle``), with an optional deterministic
jitter. Of that duration the GPUs compute for ``step_time`` (times the throttle, and for a
straggling rank times its factor); the rest they wait.

From that, in closed form and exactly:

- samples (tokens) processed = steps x ``samples_per_step`` (``tokens_per_step``);
- throughput = ``samples_per_step`` / step duration;
- MFU = ``flops_per_step`` / (step duration x ``peak_flops`` x ``gpus``);
- GPU utilisation = compute time / step duration (0 while the job takes no step);

and the GPU telemetry that dcgm-exporter reports under its default counters' names
(``DCGM_FAMILIES``) follows the utilisation, the throttle and the faults: power and
temperature between the model's idle and busy figures, the SM clock at its maximum (capped
while throttled, idle clock while idle), memory allocated for as long as the job lives, and
XID 79 on a GPU that fell off the bus, whose other series vanish. ``StepDurations`` keeps the
step-duration histogram; ``telemetry`` is pure.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.arrays import Bools, Floats, Index, Ints
from simulator.faults.catalogue import FaultKind
from simulator.schema.fields import Reader, bounded, describe, integer, interval, join, positive
from simulator.schema.loader import LocMap


@dataclass(frozen=True)
class GpuModel:
    """What a GPU model's telemetry moves between, and its dense BF16 peak."""

    peak_flops: float
    memory_mib: float
    busy_watts: float
    idle_watts: float
    max_clock_mhz: float
    idle_clock_mhz: float


# Figures from the vendors' data sheets (peak: dense BF16 tensor FLOP/s per GPU).
GPU_MODELS: dict[str, GpuModel] = {
    "NVIDIA H100 80GB HBM3": GpuModel(989.4e12, 81559, 700, 70, 1980, 345),
    "NVIDIA A100-SXM4-80GB": GpuModel(312e12, 81920, 400, 55, 1410, 210),
    "NVIDIA A100-SXM4-40GB": GpuModel(312e12, 40960, 400, 50, 1410, 210),
    "NVIDIA L4": GpuModel(121e12, 23034, 72, 16, 2040, 210),
}
DEFAULT_GPU_MODEL = "NVIDIA H100 80GB HBM3"
GPUS_PER_HOST = 8
IDLE_CELSIUS, BUSY_CELSIUS, THROTTLE_CELSIUS = 35.0, 70.0, 88.0
XID_FALLEN_OFF_THE_BUS = 79.0
# Nominal MFU at the nominal step duration when flops_per_step is not given.
DEFAULT_MFU = 0.4
# Upper bounds of the step-duration histogram's buckets, in seconds (+Inf follows).
STEP_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                   25.0, 60.0, 120.0, 300.0)
HARDWARE_KEYS = ("gpus", "hosts", "gpu_model", "samples_per_step", "tokens_per_step",
                 "flops_per_step", "peak_flops", "step_time", "step_time_jitter",
                 "memory_used")


@dataclass(frozen=True)
class HardwareSpec:
    """A run's job: its GPUs and what a step costs them (defaults resolved)."""

    gpus: int
    hosts: int
    gpu_model: str
    samples_per_step: float
    tokens_per_step: float | None
    flops_per_step: float
    peak_flops: float
    step_time: float  # GPU compute seconds of one step at full clock
    step_time_jitter: float  # relative standard deviation of each step's duration
    memory_used: float  # MiB allocated on each GPU

    @property
    def model(self) -> GpuModel:
        """The GPU model's figures (an unknown model name has the default model's)."""
        return GPU_MODELS.get(self.gpu_model, GPU_MODELS[DEFAULT_GPU_MODEL])

    @property
    def gpus_per_host(self) -> int:
        """Ranks on each host (the last host may hold fewer)."""
        return math.ceil(self.gpus / self.hosts)


def read_hardware(r: Reader, value: Any, line: int, path: str,
                  step_interval: float) -> HardwareSpec | None:
    """Validate a ``hardware:`` mapping; None after recording its mistakes."""
    if not isinstance(value, LocMap):
        r.error(line, path, f"must be a mapping, got {describe(value)}")
        return None
    before = len(r.issues)
    r.unknown_keys(value, path, HARDWARE_KEYS)
    gpus = r.take(value, path, "gpus", integer(1, 4096), None, required=True)
    if gpus is None:
        return None
    hosts = r.take(value, path, "hosts", integer(1, 4096), math.ceil(gpus / GPUS_PER_HOST))
    if hosts > gpus:
        r.error(value.lines["hosts"], join(path, "hosts"),
                f"must be at most gpus ({gpus}), got {hosts}")
    model_name = r.take(value, path, "gpu_model", _model_name, DEFAULT_GPU_MODEL)
    model = GPU_MODELS.get(model_name, GPU_MODELS[DEFAULT_GPU_MODEL])
    samples = r.take(value, path, "samples_per_step", positive, 256.0)
    tokens = r.take(value, path, "tokens_per_step", positive, None)
    peak = r.take(value, path, "peak_flops", positive, model.peak_flops)
    step_time = r.take(value, path, "step_time", interval, 0.9 * step_interval)
    if step_time > step_interval:
        r.error(value.lines["step_time"], join(path, "step_time"),
                f"must be at most the run's step_interval ({step_interval:g}s): the GPUs "
                f"cannot compute longer than a step lasts, got {step_time:g}")
    flops = r.take(value, path, "flops_per_step", positive,
                    DEFAULT_MFU * peak * gpus * step_interval)
    jitter = r.take(value, path, "step_time_jitter", bounded(0, 0.3), 0.0)
    memory = r.take(value, path, "memory_used", positive, round(0.85 * model.memory_mib))
    if memory > model.memory_mib:
        r.error(value.lines["memory_used"], join(path, "memory_used"),
                f"must be at most the {model_name}'s {model.memory_mib:g} MiB, got {memory:g}")
    if len(r.issues) != before:
        return None
    return HardwareSpec(gpus=gpus, hosts=hosts, gpu_model=model_name,
                        samples_per_step=float(samples),
                        tokens_per_step=None if tokens is None else float(tokens),
                        flops_per_step=float(flops), peak_flops=float(peak),
                        step_time=float(step_time), step_time_jitter=float(jitter),
                        memory_used=float(memory))


def fault_problem(kind: FaultKind, params: dict[str, float], spec: HardwareSpec | None,
                  ) -> str | None:
    """Why a fault of ``kind`` cannot apply to a run with hardware ``spec`` (None: it can):
    the hardware kinds that name a GPU need a ``hardware`` block with that GPU."""
    rank_param = kind.loses_gpu or (kind.straggles[0] if kind.straggles else None)
    if rank_param is None:
        return None
    if spec is None:
        return f"{kind.name} needs a run with a hardware block (its GPUs)"
    rank = int(params[rank_param])
    if rank >= spec.gpus:
        return f"{rank_param}: the run has {spec.gpus} GPUs (0-{spec.gpus - 1}), got {rank}"
    return None


def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise ValueError(f"must be a GPU model name (dcgm-exporter's modelName), got "
                         f"{describe(value)}")
    return value


# --------------------------------------------------------------------------- the histogram


class StepDurations:
    """The step-duration histogram of every run of a fleet (rows without hardware stay
    empty): cumulative bucket counts, the sum, the last step's duration, and the simulated
    moment the last step fell due (a step lasts from the previous one's moment to its own).
    A restart resets a run's histogram, as it resets the run's other counters."""

    def __init__(self, n: int) -> None:
        self.buckets = np.zeros((n, len(STEP_BUCKETS) + 1), np.int64)  # +Inf last
        self.total = np.zeros(n)
        self.last = np.zeros(n)
        self.at = np.zeros(n)
        self._bounds = np.array((*STEP_BUCKETS, math.inf))

    def observe(self, rows: Ints, moments: Floats, jitter: Floats | None = None) -> None:
        """A step of each run in ``rows`` fell due at the matching moment; ``jitter``
        multiplies the durations observed."""
        durations = moments - self.at[rows]
        if jitter is not None:
            durations = durations * jitter
        self.at[rows] = moments
        self.buckets[rows] += durations[:, None] <= self._bounds[None, :]
        self.total[rows] += durations
        self.last[rows] = durations

    def reset(self, rows: Index, at: float, nominal: Floats) -> None:
        """Restart ``rows`` at ``at``: empty histograms, the last duration the nominal
        one."""
        self.buckets[rows] = 0
        self.total[rows] = 0.0
        self.last[rows] = nominal
        self.at[rows] = at

    def take_over(self, old: StepDurations, src: Ints, dst: Ints) -> None:
        """Keep the histograms of runs carried over by a reload."""
        for name in ("buckets", "total", "last", "at"):
            getattr(self, name)[dst] = getattr(old, name)[src]


# --------------------------------------------------------------------------- telemetry


@dataclass(frozen=True)
class Fleet:
    """The runs with hardware, as arrays (rows: their fleet rows, in order) and their GPUs."""

    rows: Ints
    specs: tuple[HardwareSpec, ...]
    gpus: Ints  # per run
    first_gpu: Ints  # per run: the index of its GPU 0 among all GPUs
    gpu_run: Ints  # per GPU: the index of its run among ``rows``
    rank: Ints  # per GPU: its rank in its job
    labels: tuple[tuple[str, str, str, str, str], ...]  # per GPU (``gpu_labels``)
    interval: Floats  # per run: its step_interval
    step_time: Floats
    samples: Floats
    tokens_rows: Ints  # indices into ``rows`` of runs that count tokens
    tokens: Floats
    flops: Floats
    peak: Floats
    memory_used: Floats
    memory_total: Floats
    busy_watts: Floats
    idle_watts: Floats
    max_clock: Floats
    idle_clock: Floats

    @classmethod
    def of(cls, names: tuple[str, ...], specs: list[HardwareSpec | None],
           intervals: Floats) -> Fleet:
        """The hardware runs among ``specs`` (fleet order; ``intervals``: every run's
        step_interval)."""
        rows = np.array([i for i, s in enumerate(specs) if s is not None], np.int64)
        hw = tuple(s for s in specs if s is not None)
        gpus = np.array([s.gpus for s in hw], np.int64)
        first = np.concatenate([[0], np.cumsum(gpus)[:-1]]).astype(np.int64) if hw else gpus
        labels = tuple(gpu_labels(names[row], s, k) for row, s in zip(rows.tolist(), hw,
                                                                     strict=True)
                       for k in range(s.gpus))
        models = [s.model for s in hw]
        per_gpu = np.repeat(np.arange(len(hw)), gpus)
        tokens_rows = np.array([j for j, s in enumerate(hw) if s.tokens_per_step is not None],
                               np.int64)
        return cls(
            rows=rows, specs=hw, gpus=gpus, first_gpu=first, gpu_run=per_gpu,
            rank=np.arange(len(per_gpu)) - np.repeat(first, gpus), labels=labels,
            interval=intervals[rows], step_time=_floats(s.step_time for s in hw),
            samples=_floats(s.samples_per_step for s in hw),
            tokens_rows=tokens_rows,
            tokens=_floats(hw[j].tokens_per_step or 0.0 for j in tokens_rows.tolist()),
            flops=_floats(s.flops_per_step for s in hw), peak=_floats(s.peak_flops for s in hw),
            memory_used=_floats(s.memory_used for s in hw),
            memory_total=_floats(m.memory_mib for m in models),
            busy_watts=_floats(m.busy_watts for m in models),
            idle_watts=_floats(m.idle_watts for m in models),
            max_clock=_floats(m.max_clock_mhz for m in models),
            idle_clock=_floats(m.idle_clock_mhz for m in models))


def _floats(values: Any) -> Floats:
    return np.fromiter(values, np.float64)


def gpu_labels(run: str, spec: HardwareSpec, rank: int) -> tuple[str, str, str, str, str]:
    """dcgm-exporter's labels of one GPU of a job: gpu, UUID, device, modelName, Hostname."""
    digest = hashlib.blake2b(f"{run}/{rank}".encode(), digest_size=16).hexdigest()
    uuid = f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
    per_host = spec.gpus_per_host
    return (str(rank), uuid, f"nvidia{rank % per_host}", spec.gpu_model,
            f"{run}-node-{rank // per_host}")


@dataclass(frozen=True)
class Telemetry:
    """The hardware series of one snapshot: per hardware run, then per GPU (``gpu_present``
    says which GPUs report; a lost GPU reports ``xid`` only, ``xid_present``)."""

    step_buckets: Floats  # (runs, buckets + 1), cumulative
    step_sum: Floats
    step_count: Floats
    samples_total: Floats
    tokens_total: Floats  # of ``Fleet.tokens_rows``
    throughput: Floats
    mfu: Floats
    gpu_present: Bools
    xid_present: Bools
    util: Floats
    engine_active: Floats
    fb_used: Floats
    fb_free: Floats
    power: Floats
    temperature: Floats
    sm_clock: Floats
    xid: Floats


def telemetry(fleet: Fleet, durations: StepDurations, steps: Floats, present: Bools,
              computing: Bools, rate: Floats, throttle: Floats, straggler: Ints,
              straggler_factor: Floats, lost_gpu: Ints) -> Telemetry:
    """The hardware series, from the fleet-wide arrays (indexed by fleet row): each run's step
    count, whether its series exist, whether its job computes now (steps fall due, it is not
    finished), its step rate and the hardware faults' modifiers."""
    rows = fleet.rows
    last = durations.last[rows]
    samples_total = steps[rows] * fleet.samples
    tokens_total = steps[rows][fleet.tokens_rows] * fleet.tokens
    with np.errstate(divide="ignore", invalid="ignore"):
        throughput = fleet.samples / last
        mfu = fleet.flops / (last * fleet.peak * fleet.gpus)
    g = fleet.gpu_run
    run_rows = rows[g]
    # The step duration now (without jitter) and what each GPU computes of it.
    with np.errstate(divide="ignore"):
        duration = np.where(rate[run_rows] > 0, fleet.interval[g] / rate[run_rows], np.inf)
    compute = fleet.step_time[g] * throttle[run_rows]
    slow_rank = straggler[run_rows] == fleet.rank
    compute = np.where(slow_rank, compute * straggler_factor[run_rows], compute)
    busy = computing[run_rows] & np.isfinite(duration)
    util = np.where(busy, np.minimum(1.0, compute / np.where(busy, duration, 1.0)), 0.0)
    lost = lost_gpu[run_rows] == fleet.rank
    alive = present[run_rows]
    clock_cap = 1.0 / throttle[run_rows]
    throttled = throttle[run_rows] > 1.0
    max_clock, idle_clock = fleet.max_clock[g], fleet.idle_clock[g]
    busy_w, idle_w = fleet.busy_watts[g], fleet.idle_watts[g]
    return Telemetry(
        step_buckets=durations.buckets[rows].astype(np.float64),
        step_sum=durations.total[rows].copy(),
        step_count=durations.buckets[rows][:, -1].astype(np.float64),
        samples_total=samples_total, tokens_total=tokens_total, throughput=throughput, mfu=mfu,
        gpu_present=alive & ~lost, xid_present=alive,
        util=np.round(100.0 * util),
        engine_active=np.round(util * 0.95, 4),
        fb_used=fleet.memory_used[g].copy(),
        fb_free=fleet.memory_total[g] - fleet.memory_used[g],
        power=np.round(idle_w + (busy_w - idle_w) * util * np.where(throttled, clock_cap, 1.0),
                       3),
        temperature=np.where(throttled & busy, THROTTLE_CELSIUS,
                             np.round(IDLE_CELSIUS + (BUSY_CELSIUS - IDLE_CELSIUS) * util)),
        sm_clock=np.where(busy, np.round(max_clock * clock_cap), idle_clock),
        xid=np.where(lost, XID_FALLEN_OFF_THE_BUS, 0.0),
    )
