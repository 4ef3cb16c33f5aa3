"""The package as users install it: the wheel carries the default config and the entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from simulator.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_default_config_and_the_console_script(tmp_path: Path) -> None:
    # Built as `pip install .` builds it: in an isolated environment from pyproject.toml.
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                          "-w", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = tmp_path.glob("trainsim-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "simulator/default.yaml" in names
        assert "simulator/py.typed" in names
        embedded = zf.read("simulator/default.yaml")
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert embedded == (REPO / "configs" / "default.yaml").read_bytes()
    assert [r.name for r in load_config(embedded, "wheel").runs] == [
        "lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"]
    assert "trainsim = simulator.cli:main" in scripts


def test_trainsim_validate_runs_from_any_working_directory(tmp_path: Path) -> None:
    # No config files around: `run`/`validate` must not depend on the working directory.
    res = subprocess.run([sys.executable, "-m", "simulator", "validate",
                          str(REPO / "configs" / "default.yaml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["runs"]
