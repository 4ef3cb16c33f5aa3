"""The demo people can see: the default config through the shipped scrape interval.

The default config runs the seed's four learning rates on J(w) = (w - 2)^2 + 1; the shipped
prometheus.yml scrapes every 15 s. Here a real Prometheus scrapes a real daemon on that config
with time compressed by ``SPEED`` and every interval scaled the same way (the daemon steps every
30 s / SPEED of wall time, Prometheus scrapes every 15 s / SPEED), and what Prometheus *stores*
is held to what the seed's plots and dashboards/README.md promise:

- each run's defining phase spans at least 10 stored samples: lr-0.05's crawl, lr-0.2's descent
  to convergence, lr-0.7's oscillation across the minimum, lr-1.1's growth until the divergence
  detector flags it;
- every stored excess loss is the closed form (w_k - 2)^2, w_k = 2 + (1 - 2 lr)^k (5.5 - 2), at
  the step Prometheus stored beside it: on the log-scale panel a converging run is a straight
  line;
- in the learning-rate comparison dashboard, the excess-loss panel (log scale) draws lr-1.1 a
  second time as DIVERGING from the evaluation the detector flags it, and never before; the
  parameter panel shows lr-0.7's w on both sides of the minimum, alternating.

A missing binary fails the test (never skips).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from simulator.config import load_default
from simulator.drills import stack
from simulator.drills.profile import fast_prometheus_config
from simulator.durations import format_prometheus, parse_prometheus

pytestmark = pytest.mark.realstack

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "configs" / "prometheus" / "prometheus.yml"
COMPARISON = REPO / "dashboards" / "trainsim-lr-comparison.json"

SPEED = 30  # a step every second of wall time, a scrape every half second
MIN_SAMPLES = 10
W0, C = 5.5, 2.0


def _shipped_scrape_s() -> float:
    text = PROMETHEUS_YML.read_text()
    found = re.search(r"^\s*scrape_interval:\s*(\S+)", text, re.MULTILINE)
    assert found, "prometheus.yml has no global scrape_interval"
    return parse_prometheus(found.group(1)) / 1000


SCRAPE_S = _shipped_scrape_s() / SPEED
STEP_S = load_default().runs[0].step_interval


def closed_form_excess(lr: float, k: int) -> float:
    return ((1 - 2 * lr) ** k * (W0 - C)) ** 2


@dataclass
class Demo:
    prometheus: stack.PrometheusProcess
    started: float  # wall time the daemon started
    end: float  # the instant every stored sample below was read at

    @property
    def seconds(self) -> float:
        """The time range the dashboard shows: from the daemon's start to now."""
        return self.end - self.started

    def samples(self, selector: str) -> dict[str, list[tuple[float, float]]]:
        """Every stored sample of ``selector`` since the start, per run: (time, value)."""
        window = format_prometheus(int((self.end - self.started + 5) * 1000))
        data = self.prometheus.api("query", query=f"{selector}[{window}]", time=f"{self.end:.3f}")
        return {s["metric"]["run"]: [(float(t), float(v)) for t, v in s["values"]]
                for s in data["result"]}

    def range_query(self, expr: str) -> list[dict[str, Any]]:
        """``expr`` as a Grafana panel draws it: evaluated at every scrape interval."""
        data = self.prometheus.api("query_range", query=expr, start=f"{self.started:.3f}",
                                   end=f"{self.end:.3f}", step=f"{SCRAPE_S:.3f}")
        return list(data["result"])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not on PATH: install Debian's prometheus package", pytrace=False)
    workdir = tmp_path_factory.mktemp("demo")
    # Prometheus first, scraping the daemon's address before it listens, so that its start-up
    # (seconds, many steps at SPEED) costs no sample: it stores the runs from their first step.
    address = f"127.0.0.1:{stack.free_port()}"
    config = fast_prometheus_config(PROMETHEUS_YML.read_text(), target=address,
                                    alertmanager="127.0.0.1:9",
                                    interval=f"{int(SCRAPE_S * 1000)}ms")
    prom = stack.start_prometheus(workdir / "prometheus", config)
    try:
        # Its service discovery hands the target over a few seconds after start-up.
        deadline = time.monotonic() + 30
        while not prom.api("targets")["activeTargets"]:
            assert time.monotonic() < deadline, "Prometheus never took up the daemon's target"
            time.sleep(0.1)
        started = time.time()
        daemon = stack.start_daemon(workdir, speed=SPEED,
                                    extra_args=("--web.listen-address", address))
        try:
            # Until lr-0.2 has converged (step 18) and lr-1.1 has been flagged (step 10), as
            # Prometheus stored them; lr-0.05 and lr-0.7 are judged on what is stored by then.
            deadline = time.monotonic() + 40 * STEP_S / SPEED + 20
            done = ('trainsim_run_state{run="lr-0.2",state="converged"} == 1 and on() '
                    'trainsim_alert_active{run="lr-1.1",alert="divergence"} == 1')
            while not prom.query(done):
                assert time.monotonic() < deadline, "the default runs did not reach their phases"
                time.sleep(SCRAPE_S)
            yield Demo(prom, started, time.time())
        finally:
            daemon.close()
    finally:
        prom.close()


