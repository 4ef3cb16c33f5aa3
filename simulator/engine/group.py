"""Groups: the runs that share a landscape kind, optimizer algorithm and shape, stepped as one
block of arrays (struct-of-arrays).

Runs are ordered by ``group_key``, so each group occupies a contiguous block of fleet rows and
a tick in which every run steps works on slices, not index arrays. The optional parts
(optimizer state, schedules, clipping, noise) are None when no member uses them, and then cost
nothing per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simulator import rng
from simulator.arrays import U64, Floats, Index
from simulator.config.run import RunSpec
from simulator.landscapes import Landscape
from simulator.optimizers import Chain
from simulator.rng import Stream
from simulator.schedules import LearningRates, learning_rates


def group_key(spec: RunSpec) -> tuple[str, tuple[object, ...], str, int]:
    """What runs stepped together share: landscape kind and variant, algorithm, dims."""
    ls = spec.landscape
    return (ls.kind, ls.variant, spec.optimizer.algorithm, spec.dims)


@dataclass
class Group:
    """Runs of one group in fleet rows ``start:stop``; see the module docstring."""

    start: int
    stop: int
    landscape: Landscape
    base_lr: Floats
    w0: Floats
    optimizer: Chain | None = None
    schedules: LearningRates | None = None
    clip: Floats | None = None  # max gradient norm per member (inf: no clipping)
    grad_sigma: Floats | None = None  # gradient_noise per member
    loss_sigma: Floats | None = None  # loss_noise per member
    half: int | None = None  # the stall block length h when every member has the same one
    z0: Floats = field(init=False)
    z: Floats = field(init=False)
    grad: Floats = field(init=False)
    prev_dw: Floats = field(init=False)

    def __post_init__(self) -> None:
        self.z0 = self.landscape.coordinates(self.w0)
        self.z = self.z0.copy()
        self.grad = np.zeros_like(self.w0)
        self.prev_dw = np.zeros_like(self.w0)

    @property
    def random(self) -> bool:
        """Whether observing a loss and gradient draws random numbers."""
        return (self.landscape.stochastic or self.grad_sigma is not None
                or self.loss_sigma is not None)

    @property
    def dims(self) -> int:
        """Parameters per run in this group."""
        return int(self.w0.shape[1])

    @property
    def rows(self) -> slice:
        """The group's fleet rows."""
        return slice(self.start, self.stop)

    def fleet_rows(self, local: Index) -> Index:
        """Fleet row index for a group-local index."""
        if isinstance(local, slice):
            return slice(self.start, self.stop)
        return local + self.start

    def take_row(self, local: int, source: Group, source_local: int) -> None:
        """Carry one run's place, gradient, last update and optimizer state over from its row
        in ``source`` (a reload that leaves the run unchanged)."""
        for mine, theirs in ((self.z, source.z), (self.grad, source.grad),
                             (self.prev_dw, source.prev_dw)):
            mine[local] = theirs[source_local]
        if self.optimizer is not None and source.optimizer is not None:
            for name, arr in self.optimizer.state.items():
                if name in source.optimizer.state:
                    arr[local] = source.optimizer.state[name][source_local]

    def observe(self, z: Floats, local: Index, keys: U64 | None,
                counter: U64 | None) -> tuple[Floats, Floats]:
        """Reported loss and observed gradient at ``z`` for members ``local``: the landscape's,
        plus the configured gradient and loss noise (drawn from ``keys`` at ``counter`` when
        the group is ``random``).

        Noise on the reported loss is only reported: the gradient never sees it.
        """
        loss, grad = self.landscape.loss_grad(z, local, keys, counter)
        if keys is None or counter is None:
            return loss, grad
        if self.grad_sigma is not None:
            grad = grad + self.grad_sigma[local][:, None] * rng.standard_normal(
                keys, Stream.GRADIENT_NOISE, counter, self.dims)
        if self.loss_sigma is not None:
            loss = loss + self.loss_sigma[local] * rng.standard_normal(
                keys, Stream.LOSS_NOISE, counter, 1)[:, 0]
        return loss, grad


def _group(start: int, stop: int, block: Sequence[RunSpec], keys: U64) -> Group:
    base_lr = np.array([s.optimizer.learning_rate for s in block], dtype=np.float64)
    dims = block[0].dims
    clip = [s.clip_grad_norm for s in block]
    grad_sigma = [s.gradient_noise for s in block]
    loss_sigma = [s.loss_noise for s in block]
    halves = {s.detect.half for s in block}
    return Group(
        start=start, stop=stop,
        landscape=type(block[0].landscape).block([s.landscape for s in block], keys),
        base_lr=base_lr,
        w0=np.array([s.init for s in block], dtype=np.float64).reshape(len(block), dims),
        optimizer=type(block[0].optimizer).build([s.optimizer for s in block], dims),
        schedules=learning_rates([s.schedule for s in block], base_lr),
        clip=(np.array([np.inf if c is None else c for c in clip], dtype=np.float64)
              if any(c is not None for c in clip) else None),
        grad_sigma=np.array(grad_sigma, dtype=np.float64) if any(grad_sigma) else None,
        loss_sigma=np.array(loss_sigma, dtype=np.float64) if any(loss_sigma) else None,
        half=halves.pop() if len(halves) == 1 else None,
    )


def make_groups(specs: Sequence[RunSpec], keys: U64) -> list[Group]:
    """The groups of ``specs``, already ordered by ``group_key`` (``keys``: the runs' random
    keys, in the same order)."""
    groups = []
    start = 0
    while start < len(specs):
        stop = start
        while stop < len(specs) and group_key(specs[stop]) == group_key(specs[start]):
            stop += 1
        groups.append(_group(start, stop, specs[start:stop], keys[start:stop]))
        start = stop
    return groups
