"""Writes the three Grafana dashboards of this directory with Grafana's foundation SDK.

    python dashboards/generate.py [OUTDIR]   # default: this directory

The JSON files are generated, never edited by hand: change this script and run it again (`make
docs` does). It needs `grafana-foundation-sdk`, pinned in the `test` extra to the build for
Grafana 11.2 (the compose stack runs grafana/grafana:11.2.2). The few parts of the JSON model the
SDK has no field for are kept as plain data here, each where it is used (see dashboards/README.md,
"Generated from code"). `tests/test_dashboards.py` regenerates the files and compares them with
the committed ones.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN_QUERY = "label_values(trainsim_run_info, run)"
# The default config loops every hour. Two hours is the shortest range that always holds one
# whole loop, restart to restart, and so the one that gives each step the most pixels.
TIME_RANGE = ("now-2h", "now")
REFRESH = "15s"  # the shipped scrape interval: nothing new arrives faster
STATES = ("running", "converged", "stalled", "diverged", "finished")
STATE_COLORS = ("blue", "green", "yellow", "red", "purple")
DIVERGING = 'alert="divergence"'
RUN_LINK = ("/d/trainsim-run/trainsim-run-detail?var-run=${__value.raw}"
            "&${datasource:queryparam}&${__url_time_range}")
# Values that span decades (losses, gradient and update norms) read in scientific notation;
# Grafana's "sci" prints every digit unless told how many decimals to keep.
SCI = "sci"
SCI_DECIMALS_GRAPH = 2
SCI_DECIMALS_VALUE = 3
# Steps per minute: "8 ops/min" reads where Grafana's hertz would print "133 mHz".
STEP_RATE_UNIT = "opm"
# The bottom of every log axis. uPlot, which draws Grafana's time series, cannot lay out the
# ticks of a log axis that reaches 1e-23 or below (its tick loop runs until the array
# overflows), and converging runs go far lower (the seed's lr 0.7 reaches 1e-94): a line that
# leaves through the bottom is below 1e-20.
LOG_AXIS_MIN = 1e-20
# Samples a second, scaled like ops ("8.53 samples/s", "1.2K samples/s"): Grafana's custom
# `count:<unit>`, as no built-in unit counts samples.
THROUGHPUT_UNIT = "count:samples/s"
# dcgm-exporter reports clocks in MHz; Grafana's custom `si:MHz` reads them as such and scales
# ("1.98 GHz").
CLOCK_UNIT = "si:MHz"
# One series per GPU; `gpu` is the rank, unique within the run, `Hostname` its host.
GPU_LEGEND = "GPU {{gpu}} ({{Hostname}})"
RATE_WINDOW_NOTE = ("The rate is taken over Grafana's rate interval (60 s at a 15 s scrape), "
                    "which holds one or two steps of a run stepping every 30 s: the line "
                    "wavers around the true rate.")


@dataclass(frozen=True)
class Runs:
    """How a dashboard selects runs: `=~"$run"` (multi-valued) or `="$run"` (single run)."""

    matcher: str

    def __call__(self, metric: str, *labels: str) -> str:
        """``metric{run<matcher>, labels...}``."""
        return f"{metric}{{{', '.join((f'run{self.matcher}', *labels))}}}"


MULTI = Runs('=~"$run"')
SINGLE = Runs('="$run"')
# A panel and its place on the grid: (x, y, w, h).
Placed = tuple[Builder[dm.Panel], tuple[int, int, int, int]]


@dataclass(frozen=True)
class FoldedRow:
    """A row collapsed by default at line ``y`` of the grid, and the panels it holds (placed
    below it, where they appear when the row is opened). Grafana runs a collapsed row's
    queries only once it is opened."""

    title: str
    y: int
    panels: Sequence[Placed]


# ------------------------------------------------------------------------------ building blocks


def query(expr: str, legend: str, ref: str = "A", instant: bool = False,
          as_table: bool = False) -> prometheus.Dataquery:
    """A PromQL target on the dashboard's datasource, in code mode."""
    q = (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
         .datasource(DATASOURCE).editor_mode(pm.QueryEditorMode.CODE))
    q = q.instant() if instant else q.range()
    return q.format(pm.PromQueryFormat.TABLE) if as_table else q


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (the base colour)."""
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def value_mapping(*entries: tuple[str, str, str]) -> dm.ValueMap:
    """Value -> (text, colour) mapping, in the given order."""
    return dm.ValueMap(options={value: dm.ValueMappingResult(text=text, color=color, index=i)
                                for i, (value, text, color) in enumerate(entries)})


STATE_MAPPING = value_mapping(*((s, s, c) for s, c in zip(STATES, STATE_COLORS, strict=True)))
STATE_NUMBER_MAPPING = value_mapping(*((str(i), s, c) for i, (s, c) in
                                       enumerate(zip(STATES, STATE_COLORS, strict=True), 1)))
DETECTOR_MAPPING = value_mapping(("0", "ok", "green"), ("1", "DIVERGING", "red"))
XID_MAPPING = value_mapping(("0", "OK", "green"), ("79", "XID 79: fell off the bus", "red"))


def prop(id_val: str, value: object) -> dm.DynamicConfigValue:
    """One property of a field override."""
    return dm.DynamicConfigValue(id_val=id_val, value=value)


def fixed_color(color: str) -> dm.DynamicConfigValue:
    """The override property that draws a field in one colour."""
    return prop("color", {"mode": "fixed", "fixedColor": color})


def label_is(name: str, value: str) -> str:
    """A label matcher ``name="value"``."""
    return f'{name}="{value}"'


def state_number(runs: Runs) -> str:
    """A run's state as a number 1..5 (the order of STATES), for state timelines."""
    terms = "\n  or ".join(f"({runs('trainsim_run_state', label_is('state', s))} == 1) * {i}"
                           for i, s in enumerate(STATES, 1))
    return f"max by (run) (\n    {terms}\n)"


