"""The CuPy backend gives NumPy's numbers (float64 to 1e-10, a float32 training step to
float32 accuracy). Marked ``gpu``; skips cleanly unless CuPy imports and a CUDA device answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VARIANTS, perturb, random_params

import npgru
from npgru import gru
from npgru.errors import BackendError

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install npgru[cuda12])")
try:
    BE = npgru.get_backend("cupy")
except BackendError as exc:  # CuPy imports but no device or driver answers
    pytest.skip(f"no usable CUDA device: {exc}", allow_module_level=True)

D, H, B, T, V = 4, 5, 3, 4, 6
TOL = 1e-10


def on_gpu(arrays):
    return {name: BE.asarray(a) for name, a in arrays.items()}


def assert_close(gpu_array, host_array, what, tol=TOL):
    assert isinstance(gpu_array, cupy.ndarray), f"{what} is not a CuPy array"
    got = BE.asnumpy(gpu_array)
    scale = max(1.0, float(np.max(np.abs(host_array))))
    err = float(np.max(np.abs(got - host_array)))
    assert err <= tol * scale, f"{what}: max difference {err:.3e}"


def test_backend_names_the_device(rng):
    assert BE.name == "cupy"
    assert BE.xp is cupy
    assert BE.device.startswith("cuda:")
    host = rng.normal(size=(3, 2))
    np.testing.assert_array_equal(BE.asnumpy(BE.asarray(host)), host)
    assert npgru.get_backend("auto").name == "cupy"


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_params_equal_on_every_backend(variant):
    host = gru.init_params(D, H, variant=variant, seed=4)
    dev = gru.init_params(D, H, variant=variant, seed=4, backend=BE)
    for name in host:
        np.testing.assert_array_equal(BE.asnumpy(dev[name]), host[name])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [False, True], ids=["float", "tokens"])
def test_forward_backward_equal_numpy_float64(variant, tokens, rng):
    params = random_params(D, H, variant, rng)
    X = rng.integers(0, D, size=(T, B)) if tokens else rng.normal(size=(T, B, D))
    H0 = rng.normal(size=(B, H))
    dHs, dH_last = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    Hs, cache = gru.forward(X, H0, params)
    dX, dH0, grads = gru.backward(dHs, cache, dH_last)

    gparams = on_gpu(params)
    gHs, gcache = gru.forward(BE.asarray(X), BE.asarray(H0), gparams)
    assert_close(gHs, Hs, "Hs")
    gdX, gdH0, ggrads = gru.backward(BE.asarray(dHs), gcache, BE.asarray(dH_last))
    assert_close(gdH0, dH0, "dH0")
    if tokens:
        assert gdX is None
    else:
        assert_close(gdX, dX, "dX")
    for name in grads:
        assert_close(ggrads[name], grads[name], name)

    H1, c1 = gru.step_forward(np.eye(D)[X[0]] if tokens else X[0], H0, params)
    gH1, gc1 = gru.step_forward(
        BE.asarray(np.eye(D)[X[0]] if tokens else X[0]), BE.asarray(H0), gparams
    )
    assert_close(gH1, H1, "H_1")
    ref = gru.step_backward(dH_last, c1)
    got = gru.step_backward(BE.asarray(dH_last), gc1)
    assert_close(got[1], ref[1], "dH_prev")
    for name in ref[2]:
        assert_close(got[2][name], ref[2][name], f"step {name}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_loss_and_grads_equal_numpy_float64(variant, num_layers, rng):
    host = npgru.GRULanguageModel(V, H, num_layers=num_layers, variant=variant, dtype="float64")
    perturb(host.params, rng)
    dev = npgru.GRULanguageModel(
        V, H, num_layers=num_layers, variant=variant, dtype="float64", backend=BE
    )
    dev.params.flat[...] = BE.asarray(host.params.flat)
    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    state = rng.normal(size=(num_layers, B, H))
    loss, grads, new_state = host.loss_and_grads(X, Y, state)
    gloss, ggrads, gnew = dev.loss_and_grads(BE.asarray(X), BE.asarray(Y), BE.asarray(state))
    assert abs(float(gloss) - float(loss)) <= TOL * max(1.0, abs(float(loss)))
    assert_close(gnew, new_state, "new_state")
    assert list(ggrads) == list(grads)
    for name in grads:
        assert_close(ggrads[name], grads[name], name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_float32_training_step_matches_numpy(variant, rng):
    host = npgru.GRULanguageModel(V, H, num_layers=2, variant=variant, seed=3)
    dev = npgru.GRULanguageModel(V, H, num_layers=2, variant=variant, seed=3, backend=BE)
    np.testing.assert_array_equal(BE.asnumpy(dev.params.flat), host.params.flat)
    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    results = []
    for model, be in ((host, npgru.get_backend("numpy")), (dev, BE)):
        state = model.begin_state(B)
        loss, grads, state = model.loss_and_grads(be.asarray(X), be.asarray(Y), state)
        norm = npgru.clip_grad_norm(grads, 1e-3)  # small θ: the clipping branch is taken
        npgru.sgd(model.params, grads, 1.0)
        results.append((float(loss), float(norm), be.asnumpy(model.params.flat)))
    (loss, norm, flat), (gloss, gnorm, gflat) = results
    assert gflat.dtype == np.float32
    assert abs(gloss - loss) < 1e-5 * abs(loss)
    assert abs(gnorm - norm) < 1e-4 * norm
    np.testing.assert_allclose(gflat, flat, rtol=1e-4, atol=1e-6)
