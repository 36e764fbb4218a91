"""Tests of softmax cross-entropy (npgru.loss), global-norm clipping and SGD (npgru.optim),
and the flat parameter buffer (npgru.FlatDict)."""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
from conftest import FD_STEP, FD_THRESHOLD, one_line

import npgru
from npgru import FlatDict, clip_grad_norm, global_norm, sgd, softmax_cross_entropy
from npgru.errors import ConfigError, NpgruError, ShapeError

N, V = 6, 5


def direct_loss(O, y):
    """−mean log softmax[label], row by row with Python's math (independent of the library)."""
    total = 0.0
    for row, label in zip(O.tolist(), y.tolist(), strict=True):
        m = max(row)
        total += m + math.log(math.fsum(math.exp(v - m) for v in row)) - row[label]
    return total / len(y)


def random_grads(rng, dtype=np.float64, scale=1.0):
    return {
        "W": rng.normal(0.0, scale, size=(3, 4)).astype(dtype),
        "U": rng.normal(0.0, scale, size=(4, 4)).astype(dtype),
        "b": rng.normal(0.0, scale, size=(4,)).astype(dtype),
    }


def concat_norm(grads):
    return float(
        np.linalg.norm(np.concatenate([np.ravel(g).astype(np.float64) for g in grads.values()]))
    )


# --------------------------------------------------------------------------- loss


def test_loss_equals_direct_computation(rng):
    O = rng.normal(0.0, 3.0, size=(N, V))
    y = rng.integers(0, V, size=N)
    loss, dO = softmax_cross_entropy(O, y)
    assert np.ndim(loss) == 0
    assert math.isclose(float(loss), direct_loss(O, y), rel_tol=1e-14)
    P = np.exp(O) / np.exp(O).sum(axis=1, keepdims=True)
    P[np.arange(N), y] -= 1.0
    np.testing.assert_allclose(dO, P / N, rtol=0, atol=1e-16)


def test_loss_float32(rng):
    O = rng.normal(0.0, 3.0, size=(N, V))
    y = rng.integers(0, V, size=N).astype(np.int32)
    loss, dO = softmax_cross_entropy(O.astype(np.float32), y)
    assert dO.dtype == np.float32
    assert math.isclose(float(loss), direct_loss(O, y), rel_tol=1e-6)


def test_loss_gradient_matches_finite_differences(rng):
    O = rng.normal(0.0, 2.0, size=(N, V))
    y = rng.integers(0, V, size=N)
    _, dO = softmax_cross_entropy(O, y)
    report = npgru.check_gradients(
        lambda: float(softmax_cross_entropy(O, y)[0]),
        {"O": O},
        {"O": dO},
        h=FD_STEP,
        threshold=FD_THRESHOLD,
    )
    assert report.passed, str(report)