def faults_or_zero(expr: str, runs: Runs) -> str:
    """``expr`` with 0 for every run that has no fault series (the default config)."""
    return f"{expr}\nor on(run) (0 * group by (run) ({runs('trainsim_run_info')}))"


def diverging(expr: str, runs: Runs) -> str:
    """The series of ``expr`` of the runs whose divergence detector is active."""
    return f"{expr}\nand on(run) ({runs('trainsim_alert_active', DIVERGING)} == 1)"


# --------------------------------------------------------------------------------- panels


def graph(title: str, description: str, unit: str, *targets: prometheus.Dataquery,
          log: bool = False, label: str = "", decimals: float | None = None
          ) -> timeseries.Panel:
    """A time series panel with the dashboards' common look: lines, a table legend on the
    right with each series' last value, a shared tooltip sorted by value; ``label`` names the
    quantity on the y axis. A log axis stops at LOG_AXIS_MIN, and the description says so."""
    scale = cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LINEAR)
    if log:
        scale = cb.ScaleDistributionConfig().type(cm.ScaleDistribution.LOG).log(10)
        description += (f" The log axis stops at {LOG_AXIS_MIN:g}: a line that leaves through "
                        "its bottom is below that.")
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
         .targets(list(targets)).unit(unit)
         .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
         .thresholds(thresholds((None, "green")))
         .draw_style(cm.GraphDrawStyle.LINE).line_interpolation(cm.LineInterpolation.LINEAR)
         .line_width(1).fill_opacity(0).show_points(cm.VisibilityMode.NEVER).span_nulls(False)
         .axis_placement(cm.AxisPlacement.AUTO).axis_label(label).scale_distribution(scale)
         .stacking(cb.StackingConfig().mode(cm.StackingMode.NONE).group("A"))
         .thresholds_style(cb.GraphThresholdsStyleConfig()
                           .mode(cm.GraphThresholdsStyleMode.OFF))
         .legend(cb.VizLegendOptions().show_legend(True)
                 .display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.RIGHT).calcs(["lastNotNull"]))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                  .sort(cm.SortOrder.DESCENDING)))
    if log:
        p = p.min(LOG_AXIS_MIN)
    return p if decimals is None else p.decimals(decimals)


DASHED = prop("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})
DIVERGING_STYLE = [fixed_color("red"), prop("custom.lineWidth", 4), DASHED]


def with_diverging_overlay(panel: timeseries.Panel, expr: str, runs: Runs,
                           ref: str = "B") -> timeseries.Panel:
    """``panel`` with ``expr`` drawn again, for the runs whose divergence detector is active,
    as a thick dashed red line labelled DIVERGING."""
    return (panel.with_target(query(diverging(expr, runs), "{{run}} DIVERGING", ref))
            .override_by_query(ref, DIVERGING_STYLE))


def single_stat(title: str, description: str, expr: str, legend: str, unit: str = "none",
                decimals: float | None = None, text_mode: cm.BigValueTextMode =
                cm.BigValueTextMode.AUTO, color_mode: cm.BigValueColorMode =
                cm.BigValueColorMode.VALUE, steps: Sequence[tuple[float | None, str]] =
                ((None, "text"),)) -> stat.Panel:
    """A stat panel showing the last value of one instant query."""
    p = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
         .with_target(query(expr, legend, instant=True)).unit(unit).mappings([])
         .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
         .thresholds(thresholds(*steps))
         .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("")
                         .values(False))
         .color_mode(color_mode).graph_mode(cm.BigValueGraphMode.NONE).text_mode(text_mode)
         .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO)
         .show_percent_change(False).wide_layout(True))
    return p if decimals is None else p.decimals(decimals)


def colored_by_state(panel: Any) -> Any:
    """``panel`` with one fixed colour per state name (series named after the state)."""
    for state, color in zip(STATES, STATE_COLORS, strict=True):
        panel = panel.override_by_name(state, [fixed_color(color)])
    return panel


def timeline(title: str, description: str, *targets: prometheus.Dataquery,
             mapping: dm.ValueMap) -> statetimeline.Panel:
    """A state timeline: one row per series, coloured and labelled by ``mapping``."""
    return (statetimeline.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(list(targets)).unit("none").mappings([mapping])
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds((None, "text"))).line_width(0).fill_opacity(80)
            .show_value(cm.VisibilityMode.AUTO).merge_values(True)
            .align_value(cm.TimelineValueAlignment.LEFT).row_height(0.9)
            .legend(cb.VizLegendOptions().show_legend(False)
                    .display_mode(cm.LegendDisplayMode.LIST)
                    .placement(cm.LegendPlacement.BOTTOM))
            .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE)
                     .sort(cm.SortOrder.NONE)))


def run_table(title: str, description: str, targets: Sequence[prometheus.Dataquery],
              sort_by: str, filterable: bool = True) -> table.Panel:
    """A table of instant queries (one row per run or alert) merged on their labels."""
    return (table.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(list(targets)).unit("none").mappings([])
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
            .thresholds(thresholds((None, "text")))
            .align(cm.FieldTextAlignment.AUTO).cell_options(cm.TableAutoCellOptions())
            .filterable(filterable).show_header(True).cell_height(cm.TableCellHeight.SM)
            .footer(cb.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False))
            .sort_by([cb.TableSortByFieldState().display_name(sort_by).desc(False)])
            .override_by_name("run", [prop("links", [{"title": "Run detail for ${__value.raw}",
                                                      "url": RUN_LINK}])]))


def table_column(name: str, unit: str | None, decimals: float | None = None,
                 mapping: dm.ValueMap | None = None,
                 steps: Sequence[tuple[float | None, str]] = ()) -> tuple[
                     str, list[dm.DynamicConfigValue]]:
    """The override of one table column: unit, decimals, a mapping or threshold colours."""
    props = [] if unit is None else [prop("unit", unit)]
    if decimals is not None:
        props.append(prop("decimals", decimals))
    if mapping is not None:
        props += [prop("mappings", [mapping]),
                  prop("custom.cellOptions", {"type": "color-background"})]
    if steps:
        props += [prop("custom.cellOptions", {"type": "color-background"}),
                  prop("thresholds", {"mode": "absolute",
                                      "steps": [{"color": c, "value": v} for v, c in steps]})]
    return name, props


