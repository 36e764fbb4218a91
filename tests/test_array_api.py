"""Portability: the core runs on ``array_api_strict``, a minimal namespace of the array API
standard, and gives NumPy's numbers. It refuses anything outside the standard, so a pass
proves that gru, loss, optim, FlatDict and the model use only calls that NumPy and CuPy
share (docs/backends.md)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VARIANTS, perturb, random_params

import npgru
from npgru import gru

xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")

D, H, B, T, V = 3, 4, 2, 3, 5


@pytest.fixture(scope="module")
def strict():
    be = npgru.get_backend(xps)
    assert be.xp is xps
    return be


def to_strict(be, arrays):
    return {name: be.asarray(a) for name, a in arrays.items()}


def assert_same(be, strict_array, numpy_array, what=""):
    assert not isinstance(strict_array, np.ndarray), f"{what} fell back to NumPy"
    np.testing.assert_allclose(
        be.asnumpy(strict_array), numpy_array, rtol=1e-13, atol=1e-14, err_msg=what
    )


def test_backend_of_a_namespace(strict, rng):
    assert strict.name == "array_api_strict"
    host = rng.normal(size=(2, 3))
    a = strict.asarray(host)
    assert type(a).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(strict.asnumpy(a), host)
    assert strict.device == "cpu"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_gru_forward_backward_on_strict_arrays(strict, variant, tokens, rng):
    params = random_params(D, H, variant, rng)
    X = rng.integers(0, D, size=(T, B)) if tokens else rng.normal(size=(T, B, D))
    H0 = rng.normal(size=(B, H))
    dHs = rng.normal(size=(T, B, H))
    dH_last = rng.normal(size=(B, H))

    Hs, cache = gru.forward(X, H0, params)
    dX, dH0, grads = gru.backward(dHs, cache, dH_last)

    sp = to_strict(strict, params)
    sHs, scache = gru.forward(strict.asarray(X), strict.asarray(H0), sp)
    assert_same(strict, sHs, Hs, "Hs")
    sdX, sdH0, sgrads = gru.backward(strict.asarray(dHs), scache, strict.asarray(dH_last))
    assert_same(strict, sdH0, dH0, "dH0")
    if tokens:
        assert sdX is None
    else:
        assert_same(strict, sdX, dX, "dX")
    assert list(sgrads) == list(grads)
    for name in grads:
        assert_same(strict, sgrads[name], grads[name], name)

    # the step reference too, with a workspace, and last-state-only gradient
    X0 = np.eye(D)[X[0]] if tokens else X[0]
    H1, c1 = gru.step_forward(X0, H0, params)
    sH1, sc1 = gru.step_forward(strict.asarray(X0), strict.asarray(H0), sp)
    assert_same(strict, sH1, H1, "H_1")
    ref = gru.step_backward(dH_last, c1)
    got = gru.step_backward(strict.asarray(dH_last), sc1)
    assert_same(strict, got[0], ref[0], "dX_t")
    assert_same(strict, got[1], ref[1], "dH_prev")
    for name in ref[2]:
        assert_same(strict, got[2][name], ref[2][name], name)
    _, wcache = gru.forward(strict.asarray(X), strict.asarray(H0), sp, workspace=gru.Workspace())
    _, wdH0, _ = gru.backward(None, wcache, strict.asarray(dH_last), workspace=gru.Workspace())
    _, cache = gru.forward(X, H0, params)
    assert_same(strict, wdH0, gru.backward(None, cache, dH_last)[1], "dH0 (last only)")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_model_loss_and_grads_clip_and_sgd_on_strict_arrays(strict, variant, num_layers, rng):
    ref = npgru.GRULanguageModel(V, H, num_layers=num_layers, variant=variant, dtype="float64")
    perturb(ref.params, rng)
    model = npgru.GRULanguageModel(
        V, H, num_layers=num_layers, variant=variant, dtype="float64", backend=strict
    )
    model.params.flat[...] = strict.asarray(ref.params.flat)
    for name in ref.params:
        assert_same(strict, model.params[name], ref.params[name], f"view {name}")

    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    state = rng.normal(size=(num_layers, B, H))
    loss, grads, new_state = ref.loss_and_grads(X, Y, state)
    sloss, sgrads, snew = model.loss_and_grads(
        strict.asarray(X), strict.asarray(Y), strict.asarray(state)
    )
    assert abs(float(sloss) - float(loss)) < 1e-14
    assert_same(strict, snew, new_state, "new_state")
    assert list(sgrads) == list(grads)
    for name in grads:
        assert_same(strict, sgrads[name], grads[name], name)

    logits, _ = ref.forward(X, state)
    slogits, _ = model.forward(strict.asarray(X), strict.asarray(state))
    assert_same(strict, slogits, logits, "logits")
    zero = model.begin_state(B)
    assert_same(strict, zero, np.zeros((num_layers, B, H)), "begin_state")

    norm = npgru.clip_grad_norm(grads, 0.5)
    snorm = npgru.clip_grad_norm(sgrads, 0.5)
    assert abs(float(snorm) - float(norm)) < 1e-13
    npgru.sgd(ref.params, grads, 0.7)
    npgru.sgd(model.params, sgrads, 0.7)
    for name in ref.params:  # the update reached every named view of the flat buffer
        assert_same(strict, model.params[name], ref.params[name], f"after sgd {name}")


def test_clip_and_sgd_on_plain_dicts_of_strict_arrays(strict, rng):
    shapes = {"W": (3, 4), "b": (4,)}
    params = {n: rng.normal(size=s) for n, s in shapes.items()}
    grads = {n: rng.normal(0.0, 3.0, size=s) for n, s in shapes.items()}
    sparams, sgrads = to_strict(strict, params), to_strict(strict, grads)
    norm = npgru.clip_grad_norm(grads, 1.0)
    snorm = npgru.clip_grad_norm(sgrads, 1.0)
    assert abs(float(snorm) - float(norm)) < 1e-13
    npgru.sgd(params, grads, 0.5)
    npgru.sgd(sparams, sgrads, 0.5)
    for name in shapes:
        assert_same(strict, sgrads[name], grads[name], f"clipped {name}")
        assert_same(strict, sparams[name], params[name], f"updated {name}")


def test_loss_on_strict_arrays(strict, rng):
    O = rng.normal(size=(6, V))
    y = rng.integers(0, V, size=6)
    loss, dO = npgru.softmax_cross_entropy(O, y)
    sloss, sdO = npgru.softmax_cross_entropy(strict.asarray(O), strict.asarray(y))
    assert abs(float(sloss) - float(loss)) < 1e-14
    assert_same(strict, sdO, dO, "dO")


def test_gradient_check_on_strict_arrays(strict, rng):
    """check_gradients perturbs entries by indexing only, which the standard allows."""
    O = strict.asarray(rng.normal(size=(4, V)))
    y = strict.asarray(rng.integers(0, V, size=4))
    _, dO = npgru.softmax_cross_entropy(O, y)
    report = npgru.check_gradients(
        lambda: npgru.softmax_cross_entropy(O, y)[0], {"O": O}, {"O": dO}, threshold=1e-7
    )
    assert report.passed, str(report)
