"""YAML configuration -> typed, validated, immutable run specifications.

Every mistake in a file is collected and reported together, one line each, as
``FILE:LINE: path.to.key: message``. Line numbers come from the YAML node marks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]+$")
_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Guards against hostile documents: alias expansion ("billion laughs") and nesting depth.
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_STEPS = 10**12
MAX_SEED = 2**63 - 1
MAX_DIMS = 10_000
# A rotated quadratic keeps a dims x dims matrix per run.
MAX_ROTATE_DIMS = 256
MAX_SAMPLES = 100_000


# --------------------------------------------------------------------------- typed model


@dataclass(frozen=True)
class Quadratic:
    """J(w) = 1/2 (w - c)^T H (w - c) + b, H = Q diag(h) Q^T (Q = I unless ``rotate``).

    The eigenvalues h come from ``curvatures``, from ``condition_number`` (log-spaced between
    1 and kappa), or from ``a`` (h = 2a in every direction): the seed's 1-D bowl
    J(w) = a (w - c)^2 + b is the case dims = 1.
    """

    a: float = 1.0
    c: float | tuple[float, ...] = 2.0
    b: float = 1.0
    curvatures: tuple[float, ...] | None = None
    condition_number: float | None = None
    rotate: bool = False
    dims: int = 1
    kind: str = "quadratic"

    def eigenvalues(self) -> tuple[float, ...]:
        """The diagonal h of H in its eigenbasis, one per dimension."""
        if self.curvatures is not None:
            return self.curvatures
        if self.condition_number is not None:
            d = self.dims
            return tuple(self.condition_number ** (i / (d - 1)) if d > 1 else 1.0
                         for i in range(d))
        return (2.0 * self.a,) * self.dims

    @property
    def variant(self) -> tuple[object, ...]:
        """What runs must share to be stepped together (besides kind and dims)."""
        return (self.rotate,)


@dataclass(frozen=True)
class Rosenbrock:
    """J(w) = sum_{i<d} b (w_{i+1} - w_i^2)^2 + (a - w_i)^2; minimum 0 at (1, ..., 1) for a = 1
    (in 2-D at (a, a^2))."""

    a: float = 1.0
    b: float = 100.0
    dims: int = 2
    kind: str = "rosenbrock"

    @property
    def variant(self) -> tuple[object, ...]:
        """Nothing beyond kind and dims."""
        return ()


@dataclass(frozen=True)
class NoisyQuadratic:
    """Zhang et al. 2019: J = 1/2 sum_i h_i (w_i - c_i)^2, h_i = i^-power, and minibatch
    gradient noise with covariance H / batch_size."""

    dims: int = 100
    power: float = 1.0
    batch_size: float = 1.0
    c: float | tuple[float, ...] = 0.0
    kind: str = "noisy_quadratic"

    @property
    def variant(self) -> tuple[object, ...]:
        """Runs stepped together share one curvature vector and noise scale."""
        return (self.power, self.batch_size)

    def eigenvalues(self) -> tuple[float, ...]:
        """h_i = i^-power for i = 1..dims."""
        return tuple(float(i) ** -self.power for i in range(1, self.dims + 1))


@dataclass(frozen=True)
class Plateau:
    """J(w) = scale * (1 - exp(-|w - c|^2 / width^2)) + b: flat far from c, a well around it."""

    scale: float = 1.0
    width: float = 1.0
    c: float | tuple[float, ...] = 0.0
    b: float = 0.0
    dims: int = 1
    kind: str = "plateau"

    @property
    def variant(self) -> tuple[object, ...]:
        """Nothing beyond kind and dims."""
        return ()


@dataclass(frozen=True)
class LogisticRegression:
    """Logistic regression trained by minibatch SGD on a seeded synthetic data set."""

    features: int = 10
    samples: int = 1000
    batch_size: int = 32
    validation_fraction: float = 0.2
    data_seed: int = 0
    kind: str = "logistic_regression"

    @property
    def dims(self) -> int:
        """One weight per feature."""
        return self.features

    @property
    def validation_samples(self) -> int:
        """Size of the held-out split (at least one sample)."""
        return max(1, round(self.samples * self.validation_fraction))

    @property
    def variant(self) -> tuple[object, ...]:
        """Data shapes that runs stepped together must share."""
        return (self.samples - self.validation_samples, self.validation_samples,
                self.batch_size)


Landscape = Quadratic | Rosenbrock | NoisyQuadratic | Plateau | LogisticRegression


@dataclass(frozen=True)
class Optimizer:
    """An optimizer with torch.optim's update rule and defaults; docs/config.md has each rule.

    ``momentum`` and ``nesterov`` are torch.optim.SGD with momentum 0.9 (and nesterov=True).
    """

    learning_rate: float
    kind: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    alpha: float = 0.99
    centered: bool = False

    @property
    def algorithm(self) -> str:
        """The update rule that runs stepped together share: ``sgd`` (no momentum),
        ``sgd_momentum``, ``adam``, ``adamw`` or ``rmsprop``."""
        if self.kind in _SGD_FAMILY:
            return "sgd_momentum" if self.momentum else "sgd"
        return self.kind


SGD = Optimizer  # the foundation's name for the plain-SGD spec


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: lr_t = warmup(t) * main(max(t - warmup_steps, 0)), t the number
    of updates already taken; docs/config.md has the formulas."""

    kind: str = "constant"
    step_size: int = 1
    gamma: float = 1.0
    t_max: int = 1
    eta_min: float = 0.0
    warmup_steps: int = 0
    warmup_start_factor: float = 1.0 / 3.0

    @property
    def label(self) -> str:
        """The ``schedule`` label of trainsim_run_info."""
        return f"warmup+{self.kind}" if self.warmup_steps else self.kind


