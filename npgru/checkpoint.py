"""Training checkpoints: one ``.npz`` file, written atomically, read without pickle, verified.

A checkpoint is what :func:`numpy.savez` writes: an uncompressed zip of ``.npy`` files, one
per parameter under its own name (``np.load("run.npz")["W_xz"]`` works without npgru), plus

- ``__meta__``: a 0-d unicode array holding JSON (the settings, vocabulary, epoch, history and
  the data loader's random state; :func:`read_run` says which keys);
- ``opt_m``, ``opt_v``, ``opt_average``: the optimiser's flat arrays, where the run keeps them
  (Adam's moments, the averaged weights; :attr:`RunState.optimizer`);
- ``__sha256__``: the SHA-256 (:func:`digest`) of every other entry's name, dtype, shape and
  bytes. Any changed, dropped, added, widened or reshaped entry fails it.

Writing (:func:`npgru.files.atomic_write`, shared with the download of the training text)
goes through a temporary file in the target's folder, flushed, fsynced and renamed onto the
target, then the folder is fsynced: a crash, a kill or a full disk leaves the old file or the
new one, never a mix. Only an absent path or a regular file is replaced.

Reading parses the zip and each ``.npy`` header itself: a pickled (object) array is refused
without being read, every entry must be stored uncompressed and declare no more bytes than
the file holds, so a small file cannot make the reader allocate gigabytes. Every problem is a
:class:`~npgru.errors.CheckpointError` with one line.

:func:`save_run` / :func:`restore_run` keep a whole training run: a :class:`RunState`
captured after a completed epoch, and put back into a model and its data loader.
:func:`load_model` reads the same file into a new model and its vocabulary, through the same
:func:`read_run` and :func:`restore_run` (to generate text: ``npgru generate``).
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
from npgru.checks import factor, fraction, gru_variant, integer
from npgru.data import Vocab
from npgru.errors import CheckpointError, ConfigError, DataError, one_line
from npgru.files import atomic_write, open_regular
from npgru.model import GRULanguageModel, resolve_impl
from npgru.optim import OPTIMIZERS, positive_float
from npgru.version import __version__

__all__ = [
    "CheckpointInfo",
    "RunState",
    "capture",
    "describe",
    "digest",
    "format_info",
    "load_checkpoint",
    "load_model",
    "model_size",
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
        return atomic_write(path, lambda fh: np.savez(fh, **entries))  # type: ignore[arg-type]
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise CheckpointError(
            f"cannot save checkpoint {path}: {why}; any earlier file there is unchanged"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and metadata of a checkpoint, verified; ``(params, meta)``.

    The metadata is parsed defensively (:func:`parse_meta`) and must name npgru's format; a
    ``"version"`` other than :data:`VERSION` is refused with a line saying which npgru reads
    it. What the metadata holds beyond that is :func:`read_run`'s to check.
    """
    p = Path(path)
    arrays = _open_entries(p, headers_only=False)
    meta = _container_meta(p, arrays)
    if digest({k: a for k, a in arrays.items() if k != DIGEST}) != str(arrays[DIGEST]):
        raise CheckpointError(
            f"checkpoint {p} is damaged: its contents do not match their SHA-256 digest"
        )
    del arrays[META], arrays[DIGEST]
    return arrays, meta


#: The JSON nesting a run's metadata needs is 3 (``rng_state.state.inc``); anything much deeper
#: is not npgru's, and refusing it before :func:`json.loads` keeps the parser's recursion small.
MAX_DEPTH = 16
#: Far more than any run's metadata (a vocabulary of every Unicode character is ~10 MB).
MAX_META_CHARS = 2**25
# A string token, or an unterminated one up to the end: each character is read once (a
# pattern that must end in '"' rescans the rest of the text from every '"', quadratic time).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.|\\\Z)*(?:"|\Z)', re.DOTALL)


