"""The Grafana dashboards: generated from code, lint as tests, every query run against a real
Prometheus.

dashboards/generate.py writes the JSON with Grafana's foundation SDK; the committed files must be
what it writes. The lint follows grafana/dashboard-linter's rules (template-datasource,
panel-datasource, panel-units, panel-title-description, target-rate-interval) and adds the
project's own: pinned uids, defined variables, a valid JSON model, log-scale losses, units and
axis labels that name the quantity, a default range that holds a whole loop of the default
config.

The live tests start the daemon on the embedded default config plus one run on 8 GPUs (a
`hardware:` block, for the run dashboard's Hardware row) and Debian's Prometheus (with the
shipped alert rules) on loopback, then run every panel, annotation and variable query of every
dashboard with Grafana's variables substituted. A query Prometheus rejects, or one that returns
nothing, fails. Missing binaries fail the tests; they never skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator import resources
from simulator.config import load_default
from simulator.drills import profile, stack
from simulator.durations import parse_prometheus

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "dashboards"
GENERATOR = DASHBOARDS / "generate.py"
RULES = REPO / "configs" / "prometheus" / "rules"
SHIPPED_PROMETHEUS_CONFIG = REPO / "configs" / "prometheus" / "prometheus.yml"

# Pinned: links, bookmarks and the Grafana home dashboard depend on these never changing.
EXPECTED_UIDS = {
    "trainsim-fleet.json": "trainsim-fleet",
    "trainsim-run.json": "trainsim-run",
    "trainsim-lr-comparison.json": "trainsim-lr-comparison",
}
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
RUN_VARIABLE_QUERY = "label_values(trainsim_run_info, run)"
DEFAULT_RUNS = ("lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1")
DIVERGING_RUN = "lr-1.1"
# The live tests add this run to the default config: lr 0.2's descent on a job of 8 GPUs.
HARDWARE_RUN = "hw-8gpu"
HARDWARE_GPUS = 8
LIVE_RUNS = (*DEFAULT_RUNS, HARDWARE_RUN)
# The run dashboard's row of hardware panels, folded: only runs with a hardware block have them.
HARDWARE_ROW = "Hardware"
# What the Hardware row reads: the families of runs with a `hardware:` block (docs/metrics.md).
HARDWARE_METRICS = ("trainsim_step_duration_seconds_bucket", "trainsim_samples_total",
                    "trainsim_throughput_samples_per_second",
                    "trainsim_model_flops_utilization_ratio", "DCGM_FI_DEV_GPU_UTIL",
                    "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_SM_CLOCK",
                    "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_XID_ERRORS")
MIN_SCHEMA_VERSION = 39  # Grafana 10.4 .. 11.x

# Panel types the JSON may use, and those that dashboard-linter's panel-units rule checks.
PANEL_TYPES = {"stat", "timeseries", "table", "state-timeline", "gauge", "bargauge", "row", "text"}
UNIT_PANEL_TYPES = {"stat", "singlestat", "graph", "table", "timeseries", "gauge", "bargauge",
                    "state-timeline"}
# Unit ids from Grafana's value-format categories that dashboards here may use.
VALID_UNITS = {
    "none", "short", "string", "percent", "percentunit", "sci", "locale",
    "s", "ms", "µs", "ns", "m", "h", "d", "dtdurations", "dtdurationms",
    "dateTimeAsIso", "dateTimeAsSystem", "dateTimeFromNow",
    "hertz", "ops", "reqps", "rps", "wps", "iops", "cps", "eps", "mps", "recps", "rowsps",
    "opm",
    "bytes", "decbytes", "mbytes", "bits", "Bps", "binBps", "bps",
    "watt", "celsius",
    # Grafana's custom units: `count:<unit>` scales like ops (1.2K samples/s), `si:<prefix><unit>`
    # reads the value in that prefix and rescales it (1980 MHz prints 1.98 GHz).
    "count:samples/s", "si:MHz",
}

VARIABLE_REF = re.compile(
    r"\$\{(?P<braced>[A-Za-z_]\w*)(?:[:.][^}]*)?\}"
    r"|\[\[(?P<bracketed>[A-Za-z_]\w*)(?::[^\]]*)?\]\]"
    r"|\$(?P<plain>[A-Za-z_]\w*)"
)
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
RANGE_SELECTOR = re.compile(r"\[([^\]]*)\](\s*@\s*end\(\))?")
# Quantities that span decades: scientific notation with a set number of decimals (Grafana's
# "sci" prints every digit otherwise), and a log axis where plotted over time.
DECADE_METRICS = ("trainsim_loss", "trainsim_excess_loss", "trainsim_gradient_norm",
                  "trainsim_update_norm")


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return data


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _rows(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's rows by title."""
    return {p["title"]: p for p in dash.get("panels", []) if p["type"] == "row"}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    if isinstance(query, dict):
        return str(query.get("query", ""))
    return str(query or "")


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard, where it lives and how Grafana runs it."""

    dashboard: str
    where: str
    expr: str
    instant: bool
    row: str = ""  # the title of the collapsed row holding the panel

    @property
    def hardware(self) -> bool:
        """Whether the query is one of the Hardware row's (only hardware runs have data)."""
        return self.row == HARDWARE_ROW

    @property
    def id(self) -> str:
        return f"{self.dashboard}:{self.where}"


