"""Optimizers, schedules, clipping and noise: closed forms and direct transcriptions of
torch.optim's documented algorithms (no torch needed)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from simulator.config import RunSpec, load_config
from simulator.engine import Engine
from simulator.schedules import LearningRates

QUIET = "detect: {divergence_growth_steps: 0, divergence_loss: 1e300, divergence_parameter: 1e300}"


def runs(body: str, defaults: str = "") -> tuple[RunSpec, ...]:
    text = f"defaults: {{steps: 10000, {QUIET}{', ' + defaults if defaults else ''}}}\nruns:\n"
    return load_config(text + body, "f.yaml").runs


def trajectory(engine: Engine, run: str, steps: int) -> list[np.ndarray]:
    """Parameters of ``run`` after 0, 1, ..., steps steps."""
    out = []
    for k in range(steps + 1):
        engine.advance(float(k))
        out.append(engine.parameters(run))
    return out


# --------------------------------------------------------------------------- torch transcriptions

H = np.array([0.5, 1.0, 2.0])
C = np.array([1.0, -1.0, 0.5])
W0 = np.array([2.0, 0.0, -1.0])


def reference(opt: dict[str, float | bool | str], steps: int) -> list[np.ndarray]:
    """torch.optim's documented algorithm (pseudo-code of the docs) on J = 1/2 sum h (w - c)^2,
    written out one step at a time, independently of simulator.optim."""
    kind = str(opt["kind"])
    lr = float(opt["learning_rate"])
    wd = float(opt.get("weight_decay", 1e-2 if kind == "adamw" else 0.0))
    mu = float(opt.get("momentum", 0.9 if kind in ("momentum", "nesterov") else 0.0))
    tau = float(opt.get("dampening", 0.0))
    nesterov = kind == "nesterov" or bool(opt.get("nesterov", False))
    b1, b2 = 0.9, 0.999
    eps = float(opt.get("eps", 1e-8))
    alpha = float(opt.get("alpha", 0.99))
    centered = bool(opt.get("centered", False))
    theta = W0.copy()
    b = np.zeros(3)
    m = np.zeros(3)
    v = np.zeros(3)
    g_ave = np.zeros(3)
    out = [theta.copy()]
    for t in range(1, steps + 1):
        g = H * (theta - C)
        if kind in ("sgd", "momentum", "nesterov"):
            if wd:
                g = g + wd * theta
            if mu:
                b = g.copy() if t == 1 else mu * b + (1 - tau) * g
                g = g + mu * b if nesterov else b
            theta = theta - lr * g
        elif kind in ("adam", "adamw"):
            if kind == "adamw":
                theta = theta - lr * wd * theta
            elif wd:
                g = g + wd * theta
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        elif kind == "rmsprop":
            if wd:
                g = g + wd * theta
            v = alpha * v + (1 - alpha) * g * g
            avg = v
            if centered:
                g_ave = alpha * g_ave + (1 - alpha) * g
                avg = v - g_ave * g_ave
            if mu > 0:
                b = mu * b + g / (np.sqrt(avg) + eps)
                theta = theta - lr * b
            else:
                theta = theta - lr * g / (np.sqrt(avg) + eps)
        out.append(theta.copy())
    return out


OPTIMIZERS = [
    {"kind": "sgd", "learning_rate": 0.3, "weight_decay": 0.1},
    {"kind": "sgd", "learning_rate": 0.2, "momentum": 0.8, "dampening": 0.3},
    {"kind": "sgd", "learning_rate": 0.2, "momentum": 0.5, "nesterov": True,
     "weight_decay": 0.05},
    {"kind": "momentum", "learning_rate": 0.1},
    {"kind": "nesterov", "learning_rate": 0.1},
    {"kind": "adam", "learning_rate": 0.05},
    {"kind": "adam", "learning_rate": 0.05, "weight_decay": 0.1},
    {"kind": "adamw", "learning_rate": 0.05},
    {"kind": "adamw", "learning_rate": 0.05, "weight_decay": 0.2, "eps": 1e-3},
    {"kind": "rmsprop", "learning_rate": 0.01},
    {"kind": "rmsprop", "learning_rate": 0.01, "alpha": 0.9, "momentum": 0.5,
     "centered": True, "weight_decay": 0.1},
]


def _yaml(opt: dict[str, float | bool | str]) -> str:
    def fmt(v: float | bool | str) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)
    return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in opt.items()) + "}"


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_every_optimizer_matches_its_torch_documented_algorithm(
        opt: dict[str, float | bool | str]) -> None:
    specs = runs(f"""  - name: r
    landscape: {{kind: quadratic, curvatures: [0.5, 1, 2], c: [1, -1, 0.5], b: 0}}
    init: [2, 0, -1]
    optimizer: {_yaml(opt)}
