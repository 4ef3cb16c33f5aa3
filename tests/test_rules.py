"""The shipped alerting pack: Prometheus rules and config, Alertmanager config, fast profile.

Everything here runs offline with Debian's ``promtool`` and ``amtool``; a missing binary fails
the test (it never skips). The promtool unit tests live in ``tests/rules/*_test.yml``; the
seed's four learning rates are rendered to series here, in Python, from the closed form
w_k = c + (1 - 2 lr)^k (w0 - c), and written to a promtool test file under ``tmp_path``.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.config import load_default
from simulator.drills.profile import (
    fast_alertmanager_config,
    fast_profile,
    fast_prometheus_config,
    scale_expr,
    scale_for,
)
from simulator.durations import format_prometheus as format_duration
from simulator.durations import parse_prometheus as parse_duration
from simulator.scaffold import DEFAULT_RUNBOOK_BASE_URL

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = REPO / "configs" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO / "configs" / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
ALERTMANAGER_YML = REPO / "configs" / "alertmanager" / "alertmanager.yml"
UNIT_TEST_FILES = sorted((REPO / "tests" / "rules").glob("*_test.yml"))
RUNBOOKS_MD = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = f"{DEFAULT_RUNBOOK_BASE_URL}#"

JOB = "trainsim"
INSTANCE = "trainsim:9310"


# --- helpers -------------------------------------------------------------------------------


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not on PATH: install Debian's prometheus and prometheus-alertmanager "
            "packages (`make test-deps`)",
            pytrace=False,
        )
    return path


@pytest.fixture
def promtool() -> str:
    """Path of promtool; the test fails if it is missing."""
    return _binary("promtool")


@pytest.fixture
def amtool() -> str:
    """Path of amtool; the test fails if it is missing."""
    return _binary("amtool")


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def _alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


ALERTS = _alert_rules()
ALERT_NAMES = [rule["alert"] for rule in ALERTS]


def _rule(name: str) -> dict[str, Any]:
    return next(rule for rule in ALERTS if rule["alert"] == name)


# --- static checks ---------------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_shipped_rules(promtool: str) -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    _assert_ok(result)


def test_promtool_check_config_accepts_prometheus_yml_and_its_rule_files(promtool: str) -> None:
    result = _run([promtool, "check", "config", str(PROMETHEUS_YML)])
    _assert_ok(result)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_prometheus_yml_scrapes_the_compose_service_and_alerts_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "15s"}
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[JOB]["static_configs"] == [{"targets": ["trainsim:9310"]}]
    alertmanagers = config["alerting"]["alertmanagers"]
    assert alertmanagers == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]


def test_amtool_check_config_accepts_alertmanager_yml(amtool: str) -> None:
    _assert_ok(_run([amtool, "check-config", str(ALERTMANAGER_YML)]))


# --- conventions -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_alert_follows_monitoring_mixin_conventions(name: str) -> None:
    rule = _rule(name)
    assert re.fullmatch(r"Trainsim(?:[A-Z][a-z0-9]*)+", name), "CamelCase with Trainsim prefix"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "{{ $value" in annotations["description"], "description must show the value"
    assert "{{ $labels.run }}" in annotations["description"] or name in {
        "TrainsimTargetDown",
        "TrainsimConfigReloadFailed",
    }, "a per-run alert must name its run"
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower()
    assert parse_duration(rule["for"]) > 0, "every alert here can flap, so every one has a for"


def test_the_runbook_base_is_the_projects_declared_runbooks_url() -> None:
    import tomllib

    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Runbooks"] == DEFAULT_RUNBOOK_BASE_URL


def test_every_runbook_url_has_a_section_in_docs_runbooks_md() -> None:
    headings = {
        line.removeprefix("## ").strip().lower()
        for line in RUNBOOKS_MD.read_text().splitlines()
        if line.startswith("## ")
    }
    missing = [name for name in ALERT_NAMES if name.lower() not in headings]
    assert not missing, f"docs/runbooks.md lacks sections for {missing}"


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if expected:
                    assert all("exp_annotations" in alert for alert in expected), case
                    fired.add(case["alertname"])
                # Either an explicit "nothing fires" case, or a firing case in a group that
                # also holds healthy series which are absent from the expected alerts.
                if not expected or len(test["input_series"]) > len(expected):
                    silent.add(case["alertname"])
    assert set(ALERT_NAMES) - fired == set(), "alerts never fired by a unit test"
    assert set(ALERT_NAMES) - silent == set(), "alerts without a silent case"


# --- promtool unit tests -----------------------------------------------------------------------


@pytest.mark.parametrize("path", UNIT_TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, path: Path) -> None:
    _assert_ok(_run([promtool, "test", "rules", path.name], cwd=path.parent))


# --- the seed's four learning rates rendered as series --------------------------------------------

W0, C, B = 5.5, 2.0, 1.0
# The default config's cadence: STEPS steps per attempt, one every STEP_S seconds, and
# `loop: true` restarts the run one step interval after its last step.
_DEFAULT = load_default().runs[0]
STEPS, STEP_S = _DEFAULT.steps, _DEFAULT.step_interval
LOOP_S = (STEPS + 1) * STEP_S
TOLERANCE = 1e-3  # gradient norm below which a run counts as converged
RISING_STEPS = 10  # consecutive loss increases that make the detector call divergence
STATES = ("running", "converged", "stalled", "diverged", "finished")
DETECTOR_ALERTS = ("divergence", "stall", "oscillation")
HEALTHY_RATES = (0.05, 0.2, 0.7)


@dataclass(frozen=True)
class Profile:
    """How the daemon and Prometheus run: shipped (real time) or fast (tests and drills)."""

    name: str
    factor: int  # rules_profile factor, and the daemon's --speed
    interval_s: int  # scrape and evaluation interval

    def rules_text(self, path: Path) -> str:
        text = path.read_text()
        return text if self.factor == 1 else fast_profile(text, self.factor)

    def scaled_s(self, shipped: str) -> float:
        return parse_duration(scale_for(shipped, self.factor)) / 1000


SHIPPED = Profile("shipped", factor=1, interval_s=15)
FAST = Profile("fast", factor=20, interval_s=1)


@dataclass(frozen=True)
class Step:
    """State of a run after k steps of an attempt."""

    w: float
    loss: float
    gradient_norm: float
    state: str


def _attempt(learning_rate: float) -> list[Step]:
    """One attempt of J(w) = (w - 2)^2 + 1 from w0 = 5.5, up to the step where it stops."""
    factor = 1 - 2 * learning_rate
    steps: list[Step] = []
    rising = 0
    converged = False
    for k in range(STEPS + 1):
        w = C + factor**k * (W0 - C)
        loss = (w - C) ** 2 + B
        rising = rising + 1 if steps and loss > steps[-1].loss else 0
        converged = converged or 2 * abs(w - C) < TOLERANCE
        state = "diverged" if rising >= RISING_STEPS else "converged" if converged else "running"
        steps.append(Step(w, loss, 2 * abs(w - C), state))
        if state == "diverged":  # a diverged run holds its last finite values until restart
            break
    return steps


def _run_series(
    name: str, learning_rate: float, profile: Profile, count: int
) -> dict[str, list[float]]:
    """The series the daemon exports for one run, sampled every scrape at --speed factor."""
    attempt = _attempt(learning_rate)
    labels = f'job="{JOB}", instance="{INSTANCE}", run="{name}"'
    out: dict[str, list[float]] = {}

    def put(series: str, value: float) -> None:
        out.setdefault(series, []).append(value)

    for i in range(count):
        sim_s = i * profile.interval_s * profile.factor
        restarts, offset = divmod(sim_s, LOOP_S)
        k = min(int(offset // STEP_S), len(attempt) - 1)
        step = attempt[k]
        put(f"trainsim_loss{{{labels}}}", step.loss)
        put(f"trainsim_gradient_norm{{{labels}}}", step.gradient_norm)
        put(f"trainsim_learning_rate{{{labels}}}", learning_rate)
        put(f"trainsim_update_norm{{{labels}}}", abs(step.w - attempt[k - 1].w) if k else 0.0)
        put(f'trainsim_parameter{{{labels}, dim="0"}}', step.w)
        put(f"trainsim_steps_total{{{labels}}}", k)
        put(
            f"trainsim_last_step_timestamp_seconds{{{labels}}}",
            (restarts * LOOP_S + k * STEP_S) / profile.factor,
        )
        put(f"trainsim_run_restarts_total{{{labels}}}", restarts)
        put(f'trainsim_run_info{{{labels}, landscape="quadratic", optimizer="sgd"}}', 1)
        for state in STATES:
            put(f'trainsim_run_state{{{labels}, state="{state}"}}', float(step.state == state))
        for alert in DETECTOR_ALERTS:
            active = alert == "divergence" and step.state == "diverged"
            put(f'trainsim_alert_active{{{labels}, alert="{alert}"}}', float(active))
    return out


def _daemon_series(count: int) -> dict[str, list[float]]:
    labels = f'job="{JOB}", instance="{INSTANCE}"'
    return {
        f"up{{{labels}}}": [1.0] * count,
        f'trainsim_build_info{{{labels}, version="0.1.0"}}': [1.0] * count,
        f"trainsim_config_last_reload_successful{{{labels}}}": [1.0] * count,
        f"trainsim_config_last_reload_success_timestamp_seconds{{{labels}}}": [0.0] * count,
    }


def _input_series(series: dict[str, list[float]]) -> list[dict[str, str]]:
    return [
        {"series": name, "values": " ".join(f"{v:.17g}" for v in values)}
        for name, values in series.items()
    ]


def _firing_times(active: list[float], interval_s: int, for_s: float) -> list[bool]:
    """Prometheus' `for`: firing once the condition has held at every evaluation for for_s."""
    firing: list[bool] = []
    since: int | None = None
    for i, value in enumerate(active):
        since = (since if since is not None else i) if value == 1 else None
        firing.append(since is not None and (i - since) * interval_s >= for_s)
    return firing


