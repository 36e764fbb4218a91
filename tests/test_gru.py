"""Tests of npgru.gru: the GRU step and sequence, forward and hand-derived backward.

* Every gradient (each parameter, the initial state, the inputs) is checked against central
  finite differences in float64, for both variants, T = 1 and T > 1, gradient entering at
  every step or at the last state only, float inputs and token ids.
* The fused sequence functions equal repeated calls of the one-step teaching reference.
* Bad input raises the specific npgru error with a one-line message.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import FD_STEP, FD_THRESHOLD, VARIANTS, one_line, random_params

import npgru
from npgru import gru
from npgru.errors import ConfigError, NpgruError, ShapeError

D, H, B = 4, 5, 3


def seq_objective(X, H0, params, dHs, dH_last) -> float:
    """f = Σ Hs ⊙ dHs + Σ H_T ⊙ dH_last, whose gradient backward(dHs, cache, dH_last) is."""
    Hs, _ = gru.forward(X, H0, params)
    f = 0.0
    if dHs is not None:
        f += float(np.sum(Hs * dHs))
    if dH_last is not None:
        f += float(np.sum(Hs[-1] * dH_last))
    return f


def upstream(rng, T, mode):
    """Random fixed upstream gradients: at every step, at the last state only, or both."""
    dHs = rng.normal(size=(T, B, H)) if mode in ("every", "both") else None
    dH_last = rng.normal(size=(B, H)) if mode in ("last", "both") else None
    return dHs, dH_last


def assert_close(actual, expected, tol, what=""):
    """|actual − expected| ≤ tol · max(1, max|expected|), entry by entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} != {expected.shape}"
    bound = tol * max(1.0, float(np.max(np.abs(expected))))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= bound, f"{what}: max abs difference {err:.3e} > {bound:.3e}"


# --------------------------------------------------------------------------- init_params


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_params_shapes_dtypes_and_names(variant):
    p = gru.init_params(D, H, variant=variant, dtype="float64", seed=3)
    assert tuple(p) == gru.PARAM_NAMES[variant]
    for name, a in p.items():
        assert a.dtype == np.float64
        if name.startswith("W_x"):
            assert a.shape == (D, H)
        elif name.startswith("W_h"):
            assert a.shape == (H, H)
        else:
            assert a.shape == (H,)
            assert not np.any(a), "biases start at zero"
    assert gru.init_params(D, H, variant=variant)["W_xz"].dtype == np.float32


def test_init_params_draws_like_the_seed_notebook():
    """N(0, 0.01²) weights drawn by NumPy in the seed's order, zero biases."""
    rng = np.random.default_rng(11)
    expected = {}
    for gate in "zrh":
        expected[f"W_x{gate}"] = rng.normal(0.0, 0.01, size=(D, H))
        expected[f"W_h{gate}"] = rng.normal(0.0, 0.01, size=(H, H))
        expected[f"b_{gate}"] = np.zeros(H)
    p = gru.init_params(D, H, dtype="float64", seed=11)
    assert set(p) == set(expected)
    for name in p:
        np.testing.assert_array_equal(p[name], expected[name], err_msg=name)


def test_init_params_scale_and_seed():
    big = gru.init_params(40, 50, dtype="float64", seed=1)
    assert 0.009 < float(np.std(big["W_xz"])) < 0.011
    assert abs(float(np.mean(big["W_hh"]))) < 0.002
    again = gru.init_params(40, 50, dtype="float64", seed=1)
    other = gru.init_params(40, 50, dtype="float64", seed=2)
    for name in big:
        np.testing.assert_array_equal(big[name], again[name])
    assert not np.array_equal(big["W_xz"], other["W_xz"])


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "3", None])
def test_init_params_rejects_bad_sizes(size):
    with pytest.raises(ConfigError) as info:
        gru.init_params(size, H)
    one_line(info.value)
    with pytest.raises(ConfigError) as info:
        gru.init_params(D, size)
    one_line(info.value)


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"variant": "lstm"}, "variant"), ({"dtype": "float16"}, "dtype")]
)
def test_init_params_rejects_bad_variant_and_dtype(kwargs, word):
    with pytest.raises(ConfigError, match=word) as info:
        gru.init_params(D, H, **kwargs)
    one_line(info.value)


