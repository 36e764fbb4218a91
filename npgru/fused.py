r"""The fused CPU path (``impl="numba"``): each step's element-wise work as compiled kernels.

On the CPU, a step of :func:`npgru.gru.forward` or :func:`~npgru.gru.backward` is a few
matrix products and about thirty small element-wise NumPy calls, each of which costs more in
dispatch (1.5–2 µs) than in arithmetic at d2l's sizes. This module keeps the products on BLAS
(``np.matmul`` with ``out=``, into buffers reused over the steps) and runs everything else of
a step as one loop over the (B, H) units compiled by Numba:

* forward, reset_after: ``HW = H_{t-1} W_h``, then one kernel for eqs. 1, 2, 3', 4;
* forward, d2l: ``HW = H_{t-1} [W_hz | W_hr]``, a kernel for eqs. 1, 2 and R ⊙ H_{t-1}, the
  product ``(R ⊙ H_{t-1}) W_hh``, a kernel for eqs. 3, 4;
* backward, reset_after: a kernel for eqs. 5–8, 9', 10', 13, the product with W_hᵀ;
* backward, d2l: a kernel for eqs. 5–8 and 13, the product ``dA_h W_hhᵀ`` (eq. 9), a kernel
  for eqs. 10, 11, the product with W_hᵀ.

Token ids are gathered inside the kernels (a row of the table ``W_x + b``). Everything else is
:mod:`npgru.gru`'s: the time loop, the checks, the cache (the same buffers, filled with the
same values) and the weight gradients after the loop (:func:`npgru.gru.weight_grads`), with
two pieces of work around the loop done here instead:

* the backward pass's row-major W_hᵀ and W_hhᵀ are written by :func:`_transpose_into` into
  reused buffers (NumPy's transposed copy is slow, 1.1 ms for d2l's W_hᵀ at H = 512);
* dW_x of token ids, Xᵀ dA for one-hot X, is a scatter-add (:func:`sum_rows_by_token`), not
  the reference's product with the one-hot matrix, whose multiplications by zero cost
  2·V·T·B·3H FLOPs (3 ms a step at B 128, H 512).

:func:`softmax_cross_entropy` is the loss of :mod:`npgru.loss` in two compiled passes (no
one-hot matrix, fewer temporaries), which :class:`~npgru.model.GRULanguageModel` uses with
this path. Only NumPy arrays; ``tests/test_fused.py`` proves all of it equal to the
reference (float64 to 1e-12 relative, float32 to 1e-5).

Numba has no vectorised ``tanh`` for float32 without Intel's SVML, and a scalar libm call per
unit is slower than NumPy; float32 therefore uses :func:`tanh32`'s rational approximation,
at most 6.1 ulp from the correctly rounded tanh (its maximum error on a dense grid is
measured in the tests). float64 uses ``math.tanh``.

Kernels are serial (``parallel=True`` beside a threaded BLAS was much slower) and compiled at
the first call of each dtype (seconds), then cached on disk: next to this file, or where
``NUMBA_CACHE_DIR`` says (Numba falls back to a per-user directory for read-only installs,
and to no cache at all when none is writable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import overload

from npgru import gru
from npgru.errors import ShapeError
from npgru.loss import check_logits

Array = Any

#: The rational approximation of :func:`tanh32`: tanh(x) ≈ x·P(x²)/Q(x²) for |x| ≤ CLAMP
#: (coefficients of x⁰, x², x⁴, …), fitted for relative error on [0, 9]. Beyond CLAMP the
#: float32 tanh is ±1 within an ulp, and the rational there is 1.0 exactly.
TANH_P = (
    9.9999997946468100e-01,
    1.3381072323314810e-01,
    3.4956428510218040e-03,
    2.0609948209656777e-05,
    1.3355780273534006e-08,
)
TANH_Q = (
    1.0,
    4.6714387939794833e-01,
    2.5877192311839835e-02,
    3.2857229054791067e-04,
    7.7770342986008353e-07,
)
CLAMP = 9.0
#: The largest error of :func:`tanh32` measured on 3 million float32 in [0, 9] (tests).
TANH32_MAX_ULP = 6.1


def _jit(func: Callable[..., Any]) -> Any:
    """Serial, vectorisable kernels: ``error_model="numpy"`` (a division must not check for
    zero, or the loop stops vectorising); cached on disk where Numba finds a writable place."""
    try:
        return numba.njit(cache=True, error_model="numpy", nogil=True)(func)
    except RuntimeError:  # no writable cache directory: compile at every start instead
        return numba.njit(cache=False, error_model="numpy", nogil=True)(func)


def _tanh(x):
    """tanh for the kernels: math.tanh in float64, :func:`tanh32`'s rational in float32."""
    return math.tanh(x)


