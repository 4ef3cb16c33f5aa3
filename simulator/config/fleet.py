"""Fleets: many runs generated from a template with seeded variation.

A ``fleet:`` block (docs/config.md) describes N runs by a template plus seeded variation:
a learning rate and an initial value drawn per run, landscape kinds picked by weight (each with
its own sub-template), and a fraction of runs given one fault at a random time. ``read_fleet``
validates the block with the same ``FILE:LINE: path: message`` errors as the rest of the file
and returns ordinary ``RunSpec`` objects named ``<prefix>-00042``.

Every random draw of run i comes from the counter-based hash in ``simulator.rng`` keyed by
(fleet seed, stream, i), so a run's learning rate, init and landscape do not depend on the
fleet's size or on the numpy version, and sampling is a handful of array operations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from simulator import landscapes, rng
from simulator.config.run import DEFAULTS_KEYS, RunSpec, read_run, run_over
from simulator.durations import parse_seconds
from simulator.faults.catalogue import FAULT_KINDS, FAULTS, FaultSpec
from simulator.rng import FleetStream
from simulator.schema.fields import (
    MAX_NAME_LENGTH,
    MAX_SEED,
    NAME_CHARS,
    Reader,
    describe,
    finite,
    integer,
    is_name,
    join,
    positive,
    positive_duration,
    unit,
)
from simulator.schema.loader import LocList, LocMap

MAX_FLEET = 1_000_000
# Names are <prefix>-<index>, the index zero-padded to at least this many digits.
MIN_INDEX_DIGITS = 5
_FLEET_KEYS = ("count", "name_prefix", "seed", "template", "learning_rate", "init",
               "landscapes", "failures")
_FAILURE_KEYS = ("fraction", "kinds", "between", "duration")
_DISTRIBUTIONS = ("uniform", "log_uniform")

T = TypeVar("T")


@dataclass(frozen=True)
class Sampler:
    """A per-run value: ``constant`` (lo == hi), ``uniform`` or ``log_uniform`` in [lo, hi]."""

    kind: str
    lo: float
    hi: float

    def draw(self, u: NDArray[np.float64]) -> NDArray[np.float64]:
        """Values for uniforms ``u`` in [0, 1)."""
        if self.kind == "log_uniform":
            out: NDArray[np.float64] = np.exp(math.log(self.lo)
                                              + u * (math.log(self.hi) - math.log(self.lo)))
            return np.clip(out, self.lo, self.hi)
        if self.kind == "uniform":
            return self.lo + u * (self.hi - self.lo)
        return np.full(u.shape, self.lo)


@dataclass(frozen=True)
class Failures:
    """``fraction`` of the runs get one fault of a kind from ``kinds`` at a uniform time in
    [``earliest``, ``latest``] seconds into the run, lasting ``duration`` (None: the kind's
    default)."""

    fraction: float
    kinds: tuple[str, ...]
    earliest: float
    latest: float
    duration: float | None = None


def fleet_names(prefix: str, count: int) -> list[str]:
    """``prefix-00000`` .. ``prefix-<count-1>``, zero-padded to a common width."""
    width = max(MIN_INDEX_DIGITS, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


def _clone(proto: T, changes: dict[str, Any]) -> T:
    """A copy of a frozen dataclass with ``changes``, without re-running ``__init__``: the
    prototype was validated once, and a fleet of 100k runs is built in well under a second."""
    obj: T = object.__new__(type(proto))
    obj.__dict__.update(proto.__dict__)
    obj.__dict__.update(changes)
    return obj


# --------------------------------------------------------------------------- reading


def _sampler(r: Reader, m: LocMap, path: str, key: str, positive_only: bool,
             ) -> Sampler | None:
    if key not in m:
        return None
    value, line, kpath = m[key], m.lines[key], join(path, key)
    check = positive if positive_only else finite
    if not isinstance(value, LocMap):
        try:
            x = check(value)
        except ValueError as exc:
            r.error(line, kpath, f"{exc} (or a mapping like {{log_uniform: [lo, hi]}})")
            return None
        return Sampler("constant", x, x)
    if len(value) != 1 or next(iter(value)) not in _DISTRIBUTIONS:
        r.error(line, kpath, f"must be a number or a mapping with one key, "
                             f"{' or '.join(_DISTRIBUTIONS)}: [lo, hi]")
        return None
    dist = next(iter(value))
    bounds, bline = value[dist], value.lines[dist]
    bpath = join(kpath, dist)
    if not isinstance(bounds, LocList) or len(bounds) != 2:
        r.error(bline, bpath, f"must be a list [lo, hi], got {describe(bounds)}")
        return None
    try:
        lo, hi = (positive(b) if dist == "log_uniform" else check(b) for b in bounds)
    except ValueError as exc:
        r.error(bline, bpath, str(exc))
        return None
    if lo > hi:
        r.error(bline, bpath, f"lo must be <= hi, got [{lo}, {hi}]")
        return None
    return Sampler(dist, lo, hi)


def _failures(r: Reader, value: Any, line: int, path: str) -> Failures | None:
    m = r.mapping(value, line, path)
    if m is None:
        return None
    before = len(r.issues)
    r.unknown_keys(m, path, _FAILURE_KEYS)
    fraction = r.take(m, path, "fraction", unit, 0.0, required=True)
    kinds: tuple[str, ...] = ()
    raw = m.get("kinds")
    if "kinds" not in m:
        r.error(m.line, join(path, "kinds"), "required key is missing")
    elif not isinstance(raw, LocList) or not raw:
        r.error(m.lines["kinds"], join(path, "kinds"),
                f"must be a non-empty list of fault kinds, got {describe(raw)}")
    else:
        for i, k in enumerate(raw):
            if k not in FAULT_KINDS:
                r.error(raw.lines[i], f"{path}.kinds[{i}]",
                        f"unknown fault kind {k!r} (expected one of: {', '.join(FAULT_KINDS)})")
        kinds = tuple(str(k) for k in raw)
    window = m.get("between")
    earliest = latest = 0.0
    if "between" not in m:
        r.error(m.line, join(path, "between"), "required key is missing")
    elif not isinstance(window, LocList) or len(window) != 2:
        r.error(m.lines["between"], join(path, "between"),
                f"must be a list of two durations [earliest, latest], got {describe(window)}")
    else:
        try:
            earliest, latest = (parse_seconds(w) for w in window)
            if earliest < 0 or earliest > latest:
                raise ValueError(f"must satisfy 0 <= earliest <= latest, got "
                                 f"[{earliest:g}s, {latest:g}s]")
        except ValueError as exc:
            r.error(m.lines["between"], join(path, "between"), str(exc))

    duration = r.take(m, path, "duration", positive_duration, None)
    if len(r.issues) != before:
        return None
    return Failures(fraction, kinds, earliest, latest, duration)


def _variants(r: Reader, value: Any, line: int) -> list[tuple[str, float, LocMap]]:
    """(kind, weight, sub-template) for each entry of ``fleet.landscapes``."""
    path = "fleet.landscapes"
    m = r.mapping(value, line, path)
    if m is None:
        return []
    if not m:
        r.error(line, path, "must name at least one landscape kind")
        return []
    out = []
    for kind, entry in m.items():
        kpath = join(path, str(kind))
        kline = m.lines[kind]
        if kind not in landscapes.KINDS.names:
            r.error(kline, kpath, f"unknown landscape kind {kind!r} (expected one of: "
                                  f"{', '.join(landscapes.KINDS.names)})")
            continue
        sub = LocMap.at(kline)
        if isinstance(entry, LocMap):
            r.unknown_keys(entry, kpath, ("weight", *DEFAULTS_KEYS))
            weight = r.take(entry, kpath, "weight", positive, 0.0, required=True)
            for key, v in entry.items():
                if key != "weight":
                    sub[key] = v
                    sub.lines[key] = entry.lines[key]
        else:
            try:
                weight = positive(entry)
            except ValueError as exc:
                r.error(kline, kpath, f"{exc} (a weight, or a mapping with weight and run keys)")
                continue
        land = sub.get("landscape", LocMap.at(kline))
        if not isinstance(land, LocMap):
            r.error(sub.lines["landscape"], join(kpath, "landscape"),
                    f"must be a mapping, got {describe(land)}")
            continue
        if land.get("kind", kind) != kind:
            r.error(land.lines["kind"], join(kpath, "landscape.kind"),
                    f"must be {kind!r} (the key it is listed under) or left out")
            continue
        typed = LocMap.at(land.line, {"kind": (kind, kline),
                                      **{k: (v, land.lines[k]) for k, v in land.items()}})
        sub["landscape"] = typed
        sub.lines["landscape"] = sub.lines.get("landscape", kline)
        out.append((str(kind), weight, sub))
    return out


def _prototype(r: Reader, base: LocMap, sub: LocMap | None, path: str, name: str,
               seed: int, lr: Sampler | None, init: Sampler | None) -> RunSpec | None:
    """Validate one variant (defaults, template, sub-template) as a run named ``name``."""
    merged = (sub if sub is not None else LocMap.at(base.line)).merged_over(base)
    for key, value in (("name", name), ("seed", seed)):
        if key not in merged:
            merged[key] = value
            merged.lines[key] = merged.line
    if init is not None:
        merged["init"] = 0.0  # replaced per run; the template's own init is overridden
        merged.lines["init"] = merged.line
    if lr is not None:
        opt = merged.get("optimizer", LocMap.at(merged.line))
        if isinstance(opt, LocMap) and "learning_rate" not in opt:
            filled = LocMap.at(opt.line, {**{k: (v, opt.lines[k]) for k, v in opt.items()},
                                          "learning_rate": (lr.lo, opt.line)})
            merged["optimizer"] = filled
            merged.lines.setdefault("optimizer", merged.line)
    return read_run(r, merged, path)


def read_fleet(r: Reader, value: Any, line: int, defaults: LocMap) -> tuple[RunSpec, ...]:
    """Validate a ``fleet:`` block and generate its runs (``()`` after recording mistakes)."""
    path = "fleet"
    m = r.mapping(value, line, path)
    if m is None:
        return ()
    before = len(r.issues)
    r.unknown_keys(m, path, _FLEET_KEYS)
    count = r.take(m, path, "count", integer(1, MAX_FLEET), 1, required=True)
    prefix = r.take(m, path, "name_prefix", _prefix(count), "fleet")
    seed = r.take(m, path, "seed", integer(0, MAX_SEED), 0)
    lr = _sampler(r, m, path, "learning_rate", positive_only=True)
    init = _sampler(r, m, path, "init", positive_only=False)
    failures = (_failures(r, m["failures"], m.lines["failures"], join(path, "failures"))
                if "failures" in m else None)
    template = r.section(m, "template", "fleet.template", DEFAULTS_KEYS)
    base = run_over(template, defaults)
    variants = _variants(r, m["landscapes"], m.lines["landscapes"]) \
        if "landscapes" in m else []
    if variants and "landscape" in template:
        r.error(template.lines["landscape"], "fleet.template.landscape",
                "give landscapes under fleet.landscapes when that key is present")
    if len(r.issues) != before:
        return ()
    # Each variant is validated once; a mistake in the template shows once, not per variant.
    scratch = Reader(r.source)
    name = fleet_names(prefix, count)[0]
    protos = [_prototype(scratch, base, sub, f"fleet.landscapes.{kind}", name, seed, lr, init)
              for kind, _, sub in variants] or [
        _prototype(scratch, base, None, "fleet.template", name, seed, lr, init)]
    # A mistake written in the template is named by its path there, not the first variant's.
    alone = Reader(r.source)
    if variants:
        _prototype(alone, base, None, "fleet.template", name, seed, lr, init)
    template_path = {(i.line, i.message): i.path for i in alone.issues}
    seen = set()
    for issue in scratch.issues:
        if (issue.line, issue.message) not in seen:
            seen.add((issue.line, issue.message))
            path = template_path.get((issue.line, issue.message), issue.path)
            r.issues.append(dataclasses.replace(issue, path=path))
    if scratch.issues or any(p is None for p in protos):
        return ()
    weights = [w for _, w, _ in variants] or [1.0]
    return generate([p for p in protos if p is not None], weights, count, prefix, seed, lr,
                    init, failures)


def _prefix(count: int) -> Any:
    width = max(MIN_INDEX_DIGITS, len(str(count - 1)))

    def convert(value: Any) -> str:
        if not is_name(value):
            raise ValueError(f"must match {NAME_CHARS}, got {describe(value)}")
        if len(value) + 1 + width > MAX_NAME_LENGTH:
            raise ValueError(f"must be at most {MAX_NAME_LENGTH - 1 - width} characters (run "
                             f"names are at most {MAX_NAME_LENGTH})")
        return str(value)
    return convert


# --------------------------------------------------------------------------- generating


def _faults(failures: Failures | None, seed: int, count: int) -> dict[int, FaultSpec]:
    """The one fault of each failing run, by run index."""
    if failures is None or failures.fraction <= 0:
        return {}
    k = round(failures.fraction * count)
    # The k runs with the smallest draw fail: exactly round(fraction * count) of them.
    failing = np.argsort(rng.uniforms(seed, FleetStream.FAILING, count), kind="stable")[:k]
    kind_of = np.minimum((rng.uniforms(seed, FleetStream.FAULT_KIND, count)[failing]
                          * len(failures.kinds)).astype(np.int64), len(failures.kinds) - 1)
    at = (failures.earliest + rng.uniforms(seed, FleetStream.FAULT_AT, count)[failing]
          * (failures.latest - failures.earliest))
    out = {}
    for i, kk, t in zip(failing.tolist(), kind_of.tolist(), at.tolist(), strict=True):
        kind = failures.kinds[kk]
        duration = failures.duration if failures.duration is not None else \
            FAULTS[kind].default_duration
        out[i] = FaultSpec(kind=kind, at=round(t, 3), duration=duration)
    return out


def _draw(sampler: Sampler | None, seed: int, stream: FleetStream,
          count: int) -> list[float] | None:
    return sampler.draw(rng.uniforms(seed, stream, count)).tolist() if sampler else None


def generate(protos: list[RunSpec], weights: list[float], count: int, prefix: str, seed: int,
             lr: Sampler | None = None, init: Sampler | None = None,
             failures: Failures | None = None) -> tuple[RunSpec, ...]:
    """``count`` runs: run i is ``protos[v]`` (v drawn by ``weights``) with its own name,
    sampled learning rate and init, and possibly one fault."""
    names = fleet_names(prefix, count)
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    variant = np.minimum(np.searchsorted(cum / cum[-1],
                                         rng.uniforms(seed, FleetStream.VARIANT, count),
                                         side="right"), len(protos) - 1).tolist()
    rates = _draw(lr, seed, FleetStream.LEARNING_RATE, count)
    inits = _draw(init, seed, FleetStream.INIT, count)
    extra = _faults(failures, seed, count)
    dims = [p.dims for p in protos]
    out: list[RunSpec] = []
    append = out.append
    for i, name in enumerate(names):
        p = protos[variant[i]]
        changes: dict[str, Any] = {"name": name}
        if rates is not None:
            changes["optimizer"] = _clone(p.optimizer, {"learning_rate": rates[i]})
        if inits is not None:
            changes["init"] = (inits[i],) * dims[variant[i]]
        fault = extra.get(i)
        if fault is not None:
            changes["faults"] = (*p.faults, fault)
        append(_clone(p, changes))
    return tuple(out)
