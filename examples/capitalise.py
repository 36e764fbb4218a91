#!/usr/bin/env python
"""Restore the capital letters of *The Time Machine* with a GRU, in one and in two directions.

The input is one sentence of the book in lower case, a token id per character; the output, for
every character, whether it was a capital letter. It is a tagger, not a language model, and
it needs two things the chapter's model does not (``docs/capitalisation.md``):

* **sentences of different lengths in one batch.** Each batch is padded to its longest
  sentence and ``lengths`` tells the layer where each one ends: past its end a sequence's
  state stays put, its outputs are zero, and the loss reads only the real characters, so
  the padding adds nothing to the loss and no gradient.
* **the rest of the sentence.** At the ``f`` of ``said filby, an argumentative person``, a
  GRU reading left to right has seen ``said f``; whether that ``f`` starts a name depends
  on the letters after it. A bidirectional GRU has read those too.

Read it top to bottom: the data (sentences, labels, padded batches), the model (a GRU layer
and a linear layer to two classes, its loss over the real characters only and the gradient
of that loss, by hand), the training loop (Adam, clipping), then the scores on held-out
sentences beside two rules any reader could write down.

    python examples/capitalise.py                  # both GRUs, a few minutes on 2 cores
    python examples/capitalise.py --quick          # a smoke test: tiny model, seconds
    python examples/capitalise.py --data book.txt  # another text (no network needed)

Without ``--data`` the text is The Time Machine, found as ``npgru train`` finds it: the copy
in ``tests/data`` of a checkout, else the cache, else one download.

Exit status: 0 done; 2 bad input (one ``error:`` line on stderr); 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

try:
    import npgru
except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import npgru
from npgru.data import Vocab, read_text
from npgru.timemachine import data_path

# ----------------------------------------------------------------------------------------
# the data: sentences, one label per character, padded batches

# a sentence ends at . ! or ?, perhaps followed by a closing quote, then white space
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?]['\"])\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, with their capitals: paragraphs end at blank lines, the
    lines of a paragraph are joined with one space, and a sentence ends at ``.``, ``!`` or
    ``?`` (and a closing quote) before white space. The split looks at punctuation only, never
    at case: the lower-cased text splits at the same places (so ``said Filby`` after ``?'``
    is a sentence of its own). Then the pieces without a lower-case letter are left out:
    chapter numbers (``I``, ``XII``) and initials (``G.``) are no sentences."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        pieces = SENTENCE_END.split(paragraph)
        sentences += [s for s in pieces if any(c.islower() for c in s)]
    return sentences


def lower_tokens(sentence: str) -> list[str]:
    """The model's input: one token per character, lower-cased (``"Filby"`` → f i l b y).
    (A few letters lower-case to two characters, ``"İ"`` to i and a dot: the first is kept,
    so that the input and the labels stay one to one.)"""
    return [c.lower()[0] for c in sentence]


def capital_labels(sentence: str) -> np.ndarray:
    """The target: 1 where the character is a capital letter, else 0, (len(sentence),)."""
    return np.array([c.isupper() for c in sentence], dtype=np.int64)


def encode(sentences: Sequence[str], vocab: Vocab) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, labels) per sentence, both (len(sentence),) int64."""
    return [
        (np.array(vocab[lower_tokens(s)], dtype=np.int64), capital_labels(s)) for s in sentences
    ]


def pad(examples: Sequence[tuple[np.ndarray, np.ndarray]]):
    """One batch, time-major as the layer takes it: token ids X (T, B) and labels Y (T, B),
    zero past each sentence's end (T: the longest of the batch), and ``lengths`` (B,)."""
    lengths = np.array([len(ids) for ids, _ in examples])
    X = np.zeros((lengths.max(), len(examples)), dtype=np.int64)
    Y = np.zeros_like(X)
    for b, (ids, labels) in enumerate(examples):
        X[: len(ids), b], Y[: len(ids), b] = ids, labels
    return X, Y, lengths


