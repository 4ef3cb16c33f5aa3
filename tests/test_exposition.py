"""Exposition: the fast renderer equals prometheus_client's output; the contract is pinned."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from simulator.collector import TrainsimCollector
from simulator.config import load_config, load_default
from simulator.engine import ALERTS, STATES, Engine, Snapshot
from simulator.exposition import FAMILIES, Renderer, format_floats

GOLDEN = Path(__file__).parent / "golden" / "default-after-450s.prom"
WALL_EPOCH = 1_700_000_000.0


def default_snapshot(seconds: float = 450.0) -> Snapshot:
    """The default config after ``seconds`` (450 s: 15 steps of 30 s; lr-1.1 has diverged)."""
    engine = Engine(load_default().runs)
    engine.advance(seconds)
    return engine.snapshot(1, WALL_EPOCH, 1.0)


def registry_for(snap: Snapshot) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(TrainsimCollector(lambda: snap))
    return reg


@pytest.mark.parametrize("seconds", [0.0, 450.0, 2850.0, 3601.0])
def test_fast_text_render_is_byte_identical_to_prometheus_client(seconds: float) -> None:
    snap = default_snapshot(seconds)
    assert Renderer().render(snap) == generate_latest(registry_for(snap)).decode()


def test_fast_openmetrics_render_is_byte_identical_to_prometheus_client() -> None:
    snap = default_snapshot()
    expected = generate_openmetrics(registry_for(snap)).decode()
    assert Renderer().render(snap, openmetrics=True) + "# EOF\n" == expected


def test_label_values_are_escaped_as_both_formats_require() -> None:
    # Run names cannot hold these characters (the config refuses them); the renderer escapes
    # them anyway, exactly as prometheus_client does, so no label value can break a scrape.
    snap = dataclasses.replace(default_snapshot(), names=('q"uote', "back\\slash", "new\nline",
                                                          "lr-1.1"))
    text = Renderer().render(snap)
    assert text == generate_latest(registry_for(snap)).decode()
    assert 'run="q\\"uote"' in text and 'run="new\\nline"' in text
    assert 'run="back\\\\slash"' in text
    expected = generate_openmetrics(registry_for(snap)).decode()
    assert Renderer().render(snap, openmetrics=True) + "# EOF\n" == expected
    runs = {s.labels["run"] for fam in text_string_to_metric_families(text) for s in fam.samples
            if "run" in s.labels}
    assert runs == {'q"uote', "back\\slash", "new\nline", "lr-1.1"}


def test_special_values_format_as_prometheus_client_does() -> None:
    from prometheus_client.utils import floatToGoString

    values = np.array([0.0, -0.0, 1.0, 1e6, 999999.9, 1.7e9, 123456789.123, -5e7, np.inf,
                       -np.inf, np.nan, 1e-300, 5e-324, 1e22, -1e22])
    assert format_floats(values) == [floatToGoString(v) for v in values]


def test_every_run_has_exactly_one_state_and_the_contract_families() -> None:
    snap = default_snapshot()
    text = Renderer().render(snap)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {f.name for f in FAMILIES}
    states = families["trainsim_run_state"].samples
    for run in snap.names:
        mine = [s for s in states if s.labels["run"] == run]
        assert sorted(s.labels["state"] for s in mine) == sorted(STATES)
        assert sum(s.value for s in mine) == 1.0
    alerts = families["trainsim_alert_active"].samples
    assert {s.labels["alert"] for s in alerts} == set(ALERTS)
    for fam in families.values():
        for s in fam.samples:
            assert set(s.labels) - {"run", "dim", "landscape", "optimizer", "schedule", "state",
                                     "alert"} \
                == set()


def test_parameters_are_exported_only_for_runs_with_at_most_8_of_them() -> None:
    snap = default_snapshot()
    empty = dataclasses.replace(snap, parameters=())
    text = Renderer().render(empty)
    assert "trainsim_parameter{" not in text
    assert text == generate_latest(registry_for(empty)).decode()


def test_renderer_follows_a_new_fleet_layout() -> None:
    r = Renderer()
    first = default_snapshot()
    r.render(first)
    runs = [dataclasses.replace(s, name=f"other-{i}") for i, s in enumerate(load_default().runs)]
    engine = Engine(runs)
    engine.advance(3.0)
    second = engine.snapshot(2, WALL_EPOCH)
    assert r.render(second) == generate_latest(registry_for(second)).decode()


MIXED = """
defaults: {steps: 100}
runs:
  - name: logreg
    landscape: {kind: logistic_regression, features: 3, samples: 100}
    optimizer: {kind: adam}
    schedule: {kind: cosine, warmup: {steps: 5}}
  - name: bowl
    optimizer: {learning_rate: 0.2}
  - name: nqm
    landscape: {kind: noisy_quadratic, dims: 20}
    init: 1
    optimizer: {kind: momentum, learning_rate: 0.1}
    loss_noise: 0.1
  - name: logreg-2
    landscape: {kind: logistic_regression, features: 3, samples: 100, data_seed: 3}
    optimizer: {kind: sgd, learning_rate: 0.1}
"""


def test_mixed_fleet_with_validation_losses_renders_byte_identically() -> None:
    engine = Engine(load_config(MIXED, "f.yaml").runs)
    engine.advance(12.0)
    snap = engine.snapshot(1, WALL_EPOCH)
    text = Renderer().render(snap)
    assert text == generate_latest(registry_for(snap)).decode()
    assert 'trainsim_validation_loss{run="logreg"}' in text
    assert 'trainsim_validation_loss{run="logreg-2"}' in text
    assert "trainsim_validation_loss{run=\"bowl\"}" not in text
    assert ('trainsim_run_info{landscape="quadratic",optimizer="momentum",run="nqm",'
            'schedule="constant"} 1.0') not in text  # nqm is noisy_quadratic
    assert ('trainsim_run_info{landscape="logistic_regression",optimizer="adam",run="logreg",'
            'schedule="warmup+cosine"} 1.0') in text


def test_golden_exposition_of_the_default_config_after_450_seconds() -> None:
    text = Renderer().render(default_snapshot())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "exposition changed; if on purpose: UPDATE_GOLDEN=1 pytest"
