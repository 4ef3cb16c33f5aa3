"""``trainsim run``: the daemon's serving loop, signals and reloads.

The loop ticks the daemon whenever a step falls due (waking at least every
``MAX_TICK_SECONDS``), and between ticks handles what the signal handlers asked for: SIGHUP
re-reads the config (a bad one is rejected, the old one keeps running) and the control token
file; SIGTERM and SIGINT stop the server, which lets requests being answered finish.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from simulator import __version__
from simulator.config import Config, ConfigError, load_default, load_file
from simulator.config.shards import Shard, shard_config
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


def load(path: str | None, shard: Shard | None = None) -> Config:
    """The config file at ``path`` (the embedded default for None), cut to ``shard``."""
    return shard_config(load_file(path) if path else load_default(), shard)


def serve(options: Options, config: Config, log: Any) -> None:
    """Serve ``config`` until SIGTERM or SIGINT; OSError if the address cannot be bound (before
    anything is logged or any run starts)."""
    bound = server.bind(options.listen_address)
    daemon = Daemon(config, speed=options.speed, log=log)
    control = ControlApi(daemon, options.control)
    handle = server.serve(bound, control.routes() + pages.routes(daemon))
    stop, reload_requested, wake = threading.Event(), threading.Event(), threading.Event()
    # Handlers first: whoever waits for "listening" may signal right away.
    with handled({signal.SIGTERM: (stop, wake), signal.SIGINT: (stop, wake),
                  signal.SIGHUP: (reload_requested, wake)}):
        log.info("listening", address=handle.address, url=f"http://{handle.address}/",
                 pid=os.getpid(), version=__version__,
                 config=config.source, runs=len(config.runs), speed=options.speed,
                 shard=str(options.shard) if options.shard else None,
                 control_api="enabled" if options.control.enabled else "disabled",
                 control_auth="bearer_token" if options.control.token is not None else "none")
        try:
            while not stop.is_set():
                if reload_requested.is_set():
                    reload_requested.clear()
                    _reload(options, daemon, control, log)
                daemon.tick()
                wake.wait(daemon.seconds_until_next_step())
                wake.clear()
        finally:
            handle.close()
    log.info("stopped")


def _reload(options: Options, daemon: Daemon, control: ControlApi, log: Any) -> None:
    """SIGHUP: the config file, then the token file; an unusable one keeps the old."""
    try:
        daemon.apply(load(options.config_file, options.shard))
    except ConfigError as exc:
        daemon.reject(options.config_file or "<embedded>", [str(i) for i in exc.issues])
    if options.token_file is None:
        return
    try:
        token = read_token(options.token_file, TOKEN_FLAG).encode()
    except UsageError as exc:
        log.error("control_token_rejected", error=str(exc))
        return
    if token != control.settings.token:
        control.settings = dataclasses.replace(control.settings, token=token)
        log.info("control_token_reloaded", file=options.token_file)