def _deriv(times: list[float], values: list[float]) -> float:
    """Least-squares slope, as PromQL's deriv()."""
    n = len(times)
    mean_t = sum(times) / n
    mean_v = sum(values) / n
    cov = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True))
    var = sum((t - mean_t) ** 2 for t in times)
    return cov / var


def _expected_alert(name: str, run: str, value: str) -> dict[str, Any]:
    annotations = dict(_rule(name)["annotations"])
    description = annotations["description"]
    description = re.sub(r"\{\{ \$value[^}]*\}\}", value, description)
    description = description.replace("{{ $labels.run }}", run)
    description = description.replace("{{ $labels.instance }}", INSTANCE)
    annotations["description"] = description
    return {
        "exp_labels": {
            "severity": _rule(name)["labels"]["severity"],
            "job": JOB,
            "instance": INSTANCE,
            "run": run,
        },
        "exp_annotations": annotations,
    }


def _write_promtool_test(
    tmp_path: Path,
    profile: Profile,
    series: dict[str, list[float]],
    cases: list[dict[str, Any]],
    expr_cases: list[dict[str, Any]] | None = None,
) -> Path:
    rule_files = []
    for path in RULE_FILES:
        (tmp_path / path.name).write_text(profile.rules_text(path))
        rule_files.append(path.name)
    test = {
        "rule_files": rule_files,
        "evaluation_interval": f"{profile.interval_s}s",
        "tests": [
            {
                "interval": f"{profile.interval_s}s",
                "input_series": _input_series(series),
                "alert_rule_test": cases,
                "promql_expr_test": expr_cases or [],
            }
        ],
    }
    path = tmp_path / "seed_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False, width=1 << 20))
    return path


