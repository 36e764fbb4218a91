"""The CUDA path without a GPU: npgru/kernels/gru.cu compiled for the CPU, every CUDA thread a
std::thread (tests/emulator/cuda_emulator.h), behind the very Python code of npgru.cuda.

The kernels then run exactly as written, barriers and shared memory included, on NumPy
arrays, and must give the reference's numbers (float64 to 1e-12 relative, float32 to 1e-5).
A wrong index, a missing barrier or an argument passed in the wrong order fails here, in CI,
not first on a lent GPU. What only a GPU shows (speed, the memory model of its caches, the
limits of registers and shared memory) stays with tests/test_cupy.py.

Needs a C++20 compiler (g++ or clang++); skips with the reason without one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    VARIANTS,
    assert_rel,
    assert_same_backward,
    assert_same_cache,
    one_line,
    random_params,
    sequence_case,
)

import npgru
from npgru import cuda, gru, optim
from npgru.errors import ShapeError

EMULATOR = Path(__file__).with_name("emulator")
#: At most this many blocks: several, so blocks meet at the grid barrier, and fewer than the
#: tiles of most sizes below, so a block also loops over tiles, as on a small GPU.
MAX_BLOCKS = 3
TOL = {"float64": 1e-12, "float32": 1e-5}
# (T, B, H, D): 1s; H 257 across a tile edge; B 70 with tiles of 8 rows; T 60; D 40, token
# ids in three work items of token_grads (16 ids each)
SIZES = [(4, 3, 5, 6), (1, 1, 1, 3), (3, 5, 257, 7), (60, 2, 8, 5), (6, 70, 33, 4), (5, 3, 33, 40)]

HARNESS = """
#include <map>
#include <string>
#include "cuda_emulator.h"
#include "{source}"

static const std::map<std::string, std::function<void(void**)>> kernels = {{
{entries}
}};

