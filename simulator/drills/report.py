"""A drill's scorecard as text for a terminal, as JSON, and as a JUnit XML report."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from simulator.drills.scoring import PASS, AlertTrack, Scorecard, fmt_seconds


def render_table(card: Scorecard) -> str:
    """The human scorecard: every time in run-time seconds, one unit for the whole table."""
    d = card.drill
    lines = [f"drill {d.name} ({d.source}), {card.mode or f'speed {d.speed:g}'}: "
             f"{'PASS' if card.passed else 'FAIL'}",
             "seconds of run time: injected at t; pending, firing and notified after the "
             "injection; resolved after the clear", ""]
    if not card.notifications:
        lines[-1:-1] = ["firing: the evaluation at which promtool first had the alert firing; "
                        "notifications are not judged offline (no Alertmanager)"]
    header = ("expectation", "injected", "pending", "firing", "budget", "notified",
              "resolved", "result")
    rows = [header]
    for r in card.results:
        t0 = r.injected

        def rel(t: float | None, base: float | None = t0) -> str:
            return "-" if t is None or base is None else f"{(t - base) * d.speed:.1f}"

        rows.append((r.expectation.name, "-" if t0 is None else f"{t0 * d.speed:.1f}",
                     rel(r.pending), rel(r.firing), f"{r.expectation.firing_within:.1f}",
                     rel(r.notified),
                     "-" if r.resolve_latency is None else f"{r.resolve_latency:.1f}",
                     r.status if r.status == PASS else f"{r.status}: {r.message}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:-1], widths[1:], strict=True)]
        lines.append("  ".join(cells) + "  " + row[-1])
    if card.false_positives:
        lines += ["", "false positives (alerts that had to stay silent):"]
        lines += [f"  {_alert_name(t)} firing={fmt_seconds(_opt(t.firing, d.speed))} "
                  f"pending={fmt_seconds(_opt(t.pending, d.speed))}" for t in card.false_positives]
    if card.near_misses:
        lines += ["", "went pending but never fired (not failures):"]
        lines += [f"  {_alert_name(t)} pending={fmt_seconds(_opt(t.pending, d.speed))}"
                  for t in card.near_misses]
    if card.unexpected:
        lines += ["", "other alerts that fired (not scored):"]
        lines += [f"  {_alert_name(t)}" for t in card.unexpected]
    if card.error:
        lines += ["", f"error: {card.error}"]
    return "\n".join(lines) + "\n"


def _opt(t: float | None, speed: float) -> float | None:
    return None if t is None else t * speed


def _alert_name(t: AlertTrack) -> str:
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(t.labels.items()) if k != "alertname")
    return f"{t.labels.get('alertname', '?')}{{{rest}}}"


def render_json(card: Scorecard) -> str:
    """The scorecard as JSON (times in run-time seconds since the drill started)."""
    speed = card.drill.speed

    def rt(t: float | None) -> float | None:
        return None if t is None else round(t * speed, 3)

    return json.dumps({
        "drill": card.drill.name,
        "source": card.drill.source,
        "speed": speed,
        "mode": "live" if card.mode is None else "offline",
        "judged_by": card.mode,
        "notifications_judged": card.notifications,
        "passed": card.passed,
        "error": card.error,
        "elapsed_seconds": round(card.elapsed, 3),
        "expectations": [{
            "alert": r.expectation.alert,
            "labels": dict(r.expectation.labels),
            "fault": r.expectation.fault,
            "status": r.status,
            "message": r.message,
            "injected_at": rt(r.injected),
            "pending_at": rt(r.pending),
            "firing_at": rt(r.firing),
            "notified_at": rt(r.notified),
            "resolved_at": rt(r.resolved),
            "firing_latency_seconds": r.firing_latency,
            "firing_budget_seconds": r.expectation.firing_within,
            "notify_latency_seconds": r.notify_latency,
            "resolve_latency_seconds": r.resolve_latency,
        } for r in card.results],
        "false_positives": [{"labels": t.labels, "pending_at": rt(t.pending),
                             "firing_at": rt(t.firing)} for t in card.false_positives],
        "near_misses": [{"labels": t.labels, "pending_at": rt(t.pending)}
                        for t in card.near_misses],
        "unexpected": [{"labels": t.labels, "firing_at": rt(t.firing)}
                       for t in card.unexpected],
    }, indent=2) + "\n"


def render_junit(card: Scorecard) -> str:
    """The scorecard as a JUnit XML report: one testcase per expectation and per silence."""
    return ElementTree.tostring(_suite(card), encoding="unicode", xml_declaration=True) + "\n"


def render_junit_all(cards: list[Scorecard]) -> str:
    """Several scorecards as one JUnit XML report: a testsuite per drill."""
    suites = ElementTree.Element("testsuites", name="trainsim drills")
    for card in cards:
        suites.append(_suite(card))
    suites.set("tests", str(sum(int(s.get("tests", "0")) for s in suites)))
    suites.set("failures", str(sum(int(s.get("failures", "0")) for s in suites)))
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _suite(card: Scorecard) -> ElementTree.Element:
    cases = []
    for r in card.results:
        cases.append((r.expectation.name, r.status == PASS, r.message,
                      (r.firing_latency or 0.0) / max(card.drill.speed, 1e-9)))
    for s in card.drill.silent:
        hits = [t for t in card.false_positives if s.matches(t.labels)]
        inner = ",".join(f'{k}=~"{v}"' for k, v in s.labels)
        cases.append((f"silent {s.alert}{{{inner}}}", not hits,
                      "fired: " + ", ".join(_alert_name(t) for t in hits), 0.0))
    if card.error:
        cases.append(("drill infrastructure", False, card.error, 0.0))
    suite = ElementTree.Element("testsuite", name=f"trainsim drill {card.drill.name}",
                                tests=str(len(cases)),
                                failures=str(sum(1 for c in cases if not c[1])),
                                errors="0", time=f"{card.elapsed:.3f}")
    for name, ok, message, seconds in cases:
        case = ElementTree.SubElement(suite, "testcase", classname=f"drill.{card.drill.name}",
                                      name=name, time=f"{seconds:.3f}")
        if not ok:
            failure = ElementTree.SubElement(case, "failure", message=message, type="FAIL")
            failure.text = message
    return suite
