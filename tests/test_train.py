"""Tests of npgru.train: d2l's training semantics, perplexity, learning, divergence, predict,
and exact resume through a checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest

import npgru
from npgru.checkpoint import capture, restore_run, save_run
from npgru.data import SeqDataLoader, load_corpus
from npgru.errors import ConfigError, DivergenceError, NpgruError
from npgru.train import new_history, predict, train, train_epoch, vanishing_epoch

# A pangram, so the vocabulary has all 28 entries of the book's (<unk>, space, a-z).
TEXT = "the quick brown fox jumps over the lazy dog\n" * 40
B, T, H = 8, 10, 16


@pytest.fixture(scope="module")
def corpus_vocab():
    return load_corpus(TEXT, max_tokens=-1)


def make(corpus_vocab, *, random_iter=False, seed=0, rng=1, hidden=H, dtype="float32"):
    corpus, vocab = corpus_vocab
    model = npgru.GRULanguageModel(len(vocab), hidden, seed=seed, dtype=dtype)
    loader = SeqDataLoader(corpus, vocab, B, T, use_random_iter=random_iter, rng=rng)
    return model, loader, vocab


@pytest.fixture(scope="module")
def trained(corpus_vocab):
    """A model trained until it predicts the pangram well."""
    model, loader, vocab = make(corpus_vocab)
    train(model, loader, vocab, num_epochs=30, lr=1.0, log=None)
    return model, vocab


# --------------------------------------------------------------------------- predict


def test_predict_greedy_is_deterministic_and_continues_the_prefix(trained):
    model, vocab = trained
    a = predict("the quick", 30, model, vocab)
    b = predict("the quick", 30, model, vocab)
    assert a == b
    assert a.startswith("the quick")
    assert len(a) == len("the quick") + 30
    assert set(a) <= set(vocab.idx_to_token[1:])
    # the model learned the pangram: greedy decoding continues it
    assert a.startswith("the quick brown fox")


def test_predict_zero_chars_returns_the_prefix(trained):
    model, vocab = trained
    assert predict("t", 0, model, vocab) == "t"


def test_predict_sampling_is_reproducible_and_depends_on_the_seed(corpus_vocab):
    model, _, vocab = make(corpus_vocab)  # untrained: near-uniform, so samples vary a lot
    a = predict("time traveller", 40, model, vocab, temperature=1.0, seed=1)
    b = predict("time traveller", 40, model, vocab, temperature=1.0, seed=1)
    c = predict("time traveller", 40, model, vocab, temperature=1.0, seed=2)
    assert a == b
    assert a != c
    assert len(a) == len(c) == len("time traveller") + 40
    assert a.startswith("time traveller") and c.startswith("time traveller")


def test_predict_tiny_temperature_equals_greedy(trained):
    model, vocab = trained
    greedy = predict("the lazy", 40, model, vocab)
    for seed in range(3):
        assert predict("the lazy", 40, model, vocab, temperature=1e-12, seed=seed) == greedy


def test_predict_warm_up_uses_the_prefix(trained):
    model, vocab = trained
    # both prefixes end in "the"; only the warm-up on the earlier characters tells them apart
    assert predict("jumps over the", 5, model, vocab) == "jumps over the lazy"
    assert predict("dogthe", 6, model, vocab) == "dogthe quick"


def test_predict_unknown_characters_map_to_unk(trained):
    model, vocab = trained
    out = predict("The Fox!", 10, model, vocab)  # 'T', 'F', '!' are not in the vocabulary
    assert out.startswith("The Fox!") and len(out) == len("The Fox!") + 10
    # fed as <unk> (index 0), exactly like a prefix spelled with <unk> tokens
    assert predict("\x00he \x00ox\x00", 10, model, vocab)[-10:] == out[-10:]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": ""},
        {"prefix": None},
        {"num_preds": -1},
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
    ],
)
def test_predict_rejects_bad_arguments(trained, kwargs):
    model, vocab = trained
    args = {"prefix": "the", "num_preds": 5, "temperature": 0.0} | kwargs
    with pytest.raises(ConfigError) as info:
        predict(args["prefix"], args["num_preds"], model, vocab, temperature=args["temperature"])
    assert isinstance(info.value, NpgruError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- state semantics


def record_states(model):
    """Wrap model.loss_and_grads to record (state in, new state out) of every call."""
    calls = []
    original = model.loss_and_grads

    def wrapper(X, Y, state):
        loss, grads, new_state = original(X, Y, state)
        calls.append((np.array(state), np.array(new_state), state, new_state))
        return loss, grads, new_state

    model.loss_and_grads = wrapper
    return calls


def test_sequential_state_is_zero_at_epoch_start_and_carried_otherwise(corpus_vocab):
    model, loader, _ = make(corpus_vocab)
    calls = record_states(model)
    n = len(loader)
    assert n >= 3
    for _ in range(2):
        train_epoch(model, loader, 1.0)
    assert len(calls) == 2 * n
    for k, (state, _, state_obj, _) in enumerate(calls):
        assert state.shape == (1, B, H)
        if k % n == 0:  # first minibatch of each epoch
            assert not state.any()
        else:  # the previous minibatch's final state, passed on as is
            assert calls[k - 1][3] is state_obj
            assert np.array_equal(state, calls[k - 1][1])
            assert state.any()


def test_random_sampling_resets_the_state_at_every_minibatch(corpus_vocab):
    model, loader, _ = make(corpus_vocab, random_iter=True)
    calls = record_states(model)
    train_epoch(model, loader, 1.0)
    train_epoch(model, loader, 1.0)
    assert len(calls) == 2 * len(loader) >= 6
    for state, new_state, _, _ in calls:
        assert not state.any()
        assert new_state.any()


# --------------------------------------------------------------------------- perplexity


def reference_epoch(model, loader, lr):
    """One epoch written out with plain NumPy for the loss: the d2l loop, step by step."""
    total, tokens, state = 0.0, 0, None
    for X, Y in loader:
        if state is None or loader.use_random_iter:
            state = model.begin_state(X.shape[0])
        logits, _ = model.forward(X, state)
        O = np.asarray(logits, dtype=np.float64)
        labels = np.asarray(Y).T.reshape(-1)  # time-major, like the logits
        m = O.max(axis=1, keepdims=True)
        log_p = O - m - np.log(np.exp(O - m).sum(axis=1, keepdims=True))
        loss = -log_p[np.arange(len(labels)), labels].mean()
        _, grads, state = model.loss_and_grads(X, Y, state)
        npgru.clip_grad_norm(grads, 1.0)
        npgru.sgd(model.params, grads, lr)
        total += loss * labels.size
        tokens += labels.size
    return math.exp(total / tokens)


@pytest.mark.parametrize("random_iter", [False, True])
def test_perplexity_is_exp_of_the_token_weighted_mean_loss(corpus_vocab, random_iter):
    for epoch in range(3):
        model, loader, _ = make(corpus_vocab, random_iter=random_iter, dtype="float64")
        ref_model, ref_loader, _ = make(corpus_vocab, random_iter=random_iter, dtype="float64")
        for _ in range(epoch):  # also compare later epochs, with a trained model
            train_epoch(model, loader, 1.0)
            reference_epoch(ref_model, ref_loader, 1.0)
        perplexity, speed = train_epoch(model, loader, 1.0)
        expected = reference_epoch(ref_model, ref_loader, 1.0)
        assert perplexity == pytest.approx(expected, rel=1e-10)
        assert speed > 0
        np.testing.assert_array_equal(model.params.flat, ref_model.params.flat)


def test_first_epoch_perplexity_is_near_uniform_guessing(corpus_vocab):
    model, loader, vocab = make(corpus_vocab)
    perplexity, _ = train_epoch(model, loader, 1.0)
    # an untrained model guesses about uniformly over the 28 tokens, and learns a little
    assert 10 < perplexity < len(vocab) + 1


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("variant", ["d2l", "reset_after"])
def test_a_tiny_model_learns_a_repetitive_text(corpus_vocab, variant):
    corpus, vocab = corpus_vocab
    model = npgru.GRULanguageModel(len(vocab), 32, variant=variant, seed=0)
    loader = SeqDataLoader(corpus, vocab, B, T, rng=0)
    history = train(model, loader, vocab, num_epochs=40, lr=1.0, log=None)
    ppl = history["perplexity"]
    assert ppl[0] > 10
    assert ppl[-1] < 1.2, ppl
    assert (
        predict("the quick brown", 28, model, vocab)
        == "the quick brown fox jumps over the lazy dog"
    )


# --------------------------------------------------------------------------- train()


def test_train_runs_epochs_after_start_and_calls_back(corpus_vocab):
    model, loader, vocab = make(corpus_vocab)
    seen, lines = [], []

    def on_epoch_end(epoch, history):
        seen.append((epoch, len(history["perplexity"]), len(history["tokens_per_sec"])))

    history = train(
        model,
        loader,
        vocab,
        num_epochs=5,
        lr=1.0,
        on_epoch_end=on_epoch_end,
        predict_every=2,
        prefix="the",
        num_preds=7,
        log=lines.append,
    )
    assert seen == [(e, e, e) for e in range(1, 6)]
    assert set(history) == {"perplexity", "tokens_per_sec"}
    assert len(lines) == 2 and lines[0].startswith("epoch 2") and lines[1].startswith("epoch 4")
    assert all(len(line.rsplit(": ", 1)[1]) == len("the") + 7 for line in lines)

    more = train(model, loader, vocab, num_epochs=7, lr=1.0, start_epoch=5, history=history,
                 log=None)  # fmt: skip
    assert more is history and len(history["perplexity"]) == 7


def test_train_rejects_a_history_that_does_not_match_start_epoch(corpus_vocab):
    model, loader, vocab = make(corpus_vocab)
    with pytest.raises(ConfigError, match="history"):
        train(model, loader, vocab, num_epochs=3, lr=1.0, start_epoch=1, history=new_history())
    with pytest.raises(ConfigError):
        train(model, loader, vocab, num_epochs=0, lr=1.0)


@pytest.mark.parametrize("lr", [0, -1.0, float("nan"), float("inf"), True])
def test_train_epoch_rejects_bad_learning_rates(corpus_vocab, lr):
    model, loader, _ = make(corpus_vocab)
    with pytest.raises(ConfigError, match=r"^lr must be a positive finite number"):
        train_epoch(model, loader, lr)


# --------------------------------------------------------------------------- divergence


def test_a_huge_learning_rate_raises_divergence_naming_the_epoch(corpus_vocab):
    model, loader, vocab = make(corpus_vocab)
    with pytest.raises(DivergenceError) as info:
        train(model, loader, vocab, num_epochs=5, lr=1e3, log=None)
    message = str(info.value)
    assert "epoch 1" in message and "learning rate" in message
    assert "--" not in message  # the library names parameters, never flags
    assert "\n" not in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_parameters_raises_divergence(corpus_vocab, bad):
    model, loader, vocab = make(corpus_vocab)
    history = train(model, loader, vocab, num_epochs=2, lr=1.0, log=None)
    model.params["W_hq"][0, 0] = bad
    with pytest.raises(DivergenceError, match="epoch 3"):
        train(model, loader, vocab, num_epochs=4, lr=1.0, start_epoch=2, history=history,
              log=None)  # fmt: skip
    assert len(history["perplexity"]) == 2  # the bad epoch is not recorded


def test_a_nan_gradient_in_the_last_minibatch_is_caught(corpus_vocab):
    model, loader, _ = make(corpus_vocab)
    original, count = model.loss_and_grads, [0]

    def poisoned(X, Y, state):
        loss, grads, new_state = original(X, Y, state)
        count[0] += 1
        if count[0] == len(loader):
            grads["b_q"][0] = np.nan  # the loss is finite, only the gradient is bad
        return loss, grads, new_state

    model.loss_and_grads = poisoned
    with pytest.raises(DivergenceError):
        train_epoch(model, loader, 1.0, epoch=1)


# --------------------------------------------------------------------------- exact resume


def new_run(corpus_vocab, random_iter, *, seed):
    corpus, vocab = corpus_vocab
    model = npgru.GRULanguageModel(len(vocab), H, seed=seed)
    loader = SeqDataLoader(
        corpus, vocab, B, T, use_random_iter=random_iter, rng=np.random.default_rng(seed)
    )
    return model, loader, vocab


@pytest.mark.parametrize("random_iter", [False, True])
def test_resume_from_a_checkpoint_is_bit_exact(corpus_vocab, tmp_path, random_iter):
    N = 3
    # one go: 2N epochs
    model, loader, vocab = new_run(corpus_vocab, random_iter, seed=7)
    straight = train(model, loader, vocab, num_epochs=2 * N, lr=1.0, log=None)

    # N epochs, save, stop
    first, first_loader, _ = new_run(corpus_vocab, random_iter, seed=7)
    history = train(first, first_loader, vocab, num_epochs=N, lr=1.0, log=None)
    path = tmp_path / "ck.npz"
    config = first.config
    save_run(path, capture(first, first_loader, vocab, config=config, epoch=N, history=history))
    del first, first_loader

    # a fresh process would start with other weights and another generator: restore both
    resumed, resumed_loader, _ = new_run(corpus_vocab, random_iter, seed=123)
    state = restore_run(path, resumed, resumed_loader, vocab)
    assert state.epoch == N and state.config == config
    history = state.history
    train(resumed, resumed_loader, vocab, num_epochs=2 * N, lr=1.0, start_epoch=state.epoch,
          history=history, log=None)  # fmt: skip

    np.testing.assert_array_equal(resumed.params.flat, model.params.flat)
    assert resumed.params.flat.tobytes() == model.params.flat.tobytes()
    assert history["perplexity"] == straight["perplexity"]  # exactly, float by float
    assert len(history["tokens_per_sec"]) == 2 * N


def test_without_restoring_the_loader_state_the_run_differs(corpus_vocab):
    """The control for the test above: the loader's generator state does matter."""
    model, loader, vocab = new_run(corpus_vocab, True, seed=7)
    train(model, loader, vocab, num_epochs=2, lr=1.0, log=None)
    other, other_loader, _ = new_run(corpus_vocab, True, seed=7)
    train(other, other_loader, vocab, num_epochs=1, lr=1.0, log=None)
    other_loader.rng = np.random.default_rng(99)
    train(other, other_loader, vocab, num_epochs=2, lr=1.0, start_epoch=1,
          history={"perplexity": [0.0], "tokens_per_sec": [0.0]}, log=None)  # fmt: skip
    assert not np.array_equal(other.params.flat, model.params.flat)


