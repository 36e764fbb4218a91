"""Tests of npgru.GRULanguageModel: time-major logits, state, truncated BPTT, gradients,
parameters in one flat buffer, seeding, and refusal of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import FD_STEP, FD_THRESHOLD, VARIANTS, one_line, perturb

import npgru
from npgru import gru
from npgru.errors import ConfigError, NpgruError, ShapeError

V, H, B, T = 5, 4, 3, 4


def make(rng, *, num_layers=1, variant="d2l", dtype="float64", seed=0):
    model = npgru.GRULanguageModel(
        V, H, num_layers=num_layers, variant=variant, dtype=dtype, seed=seed
    )
    perturb(model.params, rng)
    return model


def layer_params(model, layer):
    """Layer ``layer``'s parameters by the documented names (suffix ``_l{layer}`` above 0)."""
    suffix = "" if layer == 0 else f"_l{layer}"
    return {n: model.params[n + suffix] for n in gru.PARAM_NAMES[model.variant]}


def manual_forward(model, X, state):
    """Step by step, layer by layer, one-hot inputs; logits stacked time-major by hand."""
    Bb, Tt = X.shape
    Hs = [state[layer].copy() for layer in range(model.num_layers)]
    logits = np.empty((Tt * Bb, model.vocab_size))
    for t in range(Tt):
        x = np.eye(model.vocab_size)[X[:, t]]
        for layer in range(model.num_layers):
            Hs[layer], _ = gru.step_forward(x, Hs[layer], layer_params(model, layer))
            x = Hs[layer]
        for b in range(Bb):
            logits[t * Bb + b] = x[b] @ model.params["W_hq"] + model.params["b_q"]
    return logits, np.stack(Hs)


def direct_loss(logits, labels):
    """−mean log softmax[label], one row at a time with Python's math."""
    total = 0.0
    for row, y in zip(logits, labels, strict=True):
        m = max(row)
        log_z = m + math.log(sum(math.exp(v - m) for v in row))
        total += log_z - row[y]
    return total / len(labels)


def data(rng, Bb=B, Tt=T):
    return rng.integers(0, V, size=(Bb, Tt)), rng.integers(0, V, size=(Bb, Tt))


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_logits_are_time_major_and_new_state_is_the_last_state(variant, num_layers, rng):
    model = make(rng, num_layers=num_layers, variant=variant)
    X, _ = data(rng)
    state = rng.normal(0.0, 0.5, size=(num_layers, B, H))
    logits, new_state = model.forward(X, state)
    ref_logits, ref_state = manual_forward(model, X, state)
    assert logits.shape == (T * B, V)
    assert new_state.shape == (num_layers, B, H)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-13)
    np.testing.assert_allclose(new_state, ref_state, rtol=0, atol=1e-13)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_loss_is_the_mean_cross_entropy_of_the_time_major_logits(num_layers, rng):
    model = make(rng, num_layers=num_layers)
    X, Y = data(rng)
    state = rng.normal(0.0, 0.5, size=(num_layers, B, H))
    loss, _, new_state = model.loss_and_grads(X, Y, state)
    ref_logits, ref_state = manual_forward(model, X, state)
    labels = [int(Y[b, t]) for t in range(T) for b in range(B)]  # Y.T.reshape(-1)
    assert math.isclose(float(loss), direct_loss(ref_logits, labels), rel_tol=1e-13)
    np.testing.assert_allclose(new_state, ref_state, rtol=0, atol=1e-13)


def test_state_carries_over_between_chunks(rng):
    """Two chunks with the state carried equal one long sequence (forward)."""
    model = make(rng, num_layers=2)
    X = rng.integers(0, V, size=(B, 2 * T))
    state = rng.normal(size=(2, B, H))
    whole, s_whole = model.forward(X, state)
    first, s1 = model.forward(X[:, :T], state)
    second, s2 = model.forward(X[:, T:], s1)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=0, atol=1e-13)
    np.testing.assert_allclose(s2, s_whole, rtol=0, atol=1e-13)


def test_begin_state_is_zeros(rng):
    for dtype, np_dtype in (("float32", np.float32), ("float64", np.float64)):
        model = npgru.GRULanguageModel(V, H, num_layers=2, dtype=dtype)
        s = model.begin_state(B)
        assert s.shape == (2, B, H)
        assert s.dtype == np_dtype
        assert not np.any(s)


