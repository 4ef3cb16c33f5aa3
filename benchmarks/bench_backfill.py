"""Backfill: 10k runs over one hour at 15 s, written as OpenMetrics, beside promtool's ingest of
the same file.

    python benchmarks/bench_backfill.py [--runs 10000] [--duration 1h] [--fleet seed deploy]

For each fleet, a child process of its own (so that its peak RSS is its own) loads the config,
drives the daemon through the window's instants (``simulator.backfill.record``) and writes the
file (``Recorder.write``); then ``promtool tsdb create-blocks-from openmetrics`` ingests that
file into an empty directory, timed the same way. Fleets:

- ``seed``: the seed's 1-D quadratic runs at the embedded default's pace (a step every 30 s,
  119 steps, loop), learning rates log-uniform: 18 series a run;
- ``deploy``: the fleet of deploy/kubernetes/configmap.yaml (a step a second, 20% 8-D noisy
  quadratic runs, 5% of runs with a fault): about 19.5 series a run, and 30 times the steps.

Figures only, no assertion; docs/benchmarks.md records a run. The files are large (about 100
bytes a sample): they go to a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_fleet import FLEET
from bench_scrape_engine import _cpu_model

from simulator import backfill
from simulator.config import load_config
from simulator.durations import parse_prometheus

END_MS = 1_748_746_800_000  # 2025-06-01T03:00:00Z
FLEETS = {
    "seed": """
defaults: {{steps: 119, step_interval: 30s, loop: true}}
fleet:
  count: {count}
  name_prefix: fleet
  seed: 7
  template:
    landscape: {{kind: quadratic, a: 1, c: 2, b: 1}}
    init: 5.5
    optimizer: {{kind: sgd}}
  learning_rate: {{log_uniform: [1e-3, 1.0]}}
""",
    "deploy": FLEET,  # the fleet of deploy/kubernetes/configmap.yaml, as bench_fleet.py
}


def child(fleet: str, count: int, duration: str, output: Path) -> None:
    """One backfill, timed by phase; prints its figures as one JSON line."""
    t0 = time.perf_counter()
    config = load_config(FLEETS[fleet].format(count=count), f"<{fleet}>")
    t1 = time.perf_counter()
    scrape, _ = backfill.shipped_scrape()
    window = backfill.plan(END_MS, parse_prometheus(duration), scrape.interval_ms, END_MS)
    with output.open("wb") as out, tempfile.TemporaryFile(dir=output.parent) as spill:
        recorder = backfill.record(config, window, spill)
        t2 = time.perf_counter()
        written = recorder.write(out, scrape, window.timestamps())
    t3 = time.perf_counter()
    print(json.dumps({
        "load": t1 - t0, "record": t2 - t1, "write": t3 - t2, "instants": window.count,
        "series": written.series, "samples": written.samples, "bytes": written.size_bytes,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def timed(argv: list[str]) -> tuple[float, int, str]:
    """Run ``argv``; (wall seconds, peak RSS in bytes, stdout). Fails loudly if it fails."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.strip()}")
    return elapsed, usage.ru_maxrss * 1024, out


def bench(fleet: str, count: int, duration: str, workdir: Path) -> None:
    path = workdir / f"{fleet}.om"
    wall, _, out = timed([sys.executable, __file__, "--child", fleet, "--runs", str(count),
                          "--duration", duration, "--output", str(path)])
    f = json.loads(out)
    total = f["load"] + f["record"] + f["write"]
    print(f"{fleet}: {count} runs, {duration} at 15 s: {f['instants']} instants, "
          f"{f['series']} series, {f['samples']:,} samples")
    print(f"  backfill {total:.1f} s ({f['samples'] / total / 1e6:.2f} M samples/s): config "
          f"{f['load']:.1f} s, daemon {f['record']:.1f} s, writing {f['write']:.1f} s "
          f"({f['samples'] / f['write'] / 1e6:.2f} M samples/s); process {wall:.1f} s")
    print(f"  peak RSS {f['rss'] / 2**20:.0f} MiB; file {f['bytes'] / 2**30:.2f} GiB "
          f"({f['bytes'] / f['samples']:.0f} bytes a sample)")
    tsdb = workdir / f"{fleet}-tsdb"
    wall, rss, _ = timed(["promtool", *backfill.PROMTOOL_COMMAND, "--quiet", str(path),
                          str(tsdb)])
    size = sum(p.stat().st_size for p in tsdb.rglob("*") if p.is_file())
    blocks = sum(1 for p in tsdb.iterdir() if (p / "meta.json").is_file())
    print(f"  promtool ingest {wall:.1f} s ({f['samples'] / wall / 1e6:.2f} M samples/s), peak "
          f"RSS {rss / 2**20:.0f} MiB (the file is mapped), {blocks} blocks, "
          f"{size / 2**20:.0f} MiB on disk")
    path.unlink()
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--fleet", nargs="+", choices=sorted(FLEETS), default=["seed", "deploy"])
    parser.add_argument("--child", choices=sorted(FLEETS), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.runs, args.duration, args.output)
        return
    said = subprocess.run(["promtool", "--version"], capture_output=True, text=True).stdout
    promtool = " ".join(said.split()[:3]).replace(", version", "") if said else "no promtool"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}, "
          f"python {platform.python_version()}, numpy {np.__version__}, {promtool}")
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    with tempfile.TemporaryDirectory() as tmp:
        for fleet in args.fleet:
            bench(fleet, args.runs, args.duration, Path(tmp))


if __name__ == "__main__":
    main()
