"""The CLI client commands (`trainsim runs`, `fault`, `pause|resume|restart`) against a real
daemon process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator.drills.stack import free_port
from simulator.web.client import TOKEN_ENV
from tests.conftest import trainsim
from tests.test_api import CONFIG, RUNS, SPEED, TOKEN, runs


@pytest.fixture
def daemon(daemon_factory: Any, write_config: Any) -> Any:
    return daemon_factory(write_config(CONFIG), speed=SPEED)


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("trainsim: "), err
    return lines[0]


def test_runs_prints_a_table(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = trainsim(capsys, "runs", "--url", daemon.url)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "STEP", "LOSS", "ALERTS", "FAULTS"]
    assert [line.split()[0] for line in lines[1:]] == list(RUNS)
    assert all(line.split()[1] == "running" for line in lines[1:])


def test_runs_table_shows_faults_and_pauses(daemon: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, fault_id, _ = trainsim(capsys, "fault", "inject", "beta", "hang", "--url", daemon.url)
    trainsim(capsys, "pause", "gamma", "--url", daemon.url)
    _, out, _ = trainsim(capsys, "runs", "--url", daemon.url)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert f"hang#{fault_id.strip()}" in rows["beta"]
    assert "(paused)" in rows["gamma"] and "(paused)" not in rows["alpha"]


def test_runs_as_json(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = trainsim(capsys, "runs", "--url", daemon.url, "--output", "json")
    assert status == 0
    assert [r["run"] for r in json.loads(out)] == list(RUNS)


def test_fault_inject_prints_the_id_and_clear_ends_it(
        daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = trainsim(capsys, "fault", "inject", "alpha", "lr_spike", "--duration",
                                "2m", "--param", "factor=20", "--url", daemon.url)
    assert status == 0 and err == ""
    fault_id = out.strip()
    (fault,) = runs(daemon)["alpha"]["faults"]
    assert fault["id"] == fault_id and fault["params"] == {"factor": 20.0}
    assert fault["duration_seconds"] == 120.0
    status, out, _ = trainsim(capsys, "fault", "clear", "alpha", fault_id, "--url", daemon.url)
    assert status == 0 and fault_id in out
    assert runs(daemon)["alpha"]["faults"] == []
    # Cleared is ended: a second clear is the same 404 as GET on the fault.
    status, _, err = trainsim(capsys, "fault", "clear", "alpha", fault_id, "--url", daemon.url)
    assert status == 1
    assert one_line(err) == f"trainsim: 404 run 'alpha' has no active fault '{fault_id}'"


def test_the_former_duration_flag_still_works(daemon: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = trainsim(capsys, "fault", "inject", "alpha", "plateau", "--for", "90s",
                            "--url", daemon.url)
    assert status == 0
    assert runs(daemon)["alpha"]["faults"][0]["duration_seconds"] == 90.0


def test_fault_inject_with_steps(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = trainsim(capsys, "fault", "inject", "beta", "plateau", "--steps", "30",
                            "--url", daemon.url)
    assert status == 0
    assert runs(daemon)["beta"]["faults"][0]["duration_seconds"] == pytest.approx(3.0)


def test_pause_resume_restart(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = trainsim(capsys, "pause", "alpha", "--url", daemon.url)
    assert status == 0 and "alpha" in out and "(paused)" in out
    assert runs(daemon)["alpha"]["paused"] is True
    status, out, _ = trainsim(capsys, "resume", "alpha", "--url", daemon.url)
    assert status == 0 and "(paused)" not in out
    assert runs(daemon)["alpha"]["paused"] is False
    status, _, _ = trainsim(capsys, "restart", "alpha", "--url", daemon.url)
    assert status == 0
    assert runs(daemon)["alpha"]["restarts"] == 1


def test_unknown_run_exits_1_with_the_daemons_message(
        daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = trainsim(capsys, "pause", "nope", "--url", daemon.url)
    assert status == 1 and out == ""
    assert one_line(err) == "trainsim: 404 unknown run 'nope'"


def test_invalid_fault_exits_1_naming_the_field(daemon: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "fault", "inject", "alpha", "lr_spike", "--param",
                              "factor=-3", "--url", daemon.url)
    assert status == 1
    line = one_line(err)
    assert line.startswith("trainsim: 422 ") and line.endswith("(field: params.factor)")
    status, _, err = trainsim(capsys, "fault", "inject", "alpha", "meltdown", "--url",
                              daemon.url)
    assert status == 1 and one_line(err).endswith("(field: kind)")
    assert runs(daemon)["alpha"]["faults"] == []


def test_unknown_fault_exits_1(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "fault", "clear", "alpha", "404", "--url", daemon.url)
    assert status == 1 and one_line(err).startswith("trainsim: 404 ")


def test_run_names_are_sent_escaped(daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "pause", "alpha/../beta", "--url", daemon.url)
    assert status == 1 and one_line(err).startswith("trainsim: 400 invalid run name")
    assert not any(r["paused"] for r in runs(daemon).values())


def test_unreachable_daemon_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = trainsim(capsys, "runs", "--url", url)
    assert status == 1 and out == ""
    assert one_line(err).startswith(f"trainsim: cannot reach the daemon at {url}")


@pytest.mark.parametrize("argv", [
    ("fault", "inject", "alpha", "nan", "--param", "factor"),
    ("fault", "inject", "alpha", "nan", "--for", "1m", "--steps", "3"),
    ("fault", "inject", "alpha", "nan", "--steps", "0"),
    ("fault", "inject", "alpha"),
    ("pause",),
    ("runs", "--output", "yaml"),
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    status, _, err = trainsim(capsys, *argv)
    assert status == 2 and "Traceback" not in err


@pytest.mark.parametrize("url", ["127.0.0.1:9310", "ftp://x", "http://"])
def test_a_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], url: str) -> None:
    status, _, err = trainsim(capsys, "runs", "--url", url)
    assert status == 2 and "--url" in one_line(err)


def test_an_empty_token_file_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    status, _, err = trainsim(capsys, "runs", "--token-file", str(empty))
    assert status == 2 and "empty" in one_line(err)


@pytest.fixture
def token_daemon(daemon_factory: Any, write_config: Any, tmp_path: Path) -> Any:
    token_file = tmp_path / "daemon-token"
    token_file.write_text(TOKEN + "\n")
    return daemon_factory(write_config(CONFIG), speed=SPEED,
                          extra_args=("--web.control-token-file", str(token_file)))


def test_token_from_a_file(token_daemon: Any, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "client-token"
    token_file.write_text(f"  {TOKEN}\n")
    status, _, err = trainsim(capsys, "pause", "alpha", "--url", token_daemon.url,
                              "--web.control-token-file", str(token_file))
    assert status == 0, err
    assert runs(token_daemon)["alpha"]["paused"] is True


def test_token_from_the_environment(token_daemon: Any, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    status, out, _ = trainsim(capsys, "fault", "inject", "beta", "nan", "--url",
                              token_daemon.url)
    assert status == 0 and out.strip()


def test_missing_or_wrong_token_exits_1(token_daemon: Any, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "pause", "alpha", "--url", token_daemon.url)
    assert status == 1 and one_line(err).startswith("trainsim: 401 ")
    assert err.rstrip().endswith(f"pass the daemon's token with --web.control-token-file FILE "
                                 f"or the {TOKEN_ENV} environment variable")
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    status, _, err = trainsim(capsys, "pause", "alpha", "--url", token_daemon.url)
    assert status == 1 and one_line(err).startswith("trainsim: 401 ")
    assert "wrong" not in err and TOKEN not in err
    assert runs(token_daemon)["alpha"]["paused"] is False


def test_the_former_token_flag_still_works(token_daemon: Any, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "client-token"
    token_file.write_text(TOKEN)
    status, _, err = trainsim(capsys, "pause", "alpha", "--url", token_daemon.url,
                              "--token-file", str(token_file))
    assert status == 0, err
    assert runs(token_daemon)["alpha"]["paused"] is True


def test_runs_needs_no_token(token_daemon: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert trainsim(capsys, "runs", "--url", token_daemon.url)[0] == 0


def test_the_console_command_end_to_end(daemon: Any) -> None:
    done = subprocess.run([sys.executable, "-m", "simulator", "pause", "nope", "--url",
                           daemon.url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == "trainsim: 404 unknown run 'nope'\n" and done.stdout == ""
    done = subprocess.run([sys.executable, "-m", "simulator", "runs", "--url", daemon.url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith("RUN")
