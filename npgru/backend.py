"""Choosing the array library: NumPy on the CPU, CuPy on an NVIDIA GPU.

The math modules (:mod:`npgru.gru`, :mod:`npgru.loss`, :mod:`npgru.optim`) compute with
neither NumPy nor CuPy directly (only ``gru.init_params`` draws its random numbers with NumPy,
on the host). They ask :func:`namespace_of` for the namespace of the arrays they were
given and use only calls that the array API standard defines, so the same lines run on
NumPy, on CuPy and on ``array_api_strict`` (which the tests use to prove it).

A :class:`Backend` is chosen once, at the edge of the program (the example's
``--backend`` flag), and used to create arrays and bring results back to the host.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from npgru.errors import BackendError

BACKEND_NAMES = ("numpy", "cupy", "auto")


@dataclass(frozen=True)
class Backend:
    """An array namespace and the few helpers the rest of npgru needs from it.

    Attributes:
        name: ``"numpy"``, ``"cupy"``, or the module name of another array-API namespace.
        xp: the array namespace (``numpy``, ``cupy``, ``array_api_strict``, ...).
    """

    name: str
    xp: ModuleType

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy or move ``a`` (any array-like, e.g. a NumPy array) onto this backend."""
        if self.name not in ("numpy", "cupy") and isinstance(a, np.ndarray):
            # strict namespaces accept only Python sequences or their own arrays
            return self.xp.asarray(a.tolist(), dtype=dtype)
        return self.xp.asarray(a, dtype=dtype)

    def asnumpy(self, a: Any) -> np.ndarray:
        """Return ``a`` as a NumPy array on the host (a copy for device arrays)."""
        if self.name == "numpy":
            return np.asarray(a)
        if self.name == "cupy":
            return self.xp.asnumpy(a)
        return np.from_dlpack(a)

    @property
    def device(self) -> str:
        """Where the arrays live, for messages: ``"cpu"`` or ``"cuda:0"``."""
        if self.name == "cupy":
            return f"cuda:{self.xp.cuda.Device().id}"
        return "cpu"

    def __str__(self) -> str:
        return f"{self.name} ({self.device})"


def _cupy_backend() -> Backend:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: install it with "
            "`pip install 'npgru[cuda12]'` (or 'npgru[cuda13]'), or use the numpy backend "
            "(backend='numpy', --backend numpy)"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: cupy raises its own types
        raise BackendError(
            f"backend 'cupy' found no usable CUDA device ({exc}); "
            "check the NVIDIA driver, or use the numpy backend (backend='numpy', --backend numpy)"
        ) from exc
    if count < 1:
        raise BackendError(
            "backend 'cupy' found no CUDA device; use the numpy backend (backend='numpy', "
            "--backend numpy)"
        )
    return Backend("cupy", cupy)


def get_backend(name: str | ModuleType | Backend = "numpy") -> Backend:
    """Return the backend called ``name``.

    Args:
        name: ``"numpy"`` (the default, CPU), ``"cupy"`` (NVIDIA GPU), ``"auto"`` (CuPy
            where it imports and a CUDA device answers, else NumPy), an array-API namespace
            module such as ``array_api_strict``, or a :class:`Backend` (returned as is).

    Raises:
        BackendError: ``"cupy"`` without CuPy or without a GPU, or an unknown name.

    >>> get_backend("numpy").name
    'numpy'
    """
    if isinstance(name, Backend):
        return name
    if isinstance(name, ModuleType):
        if name is np:
            return Backend("numpy", np)
        if name.__name__ == "cupy":
            return Backend("cupy", name)
        # an array namespace has at least these; `math` or `os` would fail much later
        missing = [f for f in ("asarray", "reshape", "concat", "tanh") if not hasattr(name, f)]
        if missing:
            raise BackendError(
                f"module {name.__name__!r} is not an array namespace (it has no "
                f"{', '.join(missing)}): pass numpy, cupy or an array-API namespace"
            )
        return Backend(name.__name__, name)
    if name == "numpy":
        return Backend("numpy", np)
    if name == "cupy":
        return _cupy_backend()
    if name == "auto":
        try:
            return _cupy_backend()
        except BackendError:
            return Backend("numpy", np)
    raise BackendError(
        f"unknown backend {name!r}: choose one of {', '.join(map(repr, BACKEND_NAMES))}"
    )


def namespace_of(*arrays: Any) -> ModuleType:
    """The array namespace of the first array among ``arrays`` (NumPy for plain scalars)."""
    for a in arrays:
        get_namespace = getattr(a, "__array_namespace__", None)
        if get_namespace is not None:
            return get_namespace()
        if type(a).__module__.split(".")[0] == "cupy":  # CuPy releases before the API
            return importlib.import_module("cupy")
    return np


def contiguous(x: Any) -> Any:
    """``x`` laid out row-major (C order), copied only if it is not already.

    BLAS multiplies by a row-major matrix faster than by a transposed view (about 1.4× for
    the small recurrent products here), so the backward pass makes ``Wᵀ`` contiguous once
    instead of multiplying by a view 2T times. Namespaces that have no notion of memory
    layout (the array API standard has none) get ``x`` back unchanged.
    """
    make_contiguous = getattr(namespace_of(x), "ascontiguousarray", None)
    return x if make_contiguous is None else make_contiguous(x)


def is_floating(xp: ModuleType, dtype: Any) -> bool:
    """True for the real floating dtypes npgru computes in (float32, float64)."""
    return dtype in (xp.float32, xp.float64)


def is_integer(xp: ModuleType, dtype: Any) -> bool:
    """True for signed or unsigned integer dtypes (token ids)."""
    names = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
    return any(dtype == getattr(xp, n) for n in names)