def _horizon(profile: Profile) -> int:
    """Samples in three loops of the default config (three simulated hours): every baseline
    window fills, and two restarts are judged."""
    return int(3 * LOOP_S) // (profile.factor * profile.interval_s) + 1


@pytest.fixture(params=[SHIPPED, FAST], ids=lambda p: p.name)
def profile(request: pytest.FixtureRequest) -> Iterator[Profile]:
    """The shipped rules, and the fast profile derived from them (factor 20, 1 s scrapes)."""
    yield request.param


def test_seed_healthy_learning_rates_raise_no_alert_not_even_pending_for_an_hour(
    promtool: str, tmp_path: Path, profile: Profile
) -> None:
    count = _horizon(profile)
    series = _daemon_series(count)
    for rate in HEALTHY_RATES:
        series |= _run_series(f"lr-{rate}", rate, profile, count)
    cases = [
        {"eval_time": f"{i * profile.interval_s}s", "alertname": name, "exp_alerts": []}
        for i in range(count)
        for name in ALERT_NAMES
    ]
    # alert_rule_test only sees firing alerts. ALERTS also holds every pending evaluation, so
    # this checks that no rule's condition was ever true, not just that `for` absorbed it.
    horizon = format_duration((count - 1) * profile.interval_s * 1000)
    never_pending = {
        "expr": f"count_over_time(ALERTS[{horizon}])",
        "eval_time": horizon,
        "exp_samples": [],
    }
    path = _write_promtool_test(tmp_path, profile, series, cases, [never_pending])
    _assert_ok(_run([promtool, "test", "rules", path.name], cwd=tmp_path))


