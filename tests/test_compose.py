"""The docker-compose stack and the Dockerfile, checked without a Docker engine.

The files are parsed and cross-checked against each other and against the repo: mounts exist,
Prometheus scrapes the service compose runs, images are pinned, the image runs `trainsim` as a
non-root user with a health check. The backfill's path through the stack (trainsim-backfill's
command, then the promtool line of Prometheus' start script) runs here for real, with Debian's
promtool and Prometheus.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from simulator import cli
from simulator.drills.stack import start_prometheus
from simulator.durations import parse_prometheus
from tests.conftest import need_binary

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_CONFIG = REPO / "configs" / "prometheus" / "prometheus.yml"
DATASOURCES = REPO / "dashboards" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = REPO / "dashboards" / "provisioning" / "dashboards" / "trainsim.yml"
SERVICES = {"trainsim", "trainsim-webhook", "trainsim-backfill", "prometheus", "alertmanager",
            "grafana"}
# Services that run once and exit (others depend on their completing successfully).
ONE_SHOT = {"trainsim-backfill"}
PINNED_TAG = re.compile(r"v?\d+\.\d+\.\d+([.-][\w.]+)?")
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?P<op>:?[-?])(?P<arg>[^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path as written, container path) of a service's bind mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append((source, target))
    return mounts


def _host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repo file a container path maps to through the service's bind mounts."""
    wanted = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, target in _bind_mounts(service):
        t = PurePosixPath(target)
        if wanted == t or t in wanted.parents:
            depth = len(t.parts)
            if best is None or depth > best[0]:
                best = (depth, REPO / source / wanted.relative_to(t))
    return best[1] if best else None


