"""Pure, vectorized detectors: arrays in, boolean arrays out. No clock, no state of their own.

The engine keeps the small per-run memory the detectors need (a ring buffer of running sums
of the loss, its changes, the updates' first-order effect and the gradient norm; counters of
consecutive steps; moving averages; countdowns) and calls these functions on the rows it
stepped. docs/detection.md gives each detector's formula, defaults and trade-offs. Their
thresholds are the ``detect:`` keys of a run (``Detection``), turned into per-run arrays once
(``Thresholds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import Bools, Counts, Floats, Ints
from simulator.schema.fields import at_least_one, half_open_unit, integer, non_negative, positive
from simulator.schema.kinds import Kind, param

_COUNT = integer(0, 10**6)
_POSITIVE_COUNT = integer(1, 10**6)


@dataclass(frozen=True)
class Detection(Kind):
    """Per-run detector thresholds: the keys of ``detect:``."""

    kind: ClassVar[str] = "detect"

    divergence_loss: float = param(1e5, positive, "diverged when the loss exceeds this")
    divergence_parameter: float = param(1e3, positive, "diverged when any |w_i| exceeds this")
    divergence_growth_steps: int = param(
        10, _COUNT, "diverged when the loss rose on this many consecutive steps (0: off)...")
    divergence_growth_factor: float = param(
        2.0, at_least_one, "...and grew at least this many times over them (a drifting optimum "
        "makes the loss climb for a while, but not multiply)")
    stall_window: int = param(20, integer(1, 10_000), "K: steps over which improvement is "
                                                      "measured")
    stall_min_improvement: float = param(
        1e-4, positive, "m: stalled when, over the window, the loss fell by less than this "
        "fraction of itself beyond its noise (and rose by no more than its noise), the updates "
        "account for less than this fraction to first order (the sum of |g · Δw|), and the "
        "gradient norm fell by less than this fraction; while not converged. All three compare "
        "the window's two halves (h = K/2 steps each), so the threshold is per K steps")
    stall_noise_z: float = param(
        3.0, non_negative, "noise allowance: z standard deviations of the difference of the "
        "half-window sums, the noise estimated from the sum of |J_k - J_(k-1)| over a half, "
        "the smaller of the two halves' sums (0: no allowance)")
    converged_gradient_norm: float = param(
        1e-3, positive, "converged when the gradient norm is at or below this")
    converged_release_factor: float = param(
        10.0, at_least_one, "hysteresis: a converged run stays converged while its gradient "
        "norm is at most this many times `converged_gradient_norm`, or its loss is at most "
        "`stall_min_improvement` of itself above its lowest since it converged (an optimizer "
        "such as Adam circles its optimum); it leaves after `clear_steps` steps of neither")
    oscillation_flip_steps: int = param(
        10, _COUNT, "oscillating when the update direction flipped (below) on this many "
        "consecutive steps...")
    oscillation_min_improvement: float = param(
        1e-2, positive, "...while the relative improvement over `stall_window` (measured as "
        "for the stall) is below this")
    oscillation_flip_cosine: float = param(
        0.5, half_open_unit, '"flipped" means: the moving average of the cosine between '
        "successive updates is at or below minus this")
    divergence_growth_rate: float = param(
        0.05, non_negative, "also diverged when the moving average of log J rose faster than "
        "this (per step) on `divergence_growth_steps` consecutive steps and stands "
        "log(`divergence_growth_factor`) above its highest value outside such a stretch (0: off)")
    smoothing_steps: int = param(10, _POSITIVE_COUNT, "span n of the moving averages above "
                                                      "(weight 1/n for the newest value)")
    stall_confirm_steps: int = param(
        10, _POSITIVE_COUNT, "hysteresis: the stall verdict begins only once its condition has "
        "held on this many consecutive steps (1: at once), as an alert's `for`")
    clear_steps: int = param(
        10, _POSITIVE_COUNT, "hysteresis: the converged, stall and oscillation verdicts clear "
        "only after their condition has been false on this many consecutive steps (1: at once); "
        "divergence stays latched until the run restarts")

    @property
    def half(self) -> int:
        """h: the length of each of the stall window's two blocks."""
        return max(self.stall_window // 2, 1)


class Thresholds:
    """The thresholds of every run as arrays, in the form the detectors compare against."""

    def __init__(self, detects: Sequence[Detection]) -> None:
        def col(name: str, dtype: Any) -> NDArray[Any]:
            return np.array([getattr(d, name) for d in detects], dtype=dtype)

        self.loss_limit: Floats = col("divergence_loss", np.float64)
        self.param_limit: Floats = col("divergence_parameter", np.float64)
        growth = col("divergence_growth_steps", np.int32)
        # A rising streak can never reach this limit: 0 in the config switches the test off.
        self.growth_limit: Counts = np.where(growth > 0, growth, np.iinfo(np.int32).max)
        self.growth_factor: Floats = col("divergence_growth_factor", np.float64)
        self.window: Ints = col("stall_window", np.int64)
        self.min_improvement: Floats = col("stall_min_improvement", np.float64)
        self.tolerance: Floats = col("converged_gradient_norm", np.float64)
        self.release: Floats = self.tolerance * col("converged_release_factor", np.float64)
        self.rise: Floats = col("stall_min_improvement", np.float64)
        self.stall_confirm: Counts = col("stall_confirm_steps", np.int32)
        self.flip_steps: Counts = col("oscillation_flip_steps", np.int32)
        self.osc_improvement: Floats = col("oscillation_min_improvement", np.float64)
        rate = col("divergence_growth_rate", np.float64)
        # A rate of 0 switches the smoothed-growth test off: no rate exceeds infinity.
        self.growth_rate: Floats = np.where(rate > 0, rate, np.inf)
        self.log_growth_factor: Floats = np.log(self.growth_factor)
        self.beta: Floats = 1.0 / col("smoothing_steps", np.float64)
        # The stall window is two adjacent blocks of h steps each. Their means are h steps
        # apart, so a relative threshold meant over the K-step window is scaled by h / K.
        self.half: Ints = np.maximum(self.window // 2, 1)
        self.min_improvement *= self.half / self.window
        self.osc_improvement *= self.half / self.window
        self.noise_coef: Floats = (col("stall_noise_z", np.float64)
                                   * np.sqrt(np.pi / (2.0 * self.half)))
        self.flip_cosine: Floats = -col("oscillation_flip_cosine", np.float64)
        self.clear_steps: Counts = col("clear_steps", np.int32)


def rising_streak(prev_loss: Floats, loss: Floats, streak: Counts) -> Counts:
    """Consecutive steps on which the loss rose: ``streak + 1`` where it rose, else 0."""
    result: Counts = (streak + 1) * (loss > prev_loss)
    return result


def streak_base(streak: Counts, loss: Floats, base: Floats) -> Floats:
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


def count_while(condition: Bools, streak: Counts) -> Counts:
    """Consecutive steps on which ``condition`` held: ``streak + 1`` where it holds, else 0."""
    result: Counts = (streak + 1) * condition
    return result


def diverging(finite: Bools, loss: Floats, param_absmax: Floats, streak: Counts, base: Floats,
              loss_limit: Floats, param_limit: Floats, growth_limit: Counts,
              growth_factor: Floats, rate_streak: Counts, level: Floats, peak: Floats,
              log_factor: Floats) -> Bools:
    """Divergence: a step gave a non-finite value, the loss or a parameter passed its limit, the
    loss rose on ``growth_limit`` consecutive steps and grew ``growth_factor``-fold over them (a
    drifting optimum makes the loss climb for a while, but not multiply), or the smoothed
    log J grew faster than the rate threshold on ``growth_limit`` consecutive steps
    (``rate_streak``) and now stands ``log_factor`` above its highest value outside such a
    streak (``peak``): sustained exponential growth that noise cannot fake and an oscillation
    with a decaying envelope never reaches."""
    result: Bools = ~finite | (loss > loss_limit) | (param_absmax > param_limit)
    # The growth tests only where a streak is long enough (rarely any row: skip the rest).
    rising = streak >= growth_limit
    if rising.any():
        result |= rising & (loss >= growth_factor * base)
    growing = rate_streak >= growth_limit
    if growing.any():
        result |= growing & (level - peak > log_factor)
    return result


def converged(grad_norm: Floats, tolerance: Floats) -> Bools:
    """Convergence: the gradient norm is at or below its tolerance."""
    result: Bools = grad_norm <= tolerance
    return result


def still_converged(grad_norm: Floats, loss: Floats, floor: Floats, release: Floats,
                    rise: Floats) -> Bools:
    """A converged run stays converged while its gradient norm is at most ``release`` or its
    loss stands at most ``rise`` (a fraction of itself) above ``floor``, the lowest loss since
    it converged: an optimizer such as Adam circles its optimum, its gradient norm swinging
    well past the tolerance while its loss stays put. The loss test reads nothing where the
    optimum's loss is 0 (no fraction of it is any room); the gradient band still does."""
    result: Bools = (grad_norm <= release) | (loss <= floor + rise * np.abs(floor))
    return result


def flat(change: Floats, relative: Floats, noise: Floats) -> Bools:
    """The loss is flat over the window: ``change``, the sum of the losses over the older of
    two adjacent blocks of h steps minus that over the recent one, shows a fall of no more
    than ``relative + noise`` and a rise of no more than ``noise``.

    ``relative`` is the smallest improvement that counts (``min_improvement`` times the older
    block's sum). ``noise`` is the loss noise the window cannot resolve, ``noise_coef`` times
    the smaller of the two blocks' sums of |J_k - J_(k-1)|. For i.i.d. noise of standard
    deviation sigma, E|J_k - J_(k-1)| = 2 sigma / sqrt(pi), so that sum estimates sigma without
    being fooled by a trend (a trend of slope s adds only h |s|), and the block difference has
    standard deviation sigma sqrt(2 h); ``noise_coef = z sqrt(pi / (2 h))`` makes the
    allowance z standard deviations. The smaller of the two sums, because a single jump of
    the loss by D (the first steps of a blow-up) moves the block difference by about D but adds
    D to its block's sum, and with ``noise_coef`` > 1 one block's sum alone would call the
    jump "flat" (the detection corpus, benchmarks/detection_corpus.py, caught this: every lr
    spike on Rosenbrock stalled before it diverged). A rise beyond the noise is a different
    trouble (a drift, a blow-up, a swing of a ringing run), not a plateau.
    """
    result: Bools = (change <= relative + noise) & (change >= -noise)
    return result


def moving(effect: Floats, relative: Floats) -> Bools:
    """The updates still move the loss: ``effect``, h times the sum of |g . dw| over the recent
    block of h steps (the loss change each update accounts for to first order, with the
    gradient it stepped on), exceeds ``relative`` (see ``flat``). The stall condition is: a
    full window, ``flat``, not ``moving``, not ``converging`` and not converged.

    h times, because a trend of s per step moves the two block sums h^2 s apart: the effect is
    on the scale of the block difference. No noise term: the gradient does not carry the loss
    noise, so a noisy run improving more slowly than its loss can show still moves. The
    absolute value, because a momentum update points uphill on part of its swing and a signed
    sum would cross zero there. A noisy run jittering at its noise floor moves (its minibatch
    updates are not small); a frozen run, or one on a plateau where the gradient vanishes,
    does not.
    """
    result: Bools = effect > relative
    return result


def converging(older_grad: Floats, recent_grad: Floats, effect: Floats,
               min_improvement: Floats) -> Bools:
    """The run closes in on an optimum: it moves at all (``effect`` > 0) and its gradient norm
    fell over the window, the recent block's sum below the older one's by more than
    ``min_improvement`` of it.

    It tells a run converging onto an optimum whose loss is above zero from one stuck on a
    plateau. Near such an optimum the loss barely changes relative to itself (J = b + e with
    the excess e << b), so it reads flat and the updates' effect small, while the gradient,
    which measures e and not J, keeps shrinking geometrically. On a plateau the gradient
    stays small, or grows as the run creeps off it. A frozen run is not converging, however
    its observed gradient jitters. No noise term: a run whose updates are noisy enough to
    blur this test moves (see ``moving``).
    """
    result: Bools = (recent_grad < (1.0 - min_improvement) * older_grad) & (effect > 0)
    return result


def update_cosine(dot_with_previous_update: Floats, norm_product: Floats) -> Floats:
    """Cosine between this update and the previous one (0 when either is zero)."""
    result: Floats = dot_with_previous_update / np.maximum(norm_product, 1e-300)
    return result


def improving(change: Floats, scale: Floats, min_improvement: Floats) -> Bools:
    """The loss improved by at least ``min_improvement`` times ``scale`` (the older block's
    |sum|) between the two blocks of the stall window (``change``, see ``flat``). The
    oscillation condition is: a full window, a flip streak (``count_while`` of the smoothed
    cosine, ``update_cosine``, at or below its threshold) of at least ``flip_steps``, not
    improving, and not converged."""
    result: Bools = change >= min_improvement * scale
    return result


def hold(condition: Bools, countdown: Counts, clear_steps: Counts) -> Counts:
    """Hysteresis: the countdown is reset to ``clear_steps`` while the condition holds and
    drops by one on each step it does not; the alert is active while it is positive, so it
    clears only after the condition has been false on ``clear_steps`` consecutive steps."""
    result: Counts = np.maximum(countdown - 1, clear_steps * condition)
    return result
