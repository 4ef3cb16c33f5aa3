"""Command line: ``trainsim run`` (the daemon), ``trainsim validate``, the control API
client commands ``runs``, ``fault inject|clear`` and ``pause|resume|restart``, ``trainsim
drill`` and ``trainsim webhook`` (an Alertmanager webhook receiver).

A user's mistake (bad config, bad flag) gets one clear line per problem and exit status 2,
never a traceback. A client command the daemon refuses exits 1 with the daemon's message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from simulator import __version__, api, client, logs, webhook
from simulator.config import Config, ConfigError, load_default, load_file
from simulator.daemon import Daemon
from simulator.fleet import Shard, parse_shard, shard_config
from simulator.server import is_loopback, parse_listen_address, start_server

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9310"
DEFAULT_WEBHOOK_ADDRESS = "127.0.0.1:9095"
EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """A mistake in the command line or a file it names: one line, exit status 2."""


def _speed(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < x <= 1e6:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 1e6, got {value!r}")
    return x


def _shard(value: str) -> Shard:
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SHARD_HELP = ("simulate only shard INDEX of COUNT: the runs whose stable name hash is INDEX "
               "mod COUNT (COUNT daemons with INDEX 0..COUNT-1 split the runs without overlap)")


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
    run.add_argument("--web.enable-control-api", dest="control_api",
                     action=argparse.BooleanOptionalAction, default=True,
                     help="allow the control API's changes (fault injection, pause, resume, "
                          "restart); reads stay available either way (default: enabled)")
    run.add_argument("--web.control-token-file", dest="control_token_file", metavar="FILE",
                     help="file holding the bearer token the control API's changes require; "
                          "mandatory when listening beyond loopback with the API enabled")

    run.add_argument("--shard", type=_shard, metavar="INDEX/COUNT", help=_SHARD_HELP)

    validate = sub.add_parser("validate", help="check config files without starting anything")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--shard", type=_shard, metavar="INDEX/COUNT",
                          help="also print the runs this shard would hold, one per line")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=client.DEFAULT_URL,
                        help=f"the daemon's address (default {client.DEFAULT_URL})")
    common.add_argument("--token-file", metavar="FILE",
                        help=f"file holding the control API's bearer token (default: the "
                             f"{client.TOKEN_ENV} environment variable, if set)")

    runs = sub.add_parser("runs", parents=[common], help="list the runs of a running daemon")
    runs.add_argument("--output", choices=("table", "json"), default="table")

    fault = sub.add_parser("fault", help="inject or clear faults on a running daemon")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True, metavar="COMMAND")
    inject = fault_sub.add_parser("inject", parents=[common], help="inject a fault now; "
                                  "prints its id")
    inject.add_argument("run", metavar="RUN")
    inject.add_argument("kind", metavar="KIND", help="lr_spike, gradient_explosion, nan, "
                        "plateau, drift, noise_burst, slow_steps, hang or crash")
    length = inject.add_mutually_exclusive_group()
    length.add_argument("--for", dest="duration", metavar="DURATION",
                        help="how long, e.g. 60s or 2m (default: until cleared; drift and "
                             "crash have their own defaults)")
    length.add_argument("--steps", type=_positive_int, metavar="N",
                        help="how long, in steps of the run")
    inject.add_argument("--param", dest="params", action="append", type=_param, default=[],
                        metavar="NAME=VALUE", help="a parameter of the kind, e.g. factor=20 "
                        "(repeatable)")
    clear = fault_sub.add_parser("clear", parents=[common], help="end a fault now")
    clear.add_argument("run", metavar="RUN")
    clear.add_argument("fault_id", metavar="ID")

    drill = sub.add_parser(
        "drill", help="inject faults on a timeline and score the alerting",
        description="Without --daemon/--prometheus, start a daemon, Prometheus and "
                    "Alertmanager on loopback (the shipped rules in the fast profile) and clean "
                    "them up; with them, drill a running stack. Exit 0 if every expectation "
                    "holds, 1 if one fails, 2 for a bad drill file, 3 if the drill could not run.")
    drill.add_argument("file", metavar="DRILL.yaml")
    drill.add_argument("--daemon", metavar="URL", help="a running daemon's control API")
    drill.add_argument("--prometheus", metavar="URL", help="the Prometheus that scrapes it")
    drill.add_argument("--alertmanager", metavar="URL", help="its Alertmanager (optional)")
    drill.add_argument("--token-file", metavar="FILE", help="the daemon's control token")
    drill.add_argument("--speed", type=_speed, metavar="X",
                       help="against a running stack: its daemon's --speed (default 1); "
                            "self-contained: overrides the drill file's speed")
    drill.add_argument("--rules", metavar="DIR",
                       help="self-contained: the rule files to drill (*.yml; default: the "
                            "shipped configs/prometheus/rules)")
    drill.add_argument("--webhook-port", type=int, default=0, metavar="PORT",
                       help="port of the built-in webhook receiver (default: any free port)")
    drill.add_argument("--output", choices=("table", "json"), default="table")
    drill.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")

    webhook = sub.add_parser(
        "webhook", help="receive Alertmanager webhook notifications, log them and list them",
        description="An Alertmanager webhook receiver: logs one line per notification "
                    "(notification_received), lists the recent ones as JSON at GET /, and "
                    "answers GET /healthz. The demo stack runs it as trainsim-webhook.")
    webhook.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                         default=DEFAULT_WEBHOOK_ADDRESS,
                         help=f"address to serve on; port 0 picks a free port "
                              f"(default {DEFAULT_WEBHOOK_ADDRESS})")
    webhook.add_argument("--log.format", dest="log_format", choices=("auto", "console", "json"),
                         default="auto", help="console on a TTY and JSON otherwise by default")

    for action, text in (("pause", "stop a run from stepping (its series stay)"),
                         ("resume", "let a paused run step again"),
                         ("restart", "restart a run from step 0")):
        p = sub.add_parser(action, parents=[common], help=text)
        p.add_argument("run", metavar="RUN")
    return parser


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value!r}")
    return n


def _param(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got {value!r}")
    number: Any
    try:
        number = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            number = raw  # the daemon names the parameter in its error
    return name, number


def _load(path: str | None, shard: Shard | None = None) -> Config:
    return shard_config(load_file(path) if path else load_default(), shard)


def _validate(files: Sequence[str], shard: Shard | None = None) -> int:
    status = 0
    for path in files:
        try:
            cfg = load_file(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
            continue
        if shard is None:
            print(f"{path}: ok ({len(cfg.runs)} runs)")
            continue
        held = shard_config(cfg, shard).runs
        print(f"{path}: ok ({len(cfg.runs)} runs; shard {shard} holds {len(held)})")
        for spec in held:
            print(spec.name)
    return status


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    log = structlog.get_logger("trainsim")
    try:
        config = _load(args.config_file, args.shard)
        parse_listen_address(args.listen_address)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"trainsim: --web.listen-address: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = _control_settings(args)
    except UsageError as exc:
        print(f"trainsim: {exc}", file=sys.stderr)
        return EXIT_USAGE

    daemon = Daemon(config, speed=args.speed, log=log)
    try:
        control = api.ControlApi(daemon, settings)
        server = start_server(args.listen_address, daemon, control.routes())
    except OSError as exc:
        print(f"trainsim: cannot listen on {args.listen_address}: {exc.strerror}",
              file=sys.stderr)
        return 1

    stop = threading.Event()
    reload_requested = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload_requested.set()
        wake.set()

    # Handlers first: whoever waits for "listening" may signal right away.
    with _signals({signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}):
        log.info("listening", address=server.address, version=__version__,
                 config=config.source, runs=len(config.runs), speed=args.speed,
                 shard=str(args.shard) if args.shard else None,
                 control_api="enabled" if settings.enabled else "disabled",
                 control_auth="bearer_token" if settings.token is not None else "none")
        try:
            while not stop.is_set():
                if reload_requested.is_set():
                    reload_requested.clear()
                    try:
                        daemon.apply(_load(args.config_file, args.shard))
                    except ConfigError as exc:
                        daemon.reject(args.config_file or "<embedded>",
                                      [str(i) for i in exc.issues])
                    _reload_token(args, control, log)
                daemon.tick()
                wake.wait(daemon.seconds_until_next_step())
                wake.clear()
        finally:
            server.close()
    log.info("stopped")
    return 0


def _control_settings(args: argparse.Namespace) -> api.ControlSettings:
    """The control API's settings from the flags; UsageError for an unsafe or broken setup."""
    token = None
    if args.control_token_file is not None:
        token = _read_token(args.control_token_file, "--web.control-token-file").encode()
    host, _ = parse_listen_address(args.listen_address)
    if args.control_api and token is None and not is_loopback(host):
        raise UsageError(
            f"refusing to listen on {args.listen_address} with the control API enabled and no "
            "token: pass --web.control-token-file FILE, --no-web.enable-control-api, or a "
            "loopback address")
    return api.ControlSettings(enabled=args.control_api, token=token)


