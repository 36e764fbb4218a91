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
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from npgru.backend import is_floating, namespace_of
from npgru.checks import fraction, like_params
from npgru.errors import ConfigError, ShapeError
from npgru.flat import FlatDict

Array = Any
Scaling = Callable[[Array], Array]


def positive_float(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a float if it is a real number > 0, finite unless ``allow_inf``; not NaN."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) > 0
    if not (ok and (allow_inf or float(value) < math.inf)):
        kind = "a positive number" if allow_inf else "a positive finite number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def _same_layout(params: Mapping[str, Array], grads: Mapping[str, Array]) -> bool:
    return (
        isinstance(params, FlatDict)
        and isinstance(grads, FlatDict)
        and params.layout == grads.layout
    )


def _arrays(grads: Mapping[str, Array]) -> list[Array]:
    """The gradient arrays to take the norm of: the flat buffer of a FlatDict, else each
    non-empty array (a maximum over no entries is undefined)."""
    if isinstance(grads, FlatDict):
        return [grads.flat]
    for name, g in grads.items():  # a norm of ints, complex numbers or lists is no gradient's
        if not (hasattr(g, "dtype") and is_floating(namespace_of(g), g.dtype)):
            kind = getattr(g, "dtype", type(g).__name__)
            raise ShapeError(f"gradient {name!r} is {kind}: give float32 or float64 arrays")
    return [g for g in grads.values() if math.prod(g.shape) > 0]


def _same(x: Array) -> Array:
    return x


def _scaled_norm(arrays: list[Array]) -> tuple[Any, Array, Scaling, Scaling]:
    r"""``(xp, r, up, down)``: ‖g‖₂ = up(r), computed without overflow or underflow, and
    ``down``, the division by the same scale s (``up(x) = x · s``, ``down(x) = x / s``).

    Squaring overflows for |g| > 1.8e19 in float32 (then ‖g‖ = inf and clipping zeroes every
    gradient) and underflows for |g| < 1e-19 (‖g‖ = 0). So every entry is first divided by
    s ≈ max |g|: ‖g‖ = s · ‖g / s‖ with every |g / s| ≤ 1, so r = ‖g / s‖ ≤ √n and neither
    the squares nor their sum can overflow; a square that underflows is below the dtype's
    smallest normal number while r² ≥ 1/4, far under the rounding of the sum. Where the
    namespace has ``frexp`` and ``ldexp`` (NumPy, CuPy), s is the power of two 2^e of
    frexp(max |g|) (e ≥ 1 − maxexp, so that 1/s is a number of the dtype): multiplying by
    1/s is exact, so gradients of an ordinary size get bit for bit the plain √(Σ g²), for
    two more passes over them (the max and the scaling);
    NumPy arrays take the plain sum, checked on the host, unless it over- or underflowed.
    Other namespaces divide by max |g| itself (one more rounding). It all stays on the
    device: nothing waits for the GPU. An all-zero, inf or NaN maximum gives s = 1 (the
    plain sum: 0, inf or NaN).
    """
    xp = namespace_of(*arrays)
    if xp is np:  # on the host, reading the sum costs nothing: the plain sum where it is safe
        with np.errstate(over="ignore"):
            ss = sum(np.sum(g * g) for g in arrays)
        # finite: no square overflowed; ≥ tiny / ε: the squares that underflowed (each off by
        # under one subnormal step) change the sum by less than n · ε² of it
        if np.finfo(ss.dtype).smallest_normal / np.finfo(ss.dtype).eps <= ss < math.inf:
            return xp, np.sqrt(ss), _same, _same
    # max |g| as two reductions per array, without an array of |g|
    peaks = [xp.maximum(xp.max(g), -xp.min(g)) for g in arrays]
    m = peaks[0]
    for peak in peaks[1:]:
        m = xp.maximum(m, peak)
    frexp, ldexp = getattr(xp, "frexp", None), getattr(xp, "ldexp", None)
    if frexp is not None and ldexp is not None:
        lowest = 1 - min(int(np.finfo(g.dtype).maxexp) for g in arrays)
        e = xp.maximum(frexp(m)[1], lowest)  # m = mantissa · 2^e; e = 0 for 0, inf, NaN

        def down(x: Array) -> Array:
            return ldexp(x, -e)

        def up(x: Array) -> Array:
            return ldexp(x, e)

        # the big arrays are multiplied by 2^−e (ldexp is several times slower than *)
        scaled = [g * down(xp.ones((), dtype=g.dtype)) for g in arrays]
    else:
        s = xp.where((m > 0) & (m < math.inf), m, xp.ones_like(m))

        def down(x: Array) -> Array:
            return x / s

        def up(x: Array) -> Array:
            return x * s

        scaled = [down(g) for g in arrays]
    r = xp.sqrt(sum(xp.sum(x * x) for x in scaled))
    return xp, r, up, down


def global_norm(grads: Mapping[str, Array]) -> Array:
    """‖g‖₂ over all arrays of ``grads`` together, as a 0-d array (inf only where the norm
    itself exceeds the dtype's range; see :func:`_scaled_norm`)."""
    arrays = _arrays(grads)
    if not arrays:
        return namespace_of(*grads.values()).zeros(())
    _, r, up, _ = _scaled_norm(arrays)
    return up(r)


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
    arrays = _arrays(grads)
    if not arrays:
        return global_norm(grads)
    xp, r, up, down = _scaled_norm(arrays)
    norm = up(r)
    if max_norm == math.inf:  # inf / max(norm, inf) would be NaN
        return norm
    # eq. 16 on the scaled norm r = ‖g‖ / s: τ / max(‖g‖, τ) = min(1, (τ / s) / r), exactly
    # 1.0 below τ, and with ‖g‖ never formed it cannot overflow to inf and zero the gradients.
    # τ / s overflows to inf when the gradients are far below τ (then the minimum is 1: no
    # warning wanted); r = 0 only when every gradient is 0, which any scale keeps 0. τ is
    # filled in on the device (full_like), not copied from the host: a copy from host memory
    # would make the host wait for the GPU in every step; it is cut to the dtype's largest
    # number (a larger τ clips nothing either), as inf would give inf / inf = NaN.
    one = xp.ones_like(r)
    tau = xp.full_like(r, min(max_norm, float(xp.finfo(r.dtype).max)))
    with np.errstate(over="ignore"):
        scale = xp.minimum(one, down(tau) / xp.where(r > 0, r, one))
    for g in arrays:
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
        return [tuple(cast(FlatDict, x).flat for x in maps)]
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