@dataclass(frozen=True)
class Detection:
    """Per-run detector thresholds; see docs/config.md for what each one does."""

    divergence_loss: float = 1e5
    divergence_parameter: float = 1e3
    divergence_growth_steps: int = 10
    divergence_growth_factor: float = 2.0
    stall_window: int = 20
    stall_min_improvement: float = 1e-4
    converged_gradient_norm: float = 1e-3
    oscillation_flip_steps: int = 10
    oscillation_min_improvement: float = 1e-2
    # issue 3: smoothed detectors and hysteresis (docs/detection.md)
    divergence_growth_rate: float = 0.05
    smoothing_steps: int = 10
    stall_noise_z: float = 3.0
    oscillation_flip_cosine: float = 0.5
    clear_steps: int = 10


# Fault kinds and their parameters with defaults; docs/faults.md says what each one does.
FAULT_PARAMS: dict[str, dict[str, float]] = {
    "lr_spike": {"factor": 10.0},
    "gradient_explosion": {"factor": 100.0},
    "nan": {},
    "plateau": {"factor": 0.01},
    # Signed: the seed's runs approach their optimum from above, so a negative shift moves
    # it away from them and their loss climbs back.
    "drift": {"shift": -3.0},
    "noise_burst": {"factor": 10.0, "sigma": 1.0},
    "slow_steps": {"factor": 4.0},
    "hang": {},
    "crash": {},
}
FAULT_KINDS = tuple(FAULT_PARAMS)
# Kinds that need a finite window: a drift ramps over it, a crash ends with the restart.
DEFAULT_DURATION = {"drift": 60.0, "crash": 30.0}


@dataclass(frozen=True)
class FaultSpec:
    """A fault on a run's timeline: ``at`` seconds after the run started, for ``duration``
    seconds (``inf``: until cleared), with the kind's parameters."""

    kind: str
    at: float
    duration: float
    params: tuple[tuple[str, float], ...] = ()

    def param(self, name: str) -> float:
        """A parameter's value (the kind's default when not given)."""
        return dict(self.params).get(name, FAULT_PARAMS[self.kind][name])


@dataclass(frozen=True)
class RunSpec:
    """One simulated training run, fully resolved (defaults merged)."""

    name: str
    landscape: Landscape
    init: tuple[float, ...]
    optimizer: Optimizer
    steps: int
    step_interval: float
    loop: bool
    seed: int
    detect: Detection
    faults: tuple[FaultSpec, ...] = ()
    schedule: Schedule = Schedule()
    clip_grad_norm: float | None = None
    gradient_noise: float = 0.0
    loss_noise: float = 0.0

    @property
    def dims(self) -> int:
        """Number of parameters of the run."""
        return len(self.init)


@dataclass(frozen=True)
class Config:
    """A validated configuration: the runs in file order, then the fleet's generated runs."""

    runs: tuple[RunSpec, ...]
    source: str = "<embedded>"
    # Warn when the daemon would expose more series than this (None: never).
    series_limit: int | None = None


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One mistake in a configuration file."""

    line: int
    path: str
    message: str
    source: str = field(default="<config>", compare=False)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}:{self.line}: {where}{self.message}"


class ConfigError(Exception):
    """A configuration with one or more mistakes; ``str()`` gives one line per mistake."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# --------------------------------------------------------------------------- YAML with marks


class LocMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int
    lines: dict[Any, int]


