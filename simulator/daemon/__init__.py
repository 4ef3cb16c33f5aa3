"""The daemon: the simulation behind the HTTP server (``core``) and its serving loop, signals
and reloads (``serve``)."""

from simulator.daemon.core import Daemon

__all__ = ["Daemon"]
