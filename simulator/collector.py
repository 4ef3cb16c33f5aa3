"""The per-run families through prometheus_client, and the daemon's own health series.

``TrainsimCollector`` is a custom collector (``collect()`` yields fresh metric families from
one snapshot) for registries, ``get_sample_value`` in tests and any exposition format the
client library supports; it describes the same families as ``simulator.exposition``, whose
renderer serves the scrapes, and the two are tested to produce the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from simulator import __version__
from simulator.engine import Snapshot
from simulator.exposition import Histogram, families, layout, sample_values


class TrainsimCollector:
    """prometheus_client collector for the per-run families of the current snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Build fresh metric families from one snapshot; crashed runs have no series."""
        snap = self._snapshot()
        rows_of = layout(snap)
        presence = snap.presence
        for fam in families(snap):
            labels, rows = rows_of[fam.name]
            keep = presence[rows].tolist()
            values = sample_values(snap, fam).tolist()
            if isinstance(fam, Histogram):
                yield _histogram(fam, labels, values, keep)
                continue
            cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
            mf = cls(fam.name, fam.help, labels=list(fam.labels))
            for lv, v, k in zip(labels, values, keep, strict=True):
                if k:
                    mf.add_metric(list(lv), v)
            yield mf

    def describe(self) -> list[Metric]:
        """Nothing up front: families are built at scrape time."""
        return []


def _histogram(fam: Histogram, labels: list[tuple[str, ...]], values: list[float],
               keep: list[bool]) -> Metric:
    """A histogram family from its layout: per run, its buckets, then count, then sum."""
    mf = HistogramMetricFamily(fam.name, fam.help, labels=["run"])
    buckets: list[tuple[str, float]] = []
    for (run, le, part), v, k in zip(labels, values, keep, strict=True):
        if not k:
            continue
        if part == "bucket":
            buckets.append((le, v))
        elif part == "sum":
            mf.add_metric([run], buckets, sum_value=v)
            buckets = []
    return mf


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
        self.exposed_series = Gauge("trainsim_exposed_series",
                                    "Samples in this daemon's /metrics exposition (text "
                                    "format), its own health series included.",
                                    registry=registry)
