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

from collections.abc import Mapping
from typing import Any

from npgru.backend import namespace_of
from npgru.errors import ConfigError, ShapeError
from npgru.flat import FlatDict

Array = Any


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
        max_norm: θ > 0.

    Returns:
        The global norm *before* clipping, as a 0-d array (``float(norm)`` to read it; left on
        the device so that a GPU training loop need not wait for it).
    """
    if not max_norm > 0:
        raise ConfigError(f"max_norm must be positive, got {max_norm!r}")
    norm = global_norm(grads)
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
    """Plain SGD in place: ``p ← p − lr · g`` for every parameter."""
    if set(params) != set(grads):
        raise ShapeError(f"grads must have the keys of params; got {sorted(grads)}")
    if _same_layout(params, grads):
        params.flat[...] -= lr * grads.flat
    else:
        for name, p in params.items():
            p[...] -= lr * grads[name]
