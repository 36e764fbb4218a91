"""Tests of npgru.rnn: the plain tanh RNN, step and sequence, forward and hand-derived
backward, and sequences of different lengths (npgru.checks.check_lengths).

* The sequence functions equal the step loop (rnn_forward / rnn_backward) in float64, with
  float inputs and token ids, with and without lengths.
* Every gradient (each parameter, dX, dH0) agrees with central finite differences in
  float64, with and without lengths.
* With lengths: the state is frozen past each sequence's end, and the gradients are exactly
  those of each sequence run alone for its own length.
* PyTorch's nn.RNN(nonlinearity="tanh") in float64, plain and packed (marked ``torch``).
* array_api_strict gives NumPy's numbers.
* Bad input raises ShapeError or ConfigError with one line.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_STEP, FD_THRESHOLD, one_line, perturb

import npgru
from npgru import checks, gru, rnn
from npgru.errors import ConfigError, NpgruError, ShapeError

D, H, B = 4, 5, 3
LENGTHS = np.array([5, 2, 1])  # for T = 5: one full sequence, one short, one of a single step
TOL = 1e-12


def rnn_params(rng, *, dtype="float64", scale=0.4):
    """RNN parameters with gate-sized random values, so that no gradient is negligible."""
    params = rnn.init_params(D, H, dtype=dtype)
    perturb(params, rng, scale)
    return params


def inputs(rng, T, tokens):
    return rng.integers(0, D, size=(T, B)) if tokens else rng.normal(size=(T, B, D))


def one_hot(X):
    return np.eye(D)[X] if X.ndim == 2 else X


def upstream(rng, T, mode):
    """Random fixed upstream gradients: at every step, at the last state only, or both."""
    dHs = rng.normal(size=(T, B, H)) if mode in ("every", "both") else None
    dH_last = rng.normal(size=(B, H)) if mode in ("last", "both") else None
    return dHs, dH_last


def seq_objective(X, H0, params, dHs, dH_last, lengths=None) -> float:
    """f = Σ Hs ⊙ dHs + Σ H_T ⊙ dH_last, whose gradient backward(dHs, cache, dH_last) is."""
    Hs, _ = rnn.forward(X, H0, params, lengths=lengths)
    f = 0.0
    if dHs is not None:
        f += float(np.sum(Hs * dHs))
    if dH_last is not None:
        f += float(np.sum(Hs[-1] * dH_last))
    return f


def assert_close(actual, expected, what="", tol=TOL):
    """|actual − expected| ≤ tol · max(1, max|expected|), entry by entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    bound = tol * max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= bound, f"{what}: max abs difference {err:.3e} > {bound:.3e}"


def assert_same_backward(got, ref, tol=TOL):
    (dX, dH0, grads), (ref_dX, ref_dH0, ref_grads) = got, ref
    assert_close(dH0, ref_dH0, "dH0", tol)
    if ref_dX is None:
        assert dX is None
    else:
        assert_close(dX, ref_dX, "dX", tol)
    assert list(grads) == list(ref_grads)
    for name in ref_grads:
        assert_close(grads[name], ref_grads[name], name, tol)


# --------------------------------------------------------------------------- init_params


def test_init_params_names_shapes_and_draws():
    p = rnn.init_params(D, H, dtype="float64", seed=11)
    assert tuple(p) == rnn.PARAM_NAMES["tanh"] == ("W_xh", "W_hh", "b_h")
    draws = np.random.default_rng(11)  # N(0, 0.01²) weights in PARAM_NAMES order, zero bias
    np.testing.assert_array_equal(p["W_xh"], draws.normal(0.0, 0.01, size=(D, H)))
    np.testing.assert_array_equal(p["W_hh"], draws.normal(0.0, 0.01, size=(H, H)))
    np.testing.assert_array_equal(p["b_h"], np.zeros(H))
    assert rnn.init_params(D, H)["W_xh"].dtype == np.float32
    big = rnn.init_params(40, 50, dtype="float64", seed=1)
    assert 0.009 < float(np.std(big["W_xh"])) < 0.011
    assert not np.array_equal(big["W_xh"], rnn.init_params(40, 50, seed=2)["W_xh"])


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"variant": "d2l"}, "variant"), ({"variant": None}, "variant"), ({"dtype": "int8"}, "dtype")],
)
def test_init_params_rejects_bad_variant_and_dtype(kwargs, word):
    with pytest.raises(ConfigError, match=word) as info:
        rnn.init_params(D, H, **kwargs)
    one_line(info.value)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_init_params_rejects_bad_sizes(size):
    with pytest.raises(ConfigError) as info:
        rnn.init_params(size, H)
    one_line(info.value)


