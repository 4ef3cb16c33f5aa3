"""Replay runs: recordings in the forms the trackers write them, replayed step for step through
the detectors and the exposition, faults laid over them, and every mistake in a file answered
with its FILE:LINE."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.config import ConfigError, load_file
from simulator.daemon.core import Daemon, DrivenClock, SilentLog
from simulator.engine import STATES, Engine
from simulator.exposition import Renderer, series_count
from simulator.faults.timeline import FaultTargetError
from simulator.web.api import fault_from_body
from tests.conftest import need_binary, wait_for
from tests.test_hardware import scrape

REPO = Path(__file__).resolve().parent.parent
RECORDINGS = REPO / "configs" / "recordings"


def config(tmp_path: Path, files: dict[str, str], runs: str, defaults: str = "") -> Path:
    """Write ``files`` and a config of ``runs`` (YAML list items) beside them."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "replay.yaml"
    path.write_text((f"defaults: {defaults}\n" if defaults else "") + "runs:\n" + runs)
    return path


def run_series(path: Path, seconds: int, run: str = "rec") -> list[tuple[int, float, float]]:
    """(steps, loss, gradient norm) of ``run`` at each whole second up to ``seconds``."""
    engine = Engine(load_file(path).runs)
    row = engine.row_of[run]
    out = []
    for t in range(seconds + 1):
        engine.advance(float(t))
        s = engine.snapshot(t)
        out.append((int(s.steps[row]), float(s.loss[row]), float(s.gradient_norm[row])))
    return out


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)


LOSSES = [2.0 / (k + 1) for k in range(40)]


def simple_csv(n: int = 40) -> str:
    rows = [f"{k},{LOSSES[k]!r},{LOSSES[k] / 2!r},0.1" for k in range(n)]
    return "step,loss,grad_norm,lr\n" + "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- the formats


def test_a_wandb_history_export_replays_with_its_own_names_and_times(tmp_path: Path) -> None:
    # W&B's run history: _step, _runtime, _timestamp and the logged keys; evaluation logged
    # in calls of its own leaves the training cells empty on those rows (and vice versa).
    lines = ["_step,_runtime,_timestamp,train/loss,train/grad_norm,train/learning_rate,eval/loss"]
    t0 = 1_700_000_000.25
    for k in range(30):
        lines.append(f"{2 * k},{2.0 * k},{t0 + 2.0 * k},{LOSSES[k]!r},{LOSSES[k] / 3!r},"
                     f"{0.01 * (k + 1)!r},")
        if k % 10 == 9:
            lines.append(f"{2 * k + 1},{2.0 * k + 0.5},{t0 + 2.0 * k + 0.5},,,,"
                         f"{LOSSES[k] * 1.1!r}")
    path = config(tmp_path, {"history.csv": "\n".join(lines) + "\n"},
                  "  - name: rec\n    replay: {file: history.csv}\n")
    spec = load_file(path).runs[0]
    rec = spec.landscape.recording
    assert rec.columns == (("loss", "train/loss"), ("gradient_norm", "train/grad_norm"),
                           ("learning_rate", "train/learning_rate"),
                           ("validation_loss", "eval/loss"))
    assert rec.steps.tolist() == [2 * k for k in range(30)]  # evaluation rows are not steps
    assert rec.loss.tolist() == LOSSES[:30]
    assert rec.learning_rate.tolist() == [0.01 * (k + 1) for k in range(30)]
    val = rec.validation_loss
    assert np.isnan(val[:10]).all()  # before the first evaluation
    assert val[10:20].tolist() == [LOSSES[9] * 1.1] * 10  # the last evaluation holds
    assert spec.steps == 29 and spec.landscape.timed and spec.interval == 2.0
    assert rec.elapsed.tolist() == [2.0 * k for k in range(30)]


