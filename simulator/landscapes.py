"""Cost landscapes: each kind's config keys and its vectorized loss and gradient, side by side.

A kind is a frozen dataclass (its fields are the keys of ``landscape:``, see
``simulator.schema.kinds``) and a ``Landscape`` that evaluates a block of runs of that kind at
once: arrays of internal coordinates in, losses and gradients out. Pure: randomness comes from
counter-based streams keyed by run (``simulator.rng``). ``KINDS`` registers them.

Every landscape works on internal coordinates z, from which the parameters are
w = ``parameters(z)``; for the quadratic families z = w - c, so values near the optimum keep
full relative precision. The gradient with respect to z equals the gradient with respect to w.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from simulator import rng
from simulator.arrays import U64, Floats, Index
from simulator.rng import Stream
from simulator.schema.fields import (
    MAX_DIMS,
    MAX_SEED,
    Reader,
    at_least_one,
    boolean,
    describe,
    finite,
    integer,
    join,
    non_negative,
    open_unit,
    positive,
    scalar_or_list,
)
from simulator.schema.kinds import Kind, Registry, param
from simulator.schema.loader import LocList, LocMap

# A rotated quadratic keeps a dims x dims matrix per run.
MAX_ROTATE_DIMS = 256
MAX_SAMPLES = 100_000


class Landscape:
    """A block of runs of one kind: z = w - c, and the interface the engine calls."""

    # loss_grad draws random numbers: the engine passes keys and a counter
    stochastic = False
    # has a held-out loss (exported as trainsim_validation_loss)
    has_validation = False

    def __init__(self, specs: Sequence[LandscapeSpec]) -> None:
        self.c = np.zeros((len(specs), specs[0].dims))

    def coordinates(self, w: Floats) -> Floats:
        """Internal coordinates z of parameters w."""
        result: Floats = w - self.c
        return result

    def parameters(self, z: Floats, sel: Index) -> Floats:
        """Parameters w of internal coordinates z, for block members ``sel``."""
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

    def excess(self, z: Floats, sel: Index) -> Floats:
        """The noise-free loss above the landscape's minimum, J(w) - min J, at ``z`` for
        members ``sel``, computed without subtracting the two (so it keeps its precision as the
        loss reaches its floor); NaN where the minimum is not known in closed form."""
        return np.full(z.shape[0], np.nan)

    def surface(self, z: Floats, member: int) -> tuple[Floats, Floats]:
        """The noise-free loss and gradient of block member ``member``'s landscape at the
        points ``z`` (rows): what the live page draws."""
        return self.loss_grad(z, np.full(len(z), member, dtype=np.intp), None, None)


@dataclass(frozen=True)
class LandscapeSpec(Kind):
    """Base of the landscape kinds.

    A kind whose ``dims`` is a key may take it from the length of a list-valued key instead
    (``dims_from``, the first such key given), with ``dims``' default when none is a list.
    """

    dims_from: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """``dims`` from the lists of ``dims_from``, which must agree."""
        if cls.dims_from:
            default = next(p.default for p in cls.params() if p.key == "dims")
            values = {**values, "dims": _dims(r, m, path, values, cls.dims_from, default)}
        return cls(**values)

    @property
    def dims(self) -> int:
        """Parameters per run."""
        raise NotImplementedError

    @property
    def variant(self) -> tuple[object, ...]:
        """What runs must share, besides kind and dims, to be stepped as one block."""
        return ()

    @property
    def optimum(self) -> float | None:
        """The lowest loss the landscape reaches (None where it is not known in closed form)."""
        return None

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """The vectorized landscape of a block of runs of this kind (one variant)."""
        raise NotImplementedError


def _centers(specs: Sequence[Any]) -> Floats:
    """The optimum c of each run, a number broadcast over its dimensions or a list."""
    out = np.empty((len(specs), specs[0].dims))
    for i, s in enumerate(specs):
        out[i] = s.c
    return out


def _row_sum_of_squares(z: Floats) -> Floats:
    if z.shape[1] == 1:
        result: Floats = z[:, 0] * z[:, 0]
        return result
    result = np.einsum("ij,ij->i", z, z)
    return result


def _dims(r: Reader, m: LocMap, path: str, values: dict[str, Any], lists: tuple[str, ...],
          default: int) -> int:
    """Dimensions from ``dims``, else from the first list-valued key; lists must agree."""
    lengths = [(key, len(values[key])) for key in lists if isinstance(values.get(key), tuple)]
    dims = int(values.get("dims", lengths[0][1] if lengths else default))
    for key, n in lengths:
        if n != dims:
            r.error(m.lines[key], join(path, key),
                    f"has {n} entries but the landscape has {dims} dimensions")
    return dims


def _positive_list(value: Any) -> tuple[float, ...]:
    if not isinstance(value, LocList) or not value or len(value) > MAX_DIMS:
        raise ValueError(f"must be a list of 1 to {MAX_DIMS} numbers > 0, got {describe(value)}")
    return tuple(positive(v) for v in value)


_DIMS = integer(1, MAX_DIMS)

# --------------------------------------------------------------------------- quadratic


@dataclass(frozen=True)
class Quadratic(LandscapeSpec):
    """J(w) = 1/2 (w - c)^T H (w - c) + b, H = Q diag(h) Q^T (Q = I unless ``rotate``).

    The eigenvalues h come from ``curvatures``, from ``condition_number`` (log-spaced between
    1 and kappa), or from ``a`` (h = 2a in every direction): the seed's 1-D bowl
    J(w) = a (w - c)^2 + b is the case dims = 1.
    """

    kind: ClassVar[str] = "quadratic"
    summary: ClassVar[str] = "J(w) = 1/2 (w - c)^T H (w - c) + b, H = Q diag(h) Q^T"

    a: float = param(1.0, positive, "curvature of the seed's bowl: h = 2a in every direction")
    c: float | tuple[float, ...] = param(2.0, scalar_or_list,
                                         "the optimum: a number or one per dimension")
    b: float = param(1.0, finite, "the loss at the optimum")
    curvatures: tuple[float, ...] | None = param(
        None, _positive_list, "the eigenvalues h_i > 0 of H, one per dimension")
    condition_number: float | None = param(
        None, at_least_one, "kappa >= 1: eigenvalues log-spaced between 1 and kappa")
    rotate: bool = param(False, boolean, f"rotate H by a seeded orthogonal Q (up to "
                                         f"{MAX_ROTATE_DIMS} dimensions)")
    dims: int = param(1, _DIMS, "number of parameters", shown="1, or the length of "
                                                              "`curvatures`/`c`")

    dims_from: ClassVar[tuple[str, ...]] = ("curvatures", "c")

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """One of ``a``, ``curvatures`` and ``condition_number``; at most ``MAX_ROTATE_DIMS``
        rotated dimensions."""
        given = [k for k in ("a", "curvatures", "condition_number") if k in m]
        for k in given[1:]:
            r.error(m.lines[k], join(path, k), f"give only one of {', '.join(given)}")
        spec = super().resolve(r, m, path, values)
        if spec.rotate and spec.dims > MAX_ROTATE_DIMS:
            r.error(m.lines["rotate"], join(path, "rotate"),
                    f"supported up to {MAX_ROTATE_DIMS} dimensions, got {spec.dims}")
        return spec

    def eigenvalues(self) -> tuple[float, ...]:
        """The diagonal h of H in its eigenbasis, one per dimension."""
        if self.curvatures is not None:
            return self.curvatures
        if self.condition_number is not None:
            d = self.dims
            return tuple(self.condition_number ** (i / (d - 1)) if d > 1 else 1.0
                         for i in range(d))
        return (2.0 * self.a,) * self.dims

    @property
    def optimum(self) -> float:
        """b, at w = c."""
        return self.b

    @property
    def variant(self) -> tuple[object, ...]:
        """Rotated and unrotated runs are stepped apart."""
        return (self.rotate,)

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``QuadraticLandscape``."""
        return QuadraticLandscape(specs, keys)