def organize(columns: dict[str, str], hidden: Sequence[str], order: Sequence[str]
             ) -> list[dm.DataTransformerConfig]:
    """Merge the instant queries into one row per run, then name, hide and order columns.

    The SDK types a transformation's options as `object`: they are Grafana's "merge" and
    "organize" options, as data."""
    return [dm.DataTransformerConfig(id_val="merge", options={}),
            dm.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, **dict.fromkeys(hidden, True)},
                "indexByName": {name: i for i, name in enumerate(order)},
                "renameByName": columns})]


# ------------------------------------------------------------------------------- dashboards


def alert_annotations(runs: Runs) -> list[Builder[dm.AnnotationQuery]]:
    """Alerts firing, the daemon's detector alerts, fault windows and restarts."""
    def ann(name: str, color: str, expr: str) -> db.AnnotationQuery:
        return (db.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).hide(False)
                .icon_color(color).expr(expr))
    alerts = f'ALERTS{{alertname=~"Trainsim.+", alertstate="firing", run{runs.matcher}}}'
    return [
        ann("Alerts firing", "red", alerts),
        ann("Detector alerts", "orange", f"{runs('trainsim_alert_active')} == 1"),
        ann("Fault windows", "purple",
            faults_or_zero(f"{runs('trainsim_fault_active')} == 1", runs)),
        ann("Restarts", "blue",
            f"changes({runs('trainsim_run_restarts_total')}[$__rate_interval]) > 0"),
    ]


# What the SDK has no field for, kept as data: the Prometheus fields of the annotations above.
# The SDK's AnnotationQuery models Grafana's own annotations and has only `expr` of Prometheus'
# fields; `model` adds the query step (the shipped scrape interval) and, by annotation name, the
# title, text and tag templates.
ANNOTATION_STEP = "15s"
ANNOTATION_TEXT = {
    "Alerts firing": ("{{alertname}} firing", "{{severity}} alert {{alertname}} on run {{run}}",
                      "alertname,severity,run"),
    "Detector alerts": ("{{alert}} detected",
                        "The daemon's {{alert}} detector is active on run {{run}}", "alert,run"),
    "Fault windows": ("fault {{fault}}", "Injected fault {{fault}} active on run {{run}}",
                      "fault,run"),
    "Restarts": ("run restarted", "Run {{run}} restarted (loop, API or crash)", "run"),
}


def variables(single_run: bool) -> list[Builder[dm.VariableModel]]:
    """The datasource variable, then the run variable from label_values."""
    run = (db.QueryVariable("run").label("Run")
           .description("Runs of the trainsim daemon (label_values of trainsim_run_info).")
           .datasource(DATASOURCE)
           .query({"qryType": 1, "query": RUN_QUERY,
                   "refId": "PrometheusVariableQueryEditor-VariableQuery"})
           .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).regex("")
           .sort(dm.VariableSort.ALPHABETICAL_ASC).hide(dm.VariableHide.DONT_HIDE)
           .multi(not single_run).include_all(not single_run).options([]))
    if not single_run:
        run = run.all_value(".*").current(dm.VariableOption(selected=True, text=["All"],
                                                             value=["$__all"]))
    source = (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
              .hide(dm.VariableHide.DONT_HIDE).multi(False).include_all(False).regex(""))
    return [source, run]


def dashboard(uid: str, title: str, description: str, tags: Sequence[str],
              panels: Sequence[Placed | FoldedRow],
              runs: Runs) -> db.Dashboard:
    """A dashboard with the common header; ``panels`` as (panel, (x, y, w, h)) or folded rows,
    numbered from 1 in that order (a row, then the panels it holds)."""
    d = (db.Dashboard(title).uid(uid).description(description).tags(["trainsim", *tags])
         .timezone("browser").editable().tooltip(dm.DashboardCursorSync.CROSSHAIR)
         .fiscal_year_start_month(0).live_now(False).refresh(REFRESH).version(1)
         .time(*TIME_RANGE).week_start("")
         .timepicker(db.TimePicker().refresh_intervals(["15s", "30s", "1m", "5m", "15m"]))
         .link(db.DashboardLink("Trainsim dashboards").type(dm.DashboardLinkType.DASHBOARDS)
               .tags(["trainsim"]).as_dropdown(True).include_vars(False).keep_time(True)
               .target_blank(False).icon("external link").tooltip("").url(""))
         .annotations(alert_annotations(runs)).variables(variables(runs is SINGLE)))
    ids = itertools.count(1)

    def placed(panel: Builder[dm.Panel], x: int, y: int, w: int, h: int) -> Any:
        # The SDK's generic builder type has no id or gridPos setters; every panel builder has.
        p: Any = panel
        return p.id(next(ids)).grid_pos(dm.GridPos(x=x, y=y, w=w, h=h))

    for item in panels:
        if isinstance(item, FoldedRow):
            row = (db.Row(item.title).id(next(ids))
                   .grid_pos(dm.GridPos(x=0, y=item.y, w=24, h=1)).collapsed(True))
            for panel, pos in item.panels:
                row = row.with_panel(placed(panel, *pos))
            d = d.with_row(row)
        else:
            panel, pos = item
            d = d.with_panel(placed(panel, *pos))
    return d


# ------------------------------------------------------------------------ fleet overview


