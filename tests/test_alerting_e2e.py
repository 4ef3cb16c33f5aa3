"""The alerting pack end to end, with real servers on loopback.

One scenario, run once for the module: the daemon at ``--speed 20`` with the seed's three
healthy runs (from configs/default.yaml) plus ``victim`` and ``drill-victim``, two lr=0.2 runs
whose learning rate is multiplied by 8 for 20 simulated seconds early in their second attempt,
so they diverge, hold until their next loop restart and then converge again. Prometheus
(Debian's 2.42) scrapes and evaluates every second with the shipped rule files in the fast
profile (factor = speed), and sends to an Alertmanager (0.25) running the shipped
alertmanager.yml in the fast profile, whose webhooks all point at a receiver in this module.
Every config is derived from the shipped file by ``simulator.rules_profile``; nothing is a
hand-written copy.

The tests below each check one behaviour of that recorded scenario. A missing binary fails
them (never skips). Measured latencies are printed (``-s``) and written to
``alerting-latency.json`` in the module's temporary directory; docs/alerting.md ("Measured")
records them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from simulator.drills import stack
from simulator.drills.profile import (
    fast_alertmanager_config,
    fast_profile,
    fast_prometheus_config,
    scale_for,
)
from simulator.durations import parse_prometheus as parse_duration
from simulator.web.webhook import Notification, WebhookReceiver
from tests.conftest import need_binary

pytestmark = pytest.mark.realstack

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
PROMETHEUS_YML = REPO / "configs" / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((REPO / "configs" / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_YML = REPO / "configs" / "alertmanager" / "alertmanager.yml"

SPEED = 20  # the daemon's --speed, and the fast profile's factor
INTERVAL_S = 1.0  # Prometheus scrape and evaluation interval
HEALTHY = ("lr-0.05", "lr-0.2", "lr-0.7")
VICTIM = "victim"
DRILL_VICTIM = "drill-victim"  # named drill-*: the shipped relabelling adds drill="true"
ALERT = "TrainsimRunDiverging"

# The victims' timeline in simulated seconds. An attempt lasts STEPS + 1 steps of 1 s; the
# fault opens 2 steps into the second attempt, when w - 2 is still large, so the spiked
# learning rate (0.2 * 8: w - 2 grows 2.2x a step) trips the detector within a few steps.
STEPS = 240
FAULT_AT_S = STEPS + 1 + 2
FAULT_DURATION_S = 20
RESTART_S = 2 * (STEPS + 1)  # second restart: the spike is over, the attempt converges
GROWTH_STEPS = 10  # the detector's divergence_growth_steps default

# Upper bound on how long the whole scenario may take, start-up included.
SCENARIO_DEADLINE_S = 90.0

# Slack on top of the latency formula. Its terms assume that publishing a value, scraping it,
# evaluating the rules, handing the alert to Alertmanager and POSTing the webhook take no
# time; on loopback each takes milliseconds, and a busy CI machine can delay any of these
# processes by a scheduling quantum or a GC pause. Half an interval covers that while still
# failing on a whole extra scrape or evaluation cycle, or a `for` that was not scaled.
TOLERANCE_S = 0.5 * INTERVAL_S

T = TypeVar("T")


# --- scenario ------------------------------------------------------------------------------


def scenario_config() -> str:
    """configs/default.yaml without its diverging run, plus the two victims, all stepping
    once a second (the timeline above counts in steps of 1 s)."""
    config: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["defaults"] |= {"step_interval": "1s", "steps": 300}
    config["runs"] = [run for run in config["runs"] if run["name"] in HEALTHY]
    assert [run["name"] for run in config["runs"]] == list(HEALTHY)
    fault = {"kind": "lr_spike", "at": f"{FAULT_AT_S}s", "duration": f"{FAULT_DURATION_S}s",
             "factor": 8}
    for name in (VICTIM, DRILL_VICTIM):
        config["runs"].append({"name": name, "optimizer": {"kind": "sgd", "learning_rate": 0.2},
                               "steps": STEPS, "loop": True, "faults": [fault]})
    return yaml.safe_dump(config, sort_keys=False)


def alerts(n: Notification, status: str, run: str) -> list[dict[str, Any]]:
    """The alerts of notification ``n`` for ``run`` with ``status`` (firing, resolved)."""
    return [a for a in n.payload.get("alerts", [])
            if a["status"] == status and a["labels"].get("run") == run
            and a["labels"].get("alertname") == ALERT]


def first(received: list[Notification], status: str, run: str) -> Notification | None:
    """The first notification carrying ``run``'s alert with ``status``."""
    return next((n for n in received if alerts(n, status, run)), None)