def test_step_forward_follows_eq_21(rng):
    p = rnn_params(rng)
    X_t, H_prev = rng.normal(size=(B, D)), rng.normal(size=(B, H))
    H_t, cache = rnn.step_forward(X_t, H_prev, p)
    assert_close(H_t, np.tanh(X_t @ p["W_xh"] + H_prev @ p["W_hh"] + p["b_h"]), "H_t", 1e-15)
    assert cache.H_t is H_t and cache.H_prev is H_prev


def test_the_rnn_is_the_gru_with_its_gates_fixed(rng):
    """Z_t = 0 and R_t = 1 (huge gate biases) reduce eqs. 1–4 to eq. 21 (section 14)."""
    p = rnn_params(rng)
    g = {name: np.zeros_like(a) for name, a in gru.init_params(D, H, dtype="float64").items()}
    g.update(W_xh=p["W_xh"], W_hh=p["W_hh"], b_h=p["b_h"], b_z=np.full(H, -800.0))
    g["b_r"] = np.full(H, 800.0)
    X, H0 = rng.normal(size=(4, B, D)), rng.normal(size=(B, H))
    assert_close(gru.forward(X, H0, g)[0], rnn.forward(X, H0, p)[0], "Hs", 1e-14)


# --------------------------------------------------------------------------- sequence == steps


@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
@pytest.mark.parametrize("mode", ["every", "last", "both"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_sequence_equals_the_step_loop(tokens, mode, with_lengths, rng):
    """forward/backward (fused input products, weight gradients after the loop, token ids
    as a row gather) equal rnn_forward/rnn_backward over step_forward/step_backward."""
    T = 5
    params = rnn_params(rng)
    X, H0 = inputs(rng, T, tokens), rng.normal(0.0, 0.5, size=(B, H))
    dHs, dH_last = upstream(rng, T, mode)
    lengths = LENGTHS if with_lengths else None

    Hs, cache = rnn.forward(X, H0, params, lengths=lengths)
    Hs_ref, caches = rnn.rnn_forward(one_hot(X), H0, params, lengths=lengths)
    assert Hs.shape == (T, B, H)
    assert_close(Hs, Hs_ref, "Hs")

    got = rnn.backward(dHs, cache, dH_last)
    ref = rnn.rnn_backward(dHs, caches, dH_last, lengths=lengths)
    if tokens:  # the step loop differentiates the one-hot rows; token ids have no dX
        assert got[0] is None
        ref = (None, *ref[1:])
    assert_same_backward(got, ref)
    assert tuple(got[2]) == rnn.PARAM_NAMES["tanh"]


def test_token_ids_equal_one_hot_inputs(rng):
    T = 4
    params = rnn_params(rng)
    ids, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H))
    dHs, dH_last = upstream(rng, T, "both")
    Hs_ids, c_ids = rnn.forward(ids, H0, params, lengths=[4, 2, 1])
    Hs_1h, c_1h = rnn.forward(one_hot(ids), H0, params, lengths=[4, 2, 1])
    assert_close(Hs_ids, Hs_1h, "Hs", 1e-14)
    got, ref = rnn.backward(dHs, c_ids, dH_last), rnn.backward(dHs, c_1h, dH_last)
    assert_same_backward(got, (None, *ref[1:]), 1e-13)
    Hs_full, _ = rnn.forward(ids, H0, params)
    for dtype in (np.int32, np.uint8):  # any integer dtype is token ids
        np.testing.assert_array_equal(rnn.forward(ids.astype(dtype), H0, params)[0], Hs_full)


# --------------------------------------------------------------------------- finite differences