def parse_meta(text: str) -> Any:
    """The JSON ``text`` as Python values, or CheckpointError (one line, without the path).

    Stricter than :func:`json.loads`: at most :data:`MAX_DEPTH` nested arrays and objects
    (deeper input made the parser raise RecursionError), no ``NaN``/``Infinity`` and no
    number that overflows to infinity, no key twice in one object.
    """
    if len(text) > MAX_META_CHARS:
        raise CheckpointError(f"its metadata is {len(text):,} characters long, not npgru's")
    # the depth is counted outside strings, so "[" inside a token does not count
    codes = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "replace"), np.uint8)
    # int8 steps summed in int32: a quarter of the memory of int64 at 32 MiB of metadata
    step = np.isin(codes, (ord("["), ord("{"))).astype(np.int8) - np.isin(codes, (93, 125))
    depth = int(np.cumsum(step, dtype=np.int32).max(initial=0))
    if depth > MAX_DEPTH:
        raise CheckpointError(f"its metadata nests {depth} levels deep, not npgru's")

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a finite number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is not a finite number")
        return value

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("an object repeats a key")
        return out

    try:
        return json.loads(
            text, parse_constant=constant, parse_float=finite, object_pairs_hook=unique
        )
    except (ValueError, RecursionError) as exc:  # RecursionError: not reached, but never leaks
        raise CheckpointError(f"its metadata is not valid JSON ({one_line(exc)[:80]})") from exc


def _container_meta(p: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The metadata of the entries ``arrays`` of the file ``p``, as far as the container goes:
    a JSON object of npgru's format, of this :data:`VERSION`."""
    text = arrays[META]
    if text.ndim != 0 or text.dtype.kind != "U":
        raise CheckpointError(
            f"checkpoint {p} is not an npgru checkpoint ({META} holds {text.dtype} "
            f"{text.shape}, not text)"
        )
    try:
        meta = parse_meta(str(text))
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {p} is damaged or foreign: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        said = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"checkpoint {p} is not an npgru checkpoint (its metadata names the format "
            f"{_short(said)}, not {FORMAT!r})"
        )
    if "version" in meta and meta["version"] != VERSION:
        raise CheckpointError(f"checkpoint {p} is of format {_short(meta['version'])}: "
                              f"{format_story(meta['version'])}")  # fmt: skip
    return meta


def format_story(version: Any) -> str:
    """What npgru says of a file of format ``version`` that it does not read (one sentence)."""
    release = ".".join(__version__.split(".")[:2])
    head = f"npgru {release} writes format {VERSION}; files of format {_short(version)}"
    if type(version) is int and 1 <= version < VERSION:
        return f"{head} come from npgru 0.{version} and are not read: train the run again"
    if type(version) is int and version > VERSION:
        return f"{head} come from a newer npgru: upgrade npgru (pip install -U npgru)"
    return f"{head} do not exist: the file is damaged or not npgru's"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _open_entries(p: Path, *, headers_only: bool) -> dict[str, np.ndarray]:
    """The entries of the checkpoint file ``p`` by name, checked as a container; with
    ``headers_only``, every entry but the metadata is an empty array of the declared dtype,
    shape and order (``np.lib.stride_tricks``: no bytes read or allocated)."""
    try:
        fh = open_regular(p)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        start = fh.read(4)
        fh.seek(0)
        if start != b"PK\x03\x04":  # what np.savez writes first; a cut file keeps it
            what = "an empty file" if not start else "not a zip archive"
            raise CheckpointError(f"checkpoint {p} is not an npgru checkpoint ({what})")
        try:
            with zipfile.ZipFile(fh) as zf:
                names = zf.namelist()
                if not {META + ".npy", DIGEST + ".npy"} <= set(names):
                    shown = ", ".join(sorted(names)[:3]) + ", ..." * (len(names) > 3)
                    raise CheckpointError(
                        f"checkpoint {p} is not an npgru checkpoint (it holds "
                        f"{shown or 'nothing'}, without {META} and {DIGEST})"
                    )
                return _read_entries(zf, size, headers_only=headers_only)
        except CheckpointError as exc:
            if str(exc).startswith(f"checkpoint {p} "):
                raise
            raise CheckpointError(f"checkpoint {p} is damaged or foreign: {exc}") from exc
        except Exception as exc:  # zipfile and the .npy header raise a zoo of types on bad input
            why = one_line(f"{type(exc).__name__}: {exc}")[:160]
            raise CheckpointError(f"checkpoint {p} is damaged or foreign ({why})") from exc


