r"""Training and text generation with d2l's semantics (``train_ch8`` and ``predict_ch8``).

One epoch (:func:`train_epoch`) walks the loader once. For each minibatch ``(X, Y)``:

1. the state is zeros at the first minibatch of the epoch, and at *every* minibatch with
   random sampling (neighbouring minibatches are not neighbours in the text then);
   otherwise it is the state the previous minibatch ended with, used as a constant
   (truncated BPTT: no gradient flows into the previous minibatch);
2. loss = mean cross-entropy over all B·T predictions, and its gradient
   (:meth:`~npgru.model.GRULanguageModel.loss_and_grads`);
3. the gradients are clipped to global L2 norm τ = 1 (:func:`~npgru.optim.clip_grad_norm`);
4. plain SGD, ``p ← p − lr · g`` (:func:`~npgru.optim.sgd`, through
   :func:`~npgru.optim.step`).

Per epoch: perplexity = exp(Σ loss·tokens / Σ tokens) and speed = tokens / second.
:func:`train` runs epochs and keeps a history; :func:`predict` continues a prefix.

Beyond d2l (each off by default): :func:`evaluate` measures the perplexity of held-out text
after each epoch (``val_corpus``), forward only, with the state carried across its
minibatches; ``patience`` stops when it has not improved for that many epochs; ``dropout``
drops states between layers and before the output layer while training; ``lr_decay``
multiplies the learning rate by a factor per epoch. The dropout masks of epoch ``e`` come from
a generator seeded with ``(seed, e)`` on the model's device, so a resumed run draws the same.
``opt_state``, the optimiser's state from :func:`npgru.optim.new_state`, picks Adam instead
of SGD (``new_state(params, "adam")``) and can keep exponentially averaged weights
(``average=δ``): validation and the continuations then use the averaged weights
(:func:`averaged`), while training goes on from the last iterate. It is updated in place from
epoch to epoch; a checkpoint holds it too.

On a GPU, reading a number from the device waits for all queued work. The loss is therefore
summed *on the device* and read once per epoch, so the minibatches queue up without a stall.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import numbers
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from npgru.backend import Backend
from npgru.checks import factor, fraction, integer
from npgru.data import SeqDataLoader, Vocab
from npgru.errors import ConfigError, DivergenceError
from npgru.model import GRULanguageModel
from npgru.optim import clip_grad_norm, new_state, positive_float, step

__all__ = [
    "averaged",
    "best_epoch",
    "dropout_rng",
    "evaluate",
    "new_history",
    "predict",
    "train",
    "train_epoch",
    "vanishing_epoch",
]

History = dict[str, list[float]]


def new_history() -> History:
    """An empty history: ``{"perplexity": [], "tokens_per_sec": []}``, one entry per epoch."""
    return {"perplexity": [], "tokens_per_sec": []}


def _synchronize(backend: Backend) -> None:
    """Wait until the device has finished its queued work (a no-op on the CPU)."""
    if backend.name == "cupy":
        backend.xp.cuda.Device().synchronize()


#: An epoch whose perplexity exceeds the vocabulary size this many times counts as diverged
#: (guessing uniformly scores the vocabulary size; 1000x that is 6.9 nats worse than guessing).
DIVERGED_FACTOR = 1000


def _perplexity(mean_loss: float) -> float:
    """exp(mean loss); ``inf`` where that overflows a float, NaN for a NaN loss."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def dropout_rng(backend: Backend, seed: int, epoch: int) -> Any:
    """The generator of epoch ``epoch``'s dropout masks: seeded with ``(seed, epoch)``, on the
    device for NumPy and CuPy (no host copy per minibatch), else on the host."""
    key = int(np.random.SeedSequence([int(seed), 2, int(epoch)]).generate_state(1)[0])
    if backend.name == "cupy":
        return backend.xp.random.default_rng(key)
    return np.random.default_rng(key)


