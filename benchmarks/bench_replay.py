"""Replaying recordings: writing, loading and replaying W&B-style CSV files of 1M and 10M rows,
with the peak memory of each case split into anonymous memory and mapped file pages.

    python benchmarks/bench_replay.py [--rows 10000000] [--steps 500000]

Every case runs in a child process of its own, so its peak memory is its own:

- write: a CSV in W&B's wide form (``_step,_timestamp,train/loss,grad_norm,lr,val_loss``, a
  row a second, the validation loss on every 100th row, empty on the others), formatted with
  numpy, at 1M rows and at ``--rows``;
- load: ``load_file`` of a one-run config that replays it (what ``trainsim validate`` does):
  the file streamed, checked and stored as memory-mapped columns in temporary files;
- replay: that run (``step_interval: 1s``) stepped ``--steps`` steps of the large recording by
  ``Engine.advance`` calls of 10,000 s, with a snapshot after each call;
- fleet: 100 runs replaying the large recording from 100 different ``from_step`` (rows / 200
  apart), 10,000 steps each, in one ``advance`` call.

A replay child loads the config and builds the engine before it steps: each phase is timed and
its peaks reported apart (the table shows the stepping's, and what it started from).

Peak memory three ways: ``ru_maxrss`` (the kernel's high-water mark of the resident set, file
pages included) and, from a thread reading /proc/self/status every 20 ms, the highest
``RssAnon`` (the process's private memory: heap, numpy buffers) and ``RssFile`` (pages of
mapped files: the libraries, and the recording's columns as they are touched). Mapped file
pages are page cache the kernel can write back and drop under pressure; anonymous memory is
what the process needs. ``--rows`` changes the large size (the small one is 1M, or a tenth of
it); ``--steps`` is capped at a tenth of ``--rows``. A replay step takes about 0.43 ms, so the
default run takes about 7.5 minutes on 2 cores, ``--steps 1000000`` about 11.

Prints figures only; nothing here asserts a time. Record results in docs/benchmarks.md. The
files go to a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

# The parent imports neither numpy nor the simulator: a child's ru_maxrss starts from the
# resident set of the process it was forked from, which must stay small.

HEADER = b"_step,_timestamp,train/loss,grad_norm,lr,val_loss\n"
T0 = 1_700_000_000  # the first row's _timestamp; a row a second after it
VAL_EVERY = 100  # the validation loss is logged on every 100th row
WRITE_CHUNK = 1 << 19  # rows formatted at a time
ADVANCE = 10_000.0  # seconds of simulated time per Engine.advance call
FLEET_RUNS = 100
FLEET_STEPS = 10_000
STEPS = 500_000  # the one-run replay's default: about 3.5 minutes at 2,300 steps/s
SAMPLE_SECONDS = 0.02


# --------------------------------------------------------------------------- memory


def _status() -> dict[str, int]:
    """The Rss* lines of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Rss"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


class Peaks:
    """The highest RssAnon, RssFile and RssShmem of this process, sampled by a thread every
    20 ms; ``take`` returns the peaks since the previous ``take`` and starts a new phase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peak = self._now = _status()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now = _status()
        with self._lock:
            self._now = now
            self._peak = {k: max(v, self._peak.get(k, 0)) for k, v in now.items()}

    def _run(self) -> None:
        while True:
            self._sample()
            time.sleep(SAMPLE_SECONDS)

    def take(self) -> dict[str, int]:
        """Peaks of the phase that ends now (a last sample included); the next phase starts
        from the current values."""
        self._sample()
        with self._lock:
            peak, self._peak = self._peak, dict(self._now)
        return peak


def _maxrss() -> int:
    """The process's peak resident set so far (anonymous and file pages), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------- the CSV file


