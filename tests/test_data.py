"""Tests of the text pipeline in npgru.data: cleaning, vocabulary, corpus, samplers, loader.

The published d2l facts about *The Time Machine* are checked against the verified copy in
``tests/data/timemachine.txt`` (or ``$NPGRU_TEST_DATA``).
No test here touches the network: ``urlopen`` is replaced by a function that fails the test.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npgru.data import (
    SeqDataLoader,
    Vocab,
    load_corpus,
    load_data_time_machine,
    preprocess_lines,
    read_text,
    seq_data_iter_random,
    seq_data_iter_sequential,
    tokenize,
)
from npgru.errors import ConfigError, DataError, NpgruError

# Published by d2l (the GRU chapter's data, see docs/index.md).
BOOK_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
BOOK_BYTES = 178_979
BOOK_TOKENS = 170_580
BOOK_LINES = 3221
D2L_VOCAB = [
    "<unk>", " ", "e", "t", "a", "i", "n", "o", "s", "h", "r", "d", "l", "m",
    "u", "c", "f", "w", "g", "y", "p", "b", "v", "k", "x", "z", "j", "q",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"test tried to use the network: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="session")
def book_text(book_path) -> str:
    return book_path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the book


def test_book_file_is_the_published_one(book_path):
    raw = book_path.read_bytes()
    assert len(raw) == BOOK_BYTES
    assert hashlib.sha1(raw).hexdigest() == BOOK_SHA1


def test_book_lines_and_cleaning(book_path):
    lines = preprocess_lines(read_text(book_path))
    assert len(lines) == BOOK_LINES
    assert lines[0] == "the time machine by h g wells"
    assert all(set(line) <= set("abcdefghijklmnopqrstuvwxyz ") for line in lines)
    assert all(line == line.strip() and "  " not in line for line in lines)


def test_book_vocab_matches_d2l(book_text):
    _, vocab = load_corpus(book_text, max_tokens=-1)
    assert len(vocab) == 28
    assert vocab.idx_to_token == D2L_VOCAB
    # the order is the one a plain count gives (no ties in this book)
    counts = Counter("".join(preprocess_lines(book_text)))
    assert [c for c, _ in counts.most_common()] == D2L_VOCAB[1:]
    assert len(set(counts.values())) == len(counts)
    assert vocab.token_freqs[:3] == [(" ", counts[" "]), ("e", counts["e"]), ("t", counts["t"])]


def test_book_corpus_lengths(book_text):
    full, vocab_full = load_corpus(book_text, max_tokens=-1)
    also_full, _ = load_corpus(book_text, max_tokens=None)
    short, vocab_short = load_corpus(book_text)  # d2l's default max_tokens=10000
    assert len(full) == BOOK_TOKENS
    assert also_full.tolist() == full.tolist()
    assert len(short) == 10_000
    assert short.tolist() == full[:10_000].tolist()
    assert vocab_short == vocab_full  # the vocabulary always comes from the whole text
    assert "".join(vocab_full.to_tokens(full[:16])) == "the time machine"


def test_load_data_time_machine_d2l_defaults(book_path):
    loader, vocab = load_data_time_machine(32, 35, path=book_path, seed=0)
    assert len(vocab) == 28
    assert len(loader.corpus) == 10_000
    # (10000 - o - 1) // (32 * 35) == 8 for every offset o in 0..35
    assert len(loader) == 8
    batches = list(loader)
    assert len(batches) == 8
    for X, Y in batches:
        assert X.shape == Y.shape == (32, 35)
        assert X.dtype == Y.dtype == np.int64


def test_load_data_time_machine_from_cache(book_path, tmp_path, monkeypatch):
    shutil.copy(book_path, tmp_path / "timemachine.txt")
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path))
    loader, vocab = load_data_time_machine(32, 35, max_tokens=-1, use_random_iter=True, seed=1)
    assert vocab.idx_to_token == D2L_VOCAB
    assert len(loader.corpus) == BOOK_TOKENS
    assert len(loader) == (BOOK_TOKENS - 35) // (32 * 35) == len(list(loader))


def test_load_data_time_machine_bad_sizes_fail_before_io(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError):
        load_data_time_machine(0, 35, path=missing)
    with pytest.raises(ConfigError):
        load_data_time_machine(32, 35, max_tokens=0, path=missing)
    with pytest.raises(DataError):
        load_data_time_machine(32, 35, path=missing)


def test_load_data_time_machine_too_little_text(book_path):
    with pytest.raises(ConfigError, match=r"needs at least 1156 tokens, the corpus has 1000"):
        load_data_time_machine(32, 35, max_tokens=1000, path=book_path)


# --------------------------------------------------------------------------- cleaning


def test_preprocess_lines_like_d2l():
    text = "The Time Machine, by H. G. Wells [1898]\n\n\n  I\r\nTHE  time--traveller's\rend"
    assert preprocess_lines(text) == [
        "the time machine by h g wells",
        "",
        "",
        "i",
        "the time traveller s",
        "end",
    ]
    assert preprocess_lines("caf\u00e9 na\u00efve\n") == ["caf na ve"]  # only A-Z are letters
    assert preprocess_lines("") == []
    assert preprocess_lines("a\n") == ["a"]
    assert preprocess_lines("a\n\n") == ["a", ""]


def test_tokenize_has_no_separator_between_lines():
    assert tokenize(["ab c", "", "de"]) == ["a", "b", " ", "c", "d", "e"]
    assert tokenize([]) == []


def test_load_corpus_accepts_lines_raw_or_clean():
    text = "Hello, World!\nfoo BAR\n"
    from_text = load_corpus(text, max_tokens=-1)
    from_raw_lines = load_corpus(text.splitlines(keepends=True), max_tokens=-1)
    from_clean = load_corpus(preprocess_lines(text), max_tokens=-1)
    for corpus, vocab in (from_raw_lines, from_clean):
        assert corpus.tolist() == from_text[0].tolist() and vocab == from_text[1]
    corpus, vocab = from_text
    assert "".join(vocab.to_tokens(corpus)) == "hello worldfoo bar"


@pytest.mark.parametrize("bad", [0, -2, 2.5, "10", True])
def test_load_corpus_rejects_bad_max_tokens(bad):
    with pytest.raises(ConfigError, match="max_tokens"):
        load_corpus("some text", max_tokens=bad)


def test_load_corpus_without_letters():
    with pytest.raises(DataError, match="no letters"):
        load_corpus("1234 !?\n\u00e9\u00e8")


# --------------------------------------------------------------------------- vocab


def test_vocab_order_ties_first_seen():
    tokens = list("cabbac d")  # c:2 a:2 b:2 ' ':1 d:1 -> ties keep first-seen order
    vocab = Vocab(tokens)
    assert vocab.idx_to_token == ["<unk>", "c", "a", "b", " ", "d"]
    assert vocab.token_freqs == [("c", 2), ("a", 2), ("b", 2), (" ", 1), ("d", 1)]
    assert vocab.token_to_idx == {t: i for i, t in enumerate(vocab.idx_to_token)}


def test_vocab_lookup_unknown_and_round_trip():
    vocab = Vocab(list("hello world"))
    assert vocab.unk == 0
    assert vocab["z"] == 0 and vocab["<unk>"] == 0
    assert vocab[["h", "?", "o"]] == [vocab["h"], 0, vocab["o"]]
    assert vocab[("l", "l")] == [vocab["l"]] * 2
    assert vocab["l"] == 1  # the most frequent token
    ids = vocab[list("hello world")]
    assert "".join(vocab.to_tokens(ids)) == "hello world"
    assert vocab.to_tokens(np.array(ids)) == list("hello world")
    assert vocab.to_tokens(0) == "<unk>"
    assert vocab.to_tokens(np.int64(1)) == "l"
    assert len(vocab) == 1 + len(set("hello world"))


def test_vocab_min_freq_reserved_and_nested():
    vocab = Vocab([["a", "a", "b"], ["a", "c", "c"]], min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "a", "c"]
    assert vocab["b"] == 0


def test_vocab_from_tokens_list_and_equality():
    vocab = Vocab(list("the quick brown fox"))
    rebuilt = Vocab.from_tokens_list(list(vocab.idx_to_token))
    assert rebuilt == vocab
    assert rebuilt.token_to_idx == vocab.token_to_idx
    assert rebuilt[list("fox!")] == vocab[list("fox!")]
    assert vocab != Vocab(list("the quick brown dog"))
    assert vocab != vocab.idx_to_token  # not equal to a plain list
    for bad in ([], ["a", "<unk>"], ["<unk>", "a", "a"], ["<unk>", 3]):
        with pytest.raises(DataError):
            Vocab.from_tokens_list(bad)


# --------------------------------------------------------------------------- read_text


def test_read_text_good(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Caf\u00e9 time\n", encoding="utf-8")
    assert read_text(p) == "Caf\u00e9 time\n"
    assert read_text(str(p)) == "Caf\u00e9 time\n"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"123 456\n!!\n", "no letters"),
        (b"\xe9t\xe9 time machine\n", "not UTF-8"),
        (b"hello\x00world", "NUL"),
        ("the time machine".encode("utf-16"), "NUL"),
        (bytes(range(256)), "NUL"),
    ],
    ids=["empty", "no-letters", "latin1", "nul", "utf16", "binary"],
)
def test_read_text_bad_content(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_text(p)
    assert "\n" not in str(info.value)


def test_read_text_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="directory"):
        read_text(tmp_path)


def test_load_data_time_machine_bad_file(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(DataError, match="not UTF-8"):
        load_data_time_machine(2, 3, path=p)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_read_text_any_bytes_gives_text_or_data_error(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.txt"
        p.write_bytes(content)
        try:
            text = read_text(p)
        except DataError as exc:
            assert "\n" not in str(exc)
        else:
            assert text.encode("utf-8") == content
            assert any(c.isascii() and c.isalpha() for c in text)


# --------------------------------------------------------------------------- samplers


class FixedRng:
    """A stand-in for numpy.random.Generator whose draws of the offset are fixed.

    It records the inclusive range each ``integers`` call asked for, and shuffles with a
    real Generator.
    """

    def __init__(self, value: int, seed: int = 0):
        self.value = value
        self.ranges: list[tuple[int, int]] = []
        self._real = np.random.default_rng(seed)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        assert size is None
        top = high if endpoint else high - 1
        self.ranges.append((int(low), int(top)))
        assert low <= self.value <= top, "the test asked for an offset outside the range"
        return self.value

    def shuffle(self, x):
        self._real.shuffle(x)


def d2l_sequential_count(n, b, t, offset):
    """The number of minibatches d2l's seq_data_iter_sequential yields, from its formulas."""
    num_tokens = ((n - offset - 1) // b) * b
    return (num_tokens // b) // t


def d2l_random_count(n, b, t, drop):
    """The number of minibatches d2l's seq_data_iter_random yields, from its formulas."""
    num_subseqs = (n - drop - 1) // t
    return num_subseqs // b


# (corpus length, batch_size, num_steps): lengths where the count depends on the offset, and
# the exact minimum lengths
SHAPES = [(50, 2, 5), (61, 3, 4), (23, 2, 5), (200, 1, 7), (22, 1, 1), (37, 4, 1), (101, 5, 3)]


@pytest.mark.parametrize(("n", "b", "t"), SHAPES)
def test_sequential_every_offset(n, b, t):
    corpus = np.arange(n)
    for offset in range(t + 1):
        rng = FixedRng(offset)
        batches = list(seq_data_iter_sequential(corpus, b, t, rng))
        assert rng.ranges == [(0, t)]  # d2l: random.randint(0, num_steps), inclusive
        assert len(batches) == d2l_sequential_count(n, b, t, offset)
        cols = (n - offset - 1) // b
        for k, (X, Y) in enumerate(batches):
            assert X.shape == Y.shape == (b, t)
            assert X.dtype == np.int64
            # row i holds the i-th of b equal stretches of the text, from the offset on
            expect = offset + np.arange(b)[:, None] * cols + k * t + np.arange(t)
            np.testing.assert_array_equal(X, expect)
            np.testing.assert_array_equal(Y, X + 1)
        for (X0, _), (X1, _) in itertools.pairwise(batches):
            np.testing.assert_array_equal(X1[:, 0], X0[:, -1] + 1)  # rows continue


@pytest.mark.parametrize(("n", "b", "t"), SHAPES)
def test_random_every_offset(n, b, t):
    corpus = np.arange(n) * 3 + 7  # ids that are not positions, to tell the two apart
    for drop in range(t):
        rng = FixedRng(drop, seed=drop)
        batches = list(seq_data_iter_random(corpus, b, t, rng))
        assert rng.ranges == [(0, t - 1)]  # d2l: random.randint(0, num_steps - 1)
        assert len(batches) == d2l_random_count(n, b, t, drop)
        starts = []
        for X, Y in batches:
            assert X.shape == Y.shape == (b, t)
            assert X.dtype == Y.dtype == np.int64
            pos = (X - 7) // 3
            np.testing.assert_array_equal(pos, pos[:, :1] + np.arange(t))  # contiguous rows
            np.testing.assert_array_equal(Y, X + 3)  # the next token
            starts.extend(pos[:, 0].tolist())
        assert all((s - drop) % t == 0 for s in starts)
        assert len(set(starts)) == len(starts)  # disjoint subsequences (same grid, distinct)
        assert max(starts) + t < n  # the label of the last step exists
        assert len(starts) == len(batches) * b


def test_random_sampler_shuffles_and_covers():
    n, b, t = 1001, 4, 10
    corpus = np.arange(n)
    rng = np.random.default_rng(5)
    orders = []
    for _ in range(20):
        starts = [int(x) for X, _ in seq_data_iter_random(corpus, b, t, rng) for x in X[:, 0]]
        drop = starts[0] % t
        grid = range(drop, drop + ((n - drop - 1) // t) * t, t)  # all subsequence starts
        assert len(set(starts)) == len(starts) == len(grid) // b * b
        assert set(starts) <= set(grid)
        orders.append(starts)
    assert len({tuple(o) for o in orders}) > 1
    assert any(o != sorted(o) for o in orders)


def test_offsets_drawn_from_full_inclusive_range():
    corpus = np.arange(60)
    rng = np.random.default_rng(123)
    seq = {
        int(next(iter(seq_data_iter_sequential(corpus, 2, 4, rng)))[0][0, 0]) for _ in range(300)
    }
    assert seq == {0, 1, 2, 3, 4}
    rnd = {
        min(int(x) for X, _ in seq_data_iter_random(corpus, 2, 4, rng) for x in X[:, 0]) % 4
        for _ in range(300)
    }
    assert rnd == {0, 1, 2, 3}


def test_sampler_is_reproducible_with_the_same_seed():
    corpus = np.arange(500) % 17
    for fn in (seq_data_iter_sequential, seq_data_iter_random):
        a = [X.tolist() for X, _ in fn(corpus, 3, 5, np.random.default_rng(9))]
        b = [X.tolist() for X, _ in fn(corpus, 3, 5, np.random.default_rng(9))]
        assert a == b


@pytest.mark.parametrize("fn", [seq_data_iter_sequential, seq_data_iter_random])
def test_sampler_validates(fn):
    corpus = list(range(100))
    for b, t in ((0, 5), (5, 0), (-1, 5), (2.0, 5), (2, None)):
        with pytest.raises(ConfigError):
            fn(corpus, b, t, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="needs at least"):
        fn(corpus, 10, 10, np.random.default_rng(0))
    with pytest.raises(TypeError):
        import random

        fn(corpus, 2, 5, random.Random(0))
    with pytest.raises(DataError):
        fn([[1, 2], [3, 4]], 1, 1, np.random.default_rng(0))


def test_sampler_on_array_api_strict_backend():
    xp = pytest.importorskip("array_api_strict")
    corpus = np.arange(100)
    for fn in (seq_data_iter_sequential, seq_data_iter_random):
        X, Y = next(iter(fn(corpus, 2, 5, 0, backend=xp)))
        assert X.dtype == Y.dtype == xp.int64 and X.shape == Y.shape == (2, 5)
        np.testing.assert_array_equal(np.from_dlpack(Y), np.from_dlpack(X) + 1)


# --------------------------------------------------------------------------- loader


@pytest.mark.parametrize("use_random_iter", [False, True])
@pytest.mark.parametrize(("n", "b", "t"), SHAPES)
def test_loader_len_equals_count_for_every_offset(n, b, t, use_random_iter):
    loader = SeqDataLoader(np.arange(n), None, b, t, use_random_iter=use_random_iter)
    offsets = range(t) if use_random_iter else range(t + 1)
    count = d2l_random_count if use_random_iter else d2l_sequential_count
    d2l_counts = [count(n, b, t, o) for o in offsets]
    assert len(loader) == min(d2l_counts) >= 1
    for o in offsets:
        loader.rng = FixedRng(o)
        got = list(loader)
        assert len(got) == len(loader)
        for X, Y in got:
            assert X.shape == Y.shape == (b, t)
            np.testing.assert_array_equal(Y, X + 1)


def test_loader_len_worst_case_is_exact_for_a_varying_count():
    n, b, t = 51, 2, 5
    counts = [d2l_sequential_count(n, b, t, o) for o in range(t + 1)]
    assert counts == [5, 4, 4, 4, 4, 4]  # (50 - o) // 10
    loader = SeqDataLoader(np.arange(n), None, b, t)
    assert len(loader) == 4
    loader.rng = FixedRng(0)
    assert len(list(loader)) == 4  # d2l's fifth batch at offset 0 is left out


def test_loader_attributes_and_epochs():
    corpus, vocab = load_corpus("the time traveller " * 40, max_tokens=-1)
    loader = SeqDataLoader(corpus, vocab, 4, 6, rng=3)
    assert loader.vocab is vocab
    assert loader.batch_size == 4 and loader.num_steps == 6 and loader.use_random_iter is False
    assert loader.corpus.tolist() == corpus.tolist()
    assert isinstance(loader.rng, np.random.Generator)
    first = [X[:, 0].tolist() for X, _ in loader]
    starts = set()
    for _ in range(40):
        starts.add(next(iter(loader))[0][0, 0].item())
    assert len(first) == len(loader)
    assert len(starts) > 1  # each epoch draws a fresh offset


def test_loader_resumes_exactly_from_saved_rng_state():
    corpus = np.arange(400) % 11
    loader = SeqDataLoader(corpus, None, 3, 7, use_random_iter=True, rng=42)
    list(loader)
    state = loader.rng.bit_generator.state
    after = [[X.tolist() for X, _ in loader] for _ in range(3)]
    other = SeqDataLoader(corpus, None, 3, 7, use_random_iter=True, rng=0)
    other.rng.bit_generator.state = state
    assert [[X.tolist() for X, _ in other] for _ in range(3)] == after


def test_loader_uses_the_given_generator():
    gen = np.random.default_rng(1)
    loader = SeqDataLoader(np.arange(100), None, 2, 3, rng=gen)
    assert loader.rng is gen


def test_loader_validates():
    corpus, vocab = load_corpus("abc def " * 10, max_tokens=-1)  # 79 tokens (stripped)
    with pytest.raises(ConfigError, match="batch_size"):
        SeqDataLoader(corpus, vocab, 0, 5)
    with pytest.raises(ConfigError, match="num_steps"):
        SeqDataLoader(corpus, vocab, 2, -3)
    # sequential needs B*T + T + 1 = 2*35+36 = 106 tokens
    with pytest.raises(
        ConfigError,
        match=r"^num_steps=35 with batch_size=2 needs at least 106 tokens, the corpus has 79:",
    ) as info:
        SeqDataLoader(corpus, vocab, 2, 35)
    assert "\n" not in str(info.value)
    # boundaries: exactly enough and one fewer, both samplers
    for use_random_iter, need in ((False, 2 * 7 + 7 + 1), (True, 2 * 7 + 7)):
        SeqDataLoader(corpus[:need], vocab, 2, 7, use_random_iter=use_random_iter)
        with pytest.raises(ConfigError):
            SeqDataLoader(corpus[: need - 1], vocab, 2, 7, use_random_iter=use_random_iter)
    with pytest.raises(DataError, match="vocabulary"):
        SeqDataLoader([0, 1, 99] * 30, vocab, 2, 3)


# --------------------------------------------------------------------------- properties


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(max_size=300),
    batch_size=st.integers(1, 6),
    num_steps=st.integers(1, 8),
    use_random_iter=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_text_gives_valid_batches_or_a_clear_error(
    text, batch_size, num_steps, use_random_iter, seed
):
    try:
        corpus, vocab = load_corpus(text, max_tokens=-1)
        loader = SeqDataLoader(
            corpus, vocab, batch_size, num_steps, use_random_iter=use_random_iter, rng=seed
        )
    except (ConfigError, DataError) as exc:
        assert isinstance(exc, NpgruError)
        assert "\n" not in str(exc)
        letters = sum(c.isascii() and c.isalpha() for c in text)
        if letters == 0:
            assert isinstance(exc, DataError)
        else:
            assert isinstance(exc, ConfigError)
            assert len(corpus) < batch_size * num_steps + num_steps + (not use_random_iter)
        return
    assert len(corpus) >= batch_size * num_steps + num_steps
    assert len(loader) >= 1
    batches = list(loader)
    assert len(batches) == len(loader)
    for X, Y in batches:
        assert X.shape == Y.shape == (batch_size, num_steps)
        assert X.dtype == Y.dtype == np.int64
        assert X.min() >= 1 and X.max() < len(vocab)
        assert Y.min() >= 1 and Y.max() < len(vocab)
        np.testing.assert_array_equal(X[:, 1:], Y[:, :-1])


def test_read_text_accepts_exactly_max_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"abcdefghij")
    assert read_text(path, max_bytes=10) == "abcdefghij"
    with pytest.raises(DataError):
        read_text(path, max_bytes=9)


def test_loader_refuses_an_id_just_past_the_vocabulary():
    _, vocab = load_corpus("abc def " * 10, max_tokens=-1)
    with pytest.raises(DataError, match="vocabulary"):
        SeqDataLoader([1, 2, len(vocab)] * 30, vocab, 2, 3)