def test_results_survive_later_calls(rng):
    """Workspaces are reused, but logits, states and grads handed out stay valid."""
    model = make(rng, num_layers=2)
    X1, Y1 = data(rng)
    X2, Y2 = data(rng, Tt=T)
    state = rng.normal(size=(2, B, H))
    loss1, g1, s1 = model.loss_and_grads(X1, Y1, state)
    logits1, _ = model.forward(X1, state)
    kept = (float(loss1), g1.flat.copy(), s1.copy(), logits1.copy())
    model.loss_and_grads(X2, Y2, s1)
    model.forward(X2, state)
    assert float(loss1) == kept[0]
    np.testing.assert_array_equal(g1.flat, kept[1])
    np.testing.assert_array_equal(s1, kept[2])
    np.testing.assert_array_equal(logits1, kept[3])
    # and the same call again gives the same numbers
    loss1b, g1b, s1b = model.loss_and_grads(X1, Y1, state)
    assert float(loss1b) == kept[0]
    np.testing.assert_array_equal(g1b.flat, kept[1])
    np.testing.assert_array_equal(s1b, kept[2])


def test_inputs_are_not_modified(rng):
    model = make(rng, num_layers=2)
    X, Y = data(rng)
    state = rng.normal(size=(2, B, H))
    before = (X.copy(), Y.copy(), state.copy(), model.params.flat.copy())
    model.loss_and_grads(X, Y, state)
    model.forward(X, state)
    for old, new in zip(before, (X, Y, state, model.params.flat), strict=True):
        np.testing.assert_array_equal(old, new)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("steps", [1, T])
def test_loss_and_grads_match_finite_differences(variant, num_layers, steps, rng):
    model = make(rng, num_layers=num_layers, variant=variant)
    X, Y = data(rng, Bb=2, Tt=steps)
    state = rng.normal(0.0, 0.5, size=(num_layers, 2, H))
    _, grads, _ = model.loss_and_grads(X, Y, state)
    assert isinstance(grads, npgru.FlatDict)
    assert list(grads) == list(model.params)

    def f():
        return float(model.loss_and_grads(X, Y, state)[0])

    report = npgru.check_gradients(f, model.params, grads, h=FD_STEP, threshold=FD_THRESHOLD)
    assert report.passed, str(report)
    assert set(report.entries) == set(model.params)


def test_state_gets_no_gradient_truncated_bptt(rng):
    model = make(rng, num_layers=2)
    X, Y = data(rng)
    s1 = rng.normal(size=(2, B, H))
    s2 = rng.normal(size=(2, B, H))
    loss1, g1, _ = model.loss_and_grads(X, Y, s1)
    loss2, g2, _ = model.loss_and_grads(X, Y, s2)
    assert float(loss1) != float(loss2), "the state is an input of the loss"
    assert set(g1) == set(model.params)
    assert set(g2) == set(model.params)
    assert g1.layout == model.params.layout
    assert not np.allclose(g1.flat, g2.flat)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_are_views_of_one_flat_buffer(variant):
    model = npgru.GRULanguageModel(V, H, num_layers=2, variant=variant, dtype="float64")
    params = model.params
    assert isinstance(params, npgru.FlatDict)
    expected = {"W_hq": (H, V), "b_q": (V,)}
    for layer, D in ((0, V), (1, H)):
        suffix = "" if layer == 0 else f"_l{layer}"
        for n in gru.PARAM_NAMES[variant]:
            shape = (D, H) if n.startswith("W_x") else (H, H) if n.startswith("W_h") else (H,)
            expected[n + suffix] = shape
    assert {name: tuple(a.shape) for name, a in params.items()} == expected
    assert params.flat.ndim == 1
    assert params.flat.size == sum(math.prod(s) for s in expected.values())
    for name, a in params.items():
        assert np.shares_memory(a, params.flat), name
    params.flat[...] = np.arange(params.flat.size)
    seen = np.concatenate([params[name].reshape(-1) for name, _ in params.layout])
    np.testing.assert_array_equal(np.sort(seen), np.arange(params.flat.size))
    params["b_q"] = np.full(V, 7.0)
    assert np.count_nonzero(params.flat == 7.0) >= V
    assert params["W_xz"].shape == (V, H)
    assert params["W_xz_l1"].shape == (H, H)


def test_layers_are_seeded_as_documented():
    seed, L = 5, 3
    model = npgru.GRULanguageModel(V, H, num_layers=L, dtype="float64", seed=seed)
    for layer in range(L):
        ref = gru.init_params(V if layer == 0 else H, H, dtype="float64", seed=seed + layer)
        for name, a in ref.items():
            suffix = "" if layer == 0 else f"_l{layer}"
            np.testing.assert_array_equal(model.params[name + suffix], a, err_msg=name + suffix)
    out = np.random.default_rng(seed + L).normal(0.0, 0.01, size=(H, V))
    np.testing.assert_array_equal(model.params["W_hq"], out)
    assert not np.any(model.params["b_q"])


