"""Reading a file a user names: a regular file only, within a size cap, never blocking.

A config or token path may point anywhere: at ``/dev/zero`` (endless), a FIFO (blocks until a
writer comes), a directory, or a file far larger than any config. ``read_regular`` opens it
without blocking, refuses anything but a regular file, and reads at most ``limit`` bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# A config of 200,000 YAML nodes (the loader's limit) takes a few MB; fleets are generated
# from a template, so no real config comes near this.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_TOKEN_BYTES = 4096


class FileReadError(OSError):
    """A file that cannot be read as asked; ``reason`` says why, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_regular(path: str | Path, limit: int) -> bytes:
    """The content of the regular file at ``path``; FileReadError if it is missing,
    unreadable, not a regular file or larger than ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileReadError(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileReadError("not a regular file")
        if info.st_size > limit:
            raise FileReadError(f"larger than {limit} bytes ({info.st_size} bytes)")
        chunks, size = [], 0
        while size <= limit:  # the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileReadError(f"larger than {limit} bytes")
        return b"".join(chunks)
    except FileReadError:
        raise
    except OSError as exc:
        raise FileReadError(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
