"""The cost of a live fault injection as faults accumulate: 4,000 one-millisecond faults.

    python benchmarks/bench_faults.py [--injections 4000]

Injects a 1 ms lr_spike into a run of the embedded default config and advances the engine past
it, 4,000 times, as the control API does; prints the median cost of an injection (inject plus
the advance that ends it) over the first and the last 500, and the fault tables' size at the
end. Figures only; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from simulator.config import load_default
from simulator.engine import Engine
from simulator.faults.catalogue import FaultSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--injections", type=int, default=4000)
    args = parser.parse_args()
    engine = Engine(load_default().runs)
    spike = FaultSpec("lr_spike", 0.0, 0.001, (("factor", 2.0),))
    costs = []
    for _ in range(args.injections):
        t0 = time.perf_counter()
        engine.inject("lr-0.2", spike)
        engine.advance(engine.now + 0.002)
        costs.append(time.perf_counter() - t0)
    first, last = costs[:500], costs[-500:]
    print(f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"injection + advance, median: first 500 {1e3 * statistics.median(first):.3f} ms, "
          f"last 500 {1e3 * statistics.median(last):.3f} ms; fault records kept at the end: "
          f"{len(engine.timeline.records)}")


if __name__ == "__main__":
    main()
