"""`--shard INDEX/COUNT`: shards partition any fleet; the deploy/ manifests that use them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import cli
from simulator.config import Config, load_config
from simulator.config.shards import Shard, parse_shard, shard_config
from tests.conftest import REPO, need_binary

DEPLOY = REPO / "deploy"
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_.-", min_size=1,
               max_size=40)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(NAME, unique=True, max_size=200), count=st.integers(1, 64))
def test_shards_are_disjoint_and_cover_every_run(names: list[str], count: int) -> None:
    holders = {name: [i for i in range(count) if Shard(i, count).holds(name)] for name in names}
    assert all(len(h) == 1 for h in holders.values())


@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 200), shards=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_shard_configs_of_a_fleet_add_up_to_the_fleet(count: int, shards: int,
                                                      seed: int) -> None:
    cfg = load_config(f"fleet: {{count: {count}, seed: {seed}, learning_rate: 0.1}}", "f")
    parts = [shard_config(cfg, Shard(i, shards)).runs for i in range(shards)]
    assert sorted((s for p in parts for s in p), key=lambda s: s.name) == list(cfg.runs)
    assert sum(len(p) for p in parts) == count


def test_one_shard_of_one_is_everything() -> None:
    cfg = load_config("fleet: {count: 7, learning_rate: 0.1}", "f")
    assert shard_config(cfg, Shard(0, 1)) is cfg
    assert shard_config(cfg, None) is cfg


@pytest.mark.parametrize("text", ["3/3", "-1/3", "0/0", "1", "a/b", "1/2/3", "", "0/100001"])
def test_bad_shard_specs_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="must be INDEX/COUNT"):
        parse_shard(text)


def test_validate_prints_what_each_shard_holds(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("fleet: {count: 50, learning_rate: 0.1}\n")
    held: list[str] = []
    for i in range(3):
        assert cli.main(["validate", "--shard", f"{i}/3", str(path)]) == 0
        head, *names = capsys.readouterr().out.splitlines()
        assert head == f"{path}: ok (50 runs; shard {i}/3 holds {len(names)})"
        held += names
    assert sorted(held) == [f"fleet-{i:05d}" for i in range(50)]


def test_run_rejects_a_bad_shard_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--shard", "3/3"])
    assert info.value.code == 2
    assert "--shard: must be INDEX/COUNT" in capsys.readouterr().err


# --------------------------------------------------------------------------- deploy/


def manifests() -> dict[str, dict[str, object]]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def test_kubernetes_manifests_parse_and_have_the_expected_kinds() -> None:
    docs = manifests()
    assert set(docs) == {"ConfigMap", "Service", "StatefulSet", "ServiceMonitor",
                         "PrometheusRule"}
    svc = docs["Service"]["spec"]
    assert svc["clusterIP"] == "None"  # type: ignore[index]
    assert docs["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"


def test_prometheusrule_holds_exactly_the_shipped_rule_groups() -> None:
    shipped = []
    for path in sorted((REPO / "configs" / "prometheus" / "rules").glob("*.yml")):
        shipped += yaml.safe_load(path.read_text())["groups"]
    assert manifests()["PrometheusRule"]["spec"]["groups"] == shipped  # type: ignore[index]


def test_statefulset_shard_count_matches_replicas_and_its_config_is_valid() -> None:
    docs = manifests()
    sts = docs["StatefulSet"]["spec"]
    (container,) = sts["template"]["spec"]["containers"]  # type: ignore[index]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["SHARD_COUNT"]["value"]) == sts["replicas"]  # type: ignore[index]
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    assert '--shard "${index}/${SHARD_COUNT}"' in container["args"][0]
    fleet = docs["ConfigMap"]["data"]["fleet.yaml"]  # type: ignore[index]
    cfg: Config = load_config(fleet, "configmap fleet.yaml")
    monitor = docs["ServiceMonitor"]["spec"]
    assert cfg.series_limit == monitor["sampleLimit"]  # type: ignore[index]


def test_the_shard_script_picks_the_pod_label_or_the_hostname_suffix() -> None:
    container = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    script = container["args"][0].replace("exec trainsim run", "echo")
    for env, want in (({"POD_INDEX": "1", "HOSTNAME": "trainsim-2"}, "1/3"),
                      ({"POD_INDEX": "", "HOSTNAME": "trainsim-12"}, "12/3")):
        out = subprocess.run(["/bin/sh", "-c", script], env={**env, "SHARD_COUNT": "3"},
                             capture_output=True, text=True, check=True).stdout
        assert out.split()[-1] == want


def test_file_sd_example_passes_promtool() -> None:
    promtool = need_binary("promtool")
    targets = json.loads((DEPLOY / "prometheus" / "targets" / "trainsim-shards.json").read_text())
    assert [t["labels"]["shard"] for t in targets] == ["0/3", "1/3", "2/3"]
    result = subprocess.run([promtool, "check", "config",
                             str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