def _queries(dash: dict[str, Any]) -> Iterator[Query]:
    uid = dash["uid"]
    row_of = {p["id"]: row["title"] for row in _rows(dash).values() for p in row["panels"]}
    for panel in _panels(dash):
        for t in panel.get("targets", []):
            yield Query(uid, f"panel {panel['id']} {panel['title']}/{t['refId']}", t["expr"],
                        bool(t.get("instant")) and not t.get("range", False),
                        row_of.get(panel["id"], ""))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            yield Query(uid, f"annotation {ann['name']}", ann["expr"], instant=False)


ALL_DASHBOARDS = {name: _load(name) for name in sorted(EXPECTED_UIDS)}
ALL_QUERIES = [q for d in ALL_DASHBOARDS.values() for q in _queries(d)]
dashboard_files = pytest.mark.parametrize("name", sorted(EXPECTED_UIDS))


# ----------------------------------------------------------------------------- JSON model


def test_the_committed_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(EXPECTED_UIDS), "the generator writes exactly the pinned dashboards"
    stale = [name for name in written
             if (tmp_path / name).read_bytes() != (DASHBOARDS / name).read_bytes()]
    assert not stale, (f"{stale} differ from what dashboards/generate.py writes: edit the "
                       "generator, never the JSON, and run `make docs`")


def test_every_dashboard_file_has_a_pinned_uid() -> None:
    on_disk = {p.name for p in DASHBOARDS.glob("*.json")}
    assert on_disk == set(EXPECTED_UIDS), "pin the uid of every new dashboard in EXPECTED_UIDS"


@dashboard_files
def test_uid_is_the_pinned_one(name: str) -> None:
    assert ALL_DASHBOARDS[name]["uid"] == EXPECTED_UIDS[name]


def test_uids_are_unique_and_valid() -> None:
    uids = [d["uid"] for d in ALL_DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid


@dashboard_files
def test_file_is_canonical_indented_json(name: str) -> None:
    text = (DASHBOARDS / name).read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@dashboard_files
def test_dashboard_has_the_model_fields_grafana_needs(name: str) -> None:
    d = ALL_DASHBOARDS[name]
    assert d.get("id") is None, "provisioned dashboards carry no database id"
    assert isinstance(d.get("title"), str) and d["title"].startswith("Trainsim / ")
    assert isinstance(d.get("description"), str) and d["description"]
    assert "trainsim" in d.get("tags", [])
    assert isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert set(d.get("time", {})) == {"from", "to"}
    assert isinstance(d.get("templating", {}).get("list"), list)
    assert isinstance(d.get("annotations", {}).get("list"), list)
    assert d.get("panels"), "a dashboard without panels"


@dashboard_files
def test_panels_have_unique_ids_known_types_and_a_grid_position(name: str) -> None:
    ids = []
    for p in _panels(ALL_DASHBOARDS[name]):
        assert isinstance(p.get("id"), int), p.get("title")
        ids.append(p["id"])
        assert p.get("type") in PANEL_TYPES, (p.get("title"), p.get("type"))
        pos = p.get("gridPos", {})
        assert set(pos) == {"x", "y", "w", "h"}, p["title"]
        assert all(isinstance(v, int) for v in pos.values()), p["title"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        assert pos["y"] >= 0 and pos["h"] > 0, p["title"]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"


def _assert_no_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


@dashboard_files
def test_panels_do_not_overlap(name: str) -> None:
    """Nor do the panels of a collapsed row, placed below it, where Grafana opens them."""
    d = ALL_DASHBOARDS[name]
    _assert_no_overlap(d["panels"])
    for row in _rows(d).values():
        if row["collapsed"]:
            assert all(p["gridPos"]["y"] > row["gridPos"]["y"] for p in row["panels"]), \
                row["title"]
            _assert_no_overlap(row["panels"])
        else:
            assert row["panels"] == [], f"Grafana drops the panels of open row {row['title']!r}"


@dashboard_files
def test_targets_have_unique_ref_ids_and_an_expression(name: str) -> None:
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] in {"row", "text"}:
            continue
        targets = p.get("targets")
        assert targets, f"panel {p['title']!r} has no targets"
        refs = [t.get("refId") for t in targets]
        assert all(isinstance(r, str) and r for r in refs), p["title"]
        assert len(refs) == len(set(refs)), p["title"]
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), (p["title"], t["refId"])


