r"""Global-norm gradient clipping and plain SGD.

Clipping (eq. 16 of docs/derivation.md): with :math:`g` all parameter gradients stacked,

    if ‖g‖₂ > θ:  g ← g · θ / ‖g‖₂

i.e. every gradient is scaled by ``θ / max(‖g‖, θ)``, which is exactly 1 below θ. The
direction of the update is kept, only its length is capped.

SGD: :math:`p ← p − η\, g` for every parameter.

Both accept any dict of arrays. With :class:`~npgru.flat.FlatDict` (what
:class:`~npgru.model.GRULanguageModel` uses) each is one operation on the flat buffer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from npgru.backend import namespace_of
from npgru.errors import ConfigError, ShapeError
from npgru.flat import FlatDict

Array = Any


def positive_float(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a float if it is a real number > 0, finite unless ``allow_inf``; not NaN."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0
    if not (ok and (allow_inf or value < math.inf)):
        kind = "a positive number" if allow_inf else "a positive finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def _same_layout(params: Mapping[str, Array], grads: Mapping[str, Array]) -> bool:
    return (
        isinstance(params, FlatDict)
        and isinstance(grads, FlatDict)
        and params.layout == grads.layout
    )


def global_norm(grads: Mapping[str, Array]) -> Array:
    """‖g‖₂ over all arrays of ``grads`` together, as a 0-d array."""
    if isinstance(grads, FlatDict):
        xp = namespace_of(grads.flat)
        return xp.sqrt(xp.sum(grads.flat * grads.flat))
    xp = namespace_of(*grads.values())
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


def clip_grad_norm(grads: Mapping[str, Array], max_norm: float) -> Array:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    Args:
        grads: dict name → gradient array (modified in place).
        max_norm: θ > 0; ``inf`` clips nothing.

    Returns:
        The global norm *before* clipping, as a 0-d array (``float(norm)`` to read it; left on
        the device so that a GPU training loop need not wait for it).
    """
    max_norm = positive_float("max_norm", max_norm, allow_inf=True)
    norm = global_norm(grads)
    if max_norm == math.inf:  # inf / max(norm, inf) would be NaN
        return norm
    xp = namespace_of(norm)
    # eq. 16: θ / max(‖g‖, θ) is exactly 1.0 below θ, and never divides by zero; no host sync.
    scale = max_norm / xp.maximum(norm, xp.asarray(max_norm, dtype=norm.dtype))
    if isinstance(grads, FlatDict):
        grads.flat[...] *= scale
    else:
        for g in grads.values():
            g[...] *= scale
    return norm


def sgd(params: Mapping[str, Array], grads: Mapping[str, Array], lr: float) -> None:
    """Plain SGD in place: ``p ← p − lr · g`` for every parameter (lr > 0 and finite)."""
    lr = positive_float("lr", lr)
    if set(params) != set(grads):
        raise ShapeError(f"grads must have the keys of params; got {sorted(grads)}")
    for name, p in params.items():
        if tuple(p.shape) != tuple(grads[name].shape):
            raise ShapeError(
                f"grads[{name!r}] has shape {grads[name].shape}, the parameter {p.shape}"
            )
    if _same_layout(params, grads):
        params.flat[...] -= lr * grads.flat
    else:
        for name, p in params.items():
            p[...] -= lr * grads[name]
