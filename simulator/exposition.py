"""Snapshot -> the Prometheus exposition, written straight from the snapshot's arrays.

``FAMILIES`` is the one description of the per-run metrics. ``Renderer`` writes them in the
text or OpenMetrics format with label prefixes cached per fleet: prometheus_client builds one
Python object per sample, which costs ~0.7 s for 10k runs, and the renderer needs a small
fraction of that (docs/benchmarks.md). ``simulator.collector`` exposes the same families through
prometheus_client, and the two are tested to produce the same bytes. ``Exposition`` is the
scrape body: the daemon's own health registry followed by the per-run families, rendered at
most once per snapshot and format.

A scrape only reads the current immutable snapshot; it never advances the simulation.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from simulator.engine import ALERTS, STATES, Snapshot
from simulator.hardware import STEP_BUCKETS, Fleet


@dataclass(frozen=True)
class Family:
    """One per-run metric family: its name (without ``_total``), type, help and labels."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...] = ("run",)

    @property
    def sample_name(self) -> str:
        """The name of the family's samples (counters gain ``_total``)."""
        return self.name + "_total" if self.kind == "counter" else self.name

    @property
    def sample_names(self) -> tuple[str, ...]:
        """Every name its samples have."""
        return (self.sample_name,)

    def sample(self, values: tuple[str, ...]) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The sample name and the (label, value) pairs of the series with label ``values``
        (as ``layout`` gives them)."""
        return self.sample_name, tuple(zip(self.labels, values, strict=True))


@dataclass(frozen=True)
class Histogram(Family):
    """A per-run histogram: ``layout`` gives each run's series as (run, le, part), part one
    of ``bucket`` (one per bound, +Inf last), ``count``, ``sum``, in that order per run, as
    prometheus_client writes them."""

    @property
    def sample_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{part}" for part in ("bucket", "count", "sum"))

    def sample(self, values: tuple[str, ...]) -> tuple[str, tuple[tuple[str, str], ...]]:
        run, le, part = values
        if part == "bucket":
            return f"{self.name}_bucket", (("le", le), ("run", run))
        return f"{self.name}_{part}", (("run", run),)


# Per-run families with one sample per run, in exposition order, and the snapshot field each reads.
SCALARS: tuple[tuple[Family, str], ...] = (
    (Family("trainsim_loss", "gauge", "Cost J(w) at the run's current parameters."), "loss"),
    (Family("trainsim_gradient_norm", "gauge", "Euclidean norm of the gradient of J at w."),
     "gradient_norm"),
    (Family("trainsim_learning_rate", "gauge", "Effective learning rate of the last step."),
     "learning_rate"),
    (Family("trainsim_update_norm", "gauge", "Euclidean norm of the last parameter update."),
     "update_norm"),
    (Family("trainsim_steps", "counter", "Optimizer steps done in the run's current attempt."),
     "steps"),
    (Family("trainsim_last_step_timestamp_seconds", "gauge",
            "Unix time at which the run's last step was taken."), "last_step_timestamp"),
    (Family("trainsim_run_restarts", "counter",
            "Times the run was restarted (loop, API or crash)."), "restarts"),
)
VALIDATION_LOSS = Family("trainsim_validation_loss", "gauge",
                         "Loss on the held-out split (logistic_regression runs only).")
EXCESS_LOSS = Family("trainsim_excess_loss", "gauge",
                     "Loss above the landscape's minimum, J(w) - min J, noise-free and without "
                     "cancellation (runs whose landscape knows its minimum).")
PARAMETER = Family("trainsim_parameter", "gauge",
                   "Current value of one parameter of a run with at most 8 parameters.",
                   ("run", "dim"))
RUN_INFO = Family("trainsim_run_info", "gauge", "Run metadata; always 1.",
                  ("run", "landscape", "optimizer", "schedule"))
RUN_STATE = Family("trainsim_run_state", "gauge",
                   "1 for the run's current state, 0 for the others.", ("run", "state"))
ALERT_ACTIVE = Family("trainsim_alert_active", "gauge",
                      "1 while the daemon's detector raises this alert for the run.",
                      ("run", "alert"))
FAULT_ACTIVE = Family("trainsim_fault_active", "gauge",
                      "1 while a fault of this kind is injected into the run (ground truth).",
                      ("run", "fault"))
FAULTS_INJECTED = Family("trainsim_faults_injected", "counter",
                         "Faults of this kind whose window began on the run.", ("run", "fault"))
FAMILIES: tuple[Family, ...] = (
    *(f for f, _ in SCALARS), VALIDATION_LOSS, EXCESS_LOSS, PARAMETER, RUN_INFO, RUN_STATE,
    ALERT_ACTIVE, FAULT_ACTIVE, FAULTS_INJECTED)
# Runs with a hardware block (simulator.hardware): their own series, then their GPUs' under
# dcgm-exporter's names and labels (its default counters, etc/default-counters.csv, and the
# profiling GR_ENGINE_ACTIVE), with ``run`` added to tie each GPU to its job.
GPU_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "run")
# A histogram's series per run in ``layout``: its buckets (+Inf included), count and sum.
HISTOGRAM_PARTS = len(STEP_BUCKETS) + 3
STEP_DURATION = Histogram("trainsim_step_duration_seconds", "histogram",
                          "Duration of each optimizer step of the run's current attempt.",
                          ("run", "le"))
SAMPLES = Family("trainsim_samples", "counter",
                 "Samples processed in the run's current attempt (steps x samples_per_step).")
TOKENS = Family("trainsim_tokens", "counter",
                "Tokens processed in the run's current attempt (steps x tokens_per_step).")
THROUGHPUT = Family("trainsim_throughput_samples_per_second", "gauge",
                    "Samples per second of the run's last step.")
MFU = Family("trainsim_model_flops_utilization_ratio", "gauge",
             "Model FLOPs utilisation of the last step: flops_per_step / (step duration x "
             "peak_flops x gpus).")
DCGM: tuple[tuple[Family, str], ...] = tuple(
    (Family(name, "gauge", help, GPU_LABELS), attr) for name, help, attr in (
        ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock"),
        ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature"),
        ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power"),
        ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "util"),
        ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "fb_free"),
        ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "fb_used"),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.",
         "engine_active"),
    ))
XID = Family("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.",
             GPU_LABELS)
HARDWARE_FAMILIES: tuple[Family, ...] = (STEP_DURATION, SAMPLES, TOKENS, THROUGHPUT, MFU,
                                         *(f for f, _ in DCGM), XID)


def families(snap: Snapshot) -> tuple[Family, ...]:
    """The families of ``snap``: ``FAMILIES``, and the hardware ones when a run has hardware
    (a fleet without writes exactly what it did before hardware existed)."""
    return FAMILIES if snap.hardware is None else FAMILIES + HARDWARE_FAMILIES


# Families whose values are all 0 or 1: rendered from a lookup and cached while unchanged.
_FLAGS = (RUN_INFO, RUN_STATE, ALERT_ACTIVE, FAULT_ACTIVE)
# Families whose values rarely change (a GPU's telemetry holds while its job runs steadily):
# their rendered block is cached while the values are the same.
_STEADY = (*(f for f, _ in DCGM), XID)

_ZERO_ONE = ("0.0", "1.0")

Labels = list[tuple[str, ...]]
Rows = NDArray[np.int64]


def layout(snap: Snapshot) -> dict[str, tuple[Labels, Rows]]:
    """Per family, the label values of each sample and the run row each sample belongs to.

    Depends only on the fleet (run names, parameter shapes, fault kinds in use).
    """
    names = snap.names
    n = len(names)
    every = np.arange(n, dtype=np.int64)
    out: dict[str, tuple[Labels, Rows]] = {}
    for fam, attr in SCALARS:
        rows_of = snap.rows_of(attr)
        out[fam.name] = (([(nm,) for nm in names], every) if rows_of is None else
                         ([(names[r],) for r in rows_of.tolist()], rows_of))
    labels: Labels = []
    rows: list[int] = []
    for first, w in snap.parameters:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                labels.append((names[first + i], str(j)))
                rows.append(first + i)
    out[PARAMETER.name] = (labels, np.array(rows, dtype=np.int64))
    out[VALIDATION_LOSS.name] = ([(names[r],) for r in snap.validation_rows.tolist()],
                                 snap.validation_rows)
    out[EXCESS_LOSS.name] = ([(names[r],) for r in snap.excess_rows.tolist()], snap.excess_rows)
    out[RUN_INFO.name] = (list(zip(names, snap.landscapes, snap.optimizers, snap.schedules,
                                   strict=True)), every)
    out[RUN_STATE.name] = ([(nm, st) for nm in names for st in STATES],
                           np.repeat(every, len(STATES)))
    out[ALERT_ACTIVE.name] = ([(nm, al) for nm in names for al in ALERTS],
                              np.repeat(every, len(ALERTS)))
    pair_labels: Labels = [(names[r], k) for r, k in snap.fault_pairs]
    pairs = (pair_labels, np.array([r for r, _ in snap.fault_pairs], dtype=np.int64))
    out[FAULT_ACTIVE.name] = pairs
    out[FAULTS_INJECTED.name] = pairs
    if snap.hardware is not None:
        out.update(_hardware_layout(snap, snap.hardware))
    return out


def _hardware_layout(snap: Snapshot, hw: Fleet) -> dict[str, tuple[Labels, Rows]]:
    """The hardware families' samples. A GPU's series have the row ``n + g`` (GPU g) of
    ``Snapshot.presence``, its XID series ``n + G + g``."""
    names, n, gpus = snap.names, len(snap.names), len(hw.labels)
    run_names = [names[r] for r in hw.rows.tolist()]
    les = [floatToGoString(b) for b in (*STEP_BUCKETS, float("inf"))]
    parts = [(le, "bucket") for le in les] + [("", "count"), ("", "sum")]
    out: dict[str, tuple[Labels, Rows]] = {
        STEP_DURATION.name: ([(nm, le, part) for nm in run_names for le, part in parts],
                             np.repeat(hw.rows, len(parts))),
        TOKENS.name: ([(names[r],) for r in hw.rows[hw.tokens_rows].tolist()],
                      hw.rows[hw.tokens_rows]),
    }
    for fam in (SAMPLES, THROUGHPUT, MFU):
        out[fam.name] = ([(nm,) for nm in run_names], hw.rows)
    owners = hw.rows[hw.gpu_run].tolist()
    gpu_labels: Labels = [(*lv, names[r]) for lv, r in zip(hw.labels, owners, strict=True)]
    for fam, _ in DCGM:
        out[fam.name] = (gpu_labels, n + np.arange(gpus, dtype=np.int64))
    out[XID.name] = (gpu_labels, n + gpus + np.arange(gpus, dtype=np.int64))
    return out


def sample_values(snap: Snapshot, fam: Family) -> NDArray[np.float64]:
    """The value of every sample of ``fam``, in layout order."""
    for f, attr in SCALARS:
        if f is fam:
            result: NDArray[np.float64] = getattr(snap, attr)
            rows_of = snap.rows_of(attr)
            return result if rows_of is None else result[rows_of]
    if fam is VALIDATION_LOSS:
        return snap.validation_loss
    if fam is EXCESS_LOSS:
        return snap.excess_loss
    if fam is PARAMETER:
        params: NDArray[np.float64] = np.concatenate(
            [w.ravel() for _, w in snap.parameters] or [np.zeros(0)])
        return params
    if fam is RUN_INFO:
        return np.ones(len(snap.names))
    if fam is RUN_STATE:
        onehot: NDArray[np.bool_] = snap.state[:, None] == np.arange(len(STATES))
        return onehot.ravel().astype(np.float64)
    if fam is ALERT_ACTIVE:
        return snap.alerts.ravel().astype(np.float64)
    if fam is FAULT_ACTIVE:
        return snap.fault_active.astype(np.float64)
    if fam is FAULTS_INJECTED:
        return snap.faults_injected
    return _hardware_values(snap, fam)


def _hardware_values(snap: Snapshot, fam: Family) -> NDArray[np.float64]:
    tel = snap.telemetry
    assert tel is not None, f"{fam.name} without hardware"
    if fam is STEP_DURATION:
        per_run = np.concatenate([tel.step_buckets, tel.step_count[:, None],
                                  tel.step_sum[:, None]], axis=1)
        return per_run.ravel()
    if fam is SAMPLES:
        return tel.samples_total
    if fam is TOKENS:
        return tel.tokens_total
    if fam is THROUGHPUT:
        return tel.throughput
    if fam is MFU:
        return tel.mfu
    if fam is XID:
        return tel.xid
    for f, attr in DCGM:
        if f is fam:
            result: NDArray[np.float64] = getattr(tel, attr)
            return result
    raise KeyError(fam.name)


def escape_label_value(value: str) -> str:
    """A label value as both exposition formats write it: backslash, double quote and line
    feed escaped (run names cannot hold them; the renderer must not depend on that)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_prefix(fam: Family, values: tuple[str, ...]) -> str:
    # prometheus_client writes labels sorted by name; so do we, to stay byte-identical.
    name, pairs = fam.sample(values)
    inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(pairs))
    return f"{name}{{{inner}}} "


