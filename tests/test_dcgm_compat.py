"""A GPU dashboard written for dcgm-exporter shows the simulated GPUs without changes.

The queries below are those NVIDIA's own Grafana dashboard for dcgm-exporter evaluates:
``grafana/dcgm-exporter-dashboard.json`` in https://github.com/NVIDIA/dcgm-exporter (published
on Grafana.com as dashboard 12239), in two versions of that file:

- commit 068798b0a1cb23d7764fa30f6f305d322ede87e2 (Grafana 9.1 model): variables ``Hostname``
  (``label_values(DCGM_FI_DEV_FB_FREE, Hostname)``) and ``gpu``
  (``label_values(DCGM_FI_DEV_FB_FREE{Hostname=~"$Hostname"}, gpu)``); panels aggregate
  ``by (Hostname, gpu, ...)``;
- commit 1f7abdb7dc0f86f3cf7853995b0d262fd3e80bc6 (Grafana 6.7 model): variables ``instance``
  and ``gpu`` (``label_values(DCGM_FI_DEV_GPU_TEMP, instance | gpu)``); panels select the raw
  series with ``{instance=~"$instance", gpu=~"$gpu"}``.

Only the PromQL is kept here (the dashboard itself is not copied): each panel's expression with
the variables left in, substituted as Grafana does when "All" is selected (a multi-value
variable without a custom all value becomes the alternation of its values), by ``.*``, and with
one GPU picked. A daemon with one run on 8 GPUs is scraped every second by Debian's Prometheus;
every query must return one series per simulated GPU (or one, for the dashboard's averages and
totals) with finite values in the range the quantity can take, and the variables must list the
8 GPUs, the host and the daemon's instance.

Both versions also have a "Tensor Core Utilization" panel on DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, a
profiling field outside dcgm-exporter's default counters that trainsim does not simulate: that
panel stays empty (see the last test). A missing prometheus binary fails the tests; they never
skip.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from simulator.drills import stack
from tests.conftest import need_binary, wait_for

RUN = "hw-8gpu"
GPUS = [str(i) for i in range(8)]
HOST = f"{RUN}-node-0"  # trainsim's Hostname: <run>-node-<host>; 8 GPUs fit on one host
MODEL = "NVIDIA H100 80GB HBM3"  # the default gpu_model
# A step every 0.5 s (30 s simulated); Prometheus scrapes every second.
SPEED = 60.0
SCRAPE_SECONDS = 1
SCRAPES = 3  # scrapes of every GPU to wait for before querying
# Queries at the evaluation time must see samples ingested up to then: stay a scrape behind.
SETTLE_SECONDS = 1.5

CONFIG = {
    "defaults": {"landscape": {"kind": "quadratic", "a": 1, "c": 2, "b": 1}, "init": 5.5,
                 "steps": 119, "step_interval": "30s", "loop": True},
    "runs": [{"name": RUN, "optimizer": {"kind": "sgd", "learning_rate": 0.2},
              "hardware": {"gpus": len(GPUS)}}],
}


@dataclass(frozen=True)
class Panel:
    """One query of the dashboard: the panel's title, its PromQL with Grafana's variables, how
    many series it draws (one per GPU, or 1 for an aggregate) and the range of its values."""

    title: str
    expr: str
    per_gpu: bool
    low: float  # values must lie in (low, high] when low_open, else [low, high]
    high: float
    low_open: bool = False
    instant: bool = False

    def accepts(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return math.isfinite(value) and above and value <= self.high


# The GPU figures trainsim's models move between (simulator/hardware.py) stay inside these:
# what a GPU can physically report, not trainsim's own numbers.
CELSIUS = (0.0, 110.0)
WATTS = (0.0, 1000.0)  # above 0: a powered GPU draws power even idle
HERTZ = (0.0, 3e9)  # the dashboard multiplies the MHz by 1e6
MIB = (0.0, 81920.0)  # the largest memory of the models trainsim knows (80 GB)

# commit 068798b0a1cb23d7764fa30f6f305d322ede87e2: variables Hostname and gpu.
SEL = 'Hostname=~"$Hostname", gpu=~"$gpu"'
CURRENT = [
    Panel("GPU Temperature",
          f"max(DCGM_FI_DEV_GPU_TEMP{{{SEL}}}) by (Hostname, gpu, uuid)", True, *CELSIUS,
          low_open=True),
    Panel("GPU Avg. Temp", f"avg(DCGM_FI_DEV_GPU_TEMP{{{SEL}}})", False, *CELSIUS,
          low_open=True),
    Panel("GPU Power Usage",
          f"max(DCGM_FI_DEV_POWER_USAGE{{{SEL}}}) by (Hostname, gpu, uuid)", True, *WATTS,
          low_open=True),
    Panel("GPU Power Total",
          f"sum(max(DCGM_FI_DEV_POWER_USAGE{{{SEL}}}) by (gpu))", False, WATTS[0],
          WATTS[1] * len(GPUS), low_open=True, instant=True),
    Panel("GPU SM Clocks",
          f"max(DCGM_FI_DEV_SM_CLOCK{{{SEL}}} * 1000000) by (Hostname, UUID, gpu)", True,
          *HERTZ, low_open=True),
    Panel("GPU Utilization",
          f"max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{SEL}}}) by (Hostname, gpu, GPU_I_ID, "
          "GPU_I_PROFILE)", True, 0.0, 1.0),
    Panel("GPU Framebuffer Mem Used",
          f"max(DCGM_FI_DEV_FB_USED{{{SEL}}}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)", True,
          *MIB, low_open=True),
]
CURRENT_VARIABLES = {
    "Hostname": "label_values(DCGM_FI_DEV_FB_FREE, Hostname)",
    "gpu": 'label_values(DCGM_FI_DEV_FB_FREE{Hostname=~"$Hostname"}, gpu)',
}

# commit 1f7abdb7dc0f86f3cf7853995b0d262fd3e80bc6: variables instance and gpu.
OLD_SEL = 'instance=~"$instance", gpu=~"$gpu"'
EARLIER = [
    Panel("GPU Temperature", f"DCGM_FI_DEV_GPU_TEMP{{{OLD_SEL}}}", True, *CELSIUS,
          low_open=True),
    Panel("GPU Avg. Temp", f"avg(DCGM_FI_DEV_GPU_TEMP{{{OLD_SEL}}})", False, *CELSIUS,
          low_open=True),
    Panel("GPU Power Usage", f"DCGM_FI_DEV_POWER_USAGE{{{OLD_SEL}}}", True, *WATTS,
          low_open=True),
    Panel("GPU Power Total", f"sum(DCGM_FI_DEV_POWER_USAGE{{{OLD_SEL}}})", False, WATTS[0],
          WATTS[1] * len(GPUS), low_open=True, instant=True),
    Panel("GPU SM Clocks", f"DCGM_FI_DEV_SM_CLOCK{{{OLD_SEL}}} * 1000000", True, *HERTZ,
          low_open=True),
    Panel("GPU Utilization", f"DCGM_FI_DEV_GPU_UTIL{{{OLD_SEL}}}", True, 0.0, 100.0),
    Panel("GPU Framebuffer Mem Used", f"DCGM_FI_DEV_FB_USED{{{OLD_SEL}}}", True, *MIB,
          low_open=True),
]
EARLIER_VARIABLES = {
    "instance": "label_values(DCGM_FI_DEV_GPU_TEMP, instance)",
    "gpu": "label_values(DCGM_FI_DEV_GPU_TEMP, gpu)",
}

# The panel both versions have that trainsim leaves empty.
TENSOR_CORES = {
    "current": f"max(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{SEL}}}) by (Hostname, gpu, GPU_I_ID, "
               "GPU_I_PROFILE)",
    "earlier": f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{OLD_SEL}}}",
}
VERSIONS = {"current": (CURRENT, CURRENT_VARIABLES), "earlier": (EARLIER, EARLIER_VARIABLES)}

VARIABLE_REF = re.compile(r"\$(\w+)")
LABEL_VALUES = re.compile(r"label_values\((?P<match>.+),\s*(?P<label>\w+)\)")


@dataclass(frozen=True)
class Stack:
    prometheus: stack.PrometheusProcess
    instance: str  # the daemon's address: the `instance` label Prometheus gives its series
    at: float  # evaluation time (unix seconds)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The daemon with one 8-GPU run, scraped every second until each GPU is seen SCRAPES
    times."""
    need_binary("prometheus")
    workdir = tmp_path_factory.mktemp("dcgm-compat")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    daemon = stack.start_daemon(workdir, config=config, speed=SPEED)
    try:
        scrape = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s",
                       "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [{"job_name": "trainsim",
                                "static_configs": [{"targets": [daemon.address]}]}],
        }
        with stack.start_prometheus(workdir / "prometheus", yaml.safe_dump(scrape)) as prom:
            seen = (f"count(count_over_time(DCGM_FI_DEV_GPU_UTIL[1m]) >= {SCRAPES}) "
                    f"== {len(GPUS)}")
            wait_for(lambda: prom.query(seen), timeout=60,
                     what=f"{SCRAPES} scrapes of the {len(GPUS)} GPUs")
            yield Stack(prom, daemon.address, time.time() - SETTLE_SECONDS)
    finally:
        daemon.close()


