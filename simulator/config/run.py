"""One run: its keys, and the validated, immutable ``RunSpec`` read from them.

The keys of the landscape, optimizer and schedule mappings belong to their kinds
(``simulator.landscapes``, ``simulator.optimizers``, ``simulator.schedules``), those of
``detect`` to ``simulator.detectors`` and those of a fault to ``simulator.faults.catalogue``;
this module reads a run's own keys and hands the rest to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulator import landscapes, optimizers, schedules
from simulator.detectors import Detection
from simulator.faults.catalogue import FAULTS, FaultSpec, read_fault, recording_problem
from simulator.hardware import HardwareSpec, fault_problem, read_hardware
from simulator.landscapes import LandscapeSpec, Quadratic
from simulator.optimizers import OptimizerSpec
from simulator.replay.spec import Replay, base_dir
from simulator.schedules import Constant, Schedule
from simulator.schema.fields import (
    MAX_DIMS,
    MAX_SEED,
    MAX_STEPS,
    Reader,
    boolean,
    describe,
    finite,
    integer,
    interval,
    join,
    name,
    non_negative,
    positive,
)
from simulator.schema.loader import LocList, LocMap

RUN_KEYS = ("name", "landscape", "init", "optimizer", "steps", "step_interval", "loop", "seed",
            "detect", "faults", "schedule", "clip_grad_norm", "gradient_noise", "loss_noise",
            "hardware", "replay")
# What ``defaults:`` and a fleet's templates may set: every run key but the name.
DEFAULTS_KEYS = tuple(k for k in RUN_KEYS if k != "name")
# The keys of a synthetic run that a replay run (its values come from a recording) has not.
SYNTHETIC_KEYS = ("landscape", "init", "optimizer", "schedule", "clip_grad_norm",
                  "gradient_noise", "loss_noise")
# What a replay run reports as its landscape, optimizer and schedule (trainsim_run_info).
REPLAY_LABELS = ("replay", "recorded", "recorded")


@dataclass(frozen=True)
class RunSpec:
    """One simulated training run, fully resolved (defaults merged)."""

    name: str
    landscape: LandscapeSpec
    init: tuple[float, ...]
    optimizer: OptimizerSpec
    steps: int
    step_interval: float
    loop: bool
    seed: int
    detect: Detection
    faults: tuple[FaultSpec, ...] = ()
    schedule: Schedule = field(default_factory=Constant)
    clip_grad_norm: float | None = None
    gradient_noise: float = 0.0
    loss_noise: float = 0.0
    hardware: HardwareSpec | None = None

    @property
    def dims(self) -> int:
        """Number of parameters of the run."""
        return len(self.init)

    @property
    def replays(self) -> bool:
        """Whether the run replays a recording (``replay:``) instead of a landscape."""
        return isinstance(self.landscape, Replay)

    @property
    def labels(self) -> tuple[str, str, str]:
        """Its landscape, optimizer and schedule, as ``trainsim_run_info`` labels them."""
        if self.replays:
            return REPLAY_LABELS
        return (self.landscape.kind, self.optimizer.kind, self.schedule.label)

    @property
    def interval(self) -> float:
        """The time between steps: ``step_interval``, or a timed replay's typical spacing."""
        if isinstance(self.landscape, Replay):
            return self.landscape.nominal_interval or self.step_interval
        return self.step_interval


def run_over(m: LocMap, defaults: LocMap) -> LocMap:
    """A run's mapping merged over ``defaults``; a replay run does not take the keys only a
    synthetic run has (a file's defaults may set an optimizer for its other runs), nor
    ``steps``: it plays its whole recording unless it says otherwise itself."""
    if "replay" in m:
        defaults = defaults.only(tuple(k for k in defaults
                                       if k not in (*SYNTHETIC_KEYS, "steps")))
    return m.merged_over(defaults)


def _init(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, LocList):
        if len(value) > MAX_DIMS:
            raise ValueError(f"must have at most {MAX_DIMS} entries, got {len(value)}")
        return tuple(finite(v) for v in value)
    return finite(value)


def _steps_default(landscape: LandscapeSpec) -> int:
    """100 steps, or all of a replay's recording."""
    if isinstance(landscape, Replay) and landscape.recording is not None:
        return max(1, landscape.available)
    return 100


