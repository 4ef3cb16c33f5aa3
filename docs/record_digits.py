"""Records three real training runs of a small network as CSV files that trainsim replays.

    .venv/bin/python docs/record_digits.py                  # write configs/recordings/digits-*.csv
    .venv/bin/python docs/record_digits.py --out /tmp/rec   # somewhere else
    .venv/bin/python docs/record_digits.py --steps 60       # every run cut to 60 steps

Trains a multilayer perceptron written in numpy (64 inputs -> 32 ReLU -> 10, softmax
cross-entropy) on scikit-learn's bundled digits data set (8x8 images of handwritten digits,
shipped inside the package: nothing is downloaded). The inputs are standardised with the mean
and standard deviation of the training split; 297 images are held out for validation. Every run
uses plain minibatch SGD (50 images a batch, reshuffled each epoch) with the learning rate
warmed up linearly over the first 100 steps to its peak and held there. The three runs share the
split, the initial weights' directions and the batch order; they differ in one setting each:

* ``digits-healthy.csv``: peak learning rate 0.1. The loss falls steadily and settles.
* ``digits-divergent.csv``: peak learning rate 6. The net trains while the rate is small, then,
  once the rate passes what the loss surface can take, the loss grows exponentially (both
  layers feed each other's growth) until it overflows; the run stops at the first non-finite
  loss, which is written as ``nan`` or ``inf``.
* ``digits-plateau.csv``: peak learning rate 0.1 with the initial weights scaled by 1e-5. At
  tiny weights the net sits next to the saddle at zero: the loss stays at log(10), the
  gradients of the weights are tiny (what is left is the batch noise of the output bias), and
  only after the weights have grown for a few hundred steps does the loss escape and fall.

Each file has the header ``step,loss,grad_norm,lr,val_loss`` and one row per optimiser step
from step 1: the loss of that step's minibatch and the global L2 norm of its gradient (all
weights and biases), both computed before the update, the learning rate of the update, and
the loss on the whole validation split every 10th step (empty on the other rows, as exports
from experiment trackers leave it). Everything is seeded, so two runs write byte-identical
files; floats are written with ``repr`` and read back exactly.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits

Array = NDArray[np.float64]
Labels = NDArray[np.int64]
Params = list[Array]  # [W1, b1, W2, b2]

OUT = Path(__file__).resolve().parent.parent / "configs" / "recordings"
HEADER = "step,loss,grad_norm,lr,val_loss"
HIDDEN = 32
CLASSES = 10
VALIDATION = 297
BATCH = 50
WARMUP = 100
VAL_EVERY = 10
SPLIT_SEED, INIT_SEED, ORDER_SEED = 0, 1, 2


@dataclass(frozen=True)
class Run:
    """One recording: its file name, peak learning rate, initial weight scale and length."""

    name: str
    peak_lr: float
    init_scale: float
    steps: int


RUNS = (
    Run("digits-healthy", peak_lr=0.1, init_scale=1.0, steps=600),
    Run("digits-divergent", peak_lr=6.0, init_scale=1.0, steps=600),
    Run("digits-plateau", peak_lr=0.1, init_scale=1e-5, steps=800),
)


@dataclass(frozen=True)
class Data:
    """The standardised training and validation splits."""

    x_train: Array
    y_train: Labels
    x_val: Array
    y_val: Labels


@dataclass(frozen=True)
class Row:
    """What one optimiser step writes."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    val_loss: float | None


def load_data() -> Data:
    """The digits, split once by a fixed permutation and standardised with training statistics."""
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float64)
    y = np.asarray(digits.target, dtype=np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    val, train = order[:VALIDATION], order[VALIDATION:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0.0] = 1.0  # pixels that are blank in every training image
    x = (x - mean) / std
    return Data(x[train], y[train], x[val], y[val])


def init_params(scale: float) -> Params:
    """LeCun-normal weights (times ``scale``) and zero biases, from the same seed every run."""
    rng = np.random.default_rng(INIT_SEED)
    inputs = 64
    w1 = rng.standard_normal((inputs, HIDDEN)) * (scale / math.sqrt(inputs))
    w2 = rng.standard_normal((HIDDEN, CLASSES)) * (scale / math.sqrt(HIDDEN))
    return [w1, np.zeros(HIDDEN), w2, np.zeros(CLASSES)]


def batches(n: int) -> Iterator[NDArray[np.int64]]:
    """Indices of the minibatches, epoch after epoch, each epoch in a new seeded order."""
    rng = np.random.default_rng(ORDER_SEED)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - BATCH + 1, BATCH):
            yield order[start:start + BATCH]