class LocList(list[Any]):
    """A YAML sequence that remembers the line of itself and of each item."""

    line: int
    lines: list[int]


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _convert(
    node: yaml.Node, constructor: yaml.SafeLoader, budget: _Budget, depth: int,
    issues: list[ConfigIssue], source: str,
) -> Any:
    budget.nodes += 1
    if budget.nodes > MAX_NODES:
        raise _FatalError(_line(node), f"document too large: more than {MAX_NODES} nodes "
                     "after alias expansion")
    if depth > MAX_DEPTH:
        raise _FatalError(_line(node), f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise _FatalError(_line(node), f"unsupported YAML tag {node.tag!r}")
    if isinstance(node, yaml.MappingNode):
        out = LocMap()
        out.line, out.lines = _line(node), {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _FatalError(_line(key_node), "YAML merge keys (<<) are not supported")
            key = _convert(key_node, constructor, budget, depth + 1, issues, source)
            if not isinstance(key, str | int | float | bool) and key is not None:
                issues.append(ConfigIssue(_line(key_node), "", "mapping keys must be scalars",
                                          source))
                continue
            if key in out:
                issues.append(ConfigIssue(_line(key_node), str(key),
                                          f"duplicate key (first at line {out.lines[key]})",
                                          source))
                continue
            out[key] = _convert(value_node, constructor, budget, depth + 1, issues, source)
            out.lines[key] = _line(key_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LocList()
        seq.line, seq.lines = _line(node), []
        for item in node.value:
            seq.append(_convert(item, constructor, budget, depth + 1, issues, source))
            seq.lines.append(_line(item))
        return seq
    return constructor.construct_object(node, deep=True)


class _FatalError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _check_depth(text: str) -> None:
    """Reject deep nesting from the event stream (iterative) before the recursive composer."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise _FatalError(int(mark.line) + 1 if mark is not None else 1,
                                  f"nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def parse_yaml(data: bytes | str, source: str) -> Any:
    """Parse one YAML document into plain values that remember their line numbers."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            bad = f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
            raise ConfigError([ConfigIssue(line, "", bad, source)]) from None
    else:
        text = data
    issues: list[ConfigIssue] = []
    try:
        _check_depth(text)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError([ConfigIssue(1, "", "empty document: expected a mapping with "
                                               "a 'runs' list", source)])
            value = _convert(node, loader, _Budget(), 0, issues, source)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        issue = ConfigIssue(line, "", f"YAML syntax error: {problem}", source)
        raise ConfigError([issue]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(1, "", f"YAML error: {exc}", source)]) from None
    except _FatalError as exc:
        raise ConfigError([ConfigIssue(exc.line, "", exc.message, source)]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(1, "", "nesting too deep", source)]) from None
    if issues:
        raise ConfigError(issues)
    return value


# --------------------------------------------------------------------------- validation


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus-style duration (``250ms``, ``1m30s``) or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 250ms, 1s or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value.strip()):
        seconds = sum(float(n) * _UNIT_SECONDS[u]
                      for n, u in _DURATION_PART_RE.findall(value.strip()))
    else:
        raise ValueError(f"must be a duration like 250ms, 1s or 2m, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be finite, got {value!r}")
    return seconds