class QuadraticLandscape(Landscape):
    """J = 1/2 (w - c)^T H (w - c) + b, H = Q diag(h) Q^T, for a block of runs.

    Unrotated, the gradient is h * z; for the seed's 1-D bowl h = 2a, so grad = 2 a z and
    J = a z^2 + b, to the bit as before. A rotated block keeps one orthogonal Q per run, drawn
    from the run's seed (QR of a Gaussian matrix with the signs fixed: Haar-distributed).
    """

    def __init__(self, specs: Sequence[Quadratic], keys: U64) -> None:
        super().__init__(specs)
        self.c = _centers(specs)
        self.h = np.array([s.eigenvalues() for s in specs], dtype=np.float64)
        self.b = np.array([s.b for s in specs], dtype=np.float64)
        self.q: Floats | None = None
        if specs[0].rotate:
            self.q = np.stack([rotation(int(k), self.h.shape[1]) for k in keys])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """Loss (m,) and gradient (m, d) at internal coordinates ``z`` for members ``sel``."""
        excess, grad = self._bowl(z, sel)
        loss: Floats = excess + self.b[sel]
        return loss, grad

    def excess(self, z: Floats, sel: Index) -> Floats:
        """1/2 z^T H z: the loss less b."""
        return self._bowl(z, sel)[0]

    def _bowl(self, z: Floats, sel: Index) -> tuple[Floats, Floats]:
        h = self.h[sel]
        if self.q is not None:
            q = self.q[sel]
            y = np.einsum("mji,mj->mi", q, z)  # eigen-coordinates Q^T z
            hy = h * y
            grad: Floats = np.einsum("mij,mj->mi", q, hy)
            excess: Floats = 0.5 * np.einsum("ij,ij->i", hy, y)
            return excess, grad
        grad = h * z
        if z.shape[1] == 1:  # one parameter: skip a reduction over an axis of length 1
            excess = grad[:, 0] * z[:, 0] * 0.5
        else:
            excess = 0.5 * np.einsum("ij,ij->i", grad, z)
        return excess, grad


