"""Soak: a 10k-run daemon under load for a long while; memory must stay flat, nothing lost.

    python benchmarks/soak.py [--minutes 30] [--runs 10000] [--speed 20]

A real ``trainsim run`` on loopback (simulator.drills.stack) serves a 10k-run fleet at
``--speed``; at the same time four scrapers pull /metrics over keep-alive connections every
second, a SIGHUP reloads the config every minute (alternating two versions, so each reload
changes runs), and a fault is injected into a random run every second (a short window of a kind
that leaves the step count alone). Printed, every minute and at the end:

- the daemon's resident memory (VmRSS) and the slope of a least-squares line through it over
  the second half of the soak, in MiB per hour (flat memory: near 0);
- scrapes done and failed (any non-200, error or timeout) and their latency;
- reloads applied and rejected, faults injected and refused;
- steps: the control runs (never faulted, never reloaded, one step a second of run time from
  the daemon's start) are compared at every scrape with the steps due by then: how far behind
  the wall clock the daemon ran. Steps are computed from the simulated clock, so a busy daemon
  takes late steps but loses none: it catches up at its next tick.

Figures only, no assertion; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from simulator.drills.stack import DaemonProcess, start_daemon

CONTROL_RUNS = 20
CONFIG = """
defaults: {{steps: 100000, loop: true, step_interval: 1s}}
runs:
{control}
fleet:
  count: {count}
  name_prefix: fleet
  seed: 7
  template:
    init: 5.5
    optimizer: {{kind: sgd}}
  learning_rate: {{log_uniform: [1e-3, {lr_max}]}}
  landscapes:
    quadratic: 0.8
    noisy_quadratic: {{weight: 0.2, landscape: {{dims: 8}}, init: 1}}
"""
FAULTS = ("lr_spike", "noise_burst", "gradient_explosion", "plateau")
STEPS = re.compile(rb'^trainsim_steps_total\{run="(control-\d+)"\} (\S+)$', re.MULTILINE)


def _config(count: int, version: int) -> str:
    control = "\n".join(f"  - {{name: control-{i}, optimizer: {{learning_rate: 0.01}}, "
                        f"loop: false, steps: 10000000}}" for i in range(CONTROL_RUNS))
    # The two versions differ in the fleet's learning rates: a reload rebuilds those runs.
    return CONFIG.format(control=control, count=count, lr_max=("1.0", "0.9")[version])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per hour."""
    if len(points) < 2:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


class Scraper(threading.Thread):
    """Pulls /metrics over one keep-alive connection every second; checks the control runs."""

    def __init__(self, address: str, started: float, speed: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.address, self.started, self.speed, self.stop = address, started, speed, stop
        self.ok = self.failed = 0
        self.latencies: list[float] = []
        self.behind: list[float] = []  # steps due by the scrape minus steps taken

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.address, timeout=10)
        while not self.stop.wait(1.0):
            t0 = time.monotonic()
            try:
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection(self.address, timeout=10)
                continue
            t1 = time.monotonic()
            if resp.status != 200:
                self.failed += 1
                continue
            self.ok += 1
            self.latencies.append(t1 - t0)
            due = (t0 - self.started) * self.speed  # one step a second of run time
            self.behind += [due - float(n) for _, n in STEPS.findall(body)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--speed", type=float, default=20.0)
    args = parser.parse_args()
    print(f"soak: {args.runs} fleet runs + {CONTROL_RUNS} control runs, --speed {args.speed:g}, "
          f"{args.minutes:g} min; 4 scrapers every 1 s, a reload every 60 s, a fault every 1 s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="trainsim-soak-") as tmp:
        work = Path(tmp)
        config = work / "fleet.yaml"
        config.write_text(_config(args.runs, 0))
        daemon = start_daemon(work, config=config, speed=args.speed, timeout=600)
        listening = next(e for e in daemon.events() if e.get("event") == "listening")
        pid = int(listening["pid"])
        # The daemon's run time 0: its first run_started event.
        first = next(e for e in daemon.events()
                     if e.get("event") in ("run_started", "runs_started"))
        from datetime import datetime
        t_start = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
        started = time.monotonic() - (time.time() - t_start.timestamp())
        stop = threading.Event()
        scrapers = [Scraper(daemon.address, started, args.speed, stop) for _ in range(4)]
        for s in scrapers:
            s.start()
        rng = random.Random(7)
        injected = refused = reloads = 0
        rss: list[tuple[float, float]] = []
        api = http.client.HTTPConnection(daemon.address, timeout=10)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_reload, next_report = t0 + 60, t0 + 60
        try:
            while time.monotonic() < end:
                time.sleep(1.0)
                now = time.monotonic()
                body = json.dumps({"kind": rng.choice(FAULTS), "duration": "5s"}).encode()
                run = f"fleet-{rng.randrange(args.runs):05d}"
                try:
                    api.request("POST", f"/api/v1/runs/{run}/faults", body,
                                {"Content-Type": "application/json"})
                    resp = api.getresponse()
                    resp.read()
                    if resp.status == 201:
                        injected += 1
                    else:
                        refused += 1
                except (OSError, http.client.HTTPException):
                    refused += 1
                    api.close()
                    api = http.client.HTTPConnection(daemon.address, timeout=10)
                rss.append((now - t0, _rss_mib(pid)))
                if now >= next_reload:
                    reloads += 1
                    config.write_text(_config(args.runs, reloads % 2))
                    os.kill(pid, signal.SIGHUP)
                    next_reload += 60
                if now >= next_report:
                    next_report += 60
                    _report(now - t0, rss, scrapers, injected, refused, reloads, daemon)
        finally:
            stop.set()
            for s in scrapers:
                s.join(timeout=15)
            print("final:")
            _report(time.monotonic() - t0, rss, scrapers, injected, refused, reloads, daemon)
            daemon.close()


def _report(elapsed: float, rss: list[tuple[float, float]], scrapers: list[Scraper],
            injected: int, refused: int, reloads: int, daemon: DaemonProcess) -> None:
    half = [p for p in rss if p[0] >= elapsed / 2]
    lat = sorted(x for s in scrapers for x in s.latencies)
    events = [e.get("event") for e in daemon.events()]
    behind = sorted(x for s in scrapers for x in s.behind)
    lo, hi = min(p[1] for p in rss), max(p[1] for p in rss)
    print(f"  t={elapsed / 60:5.1f} min  rss {rss[-1][1]:7.1f} MiB (min {lo:.1f}, "
          f"max {hi:.1f}), slope over the second half "
          f"{_slope(half):+.1f} MiB/h; scrapes {sum(s.ok for s in scrapers)} ok, "
          f"{sum(s.failed for s in scrapers)} failed, p50 {1000 * lat[len(lat) // 2]:.0f} ms, "
          f"p99 {1000 * lat[int(len(lat) * 0.99)]:.0f} ms; reloads {reloads} sent, "
          f"{events.count('config_reloaded')} applied, {events.count('config_rejected')} "
          f"rejected; faults {injected} injected, {refused} refused; control runs' steps "
          f"behind the wall clock p50 {behind[len(behind) // 2]:.0f}, max {behind[-1]:.0f}",
          flush=True)


if __name__ == "__main__":
    main()