def batches(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], batch_size: int, rng=None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]]:
    """Batches of sentences of similar length (little padding), in a random order when
    ``rng`` is given: shuffle, sort by length (stable: equal lengths stay shuffled), cut into
    batches, shuffle the batches. Yields ``(X, Y, lengths, indices into examples)``."""
    order = list(range(len(examples))) if rng is None else list(rng.permutation(len(examples)))
    order.sort(key=lambda i: len(examples[i][0]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for g in range(len(groups)) if rng is None else rng.permutation(len(groups)):
        yield (*pad([examples[i] for i in groups[g]]), groups[g])


# ----------------------------------------------------------------------------------------
# the model: a GRU layer, then a linear layer to two classes (lower, capital) per character


def valid_rows(lengths: np.ndarray, T: int) -> np.ndarray:
    """The rows t·B + b of a time-major (T·B, ·) array that hold a real character,
    t < lengths[b], in order: (N,) with N = sum(lengths)."""
    return np.flatnonzero(np.arange(T)[:, None] < lengths[None, :])


class Tagger:
    """``npgru.GRU`` over the token ids, then ``O = H W_hq + b_q`` at every character.

    ``params`` holds the layer's arrays (views: updating them updates the layer) and the
    output layer's ``W_hq`` (dirs·H, 2) and ``b_q`` (2,), so Adam and clipping see them all.
    """

    def __init__(self, vocab_size, hidden_size, *, bidirectional, variant="d2l", seed=0,
                 dtype="float32"):  # fmt: skip
        # impl "reference": with lengths the layer runs it anyway (the fused paths take no
        # masks), and so Numba, where installed, is not even imported
        self.gru = npgru.GRU(vocab_size, hidden_size, bidirectional=bidirectional,
                             variant=variant, seed=seed, dtype=dtype, impl="reference")  # fmt: skip
        width = self.gru.num_directions * hidden_size
        rng = np.random.default_rng([seed, 1])
        self.params = {
            **self.gru.params,
            "W_hq": rng.normal(0.0, 0.01, (width, 2)).astype(dtype),  # as d2l's init
            "b_q": np.zeros(2, dtype=dtype),
        }

    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def logits(self, X, lengths):
        """Logits (N, 2) of the N = sum(lengths) real characters, in time-major order, and
        what the backward needs."""
        out, _, cache = self.gru.forward(X, lengths=lengths)  # (T, B, F), zero past the ends
        T, B, F = out.shape
        valid = valid_rows(lengths, T)
        H = out.reshape(T * B, F)[valid]  # (N, F): the real characters only (a copy)
        return H @ self.params["W_hq"] + self.params["b_q"], (H, valid, cache, (T, B, F))

    def loss_and_grads(self, X, Y, lengths):
        """The mean cross-entropy over the real characters, and its gradient (by hand)."""
        O, (H, valid, cache, (T, B, F)) = self.logits(X, lengths)
        loss, dO = npgru.softmax_cross_entropy(O, Y.reshape(T * B)[valid])  # dO (N, 2)
        W = self.params["W_hq"]
        grads = {"W_hq": H.T @ dO, "b_q": dO.sum(axis=0)}
        d_out = np.zeros((T * B, F), dtype=H.dtype)  # zero on the padding: no gradient there
        d_out[valid] = dO @ W.T  # each row goes back where it was gathered from
        _, _, gru_grads = self.gru.backward(d_out.reshape(T, B, F), None, cache)
        grads.update(gru_grads)
        return loss, grads

    def predict(self, examples, batch_size=64) -> list[np.ndarray]:
        """Per sentence (len,), 1 where the model says capital (the likelier class), else 0."""
        predictions: list = [None] * len(examples)
        for X, _, lengths, indices in batches(examples, batch_size):
            O, (_, valid, _, _) = self.logits(X, lengths)
            capital = np.zeros(X.size, dtype=np.int64)
            capital[valid] = O.argmax(axis=1)
            capital = capital.reshape(X.shape)
            for b, i in enumerate(indices):
                predictions[i] = capital[: lengths[b], b]
        return predictions


# ----------------------------------------------------------------------------------------
# the rules to beat, and the scores


def rule_full_stop(lowered: str, *, word_i: bool = False) -> np.ndarray:
    """Capitalise the first letter of the sentence and the first letter after each full stop
    (since sentences end at . ! ?, that is "after . ! ?"); with ``word_i`` also the word
    ``i`` standing alone (``i``, ``i'm``, ``i'll``)."""
    labels = np.zeros(len(lowered), dtype=np.int64)
    start = True
    for k, c in enumerate(lowered):
        if c.isalpha():
            alone = (k == 0 or not lowered[k - 1].isalpha()) and (
                k + 1 == len(lowered) or not lowered[k + 1].isalpha()
            )
            labels[k] = start or (word_i and c == "i" and alone)
            start = False
        elif c == ".":
            start = True
    return labels


def scores(sentences: Sequence[str], predictions: Sequence[np.ndarray]) -> dict[str, float]:
    """Over the letters of ``sentences`` (non-letters cannot be capitals and are not counted):
    accuracy, and precision, recall and F1 of the capitals; ``mid_recall``: the recall of
    the capitals after a sentence's first letter (names, "I"), the ones a rule misses."""
    tp = fp = fn = correct = letters = mid = mid_found = 0
    for sentence, predicted in zip(sentences, predictions, strict=True):
        first = next((k for k, c in enumerate(sentence) if c.isalpha()), -1)
        for k, c in enumerate(sentence):
            if not c.isalpha():
                continue
            gold, guess = c.isupper(), bool(predicted[k])
            letters += 1
            correct += gold == guess
            tp, fp, fn = tp + (gold and guess), fp + (guess and not gold), fn + (gold and not guess)
            if gold and k != first:
                mid, mid_found = mid + 1, mid_found + guess
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / letters,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mid_recall": mid_found / mid if mid else 0.0,
    }


def name_hits(sentences: Sequence[str], restored: Sequence[str], name: str) -> tuple[int, int]:
    """(restored exactly, occurrences) of ``name`` in ``sentences``."""
    found = total = 0
    for original, guess in zip(sentences, restored, strict=True):
        for m in re.finditer(re.escape(name), original):
            found, total = found + (guess[m.start() : m.end()] == name), total + 1
    return found, total


def restore(lowered: str, capital: np.ndarray) -> str:
    """The sentence with the predicted capitals put back."""
    return "".join(c.upper() if flag else c for c, flag in zip(lowered, capital, strict=True))


# ----------------------------------------------------------------------------------------
# training


def train(model, examples, *, epochs, lr, batch_size, clip, seed, held_out=None, log=print):
    """Adam on the mean cross-entropy of each batch, gradients clipped to norm ``clip``.
    Returns the training loss (per character) of each epoch."""
    state = npgru.optim.new_state(model.params, "adam")
    rng = np.random.default_rng(seed)  # the order of the batches
    history = []
    for epoch in range(1, epochs + 1):
        started, total, count = time.perf_counter(), 0.0, 0
        for X, Y, lengths, _ in batches(examples, batch_size, rng):
            loss, grads = model.loss_and_grads(X, Y, lengths)  # forward, loss, BPTT by hand
            npgru.clip_grad_norm(grads, clip)
            npgru.optim.step(model.params, grads, lr, state)
            total, count = total + float(loss) * lengths.sum(), count + lengths.sum()
        history.append(total / count)
        line = f"epoch {epoch}: loss {total / count:.4f}, {time.perf_counter() - started:.1f} s"
        if held_out is not None:
            sentences, encoded = held_out
            line += f", held-out F1 {scores(sentences, model.predict(encoded))['f1']:.3f}"
        log(line)
    return history


# ----------------------------------------------------------------------------------------
# the program


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="capitalise.py", description="Restore the capitals of The Time Machine with a GRU."
    )
    p.add_argument("--data", metavar="PATH", help="a UTF-8 text (default: The Time Machine)")
    p.add_argument("--hidden", type=int, default=128, help="H of both GRUs (default 128)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per model (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (32)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (0.01)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (1.0)")
    p.add_argument("--variant", choices=("d2l", "reset_after"), default="d2l",
                   help="the GRU's equations (default d2l, the chapter's)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="weights and batch order (0)")
    p.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True,
                   help="also train a one-direction GRU with as many parameters as the "
                   "bidirectional one (default: yes)")  # fmt: skip
    p.add_argument("--examples", type=int, default=6, help="restored sentences to show (6)")
    p.add_argument(
        "--names",
        default="Filby,Weena,Time Traveller,Psychologist,Morlock",
        help="comma-separated: count these names restored in the held-out text",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: H 16, 1 epoch, 300 sentences")
    args = p.parse_args(argv)
    for name in ("hidden", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seed < 0 or args.examples < 0:
        p.error("--seed and --examples must not be negative")
    if not (args.lr > 0 and args.clip > 0):
        p.error("--lr and --clip must be positive")
    if args.quick:
        args.hidden, args.epochs = 16, 1
    return args


def same_size(vocab_size: int, hidden: int, variant: str) -> int:
    """The smallest H of a one-direction tagger with at least the parameters of a
    bidirectional one of ``hidden`` units."""
    target = Tagger(vocab_size, hidden, bidirectional=True, variant=variant).num_params()
    h = hidden
    while Tagger(vocab_size, h, bidirectional=False, variant=variant).num_params() < target:
        h += 1
    return h


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        text = read_text(data_path(args.data))
    except npgru.NpgruError as exc:
        print(f"capitalise.py: error: {exc}", file=sys.stderr)
        return 2

    # every 10th sentence is held out; the vocabulary comes from the others
    sentences = split_sentences(text)
    if args.quick:
        sentences = sentences[:300]
    held_out = sentences[9::10]
    training = [s for k, s in enumerate(sentences) if k % 10 != 9]
    if not held_out:
        print("capitalise.py: error: the text has fewer than 10 sentences", file=sys.stderr)
        return 2
    vocab = Vocab([c for s in training for c in lower_tokens(s)])
    train_set, test_set = encode(training, vocab), encode(held_out, vocab)
    lowered = ["".join(lower_tokens(s)) for s in held_out]
    lengths = [len(s) for s in sentences]
    print(f"{len(training)} training sentences ({sum(map(len, training)):,} characters), "
          f"{len(held_out)} held out; vocabulary {len(vocab)}; lengths {min(lengths)} to "
          f"{max(lengths)}, median {int(np.median(lengths))}")  # fmt: skip

    # the rules
    results = {
        "all lower case": scores(held_out, [np.zeros(len(s), np.int64) for s in lowered]),
        "rule: after a full stop": scores(held_out, [rule_full_stop(s) for s in lowered]),
        "rule: full stop + word i": scores(
            held_out, [rule_full_stop(s, word_i=True) for s in lowered]
        ),
    }

    # the GRUs: one direction and two of the same H, and one direction as large as two
    H = args.hidden
    models = [("one direction", H, False), ("bidirectional", H, True)]
    if args.matched:
        models.append(("one direction", same_size(len(vocab), H, args.variant), False))
    sizes, seconds, restored = {}, {}, {}
    for kind, hidden, bidirectional in models:
        model = Tagger(len(vocab), hidden, bidirectional=bidirectional, variant=args.variant,
                       seed=args.seed)  # fmt: skip
        name = f"GRU {kind}, H {hidden}"
        print(f"\n{name}: {model.num_params():,} parameters, variant {args.variant}")
        started = time.perf_counter()
        train(model, train_set, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
              clip=args.clip, seed=args.seed, held_out=(held_out, test_set))  # fmt: skip
        seconds[name] = time.perf_counter() - started
        predictions = model.predict(test_set)
        results[name], sizes[name] = scores(held_out, predictions), model.num_params()
        restored[name] = [restore(s, p) for s, p in zip(lowered, predictions, strict=True)]

    letters = sum(c.isalpha() for s in held_out for c in s)
    capitals = sum(c.isupper() for s in held_out for c in s)
    print(f"\nheld out: {len(held_out)} sentences, {letters:,} letters, {capitals} capitals")
    print("| | parameters | training | accuracy | precision | recall | F1 | mid-sentence recall |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in results.items():
        size = f"{sizes[name]:,}" if name in sizes else "-"
        took = f"{seconds[name]:.0f} s" if name in seconds else "-"
        print(f"| {name} | {size} | {took} | {r['accuracy']:.4f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['f1']:.3f} | {r['mid_recall']:.3f} |")  # fmt: skip

    # the names: how many of their occurrences in the held-out text each GRU restores
    uni, bi = restored[f"GRU one direction, H {H}"], restored[f"GRU bidirectional, H {H}"]
    names = [n for n in args.names.split(",") if n and any(n in s for s in held_out)]
    if names:
        print("\n| name: restored / in the held-out text | " + " | ".join(restored) + " |")
        print("|---|" + "--:|" * len(restored))
        for n in names:
            counts = [name_hits(held_out, r, n) for r in restored.values()]
            print(f"| {n} | " + " | ".join(f"{found} / {total}" for found, total in counts) + " |")

    def show(title: str, chosen: list[int]) -> None:
        if chosen:
            print(f"\n{title}")
        for k in chosen:
            print(f"  book:           {held_out[k]}\n  one direction:  {uni[k]}\n"
                  f"  bidirectional:  {bi[k]}")  # fmt: skip

    # the shortest held-out sentence with each name; then, in the book's order, where the
    # two GRUs of the same H disagree, and where the bidirectional one is wrong
    short = [min((k for k in range(len(held_out)) if n in held_out[k]),
                 key=lambda k: len(held_out[k])) for n in names]  # fmt: skip
    show(f"the shortest held-out sentence with each name (GRUs of H {H}):",
         list(dict.fromkeys(short)))  # fmt: skip
    differ = [k for k in range(len(held_out)) if uni[k] != bi[k]]
    print(f"\nthe two GRUs of H {H} restore {len(differ)} of the {len(held_out)} held-out "
          f"sentences differently; of those, exactly right: the bidirectional "
          f"{sum(bi[k] == held_out[k] for k in differ)}, the one-direction "
          f"{sum(uni[k] == held_out[k] for k in differ)}")  # fmt: skip
    under = [k for k in range(len(held_out)) if len(held_out[k]) < 100 and k not in short]
    shown = [k for k in under if k in differ][: args.examples]
    show(f"the first {len(shown)} of them under 100 characters:", shown)
    wrong = [k for k in under if bi[k] != held_out[k] and k not in shown][: args.examples // 2]
    show(f"where the bidirectional GRU is wrong, {len(wrong)} more under 100 characters:", wrong)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