def _flag(argv: list[str], name: str) -> str | None:
    """Value of `--name value` or `--name=value` in an argument list."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


# ------------------------------------------------------------------------------ Dockerfile


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def _last(keyword: str) -> str:
    found = [args for k, args in _instructions() if k == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def _cmd_listen_port() -> int:
    address = _flag(_exec_form(_last("CMD")), "--web.listen-address")
    assert address, "CMD sets no --web.listen-address"
    return int(address.rsplit(":", 1)[1])


def test_dockerfile_entrypoint_is_the_trainsim_console_script() -> None:
    assert _exec_form(_last("ENTRYPOINT")) == ["trainsim"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "trainsim" in scripts


def test_dockerfile_cmd_runs_the_daemon_on_all_interfaces() -> None:
    cmd = _exec_form(_last("CMD"))
    assert cmd[0] == "run"
    assert _flag(cmd, "--web.listen-address") == "0.0.0.0:9310"


def test_dockerfile_base_image_is_pinned_by_version() -> None:
    image = _last("FROM").split()[0]
    name, _, tag = image.partition("@")[0].partition(":")
    assert name == "python"
    assert tag.startswith("3.11.") and PINNED_TAG.match(tag), image
    assert "slim" in tag, image


def test_dockerfile_installs_the_package_with_pip() -> None:
    runs = [args for k, args in _instructions() if k == "RUN"]
    assert any(re.search(r"\bpip install\b.*(\s\.|\s/\S+)", r) for r in runs), runs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    user = _last("USER").split(":")[0]
    assert user not in {"root", "0"}
    # USER comes after every RUN, so nothing at run time happens as root.
    keywords = [k for k, _ in _instructions()]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


def test_dockerfile_healthcheck_probes_healthz_on_the_cmd_port() -> None:
    args = _last("HEALTHCHECK")
    assert "CMD" in args.split()
    assert "urllib" in args, "python:slim has no curl or wget"
    assert f"127.0.0.1:{_cmd_listen_port()}/healthz" in args


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    copied = [args.split()[:-1] for k, args in _instructions() if k == "COPY"]
    for sources in copied:
        for source in sources:
            path = source.rstrip("/")
            assert (REPO / path).exists(), source
            assert path not in ignored, f"{source} is copied but excluded by .dockerignore"
    assert {".git", "tests"} <= ignored


# ---------------------------------------------------------------------------- compose file


def test_compose_file_declares_the_six_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_trainsim_service_is_built_from_the_repo_dockerfile(services: dict[str, Any]) -> None:
    build = services["trainsim"]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (REPO / context).resolve() == REPO
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context / dockerfile).is_file()


def test_trainsim_service_keeps_the_image_entrypoint(services: dict[str, Any]) -> None:
    service = services["trainsim"]
    assert "entrypoint" not in service
    argv = _argv(service.get("command", _exec_form(_last("CMD"))))
    assert argv[0] == "run"
    config = _flag(argv, "--config.file")
    if config is not None:
        host = _host_path(service, config)
        assert host is not None and host.is_file(), config


def test_images_are_pinned_by_version(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and PINNED_TAG.fullmatch(tag), f"{name}: {image}"


def test_expected_official_images(services: dict[str, Any]) -> None:
    assert services["prometheus"]["image"].startswith("prom/prometheus:v2.")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:v0.27.")
    assert services["grafana"]["image"].startswith("grafana/grafana:11.")


def test_every_bind_mounted_path_exists_in_the_repo(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, target in _bind_mounts(service):
            assert source.startswith("./"), f"{name}: mount {source} is not repo-relative"
            assert (REPO / source).exists(), f"{name}: {source} -> {target} does not exist"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
                assert volume.split(":")[0] in declared, f"{name}: {volume}"


def test_configs_are_mounted_read_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("."):
                assert volume.endswith(":ro"), f"{name}: {volume}"


def test_ports_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["healthcheck"] == {"disable": True}, name  # it serves nothing
            assert service["restart"] == "no", name
            continue
        if "build" in service and "healthcheck" not in service:
            assert _last("HEALTHCHECK"), name
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name


def test_depends_on_waits_for_healthy_services(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert cond.get("condition") == wanted, f"{name} -> {dep}"


def test_service_configs_map_to_repo_files(services: dict[str, Any]) -> None:
    for name, flag in (("prometheus", "--config.file"), ("alertmanager", "--config.file")):
        path = _flag(_argv(services[name]["command"]), flag)
        assert path, f"{name} has no {flag}"
        host = _host_path(services[name], path)
        assert host is not None, f"{name}: {path} is not inside a bind mount"
        assert host.relative_to(REPO).parts[0] == "configs", host
        if name == "prometheus" or host.exists():  # alertmanager.yml lands with alerting
            assert host.is_file(), host


# ----------------------------------------------------------------- Prometheus <-> compose


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    if not PROMETHEUS_CONFIG.exists():
        pytest.skip(f"{PROMETHEUS_CONFIG.relative_to(REPO)} not written yet")
    data = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def _container_port(service: dict[str, Any], default: int) -> int:
    argv = _argv(service.get("command", []))
    address = _flag(argv, "--web.listen-address")
    return int(address.rsplit(":", 1)[1]) if address else default


def test_prometheus_scrapes_the_trainsim_service(
    prometheus_config: dict[str, Any], services: dict[str, Any]
) -> None:
    port = _container_port(services["trainsim"], _cmd_listen_port())
    targets = {
        t
        for sc in prometheus_config["scrape_configs"]
        for static in sc.get("static_configs", [])
        for t in static.get("targets", [])
    }
    assert f"trainsim:{port}" in targets, targets


def test_prometheus_alerts_go_to_the_alertmanager_service(
    prometheus_config: dict[str, Any], services: dict[str, Any]
) -> None:
    port = _container_port(services["alertmanager"], 9093)
    targets = {
        t
        for am in prometheus_config["alerting"]["alertmanagers"]
        for static in am.get("static_configs", [])
        for t in static.get("targets", [])
    }
    assert f"alertmanager:{port}" in targets, targets


def test_prometheus_rule_files_resolve_inside_the_mount(
    prometheus_config: dict[str, Any], services: dict[str, Any]
) -> None:
    service = services["prometheus"]
    config_path = PurePosixPath(_flag(_argv(service["command"]), "--config.file") or "")
    for pattern in prometheus_config.get("rule_files", []):
        container = config_path.parent / pattern  # relative to the config file
        host_dir = _host_path(service, str(container.parent))
        assert host_dir is not None, f"{pattern} is outside every bind mount"
        assert sorted(host_dir.glob(container.name)), f"{pattern} matches no file"


# -------------------------------------------------------------------------------- Grafana


def test_grafana_admin_password_comes_from_the_environment(services: dict[str, Any]) -> None:
    value = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    m = INTERPOLATION.fullmatch(value)
    assert m and m["name"] == "GRAFANA_ADMIN_PASSWORD", value
    assert m["op"] == ":?", "no default password: compose must refuse to start without one"


def test_grafana_allows_anonymous_viewers_only(services: dict[str, Any]) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"


def test_grafana_home_dashboard_is_the_fleet_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    path = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host = _host_path(grafana, path)
    assert host is not None and host.is_file(), path
    assert json.loads(host.read_text())["uid"] == "trainsim-fleet"


def test_grafana_provisioning_is_mounted_where_grafana_reads_it(
    services: dict[str, Any]
) -> None:
    grafana = services["grafana"]
    for kind, file in (("datasources", DATASOURCES), ("dashboards", DASHBOARD_PROVIDERS)):
        host = _host_path(grafana, f"/etc/grafana/provisioning/{kind}/{file.name}")
        assert host is not None and host.resolve() == file.resolve(), kind


def test_dashboard_provider_reads_the_mounted_dashboards(services: dict[str, Any]) -> None:
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert len(providers) == 1
    folder = _host_path(services["grafana"], providers[0]["options"]["path"])
    assert folder is not None and folder.resolve() == (REPO / "dashboards").resolve()
    assert sorted(folder.glob("*.json")), "no dashboards where the provider looks"


def test_datasource_points_at_the_prometheus_service(services: dict[str, Any]) -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prom = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prom) == 1 and prom[0]["isDefault"] is True
    port = _container_port(services["prometheus"], 9090)
    assert prom[0]["url"] == f"http://prometheus:{port}"
    alertmanager = [d for d in datasources if d["type"] == "alertmanager"]
    port = _container_port(services["alertmanager"], 9093)
    assert [d["url"] for d in alertmanager] == [f"http://alertmanager:{port}"]


def test_datasource_interval_matches_the_scrape_interval(
    prometheus_config: dict[str, Any]
) -> None:
    """Grafana derives $__rate_interval from it; a mismatch breaks rates at the edges."""
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prom = next(d for d in datasources if d["type"] == "prometheus")
    job = next(sc for sc in prometheus_config["scrape_configs"] if sc["job_name"] == "trainsim")
    interval = job.get("scrape_interval", prometheus_config["global"]["scrape_interval"])
    assert prom["jsonData"]["timeInterval"] == interval


# ------------------------------------------------------------------------------- backfill

BACKFILL_MARKER = "/prometheus/.trainsim-backfilled"


def _named_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Named volume -> (container path, mode) of a service's short-syntax volume mounts."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and not volume.startswith((".", "/", "~")):
            name, target, *mode = volume.split(":")
            out[name] = (target, mode[0] if mode else "rw")
    return out


def _start_script(service: dict[str, Any]) -> tuple[str, list[str]]:
    """Prometheus' start script as sh runs it (compose's ``$$`` unescaped), and its arguments
    ($0 first)."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script, *args = service["command"]
    return script.replace("$$", "$"), args


