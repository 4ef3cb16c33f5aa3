"""`trainsim run` as a real process: HTTP endpoints, SIGHUP reloads, SIGTERM, promtool."""

from __future__ import annotations

import gzip
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from simulator.drills.stack import http_get
from tests.conftest import need_binary, wait_for

TWO_RUNS = """
defaults: {steps: 100000, step_interval: 100ms, init: 5.5, optimizer: {learning_rate: 0.01}}
runs:
  - name: keep
  - name: drop
"""
RELOADED = """
defaults: {steps: 100000, step_interval: 100ms, init: 5.5, optimizer: {learning_rate: 0.01}}
runs:
  - name: keep
  - name: added
"""


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(f"{url}/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(url: str, name: str, **labels: str) -> float | None:
    return samples(url).get((name, tuple(sorted(labels.items()))))


def events(d: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == name]


def test_metrics_healthz_and_landing_page_on_the_default_config(daemon_factory: Any) -> None:
    d = daemon_factory(speed=10)
    status, body = http_get(f"{d.url}/metrics")
    assert status == 200
    text = body.decode()
    for run in ("lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"):
        assert f'trainsim_loss{{run="{run}"}}' in text
    assert 'trainsim_build_info{version="' in text
    assert "trainsim_config_last_reload_successful 1.0" in text
    assert http_get(f"{d.url}/healthz") == (200, b"ok\n")
    status, page = http_get(f"{d.url}/")
    assert status == 200
    assert b"<title>trainsim</title>" in page and b"/static/app.js" in page
    assert http_get(f"{d.url}/nope")[0] == 404


def test_the_page_and_its_files_come_from_the_package_with_etags(daemon_factory: Any) -> None:
    d = daemon_factory()
    import urllib.error
    import urllib.request

    from simulator import __file__ as package

    static = Path(package).parent / "web" / "static"
    for rel, ctype in (("app.js", "text/javascript"), ("app.css", "text/css"),
                       ("vendor/uPlot.iife.min.js", "text/javascript"),
                       ("vendor/uPlot.min.css", "text/css")):
        with urllib.request.urlopen(f"{d.url}/static/{rel}", timeout=5) as resp:
            assert resp.read() == (static / rel).read_bytes()
            assert resp.headers["Content-Type"].startswith(ctype)
            tag = resp.headers["ETag"]
        again = urllib.request.Request(f"{d.url}/static/{rel}", headers={"If-None-Match": tag})
        try:
            urllib.request.urlopen(again, timeout=5)
            raise AssertionError("an unchanged file must answer 304")
        except urllib.error.HTTPError as exc:
            assert exc.code == 304
    # Only the page's own files: no path outside the static folder, no listing.
    for path in ("/static/", "/static/../cli.py", "/static/vendor/README.md",
                 "/static/%2e%2e/cli.py"):
        assert http_get(f"{d.url}{path}")[0] == 404, path


def test_openmetrics_and_gzip_are_negotiated(daemon_factory: Any) -> None:
    d = daemon_factory()
    import urllib.request

    req = urllib.request.Request(f"{d.url}/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        "Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(resp.read()).decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE trainsim_steps counter" in text


def test_scrapes_do_not_advance_the_simulation(daemon_factory: Any) -> None:
    d = daemon_factory(speed=1)
    first = [value(d.url, "trainsim_steps_total", run="lr-0.2") for _ in range(20)]
    # Twenty scrapes in well under a second see at most one step boundary.
    assert len(set(first)) <= 2


def test_divergence_shows_up_in_metrics(daemon_factory: Any) -> None:
    d = daemon_factory(speed=50)
    wait_for(lambda: value(d.url, "trainsim_run_state", run="lr-1.1", state="diverged") == 1.0,
             what="lr-1.1 to diverge")
    assert value(d.url, "trainsim_alert_active", run="lr-1.1", alert="divergence") == 1.0
    assert events(d, "run_diverged")[0]["run"] == "lr-1.1"


def test_sighup_applies_a_good_config_and_keeps_unchanged_runs(
        daemon_factory: Any, write_config: Any) -> None:
    cfg = write_config(TWO_RUNS)
    d = daemon_factory(config=cfg, speed=10)
    wait_for(lambda: (value(d.url, "trainsim_steps_total", run="keep") or 0) >= 20,
             what="20 steps")
    before = value(d.url, "trainsim_steps_total", run="keep")
    cfg.write_text(RELOADED)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: events(d, "config_reloaded"), what="config_reloaded")
    after = samples(d.url)
    assert after[("trainsim_steps_total", (("run", "keep"),))] >= before  # type: ignore[operator]
    assert ("trainsim_loss", (("run", "drop"),)) not in after
    assert ("trainsim_loss", (("run", "added"),)) in after
    assert after[("trainsim_config_last_reload_successful", ())] == 1.0
    assert events(d, "config_reloaded")[0]["unchanged_runs"] == 1


def test_sighup_with_a_bad_config_keeps_the_old_one_running(
        daemon_factory: Any, write_config: Any) -> None:
    cfg = write_config(TWO_RUNS)
    d = daemon_factory(config=cfg, speed=10)
    wait_for(lambda: value(d.url, "trainsim_steps_total", run="keep"), what="first scrape")
    cfg.write_text("runs:\n  - name: keep\n    optimizer: {learning_rate: -3}\n")
    d.proc.send_signal(signal.SIGHUP)
    rejected = wait_for(lambda: events(d, "config_rejected"), what="config_rejected")
    assert rejected[0]["errors"] == [
        f"{cfg}:3: runs[0].optimizer.learning_rate: must be > 0, got -3"]
    assert value(d.url, "trainsim_config_last_reload_successful") == 0.0
    before = value(d.url, "trainsim_steps_total", run="drop")
    wait_for(lambda: value(d.url, "trainsim_steps_total", run="drop") > before,  # type: ignore[operator]
             what="old runs to keep stepping")
    assert d.proc.poll() is None


def test_sigterm_exits_0_within_a_second(daemon_factory: Any) -> None:
    d = daemon_factory()
    start = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 1.0
    wait_for(lambda: events(d, "stopped"), what="stopped event")


def test_signals_in_quick_succession_are_harmless(daemon_factory: Any) -> None:
    d = daemon_factory()
    for _ in range(5):
        d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: events(d, "config_reloaded"), what="reload")
    assert http_get(f"{d.url}/healthz")[0] == 200
    d.proc.send_signal(signal.SIGTERM)
    d.proc.send_signal(signal.SIGHUP)
    assert d.proc.wait(timeout=5) == 0


