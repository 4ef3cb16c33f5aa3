"""structlog set-up, done once by the command line entry point."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Console renderer on a TTY (or ``fmt="console"``), JSON lines otherwise."""
    out = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if use_console
        else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # A Python or numpy warning is a log event like any other, not a bare line that breaks
    # the JSON-lines stream.
    warnings.showwarning = _log_warning


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    structlog.get_logger("trainsim").warning("python_warning", category=category.__name__,
                                             message=str(message),
                                             source=f"{filename}:{lineno}")