def test_parameters_that_overflow_in_the_last_update_are_caught(corpus_vocab):
    model, loader, _ = make(corpus_vocab)
    original, count = model.loss_and_grads, [0]

    def overflowing(X, Y, state):
        loss, grads, new_state = original(X, Y, state)
        count[0] += 1
        if count[0] == len(loader):  # loss and gradient finite, the parameters not
            model.params["W_hq"][0, 0] = np.inf
        return loss, grads, new_state

    model.loss_and_grads = overflowing
    with pytest.raises(DivergenceError, match="epoch 4"):
        train_epoch(model, loader, 1.0, epoch=4)


def test_an_epoch_far_worse_than_guessing_counts_as_diverged(corpus_vocab, monkeypatch):
    """Issue 13: an epoch at perplexity 1.7e272 used to be kept; 1000x V is the limit now."""
    model, loader, vocab = make(corpus_vocab)
    limit = npgru.train.DIVERGED_FACTOR * len(vocab)
    for loss, diverged in ((math.log(limit) * 0.999, False), (math.log(limit) * 1.001, True)):
        monkeypatch.setattr(model, "loss_and_grads", lambda X, Y, s, loss=loss: (
            np.float32(loss), model.params.zeros_like(), s))  # fmt: skip
        if diverged:
            with pytest.raises(DivergenceError, match="perplexity reached"):
                train_epoch(model, loader, 1.0)
        else:
            assert train_epoch(model, loader, 1.0)[0] == pytest.approx(limit**0.999, rel=1e-4)


