"""The fault kinds: each one's parameters and what it does to a run, declared once.

A ``FaultKind`` names its parameters (key, default, range, help) and its effects while its
window is open, as data: which quantities it scales, whether it stops or freezes the run, hides
its series or makes its loss NaN. The timeline (``simulator.faults.timeline``) turns those
declarations into per-run modifiers; the config reader, the control API's messages, the CLI's
help and docs/faults.md read the same catalogue. Adding a kind is one entry in ``FAULTS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from simulator.schema.fields import (
    MAX_STEPS,
    Reader,
    bounded,
    integer,
    join,
    non_negative_duration,
    positive_duration,
)
from simulator.schema.kinds import Param


def _param(name: str, default: float, convert: Any, help: str) -> Param:
    return Param(name, name, convert, default, help)


# Every parameter is bounded so that a run recovers once the window ends (or, for what
# diverges it, when it restarts) and no value overflows float64 on the way: a learning rate
# or gradient scaled a million times blows a run up but stays finite for its detectors, and
# an optimum moved by at most 100 stays inside the default divergence_parameter (1e3).
_FACTOR = bounded(0, 1e6, lo_open=True)
_SHRINK = bounded(0, 1, lo_open=True)
_SHIFT = bounded(-100, 100)
_SIGMA = bounded(0, 1e3, lo_open=True)
_SLOWER = bounded(1, 1e6)
_THROTTLE = bounded(1, 10)
_RANK = integer(0, 4095)


@dataclass(frozen=True)
class FaultKind:
    """One fault kind; see the module docstring. Effects name the parameter they use."""

    name: str
    summary: str  # what it does to the series (docs/faults.md)
    alert: str  # the alert it should raise (docs/faults.md)
    params: tuple[Param, ...] = ()
    # A window of this length when none is given (inf: until cleared).
    default_duration: float = math.inf
    scales_lr: str | None = None  # each step's learning rate is multiplied by this parameter
    scales_gradient: str | None = None  # the observed gradient is multiplied by this parameter
    slows: str | None = None  # steps fall due this parameter times less often
    noise: tuple[str, ...] = ()  # gradient noise with the product of these as its std
    drifts: str | None = None  # the optimum moves by this parameter over the window
    stops: bool = False  # no step falls due
    freezes: bool = False  # updates are zero
    nan: bool = False  # the loss and gradient read NaN
    absent: bool = False  # the series vanish; the run restarts when the window ends
    # Hardware (runs with a ``hardware`` block, simulator.hardware): what the GPUs do.
    throttles: str | None = None  # every GPU computes this parameter times slower
    straggles: tuple[str, str] | None = None  # (rank, factor): that rank computes slower
    loses_gpu: str | None = None  # this parameter's GPU falls off the bus (XID 79)
    scales_loss: str | None = None  # the reported loss is multiplied by this parameter
    # On a replay run (simulator.replay): what the kind does to a recording, or, when
    # ``replays`` is False, why it cannot apply to one.
    on_recording: str = "as on any run"
    replays: bool = True

    def param(self, name: str) -> Param:
        """One of the kind's parameters (KeyError if it has no such one)."""
        for p in self.params:
            if p.key == name:
                return p
        raise KeyError(name)