def test_seed_reproducibility():
    a = npgru.GRULanguageModel(V, H, num_layers=2, seed=3)
    b = npgru.GRULanguageModel(V, H, num_layers=2, seed=3)
    c = npgru.GRULanguageModel(V, H, num_layers=2, seed=4)
    assert a.params.flat.dtype == np.float32
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
    assert not np.array_equal(a.params.flat, c.params.flat)
    assert a.params.flat is not b.params.flat


def test_layer0_equals_gru_init_params():
    model = npgru.GRULanguageModel(V, H, variant="reset_after", seed=9)
    ref = gru.init_params(V, H, variant="reset_after", seed=9)
    for name, a in ref.items():
        np.testing.assert_array_equal(model.params[name], a)
        assert model.params[name].dtype == a.dtype


def test_a_few_sgd_steps_fit_one_batch(rng):
    model = npgru.GRULanguageModel(V, 6, dtype="float64", seed=0)
    X, Y = data(rng)
    state = model.begin_state(B)
    first = float(model.loss_and_grads(X, Y, state)[0])
    assert math.isclose(first, math.log(V), rel_tol=1e-3), "small init: uniform predictions"
    for _ in range(200):
        _, grads, _ = model.loss_and_grads(X, Y, state)
        npgru.clip_grad_norm(grads, 1.0)
        npgru.sgd(model.params, grads, 1.0)
    assert float(model.loss_and_grads(X, Y, state)[0]) < 0.5 * first


# --------------------------------------------------------------------------- bad input


def refused(fn, *args, error=ShapeError, **kwargs) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, NpgruError)
    return one_line(info.value)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "4", None])
@pytest.mark.parametrize("arg", ["vocab_size", "num_hiddens", "num_layers"])
def test_bad_sizes_are_refused(arg, value):
    kwargs = {"vocab_size": V, "num_hiddens": H, "num_layers": 1, arg: value}
    V_, H_ = kwargs.pop("vocab_size"), kwargs.pop("num_hiddens")
    msg = refused(npgru.GRULanguageModel, V_, H_, error=ConfigError, **kwargs)
    assert arg in msg


def test_numpy_integer_sizes_are_accepted():
    model = npgru.GRULanguageModel(np.int64(V), np.int32(H), num_layers=np.int64(2))
    assert model.params["W_xz"].shape == (V, H)


def test_bad_variant_dtype_and_batch_size():
    assert "variant" in refused(npgru.GRULanguageModel, V, H, variant="lstm", error=ConfigError)
    assert "dtype" in refused(npgru.GRULanguageModel, V, H, dtype="float16", error=ConfigError)
    model = npgru.GRULanguageModel(V, H)
    refused(model.begin_state, 0, error=ConfigError)
    refused(model.begin_state, 2.0, error=ConfigError)


@pytest.mark.parametrize("value", [V, V + 3, -1])
def test_token_ids_out_of_range(value, rng):
    model = make(rng)
    X, Y = data(rng)
    state = model.begin_state(B)
    Xb = X.copy()
    Xb[1, 2] = value
    refused(model.forward, Xb, state)
    refused(model.loss_and_grads, Xb, Y, state)
    Yb = Y.copy()
    Yb[0, -1] = value
    refused(model.loss_and_grads, X, Yb, state)


def test_bad_inputs_are_named_as_passed(rng):
    model = make(rng)
    X, Y = data(rng)
    state = model.begin_state(B)
    assert "X must be an array" in refused(model.loss_and_grads, X.tolist(), Y, state)
    assert "X must be integer" in refused(model.loss_and_grads, X[0], Y[0], state)
    empty = np.zeros((B, 0), dtype=X.dtype)
    assert f"(B, T) = {(B, 0)}" in refused(model.loss_and_grads, empty, empty, state)
    assert f"(B, T) = {(0, 3)}" in refused(model.forward, np.zeros((0, 3), X.dtype), state)


def test_bad_shapes_and_dtypes(rng):
    model = make(rng, num_layers=2)
    X, Y = data(rng)
    state = model.begin_state(B)
    refused(model.loss_and_grads, X, Y[:, :-1], state)  # Y shape != X shape
    refused(model.loss_and_grads, X, Y.T, state)
    refused(model.loss_and_grads, X, Y.astype(np.float64), state)
    refused(model.forward, X.astype(np.float64), state)  # not token ids
    refused(model.forward, X[0], state)  # 1-D
    refused(model.forward, X[None], state)  # 3-D
    refused(model.forward, X, state[:1])  # wrong number of layers
    refused(model.forward, X, state[:, :-1])  # wrong batch
    refused(model.forward, X, state[:, :, :-1])  # wrong width
    refused(model.forward, X, state.astype(np.float32))  # wrong dtype
