"""simulator.signals: a signal at any bytecode of the loop is recorded and wakes it, never
hangs it, and nothing is lost between a signal and the sleep that follows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from simulator.signals import handled

# A signal's Python handler runs between two bytecodes of the main thread. This harness calls
# the installed handler at every opcode of everything the loop runs (sys.settrace with opcode
# events), which is every moment a real signal could interrupt it.
AT_EVERY_OPCODE = """
import signal, sys, threading
from simulator.signals import handled

kind = sys.argv[1]
calls = 0
with handled((signal.SIGHUP,)) as received:
    if kind == "event":  # what a handler must not do: set a threading.Event (takes its lock)
        event = threading.Event()
        signal.signal(signal.SIGHUP, lambda signum, frame: event.set())
        def one_turn():
            event.wait(0)
            event.clear()
    else:
        def one_turn():
            received.sleep(0)
            received.take(signal.SIGHUP)
            received.wake()
            signal.SIGTERM in received
    handler = signal.getsignal(signal.SIGHUP)

    def at_opcode(frame, what, arg):
        global calls
        if what == "opcode":
            calls += 1
            handler(signal.SIGHUP, frame)
        return at_opcode

    def on_call(frame, what, arg):
        frame.f_trace_opcodes = True
        return at_opcode

    sys.settrace(on_call)
    for _ in range(20):
        one_turn()
    sys.settrace(None)
    print(calls, signal.SIGHUP in received)
"""


def _run_harness(kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", AT_EVERY_OPCODE, kind], capture_output=True,
                          text=True, timeout=20)


def test_a_signal_at_any_opcode_of_the_loop_neither_hangs_it_nor_is_lost() -> None:
    done = _run_harness("received")
    assert done.returncode == 0, done.stderr
    calls, recorded = done.stdout.split()
    assert int(calls) > 200  # the handler ran at hundreds of points inside sleep/take/wake
    assert recorded == "True"


def test_the_harness_catches_a_handler_that_takes_a_lock() -> None:
    # The same harness hangs a handler that sets a threading.Event: inside Event.wait the
    # main thread holds the Event's lock, and the handler waits for it forever.
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", AT_EVERY_OPCODE, "event"], capture_output=True,
                       timeout=5)


def test_a_real_signal_ends_an_endless_sleep_and_is_recorded() -> None:
    with handled((signal.SIGHUP,)) as received:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGHUP)).start()
        started = time.monotonic()
        received.sleep(30)
        assert time.monotonic() - started < 10
        assert signal.SIGHUP in received
        assert received.take(signal.SIGHUP)
        assert not received.take(signal.SIGHUP)


def test_a_signal_before_the_sleep_is_not_lost() -> None:
    with handled((signal.SIGHUP,)) as received:
        os.kill(os.getpid(), signal.SIGHUP)
        started = time.monotonic()
        received.sleep(30)  # returns at once: the signal's byte is already in the socket
        assert time.monotonic() - started < 10
        assert signal.SIGHUP in received


def test_wake_from_another_thread_ends_the_sleep_and_many_wakes_never_block() -> None:
    with handled((signal.SIGHUP,)) as received:
        for _ in range(100_000):  # far more than a socket buffer holds
            received.wake()
        received.sleep(30)
        threading.Timer(0.2, received.wake).start()
        started = time.monotonic()
        received.sleep(30)
        assert time.monotonic() - started < 10
        assert signal.SIGHUP not in received


def test_the_previous_handlers_and_wakeup_fd_come_back() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with handled((signal.SIGHUP,)):
        assert signal.getsignal(signal.SIGHUP) is not before
    assert signal.getsignal(signal.SIGHUP) is before
    assert signal.set_wakeup_fd(-1) == -1
