"""Issue 13, library side: hostile arguments get npgru's own one-line errors, never a crash,
a hang, a silent NaN or an unbounded read. (The command line's cases are in test_cli.py.)"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc

import numpy as np
import pytest

import npgru
from npgru.data import load_corpus, read_text
from npgru.errors import ConfigError, DataError, ShapeError
from npgru.train import predict

MODEL_ARGS = {"vocab_size": 6, "num_hiddens": 4}


@pytest.mark.parametrize("seed", [-1, "x", 1.5, True])
def test_a_bad_model_seed_is_a_config_error(seed) -> None:
    with pytest.raises(ConfigError, match="seed"):
        npgru.GRULanguageModel(**MODEL_ARGS, seed=seed)


def test_tokens_and_state_that_are_not_arrays_are_shape_errors() -> None:
    model = npgru.GRULanguageModel(**MODEL_ARGS)
    X = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ShapeError, match=r"^X "):
        model.forward([[1, 2, 3]], model.begin_state(1))
    with pytest.raises(ShapeError, match=r"^state "):
        model.forward(X, None)
    with pytest.raises(ShapeError, match=r"^Y "):
        model.loss_and_grads(X, [[1, 2, 3], [1, 2, 3]], model.begin_state(2))


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1.0, True, "1"])
def test_sgd_refuses_a_bad_learning_rate_and_changes_nothing(lr) -> None:
    model = npgru.GRULanguageModel(**MODEL_ARGS)
    before = model.params.flat.copy()
    with pytest.raises(ConfigError, match=r"^lr "):
        npgru.sgd(model.params, model.params.zeros_like(), lr)
    assert model.params.flat.tobytes() == before.tobytes()


def test_sgd_refuses_gradients_of_other_shapes() -> None:
    params = {"W": np.ones((2, 3)), "b": np.ones(3)}
    with pytest.raises(ShapeError, match="W"):
        npgru.sgd(params, {"W": np.ones((3, 2)), "b": np.ones(3)}, 0.1)
    assert params["W"].tolist() == np.ones((2, 3)).tolist()


def test_clipping_at_an_infinite_threshold_clips_nothing() -> None:
    """clip_grad_norm(g, inf) used to turn finite gradients into NaN (inf / inf)."""
    grads = {"W": np.full((2, 2), 3.0), "b": np.array([4.0, 0.0])}
    norm = npgru.clip_grad_norm(grads, float("inf"))
    assert float(norm) == pytest.approx(np.sqrt(4 * 9 + 16))
    assert grads["W"].tolist() == [[3.0, 3.0], [3.0, 3.0]] and grads["b"].tolist() == [4.0, 0.0]


@pytest.mark.parametrize("temperature", [1e-308, 5e-324])
def test_sampling_at_a_tiny_temperature_is_greedy(temperature) -> None:
    """At 1e-308 the logits / temperature overflowed and the sampler raised on NaN."""
    _, vocab = load_corpus("the quick brown fox jumps over the lazy dog", max_tokens=-1)
    model = npgru.GRULanguageModel(len(vocab), 8, seed=3)
    greedy = predict("the", 20, model, vocab)
    assert predict("the", 20, model, vocab, temperature=temperature, seed=0) == greedy


def test_endless_and_special_files_are_refused_without_reading(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Timer(5.0, lambda: open(fifo, "w").close())  # unblocks a hung reader
    writer.start()
    try:
        start = time.monotonic()
        for path in ("/dev/zero", fifo, tmp_path):
            with pytest.raises(DataError, match="not a regular file"):
                read_text(path)
        assert time.monotonic() - start < 2  # no hang on the FIFO
    finally:
        writer.cancel()


def test_a_text_over_the_bound_is_refused_before_it_is_read(tmp_path) -> None:
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(npgru.data.MAX_TEXT_BYTES + 1)  # sparse: no disk, but st_size says 128 MiB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="larger than"):
            read_text(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    small = tmp_path / "small.txt"
    small.write_text("hello world " * 10)
    with pytest.raises(DataError, match="larger than 100 bytes"):
        read_text(small, max_bytes=100)


def test_loading_a_text_takes_a_few_times_its_size() -> None:
    """A 50 MB text took 990 MB (19x) as lists of characters; now a few bytes per byte."""
    text = "The Time Traveller, for so it will be convenient to speak of him.\n" * 30_000
    tracemalloc.start()
    try:
        corpus, vocab = load_corpus(text, max_tokens=-1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(corpus) == 1_890_000 and len(vocab) == 20
    assert peak < 4 * len(text), f"{peak / len(text):.1f}x the text"
