"""Training checkpoints: one ``.npz`` file, written atomically, read without pickle, verified.

A checkpoint is what :func:`numpy.savez` writes: an uncompressed zip of ``.npy`` files, one
per parameter under its own name (``np.load("run.npz")["W_xz"]`` works without npgru), plus

- ``__meta__``: a 0-d unicode array holding JSON (the settings, vocabulary, epoch, history and
  the data loader's random state; :func:`read_run` says which keys);
- ``opt_m``, ``opt_v``, ``opt_average``: the optimiser's flat arrays, where the run keeps them
  (Adam's moments, the averaged weights; :attr:`RunState.optimizer`);
- ``__sha256__``: the SHA-256 (:func:`digest`) of every other entry's name, dtype, shape and
  bytes. Any changed, dropped, added, widened or reshaped entry fails it.

Writing (:func:`atomic_write`, shared with the download of the training text) goes through a
temporary file in the target's folder, flushed, fsynced and renamed onto the target, then the
folder is fsynced: a crash, a kill or a full disk leaves the old file or the new one, never a
mix. Only an absent path or a regular file is replaced.

Reading parses the zip and each ``.npy`` header itself: a pickled (object) array is refused
without being read, every entry must be stored uncompressed and declare no more bytes than
the file holds, so a small file cannot make the reader allocate gigabytes. Every problem is a
:class:`~npgru.errors.CheckpointError` with one line.

:func:`save_run` / :func:`restore_run` keep a whole training run: a :class:`RunState`
captured after a completed epoch, and put back into a model and its data loader.
:func:`load_model` reads the same file into a new model and its vocabulary, through the same
:func:`read_run` and :func:`restore_run` (to generate text: ``examples/generate.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from npgru.backend import get_backend
from npgru.data import Vocab
from npgru.errors import CheckpointError, DataError
from npgru.files import atomic_write, open_regular
from npgru.model import GRULanguageModel, resolve_impl

__all__ = [
    "RunState",
    "capture",
    "digest",
    "load_checkpoint",
    "load_model",
    "read_run",
    "restore_run",
    "save_checkpoint",
    "save_run",
]

FORMAT, VERSION = "npgru-run", 2
META, DIGEST = "__meta__", "__sha256__"
#: The optimiser's arrays, saved under ``OPT + name`` (no parameter name starts so).
OPT, OPT_ARRAYS = "opt_", ("m", "v", "average")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) over each array's name, dtype, shape and C-order bytes, by sorted name."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write ``arrays`` (NumPy, numeric) and the JSON-able ``meta`` to ``path`` atomically."""
    entries: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if not (isinstance(name, str) and _NAME.match(name) and isinstance(a, np.ndarray)):
            raise CheckpointError(f"cannot save {name!r}: names are identifiers, values ndarrays")
        if a.dtype.kind not in "biufc":
            raise CheckpointError(f"cannot save {name}: dtype {a.dtype} is not numeric")
        entries[name] = a
    try:
        entries[META] = np.asarray(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save the checkpoint's metadata as JSON: {exc}") from exc
    entries[DIGEST] = np.asarray(digest(entries))
    try:
        return atomic_write(path, lambda fh: np.savez(fh, **entries))
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise CheckpointError(
            f"cannot save checkpoint {path}: {why}; any earlier file there is unchanged"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and metadata of a checkpoint, verified; ``(params, meta)``."""
    p = Path(path)
    try:
        fh = open_regular(p)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from exc
    try:
        with fh, zipfile.ZipFile(fh) as zf:
            arrays = _read_entries(zf, os.fstat(fh.fileno()).st_size)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {p} is damaged or foreign: {exc}") from exc
    except Exception as exc:  # zipfile and the .npy header raise a zoo of types on bad input
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise CheckpointError(f"checkpoint {p} is damaged or foreign ({why})") from exc
    if set(arrays) >= {META, DIGEST} and digest(
        {k: a for k, a in arrays.items() if k != DIGEST}
    ) == str(arrays[DIGEST]):
        try:
            meta = json.loads(str(arrays.pop(META)))
        except ValueError:
            meta = None
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            del arrays[DIGEST]
            return arrays, meta
    raise CheckpointError(
        f"checkpoint {p} is damaged, or not an npgru checkpoint of format {VERSION}: "
        "its contents do not match their SHA-256 digest"
    )


def _read_entries(zf: zipfile.ZipFile, file_size: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in arrays:
            raise CheckpointError(f"unexpected entry {info.filename[:40]!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:
            raise CheckpointError(f"entry {name} is compressed or larger than the file")
        with zf.open(info) as f:
            read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            shape, fortran, dtype = read_header[npy.read_magic(f)](f)
            if dtype.hasobject:
                raise CheckpointError(f"{name} holds pickled objects, which are never loaded")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise CheckpointError(f"{name} declares more bytes than its entry holds")
            data = f.read(nbytes)
        if len(data) != nbytes:
            raise CheckpointError(f"{name} is truncated")
        order = "F" if fortran else "C"
        arrays[name] = np.frombuffer(data, dtype).reshape(shape, order=order).copy()
    return arrays


# --------------------------------------------------------------------------- training runs


@dataclass(eq=False)
class RunState:
    """A training run after a completed epoch: all that is needed to continue it exactly.

    Attributes:
        params: name -> NumPy array (host copies).
        rng_state: the loader's ``rng.bit_generator.state``.
        vocab: the tokens in index order (``vocab.idx_to_token``).
        config: the run's settings (JSON values).
        epoch: epochs completed.
        history: ``{"perplexity": [...], "tokens_per_sec": [...]}``, one value per epoch
            (and ``"val_perplexity"`` for a run with a validation set).
        path: the file it was read from (:func:`read_run`), or None.
        optimizer: the optimiser's state beyond the parameters (:func:`npgru.optim.new_state`):
            ``"t"`` (steps taken) and, as flat host arrays, Adam's ``"m"`` and ``"v"`` and
            the averaged weights ``"average"`` where the run keeps them; saved as the entries
            ``opt_m``, ``opt_v``, ``opt_average``. Empty for plain SGD without averaging.
    """

    params: dict[str, np.ndarray]
    rng_state: dict[str, Any]
    vocab: list[str]
    config: dict[str, Any]
    epoch: int
    history: dict[str, list[float]]
    path: Path | None = None  # the file it was read from, for messages
    optimizer: dict[str, Any] = field(default_factory=dict)


def capture(
    model: Any,
    loader: Any,
    vocab: Any,
    *,
    config: Mapping,
    epoch: int,
    history: Mapping,
    opt_state: Mapping | None = None,
) -> RunState:
    """Copy the run's state now (after epoch ``epoch``) from ``model``, ``loader`` and the
    optimiser's ``opt_state`` (:func:`npgru.optim.new_state`; None: plain SGD)."""
    asnumpy = model.backend.asnumpy
    optimizer: dict[str, Any] = {}
    if opt_state and set(opt_state) & set(OPT_ARRAYS):
        optimizer["t"] = int(opt_state["t"])
        for key in OPT_ARRAYS:
            if key in opt_state:
                optimizer[key] = np.array(asnumpy(opt_state[key].flat))
    return RunState(
        params={name: np.array(asnumpy(a)) for name, a in model.params.items()},
        rng_state=loader.rng.bit_generator.state,
        vocab=list(vocab.idx_to_token),
        config=dict(config),
        epoch=epoch,
        history={k: list(v[:epoch]) for k, v in history.items()},
        optimizer=optimizer,
    )


def save_run(path: str | os.PathLike[str], state: RunState) -> Path:
    """Save a :class:`RunState` as a checkpoint at ``path`` (atomically); never NaN or inf."""
    arrays = dict(state.params)
    arrays.update({OPT + k: a for k, a in state.optimizer.items() if k in OPT_ARRAYS})
    bad = [name for name, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise CheckpointError(f"refusing to save NaN or infinite values in {', '.join(bad)}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": state.config,
        "vocab": state.vocab,
        "epoch": state.epoch,
        "history": state.history,
        "rng_state": state.rng_state,
    }
    if state.optimizer:
        meta["opt_step"] = state.optimizer["t"]
    return save_checkpoint(path, arrays, meta)


def read_run(path: str | os.PathLike[str]) -> RunState:
    """Load a checkpoint written by :func:`save_run` and check every field it holds."""
    params, meta = load_checkpoint(path)
    optimizer = {k[len(OPT) :]: params.pop(k) for k in list(params) if k.startswith(OPT)}
    step = meta.get("opt_step", 0)
    epoch, vocab, history = meta.get("epoch"), meta.get("vocab"), meta.get("history")
    valid = {
        "format version": meta.get("version") == VERSION,
        "epoch count": type(epoch) is int and epoch >= 0,
        "vocabulary": isinstance(vocab, list) and vocab[:1] == ["<unk>"]
        and all(isinstance(t, str) for t in vocab) and len(set(vocab)) == len(vocab),
        "history": isinstance(history, dict)
        and set(history) - {"val_perplexity"} == {"perplexity", "tokens_per_sec"}
        and all(isinstance(v, list) and len(v) == epoch for v in history.values())
        and all(type(x) in (int, float) and 0 < x < math.inf for v in history.values() for x in v),
        "settings": isinstance(meta.get("config"), dict),
        "random state": isinstance(meta.get("rng_state"), dict),
        "optimizer state": type(step) is int and step >= 0 and set(optimizer) <= set(OPT_ARRAYS)
        and all(a.ndim == 1 for a in optimizer.values()),
    }  # fmt: skip
    bad = [what for what, ok in valid.items() if not ok]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds no valid {', '.join(bad)}: it cannot be resumed"
        )
    optimizer = {"t": step, **optimizer} if optimizer else {}
    return RunState(
        params, meta["rng_state"], vocab, meta["config"], epoch, history, Path(path), optimizer
    )


def restore_run(
    source: RunState | str | os.PathLike[str],
    model: Any,
    loader: Any,
    vocab: Any,
    opt_state: dict[str, Any] | None = None,
) -> RunState:
    """Put a saved run into ``model`` (parameters), ``loader`` (random state) and
    ``opt_state`` (the optimiser's, :func:`npgru.optim.new_state` of the run's settings).

    Nothing is changed unless everything fits: the same parameter names, shapes and dtype as
    the model, finite values, the same vocabulary, a random state the loader accepts, the
    loader's ``batch_size``, ``num_steps`` and ``use_random_iter`` where the saved ``config``
    names them, and the optimiser arrays ``opt_state`` keeps, of the model's size and dtype.
    ``loader=None`` restores the parameters only (:func:`load_model`: no training to continue);
    ``opt_state=None`` means plain SGD.

    Returns:
        The :class:`RunState` (its ``epoch`` and ``history`` continue the run).

    Raises:
        CheckpointError: one line saying what does not fit.
    """
    state = source if isinstance(source, RunState) else read_run(source)
    where = f"checkpoint {state.path}" if state.path else "the checkpoint"
    if set(state.params) != set(model.params):
        raise CheckpointError(f"{where} holds parameters of another model: {sorted(state.params)}")
    for name, a in state.params.items():
        want = (tuple(model.params[name].shape), np.dtype(model.dtype))
        if (a.shape, a.dtype) != want:
            raise CheckpointError(
                f"{where} holds {name} as {a.dtype} {a.shape}, the model has {want[1]} {want[0]}"
            )
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where} holds NaN or infinite values in {name}")
    saved = {k: a for k, a in state.optimizer.items() if k in OPT_ARRAYS}
    if loader is not None:  # continuing a run: the optimiser must be the saved one
        wanted = {k for k in OPT_ARRAYS if k in (opt_state or {})}
        if set(saved) != wanted:
            raise CheckpointError(
                f"{where} holds the optimiser state {sorted(saved) or 'of plain SGD'}, this "
                f"run needs {sorted(wanted) or 'none'}: resume with the run's --optimizer "
                "and --average"
            )
    size = model.params.flat.shape[0]
    for key, a in saved.items():
        if (a.shape, a.dtype) != ((size,), np.dtype(model.dtype)) or not np.isfinite(a).all():
            raise CheckpointError(
                f"{where} holds a bad optimiser array {OPT}{key} ({a.dtype} {a.shape}, the "
                f"model needs {np.dtype(model.dtype)} ({size},), finite)"
            )
    if state.vocab != list(vocab.idx_to_token):
        raise CheckpointError(
            f"{where} has another vocabulary ({len(state.vocab)} tokens "
            f"{''.join(state.vocab[1:])!r}, this text gives {len(vocab)}): train on the same text"
        )
    if loader is not None:  # the same minibatches, or the random state means other ones
        for key in ("batch_size", "num_steps", "use_random_iter"):
            if key in state.config and getattr(loader, key, state.config[key]) != state.config[key]:
                raise CheckpointError(
                    f"{where} was trained with {key}={state.config[key]!r}, this loader has "
                    f"{getattr(loader, key)!r}: a resumed run needs the same minibatches"
                )
        rng = loader.rng.bit_generator
        before = rng.state
        try:
            rng.state = state.rng_state
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            rng.state = before
            raise CheckpointError(f"{where} holds a bad data-loader random state ({exc})") from exc
    for name, a in state.params.items():
        model.params[name] = model.backend.asarray(a)
    if opt_state is not None:
        opt_state["t"] = state.optimizer.get("t", 0)
        for key, a in saved.items():
            opt_state[key].flat[...] = model.backend.asarray(a)
    return state


def load_model(
    path: str | os.PathLike[str], *, backend: Any = "numpy", impl: str = "auto"
) -> tuple[Any, Any, RunState]:
    """A trained model and its vocabulary from a checkpoint of :func:`save_run`, to use it.

    The file is read and checked by :func:`read_run`, as ``--resume`` reads it; a new
    :class:`~npgru.model.GRULanguageModel` of the saved shape (``config``: ``num_hiddens``,
    ``num_layers``, ``variant``, ``dtype``) gets the saved parameters through
    :func:`restore_run`, which checks them as it does when a run is resumed. A run that
    kept averaged weights (``--average``) gives those: they are the weights its validation
    perplexity measured.

    Args:
        path: the checkpoint (``--save`` of ``examples/timemachine.py``).
        backend, impl: where and how the model runs (see the model's arguments).

    Returns:
        ``(model, vocab, state)``: the model, its :class:`~npgru.data.Vocab`, and the
        :class:`RunState` read (its ``epoch``, ``history`` and ``config``).

    Raises:
        CheckpointError: the file is missing, damaged or not a checkpoint, or holds no valid
            model (one line saying why).
        BackendError, ConfigError: the backend or impl cannot be used.
    """
    backend = get_backend(backend)
    resolve_impl(impl, backend)  # a bad backend or impl is the caller's, not the file's
    state = read_run(path)
    try:
        vocab = Vocab.from_tokens_list(state.vocab)
    except DataError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    config = state.config
    shape = {key: config.get(key) for key in ("num_hiddens", "num_layers", "variant", "dtype")}
    if not all(isinstance(value, (int, str)) for value in shape.values()):
        raise CheckpointError(f"checkpoint {path} holds no valid model shape: {shape}")
    try:
        model = GRULanguageModel(len(vocab), backend=backend, impl=impl, **shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds no valid model shape ({exc})") from exc
    restore_run(state, model, None, vocab)
    if "average" in state.optimizer:
        model.params.flat[...] = model.backend.asarray(state.optimizer["average"])
    return model, vocab, state