def fleet() -> db.Dashboard:
    """Training fleet overview: every run at a glance."""
    r = MULTI
    excess = graph(
        "Excess loss J(w) - J* of all runs",
        "The loss above the landscape's minimum, trainsim_excess_loss, of every run whose "
        "landscape knows its minimum, on a log scale: a run converging at a constant rate falls "
        "in a straight line, a diverging one climbs. J(w) itself flattens at its floor J* as a "
        "run converges; this keeps falling. Runs whose minimum is unknown (logistic_regression) "
        "are absent: the table has their loss.",
        SCI, query(r("trainsim_excess_loss"), "{{run}}"), log=True,
        label="J(w) - J*", decimals=SCI_DECIMALS_GRAPH)
    states = colored_by_state(
        graph("Runs by state over time", "Stacked count of runs in each state "
              "(trainsim_run_state). Looping runs go back to running when they restart.",
              "none", query(f"sum by (state) ({r('trainsim_run_state')})", "{{state}}"),
              label="runs", decimals=0)
        .fill_opacity(30).stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A")))
    step_rate = graph(
        "Step rate by run", "Optimizer steps per minute of each run (60 times the rate of "
        f"trainsim_steps_total). {RATE_WINDOW_NOTE} Drops to 0 while a run stops stepping "
        "(diverged, finished, hung).", STEP_RATE_UNIT,
        query(f"60 * sum by (run) (rate({r('trainsim_steps_total')}[$__rate_interval]))",
              "{{run}}"), label="steps per minute")
    return dashboard("trainsim-fleet", "Trainsim / Training fleet overview",
                     "All runs of the trainsim daemon at a glance: states, losses, alerts and "
                     "faults.", ["fleet"], [
                         *fleet_stats(r),
                         (fleet_table(r), (0, 4, 24, 9)),
                         (excess, (0, 13, 12, 9)), (alerts_table(), (12, 13, 12, 9)),
                         (states, (0, 22, 12, 8)), (step_rate, (12, 22, 12, 8)),
                     ], r)


def fleet_table(r: Runs) -> table.Panel:
    """One row per run, linking to its detail dashboard."""
    runs_table = run_table(
        "Runs", "One row per run: state, loss J(w), excess loss J(w) - J* (blank where the "
        "landscape's minimum is unknown), gradient norm, learning rate, step rate, active "
        "detector alerts, active injected faults and restarts. Click a run to open its detail "
        "dashboard.", [
            query(f"max by (run, state) ({r('trainsim_run_state')} == 1)", "__auto", "A",
                  instant=True, as_table=True),
            *(query(expr, "__auto", ref, instant=True, as_table=True) for ref, expr in (
                ("B", f"max by (run) ({r('trainsim_loss')})"),
                ("C", f"max by (run) ({r('trainsim_excess_loss')})"),
                ("D", f"max by (run) ({r('trainsim_gradient_norm')})"),
                ("E", f"max by (run) ({r('trainsim_learning_rate')})"),
                ("F", f"60 * sum by (run) (rate({r('trainsim_steps_total')}"
                      "[$__rate_interval]))"),
                ("G", f"sum by (run) ({r('trainsim_alert_active')})"),
                ("H", faults_or_zero(f"sum by (run) ({r('trainsim_fault_active')})", r)),
                ("I", f"max by (run) ({r('trainsim_run_restarts_total')})"),
                ("J", f"max by (run, landscape, optimizer) ({r('trainsim_run_info')})"))),
        ], sort_by="run")
    columns = {"Value #B": "Loss", "Value #C": "Excess loss", "Value #D": "Gradient norm",
               "Value #E": "Learning rate", "Value #F": "Step rate",
               "Value #G": "Active alerts", "Value #H": "Active faults",
               "Value #I": "Restarts"}
    for name, props in (
            table_column("state", None, mapping=STATE_MAPPING),
            table_column("Loss", SCI, SCI_DECIMALS_VALUE),
            table_column("Excess loss", SCI, SCI_DECIMALS_VALUE),
            table_column("Gradient norm", SCI, SCI_DECIMALS_VALUE),
            table_column("Learning rate", "short"),
            table_column("Step rate", STEP_RATE_UNIT, 1),
            table_column("Active alerts", "none", steps=((None, "green"), (1, "red"))),
            table_column("Active faults", "none", steps=((None, "green"), (1, "purple"))),
            table_column("Restarts", "none", 0)):
        runs_table = runs_table.override_by_name(name, props)
    return runs_table.transformations(organize(
        columns, hidden=("Value #A", "Value #J"),
        order=("run", "state", *columns, "landscape", "optimizer")))


def alerts_table() -> table.Panel:
    """The Trainsim* alerts, firing and pending."""
    return (run_table(
        "Trainsim alerts", "Prometheus alerts from the shipped Trainsim* rules (ALERTS), firing "
        "and pending, with their run and severity.",
        [query('max by (alertname, alertstate, severity, run) (ALERTS{alertname=~"Trainsim.+"})',
               "__auto", instant=True, as_table=True)], sort_by="alertstate")
        .override_by_name("alertstate", [
            prop("mappings", [value_mapping(("firing", "firing", "red"),
                                            ("pending", "pending", "orange"))]),
            prop("custom.cellOptions", {"type": "color-background"})])
        .override_by_name("severity", [
            prop("mappings", [value_mapping(("critical", "critical", "red"),
                                            ("warning", "warning", "orange"),
                                            ("info", "info", "blue"))]),
            prop("custom.cellOptions", {"type": "color-text"})])
        .transformations([dm.DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True, "Value": True},
            "indexByName": {"alertname": 0, "run": 1, "severity": 2, "alertstate": 3},
            "renameByName": {}})]))


