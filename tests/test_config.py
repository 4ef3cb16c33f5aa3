"""Config parsing and validation: typed results, every mistake reported as FILE:LINE: path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simulator import resources
from simulator.config import ConfigError, load_config, load_default
from simulator.detectors import Detection
from simulator.durations import parse_seconds as parse_duration

REPO = Path(__file__).resolve().parent.parent


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, "f.yaml")
    return str(info.value).splitlines()


def test_default_config_is_the_seed_four_learning_rates() -> None:
    cfg = load_default()
    assert [r.name for r in cfg.runs] == ["lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"]
    assert [r.optimizer.learning_rate for r in cfg.runs] == [0.05, 0.2, 0.7, 1.1]
    for r in cfg.runs:
        assert (r.landscape.a, r.landscape.c, r.landscape.b) == (1.0, 2.0, 1.0)
        assert r.init == (5.5,)
        assert r.loop is True


def test_repo_configs_default_is_the_embedded_default() -> None:

    embedded = resources.read_bytes("default.yaml")
    assert (REPO / "configs" / "default.yaml").read_bytes() == embedded


def test_defaults_block_is_merged_into_every_run_and_runs_override_it() -> None:
    cfg = load_config("""
defaults:
  steps: 50
  step_interval: 250ms
  landscape: {a: 2, c: 1}
  optimizer: {learning_rate: 0.1}
runs:
  - name: a
  - name: b
    steps: 7
    landscape: {c: 3}
    optimizer: {learning_rate: 0.3}
""", "f.yaml")
    a, b = cfg.runs
    assert (a.steps, a.step_interval, a.landscape.a, a.landscape.c) == (50, 0.25, 2.0, 1.0)
    assert (b.steps, b.landscape.a, b.landscape.c, b.optimizer.learning_rate) == (7, 2.0, 3.0, 0.3)
    assert a.detect == Detection()


@pytest.mark.parametrize(("text", "expected"), [
    ("250ms", 0.25), ("1s", 1.0), ("2m", 120.0), ("1m30s", 90.0), ("1.5s", 1.5), (3, 3.0),
])
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


def test_negative_learning_rate_is_reported_with_file_line_and_path() -> None:
    errs = errors_of("""runs:
  - name: a
    optimizer: {learning_rate: 0.1}
  - name: b
    optimizer: {learning_rate: 0.1}
  - name: c
    optimizer:
      learning_rate: -0.1
""")
    assert errs == ["f.yaml:8: runs[2].optimizer.learning_rate: must be > 0, got -0.1"]


def test_all_mistakes_are_reported_together_in_line_order() -> None:
    errs = errors_of("""runs:
  - name: "bad name!"
    optimizer: {learning_rate: 0.1}
    steps: 0
    step_interval: fast
    loop: yes please
    colour: blue
  - name: ok
    optimizer: {kind: lbfgs}
  - name: ok
    optimizer: {learning_rate: 0.1}
    init: [1, 2]
    detect: {stall_window: 2.5}
