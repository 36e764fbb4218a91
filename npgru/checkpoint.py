"""Training checkpoints: one ``.npz`` file that any NumPy user can open, written atomically.

A checkpoint holds everything needed to resume a training run exactly where it stopped:
the parameters, the settings, the vocabulary, how many epochs are done, the history of
per-epoch metrics and the states of the random number generators.

File format (format name ``"npgru-checkpoint"``, version :data:`FORMAT_VERSION`): a standard,
uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` files) with

- one plain numeric array per parameter, under the parameter's own name (``W_xz``, …,
  ``W_hq``, ``b_q``; ``W_xz_l1`` … for deeper layers), so ``np.load(path)["W_xz"]`` works
  without npgru;
- one entry ``__meta__``: a 0-d NumPy unicode array (never a pickled object) holding a JSON
  object with the keys ``format``, ``version``, ``config``, ``vocab``, ``epoch``, ``history``,
  ``rng_states``, ``params`` (a list of ``{"name", "shape", "dtype"}`` in the saved order) and
  ``params_sha256``. Read it with ``json.loads(str(np.load(path)["__meta__"]))``.

``params_sha256`` is the SHA-256 of, for each parameter in sorted name order, the bytes
``f"{name}\\0{dtype.str}\\0{','.join(map(str, shape))}\\0"`` (UTF-8) followed by the array's
raw C-order bytes. Together with the zip format's own CRC-32 of every entry, it lets
:func:`load_checkpoint` tell a damaged file from a good one.

Writing is atomic: :func:`save_checkpoint` writes a temporary file in the target's own
directory, flushes and fsyncs it, and renames it onto the target with :func:`os.replace`.
A crash, a kill or a full disk at any moment leaves either the previous checkpoint or the new
one at the path, never a mix. (After a hard kill a stray ``<name>.<random>.tmp`` file may be
left beside the target; it is safe to delete.)

Reading is safe: files are opened with ``allow_pickle=False`` always, so a planted pickle
cannot run code, and every problem (missing, truncated, damaged, foreign or incompatible
file) is a :class:`~npgru.errors.CheckpointError` with a one-line message.

This module sits at the bottom of the package: it imports only the standard library, NumPy
and :mod:`npgru.errors`, and handles NumPy arrays only (convert device arrays with
``backend.asnumpy`` before saving, and back with ``backend.asarray`` after loading).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from npgru.errors import CheckpointError

__all__ = [
    "COMPAT_KEYS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_KEY",
    "Checkpoint",
    "check_compatible",
    "check_writable",
    "load_checkpoint",
    "params_digest",
    "save_checkpoint",
]

FORMAT_NAME = "npgru-checkpoint"
"""The value of ``format`` in every checkpoint's metadata."""

FORMAT_VERSION = 1
"""The format version this module writes; it reads versions 1 … FORMAT_VERSION."""

META_KEY = "__meta__"
"""The archive entry holding the JSON metadata."""

COMPAT_KEYS = ("vocab_size", "num_hiddens", "num_layers", "variant", "dtype")
"""Config entries that must match for a checkpoint to be resumed (the model's shape)."""

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
_NUMERIC_KINDS = "biufc"
_ZIP_MAGIC = b"PK"


