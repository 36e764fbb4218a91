"""The fused CPU path (impl="numba", npgru.fused) equals the reference of npgru.gru.

Forward, loss, every gradient and the new state, for both variants, 1–3 layers, with and
without dropout (the same masks: the same generator state), float64 to 1e-12 and float32 to
1e-5 relative; the fused loss, scatter-add and transposes on their own; and the float32 tanh
of the kernels within its documented error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from npgru import GRULanguageModel, gru
from npgru import layer as layer_module
from npgru.backend import get_backend
from npgru.errors import BackendError, ConfigError, ShapeError

HAVE_NUMBA = layer_module.numba_installed()
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="Numba is not installed (npgru[fast])")
TOL = {"float64": 1e-12, "float32": 1e-5}


def rel_err(ref: Any, got: Any) -> float:
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(ref - got)) / max(np.max(np.abs(ref)), 1e-300))


def twin_models(variant: str, layers: int, dtype: str) -> tuple[Any, Any]:
    """The reference and the fused model with the same, not small, parameters (gates away
    from 1/2, so that every term of the equations matters)."""
    V, H = 11, 9
    ref, fused = (
        GRULanguageModel(V, H, num_layers=layers, variant=variant, dtype=dtype, seed=3, impl=impl)
        for impl in ("reference", "numba")
    )
    rng = np.random.default_rng(7)
    ref.params.flat[...] = rng.normal(0.0, 0.6, ref.params.flat.shape)
    fused.params.flat[...] = ref.params.flat
    return ref, fused


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("variant", ["d2l", "reset_after"])
def test_model_equals_the_reference(variant: str, layers: int, dropout: float, dtype: str) -> None:
    ref, fused = twin_models(variant, layers, dtype)
    assert (ref.impl, fused.impl) == ("reference", "numba")
    rng = np.random.default_rng(1)
    B, T = 4, 6
    for _ in range(2):  # twice: the second call reuses the workspaces of the first
        X = rng.integers(0, 11, (B, T))
        Y = rng.integers(0, 11, (B, T))
        state = rng.normal(0.0, 0.5, (layers, B, 9)).astype(dtype)
        seed = int(rng.integers(1 << 30))
        outs = [
            m.loss_and_grads(X, Y, state, dropout=dropout, rng=np.random.default_rng(seed))
            for m in (ref, fused)
        ]
        (loss_r, grads_r, state_r), (loss_f, grads_f, state_f) = outs
        tol = TOL[dtype]
        assert rel_err(loss_r, loss_f) < tol
        assert rel_err(state_r, state_f) < tol
        assert set(grads_r) == set(grads_f)
        for name in grads_r:
            assert rel_err(grads_r[name], grads_f[name]) < tol, name
        logits_r, _ = ref.forward(X, state)
        logits_f, _ = fused.forward(X, state)
        assert rel_err(logits_r, logits_f) < tol
        assert rel_err(ref.loss(X, Y, state)[0], fused.loss(X, Y, state)[0]) < tol


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tokens", [True, False])
@pytest.mark.parametrize("variant", ["d2l", "reset_after"])
def test_sequence_equals_the_reference(variant: str, tokens: bool, dtype: str) -> None:
    """npgru.fused.forward/backward against npgru.gru's: dense inputs (dX), a gradient into
    the last state, int32 ids, and no dHs at all."""
    from npgru import fused

    rng = np.random.default_rng(2)
    T, B, D, H = 5, 3, 7, 6
    p = gru.init_params(D, H, variant=variant, dtype=dtype, seed=1)
    p = {k: (v + rng.normal(0.0, 0.6, v.shape)).astype(dtype) for k, v in p.items()}
    X = rng.integers(0, D, (T, B)).astype(np.int32) if tokens else rng.normal(size=(T, B, D))
    X = X if tokens else X.astype(dtype)
    H0 = rng.normal(size=(B, H)).astype(dtype)
    Hs_r, cache_r = gru.forward(X, H0, p)
    Hs_f, cache_f = fused.forward(X, H0, p)
    tol = TOL[dtype]
    assert rel_err(Hs_r, Hs_f) < tol
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dH_last = rng.normal(size=(B, H)).astype(dtype)
    for args in ((dHs, dH_last), (None, dH_last), (dHs, None)):
        dX_r, dH0_r, g_r = gru.backward(args[0], cache_r, args[1])
        dX_f, dH0_f, g_f = fused.backward(args[0], cache_f, args[1])
        assert rel_err(dH0_r, dH0_f) < tol
        assert (dX_r is None) == (dX_f is None) == tokens
        if not tokens:
            assert rel_err(dX_r, dX_f) < tol
        for name in g_r:
            assert rel_err(g_r[name], g_f[name]) < tol, name


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_loss_equals_the_reference(dtype: str) -> None:
    """The fused softmax cross-entropy: the loss, dO, the dtype of both, and the same
    one-line errors for bad labels."""
    from npgru import fused, loss

    rng = np.random.default_rng(4)
    for N, V in ((1, 1), (7, 5), (300, 28)):
        O = (rng.normal(0.0, 3.0, (N, V)) + rng.normal(0.0, 30.0, (N, 1))).astype(dtype)
        y = rng.integers(0, V, N)
        loss_r, dO_r = loss.softmax_cross_entropy(O, y)
        loss_f, dO_f = fused.softmax_cross_entropy(O, y)
        assert rel_err(loss_r, loss_f) < TOL[dtype]
        assert rel_err(dO_r, dO_f) < TOL[dtype]
        assert np.asarray(loss_f).dtype == dO_f.dtype == np.dtype(dtype)
        assert dO_f.shape == (N, V)
    for bad in (-1, 28):
        y[3] = bad
        with pytest.raises(ShapeError, match=r"labels must lie in \[0, V=28\)"):
            fused.softmax_cross_entropy(O, y)
    with pytest.raises(ShapeError, match="labels must be integers"):
        fused.softmax_cross_entropy(O, y[:-1])
    O[5, 2] = np.nan  # a NaN logit is a NaN loss, as in the reference (divergence is seen)
    assert np.isnan(fused.softmax_cross_entropy(O, np.zeros(300, dtype=np.int64))[0])


@needs_numba
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scatter_add_and_transpose_equal_numpy(dtype: str) -> None:
    """The fused path's dW_x (a scatter-add, not a one-hot product) and its row-major W_hᵀ,
    for sizes that are not multiples of the kernels' blocks."""
    from npgru import fused

    rng = np.random.default_rng(5)
    ids = rng.integers(0, 13, 1000).astype(np.int32)
    rows = rng.normal(size=(1000, 37)).astype(dtype)
    ref = gru.sum_rows_by_token(ids, rows, 15)  # ids 13 and 14 never occur: zero rows
    got = fused.sum_rows_by_token(ids, rows, 15)
    assert got.dtype == rows.dtype and got.shape == (15, 37)
    assert rel_err(ref, got) < TOL[dtype] and not got[13:].any()
    for bad in (-1, 15):
        ids[-1] = bad
        with pytest.raises(ShapeError, match=r"token ids must lie in \[0, D=15\)"):
            fused.sum_rows_by_token(ids, rows, 15)
    for shape in ((1, 1), (5, 3), (19, 19), (40, 9)):
        W = rng.normal(size=shape).astype(dtype)
        out = np.full((shape[1] + 2, shape[0]), np.nan, dtype=dtype)
        fused._transpose_into(W, out[1:-1])
        assert np.array_equal(out[1:-1], W.T) and np.isnan(out[[0, -1]]).all()


