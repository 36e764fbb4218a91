"""npgru.GRU, the layer with PyTorch's interface: both directions, stacked layers, sequences of
different lengths in one batch (docs/derivation.md, section 15).

* against ``nn.GRU`` over ``pack_padded_sequence`` in float64: outputs, final states and
  every gradient to 1e-10 (the reset_after variant);
* the d2l variant, which has no PyTorch twin, by finite differences in float64;
* independent definitions: each sequence run alone, reversed by hand;
* the fast paths (numba) equal the reference where they run; bad input is one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import VARIANTS, perturb

import npgru
from npgru import interop
from npgru.errors import ConfigError, ShapeError

T, B, D, H = 7, 5, 4, 3
LENGTHS = np.array([7, 2, 5, 1, 7])


def make(variant="reset_after", num_layers=1, bidirectional=False, seed=0, **kw):
    layer = npgru.GRU(D, H, num_layers, bidirectional=bidirectional, variant=variant,
                      dtype="float64", impl="reference", **kw)  # fmt: skip
    perturb(layer.params, np.random.default_rng(seed))
    return layer


def inputs(layer, rng):
    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(size=(layer.num_layers * layer.num_directions, B, H))
    return X, H0


# --------------------------------------------------------------------------------------
# definitions that do not share the layer's routing


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_each_sequence_alone_gives_its_column(variant, num_layers, rng):
    """Run sequence b alone, for exactly lengths[b] steps: its outputs and final states are
    column b of the batched run, and the batched outputs past its end are zero."""
    layer = make(variant, num_layers, bidirectional=True)
    X, H0 = inputs(layer, rng)
    out, H_n, _ = layer.forward(X, H0, LENGTHS)
    out, H_n = out.copy(), H_n.copy()
    for b, n in enumerate(LENGTHS):
        alone, H_alone, _ = layer.forward(X[:n, b : b + 1], H0[:, b : b + 1])
        np.testing.assert_allclose(out[:n, b], alone[:, 0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(H_n[:, b], H_alone[:, 0], rtol=0, atol=1e-13)
        assert np.all(out[n:, b] == 0)


def test_the_reverse_direction_is_the_forward_cell_on_the_reversed_sequence(rng):
    layer = make("d2l", 1, bidirectional=True)
    X, H0 = inputs(layer, rng)
    out, H_n, _ = layer.forward(X, H0, LENGTHS)
    p = layer.layer_params(0, 1)
    for b, n in enumerate(LENGTHS):
        Hs, _ = npgru.gru.forward(X[:n, b : b + 1][::-1].copy(), H0[1, b : b + 1], p)
        np.testing.assert_allclose(out[:n, b, H:], Hs[::-1, 0], rtol=0, atol=1e-13)
        np.testing.assert_allclose(H_n[1, b], Hs[-1, 0], rtol=0, atol=1e-13)


def test_full_lengths_equal_no_lengths(rng):
    layer = make("reset_after", 2, bidirectional=True)
    X, H0 = inputs(layer, rng)
    d_out = rng.normal(size=(T, B, 2 * H))
    runs = []
    for lengths in (None, np.full(B, T)):
        out, H_n, cache = layer.forward(X, H0, lengths)
        runs.append((out.copy(), H_n, *layer.backward(d_out, None, cache)))
    for a, b in zip(runs[0][:4], runs[1][:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(runs[0][4].flat, runs[1][4].flat, rtol=0, atol=1e-12)


def test_unidirectional_one_layer_is_gru_forward(rng):
    """Without lengths, one direction, one layer: the layer adds nothing to gru.forward."""
    layer = make("d2l")
    X, H0 = inputs(layer, rng)
    out, H_n, _ = layer.forward(X, H0)
    Hs, _ = npgru.gru.forward(X, H0[0], layer.layer_params(0))
    assert np.array_equal(out, Hs) and np.array_equal(H_n[0], Hs[-1])


# --------------------------------------------------------------------------------------
# finite differences (the d2l variant has no PyTorch twin)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradients_by_finite_differences_with_lengths_both_directions(variant, num_layers, rng):
    layer = make(variant, num_layers, bidirectional=True)
    X, H0 = inputs(layer, rng)
    C_out = rng.normal(size=(T, B, 2 * H))  # the loss: a fixed linear function of both results
    C_n = rng.normal(size=H0.shape)

    def loss():
        out, H_n, _ = layer.forward(X, H0, LENGTHS)
        return float(np.sum(out * C_out) + np.sum(H_n * C_n))

    _, _, cache = layer.forward(X, H0, LENGTHS)
    dX, dH0, grads = layer.backward(C_out, C_n, cache)
    report = npgru.check_gradients(
        loss, {**layer.params, "X": X, "H0": H0}, {**grads, "X": dX, "H0": dH0}
    )
    assert report.passed, str(report)
    # nothing reaches the inputs past each sequence's end
    for b, n in enumerate(LENGTHS):
        assert np.all(dX[n:, b] == 0)


def test_gradients_with_dropout_between_layers(rng):
    layer = make("d2l", 3, bidirectional=True)
    X, H0 = inputs(layer, rng)
    C_out = rng.normal(size=(T, B, 2 * H))
    masks = layer.dropout_masks((T, B), 0.3, np.random.default_rng(3), 2)

    def loss():
        out, _, _ = layer.forward(X, H0, LENGTHS, masks=masks)
        return float(np.sum(out * C_out))

    _, _, cache = layer.forward(X, H0, LENGTHS, masks=masks)
    dX, _, grads = layer.backward(C_out, None, cache)
    report = npgru.check_gradients(loss, {**layer.params, "X": X}, {**grads, "X": dX})
    assert report.passed, str(report)


def test_dropout_draws_masks_for_the_layers_below_the_top_only(rng):
    layer = make("d2l", 2)
    X, H0 = inputs(layer, rng)
    a, _, _ = layer.forward(X, H0, dropout=0.5, rng=np.random.default_rng(0))
    a = a.copy()
    b, _, _ = layer.forward(
        X, H0, masks=layer.dropout_masks((T, B), 0.5, np.random.default_rng(0), 1)
    )
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="needs rng"):
        layer.forward(X, H0, dropout=0.5)


def test_the_small_case_of_the_derivation(rng):
    """docs/derivation.md, section 15: every number of its table, to the 6 digits written."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "derivation.md").read_text("utf-8")
    table = text.split("<!-- layer-example -->", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[2:4] for line in table.strip().splitlines()[2:]]
    written = [[[float(x) for x in cell.split(",")] for cell in row] for row in rows]
    layer = npgru.GRU(1, 1, bidirectional=True, variant="d2l", dtype="float64")
    layer.params.flat[...] = 0
    for name, a in layer.params.items():
        if name.startswith("W_"):
            a[...] = 0.5
    X = np.array([[1.0, -1.0], [2.0, 1.0], [3.0, 9.0]])[:, :, None]
    out, H_n, cache = layer.forward(X, None, [3, 2])
    out = out.copy()
    dX, _, _ = layer.backward(np.ones_like(out), np.ones_like(H_n), cache)
    for b in range(2):
        computed = [out[:, b, 0], out[:, b, 1], H_n[:, b, 0], dX[:, b, 0]]
        for got, want in zip(computed, [row[b] for row in written], strict=True):
            np.testing.assert_allclose(got, want, rtol=5e-6, atol=5e-7)