FAULTS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind(
        "lr_spike",
        "each step in the window uses `learning_rate * factor`; `trainsim_learning_rate` shows "
        "it. A large enough factor makes a healthy run diverge",
        "`TrainsimRunDiverging` (the detector flags the divergence after its rising streak)",
        (_param("factor", 10.0, _FACTOR, "multiplies the learning rate"),),
        scales_lr="factor",
        on_recording="rejected: a recording's loss was logged at its own learning rate and "
                     "cannot respond to another one (`loss_spike` shows a loss that jumps)",
        replays=False),
    FaultKind(
        "gradient_explosion",
        "the gradient observed at each step in the window is multiplied: "
        "`trainsim_gradient_norm` jumps, and the next update uses it",
        "`TrainsimGradientNormSpike`; `TrainsimRunDiverging` when the updates blow up",
        (_param("factor", 100.0, _FACTOR, "multiplies the gradient"),),
        scales_gradient="factor",
        on_recording="the recorded gradient norm is multiplied; the recorded loss does not "
                     "respond"),
    FaultKind(
        "nan",
        "from its first step, the step's loss and gradient are NaN: `trainsim_loss` and "
        "`trainsim_gradient_norm` are NaN for the window; the detector marks the run diverged; "
        "after the window the run holds its last finite values until it restarts. The GPUs "
        "carry on computing: their series do not change",
        "`TrainsimLossNotFinite`, `TrainsimRunDiverging`",
        nan=True, on_recording="as on any run: the replay holds its last finite row until it "
                               "restarts"),
    FaultKind(
        "plateau",
        "updates are frozen (the loss is exactly flat) and the observed gradient is scaled by "
        "`factor` (small, but above the convergence tolerance for a run that is still "
        "descending)",
        "`TrainsimRunStalled` (the stall detector trips after one `stall_window`)",
        (_param("factor", 0.01, _SHRINK, "multiplies the observed gradient"),),
        scales_gradient="factor", freezes=True,
        on_recording="the loss is frozen at its value when the window opens (the replay stays "
                     "on its row) and the recorded gradient norm is scaled; after the window "
                     "the replay goes on from that row"),
    FaultKind(
        # Signed: the seed's runs approach their optimum from above, so a negative shift moves
        # it away from them and their loss climbs back.
        "drift",
        "the optimum c moves linearly by `shift` over the window and stays there, as under "
        "data drift; a run that cannot follow lags behind and its loss climbs back, then "
        "settles and re-converges. `shift` is signed: the seed's runs approach c from above, "
        "so a negative shift moves the optimum away from them",
        "`TrainsimLossRising`",
        (_param("shift", -3.0, _SHIFT, "how far the optimum moves, in every dimension"),),
        default_duration=60.0, drifts="shift",
        on_recording="rejected: a recording has no optimum to move (`plateau` or "
                     "`loss_spike` show a loss that stops improving)",
        replays=False),
    FaultKind(
        "noise_burst",
        "Gaussian noise with standard deviation `sigma * factor` is added to each gradient in "
        "the window, seeded by (run seed, run name, attempt, step): reproducible bit for bit",
        "`TrainsimGradientNormSpike`, possibly `TrainsimLossRising`",
        (_param("factor", 10.0, _SIGMA, "multiplies sigma"),
         _param("sigma", 1.0, _SIGMA, "standard deviation of the noise, before factor")),
        noise=("sigma", "factor"),
        on_recording="the noise is added to the recorded gradient norm (its absolute value "
                     "is exported); the recorded loss does not respond"),
    FaultKind(
        "slow_steps",
        "steps fall due `factor` times less often during the window; the step duration grows "
        "and throughput, MFU and GPU utilisation fall by `factor`",
        "`TrainsimStepRateRegression`; with a hardware block `TrainsimStepTimeRegression` and "
        "`TrainsimThroughputDrop`",
        (_param("factor", 4.0, _SLOWER, "how many times longer a step takes"),),
        slows="factor"),
    FaultKind(
        "hang",
        "the run takes no step during the window: `trainsim_steps_total` and "
        "`trainsim_last_step_timestamp_seconds` freeze, every other series keeps its last "
        "value; stepping resumes where it stopped. GPUs idle (utilisation 0, power at idle) "
        "with their memory still allocated",
        "`TrainsimRunHung`; with a hardware block `TrainsimGPUsIdle` first",
        stops=True),
    FaultKind(
        # A crash needs a finite window: it ends with the restart.
        "crash",
        "the run's series vanish for the window; when it ends the run restarts from scratch, "
        "as a rescheduled job: `trainsim_steps_total` starts again at 0, "
        "`trainsim_run_restarts_total` goes up by one; the job's GPU series vanish with it",
        "`TrainsimRunCrashLooping` when it repeats; `TrainsimRunSeriesAbsent` when the window "
        "is long",
        default_duration=30.0, stops=True, absent=True),
    FaultKind(
        "dataloader_stall",
        "each step waits `factor` times as long for its input: the step duration grows, "
        "throughput, MFU and every GPU's utilisation fall by `factor`; the loss is unaffected "
        "(runs with a `hardware` block show it in their GPU series)",
        "`TrainsimThroughputDrop`, `TrainsimStepTimeRegression`; not the loss alerts",
        (_param("factor", 4.0, _SLOWER, "how many times longer a step waits for its input"),),
        slows="factor"),
    FaultKind(
        "straggler",
        "one rank (`rank`) computes `factor` times slower and every step waits for it: the "
        "step duration grows by `factor`; that rank's GPU stays busy while the others idle "
        "as they wait",
        "`TrainsimStepTimeRegression`, `TrainsimThroughputDrop`",
        (_param("factor", 3.0, _SLOWER, "how many times slower the straggling rank computes"),
         _param("rank", 0, _RANK, "the straggling rank (GPU) of the job")),
        slows="factor", straggles=("rank", "factor")),
    FaultKind(
        "thermal_throttle",
        "every GPU's SM clock is capped at 1/`factor` of its maximum, its power capped and its "
        "temperature at the throttle point: each step computes `factor` times longer, "
        "utilisation stays high",
        "`TrainsimStepTimeRegression` (where the slower step crosses a histogram bucket bound)",
        (_param("factor", 1.5, _THROTTLE, "how many times slower the throttled GPUs compute"),),
        slows="factor", throttles="factor"),
    FaultKind(
        "gpu_lost",
        "GPU `gpu` falls off the bus: it reports XID 79 (`DCGM_FI_DEV_XID_ERRORS`), its other "
        "series vanish, and the job hangs (no step) for the window, its other GPUs idle",
        "`TrainsimGPUXidError`; `TrainsimGPUsIdle` and `TrainsimRunHung` follow, muted by it "
        "in Alertmanager",
        (_param("gpu", 0, _RANK, "the GPU (rank) that is lost"),),
        stops=True, loses_gpu="gpu"),
    FaultKind(
        "loss_spike",
        "the loss reported at each step in the window reads `factor` times its value, as "
        "after a bad batch or a corrupted shard; the parameters do not see it, so the loss "
        "falls back when the window ends",
        "`TrainsimRunDiverging` when the spike lasts beyond the detector's rising streak; "
        "`TrainsimLossRising` ignores a short one by design",
        (_param("factor", 10.0, _FACTOR, "multiplies the reported loss"),),
        scales_loss="factor"),
)}
FAULT_KINDS = tuple(FAULTS)