def test_sigmoid_is_the_logistic_function_and_never_overflows():
    a = np.linspace(-30, 30, 61)
    # (tanh(a/2) + 1)/2 is exact to round-off in absolute terms (what the gates need)
    np.testing.assert_allclose(gru.sigmoid(a), 1.0 / (1.0 + np.exp(-a)), rtol=1e-14, atol=1e-16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = gru.sigmoid(np.array([-1000.0, 1000.0], dtype=np.float32))
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, [0.0, 1.0])


# --------------------------------------------------------------------------- gradient checks


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_backward_matches_finite_differences(variant, rng):
    params = random_params(D, H, variant, rng)
    X_t = rng.normal(size=(B, D))
    H_prev = rng.normal(0.0, 0.5, size=(B, H))
    dH_t = rng.normal(size=(B, H))
    _, cache = gru.step_forward(X_t, H_prev, params)
    dX_t, dH_prev, grads = gru.step_backward(dH_t, cache)
    assert set(grads) == set(params)

    def f():
        return float(np.sum(gru.step_forward(X_t, H_prev, params)[0] * dH_t))

    inputs = {**params, "H_prev": H_prev, "X_t": X_t}
    report = npgru.check_gradients(
        f, inputs, {**grads, "H_prev": dH_prev, "X_t": dX_t}, h=FD_STEP, threshold=FD_THRESHOLD
    )
    assert report.passed, str(report)
    assert set(report.entries) == set(inputs)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("mode", ["every", "last", "both"])
@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_backward_matches_finite_differences(variant, T, mode, tokens, rng):
    params = random_params(D, H, variant, rng)
    H0 = rng.normal(0.0, 0.5, size=(B, H))
    if tokens:
        X = rng.integers(0, D, size=(T, B))
    else:
        X = rng.normal(size=(T, B, D))
    dHs, dH_last = upstream(rng, T, mode)

    Hs, cache = gru.forward(X, H0, params)
    assert Hs.shape == (T, B, H)
    dX, dH0, grads = gru.backward(dHs, cache, dH_last)
    assert tuple(grads) == tuple(params), "grads has exactly the keys of params, in order"

    inputs = {**params, "H0": H0}
    analytic = {**grads, "H0": dH0}
    if tokens:
        assert dX is None
    else:
        inputs["X"], analytic["X"] = X, dX

    report = npgru.check_gradients(
        lambda: seq_objective(X, H0, params, dHs, dH_last),
        inputs,
        analytic,
        h=FD_STEP,
        threshold=FD_THRESHOLD,
    )
    assert report.passed, str(report)
    assert set(report.entries) == set(inputs)
    # every gradient is really exercised: none of them vanishes
    for name, entry in report.entries.items():
        assert abs(entry.analytic) > 1e-6 or abs(entry.numeric) > 1e-6, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_ids_equal_one_hot_inputs(variant, rng):
    T = 3
    params = random_params(D, H, variant, rng)
    H0 = rng.normal(0.0, 0.5, size=(B, H))
    ids = rng.integers(0, D, size=(T, B))
    one_hot = np.eye(D)[ids]
    dHs, dH_last = upstream(rng, T, "both")
    Hs_ids, cache_ids = gru.forward(ids, H0, params)
    Hs_1h, cache_1h = gru.forward(one_hot, H0, params)
    assert_close(Hs_ids, Hs_1h, 1e-14, "Hs")
    _, dH0_ids, g_ids = gru.backward(dHs, cache_ids, dH_last)
    _, dH0_1h, g_1h = gru.backward(dHs, cache_1h, dH_last)
    assert_close(dH0_ids, dH0_1h, 1e-13, "dH0")
    for name in params:
        assert_close(g_ids[name], g_1h[name], 1e-13, name)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_any_integer_dtype_is_token_ids(dtype, rng):
    params = random_params(D, H, "d2l", rng)
    H0 = rng.normal(size=(B, H))
    ids = rng.integers(0, D, size=(2, B))
    Hs_ref, _ = gru.forward(ids.astype(np.int64), H0, params)
    Hs, _ = gru.forward(ids.astype(dtype), H0, params)
    np.testing.assert_array_equal(Hs, Hs_ref)


