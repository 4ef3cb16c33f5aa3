"""Writes docs/quickstart.md by running every command it shows, so its output cannot drift.

    python docs/quickstart.py            # run the commands, rewrite docs/quickstart.md
    python docs/quickstart.py --check    # run them and compare with docs/quickstart.md

Runs in a fresh temporary directory with the ``trainsim`` of this Python environment on PATH,
as a user who has just run ``pip install trainsim`` would. ``--check`` compares each command's
output with the recorded one with every digit masked (steps, timings, ports and ids change
from run to run; the words, states and layout must not): the test suite runs it.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).with_name("quickstart.md")
DRILL = ("trainsim drill configs/drills/nan-loss.yaml --rules configs/prometheus/rules "
         "--alertmanager.config configs/alertmanager/alertmanager.yml")


@dataclass
class Step:
    """One shell command of the walk-through, what it is for, and what it printed."""

    text: str
    command: str
    output: str = ""


STEPS = [
    Step("Install trainsim (from PyPI, or `pip install .` in a clone of the repository) and "
         "check it runs:", "trainsim --version"),
    Step("Write everything trainsim ships into a directory of your own: the configs, "
         "scenarios, drills, Prometheus and Alertmanager configs and rules, Grafana "
         "dashboards, runbooks and a compose stack:", "trainsim init demo"),
    Step("Check the files (`validate` reads run configs and drills alike; a mistake is one "
         "line `FILE:LINE: key: message` and exit 2):",
         "cd demo && trainsim validate configs/default.yaml configs/drills/nan-loss.yaml"),
    Step("Start the daemon on the default config: the seed problem J(w) = (w - 2)^2 + 1 from "
         "w0 = 5.5 at learning rates 0.05, 0.2, 0.7 and 1.1. Its runs step every 30 s, so "
         "that Prometheus, scraping every 15 s, stores every step; `--speed 10` runs it ten "
         "times faster for this tour, a step every 3 s. It serves /metrics, the live page at "
         "http://127.0.0.1:9310/ (open it in a browser) and the control API. On a terminal the "
         "log is readable text; `--log.format json` gives JSON lines:",
         "trainsim run --speed 10 --log.format console &"),
    Step("A few seconds later, the runs:", "trainsim runs"),
    Step("Break one: a NaN loss on lr-0.2 for ten minutes of run time (one at this speed). "
         "The id is what `trainsim fault clear` takes:",
         "trainsim fault inject lr-0.2 nan --duration 10m"),
    Step("At its next step lr-0.2 has diverged, and its fault shows:",
         "sleep 4 && trainsim runs"),
    Step("Stop the daemon (Ctrl-C in its terminal, or):", "kill %1"),
    Step("Now the alerting end to end. `trainsim drill` starts a daemon, Prometheus and "
         "Alertmanager on loopback with the rules and routes you pass (here the ones `init` "
         "wrote), injects the same NaN fault on its timeline at 20 times real speed, and "
         "scores when each expected alert went pending, fired, was notified and resolved, "
         "against its budget (Debian's `prometheus` and `prometheus-alertmanager` packages, "
         "or the upstream binaries, on PATH):", DRILL),
]


def run(workdir: Path) -> list[Step]:
    """Run every step in ``workdir`` (one shell session, so `cd` and `&` carry over)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               COLUMNS="100")
    env.pop("TRAINSIM_CONTROL_TOKEN", None)
    cwd = workdir
    daemon: subprocess.Popen[str] | None = None
    daemon_log = workdir / "daemon.log"
    steps = [Step(s.text, s.command) for s in STEPS]
    try:
        for step in steps:
            command = step.command
            if command.startswith("cd "):
                target, _, command = command[3:].partition(" && ")
                cwd = cwd / target
            if command.endswith(" &"):
                with daemon_log.open("w") as log:
                    daemon = subprocess.Popen(shlex.split(command[:-2]), cwd=cwd, env=env,
                                              stdout=log, stderr=subprocess.STDOUT, text=True,
                                              start_new_session=True)
                step.output = _startup(daemon_log)
                continue
            if command == "kill %1":
                assert daemon is not None
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=10)
                step.output = daemon_log.read_text().splitlines()[-1] + "\n"
                continue
            done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=600)
            step.output = done.stdout + done.stderr
            if done.returncode != 0:
                raise SystemExit(f"quickstart: `{step.command}` exited {done.returncode}:\n"
                                 f"{step.output}")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
    return steps


def _startup(log: Path, timeout: float = 20.0) -> str:
    """The daemon's log up to its ``listening`` line, then three seconds of running."""
    deadline = time.monotonic() + timeout
    while "listening" not in log.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"quickstart: the daemon did not start:\n{log.read_text()}")
        time.sleep(0.05)
    time.sleep(3)
    return log.read_text()


def render(steps: list[Step]) -> str:
    """docs/quickstart.md from the steps and what they printed."""
    out = ["# Quickstart: from install to a fired, notified and resolved alert", "",
           "Five minutes, no Docker, no repository. Every command below was run by",
           "`docs/quickstart.py`, which wrote this page with what each printed; the test suite",
           "runs it again and fails if a command stops working or prints something else.", ""]
    for step in steps:
        command = step.command.replace(" && ", "\n")
        out += [step.text, "", "```console", *(f"$ {line}" for line in command.splitlines()),
                *_shown(step.output), "```", ""]
    out += ["Where next:", "",
            "- `GRAFANA_ADMIN_PASSWORD=change-me docker compose up --build` in `demo/` starts "
            "the whole stack (Grafana on http://localhost:3000; the compose file lists every "
            "port);",
            "- [faults.md](faults.md) lists every fault kind and the alert it should raise;",
            "- [drills.md](drills.md) explains drill files and the scorecard, and how to run "
            "drills in CI;",
            "- [alerting.md](alerting.md) and [runbooks.md](runbooks.md): the shipped alerts and "
            "what to do when each fires.", ""]
    return "\n".join(out)


def _shown(output: str) -> list[str]:
    lines = output.rstrip("\n").splitlines()
    # The drill's progress lines repeat as phases change: the scorecard is what counts.
    lines = [line for line in lines if not line.startswith("[nan-loss] t=")]
    return lines


def _mask(text: str) -> list[str]:
    masked = re.sub(r"[0-9a-f]{8,}", "ID", text)  # fault ids
    masked = re.sub(r"\d+", "0", masked)
    masked = re.sub(r"0(\.0)+", "0", masked)
    # Columns are padded to their widest cell, which the masked digits change.
    return [re.sub(r" {2,}", "  ", line.rstrip()) for line in masked.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare with docs/quickstart.md instead of rewriting it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainsim-quickstart-") as tmp:
        page = render(run(Path(tmp)))
    if not args.check:
        DOC.write_text(page)
        print(f"wrote {DOC}")
        return
    recorded, now = _mask(DOC.read_text()), _mask(page)
    if recorded != now:
        diff = "\n".join(difflib.unified_diff(recorded, now, "docs/quickstart.md", "now",
                                              lineterm=""))
        raise SystemExit(f"docs/quickstart.md is stale (python docs/quickstart.py):\n{diff}")
    print("docs/quickstart.md matches what the commands print")


if __name__ == "__main__":
    main()