def test_seed_learning_rate_1_1_fires_the_divergence_alerts(
    promtool: str, tmp_path: Path, profile: Profile
) -> None:
    count = _horizon(profile)
    run = "lr-1.1"
    series = _daemon_series(count) | _run_series(run, 1.1, profile, count)
    labels = f'job="{JOB}", instance="{INSTANCE}", run="{run}"'
    active = series[f'trainsim_alert_active{{{labels}, alert="divergence"}}']
    flagged_by_s = (RISING_STEPS + 1) * STEP_S  # ten rising steps, and the step they end on
    assert 1.0 in active[: int(flagged_by_s) // (profile.interval_s * profile.factor) + 2], (
        "the detector should flag lr=1.1 within ~10 steps"
    )
    diverging = _firing_times(
        active, profile.interval_s, profile.scaled_s(_rule("TrainsimRunDiverging")["for"])
    )
    assert any(diverging), "rendering error: the divergence alert can never fire"

    cases: list[dict[str, Any]] = []
    for i in range(count):
        eval_time = f"{i * profile.interval_s}s"
        for name in ALERT_NAMES:
            if name == "TrainsimLossRising":
                continue  # checked once below, where its value is computed
            fires = name == "TrainsimRunDiverging" and diverging[i]
            expected = [_expected_alert(name, run, "1")] if fires else []
            cases.append({"eval_time": eval_time, "alertname": name, "exp_alerts": expected})

    # The loss climbs 1.44x a step for ten steps, then holds: over the first attempt the
    # fitted trend of ln(loss) stays positive for longer than the rule's `for`.
    check_s = 480 // profile.factor  # 8 simulated minutes, 16 steps
    window_s = parse_duration(scale_expr("[10m]", profile.factor)[1:-1]) / 1000
    ln_loss = [math.log(v) for v in series[f"trainsim_loss{{{labels}}}"]]
    times = [i * profile.interval_s for i in range(count)]
    in_window = [i for i, t in enumerate(times) if check_s - window_s <= t <= check_s]
    slope = _deriv([times[i] for i in in_window], [ln_loss[i] for i in in_window])
    cases.append(
        {
            "eval_time": f"{check_s}s",
            "alertname": "TrainsimLossRising",
            "exp_alerts": [_expected_alert("TrainsimLossRising", run, f"{slope:.3g}")],
        }
    )
    path = _write_promtool_test(tmp_path, profile, series, cases)
    _assert_ok(_run([promtool, "test", "rules", path.name], cwd=tmp_path))


# --- Alertmanager routing and inhibition ------------------------------------------------------


def _route(amtool: str, labels: dict[str, str]) -> str:
    """Receiver(s) amtool resolves for an alert with these labels, offline."""
    result = _run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_YML}",
            *(f"{name}={value}" for name, value in labels.items()),
        ]
    )
    _assert_ok(result)
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "TrainsimRunDiverging", "severity": "critical"}, "trainsim-critical"),
        ({"alertname": "TrainsimRunStalled", "severity": "warning"}, "trainsim-warning"),
        ({"alertname": "TrainsimRunOscillating", "severity": "warning"}, "trainsim-warning"),
        ({"alertname": "AnInfoAlert", "severity": "info"}, "trainsim-info"),
        ({"alertname": "SomethingWithoutSeverity"}, "trainsim-default"),
        (
            {"alertname": "TrainsimRunDiverging", "severity": "critical", "drill": "true"},
            "trainsim-drill",
        ),
        (
            {"alertname": "TrainsimRunOscillating", "severity": "warning", "drill": "true"},
            "trainsim-drill",
        ),
        (
            {"alertname": "TrainsimRunDiverging", "severity": "critical", "drill": "false"},
            "trainsim-critical",
        ),
    ],
    ids=[
        "critical",
        "warning",
        "warning-oscillating",
        "info",
        "no-severity",
        "drill-critical",
        "drill-warning",
        "drill-false",
    ],
)
def test_amtool_routes_alert_to_receiver(
    amtool: str, labels: dict[str, str], receiver: str
) -> None:
    assert _route(amtool, labels) == receiver