class _Reader:
    """Reads typed values out of a located mapping, recording every mistake."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []

    def error(self, line: int, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(line, path, message, self.source))

    def mapping(self, value: Any, line: int, path: str) -> LocMap | None:
        if isinstance(value, LocMap):
            return value
        self.error(line, path, f"must be a mapping, got {_kind(value)}")
        return None

    def unknown_keys(self, m: LocMap, path: str, allowed: Iterator[str] | tuple[str, ...]) -> None:
        known = set(allowed)
        for key in m:
            if key not in known:
                hint = ", ".join(sorted(known))
                self.error(m.lines[key], _join(path, str(key)),
                           f"unknown key (expected one of: {hint})")

    def mappings(self, seq: LocList, path: str) -> Iterator[tuple[str, LocMap]]:
        """Each item of a list that is a mapping, with its path; other items are mistakes."""
        for i, item in enumerate(seq):
            item_path = f"{path}[{i}]"
            m = self.mapping(item, seq.lines[i], item_path)
            if m is not None:
                yield item_path, m

    def section(self, m: LocMap, key: str, path: str, allowed: tuple[str, ...]) -> LocMap:
        """The optional sub-mapping ``m[key]`` with only ``allowed`` keys (others are
        mistakes); an empty mapping when it is absent or not a mapping."""
        if key in m:
            sub = self.mapping(m[key], m.lines[key], path)
            if sub is not None:
                self.unknown_keys(sub, path, allowed)
                return only(sub, allowed)
        empty = LocMap()
        empty.line, empty.lines = m.line, {}
        return empty

    def take(self, m: LocMap, path: str, key: str, convert: Callable[[Any], Any],
             default: Any = None, required: bool = False) -> Any:
        if key not in m:
            if required:
                self.error(m.line, _join(path, key), "required key is missing")
            return default
        try:
            return convert(m[key])
        except ValueError as exc:
            self.error(m.lines[key], _join(path, key), str(exc))
            return default


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, LocMap):
        return "a mapping"
    if isinstance(value, LocList):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _number(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be a number, got {_kind(value)}")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"must be a finite number, got {value!r}") from None
    if isinstance(value, str):  # PyYAML reads 1e5 (no dot) as a string; accept it as a number
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"must be a number, got {_kind(value)}")


def finite(value: Any) -> float:
    """A finite float."""
    x = _number(value)
    if not math.isfinite(x):
        raise ValueError(f"must be finite, got {value!r}")
    return x


def bounded(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False, of: Callable[[Any], float] = finite,
            ) -> Callable[[Any], float]:
    """A converter (``of``: a finite number by default, or a duration) checked against a range;
    its error says the range, e.g. ``must be > 0, got -0.1``."""
    if lo is not None and hi is not None:
        if lo_open and hi_open:
            text = f"strictly between {lo:g} and {hi:g}"
        elif lo_open:
            text = f"> {lo:g} and <= {hi:g}"
        else:
            text = f"between {lo:g} and {hi:g}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        text = f"{'<' if hi_open else '<='} {hi:g}"

    def convert(value: Any) -> float:
        x = of(value)
        if ((lo is not None and (x <= lo if lo_open else x < lo))
                or (hi is not None and (x >= hi if hi_open else x > hi))):
            raise ValueError(f"must be {text}, got {value!r}")
        return x
    return convert


positive = bounded(0, lo_open=True)
non_negative = bounded(0)
_unit = bounded(0, 1)
_open_unit = bounded(0, 1, lo_open=True, hi_open=True)
_half_open_unit = bounded(0, 1, lo_open=True)
_at_least_one = bounded(1)


def _betas(value: Any) -> tuple[float, float]:
    if not isinstance(value, LocList) or len(value) != 2:
        raise ValueError(f"must be a list of two numbers [beta1, beta2], got {_kind(value)}")
    b1, b2 = finite(value[0]), finite(value[1])
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"each beta must be in [0, 1), got [{b1}, {b2}]")
    return (b1, b2)


def _scalar_or_list(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, LocList):
        if not value or len(value) > MAX_DIMS:
            raise ValueError(f"must be a number or a list of 1 to {MAX_DIMS} numbers, "
                             f"got a list of {len(value)}")
        return tuple(finite(v) for v in value)
    return finite(value)


def _positive_list(value: Any) -> tuple[float, ...]:
    if not isinstance(value, LocList) or not value or len(value) > MAX_DIMS:
        raise ValueError(f"must be a list of 1 to {MAX_DIMS} numbers > 0, got {_kind(value)}")
    return tuple(positive(v) for v in value)


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    """A converter to an int in [lo, hi] (floats with a fraction and bools are rejected)."""
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value
    return convert


def boolean(value: Any) -> bool:
    """A YAML boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_kind(value)}")
    return value


def interval(value: Any) -> float:
    """A step interval: a duration of at least 1ms."""
    seconds = parse_duration(value)
    if seconds < 0.001:
        raise ValueError(f"must be at least 1ms, got {value!r}")
    return seconds


_RUN_KEYS = ("name", "landscape", "init", "optimizer", "steps", "step_interval", "loop", "seed",
             "detect", "faults", "schedule", "clip_grad_norm", "gradient_noise", "loss_noise")
_DEFAULTS_KEYS = tuple(k for k in _RUN_KEYS if k != "name")
_LANDSCAPE_KEYS: dict[str, tuple[str, ...]] = {
    "quadratic": ("a", "b", "c", "curvatures", "condition_number", "rotate", "dims"),
    "rosenbrock": ("a", "b", "dims"),
    "noisy_quadratic": ("dims", "power", "batch_size", "c"),
    "plateau": ("scale", "width", "c", "b", "dims"),
    "logistic_regression": ("features", "samples", "batch_size", "validation_fraction",
                            "data_seed"),
}
_LANDSCAPE_KINDS = tuple(_LANDSCAPE_KEYS)
_SGD_FAMILY = ("sgd", "momentum", "nesterov")
_OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("learning_rate", "momentum", "dampening", "nesterov", "weight_decay"),
    "momentum": ("learning_rate", "momentum", "dampening", "weight_decay"),
    "nesterov": ("learning_rate", "momentum", "weight_decay"),
    "adam": ("learning_rate", "betas", "eps", "weight_decay"),
    "adamw": ("learning_rate", "betas", "eps", "weight_decay"),
    "rmsprop": ("learning_rate", "alpha", "eps", "weight_decay", "momentum", "centered"),
}
_OPTIMIZER_KINDS = tuple(_OPTIMIZER_KEYS)
# torch.optim's default learning rates; the SGD family has to be given one.
_DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-2}
_SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("step_size", "gamma"),
    "exponential": ("gamma",),
    "cosine": ("T_max", "eta_min"),
}
_SCHEDULE_KINDS = tuple(_SCHEDULE_KEYS)


def only(m: LocMap, keys: tuple[str, ...]) -> LocMap:
    """The entries of ``m`` whose key is in ``keys``, lines kept."""
    out = LocMap({k: v for k, v in m.items() if k in keys})
    out.line, out.lines = m.line, {k: m.lines[k] for k in out}
    return out


