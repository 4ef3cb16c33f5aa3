"""Landscapes: closed forms, gradients, the noisy quadratic model's steady state, the
divergence threshold of SGD, logistic regression, and config validation of the new keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from simulator import landscapes
from simulator.collector import TrainsimCollector
from simulator.config import ConfigError, RunSpec, load_config
from simulator.engine import ALERTS, Engine

QUIET = "detect: {divergence_growth_steps: 0, divergence_loss: 1e300, divergence_parameter: 1e300}"


def runs(body: str, defaults: str = f"steps: 10000, {QUIET}") -> tuple[RunSpec, ...]:
    return load_config(f"defaults: {{{defaults}}}\nruns:\n{body}", "f.yaml").runs


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, "f.yaml")
    return str(info.value).splitlines()


# --------------------------------------------------------------------------- quadratic


def test_n_d_quadratic_descends_along_each_eigen_direction_in_closed_form() -> None:
    # z_k,i = (1 - lr h_i)^k z_0,i; J_k = 1/2 sum h_i z_k,i^2 + b
    h = np.array([0.2, 1.0, 1.7, 3.0])
    c = np.array([1.0, -2.0, 0.0, 5.0])
    w0 = np.array([4.0, 0.5, -3.0, 5.5])
    lr = 0.3
    e = Engine(runs("""  - name: r
    landscape: {kind: quadratic, curvatures: [0.2, 1, 1.7, 3], c: [1, -2, 0, 5], b: 0.5}
    init: [4, 0.5, -3, 5.5]
    optimizer: {learning_rate: 0.3}
"""))
    for k in range(61):
        e.advance(float(k))
        z = (1 - lr * h) ** k * (w0 - c)
        reg = CollectorRegistry()
        snap = e.snapshot(1)
        reg.register(TrainsimCollector(lambda snap=snap: snap))
        for i in range(4):
            got = reg.get_sample_value("trainsim_parameter", {"run": "r", "dim": str(i)})
            assert got == pytest.approx(c[i] + z[i], rel=1e-12, abs=1e-15), (k, i)
        assert reg.get_sample_value("trainsim_loss", {"run": "r"}) == pytest.approx(
            0.5 * np.sum(h * z * z) + 0.5, rel=1e-12)


def test_rotated_quadratic_follows_the_closed_form_in_its_eigenbasis() -> None:
    e = Engine(runs("""  - name: r
    landscape: {kind: quadratic, condition_number: 50, dims: 6, rotate: true, c: 1, b: 0}
    init: [3, -1, 2, 0, 4, -2]
    optimizer: {learning_rate: 0.03}
    seed: 11
"""))
    q = landscapes.rotation(int(e.keys[0]), 6)
    assert np.allclose(q.T @ q, np.eye(6), atol=1e-13)
    assert not np.allclose(np.abs(q), np.eye(6))  # really rotated
    h = 50.0 ** (np.arange(6) / 5)  # log-spaced from 1 to kappa
    y0 = q.T @ (np.array([3.0, -1, 2, 0, 4, -2]) - 1.0)
    for k in (1, 10, 50):
        e.advance(float(k))
        y = q.T @ (e.parameters("r") - 1.0)
        np.testing.assert_allclose(y, (1 - 0.03 * h) ** k * y0, rtol=1e-10, atol=1e-13)
        assert float(e.runs.loss[0]) == pytest.approx(0.5 * np.sum(h * y * y), rel=1e-10)


def test_sgd_diverges_exactly_when_lr_exceeds_2_over_lambda_max() -> None:
    # Along the eigenvector of lambda_max, z_k = (1 - lr lambda_max)^k z_0: |.| > 1 iff
    # lr > 2 / lambda_max. The detector's verdict over 3000 steps must agree on a grid around it.
    lam_max = 4.0
    factors = (0.3, 0.8, 0.95, 0.99, 1.01, 1.05, 1.2, 2.0)
    body = "".join(f"""  - name: f{f}
    landscape: {{kind: quadratic, curvatures: [0.5, 1.5, {lam_max}], c: 0, b: 1}}
    init: [1, 1, 1]
    optimizer: {{learning_rate: {f * 2 / lam_max}}}
