"""The C heap of a long-running daemon: glibc's malloc, kept to a flat footprint.

Each thread that renders a scrape allocates megabytes; glibc gives every such thread an arena
of its own (up to eight per core) and returns freed memory to the system only from the top of
each arena. Worse, once a large block served by mmap is freed, glibc raises its mmap threshold
to that size, so the next 10 MB scrape bodies come from the arenas, where they fragment.
Under keep-alive scrapers and a reload a minute, resident memory then creeps up. ``tune``
limits the arenas to ``ARENAS`` (what ``MALLOC_ARENA_MAX`` does) and pins the mmap threshold
at ``MMAP_THRESHOLD`` (what ``MALLOC_MMAP_THRESHOLD_`` does), so large buffers always go back
to the system when freed; ``trim`` hands the free pages of every arena back (``malloc_trim``),
which the loop does after a reload rebuilt the runs. On a libc without these calls (musl,
macOS) both do nothing; settings made through the environment are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENAS = 2
MMAP_THRESHOLD = 1 << 20  # bytes: blocks this large are mmapped, and unmapped when freed
# mallopt's parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def tune() -> list[str]:
    """Cap the arenas and pin the mmap threshold, except where the environment sets them;
    the settings applied."""
    applied: list[str] = []
    if _LIBC is None:
        return applied
    for variable, param, value in (("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENAS),
                                   ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD)):
        if variable not in os.environ and _LIBC.mallopt(param, value):
            applied.append(variable)
    return applied


def trim() -> bool:
    """Return the free pages of every arena to the system; whether any were returned."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))
