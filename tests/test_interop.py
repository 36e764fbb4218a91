"""npgru ↔ PyTorch (``npgru.interop``).

Without PyTorch: the state dicts have PyTorch's keys and shapes, the round trip through plain
arrays is exact, PyTorch's documented GRU equations evaluated in NumPy on the exported state
dict give the model's outputs, the gradient map is the adjoint of the parameter map, and bad
input (the d2l variant, wrong keys or shapes) is refused with one line.

With PyTorch (marked ``torch``; skipped with a reason without it), in float64: a random
``nn.GRU`` (1, 2, 3 layers) + ``nn.Linear`` converted to npgru gives autograd's outputs, final
state, mean cross-entropy and every gradient to 1e-10 relative; npgru → PyTorch → npgru is
exact; a model trained by npgru predicts the same characters in PyTorch.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line, perturb

import npgru
from npgru import gru, interop

TOL = 1e-10
V, H, B, T = 7, 5, 3, 4
LAYERS = (1, 2, 3)


def relative_error(actual, expected) -> float:
    """max |actual − expected| / max |expected| (the norm-wise relative error)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def random_model(num_layers, rng, *, dtype="float64", variant="reset_after", backend="numpy"):
    """A model with gate-sized random parameters (no gradient is negligible)."""
    model = npgru.GRULanguageModel(
        V, H, num_layers=num_layers, variant=variant, dtype=dtype, seed=1, backend=backend
    )
    host = model.params.copy()
    perturb(host, rng)
    model.params.flat[...] = model.backend.asarray(host.flat)
    return model


def torch_equations(gru_sd, linear_sd, X, state):
    """PyTorch's documented nn.GRU + nn.Linear equations, in NumPy, on token ids X (B, T).

    r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.
    Returns the logits (T·B, V), time-major, and the final state (num_layers, B, H).
    """

    def sigmoid(a):
        return 1.0 / (1.0 + np.exp(-a))

    num_layers = len(gru_sd) // 4
    inputs = np.eye(V)[X.T]  # one-hot (T, B, V)
    finals = []
    for layer in range(num_layers):
        w_ih, w_hh = gru_sd[f"weight_ih_l{layer}"], gru_sd[f"weight_hh_l{layer}"]
        b_ih, b_hh = gru_sd[f"bias_ih_l{layer}"], gru_sd[f"bias_hh_l{layer}"]
        h, outputs = state[layer], []
        for x in inputs:
            gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
            i_r, i_z, i_n = np.split(gi, 3, axis=1)
            h_r, h_z, h_n = np.split(gh, 3, axis=1)
            r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
            n = np.tanh(i_n + r * h_n)
            h = (1.0 - z) * n + z * h
            outputs.append(h)
        inputs = np.stack(outputs)
        finals.append(h)
    logits = inputs.reshape(-1, inputs.shape[-1]) @ linear_sd["weight"].T + linear_sd["bias"]
    return logits, np.stack(finals)