def _merge(defaults: LocMap, run: LocMap) -> LocMap:
    """Deep-merge ``run`` over ``defaults``; keys keep the line where their value was written."""
    out = LocMap()
    out.line, out.lines = run.line, {}
    for src in (defaults, run):
        for key, value in src.items():
            if isinstance(value, LocMap) and isinstance(out.get(key), LocMap):
                value = _merge(out[key], value)
            out[key] = value
            out.lines[key] = src.lines[key]
    return out


def _kind_of(r: _Reader, m: LocMap, path: str, what: str, kinds: tuple[str, ...],
             default: str) -> str | None:
    kind = m.get("kind", default)
    if not isinstance(kind, str) or kind not in kinds:
        r.error(m.lines.get("kind", m.line), _join(path, "kind"),
                f"unknown {what} kind {kind!r} (expected one of: {', '.join(kinds)})")
        return None
    return kind


def _landscape(r: _Reader, value: Any, line: int, path: str) -> Landscape:
    m = r.mapping(value, line, path)
    if m is None:
        return Quadratic()
    kind = _kind_of(r, m, path, "landscape", _LANDSCAPE_KINDS, "quadratic")
    if kind is None:
        return Quadratic()
    r.unknown_keys(m, path, ("kind", *_LANDSCAPE_KEYS[kind]))
    if kind == "quadratic":
        return _quadratic(r, m, path)
    if kind == "logistic_regression":
        d = LogisticRegression()
        samples = r.take(m, path, "samples", integer(2, MAX_SAMPLES), d.samples)
        spec = LogisticRegression(
            features=r.take(m, path, "features", integer(1, MAX_DIMS), d.features),
            samples=samples,
            batch_size=r.take(m, path, "batch_size", integer(1, MAX_SAMPLES), d.batch_size),
            validation_fraction=r.take(m, path, "validation_fraction", _open_unit,
                                       d.validation_fraction),
            data_seed=r.take(m, path, "data_seed", integer(0, MAX_SEED), d.data_seed))
        if spec.samples - spec.validation_samples < 1:
            r.error(m.lines.get("validation_fraction", m.line),
                    _join(path, "validation_fraction"), "leaves no training samples")
        return spec
    if kind == "rosenbrock":
        return Rosenbrock(a=r.take(m, path, "a", finite, 1.0),
                          b=r.take(m, path, "b", positive, 100.0),
                          dims=r.take(m, path, "dims", integer(2, MAX_DIMS), 2))
    c = r.take(m, path, "c", _scalar_or_list, 0.0)
    dims = _dims(r, m, path, [("c", c)], 100 if kind == "noisy_quadratic" else 1)
    if kind == "noisy_quadratic":
        return NoisyQuadratic(dims=dims, power=r.take(m, path, "power", non_negative, 1.0),
                              batch_size=r.take(m, path, "batch_size", positive, 1.0), c=c)
    return Plateau(scale=r.take(m, path, "scale", positive, 1.0),
                   width=r.take(m, path, "width", positive, 1.0),
                   c=c, b=r.take(m, path, "b", finite, 0.0), dims=dims)


def _dims(r: _Reader, m: LocMap, path: str, lists: list[tuple[str, Any]], default: int) -> int:
    """Dimensions from ``dims``, else from the first list-valued key; lists must agree."""
    dims = r.take(m, path, "dims", integer(1, MAX_DIMS), None)
    lengths = [(key, len(v)) for key, v in lists if isinstance(v, tuple)]
    if dims is None:
        dims = lengths[0][1] if lengths else default
    for key, n in lengths:
        if n != dims:
            r.error(m.lines[key], _join(path, key),
                    f"has {n} entries but the landscape has {dims} dimensions")
    return int(dims)


def _quadratic(r: _Reader, m: LocMap, path: str) -> Quadratic:
    given = [k for k in ("a", "curvatures", "condition_number") if k in m]
    for k in given[1:]:
        r.error(m.lines[k], _join(path, k), f"give only one of {', '.join(given)}")
    curvatures = r.take(m, path, "curvatures", _positive_list, None)
    c = r.take(m, path, "c", _scalar_or_list, 2.0)
    dims = _dims(r, m, path, [("curvatures", curvatures), ("c", c)], 1)
    rotate = r.take(m, path, "rotate", boolean, False)
    if rotate and dims > MAX_ROTATE_DIMS:
        r.error(m.lines["rotate"], _join(path, "rotate"),
                f"supported up to {MAX_ROTATE_DIMS} dimensions, got {dims}")
    return Quadratic(a=r.take(m, path, "a", positive, 1.0), c=c,
                     b=r.take(m, path, "b", finite, 1.0), curvatures=curvatures,
                     condition_number=r.take(m, path, "condition_number", _at_least_one, None),
                     rotate=rotate, dims=dims)