// Runs kernel `name`; returns the bytes of shared arrays a block declared, or -1 for a name
// that is no kernel. Static shared memory is capped at CUDA's 48 KiB.
extern "C" long emulate(const char* name, unsigned grid, unsigned threads, unsigned long dynamic,
                        void** args) {{
    const auto found = kernels.find(name);
    if (found == kernels.end()) return -1;
    return long(emu::launch(grid, threads, 48 * 1024, dynamic, [&] {{ found->second(args); }}));
}}
"""


def cxx() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the CUDA emulator")
    return compiler


def static_shared(name: str) -> int:
    """Bytes of the shared arrays each kernel declares, as gru.cu sizes them (the emulator
    measures every launch against this): SMEM_SIZE(BT) = 768·BT values for the GRU kernels,
    WARPS·(16 + 1)·32 for token_grads, WARPS for the loss."""
    itemsize = 4 if "_f32" in name else 8
    if name.startswith("gru_"):
        return 768 * int(name.rsplit("_bt", 1)[1]) * itemsize
    return (8 * 17 * 32 if name.startswith("token_grads") else 8) * itemsize


@dataclass(frozen=True)
class GPU:
    """A GPU's properties for the planning, and what its occupancy calculator would answer
    (a model of it: threads, registers and shared memory per multiprocessor, each block
    with 1 KiB reserved; the kernels are taken to need 64 registers a thread)."""

    device: cuda.Device
    threads_per_sm: int
    shared_per_sm: int  # bytes

    def blocks_per_sm(self, name: str, shared: int) -> int:
        by_threads = self.threads_per_sm // cuda.THREADS
        by_registers = 65536 // (64 * cuda.THREADS)
        by_shared = self.shared_per_sm // (static_shared(name) + shared + 1024)
        return min(by_threads, by_registers, by_shared)


def gpu(name, cc, sms, optin_kib, threads_per_sm, cooperative=True, per_sm_kib=None) -> GPU:
    device = cuda.Device(name, cc, sms, optin_kib * 1024, 1024, cooperative)
    return GPU(device, threads_per_sm, (per_sm_kib or optin_kib + 1) * 1024)


#: Common GPUs, as cudaDeviceGetAttribute reports them
GPUS = {
    "T4": gpu("Tesla T4", (7, 5), 40, 64, 1024, per_sm_kib=64),
    "A100": gpu("NVIDIA A100-SXM4-40GB", (8, 0), 108, 163, 2048),
    "RTX3060": gpu("NVIDIA GeForce RTX 3060", (8, 6), 28, 99, 1536),
    "L4": gpu("NVIDIA L4", (8, 9), 58, 99, 1536),
    "H100": gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 227, 2048),
}
#: The emulator's default: a GPU of MAX_BLOCKS multiprocessors with room for one block each
#: and all the shared memory a slab can want, so that blocks also loop over tiles
SMALL = gpu("small", (8, 0), MAX_BLOCKS, 227, 256, per_sm_kib=228)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The kernels as a shared library for this CPU, and a stand-in for cuda._launch.

    ``launch.gpu`` is the GPU the planning sees (its properties and occupancy); with
    ``launch.on_chip`` False the GRU kernels read their weights from global memory. Each
    launch is recorded as (name, grid, shared).
    """
    compiler = cxx()
    build = tmp_path_factory.mktemp("emulator")
    entries = ",\n".join(f'    {{"{n}", emu::entry({n})}}' for n in cuda.kernel_names())
    (build / "harness.cpp").write_text(
        HARNESS.format(source=cuda.SOURCE.resolve(), entries=entries)
    )
    library = build / "kernels.so"
    command = [compiler, "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-w"]
    command += [f"-I{EMULATOR}", str(build / "harness.cpp"), "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 and "c++20" in done.stderr:
        pytest.skip(f"{compiler} does not know C++20: {done.stderr.strip().splitlines()[0]}")
    assert done.returncode == 0, f"gru.cu does not build for the emulator:\n{done.stderr}"
    emulate = ctypes.CDLL(str(library)).emulate
    emulate.restype = ctypes.c_long
    emulate.argtypes = [  # name, grid, threads, dynamic shared memory, arguments
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    launches = []

    def launch(name, xp, planned, args):
        assert xp is np
        suffix = "f32" if "_f32" in name else "f64"
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                if a.dtype.kind == "f":
                    assert a.flags.c_contiguous, f"{name}: an argument is not contiguous"
                    assert a.dtype == (np.float32 if suffix == "f32" else np.float64), name
                else:  # token ids and labels: the kernels read long long
                    assert a.dtype == np.int64, f"{name}: {a.dtype} ids"
                    # the forward and token_grads kernels read ids through the strides given
                    assert a.flags.c_contiguous or name.startswith(("gru_forward", "token")), name
                values.append(ctypes.c_void_p(a.ctypes.data))
            else:
                assert isinstance(a, np.int32), f"{name}: an argument of type {type(a)}"
                values.append(ctypes.c_int(int(a)))
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        grid, shared = planned
        device = launch.gpu.device
        # what a GPU would refuse: more blocks than are resident (the grid barrier would
        # deadlock), more shared memory than a block may have
        assert 1 <= grid <= launch.gpu.blocks_per_sm(name, shared) * device.sms, (name, grid)
        assert static_shared(name) + shared <= device.shared_per_block_optin, (name, shared)
        used = emulate(name.encode(), grid, cuda.THREADS, shared, pointers)
        assert used >= 0, f"no kernel {name}"
        assert used == static_shared(name), f"{name} declares {used} bytes of shared arrays"
        launches.append((name, grid, shared))

    launch.launches = launches
    return launch


@pytest.fixture
def emulated(emulator, monkeypatch):
    """npgru.cuda with its kernels run by the emulator, on NumPy arrays, planned for the
    ``emulated.gpu`` (SMALL unless a test sets another); the weights on chip where the
    planning puts them unless a test sets ``emulated.on_chip = False``."""
    monkeypatch.setattr(cuda, "_launch", emulator)
    monkeypatch.setattr(cuda, "_device", lambda xp: emulator.gpu.device)
    monkeypatch.setattr(cuda, "_static_shared", lambda xp, name: static_shared(name))
    monkeypatch.setattr(
        cuda, "_blocks_per_sm", lambda xp, name, shared: emulator.gpu.blocks_per_sm(name, shared)
    )
    planned_slab = cuda._slab
    monkeypatch.setattr(cuda, "_slab", lambda *a: planned_slab(*a) if emulator.on_chip else 0)
    monkeypatch.setattr(cuda, "_require_cupy", lambda xp: None)
    emulator.launches.clear()
    emulator.gpu, emulator.on_chip = SMALL, True
    return emulator


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}-B{}-H{}-D{}".format(*s))
@pytest.mark.parametrize("on_chip", [True, False], ids=["on-chip", "global"])
def test_kernels_equal_the_reference(emulated, variant, dtype, tokens, size, on_chip, rng):
    """With the weights on chip where the planning puts them (a block for every tile: not for
    H 257 or B 70 on 3 blocks), and from global memory."""
    emulated.on_chip = on_chip
    (X, H0, dHs, dH_last, params), (Hs, cache), (dX, dH0, grads) = sequence_case(
        size, variant, dtype, tokens, rng
    )
    _, B, H, _ = size

    tol = TOL[dtype]
    # NaN-filled workspaces: a kernel that reads an element it did not write fails
    ws, wsb = poisoned_workspace(), poisoned_workspace()
    eHs, ecache = cuda.forward(X, H0, params, workspace=ws)
    assert_rel(eHs, Hs, "Hs", tol)
    assert_same_cache(ecache, cache, tol)
    assert (dX is None) == tokens
    out = {name: np.full_like(p, np.nan) for name, p in params.items()}  # all must be written
    got = cuda.backward(dHs, ecache, dH_last, workspace=wsb, grads=out)
    assert got[2] is out
    assert_same_backward(got, (dX, dH0, grads), tol)
    suffix = "f32" if dtype == "float32" else "f64"
    tiles = -(-H // 32) * -(-B // cuda._tile_height(B))
    slab = 3 * H * 32 * np.dtype(dtype).itemsize if on_chip and tiles <= MAX_BLOCKS else 0
    assert [(n, shared) for n, _, shared in emulated.launches] == [
        (f"gru_forward_{suffix}_bt{cuda._tile_height(B)}", slab),
        (f"gru_backward_{suffix}_bt{cuda._tile_height(B)}", slab),
        *([(f"token_grads_{suffix}", 0)] if tokens else []),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weights_on_chip_give_the_same_bits(emulated, variant, dtype, rng):
    """Only the place the weights are read from differs: the sums and their order do not."""
    T, B, H, D = 4, 6, 40, 5  # 4 tiles: on chip on a GPU of 4 blocks
    emulated.gpu = gpu("4 SMs", (8, 0), 4, 227, 256, per_sm_kib=228)
    params = {n: a.astype(dtype) / 4 for n, a in random_params(D, H, variant, rng).items()}
    X, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H)).astype(dtype)
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    runs = []
    for on_chip in (True, False):
        emulated.on_chip = on_chip
        Hs, cache = cuda.forward(X, H0, params)
        _, dH0, grads = cuda.backward(dHs, cache)
        runs.append([Hs, dH0, *grads.values()])
    for on_chip, from_global in zip(*runs, strict=True):
        np.testing.assert_array_equal(on_chip, from_global)
    assert [shared > 0 for _, _, shared in emulated.launches] == [True] * 2 + [False] * 4


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("blocks", [9, 10, 20], ids=lambda n: f"{n}-blocks")
def test_weights_on_chip_with_many_column_tiles(emulated, variant, blocks, rng, monkeypatch):
    """H 257 is 9 column tiles (the last of one unit), B 5 two row tiles of 4: with 9 or 10
    blocks each block keeps one column tile on chip and takes both its row tiles (the tenth
    idles); with 20, each tile has a block of its own and two blocks idle. The planning keeps
    the weights on chip only in the last case (forced here in all three): the kernels must be
    correct in each."""
    emulated.gpu = gpu(f"{blocks} SMs", (8, 0), blocks, 227, 256, per_sm_kib=228)
    monkeypatch.setattr(cuda, "_slab", lambda name, xp, tiles, H, dtype: 3 * H * 32 * 8)
    monkeypatch.setattr(
        cuda, "_plan", lambda name, xp, work, slab=0: cuda.Launch(min(work, blocks), slab)
    )
    T, B, H, D = 3, 5, 257, 6
    scale = 2.0 / np.sqrt(H)
    params = {n: a * scale for n, a in random_params(D, H, variant, rng).items()}
    X, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H))
    dHs = rng.normal(size=(T, B, H))
    Hs, cache = gru.forward(X, H0, params)
    ref = gru.backward(dHs, cache)
    eHs, ecache = cuda.forward(X, H0, params, workspace=poisoned_workspace())
    assert_rel(eHs, Hs, "Hs", 1e-12)
    assert_same_cache(ecache, cache, 1e-12)
    assert_same_backward(cuda.backward(dHs, ecache, workspace=poisoned_workspace()), ref, 1e-12)
    assert [(grid, shared) for _, grid, shared in emulated.launches[:2]] == [
        (min(blocks, 18), 3 * H * 32 * 8)
    ] * 2


