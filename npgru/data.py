"""The character-level Time Machine pipeline of d2l's RNN chapters, on NumPy.

The pipeline, step by step (each step is a public function, so learners can run it alone):

1. Find the text (:func:`npgru.download.resolve_data_path`): a file the user names, else a
   verified copy in the cache directory, else a download from d2l's server, checked against
   its SHA-1 and written into the cache atomically (nothing partial or unverified is left).
2. Read it (:func:`read_text`): a regular file of at most :data:`MAX_TEXT_BYTES`, strict
   UTF-8; anything else is a :class:`~npgru.errors.DataError` whose one line says what to do.
3. Clean it (:func:`preprocess_lines`): in each line every run of non-letters becomes one
   space, then the line is stripped and lower-cased; 26 letters and the space remain.
4. Split it into characters (:func:`tokenize`), the lines joined with *no* separator.
5. Number the characters (:class:`Vocab`): index 0 is ``<unk>``, then the characters by
   descending frequency, ties in first-seen order. On *The Time Machine* that gives 28 entries.
6. Map the text to ids (:func:`load_corpus`), keeping the first ``max_tokens`` of them
   (d2l keeps 10,000 of the book's 170,580). The vocabulary is built from the whole text.
7. Cut the ids into minibatches (:func:`seq_data_iter_sequential`,
   :func:`seq_data_iter_random`, :class:`SeqDataLoader`): inputs ``X`` and labels ``Y`` of
   shape (batch_size, num_steps), ``Y`` being ``X`` shifted one token to the right.

Random numbers come from a :class:`numpy.random.Generator` (never Python's :mod:`random`), so
a training checkpoint can save ``loader.rng.bit_generator.state`` and resume exactly.
Indices are computed with NumPy on the host; only the finished batches move to the backend.
"""

from __future__ import annotations

import collections
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npgru.backend import Backend, get_backend
from npgru.checks import fraction, positive_int
from npgru.download import resolve_data_path
from npgru.errors import ConfigError, DataError, one_line
from npgru.files import open_regular

__all__ = [
    "MAX_TEXT_BYTES",
    "SeqDataLoader",
    "Vocab",
    "load_corpus",
    "load_data_time_machine",
    "min_corpus_len",
    "preprocess_lines",
    "read_text",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "split_corpus",
    "tokenize",
]

#: The largest training text read (128 MiB, about 750 copies of the book); a larger file, or
#: an endless one, is refused before it is read.
MAX_TEXT_BYTES = 128 * 2**20

_NON_LETTERS = re.compile(r"[^A-Za-z]+")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # universal newlines, as readlines()


# --------------------------------------------------------------------------- text


