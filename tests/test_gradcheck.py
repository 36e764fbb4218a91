"""Tests of npgru.check_gradients: it must catch wrong gradients, name where they are wrong,
pass right ones, subsample on request, and leave its inputs exactly as it found them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_STEP, FD_THRESHOLD, random_params

import npgru
from npgru import gru


def quadratic(rng):
    """f(W, v) = Σ (x W)² + Σ sin(v) · (x W)[0], with its analytic gradients."""
    x = rng.normal(size=(3, 4))
    W = rng.normal(size=(4, 5))
    v = rng.normal(size=(5,))

    def f():
        Y = x @ W
        return float(np.sum(Y**2) + np.sum(np.sin(v) * Y[0]))

    def grads():
        Y = x @ W
        dY = 2 * Y
        dY[0] += np.sin(v)
        return {"W": x.T @ dY, "v": np.cos(v) * Y[0]}

    return f, {"W": W, "v": v}, grads()


def test_correct_gradients_pass(rng):
    f, inputs, grads = quadratic(rng)
    report = npgru.check_gradients(f, inputs, grads, h=FD_STEP, threshold=FD_THRESHOLD)
    assert report.passed
    assert bool(report)
    assert report.max_error < FD_THRESHOLD
    assert set(report.entries) == {"W", "v"}
    assert report.entries["W"].checked == 20
    assert report.entries["v"].checked == 5
    text = str(report)
    assert "PASSED" in text
    assert "FAILED" not in text
    assert "W" in text and "v" in text


def test_scaled_gradient_fails(rng):
    f, inputs, grads = quadratic(rng)
    grads["W"] = grads["W"] * 1.01
    report = npgru.check_gradients(f, inputs, grads, h=FD_STEP, threshold=FD_THRESHOLD)
    assert not report.passed
    assert not bool(report)
    assert report.entries["W"].rel_error == pytest.approx(0.01 / 1.01, rel=1e-4)
    assert report.entries["v"].rel_error < FD_THRESHOLD
    assert "FAILED" in str(report)
    # the worst entry is where the absolute gradient is largest (1% of it is the error)
    worst = np.unravel_index(np.argmax(np.abs(grads["W"])), grads["W"].shape)
    assert report.entries["W"].worst_index == tuple(int(i) for i in worst)


def test_one_wrong_entry_is_named(rng):
    f, inputs, grads = quadratic(rng)
    exact = grads["W"][2, 3]
    grads["W"][2, 3] += 0.05
    report = npgru.check_gradients(f, inputs, grads, h=FD_STEP, threshold=FD_THRESHOLD)
    assert not report.passed
    entry = report.entries["W"]
    assert entry.worst_index == (2, 3)
    assert entry.analytic == pytest.approx(exact + 0.05, abs=1e-12)
    assert entry.numeric == pytest.approx(exact, abs=1e-6)
    text = str(report)
    assert "FAILED" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("W "))
    assert "(2, 3)" in line


def test_a_subtly_wrong_gru_gradient_is_caught(rng):
    """Swapping dW_hz and dW_hr (an easy slip when deriving by hand) fails the check."""
    D, H, B = 3, 4, 2
    params = random_params(D, H, "d2l", rng)
    X_t, H_prev, dH = rng.normal(size=(B, D)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
    _, cache = gru.step_forward(X_t, H_prev, params)
    _, _, grads = gru.step_backward(dH, cache)
    grads["W_hz"], grads["W_hr"] = grads["W_hr"], grads["W_hz"]
    report = npgru.check_gradients(
        lambda: float(np.sum(gru.step_forward(X_t, H_prev, params)[0] * dH)),
        params,
        grads,
        h=FD_STEP,
        threshold=FD_THRESHOLD,
    )
    assert not report.passed
    assert report.entries["W_hz"].rel_error > 1e-2
    assert report.entries["W_hr"].rel_error > 1e-2
    assert report.entries["W_xz"].rel_error < FD_THRESHOLD


def test_max_entries_subsamples(rng):
    f, inputs, grads = quadratic(rng)
    calls = 0

    def counted():
        nonlocal calls
        calls += 1
        return f()

    report = npgru.check_gradients(counted, inputs, grads, max_entries=3, h=FD_STEP)
    assert report.entries["W"].checked == 3
    assert report.entries["v"].checked == 3
    assert calls == 2 * (3 + 3) + 1, "two evaluations (±h) per checked entry, one at θ"
    assert report.passed
    # larger than the array: every entry is checked
    report = npgru.check_gradients(f, inputs, grads, max_entries=100, h=FD_STEP)
    assert report.entries["W"].checked == 20
    assert report.entries["v"].checked == 5


def test_subsampling_chooses_entries_by_seed(rng):
    """One wrong entry is found by the seeds that sample it and missed by those that don't."""
    f, inputs, grads = quadratic(rng)
    grads["W"][1, 1] += 1.0
    outcomes = {
        npgru.check_gradients(f, inputs, grads, max_entries=2, seed=s, threshold=1e-6).passed
        for s in range(30)
    }
    assert outcomes == {True, False}
    again = [
        npgru.check_gradients(f, inputs, grads, max_entries=2, seed=7).entries["W"].worst_index
        for _ in range(2)
    ]
    assert again[0] == again[1]


