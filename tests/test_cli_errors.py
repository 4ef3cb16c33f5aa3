"""The command's mistakes and failures are one line on stderr with the documented exit status,
never a traceback: bad URLs and paths (2), servers that are gone or answer nonsense (1), drills
that cannot run (3), a reader that stops reading (141). Servers here are real sockets on
loopback: a daemon, or a few lines that answer what a daemon never would."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.config.shards import Shard, parse_shard
from simulator.drills.stack import free_port
from simulator.web.client import TOKEN_ENV
from tests.conftest import trainsim

REPO = Path(__file__).resolve().parent.parent
DRILL = REPO / "configs" / "drills" / "nan-loss.yaml"



def trainsim_process(*argv: str | bytes, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m simulator`` (bytes arguments reach it as the bytes they are); stdout and
    stderr are captured unless ``kwargs`` send them elsewhere."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.run([sys.executable, "-m", "simulator", *argv], text=True, timeout=60,
                          cwd=REPO, **options)


def one_line(err: str) -> str:
    """The only line of ``err``, which starts ``trainsim: ``."""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("trainsim: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


class FakeServer:
    """A socket on 127.0.0.1 that reads each request's head, answers ``answer`` and closes;
    ``requests`` keeps the heads it read."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # to see ``stopped`` soon
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def http_answer(body: Any, status: str = "200 OK") -> bytes:
    """A whole HTTP response with ``body`` as JSON."""
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data


@pytest.fixture
def fake_server() -> Iterator[Callable[[bytes], FakeServer]]:
    started: list[FakeServer] = []

    def start(answer: bytes) -> FakeServer:
        server = FakeServer(answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


RUN = {"run": "alpha", "state": "running", "step": 12, "loss": 0.5, "paused": False,
       "alerts": [], "faults": []}


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://127.0.0.1:0",
    "http://a b:9310", "http://127.0.0.1:9310/\r\nHost: elsewhere", "http://127.0.0.1\t:9310",
    "http://[::1", "http://a..b:9310",
])
def test_a_url_that_cannot_be_sent_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                    url: str) -> None:
    status, out, err = trainsim(capsys, "runs", "--url", url)
    assert status == 2 and out == ""
    assert one_line(err).startswith("trainsim: --url: ")


