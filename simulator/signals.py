"""Signals for the length of a block, and the sleep they end.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock (inside ``threading.Event.wait``, say). A handler that takes a lock can
then wait for itself forever, so these handlers take none: they only add the signal's number
to a set. The main thread sleeps in ``select`` on a socket pair that the C-level handler
(``signal.set_wakeup_fd``) and other threads (``wake``) write to, so no signal and no wake-up
is lost, whenever it arrives.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Received:
    """The signals received so far, and a sleep that any of them, or ``wake``, ends."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def __contains__(self, signum: object) -> bool:
        return signum in self._seen

    def take(self, signum: signal.Signals) -> bool:
        """Whether ``signum`` arrived since the last take of it; forgets it."""
        if signum not in self._seen:
            return False
        self._seen.discard(signum)
        return True

    def wake(self) -> None:
        """End the current or the next ``sleep``; safe from any thread."""
        with contextlib.suppress(BlockingIOError):  # the buffer is full of wake-ups already
            self._writer.send(b"\0")

    def sleep(self, seconds: float | None) -> None:
        """Sleep up to ``seconds`` (None: until woken) or until a signal or ``wake``."""
        select.select([self._reader], [], [], seconds)
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _handler(self, signum: int, frame: object) -> None:
        self._seen.add(signum)  # one C-level set operation: no lock, nothing to wait for

    def _close(self) -> None:
        self._reader.close()
        self._writer.close()


@contextmanager
def handled(signums: Iterable[signal.Signals]) -> Iterator[Received]:
    """Record ``signums`` while the block runs; the previous handlers come back after it.

    Main thread only, as for ``signal.signal``."""
    received = Received()
    previous = {signum: signal.signal(signum, received._handler) for signum in signums}
    previous_fd = signal.set_wakeup_fd(received._writer.fileno(), warn_on_full_buffer=False)
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, old in previous.items():
            signal.signal(signum, old)
        received._close()