def _reload_token(args: argparse.Namespace, control: api.ControlApi, log: Any) -> None:
    """Re-read --web.control-token-file (on SIGHUP); an unusable file keeps the old token."""
    if args.control_token_file is None:
        return
    try:
        token = _read_token(args.control_token_file, "--web.control-token-file").encode()
    except UsageError as exc:
        log.error("control_token_rejected", error=str(exc))
        return
    if token != control.settings.token:
        control.settings = dataclasses.replace(control.settings, token=token)
        log.info("control_token_reloaded", file=args.control_token_file)


def _read_token(path: str, flag: str) -> str:
    """The token in ``path``, surrounding whitespace stripped; UsageError if unusable."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    token = raw.strip()
    if not token:
        raise UsageError(f"{flag}: {path} is empty")
    # It travels in an Authorization header: printable ASCII, no spaces.
    if not all(0x21 <= b <= 0x7E for b in token):
        raise UsageError(f"{flag}: the token in {path} must be printable ASCII without spaces")
    return token.decode()


def _client(args: argparse.Namespace) -> client.Client:
    try:
        url = client.check_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.token_file is not None:
        token: str | None = _read_token(args.token_file, "--token-file")
    else:
        token = os.environ.get(client.TOKEN_ENV, "").strip() or None
    return client.Client(url, token)


def _control(args: argparse.Namespace) -> int:
    try:
        c = _client(args)
    except UsageError as exc:
        print(f"trainsim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "runs":
            runs = c.runs()
            print(json.dumps(runs, indent=2) if args.output == "json"
                  else client.format_runs(runs))
        elif args.command == "fault" and args.fault_command == "inject":
            fault = c.inject(args.run, args.kind, args.duration, args.steps, dict(args.params))
            print(fault["id"])
        elif args.command == "fault":
            fault = c.clear(args.run, args.fault_id)
            print(f"cleared fault {fault['id']} ({fault['kind']}) on {args.run}")
        else:
            view = c.action(args.run, args.command)
            print(f"{args.command}: {view['run']} is {view['state']}"
                  + (" (paused)" if view.get("paused") else ""))
    except client.ClientError as exc:
        print(f"trainsim: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


EXIT_DRILL_ERROR = 3


def _drill(args: argparse.Namespace) -> int:
    import dataclasses

    from simulator import drill as drills

    try:
        spec = drills.load_drill(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    external = args.daemon is not None or args.prometheus is not None
    endpoints = None
    if external:
        if args.daemon is None or args.prometheus is None:
            print("trainsim: drill: --daemon and --prometheus go together", file=sys.stderr)
            return EXIT_USAGE
        try:
            token = (_read_token(args.token_file, "--token-file") if args.token_file
                     else os.environ.get(client.TOKEN_ENV, "").strip() or None)
            for url in (args.daemon, args.prometheus, args.alertmanager):
                if url is not None:
                    client.check_url(url)
        except (UsageError, ValueError) as exc:
            print(f"trainsim: drill: {exc}", file=sys.stderr)
            return EXIT_USAGE
        endpoints = drills.Endpoints(args.daemon, args.prometheus, args.alertmanager, token)
        spec = dataclasses.replace(spec, speed=args.speed or 1.0)
    elif args.speed is not None:
        spec = dataclasses.replace(spec, speed=args.speed)
    rules = Path(args.rules) if args.rules else None
    if rules is not None and not sorted(rules.glob("*.yml")):
        print(f"trainsim: drill: --rules: no *.yml files in {rules}", file=sys.stderr)
        return EXIT_USAGE
    card = drills.run_drill(spec, endpoints, progress=sys.stderr,
                            webhook_port=args.webhook_port, rules_dir=rules)
    print(drills.render_json(card) if args.output == "json" else drills.render_table(card),
          end="")
    if args.junit:
        Path(args.junit).write_text(drills.render_junit(card))
    if card.error is not None:
        print(f"trainsim: drill could not run: {card.error}", file=sys.stderr)
        return EXIT_DRILL_ERROR
    return 0 if card.passed else EXIT_FAILED


def _webhook(args: argparse.Namespace) -> int:
    logs.configure(args.log_format)
    log = structlog.get_logger("trainsim")
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        print(f"trainsim: --web.listen-address: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def logged(notification: webhook.Notification) -> None:
        log.info("notification_received", **notification.summary())

    try:
        receiver = webhook.WebhookReceiver(host, port, on_notification=logged)
    except OSError as exc:
        print(f"trainsim: cannot listen on {args.listen_address}: {exc.strerror}",
              file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with _signals({signal.SIGTERM: on_stop, signal.SIGINT: on_stop}):
        log.info("listening", address=receiver.address, version=__version__)
        try:
            stop.wait()
        finally:
            receiver.close()
    log.info("stopped")
    return 0


@contextmanager
def _signals(handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]],
             ) -> Iterator[None]:
    """Install signal handlers for the duration of the block, then restore the previous ones."""
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainsim`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.files, args.shard)
    if args.command == "run":
        return _run(args)
    if args.command == "drill":
        return _drill(args)
    if args.command == "webhook":
        return _webhook(args)
    return _control(args)