def test_a_pandas_csv_with_its_index_quoted_names_and_crlf_lines_reads_the_same(
        tmp_path: Path) -> None:
    rows = [f'{k},{k},{LOSSES[k]!r},0.5\r' for k in range(10)]
    text = ',"step","loss","lr"\r\n' + "\n".join(rows) + "\n"
    path = config(tmp_path, {"df.csv": text}, "  - name: rec\n    replay: {file: df.csv}\n")
    rec = load_file(path).runs[0].landscape.recording
    assert rec.loss.tolist() == LOSSES[:10] and rec.learning_rate.tolist() == [0.5] * 10
    assert rec.gradient_norm is None and rec.elapsed is None


def test_json_lines_wide_with_null_and_nan(tmp_path: Path) -> None:
    lines = [json.dumps({"step": k, "loss": LOSSES[k], "lr": 0.1,
                         "val_loss": None if k % 5 else LOSSES[k]}) for k in range(10)]
    lines[7] = '{"step": 7, "loss": NaN, "lr": 0.1}'
    path = config(tmp_path, {"run.jsonl": "\n".join(lines) + "\n"},
                  "  - name: rec\n    replay: {file: run.jsonl}\n")
    rec = load_file(path).runs[0].landscape.recording
    assert rec.loss[:7].tolist() == LOSSES[:7] and math.isnan(rec.loss[7])
    assert rec.validation_loss[6] == LOSSES[5]


def test_an_mlflow_metric_history_in_the_long_form(tmp_path: Path) -> None:
    # MlflowClient().get_metric_history(run_id, key) per key, written one after the other:
    # key, value, step, timestamp (milliseconds).
    rows = ["key,value,step,timestamp"]
    for key, scale in (("train_loss", 1.0), ("lr", 0.0), ("val_loss", 1.2)):
        for k in range(0, 20, 5 if key == "val_loss" else 1):
            value = 0.05 if key == "lr" else LOSSES[k] * scale
            rows.append(f"{key},{value!r},{k},{1_700_000_000_000 + 1500 * k}")
    path = config(tmp_path, {"mlflow.csv": "\n".join(rows) + "\n"},
                  "  - name: rec\n    replay: {file: mlflow.csv, time_unit: ms}\n")
    spec = load_file(path).runs[0]
    rec = spec.landscape.recording
    assert rec.columns == (("loss", "train_loss"), ("learning_rate", "lr"),
                           ("validation_loss", "val_loss"))
    assert rec.loss.tolist() == LOSSES[:20] and rec.learning_rate.tolist() == [0.05] * 20
    assert rec.validation_loss[7] == LOSSES[5] * 1.2
    assert rec.elapsed[3] == 4.5 and spec.interval == 1.5


def test_json_lines_in_the_long_form(tmp_path: Path) -> None:
    lines = [json.dumps({"metric": "loss", "step": k, "value": LOSSES[k]}) for k in range(8)]
    path = config(tmp_path, {"long.jsonl": "\n".join(lines) + "\n"},
                  "  - name: rec\n    replay: {file: long.jsonl}\n")
    assert load_file(path).runs[0].landscape.recording.loss.tolist() == LOSSES[:8]


