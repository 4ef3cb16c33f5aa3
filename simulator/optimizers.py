"""Optimizers: small gradient transformations chained into torch.optim's named optimizers.

In the manner of optax, each piece of an update rule is written once as a ``Transform`` with
an ``init`` (its state) and an ``update`` (gradient in, direction out), and the named optimizers
are chains of them: ``sgd`` is weight decay then a momentum trace, ``adam`` weight decay then
Adam's scaling, ``adamw`` the scaling then decoupled weight decay, ``rmsprop`` weight decay, RMS
scaling, then a momentum trace. The arithmetic, and its order, is torch.optim's, so every
trajectory is that of the torch optimizer with the same hyper-parameters.

Everything works on a block of runs at once (one row each, hyper-parameters as columns). A
transform that no run of the block needs is left out of its chain: it costs nothing. The update
returns the new state without storing it; the engine commits the rows that really stepped.
Each optimizer kind's config keys sit with it, and ``KINDS`` registers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Bools, Floats
from simulator.schema.fields import (
    Reader,
    boolean,
    describe,
    finite,
    join,
    non_negative,
    positive,
    unit,
)
from simulator.schema.kinds import Kind, Registry, param
from simulator.schema.loader import LocList, LocMap

State = dict[str, Floats]

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6)
CLIP_EPS = 1e-6


def _col(values: Sequence[float]) -> Floats:
    return np.array(values, dtype=np.float64)[:, None]


# --------------------------------------------------------------------------- transforms


class Transform:
    """One stage of an update rule for a block of runs: ``init`` gives its state, ``update``
    maps the incoming gradient (or direction) to the outgoing one."""

    name: ClassVar[str]
    # Whether ``update`` reads the parameters w.
    needs_parameters: ClassVar[bool] = False

    def init(self, members: int, dims: int) -> State:
        """Fresh state for a block of ``members`` runs of ``dims`` parameters."""
        return {}

    def update(self, g: Floats, state: State, w: Floats | None) -> tuple[Floats, State]:
        """The outgoing direction and the new state."""
        raise NotImplementedError


class AddDecayedWeights(Transform):
    """g + wd w: torch's L2 weight decay (before the scaling) or AdamW's decoupled one (after
    it)."""

    name = "add_decayed_weights"
    needs_parameters = True

    def __init__(self, weight_decay: Floats) -> None:
        self.weight_decay = weight_decay

    def update(self, g: Floats, state: State, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        assert w is not None
        result: Floats = g + self.weight_decay * w
        return result, {}


def add_decayed_weights(weight_decay: Sequence[float]) -> AddDecayedWeights | None:
    """Weight decay, or None when no run of the block has any."""
    return AddDecayedWeights(_col(weight_decay)) if any(weight_decay) else None


class Trace(Transform):
    """torch's momentum: b = mu b + (1 - dampening) g (b = g on the first step with dampening);
    the direction is g + mu b with Nesterov, else b."""

    name = "trace"

    def __init__(self, momentum: Floats, keep: Floats | None, nesterov: Bools | None) -> None:
        self.momentum = momentum
        self.keep = keep  # 1 - dampening, None when no run has dampening
        self.nesterov = nesterov

    def init(self, members: int, dims: int) -> State:
        """The momentum buffer, and a step count where dampening needs the first step."""
        state = {"momentum_buffer": np.zeros((members, dims))}
        if self.keep is not None:
            state["step"] = np.zeros((members, 1))
        return state

    def update(self, g: Floats, state: State, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        buf = state["momentum_buffer"]
        new: State = {}
        if self.keep is None:  # no dampening: mu * 0 + g = g exactly on the first step
            new_buf = self.momentum * buf + g
        else:
            new_buf = np.where(state["step"] == 0, g, self.momentum * buf + self.keep * g)
            new["step"] = state["step"] + 1.0
        new["momentum_buffer"] = new_buf
        d = new_buf
        if self.nesterov is not None:
            d = np.where(self.nesterov, g + self.momentum * new_buf, new_buf)
        return d, new


def trace(momentum: Sequence[float], dampening: Sequence[float] = (),
          nesterov: Sequence[bool] = ()) -> Trace | None:
    """Momentum, or None when no run of the block has any."""
    if not any(momentum):
        return None
    return Trace(_col(momentum), _col([1.0 - d for d in dampening]) if any(dampening) else None,
                 np.array(nesterov)[:, None] if any(nesterov) else None)


class ScaleByAdam(Transform):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; d = (m / (1 - b1^t)) / (sqrt(v /
    (1 - b2^t)) + eps)."""

    name = "scale_by_adam"

    def __init__(self, b1: Floats, b2: Floats, eps: Floats) -> None:
        self.b1, self.b2, self.eps = b1, b2, eps

    def init(self, members: int, dims: int) -> State:
        """Both moments and the step count t."""
        return {"exp_avg": np.zeros((members, dims)), "exp_avg_sq": np.zeros((members, dims)),
                "step": np.zeros((members, 1))}

    def update(self, g: Floats, state: State, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        t = state["step"] + 1.0
        m = self.b1 * state["exp_avg"] + (1.0 - self.b1) * g
        v = self.b2 * state["exp_avg_sq"] + (1.0 - self.b2) * g * g
        m_hat = m / (1.0 - self.b1**t)
        v_hat = v / (1.0 - self.b2**t)
        d: Floats = m_hat / (np.sqrt(v_hat) + self.eps)
        return d, {"exp_avg": m, "exp_avg_sq": v, "step": t}


class ScaleByRms(Transform):
    """v = alpha v + (1 - alpha) g^2; centered: a = alpha a + (1 - alpha) g, v~ = v - a^2 (else
    v~ = v); d = g / (sqrt(v~) + eps)."""

    name = "scale_by_rms"

    def __init__(self, alpha: Floats, eps: Floats, centered: Bools | None) -> None:
        self.alpha, self.eps, self.centered = alpha, eps, centered

    def init(self, members: int, dims: int) -> State:
        """The average of g^2, and of g where some run is centered."""
        state = {"square_avg": np.zeros((members, dims))}
        if self.centered is not None:
            state["grad_avg"] = np.zeros((members, dims))
        return state

    def update(self, g: Floats, state: State, w: Floats | None) -> tuple[Floats, State]:
        """See the class docstring."""
        v = self.alpha * state["square_avg"] + (1.0 - self.alpha) * g * g
        new: State = {"square_avg": v}
        avg = v
        if self.centered is not None:
            a = self.alpha * state["grad_avg"] + (1.0 - self.alpha) * g
            new["grad_avg"] = a
            avg = np.where(self.centered, v - a * a, v)
        d: Floats = g / (np.sqrt(avg) + self.eps)
        return d, new


class Chain:
    """Transforms applied in order: the optimizer of one block of runs.

    Its state is one dict, each entry named ``<transform>.<entry>``, so that a run's state
    keeps its meaning when it moves to another block (a reload).
    """

    def __init__(self, transforms: Sequence[Transform], members: int, dims: int) -> None:
        self.transforms = tuple(transforms)
        self.state: State = {f"{t.name}.{k}": v for t in self.transforms
                             for k, v in t.init(members, dims).items()}
        self.needs_parameters = any(t.needs_parameters for t in self.transforms)

    def reset(self, local: slice | NDArray[np.intp]) -> None:
        """Fresh state for members ``local`` (a restart)."""
        for arr in self.state.values():
            arr[local] = 0.0

    def step(self, grad: Floats, w: Floats | None) -> tuple[Floats, State]:
        """The direction d of the update w <- w - lr * d, and the new state."""
        new: State = {}
        for t in self.transforms:
            prefix = f"{t.name}."
            own = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
            grad, changed = t.update(grad, own, w)
            new.update({prefix + k: v for k, v in changed.items()})
        return grad, new


def chain(transforms: Sequence[Transform | None], members: int, dims: int) -> Chain | None:
    """The transforms that are needed, chained; None when there are none (plain SGD: the
    engine's fast path w <- w - lr * grad)."""
    needed = [t for t in transforms if t is not None]
    return Chain(needed, members, dims) if needed else None


def clip_grad_norm(grad: Floats, norm: Floats, max_norm: Floats) -> Floats:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
    coef = np.minimum(max_norm / (norm + CLIP_EPS), 1.0)
    result: Floats = grad * coef[:, None]
    return result


# --------------------------------------------------------------------------- named optimizers


@dataclass(frozen=True)
class OptimizerSpec(Kind):
    """Base of the optimizer kinds: every one has a learning rate and weight decay."""

    learning_rate: float = 0.1
    weight_decay: float = 0.0

    @property
    def algorithm(self) -> str:
        """The update rule that runs stepped together share."""
        return self.kind

    @classmethod
    def transforms(cls, specs: Sequence[Any]) -> list[Transform | None]:
        """The chain of a block of runs of this kind (None for a stage none of them needs)."""
        raise NotImplementedError

    @classmethod
    def build(cls, specs: Sequence[Any], dims: int) -> Chain | None:
        """The optimizer of a block of runs of this kind and algorithm."""
        return chain(cls.transforms(specs), len(specs), dims)


_LR = "the learning rate (the step size)"
_WD = "L2 penalty: weight_decay * w is added to the gradient"


@dataclass(frozen=True)
class SGD(OptimizerSpec):
    """torch.optim.SGD."""

    kind: ClassVar[str] = "sgd"
    summary: ClassVar[str] = ("g <- g + wd w; with momentum mu: b <- g on the first step, else "
                              "mu b + (1 - dampening) g; g <- g + mu b if nesterov else b; "
                              "w <- w - lr g")

    learning_rate: float = param(0.1, positive, _LR, required=True)
    momentum: float = param(0.0, non_negative, "mu: the momentum buffer's decay")
    dampening: float = param(0.0, unit, "share of the gradient held back from the buffer")
    nesterov: bool = param(False, boolean, "Nesterov momentum (needs momentum > 0 and "
                                           "dampening 0)")
    weight_decay: float = param(0.0, non_negative, _WD)

    @classmethod
    def resolve(cls, r: Reader, m: LocMap, path: str, values: dict[str, Any],
                **context: Any) -> Self:
        """Momentum kinds need momentum; Nesterov needs momentum and no dampening."""
        spec = cls(**values)
        if cls.kind != "sgd" and spec.momentum == 0:
            r.error(m.lines["momentum"], join(path, "momentum"),
                    f"must be > 0 for the {cls.kind} optimizer")
        elif spec.nesterov and (spec.momentum == 0 or spec.dampening != 0):
            r.error(m.lines.get("nesterov", m.line), join(path, "nesterov"),
                    "Nesterov momentum needs momentum > 0 and dampening 0 (as in torch)")
        return spec

    @property
    def algorithm(self) -> str:
        """``sgd_momentum`` with momentum (any of the SGD kinds), else ``sgd``."""
        return "sgd_momentum" if self.momentum else "sgd"

    @classmethod
    def transforms(cls, specs: Sequence[Any]) -> list[Transform | None]:
        """Weight decay, then the momentum trace."""
        return [add_decayed_weights([s.weight_decay for s in specs]),
                trace([s.momentum for s in specs], [s.dampening for s in specs],
                      [s.nesterov for s in specs])]


@dataclass(frozen=True)
class Momentum(SGD):
    """torch.optim.SGD with momentum (the heavy ball)."""

    kind: ClassVar[str] = "momentum"
    summary: ClassVar[str] = "heavy ball: `sgd` with momentum"

    momentum: float = param(0.9, non_negative, "mu: the momentum buffer's decay (> 0)")
    nesterov: bool = False


@dataclass(frozen=True)
class Nesterov(SGD):
    """torch.optim.SGD with nesterov=True."""

    kind: ClassVar[str] = "nesterov"
    summary: ClassVar[str] = "`sgd` with nesterov: true"

    momentum: float = param(0.9, non_negative, "mu: the momentum buffer's decay (> 0)")
    dampening: float = 0.0
    nesterov: bool = True


def _betas(value: Any) -> tuple[float, float]:
    if not isinstance(value, LocList) or len(value) != 2:
        raise ValueError(f"must be a list of two numbers [beta1, beta2], got {describe(value)}")
    b1, b2 = finite(value[0]), finite(value[1])
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"each beta must be in [0, 1), got [{b1}, {b2}]")
    return (b1, b2)


