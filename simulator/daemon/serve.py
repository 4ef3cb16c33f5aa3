"""``trainsim run``: the daemon's serving loop, signals and reloads.

The loop ticks the daemon whenever a step falls due (waking at least every
``MAX_TICK_SECONDS``), and between ticks handles what the signal handlers asked for: SIGHUP
re-reads the config (a bad one is rejected, the old one keeps running) and the control token
file, on a thread of its own; SIGTERM and SIGINT stop the server, which lets requests being
answered finish. malloc is tuned at start and trimmed after every reload, so that resident
memory stays flat (simulator.daemon.heap).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulator import __version__
from simulator.config import Config, ConfigError, load_default, load_file
from simulator.config.shards import Shard, shard_config
from simulator.daemon import heap
from simulator.daemon.core import Daemon
from simulator.schema.errors import UsageError
from simulator.signals import handled
from simulator.web import pages, server
from simulator.web.api import ControlApi
from simulator.web.auth import TOKEN_FLAG, ControlSettings, read_token


@dataclass(frozen=True)
class Options:
    """What ``trainsim run`` was asked to do."""

    config_file: str | None
    shard: Shard | None
    listen_address: str
    speed: float
    control: ControlSettings
    token_file: str | None
    elapsed: float = 0.0  # simulated seconds the runs are into at start (--start.elapsed)


def load(path: str | None, shard: Shard | None = None) -> Config:
    """The config file at ``path`` (the embedded default for None), cut to ``shard``."""
    return shard_config(load_file(path) if path else load_default(), shard)


def run(options: Options, log: Any) -> None:
    """``trainsim run``: load the config, bind, and serve until SIGTERM or SIGINT.

    The signal handlers come first, so a signal while a large config loads is not lost and
    does not kill the daemon: SIGTERM or SIGINT then ends it cleanly once the load returns,
    SIGHUP reloads once it serves. ConfigError for a bad config, CannotListenError if the
    address cannot be bound, both before anything is logged or any run starts.
    """
    heap.tune()
    with handled((signal.SIGTERM, signal.SIGINT, signal.SIGHUP)) as received:
        config = load(options.config_file, options.shard)
        if options.shard is not None and not config.runs:
            log.warning("shard_empty", shard=str(options.shard),
                        detail="no run of the config hashes to this shard")
        try:
            bound = server.bind(options.listen_address)
        except OSError as exc:
            raise CannotListenError(exc) from None
        if signal.SIGTERM in received or signal.SIGINT in received:
            bound.server_close()
            log.info("stopped")
            return
        daemon = Daemon(config, speed=options.speed, log=log, elapsed=options.elapsed)
        control = ControlApi(daemon, options.control)
        handle = server.serve(bound, control.routes() + pages.routes(daemon))
        log.info("listening", address=handle.address, url=f"http://{handle.address}/",
                 pid=os.getpid(), version=__version__,
                 config=config.source, runs=len(config.runs), speed=options.speed,
                 shard=str(options.shard) if options.shard else None,
                 control_api="enabled" if options.control.enabled else "disabled",
                 control_auth="bearer_token" if options.control.token is not None else "none")
        reloading: _Reload | None = None
        try:
            while signal.SIGTERM not in received and signal.SIGINT not in received:
                if reloading is None and received.take(signal.SIGHUP):
                    reloading = _Reload(options, received.wake)
                if reloading is not None and reloading.done.is_set():
                    reloading.apply(daemon, control, log)
                    reloading = None
                    heap.trim()
                daemon.tick()
                received.sleep(daemon.seconds_until_next_step())
        finally:
            handle.close()
    log.info("stopped")


class CannotListenError(Exception):
    """The listen address cannot be bound; ``cause`` says why."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Reload:
    """A SIGHUP's reload: the config and token files are read and checked on a thread of
    their own, so the runs keep stepping and signals are answered while a large file parses;
    the loop applies the outcome once it is ``done``. Whatever goes wrong (a bad file, a file
    that cannot be read, no memory, no file descriptor) is a rejected reload: the running
    config stays."""

    def __init__(self, options: Options, wake: Callable[[], None]) -> None:
        self.options = options
        self.source = options.config_file or "<embedded default.yaml>"
        self.config: Config | None = None
        self.errors: list[str] = []
        self.token: bytes | None = None
        self.token_error: str | None = None
        self.done = threading.Event()
        self._wake = wake
        threading.Thread(target=self._read, name="trainsim-reload", daemon=True).start()

    def _read(self) -> None:
        try:
            self.config = load(self.options.config_file, self.options.shard)
        except ConfigError as exc:
            self.errors = [str(i) for i in exc.issues]
        except Exception as exc:  # any failure is a rejected reload
            self.errors = [f"{self.source}: cannot reload: {_describe(exc)}"]
        if self.options.token_file is not None:
            try:
                self.token = read_token(self.options.token_file, TOKEN_FLAG).encode()
            except UsageError as exc:
                self.token_error = str(exc)
            except Exception as exc:
                self.token_error = f"{TOKEN_FLAG}: cannot reload: {_describe(exc)}"
        self.done.set()
        self._wake()

    def apply(self, daemon: Daemon, control: ControlApi, log: Any) -> None:
        """Switch to what was read, or reject it; the config first, then the token."""
        if self.config is not None:
            try:
                daemon.apply(self.config)
            except Exception as exc:
                daemon.reject(self.source, [f"{self.source}: cannot apply: {_describe(exc)}"])
        else:
            daemon.reject(self.source, self.errors)
        if self.token_error is not None:
            log.error("control_token_rejected", error=self.token_error)
        elif self.token is not None and self.token != control.settings.token:
            control.settings = dataclasses.replace(control.settings, token=self.token)
            log.info("control_token_reloaded", file=self.options.token_file)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