def _regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable's value for a Prometheus regex matcher
    (its prometheusSpecialRegexEscape): two backslashes before each regex metacharacter, one
    for the regex and one for PromQL's string (``127.0.0.1`` becomes ``127\\\\.0...``)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"([$^*+?.()|{}\[\]'])", r"\\\\\1", value)


def _label_values(live: Stack, query: str, variables: dict[str, str]) -> list[str]:
    """A `label_values(match, label)` variable query, as Grafana runs it against Prometheus'
    label values API."""
    m = LABEL_VALUES.fullmatch(_substitute(query, variables))
    assert m, query
    return sorted(live.prometheus.api(
        f"label/{m['label']}/values", **{"match[]": m["match"],
                                         "start": f"{live.at - 60:.3f}",
                                         "end": f"{live.at:.3f}"}))


def _substitute(expr: str, variables: dict[str, str]) -> str:
    return VARIABLE_REF.sub(lambda m: variables[m[1]], expr)


def _all_selected(live: Stack, queries: dict[str, str]) -> dict[str, str]:
    """Each variable on "All", in the dashboard's order (gpu depends on Hostname): Grafana
    interpolates a multi-value variable as the alternation of its escaped values."""
    values: dict[str, str] = {}
    for name, query in queries.items():
        options = _label_values(live, query, values)
        assert options, f"variable {name}: {query} lists nothing"
        values[name] = "(" + "|".join(_regex_escape(v) for v in options) + ")"
    return values


