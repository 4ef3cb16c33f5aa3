"""Shared fixtures. Tests that need a real server binary fail (never skip) when it is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator import cli
from simulator.drills import stack

REPO = Path(__file__).resolve().parent.parent


def trainsim(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr). Usage errors exit via argparse."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def need_binary(*names: str) -> str:
    """Path of the first of ``names`` on PATH, or fail the test with how to install it."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} not on PATH: run `make test-deps` (Debian's prometheus "
                "and prometheus-alertmanager packages)", pytrace=False)


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write YAML text to a file in tmp_path and return its path."""
    def write(text: str, name: str = "config.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return write


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    """Start `trainsim run` subprocesses that are stopped at the end of the test."""
    started: list[stack.DaemonProcess] = []

    def start(config: Path | None = None, speed: float = 1.0,
              extra_args: tuple[str, ...] = ()) -> stack.DaemonProcess:
        d = stack.start_daemon(tmp_path, config=config, speed=speed, extra_args=extra_args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
        time.sleep(interval)
