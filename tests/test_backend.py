"""Tests of npgru.backend: choosing NumPy or CuPy, the messages when CuPy is missing, and
moving arrays between a backend and the host."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import one_line

import npgru
from npgru.backend import Backend, get_backend, is_floating, is_integer, namespace_of
from npgru.errors import BackendError, NpgruError


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail as it does where CuPy is not installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)


def test_numpy_backend():
    be = get_backend("numpy")
    assert be.name == "numpy"
    assert be.xp is np
    assert be.device == "cpu"
    assert str(be) == "numpy (cpu)"
    assert get_backend().name == "numpy", "NumPy is the default"
    assert npgru.get_backend is get_backend


def test_backend_objects_and_modules_are_accepted():
    be = get_backend("numpy")
    assert get_backend(be) is be
    assert get_backend(np) == be


@pytest.mark.parametrize("name", ["torch", "NumPy", "", "gpu", "cuda"])
def test_unknown_name_lists_the_valid_ones(name):
    with pytest.raises(BackendError) as info:
        get_backend(name)
    msg = one_line(info.value)
    assert isinstance(info.value, NpgruError)
    assert repr(name) in msg
    for valid in ("numpy", "cupy", "auto"):
        assert valid in msg


def test_cupy_without_cupy_says_how_to_fix_it(no_cupy):
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    msg = one_line(info.value)
    assert "npgru[cuda12]" in msg
    assert "backend='numpy'" in msg and "--backend numpy" in msg  # library and example alike


def test_auto_falls_back_to_numpy_without_cupy(no_cupy):
    be = get_backend("auto")
    assert be.name == "numpy"
    assert be.xp is np


def test_model_on_cupy_without_cupy_is_a_backend_error(no_cupy):
    with pytest.raises(BackendError):
        npgru.GRULanguageModel(5, 4, backend="cupy")
    with pytest.raises(BackendError):
        npgru.gru.init_params(3, 4, backend="cupy")


def test_cupy_without_a_device_is_a_backend_error(monkeypatch):
    """A CuPy that imports but finds no usable driver: a one-line BackendError, not a crash."""

    class FakeRuntime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorInsufficientDriver")

    class FakeCuda:
        runtime = FakeRuntime

    fake = type(sys)("cupy")
    fake.cuda = FakeCuda
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    assert "backend='numpy'" in one_line(info.value) and "--backend numpy" in one_line(info.value)
    assert get_backend("auto").name == "numpy"

    FakeRuntime.getDeviceCount = staticmethod(lambda: 0)
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    assert "backend='numpy'" in one_line(info.value) and "--backend numpy" in one_line(info.value)

    FakeRuntime.getDeviceCount = staticmethod(lambda: 1)  # a device answers: auto takes it
    assert get_backend("auto").name == "cupy"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_asarray_asnumpy_round_trip(dtype, rng):
    be = get_backend("numpy")
    host = rng.normal(size=(3, 4)).astype(dtype)
    a = be.asarray(host)
    back = be.asnumpy(a)
    assert isinstance(back, np.ndarray)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, host)
    assert be.asarray([1, 2], dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(be.asnumpy(be.asarray([[1.5, 2.5]])), [[1.5, 2.5]])


def test_namespace_and_dtype_helpers():
    assert namespace_of(np.zeros(2)) is np
    assert namespace_of(1.0, 2) is np
    assert is_floating(np, np.dtype(np.float32))
    assert is_floating(np, np.dtype(np.float64))
    assert not is_floating(np, np.dtype(np.float16))
    assert not is_floating(np, np.dtype(np.int32))
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
        assert is_integer(np, np.dtype(t)), t
    assert not is_integer(np, np.dtype(bool))
    assert not is_integer(np, np.dtype(np.float64))


def test_backend_is_immutable():
    be = Backend("numpy", np)
    with pytest.raises(AttributeError):
        be.name = "cupy"  # type: ignore[misc]


def test_a_module_that_is_no_array_namespace_is_refused():
    import math

    with pytest.raises(npgru.BackendError) as err:
        npgru.get_backend(math)
    msg = str(err.value)
    assert "math" in msg and "array namespace" in msg and "\n" not in msg