def fleet_stats(r: Runs) -> list[Placed]:
    """The fleet's top row: runs, runs by state, alerts firing, faults active, step rate."""
    by_state = colored_by_state(single_stat(
        "Runs by state", "How many runs are in each state now. Exactly one state is 1 per run "
        "(trainsim_run_state); diverged runs are red, stalled yellow, converged green.",
        f"sum by (state) ({r('trainsim_run_state')})", "{{state}}",
        text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
        color_mode=cm.BigValueColorMode.BACKGROUND))
    return [
        (single_stat("Runs", "Number of runs the daemon is replaying (one trainsim_run_info "
                     "series per run).", f"count({r('trainsim_run_info')}) or vector(0)",
                     "runs"), (0, 0, 3, 4)),
        (by_state, (3, 0, 11, 4)),
        (single_stat("Alerts firing", "Prometheus alerts named Trainsim* in state firing (the "
                     "ALERTS series of the shipped rules). Red when any fires.",
                     'count(ALERTS{alertname=~"Trainsim.+", alertstate="firing"}) or vector(0)',
                     "firing", color_mode=cm.BigValueColorMode.BACKGROUND,
                     steps=((None, "green"), (1, "red"))), (14, 0, 3, 4)),
        (single_stat("Faults active", "Injected faults active now, summed over runs "
                     "(trainsim_fault_active). 0 on configs without a fault schedule.",
                     f"sum({r('trainsim_fault_active')}) or vector(0)", "faults",
                     color_mode=cm.BigValueColorMode.BACKGROUND,
                     steps=((None, "green"), (1, "purple"))), (17, 0, 3, 4)),
        (single_stat("Fleet step rate", "Optimizer steps per minute over all runs (60 times the "
                     "rate of trainsim_steps_total). Restarts reset the counter; rate() "
                     f"accounts for that. {RATE_WINDOW_NOTE}",
                     f"60 * sum(rate({r('trainsim_steps_total')}[$__rate_interval])) "
                     "or vector(0)", "steps/min", unit=STEP_RATE_UNIT, decimals=1),
         (20, 0, 4, 4)),
    ]


# ------------------------------------------------------------------------------ run detail


def run_timeline(r: Runs) -> statetimeline.Panel:
    """The run's state, then one row per detector alert and per fault."""
    state_row = timeline(
        "State timeline", "Top row: the run's state over time. Below: each detector alert and "
        "each injected fault of the run, coloured while active ('fault: none' when the run has "
        "no fault schedule).",
        query(state_number(r), "state"),
        query(f"max by (alert) ({r('trainsim_alert_active')})", "alert: {{alert}}", "B"),
        query(f"max by (fault) ({r('trainsim_fault_active')})\nor on() label_replace(0 * max("
              f"{r('trainsim_run_info')}), \"fault\", \"none\", \"\", \"\")",
              "fault: {{fault}}", "C"),
        mapping=STATE_NUMBER_MAPPING)
    on_off = [prop("mappings", [value_mapping(("0", "off", "transparent"),
                                              ("1", "active", "red"))])]
    return state_row.override_by_query("B", on_off).override_by_query("C", on_off)


def run_detail() -> db.Dashboard:
    """Run detail: one run's state, losses, gradient, learning rate, parameters and steps."""
    r = SINGLE
    panels: list[Placed | FoldedRow] = [
        *run_stats(r),
        (run_timeline(r), (0, 4, 24, 6)),
        (graph("Excess loss J(w) - J*",
               "The run's loss above its landscape's minimum (trainsim_excess_loss) on a log "
               "scale, exact down to 1e-300: a run converging at a constant rate falls in a "
               "straight line whose slope is its factor per step, a diverging one climbs. No "
               "data where the landscape's minimum is unknown (logistic_regression): see "
               "Loss J(w).", SCI, query(r("trainsim_excess_loss"), "J(w) - J*"), log=True,
               label="J(w) - J*", decimals=SCI_DECIMALS_GRAPH), (0, 10, 12, 9)),
        (graph("Gradient norm",
               "Euclidean norm of the gradient at the current parameters, log scale. The run "
               "reads converged once it is at most the detector's tolerance (1e-3 by default).",
               SCI, query(r("trainsim_gradient_norm"), "gradient norm"), log=True,
               label="|∇J(w)|", decimals=SCI_DECIMALS_GRAPH), (12, 10, 12, 9)),
        (graph("Loss J(w)",
               "The loss as reported (loss noise included), log scale. It flattens at the "
               "landscape's minimum J* as the run converges: read the convergence on the "
               "excess loss.", SCI, query(r("trainsim_loss"), "J(w)"), log=True, label="J(w)",
               decimals=SCI_DECIMALS_GRAPH), (0, 19, 8, 8)),
        (graph("Learning rate",
               "Effective learning rate of the last step (constant for plain SGD; schedules "
               "and lr_spike faults move it).", "short",
               query(r("trainsim_learning_rate"), "learning rate"), label="learning rate"),
         (8, 19, 8, 8)),
        (graph("Update norm",
               "Euclidean norm of the last parameter update |w_k - w_(k-1)|, log scale.", SCI,
               query(r("trainsim_update_norm"), "update norm"), log=True, label="|Δw|",
               decimals=SCI_DECIMALS_GRAPH), (16, 19, 8, 8)),
        (graph("Parameters",
               "The parameters w of a run with at most 8 parameters, one series per "
               "dimension, on a linear axis and drawn as steps (a parameter holds its value "
               "between optimizer steps). A learning rate too large for a smooth descent "
               "throws w across its minimum and back each step.", "short",
               query(r("trainsim_parameter"), "w[{{dim}}]"), label="w")
         .line_interpolation(cm.LineInterpolation.STEP_AFTER)
         .show_points(cm.VisibilityMode.AUTO), (0, 27, 12, 8)),
        (graph("Step rate", "Optimizer steps per minute (60 times the rate of "
               f"trainsim_steps_total). {RATE_WINDOW_NOTE} 0 while the run is stopped "
               "(diverged, finished) or hung.", STEP_RATE_UNIT,
               query(f"60 * sum(rate({r('trainsim_steps_total')}[$__rate_interval]))",
                     "steps/min"), label="steps per minute"), (12, 27, 6, 8)),
        (graph("Time since last step",
               "Seconds since the last optimizer step: below the step interval while the run "
               "steps (a sawtooth, seen at the scrape's resolution), a ramp while it is hung, "
               "diverged or finished.", "s",
               query(f"time() - {r('trainsim_last_step_timestamp_seconds')}", "age"),
               label="since last step"), (18, 27, 6, 8)),
        hardware_row(r, 35),
    ]
    return dashboard("trainsim-run", "Trainsim / Run detail",
                     "One run of the trainsim daemon: state, loss and excess loss, gradient, "
                     "learning rate, parameters and step rate, with alert, fault and restart "
                     "annotations; for runs with a hardware block, step duration, throughput, "
                     "MFU and the GPUs' telemetry in a folded Hardware row.", ["run"], panels,
                     r)


