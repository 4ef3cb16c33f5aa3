"""Real processes: three shard daemons behind one real Prometheus; the series guard over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from simulator.config import load_file
from simulator.config.shards import parse_shard
from simulator.drills.stack import http_get, start_prometheus
from tests.conftest import REPO, need_binary, wait_for

FLEET = """
defaults: {steps: 100000, loop: true, step_interval: 1s}
fleet:
  count: 90
  seed: 3
  template: {init: 5.5}
  learning_rate: {log_uniform: [1e-3, 0.5]}
  landscapes:
    quadratic: 2
    noisy_quadratic: {weight: 1, landscape: {dims: 4}, init: 1}
  failures: {fraction: 0.1, kinds: [lr_spike, slow_steps], between: [1s, 5s], duration: 10s}
"""


def sd_prometheus_config(targets_dir: Path) -> str:
    """deploy/prometheus/prometheus.yml, with the test's intervals and target files."""
    cfg = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                     "evaluation_interval": "1s"}
    cfg.pop("rule_files")
    (job,) = cfg["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(targets_dir / "trainsim-*.json")],
                               "refresh_interval": "1s"}]
    return yaml.safe_dump(cfg)


def test_three_shards_behind_one_prometheus_export_each_run_exactly_once(
        daemon_factory: Any, write_config: Any, tmp_path: Path) -> None:
    need_binary("prometheus")
    path = write_config(FLEET)
    fleet = {s.name for s in load_file(path).runs}
    shards = [daemon_factory(path, speed=10, extra_args=("--shard", f"{i}/3"))
              for i in range(3)]
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "trainsim-shards.json").write_text(json.dumps(
        [{"targets": [d.address], "labels": {"shard": f"{i}/3"}} for i, d in enumerate(shards)]))
    with start_prometheus(tmp_path / "prom", sd_prometheus_config(targets)) as prom:
        wait_for(lambda: len(prom.query('up{job="trainsim"} == 1')) == 3,
                 timeout=60, what="three shard targets up")
        total = wait_for(lambda: prom.query("count(trainsim_run_info)") or None,
                         timeout=60, what="run_info from the shards")
        wait_for(lambda: prom.query("count(trainsim_run_info)")[0]["value"][1] == "90",
                 timeout=60, what=f"all 90 runs in Prometheus (first saw {total})")
        per_run = prom.query("count by (run) (trainsim_run_info)")
        assert {r["metric"]["run"] for r in per_run} == fleet
        assert {r["value"][1] for r in per_run} == {"1"}  # no run exported twice
        # Each run comes from the shard its name hashes to.
        for r in prom.query("trainsim_run_info"):
            assert parse_shard(r["metric"]["shard"]).holds(r["metric"]["run"])
    for d in shards:
        listening = next(e for e in d.events() if e.get("event") == "listening")
        assert listening["shard"] in ("0/3", "1/3", "2/3")


def test_exposed_series_equals_the_samples_of_a_real_scrape_and_the_limit_warns(
        daemon_factory: Any, write_config: Any) -> None:
    path = write_config(FLEET + "series_limit: 1000\n")
    d = daemon_factory(path, speed=10)
    warning = wait_for(lambda: [e for e in d.events()
                                if e.get("event") == "series_limit_exceeded"],
                       what="the series_limit warning")
    assert warning[0]["level"] == "warning" and warning[0]["series_limit"] == 1000
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        status, body = http_get(f"{d.url}/metrics", headers={"Accept": accept})
        assert status == 200
        lines = body.decode().splitlines()
        samples = [ln for ln in lines if ln and not ln.startswith("#")]
        gauge = next(ln for ln in samples if ln.startswith("trainsim_exposed_series "))
        assert float(gauge.split()[1]) == len(samples)
        assert warning[0]["series"] == len(samples)
    assert len([e for e in d.events() if e.get("event") == "series_limit_exceeded"]) == 1