def phase(samples: list[tuple[float, float]], ends: list[tuple[float, float]]
          ) -> list[tuple[float, float]]:
    """The samples stored before the first sample of ``ends`` that is 1 (all of them if none
    is)."""
    end = next((t for t, v in ends if v == 1), math.inf)
    return [(t, v) for t, v in samples if t < end]


def test_each_default_run_s_defining_phase_spans_at_least_ten_stored_samples(demo: Demo) -> None:
    loss = demo.samples('trainsim_loss{run=~"lr-.*"}')
    converged = demo.samples('trainsim_run_state{state="converged"}')
    flagged = demo.samples('trainsim_alert_active{alert="divergence"}')
    w = demo.samples('trainsim_parameter{dim="0"}')

    crawl = phase(loss["lr-0.05"], converged["lr-0.05"])
    descent = phase(loss["lr-0.2"], converged["lr-0.2"])
    oscillation = phase(w["lr-0.7"], converged["lr-0.7"])
    growth = phase(loss["lr-1.1"], flagged["lr-1.1"])
    counts = {"lr-0.05 crawl": len(crawl), "lr-0.2 descent": len(descent),
              "lr-0.7 oscillation": len(oscillation), "lr-1.1 growth": len(growth)}
    print(f"stored samples per phase at a {SCRAPE_S * SPEED:g} s scrape: {counts}")
    assert all(n >= MIN_SAMPLES for n in counts.values()), counts
    assert len(descent) < len(loss["lr-0.2"]), "lr-0.2 converged within the window"
    assert len(growth) < len(loss["lr-1.1"]), "lr-1.1 was flagged within the window"

    def distinct(values: list[float]) -> list[float]:
        return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]

    # What each phase looks like: falling, falling, alternating sides of w = 2, rising.
    for name, samples in (("lr-0.05", crawl), ("lr-0.2", descent)):
        values = distinct([v for _, v in samples])
        assert all(b < a for a, b in pairwise(values)), name
    sides = [v > C for v in distinct([v for _, v in oscillation])]
    assert len(sides) >= 5 and all(a != b for a, b in pairwise(sides)), sides
    rising = distinct([v for _, v in growth])
    assert len(rising) >= 5 and all(b > a for a, b in pairwise(rising))


def test_stored_excess_loss_is_the_closed_form_a_straight_line_on_a_log_scale(
        demo: Demo) -> None:
    excess = demo.samples('trainsim_excess_loss{run=~"lr-.*"}')
    steps = demo.samples('trainsim_steps_total{run=~"lr-.*"}')
    for run in ("lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"):
        lr = float(run.removeprefix("lr-"))
        at = dict(steps[run])
        checked = 0
        for t, value in excess[run]:
            if t in at:  # the same scrape stored both
                assert value == pytest.approx(closed_form_excess(lr, int(at[t])), rel=1e-12), \
                    (run, at[t])
                checked += 1
        assert checked >= MIN_SAMPLES, run
    # Straight on a log scale: ln(excess) of lr-0.2 falls by ln(0.36) per step, exactly.
    k = [int(v) for _, v in steps["lr-0.2"]][:MIN_SAMPLES * 2]
    ln = [math.log(v) for _, v in excess["lr-0.2"]][:len(k)]
    slopes = {round((ln[i] - ln[0]) / (k[i] - k[0]), 9) for i in range(1, len(k)) if k[i] != k[0]}
    assert slopes == {round(math.log(0.36), 9)}


