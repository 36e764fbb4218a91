#!/usr/bin/env python
r"""The adding problem: a GRU and a plain tanh RNN of the same size, side by side.

Each sequence has two input channels (Hochreiter and Schmidhuber 1997; Le et al. 2015;
Arjovsky et al. 2016): channel 0 holds random numbers, uniform in [0, 1); channel 1 is 0
except at two steps, one in each half of the sequence, where it is 1. The target is the sum
of the two marked numbers. The network reads the whole sequence and answers once, from its
state at the last step: it has to notice the marks, keep the two numbers for up to T steps,
and add them. Always answering 1 (the mean of the sum) scores a mean squared error of
Var(U₁ + U₂) = 2 · 1/12 = 1/6 ≈ 0.167; anything learnt beats that.

Sequences in a batch have different lengths (each uniform in [0.8 T, T], passed to the
layer as ``lengths``; the marks lie in the halves of each sequence's own length), so the
answer comes from each sequence's state at its own last step: ``H_n`` of the layer.

    python examples/adding.py                   # the table of docs/gradient-flow.md
    python examples/adding.py --T 100 --cells d2l rnn --steps 1000
    python examples/adding.py --gradient-flow   # the gradient-flow table and figure

The model is a layer (:class:`npgru.GRU` or :class:`npgru.RNN`) and a linear head on its last
valid state, ŷ = H_n W_o + b_o, trained on the mean squared error with Adam and global-norm
clipping (:mod:`npgru.optim`). Every gradient is by hand: dL/dŷ = 2 (ŷ − y) / B, the head's
gradients, then dL/dH_n = dL/dŷ W_oᵀ goes to ``layer.backward(None, dH_n, cache)``.

Initialisation: the library's weights are N(0, 0.01²) with zero biases; two changes,
both written out in :meth:`Adder.__init__`:

* GRU: the update gate's bias ``b_z`` starts at ``--gate-bias`` (default 2), so that
  Z_t = σ(2) ≈ 0.88 and each step keeps most of its state from the start (eq. 4);
* RNN: ``W_hh`` starts as a random orthogonal matrix (all singular values 1), the usual
  remedy for its products of Jacobians (``docs/derivation.md``, section 14).

``--gradient-flow`` measures ‖∂ℓ/∂H_t‖ for t = T … 0 (:func:`gradient_flow`, by the step
functions :func:`npgru.gru.step_backward` and :func:`npgru.rnn.step_backward`, one Jacobian
at a time), with the library's initialisation, with the example's and after training, for
the RNN and both GRU variants; it prints the table and draws the figure of
``docs/gradient-flow.md`` (matplotlib, the ``plot`` extra).

On a few CPU cores, run it with ``OMP_NUM_THREADS=1``: at these sizes BLAS threads cost more
than they save. ``docs/gradient-flow.md`` has the output, the machine and the time taken.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import npgru
except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import npgru
from npgru import FlatDict, gru, optim, rnn

#: The cells compared: the plain tanh RNN and the two GRU variants.
CELLS = ("rnn", "d2l", "reset_after")
NAMES = {"rnn": "tanh RNN", "d2l": "GRU (d2l)", "reset_after": "GRU (reset_after)"}
#: The lengths of the table, and the length the gradient flow is measured at.
TABLE_T, FLOW_T = (20, 50, 100, 200), 100
#: The shortest sequence of a batch, as a fraction of T.
MIN_FRACTION = 0.8
#: What always answering 1 scores: Var(U₁ + U₂) for U₁, U₂ uniform on [0, 1).
BASELINE = 1.0 / 6.0
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / "gradient_flow.png"


# --------------------------------------------------------------------------------------
# the data


class Batch(NamedTuple):
    """One batch of the adding problem.

    X (T, B, 2): channel 0 the numbers (zero past each sequence's end), channel 1 the two
    marks; lengths (B,) in [⌈min_fraction·T⌉, T]; y (B, 1) the sums; marks (2, B) the
    marked steps (0-based): marks[0] in [0, ⌊ℓ/2⌋), marks[1] in [⌊ℓ/2⌋, ℓ) for length ℓ.
    """

    X: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    marks: np.ndarray


def make_batch(
    rng: np.random.Generator,
    T: int,
    batch_size: int,
    *,
    min_fraction: float = MIN_FRACTION,
    dtype: Any = "float32",
) -> Batch:
    """Draw ``batch_size`` adding-problem sequences of at most ``T`` steps.

    Sequence b has ℓ_b steps, uniform in [⌈min_fraction·T⌉, T] (``min_fraction=1``: all T);
    one mark is uniform in the first half [0, ⌊ℓ_b/2⌋), the other in the second half
    [⌊ℓ_b/2⌋, ℓ_b), and the target is the sum of the two marked numbers.
    """
    if T < 2:
        raise npgru.ConfigError(f"T must be at least 2 (one step in each half), got {T}")
    shortest = max(2, math.ceil(min_fraction * T))
    lengths = rng.integers(shortest, T + 1, size=batch_size)
    half = lengths // 2
    first = (rng.random(batch_size) * half).astype(np.int64)  # uniform in [0, half)
    second = half + (rng.random(batch_size) * (lengths - half)).astype(np.int64)
    X = np.zeros((T, batch_size, 2))
    X[:, :, 0] = rng.random((T, batch_size))
    X[:, :, 0] *= np.arange(T)[:, None] < lengths[None, :]  # nothing past the end
    columns = np.arange(batch_size)
    X[first, columns, 1] = 1.0
    X[second, columns, 1] = 1.0
    y = X[first, columns, 0] + X[second, columns, 0]
    return Batch(X.astype(dtype), lengths, y[:, None].astype(dtype), np.stack([first, second]))


def constant_mse(y: np.ndarray, answer: float = 1.0) -> float:
    """The mean squared error of always answering ``answer`` (1: about 1/6)."""
    return float(np.mean((y - answer) ** 2))


# --------------------------------------------------------------------------------------
# the model


class Adder:
    """A recurrent layer and a linear head on each sequence's last valid state.

    ŷ = H_n W_o + b_o, with H_n (B, H) the layer's state at each sequence's last valid step;
    W_o (H, 1), b_o (1,). The layer's parameters and the head's live in one
    :class:`~npgru.flat.FlatDict`, ``params`` (the layer reads its names from it), so one
    call clips and one call updates them all.

    Args:
        cell: ``"rnn"`` (:class:`npgru.RNN`), ``"d2l"`` or ``"reset_after"`` (:class:`npgru.GRU`).
        hidden_size: H.
        gate_bias: the GRU's update-gate bias at the start (``b_z``; 0 is the library's).
        orthogonal: start the RNN's ``W_hh`` as a random orthogonal matrix.
        seed: the layer's seed; the head and the orthogonal matrix draw with ``seed + 1``.
        dtype: ``"float32"`` or ``"float64"``.
    """

    def __init__(
        self,
        cell: str,
        hidden_size: int,
        *,
        gate_bias: float = 2.0,
        orthogonal: bool = True,
        seed: int = 0,
        dtype: Any = "float32",
    ):
        if cell not in CELLS:
            raise npgru.ConfigError(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}")
        self.cell = cell
        if cell == "rnn":
            self.layer: npgru.layer.Recurrent = npgru.RNN(2, hidden_size, dtype=dtype, seed=seed)
        else:
            self.layer = npgru.GRU(2, hidden_size, variant=cell, dtype=dtype, seed=seed)
        rng = np.random.default_rng(seed + 1)
        arrays = dict(self.layer.params)
        arrays["W_o"] = rng.normal(0.0, 0.01, (hidden_size, 1)).astype(dtype)
        arrays["b_o"] = np.zeros(1, dtype=dtype)
        self.params = FlatDict.from_arrays(arrays)
        self.layer.params = self.params  # one buffer, as GRULanguageModel does
        if cell == "rnn" and orthogonal:
            Q, R = np.linalg.qr(rng.normal(size=(hidden_size, hidden_size)))
            self.params["W_hh"] = (Q * np.sign(np.diag(R))).astype(dtype)  # Haar-distributed
        if cell != "rnn":
            self.params["b_z"][...] = gate_bias  # Z_t = σ(gate_bias) at the start

    def predict(self, X: np.ndarray, lengths: Any = None) -> tuple[np.ndarray, Any, np.ndarray]:
        """ŷ (B, 1), the layer's cache and H_n (B, H), the last valid states."""
        _, H_n, cache = self.layer.forward(X, lengths=lengths)
        H_last = H_n[0]  # one layer, one direction
        return H_last @ self.params["W_o"] + self.params["b_o"], cache, H_last

    def loss_and_grads(self, X: np.ndarray, lengths: Any, y: np.ndarray) -> tuple[float, FlatDict]:
        """The mean squared error L = mean_b (ŷ_b − y_b)² and its gradient, by hand."""
        y_hat, cache, H_last = self.predict(X, lengths)
        B = y.shape[0]
        d_y = 2.0 * (y_hat - y) / B  # dL/dŷ
        grads = self.params.empty_like()
        grads["W_o"] = H_last.T @ d_y
        grads["b_o"] = np.sum(d_y, axis=0)
        dH_n = (d_y @ self.params["W_o"].T)[None]  # dL/dH_n, (1, B, H)
        self.layer.backward(None, dH_n, cache, grads=grads)  # writes the layer's entries
        return float(np.mean((y_hat - y) ** 2)), grads

    def mse(self, batch: Batch, chunk: int = 500) -> float:
        """The mean squared error on ``batch``, ``chunk`` sequences at a time."""
        total = 0.0
        for s in range(0, batch.y.shape[0], chunk):
            y_hat, _, _ = self.predict(batch.X[:, s : s + chunk], batch.lengths[s : s + chunk])
            total += float(np.sum((y_hat - batch.y[s : s + chunk]) ** 2))
        return total / batch.y.shape[0]


