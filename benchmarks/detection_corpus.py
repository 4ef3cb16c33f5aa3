"""A seeded, labelled corpus of runs for measuring the detectors: precision, recall, latency.

    python benchmarks/detection_corpus.py [--seeds 20] [--horizon 600]

Every run is written as YAML and goes through ``simulator.config.load_config`` (the real config
path), then the whole corpus is stepped by one ``simulator.engine.Engine`` by advancing
simulated time one step at a time (no daemon). After each step the snapshot's alert columns
(``snapshot.alerts``, in the order of ``simulator.engine.ALERTS``) are read.

Each run carries a label: the alerts it must raise (``expect``), the alerts that would be a
fair description too and count neither way (``allow``: a diverging run whose updates flip
sign is also oscillating), and the step at which the trouble begins (``onset``: 0 for trouble
built into the run, the fault's first step for a fault). Scoring, per alert A and run:

- TP: A expected and active at some step >= onset; FN: A expected and never active then;
  the latency is the first such step minus the onset.
- FP: A active at some step while neither expected nor allowed, or expected but active
  before the onset (a false alarm on the still-healthy part of the run). At most one per run.

Printed: the table per alert and a table per family of runs (what fired where). Figures,
not assertions: tests/test_detection_corpus.py asserts the floors; docs/detection.md
records the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from simulator.config import load_config
from simulator.engine import ALERTS, Engine

HORIZON = 600  # steps simulated per run (step_interval 1 s)

Rng = np.random.Generator


@dataclass(frozen=True)
class Case:
    """One labelled run: its YAML mapping and the alerts it should raise."""

    name: str
    kind: str  # healthy, plateau, divergence, oscillation
    family: str  # the recipe that made it (several per kind)
    run: dict[str, Any]
    expect: frozenset[str] = frozenset()
    allow: frozenset[str] = frozenset()
    onset: int = 0


@dataclass(frozen=True)
class Outcome:
    """What the detectors did on one run: first step each alert was active, overall and at
    or after the onset."""

    case: Case
    first: dict[str, int | None]
    first_after_onset: dict[str, int | None]


@dataclass
class Score:
    """Counts and latencies of one alert over the corpus."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    latencies: list[int] = field(default_factory=list)
    fp_runs: list[str] = field(default_factory=list)
    fn_runs: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1 when nothing fired."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1 when nothing was expected."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


# --------------------------------------------------------------------------- recipes
# Each recipe draws its parameters from the seed's generator and returns (family, run, label).
# Learning rates are chosen from the closed forms: on a quadratic with largest curvature
# h_max, SGD converges iff lr < 2 / h_max; heavy-ball momentum beta iff lr < 2 (1 + beta) / h_max.

DIV = frozenset({"divergence"})
STALL = frozenset({"stall"})
OSC = frozenset({"oscillation"})


def _u(g: Rng, lo: float, hi: float) -> float:
    return round(float(g.uniform(lo, hi)), 6)


def _lu(g: Rng, lo: float, hi: float) -> float:
    """Log-uniform."""
    return round(float(np.exp(g.uniform(np.log(lo), np.log(hi)))), 8)


def _init(g: Rng, dims: int, lo: float, hi: float) -> list[float]:
    return [round(float(x), 4) * (1 if g.random() < 0.5 else -1)
            for x in g.uniform(lo, hi, dims)]


