"""``trainsim init``: write the whole shipped stack into a directory, from the installed package.

What it writes (every file from the package's data, ``configs/`` and ``dashboards/`` of the
source tree being the one copy):

- ``configs/``: the default config, scenarios, drills, Prometheus' config and rules,
  Alertmanager's config and the demo control token;
- ``dashboards/``: the Grafana dashboards and their provisioning;
- ``docker-compose.yml``, ``Dockerfile`` and ``.dockerignore``: the demo stack, whose image is
  built from ``simulator/`` and ``pyproject.toml``, a copy of the installed package (so the
  stack runs the very version that wrote it, with no repository and no index);
- ``docs/runbooks.md``: the runbooks the alerts' ``runbook_url`` point at.

``--runbook-base-url`` is the one place a user sets where those links point: every rule's
``runbook_url`` is written as that base plus ``#`` and the alert's anchor.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from simulator import __version__
from simulator.schema.errors import UsageError

# Where the shipped rules' runbook links point unless ``--runbook-base-url`` says otherwise:
# the project's runbooks, as declared in pyproject.toml's [project.urls].
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/trainsim/trainsim/blob/main/docs/runbooks.md"

_RUNBOOK = re.compile(r"^(\s*runbook_url:\s*)(\S+?)(#[a-z0-9-]+)\s*$", re.MULTILINE)
_SKIP = {"__pycache__", "configs", "dashboards", "stack"}


@dataclass(frozen=True)
class Written:
    """What ``init`` wrote: the files, relative to the target."""

    target: Path
    files: tuple[str, ...]


def rebase_runbooks(rules: str, base: str) -> str:
    """A rule file's text with every ``runbook_url`` under ``base`` (its anchor kept)."""
    return _RUNBOOK.sub(lambda m: f"{m.group(1)}{base}{m.group(3)}", rules)


def _plan(runbook_base_url: str) -> dict[str, bytes]:
    """Every file ``init`` writes: its path under the target, and its content."""
    package = files("simulator")
    out: dict[str, bytes] = {}

    def tree(node: Traversable, prefix: str, skip: frozenset[str] = frozenset()) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.name in skip or child.name.endswith((".pyc", ".pyo")):
                continue
            if child.is_dir():
                tree(child, f"{prefix}{child.name}/", skip)
            else:
                out[f"{prefix}{child.name}"] = child.read_bytes()

    tree(package.joinpath("configs"), "configs/")
    tree(package.joinpath("dashboards"), "dashboards/")
    tree(package, "simulator/", frozenset(_SKIP))
    stack = package.joinpath("stack")
    out["docker-compose.yml"] = stack.joinpath("docker-compose.yml").read_bytes()
    out["Dockerfile"] = stack.joinpath("Dockerfile").read_bytes()
    out[".dockerignore"] = stack.joinpath("dockerignore").read_bytes()
    out["docs/runbooks.md"] = stack.joinpath("runbooks.md").read_bytes()
    out["pyproject.toml"] = _pyproject().encode()
    out["README.md"] = _readme().encode()
    for name in [n for n in out if n.startswith("configs/prometheus/rules/")]:
        out[name] = rebase_runbooks(out[name].decode(), runbook_base_url).encode()
    return out


def _pyproject() -> str:
    """A pyproject.toml that builds the copied package as the installed one was built."""
    try:
        requires = metadata.requires("trainsim") or []
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        requires = []
    deps = [r for r in requires if "extra ==" not in r]
    listed = "".join(f'    "{d}",\n' for d in deps)
    return f'''# The trainsim package ({__version__}) as `trainsim init` copied it from its
# installation, for the image docker-compose.yml builds (see Dockerfile).
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "trainsim"
version = "{__version__}"
description = "Replays gradient-descent runs as mock ML training jobs with Prometheus metrics."
readme = "README.md"
requires-python = ">=3.11"
dependencies = [
{listed}]

[project.scripts]
trainsim = "simulator.cli:main"

[tool.setuptools.packages.find]
include = ["simulator", "simulator.*"]

[tool.setuptools.package-data]
simulator = ["py.typed", "configs/*", "configs/**/*", "web/static/*", "web/static/vendor/*"]
'''


def _readme() -> str:
    return f"""# trainsim stack

Written by `trainsim init` (trainsim {__version__}). Edit anything here and run it:

- `trainsim run --config.file configs/default.yaml`: the daemon alone;
- `GRAFANA_ADMIN_PASSWORD=change-me docker compose up --build`: the daemon, Prometheus,
  Alertmanager, the webhook receiver and Grafana (docker-compose.yml says where each listens);
- `trainsim validate configs/*.yaml configs/scenarios/*.yaml configs/drills/*.yaml`;
- `trainsim drill configs/drills/nan-loss.yaml --rules configs/prometheus/rules
  --alertmanager.config configs/alertmanager/alertmanager.yml`: a drill of these rules.

`configs/` holds the runs, scenarios, drills and the Prometheus and Alertmanager configs;
`dashboards/` the Grafana dashboards; `docs/runbooks.md` the runbooks the alerts link to;
`simulator/` and `pyproject.toml` the package the compose stack's image is built from.
"""


def init(target: Path, runbook_base_url: str | None = None, force: bool = False) -> Written:
    """Write the stack into ``target`` (created if missing). Refuses, naming the first one, to
    overwrite a file unless ``force``."""
    base = runbook_base_url or DEFAULT_RUNBOOK_BASE_URL
    if not re.fullmatch(r"https?://\S+", base) or "#" in base:
        raise UsageError(f"init: --runbook-base-url: must be an http(s) URL without a "
                         f"fragment, got {base!r}")
    plan = _plan(base)
    if target.exists() and not target.is_dir():
        raise UsageError(f"init: {target} exists and is not a directory")
    if not force:
        clash = next((name for name in plan if (target / name).exists()), None)
        if clash is not None:
            raise UsageError(f"init: {target / clash} exists (--force overwrites the files "
                             "trainsim init writes)")
    try:
        for name, content in plan.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        # As in the source tree: the package's configs are the configs/ beside it.
        link = target / "simulator" / "configs"
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                shutil.rmtree(link)
            else:
                link.unlink()
        link.symlink_to(Path("..") / "configs", target_is_directory=True)
    except OSError as exc:
        raise UsageError(f"init: cannot write into {target}: {exc.strerror or exc}") from None
    return Written(target, (*plan, "simulator/configs"))
