"""Pure, vectorized detectors: arrays in, boolean arrays out. No clock, no state of their own.

The engine keeps the small per-run memory the detectors need (a ring buffer of recent losses,
a counter of consecutive rising steps) and calls these functions on the rows it stepped.
docs/config.md documents each threshold; the defaults live in ``config.Detection``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]


def rising_streak(prev_loss: Floats, loss: Floats, streak: Ints) -> Ints:
    """Consecutive steps on which the loss rose: ``streak + 1`` where it rose, else 0."""
    result: Ints = (streak + 1) * (loss > prev_loss)
    return result


def flip_streak(dot_with_previous_update: Floats, streak: Ints) -> Ints:
    """Consecutive steps whose update pointed against the previous one (negative dot product)."""
    result: Ints = (streak + 1) * (dot_with_previous_update < 0.0)
    return result


def streak_base(streak: Ints, loss: Floats, base: Floats) -> Floats:
    """The loss just before the current rising streak began (the loss itself when not rising)."""
    result: Floats = np.where(streak > 0, base, loss)
    return result


def diverging(finite: Bools, loss: Floats, param_absmax: Floats, streak: Ints, base: Floats,
              loss_limit: Floats, param_limit: Floats, growth_limit: Ints,
              growth_factor: Floats) -> Bools:
    """Divergence: a step gave a non-finite value, the loss or a parameter passed its limit, or
    the loss rose on ``growth_limit`` consecutive steps and grew ``growth_factor``-fold over
    them (a drifting optimum makes the loss climb for a while, but not multiply)."""
    result: Bools = ~finite | (loss > loss_limit) | (param_absmax > param_limit)
    result |= (streak >= growth_limit) & (loss >= growth_factor * base)
    return result


def converged(grad_norm: Floats, tolerance: Floats) -> Bools:
    """Convergence: the gradient norm is at or below its tolerance."""
    result: Bools = grad_norm <= tolerance
    return result


def relative_improvement(old_loss: Floats, loss: Floats) -> Floats:
    """(old - new) / |old|, with a floor on the denominator so a zero loss cannot divide by 0."""
    result: Floats = (old_loss - loss) / np.maximum(np.abs(old_loss), 1e-300)
    return result


def stalled(improvement: Floats, have_window: Bools, min_improvement: Floats,
            is_converged: Bools) -> Bools:
    """Stall: over a full window the loss moved less than ``min_improvement`` (relative, either
    way: a rising loss is a different trouble), and the run has not converged."""
    result: Bools = have_window & (np.abs(improvement) < min_improvement) & ~is_converged
    return result


def oscillating(flip_streak: Ints, improvement: Floats, have_window: Bools,
                flip_steps: Ints, min_improvement: Floats, is_converged: Bools) -> Bools:
    """Oscillation: the update direction flipped on each of the last ``flip_steps`` steps while
    the loss improved less than ``min_improvement`` over the stall window."""
    result: Bools = (have_window & (flip_streak >= flip_steps) & (improvement < min_improvement)
                     & ~is_converged)
    return result