""")
    got = trajectory(Engine(specs), "r", 60)
    want = reference(opt, 60)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-13, err_msg=f"step {k}")


def test_momentum_and_nesterov_kinds_are_sgd_shorthands() -> None:
    specs = runs("""  - name: a
    optimizer: {kind: momentum, learning_rate: 0.1}
  - name: b
    optimizer: {kind: sgd, learning_rate: 0.1, momentum: 0.9}
  - name: c
    optimizer: {kind: nesterov, learning_rate: 0.1}
  - name: d
    optimizer: {kind: sgd, learning_rate: 0.1, momentum: 0.9, nesterov: true}
""", "init: 5.5")
    e = Engine(specs)
    e.advance(30.0)
    assert e.parameters("a").tobytes() == e.parameters("b").tobytes()
    assert e.parameters("c").tobytes() == e.parameters("d").tobytes()
    assert e.parameters("a").tobytes() != e.parameters("c").tobytes()


@pytest.mark.parametrize(("lr", "mu"), [(0.05, 0.9), (0.2, 0.5), (0.45, 0.3)])
def test_heavy_ball_momentum_follows_its_linear_recurrence(lr: float, mu: float) -> None:
    # b_k = mu b_{k-1} + h z_k, z_{k+1} = z_k - lr b_k  =>  z_{k+1} = (1 + mu - lr h) z_k
    # - mu z_{k-1}, with z_1 = (1 - lr h) z_0 (the buffer starts as the first gradient).
    specs = runs(f"""  - name: r
    landscape: {{kind: quadratic, curvatures: [0.1, 1, 3], c: 0, b: 0}}
    init: [1, -2, 0.5]
    optimizer: {{kind: momentum, learning_rate: {lr}, momentum: {mu}}}
""")
    got = trajectory(Engine(specs), "r", 80)
    h = np.array([0.1, 1.0, 3.0])
    z_prev, z = np.array([1.0, -2.0, 0.5]), (1 - lr * h) * np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(got[1], z, rtol=1e-14)
    for k in range(2, 81):
        z_prev, z = z, (1 + mu - lr * h) * z - mu * z_prev
        np.testing.assert_allclose(got[k], z, rtol=1e-9, atol=1e-15, err_msg=f"step {k}")


def test_adam_first_step_moves_every_coordinate_by_the_learning_rate() -> None:
    # Bias correction: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr sign(g),
    # whatever the scale of g (here gradients from 1e-3 to 1e3).
    specs = runs("""  - name: r
    landscape: {kind: quadratic, curvatures: [1e-3, 1, 1e3, 7], c: 0, b: 0}
    init: [1, -1, 1, -3]
    optimizer: {kind: adam, learning_rate: 0.01}
""")
    e = Engine(specs)
    w0 = e.parameters("r")
    e.advance(1.0)
    np.testing.assert_allclose(np.abs(e.parameters("r") - w0), 0.01, rtol=1e-5)
    assert np.all(np.sign(e.parameters("r") - w0) == -np.sign(w0))


def test_weight_decay_acts_on_the_parameters_not_on_the_displacement() -> None:
    # Fixed point of SGD with L2: h (w - c) + wd w = 0  =>  w* = h c / (h + wd).
    specs = runs("""  - name: r
    landscape: {kind: quadratic, a: 1, c: 2, b: 0}
    init: 5
    optimizer: {kind: sgd, learning_rate: 0.2, weight_decay: 0.5}
""")
    e = Engine(specs)
    e.advance(300.0)
    assert e.parameters("r")[0] == pytest.approx(2 * 2 / (2 + 0.5), rel=1e-12)


def test_optimizer_state_is_reset_on_restart_and_kept_on_reconfigure() -> None:
    specs = runs("""  - name: r
    landscape: {kind: quadratic, curvatures: [1, 2], c: 0}
    init: [1, 1]
    optimizer: {kind: adam, learning_rate: 0.1}
    steps: 20
    loop: true
