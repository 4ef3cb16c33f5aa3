"""Hardware at fleet scale: the deploy fleet with and without `hardware: {gpus: 8}` on every
run, side by side: series per scrape, the engine's tick, the snapshot, the render (cached
layout), and the daemon's resident memory.

    python benchmarks/bench_hardware.py [--runs 10000] [--repeat 5]

Prints figures only; nothing here asserts a time. Record results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import time

from bench_fleet import FLEET
from bench_scrape_engine import _cpu_model

from simulator.config import load_config
from simulator.daemon.core import Daemon, DrivenClock, SilentLog
from simulator.exposition import Renderer, series_count


def fleet(count: int, hardware: bool) -> str:
    text = FLEET.format(count=count)
    if hardware:
        text = text.replace("    init: 5.5\n", "    init: 5.5\n    hardware: {gpus: 8}\n")
    return text


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(count: int, hardware: bool, repeat: int) -> dict[str, float]:
    gc.collect()
    before = rss_mib()
    clock = DrivenClock()
    daemon = Daemon(load_config(fleet(count, hardware), "<bench>"), clock=clock,
                    wall=lambda: 0.0, log=SilentLog())
    renderer = Renderer()
    ticks, snaps, renders = [], [], []
    for i in range(repeat + 1):
        clock.now = 60.0 * (i + 1)  # a minute of 1 s steps per tick
        start = time.perf_counter()
        daemon.engine.advance(clock.now)
        ticks.append(time.perf_counter() - start)
        start = time.perf_counter()
        snap = daemon.engine.snapshot(i)
        snaps.append(time.perf_counter() - start)
        start = time.perf_counter()
        body = renderer.render(snap)
        renders.append(time.perf_counter() - start)
    # The first render builds the fleet's label prefixes; the rest reuse them.
    return {"series": series_count(snap), "bytes": len(body),
            "tick": statistics.median(ticks[1:]) / 60, "snapshot": statistics.median(snaps[1:]),
            "render_first": renders[0], "render": statistics.median(renders[1:]),
            "rss": rss_mib() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {_cpu_model()}, {platform.python_implementation()} "
          f"{platform.python_version()}, max RSS so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    rows = {}
    for hardware in (False, True, False, True):  # A B A B: the second pair is reported
        rows[hardware] = measure(args.runs, hardware, args.repeat)
    print(f"| {args.runs:,} runs | without hardware | with `hardware: {{gpus: 8}}` |")
    print("|---|---|---|")
    a, b = rows[False], rows[True]
    print(f"| series per scrape | {a['series']:,.0f} | {b['series']:,.0f} |")
    print(f"| body (text format) | {a['bytes'] / 1e6:.1f} MB | {b['bytes'] / 1e6:.1f} MB |")
    print(f"| engine, one step of every run | {a['tick'] * 1e3:.1f} ms | "
          f"{b['tick'] * 1e3:.1f} ms |")
    print(f"| snapshot | {a['snapshot'] * 1e3:.1f} ms | {b['snapshot'] * 1e3:.1f} ms |")
    print(f"| render, layout cached | {a['render'] * 1e3:.0f} ms | {b['render'] * 1e3:.0f} ms |")
    print(f"| render, first (builds the layout) | {a['render_first'] * 1e3:.0f} ms | "
          f"{b['render_first'] * 1e3:.0f} ms |")
    print(f"| resident memory of the daemon's state | {a['rss']:.0f} MiB | {b['rss']:.0f} MiB |")


if __name__ == "__main__":
    main()