# --------------------------------------------------------------------------- what one epoch adds up


def test_perplexity_weights_batches_of_different_sizes_by_their_tokens(corpus_vocab, monkeypatch):
    model, _, _ = make(corpus_vocab)
    batches = [(np.ones((1, 2), np.int64),) * 2, (np.ones((3, 6), np.int64),) * 2]
    losses = iter([1.0, 2.0])

    def loss_and_grads(X, Y, state):
        return np.float32(next(losses)), model.params.zeros_like(), state

    monkeypatch.setattr(model, "loss_and_grads", loss_and_grads)
    perplexity, _ = train_epoch(model, batches, 1.0)
    assert perplexity == pytest.approx(math.exp((1.0 * 2 + 2.0 * 18) / 20))  # per token


def test_train_epoch_clips_at_the_given_max_norm(corpus_vocab):
    model, loader, _ = make(corpus_vocab, dtype="float64")
    before = model.params.flat.copy()
    train_epoch(model, loader, 1.0, max_norm=1e-6)
    assert np.linalg.norm(model.params.flat - before) <= len(loader) * 1e-6 * 1.001


def constant_gradients(model, monkeypatch, value):
    """Make every gradient of ``model`` equal ``value`` (in its dtype)."""

    def fixed(X, Y, state):
        g = model.params.zeros_like()
        g.flat[...] = value
        return np.float32(1.0), g, state

    monkeypatch.setattr(model, "loss_and_grads", fixed)