def expected_keys(num_layers):
    """PyTorch's documented state dict keys of nn.GRU, spelled out."""
    keys = []
    for layer in range(num_layers):
        keys += [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
        keys += [f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
    return keys


# --------------------------------------------------------------------------- without torch


@pytest.mark.parametrize("num_layers", LAYERS)
def test_state_dicts_have_pytorchs_keys_and_shapes(num_layers, rng):
    model = random_model(num_layers, rng)
    gru_sd, linear_sd = interop.to_torch_state_dicts(model)
    assert list(gru_sd) == expected_keys(num_layers) == interop.gru_keys(num_layers)
    assert list(linear_sd) == ["weight", "bias"]
    for layer in range(num_layers):
        assert gru_sd[f"weight_ih_l{layer}"].shape == (3 * H, V if layer == 0 else H)
        assert gru_sd[f"weight_hh_l{layer}"].shape == (3 * H, H)
        assert gru_sd[f"bias_ih_l{layer}"].shape == gru_sd[f"bias_hh_l{layer}"].shape == (3 * H,)
    assert linear_sd["weight"].shape == (V, H) and linear_sd["bias"].shape == (V,)
    for a in [*gru_sd.values(), *linear_sd.values()]:
        assert type(a) is np.ndarray and a.dtype == np.float64 and a.flags.c_contiguous
        assert not np.shares_memory(a, model.params.flat)  # copies, not views of the model
    # gate order r, z, n; weights transposed; gates r, z keep their bias in bias_ih
    H2 = slice(2 * H, 3 * H)
    np.testing.assert_array_equal(gru_sd["weight_ih_l0"][:H], model.params["W_xr"].T)
    np.testing.assert_array_equal(gru_sd["weight_hh_l0"][H : 2 * H], model.params["W_hz"].T)
    np.testing.assert_array_equal(gru_sd["bias_ih_l0"][H2], model.params["b_h"])
    np.testing.assert_array_equal(gru_sd["bias_hh_l0"][H2], model.params["b_hh"])
    np.testing.assert_array_equal(gru_sd["bias_hh_l0"][: 2 * H], 0.0)
    np.testing.assert_array_equal(linear_sd["weight"], model.params["W_hq"].T)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers", LAYERS)
def test_round_trip_through_plain_arrays_is_exact(num_layers, dtype, rng):
    model = random_model(num_layers, rng, dtype=dtype)
    gru_sd, linear_sd = interop.to_torch_state_dicts(model)
    back = interop.from_torch_state_dicts(gru_sd, linear_sd)
    assert back.config == model.config
    assert back.params.layout == model.params.layout
    np.testing.assert_array_equal(back.params.flat, model.params.flat)
    again = interop.to_torch_state_dicts(back)
    for before, after in zip((gru_sd, linear_sd), again, strict=True):
        assert list(before) == list(after)
        for key in before:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


@pytest.mark.parametrize("num_layers", LAYERS)
def test_pytorchs_equations_on_the_state_dicts_give_the_models_outputs(num_layers, rng):
    """The mapping, checked without PyTorch: its documented equations, evaluated in NumPy."""
    model = random_model(num_layers, rng)
    X = rng.integers(0, V, size=(B, T))
    state = rng.normal(0.0, 0.5, size=(num_layers, B, H))
    gru_sd, linear_sd = interop.to_torch_state_dicts(model)
    logits, final = torch_equations(gru_sd, linear_sd, X, state)
    ours, our_state = model.forward(X, state)
    assert relative_error(ours, logits) <= 1e-12
    assert relative_error(our_state, final) <= 1e-12

    # and the map from a state dict whose bias_hh is not zero: b_r = b_ir + b_hr
    for key, a in gru_sd.items():
        if key.startswith("bias_hh"):
            a[...] = rng.normal(0.0, 0.4, size=a.shape)
    logits, final = torch_equations(gru_sd, linear_sd, X, state)
    ours, our_state = interop.from_torch_state_dicts(gru_sd, linear_sd).forward(X, state)
    assert relative_error(ours, logits) <= 1e-12
    assert relative_error(our_state, final) <= 1e-12


def test_the_d2l_variant_computes_something_else(rng):
    """The check above can fail: the d2l equations, exported alike, do not agree."""
    d2l = random_model(1, rng, variant="d2l")
    twin = npgru.GRULanguageModel(V, H, variant="reset_after", dtype="float64")
    for name in d2l.params:
        twin.params[name] = d2l.params[name]
    twin.params["b_hh"] = np.zeros(H)
    X, state = rng.integers(0, V, size=(B, T)), rng.normal(0.0, 0.5, size=(1, B, H))
    logits, _ = torch_equations(*interop.to_torch_state_dicts(twin), X, state)
    assert relative_error(d2l.forward(X, state)[0], logits) > 1e-3


@pytest.mark.parametrize("num_layers", LAYERS)
def test_the_gradient_map_is_the_adjoint_of_the_parameter_map(num_layers, rng):
    """⟨P δ, g⟩ = ⟨δ, Pᵀ g⟩ for P: PyTorch parameters → npgru parameters.

    ``from_torch_state_dicts`` applies P; ``to_torch_state_dicts(model, grads=g)`` must apply
    Pᵀ, so that PyTorch's gradient of L∘P is Pᵀ times npgru's gradient of L.
    """
    model = random_model(num_layers, rng)
    shapes = interop.to_torch_state_dicts(model)
    delta = [{k: rng.normal(size=a.shape) for k, a in sd.items()} for sd in shapes]
    P_delta = interop.from_torch_state_dicts(*delta).params
    g = model.params.zeros_like()
    g.flat[...] = rng.normal(size=g.flat.shape)
    Pt_g = interop.to_torch_state_dicts(model, grads=g)

    lhs = float(P_delta.flat @ g.flat)
    rhs = sum(float(np.sum(d[k] * pt[k])) for d, pt in zip(delta, Pt_g, strict=True) for k in d)
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
    # both PyTorch biases of gates r and z get the gradient of their sum
    for layer in range(num_layers):
        sfx = "" if layer == 0 else f"_l{layer}"
        for k, gate in enumerate("rz"):
            rows = slice(k * H, (k + 1) * H)
            for key in (f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
                np.testing.assert_array_equal(Pt_g[0][key][rows], g[f"b_{gate}{sfx}"])
    # unlike the parameter map, which keeps bias_hh of r and z at zero
    params_sd = interop.to_torch_state_dicts(model)[0]
    assert not np.any(params_sd["bias_hh_l0"][: 2 * H])
    assert np.all(Pt_g[0]["bias_hh_l0"][: 2 * H] != 0)


def test_d2l_variant_is_refused_with_one_line(rng):
    model = npgru.GRULanguageModel(V, H)  # d2l, the default
    for call in (
        lambda: interop.to_torch_state_dicts(model),
        lambda: interop.to_torch_state_dicts(model, grads=model.params),
        lambda: interop.to_torch_modules(model),
    ):
        with pytest.raises(npgru.ConfigError) as err:
            call()
        msg = one_line(err.value)
        assert "d2l" in msg and "reset_after" in msg
    with pytest.raises(npgru.ConfigError):
        interop.to_torch_state_dicts({"W_xz": np.zeros((V, H))})


def _dicts(rng, num_layers=2):
    return [dict(sd) for sd in interop.to_torch_state_dicts(random_model(num_layers, rng))]


def test_bad_state_dicts_are_refused_with_one_line(rng):
    cases = []
    gru_sd, linear_sd = _dicts(rng)
    del gru_sd["bias_hh_l1"]
    cases.append((gru_sd, linear_sd, "bias_hh_l1"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["weight_ih_l0_reverse"] = gru_sd["weight_ih_l0"]
    cases.append((gru_sd, linear_sd, "bidirectional"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["weight_hr_l0"] = gru_sd["weight_hh_l0"]  # proj_size, or anything else
    cases.append((gru_sd, linear_sd, "weight_hr_l0"))
    gru_sd, linear_sd = _dicts(rng, num_layers=3)
    for key in interop.gru_keys(3)[4:8]:  # layers 0 and 2, no layer 1
        del gru_sd[key]
    cases.append((gru_sd, linear_sd, "weight_ih_l1"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd = {k: v for k, v in gru_sd.items() if k.startswith("weight")}  # bias=False
    cases.append((gru_sd, linear_sd, "bias_ih_l0"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["weight_hh_l1"] = np.zeros((3 * H, H + 1))
    cases.append((gru_sd, linear_sd, "weight_hh_l1"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["bias_ih_l0"] = np.zeros(2 * H)
    cases.append((gru_sd, linear_sd, "bias_ih_l0"))
    gru_sd, linear_sd = _dicts(rng)
    linear_sd["weight"] = np.zeros((V + 1, H))
    cases.append((gru_sd, linear_sd, "weight"))
    gru_sd, linear_sd = _dicts(rng)
    del linear_sd["bias"]
    cases.append((gru_sd, linear_sd, "bias"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["weight_ih_l0"] = np.zeros(3 * H)
    cases.append((gru_sd, linear_sd, "2-D"))
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["bias_hh_l0"] = np.array(["x"] * (3 * H))
    cases.append((gru_sd, linear_sd, "bias_hh_l0"))
    gru_sd, linear_sd = _dicts(rng)
    cases.append((list(gru_sd.items()), linear_sd, "mapping"))

    class Module:
        def state_dict(self):
            return gru_sd

    cases.append((Module(), linear_sd, "state_dict()"))

    for gru_sd, linear_sd, needle in cases:
        with pytest.raises(npgru.ShapeError) as err:
            interop.from_torch_state_dicts(gru_sd, linear_sd)
        assert needle in one_line(err.value), (needle, str(err.value))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(("which", "key"), [(0, "weight_hh_l1"), (1, "bias")])
def test_non_finite_weights_are_refused_naming_the_key(bad, which, key, rng):
    """A state dict saved after a diverged run: it used to become a model of NaNs."""
    dicts = _dicts(rng)
    dicts[which][key] = dicts[which][key].copy()
    dicts[which][key][0] = bad
    with pytest.raises(npgru.ShapeError) as err:
        interop.from_torch_state_dicts(*dicts)
    message = one_line(err.value)
    what = ("gru", "linear")[which]
    assert f"{what} state dict[{key!r}] has" in message and "NaN or infinite" in message


def test_complex_arrays_are_refused_naming_the_key(rng):
    gru_sd, linear_sd = _dicts(rng)
    gru_sd["weight_ih_l0"] = gru_sd["weight_ih_l0"].astype(np.complex128)
    with pytest.raises(npgru.ShapeError) as err:
        interop.from_torch_state_dicts(gru_sd, linear_sd)
    assert "gru state dict['weight_ih_l0'] is not real numbers" in one_line(err.value)


@pytest.mark.parametrize("digits", ["99999999", "9" * 10_000])
def test_an_absurd_layer_index_fails_fast_without_allocating(digits, rng):
    """weight_ih_l99999999 asked for 10⁸ layers: a list of 4·10⁸ key names, a MemoryError
    after minutes. Now a one-line refusal naming the key, in well under a second and a
    megabyte (and a 10,000-digit index is no slower: int() would refuse it)."""
    gru_sd, linear_sd = _dicts(rng, num_layers=1)
    key = f"weight_ih_l{digits}"
    gru_sd[key] = gru_sd["weight_ih_l0"]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(npgru.ShapeError) as err:
            interop.from_torch_state_dicts(gru_sd, linear_sd)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 1_000_000, peak
    message = one_line(err.value)
    assert "gru state dict" in message and "no layer 1" in message
    assert len(message) < 300
    if len(digits) < 10:
        assert repr(key) in message


def test_bad_gradients_are_refused_with_one_line(rng):
    model = random_model(2, rng)
    grads = dict(model.params)
    del grads["b_hh_l1"]
    with pytest.raises(npgru.ShapeError) as err:
        interop.to_torch_state_dicts(model, grads=grads)
    assert "b_hh_l1" in one_line(err.value)
    grads = dict(model.params, b_q=np.zeros(V + 1))
    with pytest.raises(npgru.ShapeError) as err:
        interop.to_torch_state_dicts(model, grads=grads)
    assert "b_q" in one_line(err.value)


def test_dtype_is_kept_or_chosen(rng):
    gru_sd, linear_sd = _dicts(rng, num_layers=1)
    assert interop.from_torch_state_dicts(gru_sd, linear_sd).dtype == "float64"
    small = interop.from_torch_state_dicts(gru_sd, linear_sd, dtype=np.float32)
    assert small.dtype == "float32" and small.params.flat.dtype == np.float32
    # the sum b_r = b_ir + b_hr is rounded once, to the model's dtype
    gru_sd["bias_hh_l0"] = rng.normal(size=3 * H)
    exact = gru_sd["bias_ih_l0"][:H] + gru_sd["bias_hh_l0"][:H]
    small = interop.from_torch_state_dicts(gru_sd, linear_sd, dtype="float32")
    np.testing.assert_array_equal(small.params["b_r"], exact.astype(np.float32))
    half = [{k: v.astype(np.float16) for k, v in sd.items()} for sd in (gru_sd, linear_sd)]
    assert interop.from_torch_state_dicts(*half).dtype == "float32"
    with pytest.raises(npgru.ConfigError):
        interop.from_torch_state_dicts(gru_sd, linear_sd, dtype="int32")


def test_models_on_another_backend_come_back_as_numpy(rng):
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    host = random_model(2, rng)
    gru_sd, linear_sd = interop.to_torch_state_dicts(host)
    strict = interop.from_torch_state_dicts(gru_sd, linear_sd, backend=xps)
    assert strict.backend.xp is xps and not isinstance(strict.params.flat, np.ndarray)
    again = interop.to_torch_state_dicts(strict)
    for before, after in zip((gru_sd, linear_sd), again, strict=True):
        for key in before:
            assert type(after[key]) is np.ndarray
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


# --------------------------------------------------------------------------- with torch


@pytest.fixture
def torch():
    return pytest.importorskip(
        "torch", reason="PyTorch is a test-only extra: pip install torch==2.13.0"
    )


def tensors(torch, sd):
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}


@pytest.mark.torch
@pytest.mark.parametrize("num_layers", LAYERS)
def test_nn_gru_converted_to_npgru_agrees_with_autograd(torch, num_layers, rng):
    torch.manual_seed(num_layers)  # PyTorch's own random initialization
    rnn = torch.nn.GRU(V, H, num_layers=num_layers, dtype=torch.float64)
    linear = torch.nn.Linear(H, V, dtype=torch.float64)
    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    state = rng.normal(0.0, 0.5, size=(num_layers, B, H))

    # parameters that require grad, as named_parameters gives them: detached on the way in
    model = interop.from_torch_state_dicts(
        dict(rnn.named_parameters()), dict(linear.named_parameters())
    )
    assert model.config == {
        "vocab_size": V,
        "num_hiddens": H,
        "num_layers": num_layers,
        "variant": "reset_after",
        "dtype": "float64",
    }
    inputs = torch.nn.functional.one_hot(torch.from_numpy(X.T), V).to(torch.float64)
    out, h_n = rnn(inputs, torch.from_numpy(state))
    logits = linear(out).reshape(T * B, V)
    t_loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(Y.T.reshape(-1)))
    t_loss.backward()

    loss, grads, new_state = model.loss_and_grads(X, Y, state)
    assert abs(float(loss) - t_loss.item()) <= TOL * abs(t_loss.item())
    assert relative_error(new_state, h_n.detach().numpy()) <= TOL
    assert relative_error(model.forward(X, state)[0], logits.detach().numpy()) <= TOL
    tokens = X.T  # nn.GRU's outputs: the top layer's states, layer by layer through npgru
    for layer in range(num_layers):
        tokens, _ = gru.forward(tokens, state[layer], model.layer_params(layer))
    assert relative_error(tokens, out.detach().numpy()) <= TOL

    g_gru, g_linear = interop.to_torch_state_dicts(model, grads=grads)
    for module, g in ((rnn, g_gru), (linear, g_linear)):
        named = dict(module.named_parameters())
        assert list(g) == list(named)
        for key, p in named.items():
            assert np.max(np.abs(p.grad.numpy())) > 1e-4, f"{key}: a negligible gradient"
            assert relative_error(g[key], p.grad.numpy()) <= TOL, key


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_layers", LAYERS)
def test_npgru_to_pytorch_to_npgru_is_exact(torch, num_layers, dtype, rng):
    model = random_model(num_layers, rng, dtype=dtype)
    rnn, linear = interop.to_torch_modules(model)
    assert isinstance(rnn, torch.nn.GRU) and isinstance(linear, torch.nn.Linear)
    assert rnn.num_layers == num_layers and not rnn.batch_first
    reference = torch.nn.GRU(V, H, num_layers=num_layers)
    assert [(k, tuple(v.shape)) for k, v in rnn.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in reference.state_dict().items()
    ]
    assert all(p.dtype == getattr(torch, dtype) for p in rnn.parameters())
    back = interop.from_torch_state_dicts(rnn.state_dict(), linear.state_dict())
    assert back.config == model.config
    np.testing.assert_array_equal(back.params.flat, model.params.flat)

    # the state dicts load into modules made by the user, too
    fresh = torch.nn.GRU(V, H, num_layers=num_layers, dtype=getattr(torch, dtype))
    gru_sd, _ = interop.to_torch_state_dicts(model)
    fresh.load_state_dict(tensors(torch, gru_sd))
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), gru_sd[key], err_msg=key)


@pytest.mark.torch
def test_pytorch_to_npgru_to_pytorch_keeps_the_function(torch, rng):
    """The two biases of gates r and z come back as one sum (in bias_ih), the rest exactly."""
    torch.manual_seed(0)
    rnn = torch.nn.GRU(V, H, num_layers=2, dtype=torch.float64)
    linear = torch.nn.Linear(H, V, dtype=torch.float64)
    rnn2, linear2 = interop.to_torch_modules(
        interop.from_torch_state_dicts(rnn.state_dict(), linear.state_dict())
    )
    sd, sd2 = rnn.state_dict(), rnn2.state_dict()
    for key in sd:
        if key.startswith("weight"):
            assert torch.equal(sd[key], sd2[key]), key
    for layer in range(2):
        b_ih, b_hh = sd[f"bias_ih_l{layer}"], sd[f"bias_hh_l{layer}"]
        b_ih2, b_hh2 = sd2[f"bias_ih_l{layer}"], sd2[f"bias_hh_l{layer}"]
        assert torch.equal(b_ih2[: 2 * H], b_ih[: 2 * H] + b_hh[: 2 * H])
        assert torch.equal(b_ih2[2 * H :], b_ih[2 * H :])
        assert torch.equal(b_hh2[2 * H :], b_hh[2 * H :])
    assert all(
        torch.equal(a, b)
        for a, b in zip(linear.state_dict().values(), linear2.state_dict().values(), strict=True)
    )
    inputs = torch.from_numpy(rng.normal(size=(T, B, V)))
    np.testing.assert_allclose(
        rnn2(inputs)[0].detach().numpy(), rnn(inputs)[0].detach().numpy(), rtol=0, atol=1e-14
    )


@pytest.mark.torch
def test_tensors_without_real_finite_values_are_refused_naming_the_key(torch):
    """Meta tensors (no values: .cpu() raised NotImplementedError), complex tensors (their
    imaginary part was dropped with a warning), NaN, inf and boolean tensors: each is a
    one-line ShapeError naming the dict and the key."""
    meta = torch.nn.GRU(V, H, device="meta").state_dict()
    linear = torch.nn.Linear(H, V, dtype=torch.float64).state_dict()
    with pytest.raises(npgru.ShapeError) as err:
        interop.from_torch_state_dicts(meta, linear)
    message = one_line(err.value)
    assert "gru state dict['weight_ih_l0'] is a meta tensor" in message
    assert "to_empty" in message
    empty = {"weight": torch.empty(V, H, device="meta"), "bias": linear["bias"]}
    with pytest.raises(npgru.ShapeError, match=r"linear state dict\['weight'\] is a meta"):
        interop.from_torch_state_dicts(torch.nn.GRU(V, H).state_dict(), empty)

    torch.manual_seed(0)
    good = torch.nn.GRU(V, H, num_layers=2, dtype=torch.float64).state_dict()
    for key, bad, needle in [
        ("weight_hh_l1", good["weight_hh_l1"].to(torch.complex128), "is not real numbers"),
        ("bias_ih_l0", torch.zeros(3 * H, dtype=torch.bool), "is not real numbers"),
        ("bias_hh_l1", torch.full((3 * H,), float("nan"), dtype=torch.float64), f"{3 * H} NaN"),
        ("weight_ih_l0", good["weight_ih_l0"].clone().fill_(float("inf")), "NaN or infinite"),
    ]:
        with pytest.raises(npgru.ShapeError) as err:
            interop.from_torch_state_dicts({**good, key: bad}, linear)
        message = one_line(err.value)
        assert f"gru state dict[{key!r}]" in message and needle in message, message
    assert interop.from_torch_state_dicts(good, linear).num_layers == 2  # the good one converts


@pytest.mark.torch
def test_an_absurd_layer_index_among_tensors_fails_fast(torch):
    sd = torch.nn.GRU(V, H).state_dict()
    sd["weight_ih_l99999999"] = torch.zeros(3 * H, H)
    start = time.perf_counter()
    with pytest.raises(npgru.ShapeError) as err:
        interop.from_torch_state_dicts(sd, torch.nn.Linear(H, V).state_dict())
    assert time.perf_counter() - start < 1.0
    assert "'weight_ih_l99999999' but no layer 1" in one_line(err.value)


TEXT = "the time traveller for so it will be convenient to speak of him was expounding "


@pytest.mark.torch
def test_a_model_trained_by_npgru_predicts_the_same_in_pytorch(torch):
    chars = sorted(set(TEXT))
    ids = np.array([chars.index(c) for c in TEXT * 4])
    vocab, steps, batch = len(chars), 12, 8
    model = npgru.GRULanguageModel(vocab, 32, variant="reset_after", seed=0)  # float32
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(150):
        starts = rng.integers(0, len(ids) - steps - 1, size=batch)
        X = ids[starts[:, None] + np.arange(steps)]
        loss, grads, _ = model.loss_and_grads(
            X, ids[starts[:, None] + np.arange(1, steps + 1)], model.begin_state(batch)
        )
        npgru.clip_grad_norm(grads, 1.0)
        npgru.sgd(model.params, grads, lr=4.0)
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), "the model did not learn"

    rnn, linear = interop.to_torch_modules(model)
    prefix = np.array([[chars.index(c) for c in "the time trav"]])

    def torch_next(X, state):
        with torch.no_grad():
            one_hot = torch.nn.functional.one_hot(torch.from_numpy(X.T), vocab).float()
            out, state = rnn(one_hot, state)
            return linear(out).reshape(-1, vocab).numpy(), state

    texts, all_logits = [], []
    for step, state in ((model.forward, model.begin_state(1)), (torch_next, torch.zeros(1, 1, 32))):
        logits, state = step(prefix, state)
        all_logits.append(logits)
        out = [int(np.argmax(logits[-1]))]
        for _ in range(40):  # greedy generation, one character at a time
            logits, state = step(np.array([[out[-1]]]), state)
            out.append(int(np.argmax(logits[-1])))
        texts.append("".join(chars[i] for i in out))
    assert texts[0] == texts[1], texts
    assert len(set(texts[0])) > 5, texts  # not a degenerate prediction
    np.testing.assert_array_equal(all_logits[0].argmax(axis=1), all_logits[1].argmax(axis=1))
    np.testing.assert_allclose(all_logits[0], all_logits[1], rtol=0, atol=1e-4)


def test_plain_arrays_never_import_torch():
    """PyTorch is imported only for tensors or modules: not by the plain-array round trip."""
    code = (
        "import sys, npgru\n"
        "from npgru import interop\n"
        "m = npgru.GRULanguageModel(5, 3, num_layers=2, variant='reset_after')\n"
        "interop.from_torch_state_dicts(*interop.to_torch_state_dicts(m, grads=m.params))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[1]  # this checkout's npgru comes first
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=root)


@pytest.mark.torch
def test_a_broadcast_view_too_big_for_memory_is_one_line():
    """Hostile case: expanded (zero-stride) tensors of 3e10 values gave a raw MemoryError.
    Here 3e12 values: terabytes once checked, more than any machine that runs this has."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    H = V = 10**6

    def zeros(*shape):
        return torch.zeros(1, dtype=torch.float32).expand(*shape)

    gru = {"weight_ih_l0": zeros(3 * H, V), "weight_hh_l0": zeros(3 * H, H),
           "bias_ih_l0": zeros(3 * H), "bias_hh_l0": zeros(3 * H)}  # fmt: skip
    with pytest.raises(npgru.ShapeError) as err:
        interop.from_torch_state_dicts(gru, {"weight": zeros(V, H), "bias": zeros(V)})
    assert "more than this machine has memory for" in str(err.value)
    assert "weight_ih_l0" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.torch
def test_bfloat16_weights_give_a_float32_model(rng):
    """Hostile case: bfloat16 became float64 on the host, so dtype=None gave float64."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    gru = torch.nn.GRU(5, 4).to(torch.bfloat16)
    linear = torch.nn.Linear(4, 5).to(torch.bfloat16)
    model = interop.from_torch_state_dicts(gru.state_dict(), linear.state_dict())
    assert model.params["W_xz"].dtype == np.float32
    expected = gru.weight_hh_l0.detach().float().numpy()[4:8].T  # rows r, z, n: z
    assert np.array_equal(model.params["W_hz"], expected)
