"""Signal handlers for the length of a block: they only set events that a loop waits on."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def handled(events: dict[signal.Signals, tuple[threading.Event, ...]]) -> Iterator[None]:
    """Each signal sets its events while the block runs; the previous handlers come back
    after it."""
    previous = {}
    for signum, targets in events.items():
        def handler(num: int, frame: object, targets: tuple[threading.Event, ...] = targets,
                    ) -> None:
            for event in targets:
                event.set()
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
