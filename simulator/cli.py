"""The ``trainsim`` command: its arguments, and which stage each subcommand runs.

``run`` (the daemon, ``simulator.daemon.serve``), ``validate`` (config and drill files), the
control API client commands ``runs``, ``fault inject|clear`` and ``pause|resume|restart``
(``simulator.web.client``), ``drill`` (``simulator.drills.runner``), ``webhook`` (an
Alertmanager webhook receiver, ``simulator.web.webhook``), ``init`` (the shipped stack into
a directory, ``simulator.scaffold``) and ``backfill`` (a past window's series for promtool,
``simulator.backfill``).

A user's mistake (bad config, bad flag, bad URL) gets one clear line per problem, each
starting ``trainsim: `` (a config file's lines start with the file's name), and exit status 2,
never a traceback. A client command exits 1, with one line, when the daemon refuses it, cannot
be reached or answers something that is not the control API; ``drill`` exits 3 when the drill
could not run; ``backfill`` exits 1 when promtool is missing or fails. Output cut short by its
reader (``trainsim runs | head``) ends the command quietly with status 141, as a tool killed
by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog

from simulator import __version__, backfill, logs, scaffold
from simulator.config import ConfigError, build_config
from simulator.config.run import RunSpec
from simulator.config.shards import Shard, parse_shard, shard_config
from simulator.daemon import serve
from simulator.drills import runner
from simulator.drills.file import build_drill, is_drill
from simulator.durations import parse_prometheus
from simulator.faults.catalogue import FAULT_KINDS
from simulator.replay import Recording, Replay
from simulator.schema.errors import UsageError
from simulator.schema.loader import read_yaml_file
from simulator.web import client, webhook
from simulator.web.auth import control_settings
from simulator.web.server import parse_listen_address

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9310"
T = TypeVar("T")
DEFAULT_WEBHOOK_ADDRESS = "127.0.0.1:9095"
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool killed by SIGPIPE


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, ``trainsim: --flag: message``, and exit
    status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"trainsim: {message.removeprefix('argument ')}\n")


def _path(value: str) -> str:
    """A file or directory argument; an empty one (an unset variable, say) is a mistake, never
    a way to get the default."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path")
    return value


def _speed(value: str) -> float:
    try:
        if not value.isascii():  # float() reads other scripts' digits too
            raise ValueError(value)
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
    if not 0 < x <= 1e6:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 1e6, got {value!r}")
    return x