# ------------------------------------------------------------------ dashboard-linter's rules


@dashboard_files
def test_template_datasource_rule(name: str) -> None:
    ds = [v for v in ALL_DASHBOARDS[name]["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds) == 1
    assert ds[0]["name"] == "datasource"
    assert ds[0]["query"] == "prometheus"
    assert ds[0]["label"] == "Data source"


@dashboard_files
def test_panel_datasource_rule(name: str) -> None:
    """Panels, targets, annotations and query variables all use the datasource variable."""
    d = ALL_DASHBOARDS[name]
    for p in _panels(d):
        if p["type"] in {"row", "text"}:
            continue
        assert p.get("datasource") == DATASOURCE_REF, p["title"]
        for t in p["targets"]:
            assert t.get("datasource") == DATASOURCE_REF, (p["title"], t["refId"])
    for ann in d["annotations"]["list"]:
        assert ann.get("datasource") == DATASOURCE_REF, ann["name"]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            assert var.get("datasource") == DATASOURCE_REF, var["name"]


@dashboard_files
def test_panel_units_rule(name: str) -> None:
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] not in UNIT_PANEL_TYPES:
            continue
        field_config = p.get("fieldConfig", {})
        unit = field_config.get("defaults", {}).get("unit")
        assert unit in VALID_UNITS, f"panel {p['title']!r}: unit {unit!r}"
        for override in field_config.get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in VALID_UNITS, (p["title"], prop["value"])


@dashboard_files
def test_panel_title_description_rule(name: str) -> None:
    """Rows have a title only: Grafana's row model has no description."""
    for p in _panels(ALL_DASHBOARDS[name]):
        assert isinstance(p.get("title"), str) and p["title"].strip(), p["id"]
        if p["type"] != "row":
            assert isinstance(p.get("description"), str) and p["description"].strip(), p["title"]


@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda q: q.id)
def test_target_rate_interval_rule(query: Query) -> None:
    """Every range selector (rate, increase, changes, ...) uses $__rate_interval; the one
    exception is a reduction over the dashboard's whole range, evaluated once at its end
    (`[$__range] @ end()`), which no scrape interval can make too short."""
    code = PROMQL_STRING.sub('""', query.expr)
    for selector, at_end in RANGE_SELECTOR.findall(code):
        if selector == "$__range" and at_end:
            continue
        assert selector == "$__rate_interval", f"[{selector}] in {query.expr!r}"


# -------------------------------------------------------------------------- project rules

EXCESS_LOSS_PANEL = "Excess loss J(w) - J* by run"
PARAMETER_PANEL = "Parameter w by run"


@dashboard_files
def test_every_referenced_variable_is_defined(name: str) -> None:
    d = ALL_DASHBOARDS[name]
    defined = {v["name"] for v in d["templating"]["list"]}
    for s in _strings(d):
        for m in VARIABLE_REF.finditer(s):
            var = m.group("braced") or m.group("bracketed") or m.group("plain")
            if var.startswith("__"):  # Grafana's built-ins: $__rate_interval, ${__value.raw}
                continue
            assert var in defined, f"${var} used in {s!r} but not defined"


