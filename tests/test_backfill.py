"""``trainsim backfill``: a past window's series, as the daemon would have exported them, in a
file promtool turns into blocks that a real Prometheus answers from.

Time is driven, never waited for: every window ends at a fixed instant in the past, and the
daemons these tests compare against tick on a fake clock. promtool and Prometheus are Debian's
binaries; a test that needs one fails when it is missing (it never skips).
"""

from __future__ import annotations

import re
import stat
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from simulator import backfill, cli
from simulator.config import Config, load_default, load_file
from simulator.daemon.core import Daemon
from simulator.drills.stack import start_prometheus
from simulator.exposition import FAMILIES, format_floats, layout, sample_values, series_count
from simulator.faults.catalogue import FaultSpec
from tests.conftest import need_binary, trainsim

END = "2025-06-01T06:00:00Z"
END_S = int(datetime(2025, 6, 1, 6, tzinfo=UTC).timestamp())
NOW = END_S + 3600.0  # the clock the tests give ``backfill.run``
TARGET = {"job": "trainsim", "instance": "trainsim:9310"}
# A scheduled lr spike that makes `victim` diverge, then a crash (its series vanish for two
# minutes); a run that diverges by itself; a NaN fault on a run named drill-*; a 2-D run with
# Adam, so parameters have a `dim`. Steps every 10 s, scraped every 15 s: they never line up.
FAULTY = """
defaults: {init: 5.5, steps: 100, step_interval: 10s, loop: true}
runs:
  - name: victim
    landscape: &seed {kind: quadratic, a: 1, c: 2, b: 1}
    optimizer: {kind: sgd, learning_rate: 0.05}
    faults:
      - {kind: lr_spike, at: 2m, duration: 3m, factor: 30}
      - {kind: crash, at: 12m, duration: 2m}
  - name: lr-1.1
    landscape: *seed
    optimizer: {kind: sgd, learning_rate: 1.1}
  - name: drill-nan
    landscape: *seed
    optimizer: {kind: sgd, learning_rate: 0.2}
    faults:
      - {kind: nan, at: 5m, duration: 1m}
  - name: adam-2d
    landscape: {kind: noisy_quadratic, dims: 2}
    init: 1
    optimizer: {kind: adam, learning_rate: 0.05}
"""
PER_RUN = {fam.sample_name for fam in FAMILIES}
LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+) (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Key = tuple[str, frozenset[tuple[str, str]]]



def run_backfill(tmp_path: Path, config: Path | None = None, duration: str = "30m",
                 tsdb: Path | None = None, **kwargs: Any) -> backfill.Result:
    output = kwargs.pop("output", tmp_path / "backfill.om")
    options = backfill.Options(
        config_file=None if config is None else str(config),
        duration_ms=backfill.parse_duration(duration), output=None if output is None
        else str(output), tsdb=None if tsdb is None else str(tsdb),
        end_ms=backfill.parse_end(END), **kwargs)
    return backfill.run(options, NOW)


def read_series(path: Path) -> dict[Key, list[tuple[int, str]]]:
    """Every series of an OpenMetrics file: its (timestamp, value text) samples in file order."""
    out: dict[Key, list[tuple[int, str]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = LINE.fullmatch(line)
        assert m, line
        out[(m[1], frozenset(LABEL.findall(m[2])))].append((int(m[4]), m[3]))
    return out


def by_instant(series: dict[Key, list[tuple[int, str]]], names: set[str],
               ) -> dict[int, dict[Key, str]]:
    out: dict[int, dict[Key, str]] = defaultdict(dict)
    for key, samples in series.items():
        if key[0] in names:
            for t, value in samples:
                out[t][key] = value
    return out


def expected(daemon: Daemon, target: dict[str, str]) -> dict[Key, str]:
    """The daemon's per-run samples now, as the live exposition formats them, with the
    target's labels."""
    snap = daemon.snapshot
    rows_of = layout(snap)
    out: dict[Key, str] = {}
    for fam in FAMILIES:
        labels, rows = rows_of[fam.name]
        values = format_floats(sample_values(snap, fam))
        for lv, row, value in zip(labels, rows.tolist(), values, strict=True):
            if snap.present[row]:
                own = dict(zip(fam.labels, lv, strict=True))
                if own["run"].startswith("drill-"):
                    own["drill"] = "true"
                out[(fam.sample_name, frozenset({**own, **target}.items()))] = value
    return out


def drive(config: Config, start_s: int, interval_s: int, count: int) -> Iterator[Daemon]:
    """A daemon of its own, started at ``start_s``, at each instant of the window."""
    now = [0.0]
    daemon = Daemon(config, clock=lambda: now[0], wall=lambda: float(start_s))
    for i in range(count):
        now[0] = float(i * interval_s)
        daemon.tick()
        yield daemon


# --------------------------------------------------------------------------- a real Prometheus


def test_prometheus_answers_the_closed_form_from_the_backfilled_blocks(tmp_path: Path) -> None:
    need_binary("promtool")
    need_binary("prometheus")
    workdir = tmp_path / "prom"
    result = run_backfill(tmp_path, duration="6h", tsdb=workdir / "data", output=None)
    assert result.blocks and result.blocks >= 3
    spec = next(s for s in load_default().runs if s.name == "lr-0.2")
    interval, period = spec.step_interval, (spec.steps + 1) * spec.step_interval
    start = END_S - 6 * 3600
    offsets = [0, 15, 30, 45, 17 * 60 + 45, int(period) - 15, int(period), int(period) + 30,
               3 * 3600 + 600, 6 * 3600 - 15, 6 * 3600]
    with start_prometheus(workdir, "global: {scrape_interval: 15s}\n") as prom:
        for offset in offsets:
            elapsed = offset % period if spec.loop else offset
            k = min(int(elapsed // interval), spec.steps)
            w = 2 + (1 - 2 * 0.2) ** k * (5.5 - 2)
            answer = prom.api("query", query='trainsim_loss{run="lr-0.2"}',
                              time=str(start + offset))["result"]
            assert len(answer) == 1, (offset, answer)
            assert answer[0]["metric"] == {"__name__": "trainsim_loss", "run": "lr-0.2",
                                           **TARGET}
            assert answer[0]["value"][0] == start + offset
            assert float(answer[0]["value"][1]) == pytest.approx((w - 2) ** 2 + 1, rel=1e-12), \
                (offset, k)
        up = prom.api("query", query="up", time=str(start + 3600))["result"]
        assert [r["metric"] for r in up] == [{"__name__": "up", **TARGET}]
        restarts = prom.api("query", query='trainsim_run_restarts_total{run="lr-0.2"}',
                            time=str(END_S))["result"]
        assert restarts[0]["value"][1] == str(int(6 * 3600 // period))


def test_a_6h_backfill_of_the_default_config_ends_at_a_loop_boundary(tmp_path: Path) -> None:
    spec = load_default().runs[0]
    assert (6 * 3600) % ((spec.steps + 1) * spec.step_interval) == 0
    run_backfill(tmp_path, duration="6h")
    series = read_series(tmp_path / "backfill.om")
    for name in ("lr-0.05", "lr-0.2", "lr-0.7", "lr-1.1"):
        labels = frozenset({"run": name, **TARGET}.items())
        assert series[("trainsim_steps_total", labels)][-1] == (END_S, "0.0")
        assert series[("trainsim_steps_total", labels)][0] == (END_S - 6 * 3600, "0.0")


# --------------------------------------------------------------------------- bit for bit


def test_every_sample_is_the_daemons_own_at_that_instant(tmp_path: Path, write_config: Any,
                                                         ) -> None:
    config = write_config(FAULTY)
    result = run_backfill(tmp_path, config, duration="30m")
    window = result.window
    got = by_instant(read_series(tmp_path / "backfill.om"), PER_RUN)
    seen: set[str] = set()
    for i, daemon in enumerate(drive(load_file(config), END_S - 1800, 15, window.count)):
        t = END_S - 1800 + 15 * i
        want = expected(daemon, TARGET)
        assert got.get(t, {}) == want, t
        seen |= {f"{name}{dict(labels).get('alert', dict(labels).get('fault', ''))}"
                 for (name, labels), value in want.items() if value == "1.0"}
        present = dict(zip(daemon.snapshot.names, daemon.snapshot.present.tolist(), strict=True))
        seen |= {"victim crashed"} if not present["victim"] else set()
        seen |= {"nan loss"} if any(v == "NaN" for v in want.values()) else set()
    assert len(got) == window.count == 121
    assert {"trainsim_alert_activedivergence", "trainsim_fault_activelr_spike",
            "trainsim_faults_injected_totalcrash", "trainsim_fault_activenan", "victim crashed",
            "nan loss"} <= seen


def test_the_file_is_openmetrics_written_series_after_series(tmp_path: Path,
                                                             write_config: Any) -> None:
    run_backfill(tmp_path, write_config(FAULTY), duration="30m")
    text = (tmp_path / "backfill.om").read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # the strict parser
    assert families["trainsim_steps"].type == "counter"
    assert "# TYPE trainsim_steps counter\n" in text
    assert {f.name for f in FAMILIES} <= set(families)
    assert text.endswith("\n# EOF\n")
    headers = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(headers) == len(set(headers))
    last: dict[Key, int] = {}
    done: set[Key] = set()
    previous: Key | None = None
    for line in text.splitlines():
        m = LINE.fullmatch(line)
        if m is None:
            continue
        key = (m[1], frozenset(LABEL.findall(m[2])))
        if key != previous:
            assert key not in done, f"{key} is not contiguous"
            if previous is not None:
                done.add(previous)
        assert int(m[4]) > last.get(key, -1), f"{key} goes back in time"
        last[key] = int(m[4])
        previous = key


def test_a_series_that_appears_mid_window_is_written_from_then_on(tmp_path: Path) -> None:
    config = load_default()
    start_s, count, inject_at = END_S - 600, 41, 17
    daemons = drive(config, start_s, 15, count)
    with (tmp_path / "spill").open("w+b") as spill:
        recorder = backfill.Recorder(spill)
        snapshots = []
        for i, daemon in enumerate(daemons):
            if i == inject_at:
                daemon.inject("lr-0.7", FaultSpec("hang", 0.0, 60.0))
            recorder.add(daemon.snapshot, backfill.own_metrics(daemon))
            snapshots.append(expected(daemon, TARGET))
        scrape = backfill.Scrape(15_000, tuple(sorted(TARGET.items())))
        window = backfill.Window(start_s * 1000, 15_000, count)
        with (tmp_path / "out.om").open("wb") as out:
            written = recorder.write(out, scrape, window.timestamps())
    series = read_series(tmp_path / "out.om")
    hang = frozenset({"run": "lr-0.7", "fault": "hang", **TARGET}.items())
    active = series[("trainsim_fault_active", hang)]
    assert [t for t, _ in active] == [start_s + 15 * i for i in range(inject_at, count)]
    assert [v for _, v in active][:4] == ["1.0"] * 4 and active[-1][1] == "0.0"
    got = by_instant(series, PER_RUN)
    assert [got[start_s + 15 * i] for i in range(count)] == snapshots
    assert written.samples == sum(len(s) for s in series.values())


def test_target_labels_and_relabelling(tmp_path: Path, write_config: Any) -> None:
    run_backfill(tmp_path, write_config(FAULTY), duration="5m", job="train", instance="a:1",
                 labels=(("cluster", "eu-1"),))
    series = read_series(tmp_path / "backfill.om")
    target = {"job": "train", "instance": "a:1", "cluster": "eu-1"}
    assert ("up", frozenset(target.items())) in series
    runs = {dict(labels)["run"]: dict(labels) for name, labels in series
            if name == "trainsim_loss"}
    assert runs["drill-nan"] == {"run": "drill-nan", "drill": "true", **target}
    assert runs["victim"] == {"run": "victim", **target}
    build = [dict(labels) for name, labels in series if name == "trainsim_build_info"]
    assert build == [{"version": cli.__version__, **target}]


def test_the_daemons_own_series_are_its_own(tmp_path: Path) -> None:
    result = run_backfill(tmp_path, duration="5m")
    series = read_series(tmp_path / "backfill.om")
    labels = frozenset(TARGET.items())
    start = END_S - 300
    assert series[("trainsim_config_last_reload_success_timestamp_seconds", labels)][0] == (
        start, format_floats(np.array([float(start)]))[0])
    daemon = next(drive(load_default(), start, 15, 1))
    own = series_count(daemon.snapshot) + len(backfill.own_metrics(daemon))
    assert result.written.series == own + 1  # and up
    assert series[("trainsim_exposed_series", labels)][0][1] != ""


# --------------------------------------------------------------------------- promtool


def test_promtool_creates_blocks_holding_every_series_and_sample(tmp_path: Path,
                                                                 write_config: Any) -> None:
    promtool = need_binary("promtool")
    tsdb = tmp_path / "tsdb"
    result = run_backfill(tmp_path, write_config(FAULTY), duration="3h", tsdb=tsdb)
    assert result.output == str(tmp_path / "backfill.om")
    listed = subprocess.run([promtool, "tsdb", "list", str(tsdb)], capture_output=True,
                            text=True, timeout=60, check=True).stdout.splitlines()
    rows = [line.split() for line in listed[1:]]
    # Blocks are cut at 2 h boundaries: 03:00-04:00, 04:00-06:00, and the last instant, 06:00.
    assert len(rows) == result.blocks == 3
    assert sum(int(r[4]) for r in rows) == result.written.samples  # NUM SAMPLES: none dropped
    analyzed = subprocess.run([promtool, "tsdb", "analyze", str(tsdb), rows[-1][0]],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"Series: {result.written.series}\n" in analyzed
    assert result.written.series == len(read_series(tmp_path / "backfill.om"))


def test_backfill_command_runs_promtool_into_a_tsdb(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    need_binary("promtool")
    status, out, err = trainsim(capsys, "backfill", "--duration", "1h", "--end", END,
                                "--tsdb", str(tmp_path / "tsdb"))
    assert (status, err) == (0, "")
    assert re.fullmatch(r"wrote a temporary file: 77 series, 18557 samples, \d+ bytes, 241 "
                        r"instants every 15s from 2025-06-01T05:00:00Z to 2025-06-01T06:00:00Z\n"
                        r"promtool created 2 blocks\n", out), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tsdb"]


def test_the_file_is_readable_by_everyone(tmp_path: Path) -> None:
    run_backfill(tmp_path, duration="1m")
    mode = (tmp_path / "backfill.om").stat().st_mode
    assert mode & stat.S_IROTH
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backfill.om"]


# --------------------------------------------------------------------------- mistakes


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("trainsim: "), err
    return lines[0]


@pytest.mark.parametrize("argv,message", [
    (("--duration", "0s"), "trainsim: --duration: must be longer than 0s, got '0s'"),
    (("--duration=-6h",), "trainsim: --duration: must be a duration like 6h, 90m or 15s, got "
                          "'-6h'"),
    (("--duration", "six hours"), "trainsim: --duration: must be a duration like 6h, 90m or "
                                  "15s, got 'six hours'"),
    (("--duration", "1h", "--interval", "7s"),
     "trainsim: backfill: --duration: 1h is not a whole multiple of --interval 7s"),
    (("--duration", "1h", "--interval", "2h"),
     "trainsim: backfill: --duration: 1h is not a whole multiple of --interval 2h"),
    (("--duration", "1000d", "--interval", "1s"),
     "trainsim: backfill: --duration: 24000h at --interval 1s is 86400001 instants, more than "
     f"{backfill.MAX_INSTANTS}"),
    (("--duration", "100y", "--interval", "1d"),
     f"trainsim: backfill: --duration: 876000h back from --end {END} reaches before 1970"),
    (("--duration", "1h", "--end", "2999-01-01T00:00:00Z"),
     "trainsim: backfill: --end: 2999-01-01T00:00:00Z is in the future"),
    (("--duration", "1h", "--end", "yesterday"),
     "trainsim: --end: must be now or an RFC3339 time like 2026-12-02T06:00:00Z, got "
     "'yesterday'"),
    (("--duration", "1h", "--end", "2025-02-30T00:00:00Z"),
     "trainsim: --end: must be now or an RFC3339 time like 2026-12-02T06:00:00Z, got "
     "'2025-02-30T00:00:00Z'"),
    (("--duration", "1h", "--end", "2025-06-01 06:00:00"),
     "trainsim: --end: must be now or an RFC3339 time like 2026-12-02T06:00:00Z, got "
     "'2025-06-01 06:00:00'"),
    (("--duration", "1h", "--label", "run=x"),
     "trainsim: backfill: --label: run is a label of trainsim's own series"),
    (("--duration", "1h", "--label", "instance=x"),
     "trainsim: backfill: --label: instance has a flag of its own (--instance)"),
    (("--duration", "1h", "--label", "__name__=x"),
     "trainsim: --label: must be NAME=VALUE with NAME a label name (not starting with __), got "
     "'__name__=x'"),
])
def test_a_bad_window_or_label_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...],
        message: str) -> None:
    end = () if "--end" in argv else ("--end", END)
    status, out, err = trainsim(capsys, "backfill", *argv, *end,
                                "--output", str(tmp_path / "x.om"))
    assert (status, out) == (2, "")
    assert one_line(err) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where,reason", [
    ("missing/x.om", "cannot write {path}: No such file or directory"),
    (".", "{path} is a directory"),
])
def test_an_unwritable_output_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str, reason: str) -> None:
    path = tmp_path / where
    status, out, err = trainsim(capsys, "backfill", "--duration", "1h", "--output", str(path))
    assert (status, out) == (2, "")
    assert one_line(err) == f"trainsim: backfill: --output: {reason.format(path=path)}"


def test_output_or_tsdb_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = trainsim(capsys, "backfill", "--duration", "1h")
    assert status == 2
    assert one_line(err) == "trainsim: backfill: --output: required unless --tsdb is given"


def test_a_bad_config_is_reported_as_validate_does(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path, write_config: Any) -> None:
    config = write_config("runs: []\n")
    status, out, err = trainsim(capsys, "backfill", "--config.file", str(config), "--duration",
                                "1h", "--output", str(tmp_path / "x.om"))
    assert (status, out) == (2, "")
    assert err.startswith(f"{config}:1: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_missing_promtool_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    status, out, err = trainsim(capsys, "backfill", "--duration", "1h", "--tsdb",
                                str(tmp_path / "tsdb"))
    assert (status, out) == (1, "")
    assert one_line(err) == ("trainsim: backfill: --tsdb needs promtool, which is not on PATH "
                             "(Debian's prometheus package has it)")


def test_a_failing_promtool_says_why_in_one_line(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "promtool"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'usage: promtool ...' >&2\n"
                    "echo 'create blocks: mkdir /tsdb: permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    status, out, err = trainsim(capsys, "backfill", "--duration", "1h", "--end", END,
                                "--tsdb", str(tmp_path / "tsdb"), "--output",
                                str(tmp_path / "x.om"))
    assert (status, out) == (1, "")
    assert one_line(err) == ("trainsim: backfill: promtool tsdb create-blocks-from openmetrics "
                             "failed (exit status 1): create blocks: mkdir /tsdb: permission "
                             "denied")


def test_end_now_is_rounded_down_to_the_interval() -> None:
    now_ms = END_S * 1000 + 7_123
    window = backfill.plan(None, 3_600_000, 15_000, now_ms)
    assert window.end_ms == END_S * 1000 + 0 and window.count == 241
    assert backfill.plan(None, 60_000, 10_000, now_ms).end_ms == END_S * 1000
    assert backfill.parse_end("2025-06-01T08:00:00.5+02:00") == END_S * 1000 + 500


def test_the_shipped_scrape_config_gives_the_defaults() -> None:
    scrape, instance = backfill.shipped_scrape()
    assert (scrape.interval_ms, instance) == (15_000, "trainsim:9310")
    assert dict(scrape.labels) == TARGET
    assert scrape.series_labels({"run": "drill-x"}) == (
        'drill="true",instance="trainsim:9310",job="trainsim",run="drill-x"')
    assert scrape.series_labels({"run": "drillx"}) == (
        'instance="trainsim:9310",job="trainsim",run="drillx"')


@pytest.mark.parametrize("rule,labels,result", [
    ({"source_labels": ["run", "state"], "regex": "(.+)-(\\d+);(.*)", "target_label": "x",
      "replacement": "${2}_$1$$"}, {"run": "a-7", "state": "ok"},
     {"run": "a-7", "state": "ok", "x": "7_a$"}),
    ({"source_labels": ["run"], "regex": "a-(.*)", "target_label": "run", "replacement": "$9"},
     {"run": "a-7"}, {}),  # an empty result removes the label
    ({"source_labels": ["nope"], "target_label": "x", "replacement": "y"}, {"run": "a"},
     {"run": "a", "x": "y"}),  # no source label: the empty string, which (.*) matches
    ({"source_labels": ["run"], "regex": "b.*", "action": "keep"}, {"run": "a"}, None),
    ({"source_labels": ["run"], "regex": "a", "action": "drop"}, {"run": "a"}, None),
    ({"regex": "st.*", "action": "labeldrop"}, {"run": "a", "state": "s"}, {"run": "a"}),
    ({"regex": "st.*", "action": "labelkeep"}, {"run": "a", "state": "s"}, {"state": "s"}),
    ({"regex": "(r)un", "action": "labelmap", "replacement": "${1}_copy"}, {"run": "a"},
     {"run": "a", "r_copy": "a"}),
])
def test_relabelling_follows_prometheus(rule: dict[str, Any], labels: dict[str, str],
                                        result: dict[str, str] | None) -> None:
    got = dict(labels)
    kept = backfill.Relabel.of(rule).apply(got)
    assert (got if kept else None) == result


def test_an_unsupported_relabel_action_is_refused() -> None:
    with pytest.raises(ValueError, match="action 'hashmod' is not supported"):
        backfill.Relabel.of({"action": "hashmod", "modulus": 2, "target_label": "x"})
