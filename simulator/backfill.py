"""``trainsim backfill``: the series a daemon would have exported over a past window, as
OpenMetrics text that ``promtool tsdb create-blocks-from openmetrics`` turns into TSDB blocks.

The daemon that "would have been running" is the real one (``simulator.daemon.core.Daemon``),
started at the window's start on a clock this module drives: ``tick()`` at each instant, then
its snapshot is read. The values are therefore the live daemon's, bit for bit, with faults,
scheduled scenarios and detector alert states included.

Each instant's per-run samples (``simulator.exposition.FAMILIES``, in ``layout`` order, from
``sample_values``) go as one row of float64 to a spill file; when the window is complete,
each family is read back a block of series at a time across all instants and written
series-major: each family once, with its ``# HELP`` and ``# TYPE``, the samples of each series
contiguous and in ascending time, as OpenMetrics and promtool need. Memory is the daemon's and
a block's; the window adds a byte per run and instant (whether the run is present). A crashed
run (``present`` False) has no sample at that instant; a series that appears mid-window (a new
fault kind on a run) is written from that instant on.

The labels a Prometheus scraping the daemon would add are added too, so that the backfilled
series join the live ones: the target's ``job`` and ``instance`` (defaults from the shipped
``configs/prometheus/prometheus.yml``), that scrape config's ``metric_relabel_configs``, and
``up`` at every instant.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from itertools import chain, compress, repeat
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml
from prometheus_client.metrics import MetricWrapperBase

from simulator import resources
from simulator.arrays import Bools, Floats, Ints
from simulator.config import Config
from simulator.config.shards import Shard
from simulator.daemon import serve
from simulator.daemon.core import Daemon, DrivenClock, SilentLog
from simulator.durations import format_prometheus, parse_prometheus
from simulator.engine import Snapshot
from simulator.exposition import (
    FAMILIES,
    HARDWARE_FAMILIES,
    HISTOGRAM_PARTS,
    Family,
    Histogram,
    escape_label_value,
    format_floats,
    layout,
    sample_values,
)
from simulator.schema.errors import UsageError

DEFAULT_JOB = "trainsim"
# More instants than this is a mistake (30 days at 15 s is 172,800).
MAX_INSTANTS = 200_000
# Samples formatted at once when writing: bounds the writer's memory (about 100 bytes of text
# and 30 bytes of bookkeeping a sample).
BLOCK_SAMPLES = 1 << 17
PROMTOOL_COMMAND = ("tsdb", "create-blocks-from", "openmetrics")
UP_LINE = "# TYPE up gauge\n"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?"
                      r"([Zz]|[+-]\d{2}:\d{2})")


# --------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class Window:
    """The instants of a backfill: ``count`` of them, ``interval_ms`` apart, from ``start_ms``
    (Unix milliseconds) to ``end_ms`` inclusive."""

    start_ms: int
    interval_ms: int
    count: int

    @property
    def end_ms(self) -> int:
        """The last instant."""
        return self.start_ms + (self.count - 1) * self.interval_ms

    def timestamps(self) -> list[str]:
        """Each instant as an OpenMetrics timestamp (seconds), in order."""
        times = range(self.start_ms, self.end_ms + 1, self.interval_ms)
        if self.start_ms % 1000 == 0 and self.interval_ms % 1000 == 0:
            return [str(t // 1000) for t in times]
        return [f"{t // 1000}.{t % 1000:03d}" for t in times]


def parse_duration(text: str) -> int:
    """Milliseconds of a positive duration in Prometheus' notation (``6h``, ``90m``, ``15s``);
    ValueError says what was expected."""
    try:
        ms = parse_prometheus(text)
    except ValueError:
        raise ValueError(f"must be a duration like 6h, 90m or 15s, got {text!r}") from None
    if ms <= 0:
        raise ValueError(f"must be longer than 0s, got {text!r}")
    return ms


def parse_end(text: str) -> int | None:
    """Unix milliseconds of an RFC3339 time (to the millisecond; finer digits are dropped), or
    None for ``now``; ValueError says what was expected."""
    if text == "now":
        return None
    m = _RFC3339.fullmatch(text)
    problem = f"must be now or an RFC3339 time like 2026-12-02T06:00:00Z, got {text!r}"
    if m is None:
        raise ValueError(problem)
    offset = "+00:00" if m[4] in "Zz" else m[4]
    try:
        at = datetime.fromisoformat(f"{m[1]}T{m[2]}{offset}")
    except ValueError:
        raise ValueError(problem) from None
    ms = int((m[3] or "0")[:3].ljust(3, "0"))
    return int(at.timestamp()) * 1000 + ms


def plan(end_ms: int | None, duration_ms: int, interval_ms: int, now_ms: int) -> Window:
    """The window ``duration_ms`` long that ends at ``end_ms`` (None: ``now_ms`` rounded down
    to a whole multiple of the interval). UsageError, naming the flag, for a window that cannot
    be backfilled."""
    duration, interval = format_prometheus(duration_ms), format_prometheus(interval_ms)
    if duration_ms % interval_ms:
        raise UsageError(f"backfill: --duration: {duration} is not a whole multiple of "
                         f"--interval {interval}")
    count = duration_ms // interval_ms + 1
    if count > MAX_INSTANTS:
        raise UsageError(f"backfill: --duration: {duration} at --interval {interval} is "
                         f"{count} instants, more than {MAX_INSTANTS}")
    if end_ms is None:
        end_ms = now_ms - now_ms % interval_ms
    elif end_ms > now_ms:
        raise UsageError(f"backfill: --end: {rfc3339(end_ms)} is in the future")
    if end_ms - duration_ms < 0:
        raise UsageError(f"backfill: --duration: {duration} back from --end {rfc3339(end_ms)} "
                         "reaches before 1970")
    return Window(end_ms - duration_ms, interval_ms, count)


def rfc3339(ms: int) -> str:
    """Unix milliseconds as an RFC3339 time in UTC."""
    at = datetime.fromtimestamp(ms / 1000, UTC)
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


# --------------------------------------------------------------------------- scrape labels


_GROUP_REF = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))")


def _expand(template: str, m: re.Match[str]) -> str:
    """A relabel template (``$1``, ``${1}``, ``${name}``, ``$$``) as Go's regexp expands it:
    a group that does not exist is empty."""
    def one(ref: re.Match[str]) -> str:
        name = ref[1] or ref[2]
        if name is None:
            return "$"
        try:
            return m.group(int(name) if name.isdigit() else name) or ""
        except IndexError:
            return ""
    return _GROUP_REF.sub(one, template)


@dataclass(frozen=True)
class Relabel:
    """One of a scrape config's ``metric_relabel_configs``, as Prometheus applies it (actions
    replace, keep, drop, labelmap, labeldrop, labelkeep)."""

    action: str
    source_labels: tuple[str, ...]
    separator: str
    regex: re.Pattern[str]
    target_label: str
    replacement: str

    ACTIONS = ("replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep")

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Relabel:
        """From its YAML mapping; ValueError for an action backfill does not apply."""
        action = str(doc.get("action", "replace")).lower()
        if action not in cls.ACTIONS:
            raise ValueError(f"metric_relabel_configs action {action!r} is not supported "
                             f"(only {', '.join(cls.ACTIONS)})")
        return cls(action, tuple(doc.get("source_labels") or ()), str(doc.get("separator", ";")),
                   re.compile(f"(?:{doc.get('regex', '(.*)')})"),
                   str(doc.get("target_label", "")), str(doc.get("replacement", "$1")))

    def apply(self, labels: dict[str, str]) -> bool:
        """Relabel ``labels`` in place; False if the series is dropped."""
        if self.action in ("replace", "keep", "drop"):
            value = self.separator.join(labels.get(name, "") for name in self.source_labels)
            m = self.regex.fullmatch(value)
            if self.action != "replace":
                return (m is not None) == (self.action == "keep")
            target = _expand(self.target_label, m) if m else ""
            if m is not None and _LABEL_NAME.fullmatch(target):
                result = _expand(self.replacement, m)
                if result:
                    labels[target] = result
                else:
                    labels.pop(target, None)
            return True
        for name in list(labels):
            m = self.regex.fullmatch(name)
            if self.action == "labelmap" and m is not None:
                labels[_expand(self.replacement, m)] = labels[name]
            elif (self.action == "labeldrop") == (m is not None):
                del labels[name]
        return True


@dataclass(frozen=True)
class Scrape:
    """What a Prometheus scraping the daemon adds to its series: the scrape interval, the
    target's labels, and the scrape config's metric relabelling."""

    interval_ms: int
    labels: tuple[tuple[str, str], ...]  # job, instance and any other target label
    relabel: tuple[Relabel, ...] = ()

    def series_labels(self, own: dict[str, str]) -> str | None:
        """``own`` labels with the target's added and relabelled, as written inside braces
        (sorted by name); None if relabelling drops the series."""
        labels = {**own, **dict(self.labels)}
        for rule in self.relabel:
            if not rule.apply(labels):
                return None
        return ",".join(f'{k}="{escape_label_value(v)}"'
                        for k, v in sorted(labels.items()) if v)


def shipped_scrape(job: str = DEFAULT_JOB) -> tuple[Scrape, str]:
    """The shipped Prometheus config's scrape of trainsim: a ``Scrape`` for its first target,
    and that target's address (the default ``instance``)."""
    doc = yaml.safe_load(resources.read_text("prometheus", "prometheus.yml"))
    sc = next(s for s in doc["scrape_configs"] if s["job_name"] == job)
    interval = sc.get("scrape_interval", doc.get("global", {}).get("scrape_interval", "1m"))
    static = sc["static_configs"][0]
    instance = str(static["targets"][0])
    extra = {str(k): str(v) for k, v in (static.get("labels") or {}).items()}
    labels = tuple(sorted({**extra, "job": job, "instance": instance}.items()))
    rules = tuple(Relabel.of(r) for r in sc.get("metric_relabel_configs") or ())
    return Scrape(parse_prometheus(interval), labels, rules), instance


