r"""Softmax cross-entropy, the mean over all predictions, with its gradient.

For logits :math:`O` (N, V) and integer labels :math:`y` (N,)::

    P     = softmax(O)                  P_ij = exp(O_ij − O^max_i) / Σ_k exp(O_ik − O^max_i)
    loss  = −(1/N) Σ_i log P_{i, y_i}    (eq. 14 of docs/derivation.md)
    dO    = (P − onehot(y)) / N          (eq. 15)

Subtracting the row maximum :math:`O^{max}_i = max_k O_ik` changes nothing mathematically
and keeps ``exp`` from overflowing (the log-sum-exp trick).
"""

from __future__ import annotations

from typing import Any

from npgru.backend import is_floating, is_integer, namespace_of
from npgru.errors import ShapeError

Array = Any


def check_logits(O: Array, y: Array) -> None:
    """ShapeError unless ``O`` is float (N, V) and ``y`` integer (N,) (values not checked)."""
    xp = namespace_of(O)
    if O.ndim != 2 or not is_floating(xp, O.dtype):
        raise ShapeError(f"logits must be a 2-D float array (N, V), got {tuple(O.shape)} {O.dtype}")
    if y.ndim != 1 or y.shape[0] != O.shape[0] or not is_integer(xp, y.dtype):
        raise ShapeError(f"labels must be integers of shape ({O.shape[0]},), got {tuple(y.shape)}")


def softmax_cross_entropy(O: Array, y: Array) -> tuple[Array, Array]:
    """Mean softmax cross-entropy of logits ``O`` against labels ``y``, and its gradient.

    Args:
        O: logits (N, V), float.
        y: labels (N,), integers in [0, V).

    Returns:
        ``(loss, dO)``: the loss as a 0-d array (``float(loss)`` to read it) and
        d loss / dO (N, V).
    """
    check_logits(O, y)
    xp = namespace_of(O)
    N, V = O.shape
    if bool(xp.any((y < 0) | (y >= V))):  # such a label has no one-hot row: it would be ignored
        raise ShapeError(f"labels must lie in [0, V={V})")
    # One-hot by comparison rather than fancy indexing: the array API guarantees the former.
    Y = xp.astype(y[:, None] == xp.arange(V, dtype=y.dtype)[None, :], O.dtype)
    shifted = O - xp.max(O, axis=1, keepdims=True)
    E = xp.exp(shifted)
    S = xp.sum(E, axis=1, keepdims=True)
    loss = -xp.sum((shifted - xp.log(S)) * Y) / N  # eq. 14, with log P = shifted − log S
    dO = E / S  # P
    dO -= Y
    dO /= N  # eq. 15
    return loss, dO
