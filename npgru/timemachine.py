"""d2l's ``train_ch8`` on npgru: the program of ``npgru train`` and ``examples/timemachine.py``.

This is ``train_ch8`` of the GRU chapter of *Dive into Deep Learning* on plain arrays, with
d2l's defaults (batch 32, 35 steps, 256 hidden units, 500 epochs, lr 1, sequential
partitioning). Read :func:`train_ch8` top to bottom: the data, the model, the training loop
(:func:`npgru.train.train`), then some generated text. The flags, checkpoints, Ctrl-C and
exit status are the library's (:mod:`npgru.cli`), which calls it::

    npgru train --epochs 50 --plot ppl.png --save run.npz
    python examples/timemachine.py --epochs 50 --plot ppl.png --save run.npz   # the same

Without ``--data`` the text is The Time Machine (:func:`data_path`): the copy a source
checkout ships in ``tests/data``, else the one downloaded once into the cache.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from npgru.backend import get_backend
from npgru.data import load_data_time_machine
from npgru.download import DATA_FILE_NAME, resolve_data_path
from npgru.errors import DataError
from npgru.model import GRULanguageModel
from npgru.optim import new_state
from npgru.train import averaged, best_epoch, predict, train

__all__ = ["SHIPPED", "data_path", "train_ch8"]

#: Where a source checkout keeps the book (the tests' copy); installed, there is none.
SHIPPED = Path(__file__).resolve().parent.parent / "tests" / "data"


def data_path(data: str | None) -> Path:
    """The text to train on: ``data`` (``--data``) if given, else The Time Machine.

    From a checkout the book needs no download: the tests ship a copy, checked by its SHA-1
    as a download would be. Installed, the book is downloaded once into the cache
    (:func:`npgru.download.resolve_data_path`); when that fails, the one-line error also
    says how to go without it: ``--data PATH``.
    """
    if data:
        return Path(data).expanduser()
    shipped = SHIPPED if (SHIPPED / DATA_FILE_NAME).is_file() else None
    try:
        return resolve_data_path(cache_dir=shipped)
    except DataError as exc:
        why = str(exc)  # most end "...or pass the path of a copy": say how to pass it
        how = " with --data PATH" if why.endswith("the path of a copy") else "; or pass --data PATH"
        raise DataError(why + how) from exc


def train_ch8(s: SimpleNamespace, run: Any) -> None:
    """d2l's ``train_ch8``. ``s`` holds the settings (d2l's defaults unless a flag or the
    resumed checkpoint says otherwise); ``run`` (a :class:`npgru.cli.Run`) keeps checkpoints
    and the progress bar."""
    # the data: minibatches of (batch_size, num_steps) character ids, and the vocabulary
    backend = get_backend(s.backend)
    # (with --val-fraction F, the last F of the text is held out: train_iter.val_corpus)
    train_iter, vocab = load_data_time_machine(
        s.batch_size,
        s.num_steps,
        use_random_iter=s.use_random_iter,
        max_tokens=s.max_tokens,
        path=data_path(s.data),
        seed=np.random.default_rng([s.seed, 1]),  # the loader's own stream, from --seed
        backend=backend,
        val_fraction=s.val_fraction,
    )

    # the model: one-hot input, a GRU layer (or several), a linear output layer
    model = GRULanguageModel(
        len(vocab),
        s.num_hiddens,
        num_layers=s.num_layers,
        variant=s.variant,
        dtype=s.dtype,
        seed=s.seed,
        backend=backend,
        impl=s.impl,  # on CuPy: npgru's CUDA kernels (auto, cuda) or the array code (reference)
    )

    # the updater: plain SGD as d2l (or Adam), and the averaged weights if --average
    updater = new_state(model.params, s.optimizer, s.average)

    # training: per minibatch, forward, loss, BPTT by hand, clip to norm 1, update
    start_epoch, history = run.resume(model, train_iter, vocab, updater)  # (0, {}): a new run
    started = time.perf_counter()
    history = train(
        model,
        train_iter,
        vocab,
        num_epochs=s.epochs,
        lr=s.lr,
        start_epoch=start_epoch,
        history=history,
        on_epoch_end=run.epoch_end,  # progress bar, --save-every
        log=run.log,  # every 10 epochs: a continuation of "time traveller"
        temperature=s.temperature,
        seed=s.seed,  # also seeds the dropout masks of each epoch
        val_corpus=train_iter.val_corpus if s.val_fraction else None,  # validation perplexity
        patience=s.patience,  # stop early after this many epochs without a better one
        dropout=s.dropout,  # 0: d2l's (no dropout)
        lr_decay=s.lr_decay,  # 1: d2l's (a constant learning rate)
        opt_state=updater,  # updated in place, so --save keeps it
    )
    elapsed = time.perf_counter() - started
    run.finish(history)  # the checkpoint (--save) and the plot (--plot)

    # d2l's summary: perplexity, speed, and two continuations
    perplexity, epochs = history["perplexity"][-1], len(history["perplexity"])
    speed = statistics.median(history["tokens_per_sec"][start_epoch:] or history["tokens_per_sec"])
    print(f"perplexity {perplexity:.1f}, {speed:,.1f} tokens/sec on {backend}")
    print(f"(perplexity {perplexity:.4f} after {epochs} epochs, this run {elapsed:.1f} s)")
    best = best_epoch(history)  # None without --val-fraction
    if best is not None:
        print(
            f"validation perplexity {history['val_perplexity'][-1]:.4f} after epoch {epochs}, "
            f"best {history['val_perplexity'][best - 1]:.4f} at epoch {best}"
        )
    with averaged(model, updater):  # with --average: the averaged weights, else no change
        for prefix in ("time traveller", "traveller"):
            seed = (s.seed, s.epochs, len(prefix))  # with --temperature > 0: repeatable samples
            print(predict(prefix, 50, model, vocab, temperature=s.temperature, seed=seed))
