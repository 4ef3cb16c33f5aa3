"""Shards: a fleet split across daemons.

A ``Shard`` ``INDEX/COUNT`` holds the runs whose ``stable_hash(name) % COUNT == INDEX``: the
shards of a fleet are disjoint and their union is the fleet, whatever the names.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from simulator import rng
from simulator.config.file import Config


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the runs whose stable name hash is ``index`` mod
    ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, name: str) -> bool:
        """Whether the run named ``name`` belongs to this shard."""
        return rng.stable_hash(name) % self.count == self.index


MAX_SHARDS = 100_000


def parse_shard(text: str) -> Shard:
    """``INDEX/COUNT`` in ASCII digits with 0 <= INDEX < COUNT; ValueError with a one-line
    reason otherwise."""
    m = re.fullmatch(r"([0-9]{1,9})/([0-9]{1,9})", text)
    i, n = (int(m[1]), int(m[2])) if m else (-1, -1)
    if n < 1 or n > MAX_SHARDS or not 0 <= i < n:
        raise ValueError(f"must be INDEX/COUNT with 0 <= INDEX < COUNT <= {MAX_SHARDS}, "
                         f"e.g. 0/3, got {text!r}")
    return Shard(i, n)


def shard_config(config: Config, shard: Shard | None) -> Config:
    """The part of ``config`` that ``shard`` holds (the whole config for None)."""
    if shard is None or shard.count == 1:
        return config
    return dataclasses.replace(config, runs=tuple(s for s in config.runs if shard.holds(s.name)))
