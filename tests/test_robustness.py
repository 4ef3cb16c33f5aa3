"""Bad input and rough handling: broken configs, reloads under load, kill -9, SIGTERM mid-scrape."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.config import ConfigError, load_file
from simulator.drills.stack import http_get, start_daemon
from tests.conftest import wait_for

CORPUS = sorted((Path(__file__).parent / "corpus" / "broken").glob("*.yaml"))

GOOD = """
defaults: {steps: 100000, step_interval: 50ms, init: 5.5, optimizer: {learning_rate: 0.001}}
runs:
  - name: steady
  - name: other-%d
"""


def test_the_corpus_covers_every_kind_of_breakage() -> None:
    names = {p.stem for p in CORPUS}
    for kind in ("syntax", "wrong-type", "unknown-key", "duplicate-name", "negative-duration",
                 "huge-integer", "huge-float", "non-utf8", "deep-nesting", "anchor-bomb"):
        assert any(n.startswith(kind) for n in names), kind


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_each_broken_config_is_rejected_with_file_and_line_quickly(path: Path) -> None:
    start = time.process_time()
    with pytest.raises(ConfigError) as info:
        load_file(path)
    cpu = time.process_time() - start
    # A guard against parser blow-ups (alias bombs, deep nesting), not a speed goal.
    assert cpu < 1.0, f"{path.name} took {cpu:.2f}s of CPU"
    for line in str(info.value).splitlines():
        assert re.match(rf"^{re.escape(str(path))}:\d+: ", line), line


def test_validate_rejects_the_whole_corpus_with_exit_2_and_no_traceback() -> None:
    res = subprocess.run([sys.executable, "-m", "simulator", "validate", *map(str, CORPUS)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    reported = {line.split(":", 1)[0] for line in res.stderr.splitlines()}
    assert reported == {str(p) for p in CORPUS}


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_repeated_sighup_under_scrape_load_loses_no_scrape_and_no_progress(
        tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(GOOD % 0)
    d = start_daemon(tmp_path, config=cfg, speed=1.0)
    steady = "trainsim_steps_total[('run', 'steady')]"
    failures: list[str] = []
    progress: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                values = _scrape(d.url)
                progress.append(values[steady])
            except Exception as exc:  # every failure is recorded and fails the test
                failures.append(repr(exc))

    threads = [threading.Thread(target=scraper) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for i in range(20):
            # Alternate good reloads (the steady run unchanged, another replaced) and bad ones.
            cfg.write_text(GOOD % i if i % 3 else "runs: [oops\n")
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=i: len([e for e in d.events()
                                      if e.get("event") in ("config_reloaded",
                                                            "config_rejected")]) > n,
                     what=f"reload {i}")
    finally:
        stop.set()
        for t in threads:
            t.join()
        d.close()
    assert failures == []
    assert len(progress) > 20
    # Scrapes from 4 threads interleave, so compare each thread-agnostic sample with the
    # maximum seen before it minus one in-flight step: progress never goes back by more.
    assert max(progress) > min(progress)
    high = 0.0
    for value in progress:
        assert value >= high - 1, (value, high)
        high = max(high, value)
    rejected = [e for e in d.events() if e.get("event") == "config_rejected"]
    assert len(rejected) == 7


def test_kill_9_then_restart_on_the_same_port_starts_clean(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, speed=60)
    wait_for(lambda: (_scrape(d.url).get("trainsim_steps_total[('run', 'lr-0.2')]") or 0) > 5,
             what="some progress")
    address = d.address
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=5)
    d.close()
    # A new daemon binds the port the killed one held and starts from scratch.
    argv = [sys.executable, "-m", "simulator", "run", "--web.listen-address", address,
            "--log.format", "json"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{address}"
        wait_for(lambda: _healthy(url), what="restarted daemon")
        values = _scrape(url)
        assert values["trainsim_steps_total[('run', 'lr-0.2')]"] <= 2
        assert values["trainsim_run_restarts_total[('run', 'lr-0.2')]"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def _healthy(url: str) -> bool:
    try:
        return http_get(f"{url}/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def test_sigterm_during_a_scrape_finishes_the_scrape(tmp_path: Path) -> None:
    # A fleet large enough that rendering a scrape takes a noticeable moment.
    lines = ["defaults: {steps: 1000, optimizer: {learning_rate: 0.1}}", "runs:"]
    lines += [f"  - name: run-{i:05d}" for i in range(20000)]
    cfg = tmp_path / "big.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    d = start_daemon(tmp_path, config=cfg, speed=1, timeout=120)
    try:
        results: list[Any] = []

        def scrape() -> None:
            try:
                with urllib.request.urlopen(f"{d.url}/metrics", timeout=30) as resp:
                    results.append((resp.status, resp.read()))
            except Exception as exc:
                results.append(exc)

        t = threading.Thread(target=scrape)
        t.start()
        time.sleep(0.02)  # let the request reach the server before the signal
        d.proc.send_signal(signal.SIGTERM)
        t.join(timeout=30)
        assert d.proc.wait(timeout=10) == 0
    finally:
        d.close()
    assert len(results) == 1 and isinstance(results[0], tuple), results
    status, body = results[0]
    assert status == 200
    samples = [s for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
               if s.name == "trainsim_loss"]
    assert len(samples) == 20000


def _large_config(runs: int) -> str:
    """A valid config of ``runs`` runs, five nodes each: seconds to parse and build."""
    return "defaults: {steps: 100000, step_interval: 1s, optimizer: {learning_rate: 0.01}}\n" \
        "runs:\n" + "".join(f"  - {{name: big-{i}, init: 5.5}}\n" for i in range(runs))


def _steps(url: str, run: str) -> float:
    return _scrape(url)[f"trainsim_steps_total[('run', '{run}')]"]


def _events(d: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == name]


def test_a_reload_parses_off_the_stepping_thread_and_sigterm_is_honoured_meanwhile(
        tmp_path: Path) -> None:
    config = tmp_path / "runs.yaml"
    config.write_text(GOOD % 1)
    d = start_daemon(tmp_path, config=config)
    try:
        config.write_text(_large_config(20_000))  # 100,000 nodes: seconds to parse
        d.proc.send_signal(signal.SIGHUP)
        before = _steps(d.url, "steady")
        # While the big file parses, the runs keep stepping and the daemon answers.
        wait_for(lambda: _steps(d.url, "steady") >= before + 10, what="steps during the parse")
        assert _events(d, "config_reloaded") == [] and _events(d, "config_rejected") == []
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=10) == 0
        assert _events(d, "stopped")
    finally:
        d.close()


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "directory"])
def test_a_reload_from_what_is_not_a_regular_file_is_rejected_and_runs_go_on(
        tmp_path: Path, target: str) -> None:
    config = tmp_path / "runs.yaml"
    config.write_text(GOOD % 1)
    d = start_daemon(tmp_path, config=config)
    try:
        config.unlink()
        if target == "fifo":
            os.mkfifo(config)
        elif target == "directory":
            config.mkdir()
        else:
            config.symlink_to(target)
        d.proc.send_signal(signal.SIGHUP)
        (rejected,) = wait_for(lambda: _events(d, "config_rejected"), what="the rejection")
        assert rejected["errors"] == [f"{config}: cannot read: not a regular file"]
        before = _steps(d.url, "steady")
        wait_for(lambda: _steps(d.url, "steady") > before, what="steps after the rejection")
        assert _scrape(d.url)["trainsim_config_last_reload_successful[]"] == 0.0
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=10) == 0
    finally:
        d.close()


def test_signals_during_start_up_neither_kill_the_daemon_nor_print_a_traceback(
        tmp_path: Path) -> None:
    config = tmp_path / "runs.yaml"
    config.write_text(_large_config(20_000))
    argv = [sys.executable, "-m", "simulator", "run", "--config.file", str(config),
            "--web.listen-address", "127.0.0.1:0", "--log.format", "json"]
    # SIGHUP while the config loads: the daemon starts, then reloads.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # past the interpreter's start-up, into the load
        proc.send_signal(signal.SIGHUP)
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if '"event": "config_reloaded"' in line:
                break
        assert any('"event": "listening"' in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    # SIGINT while the config loads: a clean stop, as Ctrl-C should be.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert '"event": "stopped"' in err.splitlines()[-1]
    assert '"event": "listening"' not in err


def test_a_document_over_the_node_limit_is_refused_before_it_is_composed(
        tmp_path: Path) -> None:
    # 100,000 runs, 5 MB: refused at its 200,001st node, with the memory of the events read so
    # far, not of the whole composed document (which took 563 MB).
    path = tmp_path / "huge.yaml"
    path.write_text("runs:\n" + "".join(f"  - name: r{i}\n    optimizer: {{learning_rate: 0.1}}\n"
                                        for i in range(100_000)))
    # VmHWM: the peak of this process' own memory (ru_maxrss would carry the test runner's
    # peak over from before the exec).
    probe = ("import sys\nfrom simulator.config import ConfigError, load_file\n"
             "try:\n    load_file(sys.argv[1])\nexcept ConfigError as exc:\n    print(exc)\n"
             "print(next(line.split()[1] for line in open('/proc/self/status')\n"
             "           if line.startswith('VmHWM:')))\n")
    res = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                         text=True, timeout=120)
    message, peak_kib = res.stdout.splitlines()
    assert message.startswith(f"{path}:") and message.endswith(
        ": document too large: more than 200000 nodes")
    assert int(message.split(":")[1]) < 100_000  # stopped part-way through the file
    assert int(peak_kib) < 150 * 1024, f"peak RSS {int(peak_kib) / 1024:.0f} MiB"