@dataclass
class Scenario:
    """What the run of the scenario recorded; the tests assert on it."""

    workdir: Path
    started: float  # Unix time the scenario started
    finished: float
    events: list[dict[str, Any]]
    pending_seen: dict[str, Any]  # the victim's alert as /api/v1/alerts first showed it pending
    firing_seen: dict[str, Any]
    alerts_samples: list[dict[str, Any]]  # every ALERTS series over the whole scenario
    restarts: dict[str, float]  # run -> restarts seen by Prometheus during the scenario
    notifications: list[Notification] = field(default_factory=list)

    def event_times(self, event: str, run: str) -> list[float]:
        """Unix times of the daemon's log events ``event`` for ``run``, in order."""
        return [_timestamp(e) for e in self.events
                if e.get("event") == event and e.get("run") == run]

    def event_time(self, event: str, run: str) -> float:
        """Unix time of the daemon's first log event ``event`` for ``run``."""
        times = self.event_times(event, run)
        assert times, f"the daemon never logged {event} for {run}"
        return times[0]

    def alert_times(self, run: str, state: str) -> list[float]:
        """Evaluation timestamps at which ``run``'s divergence alert was in ``state``."""
        return [float(t) for s in self.alerts_samples
                if s["metric"].get("run") == run and s["metric"]["alertname"] == ALERT
                and s["metric"]["alertstate"] == state for t, _ in s["values"]]

    def first_notification(self, status: str, run: str) -> Notification:
        """The first notification with ``run``'s divergence alert in ``status``."""
        found = first(self.notifications, status, run)
        assert found is not None, f"no {status} notification for {run}: {self.notifications}"
        return found


def _timestamp(event: dict[str, Any]) -> float:
    """Unix time of a daemon log event (structlog's ISO timestamp, UTC)."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _poll(what: str, predicate: Callable[[], T | None], deadline: float,
          interval: float = 0.1) -> T:
    """Poll until ``predicate`` returns something other than None; fail at ``deadline``."""
    while True:
        value = predicate()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(interval)


def _victim_alert(prom: stack.PrometheusProcess, run: str, state: str) -> dict[str, Any] | None:
    for alert in prom.alerts():
        labels = alert["labels"]
        if labels["alertname"] == ALERT and labels.get("run") == run and alert["state"] == state:
            return alert
    return None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Start the stack, drive the scenario to the resolved notifications, record everything."""
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")
    workdir = tmp_path_factory.mktemp("alerting-e2e")
    started = time.time()
    deadline = time.monotonic() + SCENARIO_DEADLINE_S
    processes: list[stack.Process] = []
    receiver = WebhookReceiver()  # loopback, a free port
    try:
        am_port = stack.free_port()
        am = stack.start_alertmanager(
            workdir / "alertmanager",
            fast_alertmanager_config(ALERTMANAGER_YML.read_text(), SPEED,
                                     webhook_url=receiver.url),
            port=am_port)
        processes.append(am)

        config = workdir / "scenario.yaml"
        config.write_text(scenario_config())
        daemon = stack.start_daemon(workdir, config=config, speed=SPEED)
        processes.append(daemon)

        rules_dir = workdir / "fast-rules"
        rules_dir.mkdir()
        rule_paths = []
        for path in RULE_FILES:
            fast = rules_dir / path.name
            fast.write_text(fast_profile(path.read_text(), SPEED,
                                         scrape_interval=f"{INTERVAL_S:g}s"))
            rule_paths.append(fast)
        prom = stack.start_prometheus(
            workdir / "prometheus",
            fast_prometheus_config(PROMETHEUS_YML.read_text(), target=daemon.address,
                                   alertmanager=f"127.0.0.1:{am_port}",
                                   interval=f"{INTERVAL_S:g}s"),
            rule_paths)
        processes.append(prom)

        # The latency is measured from the fault, so Prometheus must be watching before it.
        _poll("the first scrape of the victim",
              lambda: prom.query(f'trainsim_loss{{run="{VICTIM}"}}') or None, deadline)
        first_scrape = time.time()

        pending = _poll(f"{ALERT} pending for {VICTIM}",
                        lambda: _victim_alert(prom, VICTIM, "pending"), deadline)
        firing = _poll(f"{ALERT} firing for {VICTIM}",
                       lambda: _victim_alert(prom, VICTIM, "firing"), deadline)
        for status in ("firing", "resolved"):
            for run in (VICTIM, DRILL_VICTIM):
                _poll(f"a {status} notification for {run}",
                      lambda: first(receiver.received(), status, run), deadline)  # noqa: B023
        finished = time.time()

        window = f"{int(finished - started) + 5}s"
        alerts_samples = prom.api("query", query=f"ALERTS[{window}]")["result"]
        restarts = {
            s["metric"]["run"]: float(s["value"][1])
            for s in prom.query(f"changes(trainsim_run_restarts_total[{window}])")
        }
        events = [e for e in daemon.events() if "timestamp" in e]
        injected = [_timestamp(e) for e in events
                    if e.get("event") == "fault_injected" and e.get("run") == VICTIM]
        assert injected and injected[0] > first_scrape, "the fault began before the first scrape"
        yield Scenario(workdir, started, finished, events, pending, firing, alerts_samples,
                       restarts, receiver.received())
    finally:
        for process in reversed(processes):
            process.close()
        receiver.close()


