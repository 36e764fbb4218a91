"""An independent implementation agrees with ours to float64 round-off.

* The seed notebook's own ``gru`` function, re-typed in PyTorch, differentiated by autograd,
  against ``GRULanguageModel.loss_and_grads`` (d2l variant).
* ``torch.nn.GRU`` (cuDNN's equations) against the ``reset_after`` variant of ``gru.forward``
  and ``gru.backward``, with the weights mapped as in docs/derivation.md, section 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import perturb

import npgru
from npgru import gru

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test-only extra: pip install torch==2.13.0"
)
F = torch.nn.functional

pytestmark = pytest.mark.torch

TOL = 1e-10


def t64(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def assert_close(actual, expected, what):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


# --------------------------------------------------------------------------- the seed's gru


def seed_gru(inputs, state, params):
    """The seed notebook's ``gru`` (reference/seed-notebook-gru.txt), re-typed."""
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    (H,) = state
    outputs = []
    for X in inputs:
        Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
        R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
        H_tilda = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)
        H = Z * H + (1 - Z) * H_tilda
        Y = H @ W_hq + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


SEED_ORDER = ("W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h", "W_hq", "b_q")


@pytest.mark.parametrize("T", [1, 5])
def test_seed_notebook_autograd_agrees_with_loss_and_grads(T, rng):
    V, Hn, B = 6, 5, 3
    model = npgru.GRULanguageModel(V, Hn, dtype="float64", seed=1)
    perturb(model.params, rng)
    X = rng.integers(0, V, size=(B, T))
    Y = rng.integers(0, V, size=(B, T))
    state = rng.normal(0.0, 0.5, size=(1, B, Hn))

    loss, grads, new_state = model.loss_and_grads(X, Y, state)

    params = [t64(model.params[name]).requires_grad_(True) for name in SEED_ORDER]
    inputs = F.one_hot(torch.tensor(X.T), V).to(torch.float64)  # d2l: one_hot(X.T)
    outputs, (H_T,) = seed_gru(inputs, (t64(state[0]),), params)
    labels = torch.tensor(Y.T.reshape(-1))  # d2l: Y.T.reshape(-1)
    t_loss = F.cross_entropy(outputs, labels).mean()
    t_loss.backward()

    assert abs(float(loss) - t_loss.item()) <= TOL * abs(t_loss.item())
    assert_close(new_state[0], H_T, "new state")
    assert set(grads) == set(SEED_ORDER)
    for name, p in zip(SEED_ORDER, params, strict=True):
        assert_close(grads[name], p.grad, name)
    logits, _ = model.forward(X, state)
    assert_close(logits, outputs, "logits")


# --------------------------------------------------------------------------- nn.GRU


def to_reset_after(rnn):
    """Our reset_after parameters from an nn.GRU layer (docs/derivation.md, section 2)."""
    Hn = rnn.hidden_size
    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()

    def block(a, k):  # row blocks in gate order r, z, n
        return a[k * Hn : (k + 1) * Hn]

    r, z, n = 0, 1, 2
    p = {
        "W_xz": block(w_ih, z).T,
        "W_hz": block(w_hh, z).T,
        "b_z": block(b_ih, z) + block(b_hh, z),
        "W_xr": block(w_ih, r).T,
        "W_hr": block(w_hh, r).T,
        "b_r": block(b_ih, r) + block(b_hh, r),
        "W_xh": block(w_ih, n).T,
        "W_hh": block(w_hh, n).T,
        "b_h": block(b_ih, n),
        "b_hh": block(b_hh, n),
    }
    return {name: np.ascontiguousarray(a.numpy()) for name, a in p.items()}


@pytest.mark.parametrize("T", [1, 4])
def test_nn_gru_agrees_with_reset_after(T, rng):
    D, Hn, B = 4, 5, 3
    torch.manual_seed(0)
    rnn = torch.nn.GRU(D, Hn, batch_first=False, dtype=torch.float64)
    with torch.no_grad():  # gate-sized weights, so that no gradient is negligible
        for w in rnn.parameters():
            w.copy_(t64(rng.normal(0.0, 0.4, size=tuple(w.shape))))
    params = to_reset_after(rnn)
    assert set(params) == set(gru.PARAM_NAMES["reset_after"])

    X = rng.normal(size=(T, B, D))
    H0 = rng.normal(0.0, 0.5, size=(B, Hn))
    C = rng.normal(size=(T, B, Hn))  # objective: sum(out * C) + sum(h_n * C_last)
    C_last = rng.normal(size=(B, Hn))

    tX = t64(X).requires_grad_(True)
    tH0 = t64(H0)[None].requires_grad_(True)
    out, h_n = rnn(tX, tH0)
    (torch.sum(out * t64(C)) + torch.sum(h_n[0] * t64(C_last))).backward()

    Hs, cache = gru.forward(X, H0, params)
    assert_close(Hs, out, "outputs")
    assert_close(Hs[-1], h_n[0], "h_n")
    dX, dH0, grads = gru.backward(C, cache, C_last)
    assert_close(dX, tX.grad, "dX")
    assert_close(dH0, tH0.grad[0], "dH0")

    # weights: each of our matrices is the transpose of a row block
    g_ih, g_hh = rnn.weight_ih_l0.grad, rnn.weight_hh_l0.grad
    gb_ih, gb_hh = rnn.bias_ih_l0.grad, rnn.bias_hh_l0.grad
    for k, gate in enumerate("rz"):
        rows = slice(k * Hn, (k + 1) * Hn)
        assert_close(grads[f"W_x{gate}"], g_ih[rows].T, f"W_x{gate}")
        assert_close(grads[f"W_h{gate}"], g_hh[rows].T, f"W_h{gate}")
        # b = b_i + b_h: both torch biases get our bias gradient
        assert_close(grads[f"b_{gate}"], gb_ih[rows], f"b_{gate} (bias_ih)")
        assert_close(grads[f"b_{gate}"], gb_hh[rows], f"b_{gate} (bias_hh)")
    n = slice(2 * Hn, 3 * Hn)
    assert_close(grads["W_xh"], g_ih[n].T, "W_xh")
    assert_close(grads["W_hh"], g_hh[n].T, "W_hh")
    assert_close(grads["b_h"], gb_ih[n], "b_h")
    assert_close(grads["b_hh"], gb_hh[n], "b_hh")