@overload(_tanh)
def _tanh_typed(x):  # numba wants no annotations
    if isinstance(x, types.Float) and x.bitwidth == 32:
        f = np.float32
        p0, p1, p2, p3, p4 = (f(c) for c in TANH_P)
        q0, q1, q2, q3, q4 = (f(c) for c in TANH_Q)
        hi, lo = f(CLAMP), f(-CLAMP)

        def tanh_f32(x):
            # comparisons, not min/max: a NaN passes through to a NaN, as in np.tanh
            c = hi if x > hi else (lo if x < lo else x)
            s = c * c
            return (
                c
                * (p0 + s * (p1 + s * (p2 + s * (p3 + s * p4))))
                / (q0 + s * (q1 + s * (q2 + s * (q3 + s * q4))))
            )

        return tanh_f32
    return lambda x: math.tanh(x)


def _row(XW, X, t, b):
    """The input side of row b at step t: a row of the table for token ids, else XW[t, b]."""
    return XW[X[t, b]] if XW.ndim == 2 else XW[t, b]


@overload(_row)
def _row_typed(XW, X, t, b):
    if XW.ndim == 2:  # the (D, 3H) table W_x + b, X (T, B) token ids
        return lambda XW, X, t, b: XW[X[t, b]]
    return lambda XW, X, t, b: XW[t, b]


@_jit
def tanh32(x: Array) -> Array:
    """The float32 tanh of the kernels, element-wise on a 1-D float32 array (for tests)."""
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        y[i] = _tanh(x[i])
    return y


# --------------------------------------------------------------------------------------
# the kernels: one step t, every row b; 1-D row views inside (LLVM vectorises over j)


@_jit
def _forward_reset_after(t, X, XW, HW, b_hh, Hs, Z, R, H_tilde, G):
    B, H = Z.shape[1], Z.shape[2]
    one, half = Z.dtype.type(1.0), Z.dtype.type(0.5)
    for b in range(B):
        xw, hw = _row(XW, X, t, b), HW[b]
        x_z, x_r, x_h = xw[:H], xw[H : 2 * H], xw[2 * H :]
        h_z, h_r, h_h = hw[:H], hw[H : 2 * H], hw[2 * H :]
        h, h_new = Hs[t, b], Hs[t + 1, b]
        z, r, h_tilde, g = Z[t, b], R[t, b], H_tilde[t, b], G[t, b]
        for j in range(H):  # scalars first, stores last: the rows may alias for all LLVM knows
            z_j = half * (_tanh(half * (x_z[j] + h_z[j])) + one)  # eq. 1
            r_j = half * (_tanh(half * (x_r[j] + h_r[j])) + one)  # eq. 2
            g_j = h_h[j] + b_hh[j]
            h_tilde_j = _tanh(r_j * g_j + x_h[j])  # eq. 3'
            h_new[j] = (h[j] - h_tilde_j) * z_j + h_tilde_j  # eq. 4
            z[j], r[j], g[j], h_tilde[j] = z_j, r_j, g_j, h_tilde_j


@_jit
def _forward_d2l_gates(t, X, XW, HW, Hs, Z, R, RH):
    B, H = Z.shape[1], Z.shape[2]
    one, half = Z.dtype.type(1.0), Z.dtype.type(0.5)
    for b in range(B):
        xw, hw = _row(XW, X, t, b), HW[b]
        x_z, x_r, h_z, h_r = xw[:H], xw[H : 2 * H], hw[:H], hw[H : 2 * H]
        h, z, r, rh = Hs[t, b], Z[t, b], R[t, b], RH[t, b]
        for j in range(H):
            z_j = half * (_tanh(half * (x_z[j] + h_z[j])) + one)  # eq. 1
            r_j = half * (_tanh(half * (x_r[j] + h_r[j])) + one)  # eq. 2
            rh[j] = r_j * h[j]
            z[j], r[j] = z_j, r_j


@_jit
def _forward_d2l_candidate(t, X, XW, A_h, Hs, Z, H_tilde):
    B, H = Z.shape[1], Z.shape[2]
    for b in range(B):
        x_h, a_h = _row(XW, X, t, b)[2 * H :], A_h[b]
        h, h_new, z, h_tilde = Hs[t, b], Hs[t + 1, b], Z[t, b], H_tilde[t, b]
        for j in range(H):
            h_tilde_j = _tanh(a_h[j] + x_h[j])  # eq. 3
            h_new[j] = (h[j] - h_tilde_j) * z[j] + h_tilde_j  # eq. 4
            h_tilde[j] = h_tilde_j


