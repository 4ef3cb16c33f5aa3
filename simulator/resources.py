"""The files trainsim ships: the embedded default config, the Prometheus and Alertmanager
configs and rules, scenarios and drills, read from the installed package.

``configs/`` in the source tree is the one copy: the package's ``configs`` entry links to it,
and the wheel carries it as package data, so the same code runs from a checkout and from a
wheel.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable


def shipped(*parts: str) -> Traversable:
    """A shipped file or folder, by its path under ``configs/``."""
    node = files("simulator").joinpath("configs")
    for part in parts:
        node = node.joinpath(part)
    return node


def read_bytes(*parts: str) -> bytes:
    """The content of a shipped file."""
    return shipped(*parts).read_bytes()


def read_text(*parts: str) -> str:
    """The text of a shipped file."""
    return shipped(*parts).read_text(encoding="utf-8")
