"""Optimizers and learning-rate schedules for blocks of runs, vectorized; pure numpy.

The update rules are those documented for torch.optim (SGD, Adam, AdamW, RMSprop), with the
same defaults, so that intuition carries over; docs/config.md writes each one out. State lives
in per-block arrays (momentum buffers, exp_avg, exp_avg_sq, step counts). ``step`` computes
the update and the new state without touching the stored state: the engine commits the rows
that really stepped. Hyper-parameters that no run of a block uses cost nothing: each piece of
arithmetic is skipped for the block as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from simulator.config import RunSpec

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]
State = dict[str, Floats]

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)
CLIP_EPS = 1e-6


def _col(values: Sequence[float]) -> Floats:
    return np.array(values, dtype=np.float64)[:, None]


class Optimizer:
    """Base: a block's optimizer state and update rule."""

    def __init__(self, specs: Sequence[RunSpec], dims: int) -> None:
        opts = [s.optimizer for s in specs]
        self.m = len(specs)
        self.dims = dims
        wd = [o.weight_decay for o in opts]
        # L2 penalty: weight_decay * w is added to the gradient (decoupled for AdamW)
        self.weight_decay: Floats | None = _col(wd) if any(wd) else None
        self.state: State = {}

    @property
    def needs_parameters(self) -> bool:
        """Whether ``step`` needs the parameters w (for weight decay)."""
        return self.weight_decay is not None

    def _decay(self, w: Floats | None) -> Floats:
        """weight_decay * w (only called when some member has weight decay)."""
        assert self.weight_decay is not None and w is not None
        result: Floats = self.weight_decay * w
        return result

    def _zeros(self, *names: str) -> None:
        for name in names:
            self.state[name] = np.zeros((self.m, self.dims))

    def reset(self, local: slice | NDArray[np.intp]) -> None:
        """Fresh state for members ``local`` (a restart)."""
        for arr in self.state.values():
            arr[local] = 0.0

    def step(self, grad: Floats, w: Floats | None) -> tuple[Floats, State]:
        """The direction d of the update w <- w - lr * d, and the new state."""
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: g = grad + wd w; b = mu b + (1 - dampening) g (b = g on the first step);
    d = g + mu b with nesterov, else b (d = g without momentum)."""

    def __init__(self, specs: Sequence[RunSpec], dims: int) -> None:
        super().__init__(specs, dims)
        opts = [s.optimizer for s in specs]
        self.momentum: Floats | None = None
        if any(o.momentum for o in opts):
            self.momentum = _col([o.momentum for o in opts])
            damp = [o.dampening for o in opts]
            self.keep = _col([1.0 - d for d in damp]) if any(damp) else None
            nesterov = [o.nesterov for o in opts]
            self.nesterov: Bools | None = (np.array(nesterov)[:, None] if any(nesterov)
                                           else None)
            self._zeros("momentum_buffer")
            self.state["step"] = np.zeros((self.m, 1))

    def step(self, grad: Floats, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        g = grad if self.weight_decay is None else grad + self._decay(w)
        if self.momentum is None:
            return g, {}
        buf = self.state["momentum_buffer"]
        if self.keep is None:  # no dampening: mu * 0 + g = g exactly on the first step
            new_buf = self.momentum * buf + g
        else:
            first = self.state["step"] == 0
            new_buf = np.where(first, g, self.momentum * buf + self.keep * g)
        d = new_buf
        if self.nesterov is not None:
            d = np.where(self.nesterov, g + self.momentum * new_buf, new_buf)
        return d, {"momentum_buffer": new_buf, "step": self.state["step"] + 1.0}


class Adam(Optimizer):
    """torch.optim.Adam / AdamW: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    d = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). Adam adds wd * w to g; AdamW
    (``decoupled``) instead shrinks w by lr * wd * w before the step."""

    def __init__(self, specs: Sequence[RunSpec], dims: int, decoupled: bool) -> None:
        super().__init__(specs, dims)
        opts = [s.optimizer for s in specs]
        self.decoupled = decoupled
        self.b1 = _col([o.betas[0] for o in opts])
        self.b2 = _col([o.betas[1] for o in opts])
        self.eps = _col([o.eps for o in opts])
        self._zeros("exp_avg", "exp_avg_sq")
        self.state["step"] = np.zeros((self.m, 1))

    def step(self, grad: Floats, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        g = grad
        if self.weight_decay is not None and not self.decoupled:
            g = grad + self._decay(w)
        t = self.state["step"] + 1.0
        m = self.b1 * self.state["exp_avg"] + (1.0 - self.b1) * g
        v = self.b2 * self.state["exp_avg_sq"] + (1.0 - self.b2) * g * g
        m_hat = m / (1.0 - self.b1**t)
        v_hat = v / (1.0 - self.b2**t)
        d = m_hat / (np.sqrt(v_hat) + self.eps)
        if self.weight_decay is not None and self.decoupled:
            d = d + self._decay(w)
        return d, {"exp_avg": m, "exp_avg_sq": v, "step": t}


class RMSprop(Optimizer):
    """torch.optim.RMSprop: g = grad + wd w; v = alpha v + (1 - alpha) g^2; centered:
    a = alpha a + (1 - alpha) g, v~ = v - a^2; with momentum mu > 0: b = mu b + g / (sqrt(v~) +
    eps), d = b; else d = g / (sqrt(v~) + eps)."""

    def __init__(self, specs: Sequence[RunSpec], dims: int) -> None:
        super().__init__(specs, dims)
        opts = [s.optimizer for s in specs]
        self.alpha = _col([o.alpha for o in opts])
        self.eps = _col([o.eps for o in opts])
        self._zeros("square_avg")
        self.centered: Floats | None = None
        if any(o.centered for o in opts):
            self.centered = np.array([o.centered for o in opts])[:, None]
            self._zeros("grad_avg")
        self.momentum: Floats | None = None
        if any(o.momentum for o in opts):
            self.momentum = _col([o.momentum for o in opts])
            self._zeros("momentum_buffer")

    def step(self, grad: Floats, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        g = grad if self.weight_decay is None else grad + self._decay(w)
        v = self.alpha * self.state["square_avg"] + (1.0 - self.alpha) * g * g
        new: State = {"square_avg": v}
        avg = v
        if self.centered is not None:
            a = self.alpha * self.state["grad_avg"] + (1.0 - self.alpha) * g
            new["grad_avg"] = a
            avg = np.where(self.centered, v - a * a, v)
        d = g / (np.sqrt(avg) + self.eps)
        if self.momentum is not None:
            buf = self.momentum * self.state["momentum_buffer"] + d
            new["momentum_buffer"] = buf
            d = buf  # with mu = 0 the buffer is d itself
        return d, new


def build_optimizer(specs: Sequence[RunSpec], dims: int) -> Optimizer | None:
    """The optimizer of a block; None for plain SGD without weight decay (the engine's
    fast path: w <- w - lr * grad, nothing else)."""
    algorithm = specs[0].optimizer.algorithm
    if algorithm == "adam":
        return Adam(specs, dims, decoupled=False)
    if algorithm == "adamw":
        return Adam(specs, dims, decoupled=True)
    if algorithm == "rmsprop":
        return RMSprop(specs, dims)
    if algorithm == "sgd" and not any(s.optimizer.weight_decay for s in specs):
        return None
    return SGD(specs, dims)


def clip_grad_norm(grad: Floats, norm: Floats, max_norm: Floats) -> Floats:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
    coef = np.minimum(max_norm / (norm + CLIP_EPS), 1.0)
    result: Floats = grad * coef[:, None]
    return result


# --------------------------------------------------------------------------- schedules

SCHEDULE_CODES = {"constant": 0, "step": 1, "exponential": 2, "cosine": 3}


class Schedules:
    """Per-run learning-rate schedules of a block: lr(t) for t updates already taken.

    main(t) is torch's closed form: StepLR base * gamma^floor(t / step_size), ExponentialLR
    base * gamma^t, CosineAnnealingLR eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2.
    A linear warmup over W updates multiplies by start + (1 - start) min(t, W) / W and delays
    the main schedule by W: lr(t) = warmup(t) * main(max(t - W, 0)).
    """

    def __init__(self, specs: Sequence[RunSpec], base_lr: Floats) -> None:
        sch = [s.schedule for s in specs]
        self.base = base_lr
        self.code = np.array([SCHEDULE_CODES[s.kind] for s in sch], dtype=np.int64)
        self.kinds = {int(c) for c in self.code.tolist()} - {0}
        self.step_size = np.array([s.step_size for s in sch], dtype=np.float64)
        self.gamma = np.array([s.gamma for s in sch], dtype=np.float64)
        self.t_max = np.array([s.t_max for s in sch], dtype=np.float64)
        self.eta_min = np.array([s.eta_min for s in sch], dtype=np.float64)
        self.warmup = np.array([s.warmup_steps for s in sch], dtype=np.float64)
        self.start = np.array([s.warmup_start_factor for s in sch], dtype=np.float64)
        self.any_warmup = bool(self.warmup.any())

    @property
    def trivial(self) -> bool:
        """Every run of the block is constant without warmup."""
        return not self.kinds and not self.any_warmup

    def lr(self, steps: Ints) -> Floats:
        """The learning rate of the update that follows ``steps`` updates, per run."""
        t = steps.astype(np.float64)
        tm = np.maximum(t - self.warmup, 0.0) if self.any_warmup else t
        lr = self.base
        if 1 in self.kinds:
            lr = np.where(self.code == 1,
                          self.base * self.gamma ** np.floor(tm / self.step_size), lr)
        if 2 in self.kinds:
            lr = np.where(self.code == 2, self.base * self.gamma**tm, lr)
        if 3 in self.kinds:
            cos = 0.5 * (1.0 + np.cos(np.pi * tm / self.t_max))
            lr = np.where(self.code == 3, self.eta_min + (self.base - self.eta_min) * cos, lr)
        if self.any_warmup:
            w = np.maximum(self.warmup, 1.0)
            ramp = self.start + (1.0 - self.start) * np.minimum(t, w) / w
            lr = np.where(self.warmup > 0, lr * ramp, lr)
        result: Floats = lr
        return result


def build_schedules(specs: Sequence[RunSpec], base_lr: Floats) -> Schedules | None:
    """The schedules of a block; None when every run's learning rate is constant."""
    sch = Schedules(specs, base_lr)
    return None if sch.trivial else sch