def evaluate(
    model: GRULanguageModel, corpus: Any, batch_size: int = 32, num_steps: int = 35
) -> float:
    """Perplexity of ``model`` on the token ids ``corpus`` (held-out text), forward only.

    The text is laid out like sequential partitioning at offset 0: ``B = min(batch_size,
    n - 1)`` rows of ``c = (n - 1) // B`` consecutive tokens each, read ``num_steps`` columns
    at a time (the last window may be shorter), the state carried from each window to the
    next. Every one of the ``B·c`` labels is predicted once; no random numbers are used. The
    ids go to the device in one copy and the loss is summed there: one read per call.

    Raises:
        ConfigError: fewer than 2 tokens.
    """
    data = np.asarray(corpus, dtype=np.int64).reshape(-1)
    n = data.shape[0]
    if n < 2:
        raise ConfigError(f"validation needs at least 2 tokens, got {n}")
    B = min(integer("batch_size", batch_size, low=1), n - 1)
    T = integer("num_steps", num_steps, low=1)
    cols = (n - 1) // B
    backend = model.backend
    xp = backend.xp
    Xs = backend.asarray(data[: B * cols].reshape(B, cols))
    Ys = backend.asarray(data[1 : B * cols + 1].reshape(B, cols))
    total = xp.zeros((), dtype=xp.float64)
    state = model.begin_state(B)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, cols, T):
            X, Y = Xs[:, start : start + T], Ys[:, start : start + T]
            loss, state = model.loss(X, Y, state)
            total = total + xp.asarray(loss, dtype=xp.float64) * (X.shape[0] * X.shape[1])
    return _perplexity(float(total) / (B * cols))  # the one read from the device


@contextlib.contextmanager
def averaged(model: GRULanguageModel, opt_state: dict[str, Any] | None) -> Iterator[None]:
    """Within the block, ``model`` holds the averaged weights of ``opt_state`` (if it keeps
    any; else nothing changes); after it, its own weights again, bit for bit."""
    if not opt_state or "average" not in opt_state:
        yield
        return
    flat = model.params.flat
    own = flat.copy()
    flat[...] = opt_state["average"].flat
    try:
        yield
    finally:
        flat[...] = own


def best_epoch(history: History) -> int | None:
    """The epoch (1-based) of the lowest validation perplexity, the first if tied; None
    without validation."""
    val = history.get("val_perplexity") or []
    return None if not val else 1 + min(range(len(val)), key=val.__getitem__)


def vanishing_epoch(lr: float, lr_decay: float, num_epochs: int) -> int | None:
    """The first epoch ``e`` in 1..``num_epochs`` whose learning rate
    ``lr * lr_decay ** (e - 1)`` underflows to 0 in floating point (a float's smallest
    positive value is about 5e-324), or None if none does.

    With ``0 < lr_decay <= 1`` the rate only falls, so the first such epoch is found by
    bisection, with the very expression :func:`train` uses.
    """

    def vanished(epoch: int) -> bool:
        return lr * lr_decay ** (epoch - 1) == 0

    if num_epochs < 1 or not vanished(num_epochs):
        return None
    return 1 + bisect.bisect_left(range(1, num_epochs + 1), True, key=vanished)