""")
    e = Engine(specs)
    first = trajectory(e, "r", 20)
    e.advance(21.0)  # restart (one interval after the last step)
    assert int(e.runs.restarts[0]) == 1
    second = [e.parameters("r")]
    for k in range(1, 21):
        e.advance(21.0 + k)
        second.append(e.parameters("r"))
    for a, b in zip(first, second, strict=True):
        assert a.tobytes() == b.tobytes()
    # Reconfiguring with the same spec keeps the state: the continuation is bit-identical.
    plain, reloaded = Engine(specs), Engine(specs)
    plain.advance(7.0)
    reloaded.advance(7.0)
    reloaded = reloaded.reconfigured(specs)
    plain.advance(15.0)
    reloaded.advance(15.0)
    assert plain.parameters("r").tobytes() == reloaded.parameters("r").tobytes()


# --------------------------------------------------------------------------- schedules


def schedule_lr(schedule: str, t: list[int], lr: float = 0.1, steps: int = 100) -> list[float]:
    spec = runs(f"  - name: r\n    optimizer: {{learning_rate: {lr}}}\n    steps: {steps}\n"
                f"    schedule: {schedule}\n")
    # one run per t: Schedules evaluates each run at its own step count
    sch = LearningRates([s.schedule for s in spec] * len(t), np.full(len(t), lr))
    return [float(x) for x in sch.lr(np.array(t))]


@pytest.mark.parametrize(("schedule", "t", "want"), [
    ("{kind: constant}", [0, 50], [0.1, 0.1]),
    ("{kind: step, step_size: 10, gamma: 0.5}", [0, 9, 10, 25], [0.1, 0.1, 0.05, 0.025]),
    ("{kind: step, step_size: 30}", [29, 30, 60], [0.1, 0.01, 0.001]),  # torch's gamma 0.1
    ("{kind: exponential, gamma: 0.9}", [0, 1, 3], [0.1, 0.09, 0.0729]),
    ("{kind: cosine, T_max: 100, eta_min: 0.01}", [0, 50, 100], [0.1, 0.055, 0.01]),
    ("{kind: cosine}", [0, 50, 100], [0.1, 0.05, 0.0]),  # T_max defaults to steps
    ("{kind: constant, warmup: {steps: 10, start_factor: 0.1}}", [0, 5, 10, 40],
     [0.01, 0.055, 0.1, 0.1]),
    ("{kind: cosine, T_max: 100, eta_min: 0.01, warmup: {steps: 10, start_factor: 0.5}}",
     [0, 10, 60, 110], [0.05, 0.1, 0.055, 0.01]),
    ("{kind: step, step_size: 10, gamma: 0.5, warmup: {steps: 4}}", [0, 4, 14],
     [0.1 / 3, 0.1, 0.05]),
])
def test_schedule_values_at_chosen_steps(schedule: str, t: list[int], want: list[float]) -> None:
    assert schedule_lr(schedule, t) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_exported_learning_rate_is_the_schedule_times_the_fault_multiplier() -> None:
    specs = runs("""  - name: r
    init: 5.5
    optimizer: {learning_rate: 0.1}
    schedule: {kind: exponential, gamma: 0.9}
    faults:
      - {kind: lr_spike, at: 5s, duration: 2s, factor: 3}
""")
    e = Engine(specs)
    seen = []
    for k in range(1, 9):
        e.advance(float(k))
        seen.append(float(e.runs.lr[0]))
    want = [0.1 * 0.9 ** (k - 1) * (3 if k in (5, 6) else 1) for k in range(1, 9)]
    assert seen == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- clipping, noise


def test_clip_grad_norm_caps_the_update_at_lr_times_max_norm() -> None:
    specs = runs("""  - name: clipped
    landscape: {kind: quadratic, curvatures: [2, 2], c: 0, b: 0}
    init: [300, 400]
    optimizer: {learning_rate: 0.1}
    clip_grad_norm: 5
  - name: free
    landscape: {kind: quadratic, curvatures: [2, 2], c: 0, b: 0}
    init: [300, 400]
    optimizer: {learning_rate: 0.1}
