"""The engine alone: one process steps N 1-D seed runs S steps, detectors included.

    python benchmarks/bench_engine_steps.py --runs 1000 --steps 500 [--repeat 15]

Prints the median run-steps per second. Under ``valgrind --tool=callgrind`` (with
``--repeat 1``), the instruction count at two step counts gives the instructions per step,
a figure the machine's load does not move (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from simulator.config import load_default
from simulator.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    seed = load_default().runs[1]  # lr 0.2: healthy, every run steps every time
    specs = [dataclasses.replace(seed, name=f"r{i}", loop=False, steps=10**9)
             for i in range(args.runs)]
    rates = []
    for _ in range(args.repeat):
        engine = Engine(specs)
        engine.advance(20.0)  # past the start, so all detectors are live
        t = time.perf_counter()
        engine.advance(20.0 + args.steps)
        rates.append(args.runs * args.steps / (time.perf_counter() - t))
    print(f"{args.runs} runs, {args.steps} steps: median "
          f"{statistics.median(rates) / 1e6:.2f} M run-steps/s (min {min(rates) / 1e6:.2f}, "
          f"max {max(rates) / 1e6:.2f})")


if __name__ == "__main__":
    main()