def train_epoch(
    model: GRULanguageModel,
    loader: SeqDataLoader,
    lr: float,
    *,
    max_norm: float = 1.0,
    epoch: int | None = None,
    dropout: float = 0.0,
    rng: Any = None,
    opt_state: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """Train ``model`` for one pass over ``loader`` (d2l's ``train_epoch_ch8``).

    Args:
        model: the model; its ``params`` are updated in place.
        loader: yields ``(X, Y)`` int token ids (B, T) on the model's backend; its
            ``use_random_iter`` decides whether the state is reset at every minibatch.
        lr: the SGD learning rate (d2l: 1).
        max_norm: τ of the global-norm gradient clipping (d2l: 1).
        epoch: the epoch's number, only for the message of a :class:`DivergenceError`.
        dropout: dropout probability between layers and before the output layer
            (:meth:`~npgru.model.GRULanguageModel.loss_and_grads`).
        rng: the generator of its masks.
        opt_state: the optimiser's state (:func:`npgru.optim.new_state`, updated in place),
            or None for plain SGD (d2l's).

    Returns:
        ``(perplexity, tokens_per_sec)``: exp of the token-weighted mean loss, and the
        number of tokens trained on divided by the epoch's wall time.

    Raises:
        DivergenceError: the loss, a gradient or a parameter became NaN or infinite, or
            the perplexity exceeded :data:`DIVERGED_FACTOR` times the vocabulary size.
        ConfigError: ``lr`` or ``max_norm`` is not positive, or the loader is empty.
    """
    lr = positive_float("lr", lr)
    backend = model.backend
    xp = backend.xp
    opt_state = new_state(model.params) if opt_state is None else opt_state
    reset_every_minibatch = bool(getattr(loader, "use_random_iter", False))
    drop = {"dropout": dropout, "rng": rng} if dropout else {}  # none: d2l's call, unchanged
    total_loss = xp.zeros((), dtype=xp.float64)  # Σ loss · tokens, summed on the device
    total_norm = xp.zeros((), dtype=xp.float64)  # Σ gradient norms: NaN/inf if any one was
    num_tokens = 0
    state = None
    _synchronize(backend)
    start = time.perf_counter()
    # NumPy's overflow/NaN warnings are silenced: a run that blows up is reported once, at
    # the end of the epoch, by the DivergenceError below.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for X, Y in loader:
            if state is None or reset_every_minibatch:
                state = model.begin_state(X.shape[0])
            loss, grads, state = model.loss_and_grads(X, Y, state, **drop)
            norm = clip_grad_norm(grads, max_norm)
            step(model.params, grads, lr, opt_state)
            n = X.shape[0] * X.shape[1]
            total_loss = total_loss + xp.asarray(loss, dtype=xp.float64) * n
            total_norm = total_norm + xp.asarray(norm, dtype=xp.float64)
            num_tokens += n
    _synchronize(backend)
    elapsed = time.perf_counter() - start
    if num_tokens == 0:
        raise ConfigError("the loader yielded no minibatch: use more text or smaller sizes")

    mean_loss = float(total_loss) / num_tokens  # the one read from the device per epoch
    perplexity = _perplexity(mean_loss)
    # Far worse than guessing uniformly (perplexity V) only comes from a run that has blown up.
    healthy = (
        perplexity <= DIVERGED_FACTOR * model.vocab_size
        and math.isfinite(float(total_norm))
        and bool(xp.all(xp.isfinite(model.params.flat)))
    )
    if not healthy:
        where = f"in epoch {epoch}" if epoch is not None else "in this epoch"
        raise DivergenceError(
            f"training diverged {where} (with lr={lr:g} the perplexity reached {perplexity:.4g}"
            f" or a gradient became NaN or infinite): try a smaller learning rate"
        )
    return perplexity, num_tokens / max(elapsed, 1e-12)


def train(
    model: GRULanguageModel,
    loader: SeqDataLoader,
    vocab: Vocab,
    *,
    num_epochs: int,
    lr: float,
    max_norm: float = 1.0,
    start_epoch: int = 0,
    history: History | None = None,
    on_epoch_end: Callable[[int, History], Any] | None = None,
    predict_every: int = 10,
    prefix: str = "time traveller",
    num_preds: int = 50,
    log: Callable[[str], Any] | None = print,
    temperature: float = 0.0,
    seed: int = 0,
    val_corpus: Any = None,
    patience: int | None = None,
    dropout: float = 0.0,
    lr_decay: float = 1.0,
    opt_state: dict[str, Any] | None = None,
) -> History:
    """Train for epochs ``start_epoch + 1 .. num_epochs`` (d2l's ``train_ch8``).

    Args:
        model: the model.
        loader: its minibatches.
        vocab: their vocabulary.
        num_epochs: the *total* number of epochs; a run resumed after ``start_epoch``
            epochs trains ``num_epochs - start_epoch`` more.
        lr: SGD learning rate (d2l: 1).
        max_norm: clipping threshold τ (d2l: 1).
        start_epoch: epochs already done (e.g. restored from a checkpoint).
        history: the history of those epochs (extended in place), or None for a new one.
        on_epoch_end: called as ``on_epoch_end(epoch, history)`` after each epoch.
        predict_every: every this many epochs, ``log`` the greedy continuation of
            ``prefix`` (``num_preds`` characters); 0 never.
        log: where those lines go (``print``, ``tqdm.write``, ...), or None for nowhere.
        temperature: how they are generated (:func:`predict`).
        seed: epoch ``e`` samples with the seed ``(seed, e)``, so a resumed run prints the
            same lines.
        val_corpus: held-out token ids; after each epoch their perplexity (:func:`evaluate`,
            with the loader's batch size and steps) goes into ``history["val_perplexity"]``.
        patience: with ``val_corpus``, stop after this many epochs in a row without a new
            best validation perplexity (None: never stop early).
        dropout: probability of dropping a state between layers and before the output
            layer while training (0, d2l's: none); epoch ``e``'s masks come from
            :func:`dropout_rng` ``(backend, seed, e)``.
        lr_decay: epoch ``e`` trains with ``lr * lr_decay ** (e - 1)`` (1, d2l's: constant).
        opt_state: the optimiser and its state (:func:`npgru.optim.new_state`: Adam's
            moments, the averaged weights), updated in place so that the caller can save it;
            None for plain SGD. With averaged weights, validation and the continuations use
            them (:func:`averaged`).

    Returns:
        The history, ``{"perplexity": [...], "tokens_per_sec": [...]}`` (and
        ``"val_perplexity"`` with ``val_corpus``), one value per epoch 1..num_epochs, or
        fewer if ``patience`` stopped it (the values of epochs before ``start_epoch`` as
        given).

    Raises:
        ConfigError: bad epoch counts, a history whose length is not ``start_epoch``, or a
            ``lr_decay`` that takes the learning rate to 0 by ``num_epochs`` (refused before
            the first epoch, not in the epoch where it happens).
        DivergenceError: from :func:`train_epoch`, naming the epoch.
    """
    integer("num_epochs", num_epochs, low=1)
    integer("start_epoch", start_epoch, low=0)
    if patience is not None:
        integer("patience", patience, low=1)
        if val_corpus is None:
            raise ConfigError("patience needs a validation set (val_corpus)")
    fraction("dropout", dropout)
    lr_decay = factor("lr_decay", lr_decay)
    lr = positive_float("lr", lr)
    zero = vanishing_epoch(lr, lr_decay, num_epochs)
    if zero is not None and zero > start_epoch:
        raise ConfigError(
            f"lr_decay {lr_decay:g} takes the learning rate {lr:g} down to 0 in epoch {zero} "
            f"of {num_epochs}: use a decay closer to 1, or at most {zero - 1} epochs"
        )
    history = new_history() if history is None else history
    keys = ("perplexity", "tokens_per_sec") + ("val_perplexity",) * (val_corpus is not None)
    for key in keys:
        if len(history.setdefault(key, [])) != start_epoch:
            raise ConfigError(
                f"history[{key!r}] has {len(history[key])} entries, expected one per "
                f"epoch done ({start_epoch})"
            )
    B, T = getattr(loader, "batch_size", 32), getattr(loader, "num_steps", 35)
    opt_state = new_state(model.params) if opt_state is None else opt_state
    for epoch in range(start_epoch + 1, num_epochs + 1):
        best = best_epoch(history)
        if patience is not None and best is not None and epoch - 1 - best >= patience:
            break  # a resumed run that had already stopped
        rng = dropout_rng(model.backend, seed, epoch) if dropout else None
        perplexity, speed = train_epoch(
            model,
            loader,
            lr * lr_decay ** (epoch - 1),
            max_norm=max_norm,
            epoch=epoch,
            dropout=dropout,
            rng=rng,
            opt_state=opt_state,
        )
        history["perplexity"].append(perplexity)
        history["tokens_per_sec"].append(speed)
        line = f"epoch {epoch}: perplexity {perplexity:.2f}"
        with averaged(model, opt_state):
            if val_corpus is not None:
                history["val_perplexity"].append(evaluate(model, val_corpus, B, T))
                line += f", validation {history['val_perplexity'][-1]:.2f}"
            if log is not None and predict_every and epoch % predict_every == 0:
                text = predict(
                    prefix, num_preds, model, vocab, temperature=temperature, seed=(seed, epoch)
                )
                log(f"{line}: {text}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
        best = best_epoch(history)
        if patience is not None and best is not None and epoch - best >= patience:
            if log is not None:
                log(
                    f"epoch {epoch}: stopping early, no better validation perplexity for "
                    f"{patience} epochs (best {history['val_perplexity'][best - 1]:.4f}, "
                    f"epoch {best})"
                )
            break
    return history


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), exact for any temperature > 0 (1e-308 included)."""
    with np.errstate(over="ignore"):  # (x - max) / 1e-308 may be -inf: exp gives 0, exactly
        p = np.exp((logits - np.max(logits)) / temperature)
    return p / np.sum(p)


def predict(
    prefix: str,
    num_preds: int,
    model: GRULanguageModel,
    vocab: Vocab,
    *,
    temperature: float = 0.0,
    seed: Any = None,
) -> str:
    """Continue ``prefix`` by ``num_preds`` characters (d2l's ``predict_ch8``).

    The state starts at zeros and is warmed up on the prefix: each prefix character is fed
    in turn and only the state is kept. Then each step feeds the last character and picks
    the next one from the output: the most likely (``temperature == 0``, greedy, as d2l),
    or a draw from ``softmax(logits / temperature)`` (higher temperature: more varied text).
    ``<unk>`` is never generated (d2l's argmax could pick it from an untrained model; the
    vocabulary is built from the training text, so ``<unk>`` is never a label), so the
    result always has ``len(prefix) + num_preds`` characters.

    Args:
        prefix: a non-empty string; characters not in ``vocab`` are fed as ``<unk>``
            (index 0), as d2l does, but appear unchanged in the result.
        num_preds: how many characters to generate (>= 0).
        model: a trained :class:`~npgru.model.GRULanguageModel`.
        vocab: the vocabulary it was trained with.
        temperature: 0 for greedy decoding, else > 0.
        seed: seed (or :class:`numpy.random.Generator`) of the sampling; the same seed
            gives the same text.

    Returns:
        ``prefix`` followed by the ``num_preds`` generated characters.

    Raises:
        ConfigError: an empty or non-string prefix, negative ``num_preds``, or a negative
            or non-finite temperature.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"the prefix must be a non-empty string, got {prefix!r}")
    integer("num_preds", num_preds, low=0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not 0 <= temperature < math.inf
    ):
        raise ConfigError(f"the temperature must be >= 0 and finite, got {temperature!r}")
    backend = model.backend
    ids = [vocab[ch] for ch in prefix]
    state = model.begin_state(1)
    if len(ids) > 1:  # warm-up: feeding prefix[:-1] as one sequence gives the same state
        warm = backend.asarray(np.asarray([ids[:-1]], dtype=np.int64))
        _, state = model.forward(warm, state)
    rng = np.random.default_rng(seed) if temperature > 0 else None
    last, generated = ids[-1], []
    for _ in range(num_preds):
        X = backend.asarray(np.asarray([[last]], dtype=np.int64))
        logits, state = model.forward(X, state)
        row = backend.asnumpy(logits[0, ...]).astype(np.float64)
        row[vocab.unk] = -np.inf  # never generate <unk>: it is never a training label
        if rng is None:
            last = int(np.argmax(row))
        else:
            last = int(rng.choice(row.shape[0], p=_softmax(row, temperature)))
        generated.append(last)
    return prefix + "".join(vocab.to_tokens(generated))
