"""Adam, averaged weights, and their state in training and checkpoints (issue 12).

The library side (npgru.optim.adam, new_state, step; npgru.train.averaged and train's
opt_state; the checkpoint's opt_* entries; load_model) and the example's learning rate per
optimiser. Resuming the example with --optimizer and --average, and their bad values, are
tested beside the other flags in test_validation.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BOOK, one_line
from test_cli import _capture, assert_one_line_error, run_cli, text_file  # noqa: F401 (fixtures)

import npgru
from npgru import optim
from npgru.checkpoint import load_model, read_run, restore_run, save_run
from npgru.data import load_data_time_machine
from npgru.errors import CheckpointError, ConfigError
from npgru.train import averaged, evaluate, train

SMALL = ["--num-hiddens", "16", "--batch-size", "4", "--num-steps", "8"]


def random_arrays(rng, scale=1.0):
    return {
        "W": rng.normal(0.0, scale, size=(3, 4)),
        "U": rng.normal(0.0, scale, size=(4, 4)),
        "b": rng.normal(0.0, scale, size=(4,)),
    }


def adam_by_hand(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam over the gradient sequence ``gs``, element by element in Python floats."""
    p = [float(x) for x in p]
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(gs, start=1):
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p)


# --------------------------------------------------------------------------- the optimiser


@pytest.mark.parametrize("flat", [False, True])
def test_adam_equals_the_equations(flat, rng):
    params = random_arrays(rng)
    grads_seq = [random_arrays(rng, scale=10.0 ** rng.integers(-6, 2)) for _ in range(7)]
    expected = {
        k: adam_by_hand(params[k].ravel(), [g[k].ravel() for g in grads_seq], 0.01) for k in params
    }
    P = npgru.FlatDict.from_arrays(params) if flat else {k: a.copy() for k, a in params.items()}
    state = optim.new_state(P, "adam")
    for grads in grads_seq:
        G = npgru.FlatDict.from_arrays(grads) if flat else grads
        optim.step(P, G, 0.01, state)
    assert state["t"] == 7
    for k in params:
        np.testing.assert_allclose(np.ravel(P[k]), expected[k], rtol=1e-13, atol=1e-15)


def test_adam_moves_every_parameter_by_about_lr_whatever_the_gradient_scale(rng):
    params = random_arrays(rng)
    start = {k: a.copy() for k, a in params.items()}
    grads = {"W": np.full((3, 4), 1e-4), "U": np.full((4, 4), -1e3), "b": np.full(4, 1.0)}
    optim.step(params, grads, 0.01, optim.new_state(params, "adam"))
    for k in params:  # step 1: m̂ = g, √v̂ = |g|, so the step is lr·sign(g) (ε aside)
        np.testing.assert_allclose(start[k] - params[k], 0.01 * np.sign(grads[k]), rtol=1e-4)


def test_sgd_state_is_plain_sgd(rng):
    a = random_arrays(rng)
    b = {k: x.copy() for k, x in a.items()}
    grads = random_arrays(rng)
    state = optim.new_state(a)
    optim.step(a, grads, 0.3, state)
    optim.sgd(b, grads, 0.3)
    assert state == {"optimizer": "sgd", "decay": 0.0, "t": 1}
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_average_is_the_normalised_exponentially_weighted_mean(optimizer, rng):
    params = npgru.FlatDict.from_arrays(random_arrays(rng))
    decay = 0.8
    state = optim.new_state(params, optimizer, decay)
    np.testing.assert_array_equal(state["average"].flat, params.flat)  # before any step
    iterates = []
    for _ in range(9):
        optim.step(params, npgru.FlatDict.from_arrays(random_arrays(rng)), 0.1, state)
        iterates.append(params.flat.copy())
    t = len(iterates)
    weights = np.array([decay ** (t - s) for s in range(1, t + 1)])
    expected = (weights[:, None] * np.array(iterates)).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(state["average"].flat, expected, rtol=1e-12, atol=1e-14)
    assert not np.allclose(state["average"].flat, params.flat)  # it is not the last iterate


@pytest.mark.parametrize(
    "optimizer, average, match",
    [
        ("adagrad", 0.0, "unknown optimizer"),
        ("sgd", 1.0, "average"),
        ("sgd", -0.1, "average"),
        ("sgd", math.nan, "average"),
        ("sgd", True, "average"),
        ("sgd", "0.9", "average"),
    ],
)
def test_new_state_refuses_bad_settings(optimizer, average, match, rng):
    with pytest.raises(ConfigError, match=match) as info:
        optim.new_state(random_arrays(rng), optimizer, average)
    one_line(info.value)


# --------------------------------------------------------------------------- training


def tiny(optimizer="adam", average=0.9, max_tokens=1200):
    loader, vocab = load_data_time_machine(
        4, 8, path=BOOK, max_tokens=max_tokens, seed=1, val_fraction=0.2
    )
    val = loader.val_corpus
    model = npgru.GRULanguageModel(len(vocab), 8, seed=0)
    return model, loader, vocab, val, optim.new_state(model.params, optimizer, average)