# --------------------------------------------------------------------------- sequence == steps


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["every", "last", "both"])
def test_sequence_equals_repeated_steps_float64(variant, mode, rng):
    T = 4
    params = random_params(D, H, variant, rng)
    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(0.0, 0.5, size=(B, H))
    dHs, dH_last = upstream(rng, T, mode)

    Hs, cache = gru.forward(X, H0, params)
    Hs_ref, caches = gru.rnn_forward(X, H0, params)
    assert_close(Hs, Hs_ref, 1e-13, "Hs")

    dX, dH0, grads = gru.backward(dHs, cache, dH_last)
    dX_ref, dH0_ref, grads_ref = gru.rnn_backward(dHs, caches, dH_last)
    assert_close(dX, dX_ref, 1e-13, "dX")
    assert_close(dH0, dH0_ref, 1e-13, "dH0")
    for name in params:
        assert_close(grads[name], grads_ref[name], 1e-13, name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_is_close_to_float64(variant, rng):
    T = 4
    p64 = random_params(D, H, variant, rng)
    p32 = {name: a.astype(np.float32) for name, a in p64.items()}
    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(0.0, 0.5, size=(B, H))
    dHs, dH_last = upstream(rng, T, "both")

    Hs64, c64 = gru.forward(X, H0, p64)
    Hs32, c32 = gru.forward(X.astype(np.float32), H0.astype(np.float32), p32)
    assert Hs32.dtype == np.float32
    assert_close(Hs32, Hs64, 1e-5, "Hs")
    dX64, dH064, g64 = gru.backward(dHs, c64, dH_last)
    dX32, dH032, g32 = gru.backward(dHs.astype(np.float32), c32, dH_last.astype(np.float32))
    assert dX32.dtype == dH032.dtype == np.float32
    assert_close(dX32, dX64, 1e-5, "dX")
    assert_close(dH032, dH064, 1e-5, "dH0")
    for name in p64:
        assert g32[name].dtype == np.float32, name
        assert_close(g32[name], g64[name], 1e-5, name)

    # the step functions agree in float32 too
    _, caches32 = gru.rnn_forward(X.astype(np.float32), H0.astype(np.float32), p32)
    _, dH0_steps, g_steps = gru.rnn_backward(
        dHs.astype(np.float32), caches32, dH_last.astype(np.float32)
    )
    assert_close(dH0_steps, dH064, 1e-5, "dH0 (steps)")
    for name in p64:
        assert_close(g_steps[name], g64[name], 1e-5, name)


def test_variants_differ(rng):
    """reset_after is not d2l with an extra bias: with b_hh = 0 the two still differ."""
    d2l = random_params(D, H, "d2l", rng)
    after = {**{k: v.copy() for k, v in d2l.items()}, "b_hh": np.zeros(H)}
    X = rng.normal(size=(2, B, D))
    H0 = rng.normal(size=(B, H))
    assert not np.allclose(gru.forward(X, H0, d2l)[0], gru.forward(X, H0, after)[0])


def test_step_forward_follows_the_equations(rng):
    """One step written out from docs/derivation.md (section 2), apart from the library."""

    def sig(a):
        return 1.0 / (1.0 + np.exp(-a))

    for variant in VARIANTS:
        p = random_params(D, H, variant, rng)
        X_t, H_prev = rng.normal(size=(B, D)), rng.normal(size=(B, H))
        Z = sig(X_t @ p["W_xz"] + H_prev @ p["W_hz"] + p["b_z"])
        R = sig(X_t @ p["W_xr"] + H_prev @ p["W_hr"] + p["b_r"])
        if variant == "d2l":
            cand = np.tanh(X_t @ p["W_xh"] + (R * H_prev) @ p["W_hh"] + p["b_h"])
        else:
            cand = np.tanh(X_t @ p["W_xh"] + p["b_h"] + R * (H_prev @ p["W_hh"] + p["b_hh"]))
        expected = Z * H_prev + (1 - Z) * cand
        H_t, _ = gru.step_forward(X_t, H_prev, p)
        assert_close(H_t, expected, 1e-14, variant)


# --------------------------------------------------------------------------- workspaces, purity


@pytest.mark.parametrize("variant", VARIANTS)
def test_workspace_gives_the_same_numbers_and_adapts_to_shapes(variant, rng):
    params = random_params(D, H, variant, rng)
    ws_f, ws_b = gru.Workspace(), gru.Workspace()
    for T, Bb in [(3, 2), (3, 2), (1, 3), (4, 2)]:
        X = rng.normal(size=(T, Bb, D))
        H0 = rng.normal(size=(Bb, H))
        dHs = rng.normal(size=(T, Bb, H))
        Hs_ref, c_ref = gru.forward(X, H0, params)
        ref = gru.backward(dHs, c_ref)
        Hs, cache = gru.forward(X, H0, params, workspace=ws_f)
        np.testing.assert_array_equal(Hs, Hs_ref)
        got = gru.backward(dHs, cache, workspace=ws_b)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        for name in params:
            np.testing.assert_array_equal(got[2][name], ref[2][name])


@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_are_not_modified(variant, rng):
    T = 3
    params = random_params(D, H, variant, rng)
    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(size=(B, H))
    dHs, dH_last = upstream(rng, T, "both")
    before = [a.copy() for a in (X, H0, dHs, dH_last, *params.values())]
    _, cache = gru.forward(X, H0, params)
    gru.backward(dHs, cache, dH_last)
    _, cache = gru.forward(X, H0, params)
    gru.backward(None, cache, dH_last)
    _, step_cache = gru.step_forward(X[0], H0, params)
    gru.step_backward(dH_last, step_cache)
    for old, new in zip(before, (X, H0, dHs, dH_last, *params.values()), strict=True):
        np.testing.assert_array_equal(old, new)


def test_no_upstream_gradient_gives_zero_gradients(rng):
    params = random_params(D, H, "d2l", rng)
    _, cache = gru.forward(rng.normal(size=(2, B, D)), rng.normal(size=(B, H)), params)
    dX, dH0, grads = gru.backward(None, cache, None)
    assert not np.any(dX)
    assert not np.any(dH0)
    assert not any(np.any(g) for g in grads.values())


# --------------------------------------------------------------------------- bad input


def bad(fn, *args, error=ShapeError, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, NpgruError)
    return one_line(info.value)


@pytest.fixture
def setup(rng):
    params = random_params(D, H, "d2l", rng)
    X = rng.normal(size=(2, B, D))
    H0 = rng.normal(size=(B, H))
    return params, X, H0


def test_forward_rejects_bad_X(setup):
    params, X, H0 = setup
    bad(gru.forward, X[:, :, :-1], H0, params)  # wrong D
    bad(gru.forward, X.astype(np.float32), H0, params)  # wrong dtype
    bad(gru.forward, X[0, 0], H0, params)  # 1-D
    bad(gru.forward, X[:0], H0, params)  # no steps
    bad(gru.forward, X.astype(np.int64), H0, params)  # int but 3-D
    bad(gru.forward, np.zeros((2, B), dtype=bool), H0, params)  # bool is not token ids
    bad(gru.forward, np.zeros((2, B), dtype=np.float64), H0, params)  # 2-D float


def test_forward_rejects_bad_H0(setup):
    params, X, H0 = setup
    bad(gru.forward, X, H0[:-1], params)
    bad(gru.forward, X, H0[:, :-1], params)
    bad(gru.forward, X, H0[0], params)
    bad(gru.forward, X, H0.astype(np.float32), params)


def test_forward_rejects_token_ids_out_of_range(setup):
    """Ids ≥ D or < 0 must not be gathered (NumPy raises IndexError, negative ids and CuPy
    wrap around silently): a ShapeError names the range."""
    params, _, H0 = setup
    for value in (D, -1):
        ids = np.zeros((2, B), dtype=np.int64)
        ids[1, 0] = value
        bad(gru.forward, ids, H0, params)


@pytest.mark.parametrize("what", ["missing", "extra", "shape", "mixed dtype", "int dtype"])
def test_forward_and_step_reject_mismatched_params(setup, what):
    params, X, H0 = setup
    p = dict(params)
    if what == "missing":
        del p["W_hr"]
    elif what == "extra":
        p["W_hq"] = np.zeros((H, D))
    elif what == "shape":
        p["W_hz"] = np.zeros((H, H + 1))
    elif what == "mixed dtype":
        p["b_r"] = p["b_r"].astype(np.float32)
    else:
        p = {name: a.astype(np.int64) for name, a in p.items()}
    bad(gru.forward, X, H0, p)
    bad(gru.step_forward, X[0], H0, p)


def test_reset_after_params_without_b_hh_are_refused(rng):
    p = random_params(D, H, "reset_after", rng)
    del p["b_hh"]
    p["b_extra"] = np.zeros(H)
    bad(gru.forward, rng.normal(size=(1, B, D)), rng.normal(size=(B, H)), p)


def test_step_forward_rejects_bad_shapes(setup):
    params, X, H0 = setup
    bad(gru.step_forward, X, H0, params)  # 3-D X_t
    bad(gru.step_forward, X[0, :, :-1], H0, params)
    bad(gru.step_forward, X[0].astype(np.float32), H0, params)
    bad(gru.step_forward, X[0], H0[:-1], params)
    bad(gru.step_forward, X[0], H0.astype(np.float32), params)


def test_backward_rejects_bad_upstream_gradients(setup):
    params, X, H0 = setup
    _, cache = gru.forward(X, H0, params)
    T = X.shape[0]
    bad(gru.backward, np.zeros((T + 1, B, H)), cache)
    bad(gru.backward, np.zeros((T, B, H), dtype=np.float32), cache)
    bad(gru.backward, None, cache, np.zeros((B + 1, H)))
    bad(gru.backward, None, cache, np.zeros((B, H), dtype=np.float32))


def test_backward_rejects_grads_unlike_the_params(setup):
    params, X, H0 = setup
    _, cache = gru.forward(X, H0, params)
    like = {name: np.zeros_like(p) for name, p in params.items()}
    for wrong in (
        {k: v for k, v in like.items() if k != "b_h"},  # a parameter missing
        like | {"b_hh": np.zeros(H)},  # one too many
        like | {"W_hz": np.zeros((H, H + 1))},
        like | {"W_hz": like["W_hz"].astype(np.float32)},
        like | {"b_z": list(like["b_z"])},
    ):
        assert "grads" in bad(gru.backward, None, cache, np.zeros((B, H)), grads=wrong)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_backward_writes_into_the_grads_given(variant, tokens, rng):
    """``grads=`` receives exactly the gradients a plain call returns, in the arrays given
    (views of one buffer here, as the model passes); every element is written."""
    params = random_params(D, H, variant, rng)
    X = rng.integers(0, D, size=(3, B)) if tokens else rng.normal(size=(3, B, D))
    _, cache = gru.forward(X, rng.normal(size=(B, H)), params)
    dHs = rng.normal(size=(3, B, H))
    dX, dH0, ref = gru.backward(dHs, cache)
    flat = npgru.FlatDict.from_arrays({name: np.full_like(p, np.nan) for name, p in params.items()})
    got = gru.backward(dHs, cache, grads=flat)
    assert got[2] is flat
    assert (got[0] is None) == (dX is None) == tokens
    if not tokens:
        np.testing.assert_array_equal(got[0], dX)
    np.testing.assert_array_equal(got[1], dH0)
    for name in params:
        np.testing.assert_array_equal(flat[name], ref[name])


def test_a_workspace_reused_across_dtypes_gives_each_call_its_dtype(rng):
    p64 = random_params(D, H, "d2l", rng)
    p32 = {k: a.astype(np.float32) for k, a in p64.items()}
    X, H0, dHs = rng.normal(size=(3, B, D)), rng.normal(size=(B, H)), rng.normal(size=(3, B, H))
    ws_f, ws_b = gru.Workspace(), gru.Workspace()
    _, c64 = gru.forward(X, H0, p64, workspace=ws_f)
    gru.backward(dHs, c64, workspace=ws_b)
    Hs, c32 = gru.forward(X.astype(np.float32), H0.astype(np.float32), p32, workspace=ws_f)
    dX, dH0, grads = gru.backward(dHs.astype(np.float32), c32, workspace=ws_b)
    assert Hs.dtype == c32.Z.dtype == dX.dtype == dH0.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_token_ids_give_float32_gradients(variant, rng):
    p32 = random_params(D, H, variant, rng, dtype="float32")
    X = rng.integers(0, D, size=(3, B))
    _, cache = gru.forward(X, rng.normal(size=(B, H)).astype(np.float32), p32)
    dX, dH0, grads = gru.backward(rng.normal(size=(3, B, H)).astype(np.float32), cache)
    assert dX is None and dH0.dtype == np.float32
    for name, g in grads.items():
        assert g.dtype == np.float32, name
