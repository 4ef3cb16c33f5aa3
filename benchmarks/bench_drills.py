"""Live drills against offline drills, side by side: the wall time of each shipped drill,
self-contained (daemon, Prometheus and Alertmanager on loopback, the fast profile) and
offline (promtool test rules at the shipped 15 s intervals), alternating live and offline
per drill so that both see the same machine. Needs prometheus, promtool and alertmanager on
PATH (Debian's packages).

    python benchmarks/bench_drills.py [--repeat N] [DRILL.yaml ...]

Prints a row per drill: the median wall time of each mode (the whole ``trainsim drill``
command, Python's start-up included), the ratio, and where the offline time goes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs" / "drills").glob("*.yaml"))


def timed(argv: list[str]) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "simulator", "drill", *argv, "--output", "json"],
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr[-500:]}")
    doc: dict[str, object] = json.loads(res.stdout)
    return elapsed, doc


def breakdown(path: Path) -> tuple[float, float]:
    """Seconds spent sampling the daemon and in promtool, in-process."""
    from simulator.drills import offline
    from simulator.drills.file import load_drill

    drill = load_drill(path)
    rules = offline.Rules.load(None)
    intervals = offline.shipped_intervals()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        import dataclasses

        d1 = dataclasses.replace(drill, speed=1.0)
        offline.sample(d1, intervals.scrape_ms, offline.end_of(d1, intervals) / 1000,
                       rules.metric_names())
        sampled = time.perf_counter() - start
        start = time.perf_counter()
        offline.judge(drill, rules, intervals, Path(tmp))
        whole = time.perf_counter() - start
    return sampled, whole - sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drills", nargs="*", type=Path, default=SHIPPED)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.platform()}")
    print("| drill | run time judged | live (speed) | offline | live / offline | offline: "
          "sampling + promtool and scoring |")
    print("|---|---|---|---|---|---|")
    for path in args.drills:
        live, off = [], []
        doc: dict[str, object] = {}
        for _ in range(args.repeat):
            seconds, doc = timed([str(path)])
            live.append(seconds)
            seconds, offline_doc = timed(["--offline", str(path)])
            off.append(seconds)
        sampled, rest = breakdown(path)
        live_s, off_s = statistics.median(live), statistics.median(off)
        judged = float(offline_doc["elapsed_seconds"])  # type: ignore[arg-type]
        print(f"| `{path.stem}` | {judged / 60:.1f} min | {live_s:.1f} s ({doc['speed']}) | "
              f"**{off_s:.2f} s** | {live_s / off_s:.0f}x | {sampled:.2f} + {rest:.2f} s |")


if __name__ == "__main__":
    main()
