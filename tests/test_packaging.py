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
import yaml

from simulator import resources
from simulator.config import load_config
from simulator.drills.stack import http_get
from tests.conftest import need_binary

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
DASHBOARDS = REPO / "dashboards"
# What `trainsim init` writes beside configs/ and dashboards/, by its name in the package.
STACK = {"docker-compose.yml": REPO / "docker-compose.yml", "Dockerfile": REPO / "Dockerfile",
         "dockerignore": REPO / ".dockerignore", "runbooks.md": REPO / "docs" / "runbooks.md"}


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
        # dashboards/generate.py writes the dashboards; it is a development script, not data.
        shipped = {str(p.relative_to(REPO)): p for p in (*CONFIGS.rglob("*"),
                                                          *DASHBOARDS.rglob("*"))
                   if p.is_file() and p.suffix != ".py"}
        assert shipped
        for rel, path in shipped.items():
            assert zf.read(f"simulator/{rel}") == path.read_bytes(), rel
        for rel, path in STACK.items():
            assert zf.read(f"simulator/stack/{rel}") == path.read_bytes(), rel
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


@pytest.fixture(scope="module")
def initialised(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trainsim init stack` run by the installed package from an empty directory."""
    cwd = tmp_path_factory.mktemp("empty")
    res = subprocess.run([str(installed), "-m", "simulator", "init", "stack"],
                         capture_output=True, text=True, cwd=cwd, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("wrote ") and " files into stack: " in res.stdout
    return cwd / "stack"


def test_init_writes_the_shipped_stack_as_the_repository_has_it(initialised: Path) -> None:
    for source, written in ((CONFIGS, initialised / "configs"),
                            (DASHBOARDS, initialised / "dashboards")):
        files = sorted(p.relative_to(source) for p in source.rglob("*")
                       if p.is_file() and p.suffix != ".py")
        assert files == sorted(p.relative_to(written) for p in written.rglob("*")
                               if p.is_file())
        for rel in files:
            if rel.parts[:2] == ("prometheus", "rules"):
                continue  # their runbook links are rebased (below)
            assert (written / rel).read_bytes() == (source / rel).read_bytes(), rel
    for name, target in (("docker-compose.yml", "docker-compose.yml"),
                         ("Dockerfile", "Dockerfile"), ("dockerignore", ".dockerignore"),
                         ("runbooks.md", "docs/runbooks.md")):
        assert (initialised / target).read_bytes() == STACK[name].read_bytes(), target
    # The compose file's bind mounts and build context all exist in the written directory.
    compose = yaml.safe_load((initialised / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (initialised / source).exists(), (name, source)
        if "build" in service:
            assert (initialised / service["build"] / "Dockerfile").is_file()


def test_every_file_init_wrote_validates_and_the_rules_pass_promtool(
        installed: Path, initialised: Path) -> None:
    yamls = sorted(map(str, (initialised / "configs").rglob("*.yaml")))
    res = subprocess.run([str(installed), "-m", "simulator", "validate", *yamls],
                         capture_output=True, text=True, cwd=initialised, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok (") == len(yamls)
    assert res.stdout.count(": ok (drill ") == len(list(CONFIGS.glob("drills/*.yaml")))
    promtool = need_binary("promtool")
    res = subprocess.run([promtool, "check", "config",
                          str(initialised / "configs" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    amtool = need_binary("amtool")
    res = subprocess.run([amtool, "check-config",
                          str(initialised / "configs" / "alertmanager" / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    for dashboard in (initialised / "dashboards").glob("*.json"):
        assert json.loads(dashboard.read_text())["uid"]


def test_the_image_source_init_wrote_builds_the_same_package(initialised: Path,
                                                             tmp_path: Path) -> None:
    # What the Dockerfile's `pip install .` does, minus Docker: build a wheel from the copy.
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                          str(tmp_path), str(initialised)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    (built,) = tmp_path.glob("trainsim-*.whl")
    with zipfile.ZipFile(built) as zf:
        for path in CONFIGS.rglob("*"):
            if path.is_file() and "rules" not in path.parts:
                rel = path.relative_to(REPO)
                assert zf.read(f"simulator/{rel}") == path.read_bytes(), rel
        assert "simulator/cli.py" in zf.namelist()
        assert any(n.startswith("simulator/web/static/vendor/") for n in zf.namelist())


def test_init_sets_the_runbook_base_in_one_place_and_never_overwrites_unasked(
        installed: Path, tmp_path: Path) -> None:
    base = "https://wiki.example.com/ml/runbooks.md"
    run = [str(installed), "-m", "simulator", "init", str(tmp_path / "s"), "--runbook-base-url",
           base]
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    rules = yaml.safe_load((tmp_path / "s/configs/prometheus/rules/trainsim-alerts.yml")
                           .read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 12
    assert [r["annotations"]["runbook_url"] for r in alerts] == [
        f"{base}#{r['alert'].lower()}" for r in alerts]
    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        f"trainsim: init: {tmp_path / 's'}/configs/alertmanager/alertmanager.yml exists "
        "(--force overwrites the files trainsim init writes)"]
    assert subprocess.run([*run, "--force"], capture_output=True, timeout=60).returncode == 0
    bad = subprocess.run([*run[:-1], "wiki/runbooks"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--runbook-base-url: must be an http(s) URL" in bad.stderr


@pytest.mark.realstack
def test_a_drill_of_the_rules_init_wrote_runs_from_that_directory(
        installed: Path, initialised: Path) -> None:
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    res = subprocess.run([str(installed), "-m", "simulator", "drill",
                          "configs/drills/nan-loss.yaml", "--rules", "configs/prometheus/rules",
                          "--alertmanager.config", "configs/alertmanager/alertmanager.yml",
                          "--output", "json"],
                         capture_output=True, text=True, cwd=initialised, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["passed"] is True