@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("D", [16, 40])
def test_token_grads_give_every_id_its_rows_and_write_nothing_else(emulated, D, ids_dtype, rng):
    """Every id of [0, D) occurs (the last of each work item's 16 included), so each row of
    dW_x must be its own tokens' rows of dA; the ids are a transposed view, as the model
    passes them (int32 ones are converted first); and no gradient is written outside its
    own array (guard bands before and after each)."""
    T, B, H = 7, 9, 5
    params = random_params(D, H, "d2l", rng)
    X = rng.permutation(np.arange(T * B) % D).astype(ids_dtype).reshape(B, T).T
    H0, dHs = rng.normal(size=(B, H)), rng.normal(size=(T, B, H))
    _, cache = gru.forward(X, H0, params)
    _, _, grads = gru.backward(dHs, cache)
    guard = 16 * H
    stores = {name: np.full(guard + p.size + guard, 7.0) for name, p in params.items()}
    out = {name: stores[name][guard:-guard].reshape(p.shape) for name, p in params.items()}
    _, ecache = cuda.forward(X, H0, params)
    cuda.backward(dHs, ecache, grads=out)
    for name in grads:
        assert_rel(out[name], grads[name], name, 1e-12)
        bands = np.concatenate([stores[name][:guard], stores[name][-guard:]])
        assert np.all(bands == 7.0), f"{name}: written outside its array"