def hardware_row(r: Runs, y: int) -> FoldedRow:
    """Step duration, throughput, MFU and each GPU's telemetry (dcgm-exporter's names).

    Folded: only runs with a `hardware:` block export these (the default config has none),
    and a folded row's queries run only when it is opened."""
    buckets = f"sum by (le) (rate({r('trainsim_step_duration_seconds_bucket')}[$__rate_interval]))"
    mean = (f"sum(rate({r('trainsim_step_duration_seconds_sum')}[$__rate_interval]))\n"
            f"/ sum(rate({r('trainsim_step_duration_seconds_count')}[$__rate_interval]))")
    step_duration = graph(
        "Step duration", "Duration of the run's optimizer steps (trainsim_step_duration_seconds, "
        "one observation a step): the median and 90th percentile from the histogram's buckets "
        "(histogram_quantile over their rate), and the exact mean (rate of _sum over rate of "
        "_count). The quantiles interpolate within a bucket (bounds 0.01 s to 300 s), so they "
        "read to the buckets' resolution: a 30 s step reads between 25 s and 60 s. Slow-step, "
        "dataloader-stall, straggler and thermal-throttle faults multiply it. No line while "
        f"the run takes no step. {RATE_WINDOW_NOTE}", "s",
        query(f"histogram_quantile(0.5, {buckets})", "p50"),
        query(f"histogram_quantile(0.9, {buckets})", "p90", "B"),
        query(mean, "mean", "C"), label="seconds per step")
    throughput = graph(
        "Throughput", "Samples processed per second: the rate of trainsim_samples_total (steps "
        "times samples_per_step) and trainsim_throughput_samples_per_second, samples_per_step "
        f"over the last step's duration. {RATE_WINDOW_NOTE} The rate falls to 0 while the run "
        "takes no step; the last step's figure holds.", THROUGHPUT_UNIT,
        query(f"sum(rate({r('trainsim_samples_total')}[$__rate_interval]))", "rate"),
        query(f"max({r('trainsim_throughput_samples_per_second')})", "last step", "B"),
        label="samples per second").min(0)
    mfu = graph(
        "Model FLOPs utilisation (MFU)", "trainsim_model_flops_utilization_ratio: the model "
        "FLOPs of the last step over what the run's GPUs could do in its duration "
        "(flops_per_step / (duration x peak_flops x gpus)), 40 % nominal. Divided by the factor "
        "of a slow-step, dataloader-stall, straggler or thermal-throttle fault.", "percentunit",
        query(f"max({r('trainsim_model_flops_utilization_ratio')})", "MFU"),
        label="MFU").min(0).max(1)

    def per_gpu(title: str, description: str, unit: str, metric: str, label: str
                ) -> timeseries.Panel:
        return graph(title, description, unit, query(r(metric), GPU_LEGEND), label=label)

    utilisation = per_gpu(
        "GPU utilisation", "DCGM_FI_DEV_GPU_UTIL of each GPU of the run: the share of each step "
        "the GPU computes, about 90 % while the run steps, 0 while it does not (hung, diverged, "
        "finished). Slow-step and dataloader-stall faults divide it; under a straggler the "
        "slow rank stays busy and the others wait.", "percent", "DCGM_FI_DEV_GPU_UTIL",
        "GPU utilisation").min(0).max(100)
    power = per_gpu(
        "GPU power", "DCGM_FI_DEV_POWER_USAGE of each GPU: between the model's idle and busy "
        "draw with the utilisation (an H100 idles at 70 W), capped by a thermal throttle.",
        "watt", "DCGM_FI_DEV_POWER_USAGE", "power").min(0)
    temperature = per_gpu(
        "GPU temperature", "DCGM_FI_DEV_GPU_TEMP of each GPU: about 35 °C idle, 70 °C busy, "
        "88 °C while thermally throttled.", "celsius", "DCGM_FI_DEV_GPU_TEMP", "temperature")
    clock = per_gpu(
        "SM clock", "DCGM_FI_DEV_SM_CLOCK of each GPU (reported in MHz): the model's maximum "
        "while busy (1980 MHz on an H100), reduced by a thermal throttle's factor, the idle "
        "clock while the GPU idles.", CLOCK_UNIT, "DCGM_FI_DEV_SM_CLOCK", "SM clock").min(0)
    framebuffer = per_gpu(
        "Framebuffer used", "DCGM_FI_DEV_FB_USED of each GPU (reported in MiB): the memory the "
        "job allocated, for as long as the job lives; it stays allocated while the job hangs "
        "and vanishes with a crash. DCGM_FI_DEV_FB_FREE has the rest.", "mbytes",
        "DCGM_FI_DEV_FB_USED", "framebuffer used").min(0)
    xid = single_stat(
        "XID errors", "DCGM_FI_DEV_XID_ERRORS of each GPU: the last XID error, 0 (OK) normally. "
        "79 means the GPU has fallen off the bus (a gpu_lost fault): that GPU then reports "
        "only this series, and the job hangs.", r("DCGM_FI_DEV_XID_ERRORS"), GPU_LEGEND,
        decimals=0, text_mode=cm.BigValueTextMode.VALUE_AND_NAME,
        color_mode=cm.BigValueColorMode.BACKGROUND, steps=((None, "green"), (1, "red"))
    ).mappings([XID_MAPPING])
    return FoldedRow("Hardware", y, [
        (step_duration, (0, y + 1, 8, 8)), (throughput, (8, y + 1, 8, 8)),
        (mfu, (16, y + 1, 8, 8)),
        (utilisation, (0, y + 9, 12, 8)), (power, (12, y + 9, 12, 8)),
        (temperature, (0, y + 17, 12, 8)), (clock, (12, y + 17, 12, 8)),
        (framebuffer, (0, y + 25, 12, 8)), (xid, (12, y + 25, 12, 8)),
    ])


