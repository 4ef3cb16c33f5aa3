"""Counter-based random numbers, vectorized across runs.

A value depends only on (run key, stream, counter, dimension), never on how many runs were
stepped together or in which order, so every run is reproducible bit for bit on its own.
The mixing function is splitmix64's finalizer; normals come from the Box-Muller transform.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

U64 = NDArray[np.uint64]
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


def mix(x: U64) -> U64:
    """splitmix64's finalizer: a bijection on 64-bit integers that scrambles every bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    result: U64 = x ^ (x >> np.uint64(31))
    return result


def standard_normal(keys: U64, stream: int, counter: U64, dims: int) -> NDArray[np.float64]:
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


def uniform_index(keys: U64, stream: int, counter: U64, count: int,
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
