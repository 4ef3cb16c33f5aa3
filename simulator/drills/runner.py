"""Running a drill: start (or reach) the stack, inject on the timeline, watch the alerting.

``run_drill`` is the shell around the pure parts (``simulator.drills.file``,
``simulator.drills.scoring``): self-contained, it starts Alertmanager, Prometheus (the rules
in the fast profile) and a daemon on loopback from the shipped configs; against a running
stack it talks to the URLs it is given. Either way it injects each fault through the control
API at its run time, polls Prometheus' alerts, hears Alertmanager's notifications on its own
webhook receiver, and scores.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from simulator import resources
from simulator.drills import offline, stack
from simulator.drills.file import Drill, load_drill
from simulator.drills.profile import (
    fast_alertmanager_config,
    fast_profile,
    fast_prometheus_config,
)
from simulator.drills.report import render_json, render_junit, render_junit_all, render_table
from simulator.drills.scoring import Observations, Scorecard, evaluate, progress_line
from simulator.schema.errors import UsageError
from simulator.web import client
from simulator.web.client import Client, ClientError
from simulator.web.webhook import Notification, WebhookReceiver

POLL_SECONDS = 0.25


def _rule_files(rules_dir: Path | None) -> list[tuple[str, str]]:
    """(name, text) of each rule file to drill: ``rules_dir``'s, or the shipped ones."""
    if rules_dir is not None:
        return [(f.name, f.read_text()) for f in sorted(rules_dir.glob("*.yml"))]
    shipped = resources.shipped("prometheus", "rules")
    return [(f.name, f.read_text(encoding="utf-8"))
            for f in sorted(shipped.iterdir(), key=lambda f: f.name) if f.name.endswith(".yml")]


class DrillError(Exception):
    """The drill could not run (a server unreachable or failing to start): not a verdict."""


@dataclass
class Endpoints:
    """The servers a drill talks to."""

    daemon: str
    prometheus: str
    alertmanager: str | None
    token: str | None = None
    # Self-contained: what the servers said, for the error message when one dies.
    diagnose: Callable[[], str] | None = field(default=None, repr=False)


def _strip_faults(config: Path, target: Path) -> None:
    """Write ``config`` without its scheduled faults (the drill injects them), its recordings
    named where they are (``target`` is elsewhere)."""
    doc = yaml.safe_load(config.read_text())
    fleet = doc.get("fleet")
    template = fleet.get("template") if isinstance(fleet, dict) else None
    for run in [*doc.get("runs", []), doc.get("defaults"), template]:
        if not isinstance(run, dict):
            continue
        run.pop("faults", None)
        replay = run.get("replay")
        if isinstance(replay, dict) and isinstance(replay.get("file"), str):
            replay["file"] = str((config.parent / replay["file"]).resolve())
    target.write_text(yaml.safe_dump(doc, sort_keys=False))


@contextmanager
def local_stack(drill: Drill, workdir: Path, webhook_url: str, rules_dir: Path | None = None,
                alertmanager_config: str | None = None) -> Iterator[tuple[Endpoints, float]]:
    """Start Alertmanager, Prometheus (fast profile of the rules) and, last, the daemon on
    loopback; yields the endpoints and the monotonic time at which the runs started.

    Every scraped series carries drill="true" (a target label), so every alert does too.
    """
    with ExitStack() as stack_:
        config = workdir / "runs.yaml"
        _strip_faults(drill.config, config)
        am_port, daemon_port = stack.free_port(), stack.free_port()
        am_text = fast_alertmanager_config(
            alertmanager_config or resources.read_text("alertmanager", "alertmanager.yml"),
            drill.speed, webhook_url=webhook_url)
        prom_doc = yaml.safe_load(fast_prometheus_config(
            resources.read_text("prometheus", "prometheus.yml"),
            target=f"127.0.0.1:{daemon_port}", alertmanager=f"127.0.0.1:{am_port}"))
        for job in prom_doc["scrape_configs"]:
            if job.get("job_name") == "trainsim":
                for static in job.get("static_configs", []):
                    static.setdefault("labels", {})["drill"] = "true"
        rules_out = workdir / "rules"
        rules_out.mkdir(parents=True, exist_ok=True)
        for name, text in _rule_files(rules_dir):
            (rules_out / name).write_text(fast_profile(text, drill.speed))
        try:
            am = stack.start_alertmanager(workdir / "alertmanager", am_text, port=am_port)
            stack_.callback(am.close)
            prom = stack.start_prometheus(workdir / "prometheus", yaml.safe_dump(prom_doc),
                                          rule_files=sorted(rules_out.glob("*.yml")))
            stack_.callback(prom.close)
            daemon = stack.start_daemon(
                workdir, config=config, speed=drill.speed,
                extra_args=("--web.listen-address", f"127.0.0.1:{daemon_port}"))
            stack_.callback(daemon.close)
        except (stack.StartupError, stack.MissingBinaryError) as exc:
            raise DrillError(str(exc)) from None
        def diagnose() -> str:
            return "; ".join(
                f"{name} exited with status {proc.proc.returncode}: "
                f"{stack.last_words(proc.output())}"
                for name, proc in (("daemon", daemon), ("prometheus", prom),
                                   ("alertmanager", am))
                if proc.proc.poll() is not None)

        yield (Endpoints(daemon.url, prom.url, am.url, diagnose=diagnose),
               _runs_started(daemon))