def _check_replay_steps(r: Reader, m: LocMap, path: str, replay: Replay, steps: int) -> None:
    available = replay.available
    if replay.recording is not None and replay.start >= len(replay.recording):
        return  # from_step is past its end: said already
    if available < 1:
        r.error(m.lines["replay"], join(path, "replay"),
                "the recording holds a single step from there: nothing to replay")
    elif "steps" in m and steps > available:
        r.error(m.lines["steps"], join(path, "steps"),
                f"the recording holds {available} steps after its first from there "
                f"(stride {replay.stride}), got {steps}")


def _faults(r: Reader, value: Any, line: int, path: str, step_interval: float,
            hardware: HardwareSpec | None, replays: bool) -> tuple[FaultSpec, ...]:
    if not isinstance(value, LocList):
        r.error(line, path, f"must be a list, got {describe(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        spec = read_fault(r, item, value.lines[i], f"{path}[{i}]", step_interval)
        problem = None if spec is None else fault_problem(FAULTS[spec.kind],
                                                          spec.all_params(), hardware)
        if problem is None and spec is not None and replays:
            problem = recording_problem(spec.kind)
        if problem is not None:
            r.error(value.lines[i], f"{path}[{i}]", problem)
        elif spec is not None:
            out.append(spec)
    return tuple(out)


def _at(m: LocMap, path: str, key: str) -> tuple[Any, int, str]:
    """The value, line and path of ``m[key]``."""
    return m[key], m.lines[key], join(path, key)


def read_run(r: Reader, m: LocMap, path: str) -> RunSpec | None:
    """Validate one run mapping (defaults already merged); ``None`` after recording its
    mistakes."""
    before = len(r.issues)
    r.unknown_keys(m, path, RUN_KEYS)
    run_name = r.take(m, path, "name", name, "", required=True)
    landscape: LandscapeSpec
    if "replay" in m:
        for key in SYNTHETIC_KEYS:
            if key in m:
                r.error(m.lines[key], join(path, key), "a replay run takes its values from its "
                                                       "recording: it has no " + key)
        landscape = Replay.read_mapping(r, *_at(m, path, "replay"), base=base_dir(r.source))
        optimizer = optimizers.KINDS.fallback()
    else:
        landscape = (landscapes.KINDS.read(r, *_at(m, path, "landscape"))
                     if "landscape" in m else Quadratic())
        if "optimizer" in m:
            optimizer = optimizers.KINDS.read(r, *_at(m, path, "optimizer"))
        else:
            r.error(m.line, join(path, "optimizer"), "required key is missing")
            optimizer = optimizers.KINDS.fallback()
    detect = Detection.read_mapping(r, *_at(m, path, "detect")) if "detect" in m else Detection()
    step_interval = r.take(m, path, "step_interval", interval, 1.0)
    hardware = (read_hardware(r, *_at(m, path, "hardware"), step_interval)
                if "hardware" in m else None)
    # A fault's at_step and steps count the run's steps (a timed replay's typical spacing).
    per_step = (landscape.nominal_interval if isinstance(landscape, Replay) else None)
    faults = (_faults(r, *_at(m, path, "faults"), per_step or step_interval, hardware,
                      isinstance(landscape, Replay))
              if "faults" in m else ())
    steps = r.take(m, path, "steps", integer(1, MAX_STEPS), _steps_default(landscape))
    if isinstance(landscape, Replay) and landscape.recording is not None:
        _check_replay_steps(r, m, path, landscape, steps)
    schedule = (schedules.KINDS.read(r, *_at(m, path, "schedule"), extra=("warmup",),
                                     steps=steps)
                if "schedule" in m else Constant())
    init = r.take(m, path, "init", _init, 0.0)

    dims = landscape.dims
    if isinstance(init, tuple) and len(init) != dims:
        plural = "" if dims == 1 else "s"
        r.error(m.lines["init"], join(path, "init"),
                f"the {landscape.kind} landscape has {dims} parameter{plural}, "
                f"got a list of {len(init)}")
    spec = RunSpec(
        name=run_name,
        landscape=landscape,
        init=init if isinstance(init, tuple) else (init,) * dims,
        optimizer=optimizer,
        steps=steps,
        step_interval=step_interval,
        loop=r.take(m, path, "loop", boolean, False),
        seed=r.take(m, path, "seed", integer(0, MAX_SEED), 0),
        detect=detect,
        faults=faults,
        schedule=schedule,
        clip_grad_norm=r.take(m, path, "clip_grad_norm", positive, None),
        gradient_noise=r.take(m, path, "gradient_noise", non_negative, 0.0),
        loss_noise=r.take(m, path, "loss_noise", non_negative, 0.0),
        hardware=hardware,
    )
    return spec if len(r.issues) == before else None
