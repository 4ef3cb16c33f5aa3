"""The daemon's malloc tuning (simulator.daemon.heap): applied on glibc, never over the
environment's own settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from simulator.daemon import heap; print(heap.tune()); heap.trim()"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
def test_tune_caps_arenas_and_pins_the_mmap_threshold_unless_the_environment_sets_them() -> None:
    assert _probe() == "['MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_']"
    assert _probe(MALLOC_ARENA_MAX="4") == "['MALLOC_MMAP_THRESHOLD_']"
    assert _probe(MALLOC_ARENA_MAX="4", MALLOC_MMAP_THRESHOLD_="65536") == "[]"