@needs_numba
def test_tanh32_error_is_what_the_docs_say() -> None:
    from npgru import fused

    x = np.concatenate(
        [
            np.linspace(0.0, 12.0, 3_000_001, dtype=np.float32),
            np.geomspace(1e-38, 1.0, 200_001).astype(np.float32),
        ]
    )
    x = np.concatenate([x, -x])
    y = fused.tanh32(x).astype(np.float64)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    worst = float(np.max(np.abs(y - exact) / ulp))
    assert worst <= fused.TANH32_MAX_ULP
    assert worst > fused.TANH32_MAX_ULP - 1  # the documented figure is measured, not loose
    edge = fused.tanh32(np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4], dtype=np.float32))
    assert edge[0] == 1.0 and edge[1] == -1.0 and np.isnan(edge[2]) and edge[5] == 1.0
    assert edge[3] == 0.0 and np.signbit(edge[4])


@needs_numba
def test_auto_takes_numba_on_numpy() -> None:
    assert GRULanguageModel(5, 4).impl == "numba"
    assert GRULanguageModel(5, 4, impl="reference").impl == "reference"


def test_auto_without_numba_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layer_module, "numba_installed", lambda: False)
    assert GRULanguageModel(5, 4).impl == "reference"
    with pytest.raises(BackendError, match=r"pip install 'npgru\[fast\]'"):
        GRULanguageModel(5, 4, impl="numba")


def test_numba_on_another_backend_is_a_config_error() -> None:
    strict = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    with pytest.raises(ConfigError, match="numpy backend only"):
        layer_module.resolve_impl("numba", get_backend(strict))