@dataclass(eq=False)  # arrays have no single truth value: compare fields yourself
class Checkpoint:
    """The contents of a checkpoint file.

    Attributes:
        params: dict name → NumPy array, in the order they were saved.
        config: dict of settings (model shape and training settings), as saved.
        vocab: list of tokens, ``idx_to_token`` order.
        epoch: int, epochs completed when it was saved.
        history: dict name → list of numbers (e.g. ``perplexity``, ``tokens_per_sec``).
        rng_states: dict name → a ``numpy.random.BitGenerator.state`` dict (after a JSON
            round trip: NumPy arrays inside a state, such as MT19937's ``key``, come back as
            lists, which the ``state`` setters accept).
        path: the file it was read from (``None`` when built in memory); used in messages.
    """

    params: dict[str, np.ndarray]
    config: dict[str, Any]
    vocab: list[str]
    epoch: int
    history: dict[str, list[float]]
    rng_states: dict[str, dict[str, Any]]
    path: Path | None = None


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    params: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    vocab: Sequence[str],
    epoch: int,
    history: Mapping[str, Sequence[float]],
    rng_states: Mapping[str, Mapping[str, Any]],
) -> Path:
    """Write a checkpoint to ``path`` atomically, replacing any file there.

    ``path`` is used exactly as given: no ``.npz`` suffix is appended (``model.npz`` is the
    recommended spelling, but ``model.ckpt`` works just as well).

    Args:
        path: str or path-like, the file to write; its directory must exist.
        params: mapping name → ``numpy.ndarray`` (numeric dtypes only). Names must look like
            identifiers and start with a letter (``W_xz``, ``b_q``, ``W_xz_l1``).
            Device arrays must be converted first (``backend.asnumpy``).
        config: dict of JSON-compatible settings: str keys; values str, int, float, bool,
            None, lists, dicts, NumPy scalars or paths (stored as str). Tuples come back as lists.
        vocab: list of str, the tokens in index order.
        epoch: int ≥ 0, epochs completed.
        history: dict name → list of numbers (Python or NumPy ints and floats).
        rng_states: dict name → ``generator.bit_generator.state`` (or any JSON-compatible
            dict). Arbitrarily large ints (PCG64's 128-bit state) are stored exactly.

    Returns:
        pathlib.Path: the path written.

    Raises:
        CheckpointError: an argument cannot be stored (wrong type, non-NumPy array, object
            dtype, bad name), or the file cannot be written (missing directory, no permission,
            disk full). The previous checkpoint at ``path``, if any, is then left untouched.
    """
    target = Path(path)
    arrays = _checked_params(params)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": _checked_dict(config, "config"),
        "vocab": _checked_vocab(vocab),
        "epoch": _checked_epoch(epoch),
        "history": _checked_history(history),
        "rng_states": _checked_rng_states(rng_states),
        "params": [
            {"name": n, "shape": list(a.shape), "dtype": a.dtype.str} for n, a in arrays.items()
        ],
        "params_sha256": params_digest(arrays),
        "numpy_version": np.__version__,
    }
    try:
        text = json.dumps(meta, ensure_ascii=True)
    except (TypeError, ValueError) as exc:  # a guard: _to_json has checked every value
        raise CheckpointError(f"cannot store the checkpoint metadata as JSON ({exc})") from exc
    meta_array = np.asarray(text, dtype=np.str_)

    def write(fh: BinaryIO) -> None:
        with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in [(META_KEY, meta_array), *arrays.items()]:
                with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                    npy_format.write_array(member, array, allow_pickle=False)

    _atomic_write(target, write)
    return target