def test_inputs_are_restored_exactly(rng):
    f, inputs, grads = quadratic(rng)
    # small entries, for which v + h − h is not v in binary: restoring must copy v back
    inputs["W"][0, 0] = 1.2345e-7
    inputs["v"][:] = 3.3e-6 * np.arange(1, 6)
    assert (1.2345e-7 + FD_STEP) - FD_STEP != 1.2345e-7
    before = {name: a.copy() for name, a in inputs.items()}
    ids = {name: id(a) for name, a in inputs.items()}
    npgru.check_gradients(f, inputs, grads, h=FD_STEP)
    npgru.check_gradients(f, inputs, grads, h=1e-3, max_entries=4)
    for name, a in inputs.items():
        assert id(a) == ids[name]
        assert a.tobytes() == before[name].tobytes(), name


def test_vanishing_gradients_are_not_0_over_0(rng):
    W = rng.normal(size=(2, 2))
    report = npgru.check_gradients(lambda: 1.5, {"W": W}, {"W": np.zeros((2, 2))})
    assert report.entries["W"].rel_error == 0.0
    assert report.passed
    report = npgru.check_gradients(lambda: 1.5, {"W": W}, {"W": np.full((2, 2), 1e-3)})
    assert report.entries["W"].rel_error == pytest.approx(1.0)
    assert not report.passed


def test_threshold_decides(rng):
    f, inputs, grads = quadratic(rng)
    grads["v"] = grads["v"] * 1.001
    assert not npgru.check_gradients(f, inputs, grads, threshold=1e-4).passed
    assert npgru.check_gradients(f, inputs, grads, threshold=1e-2).passed


def test_zero_d_array_objective_is_accepted(rng):
    x = rng.normal(size=(4,))
    report = npgru.check_gradients(lambda: np.sum(x**3), {"x": x}, {"x": 3 * x**2})
    assert report.passed


def test_missing_or_misshapen_gradient_is_refused(rng):
    f, inputs, grads = quadratic(rng)
    with pytest.raises(KeyError):
        npgru.check_gradients(f, inputs, {"W": grads["W"]})
    with pytest.raises(ValueError, match="shape"):
        npgru.check_gradients(f, inputs, {"W": grads["W"].T, "v": grads["v"]})


def test_gradients_below_the_rounding_noise_are_judged_in_absolute_terms():
    """A gradient of ~2e-9 is barely resolved by differences of f ~ 1 with h = 1e-5 (noise
    ~ 2e-11 per entry): the right gradient is accepted, one off by 1e-6 is not."""
    x = np.linspace(0.5, 1.5, 6)

    def f():
        return 1.0 + 1e-9 * float(np.sum(x * x))

    report = npgru.check_gradients(f, {"x": x}, {"x": 2e-9 * x}, h=FD_STEP)
    entry = report.entries["x"]
    assert entry.rel_error > 1e-6, "relative terms alone would fail it"
    assert entry.within_noise and report.passed
    assert "within rounding noise" in str(report)
    wrong = npgru.check_gradients(f, {"x": x}, {"x": 2e-9 * x + 1e-6}, h=FD_STEP)
    assert not wrong.passed and not wrong.entries["x"].within_noise
