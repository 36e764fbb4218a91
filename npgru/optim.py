r"""Global-norm gradient clipping, plain SGD, Adam, and averaged weights.

Clipping (eq. 16 of docs/derivation.md): with :math:`g` all parameter gradients stacked,

    if ‖g‖₂ > τ:  g ← g · τ / ‖g‖₂

i.e. every gradient is scaled by ``τ / max(‖g‖, τ)``, which is exactly 1 below τ. The
direction of the update is kept, only its length is capped.

SGD: :math:`p ← p − η\, g` for every parameter.

Adam (Kingma and Ba, 2015; eq. 19 of docs/derivation.md), step :math:`t = 1, 2, …`,
element-wise, with β₁ = 0.9, β₂ = 0.999, ε = 1e-8:

    m ← β₁ m + (1 − β₁) g          v ← β₂ v + (1 − β₂) g²
    p ← p − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

Every parameter gets a step of about η whatever the scale of its gradient, so entries with
tiny gradients (most of them at d2l's N(0, 0.01²) initial weights) move as fast as the rest.

Averaged weights (Polyak and Juditsky, 1992; here exponentially weighted; eq. 20): after
step t,

    p̄ ← p̄ + w_t (p − p̄),   w_t = (1 − δ) / (1 − δᵗ)

makes p̄ the mean of the iterates p₁ … p_t weighted by δ^(t−s), normalised to sum to 1
(w₁ = 1, so p̄ starts at p₁; no bias towards the initial weights). With δ = 0.998 it averages
over the last ~500 steps: the noise of the last steps is averaged out, and the averaged
weights usually generalise better than the last iterate.

All accept any dict of arrays. With :class:`~npgru.flat.FlatDict` (what
:class:`~npgru.model.GRULanguageModel` uses) each is a few operations on the flat buffer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from npgru.backend import namespace_of
from npgru.checks import fraction, like_params
from npgru.errors import ConfigError
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
        max_norm: τ > 0; ``inf`` clips nothing.

    Returns:
        The global norm *before* clipping, as a 0-d array (``float(norm)`` to read it; left on
        the device so that a GPU training loop need not wait for it).
    """
    max_norm = positive_float("max_norm", max_norm, allow_inf=True)
    norm = global_norm(grads)
    if max_norm == math.inf:  # inf / max(norm, inf) would be NaN
        return norm
    xp = namespace_of(norm)
    # eq. 16: τ / max(‖g‖, τ) is exactly 1.0 below τ, and never divides by zero. τ is filled
    # in on the device (full_like), not copied from the host: a copy from host memory would
    # make the host wait for the GPU in every step.
    scale = max_norm / xp.maximum(norm, xp.full_like(norm, max_norm))
    if isinstance(grads, FlatDict):
        grads.flat[...] *= scale
    else:
        for g in grads.values():
            g[...] *= scale
    return norm


def sgd(params: Mapping[str, Array], grads: Mapping[str, Array], lr: float) -> None:
    """Plain SGD in place: ``p ← p − lr · g`` for every parameter (lr > 0 and finite)."""
    lr = positive_float("lr", lr)
    like_params(params, grads)
    for p, g in _aligned(params, grads):
        p[...] -= lr * g


#: The optimisers :func:`new_state` and :func:`step` know.
OPTIMIZERS = ("sgd", "adam")
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


def _zeros_like(params: Mapping[str, Array]) -> Mapping[str, Array]:
    if isinstance(params, FlatDict):
        return params.zeros_like()
    return {name: namespace_of(p).zeros_like(p) for name, p in params.items()}


def _aligned(*maps: Mapping[str, Array]) -> list[tuple[Array, ...]]:
    """``(maps[0][k], maps[1][k], ...)`` for every key, or one tuple of the flat buffers when
    all share a layout (then each update is one operation)."""
    if all(_same_layout(maps[0], other) for other in maps[1:]):
        return [tuple(x.flat for x in maps)]
    return [tuple(x[name] for x in maps) for name in maps[0]]


def adam(
    params: Mapping[str, Array],
    grads: Mapping[str, Array],
    lr: float,
    m: Mapping[str, Array],
    v: Mapping[str, Array],
    t: int,
) -> None:
    """Adam's step ``t`` (1, 2, ...) in place: moments ``m`` and ``v`` (shaped like
    ``params``, zeros before step 1), then ``params`` (the equations above)."""
    lr = positive_float("lr", lr)
    like_params(params, grads)
    # the bias corrections are host floats (t is a Python int): no wait for the device
    c1, c2 = 1 - BETA1**t, math.sqrt(1 - BETA2**t)
    for p, g, m_k, v_k in _aligned(params, grads, m, v):
        xp = namespace_of(p)
        m_k[...] = BETA1 * m_k + (1 - BETA1) * g
        v_k[...] = BETA2 * v_k + (1 - BETA2) * (g * g)
        p[...] -= (lr / c1) * m_k / (xp.sqrt(v_k) / c2 + EPS)  # eq. 19


def new_state(
    params: Mapping[str, Array], optimizer: str = "sgd", average: float = 0.0
) -> dict[str, Any]:
    """The state :func:`step` updates for ``params``: ``{"t": 0}`` (steps taken), plus the
    moments ``"m"`` and ``"v"`` (zeros like ``params``) for ``"adam"``, plus ``"average"``
    (a copy of ``params``) when ``average`` (the decay δ, 0 for none) is in (0, 1)."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    average = fraction("average", average)
    state: dict[str, Any] = {"optimizer": optimizer, "decay": average, "t": 0}
    if optimizer == "adam":
        state["m"], state["v"] = _zeros_like(params), _zeros_like(params)
    if average:
        avg = _zeros_like(params)
        for a, p in _aligned(avg, params):
            a[...] = p
        state["average"] = avg
    return state


def step(
    params: Mapping[str, Array], grads: Mapping[str, Array], lr: float, state: dict[str, Any]
) -> None:
    """One update of ``params`` in place by the optimiser of ``state`` (:func:`new_state`),
    then of the averaged weights if ``state`` keeps them. ``state`` is updated in place; all
    its numbers stay on the device (``t`` is a Python int), so no step waits for the GPU."""
    lr = positive_float("lr", lr)
    state["t"] = t = state["t"] + 1
    if state["optimizer"] == "sgd":
        sgd(params, grads, lr)
    else:
        adam(params, grads, lr, state["m"], state["v"], t)
    if "average" in state:
        d = state["decay"]
        w = (1 - d) / (1 - d**t)
        for p_bar, p in _aligned(state["average"], params):
            p_bar[...] += w * (p - p_bar)  # eq. 20