""")
    assert errs == [
        "f.yaml:2: runs[0].name: must match [a-zA-Z0-9_.-]+, got str 'bad name!'",
        "f.yaml:4: runs[0].steps: must be between 1 and 1000000000000, got 0",
        "f.yaml:5: runs[0].step_interval: must be a duration like 250ms, 1s or 2m, got 'fast'",
        "f.yaml:6: runs[0].loop: must be true or false, got str 'yes please'",
        "f.yaml:7: runs[0].colour: unknown key (expected one of: clip_grad_norm, detect, faults, "
        "gradient_noise, hardware, init, landscape, loop, loss_noise, name, optimizer, replay, "
        "schedule, seed, step_interval, steps)",
        "f.yaml:9: runs[1].optimizer.kind: unknown optimizer kind 'lbfgs' (expected one of: sgd, "
        "momentum, nesterov, adam, adamw, rmsprop)",
        "f.yaml:10: runs[2].name: duplicate run name 'ok' (first at line 8)",
        "f.yaml:12: runs[2].init: the quadratic landscape has 1 parameter, got a list of 2",
        "f.yaml:13: runs[2].detect.stall_window: must be an integer, got float 2.5",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("runs: [\n", "f.yaml:2: YAML syntax error:"),
    ("{}", "f.yaml:1: runs: required key is missing"),
    ("runs: []", "f.yaml:1: runs: must be a non-empty list, got a list"),
    ("- a\n- b\n", "f.yaml:1: must be a mapping, got a list"),
    ("", "f.yaml:1: empty document"),
    ("runs:\n  - name: a\n    optimizer: {learning_rate: 1e400}\n",
     "f.yaml:3: runs[0].optimizer.learning_rate: must be finite"),
    ("runs:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n    steps: 99999999999999999999\n",
     "f.yaml:4: runs[0].steps: must be between 1 and"),
    ("runs:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n    step_interval: -1s\n",
     "f.yaml:4: runs[0].step_interval: must be a duration"),
    ("runs:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n    step_interval: 0.5ms\n",
     "f.yaml:4: runs[0].step_interval: must be at least 1ms"),
    ("runs:\n  - name: a\n  - name: b\n", "f.yaml:2: runs[0].optimizer: required key is missing"),
    ("runs:\n  - name: a\n    name: b\n    optimizer: {learning_rate: 0.1}\n",
     "f.yaml:3: name: duplicate key (first at line 2)"),
    ("runs:\n  - name: a\n    optimizer: {learning_rate: true}\n",
     "f.yaml:3: runs[0].optimizer.learning_rate: must be a number, got bool True"),
    ("defaults: {oops: 1}\nruns:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n",
     "f.yaml:1: defaults.oops: unknown key"),
])
def test_each_kind_of_mistake_names_its_line(text: str, expected: str) -> None:
    errs = errors_of(text)
    assert any(e.startswith(expected) for e in errs), errs


def test_scientific_notation_without_a_dot_is_a_number() -> None:
    cfg = load_config("runs:\n  - name: a\n    optimizer: {learning_rate: 1e-3}\n"
                      "    detect: {divergence_loss: 1e5}\n", "f.yaml")
    assert cfg.runs[0].optimizer.learning_rate == 1e-3
    assert cfg.runs[0].detect.divergence_loss == 1e5


def test_non_utf8_bytes_are_reported_with_their_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(b"runs:\n  - name: a\xff\n", "f.yaml")
    assert str(info.value).startswith("f.yaml:2: not valid UTF-8")


def test_alias_expansion_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("runs: *a8")
    with pytest.raises(ConfigError) as info:
        load_config("\n".join(lines), "f.yaml")
    assert "document too large" in str(info.value)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *args], capture_output=True,
                          text=True, timeout=60)


def test_validate_exits_0_for_good_files_and_2_with_one_line_per_mistake(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("runs:\n  - name: a\n    optimizer: {learning_rate: 0.1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - name: a\n    optimizer: {learning_rate: -1}\n    steps: x\n")
    ok = _run_cli("validate", str(good), str(REPO / "configs" / "default.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: ok (1 runs)" in ok.stdout
    res = _run_cli("validate", str(good), str(bad))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{bad}:3: runs[0].optimizer.learning_rate: must be > 0, got -1",
        f"{bad}:4: runs[0].steps: must be an integer, got str 'x'",
    ]
    assert "Traceback" not in res.stderr


def test_run_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("runs:\n  - name: a\n    optimizer: {learning_rate: 0}\n")
    res = _run_cli("run", "--config.file", str(bad), "--web.listen-address", "127.0.0.1:0")
    assert res.returncode == 2
    assert res.stderr.strip() == f"{bad}:3: runs[0].optimizer.learning_rate: must be > 0, got 0"


def test_missing_config_file_is_one_line_exit_2(tmp_path: Path) -> None:
    res = _run_cli("validate", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    missing = tmp_path / "nope.yaml"
    assert res.stderr.strip() == f"{missing}: cannot read: No such file or directory"


@pytest.mark.parametrize("name", ["a\n", "a\r", "a\u2028", "\na", "a\"b", "a\\b", "é"])
def test_a_name_must_be_name_characters_only_with_no_trailing_newline(
        tmp_path: Path, name: str) -> None:
    # "$" in a regular expression matches before a trailing newline: names are full-matched.
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"name": name,
                                              "optimizer": {"learning_rate": 0.1}}]}))
    res = _run_cli("validate", str(path))
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}:2: runs[0].name: must match [a-zA-Z0-9_.-]+, got str {name!r}"]