def test_listen_address_in_use_is_one_line_naming_the_flag_before_any_run_starts(
        daemon_factory: Any) -> None:
    d = daemon_factory()
    import sys

    res = subprocess.run([sys.executable, "-m", "simulator", "run", "--web.listen-address",
                          d.address], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"trainsim: cannot listen on {d.address}: Address already in use "
        "(choose another address with --web.listen-address)"]
    assert "run_started" not in res.stdout + res.stderr


def test_promtool_check_metrics_accepts_a_real_scrape(daemon_factory: Any, tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    d = daemon_factory(speed=20)
    wait_for(lambda: value(d.url, "trainsim_run_state", run="lr-1.1", state="diverged") == 1.0,
             what="divergence")
    body = http_get(f"{d.url}/metrics")[1]
    res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode() + res.stderr.decode() == ""


def test_listening_names_the_pid_and_url_and_a_loop_logs_a_restart_not_a_recovery(
        daemon_factory: Any, write_config: Any) -> None:
    d = daemon_factory(write_config(
        "runs: [{name: looping, steps: 5, step_interval: 100ms, loop: true, init: 5.5,\n"
        "        optimizer: {learning_rate: 0.2}}]\n"), speed=10)
    (listening,) = events(d, "listening")
    assert listening["pid"] == d.proc.pid
    assert listening["url"] == f"http://{listening['address']}/"  # the live page
    wait_for(lambda: len(events(d, "run_restarted")) >= 3, what="three loops")
    finished = [e for e in d.events() if e.get("run") == "looping"
                and e.get("previous_state") == "finished"]
    assert finished == []
    assert events(d, "run_recovered") == []