# --------------------------------------------------------------------------- recording


@dataclass
class _Series:
    """One per-run family's series over the window, in order of first appearance."""

    family: Family
    labels: list[tuple[str, ...]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    index: dict[tuple[str, ...], int] = field(default_factory=dict)


@dataclass
class _Segment:
    """Consecutive instants with one fleet layout. Its rows in the spill file are
    ``row_bytes`` long, from ``base``; family k takes ``widths[k]`` columns from
    ``offsets[k]``: every series known by the segment's first instant, ``in_layout[k]``
    saying which of them the layout has, ``scatter[k]`` where its samples go (None: in
    order)."""

    first: int
    base: int
    widths: list[int]
    offsets: list[int]
    in_layout: list[Bools]
    scatter: list[Ints | None]
    count: int = 0

    @property
    def row_bytes(self) -> int:
        """Bytes of one instant's row."""
        return 8 * sum(self.widths)


@dataclass
class _Own:
    """One of the daemon's own health families: its samples by name and labels, each with the
    instants it had and its values there."""

    kind: str
    help: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[list[int], list[float]]] = (
        field(default_factory=dict))


class Recorder:
    """The snapshots of a window, one per instant (``add``), written out as OpenMetrics
    (``write``); see the module docstring. ``spill`` is an empty binary file to keep the
    per-run values in until then."""

    def __init__(self, spill: IO[bytes]) -> None:
        self.instants = 0
        self._spill = spill
        self._series = [_Series(f) for f in FAMILIES + HARDWARE_FAMILIES]
        self._segments: list[_Segment] = []
        self._present: list[Bools] = []
        self._own: dict[str, _Own] = {}
        self._names: tuple[str, ...] | None = None
        self._key: tuple[object, ...] | None = None
        self._last: Snapshot | None = None
        self._row: Floats = np.zeros(0)

    def add(self, snap: Snapshot, own: Sequence[Any] = ()) -> None:
        """Record the next instant: the daemon's snapshot, and its own health metrics
        (prometheus_client ``Metric`` families)."""
        if snap is not self._last:
            if self._names is None:
                self._names = snap.names
            elif snap.names != self._names:
                raise ValueError("the runs of a backfill cannot change")
            key = _layout_key(snap)
            if key != self._key:
                self._begin_segment(snap)
                self._key = key
            row = self._values(snap)
            if row is None:  # a layout change the key did not show
                self._begin_segment(snap)
                row = self._values(snap)
                assert row is not None, "the layout does not match the sample values"
            self._row = row
            self._last = snap
        self._spill.write(self._row.tobytes())
        self._segments[-1].count += 1
        self._present.append(snap.presence)
        for metric in own:
            fam = self._own.setdefault(metric.name, _Own(metric.type, metric.documentation))
            for s in metric.samples:
                times, values = fam.samples.setdefault(
                    (s.name, tuple(sorted(s.labels.items()))), ([], []))
                times.append(self.instants)
                values.append(float(s.value))
        self.instants += 1

    def _begin_segment(self, snap: Snapshot) -> None:
        """Start a segment for ``snap``'s layout; series it brings are added to the known
        ones."""
        base = (self._segments[-1].base + self._segments[-1].count * self._segments[-1].row_bytes
                if self._segments else 0)
        seg = _Segment(self.instants, base, [], [], [], [])
        offset = 0
        for series, (labels, rows) in zip(self._series, self._layouts(snap), strict=True):
            at = np.empty(len(labels), np.int64)
            for j, (lv, row) in enumerate(zip(labels, rows.tolist(), strict=True)):
                k = series.index.get(lv)
                if k is None:
                    k = series.index[lv] = len(series.labels)
                    series.labels.append(lv)
                    series.rows.append(row)
                at[j] = k
            width = len(series.labels)
            mask = np.zeros(width, np.bool_)
            mask[at] = True
            in_order = at.size == width and bool((at == np.arange(width)).all())
            seg.widths.append(width)
            seg.offsets.append(offset)
            seg.in_layout.append(mask)
            seg.scatter.append(None if in_order else at)
            offset += width
        self._segments.append(seg)

    def _layouts(self, snap: Snapshot) -> Iterator[tuple[list[tuple[str, ...]], Ints]]:
        rows_of = layout(snap)
        none: tuple[list[tuple[str, ...]], Ints] = ([], np.zeros(0, np.int64))
        for series in self._series:  # a fleet without hardware has no hardware family
            yield rows_of.get(series.family.name, none)

    def _values(self, snap: Snapshot) -> Floats | None:
        """The snapshot's samples as one row of the current segment; None if their numbers
        are not the segment's layout's."""
        seg = self._segments[-1]
        row = np.zeros(sum(seg.widths))
        for k, series in enumerate(self._series):
            if not seg.widths[k]:
                continue
            values = sample_values(snap, series.family)
            at = seg.scatter[k]
            if values.size != (seg.widths[k] if at is None else at.size):
                return None
            start = seg.offsets[k]
            if at is None:
                row[start:start + values.size] = values
            else:
                row[start + at] = values
        return row

    # ------------------------------------------------------------------ writing

    def write(self, out: IO[bytes], scrape: Scrape, timestamps: Sequence[str]) -> Written:
        """Write everything recorded as OpenMetrics (``# EOF`` included), with the labels
        ``scrape`` adds; ``timestamps`` are the instants' (``Window.timestamps``)."""
        if len(timestamps) != self.instants:
            raise ValueError(f"{len(timestamps)} timestamps for {self.instants} instants")
        self._spill.flush()
        stamps = [f" {t}\n" for t in timestamps]
        written = Written()
        # up is never relabelled: Prometheus writes it beside the scraped samples.
        up = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in scrape.labels)
        written.add(out, UP_LINE + _block([f"up{{{up}}} "], ["1"] * self.instants, None, stamps),
                    1, self.instants)
        for name, fam in self._own.items():
            self._write_own(out, name, fam, scrape, stamps, written)
        present = np.stack(self._present) if self._present else np.zeros((0, 0), np.bool_)
        for k in range(len(self._series)):
            self._write_family(out, k, scrape, present, stamps, written)
        out.write(b"# EOF\n")
        written.size_bytes = out.tell()
        return written

    def _write_family(self, out: IO[bytes], k: int, scrape: Scrape, present: Bools,
                      stamps: list[str], written: Written) -> None:
        """Per-run family ``k``: its header, then its series a block at a time."""
        fam = self._series[k].family
        if not self._series[k].labels and fam in HARDWARE_FAMILIES:  # a fleet without hardware
            return
        out.write(_header(fam.name, fam.kind, fam.help))
        prefixes = [_prefix(*_sample(fam, lv), scrape) for lv in self._series[k].labels]
        rows = np.array(self._series[k].rows, np.int64)
        # A histogram's series go a run at a time, instant after instant (its buckets, count
        # and sum together at each), as OpenMetrics groups a histogram's points.
        group = HISTOGRAM_PARTS if isinstance(fam, Histogram) else 1
        step = max(group, BLOCK_SAMPLES // max(self.instants, 1) // group * group)
        for c0 in range(0, len(prefixes), step):
            c1 = min(len(prefixes), c0 + step)
            values, keep = self._read(k, c0, c1, present, rows)
            dropped = [j - c0 for j in range(c0, c1) if prefixes[j] is None]
            if dropped:  # by the scrape config's relabelling
                keep[:, dropped] = False
            heads = [p or "" for p in prefixes[c0:c1]]
            texts = _format(np.ascontiguousarray(values.T))
            flags = keep.T.ravel()
            if group > 1:
                text = _grouped_block(heads, texts, flags, stamps, group)
            else:
                text = _block(heads, texts, None if keep.all() else flags.tolist(), stamps)
            written.add(out, text, int(keep.any(axis=0).sum()), int(keep.sum()))

    def _write_own(self, out: IO[bytes], name: str, fam: _Own, scrape: Scrape,
                   stamps: list[str], written: Written) -> None:
        out.write(_header(name, fam.kind, fam.help))
        for (sample, labels), (times, values) in fam.samples.items():
            prefix = _prefix(sample, dict(labels), scrape)
            if prefix is not None:
                text = _block([prefix], format_floats(np.array(values)), None,
                              [stamps[i] for i in times])
                written.add(out, text, 1, len(times))

    def _read(self, k: int, c0: int, c1: int, present: Bools, rows: Ints,
              ) -> tuple[Floats, Bools]:
        """Columns ``c0:c1`` of family ``k`` at every instant: (values, whether each sample
        exists), both shaped (instants, columns)."""
        values = np.zeros((self.instants, c1 - c0))
        keep = np.zeros((self.instants, c1 - c0), np.bool_)
        fd = self._spill.fileno()
        for seg in self._segments:
            hi = min(c1, seg.widths[k])
            if hi <= c0:
                continue
            width, first, stop = hi - c0, seg.first, seg.first + seg.count
            start = seg.base + 8 * (seg.offsets[k] + c0)
            for i in range(seg.count):
                into = values[first + i, :width].data
                got = os.preadv(fd, [into], start + i * seg.row_bytes)
                if got != 8 * width:
                    raise OSError(f"short read from the spill file ({got} of {8 * width} bytes)")
            keep[first:stop, :width] = (seg.in_layout[k][c0:hi]
                                        & present[first:stop][:, rows[c0:hi]])
        return values, keep


def _layout_key(snap: Snapshot) -> tuple[object, ...]:
    """What a snapshot's ``layout`` depends on: its tuples (names, labels, fault pairs, the
    parameter matrices' shapes) and its row arrays (int64: the runs a family covers)."""
    key: list[object] = []
    for f in fields(snap):
        value = getattr(snap, f.name)
        if f.name == "parameters":
            key.append(tuple((first, w.shape) for first, w in value))
        elif isinstance(value, tuple):
            key.append(value)
        elif isinstance(value, np.ndarray) and value.dtype == np.int64:
            key.append(value.tobytes())
    return tuple(key)


def _format(values: Floats) -> list[str]:
    """``format_floats`` of a (series, instants) block, series after series, formatting each
    distinct value once: a series repeats its value until the run steps again, flags are 0 or
    1, and runs that step together share their timestamps. Values are told apart by their
    bits, so that -0.0 stays -0.0."""
    flat = values.ravel()
    changed = np.ones(values.shape, np.bool_)
    bits = values.view(np.int64)
    changed[:, 1:] = bits[:, 1:] != bits[:, :-1]
    fresh = flat[changed.ravel()]
    probe = fresh[::max(1, fresh.size // 1024)].view(np.int64)
    if 2 * np.unique(probe).size > probe.size:  # mostly distinct: sorting them would not pay
        text = np.array(format_floats(fresh), dtype=object)
    else:
        distinct, where = np.unique(fresh.view(np.int64), return_inverse=True)
        text = np.array(format_floats(distinct.view(np.float64)), dtype=object)[where]
    if fresh.size == flat.size:
        result: list[str] = text.tolist()
    else:
        result = text[np.cumsum(changed.ravel()) - 1].tolist()
    return result


def _sample(fam: Family, values: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    name, pairs = fam.sample(values)
    return name, dict(pairs)


def _header(name: str, kind: str, help: str) -> bytes:
    return f"# HELP {name} {help}\n# TYPE {name} {kind}\n".encode()


def _prefix(sample: str, own: dict[str, str], scrape: Scrape) -> str | None:
    labels = scrape.series_labels(own)
    return None if labels is None else f"{sample}{{{labels}}} "


def _block(prefixes: list[str], values: list[str], keep: list[bool] | None,
           stamps: list[str]) -> str:
    """The lines of ``prefixes``' series: ``values`` holds each series' samples in turn, one
    per stamp; ``keep`` (the same shape, None for all) says which exist."""
    per = len(stamps)
    heads = list(chain.from_iterable(map(repeat, prefixes, repeat(per))))
    tails = stamps * len(prefixes)
    if keep is not None:
        heads, values, tails = (list(compress(x, keep)) for x in (heads, values, tails))
    parts: list[str] = [""] * (3 * len(heads))
    parts[0::3] = heads
    parts[1::3] = values
    parts[2::3] = tails
    return "".join(parts)


def _grouped_block(prefixes: list[str], values: list[str], keep: Bools, stamps: list[str],
                   group: int) -> str:
    """The lines of ``prefixes``' series (``values`` and ``keep`` series after series, one per
    stamp, as for ``_block``), ``group`` series at a time, instant after instant."""
    per, groups = len(stamps), len(prefixes) // group
    order = ((np.arange(groups)[:, None, None] * group + np.arange(group)[None, None, :]) * per
             + np.arange(per)[None, :, None]).ravel()
    order = order[keep[order]]
    parts: list[str] = [""] * (3 * len(order))
    parts[0::3] = [prefixes[i] for i in (order // per).tolist()]
    parts[1::3] = [values[i] for i in order.tolist()]
    parts[2::3] = [stamps[i] for i in (order % per).tolist()]
    return "".join(parts)


@dataclass
class Written:
    """What ``Recorder.write`` wrote: series (with at least one sample), samples, bytes."""

    series: int = 0
    samples: int = 0
    size_bytes: int = 0

    def add(self, out: IO[bytes], text: str, series: int, samples: int) -> None:
        """Write ``text`` and count it."""
        out.write(text.encode())
        self.series += series
        self.samples += samples


def own_metrics(daemon: Daemon) -> list[Any]:
    """The daemon's own health families (build info, reloads, exposed series): what it exports
    besides the per-run families and the process' own figures."""
    return [m for metric in vars(daemon.metrics).values() if isinstance(metric, MetricWrapperBase)
            for m in metric.collect()]


def record(config: Config, window: Window, spill: IO[bytes]) -> Recorder:
    """Drive a daemon started at the window's start through each of its instants."""
    clock = DrivenClock()
    start = window.start_ms / 1000
    daemon = Daemon(config, clock=clock, wall=lambda: start, log=SilentLog())
    recorder = Recorder(spill)
    for i in range(window.count):
        clock.now = i * window.interval_ms / 1000
        daemon.tick()
        recorder.add(daemon.snapshot, own_metrics(daemon))
    return recorder


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Options:
    """What ``trainsim backfill`` was asked to do (durations and times in milliseconds)."""

    config_file: str | None  # None: the embedded default
    duration_ms: int
    output: str | None
    tsdb: str | None
    end_ms: int | None = None  # None: now
    interval_ms: int | None = None  # None: the shipped scrape interval
    shard: Shard | None = None
    job: str | None = None
    instance: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Result:
    """What a backfill did."""

    output: str | None  # None: a temporary file, removed
    window: Window
    written: Written
    blocks: int | None  # blocks promtool created (None without --tsdb)


class PromtoolError(Exception):
    """promtool is missing or failed: the message is one line."""


def target(options: Options) -> Scrape:
    """The shipped scrape, with the job, instance and extra labels ``options`` set. UsageError
    for a label that the series have already or that is not a label name."""
    scrape, instance = shipped_scrape()
    labels = dict(scrape.labels)
    labels.update(job=options.job or DEFAULT_JOB, instance=options.instance or instance)
    own = {name for fam in FAMILIES + HARDWARE_FAMILIES for name in fam.labels} | {"version", "le"}
    for name, value in options.labels:
        if name in ("job", "instance"):
            raise UsageError(f"backfill: --label: {name} has a flag of its own (--{name})")
        if name in own:
            raise UsageError(f"backfill: --label: {name} is a label of trainsim's own series")
        labels[name] = value
    return Scrape(scrape.interval_ms, tuple(sorted(labels.items())), scrape.relabel)


def parse_label(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a target label; ValueError says what was expected."""
    name, sep, value = text.partition("=")
    if not sep or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
        raise ValueError(f"must be NAME=VALUE with NAME a label name (not starting with __), "
                         f"got {text!r}")
    if not value:
        raise ValueError(f"must have a value, got {text!r}")
    return name, value


def run(options: Options, now: float) -> Result:
    """Write the window's OpenMetrics file and, with ``tsdb``, create blocks from it; ``now``
    is the current Unix time. UsageError for a mistake in the options and ConfigError for one
    in the config, both before any work; PromtoolError if promtool is missing or fails."""
    if options.output is None and options.tsdb is None:
        raise UsageError("backfill: --output: required unless --tsdb is given")
    scrape = target(options)
    interval = options.interval_ms or scrape.interval_ms
    window = plan(options.end_ms, options.duration_ms, interval, int(now * 1000))
    promtool = _promtool(options.tsdb) if options.tsdb is not None else None
    config = serve.load(options.config_file, options.shard)
    with contextlib.ExitStack() as stack:
        if options.output is None:
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "backfill.om"
        else:
            path = Path(options.output)
        with _replacing(path) as out, tempfile.TemporaryFile(dir=path.parent) as spill:
            written = record(config, window, spill).write(out, scrape,
                                                                  window.timestamps())
        blocks = None
        if promtool is not None and options.tsdb is not None:
            blocks = create_blocks(promtool, path, Path(options.tsdb))
    return Result(options.output, window, written, blocks)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[IO[bytes]]:
    """A file that becomes ``path`` when the block ends without an error, and disappears
    otherwise. UsageError (--output) if it cannot be written."""
    if path.is_dir():
        raise UsageError(f"backfill: --output: {path} is a directory")
    try:
        tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",  # noqa: SIM115
                                          delete=False)
    except OSError as exc:
        raise UsageError(f"backfill: --output: cannot write {path}: "
                         f"{exc.strerror or exc}") from None
    try:
        with tmp:
            yield tmp
        os.chmod(tmp.name, 0o644)  # readable by whoever ingests it, as a file written plainly
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise


def _promtool(tsdb: str) -> str:
    if Path(tsdb).exists() and not Path(tsdb).is_dir():
        raise UsageError(f"backfill: --tsdb: {tsdb} is not a directory")
    found = shutil.which("promtool")
    if found is None:
        raise PromtoolError("backfill: --tsdb needs promtool, which is not on PATH (Debian's "
                            "prometheus package has it)")
    return found


def create_blocks(promtool: str, openmetrics: Path, tsdb: Path) -> int:
    """Run ``promtool tsdb create-blocks-from openmetrics`` on the file into ``tsdb``; how
    many blocks it created. PromtoolError with promtool's own reason if it fails."""
    before = _blocks(tsdb)
    argv = [promtool, *PROMTOOL_COMMAND, "--quiet", str(openmetrics), str(tsdb)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise PromtoolError(f"backfill: cannot run {promtool}: {exc.strerror or exc}") from None
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else "(no output)"
        raise PromtoolError(f"backfill: promtool {' '.join(PROMTOOL_COMMAND)} failed (exit "
                            f"status {res.returncode}): {reason}")
    return len(_blocks(tsdb) - before)


def _blocks(tsdb: Path) -> set[str]:
    if not tsdb.is_dir():
        return set()
    return {p.name for p in tsdb.iterdir() if (p / "meta.json").is_file()}


def summary(result: Result) -> list[str]:
    """What the command prints."""
    w, written = result.window, result.written
    where = result.output if result.output is not None else "a temporary file"
    lines = [f"wrote {where}: {written.series} series, {written.samples} samples, "
             f"{written.size_bytes} bytes, {w.count} instants every "
             f"{format_prometheus(w.interval_ms)} from {rfc3339(w.start_ms)} to "
             f"{rfc3339(w.end_ms)}"]
    if result.blocks is not None:
        lines.append(f"promtool created {result.blocks} blocks")
    return lines