# --- latency -------------------------------------------------------------------------------


def _rule_for_s(name: str) -> float:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    return parse_duration(scale_for(str(rule["for"]), SPEED)) / 1000
    raise AssertionError(f"no alert {name}")


def _route_timing_s(labels: dict[str, str], key: str) -> float:
    """``key`` (group_wait, group_interval) of the fast Alertmanager route these labels take.

    The shipped tree is one level deep with `name="value"` matchers; the first match wins.
    """
    config = yaml.safe_load(fast_alertmanager_config(ALERTMANAGER_YML.read_text(), SPEED))
    root = config["route"]
    for route in root.get("routes", []):
        matchers = [m.replace('"', "").split("=", 1) for m in route["matchers"]]
        if all(labels.get(k) == v for k, v in matchers):
            return parse_duration(route.get(key, root[key])) / 1000
    return parse_duration(root[key]) / 1000


@dataclass(frozen=True)
class Latency:
    """Fault -> detector flag -> pending -> firing -> notification, for one run."""

    run: str
    fault: float  # Unix seconds, from the daemon's fault_injected log event
    detected: float  # the daemon's run_diverged log event
    pending: float  # Prometheus' activeAt: the evaluation that first saw the condition
    firing: float  # first firing sample of ALERTS
    notified: float  # arrival of the first firing notification at the webhook
    restarted: float  # the daemon's run_restarted log event after the divergence
    resolved_notified: float  # arrival of the resolved notification

    def table(self) -> dict[str, float]:
        """Seconds from the fault to each milestone, and the resolution from the restart."""
        return {
            "fault_to_detected_s": self.detected - self.fault,
            "fault_to_pending_s": self.pending - self.fault,
            "fault_to_firing_s": self.firing - self.fault,
            "fault_to_notification_s": self.notified - self.fault,
            "restart_to_resolved_notification_s": self.resolved_notified - self.restarted,
        }


def _latency(s: Scenario, run: str) -> Latency:
    restarted = s.event_times("run_restarted", run)
    detected = s.event_time("run_diverged", run)
    firing = min(s.alert_times(run, "firing"))
    pending = s.pending_seen if run == VICTIM else None
    active_at = (datetime.fromisoformat(pending["activeAt"]).timestamp() if pending
                 else min(s.alert_times(run, "pending")))
    return Latency(
        run=run,
        fault=s.event_time("fault_injected", run),
        detected=detected,
        pending=active_at,
        firing=firing,
        notified=s.first_notification("firing", run).received,
        restarted=min(t for t in restarted if t > detected),
        resolved_notified=s.first_notification("resolved", run).received,
    )


