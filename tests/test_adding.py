"""Tests of examples/adding.py: the adding problem and the gradient flow of docs/gradient-flow.md.

* The data: two marks per sequence, one in each half of its own length, nothing past its
  end, the target the sum of the marked numbers; always answering 1 scores about 1/6.
* The model's gradient (the MSE head by hand, then ``layer.backward`` with lengths) agrees
  with central finite differences in float64, for the RNN and both GRU variants.
* ``state_gradients`` (the code behind the docs' numbers and figure) is ∂ℓ_b/∂H_t: at t = 0
  it is the layer's dH0, at every t it is the dH0 of the layer run from H_t over the rest of
  the sequence, and at one t it matches finite differences on H_t.
* A few training steps lower the loss; the command runs end to end (tiny sizes).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import perturb

import npgru

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("rnn", "d2l", "reset_after")


def load_example():
    spec = importlib.util.spec_from_file_location("adding_example", ROOT / "examples" / "adding.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


adding = load_example()


def small_model(cell, rng, *, H=4, scale=0.5):
    """A float64 model with every parameter N(0, scale²): no gradient negligible."""
    model = adding.Adder(cell, H, dtype="float64", seed=3)
    perturb(model.params, rng, scale)
    return model


# --------------------------------------------------------------------------------------
# the data


@pytest.mark.parametrize("T", [2, 3, 10, 51])
def test_the_marks_lie_in_each_half_of_each_sequence(T):
    rng = np.random.default_rng(T)
    batch = adding.make_batch(rng, T, 500, dtype="float64")
    X, lengths, y, marks = batch
    assert X.shape == (T, 500, 2) and y.shape == (500, 1) and X.dtype == np.float64
    assert lengths.min() >= max(2, np.ceil(0.8 * T)) and lengths.max() <= T
    half = lengths // 2
    assert np.all(marks[0] < half) and np.all(marks[0] >= 0)
    assert np.all(marks[1] >= half) and np.all(marks[1] < lengths)
    for b in range(500):
        (where,) = np.nonzero(X[:, b, 1])
        assert list(where) == list(marks[:, b])  # exactly two marks, where `marks` says
        assert np.all(X[lengths[b] :, b, :] == 0)  # nothing past the end
        assert np.all((X[: lengths[b], b, 0] >= 0) & (X[: lengths[b], b, 0] < 1))
        assert y[b, 0] == X[marks[0, b], b, 0] + X[marks[1, b], b, 0]


def test_full_length_sequences_and_both_halves_are_used():
    rng = np.random.default_rng(0)
    batch = adding.make_batch(rng, 20, 4000, min_fraction=1.0)
    assert np.all(batch.lengths == 20) and batch.X.dtype == np.float32
    assert set(batch.marks[0]) == set(range(10)) and set(batch.marks[1]) == set(range(10, 20))


def test_always_answering_one_scores_a_sixth():
    """Var(U₁ + U₂) = 1/6: the mean squared error of the constant answer 1 on many sums."""
    y = adding.make_batch(np.random.default_rng(1), 8, 200_000, dtype="float64").y
    assert abs(np.mean(y) - 1.0) < 0.005
    assert adding.constant_mse(y) == pytest.approx(1 / 6, abs=0.003)
    assert adding.BASELINE == pytest.approx(0.1667, abs=1e-4)


def test_bad_sizes_say_so():
    with pytest.raises(npgru.ConfigError, match="at least 2"):
        adding.make_batch(np.random.default_rng(0), 1, 3)
    with pytest.raises(npgru.ConfigError, match="unknown cell"):
        adding.Adder("lstm", 4)


# --------------------------------------------------------------------------------------
# the gradient of the loss, by hand


@pytest.mark.parametrize("cell", CELLS)
def test_the_loss_gradient_matches_finite_differences(cell):
    rng = np.random.default_rng(7)
    model = small_model(cell, rng)
    X, lengths, y, _ = adding.make_batch(rng, 6, 3, min_fraction=0.3, dtype="float64")
    assert len(set(lengths)) > 1  # the lengths differ within the batch
    loss, grads = model.loss_and_grads(X, lengths, y)
    assert set(grads) == set(model.params)

    def f():
        return model.loss_and_grads(X, lengths, y)[0]

    report = npgru.check_gradients(f, dict(model.params), dict(grads))
    assert report.passed, str(report)
    assert loss == pytest.approx(model.mse(adding.Batch(X, lengths, y, None)))


def test_the_initialisation_is_the_stated_one():
    gru = adding.Adder("d2l", 6, gate_bias=2.0)
    assert np.all(gru.params["b_z"] == 2.0) and np.all(gru.params["b_r"] == 0.0)
    net = adding.Adder("rnn", 6)
    W = np.asarray(net.params["W_hh"], dtype=np.float64)
    assert np.allclose(W.T @ W, np.eye(6), atol=1e-6)  # orthogonal
    plain = adding.Adder("rnn", 6, orthogonal=False)
    assert np.abs(plain.params["W_hh"]).max() < 0.1  # the library's N(0, 0.01²)
    assert gru.layer.params is gru.params  # one buffer: clipping and Adam see it all


# --------------------------------------------------------------------------------------
# the gradient flow: the code behind docs/gradient-flow.md


def head_gradient(model, H_T, y):
    """∂ℓ_b/∂H_T for every b: 2 (ŷ_b − y_b) W_oᵀ."""
    return 2.0 * (H_T @ model.params["W_o"] + model.params["b_o"] - y) @ model.params["W_o"].T


@pytest.mark.parametrize("cell", CELLS)
def test_state_gradients_are_the_layers_gradients(cell):
    """Row t of state_gradients is the dH0 of the layer run from H_t over steps t+1 … T."""
    rng = np.random.default_rng(11)
    model = small_model(cell, rng)
    T = 5
    X, _, y, _ = adding.make_batch(rng, T, 3, min_fraction=1.0, dtype="float64")
    dHs = adding.state_gradients(model, X, y)
    assert dHs.shape == (T + 1, 3, 4)

    out, H_n, _ = model.layer.forward(X)
    states = [np.zeros((3, 4)), *np.array(out)]  # H_0 … H_T
    assert np.allclose(dHs[T], head_gradient(model, states[T], y), rtol=1e-12, atol=0)
    for t in range(T):
        _, H_n, cache = model.layer.forward(X[t:], H0=states[t][None])
        _, dH0, _ = model.layer.backward(None, head_gradient(model, H_n[0], y)[None], cache)
        assert np.allclose(dHs[t], dH0[0], rtol=1e-10, atol=1e-14), t

    norms = adding.gradient_flow(model, X, y)
    assert np.allclose(norms, np.linalg.norm(dHs, axis=2).mean(axis=1))


@pytest.mark.parametrize("cell", CELLS)
def test_state_gradients_match_finite_differences_on_a_state(cell):
    """Nudge H_2 itself and run the rest of the sequence: the change of Σ_b ℓ_b."""
    rng = np.random.default_rng(5)
    model = small_model(cell, rng)
    T, t = 4, 2
    X, _, y, _ = adding.make_batch(rng, T, 3, min_fraction=1.0, dtype="float64")
    H_t = np.array(model.layer.forward(X[:t])[1])  # (1, B, H): H_2

    def f():
        _, H_n, _ = model.layer.forward(X[t:], H0=H_t)
        y_hat = H_n[0] @ model.params["W_o"] + model.params["b_o"]
        return float(np.sum((y_hat - y) ** 2))

    dH_t = adding.state_gradients(model, X, y)[t][None]
    report = npgru.check_gradients(f, {"H_t": H_t}, {"H_t": dH_t})
    assert report.passed, str(report)


def test_float32_models_are_measured_in_float64():
    """Far back the RNN's gradient at the library's initialisation falls below float32's
    range (0.1 per step or less): measured in float64 it stays positive."""
    model = adding.Adder("rnn", 8, orthogonal=False)  # W_hh N(0, 0.01²): ‖W_hh‖ ≈ 0.06
    batch = adding.make_batch(np.random.default_rng(0), 60, 4, min_fraction=1.0)
    norms = adding.gradient_flow(model, batch.X, batch.y)
    assert norms.dtype == np.float64 and np.all(norms > 0)
    assert norms[0] < 1e-45 < norms[-1]  # below float32's smallest subnormal
    assert np.all(np.diff(norms) > 0)  # it shrinks at every step back


# --------------------------------------------------------------------------------------
# training and the command


def test_a_few_steps_lower_the_loss():
    model = adding.Adder("d2l", 16)
    config = adding.Config(hidden_size=16, batch_size=32, steps=60, lr=1e-2)
    test = adding.test_set(10, 500)
    before = model.mse(test)
    history = adding.train(model, 10, config, seed=1)
    assert len(history) == 10 and history[-1][0] == 60
    assert model.mse(test) < 0.5 * before
    assert model.mse(test) < adding.BASELINE  # it learnt at least the mean


def test_the_command_prints_the_table(capsys):
    assert adding.main(["--T", "6", "8", "--steps", "3", "--hidden", "4", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "| T | tanh RNN test MSE | GRU (d2l) test MSE | GRU (reset_after) test MSE |" in out
    assert out.count("\n| 6 |") == 1 and out.count("\n| 8 |") == 1
    assert "cores" in out and "Training time" in out


def test_the_command_measures_the_gradient_flow(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "flow.png"
    argv = ["--gradient-flow", "--T", "12", "--steps", "3", "--hidden", "4", "--batch", "4"]
    assert adding.main([*argv, "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in out.splitlines() if line.startswith("| ") and "cell" not in line]
    assert len(rows) == 9  # three cells: two initialisations, after training
    assert "| t = 12 |" in out and "| t = 0 |" in out