def params_digest(params: Mapping[str, np.ndarray]) -> str:
    """The SHA-256 hex digest of named arrays, as stored in ``params_sha256``.

    Args:
        params: mapping name → ``numpy.ndarray``.

    Returns:
        str: 64 lower-case hex digits over names, dtypes, shapes and raw bytes, in sorted
        name order (see the module docstring for the exact byte layout).
    """
    h = hashlib.sha256()
    for name in sorted(params):
        a = params[name]
        shape = ",".join(str(n) for n in a.shape)
        h.update(f"{name}\0{a.dtype.str}\0{shape}\0".encode())
        c = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        h.update(c.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _atomic_write(target: Path, write: Any) -> None:
    """Call ``write(fh)`` on a temporary file beside ``target``, then rename it onto ``target``."""
    if target.is_dir():
        raise CheckpointError(
            f"cannot save checkpoint to {target}: it is a directory; "
            f"give a file name such as {target / 'model.npz'}"
        )
    directory = target.parent
    try:
        fh = tempfile.NamedTemporaryFile(
            mode="wb", prefix=target.name + ".", suffix=".tmp", dir=directory, delete=False
        )
    except OSError as exc:
        raise CheckpointError(_write_failed(target, exc)) from exc
    tmp = Path(fh.name)
    try:
        with fh:
            _set_mode(fh.fileno(), target)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:  # a crash, Ctrl-C or full disk: drop the half-written file
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise CheckpointError(_write_failed(target, exc)) from exc
        raise
    _fsync_directory(directory)


def _write_failed(target: Path, exc: OSError) -> str:
    directory = target.parent
    if isinstance(exc, FileNotFoundError) and not directory.is_dir():
        return (
            f"cannot save checkpoint {target}: directory {directory} does not exist; "
            "create it or choose another path"
        )
    if isinstance(exc, PermissionError):
        return (
            f"cannot save checkpoint {target}: permission denied in {directory}; "
            "choose a writable directory"
        )
    reason = exc.strerror or str(exc) or type(exc).__name__
    return (
        f"cannot save checkpoint {target} ({reason}); free disk space or choose another path; "
        "any previous checkpoint there is unchanged"
    )


def _set_mode(fd: int, target: Path) -> None:
    """Give the new file the old checkpoint's permissions, or the umask's (best-effort, POSIX)."""
    if not hasattr(os, "fchmod"):
        return
    with contextlib.suppress(OSError):
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (best-effort: POSIX only, errors ignored)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Checking what is to be saved


def _checked_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping) or not params:
        raise CheckpointError("params must be a non-empty dict of name → NumPy array")
    out: dict[str, np.ndarray] = {}
    for name, a in params.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CheckpointError(
                f"parameter name {name!r} cannot be stored: use letters, digits and '_', "
                "starting with a letter"
            )
        if not isinstance(a, np.ndarray):
            kind = f"{type(a).__module__}.{type(a).__name__}"
            raise CheckpointError(
                f"parameter {name} is a {kind}, not a NumPy array: convert it with "
                "backend.asnumpy(...) before saving"
            )
        if a.dtype.kind not in _NUMERIC_KINDS or a.dtype.hasobject or a.dtype.fields:
            raise CheckpointError(
                f"parameter {name} has dtype {a.dtype}; checkpoints hold numeric arrays only"
            )
        out[name] = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    return out