@_jit
def _backward_reset_after(t, dHs, P, direct, Hs, Z, R, H_tilde, G, dA, dG, C):
    B, H = Z.shape[1], Z.shape[2]
    one = Z.dtype.type(1.0)
    outer = dHs.shape[0] > 0
    for b in range(B):
        h, z, r, h_tilde, g = Hs[t, b], Z[t, b], R[t, b], H_tilde[t, b], G[t, b]
        p, d, da, dg, c = P[b], direct[b], dA[t, b], dG[t, b], C[b]
        da_z, da_r, da_h = da[:H], da[H : 2 * H], da[2 * H :]
        c_z, c_r, c_g = c[:H], c[H : 2 * H], c[2 * H :]
        dh_out = dHs[t, b] if outer else d  # unused when not outer
        for j in range(H):
            dh = p[j] + d[j]  # dH_next: through the gates, plus the direct path
            if outer:
                dh = dh_out[j] + dh  # eq. 13
            z_j, r_j, h_tilde_j = z[j], r[j], h_tilde[j]
            omz = one - z_j
            da_h_j = (one - h_tilde_j * h_tilde_j) * (dh * omz)  # eqs. 5, 7
            da_z_j = (h[j] - h_tilde_j) * dh * (z_j * omz)  # eqs. 6, 8
            dg_j = da_h_j * r_j  # eq. 9'
            da_r_j = da_h_j * g[j] * (r_j * (one - r_j))  # eq. 10'
            d[j] = dh * z_j  # eq. 11', the direct path
            da_z[j], da_r[j], da_h[j], dg[j] = da_z_j, da_r_j, da_h_j, dg_j
            c_z[j], c_r[j], c_g[j] = da_z_j, da_r_j, dg_j


@_jit
def _backward_d2l_first(t, dHs, P, direct, dH, Hs, Z, H_tilde, dA):
    B, H = Z.shape[1], Z.shape[2]
    one = Z.dtype.type(1.0)
    outer = dHs.shape[0] > 0
    for b in range(B):
        h, z, h_tilde = Hs[t, b], Z[t, b], H_tilde[t, b]
        p, d, dh, da = P[b], direct[b], dH[b], dA[t, b]
        da_z, da_h = da[:H], da[2 * H :]
        dh_out = dHs[t, b] if outer else d
        for j in range(H):
            dh_j = p[j] + d[j]
            if outer:
                dh_j = dh_out[j] + dh_j  # eq. 13
            z_j, h_tilde_j = z[j], h_tilde[j]
            omz = one - z_j
            da_h[j] = (one - h_tilde_j * h_tilde_j) * (dh_j * omz)  # eqs. 5, 7
            da_z[j] = (h[j] - h_tilde_j) * dh_j * (z_j * omz)  # eqs. 6, 8
            dh[j] = dh_j


@_jit
def _backward_d2l_second(t, dRH, dH, direct, Hs, Z, R, dA):
    B, H = Z.shape[1], Z.shape[2]
    one = Z.dtype.type(1.0)
    for b in range(B):
        h, z, r, drh, dh, d = Hs[t, b], Z[t, b], R[t, b], dRH[b], dH[b], direct[b]
        da_r = dA[t, b][H : 2 * H]
        for j in range(H):
            drh_j, r_j = drh[j], r[j]
            da_r[j] = drh_j * h[j] * (r_j * (one - r_j))  # eq. 10
            d[j] = drh_j * r_j + dh[j] * z[j]  # eq. 11, the two direct paths


@_jit
def _transpose_into(src, dst):
    """dst = srcᵀ, eight rows of src at a time: each pass reads eight values of a column of
    src and writes them side by side into a row of dst. A plain transposed copy (NumPy's)
    walks dst a column at a time, and at H = 512 its rows, 2 KB apart, fall into a few sets
    of the L1 cache: about three times slower."""
    n, m = src.shape
    for i0 in range(0, n, 8):
        i1 = min(i0 + 8, n)
        for j in range(m):
            d = dst[j]
            for i in range(i0, i1):
                d[i] = src[i, j]