MAX_ELAPSED = "1d"


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a parser whose ValueError says what is wrong with the value."""
    def convert(value: str) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _elapsed(value: str) -> float:
    """Seconds of ``--start.elapsed``: a duration of at most ``MAX_ELAPSED``."""
    try:
        ms = parse_prometheus(value)
    except ValueError:
        raise ValueError(f"must be a duration like 10m or 6h, got {value!r}") from None
    if ms > parse_prometheus(MAX_ELAPSED):
        raise ValueError(f"must be at most {MAX_ELAPSED}, got {value!r}")
    return ms / 1000


def _shard(value: str) -> Shard:
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _loopback_port(value: str) -> str:
    if not (value.isascii() and value.isdigit()) or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, "
                                         f"got {value!r}")
    return f"127.0.0.1:{int(value)}"


def _positive_int(value: str) -> int:
    try:
        if not value.isascii():
            raise ValueError(value)
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


_SHARD_HELP = ("simulate only shard INDEX of COUNT: the runs whose stable name hash is INDEX "
               "mod COUNT (COUNT daemons with INDEX 0..COUNT-1 split the runs without overlap)")


_TOKEN_HELP = ("file holding the control API's bearer token (default: the "
               f"{client.TOKEN_ENV} environment variable, if set)")
_OUTPUT_HELP = "a table for people (default) or JSON for programs"


def _token_file(parser: Any, help: str = _TOKEN_HELP) -> None:
    """The control token's file, under its one name (``--token-file``, its former name on the
    client commands and the drill, stays as a hidden alias)."""
    parser.add_argument("--web.control-token-file", dest="token_file", type=_path,
                        metavar="FILE", help=help)
    parser.add_argument("--token-file", dest="token_file", type=_path, help=argparse.SUPPRESS)


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run the daemon",
        description="Replay the configured runs as training jobs and serve their metrics at "
                    "/metrics, the live page at /, and the control API at /api/v1 (default: "
                    "the embedded seed config, on 127.0.0.1:9310). SIGHUP reloads the config "
                    "and the token file; SIGTERM or Ctrl-C stops.")
    run.add_argument("--config.file", dest="config_file", type=_path, metavar="FILE",
                     help="YAML config (default: the embedded configs/default.yaml)")
    run.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                     default=DEFAULT_LISTEN_ADDRESS,
                     help=f"address to serve on; port 0 picks a free port "
                          f"(default {DEFAULT_LISTEN_ADDRESS})")
    run.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                     help="simulated time runs X times faster than the wall clock (default 1)")
    run.add_argument("--start.elapsed", dest="elapsed", type=_argument(_elapsed), default=0.0,
                     metavar="DURATION",
                     help="start as if the daemon had been running for DURATION already (at "
                          "most " + MAX_ELAPSED + "): the runs are where they would be by now, "
                          "and the live page's history holds the steps they took; `trainsim "
                          "backfill --duration` the same writes those steps' series (default 0s)")
    run.add_argument("--log.format", dest="log_format", choices=("auto", "console", "json"),
                     default="auto", help="console on a TTY and JSON otherwise by default")
    run.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info",
                     help="the least severe events logged (default info)")
    run.add_argument("--web.enable-control-api", dest="control_api",
                     action=argparse.BooleanOptionalAction, default=True,
                     help="allow the control API's changes (fault injection, pause, resume, "
                          "restart); reads stay available either way (default: enabled)")
    _token_file(run, "file holding the bearer token the control API's changes require; "
                     "mandatory when listening beyond loopback with the API enabled")
    run.add_argument("--shard", type=_shard, metavar="INDEX/COUNT", help=_SHARD_HELP)


def _add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=client.DEFAULT_URL,
                        help=f"the daemon's address (default {client.DEFAULT_URL})")
    _token_file(common)
    runs = sub.add_parser("runs", parents=[common], help="list the runs of a running daemon",
                          description="Every run of a running daemon with its state, step, "
                                      "loss, alerts and active faults.")
    runs.add_argument("--output", choices=("table", "json"), default="table", help=_OUTPUT_HELP)
    fault = sub.add_parser("fault", help="inject or clear faults on a running daemon",
                           description="Inject a fault into a run of a running daemon now, or "
                                       "end one (docs/faults.md lists the kinds).")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True, metavar="COMMAND",
                                     help="inject or clear")
    inject = fault_sub.add_parser("inject", parents=[common], help="inject a fault now; "
                                  "prints its id", description="Inject a fault now; prints "
                                  "its id, which `trainsim fault clear` takes.")
    inject.add_argument("run", metavar="RUN", help="the run's name")
    inject.add_argument("kind", metavar="KIND", help=", ".join(FAULT_KINDS))
    length = inject.add_mutually_exclusive_group()
    length.add_argument("--duration", dest="duration", metavar="DURATION",
                        help="how long, e.g. 60s or 2m (default: until cleared; drift and "
                             "crash have their own defaults)")
    length.add_argument("--for", dest="duration", help=argparse.SUPPRESS)
    length.add_argument("--steps", type=_positive_int, metavar="N",
                        help="how long, in steps of the run")
    inject.add_argument("--param", dest="params", action="append", type=_param, default=[],
                        metavar="NAME=VALUE", help="a parameter of the kind, e.g. factor=20 "
                        "(repeatable)")
    clear = fault_sub.add_parser("clear", parents=[common], help="end a fault now",
                                 description="End an active fault now (a scheduled one that "
                                             "has not begun is dropped).")
    clear.add_argument("run", metavar="RUN", help="the run's name")
    clear.add_argument("fault_id", metavar="ID", help="the fault's id, as inject printed it")
    for action, text in (("pause", "stop a run from stepping (its series stay)"),
                         ("resume", "let a paused run step again"),
                         ("restart", "restart a run from step 0, as a rescheduled job")):
        p = sub.add_parser(action, parents=[common], help=text, description=text.capitalize())
        p.add_argument("run", metavar="RUN", help="the run's name")


def _add_drill(sub: Any) -> None:
    drill = sub.add_parser(
        "drill", help="inject faults on a timeline and score the alerting",
        description="Without --daemon/--prometheus, start a daemon, Prometheus and "
                    "Alertmanager on loopback (the shipped rules in the fast profile) and clean "
                    "them up; with them, drill a running stack. Exit 0 if every expectation "
                    "holds, 1 if one fails, 2 for a bad option or drill file, 3 if the drill could "
                    "not run.")
    drill.add_argument("files", type=_path, nargs="+", metavar="DRILL.yaml",
                       help="the drill file (configs/drills/); --offline and --emit take "
                            "several")
    drill.add_argument("--offline", action="store_true",
                       help="judge with promtool test rules at the real intervals, starting "
                            "nothing (docs/drills.md)")
    drill.add_argument("--emit", type=_path, metavar="DIR",
                       help="write each drill as a promtool test file into DIR instead")
    drill.add_argument("--scrape-interval", dest="scrape_interval", metavar="DURATION",
                       type=_argument(backfill.parse_duration),
                       help="offline: the scrape interval to sample at (default: the drill "
                            "file's scrape_interval, else the shipped 15s)")
    drill.add_argument("--evaluation-interval", dest="evaluation_interval", metavar="DURATION",
                       type=_argument(backfill.parse_duration),
                       help="offline: the rules' evaluation interval (default: the drill "
                            "file's evaluation_interval, else the shipped 15s)")
    drill.add_argument("--daemon", metavar="URL", help="a running daemon's control API")
    drill.add_argument("--prometheus", metavar="URL", help="the Prometheus that scrapes it")
    drill.add_argument("--alertmanager", metavar="URL", help="its Alertmanager (optional)")
    _token_file(drill, "against a running stack: the daemon's control token file (default: "
                       f"the {client.TOKEN_ENV} environment variable, if set)")
    drill.add_argument("--speed", type=_speed, metavar="X",
                       help="against a running stack: its daemon's --speed (default 1); "
                            "self-contained: overrides the drill file's speed")
    drill.add_argument("--rules", type=_path, metavar="DIR",
                       help="self-contained: the rule files to drill (*.yml; default: the "
                            "shipped configs/prometheus/rules)")
    drill.add_argument("--alertmanager.config", dest="alertmanager_config", type=_path,
                       metavar="FILE",
                       help="self-contained: the Alertmanager config to drill (default: the "
                            "shipped configs/alertmanager/alertmanager.yml)")
    drill.add_argument("--webhook.listen-address", dest="webhook_address", metavar="HOST:PORT",
                       default="127.0.0.1:0",
                       help="address of the drill's own webhook receiver, which hears "
                            "Alertmanager's notifications (default: a free port on 127.0.0.1)")
    drill.add_argument("--webhook-port", dest="webhook_address", type=_loopback_port,
                       help=argparse.SUPPRESS)
    drill.add_argument("--output", choices=("table", "json"), default="table", help=_OUTPUT_HELP)
    drill.add_argument("--junit", type=_path, metavar="FILE",
                       help="also write a JUnit XML report")


def _add_webhook(sub: Any) -> None:
    hook = sub.add_parser(
        "webhook", help="receive Alertmanager webhook notifications, log them and list them",
        description="An Alertmanager webhook receiver: logs one line per notification "
                    "(notification_received), lists the recent ones as JSON at GET /, and "
                    "answers GET /healthz. The demo stack runs it as trainsim-webhook.")
    hook.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                      default=DEFAULT_WEBHOOK_ADDRESS,
                      help=f"address to serve on; port 0 picks a free port "
                           f"(default {DEFAULT_WEBHOOK_ADDRESS})")
    hook.add_argument("--log.format", dest="log_format", choices=("auto", "console", "json"),
                      default="auto", help="console on a TTY and JSON otherwise by default")
    hook.add_argument("--log.level", dest="log_level", choices=logs.LEVELS, default="info",
                      help="the least severe events logged (default info)")


def _add_init(sub: Any) -> None:
    init = sub.add_parser(
        "init", help="write the shipped configs, rules, drills, dashboards and compose stack "
                     "into a directory",
        description="Write everything trainsim ships (run configs, scenarios, drills, "
                    "Prometheus and Alertmanager configs and rules, Grafana dashboards, "
                    "runbooks, and a docker-compose stack whose image is built from a copy of "
                    "this installation) into DIR, to edit and run without the repository.")
    init.add_argument("dir", nargs="?", default=".", type=_path, metavar="DIR",
                      help="where to write (created if missing; default: the current directory)")
    init.add_argument("--runbook-base-url", metavar="URL",
                      help="where the alerts' runbook_url links point: URL#<alert> for each "
                           "rule, URL being where you host docs/runbooks.md (default: "
                           f"{scaffold.DEFAULT_RUNBOOK_BASE_URL})")
    init.add_argument("--force", action="store_true",
                      help="overwrite files that exist (only the files init writes)")


def _add_backfill(sub: Any) -> None:
    fill = sub.add_parser(
        "backfill", help="write the series a daemon would have exported over a past window, "
                         "as OpenMetrics for promtool",
        description="Replay the config on a daemon started --duration before --end, sample it "
                    "every --interval as Prometheus scrapes it (with job, instance, up and the "
                    "shipped scrape config's relabelling), and write the series as OpenMetrics "
                    "for `promtool tsdb create-blocks-from openmetrics`; with --tsdb, run "
                    "promtool too. Exit 0 when done, 1 if promtool is missing or fails, 2 for a "
                    "bad option or config (docs/backfill.md).")
    fill.add_argument("--config.file", dest="config_file", type=_path, metavar="FILE",
                      help="YAML config (default: the embedded configs/default.yaml)")
    fill.add_argument("--shard", type=_shard, metavar="INDEX/COUNT",
                      help="backfill only this shard's runs, as `trainsim run --shard` runs them")
    fill.add_argument("--duration", type=_argument(backfill.parse_duration), required=True,
                      metavar="DURATION",
                      help="how far the window reaches back from --end, e.g. 6h (a whole "
                           "multiple of --interval)")
    fill.add_argument("--end", type=_argument(backfill.parse_end), default=None,
                      metavar="now|RFC3339",
                      help="the window's last instant: now, rounded down to a whole multiple of "
                           "--interval (the default), or a time like 2026-12-02T06:00:00Z")
    fill.add_argument("--interval", type=_argument(backfill.parse_duration), metavar="DURATION",
                      help="time between samples (default: the scrape_interval of the shipped "
                           "configs/prometheus/prometheus.yml)")
    fill.add_argument("--output", type=_path, metavar="FILE",
                      help="the OpenMetrics file to write (required unless --tsdb is given; "
                           "then a temporary file by default)")
    fill.add_argument("--tsdb", type=_path, metavar="DIR",
                      help="also create TSDB blocks from the file in DIR (a Prometheus "
                           "--storage.tsdb.path) with promtool, which must be on PATH")
    fill.add_argument("--job", metavar="NAME",
                      help=f"the job label on every series (default {backfill.DEFAULT_JOB})")
    fill.add_argument("--instance", metavar="HOST:PORT",
                      help="the instance label on every series (default: the shipped scrape "
                           "config's target)")
    fill.add_argument("--label", dest="labels", action="append",
                      type=_argument(backfill.parse_label), default=[], metavar="NAME=VALUE",
                      help="another target label on every series (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(
        prog="trainsim",
        description="Replays gradient-descent runs as mock ML training jobs with Prometheus "
                    "metrics.")
    parser.add_argument("--version", action="version", version=f"trainsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (trainsim COMMAND --help for its options)")
    _add_run(sub)
    validate = sub.add_parser(
        "validate", help="check config and drill files without starting anything",
        description="Check run configs and drill files (a drill file is recognised by its "
                    "`drill` or `expect` key); every mistake is one line FILE:LINE: path: "
                    "message. Exit 0 if all are valid, 2 if any is not.")
    validate.add_argument("files", nargs="+", type=_path, metavar="FILE",
                          help="config or drill files (YAML)")
    validate.add_argument("--shard", type=_shard, metavar="INDEX/COUNT",
                          help="also print the runs this shard would hold, one per line")
    _add_client_commands(sub)
    _add_drill(sub)
    _add_webhook(sub)
    _add_init(sub)
    _add_backfill(sub)
    return parser


# --------------------------------------------------------------------------- dispatch


def _listen(address: str, flag: str = "--web.listen-address") -> str:
    try:
        parse_listen_address(address)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    return address


def _cannot_listen(address: str, exc: OSError) -> int:
    print(f"trainsim: cannot listen on {address}: {exc.strerror} (choose another address "
          f"with --web.listen-address)", file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    options = serve.Options(
        config_file=args.config_file, shard=args.shard,
        listen_address=_listen(args.listen_address), speed=args.speed,
        control=control_settings(args.control_api, args.token_file, args.listen_address),
        token_file=args.token_file, elapsed=args.elapsed)
    try:
        serve.run(options, structlog.get_logger("trainsim"))
    except serve.CannotListenError as exc:
        return _cannot_listen(args.listen_address, exc.cause)
    return 0


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            print("\n".join(_checked(path, args.shard)))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            status = EXIT_USAGE
    return status


def _checked(path: str, shard: Shard | None) -> list[str]:
    """What ``validate`` says of a valid config or drill file (ConfigError otherwise)."""
    doc = read_yaml_file(path)
    if is_drill(doc):
        d = build_drill(doc, Path(path))
        incidents = sum(i.recorded for i in d.injections)
        timeline = [_count(len(d.injections) - incidents, "injection")]
        if incidents:
            timeline.append(_count(incidents, "incident"))
        return [f"{path}: ok (drill {d.name}: {', '.join(timeline)}, "
                f"{_count(len(d.expectations), 'expectation')})"]
    cfg = build_config(doc, str(Path(path)))
    if shard is None:
        return [f"{path}: ok ({len(cfg.runs)} runs)", *_recordings(cfg.runs)]
    held = shard_config(cfg, shard).runs
    return [f"{path}: ok ({len(cfg.runs)} runs; shard {shard} holds {len(held)})",
            *(spec.name for spec in held)]


def _recordings(runs: Sequence[RunSpec]) -> list[str]:
    """One line per recording the runs replay: what was read from it, and by which runs."""
    by_recording: dict[Recording, list[RunSpec]] = {}
    for spec in runs:
        if isinstance(spec.landscape, Replay) and spec.landscape.recording is not None:
            by_recording.setdefault(spec.landscape.recording, []).append(spec)
    out = []
    for rec, specs in by_recording.items():
        read = ", ".join(f"{metric} <- {name!r}" for metric, name in rec.columns)
        timed = any(isinstance(s.landscape, Replay) and s.landscape.timed for s in specs)
        paced = "its own times" if timed else "step_interval"
        out.append(f"  {rec.source}: {_count(len(rec), 'row')} (recorded steps "
                   f"{int(rec.steps[0])} to {int(rec.steps[-1])}); {read}; paced by {paced}; "
                   f"replayed by {', '.join(s.name for s in specs[:5])}"
                   + (f" and {len(specs) - 5} more" if len(specs) > 5 else ""))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _control(args: argparse.Namespace) -> int:
    try:
        c = client.Client(client.check_url(args.url), client.token(args.token_file))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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


def _drill(args: argparse.Namespace) -> int:
    return runner.main(runner.Options(
        files=tuple(args.files), daemon=args.daemon, prometheus=args.prometheus,
        alertmanager=args.alertmanager, token_file=args.token_file, speed=args.speed,
        rules=args.rules, alertmanager_config=args.alertmanager_config,
        webhook_address=_listen(args.webhook_address, "--webhook.listen-address"),
        output=args.output, junit=args.junit, offline=args.offline, emit=args.emit,
        scrape_interval_ms=args.scrape_interval,
        evaluation_interval_ms=args.evaluation_interval))


def _webhook(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        webhook.serve(_listen(args.listen_address), structlog.get_logger("trainsim"))
    except OSError as exc:
        return _cannot_listen(args.listen_address, exc)
    return 0


def _init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    written = scaffold.init(target, args.runbook_base_url, args.force)
    top = sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in written.files})
    print(f"wrote {len(written.files)} files into {target}: {', '.join(top)}")
    print(f"next: cd {target} && GRAFANA_ADMIN_PASSWORD=change-me docker compose up --build "
          "(or: trainsim run --config.file configs/default.yaml)")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    options = backfill.Options(
        config_file=args.config_file, duration_ms=args.duration, output=args.output,
        tsdb=args.tsdb, end_ms=args.end, interval_ms=args.interval, shard=args.shard,
        job=args.job, instance=args.instance, labels=tuple(args.labels))
    try:
        result = backfill.run(options, time.time())
    except backfill.PromtoolError as exc:
        print(f"trainsim: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(backfill.summary(result)))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run, "validate": _validate, "drill": _drill, "webhook": _webhook, "init": _init,
    "backfill": _backfill}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainsim`` command; returns the exit status: 0 done, 1 failed or
    refused, 2 a usage mistake (argparse exits with it itself), 3 a drill that could not run,
    141 when whoever reads stdout stops reading before the output ends (``| head``)."""
    args = build_parser().parse_args(argv)
    try:
        status = _COMMANDS.get(args.command, _control)(args)
        sys.stdout.flush()  # a reader gone away shows here rather than at the interpreter's exit
        return status
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except ConfigError as exc:
        print(exc, file=sys.stderr)
    except UsageError as exc:
        print(f"trainsim: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _discard_stdout() -> None:
    """Point stdout at the null device, so that flushing what is left of it at exit succeeds
    silently."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout
        pass
