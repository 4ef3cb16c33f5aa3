"""Properties over generated configs: whatever `trainsim validate` accepts, however hostile its
names and numbers, the daemon exports an exposition that `promtool check metrics` accepts.

Hypothesis writes the configs as YAML text (names at the edge of the name rule, learning
rates, starting points and noise from tiny to huge, every landscape, optimizer and schedule
kind, faults at their bounds); each one goes through the real config reader, and those it
accepts are stepped by a real Daemon on a driven clock and scraped in both formats.
"""

from __future__ import annotations

import gzip
import math
import subprocess
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simulator.config import ConfigError, load_config
from simulator.daemon import Daemon
from simulator.schema.fields import MAX_NAME_LENGTH
from tests.conftest import need_binary

NAME_ALPHABET = "abcXYZ019_.-"
names = st.text(NAME_ALPHABET, min_size=1, max_size=MAX_NAME_LENGTH)
# Floats across the whole range a YAML number can say, including the edges a config may hit.
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 1e-308, 5e-324, 1e308, -1e308, 1.0, 1e-12, 1e12]))
positive = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False)

LANDSCAPES = [
    {},
    {"kind": "quadratic", "dims": 3, "condition_number": 100, "rotate": True},
    {"kind": "rosenbrock"},
    {"kind": "plateau", "dims": 2},
    {"kind": "noisy_quadratic", "dims": 20, "batch_size": 4},
    {"kind": "logistic_regression", "data_seed": 1},
]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]
FAULTS = [
    {"kind": "drift", "at": "2s", "duration": "3s", "shift": 100},
    {"kind": "lr_spike", "at": "1s", "duration": "2s", "factor": 1e6},
    {"kind": "gradient_explosion", "at": "3s", "steps": 2, "factor": 1e6},
    {"kind": "noise_burst", "at": "2s", "duration": "2s", "factor": 1000, "sigma": 1000},
    {"kind": "nan", "at": "4s", "duration": "1s"},
    {"kind": "crash", "at": "5s", "duration": "2s"},
    {"kind": "plateau", "at": "1s", "duration": "5s"},
]


@st.composite
def configs(draw: Any) -> str:
    """A config as YAML text: up to four runs, each with hostile but possibly valid values."""
    runs = []
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        landscape = draw(st.sampled_from(LANDSCAPES))
        run: dict[str, Any] = {
            "name": name,
            "optimizer": {"kind": draw(st.sampled_from(OPTIMIZERS)),
                          "learning_rate": draw(positive)},
            "step_interval": draw(st.sampled_from(["100ms", "1s", "250ms"])),
            "steps": draw(st.integers(1, 50)),
            "loop": draw(st.booleans()),
        }
        if landscape:
            run["landscape"] = landscape
        if draw(st.booleans()):
            run["init"] = draw(numbers)
        if draw(st.booleans()):
            run["loss_noise"] = draw(st.floats(0, 1e300))
        if draw(st.booleans()):
            run["gradient_noise"] = draw(st.floats(0, 1e300))
        if draw(st.booleans()):
            run["faults"] = draw(st.lists(st.sampled_from(FAULTS), max_size=3))
        runs.append(run)
    return yaml.safe_dump({"runs": runs}, sort_keys=False)


def _promtool_accepts(body: bytes) -> None:
    res = subprocess.run([need_binary("promtool"), "check", "metrics"], input=body,
                         capture_output=True, timeout=30)
    # promtool's linter warns about conventions (exit 3 is a lint problem, not a parse error);
    # a body Prometheus could not ingest fails with "error while linting" or a parse error.
    assert b"error while linting" not in res.stderr and b"text format parsing error" \
        not in res.stderr, res.stderr.decode()[:2000]


@pytest.mark.realstack
@pytest.mark.filterwarnings("error::RuntimeWarning")  # overflows are handled, never warned
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(text=configs(), seconds=st.sampled_from([0.0, 0.5, 3.0, 7.5]))
def test_any_valid_config_exports_what_promtool_accepts(text: str, seconds: float) -> None:
    try:
        config = load_config(text, "generated.yaml")
    except ConfigError:
        assume(False)
        return
    now = [0.0]
    daemon = Daemon(config, clock=lambda: now[0], wall=lambda: 1.7e9 + now[0],
                    log=structlog.wrap_logger(structlog.ReturnLogger()))
    now[0] = seconds
    daemon.tick()
    text_body = daemon.exposition(openmetrics=False, gzipped=False)
    _promtool_accepts(text_body)
    # (the process' own series, CPU seconds and the like, move between two renders)
    assert gzip.decompress(daemon.exposition(openmetrics=False, gzipped=True)).startswith(
        text_body[:text_body.index(b"# HELP process_")])
    om = daemon.exposition(openmetrics=True, gzipped=False).decode()
    assert om.endswith("# EOF\n")
    for line in text_body.decode().splitlines():
        if line and not line.startswith("#"):
            value = line.rsplit(" ", 1)[1]
            assert value in ("NaN", "+Inf", "-Inf") or math.isfinite(float(value)), line