def _runs_started(daemon: stack.DaemonProcess) -> float:
    """The monotonic time of the daemon's run time 0, from its first log event's timestamp."""
    from datetime import datetime

    first = next(e for e in daemon.events() if e.get("event") == "run_started")
    started = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    return time.monotonic() - max(0.0, time.time() - started.timestamp())


def _prometheus_alerts(url: str) -> list[dict[str, Any]]:
    shown = client.redact(url)
    try:
        target, auth = client.with_credentials(f"{url.rstrip('/')}/api/v1/alerts")
        status, body = stack.http_get(target, timeout=5, headers=auth)
    except client.TRANSPORT_ERRORS as exc:
        raise DrillError(f"Prometheus at {shown} is unreachable: {client.reason(exc)}") from None
    if status != 200:
        raise DrillError(f"Prometheus at {shown} answered {status} to /api/v1/alerts")
    try:
        alerts = json.loads(body)["data"]["alerts"]
    except (ValueError, KeyError, TypeError, RecursionError):
        alerts = None
    if not isinstance(alerts, list) or not all(isinstance(a, dict) for a in alerts):
        raise DrillError(f"{shown} did not answer like Prometheus' /api/v1/alerts")
    return alerts


def watch(drill: Drill, endpoints: Endpoints, obs: Observations, start: float,
          progress: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
          ) -> Scorecard:
    """Inject on the timeline and poll until every expectation is decided (or time is up)."""
    api = Client(endpoints.daemon, endpoints.token)
    speed = drill.speed
    horizon = start + drill.horizon / speed + 5.0
    pending = list(enumerate(drill.injections))
    tty = progress is not None and progress.isatty()
    last_line = ""
    while True:
        now = clock() - start
        while pending and drill.injections[pending[0][0]].at / speed <= now:
            i, inj = pending.pop(0)
            if inj.recorded:  # the recording holds it: nothing to send
                obs.injected[i] = clock() - start
                continue
            try:
                api.inject(inj.run, inj.kind, duration=inj.api_duration,
                           params=dict(inj.params))
            except ClientError as exc:
                detail = endpoints.diagnose() if endpoints.diagnose else ""
                raise DrillError(f"injecting {inj.kind} into {inj.run}: {exc}"
                                 + (f" ({detail})" if detail else "")) from None
            obs.injected[i] = clock() - start
        try:
            obs.see_active(_prometheus_alerts(endpoints.prometheus), clock() - start)
        except DrillError as exc:
            detail = endpoints.diagnose() if endpoints.diagnose else ""
            raise DrillError(f"{exc} ({detail})" if detail else str(exc)) from None
        card = evaluate(drill, obs, clock() - start)
        if progress is not None:
            line = progress_line(card, clock() - start)
            if tty:  # a live line on a terminal; a line per change of phase in a log
                progress.write(f"\r\033[K{line}")
                progress.flush()
            elif _phases(line) != _phases(last_line):
                progress.write(f"{line}\n")
            last_line = line
        if (card.decided and not pending) or clock() > horizon:
            break
        time.sleep(POLL_SECONDS)
    if tty:
        progress.write("\n")  # type: ignore[union-attr]
    return evaluate(drill, obs, clock() - start, final=True)


def _phases(line: str) -> str:
    """A progress line without its clocks, to log only when a phase changes."""
    return re.sub(r"t=\d+s|\d+s left", "", line)


