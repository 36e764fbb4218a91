r"""The CUDA path: :func:`npgru.gru.forward`, :func:`~npgru.gru.backward` and the loss as
hand-written kernels, for CuPy arrays.

The array-API code in :mod:`npgru.gru` is the reference: it reads like the derivation and
runs anywhere. On a GPU it is slow for a reason that has nothing to do with the GPU: each
time step issues about 35 small operations, and launching one from Python costs more host
time (6–20 µs) than the GPU needs to run it. This module keeps the same equations, buffers
and signatures and changes only how the time loop runs (``npgru/kernels/gru.cu``):

* the whole time loop of a layer is **one persistent kernel** (Diamos et al. 2016): its
  blocks stay resident and meet at a grid-wide barrier when a step needs a vector that
  other blocks wrote (2 barriers per step for d2l, 1 for reset_after, in each direction);
* inside a step, the recurrent product is fused with the gate equations that follow it
  (Appleyard et al. 2016): one pass computes ``H_{t-1} W_h`` for a tile of units and
  applies eqs. 1–4 to it without a round trip through memory;
* where shared memory allows (3H × 32 values per block, with a block for every tile: d2l's
  sizes), each block keeps its columns of the recurrent weights on chip for all T steps
  (:func:`plan`), so that a step's product does not wait on loads from L2;
* nothing is launched before the forward kernel for int64 token ids: it gathers the rows
  of ``W_xz``, ``W_xr``, ``W_xh`` and adds ``b_z``, ``b_r``, ``b_h`` itself, reads the ids
  through their strides and copies H0 into ``Hs[0]`` (other integer ids are converted
  first; dense inputs take one product ``X W_x·`` per gate);
* the weight gradients are the sums of :func:`npgru.gru.weight_grads`, formed after the
  loop, each where the caller keeps it (no copies): one cuBLAS product per matrix, and for
  token ids one kernel for the six input-side gradients instead of a one-hot product;
* the softmax cross-entropy is one kernel, one warp per row, with the mean over the rows
  taken after a grid barrier.

Nothing here waits for the GPU: token ids are not range-checked on the device (that would
be a host synchronization per call); an id outside ``[0, D)`` makes its states NaN and a
label outside ``[0, V)`` makes the loss NaN, so a bad id can never pass unnoticed. The
data loader makes the ids, and checks them once, on the host.

``tests/test_cupy.py`` proves this path equal to the reference (float64 to 1e-12 relative)
on a GPU; ``tests/test_cuda_compile.py`` compiles every kernel with NVRTC on any machine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from npgru import gru
from npgru.backend import contiguous, namespace_of
from npgru.errors import BackendError, ConfigError, ShapeError
from npgru.loss import check_logits

Array = Any

#: The CUDA C source of every kernel, compiled by CuPy (NVRTC) at first use.
SOURCE = Path(__file__).with_name("kernels") / "gru.cu"
#: Threads per block of the GRU kernels (8 warps; must match WARPS in the source).
THREADS = 256
#: Token ids per work item of the token_grads kernel (as the source defines it).
TOKENS_PER_ITEM = 16
#: Compiler options (the source uses C++17 and cooperative groups).
OPTIONS = ("-std=c++17",)


def _require_cupy(xp: Any) -> None:
    if getattr(xp, "__name__", "") != "cupy":
        raise BackendError(
            "the CUDA path runs on CuPy arrays only: use impl='reference' for "
            f"{getattr(xp, '__name__', xp)} arrays"
        )


@functools.cache
def _module(device_id: int) -> Any:
    """The compiled kernels for one device (CuPy also caches the binary on disk)."""
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(
            code=SOURCE.read_text(), options=OPTIONS, enable_cooperative_groups=True
        )


@functools.cache
def _kernel(device_id: int, name: str) -> Any:
    """Kernel ``name`` on one device, allowed all the dynamic shared memory a block can have
    (a launch that asks for more than 48 KB needs that limit raised first)."""
    import cupy
    from cupy_backends.cuda.api import runtime

    try:
        kernel = _module(device_id).get_function(name)
    # CompileException, most often: CUDA headers missing; RuntimeError or OSError: CuPy found
    # no NVRTC library to compile with (cupy-cuda12x installed without its [ctk] extra)
    except (cupy.cuda.compiler.CompileException, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(
            f"npgru's CUDA kernels did not compile ({first}): install CuPy with its CUDA "
            "components (pip install 'npgru[cuda12]'), or use impl='reference'"
        ) from exc
    optin = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id)
    with cupy.cuda.Device(device_id):
        kernel.max_dynamic_shared_size_bytes = max(0, optin - kernel.shared_size_bytes)
    return kernel


@dataclass(frozen=True)
class Device:
    """What the launch planning needs to know of a GPU (``cudaDeviceGetAttribute``)."""

    #: e.g. "Tesla T4", for messages
    name: str
    #: (major, minor): (7, 5) for sm_75
    compute_capability: tuple[int, int]
    #: multiprocessors (``cudaDevAttrMultiProcessorCount``)
    sms: int
    #: bytes of shared memory a block may have, static and dynamic together, once it opts in
    #: (``cudaDevAttrMaxSharedMemoryPerBlockOptin``)
    shared_per_block_optin: int
    #: ``cudaDevAttrMaxThreadsPerBlock``
    max_threads_per_block: int
    #: ``cudaDevAttrCooperativeLaunch``: the device can launch a grid whose blocks meet at a
    #: grid-wide barrier
    cooperative_launch: bool


class Launch(NamedTuple):
    """A planned launch: ``blocks`` blocks of THREADS, each with ``shared`` bytes of dynamic
    shared memory (the weight slab, or 0)."""

    blocks: int
    shared: int


def unsupported(device: Device) -> str | None:
    """Why none of the kernels can run on ``device`` (they all meet at a grid barrier, in
    blocks of THREADS), or ``None`` where they can."""
    if not device.cooperative_launch or device.compute_capability < (6, 0):
        return (
            f"{device.name} (sm_{device.compute_capability[0]}{device.compute_capability[1]}) "
            "cannot launch cooperative kernels (cudaDevAttrCooperativeLaunch is 0)"
        )
    if device.max_threads_per_block < THREADS:
        return f"{device.name} runs at most {device.max_threads_per_block} threads per block"
    return None


def plan(
    device: Device,
    name: str,
    work: int,
    slab: int,
    static_shared: int,
    blocks_per_sm: Callable[[int], int],
) -> Launch:
    """The launch of kernel ``name`` for ``work`` tiles (or rows, or work items) on ``device``.

    A pure function of the device's properties and the occupancy calculator's answer, so that
    the planning can be tested for any GPU without one.

    Args:
        device: the GPU's properties.
        name: the kernel, for messages.
        work: the tiles, rows or work items; every kernel loops over what its grid does not
            cover, so any grid size from 1 up is correct.
        slab: bytes of dynamic shared memory for the weights on chip (0: the kernel has none).
        static_shared: the kernel's own shared arrays, in bytes.
        blocks_per_sm: blocks resident per multiprocessor with that many bytes of dynamic
            shared memory (``cudaOccupancyMaxActiveBlocksPerMultiprocessor``).

    Returns:
        The slab, where it leaves a resident block for every tile (a block with two tiles
        works through them one after the other in every step, which likely costs more than
        the loads the slab saves; ``benchmarks/cuda_kernels.py`` times both ways); else no
        slab and at most as many blocks as are resident at once: the grid barrier of a
        cooperative launch needs every block resident.

    Raises:
        BackendError: the device cannot launch cooperative kernels, or no block fits.
    """
    reason = unsupported(device)
    if reason is not None:
        raise BackendError(f"{reason}: use impl='reference'")

    def resident(shared: int) -> int:
        if static_shared + shared > device.shared_per_block_optin:
            return 0
        return max(0, blocks_per_sm(shared)) * device.sms

    if slab > 0 and resident(slab) >= work:
        return Launch(work, slab)
    blocks = resident(0)
    if blocks == 0:
        raise BackendError(
            f"no block of {name} fits on {device.name} ({static_shared} bytes of shared "
            f"memory, {THREADS} threads): use impl='reference'"
        )
    return Launch(min(work, blocks), 0)


@functools.cache
def _device_properties(device_id: int) -> Device:
    from cupy_backends.cuda.api import runtime

    def attribute(name: str, number: int) -> int:
        return int(runtime.deviceGetAttribute(getattr(runtime, name, number), device_id))

    name = runtime.getDeviceProperties(device_id)["name"]
    return Device(
        name=name.decode() if isinstance(name, bytes) else str(name),
        compute_capability=(
            attribute("cudaDevAttrComputeCapabilityMajor", 75),
            attribute("cudaDevAttrComputeCapabilityMinor", 76),
        ),
        sms=attribute("cudaDevAttrMultiProcessorCount", 16),
        shared_per_block_optin=attribute("cudaDevAttrMaxSharedMemoryPerBlockOptin", 97),
        max_threads_per_block=attribute("cudaDevAttrMaxThreadsPerBlock", 1),
        cooperative_launch=bool(attribute("cudaDevAttrCooperativeLaunch", 95)),
    )


def _device(xp: Any) -> Device:
    """The properties of the current device."""
    return _device_properties(xp.cuda.Device().id)


def _static_shared(xp: Any, name: str) -> int:
    """Bytes of the shared arrays kernel ``name`` declares itself."""
    return int(_kernel(xp.cuda.Device().id, name).shared_size_bytes)


def _blocks_per_sm(xp: Any, name: str, shared: int) -> int:
    """The driver's occupancy calculator: blocks of ``name`` resident per multiprocessor,
    each with ``shared`` bytes of dynamic shared memory."""
    return _occupancy(xp.cuda.Device().id, name, shared)


@functools.cache
def _occupancy(device_id: int, name: str, shared: int) -> int:
    from cupy_backends.cuda.api import driver

    kernel = _kernel(device_id, name)
    if shared > kernel.max_dynamic_shared_size_bytes:
        return 0
    with _cupy_device(device_id):
        return int(
            driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.kernel.ptr, THREADS, shared)
        )


def _cupy_device(device_id: int) -> Any:
    import cupy

    return cupy.cuda.Device(device_id)


def _plan(name: str, xp: Any, work: int, slab: int = 0) -> Launch:
    """:func:`plan` for the current device."""
    return plan(
        _device(xp),
        name,
        work,
        slab,
        _static_shared(xp, name),
        lambda shared: _blocks_per_sm(xp, name, shared),
    )


def unavailable(xp: Any) -> str | None:
    """Why the CUDA path cannot run on the current device of ``xp`` (CuPy), or ``None``.

    Checks what holds for every call: the device can launch cooperative kernels, every kernel
    compiles, and a block of each fits (without a slab; the slab is optional).
    """
    reason = unsupported(_device(xp))
    if reason is not None:
        return reason
    try:
        for name in kernel_names():
            plan(_device(xp), name, 1, 0, _static_shared(xp, name),
                 functools.partial(_blocks_per_sm, xp, name))  # fmt: skip
    except BackendError as exc:
        return str(exc).removesuffix(": use impl='reference'")
    return None


def _tile_height(B: int) -> int:
    """BT, the batch rows per tile: 8 where the batch is large, so a weight load serves more
    rows; 4 otherwise, so that small batches still give enough tiles to fill the GPU."""
    return 8 if B >= 64 else 4


def kernel_names() -> list[str]:
    """The entry points this module launches, as the source names them."""
    gru = [f"gru_{d}_{t}_bt{bt}" for d in ("forward", "backward") for t in ("f32", "f64")
           for bt in (4, 8)]  # fmt: skip
    return [*gru, "token_grads_f32", "token_grads_f64", "softmax_xent_f32", "softmax_xent_f64"]


def _gru_kernel(name: str, dtype: Any, B: int, H: int) -> tuple[str, int]:
    """The entry point of ``name`` (``"gru_forward"`` or ``"gru_backward"``) for this element
    type and batch, and how many tiles of 32 units × BT rows cover the (B, H) state."""
    BT = _tile_height(B)
    tiles = -(-H // 32) * -(-B // BT)
    return f"{name}_{_suffix(dtype)}_bt{BT}", tiles


def _suffix(dtype: Any) -> str:
    return "f32" if np.dtype(dtype) == np.float32 else "f64"


def _slab(name: str, xp: Any, tiles: int, H: int, dtype: Any) -> int:
    """Bytes of dynamic shared memory for a block's copy of its 32 columns of the recurrent
    weights (3H rows: W_hz, W_hr, W_hh forward; W_hᵀ and W_hhᵀ backward), or 0 where
    :func:`plan` has the kernel read them from global memory."""
    return _plan(name, xp, tiles, 3 * H * 32 * np.dtype(dtype).itemsize).shared


def _ids(X: Array, xp: Any) -> tuple[Array, int, int]:
    """Token ids (T, B) as the kernels read them: int64 (a copy only for other integer types),
    with their strides along t and b in elements (no copy of a transposed view)."""
    ids = X if X.dtype == xp.int64 else X.astype(xp.int64)
    ids_t, ids_b = (stride // ids.itemsize for stride in ids.strides)
    return ids, ids_t, ids_b


def _launch(name: str, xp: Any, launch: Launch, args: tuple) -> None:
    """Run kernel ``name`` on the current device as ``launch`` plans.

    This and :func:`_device`, :func:`_static_shared` and :func:`_blocks_per_sm` are the calls
    here that ask the device (tests/test_cuda_emulated.py puts a CPU emulator in their place).
    """
    kernel = _kernel(xp.cuda.Device().id, name)
    kernel((launch.blocks,), (THREADS,), args, shared_mem=launch.shared)


def forward(
    X: Array, H0: Array, params: gru.Params, *, workspace: gru.Workspace | None = None
) -> tuple[Array, gru.SeqCache]:
    """:func:`npgru.gru.forward` as one kernel launch (same arguments, same results).

    Args:
        X: inputs (T, B, D), float; or token ids (T, B), int.
        H0: initial state (B, H).
        params: the GRU parameters, CuPy arrays.
        workspace: reuse its buffers (a second call overwrites the returned states).

    Returns:
        Hs (T, B, H), the states H_1..H_T, and the cache for :func:`backward` (or for
        :func:`npgru.gru.backward`: the buffers are the same).
    """
    variant, D, H, dtype, tokens = gru._check_sequence(X, H0, params)
    xp = namespace_of(params["W_xz"])
    _require_cupy(xp)
    T, B = X.shape[:2]
    # everything the kernel needs is passed as it is: no concatenation, no W_x + b table, no
    # copy of the ids or of H0. Each would be one more launch, issued from Python while the
    # GPU waits for this kernel.
    p = {name: contiguous(a) for name, a in params.items()}
    if tokens:  # for one-hot X_t, X_t W_x· is row ids[t, b] of W_x·: the kernel gathers it
        ids, ids_t, ids_b = _ids(X, xp)
        inputs = tuple(p[name] for name in gru.INPUT_MATRICES)
    else:  # X W_x· for all steps at once, (T·B, H) each
        X_flat = xp.reshape(X, (T * B, D))
        inputs = tuple(X_flat @ p[name] for name in gru.INPUT_MATRICES)
        ids, ids_t, ids_b = inputs[0], 0, 0  # ids: an unread placeholder
    reset_after = variant == "reset_after"
    b_hh = p["b_hh"] if reset_after else p["b_h"]  # likewise

    H0 = contiguous(H0)
    # the kernel sets Hs[0] = H0
    Hs, Z, R, H_tilde, RH, G = gru._forward_buffers(workspace, H0, T, variant)
    i32 = np.int32
    args: tuple[Any, ...]
    args = (i32(T), i32(B), i32(H), i32(D), i32(reset_after), ids, i32(ids_t), i32(ids_b))
    args += (i32(tokens), *inputs, p["b_z"], p["b_r"], p["b_h"], p["W_hz"], p["W_hr"])
    # of RH and G the variant keeps one; Z stands in for the other, unread and unwritten
    args += (p["W_hh"], b_hh, H0, Hs, Z, R, H_tilde, Z if RH is None else RH)
    name, tiles = _gru_kernel("gru_forward", dtype, B, H)
    launch = _plan(name, xp, tiles, _slab(name, xp, tiles, H, dtype))
    args += (Z if G is None else G, i32(launch.shared > 0))
    _launch(name, xp, launch, args)
    return Hs[1:, ...], gru.SeqCache(X, Hs, Z, R, H_tilde, RH, G, params)


def backward(
    dHs: Array | None,
    cache: gru.SeqCache,
    dH_last: Array | None = None,
    *,
    workspace: gru.Workspace | None = None,
    grads: gru.Params | None = None,
) -> tuple[Array | None, Array, gru.Params]:
    """:func:`npgru.gru.backward` as one kernel launch, then the weight gradients.

    Args:
        dHs: gradient with respect to H_1..H_T (T, B, H), or ``None``.
        cache: from :func:`forward` or :func:`npgru.gru.forward`.
        dH_last: extra gradient with respect to H_T (B, H), or ``None``.
        workspace: reuse its buffers.
        grads: the arrays to write the parameter gradients into, C-contiguous, one per
            parameter with its shape and dtype (e.g. views of a FlatDict); ``None``: new ones.

    Returns:
        dX (T, B, D) (``None`` for token ids), dH0 (B, H) and the parameter gradients
        (``grads`` itself when given).
    """
    variant = gru._check_backward(dHs, cache, dH_last, grads)
    if cache.M is not None:
        raise ConfigError("a cache with lengths runs back on npgru.gru.backward only")
    _, Hs, Z, R, H_tilde, _, G, params, _ = cache
    xp = namespace_of(Hs)
    _require_cupy(xp)
    if grads is None:
        grads = {name: xp.empty(p.shape, dtype=p.dtype) for name, p in params.items()}  # row-major
    elif not all(g.flags.c_contiguous for g in grads.values()):
        raise ShapeError("the CUDA path writes gradients into C-contiguous arrays only: pass "
                         "grads=None, or contiguous arrays")  # fmt: skip
    T, B, H = Z.shape
    dtype = Z.dtype
    empty = gru._buffers(workspace)
    dA = empty(xp, "dA", (T, B, 3 * H), dtype)
    dG = empty(xp, "dG", (T, B, H), dtype) if variant == "reset_after" else None
    S = empty(xp, "S", (B, H), dtype)  # the kernel's per-element scratch
    dH0 = xp.empty((B, H), dtype=dtype)
    i32 = np.int32
    args: tuple[Any, ...]
    args = (i32(T), i32(B), i32(H), i32(variant == "reset_after"))
    args += (Hs, i32(0)) if dHs is None else (contiguous(dHs), i32(1))  # Hs: an unread placeholder
    args += (Hs, i32(0)) if dH_last is None else (contiguous(dH_last), i32(1))
    args += (Hs, Z, R, H_tilde, Z if G is None else G)  # Z: an unread placeholder (d2l)
    W_hT = gru._hidden_T(params, variant)
    # W_hhᵀ: d2l's product through R ⊙ H_{t-1}; reset_after has none (W_hT: a placeholder)
    args += (W_hT, W_hT if variant == "reset_after" else contiguous(params["W_hh"].T))
    name, tiles = _gru_kernel("gru_backward", dtype, B, H)
    launch = _plan(name, xp, tiles, _slab(name, xp, tiles, H, dtype))
    args += (dA, dA if dG is None else dG, S, dH0, i32(launch.shared > 0))
    _launch(name, xp, launch, args)
    return _weight_grads(cache, dA, dG, grads), dH0, grads


def _weight_grads(cache: gru.SeqCache, dA: Array, dG: Array | None, grads: gru.Params) -> Array:
    """Eq. 12 for all steps at once, as :func:`npgru.gru.weight_grads`, written into ``grads``.

    The same sums, arranged so that each gradient is formed where it is kept, with no copy:
    one cuBLAS product or column sum per parameter, and for token ids one kernel for the
    six input-side gradients (``token_grads``: the rows of dA of each token added up, the
    one-hot product without the one-hot matrix). Returns dX (T, B, D), or ``None`` for ids.
    """
    X, Hs, RH, params = cache.X, cache.Hs, cache.RH, cache.params
    xp = namespace_of(Hs)
    T, B, H3 = dA.shape
    H, D = H3 // 3, params["W_xz"].shape[0]
    dA_flat = xp.reshape(dA, (T * B, H3))
    dA_z, dA_r, dA_h = (dA_flat[:, i * H : (i + 1) * H] for i in range(3))
    H_prev_T = xp.reshape(Hs[:-1, ...], (T * B, H)).T
    biases = ("b_z", "b_r", "b_h")
    dX = None
    if X.ndim == 2:
        ids, ids_t, ids_b = _ids(X, xp)
        i32 = np.int32
        args = (i32(T), i32(B), i32(H), i32(D), ids, i32(ids_t), i32(ids_b), dA)
        args += tuple(grads[name] for name in (*gru.INPUT_MATRICES, *biases))
        items = -(-H3 // 32) * -(-D // TOKENS_PER_ITEM)
        name = f"token_grads_{_suffix(dA.dtype)}"
        _launch(name, xp, _plan(name, xp, items), args)
    else:
        X_flat = xp.reshape(X, (T * B, D))
        gates = zip(gru.INPUT_MATRICES, biases, (dA_z, dA_r, dA_h), strict=True)
        for W_name, b_name, dA_g in gates:
            xp.matmul(X_flat.T, dA_g, out=grads[W_name])
            xp.sum(dA_g, axis=0, out=grads[b_name])
        W_x = xp.concat([params[name] for name in gru.INPUT_MATRICES], axis=1)
        dX = xp.reshape(dA_flat @ W_x.T, (T, B, D))
    xp.matmul(H_prev_T, dA_z, out=grads["W_hz"])
    xp.matmul(H_prev_T, dA_r, out=grads["W_hr"])
    if dG is None:  # d2l: W_hh multiplies R_t ⊙ H_{t-1}
        xp.matmul(xp.reshape(RH, (T * B, H)).T, dA_h, out=grads["W_hh"])
    else:
        dG_flat = xp.reshape(dG, (T * B, H))
        xp.matmul(H_prev_T, dG_flat, out=grads["W_hh"])
        xp.sum(dG_flat, axis=0, out=grads["b_hh"])
    return dX


def softmax_cross_entropy(O: Array, y: Array) -> tuple[Array, Array]:
    """:func:`npgru.loss.softmax_cross_entropy` as one kernel launch (no host synchronization):
    each row's loss and gradient, then, after a grid barrier, their mean.

    Args:
        O: logits (N, V), float, CuPy.
        y: labels (N,), integers; one outside [0, V) makes the loss NaN.

    Returns:
        ``(loss, dO)``: the mean loss as a 0-d array, and d loss / dO (N, V).
    """
    check_logits(O, y)
    xp = namespace_of(O)
    _require_cupy(xp)
    N, V = O.shape
    O = contiguous(O)
    dO = xp.empty_like(O)
    rows, loss = xp.empty((N,), dtype=O.dtype), xp.empty((), dtype=O.dtype)
    y = contiguous(y.astype(xp.int64, copy=False))
    args = (np.int32(N), np.int32(V), O, y, dO, rows, loss)
    name = f"softmax_xent_{_suffix(O.dtype)}"
    _launch(name, xp, _plan(name, xp, -(-N // (THREADS // 32))), args)  # a warp a row
    return loss, dO