def forward(params: Params, x: Array) -> tuple[Array, Array, Array]:
    """Pre-activations and activations of the hidden layer, and the log-probabilities."""
    w1, b1, w2, b2 = params
    pre = x @ w1 + b1
    hidden = np.maximum(pre, 0.0)
    logits = hidden @ w2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return pre, hidden, log_probs


def cross_entropy(log_probs: Array, y: Labels) -> float:
    """Mean negative log-likelihood of the labels (``+ 0.0`` turns a ``-0.0`` into ``0.0``)."""
    return float(-log_probs[np.arange(len(y)), y].mean()) + 0.0


def loss_and_grads(params: Params, x: Array, y: Labels) -> tuple[float, Params]:
    """The minibatch loss and its gradient with respect to every parameter, by backprop."""
    _, _, w2, _ = params
    pre, hidden, log_probs = forward(params, x)
    d_logits = np.exp(log_probs)
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    d_pre = (d_logits @ w2.T) * (pre > 0.0)
    grads = [x.T @ d_pre, d_pre.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
    return cross_entropy(log_probs, y), grads


def global_norm(grads: Params) -> float:
    """The L2 norm of all gradients together, scaled so that huge gradients do not overflow."""
    flat = np.concatenate([g.ravel() for g in grads])
    peak = float(np.max(np.abs(flat)))
    if peak == 0.0 or not math.isfinite(peak):
        return peak
    return peak * math.sqrt(float(np.sum((flat / peak) ** 2)))


def learning_rate(step: int, peak: float) -> float:
    """Linear warmup over the first ``WARMUP`` steps, then the peak rate."""
    return peak * min(1.0, step / WARMUP)


def train(run: Run, data: Data, steps: int) -> list[Row]:
    """Runs SGD for ``steps`` steps, or until the loss is no longer finite; one row per step."""
    params = init_params(run.init_scale)
    order = batches(len(data.x_train))
    rows: list[Row] = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(1, steps + 1):
            index = next(order)
            loss, grads = loss_and_grads(params, data.x_train[index], data.y_train[index])
            val_loss = None
            if step % VAL_EVERY == 0:
                val_loss = cross_entropy(forward(params, data.x_val)[2], data.y_val)
            lr = learning_rate(step, run.peak_lr)
            rows.append(Row(step, loss, global_norm(grads), lr, val_loss))
            if not math.isfinite(loss):
                break
            for param, grad in zip(params, grads, strict=True):
                param -= lr * grad
    return rows


def format_row(row: Row) -> str:
    """One CSV line; ``repr`` round-trips every float exactly (``nan`` and ``inf`` included)."""
    val = "" if row.val_loss is None else repr(row.val_loss)
    return f"{row.step},{row.loss!r},{row.grad_norm!r},{row.lr!r},{val}"


def write_csv(path: Path, rows: list[Row]) -> None:
    """Writes the header and the rows with ``\\n`` line ends."""
    lines = [HEADER, *(format_row(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Trains the three runs and writes one CSV per run into ``--out``."""
    parser = argparse.ArgumentParser(description="Records three real training runs as CSV files.")
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"directory for the CSV files (default: {OUT})")
    parser.add_argument("--steps", type=int, default=None,
                        help="number of steps of every run (default: each run's own)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data()
    for run in RUNS:
        rows = train(run, data, run.steps if args.steps is None else args.steps)
        path = args.out / f"{run.name}.csv"
        write_csv(path, rows)
        print(f"{path}: {len(rows)} steps, loss {rows[0].loss:.4g} -> {rows[-1].loss:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
