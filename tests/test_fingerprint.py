"""Fingerprints of everything the simulation exports: any change to a single bit shows here.

Every shipped config (the embedded default, each scenario, the Kubernetes fleet, scaled down)
and a config that uses every landscape, optimizer, schedule, noise option and fault kind is
driven through a ``Daemon`` on a fake clock at irregular ticks, with pauses, a restart, a live
fault injection and a reload on the way. The per-run exposition after every tick and every
logged event (state transitions with their loss, restarts, fault windows, reloads) are hashed.
The digests in ``fingerprints.json`` were recorded from the code; a change that moves code
around must leave them as they are. A deliberate change of the series regenerates them with
``TRAINSIM_UPDATE_FINGERPRINTS=1 pytest tests/test_fingerprint.py`` and says why in its
commit message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.config import Config, load_config
from simulator.daemon import Daemon
from simulator.web.api import fault_from_body

REPO = Path(__file__).resolve().parent.parent
DIGESTS = Path(__file__).parent / "fingerprint" / "fingerprints.json"
WALL_EPOCH = 1_700_000_000.0
# Irregular ticks (mean about 1 s): a step's values must not depend on when it is computed.
TICKS = (0.37, 1.0, 2.5, 0.05, 0.9, 1.3)


def _fleet() -> Config:
    """The Kubernetes example fleet (deploy/kubernetes/configmap.yaml), 300 runs of it with
    their failures between 1 and 8 minutes."""
    doc = yaml.safe_load((REPO / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    text = (doc["data"]["fleet.yaml"].replace("count: 30000", "count: 300")
            .replace("between: [5m, 30m], duration: 5m", "between: [1m, 8m], duration: 2m"))
    assert "count: 300\n" in text and "between: [1m, 8m]" in text
    return load_config(text, "configmap.yaml")


def _file(path: Path) -> Config:
    """A config file, named by its path in the repository (the daemon logs the name)."""
    return load_config(path.read_bytes(), str(path.relative_to(REPO)))


CASES: dict[str, tuple[Any, float]] = {
    "default": (lambda: _file(REPO / "configs" / "default.yaml"), 700.0),
    **{f"scenario-{p.stem}": ((lambda p=p: _file(p)), 1300.0)
       for p in sorted((REPO / "configs" / "scenarios").glob("*.yaml"))},
    "k8s-fleet": (_fleet, 900.0),
    "every-kind": (lambda: _file(Path(__file__).parent / "fingerprint" / "every-kind.yaml"),
                   700.0),
}


class Recorder:
    """A structlog-shaped logger that keeps every event."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _record(self, level: str, event: str, **kw: Any) -> None:
        self.lines.append(f"{level} {event} {sorted(kw.items())!r}")

    def info(self, event: str, **kw: Any) -> None:
        self._record("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._record("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._record("error", event, **kw)


def _per_run(exposition: bytes) -> bytes:
    """The exposition without the process metrics and the build version."""
    keep = []
    for line in exposition.decode().splitlines():
        name = line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if not name.startswith("process_") and name != "trainsim_build_info":
            keep.append(line)
    return "\n".join(keep).encode()


def _reloaded(config: Config) -> Config:
    """The config with its last run removed and its first run's learning rate changed."""
    first = config.runs[0]
    changed = dataclasses.replace(first, optimizer=dataclasses.replace(
        first.optimizer, learning_rate=first.optimizer.learning_rate * 1.5))
    return dataclasses.replace(config, runs=(changed, *config.runs[1:-1]))


def fingerprint(config: Config, duration: float) -> str:
    now = [0.0]
    log = Recorder()
    daemon = Daemon(config, clock=lambda: now[0], wall=lambda: WALL_EPOCH + now[0], log=log)
    names = [s.name for s in config.runs]
    # A live injection the third run can take: a replay run refuses lr_spike.
    target = config.runs[2 % len(names)]
    live_kind = "loss_spike" if target.replays else "lr_spike"
    ops = {
        100.0: lambda: daemon.pause(names[0]),
        130.0: lambda: daemon.resume(names[0]),
        200.0: lambda: daemon.restart(names[1 % len(names)]),
        250.0: lambda: daemon.inject(names[2 % len(names)], fault_from_body(
            {"kind": live_kind, "duration": "20s", "params": {"factor": 20}},
            daemon.step_interval(names[2 % len(names)]))),
        400.0: lambda: daemon.apply(_reloaded(config)),
    }
    digest = hashlib.sha256()
    t, i = 0.0, 0
    while t < duration:
        now[0] = t
        for at in [a for a in ops if a <= t]:
            ops.pop(at)()
        daemon.tick()
        digest.update(f"t={t!r}\n".encode())
        digest.update(_per_run(daemon.exposition(openmetrics=False, gzipped=False)))
        t += TICKS[i % len(TICKS)]
        i += 1
    digest.update("\n".join(log.lines).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_series_and_events_match_their_recorded_fingerprint(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # configs are named by their path in the repository
    load, duration = CASES[case]
    got = fingerprint(load(), duration)
    recorded = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    if os.environ.get("TRAINSIM_UPDATE_FINGERPRINTS") == "1":
        recorded[case] = got
        DIGESTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    assert got == recorded.get(case), f"{case}: the exported series or events changed"