def _selections(live: Stack, version: str) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Variable values to try, and the GPUs each should show."""
    queries = VERSIONS[version][1]
    everything = _all_selected(live, queries)
    return {"All": (everything, GPUS), ".*": (dict.fromkeys(queries, ".*"), GPUS),
            "gpu 3": ({**everything, "gpu": "3"}, ["3"])}


def _run(live: Stack, expr: str, instant: bool) -> list[dict[str, Any]]:
    """The series the panel draws: an instant query, or a range query over the last scrapes
    (Grafana's time series panels), each series with its values."""
    if instant:
        data = live.prometheus.api("query", query=expr, time=f"{live.at:.3f}")
        return [{"metric": s["metric"], "values": [s["value"]]} for s in data["result"]]
    data = live.prometheus.api("query_range", query=expr,
                               start=f"{live.at - (SCRAPES - 1) * SCRAPE_SECONDS:.3f}",
                               end=f"{live.at:.3f}", step=f"{SCRAPE_SECONDS}s")
    return [s for s in data["result"] if s["values"]]


CASES = [pytest.param(version, panel, id=f"{version}: {panel.title}")
         for version, (panels, _) in VERSIONS.items() for panel in panels]


@pytest.mark.realstack
@pytest.mark.parametrize(("version", "panel"), CASES)
@pytest.mark.parametrize("selection", ["All", ".*", "gpu 3"])
def test_panel_shows_each_simulated_gpu(live: Stack, version: str, panel: Panel,
                                        selection: str) -> None:
    variables, gpus = _selections(live, version)[selection]
    expr = _substitute(panel.expr, variables)
    series = _run(live, expr, panel.instant)
    if panel.per_gpu:
        assert sorted(s["metric"].get("gpu", "") for s in series) == gpus, expr
        assert {s["metric"].get("Hostname") for s in series} == {HOST}, expr
    else:
        assert len(series) == 1, (expr, series)
    for s in series:
        values = [float(v) for _, v in s["values"]]
        assert values and all(panel.accepts(v) for v in values), (expr, s["metric"], values)


@pytest.mark.realstack
@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_variables_list_the_simulated_gpus_and_their_host(live: Stack, version: str) -> None:
    queries = VERSIONS[version][1]
    listed = {name: _label_values(live, query, {"Hostname": ".*"})
              for name, query in queries.items()}
    expected = {"Hostname": [HOST], "instance": [live.instance], "gpu": GPUS}
    assert listed == {name: expected[name] for name in queries}


@pytest.mark.realstack
def test_gpus_carry_dcgm_exporters_identifying_labels(live: Stack) -> None:
    """The labels dcgm-exporter puts on every GPU series, which dashboards use in legends and
    selectors: modelName, UUID (one per GPU), device (nvidia<rank on its host>)."""
    assert _label_values(live, "label_values(DCGM_FI_DEV_GPU_TEMP, modelName)", {}) == [MODEL]
    series = live.prometheus.api("query", query="DCGM_FI_DEV_GPU_TEMP",
                                 time=f"{live.at:.3f}")["result"]
    labels = sorted((s["metric"]["gpu"], s["metric"]["device"], s["metric"]["UUID"])
                    for s in series)
    assert [(g, d) for g, d, _ in labels] == [(g, f"nvidia{g}") for g in GPUS]
    uuids = [u for _, _, u in labels]
    assert len(set(uuids)) == len(GPUS)
    assert all(re.fullmatch(r"GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", u) for u in uuids)


@pytest.mark.realstack
@pytest.mark.parametrize("version", sorted(TENSOR_CORES))
def test_the_tensor_core_panel_stays_empty(live: Stack, version: str) -> None:
    """DCGM_FI_PROF_PIPE_TENSOR_ACTIVE is not among the fields trainsim simulates
    (docs/metrics.md): the dashboards' "Tensor Core Utilization" panel reads "No data". If
    trainsim comes to export it, move the panel into CURRENT and EARLIER."""
    variables = dict.fromkeys(VERSIONS[version][1], ".*")
    assert _run(live, _substitute(TENSOR_CORES[version], variables), instant=False) == []


def test_the_queries_use_only_their_versions_variables() -> None:
    for panels, variables in VERSIONS.values():
        for panel in panels:
            assert set(VARIABLE_REF.findall(panel.expr)) <= set(variables), panel.expr
