"""Validation of the arguments every layer shares: sizes, the GRU variant, the float dtype,
gradients laid out like their parameters.

Each check of a value returns it in its canonical form or raises
:class:`~npgru.errors.ConfigError` with one line naming the library's parameter. Command-line
programs translate parameter names into flags; the library never mentions flags.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from npgru.backend import is_integer
from npgru.errors import ConfigError, ShapeError

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
    """The mask of valid steps for sequences of ``lengths``: M (T, B, 1) in ``dtype``, with
    M[t, b] = 1 where t < lengths[b] and 0 past the end (docs/derivation.md, section 14).

    ``lengths`` must be a (B,) integer array of the namespace ``xp`` with values in 1..T;
    ShapeError (one line) otherwise.
    """
    if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
        raise ShapeError(f"lengths must be a ({B},) integer array, one length per sequence, "
                         f"got {type(lengths).__name__}")  # fmt: skip
    if tuple(lengths.shape) != (B,):
        raise ShapeError(f"lengths must have shape (B,) = ({B},), one per sequence, got "
                         f"{tuple(lengths.shape)}")  # fmt: skip
    if not is_integer(xp, lengths.dtype):
        raise ShapeError(f"lengths must be integers, got {lengths.dtype}: pass e.g. "
                         "np.asarray(lengths, dtype=np.int64)")  # fmt: skip
    if bool(xp.any(lengths < 1)) or bool(xp.any(lengths > T)):
        raise ShapeError(f"lengths must lie in 1..T = 1..{T} (the steps of X), got values from "
                         f"{int(xp.min(lengths))} to {int(xp.max(lengths))}")  # fmt: skip
    steps = xp.arange(T, dtype=lengths.dtype)
    return xp.astype(steps[:, None, None] < lengths[None, :, None], dtype)