def _read_entries(
    zf: zipfile.ZipFile, file_size: int, *, headers_only: bool = False
) -> dict[str, np.ndarray]:
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
            if headers_only and name != META:
                # a zero-strided view of one element: the shape and dtype, not the bytes
                one = np.zeros(1, dtype)
                arrays[name] = np.lib.stride_tricks.as_strided(
                    one, shape, (0,) * len(shape), writeable=False
                )
                continue
            data = f.read(nbytes)
        if len(data) != nbytes:
            raise CheckpointError(f"{name} is truncated")
        arrays[name] = (
            np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()
        )
    return arrays


# --------------------------------------------------------------------------- training runs


@dataclass(eq=False, repr=False)
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

    def __repr__(self) -> str:
        """Shapes and sizes, not values: ``W_xz (28, 256) float32``, not 7,168 numbers."""

        def arrays(d: Mapping[str, Any]) -> str:
            return ", ".join(
                f"{k} {tuple(a.shape)} {a.dtype}" if hasattr(a, "shape") else f"{k}={a!r}"
                for k, a in d.items()
            )

        history = ", ".join(f"{k}: {len(v)} values" for k, v in self.history.items())
        return (
            f"RunState(epoch={self.epoch}, path={self.path}, params={{{arrays(self.params)}}}, "
            f"optimizer={{{arrays(self.optimizer)}}}, vocab={len(self.vocab)} tokens, "
            f"config={self.config!r}, history={{{history}}}, "
            f"rng_state={self.rng_state.get('bit_generator', '?')!s})"
        )


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
        WRITER: __version__,
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
    """Load a checkpoint written by :func:`save_run` and check every field it holds.

    Raises:
        CheckpointError: one line naming the file and what is wrong: damaged, not npgru's,
            of another format, or metadata of the wrong type, range or consistency
            (:func:`check_run_meta`).
    """
    params, meta = load_checkpoint(path)
    optimizer = {k[len(OPT) :]: params.pop(k) for k in list(params) if k.startswith(OPT)}
    check_run_meta(meta, f"checkpoint {path}")
    if not set(optimizer) <= set(OPT_ARRAYS) or any(a.ndim != 1 for a in optimizer.values()):
        shown = ", ".join(f"{OPT}{k} {a.shape}" for k, a in optimizer.items())
        raise CheckpointError(f"checkpoint {path} holds no valid optimizer state ({shown})")
    state = {"t": meta.get("opt_step", 0), **optimizer} if optimizer else {}
    return RunState(
        params,
        meta["rng_state"],
        meta["vocab"],
        meta["config"],
        meta["epoch"],
        meta["history"],
        Path(path),
        state,
    )


#: The metadata key of the npgru release that wrote the file (files before 0.2.0 lack it).
WRITER = "npgru_version"
#: The history's series, one value per epoch: a perplexity is exp(mean cross-entropy) >= 1.
SERIES = {"perplexity": 1.0, "tokens_per_sec": 0.0, "val_perplexity": 1.0}
#: What the settings a run saves (``config``) must be, where present: a check like those of
#: :mod:`npgru.checks`, raising ConfigError. A key not named here may hold any JSON value.
_SHAPE_KEYS = ("vocab_size", "num_hiddens", "num_layers", "variant", "dtype")


def _dtype_name(key: str, value: Any) -> str:
    if value not in ("float32", "float64"):
        raise ConfigError(f"{key} must be 'float32' or 'float64', got {_short(value)}")
    return str(value)


def _one_of(choices: tuple[Any, ...]) -> Any:
    def check(key: str, value: Any) -> Any:
        if type(value) not in {type(c) for c in choices} or value not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {_short(value)}")
        return value

    return check


def _max_tokens(key: str, value: Any) -> int:
    return -1 if value == -1 and type(value) is int else integer(key, value, low=1)


def _optional(check: Any) -> Any:
    return lambda key, value: None if value is None else check(key, value)


def _text(key: str, value: Any) -> str:
    if not (isinstance(value, str) and value):
        raise ConfigError(f"{key} must be a non-empty string, got {_short(value)}")
    return value


def _sha256(key: str, value: Any) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
        raise ConfigError(f"{key} must be a SHA-256 in hex, got {_short(value)}")
    return value