def run_stats(r: Runs) -> list[Placed]:
    """The run dashboard's top row of current values."""
    state = colored_by_state(single_stat(
        "State", "The run's current state (the trainsim_run_state series that is 1).",
        f"max by (state) ({r('trainsim_run_state')} == 1)", "{{state}}",
        text_mode=cm.BigValueTextMode.NAME, color_mode=cm.BigValueColorMode.BACKGROUND))
    return [
        (state, (0, 0, 3, 4)),
        (single_stat("Landscape / optimizer", "Landscape and optimizer kinds of the run (labels "
                     "of trainsim_run_info).",
                     f"max by (landscape, optimizer) ({r('trainsim_run_info')})",
                     "{{landscape}} / {{optimizer}}", text_mode=cm.BigValueTextMode.NAME),
         (3, 0, 4, 4)),
        (single_stat("Loss", "J(w) at the run's current parameters, as reported.",
                     f"max({r('trainsim_loss')})", "J(w)", SCI, SCI_DECIMALS_VALUE),
         (7, 0, 3, 4)),
        (single_stat("Excess loss", "J(w) - J*, the loss above the landscape's minimum (no "
                     "data where the minimum is unknown).",
                     f"max({r('trainsim_excess_loss')})", "J(w) - J*", SCI, SCI_DECIMALS_VALUE),
         (10, 0, 3, 4)),
        (single_stat("Gradient norm", "Euclidean norm of the gradient at w.",
                     f"max({r('trainsim_gradient_norm')})", "|∇J(w)|", SCI,
                     SCI_DECIMALS_VALUE), (13, 0, 3, 4)),
        (single_stat("Learning rate", "Effective learning rate of the last step.",
                     f"max({r('trainsim_learning_rate')})", "learning rate", "short"),
         (16, 0, 2, 4)),
        (single_stat("Steps", "Optimizer steps done in the current attempt "
                     "(trainsim_steps_total; resets on restart).",
                     f"max({r('trainsim_steps_total')})", "steps", decimals=0), (18, 0, 2, 4)),
        (single_stat("Restarts", "Times the run was restarted: loop, API restart or crash "
                     "(trainsim_run_restarts_total).",
                     f"max({r('trainsim_run_restarts_total')})", "restarts", decimals=0),
         (20, 0, 2, 4)),
        (single_stat("Last step age", "Seconds since the run's last optimizer step. Grows "
                     "without bound while the run is hung, diverged or finished.",
                     f"time() - max({r('trainsim_last_step_timestamp_seconds')})", "age", "s",
                     decimals=0), (22, 0, 2, 4)),
    ]


# ------------------------------------------------------------------- learning-rate comparison


def parameter_panel(r: Runs) -> timeseries.Panel:
    """w of the selected runs on a linear axis, the runs flagged diverging against the right.

    A diverged run's w (the seed's lr 1.1 ends at 23.7 after swinging to +-17) would squash a
    shared axis and hide an oscillating run's jumps across its minimum (0.6 <-> 5.5 on the
    seed). Which runs go right is decided once for the whole range (`[$__range] @ end()`), so
    that a run keeps one axis; the divergence detector runs only after some rising steps, so a
    test at each instant would leave a run's first swings of each attempt on the left."""
    w = r("trainsim_parameter", 'dim="0"')
    flagged = (f"max_over_time({r('trainsim_alert_active', DIVERGING)}[$__range] @ end())"
               " == 1")
    return (graph(
        "Parameter w by run",
        "First parameter w of each selected run, drawn as steps on a linear axis: a small "
        "learning rate crawls to the minimum, a healthy one descends to it, a large one jumps "
        "across it and back each step while the jumps shrink (drag across a restart to zoom "
        "in on the first steps). Runs the divergence detector flagged at any time in the "
        "dashboard's range are drawn against the right axis as a dashed red line "
        "labelled 'DIVERGING', so that their far-out w leaves the others' scale alone.",
        "short", query(f"{w}\nunless on(run) ({flagged})", "{{run}}"),
        query(f"{w}\nand on(run) ({flagged})", "{{run}} DIVERGING", "B"), label="w")
        .line_interpolation(cm.LineInterpolation.STEP_AFTER)
        .show_points(cm.VisibilityMode.AUTO)
        .override_by_query("B", [fixed_color("red"), prop("custom.lineWidth", 2), DASHED,
                                 prop("custom.axisPlacement", "right"),
                                 prop("custom.axisLabel", "w, diverging runs")]))