def rotation(key: int, d: int) -> Floats:
    """A seeded d x d orthogonal matrix (Haar measure) for the run with random key ``key``."""
    keys = np.full(d, key, dtype=np.uint64)
    g = rng.standard_normal(keys, Stream.ROTATION, np.arange(d, dtype=np.uint64), d)
    q, r = np.linalg.qr(g)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    result: Floats = q * signs[None, :]
    return result


# --------------------------------------------------------------------------- rosenbrock


@dataclass(frozen=True)
class Rosenbrock(LandscapeSpec):
    """J(w) = sum_{i<d} b (w_{i+1} - w_i^2)^2 + (a - w_i)^2; minimum 0 at (1, ..., 1) for a = 1
    (in 2-D at (a, a^2))."""

    kind: ClassVar[str] = "rosenbrock"
    summary: ClassVar[str] = "J(w) = sum_{i=1}^{d-1} b (w_{i+1} - w_i^2)^2 + (a - w_i)^2"

    a: float = param(1.0, finite, "where the valley's floor lies")
    b: float = param(100.0, positive, "steepness of the valley's walls")
    dims: int = param(2, integer(2, MAX_DIMS), "number of parameters, at least 2")

    @property
    def optimum(self) -> float | None:
        """0, at (a, a^2) in 2-D and at (a, ..., a) for a in {0, 1}; unknown otherwise."""
        return 0.0 if self.dims == 2 or self.a in (0.0, 1.0) else None

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``RosenbrockLandscape``."""
        return RosenbrockLandscape(specs)


class RosenbrockLandscape(Landscape):
    """J = sum_{i<d} b (w_{i+1} - w_i^2)^2 + (a - w_i)^2; z = w (no shift)."""

    def __init__(self, specs: Sequence[Rosenbrock]) -> None:
        super().__init__(specs)
        self.a = np.array([[s.a] for s in specs])
        self.b = np.array([[s.b] for s in specs])

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

    def excess(self, z: Floats, sel: Index) -> Floats:
        """The loss itself (the minimum is 0 where the spec's ``optimum`` is known)."""
        return self.loss_grad(z, sel)[0]


# --------------------------------------------------------------------------- noisy quadratic


@dataclass(frozen=True)
class NoisyQuadratic(LandscapeSpec):
    """Zhang et al. 2019: J = 1/2 sum_i h_i (w_i - c_i)^2, h_i = i^-power, and minibatch
    gradient noise with covariance H / batch_size."""

    kind: ClassVar[str] = "noisy_quadratic"
    summary: ClassVar[str] = ("J(w) = 1/2 sum_i h_i (w_i - c_i)^2, h_i = i^-p; gradient "
                              "h (w - c) + sqrt(h / B) xi, xi ~ N(0, I)")

    dims: int = param(100, _DIMS, "number of parameters", shown="100, or the length of `c`")
    power: float = param(1.0, non_negative, "p: the curvatures fall as i^-p")
    batch_size: float = param(1.0, positive, "B: the gradient noise has covariance H / B "
                                             "(any number > 0)")
    c: float | tuple[float, ...] = param(0.0, scalar_or_list,
                                         "the optimum: a number or one per dimension")

    dims_from: ClassVar[tuple[str, ...]] = ("c",)

    @property
    def optimum(self) -> float:
        """0, at w = c."""
        return 0.0

    @property
    def variant(self) -> tuple[object, ...]:
        """Runs stepped together share one curvature vector and noise scale."""
        return (self.power, self.batch_size)

    def eigenvalues(self) -> tuple[float, ...]:
        """h_i = i^-power for i = 1..dims."""
        return tuple(float(i) ** -self.power for i in range(1, self.dims + 1))

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``NoisyQuadraticLandscape``."""
        return NoisyQuadraticLandscape(specs)


class NoisyQuadraticLandscape(Landscape):
    """Zhang et al. (2019)'s noisy quadratic model: J = 1/2 sum_i h_i z_i^2 with h_i = i^-p,
    and a minibatch gradient h * z + sqrt(h / B) * N(0, I) (noise covariance H / B).

    Runs of a block share p and B (they are part of the group key), so h is one vector.
    """

    stochastic = True

    def __init__(self, specs: Sequence[NoisyQuadratic]) -> None:
        super().__init__(specs)
        self.c = _centers(specs)
        self.h = np.array(specs[0].eigenvalues(), dtype=np.float64)
        self.noise_scale = np.sqrt(self.h / specs[0].batch_size)

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None,
                  counter: U64 | None) -> tuple[Floats, Floats]:
        """Loss (noise-free) and a minibatch gradient with covariance H / B."""
        assert keys is not None and counter is not None
        hz = self.h * z
        loss: Floats = 0.5 * np.einsum("ij,ij->i", hz, z)
        noise = rng.standard_normal(keys, Stream.NQM_NOISE, counter, z.shape[1])
        grad: Floats = hz + self.noise_scale * noise
        return loss, grad

    def surface(self, z: Floats, member: int) -> tuple[Floats, Floats]:
        """The loss and the expected (noise-free) gradient h * z."""
        hz = self.h * z
        loss: Floats = 0.5 * np.einsum("ij,ij->i", hz, z)
        return loss, hz

    def excess(self, z: Floats, sel: Index) -> Floats:
        """The loss itself: the minimum is 0."""
        hz = self.h * z
        excess: Floats = 0.5 * np.einsum("ij,ij->i", hz, z)
        return excess


# --------------------------------------------------------------------------- plateau


@dataclass(frozen=True)
class Plateau(LandscapeSpec):
    """J(w) = scale * (1 - exp(-|w - c|^2 / width^2)) + b: flat far from c, a well around it."""

    kind: ClassVar[str] = "plateau"
    summary: ClassVar[str] = "J(w) = scale (1 - exp(-|w - c|^2 / s^2)) + b"

    scale: float = param(1.0, positive, "depth of the well")
    width: float = param(1.0, positive, "s: width of the well")
    c: float | tuple[float, ...] = param(0.0, scalar_or_list,
                                         "the optimum: a number or one per dimension")
    b: float = param(0.0, finite, "the loss at the optimum")
    dims: int = param(1, _DIMS, "number of parameters", shown="1, or the length of `c`")

    dims_from: ClassVar[tuple[str, ...]] = ("c",)

    @property
    def optimum(self) -> float:
        """b, at w = c."""
        return self.b

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``PlateauLandscape``."""
        return PlateauLandscape(specs)


class PlateauLandscape(Landscape):
    """J = scale * (1 - exp(-|z|^2 / s^2)) + b: almost flat far from c, a well around it."""

    def __init__(self, specs: Sequence[Plateau]) -> None:
        super().__init__(specs)
        self.c = _centers(specs)
        self.scale = np.array([s.scale for s in specs])
        self.inv_s2 = np.array([1.0 / s.width ** 2 for s in specs])
        self.b = np.array([s.b for s in specs])

    def loss_grad(self, z: Floats, sel: Index, keys: U64 | None = None,
                  counter: U64 | None = None) -> tuple[Floats, Floats]:
        """Loss and gradient; 1 - exp(-x) as -expm1(-x) keeps precision near the optimum."""
        scale, inv_s2 = self.scale[sel], self.inv_s2[sel]
        x = _row_sum_of_squares(z) * inv_s2
        loss: Floats = -scale * np.expm1(-x) + self.b[sel]
        grad: Floats = (2.0 * scale * inv_s2 * np.exp(-x))[:, None] * z
        return loss, grad

    def excess(self, z: Floats, sel: Index) -> Floats:
        """scale * (1 - exp(-|z|^2 / s^2)): the loss less b."""
        excess: Floats = -self.scale[sel] * np.expm1(-_row_sum_of_squares(z) * self.inv_s2[sel])
        return excess


# --------------------------------------------------------------------------- logistic regression


@dataclass(frozen=True)
class LogisticRegression(LandscapeSpec):
    """Logistic regression trained by minibatch SGD on a seeded synthetic data set."""

    kind: ClassVar[str] = "logistic_regression"
    summary: ClassVar[str] = ("J(w) = mean over a minibatch of softplus(x.w) - y x.w (binary "
                              "cross-entropy, no intercept)")

    features: int = param(10, _DIMS, "number of features, one weight each")
    samples: int = param(1000, integer(2, MAX_SAMPLES), "size of the synthetic data set")
    batch_size: int = param(32, integer(1, MAX_SAMPLES), "rows per minibatch (drawn with "
                                                         "replacement)")
    validation_fraction: float = param(0.2, open_unit, "share of the rows held out for "
                                                       "trainsim_validation_loss")
    data_seed: int = param(0, integer(0, MAX_SEED), "seeds the data set; runs that share it "
                                                    "share one copy in memory")

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """At least one training sample must remain."""
        spec = cls(**values)
        if spec.samples - spec.validation_samples < 1:
            r.error(m.lines.get("validation_fraction", m.line),
                    join(path, "validation_fraction"), "leaves no training samples")
        return spec

    @property
    def dims(self) -> int:
        """One weight per feature."""
        return self.features

    @property
    def validation_samples(self) -> int:
        """Size of the held-out split (at least one sample)."""
        return max(1, round(self.samples * self.validation_fraction))

    @property
    def variant(self) -> tuple[object, ...]:
        """Data shapes that runs stepped together must share."""
        return (self.samples - self.validation_samples, self.validation_samples,
                self.batch_size)

    @classmethod
    def block(cls, specs: Sequence[Any], keys: U64) -> Landscape:
        """See ``LogisticRegressionLandscape``."""
        return LogisticRegressionLandscape(specs)


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

    stochastic = True
    has_validation = True

    def __init__(self, specs: Sequence[LogisticRegression]) -> None:
        super().__init__(specs)
        first = specs[0]
        self.n_train = first.samples - first.validation_samples
        self.batch = first.batch_size
        seeds = sorted({s.data_seed for s in specs})
        index = {s: i for i, s in enumerate(seeds)}
        self.dataset = np.array([index[s.data_seed] for s in specs], dtype=np.intp)
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
        idx = rng.uniform_index(keys, Stream.MINIBATCH, counter, self.batch, self.n_train)
        xb = self.x_train[ds, idx]  # (m, B, f)
        yb = self.y_train[ds, idx]  # (m, B)
        logits = np.einsum("mbf,mf->mb", xb, z)
        loss: Floats = np.mean(np.logaddexp(0.0, logits) - yb * logits, axis=1)
        grad: Floats = np.einsum("mbf,mb->mf", xb, _sigmoid(logits) - yb) / self.batch
        return loss, grad

    def surface(self, z: Floats, member: int) -> tuple[Floats, Floats]:
        """Mean cross-entropy and its gradient on the whole training split (a minibatch's
        expectation)."""
        ds = int(self.dataset[member])
        x, y = self.x_train[ds], self.y_train[ds]
        logits = z @ x.T
        loss: Floats = np.mean(np.logaddexp(0.0, logits) - y * logits, axis=1)
        grad: Floats = (_sigmoid(logits) - y) @ x / self.n_train
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


KINDS: Registry[LandscapeSpec] = Registry(
    "landscape", Quadratic, Rosenbrock, NoisyQuadratic, Plateau, LogisticRegression,
    default="quadratic")