CONFIG_CHECKS: dict[str, Any] = {
    "vocab_size": integer,
    "num_hiddens": integer,
    "num_layers": integer,
    "variant": lambda key, value: gru_variant(value),
    "dtype": _dtype_name,
    "batch_size": integer,
    "num_steps": integer,
    "epochs": integer,
    "seed": lambda key, value: integer(key, value, low=0),
    "max_tokens": _max_tokens,
    "lr": positive_float,
    "val_fraction": fraction,
    "dropout": fraction,
    "average": fraction,
    "lr_decay": factor,
    "optimizer": _one_of(OPTIMIZERS),
    "patience": _optional(integer),
    "use_random_iter": _one_of((False, True)),
    "data": _optional(_text),
    "corpus_sha256": _sha256,
}


def check_run_meta(meta: Mapping[str, Any], where: str) -> None:
    """Check a run's metadata (what :func:`save_run` writes) key by key, type and range.

    ``version`` is :data:`VERSION`; ``epoch`` an int >= 0; ``history`` holds ``perplexity``
    and ``tokens_per_sec``, and ``val_perplexity`` exactly when ``config["val_fraction"]``
    > 0, each a list of ``epoch`` finite numbers (perplexities >= 1, speeds > 0); ``vocab``
    distinct strings, ``"<unk>"`` then single characters; ``config`` an object whose known
    settings pass :data:`CONFIG_CHECKS` (``vocab_size``, if there, the vocabulary's size);
    ``rng_state`` a PCG64 generator's state; ``opt_step`` (if there) an int >= 0; the writer's
    release (:data:`WRITER`, if there) a short string.

    Raises:
        CheckpointError: ``"{where} holds no valid {what} ({why})"``, one line.
    """

    def bad(what: str, why: str) -> CheckpointError:
        return CheckpointError(f"{where} holds no valid {what} ({why})")

    version = meta.get("version")
    if version != VERSION or type(version) is not int:
        raise bad("format version", format_story(version))
    if WRITER in meta and not (isinstance(meta[WRITER], str) and len(meta[WRITER]) <= 40):
        raise bad("npgru version", f"{_short(meta[WRITER])} is not a release number")
    for key, kind in (("config", dict), ("history", dict), ("vocab", list), ("rng_state", dict)):
        if not isinstance(meta.get(key), kind):
            got = "nothing" if key not in meta else type(meta[key]).__name__
            raise bad(key, f"a JSON {'object' if kind is dict else 'array'} is needed, got {got}")
    config, history, vocab = meta["config"], meta["history"], meta["vocab"]

    epoch = meta.get("epoch")
    if type(epoch) is not int or epoch < 0:
        raise bad("epoch count", f"{_short(epoch)} is not a whole number >= 0")
    step = meta.get("opt_step", 0)
    if type(step) is not int or step < 0:
        raise bad("optimizer step", f"{_short(step)} is not a whole number >= 0")

    if not (vocab and vocab[0] == "<unk>"):
        raise bad("vocabulary", f"it must start with '<unk>', got {_short(vocab[:3])}")
    for i, token in enumerate(vocab[1:], 1):
        if not (isinstance(token, str) and len(token) == 1):
            raise bad("vocabulary", f"token {i} is {_short(token)}, not a single character")
    if len(set(vocab)) != len(vocab):
        raise bad("vocabulary", "it repeats a token")

    for key, check in CONFIG_CHECKS.items():
        if key in config:
            try:
                check(key, config[key])
            except ConfigError as exc:
                raise bad("model shape" if key in _SHAPE_KEYS else "settings", str(exc)) from exc
    if config.get("vocab_size", len(vocab)) != len(vocab):
        raise bad("model shape", f"vocab_size {config['vocab_size']}, but {len(vocab)} tokens")

    val = config.get("val_fraction", 0) > 0  # no val_fraction: a run from before the setting
    want = {"perplexity", "tokens_per_sec"} | ({"val_perplexity"} if val else set())
    if set(history) != want:
        why = f"it has {sorted(history)}, a run {'with' if val else 'without'} a validation "
        raise bad("history", why + f"set has {sorted(want)}")
    for key, values in history.items():
        if not (isinstance(values, list) and len(values) == epoch):
            n = len(values) if isinstance(values, list) else _short(values)
            raise bad("history", f"{key} has {n} values for {epoch} epochs")
        for i, x in enumerate(values, 1):
            low = SERIES[key]
            if type(x) not in (int, float) or not (low <= x < math.inf) or x == 0:
                need = f"at least {low:g}" if low else "positive"
                raise bad("history", f"{key} of epoch {i} is {_short(x)}, it must be {need}")

    _check_rng_state(meta["rng_state"], bad)