@pytest.fixture(scope="module")
def latency(scenario: Scenario) -> Latency:
    """The victim's latencies, printed and written to alerting-latency.json."""
    result = _latency(scenario, VICTIM)
    bounds = _bounds()
    report = {
        "speed": SPEED,
        "interval_s": INTERVAL_S,
        "scenario_s": scenario.finished - scenario.started,
        "measured": result.table(),
        "drill": _latency(scenario, DRILL_VICTIM).table(),
        "fault_log_minus_plan_s": _fault_lag_s(scenario),
        "formula_bounds": bounds,
    }
    path = scenario.workdir / "alerting-latency.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nalerting latency (fast profile, --speed {SPEED}), written to {path}:")
    for key, value in result.table().items():
        print(f"  {key:38s} {value:6.2f}")
    for key, value in bounds.items():
        print(f"  bound {key:32s} {value:6.2f}")
    print(f"  scenario took {report['scenario_s']:.1f}s")
    return result


def _fault_lag_s(s: Scenario) -> float:
    """How long after its planned moment the daemon logged the fault as injected.

    The run's clock starts when the daemon logs run_started; the fault opens FAULT_AT_S
    simulated seconds later.
    """
    planned = s.event_time("run_started", VICTIM) + FAULT_AT_S / SPEED
    return s.event_time("fault_injected", VICTIM) - planned


def _bounds() -> dict[str, float]:
    """The latency formula's worst case, from the fast profile's own numbers.

    fault -> firing = detection + scrape interval + evaluation interval + for, and
    notification = firing + group_wait. Detection is the condition delay of this fault: the
    first spiked step falls due within one step interval, and the detector flags a loss that
    rose on 10 consecutive steps (sooner if it passes the 1e5 bound). A resolution is seen
    by the next scrape and evaluation and notified at the group's next group_interval tick.
    """
    detection = (GROWTH_STEPS + 1) / SPEED
    for_s = _rule_for_s(ALERT)
    critical = {"severity": "critical"}
    group_wait = _route_timing_s(critical, "group_wait")
    firing = detection + INTERVAL_S + INTERVAL_S + for_s
    return {
        "detection_s": detection,
        "detected_to_pending_s": INTERVAL_S + INTERVAL_S,
        "detected_to_firing_s": INTERVAL_S + INTERVAL_S + for_s,
        "fault_to_firing_s": firing,
        "firing_to_notification_s": group_wait,
        "fault_to_notification_s": firing + group_wait,
        "restart_to_resolved_notification_s": (
            INTERVAL_S + INTERVAL_S + _route_timing_s(critical, "group_interval")),
    }


# --- tests ---------------------------------------------------------------------------------


def test_the_real_servers_are_installed() -> None:
    # Without them every test below errors in the fixture; this one names the cause as a FAIL.
    need_binary("prometheus")
    need_binary("prometheus-alertmanager", "alertmanager")


def test_divergence_alert_goes_pending_then_firing_in_prometheus(scenario: Scenario) -> None:
    pending, firing = scenario.alert_times(VICTIM, "pending"), scenario.alert_times(
        VICTIM, "firing")
    assert pending and firing
    assert max(pending) < min(firing), "pending must come before firing"
    assert scenario.pending_seen["labels"]["severity"] == "critical"
    assert scenario.firing_seen["labels"]["run"] == VICTIM
    # Firing exactly `for` after the alert became active (evaluations are 1 s apart).
    active_at = datetime.fromisoformat(scenario.pending_seen["activeAt"]).timestamp()
    assert min(firing) - active_at == pytest.approx(_rule_for_s(ALERT), abs=0.1)


def test_firing_notification_reaches_the_critical_receiver_with_the_expected_labels(
    scenario: Scenario,
) -> None:
    notification = scenario.first_notification("firing", VICTIM)
    assert notification.path == "/alerts/critical"
    assert notification.payload["receiver"] == "trainsim-critical"
    (alert,) = alerts(notification, "firing", VICTIM)
    labels = alert["labels"]
    assert labels["alertname"] == ALERT
    assert labels["run"] == VICTIM
    assert labels["severity"] == "critical"
    assert labels["job"] == "trainsim"
    assert "drill" not in labels
    assert VICTIM in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"].endswith("#trainsimrundiverging")