@dataclass(frozen=True)
class Adam(OptimizerSpec):
    """torch.optim.Adam."""

    kind: ClassVar[str] = "adam"
    summary: ClassVar[str] = ("g <- g + wd w; m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2; "
                              "w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)")

    learning_rate: float = param(1e-3, positive, _LR)
    betas: tuple[float, float] = param((0.9, 0.999), _betas,
                                       "decay of the first and second moments")
    eps: float = param(1e-8, positive, "added to the denominator")
    weight_decay: float = param(0.0, non_negative, _WD)

    @classmethod
    def transforms(cls, specs: Sequence[Any]) -> list[Transform | None]:
        """Weight decay, then Adam's scaling."""
        return [add_decayed_weights([s.weight_decay for s in specs]), _scale_by_adam(specs)]


def _scale_by_adam(specs: Sequence[Adam]) -> ScaleByAdam:
    return ScaleByAdam(_col([s.betas[0] for s in specs]), _col([s.betas[1] for s in specs]),
                       _col([s.eps for s in specs]))


@dataclass(frozen=True)
class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay."""

    kind: ClassVar[str] = "adamw"
    summary: ClassVar[str] = "w <- w - lr wd w (decoupled), then the Adam step without wd in g"

    weight_decay: float = param(1e-2, non_negative, "decoupled: w shrinks by lr * wd * w "
                                                    "each step")

    @classmethod
    def transforms(cls, specs: Sequence[Any]) -> list[Transform | None]:
        """Adam's scaling, then weight decay (decoupled from the scaling)."""
        return [_scale_by_adam(specs), add_decayed_weights([s.weight_decay for s in specs])]