@_jit
def _sum_rows(ids, rows, out):
    """out[d] = Σ_{i: ids[i] = d} rows[i], row i added to row ids[i] (a scatter-add); False
    if an id is outside [0, D) (then out is incomplete)."""
    out[...] = 0.0
    D = out.shape[0]
    for i in range(ids.shape[0]):
        d = ids[i]
        if d < 0 or d >= D:  # Numba does not check indices: a wrong one would write anywhere
            return False
        o, r = out[d], rows[i]
        for j in range(r.shape[0]):
            o[j] += r[j]
    return True


@_jit
def _shift_rows(O, y, shifted, peak):
    """shifted = O − (row maximum), peak = the row maxima; False if a label is outside
    [0, V) (then nothing is written)."""
    N, V = O.shape
    for i in range(N):
        if y[i] < 0 or y[i] >= V:
            return False
    for i in range(N):
        o, s = O[i], shifted[i]
        m = o[0]
        for j in range(1, V):
            m = o[j] if o[j] > m else m
        for j in range(V):
            s[j] = o[j] - m
        peak[i] = m
    return True


@_jit
def _softmax_rows(O, y, peak, E):
    """E = exp(shifted) in, dO of eq. 15 out (in place); returns Σ_i −log P_{i, y_i} (eq. 14)
    summed in float64."""
    N, V = E.shape
    n = E.dtype.type(N)
    total = 0.0
    for i in range(N):
        e = E[i]
        S = e[0]
        for j in range(1, V):
            S += e[j]
        total += math.log(S) - (O[i, y[i]] - peak[i])  # −log P = log S − shifted_{i, y_i}
        for j in range(V):
            e[j] = e[j] / S  # P
        e[y[i]] -= 1.0
        for j in range(V):
            e[j] = e[j] / n
    return total


# --------------------------------------------------------------------------------------
# the steps npgru.gru's loops call


def forward_step(
    X: Array,
    XW: Array,
    W_h: Array,
    params: gru.Params,
    Hs: Array,
    Z: Array,
    R: Array,
    H_tilde: Array,
    RH: Array,  # None for reset_after
    G: Array,  # None for d2l
    empty: Callable[..., Array],
) -> Callable[[int], None]:
    """``step(t)`` for :func:`npgru.gru.forward`'s loop: fills Hs[t + 1], Z[t], R[t],
    H_tilde[t] and RH[t] (d2l) or G[t] (reset_after) as the reference lines do.

    ``XW`` is the table W_x + b (D, 3H) for token ids X (T, B), else (T, B, 3H);
    ``empty(xp, name, shape, dtype)`` gives the scratch buffers (see ``gru._buffers``).
    """
    _require_numpy(Hs)
    B, H = Z.shape[1], Z.shape[2]
    HW = empty(np, "fused_HW", (B, W_h.shape[1]), Z.dtype)
    matmul = np.matmul
    if G is not None:
        b_hh = params["b_hh"]

        def step_reset_after(t: int) -> None:
            matmul(Hs[t], W_h, out=HW)
            _forward_reset_after(t, X, XW, HW, b_hh, Hs, Z, R, H_tilde, G)

        return step_reset_after
    W_hh, A_h = params["W_hh"], empty(np, "fused_A_h", (B, H), Z.dtype)

    def step_d2l(t: int) -> None:
        matmul(Hs[t], W_h, out=HW)
        _forward_d2l_gates(t, X, XW, HW, Hs, Z, R, RH)
        matmul(RH[t], W_hh, out=A_h)
        _forward_d2l_candidate(t, X, XW, A_h, Hs, Z, H_tilde)

    return step_d2l