def run_drill(drill: Drill, endpoints: Endpoints | None = None,
              progress: TextIO | None = sys.stderr, webhook_address: str = "127.0.0.1:0",
              rules_dir: Path | None = None, alertmanager_config: str | None = None,
              ) -> Scorecard:
    """Run a drill: self-contained when ``endpoints`` is None, else against a running stack."""
    obs = Observations()
    lock = threading.Lock()
    t0 = [time.monotonic()]

    def received(notification: Notification) -> None:
        with lock:
            obs.see_notification(notification.payload, time.monotonic() - t0[0])

    receiver = None
    try:
        receiver = _receiver(webhook_address, received)
        if endpoints is None:
            with tempfile.TemporaryDirectory(prefix="trainsim-drill-") as tmp, \
                    local_stack(drill, Path(tmp), receiver.url, rules_dir,
                                alertmanager_config) as (eps, started):
                t0[0] = started
                return watch(drill, eps, obs, t0[0], progress)
        if progress is not None:
            progress.write(_receiver_hint(receiver.url))
        t0[0] = time.monotonic()
        return watch(drill, endpoints, obs, t0[0], progress)
    except DrillError as exc:
        card = evaluate(drill, obs, time.monotonic() - t0[0], final=True)
        card.error = str(exc)
        return card
    finally:
        if receiver is not None:
            receiver.close()


def _receiver(address: str, on_notification: Callable[[Notification], None],
              ) -> WebhookReceiver:
    """The drill's webhook receiver on ``address``; DrillError if it cannot listen there."""
    try:
        return WebhookReceiver(address, on_notification=on_notification)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise DrillError(f"cannot listen on {address} (--webhook.listen-address): {why}"
                         ) from None


def _receiver_hint(url: str) -> str:
    port = urllib.parse.urlsplit(url).port
    return (f"drill webhook receiver listening on {url}\n"
            "route drill alerts to it in alertmanager.yml:\n"
            "  route:\n    routes:\n      - matchers: ['drill=\"true\"']\n"
            "        receiver: trainsim-drill-runner\n        continue: true\n"
            "  receivers:\n    - name: trainsim-drill-runner\n      webhook_configs:\n"
            f"        - url: http://<this host>:{port}/drill\n          send_resolved: true\n")


@dataclass(frozen=True)
class Options:
    """What ``trainsim drill`` was asked to do."""

    files: tuple[str, ...]
    daemon: str | None = None
    prometheus: str | None = None
    alertmanager: str | None = None
    token_file: str | None = None
    speed: float | None = None
    rules: str | None = None
    alertmanager_config: str | None = None
    webhook_address: str = "127.0.0.1:0"
    output: str = "table"
    junit: str | None = None
    offline: bool = False
    emit: str | None = None
    scrape_interval_ms: int | None = None
    evaluation_interval_ms: int | None = None