def test_backfill_runs_the_image_on_the_daemons_config(services: dict[str, Any]) -> None:
    backfill, daemon = services["trainsim-backfill"], services["trainsim"]
    assert backfill["build"] == daemon["build"] and "entrypoint" not in backfill
    argv = _argv(backfill["command"])
    assert argv[0] == "backfill"
    # The window ends where the live daemon begins (--end now), and reaches back as far as the
    # daemon starts into its runs: the live series go on from the backfilled ones.
    assert _flag(argv, "--end") is None
    elapsed = _flag(_argv(daemon["command"]), "--start.elapsed")
    assert elapsed is not None and _flag(argv, "--duration") == elapsed
    assert parse_prometheus(elapsed) >= 6 * 3600 * 1000  # hours of history
    mine = _host_path(backfill, _flag(argv, "--config.file") or "")
    theirs = _host_path(daemon, _flag(_argv(daemon["command"]), "--config.file") or "")
    assert mine is not None and mine == theirs and mine.is_file()


def test_the_backfill_file_reaches_prometheus_through_a_named_volume(
        services: dict[str, Any]) -> None:
    output = PurePosixPath(_flag(_argv(services["trainsim-backfill"]["command"]), "--output")
                           or "")
    writer = _named_mounts(services["trainsim-backfill"])
    reader = _named_mounts(services["prometheus"])
    shared = [v for v, (target, _) in writer.items() if PurePosixPath(target) in output.parents]
    assert len(shared) == 1, writer
    volume = shared[0]
    assert writer[volume][1] == "rw" and reader[volume][1] == "ro"
    script, _ = _start_script(services["prometheus"])
    where = PurePosixPath(reader[volume][0]) / output.relative_to(writer[volume][0])
    assert f" {where} " in script