""")
    e = Engine(specs)
    e.advance(1.0)
    row = e.row_of["clipped"]
    # |grad| = 1000: clipped to 5 * 1000 / (1000 + 1e-6); the exported norm is the unclipped one
    assert float(e.runs.update_norm[row]) == pytest.approx(0.1 * 5 * 1000 / (1000 + 1e-6),
                                                           rel=1e-12)
    w = e.parameters("clipped")
    assert w / np.linalg.norm(w) == pytest.approx(np.array([0.6, 0.8]), rel=1e-12)
    assert float(e.runs.update_norm[e.row_of["free"]]) == pytest.approx(100.0, rel=1e-12)
    e.advance(2000.0)  # once the gradient is below the cap, clipping is a no-op
    assert float(e.runs.loss[row]) < 1e-12


NOISY = """  - name: nqm
    landscape: {kind: noisy_quadratic, dims: 20, batch_size: 8}
    init: 1
    optimizer: {kind: sgd, learning_rate: 0.3}
    seed: SEED
  - name: logreg
    landscape: {kind: logistic_regression, features: 4, samples: 200, batch_size: 16}
    optimizer: {kind: adam, learning_rate: 0.05}
    gradient_noise: 0.1
    loss_noise: 0.05
    seed: SEED
  - name: quad
    landscape: {kind: quadratic, condition_number: 10, dims: 3, rotate: true}
    init: 3
    optimizer: {kind: rmsprop}
    gradient_noise: 0.5
    seed: SEED
"""


def test_noisy_runs_are_bit_identical_across_engines_and_differ_across_seeds() -> None:
    a, b = Engine(runs(NOISY.replace("SEED", "1"))), Engine(runs(NOISY.replace("SEED", "1")))
    c = Engine(runs(NOISY.replace("SEED", "2")))
    for t in np.arange(0.0, 120.0, 0.7):
        for e in (a, b, c):
            e.advance(float(t))
    sa, sb, sc = a.snapshot(1), b.snapshot(1), c.snapshot(1)
    for field in ("loss", "gradient_norm", "update_norm", "validation_loss"):
        assert getattr(sa, field).tobytes() == getattr(sb, field).tobytes(), field
    for i in range(3):
        assert sa.loss[i] != sc.loss[i], sa.names[i]


def test_a_run_gives_the_same_bits_alone_and_in_a_fleet() -> None:
    fleet = runs(NOISY.replace("SEED", "3") + """  - name: other
    landscape: {kind: noisy_quadratic, dims: 20, batch_size: 8}
    optimizer: {kind: sgd, learning_rate: 0.1}
""")
    together = Engine(fleet)
    together.advance(50.0)
    for spec in fleet:
        alone = Engine([spec])
        alone.advance(50.0)
        i = together.row_of[spec.name]
        assert alone.runs.loss[0] == together.runs.loss[i]
        assert alone.parameters(spec.name).tobytes() == together.parameters(spec.name).tobytes()


def test_loss_noise_changes_the_reported_loss_but_never_the_trajectory() -> None:
    clean = runs("""  - name: r
    landscape: {kind: noisy_quadratic, dims: 10}
    init: 1
    optimizer: {learning_rate: 0.5}
""")
    noisy = [dataclasses.replace(clean[0], loss_noise=0.3)]
    a, b = Engine(clean), Engine(noisy)
    a.advance(40.0)
    b.advance(40.0)
    assert a.parameters("r").tobytes() == b.parameters("r").tobytes()
    assert a.runs.grad_norm.tobytes() == b.runs.grad_norm.tobytes()
    assert a.runs.loss[0] != b.runs.loss[0]
    assert abs(float(b.runs.loss[0] - a.runs.loss[0])) < 0.3 * 6


def test_gradient_noise_has_the_configured_standard_deviation() -> None:
    # At the optimum of J = |w|^2 the observed gradient is pure noise: sigma * N(0, I).
    specs = runs("""  - name: r
    landscape: {kind: quadratic, curvatures: [2, 2, 2, 2], c: 0}
    init: 0
    optimizer: {learning_rate: 1e-12}
    gradient_noise: 0.25
""")
    e = Engine(specs)
    norms = []
    for k in range(1, 2001):
        e.advance(float(k))
        norms.append(float(e.runs.grad_norm[0]) ** 2)
    # E|g|^2 = 4 sigma^2 = 0.25; sd of the mean over 2000 draws ~ 0.25 * sqrt(2/4/2000)
    assert np.mean(norms) == pytest.approx(0.25, abs=5 * 0.25 * math.sqrt(0.5 / 2000))