def read_text(path: str | os.PathLike[str], *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read the training text from ``path``: a regular file of at most ``max_bytes``, UTF-8.

    Returns:
        The file's contents as one ``str`` (a leading byte-order mark is kept; like every
        non-letter it becomes a space in :func:`preprocess_lines`).

    Raises:
        DataError: the file is missing, not a regular file (a folder, a device, a FIFO),
            larger than ``max_bytes``, unreadable, binary (NUL bytes: UTF-16 too), not UTF-8,
            or holds no ASCII letter at all.
    """
    p = Path(path).expanduser()
    try:
        with open_regular(p) as fh:
            size = os.fstat(fh.fileno()).st_size
            data = b"" if size > max_bytes else fh.read(max_bytes + 1)  # growing: still bounded
    except FileNotFoundError:
        raise DataError(f"no such file: {p}: check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror or one_line(exc)}") from exc
    if max(size, len(data)) > max_bytes:
        raise DataError(
            f"{p} is larger than {max_bytes:,} bytes, the most npgru reads: pass a smaller text"
        )
    if not data:
        raise DataError(f"{p} is empty: pass a file with some English text")
    if b"\x00" in data:
        raise DataError(
            f"{p} looks binary (it contains NUL bytes): pass a plain UTF-8 text file "
            "(convert UTF-16 text with e.g. `iconv -f UTF-16 -t UTF-8`)"
        )
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{p} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}): convert it to UTF-8, e.g. `iconv -f LATIN1 -t UTF-8`"
        ) from exc
    if re.search("[A-Za-z]", text) is None:
        raise DataError(f"{p} contains no letters A-Z: pass a file with some English text")
    return text


def _clean(line: str) -> str:
    return _NON_LETTERS.sub(" ", line).strip().lower()


def preprocess_lines(text: str) -> list[str]:
    """Split ``text`` into lines and clean each one as d2l's ``read_time_machine`` does.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (Python's universal newlines, as
    ``open().readlines()`` sees them). In each line every run of characters outside
    ``A-Za-z`` becomes one space; the line is then stripped and lower-cased.

    Returns:
        One cleaned ``str`` per line (blank lines give ``""``); every character is in
        ``a-z`` or a space. *The Time Machine* has 3,221 lines.

    >>> preprocess_lines("The Time-Machine,\\n  by H. G. Wells\\n")
    ['the time machine', 'by h g wells']
    """
    if not isinstance(text, str):
        raise TypeError(f"preprocess_lines expects a str, got {type(text).__name__}")
    return [_clean(m.group()) for m in _LINE.finditer(text)]


def tokenize(lines: Iterable[str]) -> list[str]:
    """Split cleaned lines into character tokens, joining the lines with no separator.

    A word that ends one line runs into the word that starts the next, as in d2l.

    >>> tokenize(["ab c", "d"])
    ['a', 'b', ' ', 'c', 'd']
    """
    return list("".join(lines))


# --------------------------------------------------------------------------- vocab


class Vocab:
    """Token <-> index mapping with d2l's interface.

    Index 0 is ``<unk>`` (what unknown tokens map to), then ``reserved_tokens``, then the
    tokens by descending frequency; tokens with equal counts keep the order in which they
    first appear in ``tokens`` (a stable sort of :class:`collections.Counter`'s insertion
    order). Tokens seen fewer than ``min_freq`` times are left out.

    Args:
        tokens: a flat sequence of tokens, or a sequence of such sequences (lines).
        min_freq: leave out tokens with fewer occurrences.
        reserved_tokens: tokens placed right after ``<unk>`` whatever their counts.

    Attributes:
        idx_to_token: list of tokens, position = index.
        token_to_idx: dict token -> index.
        token_freqs: list of ``(token, count)`` pairs, most frequent first (empty for a
            vocabulary rebuilt by :meth:`from_tokens_list`, whose counts are unknown).
        unk: 0, the index of ``<unk>``.

    >>> v = Vocab(list("abracadabra"))
    >>> v.idx_to_token
    ['<unk>', 'a', 'b', 'r', 'c', 'd']
    >>> v["r"], v[["a", "z"]], v.to_tokens([1, 2])
    (3, [1, 0], ['a', 'b'])
    """

    UNK_TOKEN = "<unk>"

    def __init__(
        self,
        tokens: Iterable[Any] = (),
        min_freq: int = 0,
        reserved_tokens: Iterable[str] | None = None,
    ) -> None:
        tokens = list(tokens)
        if tokens and isinstance(tokens[0], (list, tuple)):
            tokens = [token for line in tokens for token in line]
        self._build(collections.Counter(tokens).items(), min_freq, reserved_tokens)

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[Any, int]]) -> Vocab:
        """A vocabulary from ``(token, count)`` pairs in first-seen order (as a Counter's)."""
        vocab = cls.__new__(cls)
        vocab._build(counts, 0, None)
        return vocab

    def _build(
        self, counts: Iterable[tuple[Any, int]], min_freq: int, reserved_tokens: Any
    ) -> None:
        # sorted() is stable, so equal counts keep the first-seen order
        self.token_freqs: list[tuple[Any, int]] = sorted(
            counts, key=lambda item: item[1], reverse=True
        )
        self.idx_to_token: list[Any] = [self.UNK_TOKEN]
        self.token_to_idx: dict[Any, int] = {self.UNK_TOKEN: 0}
        for token in reserved_tokens or ():
            self._add(token)
        for token, freq in self.token_freqs:
            if freq < min_freq:
                break  # the counts are sorted: all later ones are smaller
            self._add(token)

    def _add(self, token: Any) -> None:
        if token not in self.token_to_idx:
            self.token_to_idx[token] = len(self.idx_to_token)
            self.idx_to_token.append(token)

    @classmethod
    def from_tokens_list(cls, idx_to_token: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary from its saved ``idx_to_token`` list (e.g. from a checkpoint).

        Args:
            idx_to_token: the list, starting with ``"<unk>"``, without duplicates.

        Returns:
            A :class:`Vocab` equal to the one saved (``token_freqs`` is empty).

        Raises:
            DataError: the list is empty, does not start with ``<unk>``, repeats a token, or
                holds something other than strings.
        """
        tokens = list(idx_to_token)
        if not tokens or tokens[0] != cls.UNK_TOKEN:
            raise DataError(
                f"a saved vocabulary must start with {cls.UNK_TOKEN!r}, got "
                f"{tokens[:3]!r}: the checkpoint or vocabulary file is damaged"
            )
        if not all(isinstance(t, str) for t in tokens):
            raise DataError("a saved vocabulary must hold only strings: the file is damaged")
        if len(set(tokens)) != len(tokens):
            raise DataError("a saved vocabulary repeats a token: the file is damaged")
        vocab = cls()
        vocab.idx_to_token = tokens
        vocab.token_to_idx = {t: i for i, t in enumerate(tokens)}
        vocab.token_freqs = []
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens: Any) -> Any:
        """The index of one token, or a list of indices for a list/tuple of tokens.

        Unknown tokens give 0 (``<unk>``).
        """
        if isinstance(tokens, (list, tuple)):
            return [self.token_to_idx.get(t, self.unk) for t in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def to_tokens(self, indices: Any) -> Any:
        """The token at one index, or a list of tokens for a list/tuple/1-D array of them."""
        if hasattr(indices, "tolist"):  # NumPy/CuPy arrays and scalars
            indices = indices.tolist()
        if isinstance(indices, (list, tuple)):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    @property
    def unk(self) -> int:
        """The index of the unknown token, 0."""
        return 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.idx_to_token == other.idx_to_token

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        head = "".join(t if len(t) == 1 else f"[{t}]" for t in self.idx_to_token[:30])
        return f"Vocab({len(self)} tokens: {head!r})"


def load_corpus(
    text_or_lines: str | Iterable[str], max_tokens: int | None = 10000
) -> tuple[np.ndarray, Vocab]:
    """Turn a text into character ids and its vocabulary (d2l's ``load_corpus_time_machine``).

    The text is cleaned line by line into one byte string and counted with NumPy, so a text
    takes a few times its size in memory (d2l's lists of one-character strings take 20x).

    Args:
        text_or_lines: the raw text as one ``str``, or its lines (raw or already cleaned:
            cleaning is idempotent, so both give the same result).
        max_tokens: keep the first ``max_tokens`` ids; ``-1`` or ``None`` keeps them all.
            The vocabulary is always built from the whole text.

    Returns:
        ``(corpus, vocab)``: ``corpus`` is a 1-D uint8 array of ``min(n, max_tokens)`` ids in
        ``[1, len(vocab))``, ``n`` the number of characters after cleaning (170,580 for *The
        Time Machine*); ``vocab`` is a :class:`Vocab` (28 entries there).

    Raises:
        ConfigError: ``max_tokens`` is not a positive int, -1 or None.
        DataError: the text holds no letters A-Z.
    """
    limit = _max_tokens(max_tokens)
    lines = _LINE.finditer(text_or_lines) if isinstance(text_or_lines, str) else text_or_lines
    cleaned = bytearray()
    for line in lines:
        cleaned += _clean(line if isinstance(line, str) else line.group()).encode("ascii")
    if not cleaned:
        raise DataError("the text contains no letters A-Z: pass a text with some English")
    firsts = {c: cleaned.find(c.encode()) for c in " abcdefghijklmnopqrstuvwxyz"}
    present = sorted((i, c) for c, i in firsts.items() if i >= 0)  # in first-seen order
    vocab = Vocab.from_counts((c, cleaned.count(c.encode())) for _, c in present)
    lookup = np.zeros(256, dtype=np.uint8)
    for i, token in enumerate(vocab.idx_to_token[1:], start=1):
        lookup[ord(token)] = i
    return lookup[np.frombuffer(cleaned, dtype=np.uint8)[:limit]], vocab


def split_corpus(corpus: Any, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the end of ``corpus``: ``(train, val)``, ``val`` its last
    ``floor(len(corpus) * val_fraction)`` ids, ``train`` the ids before them.

    The end, not a random sample: neighbouring characters are far from independent, so a
    validation set drawn from inside the training text would measure memory, not
    generalisation. ``val_fraction`` 0 gives an empty ``val``.

    Raises:
        ConfigError: ``val_fraction`` not in [0, 1), or a validation part of 1 token.
    """
    data = _as_corpus(corpus)
    fraction("val_fraction", val_fraction)
    n_val = math.floor(len(data) * val_fraction)
    if val_fraction > 0 and n_val < 2:
        raise ConfigError(
            f"val_fraction={val_fraction} of {len(data)} tokens holds out {n_val}: "
            "validation needs at least 2 (use a larger fraction or more text)"
        )
    return data[: len(data) - n_val], data[len(data) - n_val :]


def _max_tokens(max_tokens: Any) -> int | None:
    if max_tokens is None or (not isinstance(max_tokens, bool) and max_tokens == -1):
        return None
    try:
        return positive_int("max_tokens", max_tokens)
    except ConfigError:
        raise ConfigError(
            f"max_tokens must be a positive integer, or -1 for the whole text, got {max_tokens!r}"
        ) from None


# --------------------------------------------------------------------------- batches


def min_corpus_len(batch_size: int, num_steps: int, use_random_iter: bool = False) -> int:
    """The fewest tokens that give at least one minibatch for every possible random offset.

    Sequential partitioning may drop up to ``num_steps`` tokens and needs one more for the
    last label: ``batch_size * num_steps + num_steps + 1``. Random sampling drops up to
    ``num_steps - 1``: ``batch_size * num_steps + num_steps``.
    """
    batch_size = positive_int("batch_size", batch_size)
    num_steps = positive_int("num_steps", num_steps)
    return batch_size * num_steps + num_steps + (0 if use_random_iter else 1)


def _as_corpus(corpus: Any) -> np.ndarray:
    try:
        arr = np.asarray(corpus)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the corpus must be a 1-D sequence of token ids: {exc}") from exc
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"the corpus must be a 1-D sequence of integer token ids, got an array of "
            f"shape {arr.shape} and dtype {arr.dtype}"
        )
    return arr  # any integer dtype: the batches are made int64 (uint8 keeps a big text small)


def _as_rng(rng: Any) -> Any:
    if rng is None or isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    if not (hasattr(rng, "integers") and hasattr(rng, "shuffle")):
        raise TypeError(
            f"rng must be a numpy.random.Generator or an integer seed, got {type(rng).__name__}"
        )
    return rng


def _checked(corpus: Any, batch_size: Any, num_steps: Any, use_random_iter: bool) -> tuple:
    """The checks both samplers and the loader share: ``(data, batch_size, num_steps)``."""
    need = min_corpus_len(batch_size, num_steps, use_random_iter)
    data = _as_corpus(corpus)
    if len(data) < need:
        raise ConfigError(
            f"num_steps={num_steps} with batch_size={batch_size} needs at least {need} "
            f"tokens, the corpus has {len(data)}: use smaller sizes or more text"
        )
    return data, int(batch_size), int(num_steps)


def _num_batches(n: int, batch_size: int, num_steps: int, use_random_iter: bool) -> int:
    """Batches per epoch at the worst offset: the count every epoch can give."""
    worst = num_steps - 1 if use_random_iter else num_steps
    return (n - worst - 1) // (batch_size * num_steps)


def seq_data_iter_sequential(
    corpus: Any, batch_size: int, num_steps: int, rng: Any = None, *, backend: Any = "numpy"
) -> Iterator[tuple[Any, Any]]:
    """Minibatches by sequential partitioning (d2l's ``seq_data_iter_sequential``).

    An offset ``o`` is drawn uniformly from ``0..num_steps`` (both ends included). The
    ``m = ((len(corpus) - o - 1) // batch_size) * batch_size`` tokens from ``o`` are the
    inputs and the ``m`` tokens from ``o + 1`` the labels; both are reshaped to
    ``(batch_size, m // batch_size)`` and cut into column windows of ``num_steps``. Row ``i``
    of minibatch ``k + 1`` continues where row ``i`` of minibatch ``k`` ended, so the hidden
    state can be carried over. The count is ``(len(corpus) - o - 1) // (batch_size *
    num_steps)``, which may be one more for small offsets than for large ones.

    Args:
        corpus: 1-D token ids, length ``n >= min_corpus_len(batch_size, num_steps)``.
        batch_size: rows per minibatch, ``B``.
        num_steps: time steps per minibatch, ``T``.
        rng: a :class:`numpy.random.Generator` (or a seed, or None for a fresh one).
        backend: where the minibatches are created (a name or a :class:`Backend`).

    Yields:
        ``(X, Y)``: int64 arrays of shape ``(B, T)`` on ``backend``; ``Y[:, t] == X[:, t+1]``
        and ``Y[:, -1]`` is the token after ``X[:, -1]``.

    Raises:
        ConfigError: ``batch_size`` or ``num_steps`` is not a positive int, or the corpus is
            too short to give one minibatch at every offset.
    """
    data, B, T = _checked(corpus, batch_size, num_steps, use_random_iter=False)
    return _sequential(data, B, T, _as_rng(rng), get_backend(backend))


def seq_data_iter_random(
    corpus: Any, batch_size: int, num_steps: int, rng: Any = None, *, backend: Any = "numpy"
) -> Iterator[tuple[Any, Any]]:
    """Minibatches by random sampling (d2l's ``seq_data_iter_random``).

    The first ``d`` tokens are dropped, ``d`` drawn uniformly from ``0..num_steps-1`` (both
    ends included). The rest is cut into ``s = (len(corpus) - d - 1) // num_steps``
    non-overlapping subsequences of ``num_steps`` tokens; their starts are shuffled and taken
    ``batch_size`` at a time, giving ``s // batch_size`` minibatches. Neighbouring minibatches
    are not adjacent in the text, so the hidden state must be reset for each.

    Args:
        corpus: 1-D token ids, length ``n >= min_corpus_len(batch_size, num_steps, True)``.
        batch_size: rows per minibatch, ``B``.
        num_steps: time steps per minibatch, ``T``.
        rng: a :class:`numpy.random.Generator` (or a seed, or None for a fresh one).
        backend: where the minibatches are created (a name or a :class:`Backend`).

    Yields:
        ``(X, Y)``: int64 arrays of shape ``(B, T)`` on ``backend``; each row of ``X`` is a
        contiguous piece of the corpus and the same row of ``Y`` is it shifted by one token.

    Raises:
        ConfigError: ``batch_size`` or ``num_steps`` is not a positive int, or the corpus is
            too short to give one minibatch at every offset.
    """
    data, B, T = _checked(corpus, batch_size, num_steps, use_random_iter=True)
    return _random(data, B, T, _as_rng(rng), get_backend(backend))


def _sequential(data: np.ndarray, B: int, T: int, rng: Any, bk: Backend, most: int | None = None):
    offset = int(rng.integers(0, T, endpoint=True))
    cols = (len(data) - offset - 1) // B  # row b is the text from offset + b * cols
    count = cols // T if most is None else min(cols // T, most)
    # (count, B, T) positions: minibatch k is the column window k of the B rows
    rows = offset + np.arange(B, dtype=np.int64)[:, None] * cols + np.arange(T, dtype=np.int64)
    return _upload_once(data, rows + T * np.arange(count, dtype=np.int64)[:, None, None], bk)


def _random(data: np.ndarray, B: int, T: int, rng: Any, bk: Backend, most: int | None = None):
    drop = int(rng.integers(0, T - 1, endpoint=True))
    starts = np.arange(drop, drop + (len(data) - drop - 1) // T * T, T, dtype=np.int64)
    rng.shuffle(starts)
    count = len(starts) // B if most is None else min(len(starts) // B, most)
    # (count, B, T) positions: minibatch k takes starts[kB : (k + 1)B]
    return _upload_once(data, starts[: count * B].reshape(count, B, 1) + np.arange(T), bk)


def _upload_once(data: np.ndarray, index: np.ndarray, bk: Backend) -> Iterator[tuple[Any, Any]]:
    """Yield the inputs at each ``index[k]`` (B, T) and the labels one token later, moving
    the whole epoch's minibatches to ``bk`` in one copy, in the corpus's own (small) dtype.

    A copy from host memory to a GPU waits until the GPU has finished all the work queued
    before it; one copy per minibatch would stall the training loop at every step. Each
    minibatch becomes int64 on the device, so a big text costs no 8 bytes per token there.
    """
    Xs, Ys = bk.asarray(data[index]), bk.asarray(data[index + 1])
    for k in range(Xs.shape[0]):
        yield bk.asarray(Xs[k, ...], dtype=bk.xp.int64), bk.asarray(Ys[k, ...], dtype=bk.xp.int64)


class SeqDataLoader:
    """An iterable over minibatches of a token corpus (d2l's ``SeqDataLoader``).

    Each ``iter(loader)`` (each epoch) draws a fresh offset from ``loader.rng`` and yields
    exactly ``len(loader)`` pairs ``(X, Y)``, int64 arrays of shape
    ``(batch_size, num_steps)`` on the chosen backend, with sequential partitioning
    (:func:`seq_data_iter_sequential`, the default) or random sampling
    (:func:`seq_data_iter_random`).

    ``len(loader)`` is the number of minibatches the *worst* offset gives, so it is the same
    every epoch and iteration always yields exactly that many. d2l's sampler gives one more
    minibatch for some small offsets of some corpus lengths; the loader leaves that last one
    out (with d2l's defaults, 10,000 or 170,580 tokens, B=32, T=35, every offset gives the
    same count, so nothing is left out). The plain sampler functions keep d2l's counts.

    Args:
        corpus: 1-D token ids (list or array), at least
            ``min_corpus_len(batch_size, num_steps, use_random_iter)`` of them.
        vocab: the :class:`Vocab` the ids come from (the ids are checked against it), or None.
        batch_size: rows per minibatch, ``B`` (positive).
        num_steps: time steps per minibatch, ``T`` (positive).
        use_random_iter: random sampling instead of sequential partitioning.
        rng: a :class:`numpy.random.Generator` (used, not copied), an integer seed, or None.
        backend: ``"numpy"``, ``"cupy"``, ``"auto"``, or a :class:`Backend`.

    Attributes:
        corpus: the ids as a host NumPy integer array, in the dtype given (``load_corpus``
            gives uint8); the minibatches are int64.
        vocab, batch_size, num_steps, use_random_iter: as given.
        rng: the Generator; save ``rng.bit_generator.state`` to resume an epoch sequence.
        backend: the :class:`Backend`.
        val_corpus: the ids held out of this loader for validation, on the host (empty unless
            :func:`load_data_time_machine` was given ``val_fraction``).

    Raises:
        ConfigError: a size is not a positive int, or the corpus is too short.
        DataError: the corpus is not 1-D integers, or holds ids outside the vocabulary.
    """

    def __init__(
        self,
        corpus: Sequence[int] | np.ndarray,
        vocab: Vocab | None,
        batch_size: int,
        num_steps: int,
        *,
        use_random_iter: bool = False,
        rng: Any = None,
        backend: str | Backend = "numpy",
    ) -> None:
        self.use_random_iter = bool(use_random_iter)
        self.corpus, self.batch_size, self.num_steps = _checked(
            corpus, batch_size, num_steps, self.use_random_iter
        )
        self.vocab = vocab
        if vocab is not None and self.corpus.size:
            lo, hi = int(self.corpus.min()), int(self.corpus.max())
            if lo < 0 or hi >= len(vocab):
                raise DataError(
                    f"the corpus holds token ids in [{lo}, {hi}] but the vocabulary has "
                    f"{len(vocab)} entries: build the corpus and vocabulary together "
                    "(load_corpus)"
                )
        self.rng = _as_rng(rng)
        self.backend = get_backend(backend)
        self.val_corpus = np.zeros(0, dtype=self.corpus.dtype)
        self._len = _num_batches(
            len(self.corpus), self.batch_size, self.num_steps, self.use_random_iter
        )

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        sampler = _random if self.use_random_iter else _sequential
        return sampler(
            self.corpus, self.batch_size, self.num_steps, self.rng, self.backend, self._len
        )

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        kind = "random" if self.use_random_iter else "sequential"
        return (
            f"SeqDataLoader({len(self.corpus)} tokens, batch_size={self.batch_size}, "
            f"num_steps={self.num_steps}, {kind}, {len(self)} batches, {self.backend})"
        )


def load_data_time_machine(
    batch_size: int,
    num_steps: int,
    *,
    use_random_iter: bool = False,
    max_tokens: int | None = 10000,
    path: str | os.PathLike[str] | None = None,
    seed: Any = None,
    backend: str | Backend = "numpy",
    val_fraction: float | None = None,
) -> tuple[SeqDataLoader, Vocab]:
    """The minibatch loader and vocabulary of *The Time Machine* (d2l's function).

    Args:
        batch_size: rows per minibatch (d2l: 32).
        num_steps: time steps per minibatch (d2l: 35).
        use_random_iter: random sampling instead of sequential partitioning.
        max_tokens: keep the first ``max_tokens`` characters (d2l: 10,000); -1/None: all.
        path: a text file to train on instead of the book (see
            :func:`npgru.download.resolve_data_path`: otherwise the cached or downloaded,
            SHA-1-checked book).
        seed: seed or :class:`numpy.random.Generator` for the loader's offsets/shuffles.
        backend: where the minibatches are created.
        val_fraction: if given (not d2l's), the last ``val_fraction`` of the first
            ``max_tokens`` ids are held out (:func:`split_corpus`) as ``loader.val_corpus``,
            and the loader walks the rest. The vocabulary is the whole text's, as without a
            split (so held-out text never becomes ``<unk>``).

    Returns:
        ``(loader, vocab)``, whatever the arguments: a :class:`SeqDataLoader` yielding int64
        ``(batch_size, num_steps)`` pairs, and the :class:`Vocab` (28 entries for the book).
        The held-out ids are ``loader.val_corpus`` (empty without ``val_fraction``).

    Raises:
        ConfigError: bad sizes or ``max_tokens``, or too little text for them.
        DataError: the text cannot be found, downloaded, read, or has no letters.
    """
    min_corpus_len(batch_size, num_steps, use_random_iter)  # bad sizes fail before any I/O
    _max_tokens(max_tokens)
    if val_fraction is not None:
        fraction("val_fraction", val_fraction)
    text = read_text(resolve_data_path(path))
    corpus, vocab = load_corpus(text, max_tokens)
    if val_fraction is not None:
        corpus, val_corpus = split_corpus(corpus, val_fraction)
        need = min_corpus_len(batch_size, num_steps, use_random_iter)
        if len(corpus) < need:  # said here, where the held-out part is known
            raise ConfigError(
                f"val_fraction={val_fraction} leaves {len(corpus)} of "
                f"{len(corpus) + len(val_corpus)} tokens to train on, fewer than the {need} that "
                f"num_steps={num_steps} with batch_size={batch_size} needs: hold out less, or "
                "use more text"
            )
    loader = SeqDataLoader(
        corpus,
        vocab,
        batch_size,
        num_steps,
        use_random_iter=use_random_iter,
        rng=seed,
        backend=backend,
    )
    if val_fraction is not None:
        loader.val_corpus = val_corpus
    return loader, vocab