def test_a_server_that_does_not_answer_http_exits_1(fake_server: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(b"hello\n")
    status, out, err = trainsim(capsys, "runs", "--url", server.url)
    assert status == 1 and out == ""
    assert one_line(err) == (f"trainsim: unexpected answer from {server.url}: not HTTP; "
                             "is it a trainsim daemon?")


def test_a_server_that_closes_without_answering_exits_1(
        fake_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(b"")
    status, _, err = trainsim(capsys, "pause", "alpha", "--url", server.url)
    assert status == 1
    assert one_line(err).startswith(f"trainsim: cannot reach the daemon at {server.url}: ")


@pytest.mark.parametrize("body", [{}, [1], "runs", [{"run": "alpha"}],
                                  [{**RUN, "loss": "low"}], [{**RUN, "alerts": [1]}],
                                  [{**RUN, "faults": [{"kind": "nan"}]}]])
@pytest.mark.parametrize("output", ["table", "json"])
def test_runs_checks_the_shape_of_the_answer(fake_server: Any, capsys: pytest.CaptureFixture[str],
                                             body: Any, output: str) -> None:
    server = fake_server(http_answer(body))
    status, out, err = trainsim(capsys, "runs", "--url", server.url, "--output", output)
    assert status == 1 and out == ""
    assert one_line(err) == (f"trainsim: unexpected answer from {server.url}: not a list of "
                             "runs; is it a trainsim daemon?")


@pytest.mark.parametrize("argv,expected", [
    (("pause", "alpha"), "not an object with run and state"),
    (("fault", "inject", "alpha", "nan"), "not an object with id and kind"),
    (("fault", "clear", "alpha", "3"), "not an object with id and kind"),
])
def test_changes_check_the_shape_of_the_answer(fake_server: Any,
                                               capsys: pytest.CaptureFixture[str],
                                               argv: tuple[str, ...], expected: str) -> None:
    server = fake_server(http_answer([1]))
    status, _, err = trainsim(capsys, *argv, "--url", server.url)
    assert status == 1
    assert one_line(err) == (f"trainsim: unexpected answer from {server.url}: {expected}; "
                             "is it a trainsim daemon?")


def test_an_error_answer_from_another_server_is_one_line(
        fake_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(http_answer({"error": "line one\nline two\x1b[31m"},
                                     "500 Internal Server Error"))
    status, _, err = trainsim(capsys, "runs", "--url", server.url)
    assert status == 1
    assert one_line(err) == "trainsim: 500 line one line two [31m"


# --------------------------------------------------------------------------- credentials


def test_a_password_in_the_url_is_never_shown(capsys: pytest.CaptureFixture[str],
                                              fake_server: Any) -> None:
    closed = f"127.0.0.1:{free_port()}"
    nonsense = fake_server(b"hello\n").url.removeprefix("http://")
    wrong_shape = fake_server(http_answer({})).url.removeprefix("http://")
    for argv, status in [
        (("runs", "--url", f"http://user:secret@{closed}"), 1),
        (("runs", "--url", f"http://user:secret@{nonsense}"), 1),
        (("runs", "--url", f"http://user:secret@{wrong_shape}"), 1),
        (("pause", "alpha", "--url", f"http://user:secret@{wrong_shape}"), 1),
        (("runs", "--url", "http://user:secret@127.0.0.1:abc"), 2),
        (("runs", "--url", "http://user:secret@[::1"), 2),
        (("runs", "--url", "http:/user:secret@host"), 2),
        (("runs", "--url", "user:secret@host:9310"), 2),
    ]:
        got, _, err = trainsim(capsys, *argv)
        line = one_line(err)
        assert got == status, err
        assert "secret" not in line and "user" not in line and "***@" in line, line


def test_the_urls_credentials_go_as_basic_auth_and_not_to_the_host(
        fake_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(http_answer([RUN]))
    port = server.url.rsplit(":", 1)[1]
    status, out, _ = trainsim(capsys, "runs", "--url", f"http://us%40er:s3cr%3At@127.0.0.1:{port}")
    assert status == 0 and out.splitlines()[1].split()[0] == "alpha"
    (head,) = server.requests
    basic = base64.b64encode(b"us@er:s3cr:t").decode()
    assert f"Authorization: Basic {basic}\r\n".encode() in head
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in head


def test_a_bearer_token_is_sent_rather_than_the_urls_credentials(
        fake_server: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(http_answer({**RUN, "paused": True}))
    monkeypatch.setenv(TOKEN_ENV, "the-token")
    port = server.url.rsplit(":", 1)[1]
    status, out, _ = trainsim(capsys, "pause", "alpha", "--url", f"http://u:p@127.0.0.1:{port}")
    assert (status, out) == (0, "pause: alpha is running (paused)\n")
    (head,) = server.requests
    assert b"Authorization: Bearer the-token\r\n" in head and b"Basic" not in head


# --------------------------------------------------------------------------- run names


def test_a_run_name_that_is_not_utf8_is_a_usage_error() -> None:
    res = trainsim_process("resume", b"\xff", "--url", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 2, res.stderr
    assert one_line(res.stderr) == "trainsim: RUN: '\\udcff' is not valid UTF-8"


def test_a_run_name_is_sent_as_the_bytes_it_came_as(fake_server: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(http_answer({**RUN, "run": "é"}))
    # "é" as it arrives when the command line's bytes could not be decoded: escaped bytes
    name = "é".encode().decode("ascii", "surrogateescape")
    status, out, _ = trainsim(capsys, "restart", name, "--url", server.url)
    assert (status, out) == (0, "restart: é is running\n")
    assert server.requests[0].startswith(b"POST /api/v1/runs/%C3%A9/restart HTTP/1.1\r\n")


def test_a_run_name_that_is_not_utf8_never_reaches_the_daemon(
        fake_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = fake_server(http_answer(RUN))
    for name in ("\udcff", "\ud800"):
        status, _, err = trainsim(capsys, "pause", name, "--url", server.url)
        assert status == 2 and one_line(err) == f"trainsim: RUN: {name!r} is not valid UTF-8"
    status, _, err = trainsim(capsys, "fault", "clear", "alpha", "\udcff", "--url", server.url)
    assert status == 2 and one_line(err) == "trainsim: ID: '\\udcff' is not valid UTF-8"
    assert server.requests == []


# --------------------------------------------------------------------------- output


def test_a_reader_that_stops_reading_ends_the_command_quietly(fake_server: Any) -> None:
    server = fake_server(http_answer([{**RUN, "run": f"run-{i:04d}"} for i in range(500)]))
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -c 0`: whatever is written, nobody reads
    try:
        res = trainsim_process("runs", "--output", "json", "--url", server.url,
                               stdout=write_end)
    finally:
        os.close(write_end)
    assert (res.returncode, res.stderr) == (141, "")


# --------------------------------------------------------------------------- empty paths


@pytest.mark.parametrize("argv,flag", [
    (("run", "--config.file", ""), "--config.file"),
    (("run", "--config.file", " \t"), "--config.file"),
    (("run", "--web.control-token-file", ""), "--web.control-token-file"),
    (("runs", "--token-file", ""), "--token-file"),
    (("drill", str(DRILL), "--rules", ""), "--rules"),
    (("drill", str(DRILL), "--alertmanager.config", ""), "--alertmanager.config"),
    (("drill", str(DRILL), "--junit", ""), "--junit"),
    (("init", ""), "DIR"),
])
def test_an_empty_path_is_a_usage_error(argv: tuple[str, ...], flag: str) -> None:
    # run: without the check, the embedded demo would start serving (and this time out)
    res = trainsim_process(*argv, "--web.listen-address", "127.0.0.1:0"
                           ) if argv[0] == "run" else trainsim_process(*argv)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == f"trainsim: {flag}: empty path\n"


# --------------------------------------------------------------------------- drill


@pytest.mark.parametrize("argv,message", [
    (("--webhook-port", "99999"), "trainsim: --webhook-port: must be a port number from 0 to "
                                  "65535, got '99999'"),
    (("--webhook-port", "\u0669\u0669"), "trainsim: --webhook-port: must be a port number "
                                         "from 0 to 65535, got '\u0669\u0669'"),
])
def test_a_bad_webhook_port_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                   argv: tuple[str, ...], message: str) -> None:
    status, _, err = trainsim(capsys, "drill", str(DRILL), *argv)
    assert status == 2 and one_line(err) == message


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def test_a_webhook_address_in_use_means_the_drill_could_not_run(busy_port: int,
                                                                tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    res = trainsim_process("drill", str(DRILL), "--webhook-port", str(busy_port),
                           "--junit", str(junit))
    assert (res.returncode, res.stdout) == (3, "")
    assert one_line(res.stderr) == (
        f"trainsim: drill could not run: cannot listen on 127.0.0.1:{busy_port} "
        "(--webhook.listen-address): Address already in use")
    assert 'name="drill infrastructure"' in junit.read_text()


@pytest.mark.parametrize("where", ["missing/report.xml", "."])
def test_an_unwritable_junit_path_stops_the_drill_before_it_starts(
        busy_port: int, tmp_path: Path, where: str) -> None:
    junit = tmp_path / where
    # The webhook address is in use: had the drill started, it would have exited 3.
    res = trainsim_process("drill", str(DRILL), "--webhook-port", str(busy_port),
                           "--junit", str(junit))
    assert (res.returncode, res.stdout) == (2, "")
    assert one_line(res.stderr).startswith(f"trainsim: drill: --junit: cannot write {junit}: ")


def test_drill_urls_are_checked_by_their_flags_names(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "drill", str(DRILL), "--daemon", "http://127.0.0.1:9310",
                              "--prometheus", "http://u:secret@127.0.0.1:abc")
    assert status == 2
    assert one_line(err) == ("trainsim: drill: --prometheus: the port must be a number from 1 "
                             "to 65535, got 'http://***@127.0.0.1:abc'")


def test_a_password_in_a_drill_url_is_never_shown(fake_server: Any) -> None:
    prometheus = fake_server(b"hello\n").url.removeprefix("http://")
    res = trainsim_process("drill", str(DRILL), "--daemon",
                           f"http://u:secret@127.0.0.1:{free_port()}",
                           "--prometheus", f"http://u:secret@{prometheus}")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "secret" not in res.stderr + res.stdout
    assert res.stderr.splitlines()[-1].startswith("trainsim: drill could not run: ")
    assert "://***@127.0.0.1:" in res.stderr


# --------------------------------------------------------------------------- shards


# Arabic-Indic 0/3, fullwidth digits
@pytest.mark.parametrize("text", ["\u0660/\u0663", "0/\uff13", "\uff11/3", "0/3\n", "+0/3",
                                  "0_0/3"])
def test_a_shard_takes_only_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError, match="must be INDEX/COUNT"):
        parse_shard(text)


def test_a_shard_of_non_ascii_digits_is_one_line_and_exit_2(
        config_for_another_shard: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = trainsim(capsys, "validate", "--shard", "\u0660/\u0663",
                                str(config_for_another_shard))
    assert (status, out) == (2, "")
    assert one_line(err).startswith("trainsim: --shard: must be INDEX/COUNT")


def _runs_elsewhere(shard: Shard, n: int) -> list[str]:
    """``n`` run names that ``shard`` does not hold."""
    names = (f"run-{i}" for i in range(10_000))
    return [name for name in names if not shard.holds(name)][:n]


@pytest.fixture
def config_for_another_shard(write_config: Any) -> Path:
    runs = "".join(f"  - name: {name}\n" for name in _runs_elsewhere(Shard(7, 8), 3))
    path: Path = write_config(
        f"defaults: {{optimizer: {{learning_rate: 0.01}}}}\nruns:\n{runs}")
    return path


def test_a_daemon_whose_shard_holds_no_run_warns(daemon_factory: Any,
                                                 config_for_another_shard: Path) -> None:
    d = daemon_factory(config_for_another_shard, extra_args=("--shard", "7/8"))
    events = [e["event"] for e in d.events()]
    assert events.index("shard_empty") < events.index("listening")
    (warning,) = [e for e in d.events() if e["event"] == "shard_empty"]
    assert (warning["level"], warning["shard"]) == ("warning", "7/8")


def test_validate_says_a_shard_holds_0(config_for_another_shard: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = trainsim(capsys, "validate", "--shard", "7/8",
                                str(config_for_another_shard))
    assert (status, err) == (0, "")
    assert out == f"{config_for_another_shard}: ok (3 runs; shard 7/8 holds 0)\n"