@pytest.mark.parametrize("variant", VARIANTS)
def test_column_major_parameters_give_row_major_gradients(emulated, variant, rng):
    """Parameters may be any layout (forward copies what it must); the gradients the CUDA
    path allocates are row-major, the layout its kernels write."""
    T, B, H, D = 3, 4, 6, 5
    params = random_params(D, H, variant, rng)
    fortran = {name: np.asfortranarray(p) for name, p in params.items()}
    X, H0, dHs = (
        rng.integers(0, D, size=(T, B)),
        rng.normal(size=(B, H)),
        rng.normal(size=(T, B, H)),
    )
    _, cache = gru.forward(X, H0, params)
    ref = gru.backward(dHs, cache)
    _, ecache = cuda.forward(X, H0, fortran)
    got = cuda.backward(dHs, ecache)
    assert_same_backward(got, ref, 1e-12)
    assert all(g.flags.c_contiguous for g in got[2].values())


def poisoned_workspace() -> gru.Workspace:
    """A workspace whose new buffers start as NaN, not as whatever memory held."""
    ws = gru.Workspace()
    plain = ws.empty

    def empty(xp, name, shape, dtype):
        buffer = plain(xp, name, shape, dtype)
        buffer[...] = np.nan
        return buffer

    ws.empty = empty
    return ws


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("given", ["dHs", "dH_last", "both"])
def test_backward_with_either_upstream_gradient(emulated, variant, given, rng):
    T, B, H, D = 5, 3, 40, 4
    params = random_params(D, H, variant, rng)
    X, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H))
    dHs = rng.normal(size=(T, B, H)) if given != "dH_last" else None
    dH_last = rng.normal(size=(B, H)) if given != "dHs" else None
    _, cache = gru.forward(X, H0, params)
    _, dH0, grads = gru.backward(dHs, cache, dH_last)
    _, ecache = cuda.forward(X, H0, params)
    _, edH0, egrads = cuda.backward(dHs, ecache, dH_last)
    assert_rel(edH0, dH0, "dH0", 1e-12)
    for name in grads:
        assert_rel(egrads[name], grads[name], name, 1e-12)