# --------------------------------------------------------------------------------------
# the fast path


@pytest.mark.skipif(not npgru.layer.numba_installed(), reason="Numba is not installed: "
                    "pip install 'npgru[fast]'")  # fmt: skip
@pytest.mark.parametrize("variant", VARIANTS)
def test_numba_equals_the_reference_for_both_directions(variant, rng):
    ref = make(variant, 2, bidirectional=True)
    fast = npgru.GRU(D, H, 2, bidirectional=True, variant=variant, dtype="float64", impl="numba")
    fast.params.flat[...] = ref.params.flat
    X, H0 = inputs(ref, rng)
    d_out, dH_n = rng.normal(size=(T, B, 2 * H)), rng.normal(size=H0.shape)
    results = []
    for layer in (ref, fast):
        out, H_n, cache = layer.forward(X, H0)
        results.append((out.copy(), H_n, *layer.backward(d_out, dH_n, cache)[:2],
                        layer.backward(d_out, dH_n, cache)[2].flat.copy()))  # fmt: skip
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # with lengths, the fast layer runs on the reference (no masks in the fused steps)
    out, _, cache = fast.forward(X, H0, LENGTHS)
    assert cache.modules[0] is npgru.gru


# --------------------------------------------------------------------------------------
# bad input: one line each


@pytest.mark.parametrize(
    "lengths, message",
    [
        (np.array([7, 2, 5, 0, 7]), "in 1..T = 1..7, .*got values from 0 to 7"),
        (np.array([7, 2, 5, 8, 7]), "in 1..T = 1..7, .*got values from 2 to 8"),
        (np.array([7, 2, 5]), r"lengths must be a \(B,\) = \(5,\) .*got shape \(3,\)"),
        (np.array([7.0, 2, 5, 1, 7]), "got dtype float64"),
        ("75", "lengths must be a"),
    ],
)
def test_bad_lengths_are_one_line(lengths, message, rng):
    layer = make()
    X, H0 = inputs(layer, rng)
    with pytest.raises(ShapeError, match=message) as info:
        layer.forward(X, H0, lengths)
    assert "\n" not in str(info.value)


