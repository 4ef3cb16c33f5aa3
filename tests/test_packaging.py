"""The package as users install it: the wheel carries every shipped file from configs/ (the one
copy) and the entry points, and the installed package runs from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import resources
from simulator.config import load_config
from simulator.drills.stack import http_get
from tests.conftest import need_binary

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as `pip install .` builds it: in an isolated environment."""
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                          "-w", str(out), str(REPO)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (built,) = out.glob("trainsim-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv outside the repository with the wheel installed by pip; its dependencies
    come from the test environment's site-packages. Yields its python."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    res = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                          "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True).stdout
    # Dependencies only: .pth entries are appended after the venv's own site-packages, and
    # .pth files inside them are not read, so trainsim itself comes from the wheel.
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    yield python


def test_the_wheel_carries_every_shipped_file_and_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        shipped = {str(p.relative_to(REPO)): p for p in CONFIGS.rglob("*") if p.is_file()}
        assert shipped
        for rel, path in shipped.items():
            assert zf.read(f"simulator/{rel}") == path.read_bytes(), rel
        assert "simulator/py.typed" in names
        page = REPO / "simulator" / "web" / "static"
        for path in page.rglob("*"):
            if path.is_file():
                rel = path.relative_to(REPO)
                assert zf.read(str(rel)) == path.read_bytes(), rel
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    embedded = resources.read_bytes("default.yaml")
    assert [r.name for r in load_config(embedded, "wheel").runs] == [
        "lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"]
    assert "trainsim = simulator.cli:main" in scripts


def test_the_installed_package_reads_its_files_from_site_packages(installed: Path,
                                                                  tmp_path: Path) -> None:
    probe = ("import json, simulator, simulator.resources as r; print(json.dumps("
             "[simulator.__file__, str(r.shipped('prometheus', 'rules'))]))")
    res = subprocess.run([str(installed), "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60, check=True)
    package, rules = json.loads(res.stdout)
    assert str(REPO) not in package and str(REPO) not in rules
    assert "site-packages" in rules


def test_validate_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    res = subprocess.run([str(installed), "-m", "simulator", "validate",
                          *map(str, sorted(CONFIGS.glob("scenarios/*.yaml")))],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok (") == len(list(CONFIGS.glob("scenarios/*.yaml")))


def test_the_installed_daemon_serves_its_page_from_an_empty_directory(installed: Path,
                                                                     tmp_path: Path) -> None:
    proc = subprocess.Popen([str(installed), "-m", "simulator", "run", "--web.listen-address",
                             "127.0.0.1:0", "--log.format", "json"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            event = json.loads(line)
            if event["event"] == "listening":
                break
        url = event["url"]
        for path, marker in (("", b"<title>trainsim</title>"),
                             ("static/vendor/uPlot.iife.min.js", b"uPlot"),
                             ("api/v1/runs/lr-0.2/history", b'"columns"')):
            status, body = http_get(url + path)
            assert status == 200 and marker in body, path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.realstack
def test_a_drill_runs_from_the_installed_package_in_an_empty_directory(
        installed: Path, tmp_path: Path) -> None:
    # The drill's Prometheus and Alertmanager configs and rules come from the package data.
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    drill = CONFIGS / "drills" / "lr-spike-divergence.yaml"
    res = subprocess.run([str(installed), "-m", "simulator", "drill", str(drill),
                          "--output", "json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["passed"] is True
