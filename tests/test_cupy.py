"""The CuPy backend gives NumPy's numbers (float64 to 1e-10, a float32 training step to
float32 accuracy). Marked ``gpu``; skips cleanly unless CuPy imports and a CUDA device answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    VARIANTS,
    assert_same_backward,
    assert_same_cache,
    perturb,
    random_params,
    sequence_case,
)
from conftest import assert_rel as assert_rel_host

import npgru
from npgru import gru
from npgru.errors import BackendError

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'npgru[cuda12]')")
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


# ------------------------------------------------------------------------------------------
# the CUDA path (npgru.cuda) equals the reference path (npgru.gru), to round-off

from npgru import cuda  # noqa: E402

#: the largest difference allowed, relative to the largest magnitude of the reference
CUDA_TOL = {"float64": 1e-12, "float32": 1e-5}


def assert_rel(got, ref, what, tol):
    assert isinstance(got, cupy.ndarray), f"{what} is not a CuPy array"
    assert_rel_host(BE.asnumpy(got), ref, what, tol)


# (T, B, H, D): odd sizes (1s, H 257 across a tile edge, B 70 with tiles of 8 rows, T 200,
# D 40 in three work items of token_grads) beside d2l's (35, 32, 256, 28)
CUDA_SIZES = [
    (4, 3, 5, 6),
    (1, 1, 1, 3),
    (35, 32, 256, 28),
    (3, 5, 257, 7),
    (200, 2, 8, 5),
    (6, 70, 33, 4),
    (8, 9, 33, 40),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("size", CUDA_SIZES, ids=lambda s: "T{}-B{}-H{}-D{}".format(*s))
@pytest.mark.parametrize("weights", ["auto", "global"])
def test_cuda_forward_backward_equal_reference(variant, dtype, tokens, size, weights, rng,
                                               monkeypatch):  # fmt: skip
    """With the recurrent weights on chip where they fit (all these sizes on an H100), and
    read from global memory (the path of sizes whose weights do not fit)."""
    if weights == "global":
        monkeypatch.setattr(cuda, "_slab", lambda *args: 0)
    (X, H0, dHs, dH_last, params), (Hs, cache), (dX, dH0, grads) = sequence_case(
        size, variant, dtype, tokens, rng
    )

    gX, gparams = BE.asarray(X), on_gpu(params)
    tol = CUDA_TOL[dtype]
    gHs, gcache = cuda.forward(gX, BE.asarray(H0), gparams)
    assert_rel(gHs, Hs, "Hs", tol)
    assert_same_cache(gcache, cache, tol, BE.asnumpy)
    assert (dX is None) == tokens
    out = {name: BE.asarray(np.full_like(p, np.nan)) for name, p in params.items()}  # all written
    got = cuda.backward(BE.asarray(dHs), gcache, BE.asarray(dH_last), grads=out)
    assert got[2] is out
    assert_same_backward(got, (dX, dH0, grads), tol, BE.asnumpy)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_weights_on_chip_give_the_same_bits(variant, dtype, rng, monkeypatch):
    """At d2l's size the kernels keep their columns of the recurrent weights in shared
    memory; read from global memory they must give the same bits (the same sums in the
    same order, only the place the weights are read from differs)."""
    T, B, H, D = 35, 32, 256, 28
    for name in ("gru_forward", "gru_backward"):
        kernel, tiles = cuda._gru_kernel(name, dtype, B, H)
        if not cuda._slab(kernel, cupy, tiles, H, dtype):
            pytest.skip(f"this GPU has no room for {kernel}'s weights on chip at d2l's size")
    params = on_gpu({n: a.astype(dtype) / 8 for n, a in random_params(D, H, variant, rng).items()})
    X, H0 = BE.asarray(rng.integers(0, D, size=(T, B))), BE.asarray(rng.normal(size=(B, H)))
    dHs = BE.asarray(rng.normal(size=(T, B, H)).astype(dtype))
    H0 = H0.astype(dtype)
    runs = []
    for _ in range(2):
        Hs, cache = cuda.forward(X, H0, params)
        _, dH0, grads = cuda.backward(dHs, cache)
        runs.append([BE.asnumpy(a) for a in (Hs, dH0, *grads.values())])
        monkeypatch.setattr(cuda, "_slab", lambda *args: 0)  # the second run: global memory
    for on_chip, from_global in zip(*runs, strict=True):
        np.testing.assert_array_equal(on_chip, from_global)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("given", ["dHs", "dH_last"])
def test_cuda_backward_with_one_upstream_gradient(variant, given, rng):
    T, B, H, D = 5, 3, 7, 4
    params = random_params(D, H, variant, rng)
    X, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H))
    dHs = rng.normal(size=(T, B, H)) if given == "dHs" else None
    dH_last = rng.normal(size=(B, H)) if given == "dH_last" else None
    _, cache = gru.forward(X, H0, params)
    _, dH0, grads = gru.backward(dHs, cache, dH_last)
    _, gcache = cuda.forward(BE.asarray(X), BE.asarray(H0), on_gpu(params))
    up = [None if a is None else BE.asarray(a) for a in (dHs, dH_last)]
    _, gdH0, ggrads = cuda.backward(up[0], gcache, up[1])
    assert_rel(gdH0, dH0, "dH0", 1e-12)
    for name in grads:
        assert_rel(ggrads[name], grads[name], name, 1e-12)


def test_cuda_workspace_reuse_gives_the_same_numbers(rng):
    T, B, H, D = 7, 4, 9, 5
    params = on_gpu(random_params(D, H, "d2l", rng))
    X, H0 = BE.asarray(rng.integers(0, D, size=(T, B))), BE.asarray(rng.normal(size=(B, H)))
    ws, wsb = gru.Workspace(), gru.Workspace()
    results = []
    for _ in range(2):
        Hs, cache = cuda.forward(X, H0, params, workspace=ws)
        _, dH0, grads = cuda.backward(Hs, cache, None, workspace=wsb)
        results.append((BE.asnumpy(Hs), BE.asnumpy(dH0), BE.asnumpy(grads["W_hh"])))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic: same order of every sum


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_state_carried_over_in_the_same_workspace(variant, rng):
    """H0 = Hs[T] of the workspace itself, T 1 (the kernel writes H_1 over it), with the ids
    a transposed int32 view: the reference's numbers."""
    params = random_params(4, 40, variant, rng)
    X = rng.integers(0, 4, size=(3, 1)).astype(np.int32).T
    H0 = rng.normal(size=(3, 40))
    Hs1, _ = gru.forward(X, H0, params)
    Hs2, _ = gru.forward(X, Hs1[-1], params)
    ws, gparams = gru.Workspace(), on_gpu(params)
    gHs1, _ = cuda.forward(BE.asarray(X), BE.asarray(H0), gparams, workspace=ws)
    gHs2, _ = cuda.forward(BE.asarray(X), gHs1[-1], gparams, workspace=ws)
    assert_rel(gHs2, Hs2, "Hs after the carried state", 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_loss_equals_reference(dtype, rng):
    N, V = 70, 37  # V > 32: a warp loops over the row
    O = (rng.normal(size=(N, V)) * 3).astype(dtype)
    y = rng.integers(0, V, size=N)
    loss, dO = npgru.softmax_cross_entropy(O, y)
    gloss, gdO = cuda.softmax_cross_entropy(BE.asarray(O), BE.asarray(y))
    assert_rel(gloss, np.asarray(loss), "loss", CUDA_TOL[dtype])
    assert_rel(gdO, dO, "dO", CUDA_TOL[dtype])


def test_cuda_bad_ids_give_nan_not_numbers(rng):
    T, B, H, D = 3, 2, 4, 5
    params = on_gpu(random_params(D, H, "d2l", rng))
    X = rng.integers(0, D, size=(T, B))
    X[1, 0] = D  # out of range
    Hs, _ = cuda.forward(BE.asarray(X), BE.asarray(rng.normal(size=(B, H))), params)
    Hs = BE.asnumpy(Hs)
    assert np.all(np.isfinite(Hs[0])) and np.all(np.isnan(Hs[1:, 0]))
    assert np.all(np.isfinite(Hs[:, 1]))  # the other sequence is untouched
    y = np.array([0, 3, -1])
    loss, dO = cuda.softmax_cross_entropy(BE.asarray(rng.normal(size=(3, 3))), BE.asarray(y))
    assert np.isnan(float(loss)) and np.all(np.isnan(BE.asnumpy(dO)[2]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_model_equals_reference_model_3_layers(variant, rng):
    kw = dict(num_layers=3, variant=variant, dtype="float64", backend=BE)
    ref = npgru.GRULanguageModel(V, 9, impl="reference", **kw)
    fast = npgru.GRULanguageModel(V, 9, impl="cuda", **kw)
    assert (ref.impl, fast.impl) == ("reference", "cuda")
    assert npgru.GRULanguageModel(V, 9, backend=BE).impl == "cuda"  # auto on CuPy
    ref.params.flat[...] = BE.asarray(rng.normal(0.0, 0.4, size=ref.params.flat.shape))
    fast.params.flat[...] = ref.params.flat
    X, Y = BE.asarray(rng.integers(0, V, size=(B, 11))), BE.asarray(rng.integers(0, V, (B, 11)))
    state = BE.asarray(rng.normal(size=(3, B, 9)))
    loss, grads, new = ref.loss_and_grads(X, Y, state)
    floss, fgrads, fnew = fast.loss_and_grads(X, Y, state)
    assert_rel(floss, BE.asnumpy(loss), "loss", 1e-12)
    assert_rel(fnew, BE.asnumpy(new), "new state", 1e-12)
    for name in grads:
        assert_rel(fgrads[name], BE.asnumpy(grads[name]), name, 1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_gradients_match_finite_differences(variant, rng):
    """Central differences on the GPU in float64, along a random direction per parameter:
    (L(θ + εv) − L(θ − εv)) / 2ε against ⟨∇L, v⟩."""
    model = npgru.GRULanguageModel(6, 7, num_layers=2, variant=variant, dtype="float64",
                                   backend=BE, impl="cuda")  # fmt: skip
    model.params.flat[...] = BE.asarray(rng.normal(0.0, 0.4, size=model.params.flat.shape))
    X, Y = BE.asarray(rng.integers(0, 6, size=(3, 5))), BE.asarray(rng.integers(0, 6, (3, 5)))
    state = BE.asarray(rng.normal(size=(2, 3, 7)))
    _, grads, _ = model.loss_and_grads(X, Y, state)
    eps = 1e-5
    for name, p in model.params.items():
        v = BE.asarray(rng.normal(size=tuple(p.shape)))
        saved = p.copy()
        p += eps * v
        plus = float(model.loss_and_grads(X, Y, state)[0])
        p[...] = saved - eps * v
        minus = float(model.loss_and_grads(X, Y, state)[0])
        p[...] = saved
        numeric = (plus - minus) / (2 * eps)
        analytic = float(cupy.sum(grads[name] * v))
        err = abs(numeric - analytic) / max(abs(numeric), abs(analytic))
        assert err < 1e-7, f"{name}: numeric {numeric:.10e}, analytic {analytic:.10e}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_float32_training_steps_match_numpy(variant, rng):
    host = npgru.GRULanguageModel(V, 33, num_layers=2, variant=variant, seed=3)
    dev = npgru.GRULanguageModel(V, 33, num_layers=2, variant=variant, seed=3, backend=BE)
    assert dev.impl == "cuda"
    for _ in range(3):
        X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
        for model, be in ((host, npgru.get_backend("numpy")), (dev, BE)):
            state = model.begin_state(B)
            _, grads, _ = model.loss_and_grads(be.asarray(X), be.asarray(Y), state)
            npgru.clip_grad_norm(grads, 1.0)
            npgru.sgd(model.params, grads, 1.0)
    np.testing.assert_allclose(BE.asnumpy(dev.params.flat), host.params.flat, rtol=1e-4, atol=1e-6)


def test_interop_round_trip_from_the_gpu(rng):
    from npgru import interop

    model = npgru.GRULanguageModel(
        V, H, num_layers=2, variant="reset_after", dtype="float64", backend=BE
    )
    model.params.flat[...] = BE.asarray(rng.normal(size=model.params.flat.shape))
    gru_sd, linear_sd = interop.to_torch_state_dicts(model)
    assert all(isinstance(a, np.ndarray) for a in [*gru_sd.values(), *linear_sd.values()])
    back = interop.from_torch_state_dicts(gru_sd, linear_sd, backend=BE)
    assert isinstance(back.params.flat, cupy.ndarray)
    np.testing.assert_array_equal(BE.asnumpy(back.params.flat), BE.asnumpy(model.params.flat))


def test_the_example_on_the_gpu_resumes_exactly(tmp_path, capsys, monkeypatch):
    """The d2l example on CuPy (the CUDA path): a run stopped after 2 epochs and resumed to 4
    ends with the same parameters, bit for bit, as a run of 4 (save and restore copy between
    device and host; every kernel sums in a fixed order)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "timemachine_gpu", root / "examples" / "timemachine.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "no-cache"))  # never download
    book = root / "tests" / "data" / "timemachine.txt"
    common = ["--backend", "cupy", "--data", str(book), "--max-tokens", "3000"]
    common += ["--num-hiddens", "32", "--batch-size", "8", "--num-steps", "10"]
    straight, half = tmp_path / "straight.npz", tmp_path / "half.npz"
    assert example.main([*common, "--epochs", "4", "--save", str(straight)]) == 0
    assert example.main([*common, "--epochs", "2", "--save", str(half)]) == 0
    # the backend is not a setting of the run: a resumed run names it again
    assert example.main(["--resume", str(half), "--epochs", "4", "--backend", "cupy"]) == 0
    assert "tokens/sec on cupy (cuda:" in capsys.readouterr().out
    with np.load(straight, allow_pickle=False) as a, np.load(half, allow_pickle=False) as b:
        names = [k for k in a.files if not k.startswith("__")]
        assert names and sorted(names) == sorted(k for k in b.files if not k.startswith("__"))
        for name in names:
            assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_kernels_read_no_uninitialized_memory(variant, rng):
    """Workspaces filled with NaN beforehand give the same bits as fresh ones: no kernel
    reads an element before it is written."""
    T, B, H, D = 9, 6, 40, 7
    params = on_gpu(random_params(D, H, variant, rng))
    X, H0 = BE.asarray(rng.integers(0, D, size=(T, B))), BE.asarray(rng.normal(size=(B, H)))
    dHs = BE.asarray(rng.normal(size=(T, B, H)))

    def run(ws, wsb):
        Hs, cache = cuda.forward(X, H0, params, workspace=ws)
        _, dH0, grads = cuda.backward(dHs, cache, workspace=wsb)
        return [BE.asnumpy(Hs), BE.asnumpy(dH0)] + [BE.asnumpy(grads[n]) for n in sorted(grads)]

    fresh = run(None, None)
    ws, wsb = gru.Workspace(), gru.Workspace()
    for name, shape in [("Hs", (T + 1, B, H))] + [
        (n, (T, B, H)) for n in ("Z", "R", "H_tilde", "RH", "G")
    ]:
        ws.empty(cupy, name, shape, cupy.float64).fill(cupy.nan)
    for name, shape in (("dA", (T, B, 3 * H)), ("dG", (T, B, H)), ("S", (B, H))):
        wsb.empty(cupy, name, shape, cupy.float64).fill(cupy.nan)
    for a, b in zip(fresh, run(ws, wsb), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", ["reference", "cuda"])
def test_dropout_on_the_gpu_equals_numpy_with_the_same_masks(impl, rng):
    """Dropout lives in the model, outside the layer kernels: both impls apply the same masks,
    drawn on the device (cupy's Generator), and give NumPy's numbers for those masks."""
    kw = dict(num_layers=2, dtype="float64")
    host = npgru.GRULanguageModel(V, 9, **kw)
    dev = npgru.GRULanguageModel(V, 9, backend=BE, impl=impl, **kw)
    host.params.flat[...] = rng.normal(0.0, 0.4, size=host.params.flat.shape)
    dev.params.flat[...] = BE.asarray(host.params.flat)
    Xh, Yh = rng.integers(0, V, size=(B, 11)), rng.integers(0, V, size=(B, 11))
    state = rng.normal(size=(2, B, 9))
    masks = dev.dropout_masks((B, 11), 0.3, cupy.random.default_rng(7))
    assert isinstance(masks[0], cupy.ndarray)  # drawn on the device: no host copy

    class Fixed:  # hands the device masks' uniform numbers to the host model too
        def __init__(self, xp):
            self.xp = xp

        def random(self, size, dtype):
            u = cupy.random.default_rng(7).random(size, dtype=dtype)
            return u if self.xp is cupy else BE.asnumpy(u)

    loss, grads, new = host.loss_and_grads(Xh, Yh, state, dropout=0.3, rng=Fixed(np))
    dl, dg, dn = dev.loss_and_grads(BE.asarray(Xh), BE.asarray(Yh), BE.asarray(state),
                                    dropout=0.3, rng=Fixed(cupy))  # fmt: skip
    assert_rel(dl, loss, "loss", 1e-12)
    assert_rel(dn, new, "new state", 1e-12)
    for name in grads:
        assert_rel(dg[name], grads[name], name, 1e-12)


def test_cuda_dropout_gradients_match_finite_differences(rng):
    model = npgru.GRULanguageModel(6, 7, num_layers=2, dtype="float64", backend=BE, impl="cuda")
    model.params.flat[...] = BE.asarray(rng.normal(0.0, 0.4, size=model.params.flat.shape))
    X, Y = BE.asarray(rng.integers(0, 6, size=(3, 5))), BE.asarray(rng.integers(0, 6, (3, 5)))
    state = BE.asarray(rng.normal(size=(2, 3, 7)))

    def loss_grads():  # the same masks at every call
        return model.loss_and_grads(X, Y, state, dropout=0.4, rng=cupy.random.default_rng(3))

    _, grads, _ = loss_grads()
    eps = 1e-5
    for name, p in model.params.items():
        v = BE.asarray(rng.normal(size=tuple(p.shape)))
        saved = p.copy()
        p += eps * v
        plus = float(loss_grads()[0])
        p[...] = saved - eps * v
        minus = float(loss_grads()[0])
        p[...] = saved
        numeric = (plus - minus) / (2 * eps)
        analytic = float(cupy.sum(grads[name] * v))
        err = abs(numeric - analytic) / max(abs(numeric), abs(analytic))
        assert err < 1e-7, f"{name}: numeric {numeric:.10e}, analytic {analytic:.10e}"


def test_training_with_validation_and_dropout_on_the_gpu():
    from conftest import BOOK

    from npgru.data import load_data_time_machine
    from npgru.train import dropout_rng, evaluate, train

    assert isinstance(dropout_rng(BE, 0, 1), cupy.random.Generator)
    loader, vocab = load_data_time_machine(
        8, 10, path=BOOK, max_tokens=3000, seed=1, backend=BE, val_fraction=0.1
    )
    val = loader.val_corpus
    model = npgru.GRULanguageModel(len(vocab), 16, num_layers=2, backend=BE, impl="cuda")
    history = train(model, loader, vocab, num_epochs=2, lr=1.0, val_corpus=val, dropout=0.2,
                    log=None)  # fmt: skip
    assert len(history["val_perplexity"]) == 2 and history["val_perplexity"][-1] < len(vocab)
    ref = npgru.GRULanguageModel(len(vocab), 16, num_layers=2, backend=BE, impl="reference")
    ref.params.flat[...] = model.params.flat
    assert abs(evaluate(ref, val, 8, 10) / evaluate(model, val, 8, 10) - 1) < 1e-5


def test_adam_and_the_average_on_the_gpu_equal_numpy(rng):
    from npgru import optim

    host = npgru.FlatDict.from_arrays(random_params(D, H, "d2l", rng))
    dev = npgru.FlatDict(BE.asarray(host.flat), host.layout)
    s_host, s_dev = optim.new_state(host, "adam", 0.9), optim.new_state(dev, "adam", 0.9)
    for _ in range(5):
        g = npgru.FlatDict.from_arrays(random_params(D, H, "d2l", rng))
        optim.step(host, g, 0.01, s_host)
        optim.step(dev, npgru.FlatDict(BE.asarray(g.flat), g.layout), 0.01, s_dev)
    for key in ("m", "v", "average"):
        assert_close(s_dev[key].flat, s_host[key].flat, key)
    assert_close(dev.flat, host.flat, "params")