def _to_json(value: Any, where: str) -> Any:
    """A JSON-compatible copy of ``value``; NumPy scalars and arrays become Python values."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic | np.ndarray):
        if value.dtype.kind not in _NUMERIC_KINDS + "U":
            raise CheckpointError(f"{where} holds a NumPy {value.dtype} value that cannot be saved")
        return _to_json(value.tolist(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a non-string key {k!r}: use str keys")
            out[k] = _to_json(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}, which a checkpoint cannot store: "
        "use numbers, strings, lists or dicts"
    )


def _checked_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return _to_json(value, what)
    except RecursionError as exc:
        raise CheckpointError(f"{what} is nested too deeply or contains itself") from exc


def _checked_vocab(vocab: Any) -> list[str]:
    if not isinstance(vocab, list | tuple) or not all(isinstance(t, str) for t in vocab):
        raise CheckpointError("vocab must be a list of str tokens (vocab.idx_to_token)")
    return list(vocab)


def _checked_epoch(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise CheckpointError(f"epoch must be an int ≥ 0 (epochs completed), got {epoch!r}")
    return int(epoch)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _checked_history(history: Any) -> dict[str, list[float]]:
    out = _checked_dict(history, "history")
    for k, v in out.items():
        if not isinstance(v, list) or not all(_is_number(x) for x in v):
            raise CheckpointError(f"history[{k!r}] must be a list of numbers")
    return out


def _checked_rng_states(rng_states: Any) -> dict[str, dict[str, Any]]:
    out = _checked_dict(rng_states, "rng_states")
    for k, v in out.items():
        if not isinstance(v, dict):
            raise CheckpointError(
                f"rng_states[{k!r}] must be a dict such as generator.bit_generator.state"
            )
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``np.load(..., allow_pickle=False)``: a pickled array is refused,
    never unpickled. Every array's shape and dtype are checked against the metadata before
    it is read, and the parameters against their SHA-256 digest after.

    Args:
        path: str or path-like, the checkpoint file.

    Returns:
        Checkpoint: the parameters (NumPy arrays), settings, vocabulary, epoch, history and
        RNG states, with ``path`` set.

    Raises:
        CheckpointError: the file is missing or unreadable, is not an npgru checkpoint, was
            written by a newer format version, or is damaged (truncated, bytes changed,
            entries missing or added, a pickled object inside, digest mismatch).
    """
    p = Path(path)
    try:
        fh = open(p, "rb")
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"checkpoint {p} does not exist: check the path, or start without --resume"
        ) from exc
    except IsADirectoryError as exc:
        raise CheckpointError(
            f"checkpoint {p} is a directory: pass the checkpoint file inside it"
        ) from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read checkpoint {p} ({exc.strerror or exc}): check its permissions"
        ) from exc
    with fh:
        try:
            return _read(fh, p)
        except CheckpointError:
            raise
        except Exception as exc:
            # zipfile, numpy.lib.format and json raise a zoo of types on damaged input
            # (BadZipFile, ValueError, EOFError, NotImplementedError, tokenize.TokenError, ...);
            # all of them mean the same thing here. The cause stays chained for debugging.
            raise CheckpointError(_damaged(p, _describe(exc))) from exc


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > 150:
        text = text[:147] + "..."
    return f"{type(exc).__name__}: {text}"


def _damaged(p: Path, why: str) -> str:
    return f"checkpoint {p} is damaged ({why}); delete it or resume from another checkpoint"


def _foreign(p: Path, why: str) -> str:
    return (
        f"{p} is not an npgru checkpoint ({why}); pass a file written by npgru's --save, "
        "or start without --resume"
    )