def main(o: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``trainsim drill``: 0 if every expectation held, 1 if one failed, 3 if the drill could
    not run (a server unreachable or failing to start, the webhook receiver unable to listen,
    the JUnit report unwritable after all); ConfigError (the drill file) or UsageError (the
    options, a ``--junit`` path that cannot be written) for a mistake, before anything
    starts."""
    if o.offline or o.emit is not None:
        return main_offline(o, out, err)
    for flag, given in (("--scrape-interval", o.scrape_interval_ms),
                        ("--evaluation-interval", o.evaluation_interval_ms)):
        if given is not None:
            raise UsageError(f"drill: {flag} is for --offline and --emit")
    if len(o.files) != 1:
        raise UsageError("drill: a live drill takes one drill file (--offline takes several)")
    drill = load_drill(o.files[0])
    endpoints = None
    if o.daemon is not None or o.prometheus is not None:
        if o.daemon is None or o.prometheus is None:
            raise UsageError("drill: --daemon and --prometheus go together")
        try:
            token = client.token(o.token_file)
            for flag, url in (("--daemon", o.daemon), ("--prometheus", o.prometheus),
                              ("--alertmanager", o.alertmanager)):
                if url is not None:
                    client.check_url(url, flag)
        except (UsageError, ValueError) as exc:
            raise UsageError(f"drill: {exc}") from None
        endpoints = Endpoints(o.daemon, o.prometheus, o.alertmanager, token)
        drill = dataclasses.replace(drill, speed=o.speed or 1.0)
    elif o.speed is not None:
        drill = dataclasses.replace(drill, speed=o.speed)
    rules = _rules_dir(o.rules)
    am_config = None
    if o.alertmanager_config is not None:
        try:
            am_config = Path(o.alertmanager_config).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"drill: --alertmanager.config: cannot read "
                             f"{o.alertmanager_config}: {exc}") from None
    if o.junit is not None:
        _check_writable(o.junit)
    card = run_drill(drill, endpoints, progress=err, webhook_address=o.webhook_address,
                     rules_dir=rules, alertmanager_config=am_config)
    began = any(r.injected is not None for r in card.results)
    if o.output == "json":
        out.write(render_json(card))
    elif card.error is None or began:  # a stack that never started has no scorecard to show
        out.write(render_table(card))
    status = 0 if card.passed else 1
    if o.junit is not None and not _write_junit(o.junit, render_junit(card), err):
        status = 3
    if card.error is not None:
        err.write(f"trainsim: drill could not run: {' '.join(card.error.split())}\n")
        status = 3
    return status


def _check_writable(path: str) -> None:
    """UsageError unless the JUnit report can be written at ``path``: opened for appending,
    which creates it empty if it is missing and keeps what it holds until the report
    replaces it."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise UsageError(f"drill: --junit: cannot write {path}: {exc.strerror or exc}"
                         ) from None


def _rules_dir(given: str | None) -> Path | None:
    rules = Path(given) if given else None
    if rules is not None and not sorted(rules.glob("*.yml")):
        raise UsageError(f"drill: --rules: no *.yml files in {rules}")
    return rules


def main_offline(o: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``trainsim drill --offline`` (and ``--emit``): judge each drill file with promtool at
    the real intervals, or write it as a promtool test file. Exit 0 if every drill passed (or
    was written), 1 if one failed, 3 if promtool is missing or fails; ConfigError or
    UsageError before anything runs."""
    for flag, given in (("--daemon", o.daemon), ("--prometheus", o.prometheus),
                        ("--alertmanager", o.alertmanager), ("--speed", o.speed),
                        ("--alertmanager.config", o.alertmanager_config)):
        if given is not None:
            raise UsageError(f"drill: {flag} is for live drills, not --offline or --emit")
    drills = [load_drill(f) for f in o.files]
    rules_dir = _rules_dir(o.rules)
    rules = offline.Rules.load(rules_dir)
    if o.junit is not None:
        _check_writable(o.junit)
    shipped = offline.shipped_intervals()
    cards, status = [], 0
    with tempfile.TemporaryDirectory(prefix="trainsim-offline-") as tmp:
        for drill in drills:
            intervals = offline.Intervals(
                o.scrape_interval_ms or drill.scrape_interval_ms or shipped.scrape_ms,
                o.evaluation_interval_ms or drill.evaluation_interval_ms
                or shipped.evaluation_ms)
            try:
                if o.emit is not None:
                    result, written = offline.emit(drill, rules, rules_dir, intervals,
                                                   Path(o.emit), Path(tmp))
                    err.write(f"{drill.source}: wrote {written[-1]} "
                              f"({'passes' if result.card.passed else 'FAILS'} as drilled)\n")
                    continue
                card = offline.judge(drill, rules, intervals, Path(tmp)).card
            except offline.OfflineError as exc:
                err.write(f"trainsim: drill could not run: {exc}\n")
                return 3
            except OSError as exc:
                err.write(f"trainsim: drill: --emit: cannot write into {o.emit}: "
                          f"{exc.strerror or exc}\n")
                return 3
            cards.append(card)
            if o.output == "table":
                out.write(render_table(card))
            status = max(status, 0 if card.passed else 1)
    if o.output == "json" and cards:
        docs = [json.loads(render_json(c)) for c in cards]
        out.write(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n")
    if o.junit is not None and cards and not _write_junit(o.junit, render_junit_all(cards), err):
        status = 3
    return status


def _write_junit(path: str, report: str, err: TextIO) -> bool:
    """Write the JUnit report; False, after one line on ``err``, if it cannot be written."""
    try:
        Path(path).write_text(report)
    except OSError as exc:
        err.write(f"trainsim: drill: --junit: cannot write {path}: {exc.strerror or exc}\n")
        return False
    return True
