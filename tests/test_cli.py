"""The ``trainsim`` command's surface: help on everything, its version, and ``validate`` on every
file kind trainsim reads."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from simulator import __version__
from simulator.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
SHIPPED_YAML = sorted((REPO / "configs").rglob("*.yaml"))


def _parsers(parser: argparse.ArgumentParser, name: str = "trainsim",
             ) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


PARSERS = _parsers(build_parser())


@pytest.mark.parametrize("name,parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_every_command_and_flag_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description, f"{name} has no description"
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a former spelling, kept as a hidden alias
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {flag} has no help"


def test_the_command_tree_is_what_the_docs_list() -> None:
    assert [n for n, _ in PARSERS] == [
        "trainsim", "trainsim run", "trainsim validate", "trainsim runs", "trainsim fault",
        "trainsim fault inject", "trainsim fault clear", "trainsim pause", "trainsim resume",
        "trainsim restart", "trainsim drill", "trainsim webhook", "trainsim init",
        "trainsim backfill"]


def _trainsim(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", *argv], capture_output=True,
                          text=True, timeout=60)


def test_version_and_run_help() -> None:
    res = _trainsim("--version")
    assert (res.returncode, res.stdout) == (0, f"trainsim {__version__}\n")
    res = _trainsim("run", "--help")
    assert res.returncode == 0
    assert "Replay the configured runs as training jobs" in res.stdout
    assert "--log.level {debug,info,warning,error}" in res.stdout
    assert "the least severe events logged" in res.stdout
    assert "--token-file" not in res.stdout  # the hidden alias


def test_validate_checks_every_shipped_file_whatever_its_kind() -> None:
    res = _trainsim("validate", *map(str, SHIPPED_YAML))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    said = dict(line.split(": ok ", 1) for line in lines if not line.startswith("  "))
    assert set(said) == {str(p) for p in SHIPPED_YAML}
    # Under a config, one indented line per recording its runs replay.
    recordings = [line for line in lines if line.startswith("  ")]
    assert len(recordings) == 4 and all("/recordings/digits-" in r for r in recordings)
    drills = {p for p in said if "/drills/" in p}
    assert drills and all(said[p].startswith("(drill ") for p in drills)
    assert all(said[p].endswith(" runs)") for p in said if p not in drills)


def test_validate_names_a_drills_mistakes_by_line(tmp_path: Path) -> None:
    drill = tmp_path / "drill.yaml"
    drill.write_text("drill: broken\nconfig: nowhere.yaml\nexpect:\n"
                     "  - alert: TrainsimRunDiverging\n    firing_within: soon\n")
    good = REPO / "configs" / "drills" / "nan-loss.yaml"
    res = _trainsim("validate", str(good), str(drill))
    assert res.returncode == 2
    assert res.stdout.startswith(f"{good}: ok (drill nan-loss: ")
    lines = res.stderr.splitlines()
    assert lines and all(line.startswith(f"{drill}:") for line in lines), res.stderr
    assert any(line.startswith(f"{drill}:5: expect[0].firing_within:") for line in lines)
    assert "Traceback" not in res.stderr


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    res = _trainsim("validate", str(tmp_path / "gone.yaml"))
    assert res.returncode == 2
    assert res.stderr == f"{tmp_path / 'gone.yaml'}: cannot read: No such file or directory\n"


@pytest.mark.parametrize("argv,dest,value", [
    (["runs", "--token-file", "t"], "token_file", "t"),
    (["runs", "--web.control-token-file", "t"], "token_file", "t"),
    (["drill", "d.yaml", "--token-file", "t"], "token_file", "t"),
    (["fault", "inject", "r", "nan", "--for", "1m"], "duration", "1m"),
    (["fault", "inject", "r", "nan", "--duration", "1m"], "duration", "1m"),
    (["drill", "d.yaml", "--webhook-port", "9999"], "webhook_address", "127.0.0.1:9999"),
    (["drill", "d.yaml", "--webhook.listen-address", "127.0.0.1:9999"], "webhook_address",
     "127.0.0.1:9999"),
])
def test_one_name_per_concept_with_the_former_spellings_as_aliases(
        argv: list[str], dest: str, value: str) -> None:
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_a_warning_is_a_log_event_not_a_bare_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json
    import warnings

    import numpy as np

    from simulator import logs

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    out = io.StringIO()
    logs.configure("json", "info", out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        np.array([1e308]) * 10  # an overflow: numpy warns
    (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (event["event"], event["category"], event["message"]) == (
        "python_warning", "RuntimeWarning", "overflow encountered in multiply")