def test_nn_gru_differs_from_the_d2l_variant(rng):
    """The cross-check can fail: the d2l equations do not reproduce nn.GRU."""
    D, Hn, B = 3, 4, 2
    rnn = torch.nn.GRU(D, Hn, dtype=torch.float64)
    with torch.no_grad():
        for w in rnn.parameters():
            w.copy_(t64(rng.normal(0.0, 0.4, size=tuple(w.shape))))
    params = to_reset_after(rnn)
    d2l = {name: a for name, a in params.items() if name != "b_hh"}
    X, H0 = rng.normal(size=(3, B, D)), rng.normal(size=(B, Hn))
    out, _ = rnn(t64(X), t64(H0)[None])
    assert not np.allclose(gru.forward(X, H0, d2l)[0], out.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(gru.forward(X, H0, params)[0], out.detach().numpy(), atol=TOL)


def test_float32_training_step_matches_seed_autograd(rng):
    """The default float32 model agrees with float64 autograd to float32 accuracy."""
    V, Hn, B, T = 5, 6, 2, 4
    model = npgru.GRULanguageModel(V, Hn, seed=2)
    params64 = {name: model.params[name].astype(np.float64) for name in SEED_ORDER}
    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    loss, grads, _ = model.loss_and_grads(X, Y, model.begin_state(B))
    tparams = [t64(params64[name]).requires_grad_(True) for name in SEED_ORDER]
    outputs, _ = seed_gru(
        F.one_hot(torch.tensor(X.T), V).to(torch.float64),
        (torch.zeros(B, Hn, dtype=torch.float64),),
        tparams,
    )
    t_loss = F.cross_entropy(outputs, torch.tensor(Y.T.reshape(-1)))
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) < 1e-6
    for name, p in zip(SEED_ORDER, tparams, strict=True):
        scale = max(1.0, float(p.grad.abs().max()))
        assert np.max(np.abs(grads[name] - p.grad.numpy())) < 1e-5 * scale, name


# --------------------------------------------------------------------------- the optimiser


def test_adam_and_the_average_equal_pytorchs(rng):
    """npgru.optim's Adam against torch.optim.Adam, and its averaged weights against
    torch.optim.swa_utils' exponential average, step by step in float64."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from npgru import optim

    shapes = {"W": (3, 4), "U": (4, 4), "b": (4,)}
    params = npgru.FlatDict.from_arrays({k: rng.normal(size=s) for k, s in shapes.items()})
    module = torch.nn.ParameterList([torch.nn.Parameter(t64(params[k])) for k in shapes])
    adam = torch.optim.Adam(module.parameters(), lr=0.01)
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    state = optim.new_state(params, "adam", 0.9)
    for step in range(8):
        grads = {k: rng.normal(scale=10.0 ** (step % 4 - 2), size=s) for k, s in shapes.items()}
        for p, k in zip(module.parameters(), shapes, strict=True):
            p.grad = t64(grads[k])
        adam.step()
        ema.update_parameters(module)
        optim.step(params, npgru.FlatDict.from_arrays(grads), 0.01, state)
        if step == 0:
            first = params.copy()  # p_1, the first iterate
    for p, k in zip(module.parameters(), shapes, strict=True):
        assert_close(params[k], p, f"Adam {k}")
    # torch's average a starts at the first iterate p_1 (a_1 = p_1, then a ← d·a + (1−d)·p);
    # npgru's p̄ is the normalised mean (eq. 20). Summing both out: a_t = (1 − dᵗ) p̄_t + dᵗ p_1.
    t, d = state["t"], 0.9
    for a, k in zip(ema.module.parameters(), shapes, strict=True):
        assert_close((1 - d**t) * state["average"][k] + d**t * first[k], a, f"average {k}")


def test_the_pytorch_baseline_runs_the_recipe(capsys):
    """benchmarks/torch_timemachine.py with the example's flags beyond d2l (a short run)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "torch_timemachine.py"
    spec = importlib.util.spec_from_file_location("torch_timemachine", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--epochs", "2", "--num-hiddens", "8", "--num-layers", "2", "--dropout", "0.2",
                 "--optimizer", "adam", "--average", "0.9", "--val-fraction", "0.2",
                 "--max-tokens", "2000", "--batch-size", "4", "--num-steps", "8", "--threads",
                 "1", "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    val = float(out.split("validation perplexity ")[1].split(",")[0])
    assert 1 < val < 28
    with pytest.raises(SystemExit):
        script.main(["--scratch", "--optimizer", "adam", "--epochs", "1"])