def test_gradient_rows_sum_to_zero(rng):
    O = rng.normal(0.0, 5.0, size=(N, V))
    _, dO = softmax_cross_entropy(O, rng.integers(0, V, size=N))
    np.testing.assert_allclose(dO.sum(axis=1), 0.0, atol=1e-16)
    assert np.all(dO[dO < 0] >= -1.0 / N)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_stable(dtype):
    O = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    y = np.array([1, 0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dO = softmax_cross_entropy(O, y)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(dO))
    # row 0: log-sum-exp is 1e4 (the other terms underflow), loss 1e4 − 0;
    # row 1: lse = 1e4 + log 2, loss = 2e4 + log 2; row 2: lse = 1e4 + log 3, loss = log 3.
    expected = (1e4 + (2e4 + math.log(2)) + math.log(3)) / 3
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    np.testing.assert_allclose(dO.sum(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(dO[2], np.array([1, 1, -2]) / 9, rtol=1e-5)


def test_loss_refuses_bad_input(rng):
    O = rng.normal(size=(N, V))
    y = rng.integers(0, V, size=N)
    for args in (
        (O[0], y),  # 1-D logits
        (O.astype(np.int64), y),  # int logits
        (O, y.astype(np.float64)),  # float labels
        (O, y[:-1]),  # wrong length
        (O, y[:, None]),  # 2-D labels
    ):
        with pytest.raises(ShapeError) as info:
            softmax_cross_entropy(*args)
        one_line(info.value)


@pytest.mark.parametrize("label", [V, -1])
def test_loss_refuses_labels_out_of_range(label, rng):
    """A label outside [0, V) has no one-hot row: the loss would silently ignore it."""
    O = rng.normal(size=(N, V))
    y = rng.integers(0, V, size=N)
    y[2] = label
    with pytest.raises(ShapeError) as info:
        softmax_cross_entropy(O, y)
    one_line(info.value)


# --------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("flat", [False, True], ids=["dict", "FlatDict"])
def test_norm_is_over_all_parameters_together(flat, rng):
    grads = random_grads(rng)
    expected = concat_norm(grads)
    if flat:
        grads = FlatDict.from_arrays(grads)
    assert math.isclose(float(global_norm(grads)), expected, rel_tol=1e-14)
    norm = clip_grad_norm(grads, 1e6)
    assert np.ndim(norm) == 0
    assert math.isclose(float(norm), expected, rel_tol=1e-14)
    # the largest single array's norm is smaller: a per-array norm would be wrong
    assert max(float(np.linalg.norm(g)) for g in grads.values()) < expected


@pytest.mark.parametrize("flat", [False, True], ids=["dict", "FlatDict"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_below_threshold_gradients_are_bit_identical(flat, dtype, rng):
    grads = random_grads(rng, dtype)
    theta = concat_norm(grads) * 1.5
    before = {name: g.copy() for name, g in grads.items()}
    if flat:
        grads = FlatDict.from_arrays(grads)
    clip_grad_norm(grads, theta)
    for name, g in grads.items():
        assert g.tobytes() == before[name].tobytes(), name


@pytest.mark.parametrize("flat", [False, True], ids=["dict", "FlatDict"])
@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_above_threshold_global_norm_becomes_theta(flat, dtype, tol, rng):
    grads = random_grads(rng, dtype, scale=3.0)
    before = {name: g.astype(np.float64) for name, g in grads.items()}
    norm_before = concat_norm(grads)
    theta = 1.0
    assert norm_before > 5 * theta
    if flat:
        grads = FlatDict.from_arrays(grads)
    norm = clip_grad_norm(grads, theta)
    assert math.isclose(float(norm), norm_before, rel_tol=tol)
    assert math.isclose(concat_norm(grads), theta, rel_tol=tol)
    for name, g in grads.items():
        assert g.dtype == dtype
        np.testing.assert_allclose(g, before[name] * (theta / norm_before), rtol=10 * tol)


def test_clipping_is_in_place_and_keeps_flat_views(rng):
    grads = FlatDict.from_arrays(random_grads(rng, scale=3.0))
    views = dict(grads)
    clip_grad_norm(grads, 0.5)
    for name, view in views.items():
        assert grads[name] is view
        assert np.shares_memory(grads[name], grads.flat)
    assert math.isclose(float(np.linalg.norm(grads.flat)), 0.5, rel_tol=1e-14)
    plain = random_grads(rng, scale=3.0)
    arrays = dict(plain)
    clip_grad_norm(plain, 0.5)
    assert all(plain[name] is arrays[name] for name in plain)
    assert math.isclose(concat_norm(plain), 0.5, rel_tol=1e-14)


def test_zero_gradients_stay_zero():
    grads = {"a": np.zeros((2, 2)), "b": np.zeros(3)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm = clip_grad_norm(grads, 1.0)
    assert float(norm) == 0.0
    assert not any(np.any(g) for g in grads.values())


@pytest.mark.parametrize("theta", [0, 0.0, -1.0, float("nan")])
def test_non_positive_threshold_is_refused(theta, rng):
    grads = random_grads(rng)
    before = {name: g.copy() for name, g in grads.items()}
    with pytest.raises(ConfigError) as info:
        clip_grad_norm(grads, theta)
    assert isinstance(info.value, NpgruError)
    one_line(info.value)
    for name in grads:
        np.testing.assert_array_equal(grads[name], before[name])


# ------------------------------------------------------------- clipping at extreme scales

#: NumPy under another name: the namespace takes the path CuPy takes (frexp, ldexp, no
#: reading on the host) while the arrays stay NumPy arrays.
NUMPY_AS_DEVICE = types.ModuleType("numpy_as_device")
NUMPY_AS_DEVICE.__dict__.update(vars(np))


class DeviceLike(np.ndarray):
    def __array_namespace__(self, api_version=None):
        return NUMPY_AS_DEVICE


NAMESPACES = ["numpy", "flat", "device-like", "array-api-strict"]


def in_namespace(kind, grads):
    """``grads`` as the arrays of ``kind``; and a function reading one back as NumPy."""
    if kind == "numpy":
        return grads, np.asarray
    if kind == "flat":
        return FlatDict.from_arrays(grads), np.asarray
    if kind == "device-like":
        return {n: g.copy().view(DeviceLike) for n, g in grads.items()}, np.asarray
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    return {n: xps.asarray(g) for n, g in grads.items()}, npgru.get_backend(xps).asnumpy


def exact_norm(grads):
    """The global norm of the stored values by Python's overflow-free ``math.hypot``."""
    return math.hypot(*np.concatenate([np.ravel(g) for g in grads.values()]).tolist())


def extreme_grads(rng, dtype, scale):
    """Gradients of ~``scale`` in ``dtype``, and their exact norm."""
    grads = {n: (g * scale).astype(dtype) for n, g in random_grads(rng).items()}
    return grads, exact_norm(grads)


@pytest.mark.parametrize("kind", NAMESPACES)
@pytest.mark.parametrize(
    ("dtype", "scale", "tol"), [(np.float32, 1e20, 1e-6), (np.float32, 1e-30, 1e-6),
                                (np.float64, 1e170, 1e-14), (np.float64, 1e-170, 1e-14)],
)  # fmt: skip
def test_huge_and_tiny_gradients_get_their_norm_and_are_clipped(kind, dtype, scale, tol, rng):
    """Squares of 1e20 overflow float32 (the norm was inf and clipping zeroed every gradient)
    and squares of 1e-30 underflow (the norm was 0 and nothing was clipped)."""
    host, expected = extreme_grads(rng, dtype, scale)
    grads, to_numpy = in_namespace(kind, {n: g.copy() for n, g in host.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isclose(float(global_norm(grads)), expected, rel_tol=tol)
        theta = expected / 10  # the gradients are clipped to a tenth of their length
        norm = clip_grad_norm(grads, theta)
    assert math.isclose(float(norm), expected, rel_tol=tol)
    clipped = {n: to_numpy(grads[n]) for n in host}
    assert all(np.all(np.isfinite(g)) and g.dtype == dtype for g in clipped.values())
    assert math.isclose(exact_norm(clipped), theta, rel_tol=10 * tol)
    for n, g in host.items():  # the direction is kept
        np.testing.assert_allclose(clipped[n], g.astype(np.float64) / 10, rtol=10 * tol)


@pytest.mark.parametrize("kind", NAMESPACES)
def test_a_norm_beyond_the_dtype_still_clips_to_theta(kind, rng):
    """1e4 entries of 3e38 in float32: the norm itself is not a float32 (inf), but the
    clipped gradients are: each becomes 1/100 when τ = 1. (To 5 digits: the scale, 3e-41,
    is below float32's normal numbers.)"""
    grads, to_numpy = in_namespace(kind, {"W": np.full((100, 100), 3e38, np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the norm overflows float32, and NumPy says so
        norm = clip_grad_norm(grads, 1.0)
    assert float(norm) == math.inf
    np.testing.assert_allclose(to_numpy(grads["W"]), 0.01, rtol=1e-4)


@pytest.mark.parametrize("kind", NAMESPACES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ordinary_gradients_get_bit_for_bit_the_plain_norm(kind, dtype, rng):
    """The overflow-safe norm is √(Σ g²) exactly, in every namespace that can scale by a
    power of two (and within one rounding in the others); clipping is τ / ‖g‖ exactly."""
    for scale in (1e-4, 1.0, 1e4):
        host, _ = extreme_grads(rng, dtype, scale)
        grads, to_numpy = in_namespace(kind, {n: g.copy() for n, g in host.items()})
        # summed as the library sums: the flat buffer at once, or array by array
        arrays = [grads.flat.copy()] if kind == "flat" else list(host.values())
        plain = np.sqrt(sum(np.sum(g * g) for g in arrays))
        tau = float(plain) / 3
        expected = {n: g * (dtype(tau) / plain) for n, g in host.items()}
        norm = clip_grad_norm(grads, tau)
        if kind == "array-api-strict":  # no frexp: divides by max |g|, one rounding more
            assert math.isclose(float(norm), float(plain), rel_tol=4 * np.finfo(dtype).eps)
            continue
        assert np.asarray(norm).tobytes() == np.asarray(plain).tobytes(), kind
        for n in host:
            assert to_numpy(grads[n]).tobytes() == expected[n].tobytes(), n


@pytest.mark.parametrize("kind", NAMESPACES)
def test_a_max_norm_beyond_float32_clips_nothing(kind, rng):
    """τ = 1e300 is inf in float32: τ / max(‖g‖, τ) was inf / inf, NaN gradients."""
    host = random_grads(rng, np.float32)
    grads, to_numpy = in_namespace(kind, {n: g.copy() for n, g in host.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip_grad_norm(grads, 1e300)
    for n, g in host.items():
        assert to_numpy(grads[n]).tobytes() == g.tobytes(), n


# --------------------------------------------------------------------------- SGD


@pytest.mark.parametrize(
    ("params_flat", "grads_flat"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_sgd_update(params_flat, grads_flat, rng):
    params, grads = random_grads(rng), random_grads(rng)
    expected = {name: params[name] - 0.3 * grads[name] for name in params}
    if params_flat:
        params = FlatDict.from_arrays(params)
    if grads_flat:
        grads = FlatDict.from_arrays(dict(reversed(list(grads.items()))))  # another layout
    arrays = dict(params)
    sgd(params, grads, 0.3)
    for name in expected:
        np.testing.assert_allclose(params[name], expected[name], rtol=0, atol=1e-15)
        assert params[name] is arrays[name], "updated in place"
    if params_flat:
        assert all(np.shares_memory(params[n], params.flat) for n in params)


def test_sgd_on_same_layout_flat_buffers(rng):
    params = FlatDict.from_arrays(random_grads(rng))
    grads = params.zeros_like()
    grads.flat[...] = rng.normal(size=grads.flat.shape)
    expected = params.flat - 2.0 * grads.flat
    sgd(params, grads, 2.0)
    np.testing.assert_allclose(params.flat, expected, rtol=0, atol=1e-15)
    for name in params:
        np.testing.assert_allclose(params[name].reshape(-1), expected[_slice(params, name)])


def _slice(flat: FlatDict, name: str) -> slice:
    start = 0
    for n, shape in flat.layout:
        size = math.prod(shape)
        if n == name:
            return slice(start, start + size)
        start += size
    raise KeyError(name)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_sgd_refuses_mismatched_keys(change, rng):
    params, grads = random_grads(rng), random_grads(rng)
    if change == "missing":
        del grads["U"]
    else:
        grads["V"] = np.zeros(2)
    before = {name: p.copy() for name, p in params.items()}
    for p in (params, FlatDict.from_arrays(params)):
        with pytest.raises(ShapeError) as info:
            sgd(p, grads, 0.1)
        one_line(info.value)
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])


# --------------------------------------------------------------------------- FlatDict


def test_flatdict_layout_and_views(rng):
    arrays = random_grads(rng)
    fd = FlatDict.from_arrays(arrays)
    assert list(fd) == list(arrays)
    assert fd.layout == tuple((n, a.shape) for n, a in arrays.items())
    assert fd.flat.shape == (sum(a.size for a in arrays.values()),)
    for name, a in arrays.items():
        np.testing.assert_array_equal(fd[name], a)
        assert np.shares_memory(fd[name], fd.flat)
        assert not np.shares_memory(fd[name], a), "from_arrays copies"
    fd.flat[:] = 0.0
    assert not any(np.any(v) for v in fd.values())


def test_flatdict_assignment_copies_into_the_buffer(rng):
    fd = FlatDict.from_arrays(random_grads(rng))
    view = fd["U"]
    new = rng.normal(size=(4, 4))
    fd["U"] = new
    assert fd["U"] is view
    np.testing.assert_array_equal(fd["U"], new)
    np.testing.assert_array_equal(fd.flat[_slice(fd, "U")], new.reshape(-1))
    new[0, 0] = 123.0
    assert fd["U"][0, 0] != 123.0, "a copy, not the caller's array"
    fd.update({"b": np.ones(4)}, W=np.full((3, 4), 2.0))
    np.testing.assert_array_equal(fd.flat[_slice(fd, "b")], 1.0)
    np.testing.assert_array_equal(fd.flat[_slice(fd, "W")], 2.0)


def test_flatdict_zeros_like_and_copy_are_independent(rng):
    fd = FlatDict.from_arrays(random_grads(rng))
    z = fd.zeros_like()
    c = fd.copy()
    assert z.layout == c.layout == fd.layout
    assert not np.any(z.flat)
    np.testing.assert_array_equal(c.flat, fd.flat)
    assert not np.shares_memory(z.flat, fd.flat)
    assert not np.shares_memory(c.flat, fd.flat)
    assert all(np.shares_memory(c[n], c.flat) for n in c)
    c.flat[...] = 5.0
    assert not np.any(fd.flat == 5.0)


def test_flatdict_refuses_changes_of_structure(rng):
    fd = FlatDict.from_arrays(random_grads(rng))
    before = fd.flat.copy()
    attempts = [
        lambda: fd.__setitem__("U", np.zeros((4, 5))),  # wrong shape
        lambda: fd.__setitem__("U", np.zeros(16)),  # same size, other shape
        lambda: fd.__setitem__("b", 3.0),  # scalar
        lambda: fd.__setitem__("new", np.zeros(4)),  # unknown key
        lambda: fd.__delitem__("U"),
        lambda: fd.pop("U"),
        lambda: fd.popitem(),
        lambda: fd.clear(),
        lambda: fd.setdefault("new", np.zeros(4)),
        lambda: fd.update({"new": np.zeros(4)}),
    ]
    for attempt in attempts:
        with pytest.raises(ShapeError) as info:
            attempt()
        one_line(info.value)
    assert list(fd) == ["W", "U", "b"]
    np.testing.assert_array_equal(fd.flat, before)


def test_flatdict_layout_must_cover_the_buffer():
    with pytest.raises(ShapeError) as info:
        FlatDict(np.zeros(10), [("a", (2, 3))])
    one_line(info.value)


def test_float32_loss_is_float32(rng):
    O = rng.normal(size=(6, 5)).astype(np.float32)
    loss, dO = softmax_cross_entropy(O, rng.integers(0, 5, size=6))
    assert loss.dtype == dO.dtype == np.float32


@pytest.mark.parametrize(
    "bad", [np.ones(3, dtype=complex), np.ones(3, dtype=np.int64), [1.0, 2.0]],
    ids=["complex", "int", "list"],
)  # fmt: skip
def test_clipping_refuses_what_is_not_a_float_gradient(bad):
    """Hostile cases: complex gradients gave a complex norm, ints and lists NumPy's errors."""
    with pytest.raises(npgru.ShapeError, match=r"'W' is .*give float32 or float64 arrays"):
        npgru.clip_grad_norm({"W": bad, "b": np.ones(2)}, 1.0)
    with pytest.raises(npgru.ShapeError, match="'W'"):
        npgru.optim.global_norm({"W": bad})