def _optimizer(r: _Reader, value: Any, line: int, path: str) -> Optimizer:
    m = r.mapping(value, line, path)
    if m is None:
        return Optimizer(learning_rate=0.1)
    kind = _kind_of(r, m, path, "optimizer", _OPTIMIZER_KINDS, "sgd")
    if kind is None:
        return Optimizer(learning_rate=0.1)
    r.unknown_keys(m, path, ("kind", *_OPTIMIZER_KEYS[kind]))
    lr = r.take(m, path, "learning_rate", positive, _DEFAULT_LR.get(kind, 0.1),
                required=kind not in _DEFAULT_LR)
    wd = r.take(m, path, "weight_decay", non_negative, 1e-2 if kind == "adamw" else 0.0)
    if kind in _SGD_FAMILY:
        momentum = r.take(m, path, "momentum", non_negative, 0.0 if kind == "sgd" else 0.9)
        dampening = r.take(m, path, "dampening", _unit, 0.0)
        nesterov = kind == "nesterov" or r.take(m, path, "nesterov", boolean, False)
        if kind != "sgd" and momentum == 0:
            r.error(m.lines["momentum"], _join(path, "momentum"),
                    f"must be > 0 for the {kind} optimizer")
        elif nesterov and (momentum == 0 or dampening != 0):
            r.error(m.lines.get("nesterov", m.line), _join(path, "nesterov"),
                    "Nesterov momentum needs momentum > 0 and dampening 0 (as in torch)")
        return Optimizer(learning_rate=lr, kind=kind, momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=wd)
    if kind == "rmsprop":
        return Optimizer(learning_rate=lr, kind=kind, weight_decay=wd,
                         alpha=r.take(m, path, "alpha", _unit, 0.99),
                         eps=r.take(m, path, "eps", positive, 1e-8),
                         momentum=r.take(m, path, "momentum", non_negative, 0.0),
                         centered=r.take(m, path, "centered", boolean, False))
    return Optimizer(learning_rate=lr, kind=kind, weight_decay=wd,
                     betas=r.take(m, path, "betas", _betas, (0.9, 0.999)),
                     eps=r.take(m, path, "eps", positive, 1e-8))


def _schedule(r: _Reader, value: Any, line: int, path: str, steps: int) -> Schedule:
    m = r.mapping(value, line, path)
    if m is None:
        return Schedule()
    kind = _kind_of(r, m, path, "schedule", _SCHEDULE_KINDS, "constant")
    if kind is None:
        return Schedule()
    r.unknown_keys(m, path, ("kind", "warmup", *_SCHEDULE_KEYS[kind]))
    warmup_steps, start = 0, 1.0 / 3.0
    if "warmup" in m:
        w = r.mapping(m["warmup"], m.lines["warmup"], _join(path, "warmup"))
        if w is not None:
            wpath = _join(path, "warmup")
            r.unknown_keys(w, wpath, ("steps", "start_factor"))
            warmup_steps = r.take(w, wpath, "steps", integer(1, MAX_STEPS), 1, required=True)
            start = r.take(w, wpath, "start_factor", _half_open_unit, start)
    gamma_default = 0.1 if kind == "step" else 1.0
    return Schedule(
        kind=kind,
        step_size=r.take(m, path, "step_size", integer(1, MAX_STEPS), 1,
                         required=kind == "step"),
        gamma=r.take(m, path, "gamma", positive, gamma_default, required=kind == "exponential"),
        t_max=r.take(m, path, "T_max", integer(1, MAX_STEPS), steps),
        eta_min=r.take(m, path, "eta_min", non_negative, 0.0),
        warmup_steps=warmup_steps, warmup_start_factor=start)


def _detection(r: _Reader, value: Any, line: int, path: str) -> Detection:
    m = r.mapping(value, line, path)
    if m is None:
        return Detection()
    d = Detection()
    r.unknown_keys(m, path, tuple(Detection.__dataclass_fields__))
    return Detection(
        divergence_loss=r.take(m, path, "divergence_loss", positive, d.divergence_loss),
        divergence_parameter=r.take(m, path, "divergence_parameter", positive,
                                    d.divergence_parameter),
        divergence_growth_steps=r.take(m, path, "divergence_growth_steps", integer(0, 10**6),
                                       d.divergence_growth_steps),
        divergence_growth_factor=r.take(m, path, "divergence_growth_factor", _at_least_one,
                                        d.divergence_growth_factor),
        stall_window=r.take(m, path, "stall_window", integer(1, 10_000), d.stall_window),
        stall_min_improvement=r.take(m, path, "stall_min_improvement", positive,
                                     d.stall_min_improvement),
        converged_gradient_norm=r.take(m, path, "converged_gradient_norm", positive,
                                       d.converged_gradient_norm),
        oscillation_flip_steps=r.take(m, path, "oscillation_flip_steps", integer(0, 10**6),
                                      d.oscillation_flip_steps),
        oscillation_min_improvement=r.take(m, path, "oscillation_min_improvement", positive,
                                           d.oscillation_min_improvement),
        divergence_growth_rate=r.take(m, path, "divergence_growth_rate", non_negative,
                                      d.divergence_growth_rate),
        smoothing_steps=r.take(m, path, "smoothing_steps", integer(1, 10**6),
                               d.smoothing_steps),
        stall_noise_z=r.take(m, path, "stall_noise_z", non_negative, d.stall_noise_z),
        oscillation_flip_cosine=r.take(m, path, "oscillation_flip_cosine", _half_open_unit,
                                       d.oscillation_flip_cosine),
        clear_steps=r.take(m, path, "clear_steps", integer(1, 10**6), d.clear_steps),
    )