def test_grads_it_cannot_write_in_place_are_refused(emulated, rng):
    T, B, H, D = 2, 3, 4, 5
    params = random_params(D, H, "d2l", rng)
    _, cache = cuda.forward(rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H)), params)
    out = {name: np.zeros_like(p) for name, p in params.items()}
    with pytest.raises(ShapeError) as err:
        cuda.backward(
            None, cache, rng.normal(size=(B, H)), grads=out | {"W_hz": np.zeros((H, H)).T}
        )
    assert "contiguous" in one_line(err.value)
    with pytest.raises(ShapeError) as err:  # and what the reference refuses
        cuda.backward(None, cache, rng.normal(size=(B, H)), grads=out | {"W_hz": np.zeros((H, 1))})
    assert "grads['W_hz']" in one_line(err.value)
    assert [launch[0] for launch in emulated.launches] == ["gru_forward_f64_bt4"]  # then refused


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_state_carried_over_in_the_same_workspace(emulated, variant, rng):
    """H0 may be the last state of the previous call with the same workspace: with T 1 the
    kernel writes H_1 over it, so it must have read all of it first. The ids may be any
    integer view: a transposed one, as the model passes, or int32."""
    T, B, H, D = 1, 3, 40, 4
    params = random_params(D, H, variant, rng)
    X1 = rng.integers(0, D, size=(B, T)).T
    X2 = rng.integers(0, D, size=(B, T)).astype(np.int32).T
    H0 = rng.normal(size=(B, H))
    Hs1, _ = gru.forward(X1, H0, params)
    Hs2, _ = gru.forward(X2, Hs1[-1], params)
    ws = gru.Workspace()  # not poisoned: that would overwrite H0 before the call
    eHs1, _ = cuda.forward(X1, H0, params, workspace=ws)
    assert_rel(eHs1, Hs1, "Hs, first call", 1e-12)
    eHs2, _ = cuda.forward(X2, eHs1[-1], params, workspace=ws)  # H0 is Hs[T] of ws itself
    assert_rel(eHs2, Hs2, "Hs, second call", 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("N", [1, 70])
def test_loss_kernel_equals_the_reference(emulated, dtype, N, rng):
    V = 37  # more than 32: a warp loops over the row
    O = (rng.normal(size=(N, V)) * 3).astype(dtype)
    y = rng.integers(0, V, size=N)
    loss, dO = npgru.softmax_cross_entropy(O, y)
    eloss, edO = cuda.softmax_cross_entropy(O, y)
    assert_rel(eloss, loss, "loss", TOL[dtype])
    assert_rel(edO, dO, "dO", TOL[dtype])


def test_bad_ids_and_labels_give_nan(emulated, rng):
    T, B, H, D = 3, 2, 4, 5
    params = random_params(D, H, "d2l", rng)
    X = rng.integers(0, D, size=(T, B))
    X[1, 0] = D  # out of range
    Hs, _ = cuda.forward(X, rng.normal(size=(B, H)), params)
    assert np.all(np.isfinite(Hs[0])) and np.all(np.isnan(Hs[1:, 0]))
    assert np.all(np.isfinite(Hs[:, 1]))  # the other sequence is untouched
    loss, dO = cuda.softmax_cross_entropy(rng.normal(size=(3, 3)), np.array([0, 3, -1]))
    assert np.isnan(float(loss)) and np.all(np.isnan(dO[1:])) and np.all(np.isfinite(dO[0]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_3_layer_training_step_equals_the_reference(emulated, variant, rng):
    """The model's own glue around the kernels: layers, output layer, loss, dropout, SGD."""
    V, H, B, T = 7, 9, 4, 6

    def model():
        m = npgru.GRULanguageModel(V, H, num_layers=3, variant=variant, dtype="float64")
        m.params.flat[...] = np.random.default_rng(1).normal(0.0, 0.4, m.params.flat.shape)
        return m

    ref, fast = model(), model()
    fast.rnn._module = fast._loss = cuda  # what impl="cuda" picks on CuPy
    X, Y = rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))
    state = rng.normal(size=(3, B, H))
    for m in (ref, fast):
        loss, grads, new_state = m.loss_and_grads(
            X, Y, state, dropout=0.3, rng=np.random.default_rng(2)
        )
        optim.sgd(m.params, grads, 0.1)
        m.result = (loss, grads.flat.copy(), new_state)
    assert_rel(fast.result[0], ref.result[0], "loss", 1e-12)
    assert_rel(fast.result[1], ref.result[1], "grads", 1e-12)
    assert_rel(fast.result[2], ref.result[2], "state", 1e-12)
    assert_rel(fast.params.flat, ref.params.flat, "params after a step", 1e-12)
    # 3 forward, the loss, 3 backward, the first layer's token-id gradients
    assert len(emulated.launches) == 3 + 1 + 3 + 1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "dense"])
