"""configs/recordings/digits-*.csv are what docs/record_digits.py writes, and each shows the
behaviour it is named for: a healthy descent, a real divergence, a real plateau."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docs" / "record_digits.py"
RECORDINGS = REPO / "configs" / "recordings"
NAMES = ("digits-healthy", "digits-divergent", "digits-plateau")
HEADER = "step,loss,grad_norm,lr,val_loss"
LOG10 = math.log(10.0)

Rows = list[list[str]]


@pytest.fixture(scope="module")
def record_digits() -> Iterator[ModuleType]:
    """docs/record_digits.py as a module (docs/ is no package)."""
    spec = importlib.util.spec_from_file_location("record_digits", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def read(path: Path) -> Rows:
    """The data rows of a recording, as strings; the header must be the documented one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER, path
    return [line.split(",") for line in lines[1:]]


def losses(name: str) -> list[float]:
    return [float(row[1]) for row in read(RECORDINGS / f"{name}.csv")]


def same_float(a: str, b: str) -> bool:
    """Equal up to rtol 1e-9 (another BLAS may round differently); nan and inf exactly."""
    x, y = float(a), float(b)
    if not (math.isfinite(x) and math.isfinite(y)):
        return a == b
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)


def test_a_short_run_writes_the_start_of_the_shipped_recordings(
        record_digits: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert record_digits.main(["--out", str(tmp_path / "a"), "--steps", "60"]) == 0
    assert record_digits.main(["--out", str(tmp_path / "b"), "--steps", "60"]) == 0
    capsys.readouterr()
    for name in NAMES:
        written = tmp_path / "a" / f"{name}.csv"
        assert written.read_bytes() == (tmp_path / "b" / f"{name}.csv").read_bytes(), name
        rows = read(written)
        shipped = read(RECORDINGS / f"{name}.csv")[:60]
        assert len(rows) == 60, name
        for row, want in zip(rows, shipped, strict=True):
            assert len(row) == len(want) == 5, (name, row)
            assert row[0] == want[0], (name, row, want)
            if want[4] == "":
                assert row[4] == "", (name, row)
            else:
                assert row[4] != "" and same_float(row[4], want[4]), (name, row, want)
            for got, expected in zip(row[1:4], want[1:4], strict=True):
                assert same_float(got, expected), (name, row, want)


@pytest.mark.parametrize("name", NAMES)
def test_a_recording_has_one_row_a_step_and_validation_every_10th(name: str) -> None:
    path = RECORDINGS / f"{name}.csv"
    assert path.stat().st_size < 80_000
    rows = read(path)
    assert [int(row[0]) for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert len(row) == 5, row
        assert (row[4] != "") == (int(row[0]) % 10 == 0), row
        assert float(row[3]) > 0.0, row
    finite = [math.isfinite(float(row[1])) for row in rows]
    assert all(finite[:-1]), "a run stops at its first non-finite loss"


def test_the_healthy_run_falls_and_settles() -> None:
    loss = losses("digits-healthy")
    assert len(loss) == 600
    assert all(math.isfinite(x) for x in loss)
    tail = loss[-50:]
    assert sum(tail) / len(tail) < loss[0] / 20
    assert max(tail) < loss[0] / 5
    val = [float(row[4]) for row in read(RECORDINGS / "digits-healthy.csv") if row[4]]
    assert val[-1] < val[0] / 5


def test_the_divergent_run_really_diverges() -> None:
    loss = losses("digits-divergent")
    rising = longest = 0
    for before, after in itertools.pairwise(loss):
        rising = rising + 1 if (after > before or not math.isfinite(after)) else 0
        longest = max(longest, rising)
    assert longest >= 20
    assert not math.isfinite(loss[-1]) or max(loss) >= 10 * loss[0]
    finite = [x for x in loss if math.isfinite(x)]
    assert max(finite) >= 1e6 * loss[0]
    assert min(loss[:50]) < loss[0] / 2, "a short descent before the rate grows too large"


def test_the_plateau_run_sits_at_log10_then_escapes() -> None:
    loss = losses("digits-plateau")
    near = [abs(x - LOG10) < 0.05 for x in loss]
    start = near.index(True)
    end = near.index(False, start)
    assert end - start >= 150
    flat = loss[start:start + 150]  # moves by under 0.5% in any 50 steps
    for i in range(len(flat) - 50):
        assert abs(flat[i + 50] - flat[i]) < 0.005 * flat[i], start + i + 1
    assert min(loss[end:]) < 1.0
    assert all(math.isfinite(x) for x in loss)
