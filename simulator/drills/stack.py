"""Start real trainsim, Prometheus and Alertmanager processes on free loopback ports.

Used by the test suite and the drill runner. Binaries come from PATH (Debian ships
``prometheus``, ``promtool``, ``prometheus-alertmanager`` and ``amtool``). Every ``start_*``
returns a handle whose ``close()`` stops the process and waits for it.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

STARTUP_TIMEOUT_SECONDS = 30.0


class MissingBinaryError(RuntimeError):
    """A required server binary is not on PATH."""


def last_words(output: str, limit: int = 240) -> str:
    """The line of a process' output that most likely says why it stopped: its last error
    line, else its last line, on one line and at most ``limit`` characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines
              if any(mark in line.lower() for mark in ("level=error", "err=", "error", "fatal"))]
    said = (errors or lines or ["(no output)"])[-1]
    fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', said))
    if "msg" in fields:  # a logfmt line (Prometheus, Alertmanager): what and why
        said = ": ".join(_unquote(fields[k]) for k in ("msg", "err") if k in fields)
    return said if len(said) <= limit else said[:limit - 1] + "…"


def _unquote(value: str) -> str:
    if value.startswith('"') and value.endswith('"'):
        return re.sub(r'\\(.)', r"\1", value[1:-1])
    return value


class StartupError(RuntimeError):
    """A process exited or did not become ready in time: the message is one line, ``output``
    everything the process said."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def find_binary(*names: str) -> str:
    """The first of ``names`` on PATH; otherwise MissingBinaryError names the Debian package."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise MissingBinaryError(f"none of {', '.join(names)} is on PATH; install Debian's "
                             "prometheus and prometheus-alertmanager packages (make test-deps)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None,
             ) -> tuple[int, bytes]:
    """GET a URL; returns (status, body) for any HTTP status."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http_ok(url: str, proc: subprocess.Popen[Any], what: str,
                 timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupError(f"{what} exited with status {proc.returncode} during start-up")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise StartupError(f"{what} not ready at {url} after {timeout:.0f}s")


@dataclass
class Process:
    """A child process with its URL and captured output."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    workdir: Path
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def close(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return int(self.proc.returncode)

    def output(self) -> str:
        """Everything the process wrote so far (stderr and stdout merged)."""
        return "".join(self.lines)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


P = TypeVar("P", bound=Process)


def _spawn(kind: type[P], name: str, argv: Sequence[str], workdir: Path,
           env: dict[str, str] | None = None) -> P:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, cwd=workdir,
                            env=env, bufsize=1)
    p = kind(name, proc, "", workdir)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            p.lines.append(line)

    p._reader = threading.Thread(target=pump, name=f"{name}-output", daemon=True)
    p._reader.start()
    return p


# --------------------------------------------------------------------------- trainsim


@dataclass
class DaemonProcess(Process):
    """A ``trainsim run`` child process."""

    address: str = ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines parsed so far."""
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def start_daemon(workdir: Path, config: Path | None = None, speed: float = 1.0,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 timeout: float = STARTUP_TIMEOUT_SECONDS) -> DaemonProcess:
    """Start ``python -m simulator run`` on a free port; returns once it is listening."""
    argv = [sys.executable, "-m", "simulator", "run", "--web.listen-address", "127.0.0.1:0",
            "--log.format", "json", "--speed", repr(speed), *extra_args]
    if config is not None:
        argv += ["--config.file", str(config)]
    d = _spawn(DaemonProcess, "trainsim", argv, workdir, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in d.events():
            if event.get("event") == "listening":
                d.address = str(event["address"])
                d.url = f"http://{d.address}"
                return d
        if d.proc.poll() is not None:
            d.close()
            raise StartupError(f"trainsim exited with status {d.proc.returncode}: "
                               f"{last_words(d.output())}", d.output())
        time.sleep(0.02)
    d.close()
    raise StartupError(f"trainsim did not log its address within {timeout:.0f}s: "
                       f"{last_words(d.output())}", d.output())


# --------------------------------------------------------------------------- Prometheus


@dataclass
class PrometheusProcess(Process):
    """A Prometheus child process with helpers for its HTTP API."""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus' error."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=10)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise RuntimeError(f"Prometheus rejected {path} {params}: {status} "
                               f"{payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (or a scalar wrapped in a list)."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [{"value": result}]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        return list(self.api("alerts")["alerts"])


def start_prometheus(workdir: Path, config_text: str, rule_files: Sequence[Path] = (),
                     port: int | None = None) -> PrometheusProcess:
    """Start Prometheus with ``config_text`` (rule files are copied next to it)."""
    binary = find_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    rules_dir = workdir / "rules"
    rules_dir.mkdir(exist_ok=True)
    for f in rule_files:
        shutil.copy(f, rules_dir / f.name)
    cfg = workdir / "prometheus.yml"
    cfg.write_text(config_text)
    port = port or free_port()
    argv = [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return _start_server(PrometheusProcess, "prometheus", argv, workdir, port)


def start_alertmanager(workdir: Path, config_text: str, port: int | None = None) -> Process:
    """Start Alertmanager (clustering off) with ``config_text``."""
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(config_text)
    port = port or free_port()
    argv = [binary, f"--config.file={cfg}", f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
            "--log.level=warn"]
    return _start_server(Process, "alertmanager", argv, workdir, port)


def _start_server(kind: type[P], name: str, argv: Sequence[str], workdir: Path,
                  port: int) -> P:
    """Spawn a server listening on ``port`` and wait until it says it is ready."""
    p = _spawn(kind, name, argv, workdir)
    p.url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{p.url}/-/ready", p.proc, name)
    except StartupError as exc:
        p.close()
        raise StartupError(f"{exc}: {last_words(p.output())}", p.output()) from None
    return p