def test_a_bidirectional_stacked_layer_equals_the_reference(emulated, variant, tokens, rng):
    """npgru.GRU with impl="cuda": the reverse direction reads a flipped view of X (token ids
    or floats), layer 1 reads both directions side by side (dense inputs). With lengths the
    layer runs the reference cells (the kernels have no masks) and launches nothing."""
    T, B, D, H = 5, 3, 4, 6

    def layer():
        g = npgru.GRU(D, H, 2, bidirectional=True, variant=variant, dtype="float64")
        g.params.flat[...] = np.random.default_rng(1).normal(0.0, 0.4, g.params.flat.shape)
        return g

    ref, fast = layer(), layer()
    ref._module, fast._module = gru, cuda  # what impl="reference" and impl="cuda" pick
    X = rng.integers(0, D, size=(T, B)) if tokens else rng.normal(size=(T, B, D))
    H0, d_out = rng.normal(size=(4, B, H)), rng.normal(size=(T, B, 2 * H))
    dH_n = rng.normal(size=(4, B, H))
    results = []
    for g in (ref, fast):
        out, H_n, cache = g.forward(X, H0)
        out = out.copy()
        dX, dH0, grads = g.backward(d_out, dH_n, cache)
        results.append((out, H_n, dH0, grads.flat.copy(), dX))
    for name, a, b in zip(("out", "H_n", "dH0", "grads", "dX"), *results, strict=True):
        if a is None:
            assert b is None and tokens
            continue
        assert_rel(b, a, name, 1e-12)
    # 4 forward, 4 backward, the token-id gradients of layer 0's two directions
    assert len(emulated.launches) == 8 + 2 * tokens
    emulated.launches.clear()
    _, _, cache = fast.forward(X, H0, lengths=[5, 2, 4])
    assert cache.modules == [gru, gru] and not emulated.launches


#: (T, B, H, dtype) for each GPU: the weights of H 257 take 197 KiB in float64 (on chip on an
#: H100 only) and 99 KiB in float32 (A100, H100: over the 99 KiB of the others, with the
#: kernel's own 12 KiB); B 70 takes tiles of 8 rows: 45 tiles for H 129, more than the 40
#: blocks a T4 holds at once (48 KiB of shared arrays each, 64 KiB per multiprocessor)
PLANNED = [(3, 5, 257, "float64"), (3, 5, 257, "float32"), (2, 70, 129, "float64")]
#: per GPU, for each case of PLANNED: (blocks, weights on chip) of the GRU kernels
EXPECTED_PLANS = {
    "T4": [(18, False), (18, False), (40, False)],
    "A100": [(18, False), (18, True), (45, True)],
    "RTX3060": [(18, False), (18, False), (45, False)],
    "L4": [(18, False), (18, False), (45, False)],
    "H100": [(18, True), (18, True), (45, True)],
}