@dataclass(frozen=True)
class Config:
    """The training budget of one run (the same for every cell)."""

    hidden_size: int = 64
    batch_size: int = 64
    steps: int = 2000
    lr: float = 3e-3
    clip: float = 1.0
    gate_bias: float = 2.0
    test_size: int = 2000


def train(
    model: Adder,
    T: int,
    config: Config,
    *,
    seed: int = 0,
    log_every: int = 0,
    label: str = "",
) -> list[tuple[int, float]]:
    """``config.steps`` steps of Adam on fresh batches, clipped to ``config.clip``.

    Returns (step, mean training loss since the previous entry), every ``log_every`` steps
    (and also printed, when ``log_every`` > 0); 10 entries when ``log_every`` is 0.
    """
    rng = np.random.default_rng(seed)
    state = optim.new_state(model.params, "adam")
    every = log_every or max(1, config.steps // 10)
    history, running = [], 0.0
    for step in range(1, config.steps + 1):
        batch = make_batch(rng, T, config.batch_size, dtype=model.layer.dtype)
        loss, grads = model.loss_and_grads(batch.X, batch.lengths, batch.y)
        if not math.isfinite(loss):
            raise npgru.DivergenceError(f"{label} diverged at step {step}: loss {loss}")
        optim.clip_grad_norm(grads, config.clip)
        optim.step(model.params, grads, config.lr, state)
        running += loss
        if step % every == 0:
            history.append((step, running / every))
            running = 0.0
            if log_every:
                print(f"  {label} step {step:5d}  train MSE {history[-1][1]:.4f}", flush=True)
    return history


def test_set(T: int, size: int, seed: int = 12345) -> Batch:
    """The fixed test set of length ``T`` (its own seed, never a training batch)."""
    return make_batch(np.random.default_rng([seed, T]), T, size)


# --------------------------------------------------------------------------------------
# gradient flow: ∂ℓ/∂H_t, one Jacobian at a time


def state_gradients(model: Adder, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    r"""∂ℓ_b/∂H_t for t = 0 … T and every sequence b, one Jacobian at a time.

    ℓ_b = (ŷ_b − y_b)² is sequence b's squared error, with ŷ read from H_T (every sequence
    runs all T steps here: no lengths, so step t means the same in every sequence). The
    sequence is run by the teaching path of the cell's module (``rnn_forward``: one cache
    per step), then the gradient goes back one ``step_backward`` at a time
    (:func:`npgru.gru.step_backward`, :func:`npgru.rnn.step_backward`). Each call multiplies
    the row of sequence b by the step's Jacobian M_t (``docs/derivation.md``: eq. 11 and
    section 7 for the GRU, eq. 23 and section 14 for the RNN), so after k calls it holds
    ∂ℓ_b/∂H_T · M_T ⋯ M_{T−k+1} = ∂ℓ_b/∂H_{T−k}. The sequences of a batch do not mix, so
    row b is also B times ∂L/∂H_t of the batch's mean loss L.

    The arithmetic is float64 whatever the model's dtype (its parameters are copied): far
    back the gradients can be smaller than float32 can hold.

    Args:
        model: an :class:`Adder` (one layer, one direction).
        X: inputs (T, B, 2).
        y: targets (B, 1).

    Returns:
        dHs (T + 1, B, H), float64: ``dHs[t, b]`` is ∂ℓ_b/∂H_t^{(b)}, from t = 0 (the
        initial state) to t = T (the state the head reads).
    """
    module = rnn if model.cell == "rnn" else gru
    params = {name: np.asarray(a, dtype=np.float64) for name, a in model.params.items()}
    cell_params = {name: params[name] for name in module.PARAM_NAMES[model.layer.variant]}
    T, B = X.shape[:2]
    H0 = np.zeros((B, model.layer.hidden_size))
    Hs, caches = module.rnn_forward(np.asarray(X, dtype=np.float64), H0, cell_params)
    y_hat = Hs[-1] @ params["W_o"] + params["b_o"]
    dHs = np.empty((T + 1, B, model.layer.hidden_size))
    dHs[T] = (2.0 * (y_hat - y)) @ params["W_o"].T  # ∂ℓ_b/∂H_T = 2 (ŷ_b − y_b) W_oᵀ
    for t in range(T, 0, -1):  # caches[t - 1] is step t: H_{t-1} → H_t
        _, dHs[t - 1], _ = module.step_backward(dHs[t], caches[t - 1])  # × M_t
    return dHs


def gradient_flow(model: Adder, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The numbers of ``docs/gradient-flow.md``: ‖∂ℓ_b/∂H_t‖₂ averaged over the batch.

    Returns:
        norms (T + 1,): ``norms[t]`` is the mean over b of the length of
        :func:`state_gradients`' row ``[t, b]``, t = 0 … T.
    """
    return np.mean(np.linalg.norm(state_gradients(model, X, y), axis=2), axis=1)


def flow_table(flows: dict[str, dict[str, np.ndarray]], T: int) -> str:
    """The gradient-flow numbers as a markdown table: ‖∂ℓ/∂H_t‖ at a few t, per cell."""
    steps = [t for t in (T, T - 1, T - 5, T - 10, T - 25, T - 50, T - 100, 0) if t >= 0]
    steps = sorted(set(steps), reverse=True)
    head = "| cell | when | " + " | ".join(f"t = {t}" for t in steps) + " | ratio t = 0 : t = T |"
    lines = [head, "|" + "---|" * (len(steps) + 3)]
    for cell, by_when in flows.items():
        for when, norms in by_when.items():
            values = " | ".join(f"{norms[t]:.2e}" for t in steps)
            lines.append(f"| {NAMES[cell]} | {when} | {values} | {norms[0] / norms[T]:.2e} |")
    return "\n".join(lines)


def plot_flow(flows: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Draw ‖∂ℓ/∂H_t‖ against t, at initialisation (left) and after training (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    whens = list(next(iter(flows.values())))
    fig, axes = plt.subplots(1, len(whens), figsize=(4.4 * len(whens), 4.0))
    styles = {"rnn": ("#b3261e", "-"), "d2l": ("#1f5fbf", "-"), "reset_after": ("#2e7d32", "--")}
    for ax, when in zip(np.atleast_1d(axes), whens, strict=True):
        for cell, by_when in flows.items():
            norms = by_when[when]
            color, line = styles[cell]
            ax.semilogy(np.arange(norms.size), norms, line, color=color, label=NAMES[cell])
        ax.set_title(when)
        ax.set_xlabel("t (the head reads H_T, at the right)")
        ax.grid(True, which="major", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("mean ‖∂ℓ/∂H_t‖")
    np.atleast_1d(axes)[0].legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------
# the command


def machine() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and the cores usable."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def run_table(Ts: list[int], cells: list[str], config: Config, *, seed: int, verbose: bool) -> str:
    """Train every cell at every T; return the markdown table of test MSE."""
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for T in Ts:
        test = test_set(T, config.test_size)
        for cell in cells:
            model = Adder(cell, config.hidden_size, gate_bias=config.gate_bias, seed=seed)
            start = time.perf_counter()
            train(model, T, config, seed=seed, log_every=config.steps // 5 if verbose else 0,
                  label=f"{NAMES[cell]} T={T}")  # fmt: skip
            seconds = time.perf_counter() - start
            results[cell, T] = (model.mse(test), seconds)
            print(f"T = {T:3d}  {NAMES[cell]:18s} test MSE {results[cell, T][0]:.4f}  "
                  f"({seconds:.0f} s)", flush=True)  # fmt: skip
    lines = ["| T | " + " | ".join(f"{NAMES[c]} test MSE" for c in cells) + " | always 1 |"]
    lines.append("|" + "---|" * (len(cells) + 2))
    for T in Ts:
        baseline = constant_mse(test_set(T, config.test_size).y)
        row = " | ".join(f"{results[c, T][0]:.4f}" for c in cells)
        lines.append(f"| {T} | {row} | {baseline:.4f} |")
    total = sum(s for _, s in results.values())
    each = ", ".join(f"{NAMES[c]} {sum(results[c, T][1] for T in Ts) / 60:.1f}" for c in cells)
    lines.append("")
    lines.append(f"Training time: {total / 60:.1f} min in all ({each}).")
    return "\n".join(lines)


def jacobian_terms(model: Adder, X: np.ndarray) -> str:
    """What sets the size of the Jacobians M_t on the inputs X (T, B, 2), in one line.

    RNN: ‖W_hh‖₂ (its largest singular value) and the mean slope tanh'(A_t) = 1 − H_t², the
    two factors of M_t = diag(1 − H_t²) W_hhᵀ (``docs/derivation.md``, section 14). GRU: the
    mean update gate Z_t, whose diag(Z_t) is the first term of M_t (section 7), at the two
    marked steps of each sequence and at the others.
    """
    module = rnn if model.cell == "rnn" else gru
    params = {name: np.asarray(model.params[name], dtype=np.float64)
              for name in module.PARAM_NAMES[model.layer.variant]}  # fmt: skip
    H0 = np.zeros((X.shape[1], model.layer.hidden_size))
    Hs, caches = module.rnn_forward(np.asarray(X, dtype=np.float64), H0, params)
    if model.cell == "rnn":
        slope = float(np.mean(1.0 - Hs * Hs))
        return f"‖W_hh‖₂ = {np.linalg.norm(params['W_hh'], 2):.2f}, mean 1 − H_t² = {slope:.2f}"
    Z = np.stack([c.Z for c in caches])  # (T, B, H)
    marked = np.asarray(X[:, :, 1]) > 0.5  # (T, B)
    return (f"mean Z_t = {Z[marked].mean():.2f} at the marked steps, "
            f"{Z[~marked].mean():.2f} at the others")  # fmt: skip


def run_flow(T: int, config: Config, *, seed: int, figure: Path | None) -> str:
    """Gradient flow for every cell at one T: with the library's initialisation, with the
    example's (b_z, orthogonal W_hh), and after training from the example's."""
    measure = make_batch(np.random.default_rng([seed, 777]), T, 200, min_fraction=1.0)
    flows: dict[str, dict[str, np.ndarray]] = {}
    notes = []
    for cell in CELLS:
        library = Adder(cell, config.hidden_size, gate_bias=0.0, orthogonal=False, seed=seed)
        model = Adder(cell, config.hidden_size, gate_bias=config.gate_bias, seed=seed)
        flows[cell] = {
            "library initialisation": gradient_flow(library, measure.X, measure.y),
            "example's initialisation": gradient_flow(model, measure.X, measure.y),
        }
        notes.append(f"{NAMES[cell]}, library initialisation: "
                     f"{jacobian_terms(library, measure.X)}")  # fmt: skip
        notes.append(f"{NAMES[cell]}, example's initialisation: "
                     f"{jacobian_terms(model, measure.X)}")  # fmt: skip
        start = time.perf_counter()
        train(model, T, config, seed=seed)
        seconds = time.perf_counter() - start
        mse = model.mse(test_set(T, config.test_size))
        print(f"T = {T}  {NAMES[cell]:18s} test MSE {mse:.4f}  ({seconds:.0f} s)", flush=True)
        flows[cell][f"after {config.steps} steps"] = gradient_flow(model, measure.X, measure.y)
        notes.append(f"{NAMES[cell]}, after training: {jacobian_terms(model, measure.X)}")
    if figure is not None:
        plot_flow(flows, figure)
        print(f"wrote {figure}")
    return flow_table(flows, T) + "\n\n" + "\n".join(f"- {note}" for note in notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    lengths_help = "the lengths (default 20 50 100 200; --gradient-flow: 100)"
    parser.add_argument("--T", type=int, nargs="+", default=None, help=lengths_help)
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--hidden", type=int, default=Config.hidden_size)
    parser.add_argument("--batch", type=int, default=Config.batch_size)
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--lr", type=float, default=Config.lr)
    parser.add_argument("--clip", type=float, default=Config.clip)
    parser.add_argument("--gate-bias", type=float, default=Config.gate_bias)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print training losses")
    flow_help = "measure ‖∂ℓ/∂H_t‖ at one T, before and after training"
    parser.add_argument("--gradient-flow", action="store_true", help=flow_help)
    figure_help = "where --gradient-flow draws its figure (needs matplotlib)"
    parser.add_argument("--figure", type=Path, default=FIGURE, help=figure_help)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    config = Config(args.hidden, args.batch, args.steps, args.lr, args.clip, args.gate_bias)
    print(f"# {time.strftime('%Y-%m-%d')}, {machine()}, NumPy {np.__version__}, "
          f"npgru {npgru.__version__}")  # fmt: skip
    print(f"# H = {config.hidden_size}, batch {config.batch_size}, {config.steps} Adam steps "
          f"(lr {config.lr}, clip {config.clip}), GRU b_z = {config.gate_bias}, RNN W_hh "
          f"orthogonal; lengths in [{MIN_FRACTION} T, T]; test {config.test_size} "
          "sequences")  # fmt: skip
    if args.gradient_flow:
        figure = None if args.no_figure else args.figure
        print(run_flow((args.T or [FLOW_T])[0], config, seed=args.seed, figure=figure))
    else:
        Ts = args.T or list(TABLE_T)
        print(run_table(Ts, args.cells, config, seed=args.seed, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
