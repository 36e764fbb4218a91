"""Held-out text, early stopping, dropout and learning-rate decay (issue 12).

The library side (npgru.data.split_corpus, npgru.train.evaluate, train's val_corpus,
patience, dropout and lr_decay, the model's dropout masks and their backward) and the
example's flags (--val-fraction, --patience, --dropout, --lr-decay) with their checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BOOK, one_line, perturb
from test_cli import _capture, assert_one_line_error, run_cli, text_file  # noqa: F401 (fixtures)

import npgru
import npgru.train
from npgru.checkpoint import read_run
from npgru.data import SeqDataLoader, load_corpus, load_data_time_machine, split_corpus
from npgru.errors import ConfigError
from npgru.train import best_epoch, dropout_rng, evaluate, train

SMALL = ["--num-hiddens", "16", "--batch-size", "4", "--num-steps", "8"]

# --------------------------------------------------------------------------- the split


def test_split_holds_out_the_end():
    corpus = np.arange(1, 101, dtype=np.uint8) % 27 + 1
    train_ids, val_ids = split_corpus(corpus, 0.1)
    assert len(val_ids) == 10 and len(train_ids) == 90
    assert np.array_equal(np.concatenate([train_ids, val_ids]), corpus)
    assert np.array_equal(val_ids, corpus[-10:])
    assert len(split_corpus(corpus, 0.0)[1]) == 0
    assert len(split_corpus(corpus, 0.259)[1]) == 25  # floor


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.1", math.nan, None])
def test_split_refuses_bad_fractions(bad):
    with pytest.raises(ConfigError, match="val_fraction") as info:
        split_corpus(np.ones(100, dtype=np.uint8), bad)
    one_line(info.value)


def test_split_refuses_a_one_token_validation_set():
    with pytest.raises(ConfigError, match="at least 2") as info:
        split_corpus(np.ones(100, dtype=np.uint8), 0.015)
    one_line(info.value)


def test_load_data_splits_after_max_tokens_and_keeps_the_vocabulary():
    loader, vocab = load_data_time_machine(32, 35, path=BOOK)
    loader2, vocab2 = load_data_time_machine(32, 35, path=BOOK, val_fraction=0.1)
    val = loader2.val_corpus
    assert len(loader.val_corpus) == 0  # the same two values whatever the arguments
    assert vocab2.idx_to_token == vocab.idx_to_token  # the whole text's, as without a split
    assert len(val) == 1000 and len(loader2.corpus) == 9000
    assert np.array_equal(np.concatenate([loader2.corpus, val]), loader.corpus)
    whole, _ = load_corpus(BOOK.read_text(encoding="utf-8"), None)
    val_all = load_data_time_machine(32, 35, path=BOOK, max_tokens=-1, val_fraction=0.1)[
        0
    ].val_corpus
    assert np.array_equal(val_all, whole[-len(whole) // 10 :])  # the book's last tenth
    assert int(val_all.min()) >= 1  # held-out text is never <unk>


def test_holding_out_too_much_names_val_fraction():
    with pytest.raises(ConfigError) as info:
        load_data_time_machine(32, 35, path=BOOK, val_fraction=0.9999)
    assert one_line(info.value).startswith("val_fraction=0.9999 leaves 1 of 10000 tokens")


# --------------------------------------------------------------------------- evaluate


def small_model(num_layers=2, seed=3, dtype="float64"):
    model = npgru.GRULanguageModel(6, 5, num_layers=num_layers, dtype=dtype, seed=seed)
    perturb(model.params, np.random.default_rng(seed))
    return model


def test_evaluate_equals_one_forward_over_each_row():
    """State carried across windows: the same as reading each row in one piece."""
    model = small_model()
    corpus = np.random.default_rng(0).integers(1, 6, size=103)
    B, cols = 4, 102 // 4
    X = corpus[: B * cols].reshape(B, cols)
    Y = corpus[1 : B * cols + 1].reshape(B, cols)
    loss, _ = model.loss(X, Y, model.begin_state(B))
    want = math.exp(float(loss))
    for T in (7, 25, 100):  # a short last window, exactly one, and T > cols
        assert evaluate(model, corpus, B, T) == pytest.approx(want, rel=1e-12)
    # it is not the same if the state were reset at every window: carrying matters
    resets = [
        float(model.loss(X[:, s : s + 7], Y[:, s : s + 7], model.begin_state(B))[0])
        * X[:, s : s + 7].size
        for s in range(0, cols, 7)
    ]
    assert abs(math.exp(sum(resets) / X.size) - want) > 1e-6


def test_evaluate_changes_nothing_and_needs_two_tokens():
    model = small_model()
    before = model.params.flat.copy()
    corpus = np.random.default_rng(1).integers(1, 6, size=50)
    a, b = evaluate(model, corpus, 32, 35), evaluate(model, corpus, 32, 35)
    assert a == b and np.array_equal(model.params.flat, before)
    assert evaluate(model, corpus[:2], 32, 35) > 0  # one label: B shrinks to 1
    with pytest.raises(ConfigError, match="at least 2"):
        evaluate(model, corpus[:1], 32, 35)


# --------------------------------------------------------------------------- dropout


def test_dropout_masks_are_inverted_and_repeatable():
    model = small_model(dtype="float32")
    masks = model.dropout_masks((64, 50), 0.25, np.random.default_rng(5))
    assert len(masks) == 2 and masks[0].shape == (50, 64, 5) and masks[0].dtype == np.float32
    values = np.unique(np.stack(masks))
    assert np.allclose(values, [0.0, 1 / 0.75])
    assert abs(float(np.mean(np.stack(masks) == 0)) - 0.25) < 0.02
    again = model.dropout_masks((64, 50), 0.25, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="dropout"):
            model.dropout_masks((2, 3), bad, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rng"):
        model.dropout_masks((2, 3), 0.5, None)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_dropout_gradient_matches_finite_differences(num_layers):
    """eq. 18 with a fixed mask (the same generator state for every evaluation)."""
    model = small_model(num_layers)
    rng = np.random.default_rng(2)
    X, Y = rng.integers(0, 6, size=(3, 4)), rng.integers(0, 6, size=(3, 4))
    state0 = rng.normal(0, 0.5, size=(num_layers, 3, 5))

    def loss():
        return model.loss_and_grads(X, Y, state0, dropout=0.4, rng=np.random.default_rng(9))[0]

    _, grads, _ = model.loss_and_grads(X, Y, state0, dropout=0.4, rng=np.random.default_rng(9))
    report = npgru.check_gradients(loss, model.params, grads)
    assert report.passed, report
    # the check can fail: gradients of other masks are not the gradient of this loss
    _, other, _ = model.loss_and_grads(X, Y, state0, dropout=0.4, rng=np.random.default_rng(10))
    assert npgru.check_gradients(loss, model.params, other).verdict == "failed"


def test_dropout_zero_and_prediction_are_d2l():
    model = small_model()
    rng = np.random.default_rng(4)
    X, Y = rng.integers(0, 6, size=(3, 4)), rng.integers(0, 6, size=(3, 4))
    s0 = model.begin_state(3)
    plain, _, st_plain = model.loss_and_grads(X, Y, s0)
    dropped, _, st_drop = model.loss_and_grads(X, Y, s0, dropout=0.5, rng=rng)
    assert float(plain) != float(dropped)
    # a layer's own state is never dropped; the layer above sees dropped inputs
    assert np.array_equal(st_plain[0], st_drop[0]) and not np.array_equal(st_plain, st_drop)
    assert float(model.loss(X, Y, s0)[0]) == float(plain)  # forward only: no dropout
    logits, _ = model.forward(X, s0)
    logits2, _ = model.forward(X, s0)
    assert np.array_equal(logits, logits2)


def test_dropout_rng_depends_on_seed_and_epoch_only():
    bk = npgru.get_backend("numpy")
    a = dropout_rng(bk, 0, 3).random(5)
    assert np.array_equal(a, dropout_rng(bk, 0, 3).random(5))
    assert not np.array_equal(a, dropout_rng(bk, 0, 4).random(5))
    assert not np.array_equal(a, dropout_rng(bk, 1, 3).random(5))


# --------------------------------------------------------------------------- train()


def tiny_run():
    loader, vocab = load_data_time_machine(
        4, 8, path=BOOK, max_tokens=2000, seed=np.random.default_rng(0), val_fraction=0.1
    )
    val = loader.val_corpus
    model = npgru.GRULanguageModel(len(vocab), 16, num_layers=2, seed=0)
    return model, loader, vocab, val


def test_train_reports_validation_each_epoch():
    model, loader, vocab, val = tiny_run()
    lines = []
    history = train(model, loader, vocab, num_epochs=2, lr=1.0, val_corpus=val, dropout=0.2,
                    predict_every=1, log=lines.append)  # fmt: skip
    assert set(history) == {"perplexity", "tokens_per_sec", "val_perplexity"}
    assert len(history["val_perplexity"]) == 2
    assert history["val_perplexity"][-1] == evaluate(model, val, 4, 8)
    assert "validation" in lines[-1]


def test_patience_stops_after_n_epochs_without_improvement(monkeypatch):
    model, loader, vocab, val = tiny_run()
    scores = iter([9.0, 8.0, 8.5, 8.0, 8.7, 1.0])
    monkeypatch.setattr(npgru.train, "evaluate", lambda *a: next(scores))
    lines = []
    history = train(model, loader, vocab, num_epochs=6, lr=1.0, val_corpus=val, patience=3,
                    log=lines.append)  # fmt: skip
    assert history["val_perplexity"] == [9.0, 8.0, 8.5, 8.0, 8.7]  # ties are no improvement
    assert best_epoch(history) == 2
    assert "stopping early" in lines[-1] and "epoch 2" in lines[-1]


def test_lr_decay_per_epoch(monkeypatch):
    model, loader, vocab, _ = tiny_run()
    seen = []
    monkeypatch.setattr(
        npgru.train, "train_epoch", lambda model, loader, lr, **_: seen.append(lr) or (5, 1)
    )
    train(model, loader, vocab, num_epochs=3, lr=2.0, lr_decay=0.5, log=None)
    assert seen == [2.0, 1.0, 0.5]
    seen.clear()
    train(model, loader, vocab, num_epochs=5, lr=2.0, lr_decay=0.5, start_epoch=3, log=None,
          history={"perplexity": [1, 1, 1], "tokens_per_sec": [1, 1, 1]})  # fmt: skip
    assert seen == [0.25, 0.125]  # a resumed run goes on with the decayed rate


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patience": 2}, "validation"),
        ({"patience": 0, "val_corpus": [1, 2, 3]}, "patience"),
        ({"dropout": 1.0}, "dropout"),
        ({"lr_decay": 1.5}, "lr_decay"),
        ({"lr_decay": 0.0}, "lr_decay"),
    ],
)
def test_train_refuses_bad_settings(kwargs, match):
    model, loader, vocab, _ = tiny_run()
    with pytest.raises(ConfigError, match=match) as info:
        train(model, loader, vocab, num_epochs=1, lr=1.0, log=None, **kwargs)
    one_line(info.value)


def test_defaults_are_d2l():
    """No validation, dropout or decay: the same parameters as before, bit for bit."""
    runs = []
    for extra in ({}, {"dropout": 0.0, "lr_decay": 1.0, "patience": None}):
        loader, vocab = load_data_time_machine(4, 8, path=BOOK, max_tokens=1000, seed=1)
        model = npgru.GRULanguageModel(len(vocab), 8, seed=0)
        train(model, loader, vocab, num_epochs=2, lr=1.0, log=None, **extra)
        runs.append(model.params.flat.copy())
    # and by hand: d2l's loop (train_epoch) twice
    loader, vocab = load_data_time_machine(4, 8, path=BOOK, max_tokens=1000, seed=1)
    model = npgru.GRULanguageModel(len(vocab), 8, seed=0)
    for e in (1, 2):
        npgru.train.train_epoch(model, loader, 1.0, epoch=e)
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], model.params.flat)


# --------------------------------------------------------------------------- the example


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--val-fraction", "1.5"], "--val-fraction"),
        (["--val-fraction", "-0.1"], "--val-fraction"),
        (["--val-fraction", "x"], "--val-fraction"),
        (["--dropout", "1"], "--dropout"),
        (["--lr-decay", "0"], "--lr-decay"),
        (["--lr-decay", "1.5"], "--lr-decay"),
        (["--patience", "0"], "--patience"),
        (["--patience", "3"], "--val-fraction"),
        (["--val-fraction", "0.0001"], "at least 2"),
        (["--optimizer", "adagrad"], "--optimizer"),
        (["--average", "1"], "--average"),
        (["--average", "-0.5"], "--average"),
        (["--average", "x"], "--average"),
    ],
)
def test_bad_flags_are_one_line(text_file, flags, needle):  # noqa: F811

    assert_one_line_error(run_cli("--data", text_file, *SMALL, *flags), needle)


def test_the_best_epoch_is_saved(text_file, tmp_path, monkeypatch):  # noqa: F811
    scores = iter([9.0, 7.0, 8.0, 8.5, 9.0])
    monkeypatch.setattr(npgru.train, "evaluate", lambda *a: next(scores))
    ckpt, png = tmp_path / "run.npz", tmp_path / "run.png"
    r = run_cli("--data", text_file, *SMALL, "--epochs", "5", "--val-fraction", "0.2",
                "--save", ckpt, "--plot", png, "--patience", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    saved = read_run(ckpt)
    assert saved.epoch == 2 and saved.history["val_perplexity"] == [9.0, 7.0]
    assert "saved epoch 2, the best by validation perplexity (7.0000)" in r.stderr
    assert "best 7.0000 at epoch 2" in r.stdout and "after 4 epochs" in r.stdout
    assert saved.config["val_fraction"] == 0.2 and saved.config["patience"] == 2
    assert png.read_bytes()[:4] == b"\x89PNG"


def validated_run(text_file, tmp_path, edit):  # noqa: F811
    """Two epochs with a validation set, then ``edit(val_perplexity)`` under a consistent
    digest: the path."""
    from conftest import save_run_unchecked

    ckpt = tmp_path / "val.npz"
    flags = ["--data", text_file, *SMALL, "--epochs", "2", "--val-fraction", "0.2"]
    assert run_cli(*flags, "--save", ckpt).returncode == 0
    state = read_run(ckpt)
    assert state.epoch == 2  # the second epoch was the best
    edit(state.history["val_perplexity"])
    save_run_unchecked(ckpt, state)
    return ckpt


def test_a_forged_better_epoch_before_the_saved_one_is_refused(text_file, tmp_path):  # noqa: F811
    """Issue 25: a forged best validation perplexity was accepted, and no later epoch was ever
    saved (none could beat it)."""
    ckpt = validated_run(text_file, tmp_path, lambda val: val.__setitem__(0, 1.0001))
    before = ckpt.read_bytes()
    r = run_cli("--resume", ckpt, "--epochs", "4")
    assert_one_line_error(r, "holds epoch 2", "better validation perplexity at epoch 1")
    assert ckpt.read_bytes() == before


def test_a_resumed_best_that_stands_is_said_plainly(text_file, tmp_path):  # noqa: F811
    """When no epoch of a resumed run beats the best it resumed from, the run says that the
    file still holds that epoch (not that a new best was saved)."""
    ckpt = validated_run(text_file, tmp_path, lambda val: val.__setitem__(1, 1.0001))
    r = run_cli("--resume", ckpt, "--epochs", "4")
    assert r.returncode == 0, r.stderr
    assert f"no epoch after 2 beat the best validation perplexity recorded in {ckpt} " in r.stderr
    assert f"(1.0001, epoch 2): {ckpt} still holds epoch 2" in r.stderr
    assert read_run(ckpt).epoch == 2


def test_patience_on_a_resumed_run_without_validation_says_start_anew(text_file, tmp_path):  # noqa: F811
    ckpt = tmp_path / "plain.npz"
    assert run_cli("--data", text_file, *SMALL, "--epochs", "1", "--save", ckpt).returncode == 0
    r = run_cli("--resume", ckpt, "--epochs", "3", "--patience", "2")
    assert_one_line_error(r, "trained without one", "start a new run with --val-fraction")


@pytest.mark.parametrize("extra", [
    ["--dropout", "0"],
    ["--dropout", "0.3"],
    ["--dropout", "0.2", "--optimizer", "adam", "--average", "0.95"],
], ids=["d2l", "dropout", "adam-average"])  # fmt: skip
def test_resume_with_validation_and_dropout_is_exact(text_file, tmp_path, extra):  # noqa: F811
    common = ["--data", text_file, *SMALL, "--num-layers", "2", "--val-fraction", "0.2",
              "--lr-decay", "0.9", *extra]  # fmt: skip
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    assert run_cli(*common, "--epochs", "4", "--save", straight).returncode == 0
    assert run_cli(*common, "--epochs", "2", "--save", half).returncode == 0
    r = run_cli("--resume", half, "--epochs", "4")
    assert r.returncode == 0, r.stderr
    a, b = read_run(straight), read_run(half)
    assert a.epoch == b.epoch and a.history["perplexity"] == b.history["perplexity"]
    assert a.history["val_perplexity"] == b.history["val_perplexity"]
    for name in a.params:
        assert a.params[name].tobytes() == b.params[name].tobytes(), name
    expected = {"t", "m", "v", "average"} if "adam" in extra else set()
    assert set(a.optimizer) == set(b.optimizer) == expected
    for key in a.optimizer:  # Adam's moments, the averaged weights and the step count
        assert np.array_equal(a.optimizer[key], b.optimizer[key]), key
    # a resumed run keeps its split, its dropout and its optimiser
    for flags in (["--dropout", "0.5"], ["--optimizer", "sgd" if "adam" in extra else "adam"],
                  ["--average", "0.9"]):  # fmt: skip
        r = run_cli("--resume", half, "--epochs", "5", *flags)
        assert r.returncode == 2 and flags[0][2:] in r.stderr, r.stderr


def test_a_checkpoint_without_the_new_settings_resumes(text_file, tmp_path):  # noqa: F811
    """Checkpoints written before these flags existed were trained with their defaults."""
    from conftest import save_run_unchecked

    ckpt = tmp_path / "old.npz"
    assert run_cli("--data", text_file, *SMALL, "--epochs", "1", "--save", ckpt).returncode == 0
    state = read_run(ckpt)
    for key in ("val_fraction", "patience", "dropout", "lr_decay"):
        del state.config[key]
    save_run_unchecked(ckpt, state)
    r = run_cli("--resume", ckpt, "--epochs", "2")
    assert r.returncode == 0, r.stderr
    resumed = read_run(ckpt)
    assert resumed.epoch == 2
    # the settings it did not know take the values that mean "as before they existed"
    config = {key: resumed.config[key] for key in ("val_fraction", "patience", "dropout")}
    assert config == {"val_fraction": 0.0, "patience": None, "dropout": 0.0}
    assert resumed.config["lr_decay"] == 1.0


def test_seq_loader_untouched_by_validation():
    """The training loader of a split is an ordinary loader over the training part."""
    loader, _ = load_data_time_machine(4, 8, path=BOOK, max_tokens=2000, val_fraction=0.1)
    assert isinstance(loader, SeqDataLoader) and len(loader.corpus) == 1800


def test_dropout_mask_is_u_at_least_p_of_float32_draws():
    model = npgru.GRULanguageModel(7, 5, num_layers=2, dtype="float32", seed=0)
    masks = model.dropout_masks((3, 4), 0.5, np.random.default_rng(7))
    U = np.random.default_rng(7).random((2, 4, 3, 5), dtype=np.float32)
    np.testing.assert_array_equal(np.stack(masks), (U >= 0.5) * np.float32(2.0))

    class Exactly:  # a draw equal to p is kept: K = [U >= p] / (1 - p)
        def random(self, size, dtype=np.float64):
            return np.full(size, 0.5, dtype=dtype)

    assert np.all(np.stack(model.dropout_masks((3, 4), 0.5, Exactly())) == 2.0)