def fault_spec(r: _Reader, value: Any, line: int, path: str, step_interval: float,
               at_default: float | None = None) -> FaultSpec | None:
    """Read one fault mapping (YAML or API body); ``None`` after recording its mistakes.

    ``at``/``at_step`` place it on the run's timeline (``at_default`` is used when both are
    absent: the API injects now); ``duration``/``steps`` give its length; every other key is
    a parameter of the kind.
    """
    m = r.mapping(value, line, path)
    if m is None:
        return None
    before = len(r.issues)
    kind = m.get("kind")
    if kind not in FAULT_PARAMS:
        r.error(m.lines.get("kind", m.line), _join(path, "kind"),
                "required key is missing" if "kind" not in m else
                f"unknown fault kind {kind!r} (expected one of: {', '.join(FAULT_KINDS)})")
        return None
    timing = ("at", "at_step", "duration", "steps")
    r.unknown_keys(m, path, ("kind", *timing, *FAULT_PARAMS[kind]))
    for a, b in (("at", "at_step"), ("duration", "steps")):
        if a in m and b in m:
            r.error(m.lines[b], _join(path, b), f"give either {a} or {b}, not both")
    at = r.take(m, path, "at", non_negative_duration, None)
    if "at_step" in m:
        at = r.take(m, path, "at_step", integer(0, MAX_STEPS), 0) * step_interval
    if at is None and "at" not in m:
        if at_default is None:
            r.error(m.line, _join(path, "at"), "required key is missing (or give at_step)")
            return None
        at = at_default
    if at is None:
        return None
    duration = r.take(m, path, "duration", positive_duration, None)
    if "steps" in m:
        duration = r.take(m, path, "steps", integer(1, MAX_STEPS), 1) * step_interval
    if duration is None:
        duration = DEFAULT_DURATION.get(kind, math.inf)
    params = []
    for name in FAULT_PARAMS[kind]:
        if name in m:
            convert = _at_least_one if (kind, name) == ("slow_steps", "factor") else (
                finite if name == "shift" else positive)
            params.append((name, r.take(m, path, name, convert, FAULT_PARAMS[kind][name])))
    if len(r.issues) != before:
        return None
    return FaultSpec(kind=kind, at=float(at), duration=float(duration), params=tuple(params))


non_negative_duration = bounded(0, of=parse_duration)
positive_duration = bounded(0, lo_open=True, of=parse_duration)


