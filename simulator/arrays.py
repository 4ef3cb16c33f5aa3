"""The array types trainsim's numpy code is written in, named once."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
# Streaks and countdowns: int32 (the config caps them at 10^6), half the memory traffic of int64
# in the per-step detector arithmetic.
Counts = NDArray[np.int32]
Bools = NDArray[np.bool_]
U64 = NDArray[np.uint64]
# Rows of a block: a slice for all of them, or an index array for some.
Index = slice | NDArray[np.intp] | NDArray[np.int64]