def _digits(x: Any, width: int) -> Any:
    """The decimal digits of non-negative integers ``x``, zero-padded to ``width``, as ASCII
    bytes: shape (len(x), width)."""
    import numpy as np

    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (x[:, None] // powers % 10 + ord("0")).astype(np.uint8)


def _fixed(x: Any, decimals: int) -> Any:
    """``x`` (in [0, 10)) as ``d.dddddd`` with ``decimals`` decimals: (len(x), 2 + decimals)."""
    import numpy as np

    scaled = np.minimum(np.rint(x * 10**decimals), 10 ** (decimals + 1) - 1).astype(np.int64)
    d = _digits(scaled, 1 + decimals)
    return np.concatenate([d[:, :1], np.full((len(x), 1), ord("."), np.uint8), d[:, 1:]], 1)


def _scientific(x: Any) -> Any:
    """``x`` (in [1e-9, 1)) as ``d.ddddde-0d``: (len(x), 11)."""
    import numpy as np

    exp = np.floor(np.log10(x)).astype(np.int64)
    mant = np.rint(x / 10.0**exp * 1e5).astype(np.int64)
    over = mant >= 1_000_000  # 9.999996 rounds up to 10.00000
    mant, exp = np.where(over, mant // 10, mant), exp + over
    d = _digits(mant, 6)
    n = len(x)
    return np.concatenate([d[:, :1], np.full((n, 1), ord("."), np.uint8), d[:, 1:],
                           np.frombuffer(b"e-0", np.uint8)[None, :].repeat(n, 0),
                           (ord("0") - exp)[:, None].astype(np.uint8)], 1)


def csv_rows(begin: int, end: int, total: int) -> bytes:
    """Rows ``begin`` to ``end`` of a ``total``-row run as W&B exports its history: a loss
    falling with noise, a gradient norm, a cosine learning rate, the validation loss every
    100th row (the cell empty on the others). Formatted as fixed-width digit arrays: each line
    a row of a byte matrix, the step's leading zeros and the empty cells masked out."""
    import numpy as np

    i = np.arange(begin, end, dtype=np.int64)
    n = len(i)
    rng = np.random.default_rng(begin)
    frac = i / total
    trend = np.exp(-5 * frac)
    loss = 0.3 + 2.2 * trend + 0.08 * rng.standard_normal(n) ** 2
    grad = np.abs(0.4 + 0.8 * trend * (1 + 0.2 * rng.standard_normal(n)))
    lr = 1e-6 + 1.5e-4 * (1 + np.cos(np.pi * frac))
    val = 0.35 + 2.2 * trend
    step_width = 10
    comma = np.full((n, 1), ord(","), np.uint8)
    parts = [_digits(i, step_width), comma, _digits(T0 + i, 10),
             np.frombuffer(b".000", np.uint8)[None, :].repeat(n, 0), comma,
             _fixed(loss, 6), comma, _fixed(grad, 5), comma, _scientific(lr), comma,
             _fixed(val, 6), np.full((n, 1), ord("\n"), np.uint8)]
    matrix = np.concatenate(parts, 1)
    keep = np.ones(matrix.shape, np.bool_)
    # The step without its leading zeros (0 keeps one digit).
    shown = 1 + sum((i >= 10**k).astype(np.int64) for k in range(1, step_width))
    keep[:, :step_width] = np.arange(step_width) >= (step_width - shown)[:, None]
    # The validation loss only on every 100th row.
    val_at = matrix.shape[1] - 1 - 8
    keep[:, val_at:val_at + 8] = (i % VAL_EVERY == 0)[:, None]
    return matrix[keep].tobytes()


# --------------------------------------------------------------------------- child cases


def case_write(path: Path, rows: int) -> dict[str, Any]:
    peaks = Peaks()
    t = time.perf_counter()
    with path.open("wb") as f:
        f.write(HEADER)
        for b in range(0, rows, WRITE_CHUNK):
            f.write(csv_rows(b, min(rows, b + WRITE_CHUNK), rows))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "bytes": path.stat().st_size, "peak": peaks.take(),
            "maxrss": _maxrss()}


def case_load(config: Path) -> dict[str, Any]:
    peaks = Peaks()
    from simulator.config import load_file

    base = peaks.take()  # the interpreter and its imports
    t = time.perf_counter()
    cfg = load_file(config)
    seconds = time.perf_counter() - t
    rec = cfg.runs[0].landscape.recording
    return {"seconds": seconds, "rows": len(rec), "base": base, "peak": peaks.take(),
            "after": _status(), "maxrss": _maxrss()}


def case_replay(config: Path, steps: int, call: float) -> dict[str, Any]:
    """Load the config, build its engine, and advance its runs to ``steps`` seconds (a step a
    second) by calls of ``call`` seconds, a snapshot after each: each phase timed, with its
    peaks and the values it started from."""
    peaks = Peaks()
    from simulator.config import load_file
    from simulator.engine import Engine

    base = peaks.take()
    t = time.perf_counter()
    cfg = load_file(config)
    load_seconds = time.perf_counter() - t
    loaded, at_engine = peaks.take(), _status()
    t = time.perf_counter()
    engine = Engine(cfg.runs)
    engine_seconds = time.perf_counter() - t
    built, at_steps = peaks.take(), _status()
    now, generation = 0.0, 0
    t = time.perf_counter()
    while now < steps:
        now = min(now + call, float(steps))
        engine.advance(now)
        generation += 1
        engine.snapshot(generation)
    seconds = time.perf_counter() - t
    return {"load_seconds": load_seconds, "engine_seconds": engine_seconds, "seconds": seconds,
            "calls": generation, "runs": len(cfg.runs),
            "run_steps": int(engine.runs.step.sum()), "base": base, "load_peak": loaded,
            "engine_start": at_engine, "engine_peak": built, "start": at_steps,
            "peak": peaks.take(), "after": _status(), "maxrss": _maxrss()}


def child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=("write", "load", "replay"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--call", type=float, default=ADVANCE)
    args = parser.parse_args(argv)
    if args.case == "write":
        out = case_write(args.path, args.rows)
    elif args.case == "load":
        out = case_load(args.path)
    else:
        out = case_replay(args.path, args.steps, args.call)
    print(json.dumps(out))


# --------------------------------------------------------------------------- parent


def run_child(*argv: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_replay {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def one_run(path: Path, csv: Path) -> Path:
    path.write_text(f"runs:\n  - name: replay\n    step_interval: 1s\n"
                    f"    replay: {{file: {csv.name}}}\n")
    return path


def fleet(path: Path, csv: Path, runs: int, apart: int) -> Path:
    lines = ["defaults: {step_interval: 1s}", "runs:"]
    for k in range(runs):
        lines += [f"  - name: replay-{k:03d}",
                  f"    replay: {{file: {csv.name}, from_step: {k * apart}}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _filesystem(path: str) -> str:
    """The type of the filesystem ``path`` is on (/proc/mounts' longest matching mount)."""
    best, kind = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


def _replay_lines(label: str, r: dict[str, Any], rate: str) -> tuple[str, str]:
    """A detail line (every phase) and a table row (the stepping phase) of a replay child."""
    anon, file = r["peak"]["RssAnon"], r["peak"]["RssFile"]
    detail = (f"{label}: load {r['load_seconds']:.1f} s (peak RssAnon "
              f"{mib(r['load_peak']['RssAnon'])}, RssFile {mib(r['load_peak']['RssFile'])}); "
              f"Engine built in {r['engine_seconds']:.2f} s (RssAnon "
              f"{mib(r['engine_start']['RssAnon'])}, peak {mib(r['engine_peak']['RssAnon'])}); "
              f"stepping {r['seconds']:.1f} s, {rate}: RssAnon {mib(r['start']['RssAnon'])} "
              f"at its start, peak {mib(anon)}; RssFile {mib(r['start']['RssFile'])} at its "
              f"start, peak {mib(file)}; process peak RSS {mib(r['maxrss'])}")
    row = (f"| {label} | {r['seconds']:.1f} s | {rate} | {mib(r['maxrss'])} | {mib(anon)} "
           f"({mib(r['start']['RssAnon'])} at the start) | {mib(file)} "
           f"({mib(r['start']['RssFile'])} at the start) |")
    return detail, row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="the large file's rows")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="steps of the one-run replay (at most a tenth of --rows)")
    args = parser.parse_args()
    large = args.rows
    small = min(1_000_000, large // 10)
    steps = min(args.steps, large // 10)
    fleet_steps = min(FLEET_STEPS, large // 10)
    apart = large // (2 * FLEET_RUNS)  # the last run starts half way through
    tmp_dir = tempfile.gettempdir()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}, "
          f"python {platform.python_version()}, numpy {version('numpy')}; temporary files in "
          f"{tmp_dir} ({_filesystem(os.path.realpath(tmp_dir))})")
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    start = time.perf_counter()
    rows: list[str] = []
    shmem = 0
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        work = Path(tmp)
        files = {}
        for n in (small, large):
            csv = work / f"wandb-{n}.csv"
            w = run_child("write", str(csv), "--rows", str(n))
            files[n] = csv
            print(f"write {n:,} rows: {w['bytes']:,} bytes in {w['seconds']:.1f} s", flush=True)
            rows.append(f"| write {n:,} rows: a {w['bytes'] / 1e6:,.0f} MB file | "
                        f"{w['seconds']:.1f} s | {n / w['seconds'] / 1e6:.2f} M rows/s | "
                        f"{mib(w['maxrss'])} | {mib(w['peak']['RssAnon'])} | "
                        f"{mib(w['peak']['RssFile'])} |")
        for n in (small, large):
            f = run_child("load", str(one_run(work / f"one-{n}.yaml", files[n])))
            assert f["rows"] == n, f  # every row is a step: the file loaded whole
            shmem = max(shmem, f["peak"].get("RssShmem", 0))
            print(f"load {n:,} rows: {f['seconds']:.1f} s; RssAnon {mib(f['base']['RssAnon'])} "
                  f"after the imports, peak {mib(f['peak']['RssAnon'])}, "
                  f"{mib(f['after']['RssAnon'])} after; RssFile "
                  f"{mib(f['base']['RssFile'])} after the imports, peak "
                  f"{mib(f['peak']['RssFile'])}, {mib(f['after']['RssFile'])} after; "
                  f"peak RSS {mib(f['maxrss'])}", flush=True)
            rows.append(f"| load {n:,} rows (`load_file`) | {f['seconds']:.1f} s | "
                        f"{n / f['seconds'] / 1e6:.2f} M rows/s | {mib(f['maxrss'])} | "
                        f"{mib(f['peak']['RssAnon'])} "
                        f"({mib(f['base']['RssAnon'])} after the imports) | "
                        f"{mib(f['peak']['RssFile'])} |")
        r = run_child("replay", str(work / f"one-{large}.yaml"), "--steps", str(steps))
        assert r["run_steps"] == steps, r
        shmem = max(shmem, r["peak"].get("RssShmem", 0))
        detail, row = _replay_lines(
            f"replay 1 run: {steps:,} steps of the {large:,}-row recording, "
            f"{r['calls']} `advance` call{'s' if r['calls'] > 1 else ''}", r,
            f"{steps / r['seconds']:,.0f} steps/s")
        print(detail, flush=True)
        rows.append(row)
        cfg = fleet(work / "fleet.yaml", files[large], FLEET_RUNS, apart)
        r = run_child("replay", str(cfg), "--steps", str(fleet_steps))
        assert r["run_steps"] == FLEET_RUNS * fleet_steps, r
        shmem = max(shmem, r["peak"].get("RssShmem", 0))
        detail, row = _replay_lines(
            f"replay {FLEET_RUNS} runs, `from_step` {apart:,} apart: {fleet_steps:,} steps "
            f"each, {r['calls']} `advance` call{'s' if r['calls'] > 1 else ''}", r,
            f"{r['run_steps'] / r['seconds'] / 1e3:,.0f} k run-steps/s")
        print(detail, flush=True)
        rows.append(row)
    print()
    print("| case | time | rate | peak RSS (ru_maxrss) | peak RssAnon | peak RssFile |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    if shmem:
        print(f"\nNote: up to {mib(shmem)} of shared memory (RssShmem): the temporary files "
              f"are on a tmpfs, in RAM, and the columns cannot be dropped from it.")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