def test_lengths_as_a_list(rng):
    layer = make()
    X, H0 = inputs(layer, rng)
    a = layer.forward(X, H0, list(LENGTHS))[0].copy()
    assert np.array_equal(a, layer.forward(X, H0, LENGTHS)[0])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X, H0: (X[0], H0), r"X must be \(T, B, D=4\)"),
        (lambda X, H0: (X[..., :3], H0), r"X must be \(T, B, D=4\) float64"),
        (lambda X, H0: (X.astype(np.float32), H0), r"X must be \(T, B, D=4\) float64"),
        (lambda X, H0: (X, H0[:1]), r"H0 must be \(num_layers·directions, B, H\) = \(2, 5, 3\)"),
        (lambda X, H0: ([[1.0]], H0), "X must be an array"),
    ],
)
def test_bad_inputs_are_one_line(change, message, rng):
    layer = make(bidirectional=True)
    X, H0 = change(*inputs(layer, rng))
    with pytest.raises(ShapeError, match=message) as info:
        layer.forward(X, H0)
    assert "\n" not in str(info.value)


def test_bad_gradients_are_one_line(rng):
    layer = make(bidirectional=True)
    X, H0 = inputs(layer, rng)
    _, _, cache = layer.forward(X, H0)
    with pytest.raises(ShapeError, match=r"d_out must be \(T, B, directions·H\) = \(7, 5, 6\)"):
        layer.backward(np.zeros((T, B, H)), None, cache)
    with pytest.raises(ShapeError, match=r"dH_n must be \(2, 5, 3\)"):
        layer.backward(None, np.zeros((1, B, H)), cache)


def test_bad_settings():
    with pytest.raises(ConfigError, match="bidirectional must be True or False"):
        npgru.GRU(3, 4, bidirectional="yes")
    with pytest.raises(ConfigError, match="unknown GRU variant"):
        npgru.GRU(3, 4, variant="lstm")
    with pytest.raises(ConfigError, match="num_layers must be a positive integer"):
        npgru.GRU(3, 4, 0)


def test_names_seeds_and_repr():
    layer = npgru.GRU(3, 4, 2, bidirectional=True, variant="reset_after")
    assert "W_xz_l1_reverse" in layer.params and layer.params["W_xz_l1"].shape == (8, 4)
    # layer 0, forward, draws as gru.init_params with the seed; the reverse with seed + 1
    for direction in (0, 1):
        p = npgru.gru.init_params(3, 4, variant="reset_after", seed=direction)
        assert np.array_equal(layer.layer_params(0, direction)["W_hz"], p["W_hz"])
    assert repr(layer).startswith("GRU(3, 4, num_layers=2, bidirectional=True")


# --------------------------------------------------------------------------------------
# PyTorch: nn.GRU over packed sequences, and the state-dict round trip


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="PyTorch is a test-only extra: "
                               "pip install torch==2.13.0")  # fmt: skip


@pytest.mark.torch
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_gru_over_packed_sequences_agrees_to_1e_10(torch, num_layers, bidirectional, rng):
    torch.manual_seed(num_layers + 10 * bidirectional)
    module = torch.nn.GRU(D, H, num_layers, bidirectional=bidirectional, dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)  # not the small default: every gate away from its middle
    dirs = 2 if bidirectional else 1
    lengths = rng.integers(1, T + 1, size=B)
    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(size=(num_layers * dirs, B, H))
    C_out, C_n = rng.normal(size=(T, B, dirs * H)), rng.normal(size=H0.shape)

    Xt = torch.tensor(X, requires_grad=True)
    H0t = torch.tensor(H0, requires_grad=True)
    pack = torch.nn.utils.rnn.pack_padded_sequence(Xt, torch.tensor(lengths), enforce_sorted=False)
    packed_out, H_nt = module(pack, H0t)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=T)
    (torch.sum(out_t * torch.tensor(C_out)) + torch.sum(H_nt * torch.tensor(C_n))).backward()

    layer = interop.gru_from_torch(module)
    assert layer.dtype == "float64" and layer.bidirectional == bidirectional
    out, H_n, cache = layer.forward(X, H0, lengths)
    dX, dH0, grads = layer.backward(C_out, C_n, cache)
    tol = dict(rtol=0, atol=1e-10)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(H_n, H_nt.detach().numpy(), **tol)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), **tol)
    np.testing.assert_allclose(dH0, H0t.grad.numpy(), **tol)
    torch_grads = interop.gru_to_torch_state_dict(layer, grads)
    assert list(torch_grads) == list(module.state_dict())
    for name, p in module.named_parameters():
        np.testing.assert_allclose(torch_grads[name], p.grad.numpy(), err_msg=name, **tol)


