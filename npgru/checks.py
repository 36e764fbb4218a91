"""Validation of the arguments every layer shares: sizes, the GRU variant, the float dtype,
gradients laid out like their parameters, the lengths of sequences.

Each check of a value returns it in its canonical form or raises
:class:`~npgru.errors.ConfigError` with one line naming the library's parameter
(:class:`~npgru.errors.ShapeError` for arrays: gradients, lengths). Command-line
programs translate parameter names into flags; the library never mentions flags.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from npgru.backend import get_backend, is_integer, namespace_of
from npgru.errors import ConfigError, ShapeError, one_line

#: The GRU variants (see :mod:`npgru.gru`).
VARIANTS = ("d2l", "reset_after")


def integer(name: str, value: Any, *, low: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) and at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (not a bool)."""
    return integer(name, value, low=1)


def fraction(name: str, value: Any) -> float:
    """``value`` as a float if it is a real number in [0, 1) (not a bool)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= float(value) < 1
    if not ok:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def factor(name: str, value: Any) -> float:
    """``value`` as a float if it is a real number in (0, 1] (not a bool): a decay factor."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < float(value) <= 1
    if not ok:
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def gru_variant(variant: Any) -> str:
    """``variant`` if it names a GRU variant: ``"d2l"`` or ``"reset_after"``."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ConfigError(f"unknown GRU variant {variant!r}: choose 'd2l' or 'reset_after'")
    return variant


def float_dtype(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` for anything :func:`numpy.dtype` reads as one of them.

    ``"float64"``, ``np.float64``, ``np.dtype("f8")`` and ``float`` all give ``"float64"``.
    """
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in ("float32", "float64") or isinstance(dtype, bool) or dtype is None:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    return name


def like_params(
    params: Mapping[str, Any], grads: Mapping[str, Any], *, dtype: bool = False
) -> None:
    """ShapeError (one line) unless ``grads`` has exactly the names of ``params``, each with
    its parameter's shape and, with ``dtype``, its dtype."""
    if set(grads) != set(params):
        raise ShapeError(
            f"grads must have the keys of params, {sorted(params)}; got {sorted(grads)}"
        )
    for name, p in params.items():
        g = grads[name]
        want = (tuple(p.shape), *([p.dtype] if dtype else []))
        got = (tuple(getattr(g, "shape", ())), *([getattr(g, "dtype", None)] if dtype else []))
        if got != want:
            raise ShapeError(f"grads[{name!r}] must be {' '.join(map(str, want))} like the "
                             f"parameter, got {' '.join(map(str, got))}")  # fmt: skip


def check_lengths(lengths: Any, T: int, B: int, xp: Any, dtype: Any) -> Any:
    """The mask of valid steps, eq. 25 of ``docs/derivation.md``: M (T, B, 1) in ``dtype``.

    ``M[t, b, 0]`` is 1 where step t (0-based) is one of sequence b's, ``t < lengths[b]``, and
    0 past its end. Every cell (:mod:`npgru.gru`, :mod:`npgru.rnn`) freezes its state where
    M is 0 (eq. 25) and splits the gradient by it (eq. 26).

    Args:
        lengths: the number of valid steps of each sequence, (B,) integers in 1..T: an array
            of the namespace ``xp``, or a NumPy array or list of ints (moved to ``xp``).
        T: the number of steps of X.
        B: the number of sequences of X.
        xp: the array namespace of the parameters, in which M is made.
        dtype: the parameters' float dtype, which M takes.

    Returns:
        M (T, B, 1), 1.0 or 0.0 in ``dtype``: it broadcasts against states (T, B, H).

    Raises:
        ShapeError: (one line, saying what to pass) ``lengths`` is not (B,), not integers (a
            bool is not a length), on another backend, or has a value outside 1..T.
    """
    want = f"lengths must be a (B,) = ({B},) array of integers in 1..T = 1..{T}, the number of "
    want += "valid steps of each sequence"
    if not hasattr(lengths, "shape") or namespace_of(lengths) is not xp:
        # a list, or an array of another library: through NumPy on the host
        try:
            host = np.asarray(lengths)
        except (TypeError, ValueError) as exc:  # e.g. a CuPy array with NumPy parameters
            raise ShapeError(f"{want}, as a list, a NumPy array or an array of the parameters' "
                             f"backend; got {type(lengths).__name__}: {one_line(exc)}"
                             ) from None  # fmt: skip
        if host.dtype == object:
            raise ShapeError(f"{want}, got {type(lengths).__name__} {one_line(repr(lengths))[:60]}")
        lengths = host if xp is np or host.dtype.kind not in "iu" else get_backend(xp).asarray(host)
    if tuple(lengths.shape) != (B,):
        raise ShapeError(f"{want}, got shape {tuple(lengths.shape)}")
    if not is_integer(namespace_of(lengths), lengths.dtype):
        raise ShapeError(f"{want}, got dtype {lengths.dtype}: pass e.g. np.asarray(lengths, "
                         "dtype=np.int64)")  # fmt: skip
    L = xp.astype(lengths, xp.int64)  # uint64 beyond int64 wraps to negative: refused below
    if bool(xp.any((L < 1) | (L > T))):
        low, high = int(xp.min(lengths)), int(xp.max(lengths))
        raise ShapeError(f"{want}, got values from {low} to {high}")
    steps = xp.arange(T, dtype=xp.int64)
    return xp.astype(steps[:, None, None] < L[None, :, None], dtype)