@dataclass(frozen=True)
class RMSprop(OptimizerSpec):
    """torch.optim.RMSprop."""

    kind: ClassVar[str] = "rmsprop"
    summary: ClassVar[str] = ("g <- g + wd w; v <- alpha v + (1 - alpha) g^2; centered: a <- "
                              "alpha a + (1 - alpha) g, v~ = v - a^2 (else v~ = v); with "
                              "momentum: b <- mu b + g / (sqrt(v~) + eps), w <- w - lr b; else "
                              "w <- w - lr g / (sqrt(v~) + eps)")

    learning_rate: float = param(1e-2, positive, _LR)
    alpha: float = param(0.99, unit, "decay of the average of g^2")
    eps: float = param(1e-8, positive, "added to the denominator")
    weight_decay: float = param(0.0, non_negative, _WD)
    momentum: float = param(0.0, non_negative, "mu: momentum on the scaled gradient")
    centered: bool = param(False, boolean, "divide by the variance instead of the second "
                                           "moment")

    @classmethod
    def transforms(cls, specs: Sequence[Any]) -> list[Transform | None]:
        """Weight decay, RMS scaling, then the momentum trace."""
        centered = [s.centered for s in specs]
        return [add_decayed_weights([s.weight_decay for s in specs]),
                ScaleByRms(_col([s.alpha for s in specs]), _col([s.eps for s in specs]),
                           np.array(centered)[:, None] if any(centered) else None),
                trace([s.momentum for s in specs])]


KINDS: Registry[OptimizerSpec] = Registry(
    "optimizer", SGD, Momentum, Nesterov, Adam, AdamW, RMSprop, default="sgd")
