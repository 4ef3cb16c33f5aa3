"""Replaying recorded training runs: a run's ``replay:`` block in place of a landscape and an
optimizer.

``formats`` reads the files users have (CSV and JSON lines, wide or long; TensorBoard event
files), ``recording`` checks them and maps them from disk, ``spec`` reads the config block and
steps the runs that replay a recording.
"""

from simulator.replay.formats import RecordingError
from simulator.replay.recording import Recording, load
from simulator.replay.spec import RecordedLandscape, Replay

__all__ = ["RecordedLandscape", "Recording", "RecordingError", "Replay", "load"]