def backward_step(
    dHs: Array | None,
    dH_next: Array,
    cache: gru.SeqCache,
    dA: Array,
    dG: Array | None,
    empty: Callable[..., Array],
) -> Callable[[int], Array | None]:
    """``step(t)`` for :func:`npgru.gru.backward`'s loop: fills dA[t] (and dG[t]) as the
    reference lines do, and returns dH_0 at t = 0 (None before).

    The gradient reaching H_{t-1} is kept in two parts between steps, the product with W_hᵀ
    and the direct paths, which the next step's kernel adds (BLAS cannot add into ``out=``).
    ``dH_next`` (B, H) is the gradient into H_T from beyond the sequence. W_hᵀ of
    :func:`npgru.gru._hidden_T` (and d2l's W_hhᵀ) are written row-major into ``empty``'s
    buffers, tile by tile (BLAS multiplies by a row-major matrix faster than by a transposed
    view, and NumPy's transposed copy is slow).
    """
    _require_numpy(dA)
    _, Hs, Z, R, H_tilde, _, G, params, _ = cache
    B, H, dtype = Z.shape[1], Z.shape[2], Z.dtype
    names = gru.HIDDEN_MATRICES["d2l" if G is None else "reset_after"]
    W_hT = empty(np, "fused_W_hT", (len(names) * H, H), dtype)
    for i, name in enumerate(names):
        _transpose_into(params[name], W_hT[i * H : (i + 1) * H])
    P = empty(np, "fused_P", (B, H), dtype)
    P[...] = 0.0
    direct = empty(np, "fused_direct", (B, H), dtype)
    direct[...] = dH_next
    outer = np.empty((0, B, H), dtype=dtype) if dHs is None else np.ascontiguousarray(dHs)
    matmul = np.matmul
    if G is not None:
        C = empty(np, "fused_C", (B, 3 * H), dtype)

        def step_reset_after(t: int) -> Array | None:
            _backward_reset_after(t, outer, P, direct, Hs, Z, R, H_tilde, G, dA, dG, C)
            matmul(C, W_hT, out=P)  # eq. 11': through the gates and G
            return P + direct if t == 0 else None

        return step_reset_after
    W_hhT = empty(np, "fused_W_hhT", (H, H), dtype)
    _transpose_into(params["W_hh"], W_hhT)
    dH = empty(np, "fused_dH", (B, H), dtype)
    dRH = empty(np, "fused_dRH", (B, H), dtype)

    def step_d2l(t: int) -> Array | None:
        _backward_d2l_first(t, outer, P, direct, dH, Hs, Z, H_tilde, dA)
        matmul(dA[t, :, 2 * H :], W_hhT, out=dRH)  # eq. 9
        _backward_d2l_second(t, dRH, dH, direct, Hs, Z, R, dA)
        matmul(dA[t, :, : 2 * H], W_hT, out=P)  # eq. 11: through the gates
        return P + direct if t == 0 else None

    return step_d2l


def _require_numpy(A: Array) -> None:
    if not isinstance(A, np.ndarray):
        from npgru.errors import BackendError

        raise BackendError(
            f"impl='numba' runs on NumPy arrays only, not {type(A).__module__} arrays: "
            "use impl='reference'"
        )


# --------------------------------------------------------------------------------------
# npgru.gru's signatures, for GRULanguageModel


def forward(
    X: Array, H0: Array, params: gru.Params, *, workspace: gru.Workspace | None = None
) -> tuple[Array, gru.SeqCache]:
    """:func:`npgru.gru.forward` with :func:`forward_step`: the same results and cache."""
    return gru.forward(X, H0, params, workspace=workspace, fused_step=forward_step)


def backward(
    dHs: Array | None,
    cache: gru.SeqCache,
    dH_last: Array | None = None,
    *,
    workspace: gru.Workspace | None = None,
    grads: gru.Params | None = None,
) -> tuple[Array | None, Array, gru.Params]:
    """:func:`npgru.gru.backward` with :func:`backward_step`: the same results."""
    return gru.backward(
        dHs,
        cache,
        dH_last,
        workspace=workspace,
        grads=grads,
        fused_step=backward_step,
        sum_rows=sum_rows_by_token,
    )


def sum_rows_by_token(ids: Array, rows: Array, D: int) -> Array:
    """:func:`npgru.gru.sum_rows_by_token` as a scatter-add: (D, K), row d the sum of the
    rows (N, K) whose id is d, each row added once in order (no product with a one-hot
    matrix, whose multiplications by 0 cost 2·D·N·K FLOPs). ShapeError for an id outside
    [0, D)."""
    out = np.empty((D, rows.shape[1]), dtype=rows.dtype)
    if not _sum_rows(ids, rows, out):
        raise ShapeError(f"token ids must lie in [0, D={D})")
    return out


def softmax_cross_entropy(O: Array, y: Array) -> tuple[Array, Array]:
    """:func:`npgru.loss.softmax_cross_entropy` (eqs. 14, 15) in two compiled passes over the
    logits around one ``np.exp``: the same checks and results, no one-hot matrix and fewer
    temporaries. The loss is summed over the rows in float64."""
    check_logits(O, y)
    _require_numpy(O)
    N, V = O.shape
    E = np.empty(O.shape, dtype=O.dtype)
    peak = np.empty(N, dtype=O.dtype)
    if not _shift_rows(O, y, E, peak):
        raise ShapeError(f"labels must lie in [0, V={V})")
    np.exp(E, out=E)
    total = _softmax_rows(O, y, peak, E)  # E becomes dO
    return O.dtype.type(np.float64(total) / N), E  # N = 0: NaN, as the reference
