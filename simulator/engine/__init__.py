"""The simulation core: a fleet of runs stepped through simulated time as numpy arrays.

``core`` holds the ``Engine`` and its phases, ``state`` the per-run state, ``group`` the blocks
of runs stepped together, ``window`` the stall window's memory, ``snapshot`` what the engine
hands out.
"""

from simulator.engine.core import Engine
from simulator.engine.snapshot import ALERTS, STATES, Events, Snapshot, Transition

__all__ = ["ALERTS", "STATES", "Engine", "Events", "Snapshot", "Transition"]
