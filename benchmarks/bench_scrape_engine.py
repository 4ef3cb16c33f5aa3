"""Scrape render time and engine throughput, each next to its reference, in one run.

    python benchmarks/bench_scrape_engine.py [--runs 1000 10000] [--repeat 5]

Prints figures only; nothing here asserts a time. Record results in docs/benchmarks.md.
Each figure is the median of ``--repeat`` measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from simulator.collector import TrainsimCollector
from simulator.config import RunSpec, load_config, load_default
from simulator.engine import ALERTS, STATES, Engine, Snapshot
from simulator.exposition import FAMILIES, SCALARS, Renderer


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fleet(n: int, rates: tuple[float, ...]) -> list[RunSpec]:
    base = load_default().runs[0]
    return [dataclasses.replace(base, name=f"run-{i:05d}",
                                optimizer=dataclasses.replace(base.optimizer,
                                                              learning_rate=rates[i % len(rates)]))
            for i in range(n)]


# One run of each kind; mixed_fleet() repeats them with their own names and seeds.
MIXED_KINDS = """
defaults: {steps: 100000, loop: true}
runs:
  - name: quadratic-1d
    init: 5.5
    optimizer: {learning_rate: 0.2}
  - name: quadratic-10d
    landscape: {kind: quadratic, condition_number: 100, dims: 10}
    init: 3
    optimizer: {kind: momentum, learning_rate: 0.01}
    schedule: {kind: cosine, warmup: {steps: 50}}
  - name: rosenbrock
    landscape: {kind: rosenbrock}
    init: [-1.2, 1]
    optimizer: {kind: adam, learning_rate: 0.01}
    clip_grad_norm: 10
  - name: noisy-quadratic
    landscape: {kind: noisy_quadratic, dims: 100, batch_size: 16}
    init: 1
    optimizer: {kind: sgd, learning_rate: 0.5}
  - name: plateau
    landscape: {kind: plateau, dims: 2}
    init: [1.5, 1.5]
    optimizer: {kind: rmsprop, learning_rate: 0.01}
  - name: logistic
    landscape: {kind: logistic_regression, features: 10, samples: 1000, batch_size: 32}
    optimizer: {kind: adamw, learning_rate: 0.05}
    gradient_noise: 0.01
    loss_noise: 0.01
"""


def mixed_fleet(n: int) -> list[RunSpec]:
    """n runs cycling through every landscape kind (noisy_quadratic at 100 dims)."""
    kinds = load_config(MIXED_KINDS, "<bench>").runs
    return [dataclasses.replace(kinds[i % len(kinds)], name=f"run-{i:05d}", seed=i)
            for i in range(n)]


def plain_label_api(snap: Snapshot) -> CollectorRegistry:
    """The same series through prometheus_client's Gauge/Counter label API."""
    reg = CollectorRegistry()
    for fam, attr in SCALARS:
        cls = Counter if fam.kind == "counter" else Gauge
        metric = cls(fam.name, fam.help, ["run"], registry=reg)
        values = getattr(snap, attr).tolist()
        for name, v in zip(snap.names, values, strict=True):
            child = metric.labels(run=name)
            if isinstance(child, Gauge):
                child.set(v)
            else:
                child.inc(v)
    param = Gauge("trainsim_parameter", "p", ["run", "dim"], registry=reg)
    info = Gauge("trainsim_run_info", "i", ["run", "landscape", "optimizer", "schedule"],
                 registry=reg)
    state = Gauge("trainsim_run_state", "s", ["run", "state"], registry=reg)
    alert = Gauge("trainsim_alert_active", "a", ["run", "alert"], registry=reg)
    for first, w in snap.parameters:
        for i, row in enumerate(w.tolist()):
            for j, v in enumerate(row):
                param.labels(run=snap.names[first + i], dim=str(j)).set(v)
    for i, name in enumerate(snap.names):
        info.labels(run=name, landscape=snap.landscapes[i], optimizer=snap.optimizers[i],
                    schedule=snap.schedules[i]).set(1)
        for k, s in enumerate(STATES):
            state.labels(run=name, state=s).set(float(snap.state[i] == k))
        for k, a in enumerate(ALERTS):
            alert.labels(run=name, alert=a).set(float(snap.alerts[i, k]))
    return reg