# --- the learning-rate comparison dashboard --------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in json.loads(COMPARISON.read_text())["panels"]:
        out += [p, *p.get("panels", [])]
    return out


def _panel_using(metric: str) -> dict[str, Any]:
    found = [p for p in _panels() if p.get("type") == "timeseries"
             and any(re.search(rf"\b{metric}\b", t.get("expr", "")) for t in p.get("targets", []))]
    assert len(found) == 1, f"expected one time series panel plotting {metric}, got {len(found)}"
    return found[0]


def _grafana(expr: str, seconds: float) -> str:
    """``expr`` with the dashboard's variables as Grafana substitutes them for "All" runs and
    a time range of ``seconds``."""
    rate_interval = format_prometheus(int(4 * SCRAPE_S * 1000))
    out = (expr.replace("${run:regex}", ".*").replace("${run}", ".*").replace("$run", ".*")
           .replace("$__rate_interval", rate_interval)
           .replace("$__range", format_prometheus(int(seconds * 1000)))
           .replace("$__interval", format_prometheus(int(SCRAPE_S * 1000))))
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


def test_excess_loss_panel_is_log_scale_and_marks_lr_1_1_diverging_once_flagged(
        demo: Demo) -> None:
    panel = _panel_using("trainsim_excess_loss")
    scale = panel["fieldConfig"]["defaults"]["custom"]["scaleDistribution"]
    assert scale["type"] == "log", scale
    flagged = demo.samples('trainsim_alert_active{alert="divergence"}')["lr-1.1"]
    first_flag = min(t for t, v in flagged if v == 1)
    overlays = [t for t in panel["targets"] if "DIVERGING" in t.get("legendFormat", "")]
    assert len(overlays) == 1, "the panel draws diverging runs a second time, as DIVERGING"
    marked = demo.range_query(_grafana(overlays[0]["expr"], demo.seconds))
    assert {s["metric"].get("run") for s in marked} == {"lr-1.1"}
    times = [float(t) for s in marked for t, _ in s["values"]]
    # From the evaluation after the scrape that stored the flag, never before it.
    assert min(times) >= first_flag - 1e-3
    assert min(times) <= first_flag + 2 * SCRAPE_S
    main = [t for t in panel["targets"] if t not in overlays]
    drawn = {s["metric"]["run"]: s["values"] for t in main
             for s in demo.range_query(_grafana(t["expr"], demo.seconds))}
    assert set(drawn) >= {"lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"}
    assert all(float(v) > 0 for _, v in drawn["lr-0.2"]), "log scale: no zero or negative"


def test_parameter_panel_shows_lr_0_7_alternating_across_the_minimum(demo: Demo) -> None:
    panel = _panel_using("trainsim_parameter")
    scale = panel["fieldConfig"]["defaults"]["custom"].get("scaleDistribution", {"type": "linear"})
    assert scale["type"] == "linear", "w swings around 2: a log axis would hide which side"
    series = [s for t in panel["targets"]
              for s in demo.range_query(_grafana(t["expr"], demo.seconds))
              if s["metric"].get("run") == "lr-0.7"]
    assert len(series) == 1, "lr-0.7 is drawn once"
    converged = demo.samples('trainsim_run_state{state="converged"}')["lr-0.7"]
    end = min(t for t, v in converged if v == 1)
    values = [float(v) for t, v in series[0]["values"] if float(t) < end]
    changes = [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]
    sides = [v > C for v in changes]
    assert len(sides) >= 5 and all(a != b for a, b in pairwise(sides)), \
        f"lr-0.7's w as drawn: {changes}"
