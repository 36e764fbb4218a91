r"""The GRU layer: forward and hand-derived backward, one step and a whole sequence.

Symbols are those of ``docs/derivation.md``. Shapes: ``X_t`` (B, D), ``H_t`` (B, H); weights
multiply on the right, so ``W_x*`` is (D, H), ``W_h*`` is (H, H) and biases are (H,).

Variant ``"d2l"`` (Cho et al. 2014, the d2l chapter; parameters ``W_xz, W_hz, b_z, W_xr,
W_hr, b_r, W_xh, W_hh, b_h``)::

    Z_t  = σ(X_t W_xz + H_{t-1} W_hz + b_z)              (eq. 1)
    R_t  = σ(X_t W_xr + H_{t-1} W_hr + b_r)              (eq. 2)
    H~_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)    (eq. 3)
    H_t  = Z_t ⊙ H_{t-1} + (1 − Z_t) ⊙ H~_t              (eq. 4)

Variant ``"reset_after"`` (cuDNN and PyTorch ``nn.GRU``; one more parameter ``b_hh``)::

    H~_t = tanh(X_t W_xh + b_h + R_t ⊙ (H_{t-1} W_hh + b_hh))   (eq. 3')

Two ways to run it, giving the same numbers:

* :func:`step_forward` / :func:`step_backward` are the teaching reference: one time step,
  CS231n style (an output and a cache; the upstream gradient and the cache give every
  gradient), each line one equation of the derivation.
* :func:`forward` / :func:`backward` run a whole sequence the way cuDNN does (Appleyard et
  al. 2016): the input products of all steps in one matrix product before the loop (for
  token ids, a gather of rows of W_x + b, one small gather per step), the gates fused into
  one hidden product per step, only the recurrent work inside the loop, and the weight
  gradients as one large product after it.
  ``tests/test_gru.py`` proves they equal repeated step calls.

Only calls of the array API standard are used, on the namespace of the arrays passed in, so
the module runs unchanged on NumPy, CuPy and ``array_api_strict``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from npgru.backend import contiguous, get_backend, is_floating, is_integer, namespace_of
from npgru.checks import check_lengths, float_dtype, gru_variant, like_params, positive_int
from npgru.errors import ConfigError, ShapeError

Array = Any
Params = dict[str, Array]

#: Parameter names of each variant, in the seed notebook's order.
PARAM_NAMES = {
    "d2l": ("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h"),
    "reset_after": ("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h", "b_hh"),
}


def sigmoid(A: Array) -> Array:
    r"""Logistic sigmoid :math:`σ(a) = 1 / (1 + e^{-a})`, element-wise.

    Computed as :math:`(\tanh(a/2) + 1)/2`, the same function, which never overflows
    (``exp(-a)`` does for float32 ``a < -88``). Its derivative is :math:`σ(a)(1 − σ(a))`.
    """
    xp = namespace_of(A)
    S = xp.tanh(A * 0.5)
    S += 1.0
    S *= 0.5
    return S


# --------------------------------------------------------------------------------------
# parameters and checks


def init_params(
    input_size: int,
    hidden_size: int,
    *,
    variant: str = "d2l",
    dtype: Any = "float32",
    seed: int | None = 0,
    backend: Any = "numpy",
) -> Params:
    """Initial GRU parameters as the seed notebook makes them.

    Weights are drawn from N(0, 0.01²), biases are zero. The draws are made on the host by
    NumPy in the seed's order, so one ``seed`` gives the same parameters on every backend.

    Args:
        input_size: D, the width of ``X_t`` (the vocabulary size for one-hot inputs).
        hidden_size: H.
        variant: ``"d2l"`` or ``"reset_after"``.
        dtype: float32 for training, float64 for gradient checks (a name, a NumPy type or a
            dtype).
        seed: seed of the NumPy generator (``None``: fresh entropy).
        backend: a backend name or :class:`~npgru.backend.Backend`.

    Returns:
        dict name → array: ``W_x*`` (D, H), ``W_h*`` (H, H), ``b_*`` (H,).
    """
    input_size = positive_int("input_size", input_size)
    hidden_size = positive_int("hidden_size", hidden_size)
    variant, dtype = gru_variant(variant), float_dtype(dtype)
    be = get_backend(backend)
    rng = np.random.default_rng(seed)
    shapes = {"x": (input_size, hidden_size), "h": (hidden_size, hidden_size), "b": (hidden_size,)}
    params = {}
    for name in PARAM_NAMES[variant]:
        shape = shapes[name[2] if name.startswith("W_") else "b"]
        host = np.zeros(shape) if name.startswith("b_") else rng.normal(0.0, 0.01, size=shape)
        params[name] = be.asarray(host.astype(dtype))
    return params


def variant_of(params: Params) -> str:
    """``"d2l"`` or ``"reset_after"``, from the parameter names; ShapeError for others."""
    keys = set(params)
    for variant, names in PARAM_NAMES.items():
        if keys == set(names):
            return variant
    expected = " or ".join(", ".join(n) for n in PARAM_NAMES.values())
    raise ShapeError(f"GRU parameters must be exactly {{{expected}}}; got {sorted(keys)}")


def _check_params(params: Params) -> tuple[str, int, int, Any]:
    """Validate names, shapes and dtypes; return (variant, D, H, dtype)."""
    variant = variant_of(params)
    D, H = params["W_xz"].shape
    dtype = params["W_xz"].dtype
    xp = namespace_of(params["W_xz"])
    if not is_floating(xp, dtype):
        raise ShapeError(f"GRU parameters must be float32 or float64, got {dtype}")
    for name, P in params.items():
        kind = name[2] if name.startswith("W_") else "b"
        expected = {"x": (D, H), "h": (H, H), "b": (H,)}[kind]
        if tuple(P.shape) != expected:
            raise ShapeError(f"parameter {name} has shape {tuple(P.shape)}, expected {expected}")
        if P.dtype != dtype:
            raise ShapeError(f"parameter {name} is {P.dtype} but W_xz is {dtype}: use one dtype")
    return variant, D, H, dtype


def _check_state(H_prev: Array, B: int, H: int, dtype: Any, what: str) -> None:
    if tuple(H_prev.shape) != (B, H):
        raise ShapeError(f"{what} has shape {tuple(H_prev.shape)}, expected (B, H) = {(B, H)}")
    if H_prev.dtype != dtype:
        raise ShapeError(f"{what} is {H_prev.dtype} but the parameters are {dtype}")


# --------------------------------------------------------------------------------------
# one time step: the teaching reference


class StepCache(NamedTuple):
    """What :func:`step_backward` needs from :func:`step_forward`.

    ``G`` is G_t = H_{t-1} W_hh + b_hh of eq. 3', the hidden product that the reset gate
    multiplies in the reset_after variant. The d2l variant has no G_t (its candidate uses
    R_t ⊙ H_{t-1}, eq. 3), so there ``G`` is ``None``, which is also how
    :func:`step_backward` tells the variants apart.
    """

    X_t: Array
    H_prev: Array
    Z: Array
    R: Array
    H_tilde: Array
    G: Array | None  # G_t (eq. 3'), reset_after only; None for d2l
    params: Params


def step_forward(X_t: Array, H_prev: Array, params: Params) -> tuple[Array, StepCache]:
    """One GRU step, eqs. (1)–(4) of ``docs/derivation.md``.

    Args:
        X_t: input (B, D), float.
        H_prev: previous state H_{t-1} (B, H).
        params: the GRU parameters (see :func:`init_params`).

    Returns:
        H_t (B, H) and the cache for :func:`step_backward`.
    """
    variant, D, H, dtype = _check_params(params)
    if X_t.ndim != 2 or X_t.shape[1] != D or X_t.dtype != dtype:
        raise ShapeError(f"X_t must be (B, D={D}) {dtype}, got {tuple(X_t.shape)} {X_t.dtype}")
    _check_state(H_prev, X_t.shape[0], H, dtype, "H_prev")
    p = params
    Z = sigmoid(X_t @ p["W_xz"] + H_prev @ p["W_hz"] + p["b_z"])  # eq. 1
    R = sigmoid(X_t @ p["W_xr"] + H_prev @ p["W_hr"] + p["b_r"])  # eq. 2
    if variant == "d2l":  # eq. 3
        G = None
        H_tilde = namespace_of(X_t).tanh(X_t @ p["W_xh"] + (R * H_prev) @ p["W_hh"] + p["b_h"])
    else:
        G = H_prev @ p["W_hh"] + p["b_hh"]  # eq. 3': G_t
        H_tilde = namespace_of(X_t).tanh(X_t @ p["W_xh"] + p["b_h"] + R * G)  # eq. 3'
    H_t = Z * H_prev + (1.0 - Z) * H_tilde  # eq. 4
    return H_t, StepCache(X_t, H_prev, Z, R, H_tilde, G, params)


def step_backward(dH_t: Array, cache: StepCache) -> tuple[Array, Array, Params]:
    """Backward through one GRU step: eqs. (5)–(12) of ``docs/derivation.md``; for
    reset_after, eqs. 9', 10', 11' and 12' take the place of 9–11 and of eq. 12's W_hh line.

    Args:
        dH_t: the whole gradient of the loss with respect to H_t (B, H), from the output at
            step t and from step t+1 together (eq. 13).
        cache: from :func:`step_forward`.

    Returns:
        dX_t (B, D); dH_prev (B, H), the share of the gradient of H_{t-1} that comes
        through this step (dH_{t-1}^next); and a dict with this step's share of the gradient
        of every parameter (dW^(t)), which a sequence sums over its steps.
    """
    X_t, H_prev, Z, R, H_tilde, G, p = cache
    xp = namespace_of(dH_t)
    dH_tilde = dH_t * (1.0 - Z)  # eq. 5
    dZ = dH_t * (H_prev - H_tilde)  # eq. 6
    dA_h = dH_tilde * (1.0 - H_tilde * H_tilde)  # eq. 7: tanh' = 1 − tanh²
    dA_z = dZ * Z * (1.0 - Z)  # eq. 8: σ' = σ(1 − σ)
    grads = {}
    if G is None:
        dRH = dA_h @ p["W_hh"].T  # eq. 9: through (R ⊙ H_prev) W_hh
        dA_r = dRH * H_prev * R * (1.0 - R)  # eq. 10
        dH_prev = dH_t * Z + dRH * R  # eq. 11, the two direct paths...
        grads["W_hh"] = (R * H_prev).T @ dA_h  # eq. 12
    else:  # reset_after
        dG = dA_h * R  # eq. 9': through R ⊙ G
        dA_r = dA_h * G * R * (1.0 - R)  # eq. 10'
        dH_prev = dH_t * Z + dG @ p["W_hh"].T  # eq. 11', the direct path and through G...
        grads["W_hh"] = H_prev.T @ dG  # eq. 12'
        grads["b_hh"] = xp.sum(dG, axis=0)  # eq. 12'
    dH_prev = dH_prev + dA_z @ p["W_hz"].T + dA_r @ p["W_hr"].T  # ...and through the gates
    dX_t = dA_z @ p["W_xz"].T + dA_r @ p["W_xr"].T + dA_h @ p["W_xh"].T  # eq. 12
    for gate, dA in (("z", dA_z), ("r", dA_r), ("h", dA_h)):  # eq. 12
        grads[f"W_x{gate}"] = X_t.T @ dA
        grads[f"b_{gate}"] = xp.sum(dA, axis=0)
        if gate != "h":
            grads[f"W_h{gate}"] = H_prev.T @ dA
    return dX_t, dH_prev, {name: grads[name] for name in p}


# --------------------------------------------------------------------------------------
# a whole sequence, step by step: the teaching path (CS231n's rnn_forward / rnn_backward)


def rnn_forward(X: Array, H0: Array, params: Params) -> tuple[Array, list[StepCache]]:
    """Run :func:`step_forward` over time: ``Hs`` (T, B, H) and one cache per step.

    ``X`` is (T, B, D) float inputs (one-hot rows for tokens). :func:`forward` computes the
    same ``Hs``, faster; this loop is the definition it is tested against.
    """
    xp = namespace_of(X, H0)
    H_t, Hs, caches = H0, [], []
    for t in range(X.shape[0]):
        H_t, cache = step_forward(X[t, ...], H_t, params)
        Hs.append(H_t)
        caches.append(cache)
    return xp.stack(Hs), caches


def rnn_backward(
    dHs: Array | None, caches: list[StepCache], dH_last: Array | None = None
) -> tuple[Array, Array, Params]:
    """Backpropagation through time by :func:`step_backward`, from the last step to the first.

    The gradient reaching ``H_t`` is ``dHs[t]`` (from the output at step t) plus the ``dH_prev``
    that step t+1 sends back (eq. 13 of docs/derivation.md); the weight gradients are summed
    over the steps. ``dHs`` (T, B, H) or None, ``dH_last`` (B, H) or None (a gradient into the
    last state only). Returns ``dX`` (T, B, D), ``dH0`` (the gradient of the initial state)
    and the summed ``grads``; :func:`backward` gives the same, faster.
    """
    first = caches[0]
    xp = namespace_of(first.H_prev)
    dH_next = xp.zeros_like(first.H_prev) if dH_last is None else dH_last
    dXs, grads = [], {name: xp.zeros_like(p) for name, p in first.params.items()}
    for t in range(len(caches) - 1, -1, -1):
        dH = dH_next if dHs is None else dHs[t, ...] + dH_next
        dX_t, dH_next, g = step_backward(dH, caches[t])
        dXs.append(dX_t)
        grads = {name: grads[name] + g[name] for name in grads}
    return xp.stack(dXs[::-1]), dH_next, grads


# --------------------------------------------------------------------------------------
# a whole sequence: the fast path


class Workspace:
    """Buffers that :func:`forward` and :func:`backward` reuse from one call to the next.

    A training step needs a few megabytes of per-sequence buffers (states, gates, gate
    gradients). Allocating them afresh for every minibatch makes the operating system hand
    out and zero new pages each time, which cost about a fifth of a NumPy training step here.
    With a workspace, calls with the same shapes allocate nothing. The price: a cache from
    :func:`forward` is valid only until the next :func:`forward` with the same workspace.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Array] = {}

    def empty(self, xp: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Array:
        """An uninitialized buffer called ``name``, reused when shape and dtype match."""
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
            buf = self._buffers[name] = xp.empty(shape, dtype=dtype)
        return buf


def _buffers(workspace: Workspace | None) -> Any:
    """``workspace.empty``, or fresh arrays (with the same signature) when there is none."""
    if workspace is not None:
        return workspace.empty
    return lambda xp, name, shape, dtype: xp.empty(shape, dtype=dtype)


class SeqCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`. Arrays are time-major."""

    X: Array  # (T, B, D) float, or (T, B) int token ids
    Hs: Array  # (T + 1, B, H): Hs[0] = H0, Hs[t + 1] = H_t
    Z: Array  # (T, B, H) update gates
    R: Array  # (T, B, H) reset gates
    H_tilde: Array  # (T, B, H) candidates
    RH: Array | None  # (T, B, H): R_t ⊙ H_{t-1}, what W_hh multiplies in eq. 3; d2l only
    G: Array | None  # (T, B, H): G_t of eq. 3'; reset_after only
    params: Params
    M: Array | None = None  # (T, B, 1): 1 for the steps before each sequence's length, else 0


#: The matrices that multiply X_t, and those that multiply H_{t-1}, side by side in one
#: product (see _fused): reset_after's candidate joins the gates, since it does not need R_t.
INPUT_MATRICES = ("W_xz", "W_xr", "W_xh")
HIDDEN_MATRICES = {"d2l": ("W_hz", "W_hr"), "reset_after": ("W_hz", "W_hr", "W_hh")}


def _fused(params: Params, variant: str) -> tuple[Array, Array, Array]:
    """The gate matrices side by side: W_x (D, 3H), b (3H,) and W_h (H, 2H) or (H, 3H).

    Concatenating once per sequence turns three small products per step into one: W_h is
    [W_hz | W_hr] for d2l, and [W_hz | W_hr | W_hh] for reset_after, where the candidate's
    hidden product does not need R_t first.
    """
    xp = namespace_of(params["W_xz"])
    W_x = xp.concat([params[name] for name in INPUT_MATRICES], axis=1)
    b = xp.concat([params["b_z"], params["b_r"], params["b_h"]])
    W_h = xp.concat([params[name] for name in HIDDEN_MATRICES[variant]], axis=1)
    return W_x, b, W_h


def _hidden_T(params: Params, variant: str) -> Array:
    """W_hᵀ of :func:`_fused`, (2H, H) or (3H, H), row-major: the backward pass multiplies by
    it once a step, and BLAS multiplies by a row-major matrix faster than by a transposed view.
    Written block by block, in one pass over memory (a concatenation of the transposed
    blocks is column-major in NumPy, and would need a second)."""
    names = HIDDEN_MATRICES[variant]
    W_hz = params[names[0]]
    xp, H = namespace_of(W_hz), W_hz.shape[0]
    W_hT = xp.empty((len(names) * H, H), dtype=W_hz.dtype)
    for i, name in enumerate(names):
        W_hT[i * H : (i + 1) * H, :] = params[name].T
    return W_hT


def _one_hot_T(X: Array, D: int, dtype: Any) -> Array:
    """Token ids (N,) as the transposed one-hot matrix (D, N), row-major."""
    xp = namespace_of(X)
    return xp.astype(xp.arange(D, dtype=X.dtype)[:, None] == X[None, :], dtype)


def sum_rows_by_token(ids: Array, rows: Array, D: int) -> Array:
    """Xᵀ rows for the one-hot X of token ids (N,): (D, K), whose row d is the sum of the rows
    (N, K) of the positions that hold token d. A product with the transposed one-hot matrix:
    the array API has no scatter-add."""
    return _one_hot_T(ids, D, rows.dtype) @ rows


def _check_sequence(X: Array, H0: Array, params: Params) -> tuple[str, int, int, Any, bool]:
    """Validate the arguments of a sequence forward; return (variant, D, H, dtype, tokens)."""
    variant, D, H, dtype = _check_params(params)
    return variant, D, H, dtype, check_inputs(X, H0, D, H, dtype)


def check_inputs(X: Array, H0: Array, D: int, H: int, dtype: Any) -> bool:
    """Validate the inputs of a sequence forward of any cell (this one, :mod:`npgru.rnn`):
    X (T, B, D) ``dtype`` or (T, B) integer ids, H0 (B, H); return whether X is token ids."""
    xp = namespace_of(H0)
    tokens = X.ndim == 2 and is_integer(xp, X.dtype)
    if not tokens and not (X.ndim == 3 and X.shape[2] == D and X.dtype == dtype):
        raise ShapeError(
            f"X must be (T, B, D={D}) {dtype} or (T, B) int token ids, "
            f"got {tuple(X.shape)} {X.dtype}"
        )
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ShapeError(f"X must hold at least one step and one sequence, got {tuple(X.shape)}")
    _check_state(H0, X.shape[1], H, dtype, "H0")
    return tokens


def _input_side(X: Array, tokens: bool, W_x: Array, b: Array) -> Array:
    """The input side of every gate, which does not depend on the recurrence.

    For token ids it is a row of W_x + b, returned as the (D, 3H) table to gather from; for
    dense inputs X (T, B, D) it is one product for all steps, returned as (T, B, 3H).
    """
    if tokens:
        return W_x + b
    xp = namespace_of(X)
    T, B, D = X.shape
    XW = xp.reshape(X, (T * B, D)) @ W_x
    XW += b
    return xp.reshape(XW, (T, B, W_x.shape[1]))


def _forward_buffers(
    workspace: Workspace | None, H0: Array, T: int, variant: str
) -> tuple[Array, ...]:
    """The buffers a sequence forward fills, shaped after H0 (B, H): Hs (T + 1, B, H), whose
    Hs[0] = H0 the caller sets, then Z, R, H_tilde, RH and G, each (T, B, H); RH is None
    for reset_after, G None for d2l (see :class:`SeqCache`)."""
    xp, (B, H), dtype = namespace_of(H0), H0.shape, H0.dtype
    empty = _buffers(workspace)
    Hs = empty(xp, "Hs", (T + 1, B, H), dtype)
    kept = ("Z", "R", "H_tilde", "RH" if variant == "d2l" else "G")
    buffers = {name: empty(xp, name, (T, B, H), dtype) for name in kept}
    return Hs, *(buffers.get(name) for name in ("Z", "R", "H_tilde", "RH", "G"))


def forward(
    X: Array,
    H0: Array,
    params: Params,
    *,
    lengths: Array | None = None,
    workspace: Workspace | None = None,
    fused_step: Any = None,
) -> tuple[Array, SeqCache]:
    """Run the GRU over a sequence: eqs. (1)–(4) for t = 1..T.

    Args:
        X: inputs (T, B, D), float; or token ids (T, B), int, standing for one-hot rows of
            width D (then the input products are a row gather, not a matrix product).
        H0: initial state (B, H).
        params: the GRU parameters (see :func:`init_params`).
        lengths: ``None`` (every sequence runs all T steps), or (B,) integers in 1..T:
            sequence b ends after ``lengths[b]`` steps and its state is held from there on
            (eq. 25 of ``docs/derivation.md``), so ``Hs[-1]`` is each sequence's state at its
            last step. Not with ``fused_step``.
        workspace: reuse its buffers (see :class:`Workspace`); ``None``: fresh arrays. The
            states returned live in the workspace: a second ``forward`` with the same
            workspace overwrites them (copy them to keep them).
        fused_step: ``None`` for the lines of this loop; else a factory such as
            :func:`npgru.fused.forward_step`, which returns ``step(t)`` that fills the same
            buffers for step t by compiled kernels (the same equations, see that module).

    Returns:
        Hs (T, B, H), the states H_1..H_T, and the cache for :func:`backward`.
    """
    variant, D, H, dtype, tokens = _check_sequence(X, H0, params)
    xp = namespace_of(params["W_xz"])
    T, B = X.shape[:2]
    M = None if lengths is None else check_lengths(lengths, T, B, xp, dtype)
    valid = None if M is None else M > 0.5  # M_t as a selection: exact where M_t is 0 or 1
    if M is not None and fused_step is not None:
        raise ConfigError("lengths run on the reference loop only: pass fused_step=None")
    # NumPy would raise a bare IndexError, CuPy would wrap around silently
    if tokens and bool(xp.any((X < 0) | (X >= D))):
        raise ShapeError(f"X holds token ids outside [0, D={D})")

    W_x, b, W_h = _fused(params, variant)
    W_hh = params["W_hh"]
    XW = _input_side(X, tokens, W_x, b)  # for tokens: the table W_x + b, gathered per step

    Hs, Z, R, H_tilde, RH, G = _forward_buffers(workspace, H0, T, variant)
    Hs[0, ...] = H0
    step = None
    if fused_step is not None:
        step = fused_step(X, XW, W_h, params, Hs, Z, R, H_tilde, RH, G, _buffers(workspace))
    for t in range(T):
        if step is not None:
            step(t)
            continue
        H_prev = Hs[t, ...]
        XW_t = xp.take(XW, X[t, :], axis=0) if tokens else XW[t, ...]
        HW = H_prev @ W_h  # one product for both gates (and, reset_after, the candidate)
        ZR = sigmoid(XW_t[:, : 2 * H] + HW[:, : 2 * H])  # eqs. 1, 2 side by side
        Z[t, ...] = ZR[:, :H]
        R[t, ...] = ZR[:, H:]
        if variant == "d2l":
            RH[t, ...] = R[t, ...] * H_prev
            A_h = RH[t, ...] @ W_hh
        else:
            G[t, ...] = HW[:, 2 * H :] + params["b_hh"]
            A_h = R[t, ...] * G[t, ...]
        A_h += XW_t[:, 2 * H :]
        H_tilde[t, ...] = xp.tanh(A_h)  # eq. 3 (or 3')
        # eq. 4 rearranged, Z ⊙ H_prev + (1 − Z) ⊙ H~ = H~ + Z ⊙ (H_prev − H~): one op fewer
        H_t = H_prev - H_tilde[t, ...]
        H_t *= Z[t, ...]
        H_t += H_tilde[t, ...]
        if valid is not None:  # eq. 25: past its end a sequence keeps its state
            H_t = xp.where(valid[t, ...], H_t, H_prev)
        Hs[t + 1, ...] = H_t
    return Hs[1:, ...], SeqCache(X, Hs, Z, R, H_tilde, RH, G, params, M)


def _check_backward(
    dHs: Array | None, cache: SeqCache, dH_last: Array | None, grads: Params | None = None
) -> str:
    """Validate the arguments of a sequence backward; return the variant."""
    variant, _, H, dtype = _check_params(cache.params)
    check_upstream(dHs, cache, dH_last, grads, H, dtype)
    return variant


def check_upstream(
    dHs: Array | None, cache: Any, dH_last: Array | None, grads: Params | None, H: int, dtype: Any
) -> None:
    """Validate the arguments of a sequence backward of any cell (this one, :mod:`npgru.rnn`)
    against its cache: ``grads`` like the parameters, dHs (T, B, H), dH_last (B, H)."""
    if grads is not None:
        like_params(cache.params, grads, dtype=True)
    T, B = cache.Hs.shape[0] - 1, cache.Hs.shape[1]
    if dHs is not None and tuple(dHs.shape) != (T, B, H):
        raise ShapeError(f"dHs must be (T, B, H) = {(T, B, H)}, got {tuple(dHs.shape)}")
    if dHs is not None and dHs.dtype != dtype:
        raise ShapeError(f"dHs is {dHs.dtype} but the parameters are {dtype}")
    if dH_last is not None:
        _check_state(dH_last, B, H, dtype, "dH_last")


def backward(
    dHs: Array | None,
    cache: SeqCache,
    dH_last: Array | None = None,
    *,
    workspace: Workspace | None = None,
    grads: Params | None = None,
    fused_step: Any = None,
    sum_rows: Any = sum_rows_by_token,
) -> tuple[Array | None, Array, Params]:
    """Backpropagation through time over the sequence of :func:`forward`.

    The gradient reaching H_t is the one from outside (``dHs[t]``, e.g. the output layer)
    plus the one flowing back from step t+1 (eq. 13 of ``docs/derivation.md``); each step
    then applies eqs. (5)–(11) exactly as :func:`step_backward` does. Only the products with
    the incoming gradient stay inside the time loop: the weight gradients are sums over steps
    (eq. 12), so they are formed after it, one large product each (:func:`weight_grads`).

    Args:
        dHs: gradient of the loss with respect to each state H_1..H_T, (T, B, H), or
            ``None`` when the loss depends on the last state only.
        cache: from :func:`forward`.
        dH_last: extra gradient with respect to the last state H_T (B, H), e.g. from the
            next chunk of a sequence; ``None`` for none.
        workspace: reuse its buffers (see :class:`Workspace`); ``None``: fresh arrays.
        grads: the arrays to write the parameter gradients into, one per parameter with its
            shape and dtype (e.g. views of a :class:`~npgru.flat.FlatDict`); ``None``: new ones.
        fused_step: ``None`` for the lines of this loop; else a factory such as
            :func:`npgru.fused.backward_step`, which returns ``step(t)`` that fills the same
            dA[t] (and dG[t]) by compiled kernels and returns dH_0 at t = 0.
        sum_rows: for token ids, how :func:`weight_grads` adds up the rows of dA of each
            token (default :func:`sum_rows_by_token`).

    Returns:
        dX (T, B, D) (``None`` for token-id inputs), dH0 (B, H), and a dict with the gradient
        of every parameter (the same keys as ``params``): ``grads`` itself when given.
    """
    variant = _check_backward(dHs, cache, dH_last, grads)
    G: Array  # None for d2l, where it is never read
    _, Hs, Z, R, H_tilde, _, G, params, M = cache
    if M is not None and fused_step is not None:
        raise ConfigError("a cache with lengths runs back on the reference loop only: "
                          "pass fused_step=None")  # fmt: skip
    xp = namespace_of(Hs)
    T, B, H = Z.shape

    # dA: the gradients at the gate pre-activations [dA_z, dA_r, dA_h], all steps, kept for
    # the weight gradients after the loop. reset_after also keeps dG, the gradient at G.
    empty = _buffers(workspace)
    dA = empty(xp, "dA", (T, B, 3 * H), Z.dtype)
    dG: Array = empty(xp, "dG", (T, B, H), Z.dtype) if variant == "reset_after" else None
    # dH_next: the gradient reaching H_t through step t+1; after the loop it is dH0
    dH_next = xp.zeros((B, H), dtype=Z.dtype) if dH_last is None else dH_last
    step = W_hT = W_hhT = None
    if fused_step is not None:  # (it writes W_hᵀ and W_hhᵀ itself)
        step = fused_step(dHs, dH_next, cache, dA, dG, empty)
    else:
        W_hT, W_hhT = _hidden_T(params, variant), contiguous(params["W_hh"].T)
    for t in range(T - 1, -1, -1):
        if step is not None:
            dH_next = step(t)
            continue
        H_prev, Z_t, R_t, H_tilde_t = Hs[t, ...], Z[t, ...], R[t, ...], H_tilde[t, ...]
        dH = dH_next if dHs is None else dHs[t, ...] + dH_next  # eq. 13
        if M is not None:  # eq. 26: past its end, the gradient only passes through the step
            dH_past = dH * (1.0 - M[t, ...])
            dH = dH * M[t, ...]
        one_minus_Z = 1.0 - Z_t
        dA_h = 1.0 - H_tilde_t * H_tilde_t
        dA_h *= dH * one_minus_Z  # eqs. 5, 7
        dA_z = H_prev - H_tilde_t
        dA_z *= dH
        dA_z *= Z_t * one_minus_Z  # eqs. 6, 8
        if variant == "d2l":
            dRH = dA_h @ W_hhT  # eq. 9
            dA_r = dRH * H_prev  # eq. 10
        else:
            dG[t, ...] = dA_h * R_t
            dA_r = dA_h * G[t, ...]
        dA_r *= R_t * (1.0 - R_t)
        dA[t, :, :H] = dA_z
        dA[t, :, H : 2 * H] = dA_r
        dA[t, :, 2 * H :] = dA_h
        if variant == "d2l":  # eq. 11: through the gates, then the two direct paths
            dH_next = dA[t, :, : 2 * H] @ W_hT
            dH_next += dRH * R_t
        else:
            dH_next = xp.concat([dA[t, :, : 2 * H], dG[t, ...]], axis=1) @ W_hT
        dH_next += dH * Z_t
        if M is not None:
            dH_next += dH_past
    dX, new = weight_grads(cache, dA, dG, sum_rows=sum_rows)
    if grads is None:
        return dX, dH_next, new
    for name, g in new.items():
        grads[name][...] = g
    return dX, dH_next, grads


def weight_grads(
    cache: SeqCache, dA: Array, dG: Array | None, *, sum_rows: Any = sum_rows_by_token
) -> tuple[Array | None, Params]:
    """Eq. 12 for all steps at once: the parameter gradients and dX, from the gate gradients.

    The weight gradients are sums over steps of one-step products, so each is one large
    product over all T·B rows.

    Args:
        cache: from :func:`forward`.
        dA: the gradients at the gate pre-activations [dA_z, dA_r, dA_h], (T, B, 3H).
        dG: reset_after only: the gradient at G = H_{t-1} W_hh + b_hh, (T, B, H); else None.
        sum_rows: Xᵀ dA for token ids, with the signature of :func:`sum_rows_by_token`
            (which it is by default; :mod:`npgru.fused` passes a scatter-add).

    Returns:
        dX (T, B, D) (``None`` for token-id inputs) and the dict of parameter gradients.
    """
    X, Hs, RH, params = cache.X, cache.Hs, cache.RH, cache.params
    xp = namespace_of(Hs)
    T, B, H3 = dA.shape
    H, D = H3 // 3, params["W_xz"].shape[0]
    dA_flat = xp.reshape(dA, (T * B, H3))
    H_prev_flat = xp.reshape(Hs[:-1, ...], (T * B, H))
    if X.ndim == 2:  # one-hot inputs: X^T dA adds up the rows of dA of each token
        dW_x = sum_rows(xp.reshape(X, (T * B,)), dA_flat, D)
        db = xp.sum(dW_x, axis=0)  # each row of dA went to exactly one token: D rows to add
        dX = None
    else:
        dW_x = xp.reshape(X, (T * B, D)).T @ dA_flat
        db = xp.sum(dA_flat, axis=0)
        W_x = xp.concat([params[name] for name in INPUT_MATRICES], axis=1)
        dX = xp.reshape(dA_flat @ W_x.T, (T, B, D))
    dW_hzr = H_prev_flat.T @ dA_flat[:, : 2 * H]
    grads = {
        "W_xz": dW_x[:, :H],
        "W_xr": dW_x[:, H : 2 * H],
        "W_xh": dW_x[:, 2 * H :],
        "b_z": db[:H],
        "b_r": db[H : 2 * H],
        "b_h": db[2 * H :],
        "W_hz": dW_hzr[:, :H],
        "W_hr": dW_hzr[:, H:],
    }
    if dG is None:
        grads["W_hh"] = xp.reshape(RH, (T * B, H)).T @ dA_flat[:, 2 * H :]
    else:
        dG_flat = xp.reshape(dG, (T * B, H))
        grads["W_hh"] = H_prev_flat.T @ dG_flat
        grads["b_hh"] = xp.sum(dG_flat, axis=0)
    return dX, {name: grads[name] for name in params}