def test_the_image_owns_the_backfill_volumes_mount_point(services: dict[str, Any]) -> None:
    """A new named volume starts as a copy of the image's directory at its mount point, owner
    included: the image's user must own it to write there."""
    target, _ = _named_mounts(services["trainsim-backfill"])["backfill"]
    user = _last("USER").split(":")[0]
    runs = " && ".join(args for k, args in _instructions() if k == "RUN")
    assert re.search(rf"install -d -o {user} -g {user} -m 0755 {re.escape(target)}(\s|$)", runs)


def test_prometheus_waits_for_the_backfill_and_then_execs_itself(
        services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["depends_on"]["trainsim-backfill"] == {
        "condition": "service_completed_successfully"}
    script, args = _start_script(prometheus)
    assert script.rstrip().splitlines()[-1].strip() == 'exec /bin/prometheus "$@"'
    assert args[0] == "prometheus" and all(a.startswith("--") for a in args[1:])
    assert f"--storage.tsdb.path={PurePosixPath(BACKFILL_MARKER).parent}" in args
    assert BACKFILL_MARKER in script


def _local_script(script: str, backfill_dir: Path, data_dir: Path) -> str:
    """The start script with the containers' paths replaced by local ones, and Prometheus by a
    printf of its arguments."""
    assert script.count("/bin/prometheus") == 1
    script = script.replace('exec /bin/prometheus "$@"', "exec printf '%s\\n' \"$@\"")
    return script.replace("/backfill/", f"{backfill_dir}/").replace("/prometheus", str(data_dir))


def test_the_stacks_backfill_command_and_promtool_line_give_prometheus_its_history(
        services: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_binary("promtool")
    need_binary("prometheus")
    backfill_dir, workdir = tmp_path / "backfill", tmp_path / "prom"
    backfill_dir.mkdir()
    argv = _argv(services["trainsim-backfill"]["command"])
    config = _host_path(services["trainsim-backfill"], _flag(argv, "--config.file") or "")
    local = [str(config) if a == _flag(argv, "--config.file") else
             a.replace("/backfill/", f"{backfill_dir}/") for a in argv]
    end = "2025-06-01T06:00:00Z"
    assert cli.main([*local, "--end", end]) == 0
    # promtool cuts blocks at 2-hour boundaries: one per boundary range the window touches,
    # and the last instant (06:00, on a boundary) alone in a block of its own.
    two_hours, end_ms = 7_200_000, 1_748_757_600_000
    start_ms = end_ms - parse_prometheus(_flag(argv, "--duration") or "")
    expected_blocks = end_ms // two_hours - start_ms // two_hours + 1
    capsys.readouterr()
    script, args = _start_script(services["prometheus"])
    script = _local_script(script, backfill_dir, workdir / "data")
    for _ in range(2):  # the second start finds the marker and leaves the blocks alone
        res = subprocess.run(["sh", "-c", script, *args], capture_output=True, text=True,
                             timeout=120)
        assert (res.returncode, res.stderr) == (0, "")
        assert res.stdout.splitlines() == args[1:]
        blocks = sorted(p.name for p in (workdir / "data").iterdir() if p.is_dir())
        assert len(blocks) == expected_blocks
    assert (workdir / "data" / PurePosixPath(BACKFILL_MARKER).name).is_file()
    with start_prometheus(workdir, "global: {scrape_interval: 15s}\n") as prom:
        up = prom.api("query", query="up", time="1748746800")["result"]  # 03:00
        assert [r["metric"] for r in up] == [
            {"__name__": "up", "job": "trainsim", "instance": "trainsim:9310"}]
        runs = prom.api("query", query="count by (run) (trainsim_loss)",
                        time="1748746800")["result"]
        assert len(runs) == 4


def test_a_failed_backfill_leaves_prometheus_to_start_without_it(
        services: dict[str, Any], tmp_path: Path) -> None:
    need_binary("promtool")
    backfill_dir, data = tmp_path / "backfill", tmp_path / "data"
    backfill_dir.mkdir()
    (backfill_dir / "trainsim.om").write_text("# TYPE up gauge\nup 1 1700000000\n")  # no EOF
    script, args = _start_script(services["prometheus"])
    res = subprocess.run(["sh", "-c", _local_script(script, backfill_dir, data), *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.splitlines() == args[1:]
    assert "starting without the history" in res.stderr
    assert not (data / PurePosixPath(BACKFILL_MARKER).name).exists()