def test_every_shipped_alert_routes_by_severity_and_drills_divert(amtool: str) -> None:
    for rule in ALERTS:
        labels = {"alertname": rule["alert"], **rule["labels"], "run": "lr-1.1"}
        assert _route(amtool, labels) == f"trainsim-{labels['severity']}", rule["alert"]
        assert _route(amtool, labels | {"drill": "true"}) == "trainsim-drill", rule["alert"]


def _alertmanager_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_YML.read_text())
    return config


def test_drill_notifications_are_marked_and_include_resolutions() -> None:
    receivers = {r["name"]: r for r in _alertmanager_config()["receivers"]}
    (drill,) = receivers["trainsim-drill"]["webhook_configs"]
    assert drill["url"].endswith("/drill")
    assert drill["send_resolved"] is True
    others = [
        hook["url"]
        for name, receiver in receivers.items()
        if name != "trainsim-drill"
        for hook in receiver.get("webhook_configs", [])
    ]
    assert others, "severity receivers need a webhook"
    assert not any(url.endswith("/drill") for url in others)


_MATCHER_RE = re.compile(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager matcher semantics: regexes are anchored; a missing label is ""."""
    for matcher in matchers:
        parsed = _MATCHER_RE.match(matcher)
        assert parsed is not None, f"unexpected matcher syntax {matcher!r}"
        name, op, value = parsed.groups()
        actual = labels.get(name, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def _inhibited(target: dict[str, str], source: dict[str, str]) -> bool:
    for rule in _alertmanager_config()["inhibit_rules"]:
        if (
            _matches(rule["source_matchers"], source)
            and _matches(rule["target_matchers"], target)
            and all(source.get(n, "") == target.get(n, "") for n in rule.get("equal", []))
        ):
            return True
    return False


def _alert(name: str, run: str, **extra: str) -> dict[str, str]:
    labels = {"alertname": name, "job": JOB, "instance": INSTANCE, "run": run}
    severity: str = _rule(name)["labels"]["severity"]
    return labels | {"severity": severity} | extra


@pytest.mark.parametrize("target", ["TrainsimRunStalled", "TrainsimRunOscillating"])
def test_divergence_inhibits_stall_and_oscillation_of_the_same_run_only(target: str) -> None:
    diverging = _alert("TrainsimRunDiverging", "lr-1.1")
    assert _inhibited(_alert(target, "lr-1.1"), diverging)
    assert not _inhibited(_alert(target, "lr-0.05"), diverging), "other runs stay visible"
    assert not _inhibited(_alert(target, "lr-1.1", drill="true"), diverging), (
        "a real alert must not mute a drill, nor the other way round"
    )
    assert not _inhibited(_alert("TrainsimRunHung", "lr-1.1"), diverging)


def test_inhibit_rules_name_only_alerts_that_exist() -> None:
    names = set(ALERT_NAMES)
    for rule in _alertmanager_config()["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            parsed = _MATCHER_RE.match(matcher)
            assert parsed is not None
            label, op, value = parsed.groups()
            if label == "alertname":
                pattern = value if op == "=~" else re.escape(value)
                assert any(re.fullmatch(pattern, n) for n in names), matcher
                if op == "=~":
                    assert all(part in names for part in value.split("|")), matcher


# --- simulator.rules_profile ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("15s", 15_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("1d", 86_400_000),
        ("1w", 604_800_000),
        ("2h0m5s10ms", 7_205_010),
    ],
)
def test_parse_duration_reads_prometheus_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "5", "m", "1m1h", "1.5m", "-5m", "5M", "1m 30s"])
def test_parse_duration_rejects_what_prometheus_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (250, "250ms"), (1_500, "1s500ms"), (90_000, "1m30s"), (86_400_000, "24h")],
)
def test_format_duration_writes_what_parse_duration_reads(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("value", "factor", "expected"),
    [
        ("1m", 20, "3s"),
        ("10m", 20, "30s"),
        ("10s", 20, "1s"),
        ("0s", 20, "0s"),
        ("500ms", 20, "500ms"),
        ("5m", 1, "5m"),
    ],
    ids=["scaled", "scaled-long", "floor-1s", "zero-stays-zero", "never-longer", "factor-1"],
)
def test_scale_for_divides_with_a_floor_of_one_second(
    value: str, factor: int, expected: str
) -> None:
    assert scale_for(value, factor) == expected


@pytest.mark.parametrize(
    ("expr", "factor", "scrape", "expected"),
    [
        ("rate(x[5m])", 10, "1s", "rate(x[30s])"),
        ("rate(x[ 5m ])", 10, "1s", "rate(x[ 30s ])"),
        ("rate(x[1m])", 60, "1s", "rate(x[4s])"),
        ("rate(x[5m])", 20, "15s", "rate(x[1m])"),
        ("max_over_time(f(x)[1h:1m])", 20, "1s", "max_over_time(f(x)[3m:3s])"),
        ("max_over_time(f(x)[30m:])", 20, "1s", "max_over_time(f(x)[1m30s:])"),
        ("max_over_time(f(x)[1h:5s])", 20, "1s", "max_over_time(f(x)[3m:1s])"),
        ("x offset 15m", 20, "1s", "x offset 45s"),
        ("x OFFSET -5m", 20, "1s", "x OFFSET -15s"),
        ("avg_over_time(x[1h] offset 15m)", 20, "1s", "avg_over_time(x[3m] offset 45s)"),
        ("rate(x[1h30m])", 90, "1s", "rate(x[1m])"),
        ("time() - x > 300", 20, "1s", "time() - x > 300"),
    ],
    ids=[
        "range",
        "range-spaces",
        "floor-4-scrapes",
        "floor-15s-scrapes",
        "subquery",
        "subquery-default-step",
        "subquery-step-floor",
        "offset",
        "offset-negative-keyword-case",
        "baseline",
        "compound",
        "thresholds-untouched",
    ],
)
def test_scale_expr_scales_windows_subqueries_and_offsets(
    expr: str, factor: int, scrape: str, expected: str
) -> None:
    assert scale_expr(expr, factor, scrape_interval=scrape) == expected


def test_scale_expr_leaves_strings_and_comments_alone() -> None:
    expr = (
        'label_replace(rate(x{run=~"a[5m]", w=\'offset 5m\'}[5m]), "d", "[1h]", "", "")'
        "  # window [5m], offset 5m\n  or y[10m]"
    )
    assert scale_expr(expr, 10) == (
        'label_replace(rate(x{run=~"a[5m]", w=\'offset 5m\'}[30s]), "d", "[1h]", "", "")'
        "  # window [5m], offset 5m\n  or y[1m]"
    )


@pytest.mark.parametrize("factor", [0, 0.5, math.nan, math.inf])
def test_scale_factor_must_be_at_least_one(factor: float) -> None:
    with pytest.raises(ValueError, match="factor"):
        scale_expr("x[5m]", factor)


def _durations(expr: str) -> list[int]:
    """Every duration in brackets or after `offset`, in order."""
    found = re.findall(r"\[(\w+)(?::(\w*))?\]|offset\s+-?(\w+)", expr, flags=re.I)
    return [parse_duration(d) for group in found for d in group if d]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_fast_profile_scales_every_duration_and_nothing_else(path: Path) -> None:
    factor = 20
    original = yaml.safe_load(path.read_text())
    fast = yaml.safe_load(fast_profile(path.read_text(), factor))
    assert [g["name"] for g in fast["groups"]] == [g["name"] for g in original["groups"]]
    for group, fast_group in zip(original["groups"], fast["groups"], strict=True):
        assert len(group["rules"]) == len(fast_group["rules"])
        for rule, fast_rule in zip(group["rules"], fast_group["rules"], strict=True):
            assert set(rule) == set(fast_rule)
            for key in set(rule) - {"expr", "for"}:  # names, labels, annotations
                assert fast_rule[key] == rule[key], key
            if "for" in rule:
                assert fast_rule["for"] == scale_for(rule["for"], factor)
                assert parse_duration(fast_rule["for"]) <= max(
                    parse_duration(rule["for"]) / factor, 1_000
                )
            before, after = _durations(rule["expr"]), _durations(fast_rule["expr"])
            assert len(before) == len(after), fast_rule["expr"]
            for old, new in zip(before, after, strict=True):
                assert new == min(old, max(round(old / factor), 1_000)) or new == min(
                    old, max(round(old / factor), 4_000)
                ), (rule["expr"], fast_rule["expr"])
            # Outside durations, the expression text is unchanged.
            strip = re.compile(r"\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*")
            assert strip.sub("D", fast_rule["expr"]) == strip.sub("D", rule["expr"])


def test_fast_profile_of_the_shipped_rules_passes_promtool_check_rules(
    promtool: str, tmp_path: Path
) -> None:
    paths = []
    for path in RULE_FILES:
        fast = tmp_path / path.name
        fast.write_text(fast_profile(path.read_text(), 20, scrape_interval="1s"))
        paths.append(str(fast))
    result = _run([promtool, "check", "rules", *paths])
    _assert_ok(result)
    expected_rules = sum(
        len(g["rules"]) for p in RULE_FILES for g in yaml.safe_load(p.read_text())["groups"]
    )
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == expected_rules


def test_fast_profile_scales_a_group_interval_down_to_the_scrape_interval() -> None:
    text = "groups:\n- name: g\n  interval: 1m\n  rules:\n  - record: r\n    expr: rate(x[5m])\n"
    fast = yaml.safe_load(fast_profile(text, 120))
    assert fast["groups"][0]["interval"] == "1s"
    assert fast["groups"][0]["rules"][0]["expr"] == "rate(x[4s])"


@pytest.mark.parametrize(
    "text",
    ["[]", "groups: 3", "groups:\n- rules: {}\n", "groups:\n- rules:\n  - alert: A\n"],
    ids=["not-a-mapping", "groups-not-a-list", "rules-not-a-list", "missing-expr"],
)
def test_fast_profile_rejects_text_that_is_not_a_rule_file(text: str) -> None:
    with pytest.raises(ValueError):
        fast_profile(text, 20)


# --- simulator.rules_profile: Alertmanager and Prometheus configs of a local fast stack ----------


def _routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield route
    for child in route.get("routes", []):
        yield from _routes(child)


def test_fast_alertmanager_config_divides_every_route_timing_with_a_floor_of_one_second() -> None:
    shipped = _alertmanager_config()
    fast = yaml.safe_load(fast_alertmanager_config(ALERTMANAGER_YML.read_text(), 20))
    timings = [
        {k: r[k] for k in ("group_wait", "group_interval", "repeat_interval") if k in r}
        for r in _routes(fast["route"])
    ]
    assert timings == [
        {"group_wait": "1s500ms", "group_interval": "15s", "repeat_interval": "12m"},  # root
        {"group_wait": "1s", "group_interval": "1s500ms", "repeat_interval": "3m"},  # drill
        {"group_wait": "1s", "repeat_interval": "3m"},  # critical: 10s / 20 -> floor 1s
        {},  # warning inherits the root's
        {"repeat_interval": "1h12m"},  # info
    ]
    # Nothing but the timings changes.
    for original, scaled in zip(_routes(shipped["route"]), _routes(fast["route"]), strict=True):
        for key in set(original) - {"group_wait", "group_interval", "repeat_interval", "routes"}:
            assert scaled[key] == original[key], key
    assert fast["inhibit_rules"] == shipped["inhibit_rules"]
    assert fast["receivers"] == shipped["receivers"]


def test_fast_alertmanager_config_starts_unset_root_timings_from_alertmanagers_defaults() -> None:
    text = "route:\n  receiver: r\nreceivers:\n- name: r\n"
    route = yaml.safe_load(fast_alertmanager_config(text, 60))["route"]
    assert route == {
        "receiver": "r",
        "group_wait": "1s",  # 30s / 60 = 500ms, floor 1s
        "group_interval": "5s",
        "repeat_interval": "4m",
    }


def test_fast_alertmanager_config_points_every_webhook_at_one_receiver_keeping_its_path() -> None:
    fast = yaml.safe_load(
        fast_alertmanager_config(ALERTMANAGER_YML.read_text(), 20,
                                 webhook_url="http://127.0.0.1:8099")
    )
    urls = {
        receiver["name"]: hook["url"]
        for receiver in fast["receivers"]
        for hook in receiver.get("webhook_configs", [])
    }
    assert urls == {
        "trainsim-default": "http://127.0.0.1:8099/alerts/default",
        "trainsim-critical": "http://127.0.0.1:8099/alerts/critical",
        "trainsim-warning": "http://127.0.0.1:8099/alerts/warning",
        "trainsim-info": "http://127.0.0.1:8099/alerts/info",
        "trainsim-drill": "http://127.0.0.1:8099/drill",
    }


def test_fast_alertmanager_config_of_the_shipped_config_passes_amtool(
    amtool: str, tmp_path: Path
) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(
        fast_alertmanager_config(ALERTMANAGER_YML.read_text(), 20,
                                 webhook_url="http://127.0.0.1:8099")
    )
    _assert_ok(_run([amtool, "check-config", str(path)]))


@pytest.mark.parametrize(
    ("text", "factor", "webhook_url"),
    [
        ("route: {receiver: r}", 0.5, None),
        ("route: {receiver: r}", 20, "127.0.0.1:8099"),
        ("route: {receiver: r}", 20, "ftp://127.0.0.1:8099"),
        ("[]", 20, None),
        ("receivers: []", 20, None),
        ("route: {receiver: r, group_wait: soon}", 20, None),
    ],
    ids=["factor", "url-without-scheme", "url-scheme", "not-a-mapping", "no-route", "bad-duration"],
)
def test_fast_alertmanager_config_rejects_bad_input(
    text: str, factor: float, webhook_url: str | None
) -> None:
    with pytest.raises(ValueError):
        fast_alertmanager_config(text, factor, webhook_url=webhook_url)


def _local_prometheus_config() -> dict[str, Any]:
    text = fast_prometheus_config(
        PROMETHEUS_YML.read_text(), target="127.0.0.1:9310", alertmanager="127.0.0.1:9093"
    )
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def test_fast_prometheus_config_points_the_job_and_alerts_at_local_addresses() -> None:
    shipped = yaml.safe_load(PROMETHEUS_YML.read_text())
    local = _local_prometheus_config()
    assert local["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = local["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9310"]}]
    assert local["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]
    }
    # The drill relabelling and the rule files are the shipped ones.
    assert job["metric_relabel_configs"] == shipped["scrape_configs"][0]["metric_relabel_configs"]
    assert local["rule_files"] == shipped["rule_files"]


def test_fast_prometheus_config_passes_promtool_check_config(
    promtool: str, tmp_path: Path
) -> None:
    (tmp_path / "rules").mkdir()
    for path in RULE_FILES:
        (tmp_path / "rules" / path.name).write_text(fast_profile(path.read_text(), 20))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_local_prometheus_config()))
    result = _run([promtool, "check", "config", str(config)])
    _assert_ok(result)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("job", "interval"), [("other", "1s"), ("trainsim", "0s")], ids=["unknown-job", "zero"]
)
def test_fast_prometheus_config_rejects_an_unknown_job_or_a_zero_interval(
    job: str, interval: str
) -> None:
    with pytest.raises(ValueError):
        fast_prometheus_config(
            PROMETHEUS_YML.read_text(), target="a:1", alertmanager="b:2", interval=interval,
            job=job,
        )


@pytest.mark.parametrize(
    ("run", "drill"),
    [("drill-lr-spike", "true"), ("drill-x", "true"), ("lr-0.2", None), ("my-drill-x", None),
     ("drill-", None)],
)
def test_runs_named_drill_star_are_labelled_drill_true_by_the_shipped_scrape_config(
    run: str, drill: str | None
) -> None:
    (job,) = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    labels = {"run": run}
    for rule in job["metric_relabel_configs"]:  # Prometheus' `replace` action; regex anchored
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        if re.fullmatch(rule["regex"], value):
            labels[rule["target_label"]] = rule["replacement"]
    assert labels.get("drill") == drill
