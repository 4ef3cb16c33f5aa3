"""Cost functions for blocks of runs, vectorized: arrays of internal coordinates in, losses and
gradients out. Pure: randomness comes from counter-based streams keyed by run (rng.py).

Every landscape works on internal coordinates z, from which the parameters are
w = ``parameters(z)``; for the quadratic families z = w - c, so values near the optimum keep
full relative precision. The gradient with respect to z equals the gradient with respect to w.
docs/config.md gives each formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator import rng
from simulator.config import (
    LogisticRegression,
    NoisyQuadratic,
    Plateau,
    Quadratic,
    Rosenbrock,
    RunSpec,
)

Floats = NDArray[np.float64]
U64 = NDArray[np.uint64]
Index = slice | NDArray[np.intp]

# Random streams (see rng.py); engine.py owns streams 1-9, landscapes 10 and up.
STREAM_ROTATION = 10
STREAM_NQM_NOISE = 11
STREAM_MINIBATCH = 12


def _centers(specs: Sequence[RunSpec], default: float) -> Floats:
    d = specs[0].dims
    out = np.empty((len(specs), d))
    for i, s in enumerate(specs):
        out[i] = getattr(s.landscape, "c", default)
    return out


def _row_sum_of_squares(z: Floats) -> Floats:
    if z.shape[1] == 1:
        result: Floats = z[:, 0] * z[:, 0]
        return result
    result = np.einsum("ij,ij->i", z, z)
    return result


class Landscape:
    """Base of the landscapes: z = w - c, and the interface the engine calls."""

    kind = ""
    # loss_grad draws random numbers: the engine passes keys and a counter
    stochastic = False
    # has a held-out loss (exported as trainsim_validation_loss)
    has_validation = False

    def __init__(self, specs: Sequence[RunSpec]) -> None:
        self.c = np.zeros((len(specs), specs[0].dims))

    def coordinates(self, w: Floats) -> Floats:
        """Internal coordinates z of parameters w."""
        result: Floats = w - self.c
        return result

    def parameters(self, z: Floats, sel: Index) -> Floats:
        """Parameters w of internal coordinates z, for group members ``sel``."""
        result: Floats = z + self.c[sel]
        return result

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None,
                  counter: U64 | None) -> tuple[Floats, Floats]:
        """Loss (m,) and gradient (m, d) at ``z`` for members ``sel``; stochastic landscapes
        draw from (key, counter)."""
        raise NotImplementedError

    def validation_loss(self, z: Floats, sel: Index) -> Floats:
        """Loss on the held-out split (only when ``has_validation``)."""
        raise NotImplementedError


class QuadraticLandscape(Landscape):
    """J = 1/2 (w - c)^T H (w - c) + b, H = Q diag(h) Q^T, for a block of runs.

    Unrotated, the gradient is h * z; for the seed's 1-D bowl h = 2a, so grad = 2 a z and
    J = a z^2 + b, to the bit as before. A rotated block keeps one orthogonal Q per run, drawn
    from the run's seed (QR of a Gaussian matrix with the signs fixed: Haar-distributed).
    """

    kind = "quadratic"

    def __init__(self, specs: Sequence[RunSpec], keys: U64 | None = None) -> None:
        super().__init__(specs)
        self.c = _centers(specs, 0.0)
        self.h = np.array([_quadratic(s).eigenvalues() for s in specs], dtype=np.float64)
        self.b = np.array([_quadratic(s).b for s in specs], dtype=np.float64)
        self.q: Floats | None = None
        if _quadratic(specs[0]).rotate:
            assert keys is not None
            self.q = np.stack([rotation(int(k), self.h.shape[1]) for k in keys])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """Loss (m,) and gradient (m, d) at internal coordinates ``z`` for members ``sel``."""
        h = self.h[sel]
        if self.q is not None:
            q = self.q[sel]
            y = np.einsum("mji,mj->mi", q, z)  # eigen-coordinates Q^T z
            hy = h * y
            grad: Floats = np.einsum("mij,mj->mi", q, hy)
            loss: Floats = 0.5 * np.einsum("ij,ij->i", hy, y) + self.b[sel]
            return loss, grad
        grad = h * z
        if z.shape[1] == 1:  # one parameter: skip a reduction over an axis of length 1
            loss = grad[:, 0] * z[:, 0] * 0.5 + self.b[sel]
        else:
            loss = 0.5 * np.einsum("ij,ij->i", grad, z) + self.b[sel]
        return loss, grad


def _quadratic(spec: RunSpec) -> Quadratic:
    assert isinstance(spec.landscape, Quadratic)
    return spec.landscape


def rotation(key: int, d: int) -> Floats:
    """A seeded d x d orthogonal matrix (Haar measure) for the run with random key ``key``."""
    keys = np.full(d, key, dtype=np.uint64)
    g = rng.standard_normal(keys, STREAM_ROTATION, np.arange(d, dtype=np.uint64), d)
    q, r = np.linalg.qr(g)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    result: Floats = q * signs[None, :]
    return result


class RosenbrockLandscape(Landscape):
    """J = sum_{i<d} b (w_{i+1} - w_i^2)^2 + (a - w_i)^2; z = w (no shift)."""

    kind = "rosenbrock"

    def __init__(self, specs: Sequence[RunSpec]) -> None:
        super().__init__(specs)
        ls = [s.landscape for s in specs]
        assert all(isinstance(x, Rosenbrock) for x in ls)
        self.a = np.array([[getattr(x, "a", 1.0)] for x in ls])
        self.b = np.array([[getattr(x, "b", 100.0)] for x in ls])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """Loss and gradient of the Rosenbrock valley."""
        a, b = self.a[sel], self.b[sel]
        head, tail = z[:, :-1], z[:, 1:]
        bend = tail - head * head  # w_{i+1} - w_i^2
        off = a - head  # a - w_i
        loss: Floats = np.sum(b * bend * bend + off * off, axis=1)
        grad = np.zeros_like(z)
        grad[:, :-1] = -4.0 * b * head * bend - 2.0 * off
        grad[:, 1:] += 2.0 * b * bend
        return loss, grad


class NoisyQuadraticLandscape(Landscape):
    """Zhang et al. (2019)'s noisy quadratic model: J = 1/2 sum_i h_i z_i^2 with h_i = i^-p,
    and a minibatch gradient h * z + sqrt(h / B) * N(0, I) (noise covariance H / B).

    Runs of a block share p and B (they are part of the group key), so h is one vector.
    """

    kind = "noisy_quadratic"
    stochastic = True

    def __init__(self, specs: Sequence[RunSpec]) -> None:
        super().__init__(specs)
        first = specs[0].landscape
        assert isinstance(first, NoisyQuadratic)
        self.c = _centers(specs, 0.0)
        self.h = np.array(first.eigenvalues(), dtype=np.float64)
        self.noise_scale = np.sqrt(self.h / first.batch_size)

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None,
                  counter: U64 | None) -> tuple[Floats, Floats]:
        """Loss (noise-free) and a minibatch gradient with covariance H / B."""
        assert keys is not None and counter is not None
        hz = self.h * z
        loss: Floats = 0.5 * np.einsum("ij,ij->i", hz, z)
        noise = rng.standard_normal(keys, STREAM_NQM_NOISE, counter, z.shape[1])
        grad: Floats = hz + self.noise_scale * noise
        return loss, grad


class PlateauLandscape(Landscape):
    """J = scale * (1 - exp(-|z|^2 / s^2)) + b: almost flat far from c, a well around it."""

    kind = "plateau"

    def __init__(self, specs: Sequence[RunSpec]) -> None:
        super().__init__(specs)
        ls = [s.landscape for s in specs]
        assert all(isinstance(x, Plateau) for x in ls)
        self.c = _centers(specs, 0.0)
        self.scale = np.array([getattr(x, "scale", 1.0) for x in ls])
        self.inv_s2 = np.array([1.0 / getattr(x, "width", 1.0) ** 2 for x in ls])
        self.b = np.array([getattr(x, "b", 0.0) for x in ls])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """Loss and gradient; 1 - exp(-x) as -expm1(-x) keeps precision near the optimum."""
        scale, inv_s2 = self.scale[sel], self.inv_s2[sel]
        x = _row_sum_of_squares(z) * inv_s2
        loss: Floats = -scale * np.expm1(-x) + self.b[sel]
        grad: Floats = (2.0 * scale * inv_s2 * np.exp(-x))[:, None] * z
        return loss, grad


def _sigmoid(x: Floats) -> Floats:
    result: Floats = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
    return result


def synthetic_data(spec: LogisticRegression) -> tuple[Floats, Floats]:
    """The seeded data set of a logistic-regression run: features X (samples, features) ~ N(0, 1)
    and labels y ~ Bernoulli(sigmoid(X w*)), w* ~ N(0, 9 / features) (logits of std ~3, so the
    classes overlap and the loss has a floor). Rows [0, n_train) train, the rest validate."""
    gen = np.random.Generator(np.random.PCG64(spec.data_seed))
    f = spec.features
    w_true = gen.standard_normal(f) * (3.0 / np.sqrt(f))
    x = gen.standard_normal((spec.samples, f))
    y = (gen.random(spec.samples) < _sigmoid(x @ w_true)).astype(np.float64)
    return x, y


class LogisticRegressionLandscape(Landscape):
    """Binary cross-entropy of a linear classifier (no intercept), one minibatch per step.

    The loss and gradient of step k are those of minibatch k (``batch_size`` training rows
    drawn with replacement from the run's stream), at the parameters the step starts from: what
    a training loop logs. Runs that share ``data_seed`` share one data set in memory.
    """

    kind = "logistic_regression"
    stochastic = True
    has_validation = True

    def __init__(self, specs: Sequence[RunSpec]) -> None:
        super().__init__(specs)
        ls: list[Any] = [s.landscape for s in specs]
        assert all(isinstance(x, LogisticRegression) for x in ls)
        first: LogisticRegression = ls[0]
        n_val = first.validation_samples
        self.n_train = first.samples - n_val
        self.batch = first.batch_size
        seeds = sorted({x.data_seed for x in ls})
        index = {s: i for i, s in enumerate(seeds)}
        self.dataset = np.array([index[x.data_seed] for x in ls], dtype=np.intp)
        data = [synthetic_data(LogisticRegression(first.features, first.samples, self.batch,
                                                  first.validation_fraction, s)) for s in seeds]
        self.x_train = np.stack([x[: self.n_train] for x, _ in data])
        self.y_train = np.stack([y[: self.n_train] for _, y in data])
        self.x_val = np.stack([x[self.n_train:] for x, _ in data])
        self.y_val = np.stack([y[self.n_train:] for _, y in data])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None,
                  counter: U64 | None) -> tuple[Floats, Floats]:
        """Mean cross-entropy and its gradient on this step's minibatch."""
        assert keys is not None and counter is not None
        ds = self.dataset[sel][:, None]
        idx = rng.uniform_index(keys, STREAM_MINIBATCH, counter, self.batch, self.n_train)
        xb = self.x_train[ds, idx]  # (m, B, f)
        yb = self.y_train[ds, idx]  # (m, B)
        logits = np.einsum("mbf,mf->mb", xb, z)
        loss: Floats = np.mean(np.logaddexp(0.0, logits) - yb * logits, axis=1)
        grad: Floats = np.einsum("mbf,mb->mf", xb, _sigmoid(logits) - yb) / self.batch
        return loss, grad

    def validation_loss(self, z: Floats, sel: Index) -> Floats:
        """Mean cross-entropy on the held-out split, one data set at a time."""
        ds = self.dataset[sel]
        out = np.empty(len(ds))
        for k in np.unique(ds).tolist():
            rows = np.flatnonzero(ds == k)
            logits = z[rows] @ self.x_val[k].T
            out[rows] = np.mean(np.logaddexp(0.0, logits) - self.y_val[k] * logits, axis=1)
        return out


def build(specs: Sequence[RunSpec], keys: U64) -> Landscape:
    """The landscape object for a block of runs of one kind (and group key)."""
    kind = specs[0].landscape.kind
    if kind == "quadratic":
        return QuadraticLandscape(specs, keys)
    if kind == "rosenbrock":
        return RosenbrockLandscape(specs)
    if kind == "noisy_quadratic":
        return NoisyQuadraticLandscape(specs)
    if kind == "plateau":
        return PlateauLandscape(specs)
    if kind == "logistic_regression":
        return LogisticRegressionLandscape(specs)
    raise ValueError(f"unknown landscape kind {kind!r}")
