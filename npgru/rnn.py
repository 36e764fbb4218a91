r"""The plain tanh RNN: forward and hand-derived backward, one step and a whole sequence.

The recurrent network of d2l's chapter before the GRU, kept beside it so that the two can
be compared with the same tools (the GRU's gates are what this cell lacks). Symbols are those
of ``docs/derivation.md``, section 14. Shapes: ``X_t`` (B, D), ``H_t`` (B, H); weights
multiply on the right, so ``W_xh`` is (D, H), ``W_hh`` is (H, H) and ``b_h`` is (H,).

Variant ``"tanh"`` (the only one; PyTorch's ``nn.RNN(nonlinearity="tanh")``, whose two
biases ``bias_ih + bias_hh`` sum into ``b_h``)::

    A_t = X_t W_xh + H_{t-1} W_hh + b_h,   H_t = tanh(A_t)                     (eq. 21)

and its backward, given the whole gradient dH_t reaching H_t (eq. 13)::

    dA_t           = dH_t ⊙ (1 − H_t ⊙ H_t)                                     (eq. 22)
    dH_{t-1}^next  = dA_t W_hhᵀ                                                 (eq. 23)
    dW_xh^(t) = X_tᵀ dA_t,  dW_hh^(t) = H_{t-1}ᵀ dA_t,  db_h^(t) = 1ᵀ dA_t,
    dX_t = dA_t W_xhᵀ                                                            (eq. 24)

Sequences of different lengths (``lengths``, section 15): with the mask M_t (1 while step t
is one of the sequence's, else 0, :func:`npgru.checks.check_lengths`) a sequence keeps its
state past its end, and the gradient splits the same way::

    H_t = M_t ⊙ tanh(A_t) + (1 − M_t) ⊙ H_{t-1}                                 (eq. 25)
    dA_t uses M_t ⊙ dH_t in eq. 22;  dH_{t-1}^next += (1 − M_t) ⊙ dH_t          (eq. 26)

Two ways to run it, giving the same numbers, as in :mod:`npgru.gru`:

* :func:`step_forward` / :func:`step_backward` are the teaching reference: one time step,
  CS231n style, each line one equation; :func:`rnn_forward` / :func:`rnn_backward` loop them
  over a sequence.
* :func:`forward` / :func:`backward` run a whole sequence: the input products of all steps in
  one matrix product before the loop (for token ids, a gather of rows of W_xh + b_h), only
  the recurrent product inside it, and the weight gradients as one large product after it.
  ``tests/test_rnn.py`` proves they equal the step loop.

Only calls of the array API standard are used, on the namespace of the arrays passed in, so
the module runs unchanged on NumPy, CuPy and ``array_api_strict``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from npgru.backend import contiguous, get_backend, is_floating, namespace_of
from npgru.checks import check_lengths, float_dtype, positive_int
from npgru.errors import ConfigError, ShapeError
from npgru.gru import Workspace, _buffers, _check_state, _one_hot_T, check_inputs, check_upstream

Array = Any
Params = dict[str, Array]

#: Parameter names of each variant (one: the tanh cell of eq. 21), in the order drawn.
PARAM_NAMES = {"tanh": ("W_xh", "W_hh", "b_h")}


# --------------------------------------------------------------------------------------
# parameters and checks


def init_params(
    input_size: int,
    hidden_size: int,
    *,
    variant: str = "tanh",
    dtype: Any = "float32",
    seed: int | None = 0,
    backend: Any = "numpy",
) -> Params:
    """Initial RNN parameters, made as :func:`npgru.gru.init_params` makes the GRU's.

    Weights are drawn from N(0, 0.01²), biases are zero. The draws are made on the host by
    NumPy in the order of :data:`PARAM_NAMES`, so one ``seed`` gives the same parameters on
    every backend.

    Args:
        input_size: D, the width of ``X_t`` (the vocabulary size for one-hot inputs).
        hidden_size: H.
        variant: ``"tanh"``, the only one.
        dtype: float32 for training, float64 for gradient checks (a name, a NumPy type or a
            dtype).
        seed: seed of the NumPy generator (``None``: fresh entropy).
        backend: a backend name or :class:`~npgru.backend.Backend`.

    Returns:
        dict name → array: ``W_xh`` (D, H), ``W_hh`` (H, H), ``b_h`` (H,).
    """
    input_size = positive_int("input_size", input_size)
    hidden_size = positive_int("hidden_size", hidden_size)
    variant, dtype = rnn_variant(variant), float_dtype(dtype)
    be = get_backend(backend)
    rng = np.random.default_rng(seed)
    shapes = {"W_xh": (input_size, hidden_size), "W_hh": (hidden_size, hidden_size)}
    params = {}
    for name in PARAM_NAMES[variant]:
        if name.startswith("b_"):
            host = np.zeros(hidden_size)
        else:
            host = rng.normal(0.0, 0.01, size=shapes[name])
        params[name] = be.asarray(host.astype(dtype))
    return params


def rnn_variant(variant: Any) -> str:
    """``variant`` if it names an RNN variant: ``"tanh"``; ConfigError otherwise."""
    if not isinstance(variant, str) or variant not in PARAM_NAMES:
        raise ConfigError(f"unknown RNN variant {variant!r}: the only one is 'tanh'")
    return variant


def variant_of(params: Params) -> str:
    """``"tanh"``, from the parameter names; ShapeError for others."""
    keys = set(params)
    for variant, names in PARAM_NAMES.items():
        if keys == set(names):
            return variant
    expected = " or ".join(", ".join(n) for n in PARAM_NAMES.values())
    raise ShapeError(f"RNN parameters must be exactly {{{expected}}}; got {sorted(keys)}")


def _check_params(params: Params) -> tuple[str, int, int, Any]:
    """Validate names, shapes and dtypes; return (variant, D, H, dtype)."""
    variant = variant_of(params)
    D, H = params["W_xh"].shape
    dtype = params["W_xh"].dtype
    xp = namespace_of(params["W_xh"])
    if not is_floating(xp, dtype):
        raise ShapeError(f"RNN parameters must be float32 or float64, got {dtype}")
    expected = {"W_xh": (D, H), "W_hh": (H, H), "b_h": (H,)}
    for name, P in params.items():
        if tuple(P.shape) != expected[name]:
            raise ShapeError(
                f"parameter {name} has shape {tuple(P.shape)}, expected {expected[name]}"
            )
        if P.dtype != dtype:
            raise ShapeError(f"parameter {name} is {P.dtype} but W_xh is {dtype}: use one dtype")
    return variant, D, H, dtype


# --------------------------------------------------------------------------------------
# one time step: the teaching reference


class StepCache(NamedTuple):
    """What :func:`step_backward` needs from :func:`step_forward`.

    ``H_t`` is the cell's output tanh(A_t), whose derivative 1 − H_t² eq. 22 needs.
    """

    X_t: Array
    H_prev: Array
    H_t: Array
    params: Params


def step_forward(X_t: Array, H_prev: Array, params: Params) -> tuple[Array, StepCache]:
    """One RNN step, eq. (21) of ``docs/derivation.md``.

    Args:
        X_t: input (B, D), float.
        H_prev: previous state H_{t-1} (B, H).
        params: the RNN parameters (see :func:`init_params`).

    Returns:
        H_t (B, H) and the cache for :func:`step_backward`.
    """
    _, D, H, dtype = _check_params(params)
    if X_t.ndim != 2 or X_t.shape[1] != D or X_t.dtype != dtype:
        raise ShapeError(f"X_t must be (B, D={D}) {dtype}, got {tuple(X_t.shape)} {X_t.dtype}")
    _check_state(H_prev, X_t.shape[0], H, dtype, "H_prev")
    p = params
    H_t = namespace_of(X_t).tanh(X_t @ p["W_xh"] + H_prev @ p["W_hh"] + p["b_h"])  # eq. 21
    return H_t, StepCache(X_t, H_prev, H_t, params)


def step_backward(dH_t: Array, cache: StepCache) -> tuple[Array, Array, Params]:
    """Backward through one RNN step: eqs. (22)–(24) of ``docs/derivation.md``.

    Args:
        dH_t: the whole gradient of the loss with respect to H_t (B, H), from the output at
            step t and from step t+1 together (eq. 13).
        cache: from :func:`step_forward`.

    Returns:
        dX_t (B, D); dH_prev (B, H), the share of the gradient of H_{t-1} that comes
        through this step (dH_{t-1}^next); and a dict with this step's share of the gradient
        of every parameter (dW^(t)), which a sequence sums over its steps.
    """
    X_t, H_prev, H_t, p = cache
    xp = namespace_of(dH_t)
    dA = dH_t * (1.0 - H_t * H_t)  # eq. 22: tanh' = 1 − tanh²
    dH_prev = dA @ p["W_hh"].T  # eq. 23
    dX_t = dA @ p["W_xh"].T  # eq. 24
    grads = {"W_xh": X_t.T @ dA, "W_hh": H_prev.T @ dA, "b_h": xp.sum(dA, axis=0)}  # eq. 24
    return dX_t, dH_prev, grads


# --------------------------------------------------------------------------------------
# a whole sequence, step by step: the teaching path (CS231n's rnn_forward / rnn_backward)


def rnn_forward(
    X: Array, H0: Array, params: Params, *, lengths: Array | None = None
) -> tuple[Array, list[StepCache]]:
    """Run :func:`step_forward` over time: ``Hs`` (T, B, H) and one cache per step.

    ``X`` is (T, B, D) float inputs (one-hot rows for tokens). With ``lengths`` (B,), each
    sequence keeps its state past its end (eq. 25): ``H_t = M_t ⊙ cell + (1 − M_t) ⊙ H_{t-1}``
    with the mask of :func:`npgru.checks.check_lengths`; the caches hold the cell's output.
    :func:`forward` computes the same ``Hs``, faster; this loop is the definition it is
    tested against.
    """
    xp = namespace_of(X, H0)
    T, B = X.shape[:2]
    M = None if lengths is None else check_lengths(lengths, T, B, xp, H0.dtype)
    H_t, Hs, caches = H0, [], []
    for t in range(T):
        C_t, cache = step_forward(X[t, ...], H_t, params)
        H_t = C_t if M is None else M[t, ...] * C_t + (1.0 - M[t, ...]) * H_t  # eq. 25
        Hs.append(H_t)
        caches.append(cache)
    return xp.stack(Hs), caches


def rnn_backward(
    dHs: Array | None,
    caches: list[StepCache],
    dH_last: Array | None = None,
    *,
    lengths: Array | None = None,
) -> tuple[Array, Array, Params]:
    """Backpropagation through time by :func:`step_backward`, from the last step to the first.

    The gradient reaching ``H_t`` is ``dHs[t]`` (from the output at step t) plus the ``dH_prev``
    that step t+1 sends back (eq. 13 of docs/derivation.md); the weight gradients are summed
    over the steps. With ``lengths`` (the same as :func:`rnn_forward`'s), the cell gets
    ``M_t ⊙ dH_t`` and ``(1 − M_t) ⊙ dH_t`` passes straight to H_{t-1} (eq. 26).
    ``dHs`` (T, B, H) or None, ``dH_last`` (B, H) or None (a gradient into the last state
    only). Returns ``dX`` (T, B, D), ``dH0`` (the gradient of the initial state) and the summed
    ``grads``; :func:`backward` gives the same, faster.
    """
    first = caches[0]
    xp = namespace_of(first.H_prev)
    T, (B, _) = len(caches), first.H_prev.shape
    M = None if lengths is None else check_lengths(lengths, T, B, xp, first.H_prev.dtype)
    dH_next = xp.zeros_like(first.H_prev) if dH_last is None else dH_last
    dXs, grads = [], {name: xp.zeros_like(p) for name, p in first.params.items()}
    for t in range(T - 1, -1, -1):
        dH = dH_next if dHs is None else dHs[t, ...] + dH_next  # eq. 13
        dH_cell = dH if M is None else M[t, ...] * dH  # eq. 26
        dX_t, dH_next, g = step_backward(dH_cell, caches[t])
        if M is not None:
            dH_next = dH_next + (1.0 - M[t, ...]) * dH  # eq. 26: past the end, straight on
        dXs.append(dX_t)
        grads = {name: grads[name] + g[name] for name in grads}
    return xp.stack(dXs[::-1]), dH_next, grads


# --------------------------------------------------------------------------------------
# a whole sequence: the fast path


class SeqCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`. Arrays are time-major."""

    X: Array  # (T, B, D) float, or (T, B) int token ids
    Hs: Array  # (T + 1, B, H): Hs[0] = H0, Hs[t + 1] = H_t
    M: Array | None  # (T, B, 1): the mask of eq. 25 (1 before each sequence's end), or None
    params: Params


def _check_sequence(X: Array, H0: Array, params: Params) -> tuple[int, int, Any, bool]:
    """Validate the arguments of a sequence forward; return (D, H, dtype, tokens)."""
    _, D, H, dtype = _check_params(params)
    return D, H, dtype, check_inputs(X, H0, D, H, dtype)


def forward(
    X: Array,
    H0: Array,
    params: Params,
    *,
    lengths: Array | None = None,
    workspace: Workspace | None = None,
) -> tuple[Array, SeqCache]:
    """Run the RNN over a sequence: eq. (21) for t = 1..T (eq. 25 with ``lengths``).

    Args:
        X: inputs (T, B, D), float; or token ids (T, B), int, standing for one-hot rows of
            width D (then the input products are a row gather, not a matrix product).
        H0: initial state (B, H).
        params: the RNN parameters (see :func:`init_params`).
        lengths: ``None`` (every sequence runs all T steps), or (B,) integers in 1..T:
            sequence b ends after ``lengths[b]`` steps and keeps its state from there on
            (eq. 25), so ``Hs[t]`` past the end repeats the last valid state and ``Hs[-1]``
            is each sequence's state at its last valid step. See
            :func:`npgru.checks.check_lengths`.
        workspace: reuse its buffers (see :class:`~npgru.gru.Workspace`); ``None``: fresh
            arrays. The states returned live in the workspace: a second ``forward`` with the
            same workspace overwrites them (copy them to keep them).

    Returns:
        Hs (T, B, H), the states H_1..H_T, and the cache for :func:`backward`.
    """
    D, H, dtype, tokens = _check_sequence(X, H0, params)
    xp = namespace_of(params["W_xh"])
    T, B = X.shape[:2]
    M = None if lengths is None else check_lengths(lengths, T, B, xp, dtype)
    # NumPy would raise a bare IndexError, CuPy would wrap around silently
    if tokens and bool(xp.any((X < 0) | (X >= D))):
        raise ShapeError(f"X holds token ids outside [0, D={D})")

    W_hh = params["W_hh"]
    if tokens:  # the table to gather from: row i is e_i W_xh + b_h
        XW = params["W_xh"] + params["b_h"]
    else:  # the input side of eq. 21 for all steps: one product
        XW = xp.reshape(xp.reshape(X, (T * B, D)) @ params["W_xh"], (T, B, H))
        XW += params["b_h"]
    valid = None if M is None else M > 0.5  # M_t as a selection: exact where M_t is 0 or 1

    Hs = _buffers(workspace)(xp, "Hs", (T + 1, B, H), dtype)
    Hs[0, ...] = H0
    for t in range(T):
        H_prev = Hs[t, ...]
        A = H_prev @ W_hh  # eq. 21: the recurrent product, the only one inside the loop
        A += xp.take(XW, X[t, :], axis=0) if tokens else XW[t, ...]
        H_t = xp.tanh(A)  # eq. 21
        if valid is not None:  # eq. 25: past its end a sequence keeps its state
            H_t = xp.where(valid[t, ...], H_t, H_prev)
        Hs[t + 1, ...] = H_t
    return Hs[1:, ...], SeqCache(X, Hs, M, params)


def _check_backward(
    dHs: Array | None, cache: SeqCache, dH_last: Array | None, grads: Params | None = None
) -> None:
    """Validate the arguments of a sequence backward."""
    _, _, H, dtype = _check_params(cache.params)
    check_upstream(dHs, cache, dH_last, grads, H, dtype)


def backward(
    dHs: Array | None,
    cache: SeqCache,
    dH_last: Array | None = None,
    *,
    workspace: Workspace | None = None,
    grads: Params | None = None,
) -> tuple[Array | None, Array, Params]:
    """Backpropagation through time over the sequence of :func:`forward`.

    The gradient reaching H_t is the one from outside (``dHs[t]``, e.g. the output layer)
    plus the one flowing back from step t+1 (eq. 13 of ``docs/derivation.md``); each step
    then applies eqs. (22) and (23) as :func:`step_backward` does. With lengths, the cell
    gets ``M_t ⊙ dH_t`` and the rest passes straight to H_{t-1} (eq. 26): this is the exact
    gradient of the frozen recurrence of eq. 25, whatever ``dHs`` holds past the end. Only
    the products with the incoming gradient stay inside the time loop: the weight gradients
    are sums over steps (eq. 24), so they are formed after it, one large product each
    (:func:`weight_grads`).

    Args:
        dHs: gradient of the loss with respect to each state H_1..H_T, (T, B, H), or
            ``None`` when the loss depends on the last state only.
        cache: from :func:`forward`.
        dH_last: extra gradient with respect to the last state H_T (B, H), e.g. from the
            next chunk of a sequence, or the gradient of each sequence's last valid state
            when there are lengths; ``None`` for none.
        workspace: reuse its buffers (see :class:`~npgru.gru.Workspace`); ``None``: fresh
            arrays.
        grads: the arrays to write the parameter gradients into, one per parameter with its
            shape and dtype (e.g. views of a :class:`~npgru.flat.FlatDict`); ``None``: new ones.

    Returns:
        dX (T, B, D) (``None`` for token-id inputs; zero past each sequence's end), dH0
        (B, H), and a dict with the gradient of every parameter (the same keys as
        ``params``): ``grads`` itself when given.
    """
    _check_backward(dHs, cache, dH_last, grads)
    Hs, M, params = cache.Hs, cache.M, cache.params
    xp = namespace_of(Hs)
    T, B, H = Hs.shape[0] - 1, Hs.shape[1], Hs.shape[2]
    W_hhT = contiguous(params["W_hh"].T)

    # dA: the gradient at the pre-activation A_t of every step, kept for eq. 24 after the loop
    dA = _buffers(workspace)(xp, "dA", (T, B, H), Hs.dtype)
    # dH_next: the gradient reaching H_t through step t+1; after the loop it is dH0
    dH_next = xp.zeros((B, H), dtype=Hs.dtype) if dH_last is None else dH_last
    for t in range(T - 1, -1, -1):
        H_t = Hs[t + 1, ...]
        dH = dH_next if dHs is None else dHs[t, ...] + dH_next  # eq. 13
        if M is not None:  # eq. 26: the cell's share, and the share that passes it by
            dH_past = (1.0 - M[t, ...]) * dH
            dH = M[t, ...] * dH
        dA_t = 1.0 - H_t * H_t
        dA_t *= dH  # eq. 22 (past the end dH is 0 here, so Hs[t + 1] = H_{t-1} is harmless)
        dA[t, ...] = dA_t
        dH_next = dA_t @ W_hhT  # eq. 23
        if M is not None:
            dH_next += dH_past  # eq. 26
    dX, new = weight_grads(cache, dA)
    if grads is None:
        return dX, dH_next, new
    for name, g in new.items():
        grads[name][...] = g
    return dX, dH_next, grads


def weight_grads(cache: SeqCache, dA: Array) -> tuple[Array | None, Params]:
    """Eq. 24 for all steps at once: the parameter gradients and dX, from the gradients at
    the pre-activations.

    The weight gradients are sums over steps of one-step products, so each is one large
    product over all T·B rows.

    Args:
        cache: from :func:`forward`.
        dA: the gradients at the pre-activations A_t, (T, B, H).

    Returns:
        dX (T, B, D) (``None`` for token-id inputs) and the dict of parameter gradients.
    """
    X, Hs, params = cache.X, cache.Hs, cache.params
    xp = namespace_of(Hs)
    T, B, H = dA.shape
    D = params["W_xh"].shape[0]
    dA_flat = xp.reshape(dA, (T * B, H))
    if X.ndim == 2:  # one-hot inputs: X^T dA adds up the rows of dA of each token
        dW_xh = _one_hot_T(xp.reshape(X, (T * B,)), D, dA.dtype) @ dA_flat
        db_h = xp.sum(dW_xh, axis=0)  # each row of dA went to exactly one token: D rows to add
        dX = None
    else:
        dW_xh = xp.reshape(X, (T * B, D)).T @ dA_flat
        db_h = xp.sum(dA_flat, axis=0)
        dX = xp.reshape(dA_flat @ params["W_xh"].T, (T, B, D))
    dW_hh = xp.reshape(Hs[:-1, ...], (T * B, H)).T @ dA_flat
    return dX, {"W_xh": dW_xh, "W_hh": dW_hh, "b_h": db_h}