@dashboard_files
def test_run_variable_comes_from_label_values(name: str) -> None:
    variables = {v["name"]: v for v in ALL_DASHBOARDS[name]["templating"]["list"]}
    run = variables["run"]
    assert run["type"] == "query"
    assert _variable_query(run) == RUN_VARIABLE_QUERY
    assert run.get("definition") == RUN_VARIABLE_QUERY


def test_run_detail_dashboard_shows_one_run_at_a_time() -> None:
    variables = {v["name"]: v for v in ALL_DASHBOARDS["trainsim-run.json"]["templating"]["list"]}
    assert not variables["run"]["multi"] and not variables["run"]["includeAll"]
    for q in _queries(ALL_DASHBOARDS["trainsim-run.json"]):
        if any(name in q.expr for name in ("trainsim_", "ALERTS", "DCGM_")):
            assert 'run="$run"' in q.expr, q.id


def test_hardware_panels_sit_in_a_folded_row_of_the_run_dashboard() -> None:
    """Every hardware family has a panel in the run dashboard's Hardware row, folded (the
    default config has no hardware: open, its panels would read "No data"), and no other panel
    of any dashboard reads them."""
    row = _rows(ALL_DASHBOARDS["trainsim-run.json"]).get(HARDWARE_ROW)
    assert row is not None and row["collapsed"], "the run dashboard's folded Hardware row"
    for metric in HARDWARE_METRICS:
        assert any(_plots(p, metric) for p in row["panels"]), metric
    for q in ALL_QUERIES:
        if not q.hardware:
            assert not re.search(r"DCGM_|trainsim_(step_duration|samples|tokens|throughput|"
                                 r"model_flops)", q.expr), q.id


def test_hardware_panels_read_in_the_units_of_their_quantity() -> None:
    row = _rows(ALL_DASHBOARDS["trainsim-run.json"])[HARDWARE_ROW]
    units = {p["title"]: p["fieldConfig"]["defaults"] for p in row["panels"]}
    expected = {"Step duration": "s", "Throughput": "count:samples/s",
                "Model FLOPs utilisation (MFU)": "percentunit", "GPU utilisation": "percent",
                "GPU power": "watt", "GPU temperature": "celsius", "SM clock": "si:MHz",
                "Framebuffer used": "mbytes", "XID errors": "none"}
    assert {title: d["unit"] for title, d in units.items()} == expected
    # Bounded ratios on a fixed scale: 0..100 % for utilisation, 0..1 for MFU.
    assert (units["GPU utilisation"]["min"], units["GPU utilisation"]["max"]) == (0, 100)
    assert (units["Model FLOPs utilisation (MFU)"]["min"],
            units["Model FLOPs utilisation (MFU)"]["max"]) == (0, 1)


def test_step_duration_quantiles_come_from_the_histograms_buckets() -> None:
    row = _rows(ALL_DASHBOARDS["trainsim-run.json"])[HARDWARE_ROW]
    (panel,) = (p for p in row["panels"] if p["title"] == "Step duration")
    exprs = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    for legend, q in (("p50", "0.5"), ("p90", "0.9")):
        assert exprs[legend] == (
            f"histogram_quantile({q}, sum by (le) (rate("
            'trainsim_step_duration_seconds_bucket{run="$run"}[$__rate_interval])))')


def _plots(panel: dict[str, Any], metric: str) -> bool:
    return any(re.search(rf"\b{metric}\b", t["expr"]) for t in panel.get("targets", []))