""" for f in factors)
    e = Engine(runs(body, "steps: 3000"))
    e.advance(3000.0)
    verdict = {name: bool(e.runs.diverged[e.row_of[name]]) for name in e.names}
    assert verdict == {f"f{f}": f > 1 for f in factors}
    snap = e.snapshot(1)
    col = ALERTS.index("divergence")
    assert [bool(snap.alerts[e.row_of[f"f{f}"], col]) for f in factors] == \
        [f > 1 for f in factors]


# --------------------------------------------------------------------------- noisy quadratic


def nqm_expected_loss(h: np.ndarray, lr: float, batch: float) -> tuple[float, float]:
    """Stationary E[J] of constant-lr SGD on the NQM, and the per-step variance sum used for
    the tolerance (see the test's docstring)."""
    rho = 1 - lr * h
    s = lr / (batch * (2 - lr * h))  # stationary Var z_i
    mean = float(np.sum(0.5 * h * s))
    var_factor = float(np.sum((0.5 * h) ** 2 * 2 * s**2 * (1 + rho**2) / (1 - rho**2)))
    return mean, var_factor


def test_noisy_quadratic_steady_state_loss_matches_its_analytic_value() -> None:
    """Per coordinate, z' = (1 - lr h) z - lr sqrt(h / B) xi, an AR(1) process with
    rho = 1 - lr h and stationary variance s = lr / (B (2 - lr h)); so
    E[J] = sum_i h_i s_i / 2 = sum_i lr h_i / (2 B (2 - lr h_i)).

    Tolerance: z_i is Gaussian, Cov(z_i,k^2, z_i,k+l^2) = 2 s_i^2 rho_i^(2|l|), so the mean of J
    over T steps of one run has variance at most (1/T) sum_i (h_i/2)^2 2 s_i^2
    (1 + rho_i^2) / (1 - rho_i^2); R independent runs divide it by R. We accept 5 standard
    deviations (a false failure has probability ~6e-7 under the CLT) and check that this is
    tight: below 3% of E[J]. Runs start at the optimum; the first 300 steps are dropped
    (the slowest mode's variance is then within rho^600 ~ 1e-27 of stationary).
    """
    dims, lr, batch, runs_n, burn, steps = 10, 0.5, 4.0, 48, 300, 2000
    body = "".join(f"""  - name: nqm-{i}
    landscape: {{kind: noisy_quadratic, dims: {dims}, batch_size: {batch}}}
    init: 0
    optimizer: {{learning_rate: {lr}}}
    seed: {i}
""" for i in range(runs_n))
    e = Engine(runs(body))
    total = 0.0
    for k in range(1, burn + steps + 1):
        e.advance(float(k))
        if k > burn:
            total += float(e.runs.loss.sum())
    estimate = total / (runs_n * steps)
    h = np.arange(1, dims + 1, dtype=np.float64) ** -1.0
    mean, var_factor = nqm_expected_loss(h, lr, batch)
    tolerance = 5 * math.sqrt(var_factor / (steps * runs_n))
    assert tolerance < 0.03 * mean
    assert estimate == pytest.approx(mean, abs=tolerance)


def test_noisy_quadratic_curvatures_follow_the_power_law() -> None:
    e = Engine(runs("""  - name: r
    landscape: {kind: noisy_quadratic, dims: 10000, power: 1.5, batch_size: 32}
    init: 1
    optimizer: {learning_rate: 0.1}
"""))
    lands = e.groups[0].landscape
    assert isinstance(lands, landscapes.NoisyQuadraticLandscape)
    i = np.arange(1, 10001, dtype=np.float64)
    np.testing.assert_allclose(lands.h, i**-1.5, rtol=1e-15)
    np.testing.assert_allclose(lands.noise_scale, np.sqrt(i**-1.5 / 32), rtol=1e-15)
    assert float(e.runs.loss[0]) == pytest.approx(0.5 * np.sum(i**-1.5), rel=1e-12)


# --------------------------------------------------------------------------- other landscapes


@pytest.mark.parametrize("landscape", [
    "{kind: rosenbrock, dims: 4}",
    "{kind: rosenbrock, a: 2, b: 10, dims: 2}",
    "{kind: plateau, scale: 3, width: 2, c: [1, -1, 0], b: 0.5}",
    "{kind: quadratic, condition_number: 30, dims: 4, rotate: true}",
])
def test_gradient_matches_finite_differences(landscape: str) -> None:
    spec = runs(f"  - name: r\n    landscape: {landscape}\n    optimizer: {{learning_rate: 0.1}}\n")
    e = Engine(spec)
    g = e.groups[0]
    d = g.dims
    gen = np.random.Generator(np.random.PCG64(5))
    z = gen.normal(size=(1, d)) * 0.7
    _, grad = g.landscape.loss_grad(z, slice(None), None, None)
    for i in range(d):
        step = np.zeros((1, d))
        step[0, i] = 1e-6
        up, _ = g.landscape.loss_grad(z + step, slice(None), None, None)
        down, _ = g.landscape.loss_grad(z - step, slice(None), None, None)
        assert grad[0, i] == pytest.approx((up[0] - down[0]) / 2e-6, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize(("landscape", "optimum"), [
    ("{kind: quadratic, a: 1, c: 2, b: 1}", 1.0),
    ("{kind: quadratic, condition_number: 30, dims: 4, rotate: true, b: -3}", -3.0),
    ("{kind: noisy_quadratic, dims: 8}", 0.0),
    ("{kind: plateau, scale: 3, width: 2, c: [1, -1, 0], b: 0.5}", 0.5),
    ("{kind: rosenbrock, dims: 4}", 0.0),
])
def test_excess_loss_is_the_loss_above_the_minimum_and_keeps_its_precision_near_it(
        landscape: str, optimum: float) -> None:
    spec = runs(f"  - name: r\n    landscape: {landscape}\n    optimizer: {{learning_rate: 0.1}}\n")
    assert spec[0].landscape.optimum == optimum
    g = Engine(spec).groups[0]
    gen = np.random.Generator(np.random.PCG64(11))
    for scale in (1.0, 1e-3):  # away from the minimum: the same as J - min J
        z = gen.normal(size=(3, g.dims)) * scale
        loss = g.landscape.surface(z, 0)[0]
        assert g.landscape.excess(z, np.zeros(3, np.intp)) == pytest.approx(loss - optimum,
                                                                            rel=1e-9, abs=1e-15)
    if spec[0].landscape.kind != "rosenbrock":  # its minimum is not at z = 0
        tiny = np.full((1, g.dims), 1e-12)  # J - min J would cancel to 0 (or noise) here
        excess = g.landscape.excess(tiny, np.zeros(1, np.intp))[0]
        assert 0 < excess < 1e-20


def test_excess_loss_is_exported_only_where_the_minimum_is_known() -> None:
    e = Engine(runs("""  - name: bowl
    landscape: {kind: quadratic, b: 4}
    init: 3
    optimizer: {learning_rate: 0.1}
  - name: classifier
    landscape: {kind: logistic_regression}
    optimizer: {learning_rate: 0.1}
"""))
    snap = e.snapshot(1)
    assert [snap.names[r] for r in snap.excess_rows.tolist()] == ["bowl"]
    assert snap.excess_loss.tolist() == [snap.loss[snap.excess_rows[0]] - 4.0]


@pytest.mark.parametrize(("landscape", "minimum"), [
    ("{kind: rosenbrock, dims: 5}", "[1, 1, 1, 1, 1]"),
    ("{kind: rosenbrock, a: 1.5}", "[1.5, 2.25]"),  # 2-D: (a, a^2)
])
def test_rosenbrock_minimum_is_zero(landscape: str, minimum: str) -> None:
    e = Engine(runs(f"""  - name: r
    landscape: {landscape}
    init: {minimum}
    optimizer: {{learning_rate: 0.001}}
"""))
    assert float(e.runs.loss[0]) == 0.0
    assert float(e.runs.grad_norm[0]) == 0.0


def test_plateau_gradient_vanishes_far_out_and_the_run_descends_once_it_reaches_the_well() -> None:
    e = Engine(runs("""  - name: r
    landscape: {kind: plateau, width: 1, c: 0, b: 0}
    init: 2.4
    optimizer: {learning_rate: 0.5}
""", "steps: 400"))
    assert float(e.runs.loss[0]) == pytest.approx(1 - math.exp(-2.4**2), rel=1e-12)
    assert float(e.runs.grad_norm[0]) < 0.02
    loss = []
    for k in range(0, 400, 10):
        e.advance(float(k))
        loss.append(float(e.runs.loss[0]))
    assert min(loss[:4]) > 0.95  # 30 steps creeping along the flat region
    assert loss[-1] < 1e-12  # then down the well


def test_logistic_regression_trains_and_exports_a_validation_loss() -> None:
    e = Engine(runs("""  - name: logreg
    landscape: {kind: logistic_regression, features: 6, samples: 1000, batch_size: 64}
    optimizer: {kind: sgd, learning_rate: 0.5}
  - name: bowl
    optimizer: {learning_rate: 0.1}
"""))
    assert float(e.runs.loss[e.row_of["logreg"]]) == pytest.approx(math.log(2), rel=1e-12)
    e.advance(300.0)
    snap = e.snapshot(1)
    assert [snap.names[r] for r in snap.validation_rows] == ["logreg"]
    val = float(snap.validation_loss[0])
    assert val < math.log(2) - 0.05  # this data set's Bayes loss is ~0.57
    # The held-out loss is that of the current weights on the held-out rows
    x, y = landscapes.synthetic_data(e.specs[e.row_of["logreg"]].landscape)  # type: ignore[arg-type]
    logits = x[800:] @ e.parameters("logreg")
    assert val == pytest.approx(np.mean(np.logaddexp(0, logits) - y[800:] * logits), rel=1e-12)
    reg = CollectorRegistry()
    reg.register(TrainsimCollector(lambda: snap))
    assert reg.get_sample_value("trainsim_validation_loss", {"run": "logreg"}) == val
    assert reg.get_sample_value("trainsim_validation_loss", {"run": "bowl"}) is None


def test_runs_with_the_same_data_seed_share_a_data_set_and_draw_their_own_batches() -> None:
    e = Engine(runs("""  - name: a
    landscape: {kind: logistic_regression, data_seed: 4}
    optimizer: {learning_rate: 0.1}
  - name: b
    landscape: {kind: logistic_regression, data_seed: 4}
    optimizer: {learning_rate: 0.1}
  - name: c
    landscape: {kind: logistic_regression, data_seed: 5}
    optimizer: {learning_rate: 0.1}
"""))
    lands = e.groups[0].landscape
    assert isinstance(lands, landscapes.LogisticRegressionLandscape)
    assert lands.x_train.shape == (2, 800, 10)
    e.advance(1.0)
    assert len({float(x) for x in e.runs.loss}) == 3


# --------------------------------------------------------------------------- config


def test_n_d_init_broadcasts_a_number_and_checks_a_list() -> None:
    (r,) = runs("  - name: r\n    landscape: {kind: noisy_quadratic, dims: 5}\n"
                "    init: 0.5\n    optimizer: {learning_rate: 0.1}\n")
    assert r.init == (0.5,) * 5
    assert r.dims == 5


def test_mistakes_in_the_new_keys_name_their_line_and_path() -> None:
    errs = errors_of("""runs:
  - name: a
    landscape: {kind: quadratic, a: 2, curvatures: [1, 2]}
    optimizer: {kind: adam, betas: [0.9, 1.5]}
  - name: b
    landscape: {kind: quadratic, curvatures: [1, -2], c: [1, 2, 3], dims: 2}
    optimizer: {kind: nesterov, learning_rate: 0.1, momentum: 0}
    init: [1, 2, 3]
  - name: c
    landscape: {kind: saddle}
    optimizer: {kind: sgd, learning_rate: 0.1, nesterov: true}
    schedule: {kind: step, gamma: 0.5}
  - name: d
    landscape: {kind: logistic_regression, samples: 10, validation_fraction: 1.5}
    optimizer: {kind: rmsprop, alpha: 2, betas: [0.9, 0.99]}
    schedule: {kind: cosine, T_max: 0, warmup: {start_factor: 0}}
    clip_grad_norm: -1
    gradient_noise: -0.1
    loss_noise: lots
  - name: e
    landscape: {kind: quadratic, dims: 300, rotate: true}
    optimizer: {kind: sgd, learning_rate: 0.1, dampening: 2}
    schedule: {kind: linear}
""")
    assert errs == [
        "f.yaml:3: runs[0].landscape.curvatures: give only one of a, curvatures",
        "f.yaml:4: runs[0].optimizer.betas: each beta must be in [0, 1), got [0.9, 1.5]",
        "f.yaml:6: runs[1].landscape.c: has 3 entries but the landscape has 2 dimensions",
        "f.yaml:6: runs[1].landscape.curvatures: must be > 0, got -2",
        "f.yaml:7: runs[1].optimizer.momentum: must be > 0 for the nesterov optimizer",
        "f.yaml:8: runs[1].init: the quadratic landscape has 2 parameters, got a list of 3",
        "f.yaml:10: runs[2].landscape.kind: unknown landscape kind 'saddle' (expected one of: "
        "quadratic, rosenbrock, noisy_quadratic, plateau, logistic_regression)",
        "f.yaml:11: runs[2].optimizer.nesterov: Nesterov momentum needs momentum > 0 and "
        "dampening 0 (as in torch)",
        "f.yaml:12: runs[2].schedule.step_size: required key is missing",
        "f.yaml:14: runs[3].landscape.validation_fraction: must be strictly between 0 and 1, "
        "got 1.5",
        "f.yaml:15: runs[3].optimizer.alpha: must be between 0 and 1, got 2",
        "f.yaml:15: runs[3].optimizer.betas: unknown key (expected one of: alpha, centered, eps, "
        "kind, learning_rate, momentum, weight_decay)",
        "f.yaml:16: runs[3].schedule.T_max: must be between 1 and 1000000000000, got 0",
        "f.yaml:16: runs[3].schedule.warmup.start_factor: must be > 0 and <= 1, got 0",
        "f.yaml:16: runs[3].schedule.warmup.steps: required key is missing",
        "f.yaml:17: runs[3].clip_grad_norm: must be > 0, got -1",
        "f.yaml:18: runs[3].gradient_noise: must be >= 0, got -0.1",
        "f.yaml:19: runs[3].loss_noise: must be a number, got str 'lots'",
        "f.yaml:21: runs[4].landscape.rotate: supported up to 256 dimensions, got 300",
        "f.yaml:22: runs[4].optimizer.dampening: must be between 0 and 1, got 2",
        "f.yaml:23: runs[4].schedule.kind: unknown schedule kind 'linear' (expected one of: "
        "constant, step, exponential, cosine)",
    ]