def test_a_gradient_norm_that_overflows_counts_as_divergence(corpus_vocab, monkeypatch):
    """In float32, gradients of 3e38 are finite but their norm is not: training cannot go on."""
    model, loader, _ = make(corpus_vocab)
    constant_gradients(model, monkeypatch, 3e38)
    with pytest.raises(DivergenceError):
        train_epoch(model, loader, 1.0, epoch=1)


def test_huge_but_finite_gradients_are_clipped_not_zeroed(corpus_vocab, monkeypatch):
    """Gradients of 1e30 in float32 have a finite norm (about 1e30 times the square root of
    their count): clipped to norm 1, each step moves the parameters by lr, not by 0."""
    model, loader, _ = make(corpus_vocab)
    constant_gradients(model, monkeypatch, 1e30)
    before = model.params.flat.astype(np.float64)
    train_epoch(model, loader, 0.5, epoch=1)
    moved = np.linalg.norm(model.params.flat.astype(np.float64) - before)
    assert moved == pytest.approx(0.5 * len(loader), rel=1e-3)  # lr x max_norm 1, per step


def test_a_resumed_run_out_of_patience_trains_no_more(corpus_vocab):
    model, loader, vocab = make(corpus_vocab)
    before = model.params.flat.copy()
    # the best at epoch 1, then 2 epochs without a better one: patience 2 is used up
    history = {"perplexity": [9.0] * 3, "tokens_per_sec": [1.0] * 3,
               "val_perplexity": [5.0, 6.0, 7.0]}  # fmt: skip
    out = train(model, loader, vocab, num_epochs=5, lr=1.0, start_epoch=3, history=history,
                val_corpus=corpus_vocab[0][:100], patience=2, log=None)  # fmt: skip
    assert len(out["perplexity"]) == 3
    assert model.params.flat.tobytes() == before.tobytes()


