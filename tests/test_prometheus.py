"""A real Prometheus (Debian's package) scrapes the daemon every second on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulator.drills.stack import start_prometheus
from tests.conftest import need_binary, wait_for


def scrape_config(target: str) -> str:
    return f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: trainsim
    static_configs: [{{targets: ['{target}']}}]
"""


def test_prometheus_scrapes_all_four_default_runs(daemon_factory: Any, tmp_path: Path) -> None:
    need_binary("prometheus")
    d = daemon_factory(speed=60)  # a step every 0.5 s: lr-1.1 diverges 5 s in
    with start_prometheus(tmp_path / "prom", scrape_config(d.address)) as prom:
        up = wait_for(lambda: prom.query('up{job="trainsim"} == 1'), what="target up")
        assert up[0]["metric"]["instance"] == d.address
        loss = wait_for(lambda: len(prom.query("trainsim_loss")) == 4 and prom.query(
            "trainsim_loss"), what="trainsim_loss for four runs")
        assert sorted(r["metric"]["run"] for r in loss) == ["lr-0.05", "lr-0.2", "lr-0.7",
                                                             "lr-1.1"]
        # The job/instance labels come from Prometheus, not from the exporter.
        assert all(r["metric"]["job"] == "trainsim" for r in loss)
        diverged = wait_for(lambda: prom.query(
            'trainsim_run_state{state="diverged"} == 1'), what="diverged state in Prometheus")
        assert [r["metric"]["run"] for r in diverged] == ["lr-1.1"]