def test_step_backward_matches_finite_differences(rng):
    params = rnn_params(rng)
    X_t, H_prev, dH_t = rng.normal(size=(B, D)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    _, cache = rnn.step_forward(X_t, H_prev, params)
    dX_t, dH_prev, grads = rnn.step_backward(dH_t, cache)

    def f():
        return float(np.sum(rnn.step_forward(X_t, H_prev, params)[0] * dH_t))

    report = npgru.check_gradients(
        f,
        {**params, "H_prev": H_prev, "X_t": X_t},
        {**grads, "H_prev": dH_prev, "X_t": dX_t},
        h=FD_STEP,
        threshold=FD_THRESHOLD,
    )
    assert report.passed, str(report)


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("mode", ["every", "last", "both"])
@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_backward_matches_finite_differences(T, mode, tokens, with_lengths, rng):
    """Every parameter, dX and dH0, in float64. With lengths the objective reads Hs past the
    end too (a frozen state, eq. 25), so eq. 26's pass-through share is checked as well."""
    params = rnn_params(rng)
    X, H0 = inputs(rng, T, tokens), rng.normal(0.0, 0.5, size=(B, H))
    dHs, dH_last = upstream(rng, T, mode)
    lengths = np.minimum(LENGTHS, T) if with_lengths else None

    _, cache = rnn.forward(X, H0, params, lengths=lengths)
    dX, dH0, grads = rnn.backward(dHs, cache, dH_last)
    checked, analytic = {**params, "H0": H0}, {**grads, "H0": dH0}
    if tokens:
        assert dX is None
    else:
        checked["X"], analytic["X"] = X, dX

    report = npgru.check_gradients(
        lambda: seq_objective(X, H0, params, dHs, dH_last, lengths),
        checked,
        analytic,
        h=FD_STEP,
        threshold=FD_THRESHOLD,
    )
    assert report.passed, str(report)
    assert set(report.entries) == set(checked)
    for name, entry in report.entries.items():  # every gradient is really exercised
        assert abs(entry.analytic) > 1e-6 or abs(entry.numeric) > 1e-6, name


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_states_past_the_end_repeat_the_last_valid_state(tokens, rng):
    T = 5
    params = rnn_params(rng)
    X, H0 = inputs(rng, T, tokens), rng.normal(size=(B, H))
    Hs, _ = rnn.forward(X, H0, params, lengths=LENGTHS)
    full, _ = rnn.forward(X, H0, params)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(Hs[:n, b], full[:n, b])  # before the end: no change
        for t in range(n, T):
            np.testing.assert_array_equal(Hs[t, b], Hs[n - 1, b])  # after: frozen exactly
        alone, _ = rnn.forward(X[:n, b : b + 1], H0[b : b + 1], params)
        assert_close(Hs[-1, b], alone[-1, 0], f"H_T[{b}]")  # the last valid state (B = 1)
    assert not np.allclose(Hs[-1], full[-1])


def test_inputs_past_the_end_change_nothing(rng):
    T = 5
    params = rnn_params(rng)
    X, H0, dHs = rng.normal(size=(T, B, D)), rng.normal(size=(B, H)), rng.normal(size=(T, B, H))
    Hs, cache = rnn.forward(X, H0, params, lengths=LENGTHS)
    dX, dH0, grads = rnn.backward(dHs, cache)
    X2 = X.copy()
    for b, n in enumerate(LENGTHS):
        X2[n:, b] = rng.normal(size=(T - n, D)) * 100.0
        assert not dX[n:, b].any(), "no gradient reaches an input past the end"
    Hs2, cache2 = rnn.forward(X2, H0, params, lengths=LENGTHS)
    np.testing.assert_array_equal(Hs2, Hs)
    dX2, dH02, grads2 = rnn.backward(dHs, cache2)
    np.testing.assert_array_equal(dH02, dH0)
    np.testing.assert_array_equal(dX2, dX)
    for name in grads:
        assert_close(grads2[name], grads[name], name)


@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
def test_gradients_equal_each_sequence_run_alone(tokens, masked, rng):
    """The exact gradient of eq. 25 (eq. 26). With the outputs masked as the layer masks
    them (dHs zero past the end) it is the sum over sequences of each one run alone for its
    length; unmasked, what arrives past the end reaches the last valid state, which every
    later state is."""
    T = 5
    params = rnn_params(rng)
    X, H0 = inputs(rng, T, tokens), rng.normal(size=(B, H))
    dHs, dH_last = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    M = checks.check_lengths(LENGTHS, T, B, np, np.float64)
    if masked:
        dHs = M * dHs
    _, cache = rnn.forward(X, H0, params, lengths=LENGTHS)
    dX, dH0, grads = rnn.backward(dHs, cache, dH_last)

    total = {name: np.zeros_like(p) for name, p in params.items()}
    for b, n in enumerate(LENGTHS):
        row = slice(b, b + 1)
        _, alone = rnn.forward(X[:n, row], H0[row], params)
        late = dH_last[row] + dHs[n:, row].sum(axis=0)  # zero from dHs when masked
        a_dX, a_dH0, a_grads = rnn.backward(dHs[:n, row], alone, late)
        assert_close(dH0[row], a_dH0, f"dH0[{b}]")
        if not tokens:
            assert_close(dX[:n, row], a_dX, f"dX[:{n}, {b}]")
        total = {name: total[name] + a_grads[name] for name in total}
    for name in grads:
        assert_close(grads[name], total[name], name)


def test_lengths_all_T_is_no_lengths(rng):
    T = 4
    params = rnn_params(rng)
    X, H0, dHs = rng.normal(size=(T, B, D)), rng.normal(size=(B, H)), rng.normal(size=(T, B, H))
    Hs, cache = rnn.forward(X, H0, params)
    Hs_L, cache_L = rnn.forward(X, H0, params, lengths=[T] * B)
    np.testing.assert_array_equal(Hs_L, Hs)
    assert_same_backward(rnn.backward(dHs, cache_L), rnn.backward(dHs, cache), 0.0)


def test_check_lengths_gives_the_mask():
    M = checks.check_lengths(np.array([3, 1, 2]), 4, 3, np, np.float32)
    assert M.shape == (4, 3, 1) and M.dtype == np.float32
    np.testing.assert_array_equal(M[..., 0], [[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]])
    for spelling in ([3, 1, 2], (3, 1, 2), np.array([3, 1, 2], dtype=np.uint8)):
        np.testing.assert_array_equal(checks.check_lengths(spelling, 4, 3, np, np.float32), M)


@pytest.mark.parametrize(
    ("lengths", "word"),
    [
        (np.array([5, 2]), "shape"),  # one per sequence
        (np.array([[5, 2, 1]]), "shape"),  # 2-D
        (np.int64(3), "shape"),  # a scalar
        (np.array([5.0, 2.0, 1.0]), "dtype"),  # floats
        (np.array([True, True, True]), "dtype"),  # bools are not lengths
        (np.array([5, 0, 1]), "from 0 to 5"),  # an empty sequence
        (np.array([6, 2, 1]), "from 1 to 6"),  # longer than X
        (np.array([5, -1, 1]), "from -1 to 5"),
        ([5, 2, None], "got list"),
        ("abc", "shape"),
    ],
    ids=repr,
)
def test_bad_lengths_raise_one_line_shape_errors(lengths, word, rng):
    params = rnn_params(rng)
    X, H0 = rng.normal(size=(5, B, D)), rng.normal(size=(B, H))
    with pytest.raises(ShapeError) as info:
        rnn.forward(X, H0, params, lengths=lengths)
    msg = one_line(info.value)
    assert "lengths must be a (B,) = (3,) array of integers in 1..T = 1..5" in msg
    assert word in msg
    with pytest.raises(ShapeError):
        rnn.rnn_forward(X, H0, params, lengths=lengths)


# --------------------------------------------------------------------------- workspace, purity


def test_workspace_gives_the_same_numbers_and_adapts_to_shapes(rng):
    params = rnn_params(rng)
    ws_f, ws_b = rnn.Workspace(), rnn.Workspace()
    for T, Bb, lengths in [(3, 2, None), (3, 2, [1, 3]), (1, 3, None), (4, 2, [4, 2])]:
        X, H0 = rng.normal(size=(T, Bb, D)), rng.normal(size=(Bb, H))
        dHs = rng.normal(size=(T, Bb, H))
        Hs_ref, c_ref = rnn.forward(X, H0, params, lengths=lengths)
        ref = rnn.backward(dHs, c_ref)
        Hs, cache = rnn.forward(X, H0, params, lengths=lengths, workspace=ws_f)
        np.testing.assert_array_equal(Hs, Hs_ref)
        assert_same_backward(rnn.backward(dHs, cache, workspace=ws_b), ref, 0.0)


@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_backward_writes_into_the_grads_given(tokens, rng):
    params = rnn_params(rng)
    X = inputs(rng, 3, tokens)
    _, cache = rnn.forward(X, rng.normal(size=(B, H)), params, lengths=[3, 1, 2])
    dHs = rng.normal(size=(3, B, H))
    ref = rnn.backward(dHs, cache)
    flat = npgru.FlatDict.from_arrays({name: np.full_like(p, np.nan) for name, p in params.items()})
    got = rnn.backward(dHs, cache, grads=flat)
    assert got[2] is flat
    assert_same_backward(got, ref, 0.0)


def test_inputs_are_not_modified(rng):
    params = rnn_params(rng)
    X, H0 = rng.normal(size=(3, B, D)), rng.normal(size=(B, H))
    dHs, dH_last, lengths = rng.normal(size=(3, B, H)), rng.normal(size=(B, H)), np.array([3, 1, 2])
    arrays = (X, H0, dHs, dH_last, lengths, *params.values())
    before = [a.copy() for a in arrays]
    _, cache = rnn.forward(X, H0, params, lengths=lengths)
    rnn.backward(dHs, cache, dH_last)
    _, caches = rnn.rnn_forward(X, H0, params, lengths=lengths)
    rnn.rnn_backward(dHs, caches, dH_last, lengths=lengths)
    for old, new in zip(before, arrays, strict=True):
        np.testing.assert_array_equal(old, new)


def test_float32_stays_float32_and_is_close_to_float64(rng):
    T = 4
    p64 = rnn_params(rng)
    p32 = {name: a.astype(np.float32) for name, a in p64.items()}
    X, H0, dHs = rng.normal(size=(T, B, D)), rng.normal(size=(B, H)), rng.normal(size=(T, B, H))
    Hs64, c64 = rnn.forward(X, H0, p64, lengths=[4, 2, 3])
    Hs32, c32 = rnn.forward(*(a.astype(np.float32) for a in (X, H0)), p32, lengths=[4, 2, 3])
    assert Hs32.dtype == c32.M.dtype == np.float32
    assert_close(Hs32, Hs64, "Hs", 1e-5)
    got = rnn.backward(dHs.astype(np.float32), c32)
    assert got[0].dtype == got[1].dtype == np.float32
    assert all(g.dtype == np.float32 for g in got[2].values())
    assert_same_backward(got, rnn.backward(dHs, c64), 1e-5)


def test_no_upstream_gradient_gives_zero_gradients(rng):
    params = rnn_params(rng)
    _, cache = rnn.forward(rng.normal(size=(2, B, D)), rng.normal(size=(B, H)), params)
    dX, dH0, grads = rnn.backward(None, cache)
    assert not np.any(dX) and not np.any(dH0)
    assert not any(np.any(g) for g in grads.values())


# --------------------------------------------------------------------------- bad input


def bad(fn, *args, error=ShapeError, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, NpgruError)
    return one_line(info.value)


def test_forward_rejects_bad_X_and_H0(rng):
    params = rnn_params(rng)
    X, H0 = rng.normal(size=(2, B, D)), rng.normal(size=(B, H))
    bad(rnn.forward, X[:, :, :-1], H0, params)  # wrong D
    bad(rnn.forward, X.astype(np.float32), H0, params)  # wrong dtype
    bad(rnn.forward, X[0, 0], H0, params)  # 1-D
    bad(rnn.forward, X[:0], H0, params)  # no steps
    bad(rnn.forward, np.zeros((2, B), dtype=bool), H0, params)  # bool is not token ids
    bad(rnn.forward, np.zeros((2, B)), H0, params)  # 2-D float
    bad(rnn.forward, X, H0[:-1], params)
    bad(rnn.forward, X, H0.astype(np.float32), params)
    for value in (D, -1):
        ids = np.zeros((2, B), dtype=np.int64)
        ids[1, 0] = value
        assert "token ids" in bad(rnn.forward, ids, H0, params)
    bad(rnn.step_forward, X, H0, params)  # 3-D X_t
    bad(rnn.step_forward, X[0], H0[:, :-1], params)


@pytest.mark.parametrize("what", ["missing", "extra", "gru", "shape", "mixed dtype", "int"])
def test_forward_and_step_reject_mismatched_params(what, rng):
    p = rnn_params(rng)
    X, H0 = rng.normal(size=(2, B, D)), rng.normal(size=(B, H))
    if what == "missing":
        del p["b_h"]
    elif what == "extra":
        p["b_hh"] = np.zeros(H)
    elif what == "gru":
        p = gru.init_params(D, H, dtype="float64")
    elif what == "shape":
        p["W_hh"] = np.zeros((H, H + 1))
    elif what == "mixed dtype":
        p["b_h"] = p["b_h"].astype(np.float32)
    else:
        p = {name: a.astype(np.int64) for name, a in p.items()}
    bad(rnn.forward, X, H0, p)
    bad(rnn.step_forward, X[0], H0, p)


def test_backward_rejects_bad_upstream_gradients_and_grads(rng):
    params = rnn_params(rng)
    _, cache = rnn.forward(rng.normal(size=(2, B, D)), rng.normal(size=(B, H)), params)
    bad(rnn.backward, np.zeros((3, B, H)), cache)
    bad(rnn.backward, np.zeros((2, B, H), dtype=np.float32), cache)
    bad(rnn.backward, None, cache, np.zeros((B + 1, H)))
    like = {name: np.zeros_like(p) for name, p in params.items()}
    for wrong in ({"W_xh": like["W_xh"]}, like | {"b_h": np.zeros(H + 1)}):
        assert "grads" in bad(rnn.backward, None, cache, grads=wrong)


# --------------------------------------------------------------------------- PyTorch nn.RNN


@pytest.fixture
def torch():
    return pytest.importorskip(
        "torch", reason="PyTorch is a test-only extra: pip install torch==2.13.0"
    )


def from_nn_rnn(module):
    """Our parameters from a 1-layer nn.RNN: W_xh = weight_ihᵀ, W_hh = weight_hhᵀ, and the
    two biases summed into b_h (docs/derivation.md, section 14)."""
    w_ih, w_hh = module.weight_ih_l0.detach(), module.weight_hh_l0.detach()
    b = module.bias_ih_l0.detach() + module.bias_hh_l0.detach()
    return {n: np.ascontiguousarray(a.numpy()) for n, a in (("W_xh", w_ih.T), ("W_hh", w_hh.T),
                                                            ("b_h", b))}  # fmt: skip


def torch_case(torch, rng, T):
    torch.manual_seed(0)
    module = torch.nn.RNN(D, H, nonlinearity="tanh", dtype=torch.float64)
    with torch.no_grad():  # gate-sized weights, so that no gradient is negligible
        for w in module.parameters():
            w.copy_(torch.tensor(rng.normal(0.0, 0.4, size=tuple(w.shape))))
    X, H0 = rng.normal(size=(T, B, D)), rng.normal(0.0, 0.5, size=(B, H))
    C, C_last = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    return module, X, H0, C, C_last


def assert_torch_grads(torch, module, got, tX, tH0):
    dX, dH0, grads = got
    assert_close(dX, tX.grad.numpy(), "dX", 1e-10)
    assert_close(dH0, tH0.grad[0].numpy(), "dH0", 1e-10)
    assert_close(grads["W_xh"], module.weight_ih_l0.grad.numpy().T, "W_xh", 1e-10)
    assert_close(grads["W_hh"], module.weight_hh_l0.grad.numpy().T, "W_hh", 1e-10)
    for bias in ("bias_ih_l0", "bias_hh_l0"):  # b_h = b_ih + b_hh: both get db_h
        assert_close(grads["b_h"], getattr(module, bias).grad.numpy(), bias, 1e-10)


@pytest.mark.torch
@pytest.mark.parametrize("T", [1, 5])
def test_nn_rnn_agrees_in_float64(torch, T, rng):
    module, X, H0, C, C_last = torch_case(torch, rng, T)
    tX = torch.tensor(X, requires_grad=True)
    tH0 = torch.tensor(H0[None], requires_grad=True)
    out, h_n = module(tX, tH0)
    (torch.sum(out * torch.tensor(C)) + torch.sum(h_n[0] * torch.tensor(C_last))).backward()

    params = from_nn_rnn(module)
    Hs, cache = rnn.forward(X, H0, params)
    assert_close(Hs, out.detach().numpy(), "outputs", 1e-10)
    assert_close(Hs[-1], h_n[0].detach().numpy(), "h_n", 1e-10)
    assert_torch_grads(torch, module, rnn.backward(C, cache, C_last), tX, tH0)


@pytest.mark.torch
def test_nn_rnn_on_a_packed_sequence_agrees_in_float64(torch, rng):
    """pack_padded_sequence(enforce_sorted=False): npgru's M ⊙ Hs is pad_packed_sequence's
    output, Hs[-1] is h_n, and with d_out masked every gradient agrees."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, lengths = 5, np.array([2, 5, 1])  # unsorted
    module, X, H0, C, C_last = torch_case(torch, rng, T)
    tX = torch.tensor(X, requires_grad=True)
    tH0 = torch.tensor(H0[None], requires_grad=True)
    packed = pack_padded_sequence(tX, torch.tensor(lengths), enforce_sorted=False)
    out, h_n = module(packed, tH0)
    out, _ = pad_packed_sequence(out, total_length=T)
    (torch.sum(out * torch.tensor(C)) + torch.sum(h_n[0] * torch.tensor(C_last))).backward()

    M = checks.check_lengths(lengths, T, B, np, np.float64)
    Hs, cache = rnn.forward(X, H0, from_nn_rnn(module), lengths=lengths)
    assert_close(M * Hs, out.detach().numpy(), "outputs", 1e-10)
    assert_close(Hs[-1], h_n[0].detach().numpy(), "h_n", 1e-10)
    assert_torch_grads(torch, module, rnn.backward(M * C, cache, C_last), tX, tH0)


# --------------------------------------------------------------------------- array_api_strict


@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_rnn_on_strict_arrays(tokens, with_lengths, rng):
    """The module uses only the array API standard: array_api_strict gives NumPy's numbers
    (as tests/test_array_api.py shows for the GRU)."""
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    be = npgru.get_backend(xps)
    T = 4
    params = rnn_params(rng)
    X, H0 = inputs(rng, T, tokens), rng.normal(size=(B, H))
    dHs, dH_last = upstream(rng, T, "both")
    lengths = np.array([4, 1, 3]) if with_lengths else None

    def same(strict_array, numpy_array, what):
        assert not isinstance(strict_array, np.ndarray), f"{what} fell back to NumPy"
        np.testing.assert_allclose(be.asnumpy(strict_array), numpy_array, rtol=1e-13,
                                   atol=1e-14, err_msg=what)  # fmt: skip

    sp = {name: be.asarray(a) for name, a in params.items()}
    s_lengths = None if lengths is None else be.asarray(lengths)
    Hs, cache = rnn.forward(X, H0, params, lengths=lengths)
    sHs, scache = rnn.forward(be.asarray(X), be.asarray(H0), sp, lengths=s_lengths,
                              workspace=rnn.Workspace())  # fmt: skip
    same(sHs, Hs, "Hs")
    dX, dH0, grads = rnn.backward(dHs, cache, dH_last)
    sdX, sdH0, sgrads = rnn.backward(be.asarray(dHs), scache, be.asarray(dH_last))
    same(sdH0, dH0, "dH0")
    assert (sdX is None) == tokens
    if not tokens:
        same(sdX, dX, "dX")
    for name in grads:
        same(sgrads[name], grads[name], name)

    # the teaching loop too
    Xf = one_hot(X)
    sHs_ref, scaches = rnn.rnn_forward(be.asarray(Xf), be.asarray(H0), sp, lengths=s_lengths)
    same(sHs_ref, Hs, "Hs (steps)")
    _, s_dH0_ref, s_grads_ref = rnn.rnn_backward(
        be.asarray(dHs), scaches, be.asarray(dH_last), lengths=s_lengths
    )
    same(s_dH0_ref, dH0, "dH0 (steps)")
    for name in grads:
        same(s_grads_ref[name], grads[name], f"{name} (steps)")