@pytest.mark.torch
def test_state_dict_round_trip_is_exact(torch, rng):
    layer = make("reset_after", 2, bidirectional=True)
    sd = interop.gru_to_torch_state_dict(layer)
    module = torch.nn.GRU(D, H, 2, bidirectional=True, dtype=torch.float64)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    back = interop.gru_from_torch(module.state_dict())
    assert np.array_equal(back.params.flat, layer.params.flat)
    # and the module computes what the layer computes
    X, H0 = inputs(layer, rng)
    out_t, H_nt = module(torch.tensor(X), torch.tensor(H0))
    out, H_n, _ = layer.forward(X, H0)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(H_n, H_nt.detach().numpy(), rtol=0, atol=1e-12)


def test_the_d2l_variant_and_bad_state_dicts_are_refused():
    with pytest.raises(ConfigError, match="no PyTorch equivalent"):
        interop.gru_to_torch_state_dict(make("d2l"))
    sd = interop.gru_to_torch_state_dict(make("reset_after", 2, bidirectional=True))
    del sd["bias_hh_l1_reverse"]
    with pytest.raises(ShapeError, match=r"missing \['bias_hh_l1_reverse'\]"):
        interop.gru_from_torch(sd)
    sd = interop.gru_to_torch_state_dict(make("reset_after"))
    sd["bias_ih_l0"] = sd["bias_ih_l0"][:8]
    with pytest.raises(ShapeError, match=r"bias_ih_l0.*has shape \(8,\), expected \(9,\)"):
        interop.gru_from_torch(sd)


# --------------------------------------------------------------------------------------
# npgru.RNN: the same machinery around the plain tanh cell


@pytest.mark.parametrize("num_layers", [1, 2])
def test_rnn_layer_gradients_by_finite_differences(num_layers, rng):
    layer = npgru.RNN(D, H, num_layers, bidirectional=True, dtype="float64")
    perturb(layer.params, np.random.default_rng(1))
    X, H0 = inputs(layer, rng)
    C_out, C_n = rng.normal(size=(T, B, 2 * H)), rng.normal(size=H0.shape)

    def loss():
        out, H_n, _ = layer.forward(X, H0, LENGTHS)
        return float(np.sum(out * C_out) + np.sum(H_n * C_n))

    _, _, cache = layer.forward(X, H0, LENGTHS)
    dX, dH0, grads = layer.backward(C_out, C_n, cache)
    report = npgru.check_gradients(
        loss, {**layer.params, "X": X, "H0": H0}, {**grads, "X": dX, "H0": dH0}
    )
    assert report.passed, str(report)


@pytest.mark.torch
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_rnn_over_packed_sequences_agrees_to_1e_10(torch, num_layers, bidirectional, rng):
    torch.manual_seed(num_layers + 10 * bidirectional)
    module = torch.nn.RNN(D, H, num_layers, nonlinearity="tanh", bidirectional=bidirectional,
                          dtype=torch.float64)  # fmt: skip
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    dirs = 2 if bidirectional else 1
    lengths = rng.integers(1, T + 1, size=B)
    X, H0 = rng.normal(size=(T, B, D)), rng.normal(size=(num_layers * dirs, B, H))
    C_out, C_n = rng.normal(size=(T, B, dirs * H)), rng.normal(size=H0.shape)
    Xt, H0t = torch.tensor(X, requires_grad=True), torch.tensor(H0, requires_grad=True)
    pack = torch.nn.utils.rnn.pack_padded_sequence(Xt, torch.tensor(lengths), enforce_sorted=False)
    packed_out, H_nt = module(pack, H0t)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=T)
    (torch.sum(out_t * torch.tensor(C_out)) + torch.sum(H_nt * torch.tensor(C_n))).backward()

    layer = interop.rnn_from_torch(module)
    out, H_n, cache = layer.forward(X, H0, lengths)
    dX, dH0, grads = layer.backward(C_out, C_n, cache)
    tol = dict(rtol=0, atol=1e-10)
    np.testing.assert_allclose(out, out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(H_n, H_nt.detach().numpy(), **tol)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), **tol)
    np.testing.assert_allclose(dH0, H0t.grad.numpy(), **tol)
    torch_grads = interop.rnn_to_torch_state_dict(layer, grads)
    assert list(torch_grads) == list(module.state_dict())
    for name, p in module.named_parameters():
        np.testing.assert_allclose(torch_grads[name], p.grad.numpy(), err_msg=name, **tol)
    back = interop.rnn_from_torch(interop.rnn_to_torch_state_dict(layer))
    assert np.array_equal(back.params.flat, layer.params.flat)


def test_rnn_from_torch_refuses_relu(torch):
    with pytest.raises(ShapeError, match="nonlinearity='relu'"):
        interop.rnn_from_torch(torch.nn.RNN(3, 4, nonlinearity="relu"))