def bench_scrape(n: int, repeat: int) -> None:
    engine = Engine(fleet(n, (0.05, 0.2, 0.7, 1.1)))
    engine.advance(15.0)
    snap = engine.snapshot(1, time.time())
    series = len(Renderer().render(snap).splitlines()) - 2 * len(FAMILIES)
    renderer = Renderer()
    cold = median_seconds(lambda: Renderer().render(snap), max(1, repeat // 2))
    renderer.render(snap)
    warm = median_seconds(lambda: renderer.render(snap), repeat)
    reg = CollectorRegistry()
    reg.register(TrainsimCollector(lambda: snap))
    via_collector = median_seconds(lambda: generate_latest(reg), max(1, repeat // 2))
    plain = plain_label_api(snap)
    via_labels = median_seconds(lambda: generate_latest(plain), max(1, repeat // 2))
    print(f"scrape render, {n} runs, {series} series:")
    print(f"  trainsim Renderer (fleet layout cached)   {warm * 1e3:8.1f} ms")
    print(f"  trainsim Renderer (first scrape of fleet)  {cold * 1e3:8.1f} ms")
    print(f"  custom Collector + generate_latest         {via_collector * 1e3:8.1f} ms")
    print(f"  plain Gauge/Counter labels + generate_latest {via_labels * 1e3:6.1f} ms  "
          f"({via_labels / warm:.1f}x the Renderer)")


def python_loop_steps_per_second(n: int, steps: int) -> float:
    """A plain per-run Python loop doing the same descent and the same detectors (reference)."""
    w = [5.5] * n
    lr = [(0.05, 0.2, 0.7)[i % 3] for i in range(n)]
    loss = [13.25] * n
    streak = [0] * n
    hist = [[13.25] * 32 for _ in range(n)]
    t = time.perf_counter()
    for k in range(1, steps + 1):
        for i in range(n):
            g = 2.0 * (w[i] - 2.0)
            w[i] -= lr[i] * g
            d = w[i] - 2.0
            new = d * d + 1.0
            streak[i] = streak[i] + 1 if new > loss[i] else 0
            old = hist[i][(k - 20) & 31]
            hist[i][k & 31] = new
            _ = (not np.isfinite(new)) or new > 1e5 or abs(w[i]) > 1e3 or streak[i] >= 10
            _ = (old - new) / max(abs(old), 1e-300) < 1e-7 and abs(2 * d) > 1e-3
            loss[i] = new
    return n * steps / (time.perf_counter() - t)


def bare_numpy_steps_per_second(n: int, steps: int) -> float:
    """Only the arithmetic of the update, no detectors or bookkeeping (upper reference)."""
    w = np.full(n, 5.5)
    lr = np.array([(0.05, 0.2, 0.7)[i % 3] for i in range(n)])
    t = time.perf_counter()
    for _ in range(steps):
        w -= lr * 2.0 * (w - 2.0)
    return n * steps / (time.perf_counter() - t)


def engine_steps_per_second(specs: list[RunSpec], steps: int, repeat: int) -> float:
    def one() -> None:
        engine = Engine(specs)
        engine.advance(20.0)  # past the start, so all detectors are live
        t = time.perf_counter()
        engine.advance(20.0 + steps)
        timings.append(time.perf_counter() - t)
    timings: list[float] = []
    for _ in range(repeat):
        one()
    return len(specs) * steps / statistics.median(timings)


def tick_cost(specs: list[RunSpec], repeat: int) -> tuple[float, float, float]:
    engine = Engine(specs)
    engine.advance(20.0)
    renderer = Renderer()
    renderer.render(engine.snapshot(0))
    now = [20.0]

    def advance() -> None:
        now[0] += 1.0
        engine.advance(now[0])

    step = median_seconds(advance, repeat * 4)
    snap = median_seconds(lambda: engine.snapshot(1, 0.0), repeat * 4)
    render = median_seconds(lambda: renderer.render(engine.snapshot(1, 0.0)), repeat)
    return step, snap, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}")
    from importlib.metadata import version

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"prometheus_client {version('prometheus-client')}")
    print()
    for n in args.runs:
        bench_scrape(n, args.repeat)
        print()
    for n in args.runs:
        healthy = fleet(n, (0.05, 0.2, 0.7))
        mixed = fleet(n, (0.05, 0.2, 0.7, 1.1))
        rows = (
            ("healthy fleet (all runs stepping)",
             engine_steps_per_second(healthy, args.steps, args.repeat)),
            ("default mix (1 in 4 diverged, held)",
             engine_steps_per_second(mixed, args.steps, args.repeat)),
            ("mixed fleet: every landscape/optimizer kind",
             engine_steps_per_second(mixed_fleet(n), args.steps // 5, args.repeat)),
            ("reference: bare numpy update, no detectors",
             bare_numpy_steps_per_second(n, args.steps * 4)),
            ("reference: plain per-run Python loop",
             python_loop_steps_per_second(n, max(5, args.steps // 25))),
        )
        print(f"engine, {n} runs (1-D unless said), {args.steps} steps (mixed fleet "
              f"{args.steps // 5}), detectors included:")
        for label, rate in rows:
            print(f"  {label:44s} {rate / 1e6:8.1f} M run-steps/s")
        step, snap, render = tick_cost(mixed, args.repeat)
        print(f"  one tick: engine+detectors {step * 1e3:.2f} ms, snapshot {snap * 1e3:.2f} ms, "
              f"render {render * 1e3:.1f} ms  (total {(step + snap + render) * 1e3:.1f} ms)")
        print()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