def _tb_write(folder: Path, steps: range, tensor: bool = False, t0: float = 1e9) -> None:
    """Scalars written as PyTorch's SummaryWriter does (simple_value), or as TensorFlow 2's
    tf.summary.scalar does (a tensor with the scalars plugin's metadata)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.scalar import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for k in steps:
        values = []
        for tag, v in (("Loss/train", LOSSES[k]), ("lr", 0.25)):
            if tensor:
                values.extend(summary_v2.scalar_pb(tag, v).value)
            else:
                values.append(summary_pb2.Summary.Value(tag=tag, simple_value=v))
        writer.add_event(event_pb2.Event(wall_time=t0 + k, step=k,
                                         summary=summary_pb2.Summary(value=values)))
    writer.close()


@pytest.mark.parametrize("tensor", [False, True], ids=["pytorch", "tensorflow2"])
def test_tensorboard_event_files_of_a_resumed_run_read_with_tensorboards_reader(
        tmp_path: Path, tensor: bool) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    _tb_write(logdir, range(0, 12), tensor)
    os.utime(next(logdir.iterdir()), (1, 1))
    _tb_write(logdir, range(12, 20), tensor, t0=1e9 + 100)  # a second file: a resumed job
    assert len(list(logdir.iterdir())) == 2
    path = config(tmp_path, {}, "  - name: rec\n    replay: {file: logs}\n")
    spec = load_file(path).runs[0]
    rec = spec.landscape.recording
    assert rec.columns == (("loss", "Loss/train"), ("learning_rate", "lr"))
    assert rec.loss.tolist() == [float(np.float32(v)) for v in LOSSES[:20]]  # float32 scalars
    assert rec.elapsed[11] == 11.0 and rec.elapsed[12] == 100.0 + 12  # the gap of the restart
    assert spec.landscape.timed


def test_a_folder_of_event_files_whose_steps_go_back_names_the_event(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    _tb_write(logdir, range(0, 10))
    _tb_write(logdir, range(5, 10))
    first, second = sorted(logdir.iterdir())
    path = config(tmp_path, {}, "  - name: rec\n    replay: {file: logs}\n")
    res = validate(path)
    assert res.returncode == 2
    # The event's number in its file stands where a line would (the file version is event 1).
    assert res.stderr == (f"{second}:2: Loss/train: step 5 comes after step 9 (event 11 of "
                          f"{first.name}): steps must increase (a resumed run? keep one "
                          f"attempt's rows) (the recording of runs[0].replay, {path}:3)\n")


# --------------------------------------------------------------------------- mistakes


BAD = {
    "not a number": ("step,loss\n0,1.0\n1,abc\n", 3, "loss: 'abc' is not a number"),
    "duplicate step": ("step,loss\n0,1.0\n1,0.9\n1,0.8\n", 4,
                       "loss: step 1 repeats (line 3 has it too): log a step once"),
    "step going back": ("step,loss\n0,1.0\n5,0.9\n3,0.8\n", 4,
                        "loss: step 3 comes after step 5 (line 3): steps must increase (a "
                        "resumed run? keep one attempt's rows)"),
    "a step that is no integer": ("step,loss\n0,1.0\n1.5,0.9\n", 3,
                                  "step 1.5 is not an integer"),
    "a NaN learning rate": ("step,loss,lr\n0,1.0,0.1\n1,0.9,nan\n", 3,
                            "learning_rate: nan: a learning rate must be finite and >= 0"),
    "a negative gradient norm": ("step,loss,grad_norm\n0,1.0,0.5\n1,0.9,-2\n", 3,
                                 "gradient_norm: -2.0: a gradient norm is never negative"),
    "a short row": ("step,loss,lr\n0,1.0,0.1\n1,0.9\n", 3, "2 cells where the header has 3"),
    "an empty step cell": ("step,loss\n0,1.0\n,0.9\n", 3, "step: the cell is empty"),
    "time going back": ("step,time,loss\n0,10,1.0\n1,9,0.9\n", 3,
                        "time 9.0 is before the previous record's"),
    "no loss column": ("step,acc\n0,0.5\n", 1,
                       "the header has no loss column (looked for loss, train/loss, "
                       "train_loss, training_loss, Loss, train/loss_step, Loss/train; map one "
                       "with columns.loss); it has: 'step', 'acc'"),
    "an empty file": ("", 0, "the file is empty (expected a header line)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_mistake_in_a_recording_is_one_line_naming_its_file_and_line(
        tmp_path: Path, case: str) -> None:
    text, line, message = BAD[case]
    path = config(tmp_path, {"bad.csv": text},
                  "  - name: ok\n    optimizer: {learning_rate: 0.1}\n"
                  "  - name: rec\n    replay: {file: bad.csv}\n")
    res = validate(path)
    where = f"{tmp_path / 'bad.csv'}:{line}" if line else f"{tmp_path / 'bad.csv'}"
    assert res.returncode == 2
    assert res.stderr == (f"{where}: {message} (the recording of runs[1].replay, "
                          f"{path}:5)\n"), res.stderr
    assert res.stdout == ""


def test_a_mapped_column_that_is_absent_lists_the_header(tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  "  - name: rec\n    replay: {file: r.csv, columns: {loss: train/loss}}\n")
    with pytest.raises(ConfigError) as exc:
        load_file(path)
    assert str(exc.value).startswith(
        f"{tmp_path / 'r.csv'}:1: the header has no column 'train/loss' (columns.loss); it "
        f"has: 'step', 'loss', 'grad_norm', 'lr'")


def test_a_folder_without_event_files_says_so(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = config(tmp_path, {}, "  - name: rec\n    replay: {file: logs}\n")
    res = validate(path)
    assert res.returncode == 2
    assert res.stderr == (f"{tmp_path / 'logs'}: the folder holds no TensorBoard event file "
                          f"(events.out.tfevents.*) (the recording of runs[0].replay, "
                          f"{path}:3)\n")


@pytest.mark.parametrize(("replay", "line", "message"), [
    ("{file: missing.csv}", 3, "runs[0].replay.file: {d}/missing.csv: cannot read: No such "
                               "file or directory"),
    ("{file: fifo.csv}", 3, "runs[0].replay.file: {d}/fifo.csv: cannot read: not a regular "
                            "file"),
    ("{file: r.csv, from_step: 99}", 3, "runs[0].replay.from_step: is past the recording's "
                                        "last step (39)"),
    ("{file: r.csv, timing: recorded}", 3, "runs[0].replay.timing: the recording has no "
                                           "time column (map one with columns.time)"),
    ("{file: r.csv, format: parquet}", 3, "runs[0].replay.format: must be one of csv, "
                                          "jsonl, tensorboard, got str 'parquet'"),
    ("{file: r.csv, columns: {loss: [a]}}", 3, "runs[0].replay.columns: loss: must be a "
                                               "column, key or tag name, got a list"),
])
def test_a_mistake_in_the_replay_block_names_its_key(tmp_path: Path, replay: str, line: int,
                                                      message: str) -> None:
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.csv")
    path = config(tmp_path, {"r.csv": simple_csv()}, f"  - name: rec\n    replay: {replay}\n")
    res = validate(path)
    assert res.returncode == 2
    assert res.stderr == f"{path}:{line}: {message.format(d=tmp_path)}\n", res.stderr


def test_a_replay_run_has_no_landscape_of_its_own_but_ignores_the_defaults_one(
        tmp_path: Path) -> None:
    defaults = "{optimizer: {learning_rate: 0.1}, init: 5.5, steps: 900}"
    ok = config(tmp_path, {"r.csv": simple_csv()},
                "  - name: synthetic\n  - name: rec\n    replay: {file: r.csv}\n", defaults)
    specs = {s.name: s for s in load_file(ok).runs}
    assert specs["synthetic"].steps == 900 and specs["rec"].steps == 39  # all it holds
    bad = config(tmp_path, {}, "  - name: rec\n    replay: {file: r.csv}\n    init: 3\n"
                               "    steps: 50\n")
    res = validate(bad)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{bad}:4: runs[0].init: a replay run takes its values from its recording: it has no "
        "init",
        f"{bad}:5: runs[0].steps: the recording holds 39 steps after its first from there "
        "(stride 1), got 50"]


def test_a_fault_a_recording_cannot_show_is_refused_in_the_config_and_the_api(
        tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  "  - name: rec\n    replay: {file: r.csv}\n"
                  "    faults: [{kind: lr_spike, at: 5s}, {kind: drift, at: 5s}]\n")
    res = validate(path)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"{path}:4: runs[0].faults[0]: lr_spike cannot apply to a replay run: a recording's "
        "loss was logged at its own learning rate and cannot respond to another one "
        "(`loss_spike` shows a loss that jumps)",
        f"{path}:4: runs[0].faults[1]: drift cannot apply to a replay run: a recording has no "
        "optimum to move (`plateau` or `loss_spike` show a loss that stops improving)"]
    path.write_text("runs:\n  - name: rec\n    replay: {file: r.csv}\n")
    d = Daemon(load_file(path), clock=DrivenClock(), wall=lambda: 0.0, log=SilentLog())
    with pytest.raises(FaultTargetError, match="run 'rec': lr_spike cannot apply to a replay"):
        d.inject("rec", fault_from_body({"kind": "lr_spike"}, 1.0))


# --------------------------------------------------------------------------- the replay


def test_each_step_is_the_recordings_row_from_its_offset_at_its_stride(tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  "  - name: rec\n    replay: {file: r.csv, from_step: 4, stride: 3}\n"
                  "    steps: 6\n    step_interval: 2s\n")
    series = run_series(path, 16)
    assert [s for s, _, _ in series[::2]] == [0, 1, 2, 3, 4, 5, 6, 6, 6]  # then finished
    assert [loss for _, loss, _ in series[::2]] == [LOSSES[4 + 3 * min(k, 6)] for k in range(9)]
    assert [g for _, _, g in series[::2]] == [LOSSES[4 + 3 * min(k, 6)] / 2 for k in range(9)]


def test_a_looping_replay_starts_again_from_its_first_row(tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv(6)},
                  "  - name: rec\n    replay: {file: r.csv}\n    loop: true\n")
    series = run_series(path, 13)
    assert [s for s, _, _ in series] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1]
    assert series[6][1] == LOSSES[0] and series[13][1] == LOSSES[1]


def test_recorded_times_pace_the_steps_and_a_gap_is_a_hang(tmp_path: Path) -> None:
    times = [0, 10, 20, 30, 630, 640]  # ten minutes without a step after step 3
    rows = "\n".join(f"{k},{1e9 + t},{LOSSES[k]!r}" for k, t in enumerate(times))
    path = config(tmp_path, {"t.csv": f"step,timestamp,loss\n{rows}\n"},
                  "  - name: rec\n    replay: {file: t.csv, time_scale: 2}\n")
    engine = Engine(load_file(path).runs)
    seen = []
    for t in (0, 4.99, 5, 15, 300, 314.99, 315, 320):
        engine.advance(t)
        seen.append((t, int(engine.snapshot(0).steps[0]), engine.next_due()))
    assert seen == [(0, 0, 5.0), (4.99, 0, 5.0), (5, 1, 10.0), (15, 3, 315.0),
                    (300, 3, 315.0), (314.99, 3, 315.0), (315, 4, 320.0), (320, 5, math.inf)]


def test_the_same_config_gives_the_same_series_bit_for_bit(tmp_path: Path) -> None:
    path = config(tmp_path, {}, f"  - name: rec\n    replay: {{file: "
                                f"{RECORDINGS / 'digits-healthy.csv'}}}\n"
                                "    faults: [{kind: noise_burst, at: 20s, duration: 30s}]\n")
    outs = []
    for _ in range(2):
        clock = DrivenClock()
        d = Daemon(load_file(path), clock=clock, wall=lambda: 1e9, log=SilentLog())
        body = ""
        renderer = Renderer()
        for t in np.arange(0, 120, 0.7):
            clock.now = float(t)
            d.tick()
            body += renderer.render(d.snapshot)
        outs.append(body)
    assert outs[0] == outs[1] and "trainsim_gradient_norm" in outs[0]


def test_the_real_recordings_meet_the_detectors_as_their_training_did() -> None:
    engine = Engine(load_file(REPO / "configs" / "scenarios" / "replay-divergence.yaml").runs)
    plateau = Engine(load_file(REPO / "configs" / "scenarios" / "replay-plateau.yaml").runs)
    first: dict[tuple[str, str], int] = {}
    for e, seconds, every in ((engine, 3000, 5), (plateau, 8000, 10)):
        for t in range(0, seconds, every):
            for tr in e.advance(float(t)).transitions:
                first.setdefault((tr.run, tr.new), tr.step)
    assert first[("divergent", "diverged")] == 44  # loss 253 after ten rising steps
    assert ("healthy", "stalled") not in first and ("healthy", "diverged") not in first
    assert first[("healthy", "finished")] == 599
    assert 160 <= first[("plateau", "stalled")] <= 200  # a window of 160 flat steps
    assert 250 <= first[("plateau", "running")] <= 290  # the loss breaks away
    assert ("plateau", "diverged") not in first


def test_a_non_finite_loss_in_the_file_diverges_the_run_there(tmp_path: Path) -> None:
    rows = "\n".join(f"{k},{v}" for k, v in enumerate(["1.0", "0.9", "0.8", "inf", "nan", "1"]))
    path = config(tmp_path, {"r.csv": f"step,loss\n{rows}\n"},
                  "  - name: rec\n    replay: {file: r.csv}\n")
    engine = Engine(load_file(path).runs)
    events = [tr for t in range(6) for tr in engine.advance(float(t)).transitions]
    assert [(tr.new, tr.step) for tr in events] == [("diverged", 3)]
    assert engine.snapshot(0).loss[0] == 0.8  # held at its last finite value


# --------------------------------------------------------------------------- faults


def replay_daemon(tmp_path: Path, faults: str = "[]") -> tuple[Daemon, DrivenClock]:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  f"  - name: rec\n    replay: {{file: r.csv}}\n    faults: {faults}\n")
    clock = DrivenClock()
    return Daemon(load_file(path), clock=clock, wall=lambda: 0.0, log=SilentLog()), clock


def trace(d: Daemon, clock: DrivenClock, until: int, start: int = 0) -> list[tuple[float, ...]]:
    """(steps, loss, gradient norm, present) of the run at each second from ``start``."""
    out = []
    for t in range(start, until + 1):
        clock.now = float(t)
        d.tick()
        s = d.snapshot
        out.append((s.steps[0], s.loss[0], s.gradient_norm[0], float(s.present[0])))
    return out


def test_plateau_freezes_the_loss_and_the_replay_goes_on_from_that_row(tmp_path: Path) -> None:
    d, clock = replay_daemon(tmp_path, "[{kind: plateau, at: 5s, duration: 4s, factor: 0.5}]")
    got = trace(d, clock, 12)
    assert [s for s, *_ in got] == list(range(13))  # steps keep counting
    assert [loss for _, loss, *_ in got] == [*LOSSES[:5], *[LOSSES[4]] * 4, *LOSSES[5:9]]
    assert got[6][2] == LOSSES[4] / 2 * 0.5  # the gradient norm is scaled


def test_hang_stops_the_steps_and_crash_restarts_from_the_first_row(tmp_path: Path) -> None:
    d, clock = replay_daemon(tmp_path, "[{kind: hang, at: 3s, duration: 4s}, "
                                       "{kind: crash, at: 10s, duration: 3s}]")
    got = trace(d, clock, 15)
    assert [s for s, *_ in got] == [0, 1, 2, 2, 2, 2, 2, 3, 4, 5, 5, 5, 5, 0, 1, 2]
    assert [p for *_, p in got][10:13] == [0.0, 0.0, 0.0]  # the series vanish
    assert got[13][1] == LOSSES[0] and got[15][1] == LOSSES[2]


def test_loss_spike_gradient_explosion_and_nan_change_what_is_reported(tmp_path: Path) -> None:
    d, clock = replay_daemon(tmp_path, "[{kind: loss_spike, at: 2s, steps: 2, factor: 8}, "
                                       "{kind: gradient_explosion, at: 6s, steps: 1}, "
                                       "{kind: nan, at: 9s, steps: 1}]")
    got = trace(d, clock, 10)
    assert [loss for _, loss, *_ in got[:5]] == [LOSSES[0], LOSSES[1], 8 * LOSSES[2],
                                                 8 * LOSSES[3], LOSSES[4]]
    assert got[6][2] == 100 * LOSSES[6] / 2 and got[7][2] == LOSSES[7] / 2
    assert math.isnan(got[9][1]) and math.isnan(got[9][2])
    assert STATES[d.snapshot.state[0]] == "diverged"


def test_noise_burst_adds_seeded_noise_to_the_recorded_gradient_norm(tmp_path: Path) -> None:
    fault = "[{kind: noise_burst, at: 2s, steps: 3, sigma: 0.1, factor: 1}]"
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        runs.append(trace(*replay_daemon(tmp_path / str(i), fault), 6))
    assert runs[0] == runs[1]  # seeded: the same bits every time
    noisy = [g for _, _, g, _ in runs[0]]
    clean = [LOSSES[k] / 2 for k in range(7)]
    assert noisy[:2] == clean[:2] and noisy[5:] == clean[5:]
    assert all(g >= 0 and g != clean[k] for k, g in enumerate(noisy[2:5], start=2))
    assert [loss for _, loss, *_ in runs[0]] == LOSSES[:7]  # the loss does not respond


def test_a_fault_injected_live_through_the_api_applies_to_the_replay(tmp_path: Path) -> None:
    d, clock = replay_daemon(tmp_path)
    trace(d, clock, 3)
    d.inject("rec", fault_from_body({"kind": "loss_spike", "steps": 2,
                                     "params": {"factor": 3}}, 1.0))
    got = trace(d, clock, 6, start=4)  # the window is [3s, 5s): steps 4 (and 3, already done)
    assert [loss for _, loss, *_ in got] == [3 * LOSSES[4], LOSSES[5], LOSSES[6]]
    values = scrape(d)
    assert values[("trainsim_faults_injected_total", (("fault", "loss_spike"), ("run", "rec")))]


# --------------------------------------------------------------------------- what is exported


def test_a_replay_exports_what_it_recorded_and_no_series_it_does_not_have(
        tmp_path: Path) -> None:
    rows = "\n".join(f"{k},{LOSSES[k]!r}" for k in range(10))
    path = config(tmp_path, {"loss.csv": f"step,loss\n{rows}\n", "full.csv": simple_csv()},
                  "  - name: bare\n    replay: {file: loss.csv}\n"
                  "  - name: full\n    replay: {file: full.csv}\n"
                  "  - name: synthetic\n    init: [1, 2]\n"
                  "    landscape: {kind: quadratic, dims: 2}\n"
                  "    optimizer: {learning_rate: 0.1}\n")
    clock = DrivenClock()
    d = Daemon(load_file(path), clock=clock, wall=lambda: 0.0, log=SilentLog())
    clock.now = 3.0
    d.tick()
    values = scrape(d)

    def runs_of(name: str) -> set[str]:
        return {dict(k[1])["run"] for k in values if k[0] == name}

    assert runs_of("trainsim_loss") == {"bare", "full", "synthetic"}
    assert runs_of("trainsim_gradient_norm") == {"full", "synthetic"}
    assert runs_of("trainsim_learning_rate") == {"full", "synthetic"}
    assert runs_of("trainsim_update_norm") == {"synthetic"}
    assert runs_of("trainsim_parameter") == {"synthetic"}
    assert values[("trainsim_run_info", (("landscape", "replay"), ("optimizer", "recorded"),
                                         ("run", "full"), ("schedule", "recorded")))] == 1.0
    assert values[("trainsim_loss", (("run", "full"),))] == LOSSES[3]
    rendered = Renderer().render(d.snapshot)
    assert series_count(d.snapshot) == sum(
        1 for line in rendered.splitlines() if not line.startswith("#"))
    promtool = need_binary("promtool")
    res = subprocess.run([promtool, "check", "metrics"], input=d.exposition(False, False),
                         capture_output=True, timeout=30)
    assert res.returncode == 0 and not res.stdout + res.stderr, res.stderr


def test_a_recording_is_mapped_from_disk_not_held_in_memory(tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()}, "  - name: rec\n    replay: {file: r.csv}\n")
    rec = load_file(path).runs[0].landscape.recording
    for column in (rec.steps, rec.loss, rec.gradient_norm, rec.learning_rate):
        assert isinstance(column, np.memmap) or isinstance(column.base, np.memmap)


def test_a_disk_too_small_for_the_arrays_is_one_line_naming_tmpdir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        """A temporary file on a full disk."""

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    from simulator.replay import recording
    monkeypatch.setattr(recording.tempfile, "TemporaryFile", Full)
    path = config(tmp_path, {"r.csv": simple_csv()}, "  - name: rec\n    replay: {file: r.csv}\n")
    with pytest.raises(ConfigError) as exc:
        load_file(path)
    assert str(exc.value) == (
        f"{tmp_path / 'r.csv'}: no room for its arrays in {tempfile.gettempdir()} (No space "
        f"left on device): set TMPDIR to a larger disk (the recording of runs[0].replay, "
        f"{path}:3)")


def test_a_reload_with_a_broken_recording_is_rejected_and_the_runs_keep_running(
        daemon_factory: Any, tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  "  - name: rec\n    replay: {file: r.csv}\n    loop: true\n"
                  "    step_interval: 100ms\n")
    d = daemon_factory(config=path, speed=1)

    def steps() -> float:
        from simulator.drills.stack import http_get
        for fam in text_string_to_metric_families(http_get(f"{d.url}/metrics")[1].decode()):
            for s in fam.samples:
                if s.name == "trainsim_steps_total":
                    return s.value
        return -1.0

    wait_for(lambda: steps() > 0, what="first steps")
    (tmp_path / "r.csv").write_text(simple_csv() + "40,abc,1,0.1\n")
    d.proc.send_signal(signal.SIGHUP)

    def rejected() -> list[dict[str, Any]]:
        return [e for e in d.events() if e.get("event") == "config_rejected"]

    event = wait_for(rejected, what="config_rejected")[0]
    assert event["errors"] == [f"{tmp_path / 'r.csv'}:42: loss: 'abc' is not a number (the "
                               f"recording of runs[0].replay, {path}:3)"]
    before = steps()
    wait_for(lambda: steps() != before, what="the replay to keep stepping")
    assert d.proc.poll() is None


def test_a_drills_incident_must_name_a_replay_run_of_its_config(tmp_path: Path) -> None:
    path = config(tmp_path, {"r.csv": simple_csv()},
                  "  - name: rec\n    replay: {file: r.csv}\n"
                  "  - name: synthetic\n    optimizer: {learning_rate: 0.1}\n")
    drill = tmp_path / "drill.yaml"
    drill.write_text(f"config: {path.name}\nincidents:\n  - {{run: synthetic, at: 1m}}\n"
                     "expect:\n  - {alert: TrainsimRunDiverging, firing_within: 1m}\n")
    res = validate(drill)
    assert res.returncode == 2
    assert res.stderr == (f"{drill}:3: incidents[0].run: must be a replay run of the config "
                          "(it has: rec)\n")
    drill.write_text(drill.read_text().replace("synthetic", "rec"))
    res = validate(drill)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (f"{drill}: ok (drill drill: 0 injections, 1 incident, "
                          "1 expectation)\n")