def test_averaged_swaps_in_the_average_and_back_bit_for_bit():
    model, loader, vocab, _val, state = tiny()
    train(model, loader, vocab, num_epochs=2, lr=0.01, log=None, opt_state=state)
    own = model.params.flat.copy()
    with averaged(model, state):
        np.testing.assert_array_equal(model.params.flat, state["average"].flat)
        assert not np.array_equal(model.params.flat, own)
    assert model.params.flat.tobytes() == own.tobytes()
    with pytest.raises(RuntimeError), averaged(model, state):
        raise RuntimeError("an error inside the block")
    assert model.params.flat.tobytes() == own.tobytes()
    with averaged(model, optim.new_state(model.params, "adam")):  # no average: no change
        assert model.params.flat.tobytes() == own.tobytes()


def test_validation_measures_the_averaged_weights():
    model, loader, vocab, val, state = tiny()
    history = train(
        model, loader, vocab, num_epochs=3, lr=0.01, log=None, opt_state=state, val_corpus=val
    )
    last = evaluate(model, val, 4, 8)
    with averaged(model, state):
        assert evaluate(model, val, 4, 8) == history["val_perplexity"][-1]
    assert last != history["val_perplexity"][-1]


def test_adam_learns_faster_than_sgd_at_d2l_init():
    """With d2l's N(0, 0.01²) weights, Adam leaves the unigram plateau (perplexity ~17)
    within a few epochs, where SGD at d2l's lr 1 has barely started (at this small size)."""
    ppl = {}
    for optimizer, lr in (("sgd", 1.0), ("adam", 0.01)):
        loader, vocab = load_data_time_machine(8, 16, path=BOOK, max_tokens=5000, seed=1)
        model = npgru.GRULanguageModel(len(vocab), 32, seed=0)
        state = optim.new_state(model.params, optimizer)
        history = train(model, loader, vocab, num_epochs=5, lr=lr, log=None, opt_state=state)
        ppl[optimizer] = history["perplexity"][-1]
    assert ppl["adam"] < 0.75 * ppl["sgd"], ppl


# --------------------------------------------------------------------------- checkpoints


def run_until(epochs, tmp_path, name):
    """Train ``tiny()`` with Adam and averaging for ``epochs``; its saved RunState."""
    from npgru.checkpoint import capture

    model, loader, vocab, _val, state = tiny()
    history = train(model, loader, vocab, num_epochs=epochs, lr=0.01, log=None, opt_state=state)
    run = capture(model, loader, vocab, config=model.config, epoch=epochs, history=history,
                  opt_state=state)  # fmt: skip
    save_run(tmp_path / name, run)
    return model, state, tmp_path / name


def test_a_resumed_run_continues_adam_and_the_average_exactly(tmp_path):
    straight, straight_state, _ = run_until(4, tmp_path, "a.npz")
    _, _, half = run_until(2, tmp_path, "b.npz")
    model, loader, vocab, _val, state = tiny()
    saved = restore_run(half, model, loader, vocab, state)
    assert state["t"] == saved.optimizer["t"] == 2 * len(loader)
    train(model, loader, vocab, num_epochs=4, lr=0.01, log=None, opt_state=state,
          start_epoch=2, history=saved.history)  # fmt: skip
    assert model.params.flat.tobytes() == straight.params.flat.tobytes()
    for key in ("m", "v", "average"):
        assert state[key].flat.tobytes() == straight_state[key].flat.tobytes(), key


def test_the_optimiser_must_match_the_saved_one(tmp_path):
    _, _, path = run_until(1, tmp_path, "run.npz")
    for optimizer, average in (("sgd", 0.0), ("adam", 0.0), ("sgd", 0.9)):
        model, loader, vocab, _, state = tiny(optimizer, average)
        before = model.params.flat.copy()
        with pytest.raises(CheckpointError, match="--optimizer and --average") as info:
            restore_run(path, model, loader, vocab, state)
        one_line(info.value)
        assert model.params.flat.tobytes() == before.tobytes()  # nothing changed


def test_bad_optimiser_arrays_are_refused(tmp_path):
    from conftest import save_run_unchecked

    _, _, path = run_until(1, tmp_path, "run.npz")
    good = read_run(path)
    for key, bad in (("m", good.optimizer["m"][:-1]), ("v", good.optimizer["v"].astype(np.float64)),
                     ("average", np.full_like(good.optimizer["average"], np.nan))):  # fmt: skip
        state = read_run(path)
        state.optimizer[key] = bad
        save_run_unchecked(tmp_path / "bad.npz", state)
        model, loader, vocab, _, opt_state = tiny()
        with pytest.raises(CheckpointError, match=f"opt_{key}") as info:
            restore_run(tmp_path / "bad.npz", model, loader, vocab, opt_state)
        one_line(info.value)


def test_load_model_gives_the_averaged_weights(tmp_path):
    _model, state, path = run_until(2, tmp_path, "run.npz")
    loaded, _, saved = load_model(path)
    np.testing.assert_array_equal(loaded.params.flat, state["average"].flat)
    assert saved.optimizer["t"] == state["t"]


# --------------------------------------------------------------------------- the example


def test_the_learning_rate_defaults_to_the_optimisers(text_file, tmp_path):  # noqa: F811
    for flags, lr in (([], 1.0), (["--optimizer", "adam"], 1e-3), (["--optimizer", "adam",
                      "--lr", "0.02"], 0.02)):  # fmt: skip
        ckpt = tmp_path / "run.npz"
        r = run_cli("--data", text_file, *SMALL, "--epochs", "1", "--save", ckpt, *flags)
        assert r.returncode == 0, r.stderr
        assert read_run(ckpt).config["lr"] == lr
        ckpt.unlink()
