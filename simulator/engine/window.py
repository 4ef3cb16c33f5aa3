"""The stall window's memory: running sums of four series and a ring buffer of them.

The stall and oscillation detectors compare the sums of a series over the older and the
recent of two adjacent blocks of h steps (docs/detection.md#stall). Each sum over a block is
a difference of running sums since step 0, so the engine keeps the running sums of the loss,
|its change|, |g . dw| (the loss change an update accounts for to first order) and the
gradient norm, and a ring buffer of them over the last 2h + 1 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulator.arrays import Bools, Floats, Index, Ints

SERIES = (LOSS, DLOSS, EFFECT, GRAD) = range(4)
LOSS_SERIES = slice(LOSS, DLOSS + 1)  # read every step
UPDATE_SERIES = slice(EFFECT, GRAD + 1)  # read when some loss is flat


@dataclass
class Blocks:
    """The window of a block of runs at this step: whether it is full, h, and the sums of a
    run of series over the older and the recent block (``read(series)``)."""

    full: Bools | bool
    h: Ints | int
    read: Callable[[slice], tuple[Floats, Floats]]


class StallWindow:
    """Running sums (series, runs) and their ring buffer (slots, series, runs)."""

    def __init__(self, n: int, max_half: int) -> None:
        self.n = n
        self.sums: Floats = np.zeros((len(SERIES), n), np.float64)
        # Its width is a power of two, so ring positions are a bitwise AND instead of a modulo.
        self.width = 1 << int(2 * max_half).bit_length() if n else 1
        # Slot-major: runs at the same step read one contiguous block.
        self.hist: Floats = np.zeros((self.width, len(SERIES), n), np.float64)
        self._index: Ints = np.arange(n, dtype=np.int64)

    def reset(self, rows: Index, loss: Floats, grad_norm: Floats) -> None:
        """Start the sums of ``rows`` at step 0 of an attempt."""
        start = np.zeros((len(SERIES), len(loss)), np.float64)
        start[LOSS] = loss
        start[GRAD] = grad_norm
        self.sums[:, rows] = start
        self.hist[:, :, rows] = start

    def push(self, rows: slice, sums: Floats, step: Ints, half: Ints, common: int | None,
             k: int | None, mask: Bools | None) -> Blocks:
        """Write this step's running sums of ``rows`` into the ring and return their blocks.

        ``common``: h when every run of the block has the same one; ``k``: the step when every
        run of the block that counts is at that one step (then the entries are contiguous
        blocks). Rows outside ``mask`` keep their ring entries.
        """
        wrap = self.width - 1
        if mask is None and common is not None and k is not None:
            h = common
            self.hist[k & wrap, :, rows] = sums

            def fast(series: slice) -> tuple[Floats, Floats]:
                mid = self.hist[(k - h) & wrap, series, rows]
                return mid - self.hist[(k - 2 * h) & wrap, series, rows], sums[series] - mid
            return Blocks(k >= 2 * h, h, fast)
        flat = self.hist.reshape(-1)
        index = self._index[rows]
        offsets = (np.arange(len(SERIES)) * self.n)[:, None]

        def at(back: Ints | int) -> Ints:
            """Flat positions of series 0 in the entries ``back`` steps ago."""
            result: Ints = ((step - back) & wrap) * (len(SERIES) * self.n) + index
            return result

        slot = at(0) + offsets
        flat.put(slot, sums if mask is None else np.where(mask, sums, flat.take(slot)))
        mid_at, first_at = at(half), at(2 * half)

        def gathered(series: slice) -> tuple[Floats, Floats]:
            mid = flat.take(mid_at + offsets[series])
            return mid - flat.take(first_at + offsets[series]), sums[series] - mid
        return Blocks(step >= 2 * half, half, gathered)

    def commit(self, rows: slice, sums: Floats, mask: Bools | None) -> None:
        """Store the new running sums of ``rows`` where ``mask`` holds."""
        if rows == slice(0, self.n) and mask is None:
            self.sums = sums
        elif mask is None:
            self.sums[:, rows] = sums
        else:
            np.copyto(self.sums[:, rows], sums, where=mask)

    def take_over(self, old: StallWindow, src: Ints, dst: Ints, step: Ints) -> None:
        """Carry the sums of ``old``'s rows ``src`` (at ``step``) to this window's ``dst``
        (a reload): ring entry (step - j) keeps its meaning for every recent j."""
        self.sums[:, dst] = old.sums[:, src]
        for j in range(min(old.width, self.width)):
            # Both indices are arrays around a slice: the result is (runs, series) on each side.
            self.hist[(step - j) % self.width, :, dst] = old.hist[(step - j) % old.width, :, src]
