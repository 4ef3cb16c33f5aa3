"""Command line: ``trainsim run`` (the daemon) and ``trainsim validate``.

A user's mistake (bad config, bad flag) gets one clear line per problem and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import structlog

from simulator import __version__, logs
from simulator.config import Config, ConfigError, load_default, load_file
from simulator.daemon import Daemon
from simulator.server import parse_listen_address, start_server

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9310"
EXIT_USAGE = 2


def _speed(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < x <= 1e6:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 1e6, got {value!r}")
    return x


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="trainsim",
        description="Replays gradient-descent runs as mock ML training jobs with Prometheus "
                    "metrics.")
    parser.add_argument("--version", action="version", version=f"trainsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config.file", dest="config_file", metavar="FILE",
                     help="YAML config (default: the embedded configs/default.yaml)")
    run.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                     default=DEFAULT_LISTEN_ADDRESS,
                     help=f"address to serve on; port 0 picks a free port "
                          f"(default {DEFAULT_LISTEN_ADDRESS})")
    run.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                     help="simulated time runs X times faster than the wall clock (default 1)")
    run.add_argument("--log.format", dest="log_format", choices=("auto", "console", "json"),
                     default="auto", help="console on a TTY and JSON otherwise by default")
    run.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info")

    validate = sub.add_parser("validate", help="check config files without starting anything")
    validate.add_argument("files", nargs="+", metavar="FILE")
    return parser


def _load(path: str | None) -> Config:
    return load_file(path) if path else load_default()


def _validate(files: Sequence[str]) -> int:
    status = 0
    for path in files:
        try:
            cfg = load_file(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
        else:
            print(f"{path}: ok ({len(cfg.runs)} runs)")
    return status


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    log = structlog.get_logger("trainsim")
    try:
        config = _load(args.config_file)
        parse_listen_address(args.listen_address)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"trainsim: --web.listen-address: {exc}", file=sys.stderr)
        return EXIT_USAGE

    daemon = Daemon(config, speed=args.speed, log=log)
    try:
        server = start_server(args.listen_address, daemon)
    except OSError as exc:
        print(f"trainsim: cannot listen on {args.listen_address}: {exc.strerror}",
              file=sys.stderr)
        return 1
    log.info("listening", address=server.address, version=__version__,
             config=config.source, runs=len(config.runs), speed=args.speed)

    stop = threading.Event()
    reload_requested = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()
        wake.set()

    previous = {s: signal.signal(s, h) for s, h in
                ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup))}
    try:
        while not stop.is_set():
            if reload_requested.is_set():
                reload_requested.clear()
                try:
                    daemon.apply(_load(args.config_file))
                except ConfigError as exc:
                    daemon.reject(args.config_file or "<embedded>",
                                  [str(i) for i in exc.issues])
            daemon.tick()
            wake.wait(daemon.seconds_until_next_step())
            wake.clear()
    finally:
        server.close()
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainsim`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.files)
    return _run(args)