def _check_rng_state(state: Mapping[str, Any], bad: Any) -> None:
    """A PCG64 (or PCG64DXSM) ``bit_generator.state``: the generators whose state is JSON."""
    inner = state.get("state")
    ok = (
        set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
        and state["bit_generator"] in ("PCG64", "PCG64DXSM")
        and isinstance(inner, dict)
        and set(inner) == {"state", "inc"}
        and all(type(v) is int and 0 <= v < 2**128 for v in inner.values())
        and state["has_uint32"] in (0, 1)
        and type(state["has_uint32"]) is int
        and type(state["uinteger"]) is int
        and 0 <= state["uinteger"] < 2**32
    )
    if not ok:
        raise bad("random state", "the data loader's needs a PCG64 generator's state")


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


def model_size(
    vocab_size: int, num_hiddens: Any, num_layers: Any, variant: Any = "d2l", **_: Any
) -> int:
    """The number of parameters of a :class:`~npgru.model.GRULanguageModel` of this shape:
    per layer 3 (D H + H H + H), D = V then H (``reset_after``: H more), then H V + V."""
    V, H, L = vocab_size, int(num_hiddens), int(num_layers)
    layers = 3 * (V * H + H * H + H) + (L - 1) * 3 * (2 * H * H + H)
    return layers + L * H * (variant == "reset_after") + H * V + V


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
        path: the checkpoint (``--save`` of ``npgru train``).
        backend: where the model runs (see the model's arguments).
        impl: how the model runs (see the model's arguments).

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
    shape: dict[str, Any] = {
        k: config.get(k) for k in ("num_hiddens", "num_layers", "variant", "dtype")
    }
    if not all(isinstance(value, (int, str)) for value in shape.values()):
        raise CheckpointError(f"checkpoint {path} holds no valid model shape: {shape}")
    need, held = model_size(len(vocab), **shape), sum(a.size for a in state.params.values())
    if need > 16 * held + 2**20:  # building it first would take all memory, then refuse
        raise CheckpointError(
            f"checkpoint {path} holds no valid model shape ({shape} needs {need:,} parameters, "
            f"the file holds {held:,})"
        )
    try:
        model = GRULanguageModel(len(vocab), backend=backend, impl=impl, **shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} holds no valid model shape ({exc})") from exc
    restore_run(state, model, None, vocab)
    if "average" in state.optimizer:
        model.params.flat[...] = model.backend.asarray(state.optimizer["average"])
    return model, vocab, state


# --------------------------------------------------------------------------- npgru info


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, read from its metadata and its arrays' headers only.

    Attributes:
        path, file_size: the file and its size in bytes.
        format: the file format's number (:data:`VERSION`).
        npgru_version: the npgru release that wrote it, ``"unknown"`` before 0.2.0.
        vocab_size, num_hiddens, num_layers, variant, dtype: the model's shape (from the
            saved settings, else from the parameters' shapes).
        num_params: numbers in the parameters (the optimiser's arrays not counted).
        optimizer: the optimiser's saved arrays (``"m"``, ``"v"``, ``"average"``), if any.
        settings: the saved ``config`` but the model's shape and ``corpus_sha256``.
        epochs: epochs completed.
        last_perplexity: the training perplexity of the last epoch, or None (no epoch).
        best_val_perplexity, best_epoch: the lowest validation perplexity and its (first)
            epoch, None without a validation set.
        corpus_sha256: the training text's fingerprint, None if not saved.
    """

    path: Path
    file_size: int
    format: int
    npgru_version: str
    vocab_size: int
    num_hiddens: int | None
    num_layers: int | None
    variant: str | None
    dtype: str | None
    num_params: int
    optimizer: tuple[str, ...]
    settings: dict[str, Any]
    epochs: int
    last_perplexity: float | None
    best_val_perplexity: float | None
    best_epoch: int | None
    corpus_sha256: str | None


def describe(path: str | os.PathLike[str]) -> CheckpointInfo:
    """What the checkpoint ``path`` holds, without building a model or reading its arrays.

    The metadata is checked as :func:`read_run` checks it; of the arrays only the ``.npy``
    headers are read (names, shapes, dtypes), so the SHA-256 digest is not verified (``npgru
    --resume`` and :func:`load_model` verify it).

    Raises:
        CheckpointError: one line, as :func:`read_run`.
    """
    p = Path(path)
    entries = _open_entries(p, headers_only=True)
    meta = _container_meta(p, entries)
    check_run_meta(meta, f"checkpoint {p}")
    params = {k: a for k, a in entries.items() if k not in (META, DIGEST) and not k.startswith(OPT)}
    config, history, vocab = meta["config"], meta["history"], meta["vocab"]
    first = params.get("W_xz")
    layers = sum(1 for k in params if k == "W_xz" or re.fullmatch(r"W_xz_l\d+", k))
    inferred: dict[str, Any] = {
        "num_hiddens": first.shape[1] if first is not None and first.ndim == 2 else None,
        "num_layers": layers or None,
        "variant": ("reset_after" if "b_hh" in params else "d2l") if params else None,
        "dtype": first.dtype.name if first is not None else None,
    }
    shape = {k: config.get(k, guess) for k, guess in inferred.items()}
    val = history.get("val_perplexity") or []
    best = 1 + min(range(len(val)), key=val.__getitem__) if val else None
    skip = {*_SHAPE_KEYS, "corpus_sha256"}
    return CheckpointInfo(
        path=p,
        file_size=p.stat().st_size,
        format=meta["version"],
        npgru_version=meta.get(WRITER, "unknown"),
        vocab_size=len(vocab),
        num_params=sum(a.size for a in params.values()),
        optimizer=tuple(k[len(OPT) :] for k in entries if k.startswith(OPT)),
        settings={k: v for k, v in config.items() if k not in skip},
        epochs=meta["epoch"],
        last_perplexity=history["perplexity"][-1] if history["perplexity"] else None,
        best_val_perplexity=val[best - 1] if best else None,
        best_epoch=best,
        corpus_sha256=config.get("corpus_sha256"),
        **shape,
    )


def format_info(info: CheckpointInfo) -> str:
    """The text ``npgru info`` prints for :func:`describe`'s ``info``: one ``name: value``
    line per fact, no trailing newline."""
    size = info.file_size
    human = next(f"{size / 2**e:,.1f} {unit}" for e, unit in ((30, "GiB"), (20, "MiB"),
                 (10, "KiB"), (0, "B")) if size >= 2**e or e == 0)  # fmt: skip
    layers = info.num_layers
    model = (
        f"GRU ({info.variant or 'variant unknown'}), {layers or '?'} "
        f"layer{'s' * (layers != 1)} of {info.num_hiddens or '?'} hidden units, "
        f"{info.vocab_size} tokens, {info.dtype or 'dtype unknown'}"
    )
    if info.best_epoch is None:
        best = "none (trained without a validation set)"
    else:
        best = f"{info.best_val_perplexity:.4f} at epoch {info.best_epoch}"
    last = "none" if info.last_perplexity is None else f"{info.last_perplexity:.4f}"
    settings = " ".join(f"{k}={v}" for k, v in sorted(info.settings.items())) or "none saved"
    rows = [
        ("checkpoint", str(info.path)),
        ("file size", f"{size:,} bytes ({human})" if size >= 1024 else f"{size:,} bytes"),
        ("format", f"{info.format}, written by npgru {info.npgru_version}"),
        ("model", model),
        ("parameters", f"{info.num_params:,}"),
        ("optimizer state", ", ".join(info.optimizer) or "none (plain SGD)"),
        ("epochs done", str(info.epochs)),
        ("last perplexity", last),
        ("best validation", best),
        ("training text", f"SHA-256 {info.corpus_sha256}" if info.corpus_sha256 else "unknown"),
        ("settings", settings),
    ]
    width = max(len(name) for name, _ in rows) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in rows)