def _read_npy_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` entry's header, without reading its data."""
    with zf.open(member) as fp:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"entry {member} uses .npy format version {version}")
    return tuple(shape), dtype


def _read(fh: BinaryIO, p: Path) -> Checkpoint:
    if not fh.read(1):
        raise CheckpointError(_damaged(p, "the file is empty"))
    fh.seek(0)
    try:
        npz = np.load(fh, allow_pickle=False)
    except ValueError as exc:  # np.load's answer to anything that is neither .npy nor zip
        raise CheckpointError(_foreign(p, "not an .npz archive")) from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(_foreign(p, "a single .npy array, not an .npz archive"))
    with npz:
        members = npz.zip.namelist()
        names = []
        for member in members:
            if not member.endswith(".npy"):
                raise CheckpointError(_damaged(p, f"unexpected entry {member[:40]!r}"))
            names.append(member[: -len(".npy")])
        if len(set(names)) != len(names):
            raise CheckpointError(_damaged(p, "an entry appears twice"))
        if META_KEY not in names:
            raise CheckpointError(_foreign(p, f"no {META_KEY} entry"))
        headers = {n: _read_npy_header(npz.zip, n + ".npy") for n in names}
        pickled = sorted(n for n, (_, dtype) in headers.items() if dtype.hasobject)
        if pickled:
            raise CheckpointError(
                _damaged(p, f"{', '.join(pickled)} holds pickled Python objects, never loaded")
            )
        meta_shape, meta_dtype = headers[META_KEY]
        if meta_shape != () or meta_dtype.kind != "U":
            raise CheckpointError(_damaged(p, f"{META_KEY} is not a 0-d unicode array"))
        meta = _parse_meta(str(npz[META_KEY][()]), p)

        expected = {e["name"]: e for e in meta["params"]}
        missing = [n for n in expected if n not in headers]
        extra = [n for n in names if n != META_KEY and n not in expected]
        if missing:
            raise CheckpointError(_damaged(p, f"parameter arrays missing: {', '.join(missing)}"))
        if extra:
            raise CheckpointError(_damaged(p, f"unexpected arrays: {', '.join(extra)}"))
        params: dict[str, np.ndarray] = {}
        for name, entry in expected.items():
            shape, dtype = headers[name]
            want_shape = tuple(entry["shape"])
            if shape != want_shape or dtype.str != entry["dtype"]:
                raise CheckpointError(
                    _damaged(
                        p,
                        f"{name} is {dtype.str} {shape} in the archive but "
                        f"{entry['dtype']} {want_shape} in its metadata",
                    )
                )
            a = npz[name]
            if a.shape != want_shape or a.dtype.str != entry["dtype"]:
                raise CheckpointError(_damaged(p, f"{name} does not match its metadata"))
            params[name] = a
    if params_digest(params) != meta["params_sha256"]:
        raise CheckpointError(_damaged(p, "parameter data do not match their SHA-256 digest"))
    return Checkpoint(
        params=params,
        config=meta["config"],
        vocab=meta["vocab"],
        epoch=meta["epoch"],
        history=meta["history"],
        rng_states=meta["rng_states"],
        path=p,
    )


def _parse_meta(text: str, p: Path) -> dict[str, Any]:
    """Decode and validate the ``__meta__`` JSON; every flaw is a CheckpointError."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(_damaged(p, f"{META_KEY} is not valid JSON: {exc}")) from exc

    def need(ok: bool, why: str) -> None:
        if not ok:
            raise CheckpointError(_damaged(p, why))

    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(_foreign(p, f"{META_KEY} does not name format {FORMAT_NAME!r}"))
    version = meta.get("version")
    need(
        isinstance(version, int) and not isinstance(version, bool) and version >= 1,
        f"bad format version {version!r}",
    )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {version}, but this npgru reads up to "
            f"version {FORMAT_VERSION}: upgrade npgru to resume from it"
        )
    need(isinstance(meta.get("config"), dict), "config is not a dict")
    vocab = meta.get("vocab")
    need(
        isinstance(vocab, list) and all(isinstance(t, str) for t in vocab),
        "vocab is not a list of str",
    )
    epoch = meta.get("epoch")
    need(
        isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0,
        f"bad epoch {epoch!r}",
    )
    history = meta.get("history")
    need(isinstance(history, dict), "history is not a dict")
    for k, v in history.items():
        need(
            isinstance(v, list) and all(_is_number(x) for x in v),
            f"history[{k!r}] is not a list of numbers",
        )
    rng_states = meta.get("rng_states")
    need(
        isinstance(rng_states, dict) and all(isinstance(v, dict) for v in rng_states.values()),
        "rng_states is not a dict of dicts",
    )
    entries = meta.get("params")
    need(isinstance(entries, list) and len(entries) > 0, "no parameter list")
    seen = set()
    for e in entries:
        need(isinstance(e, dict) and set(e) == {"name", "shape", "dtype"}, "bad parameter entry")
        name, shape, dtype = e["name"], e["shape"], e["dtype"]
        need(
            isinstance(name, str) and bool(_NAME_RE.match(name)) and name not in seen,
            f"bad parameter name {name!r}",
        )
        seen.add(name)
        need(
            isinstance(shape, list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape),
            f"bad shape for {name}",
        )
        need(isinstance(dtype, str), f"bad dtype for {name}")
    digest = meta.get("params_sha256")
    need(isinstance(digest, str) and bool(_HEX64_RE.match(digest)), "bad params_sha256")
    return meta


# ---------------------------------------------------------------------------------------------
# Checks for the training program


_UNSET = object()


def _show(value: Any) -> str:
    if value is _UNSET:
        return "<unset>"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _plain(value: Any) -> Any:
    """``value`` as it would come back from a checkpoint (tuples → lists, NumPy → Python)."""
    try:
        return _to_json(value, "value")
    except CheckpointError:
        return value


def check_compatible(
    ckpt: Checkpoint,
    *,
    config: Mapping[str, Any],
    vocab: Sequence[str] | None = None,
    keys: Sequence[str] = COMPAT_KEYS,
) -> None:
    """Refuse to resume from a checkpoint whose model differs from the one this run asks for.

    Args:
        ckpt: a :class:`Checkpoint` from :func:`load_checkpoint`.
        config: this run's settings (e.g. ``model.config`` plus training settings).
        vocab: this run's tokens in index order, or None to skip the vocabulary check.
        keys: the config entries that must be equal (default :data:`COMPAT_KEYS`, the
            model's shape); an entry missing on both sides counts as equal.

    Raises:
        CheckpointError: one line naming every setting that differs and/or saying that the
            vocabulary differs.
    """
    where = f"checkpoint {ckpt.path}" if ckpt.path is not None else "the checkpoint"
    differ = [
        k for k in keys if _plain(ckpt.config.get(k, _UNSET)) != _plain(config.get(k, _UNSET))
    ]
    clauses = []
    if differ:
        then = ", ".join(f"{k}={_show(ckpt.config.get(k, _UNSET))}" for k in differ)
        now = ", ".join(f"{k}={_show(config.get(k, _UNSET))}" for k in differ)
        clauses.append(f"was trained with {then}, this run asks for {now}")
    if vocab is not None and list(vocab) != list(ckpt.vocab):
        old, new = list(ckpt.vocab), list(vocab)
        if len(old) != len(new):
            detail = f"{len(old)} tokens, this run has {len(new)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
            detail = f"token {i} is {old[i]!r} there, {new[i]!r} here"
        clauses.append(f"has a different vocabulary ({detail})")
    if not clauses:
        return
    if differ and len(clauses) == 2:
        advice = "pass the same settings and training text, or start without --resume"
    elif differ:
        advice = "pass the same settings or start without --resume"
    else:
        advice = "train on the same text (same file and max_tokens) or start without --resume"
    raise CheckpointError(f"{where} {' and '.join(clauses)}: {advice}")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Make sure a checkpoint can be saved at ``path``; call it before training starts.

    Checks that ``path`` is not a directory, that its directory exists and accepts new files
    (by creating and removing a temporary file there), and that an existing file at ``path``
    looks like a checkpoint (a zip archive) or is empty, so that a mistyped ``--save`` cannot
    overwrite, say, the training text.

    Args:
        path: str or path-like, where checkpoints will be written.

    Returns:
        pathlib.Path: ``path``, unchanged.

    Raises:
        CheckpointError: with a one-line message saying what to change.
    """
    target = Path(path)
    if target.is_dir():
        raise CheckpointError(
            f"cannot save checkpoints to {target}: it is a directory; "
            f"give a file name such as {target / 'model.npz'}"
        )
    directory = target.parent
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise CheckpointError(
            f"cannot save checkpoints to {target}: {directory} {what}; "
            "create the directory or choose another path"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".npgru-probe.", suffix=".tmp"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(
            f"cannot save checkpoints to {target}: cannot create files in {directory} "
            f"({reason}); choose a writable directory"
        ) from exc
    if target.exists():
        try:
            with open(target, "rb") as fh:
                head = fh.read(len(_ZIP_MAGIC))
        except OSError as exc:
            raise CheckpointError(
                f"cannot save checkpoints to {target}: the existing file cannot be read "
                f"({exc.strerror or exc}); delete it or choose another path"
            ) from exc
        if head and head != _ZIP_MAGIC:
            raise CheckpointError(
                f"refusing to overwrite {target}: it exists and is not a checkpoint; "
                "delete it or choose another path"
            )
    return target
