"""Pure, vectorized detectors: arrays in, boolean arrays out. No clock, no state of their own.

The engine keeps the small per-run memory the detectors need (a ring buffer of recent losses,
counters of consecutive steps, moving averages, countdowns) and calls these functions on the
rows it stepped. docs/detection.md gives each detector's formula, defaults and trade-offs; the
defaults live in ``config.Detection``.
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


def streak_base(streak: Ints, loss: Floats, base: Floats) -> Floats:
    """The loss just before the current rising streak began (the loss itself when not rising)."""
    result: Floats = np.where(streak > 0, base, loss)
    return result


def smoothed_rate(level: Floats, x: Floats, beta: Floats) -> tuple[Floats, Floats]:
    """One step of an exponential moving average: ``(new level, increment)``.

    The increment of an EMA of x is itself the EMA of x's increments, so for x = log J the
    increment is the smoothed growth rate of J per step, in nats.
    """
    rate: Floats = beta * (x - level)
    return level + rate, rate


def log_loss(loss: Floats) -> Floats:
    """log J, with J floored at 1e-300 (a loss that reaches 0 or goes negative reads -690).

    Only the loss: the gradient norm alone also grows exponentially, for a while, in a run
    leaving a plateau (g ~ r exp(-r^2) as r shrinks) while the loss falls, so its growth is no
    evidence of divergence; a diverging gradient blows the loss up within a few steps anyway.
    """
    result: Floats = np.log(np.maximum(loss, 1e-300))
    return result


def count_while(condition: Bools, streak: Ints) -> Ints:
    """Consecutive steps on which ``condition`` held: ``streak + 1`` where it holds, else 0."""
    result: Ints = (streak + 1) * condition
    return result


def diverging(finite: Bools, loss: Floats, param_absmax: Floats, streak: Ints, base: Floats,
              loss_limit: Floats, param_limit: Floats, growth_limit: Ints,
              growth_factor: Floats, rate_streak: Ints, level: Floats, peak: Floats,
              log_factor: Floats) -> Bools:
    """Divergence: a step gave a non-finite value, the loss or a parameter passed its limit, the
    loss rose on ``growth_limit`` consecutive steps and grew ``growth_factor``-fold over them (a
    drifting optimum makes the loss climb for a while, but not multiply), or the smoothed
    log J grew faster than the rate threshold on ``growth_limit`` consecutive steps
    (``rate_streak``) and now stands ``log_factor`` above its highest value outside such a
    streak (``peak``): sustained exponential growth that noise cannot fake and an oscillation
    with a decaying envelope never reaches."""
    result: Bools = ~finite | (loss > loss_limit) | (param_absmax > param_limit)
    result |= (streak >= growth_limit) & (loss >= growth_factor * base)
    result |= (rate_streak >= growth_limit) & (level - peak > log_factor)
    return result


def converged(grad_norm: Floats, tolerance: Floats) -> Bools:
    """Convergence: the gradient norm is at or below its tolerance."""
    result: Bools = grad_norm <= tolerance
    return result


def flat(older_sum: Floats, recent_sum: Floats, abs_steps_sum: Floats, min_improvement: Floats,
         noise_coef: Floats) -> Bools:
    """The loss is flat over the window: the sums of two adjacent blocks of h losses differ by
    less than ``min_improvement`` (relative) plus ``noise_coef`` times ``abs_steps_sum``, the
    smaller of the two blocks' sums of absolute step-to-step changes.

    For i.i.d. noise of standard deviation sigma, E|J_k - J_(k-1)| = 2 sigma / sqrt(pi), so that
    sum estimates sigma without being fooled by a trend (a trend of slope s adds only h |s|),
    and the block difference has standard deviation sigma sqrt(2 h);
    ``noise_coef = z sqrt(pi / (2 h))`` makes the tolerance z standard deviations. The smaller
    of the two sums, because a single jump of the loss by D (the first steps of a blow-up)
    moves the block difference by about D but adds D to its block's sum, and with
    ``noise_coef`` > 1 one block's sum alone would call the jump "flat" (the detection corpus,
    benchmarks/detection_corpus.py, caught this: every lr spike on Rosenbrock stalled before it
    diverged). Either way: a rising loss is a different trouble, so the test is on the
    absolute difference.
    """
    result: Bools = (np.abs(older_sum - recent_sum)
                     <= min_improvement * np.abs(older_sum) + noise_coef * abs_steps_sum)
    return result


def stalled(is_flat: Bools, have_window: Bools | bool, is_converged: Bools) -> Bools:
    """Stall: over a full window the loss is flat (see ``flat``) and the run has not converged."""
    result: Bools = have_window & is_flat & ~is_converged
    return result


def update_cosine(dot_with_previous_update: Floats, norm_product: Floats) -> Floats:
    """Cosine between this update and the previous one (0 when either is zero)."""
    result: Floats = dot_with_previous_update / np.maximum(norm_product, 1e-300)
    return result


def oscillating(flip_streak: Ints, older_sum: Floats, recent_sum: Floats,
                have_window: Bools | bool, flip_steps: Ints, min_improvement: Floats,
                is_converged: Bools) -> Bools:
    """Oscillation: the smoothed cosine between successive updates stayed below its threshold
    on the last ``flip_steps`` steps (``flip_streak``) while the loss improved less than
    ``min_improvement`` (relative) between the two blocks of the stall window."""
    improving = older_sum - recent_sum >= min_improvement * np.abs(older_sum)
    result: Bools = have_window & (flip_streak >= flip_steps) & ~improving & ~is_converged
    return result


def hold(condition: Bools, countdown: Ints, clear_steps: Ints) -> Ints:
    """Hysteresis: the countdown is reset to ``clear_steps`` while the condition holds and
    drops by one on each step it does not; the alert is active while it is positive, so it
    clears only after the condition has been false on ``clear_steps`` consecutive steps."""
    result: Ints = np.maximum(countdown - 1, clear_steps * condition)
    return result