def lr_comparison() -> db.Dashboard:
    """Learning-rate comparison: the selected runs overlaid, the diverging ones marked."""
    r = MULTI
    excess = with_diverging_overlay(graph(
        "Excess loss J(w) - J* by run",
        "The loss above the landscape's minimum (trainsim_excess_loss) of the selected runs "
        "overlaid on a log scale: a run converging at a constant rate falls in a straight line "
        "whose slope is its factor per step, a diverging one climbs. Runs whose divergence "
        "detector is active are drawn again as a thick dashed red line labelled 'DIVERGING'. "
        "Runs whose landscape's minimum is unknown are absent: see Loss J(w) by run.",
        SCI, query(r("trainsim_excess_loss"), "{{run}}"), log=True, label="J(w) - J*",
        decimals=SCI_DECIMALS_GRAPH), r("trainsim_excess_loss"), r)
    gradient = with_diverging_overlay(graph(
        "Gradient norm by run",
        "Gradient norm of the selected runs overlaid on a log scale; diverging runs are marked "
        "with a thick dashed red line labelled 'DIVERGING'.", SCI,
        query(r("trainsim_gradient_norm"), "{{run}}"), log=True, label="|∇J(w)|",
        decimals=SCI_DECIMALS_GRAPH), r("trainsim_gradient_norm"), r)
    loss = with_diverging_overlay(graph(
        "Loss J(w) by run",
        "J(w) as reported, log scale. It flattens at the landscape's minimum J* as a run "
        "converges, so compare convergence on the excess loss; diverging runs are marked with "
        "a thick dashed red line labelled 'DIVERGING'.", SCI,
        query(r("trainsim_loss"), "{{run}}"), log=True, label="J(w)",
        decimals=SCI_DECIMALS_GRAPH), r("trainsim_loss"), r)
    panels: list[Placed] = [
        (excess, (0, 0, 12, 10)), (gradient, (12, 0, 12, 10)),
        (timeline("Divergence detector by run", "The daemon's divergence detector per run "
                  "(trainsim_alert_active{alert=\"divergence\"}): red 'DIVERGING' while "
                  "active.", query(f"max by (run) ({r('trainsim_alert_active', DIVERGING)})",
                                   "{{run}}"), mapping=DETECTOR_MAPPING), (0, 10, 12, 7)),
        (timeline("State by run", "Each run's state over time: running, converged, stalled, "
                  "diverged or finished.", query(state_number(r), "{{run}}"),
                  mapping=STATE_NUMBER_MAPPING), (12, 10, 12, 7)),
        (parameter_panel(r), (0, 17, 24, 9)),
        (loss, (0, 26, 12, 8)),
        (graph("Learning rate by run", "Effective learning rate of each run's last step; the "
               "legend's order is the comparison's axis.", "short",
               query(r("trainsim_learning_rate"), "{{run}}"), label="learning rate"),
         (12, 26, 12, 8)),
        (compared_table(r), (0, 34, 24, 7)),
    ]
    return dashboard("trainsim-lr-comparison", "Trainsim / Learning-rate comparison",
                     "The selected runs (default: all) overlaid: excess loss and gradient norm "
                     "side by side on log scales, the parameter w, the diverging runs marked in "
                     "red. On the default config: lr 0.05 crawls, 0.2 descends, 0.7 jumps "
                     "across the minimum and still converges, 1.1 explodes.",
                     ["learning-rate"], panels, r)


def compared_table(r: Runs) -> table.Panel:
    """The selected runs sorted by learning rate."""
    refs = {"A": ("Learning rate", f"max by (run) ({r('trainsim_learning_rate')})"),
            "C": ("Loss", f"max by (run) ({r('trainsim_loss')})"),
            "D": ("Gradient norm", f"max by (run) ({r('trainsim_gradient_norm')})"),
            "E": ("Divergence", f"max by (run) ({r('trainsim_alert_active', DIVERGING)})"),
            "F": ("Steps", f"max by (run) ({r('trainsim_steps_total')})")}
    targets = [query(expr, "__auto", ref, instant=True, as_table=True)
               for ref, (_, expr) in refs.items()]
    targets.insert(1, query(f"max by (run, state) ({r('trainsim_run_state')} == 1)", "__auto",
                            "B", instant=True, as_table=True))
    t = run_table("Runs compared", "The selected runs sorted by learning rate, with state, "
                  "loss, gradient norm and the divergence detector; the diverging row is "
                  "marked red.", targets, sort_by="Learning rate", filterable=False)
    for name, props in (table_column("Learning rate", "short"),
                        table_column("Divergence", "none", mapping=DETECTOR_MAPPING),
                        table_column("state", None, mapping=STATE_MAPPING),
                        table_column("Loss", SCI, SCI_DECIMALS_VALUE),
                        table_column("Gradient norm", SCI, SCI_DECIMALS_VALUE),
                        table_column("Steps", "none", 0)):
        t = t.override_by_name(name, props)
    columns = {f"Value #{ref}": name for ref, (name, _) in refs.items()}
    return t.transformations(organize(columns, hidden=("Value #B",),
                                      order=("run", "Value #A", "state", "Value #C",
                                             "Value #D", "Value #E", "Value #F")))


# ----------------------------------------------------------------------------------- output


DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {
    "trainsim-fleet.json": fleet,
    "trainsim-run.json": run_detail,
    "trainsim-lr-comparison.json": lr_comparison,
}
# Top-level keys first in this order (as Grafana's export has them), the rest after.
KEY_ORDER = ("id", "uid", "title", "description", "tags", "timezone", "editable",
             "graphTooltip", "fiscalYearStartMonth", "liveNow", "refresh", "schemaVersion",
             "version", "time", "timepicker", "weekStart", "links", "annotations", "templating",
             "panels")


def model(builder: db.Dashboard) -> dict[str, Any]:
    """The JSON model: the SDK's, plus what it has no field for."""
    d: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for ann in d["annotations"]["list"]:
        title, text, tags = ANNOTATION_TEXT[ann["name"]]
        ann.update(step=ANNOTATION_STEP, titleFormat=title, textFormat=text, tagKeys=tags,
                   useValueForTime=False)
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            # The SDK's VariableModel has no `definition` (the query as Grafana's editor shows
            # it); without it the variable list reads empty until the variable is edited.
            var["definition"] = var["query"]["query"]
    d["id"] = None  # a provisioned dashboard carries no database id
    return {k: d[k] for k in (*KEY_ORDER, *sorted(set(d) - set(KEY_ORDER))) if k in d}


def render(builder: db.Dashboard) -> str:
    """Canonical JSON, 2-space indented, as Grafana's "Export" writes it."""
    return json.dumps(model(builder), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write every dashboard into OUTDIR (default: this script's directory)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python dashboards/generate.py [OUTDIR]", file=sys.stderr)
        return 2
    out = Path(args[0]) if args else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