def _faults(r: _Reader, value: Any, line: int, path: str,
            step_interval: float) -> tuple[FaultSpec, ...]:
    if not isinstance(value, LocList):
        r.error(line, path, f"must be a list, got {_kind(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        spec = fault_spec(r, item, value.lines[i], f"{path}[{i}]", step_interval)
        if spec is not None:
            out.append(spec)
    return tuple(out)


def _init(value: Any) -> float | tuple[float, ...]:
    if isinstance(value, LocList):
        if len(value) > MAX_DIMS:
            raise ValueError(f"must have at most {MAX_DIMS} entries, got {len(value)}")
        return tuple(finite(v) for v in value)
    return finite(value)


def _run(r: _Reader, m: LocMap, path: str) -> RunSpec | None:
    before = len(r.issues)
    r.unknown_keys(m, path, _RUN_KEYS)
    name = r.take(m, path, "name", _name, "", required=True)
    landscape = (_landscape(r, m["landscape"], m.lines["landscape"], _join(path, "landscape"))
                 if "landscape" in m else Quadratic())
    if "optimizer" in m:
        optimizer = _optimizer(r, m["optimizer"], m.lines["optimizer"], _join(path, "optimizer"))
    else:
        r.error(m.line, _join(path, "optimizer"), "required key is missing")
        optimizer = Optimizer(learning_rate=0.1)
    detect = (_detection(r, m["detect"], m.lines["detect"], _join(path, "detect"))
              if "detect" in m else Detection())
    step_interval = r.take(m, path, "step_interval", interval, 1.0)
    faults = (_faults(r, m["faults"], m.lines["faults"], _join(path, "faults"), step_interval)
              if "faults" in m else ())
    steps = r.take(m, path, "steps", integer(1, MAX_STEPS), 100)
    schedule = (_schedule(r, m["schedule"], m.lines["schedule"], _join(path, "schedule"), steps)
                if "schedule" in m else Schedule(t_max=steps))
    init = r.take(m, path, "init", _init, 0.0)
    dims = landscape.dims
    if isinstance(init, tuple) and len(init) != dims:
        plural = "" if dims == 1 else "s"
        r.error(m.lines["init"], _join(path, "init"),
                f"the {landscape.kind} landscape has {dims} parameter{plural}, "
                f"got a list of {len(init)}")
    spec = RunSpec(
        name=name,
        landscape=landscape,
        init=init if isinstance(init, tuple) else (init,) * dims,
        optimizer=optimizer,
        steps=steps,
        step_interval=step_interval,
        loop=r.take(m, path, "loop", boolean, False),
        seed=r.take(m, path, "seed", integer(0, MAX_SEED), 0),
        detect=detect,
        faults=faults,
        schedule=schedule,
        clip_grad_norm=r.take(m, path, "clip_grad_norm", positive, None),
        gradient_noise=r.take(m, path, "gradient_noise", non_negative, 0.0),
        loss_noise=r.take(m, path, "loss_noise", non_negative, 0.0),
    )
    return spec if len(r.issues) == before else None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"must match [a-zA-Z0-9_.-]+, got {_kind(value)}")
    if len(value) > 128:
        raise ValueError(f"must be at most 128 characters, got {len(value)}")
    return value


def build_config(doc: Any, source: str) -> Config:
    """Validate a parsed document; raise ConfigError listing every mistake."""
    r = _Reader(source)
    top = r.mapping(doc, getattr(doc, "line", 1), "")
    if top is None:
        raise ConfigError(r.issues)
    r.unknown_keys(top, "", ("defaults", "runs", "fleet", "series_limit"))
    defaults = r.section(top, "defaults", "defaults", _DEFAULTS_KEYS)
    runs = top.get("runs")
    specs: list[RunSpec] = []
    first_line: dict[str, int] = {}
    if "runs" not in top:
        if "fleet" not in top:
            r.error(top.line, "runs", "required key is missing")
    elif not isinstance(runs, LocList) or (not runs and "fleet" not in top):
        r.error(top.lines["runs"], "runs", f"must be a non-empty list, got {_kind(runs)}")
    else:
        for path, m in r.mappings(runs, "runs"):
            spec = _run(r, _merge(defaults, m), path)
            name_line = m.lines.get("name", m.line)
            name = m.get("name")
            if isinstance(name, str) and name in first_line:
                r.error(name_line, f"{path}.name",
                        f"duplicate run name {name!r} (first at line {first_line[name]})")
                continue
            if isinstance(name, str):
                first_line[name] = name_line
            if spec is not None:
                specs.append(spec)
    if "fleet" in top:
        specs.extend(_fleet_runs(r, top, defaults, first_line))
    series_limit = r.take(top, "", "series_limit", integer(1, 10**12), None)
    if r.issues:
        raise ConfigError(r.issues)
    return Config(runs=tuple(specs), source=source, series_limit=series_limit)


def _fleet_runs(r: _Reader, top: LocMap, defaults: LocMap,
                first_line: dict[str, int]) -> tuple[RunSpec, ...]:
    """The runs of the ``fleet:`` block (simulator/fleet.py); their names must not clash
    with the ``runs:`` list."""
    from simulator.fleet import read_fleet  # fleet.py builds on this module

    known = LocMap({k: v for k, v in defaults.items() if k in _DEFAULTS_KEYS})
    known.line, known.lines = defaults.line, {k: defaults.lines[k] for k in defaults
                                              if k in _DEFAULTS_KEYS}
    generated = read_fleet(r, top["fleet"], top.lines["fleet"], known)
    clashes = sorted(first_line.keys() & {s.name for s in generated})
    for name in clashes:
        r.error(first_line[name], "runs", f"run name {name!r} is also generated by the fleet "
                                          f"(line {top.lines['fleet']})")
    return generated


def load_config(data: bytes | str, source: str) -> Config:
    """Parse and validate YAML text; raise ConfigError with every mistake."""
    return build_config(parse_yaml(data, source), source)


def load_file(path: str | Path) -> Config:
    """Read, parse and validate a configuration file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(0, "", f"cannot read: {exc.strerror}", str(p))]) from None
    return load_config(data, str(p))


def load_default() -> Config:
    """The configuration embedded in the package (configs/default.yaml)."""
    from importlib.resources import files

    data = files("simulator").joinpath("default.yaml").read_bytes()
    return load_config(data, "<embedded default.yaml>")