@dataclass(frozen=True)
class FaultSpec:
    """A fault on a run's timeline: ``at`` seconds after the run started, for ``duration``
    seconds (``inf``: until cleared), with the kind's parameters."""

    kind: str
    at: float
    duration: float
    params: tuple[tuple[str, float], ...] = ()

    def param(self, name: str) -> float:
        """A parameter's value (the kind's default when not given)."""
        given = dict(self.params)
        return float(given[name]) if name in given else float(FAULTS[self.kind].param(name).default)

    def all_params(self) -> dict[str, float]:
        """Every parameter of the kind with its value, defaults included."""
        return {p.key: self.param(p.key) for p in FAULTS[self.kind].params}


_TIMING = ("at", "at_step", "duration", "steps")


def recording_problem(kind: str) -> str | None:
    """Why a fault of ``kind`` cannot apply to a replay run (None: it can)."""
    fault = FAULTS[kind]
    return None if fault.replays else (f"{kind} cannot apply to a replay run: "
                                       + fault.on_recording.removeprefix("rejected: "))


def read_fault(r: Reader, value: Any, line: int, path: str, step_interval: float,
               at_default: float | None = None) -> FaultSpec | None:
    """Read one fault mapping (YAML or API body); ``None`` after recording its mistakes.

    ``at``/``at_step`` place it on the run's timeline (``at_default`` is used when both are
    absent: the API injects now); ``duration``/``steps`` give its length; every other key is
    a parameter of the kind.
    """
    m = r.mapping(value, line, path)
    if m is None:
        return None
    before = len(r.issues)
    kind = m.get("kind")
    if not isinstance(kind, str) or kind not in FAULTS:
        r.error(m.lines.get("kind", m.line), join(path, "kind"),
                "required key is missing" if "kind" not in m else
                f"unknown fault kind {kind!r} (expected one of: {', '.join(FAULT_KINDS)})")
        return None
    fault = FAULTS[kind]
    r.unknown_keys(m, path, ("kind", *_TIMING, *(p.key for p in fault.params)))
    for a, b in (("at", "at_step"), ("duration", "steps")):
        if a in m and b in m:
            r.error(m.lines[b], join(path, b), f"give either {a} or {b}, not both")
    at = r.take(m, path, "at", non_negative_duration, None)
    if "at_step" in m:
        at = r.take(m, path, "at_step", integer(0, MAX_STEPS), 0) * step_interval
    if at is None and "at" not in m:
        if at_default is None:
            r.error(m.line, join(path, "at"), "required key is missing (or give at_step)")
            return None
        at = at_default
    if at is None:
        return None
    duration = r.take(m, path, "duration", positive_duration, None)
    if "steps" in m:
        duration = r.take(m, path, "steps", integer(1, MAX_STEPS), 1) * step_interval
    if duration is None:
        duration = fault.default_duration
    params = tuple((p.key, r.take(m, path, p.key, p.convert, p.default))
                   for p in fault.params if p.key in m)
    if len(r.issues) != before:
        return None
    return FaultSpec(kind=kind, at=float(at), duration=float(duration), params=params)