def _healthy(g: Rng, seed: int, horizon: int) -> list[tuple[str, dict[str, Any]]]:
    kappa = [10.0, 100.0][seed % 2]
    return [
        ("quadratic-10d-sgd", {  # lr well under 2 / kappa; the flat directions crawl
            "landscape": {"kind": "quadratic", "condition_number": kappa, "dims": 10},
            "init": _init(g, 10, 1, 3), "optimizer": {"kind": "sgd",
                                                      "learning_rate": _u(g, 0.3, 1.5) / kappa}}),
        ("quadratic-10d-rotated-momentum", {
            "landscape": {"kind": "quadratic", "condition_number": 30, "dims": 10,
                          "rotate": True},
            "init": _init(g, 10, 1, 3),
            "optimizer": {"kind": "momentum", "learning_rate": _u(g, 0.5, 2.0) / 30}}),
        ("quadratic-10d-nesterov-warmup-cosine", {
            "landscape": {"kind": "quadratic", "condition_number": 100, "dims": 10},
            "init": _init(g, 10, 1, 3),
            # Nesterov (beta 0.9) is stable for lr h_max < 2 (1 + beta) / (1 + 2 beta) = 1.36.
            "optimizer": {"kind": "nesterov", "learning_rate": _u(g, 0.003, 0.012)},
            "schedule": {"kind": "cosine", "eta_min": 1e-4, "T_max": horizon,
                         "warmup": {"steps": 20}}}),
        ("quadratic-8d-rotated-adam-warmup-cosine", {
            # Adam circles its optimum: its gradient norm swings past the tolerance while the
            # loss stays put (above zero: the quadratic's floor), which must read converged.
            "landscape": {"kind": "quadratic", "condition_number": [10, 30, 100][seed % 3],
                          "dims": 8, "rotate": True},
            # (its own generator: the other families keep their draws)
            "init": ([1, 2, 3][seed % 3] if seed % 2
                     else _init(np.random.Generator(np.random.PCG64([seed, 8])), 8, 1, 3)),
            "optimizer": {"kind": "adam", "learning_rate": [0.05, 0.01, 0.005][seed % 3]},
            "schedule": {"kind": "cosine", "eta_min": 1e-4, "T_max": horizon,
                         "warmup": {"steps": [10, 20, 50][seed % 3]}}}),
        ("noisy-quadratic-sgd", {
            "landscape": {"kind": "noisy_quadratic", "dims": 100,
                          "batch_size": [4, 32][seed % 2]},
            "init": 1, "optimizer": {"kind": "sgd", "learning_rate": _u(g, 0.3, 1.5)}}),
        ("noisy-quadratic-adam", {
            "landscape": {"kind": "noisy_quadratic", "dims": 100, "batch_size": 16},
            "init": 1, "optimizer": {"kind": "adam", "learning_rate": _lu(g, 1e-3, 1e-2)}}),
        ("logistic-sgd", {
            "landscape": {"kind": "logistic_regression", "data_seed": seed},
            "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 0.05, 0.5)}}),
        ("logistic-adamw", {
            "landscape": {"kind": "logistic_regression", "data_seed": seed},
            "optimizer": {"kind": "adamw", "learning_rate": _lu(g, 1e-3, 1e-2)}}),
        ("rosenbrock-sgd-slow", {  # the crawl along the curved valley
            "landscape": {"kind": "rosenbrock"}, "init": [-1.2, 1],
            "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 2e-4, 8e-4)}}),
        ("rosenbrock-adam-clip", {
            "landscape": {"kind": "rosenbrock"}, "init": [_u(g, -1.5, -0.8), _u(g, 0.5, 1.5)],
            "optimizer": {"kind": "adam", "learning_rate": _lu(g, 1e-3, 1e-2)},
            "clip_grad_norm": 10}),
        ("quadratic-5d-rmsprop", {
            "landscape": {"kind": "quadratic", "condition_number": 10, "dims": 5},
            "init": _init(g, 5, 1, 3),
            "optimizer": {"kind": "rmsprop", "learning_rate": _lu(g, 1e-3, 1e-2)}}),
        ("bowl-momentum-noisy", {  # gradient and loss noise: never reaches the tolerance
            "init": _u(g, 4, 7),
            "optimizer": {"kind": "momentum", "learning_rate": _lu(g, 0.01, 0.05)},
            "gradient_noise": _u(g, 0.1, 0.5), "loss_noise": _u(g, 0.05, 0.3)}),
        ("bowl-sgd-slow-improving", {  # still descending at the horizon
            "init": _u(g, 4, 7), "optimizer": {"kind": "sgd",
                                               "learning_rate": _lu(g, 1e-3, 3e-3)},
            "loss_noise": 0.01}),
        ("bowl-sgd-flipping-converges", {  # the seed's lr 0.7 behaviour: flips, converges
            "init": _u(g, 4, 7), "optimizer": {"kind": "sgd", "learning_rate": _u(g, 0.6, 0.9)}}),
        ("plateau-2d-inside-well", {
            "landscape": {"kind": "plateau", "dims": 2, "b": 0.5},
            "init": _init(g, 2, 0.5, 0.8),
            "optimizer": {"kind": "sgd", "learning_rate": _u(g, 0.1, 0.3)}}),
    ]


def _plateaus(g: Rng, seed: int) -> list[tuple[str, dict[str, Any], int]]:
    at = int(g.integers(100, 250))
    fault = [{"kind": "plateau", "at_step": at, "steps": 200}]
    # On the plateau landscape's flat region: radius r widths out, gradient 2 r e^(-r^2)
    # (scale 1) above the convergence tolerance, so the run is not "converged" there.
    r1 = _u(g, 2.2, 2.6)
    return [
        ("plateau-landscape-flat-start", {
            "landscape": {"kind": "plateau", "dims": 2, "b": 1},
            "init": [round(r1 / 2**0.5, 6)] * 2,
            "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 1e-3, 1e-2)}}, 0),
        ("plateau-landscape-flat-start-noisy", {
            "landscape": {"kind": "plateau", "dims": 2, "b": 1},
            "init": [round(_u(g, 2.2, 2.6) / 2**0.5, 6)] * 2,
            "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 1e-3, 1e-2)},
            "loss_noise": _u(g, 0.005, 0.02)}, 0),
        ("plateau-fault-bowl", {
            # slow enough to be still descending when the fault begins
            "init": _u(g, 4, 7), "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 2e-3, 6e-3)},
            "faults": fault}, at),
        ("plateau-fault-quadratic-10d-momentum", {
            "landscape": {"kind": "quadratic", "condition_number": 100, "dims": 10},
            "init": _init(g, 10, 1, 3),
            # Slow enough to be still descending at the fault (gradient > tolerance / factor).
            "optimizer": {"kind": "momentum", "learning_rate": _u(g, 2e-4, 5e-4)},
            "faults": fault}, at),
        ("plateau-fault-noisy-quadratic", {
            "landscape": {"kind": "noisy_quadratic", "dims": 100, "batch_size": 16},
            "init": 1, "optimizer": {"kind": "sgd", "learning_rate": _u(g, 0.05, 0.2)},
            "faults": fault}, at),
        ("plateau-fault-logistic", {
            "landscape": {"kind": "logistic_regression", "data_seed": seed},
            "optimizer": {"kind": "sgd", "learning_rate": _lu(g, 0.01, 0.05)},
            "faults": fault}, at),
    ]


def _divergences(g: Rng, seed: int) -> list[tuple[str, dict[str, Any], int]]:
    kappa = [10.0, 100.0][seed % 2]
    at = int(g.integers(50, 300))
    return [
        ("quadratic-10d-sgd-above-2-over-hmax", {
            "landscape": {"kind": "quadratic", "condition_number": kappa, "dims": 10},
            "init": _init(g, 10, 1, 3),
            "optimizer": {"kind": "sgd", "learning_rate": _u(g, 1.05, 1.5) * 2 / kappa}}, 0),
        ("quadratic-5d-momentum-above-limit", {
            "landscape": {"kind": "quadratic", "condition_number": 10, "dims": 5},
            "init": _init(g, 5, 1, 3),
            "optimizer": {"kind": "momentum",
                          "learning_rate": _u(g, 1.05, 1.3) * 2 * 1.9 / 10}}, 0),
        ("noisy-quadratic-sgd-above-2", {
            "landscape": {"kind": "noisy_quadratic", "dims": 100, "batch_size": 16},
            "init": 1, "optimizer": {"kind": "sgd", "learning_rate": _u(g, 2.05, 2.5)}}, 0),
        ("bowl-sgd-slow-divergence", {  # |1 - 2 lr| just above 1: a slow flipping blow-up
            "init": _u(g, 2.5, 3), "optimizer": {"kind": "sgd",
                                                 "learning_rate": _u(g, 1.01, 1.05)}}, 0),
        ("lr-spike-bowl", {
            "init": _u(g, 4, 7),
            "optimizer": {"kind": "sgd", "learning_rate": (lr := _u(g, 0.02, 0.1))},
            "faults": [{"kind": "lr_spike", "at_step": at, "steps": 100,  # to lr 1.2..3 > 1
                        "factor": round(_u(g, 1.2, 3) / lr, 6)}]}, at),
        ("lr-spike-noisy-quadratic", {
            "landscape": {"kind": "noisy_quadratic", "dims": 100, "batch_size": 16},
            "init": 1, "optimizer": {"kind": "sgd", "learning_rate": (lr := _u(g, 0.3, 0.8))},
            "faults": [{"kind": "lr_spike", "at_step": at, "steps": 100,  # to lr 2.5..6 > 2
                        "factor": round(_u(g, 2.5, 6) / lr, 6)}]}, at),
        ("lr-spike-rosenbrock-sgd", {
            "landscape": {"kind": "rosenbrock"}, "init": [-1.2, 1],
            "optimizer": {"kind": "sgd", "learning_rate": (lr := _lu(g, 2e-4, 8e-4))},
            # to lr 0.008..0.02, far beyond 2 / h_max (about 2e-3 along the valley)
            "faults": [{"kind": "lr_spike", "at_step": at, "steps": 100,
                        "factor": round(_u(g, 0.008, 0.02) / lr, 6)}]}, at),
    ]


def _oscillations(g: Rng, seed: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("bowl-sgd-lr-just-under-1", {  # z_k = (1 - 2 lr)^k z_0 flips each step, decays slowly
            "init": 2 + _u(g, 0.5, 1.0) * (1 if g.random() < 0.5 else -1),
            "optimizer": {"kind": "sgd", "learning_rate": _u(g, 0.99, 0.998)}}),
        ("quadratic-10d-heavy-momentum-0.99", {
            "landscape": {"kind": "quadratic", "condition_number": 100, "dims": 10},
            "init": _init(g, 10, 1, 3),
            "optimizer": {"kind": "momentum", "momentum": 0.99,
                          "learning_rate": _u(g, 2.0, 3.5) / 100}}),
    ]


def corpus(seeds: Sequence[int], horizon: int = HORIZON) -> list[Case]:
    """The labelled runs for ``seeds`` (about 29 runs per seed)."""
    cases: list[Case] = []
    for seed in seeds:
        g = np.random.Generator(np.random.PCG64(seed))
        cases += [_case(seed, "healthy", f, run, frozenset())
                  for f, run in _healthy(g, seed, horizon)]
        cases += [_case(seed, "plateau", f, run, STALL, onset=onset)
                  for f, run, onset in _plateaus(g, seed)]
        # A blow-up across the minimum flips the updates: oscillating, too.
        cases += [_case(seed, "divergence", f, run, DIV, allow=OSC, onset=onset)
                  for f, run, onset in _divergences(g, seed)]
        cases += [_case(seed, "oscillation", f, run, OSC) for f, run in _oscillations(g, seed)]
    return cases


def _case(seed: int, kind: str, family: str, run: dict[str, Any], expect: frozenset[str],
          allow: frozenset[str] = frozenset(), onset: int = 0) -> Case:
    name = f"{kind}.{family}.s{seed}"
    return Case(name, kind, family, {"name": name, "seed": seed, **run}, expect, allow, onset)


def corpus_yaml(cases: Sequence[Case], horizon: int = HORIZON) -> str:
    """The corpus as one configuration file."""
    doc = {"defaults": {"steps": horizon, "loop": False, "step_interval": 1},
           "runs": [c.run for c in cases]}
    text: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    return text


# --------------------------------------------------------------------------- simulate, score


def simulate(cases: Sequence[Case], horizon: int = HORIZON) -> list[Outcome]:
    """Step every run of the corpus for ``horizon`` steps; when each alert first fired."""
    specs = load_config(corpus_yaml(cases, horizon), "<detection corpus>").runs
    engine = Engine(specs)
    by_name = {c.name: c for c in cases}
    rows = [by_name[n] for n in engine.names]
    onset = np.array([c.onset for c in rows], dtype=np.int64)
    n = len(rows)
    first = np.full((n, len(ALERTS)), -1, np.int64)
    after = np.full((n, len(ALERTS)), -1, np.int64)
    for t in range(1, horizon + 1):
        engine.advance(float(t))
        active = engine.snapshot(t).alerts
        first[active & (first < 0)] = t
        after[active & (after < 0) & (t >= onset)[:, None]] = t

    def steps(row: np.ndarray[Any, Any]) -> dict[str, int | None]:
        return {a: (int(v) if v >= 0 else None) for a, v in zip(ALERTS, row, strict=True)}

    return [Outcome(rows[i], steps(first[i]), steps(after[i])) for i in range(n)]


def score(outcomes: Sequence[Outcome]) -> dict[str, Score]:
    """Precision, recall and latency per alert (see the module docstring for the rules)."""
    scores = {a: Score() for a in ALERTS}
    for o in outcomes:
        c = o.case
        for a in ALERTS:
            s = scores[a]
            fired_at = o.first[a]
            if a in c.expect:
                hit = o.first_after_onset[a]
                if hit is None:
                    s.fn += 1
                    s.fn_runs.append(c.name)
                else:
                    s.tp += 1
                    s.latencies.append(hit - c.onset)
                if fired_at is not None and fired_at < c.onset:
                    s.fp += 1
                    s.fp_runs.append(c.name)
            elif a not in c.allow and fired_at is not None:
                s.fp += 1
                s.fp_runs.append(c.name)
    return scores


def family_table(outcomes: Sequence[Outcome]) -> list[tuple[str, str, int, dict[str, int]]]:
    """Per family: kind, runs, and on how many runs each alert fired at some step."""
    table: dict[tuple[str, str], tuple[int, dict[str, int]]] = {}
    for o in outcomes:
        key = (o.case.kind, o.case.family)
        count, fired = table.get(key, (0, dict.fromkeys(ALERTS, 0)))
        for a in ALERTS:
            fired[a] += o.first[a] is not None
        table[key] = (count + 1, fired)
    return [(fam, kind, count, fired) for (kind, fam), (count, fired) in table.items()]


def _pct(values: list[int], q: float) -> str:
    if not values:
        return "-"
    return str(int(np.percentile(values, q, method="nearest")))


def report(outcomes: Sequence[Outcome], out: Callable[[str], object] = print) -> None:
    """Print the per-alert and per-family tables as Markdown."""
    scores = score(outcomes)
    out("| alert | expected | TP | FN | FP | precision | recall | latency median / p90 / max "
        "(steps) |")
    out("|---|---|---|---|---|---|---|---|")
    for a, s in scores.items():
        lat = "-" if not s.latencies else (
            f"{statistics.median(s.latencies):g} / {_pct(s.latencies, 90)} / "
            f"{max(s.latencies)}")
        out(f"| {a} | {s.tp + s.fn} | {s.tp} | {s.fn} | {s.fp} | {s.precision:.3f} | "
            f"{s.recall:.3f} | {lat} |")
    out("")
    out("| kind | family | runs | " + " | ".join(f"{a} fired" for a in ALERTS) + " |")
    out("|---|---|---|" + "---|" * len(ALERTS))
    for fam, kind, count, fired in family_table(outcomes):
        out(f"| {kind} | {fam} | {count} | " + " | ".join(str(fired[a]) for a in ALERTS) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    """Build, simulate and score the corpus; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 (default 20)")
    parser.add_argument("--horizon", type=int, default=HORIZON, help="steps per run")
    parser.add_argument("--verbose", action="store_true", help="list every FP and FN run")
    args = parser.parse_args(argv)
    cases = corpus(range(args.seeds), args.horizon)
    t = time.perf_counter()
    outcomes = simulate(cases, args.horizon)
    elapsed = time.perf_counter() - t
    print(f"corpus: {len(cases)} runs ({args.seeds} seeds), {args.horizon} steps each; "
          f"simulated in {elapsed:.1f} s on {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    kinds: dict[str, int] = {}
    for c in cases:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    print("runs per kind: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
    print()
    report(outcomes)
    if args.verbose:
        by_name = {o.case.name: o for o in outcomes}
        for a, s in score(outcomes).items():
            for name in s.fp_runs:
                o = by_name[name]
                print(f"FP {a}: {name} first active at step {o.first[a]} "
                      f"(onset {o.case.onset})")
            for name in s.fn_runs:
                print(f"FN {a}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