@dashboard_files
def test_loss_and_norm_panels_use_a_log_scale(name: str) -> None:
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] == "timeseries" and any(_plots(p, m) for m in DECADE_METRICS):
            scale = p["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]
            assert scale == {"type": "log", "log": 10}, p["title"]


# uPlot, which draws Grafana's time series, cannot lay out the ticks of a log axis reaching
# 1e-23 or below (its tick loop runs until the array overflows); converging runs go lower, so
# every log axis needs a hard minimum (Grafana rounds it down to a power of 10) of 1e-22 or more.
UPLOT_LOWEST_LOG_AXIS = 1e-22


@dashboard_files
def test_log_axes_stop_above_what_uplot_can_lay_out(name: str) -> None:
    for p in _panels(ALL_DASHBOARDS[name]):
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        if defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log":
            assert defaults.get("min", 0) >= UPLOT_LOWEST_LOG_AXIS, p["title"]


@dashboard_files
def test_quantities_spanning_decades_read_in_scientific_notation(name: str) -> None:
    """Loss, excess loss, gradient and update norms: unit `sci` with a number of decimals, on
    the panel or on the table column that shows them."""
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] in {"timeseries", "stat"} and any(_plots(p, m) for m in DECADE_METRICS):
            defaults = p["fieldConfig"]["defaults"]
            assert defaults["unit"] == "sci" and defaults.get("decimals"), p["title"]
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] != "table":
            continue
        columns = {o["matcher"]["options"]: {q["id"]: q["value"] for q in o["properties"]}
                   for o in p["fieldConfig"]["overrides"] if o["matcher"]["id"] == "byName"}
        for column in ("Loss", "Excess loss", "Gradient norm"):
            if column in columns:
                assert columns[column]["unit"] == "sci", (p["title"], column)
                assert columns[column].get("decimals"), (p["title"], column)


@dashboard_files
def test_time_series_axes_name_their_quantity(name: str) -> None:
    for p in _panels(ALL_DASHBOARDS[name]):
        if p["type"] == "timeseries":
            assert p["fieldConfig"]["defaults"]["custom"].get("axisLabel"), p["title"]