@pytest.mark.parametrize("name", GPUS)
def test_launches_planned_for_common_gpus_equal_the_reference(emulated, name, rng):
    """The planning (tile height, weights on chip or not, blocks resident) fed each GPU's
    properties and occupancy; the planned launches, run by the emulator (which refuses a
    grid larger than the GPU holds or more shared memory than a block may have), give the
    reference's numbers. (The variant does not change the plan: the GPUs take turns.)"""
    emulated.gpu = GPUS[name]
    variant = VARIANTS[list(GPUS).index(name) % len(VARIANTS)]
    plans = []
    for T, B, H, dtype in PLANNED:
        emulated.launches.clear()
        D = 6
        scale = 2.0 / np.sqrt(H)
        params = {
            n: (a * scale).astype(dtype) for n, a in random_params(D, H, variant, rng).items()
        }
        X, H0 = rng.integers(0, D, size=(T, B)), rng.normal(size=(B, H)).astype(dtype)
        dHs = rng.normal(size=(T, B, H)).astype(dtype)
        Hs, cache = gru.forward(X, H0, params)
        ref = gru.backward(dHs, cache)
        O, y = rng.normal(size=(T * B, D)).astype(dtype), rng.integers(0, D, size=T * B)
        loss, dO = npgru.softmax_cross_entropy(O, y)
        tol = TOL[dtype]
        eHs, ecache = cuda.forward(X, H0, params, workspace=poisoned_workspace())
        assert_rel(eHs, Hs, "Hs", tol)
        assert_same_backward(cuda.backward(dHs, ecache, workspace=poisoned_workspace()), ref, tol)
        eloss, edO = cuda.softmax_cross_entropy(O, y)
        assert_rel(eloss, loss, "loss", tol)
        assert_rel(edO, dO, "dO", tol)
        (forward, *_), (backward, *_) = emulated.launches[:2]
        assert forward.endswith(f"_bt{8 if B >= 64 else 4}") and backward.endswith(forward[-4:])
        grids = {(grid, shared > 0) for _, grid, shared in emulated.launches[:2]}
        assert len(grids) == 1, f"forward and backward planned apart: {emulated.launches}"
        plans.append(grids.pop())
    assert plans == EXPECTED_PLANS[name]


PROBE = """
#include <thread>
int main() {
    int x = 0;
    std::thread t([&] { x = 1; });
    t.join();
    return x - 1;
}
"""


def require_tsan(compiler: str, build: Path) -> None:
    """Skip, with the reason, where ThreadSanitizer cannot build or run a two-thread program
    (no runtime; or an address space it cannot map its shadow memory into, as under
    ``ulimit -v``, where it stops with "CHECK failed")."""
    (build / "probe.cpp").write_text(PROBE)
    command = [compiler, "-std=c++20", "-fsanitize=thread", "-pthread", "-w"]
    built = subprocess.run(
        [*command, str(build / "probe.cpp"), "-o", str(build / "probe")],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        last = (built.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"{compiler} cannot build with ThreadSanitizer: {last}")
    ran = subprocess.run([str(build / "probe")], capture_output=True, text=True, timeout=60)
    if ran.returncode != 0:
        first = (ran.stderr.strip().splitlines() or [f"exit status {ran.returncode}"])[0]
        pytest.skip(f"ThreadSanitizer cannot run here: {first}")


@pytest.mark.slow
def test_kernels_have_no_data_race(tmp_path):
    """Every kernel on the emulator under ThreadSanitizer (tests/emulator/race_check.cpp): no
    two threads touch the same memory, one writing, without a barrier between them."""
    compiler = cxx()
    require_tsan(compiler, tmp_path)
    binary = tmp_path / "race_check"
    command = [compiler, "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", "-w"]
    command += [f"-I{EMULATOR}", f'-DNPGRU_SOURCE="{cuda.SOURCE.resolve()}"']
    command += [str(EMULATOR / "race_check.cpp"), "-o", str(binary)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, f"race_check.cpp does not build:\n{built.stderr}"
    ran = subprocess.run([str(binary)], capture_output=True, text=True, timeout=600)
    if "emulator: too few threads allowed" in ran.stderr:  # 512 OS threads: ulimit -u
        pytest.skip(f"ThreadSanitizer needs OS threads: {ran.stderr.strip().splitlines()[0]}")
    assert "WARNING: ThreadSanitizer" not in ran.stderr, ran.stderr[:4000]
    assert ran.returncode == 0 and "every kernel ran" in ran.stdout, ran.stderr[:4000]
