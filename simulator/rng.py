"""Counter-based random numbers, vectorized across runs.

A value depends only on (run key, stream, counter, dimension), never on how many runs were
stepped together or in which order, so every run is reproducible bit for bit on its own.
The mixing function is splitmix64's finalizer; normals come from the Box-Muller transform.
Every stream a run or a fleet draws from is named here, once.
"""

from __future__ import annotations

import enum
import hashlib

import numpy as np
from numpy.typing import NDArray

from simulator.arrays import U64


class Stream(enum.IntEnum):
    """The independent random streams of one run (keyed by ``run_key``)."""

    NOISE_BURST = 1  # the noise_burst fault's gradient noise
    GRADIENT_NOISE = 2  # the gradient_noise run key
    LOSS_NOISE = 3  # the loss_noise run key
    STEP_TIME = 4  # a hardware run's step-duration jitter
    ROTATION = 10  # a rotated quadratic's orthogonal matrix
    NQM_NOISE = 11  # the noisy quadratic model's minibatch gradient noise
    MINIBATCH = 12  # logistic regression's minibatch rows


class FleetStream(enum.IntEnum):
    """The independent random streams of a fleet (keyed by the fleet's seed), one per sampled
    quantity."""

    VARIANT = 1
    LEARNING_RATE = 2
    INIT = 3
    FAILING = 4
    FAULT_KIND = 5
    FAULT_AT = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi
_INV_2_53 = 1.0 / float(1 << 53)


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def run_key(seed: int, name: str) -> int:
    """The random key of a run: its seed combined with its name."""
    return (stable_hash(name) ^ (seed * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF


def attempt_counter(restarts: NDArray[np.int64], step: NDArray[np.int64]) -> U64:
    """The counter of a run's draws at ``step`` of its attempt ``restarts``: one counter per
    (attempt, step), so a restarted run draws fresh numbers."""
    result: U64 = (restarts.astype(np.uint64) << np.uint64(40)) + step.astype(np.uint64)
    return result


def mix(x: U64) -> U64:
    """splitmix64's finalizer: a bijection on 64-bit integers that scrambles every bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    result: U64 = x ^ (x >> np.uint64(31))
    return result


def standard_normal(keys: U64, stream: Stream, counter: U64, dims: int) -> NDArray[np.float64]:
    """Independent N(0, 1) draws, shape (len(keys), dims), for each (key, stream, counter)."""
    with np.errstate(over="ignore"):
        base = mix(keys ^ mix(counter * _GOLDEN + np.uint64(stream)))
        j = np.arange(dims, dtype=np.uint64) * np.uint64(2)
        a = mix(base[:, None] + j + np.uint64(1))
        b = mix(base[:, None] + j + np.uint64(2))
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 1.0) * _INV_2_53  # in (0, 1]
    u2 = (b >> np.uint64(11)).astype(np.float64) * _INV_2_53
    result: NDArray[np.float64] = np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)
    return result


def uniform_index(keys: U64, stream: Stream, counter: U64, count: int,
                  high: int) -> NDArray[np.int64]:
    """Independent uniform integers in [0, high), shape (len(keys), count), for each
    (key, stream, counter): minibatch rows drawn with replacement."""
    with np.errstate(over="ignore"):
        base = mix(keys ^ mix(counter * _GOLDEN + np.uint64(stream)))
        j = np.arange(count, dtype=np.uint64)
        bits = mix(base[:, None] + j + np.uint64(1))
    u = (bits >> np.uint64(11)).astype(np.float64) * _INV_2_53  # in [0, 1)
    result: NDArray[np.int64] = np.minimum((u * high).astype(np.int64), high - 1)
    return result


def uniforms(seed: int, stream: FleetStream, count: int) -> NDArray[np.float64]:
    """``count`` independent uniforms in [0, 1) for a fleet's (seed, stream); entry i depends
    only on (seed, stream, i)."""
    key = np.uint64(stable_hash(f"fleet/{seed}/{int(stream)}"))
    with np.errstate(over="ignore"):
        bits = mix(mix(np.arange(count, dtype=np.uint64) * _GOLDEN ^ key))
    result: NDArray[np.float64] = (bits >> np.uint64(11)).astype(np.float64) * _INV_2_53
    return result