@dashboard_files
def test_parameter_panels_use_a_linear_axis(name: str) -> None:
    """A symmetric log axis around 0 squeezes w's jumps across a minimum away from 0."""
    for p in _panels(ALL_DASHBOARDS[name]):
        if _plots(p, "trainsim_parameter"):
            scale = p["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]
            assert scale["type"] == "linear", p["title"]


@dashboard_files
def test_default_range_holds_a_whole_loop_of_the_default_config(name: str) -> None:
    """A range of at least two loops always contains one from restart to restart."""
    loops = {(r.steps + 1) * r.step_interval for r in load_default().runs if r.loop}
    d = ALL_DASHBOARDS[name]
    assert d["time"]["to"] == "now"
    m = re.fullmatch(r"now-(\w+)", d["time"]["from"])
    assert m, d["time"]
    assert parse_prometheus(m[1]) / 1000 >= 2 * max(loops), (d["time"], loops)


@dashboard_files
def test_dashboard_links_point_at_known_uids(name: str) -> None:
    uids = set(EXPECTED_UIDS.values())
    for s in _strings(ALL_DASHBOARDS[name]):
        for uid in re.findall(r"/d/([^/?]+)", s):
            assert uid in uids, s


@dashboard_files
def test_dashboard_has_alert_and_fault_annotations(name: str) -> None:
    exprs = [a["expr"] for a in ALL_DASHBOARDS[name]["annotations"]["list"]]
    assert any("ALERTS{" in e and 'alertstate="firing"' in e for e in exprs)
    assert any("trainsim_alert_active" in e for e in exprs)
    assert any("trainsim_fault_active" in e and "== 1" in e for e in exprs)


def test_lr_comparison_has_one_excess_loss_and_one_parameter_panel() -> None:
    """Each with one main target and at most a DIVERGING overlay, so that a reader of the JSON
    (tests/test_demo.py) finds them by their metric."""
    panels = list(_panels(ALL_DASHBOARDS["trainsim-lr-comparison.json"]))
    for metric, title in (("trainsim_excess_loss", EXCESS_LOSS_PANEL),
                          ("trainsim_parameter", PARAMETER_PANEL)):
        (panel,) = (p for p in panels if _plots(p, metric))
        assert panel["title"] == title
        main = [t for t in panel["targets"] if "DIVERGING" not in t["legendFormat"]]
        assert len(main) == 1 and _plots({"targets": main}, metric), title
    (excess,) = (p for p in panels if _plots(p, "trainsim_excess_loss"))
    assert excess["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]["type"] == "log"


def test_lr_comparison_marks_diverging_runs_by_detector_not_by_name() -> None:
    d = ALL_DASHBOARDS["trainsim-lr-comparison.json"]
    titles = {p["title"]: p for p in _panels(d)}
    for title in (EXCESS_LOSS_PANEL, "Loss J(w) by run", "Gradient norm by run",
                  PARAMETER_PANEL):
        exprs = [t["expr"] for t in titles[title]["targets"]]
        assert any('alert="divergence"}' in e for e in exprs), title
    for s in _strings(d):
        for run in LIVE_RUNS:
            assert run not in s, f"run name {run!r} hard-coded in {s!r}"


# -------------------------------------------------------------- live: a real Prometheus

# Simulated seconds per wall second: the default config's one-hour loop takes 7.5 s, so the
# first restart comes 7.5 s after the daemon starts; a scrape sees 16 steps of 30 s.
SPEED = 480.0
SCRAPE_SECONDS = 1
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval for a 1 s scrape: 4 scrape intervals
READY_TIMEOUT_SECONDS = 90.0
# Queries at the evaluation time must see samples ingested up to then: stay a scrape behind.
SETTLE_SECONDS = 1.5


@dataclass(frozen=True)
class Stack:
    """Prometheus after it scraped the daemon through a restart and a firing alert."""

    prometheus: stack.PrometheusProcess
    start: float  # first instant of the range queries (unix seconds)
    at: float  # evaluation time: instant queries and the end of range queries

    def api(self, path: str, **params: str) -> Any:
        return self.prometheus.api(path, **params)


def _trainsim_job_name() -> str:
    """The job name the shipped config gives the daemon (rules may select on it)."""
    if SHIPPED_PROMETHEUS_CONFIG.exists():
        cfg = yaml.safe_load(SHIPPED_PROMETHEUS_CONFIG.read_text()) or {}
        for sc in cfg.get("scrape_configs", []):
            targets = [t for s in sc.get("static_configs", []) for t in s.get("targets", [])]
            if any(t.split(":")[0] == "trainsim" for t in targets):
                return str(sc["job_name"])
    return "trainsim"


def _rule_files(workdir: Path) -> list[Path]:
    """The shipped rules in the fast profile the daemon's --speed calls for.

    When and whether each alert fires is for the rule tests; here the rules only have to
    produce the recorded series and the ALERTS the dashboards read, within the test's time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    shipped = sorted(RULES.glob("*.yml"))
    if not shipped:
        pytest.fail(f"no rule files in {RULES.relative_to(REPO)}: the dashboards' ALERTS "
                    "queries need the shipped Trainsim* rules", pytrace=False)
    out = []
    for path in shipped:
        target = workdir / path.name
        target.write_text(profile.fast_profile(
            path.read_text(), SPEED, scrape_interval=f"{SCRAPE_SECONDS}s"))
        out.append(target)
    return out


def _has(prom: stack.PrometheusProcess, expr: str, at: float) -> bool:
    return bool(prom.api("query", query=expr, time=f"{at:.3f}")["result"])


def _live_config(workdir: Path) -> Path:
    """The embedded default config plus HARDWARE_RUN: lr 0.2 on a job of 8 GPUs."""
    config = yaml.safe_load(resources.read_text("default.yaml"))
    config["runs"].append({"name": HARDWARE_RUN, "optimizer": {"kind": "sgd",
                                                               "learning_rate": 0.2},
                           "hardware": {"gpus": HARDWARE_GPUS}})
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The daemon on the default config plus a hardware run, scraped every second by
    Prometheus with the rules."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not on PATH: install Debian's prometheus package "
                    "(`make test-deps`)", pytrace=False)
    workdir = tmp_path_factory.mktemp("dashboards-live")
    rule_files = _rule_files(workdir / "rules-src")
    daemon = stack.start_daemon(workdir, config=_live_config(workdir), speed=SPEED)
    try:
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s",
                       "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "rule_files": ["rules/*.yml"],
            "scrape_configs": [{"job_name": _trainsim_job_name(),
                                "static_configs": [{"targets": [daemon.address]}]}],
        }
        start = time.time()
        prom = stack.start_prometheus(workdir / "prometheus", yaml.safe_dump(config),
                                      rule_files=rule_files)
        try:
            # Wait until the default config has told its whole story once: every run scraped,
            # a restart (loop), and the diverging run both detected and alerting; and the
            # hardware run's GPUs are scraped and its steps counted.
            ready = " and ".join((
                f"count(trainsim_run_info) == {len(LIVE_RUNS)}",
                f'count(DCGM_FI_DEV_GPU_UTIL{{run="{HARDWARE_RUN}"}}) == {HARDWARE_GPUS}',
                f'max(trainsim_step_duration_seconds_count{{run="{HARDWARE_RUN}"}}) > 0',
                "max(trainsim_run_restarts_total) > 0",
                f'count(trainsim_alert_active{{run="{DIVERGING_RUN}", alert="divergence"}} == 1)',
                f'count(ALERTS{{alertname=~"Trainsim.+", alertstate="firing", '
                f'run="{DIVERGING_RUN}"}})',
            ))
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while True:
                at = time.time() - SETTLE_SECONDS
                if at - start > 2 * int(RATE_INTERVAL[:-1]) and _has(prom, ready, at):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"Prometheus never saw {ready!r} within "
                                f"{READY_TIMEOUT_SECONDS:.0f}s\n"
                                f"daemon:\n{daemon.output()[-3000:]}\n"
                                f"prometheus:\n{prom.output()[-3000:]}", pytrace=False)
                time.sleep(0.25)
            yield Stack(prom, start, at)
        finally:
            prom.close()
    finally:
        daemon.close()


def _substitute(expr: str, values: dict[str, str], live: Stack) -> str:
    """Grafana's interpolation: user variables as given, built-ins for a 1 s scrape."""
    range_s = int(live.at - live.start)
    builtins = {
        "__rate_interval": RATE_INTERVAL,
        "__interval": f"{SCRAPE_SECONDS}s",
        "__interval_ms": str(SCRAPE_SECONDS * 1000),
        "__range": f"{range_s}s",
        "__range_s": str(range_s),
        "__range_ms": str(range_s * 1000),
    }

    def repl(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("bracketed") or m.group("plain")
        if name in builtins:
            return builtins[name]
        return values[name]

    return VARIABLE_REF.sub(repl, expr)


def _variable_values(dashboard: str, run: str) -> dict[str, str]:
    """A run as Grafana interpolates it: a multi-value variable's "All" is its allValue."""
    dash = next(d for d in ALL_DASHBOARDS.values() if d["uid"] == dashboard)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    run_var = variables["run"]
    return {
        "datasource": "trainsim-prometheus",
        "run": run_var["allValue"] if run_var.get("includeAll") else run,
    }


def _run(live: Stack, expr: str, instant: bool) -> list[dict[str, Any]]:
    if instant:
        data = live.api("query", query=expr, time=f"{live.at:.3f}")
        if data["resultType"] in {"scalar", "string"}:
            return [{"value": data["result"]}]
        return list(data["result"])
    step = SCRAPE_SECONDS
    steps = int((live.at - live.start) // step)
    data = live.api("query_range", query=expr, start=f"{live.at - steps * step:.3f}",
                    end=f"{live.at:.3f}", step=f"{step}s")
    return [s for s in data["result"] if s.get("values")]


@pytest.mark.realstack
@pytest.mark.parametrize("query", ALL_QUERIES, ids=lambda q: q.id)
def test_query_returns_data_on_the_default_config(live: Stack, query: Query) -> None:
    """Every panel and annotation query, for the diverging run (the one that lights up all);
    the Hardware row's for the hardware run."""
    run = HARDWARE_RUN if query.hardware else DIVERGING_RUN
    expr = _substitute(query.expr, _variable_values(query.dashboard, run), live)
    result = _run(live, expr, query.instant)
    assert result, f"no data for {expr!r}"


@pytest.mark.realstack
@pytest.mark.parametrize("run", [r for r in LIVE_RUNS if r != DIVERGING_RUN])
def test_run_detail_queries_are_accepted_for_every_run(live: Stack, run: str) -> None:
    """Healthy runs legitimately have no alerts, runs without hardware no Hardware row; their
    queries must still parse and run."""
    empty = []
    for query in _queries(ALL_DASHBOARDS["trainsim-run.json"]):
        expr = _substitute(query.expr, _variable_values(query.dashboard, run), live)
        if not _run(live, expr, query.instant):
            empty.append(query)
    # Without an alert, only the alert annotations may come back empty; without hardware,
    # the Hardware row's queries too.
    allowed = {"annotation Alerts firing", "annotation Detector alerts"}
    unexpected = [q.where for q in empty
                  if q.where not in allowed and not (q.hardware and run != HARDWARE_RUN)]
    assert not unexpected, unexpected


@pytest.mark.realstack
def test_step_duration_panel_reads_the_step_interval(live: Stack) -> None:
    """The hardware run steps every 30 s (simulated): the mean reads 30 s (within a second: a
    window holding a restart holds its first step, whose duration differs), the quantiles
    interpolate within the histogram's (25 s, 60 s] bucket (dashboards/README.md)."""
    row = _rows(ALL_DASHBOARDS["trainsim-run.json"])[HARDWARE_ROW]
    (panel,) = (p for p in row["panels"] if p["title"] == "Step duration")
    read = {}
    for t in panel["targets"]:
        expr = _substitute(t["expr"], _variable_values("trainsim-run", HARDWARE_RUN), live)
        (series,) = _run(live, expr, instant=True)
        read[t["legendFormat"]] = float(series["value"][1])
    assert (read["p50"], read["p90"]) == (pytest.approx(42.5), pytest.approx(56.5)), read
    assert read["mean"] == pytest.approx(30.0, abs=1.0), read


# The Hardware row's panels that draw one series per GPU.
PER_GPU_PANELS = ("GPU utilisation", "GPU power", "GPU temperature", "SM clock",
                  "Framebuffer used", "XID errors")


@pytest.mark.realstack
@pytest.mark.parametrize("title", PER_GPU_PANELS)
def test_hardware_row_draws_each_gpu_of_the_run_once(live: Stack, title: str) -> None:
    row = _rows(ALL_DASHBOARDS["trainsim-run.json"])[HARDWARE_ROW]
    (panel,) = (p for p in row["panels"] if p["title"] == title)
    (target,) = panel["targets"]
    expr = _substitute(target["expr"], _variable_values("trainsim-run", HARDWARE_RUN), live)
    series = _run(live, expr, bool(target.get("instant")))
    gpus = sorted(s["metric"]["gpu"] for s in series)
    assert gpus == sorted(str(i) for i in range(HARDWARE_GPUS)), (title, gpus)
    assert {s["metric"]["run"] for s in series} == {HARDWARE_RUN}, title


@pytest.mark.realstack
@dashboard_files
def test_run_variable_lists_the_runs(live: Stack, name: str) -> None:
    variables = {v["name"]: v for v in ALL_DASHBOARDS[name]["templating"]["list"]}
    m = re.fullmatch(r"label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)",
                     _variable_query(variables["run"]))
    assert m, _variable_query(variables["run"])
    values = live.api(f"label/{m['label']}/values", **{
        "match[]": m["metric"], "start": f"{live.start:.3f}", "end": f"{live.at:.3f}"})
    assert set(LIVE_RUNS) <= set(values)


def _lr_comparison_runs(live: Stack, title: str) -> dict[str, set[str]]:
    """The runs each target of an lr-comparison panel draws, by refId."""
    panel = next(p for p in _panels(ALL_DASHBOARDS["trainsim-lr-comparison.json"])
                 if p["title"] == title)
    values = _variable_values("trainsim-lr-comparison", "")
    return {t["refId"]: {s["metric"]["run"] for s in
                         _run(live, _substitute(t["expr"], values, live), instant=False)}
            for t in panel["targets"]}


@pytest.mark.realstack
def test_lr_comparison_marks_only_the_diverging_run(live: Stack) -> None:
    drawn = _lr_comparison_runs(live, EXCESS_LOSS_PANEL)
    assert drawn == {"A": set(LIVE_RUNS), "B": {DIVERGING_RUN}}


@pytest.mark.realstack
def test_lr_comparison_draws_the_diverged_run_against_the_parameter_panels_right_axis(
        live: Stack) -> None:
    """Its w (23.7 on the default config) stays off the axis the oscillating run's jumps
    between 0.6 and 5.5 are read on."""
    drawn = _lr_comparison_runs(live, PARAMETER_PANEL)
    assert drawn == {"A": set(LIVE_RUNS) - {DIVERGING_RUN}, "B": {DIVERGING_RUN}}
    panel = next(p for p in _panels(ALL_DASHBOARDS["trainsim-lr-comparison.json"])
                 if p["title"] == PARAMETER_PANEL)
    (right,) = (o for o in panel["fieldConfig"]["overrides"]
                if o["matcher"] == {"id": "byFrameRefID", "options": "B"})
    assert {"id": "custom.axisPlacement", "value": "right"} in right["properties"]
