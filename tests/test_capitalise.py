"""examples/capitalise.py: the data, the masked loss and its gradient, the rules, training.

The text is made up here, or the book in tests/data; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import npgru

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "tests" / "data" / "timemachine.txt"


def load_example():
    spec = importlib.util.spec_from_file_location("capitalise_example", ROOT / "examples" /
                                                  "capitalise.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cap = load_example()

TEXT = """The Time Machine

I

'Is it?' said Filby. Weena came
in. I saw it! Mr. Wells wrote it...

the end
"""


@pytest.fixture(autouse=True)
def _no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "no-such-cache"))


# ----------------------------------------------------------------------------------------
# the data


def test_sentences_split_at_punctuation_not_case():
    assert cap.split_sentences(TEXT) == [
        "The Time Machine",  # the chapter number "I" has no lower-case letter: left out
        "'Is it?'",
        "said Filby.",  # a split after ?' though the next word is lower-case
        "Weena came in.",  # the lines of a paragraph joined with one space
        "I saw it!",
        "Mr.",  # the split does not know abbreviations
        "Wells wrote it...",
        "the end",
    ]
    # the lower-cased text splits at the same places (the heading "i" is kept there)
    lowered = [s.lower() for s in cap.split_sentences(TEXT)]
    assert cap.split_sentences(TEXT.lower()) == [lowered[0], "i", *lowered[1:]]


def test_inputs_are_lower_case_and_labels_mark_capitals():
    assert cap.lower_tokens("said Filby.") == list("said filby.")
    assert cap.capital_labels("said Filby.").tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert cap.capital_labels("'I'm OK'").tolist() == [0, 1, 0, 0, 0, 1, 1, 0]
    assert cap.capital_labels("").shape == (0,)
    # one token per character even where lower() makes two characters of one
    assert cap.lower_tokens("İs") == ["i", "s"] and len(cap.capital_labels("İs")) == 2
    assert cap.restore("".join(cap.lower_tokens("İs")), cap.capital_labels("İs")) == "Is"


def test_encode_pad_and_lengths():
    sentences = ["Ab c.", "Dd", "e F g"]
    vocab = cap.Vocab([c for s in sentences for c in cap.lower_tokens(s)])
    examples = cap.encode(sentences, vocab)
    assert [ids.tolist() for ids, _ in examples] == [
        vocab[list("ab c.")], vocab[list("dd")], vocab[list("e f g")]
    ]  # fmt: skip
    X, Y, lengths = cap.pad(examples)
    assert X.shape == Y.shape == (5, 3) and X.dtype == Y.dtype == np.int64  # time-major (T, B)
    assert lengths.tolist() == [5, 2, 5]
    assert X[:, 1].tolist() == [*vocab[list("dd")], 0, 0, 0]  # padded with 0 past the end
    assert Y.T.tolist() == [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    rows = cap.valid_rows(lengths, 5)  # rows t·B + b with t < lengths[b]
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 14]
    assert X.reshape(-1)[rows].tolist() == [
        X[t, b] for t in range(5) for b in range(3) if t < lengths[b]
    ]


def test_batches_cover_every_sentence_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    sentences = ["x" * int(n) for n in rng.integers(1, 40, size=50)]
    vocab = cap.Vocab(list("x"))
    examples = cap.encode(sentences, vocab)
    for order_rng in (None, np.random.default_rng(1)):
        seen, longest = [], []
        for X, Y, lengths, indices in cap.batches(examples, 8, order_rng):
            assert X.shape == (lengths.max(), len(indices)) and len(indices) <= 8
            assert lengths.tolist() == [len(sentences[i]) for i in indices]
            assert (Y == 0).all() and (X[np.arange(X.shape[0])[:, None] >= lengths] == 0).all()
            seen += indices
            longest.append(int(lengths.max()))
        assert sorted(seen) == list(range(50))
        assert (longest == sorted(longest)) == (order_rng is None)  # shuffled batches
    first = [b[3] for b in cap.batches(examples, 8, np.random.default_rng(2))]
    again = [b[3] for b in cap.batches(examples, 8, np.random.default_rng(2))]
    assert first == again  # the order is the seed's


# ----------------------------------------------------------------------------------------
# the model's loss over the real characters, and its gradient


def tiny_batch(seed=0):
    sentences = ["Said Filby.", "I do.", "Ask Weena, Filby", "ok"]
    vocab = cap.Vocab([c for s in sentences for c in cap.lower_tokens(s)])
    return cap.encode(sentences, vocab), len(vocab)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_masked_loss_gradient_by_finite_differences(bidirectional):
    examples, V = tiny_batch()
    model = cap.Tagger(V, 4, bidirectional=bidirectional, variant="reset_after", dtype="float64")
    rng = np.random.default_rng(3)
    for p in model.params.values():
        p[...] = rng.normal(0.0, 0.5, p.shape)  # in place: the layer's views stay its own
    X, Y, lengths = cap.pad(examples)
    _, grads = model.loss_and_grads(X, Y, lengths)
    assert set(grads) == set(model.params)

    def loss():  # the forward only: logits of the real characters, then the mean loss
        O, (_, valid, _, _) = model.logits(X, lengths)
        return float(npgru.softmax_cross_entropy(O, Y.reshape(-1)[valid])[0])

    report = npgru.check_gradients(loss, model.params, grads)
    assert report.passed, report


def test_the_padding_adds_nothing():
    """The batch's loss and gradient are those of its sentences one by one, each weighted by
    its length (the mean over all real characters), whatever the padding holds."""
    examples, V = tiny_batch()
    model = cap.Tagger(V, 5, bidirectional=True, dtype="float64", seed=2)
    for p in model.params.values():
        p[...] = np.random.default_rng(4).normal(0.0, 0.3, p.shape)
    X, Y, lengths = cap.pad(examples)
    loss, grads = model.loss_and_grads(X, Y, lengths)
    grads = {k: v.copy() for k, v in grads.items()}  # the next call may reuse the buffers
    X2, Y2 = X.copy(), Y.copy()
    past = np.arange(X.shape[0])[:, None] >= lengths
    X2[past], Y2[past] = 3, 1  # other tokens and labels on the padding: no change
    loss2, grads2 = model.loss_and_grads(X2, Y2, lengths)
    assert float(loss2) == pytest.approx(float(loss), abs=1e-14)
    for k in grads:
        np.testing.assert_allclose(grads2[k], grads[k], atol=1e-14)
    N = lengths.sum()
    total, summed = 0.0, {k: np.zeros_like(v) for k, v in grads.items()}
    for ids, labels in examples:
        one, g = model.loss_and_grads(ids[:, None], labels[:, None], np.array([len(ids)]))
        total += float(one) * len(ids) / N
        for k in summed:
            summed[k] += g[k] * len(ids) / N
    assert float(loss) == pytest.approx(total, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], summed[k], rtol=1e-10, atol=1e-14, err_msg=k)


# ----------------------------------------------------------------------------------------
# the rules and the scores


def test_rule_full_stop_by_hand():
    s = "'is it?' said filby. i think i'm in it. india."
    caps = cap.rule_full_stop(s)
    assert [k for k in range(len(s)) if caps[k]] == [1, 21, 40]  # 'is, i (think), india
    caps = cap.rule_full_stop(s, word_i=True)
    assert [k for k in range(len(s)) if caps[k]] == [1, 21, 29, 40]  # and i'm; not in, it
    assert cap.rule_full_stop("").tolist() == []
    assert cap.rule_full_stop("... 'x").tolist() == [0, 0, 0, 0, 0, 1]


def test_scores_by_hand():
    sentences = ["Said Filby. I", "ok Go"]
    # letters: S a i d F i l b y I | o k G o  -> 14 letters, 4 capitals (S, F, I, G)
    guess = [np.zeros(13, np.int64), np.zeros(5, np.int64)]
    guess[0][[0, 10, 12]] = 1  # S right, "." is no letter (not counted), I right
    guess[1][0] = 1  # o wrong
    s = cap.scores(sentences, guess)
    # tp 2 (S, I), fp 1 (o), fn 2 (F, G); correct 14 - 3 = 11
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert s["accuracy"] == pytest.approx(11 / 14)
    assert s["mid_recall"] == pytest.approx(1 / 3)  # F, I, G after a first letter: I found
    rule = [cap.rule_full_stop(x.lower()) for x in sentences]
    r = cap.scores(sentences, rule)  # S, I (after the full stop), o: tp 2, fp 1, fn 2
    assert (r["precision"], r["recall"]) == pytest.approx((2 / 3, 1 / 2))
    assert cap.restore("said filby.", cap.capital_labels("said Filby.")) == "said Filby."
    book = ["Filby and Weena.", "said Filby to filby"]
    guess = ["Filby and weena.", "said filby to Filby"]
    assert cap.name_hits(book, guess, "Filby") == (1, 2)  # where the book has it, not elsewhere
    assert cap.name_hits(book, guess, "Weena") == (0, 1)


# ----------------------------------------------------------------------------------------
# training


def test_training_needs_the_rest_of_the_word():
    """Ann/and, Tom/Tim/the/to: whether a word's first letter is a capital shows only in its
    later letters. A left-to-right GRU can at best guess (F1 about 2/3 with the words drawn at
    random); the bidirectional one learns it in a few epochs."""
    rng = np.random.default_rng(0)
    words = ["and", "Ann", "the", "Tom", "to", "Tim"]
    sentences = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(240)]
    held_out = sentences[9::10]
    training = [s for k, s in enumerate(sentences) if k % 10 != 9]
    vocab = cap.Vocab([c for s in training for c in cap.lower_tokens(s)])
    train_set, test_set = cap.encode(training, vocab), cap.encode(held_out, vocab)
    f1, losses = {}, {}
    for bidirectional in (False, True):
        model = cap.Tagger(len(vocab), 12, bidirectional=bidirectional)
        losses[bidirectional] = cap.train(model, train_set, epochs=8, lr=0.05, batch_size=16,
                                          clip=1.0, seed=0, log=lambda line: None)  # fmt: skip
        f1[bidirectional] = cap.scores(held_out, model.predict(test_set))["f1"]
    rule = cap.scores(held_out, [cap.rule_full_stop(s.lower()) for s in held_out])["f1"]
    assert f1[True] > 0.95 > 0.8 > f1[False] and rule < 0.5
    assert losses[True][-1] < 0.05 < 0.15 < losses[False][-1] < losses[False][0]


def test_the_example_runs_on_the_book(capsys):
    assert cap.main(["--quick", "--no-matched", "--examples", "1", "--data", str(BOOK)]) == 0
    out = capsys.readouterr().out
    assert "| rule: after a full stop |" in out and "| GRU bidirectional, H 16 |" in out
    assert "held out: 30 sentences" in out and re.search(r"\| Filby \| \d / 1 \| \d / 1 \|", out)


def test_bad_input_is_one_line(capsys, tmp_path):
    assert cap.main(["--quick", "--data", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capitalise.py: error: no such file") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        cap.main(["--hidden", "0"])
    assert exc.value.code == 2
    (tmp_path / "short.txt").write_text("One. Two. Three.", encoding="utf-8")
    assert cap.main(["--data", str(tmp_path / "short.txt")]) == 2
    assert "fewer than 10 sentences" in capsys.readouterr().err