def test_sampled_continuations_are_seeded_with_seed_and_epoch(corpus_vocab, monkeypatch):
    model, loader, vocab = make(corpus_vocab)
    seeds = []

    def predict(*args, seed=None, **kwargs):
        seeds.append(seed)
        return "x"

    monkeypatch.setattr(npgru.train, "predict", predict)
    train(model, loader, vocab, num_epochs=2, lr=1.0, predict_every=1, temperature=1.0,
          seed=7, log=lambda line: None)  # fmt: skip
    assert seeds == [(7, 1), (7, 2)]


# ------------------------------------------------- issue 25: a learning rate decayed to 0


@pytest.mark.parametrize(
    "lr, lr_decay, num_epochs, first",
    [
        (1.0, 1e-10, 50, 34),  # 1e-10 ** 32 is subnormal (1e-320), ** 33 is 0
        (1.0, 1e-10, 33, None),
        (1e10, 1e-10, 50, 34),  # lr * 0 is 0, however large lr is
        (1.0, 0.5, 2000, 1076),  # 2 ** -1074 is the smallest float; 2 ** -1075 rounds to 0
        (1.0, 1.0, 10**9, None),
        (5e-324, 0.4, 2, 2),  # the smallest float times 0.4 rounds to 0
    ],
)
def test_vanishing_epoch_is_the_first_with_a_zero_learning_rate(lr, lr_decay, num_epochs, first):
    assert vanishing_epoch(lr, lr_decay, num_epochs) == first
    if first is not None:  # the very expression train() uses, either side of the answer
        assert lr * lr_decay ** (first - 1) == 0 and lr * lr_decay ** (first - 2) > 0


def test_train_refuses_a_decay_to_zero_before_the_first_epoch(corpus_vocab, monkeypatch):
    model, loader, vocab = make(corpus_vocab)

    def train_epoch(*args, **kwargs):
        raise AssertionError("an epoch was trained: the refusal came too late")

    monkeypatch.setattr(npgru.train, "train_epoch", train_epoch)
    with pytest.raises(ConfigError, match=r"lr_decay 1e-10 .* in epoch 34 of 50.* 33 epochs"):
        train(model, loader, vocab, num_epochs=50, lr=1.0, lr_decay=1e-10, log=None)
