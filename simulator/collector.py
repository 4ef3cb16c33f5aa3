"""Snapshot -> Prometheus metric families.

``FAMILIES`` is the one description of the per-run metrics. From it come two things that are
tested to produce the same bytes:

- ``TrainsimCollector``, a prometheus_client custom collector (``collect()`` yields metric
  families), for registries, ``get_sample_value`` in tests and any exposition format the client
  library supports;
- ``render``, the scrape path: the same exposition written straight from the snapshot's arrays
  with label prefixes cached per fleet. prometheus_client builds one Python object per sample,
  which costs ~0.7 s for 10k runs; ``render`` needs a small fraction of that (see
  docs/benchmarks.md).

A scrape only reads the current immutable snapshot; it never advances the simulation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from simulator import __version__
from simulator.engine import ALERTS, STATES, Snapshot


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
PARAMETER = Family("trainsim_parameter", "gauge",
                   "Current value of one parameter of a run with at most 8 parameters.",
                   ("run", "dim"))
RUN_INFO = Family("trainsim_run_info", "gauge", "Run metadata; always 1.",
                  ("run", "landscape", "optimizer"))
RUN_STATE = Family("trainsim_run_state", "gauge",
                   "1 for the run's current state, 0 for the others.", ("run", "state"))
ALERT_ACTIVE = Family("trainsim_alert_active", "gauge",
                      "1 while the daemon's detector raises this alert for the run.",
                      ("run", "alert"))
FAMILIES: tuple[Family, ...] = (
    *(f for f, _ in SCALARS), PARAMETER, RUN_INFO, RUN_STATE, ALERT_ACTIVE)

_ZERO_ONE = ("0.0", "1.0")


def _per_run_matrix(snap: Snapshot) -> Iterator[tuple[Family, list[tuple[str, ...]], list[float]]]:
    """(family, label values per sample, value per sample), in exposition order."""
    names = snap.names
    for fam, attr in SCALARS:
        yield fam, [(n,) for n in names], getattr(snap, attr).tolist()
    labels: list[tuple[str, ...]] = []
    values: list[float] = []
    for first, w in snap.parameters:
        for i, row in enumerate(w.tolist()):
            for j, v in enumerate(row):
                labels.append((names[first + i], str(j)))
                values.append(v)
    yield PARAMETER, labels, values
    yield RUN_INFO, list(zip(names, snap.landscapes, snap.optimizers, strict=True)), \
        [1.0] * len(names)
    onehot = (snap.state[:, None] == np.arange(len(STATES))).ravel().astype(float).tolist()
    yield RUN_STATE, [(n, s) for n in names for s in STATES], onehot
    yield ALERT_ACTIVE, [(n, a) for n in names for a in ALERTS], \
        snap.alerts.ravel().astype(float).tolist()


class TrainsimCollector:
    """prometheus_client collector for the per-run families of the current snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Build fresh metric families from one snapshot."""
        for fam, labels, values in _per_run_matrix(self._snapshot()):
            cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
            mf = cls(fam.name, fam.help, labels=list(fam.labels))
            for lv, v in zip(labels, values, strict=True):
                mf.add_metric(list(lv), v)
            yield mf

    def describe(self) -> list[Metric]:
        """Nothing up front: families are built at scrape time."""
        return []


def _label_prefix(fam: Family, values: tuple[str, ...]) -> str:
    # Run names, kinds, states and dims are restricted to [a-zA-Z0-9_.-]: nothing to escape.
    # prometheus_client writes labels sorted by name; so do we, to stay byte-identical.
    pairs = sorted(zip(fam.labels, values, strict=True))
    inner = ",".join(f'{k}="{v}"' for k, v in pairs)
    return f"{fam.sample_name}{{{inner}}} "


def _header(fam: Family, openmetrics: bool) -> str:
    name = fam.name if openmetrics else fam.sample_name
    return f"# HELP {name} {fam.help}\n# TYPE {name} {fam.kind}\n"


class Renderer:
    """Writes the per-run families of a snapshot in the text or OpenMetrics format.

    Label prefixes depend only on the fleet's run names, so they are built once per fleet.
    """

    def __init__(self) -> None:
        self._names: tuple[str, ...] | None = None
        self._prefixes: dict[str, list[str]] = {}
        self._blocks: dict[str, tuple[bytes, str]] = {}

    def _layout(self, snap: Snapshot) -> dict[str, list[str]]:
        if snap.names is not self._names:
            self._prefixes = {}
            for fam, labels, _ in _per_run_matrix(snap):
                self._prefixes[fam.name] = [_label_prefix(fam, lv) for lv in labels]
            self._names = snap.names
            self._blocks = {}
        return self._prefixes

    def render(self, snap: Snapshot, openmetrics: bool = False) -> str:
        """The per-run part of a scrape (no ``# EOF``), byte-identical to prometheus_client."""
        prefixes = self._layout(snap)
        parts: list[str] = []
        for fam, attr in SCALARS:
            parts.append(_header(fam, openmetrics))
            parts.append(_lines(prefixes[fam.name], format_floats(getattr(snap, attr))))
        parts.append(_header(PARAMETER, openmetrics))
        params = [v for _, w in snap.parameters for v in format_floats(w.ravel())]
        parts.append(_lines(prefixes[PARAMETER.name], params))
        parts.append(_header(RUN_INFO, openmetrics))
        parts.append(self._cached(RUN_INFO, b"", lambda: ["1.0"] * len(snap.names)))
        parts.append(_header(RUN_STATE, openmetrics))
        parts.append(self._cached(RUN_STATE, snap.state.tobytes(), lambda: _zero_one(
            snap.state[:, None] == np.arange(len(STATES)))))
        parts.append(_header(ALERT_ACTIVE, openmetrics))
        parts.append(self._cached(ALERT_ACTIVE, snap.alerts.tobytes(),
                                  lambda: _zero_one(snap.alerts)))
        return "".join(parts)

    def _cached(self, fam: Family, key: bytes, values: Callable[[], list[str]]) -> str:
        """A block whose text depends only on ``key`` (state and alert flags change rarely)."""
        hit = self._blocks.get(fam.name)
        if hit is not None and hit[0] == key:
            return hit[1]
        text = _lines(self._prefixes[fam.name], values())
        self._blocks[fam.name] = (key, text)
        return text


def format_floats(values: NDArray[np.float64]) -> list[str]:
    """``floatToGoString`` for an array, with Python's ``repr`` where the two agree.

    They agree for finite values below 1e6 (Go switches to exponent notation from there on).
    """
    out = list(map(float.__repr__, values.tolist()))
    special = ~(np.isfinite(values) & (values < 1e6))
    for i in np.flatnonzero(special).tolist():
        out[i] = floatToGoString(values[i])
    return out


def _zero_one(flags: NDArray[np.bool_]) -> list[str]:
    return [_ZERO_ONE[b] for b in flags.ravel().tolist()]


def _lines(prefixes: list[str], values: Any) -> str:
    if not prefixes:
        return ""
    return "\n".join(map(str.__add__, prefixes, values)) + "\n"


class DaemonMetrics:
    """The daemon's own health series, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.build_info = Gauge("trainsim_build_info", "trainsim build; always 1.", ["version"],
                                registry=registry)
        self.build_info.labels(version=__version__).set(1)
        self.reload_ok = Gauge("trainsim_config_last_reload_successful",
                               "1 if the last configuration (re)load succeeded, else 0.",
                               registry=registry)
        self.reload_time = Gauge("trainsim_config_last_reload_success_timestamp_seconds",
                                 "Unix time of the last successful configuration load.",
                                 registry=registry)