def _header(fam: Family, openmetrics: bool) -> str:
    name = fam.name if openmetrics else fam.sample_name
    return f"# HELP {name} {fam.help}\n# TYPE {name} {fam.kind}\n"


class Renderer:
    """Writes the per-run families of a snapshot in the text or OpenMetrics format.

    Label prefixes depend only on the fleet, so they are built once per fleet; blocks of 0/1
    flags are cached while their values do not change.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._prefixes: dict[str, tuple[list[str], Rows]] = {}
        self._blocks: dict[str, tuple[bytes, str]] = {}

    def _layout(self, snap: Snapshot) -> dict[str, tuple[list[str], Rows]]:
        key = (snap.names, snap.fault_pairs, tuple(w.shape for _, w in snap.parameters),
               snap.landscapes, snap.optimizers, snap.schedules, snap.hardware,
               tuple((a, r.tobytes()) for a, r in snap.unrecorded))
        if key != self._key:
            self._prefixes = {
                name: ([_label_prefix(_FAMILY[name], lv) for lv in labels], rows)
                for name, (labels, rows) in layout(snap).items()}
            self._key = key
            self._blocks = {}
        return self._prefixes

    def render(self, snap: Snapshot, openmetrics: bool = False) -> str:
        """The per-run part of a scrape (no ``# EOF``), byte-identical to prometheus_client."""
        prefixed = self._layout(snap)
        presence = snap.presence
        all_present = bool(presence.all())
        parts: list[str] = []
        for fam in families(snap):
            parts.append(_header(fam, openmetrics))
            prefixes, rows = prefixed[fam.name]
            keep = None if all_present else presence[rows]
            values = sample_values(snap, fam)
            if fam in _FLAGS or fam in _STEADY:
                key = values.tobytes() + (b"" if keep is None else keep.tobytes())
                hit = self._blocks.get(fam.name)
                if hit is None or hit[0] != key:
                    text = _lines(prefixes, [_ZERO_ONE[int(v)] for v in values.tolist()]
                                  if fam in _FLAGS else format_floats(values), keep)
                    hit = self._blocks[fam.name] = (key, text)
                parts.append(hit[1])
            else:
                parts.append(_lines(prefixes, format_floats(values), keep))
        return "".join(parts)


_FAMILY = {f.name: f for f in FAMILIES + HARDWARE_FAMILIES}


def format_floats(values: NDArray[np.float64]) -> list[str]:
    """``floatToGoString`` for an array, with Python's ``repr`` where the two agree.

    They agree for finite values below 1e6 (Go switches to exponent notation from there on).
    """
    out = list(map(float.__repr__, values.tolist()))
    special = ~(np.isfinite(values) & (values < 1e6))
    for i in np.flatnonzero(special).tolist():
        out[i] = floatToGoString(values[i])
    return out


def _lines(prefixes: list[str], values: list[str], keep: NDArray[np.bool_] | None) -> str:
    if keep is None:
        lines = list(map(str.__add__, prefixes, values))
    else:
        lines = [p + v for p, v, k in zip(prefixes, values, keep.tolist(), strict=True) if k]
    return "\n".join(lines) + "\n" if lines else ""


# Samples per run that every run has: the scalars, run_info, one per state, one per alert.
_FIXED_PER_RUN = len(SCALARS) + 1 + len(STATES) + len(ALERTS)


def series_count(snap: Snapshot) -> int:
    """How many per-run samples ``render`` writes for ``snap``, from the arrays alone."""
    present = snap.present
    count = (_FIXED_PER_RUN * int(present.sum()) + int(present[snap.validation_rows].sum())
             + int(present[snap.excess_rows].sum()))
    for _, skip in snap.unrecorded:
        count -= int(present[skip].sum())
    for first, w in snap.parameters:
        count += w.shape[1] * int(present[first:first + w.shape[0]].sum())
    if snap.fault_pairs:
        rows = np.fromiter((r for r, _ in snap.fault_pairs), np.int64, len(snap.fault_pairs))
        count += 2 * int(present[rows].sum())  # fault_active and faults_injected_total
    hw, tel = snap.hardware, snap.telemetry
    if hw is not None and tel is not None:
        # Per run: the histogram (buckets, +Inf, count, sum), samples, throughput, MFU.
        count += (len(STEP_BUCKETS) + 3 + 3) * int(present[hw.rows].sum())
        count += int(present[hw.rows[hw.tokens_rows]].sum())
        count += len(DCGM) * int(tel.gpu_present.sum()) + int(tel.xid_present.sum())
    return count


def gzip_bytes(data: bytes) -> bytes:
    """Fast gzip (level 1): scrapes are large and frequent, bandwidth on loopback is cheap."""
    return gzip.compress(data, compresslevel=1, mtime=0)


class Exposition:
    """The /metrics body: the health ``registry`` (prometheus_client), then the per-run
    families of a snapshot; rendered at most once per snapshot generation and format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._renderer = Renderer()
        self._lock = threading.Lock()
        self._cache: dict[tuple[bool, bool], tuple[int, bytes]] = {}

    def body(self, snap: Snapshot, openmetrics: bool, gzipped: bool) -> bytes:
        """The body for ``snap`` in the text or OpenMetrics format, gzipped or not."""
        key = (openmetrics, gzipped)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == snap.generation:
            return hit[1]
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == snap.generation:
                return hit[1]
            if openmetrics:
                own = generate_openmetrics(self.registry).decode().removesuffix("# EOF\n")
                body = (own + self._renderer.render(snap, True) + "# EOF\n").encode()
            else:
                body = generate_latest(self.registry) + self._renderer.render(snap).encode()
            if gzipped:
                body = gzip_bytes(body)
            self._cache[key] = (snap.generation, body)
            return bytes(body)