def test_resolved_notification_arrives_after_the_victim_restarts_and_recovers(
    scenario: Scenario,
) -> None:
    diverged = scenario.event_time("run_diverged", VICTIM)
    restart = min(t for t in scenario.event_times("run_restarted", VICTIM) if t > diverged)
    resolved = scenario.first_notification("resolved", VICTIM)
    assert resolved.received > restart
    assert resolved.path == "/alerts/critical"
    (alert,) = alerts(resolved, "resolved", VICTIM)
    assert alert["labels"]["severity"] == "critical"
    # The new attempt converges: the spike is over.
    assert any(t > restart for t in scenario.event_times("run_converged", VICTIM))
    # Only one firing episode: the restart resolved it for good.
    firing = scenario.alert_times(VICTIM, "firing")
    assert max(firing) < resolved.received


def test_healthy_runs_raise_no_alert_during_the_whole_scenario(scenario: Scenario) -> None:
    assert scenario.alert_times(VICTIM, "firing"), "rules were not evaluated"
    noisy = {
        (s["metric"]["alertname"], s["metric"].get("run", ""), s["metric"]["alertstate"])
        for s in scenario.alerts_samples
        if s["metric"].get("run") not in (VICTIM, DRILL_VICTIM)
    }
    assert noisy == set(), f"alerts (pending or firing) outside the victims: {sorted(noisy)}"
    # The window covered each healthy run's loop restart, where the loss jumps back up.
    for run in HEALTHY:
        assert scenario.restarts.get(run, 0) >= 1, f"{run} never restarted during the scenario"


def test_drill_run_is_routed_to_the_drill_receiver_only(scenario: Scenario) -> None:
    firing = scenario.first_notification("firing", DRILL_VICTIM)
    resolved = scenario.first_notification("resolved", DRILL_VICTIM)
    for notification in (firing, resolved):
        assert notification.path == "/drill"
        assert notification.payload["receiver"] == "trainsim-drill"
        assert all(a["labels"].get("drill") == "true" for a in notification.payload["alerts"])
    (alert,) = alerts(firing, "firing", DRILL_VICTIM)
    assert alert["labels"]["severity"] == "critical"
    leaked = [n.path for n in scenario.notifications
              if n.path != "/drill" and any(a["labels"].get("run") == DRILL_VICTIM
                                            for a in n.payload["alerts"])]
    assert leaked == [], "a drill reached a real receiver"
    real_in_drill = [n for n in scenario.notifications
                     if n.path == "/drill" and any(a["labels"].get("run") == VICTIM
                                                   for a in n.payload["alerts"])]
    assert real_in_drill == []


def test_fault_is_injected_when_the_config_says(scenario: Scenario) -> None:
    # The latencies are measured from the fault_injected log event; it must be the planned
    # moment (run start + `at` / speed), give or take the daemon's tick.
    assert abs(_fault_lag_s(scenario)) <= TOLERANCE_S


def test_firing_latency_is_within_the_formula_bound(latency: Latency) -> None:
    measured, bounds = latency.table(), _bounds()
    assert 0 <= measured["fault_to_detected_s"] <= bounds["detection_s"] + TOLERANCE_S
    assert latency.pending - latency.detected <= bounds["detected_to_pending_s"] + TOLERANCE_S
    assert latency.firing - latency.detected <= bounds["detected_to_firing_s"] + TOLERANCE_S
    assert measured["fault_to_firing_s"] <= bounds["fault_to_firing_s"] + TOLERANCE_S


def test_notification_latency_is_within_the_formula_bound(latency: Latency) -> None:
    measured, bounds = latency.table(), _bounds()
    assert latency.notified - latency.firing <= bounds["firing_to_notification_s"] + TOLERANCE_S
    assert measured["fault_to_notification_s"] <= (
        bounds["fault_to_notification_s"] + TOLERANCE_S)


def test_resolved_notification_latency_is_within_the_formula_bound(latency: Latency) -> None:
    assert latency.table()["restart_to_resolved_notification_s"] <= (
        _bounds()["restart_to_resolved_notification_s"] + TOLERANCE_S)
