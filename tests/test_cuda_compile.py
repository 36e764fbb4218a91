"""The CUDA path without a GPU: every kernel compiles, and the path is refused where it
cannot run.

Compiling needs NVRTC and the CUDA headers, which pip installs without a GPU or a driver:
``pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12`` (CI does).
CuPy's own ``compile`` needs a driver, so the test calls NVRTC directly, as CuPy would.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import one_line

import npgru
import npgru.layer
import npgru.model
from npgru import cuda
from npgru.errors import BackendError, ConfigError
from npgru.model import resolve_impl


def _include_dirs() -> list[str]:
    """CUDA's headers (cooperative_groups.h) and the libcu++ that CuPy ships (nv/target)."""
    try:
        runtime = importlib.util.find_spec("nvidia.cuda_runtime")
        cupy = importlib.util.find_spec("cupy")
    except ModuleNotFoundError:
        runtime = cupy = None
    if runtime is None or cupy is None:
        pytest.skip("CUDA headers not found: pip install cupy-cuda12x nvidia-cuda-runtime-cu12")
    dirs = [Path(p) / "include" for p in runtime.submodule_search_locations]
    dirs.append(Path(cupy.origin).parent / "_core" / "include" / "cupy" / "_cccl" / "libcudacxx")
    return [str(d) for d in dirs if d.is_dir()]


#: The architectures the kernels must compile for: Volta, Turing (T4), Ampere (A100, RTX 30xx),
#: Ada (L4, RTX 40xx), Hopper (H100). PTX for each (the front end, which knows what each
#: architecture has); for sm_90 also the machine code, with ptxas reporting every kernel's
#: registers.
ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]
MACHINE_CODE = "sm_90"


def nvrtc_module():
    nvrtc = pytest.importorskip(
        "cupy_backends.cuda.libs.nvrtc", reason="NVRTC not installed (pip install cupy-cuda12x)"
    )
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the library itself is missing: nvidia-cuda-nvrtc-cu12
        pytest.skip(f"NVRTC cannot load ({exc}): pip install nvidia-cuda-nvrtc-cu12")
    return nvrtc


def compile_source(nvrtc, arch: str, include: list[str]) -> tuple[str, str, bool]:
    """NVRTC-compile npgru's kernels for ``arch``: (PTX, log, compiled)."""
    target = arch if arch == MACHINE_CODE else arch.replace("sm_", "compute_")
    extra = ["--ptxas-options=-v"] if arch == MACHINE_CODE else []  # ptxas reports every entry
    options = [f"-arch={target}", *cuda.OPTIONS, *extra, *(f"-I{d}" for d in include)]
    prog = nvrtc.createProgram(cuda.SOURCE.read_text(), "gru.cu", [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as exc:
        return "", f"{exc}\n{nvrtc.getProgramLog(prog)}", False
    return nvrtc.getPTX(prog).decode(), nvrtc.getProgramLog(prog), True


@pytest.fixture(scope="module")
def compiled() -> dict[str, tuple[str, str, bool]]:
    """Every architecture of ARCHS compiled, as many at once as there are cores (NVRTC lets
    go of the interpreter while it works)."""
    nvrtc, include = nvrtc_module(), _include_dirs()
    with ThreadPoolExecutor(max_workers=min(len(ARCHS), os.cpu_count() or 1)) as pool:
        results = pool.map(lambda arch: compile_source(nvrtc, arch, include), ARCHS)
        return dict(zip(ARCHS, results, strict=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(compiled, arch):
    ptx, log, ok = compiled[arch]
    assert ok, f"gru.cu does not compile for {arch}:\n{log}"
    # NVRTC itself warns that sm_70 is deprecated: a note on the toolkit, not on gru.cu
    warnings = [w for w in log.splitlines() if "warning" in w.lower() and "prior to" not in w]
    assert not warnings, log
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    missing = set(cuda.kernel_names()) - entries
    assert not missing, f"kernels launched by npgru.cuda but not in gru.cu: {sorted(missing)}"


def test_kernels_keep_their_registers(compiled):
    """Nothing in local memory: no spills (a spill in the time loop would cost every step)
    and no stack frame (an array indexed at run time, say, lives there)."""
    _, log, ok = compiled[MACHINE_CODE]
    assert ok, log
    spills = re.findall(r"(\d+) bytes spill stores", log)
    frames = re.findall(r"(\d+) bytes stack frame", log)
    assert len(spills) == len(frames) >= len(cuda.kernel_names()), log
    assert set(spills) == set(frames) == {"0"}, log


def test_threads_per_block_and_ids_per_item_match_the_source():
    source = cuda.SOURCE.read_text()
    warps = int(re.search(r"#define WARPS (\d+)", source).group(1))
    assert cuda.THREADS == 32 * warps
    ids = int(re.search(r"#define TOKENS_PER_ITEM (\d+)", source).group(1))
    assert cuda.TOKENS_PER_ITEM == ids


def test_cuda_impl_needs_cupy(rng):
    with pytest.raises(ConfigError) as err:
        npgru.GRULanguageModel(5, 4, impl="cuda")
    assert "cupy" in one_line(err.value)
    with pytest.raises(ConfigError) as err:
        npgru.GRULanguageModel(5, 4, impl="fast")
    assert "'reference'" in one_line(err.value)
    on_numpy = "numba" if npgru.model.numba_installed() else "reference"
    assert npgru.GRULanguageModel(5, 4).impl == on_numpy  # auto, on NumPy
    params = npgru.gru.init_params(3, 4)
    with pytest.raises(BackendError) as err:
        cuda.forward(np.zeros((2, 1), dtype=np.int64), np.zeros((1, 4), np.float32), params)
    assert "reference" in one_line(err.value)


def device(**changes) -> cuda.Device:
    """An A100's properties, with ``changes``."""
    a100 = cuda.Device("NVIDIA A100", (8, 0), 108, 163 * 1024, 1024, True)
    return dataclasses.replace(a100, **changes)


def test_the_slab_is_planned_where_every_tile_keeps_a_block():
    """A pure function of the properties: the slab where a block for every tile stays
    resident with it, else no slab and at most the resident blocks."""
    slab, static = 100_000, 24_576
    per_sm = {0: 4, slab: 1}.get
    assert cuda.plan(device(), "k", 108, slab, static, per_sm) == cuda.Launch(108, slab)
    assert cuda.plan(device(), "k", 109, slab, static, per_sm) == cuda.Launch(109, 0)
    assert cuda.plan(device(), "k", 500, slab, static, per_sm) == cuda.Launch(432, 0)
    assert cuda.plan(device(), "k", 5, 0, static, per_sm) == cuda.Launch(5, 0)
    # over the block's opt-in shared memory: no slab, whatever the occupancy says
    small = device(shared_per_block_optin=slab + static - 1)
    assert cuda.plan(small, "k", 2, slab, static, per_sm) == cuda.Launch(2, 0)
    assert cuda.plan(device(sms=28), "k", 200, slab, static, per_sm) == cuda.Launch(112, 0)


@pytest.mark.parametrize(
    ("changes", "occupancy", "words"),
    [
        ({"cooperative_launch": False}, 4, "cannot launch cooperative kernels"),
        ({"compute_capability": (5, 2)}, 4, "cannot launch cooperative kernels"),
        ({"max_threads_per_block": 128}, 4, "at most 128 threads per block"),
        ({}, 0, "no block of k fits"),
        ({"shared_per_block_optin": 1024}, 4, "no block of k fits"),
    ],
)
def test_a_launch_that_cannot_run_is_refused_in_one_line(changes, occupancy, words):
    with pytest.raises(BackendError) as err:
        cuda.plan(device(**changes), "k", 10, 0, 24_576, lambda shared: occupancy)
    message = one_line(err.value)
    assert words in message and "impl='reference'" in message


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy backend as npgru.model sees it, on a device given by ``fake_cupy.device``,
    with kernels that compile (the CUDA path's device calls stand in)."""
    xp = SimpleNamespace(
        __name__="cupy", cuda=SimpleNamespace(Device=lambda: SimpleNamespace(id=0))
    )
    backend = SimpleNamespace(name="cupy", xp=xp)
    backend.device = device()
    monkeypatch.setattr(cuda, "_device", lambda xp: backend.device)
    monkeypatch.setattr(cuda, "_static_shared", lambda xp, name: 24_576)
    monkeypatch.setattr(cuda, "_blocks_per_sm", lambda xp, name, shared: 2)
    monkeypatch.setattr(npgru.layer, "_warned", set())
    return backend


def test_auto_takes_the_cuda_path_where_it_can_run(fake_cupy, recwarn):
    assert resolve_impl("auto", fake_cupy) == "cuda"
    assert resolve_impl("cuda", fake_cupy) == "cuda"
    assert not recwarn.list


def fallback_warnings(backend, recwarn) -> list[str]:
    """What impl='auto' warns, resolved three times (models, checkpoints): the reference
    each time; and impl='cuda' refused in one line."""
    for _ in range(3):
        assert resolve_impl("auto", backend) == "reference"
    messages = [str(w.message) for w in recwarn.list]
    with pytest.raises(BackendError) as err:
        resolve_impl("cuda", backend)
    assert "impl='reference'" in one_line(err.value)
    return messages


def test_auto_falls_back_on_a_gpu_without_cooperative_launch(fake_cupy, recwarn):
    fake_cupy.device = device(name="Old GPU", cooperative_launch=False)
    messages = fallback_warnings(fake_cupy, recwarn)
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "Old GPU" in messages[0] and "cooperative" in messages[0]
    assert recwarn.list[0].category is RuntimeWarning
    with pytest.raises(BackendError, match="cooperative"):  # the CUDA path itself refuses too
        cuda._plan("gru_forward_f32_bt4", fake_cupy.xp, 4, 0)


def test_auto_falls_back_when_no_block_fits(fake_cupy, monkeypatch, recwarn):
    monkeypatch.setattr(cuda, "_blocks_per_sm", lambda xp, name, shared: 0)
    messages = fallback_warnings(fake_cupy, recwarn)
    assert len(messages) == 1 and "no block of" in messages[0] and "\n" not in messages[0]


def test_auto_falls_back_when_the_kernels_do_not_compile(fake_cupy, monkeypatch, recwarn):
    compiler = pytest.importorskip("cupy.cuda.compiler", reason="CuPy not installed")
    monkeypatch.undo()  # the real _static_shared, which compiles the kernels
    monkeypatch.setattr(npgru.layer, "_warned", set())
    monkeypatch.setattr(cuda, "_device", lambda xp: device())

    def fails(device_id):
        raise compiler.CompileException(
            'gru.cu(1): catastrophic error: cannot open source file "cooperative_groups.h"\n'
            "1 catastrophic error detected",
            cuda.SOURCE.read_text(),
            "gru.cu",
            cuda.OPTIONS,
        )

    monkeypatch.setattr(cuda, "_module", fails)
    messages = fallback_warnings(fake_cupy, recwarn)
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "did not compile" in messages[0] and "cooperative_groups.h" in messages[0]


def test_auto_falls_back_when_cupy_has_no_nvrtc(fake_cupy, monkeypatch, recwarn):
    """CuPy without its CUDA components raises RuntimeError ("failed to load libnvrtc"), not a
    CompileException: that too is one warning and the reference path, not a traceback."""
    pytest.importorskip("cupy.cuda.compiler", reason="CuPy not installed")
    monkeypatch.undo()  # the real _static_shared, which compiles the kernels
    monkeypatch.setattr(npgru.layer, "_warned", set())
    monkeypatch.setattr(cuda, "_device", lambda xp: device())

    def no_nvrtc(device_id):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: cannot open it")

    monkeypatch.setattr(cuda, "_module", no_nvrtc)
    messages = fallback_warnings(fake_cupy, recwarn)
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "did not compile" in messages[0] and "libnvrtc" in messages[0]


def test_the_device_properties_are_read_from_the_cuda_runtime(monkeypatch):
    """The attributes the planning reads, by their cudaDeviceAttr numbers (CuPy names some of
    them, not all): here an RTX 3060's."""
    runtime = pytest.importorskip("cupy_backends.cuda.api.runtime", reason="CuPy not installed")
    values = {75: 8, 76: 6, 16: 28, 97: 99 * 1024, 1: 1024, 95: 1}
    monkeypatch.setattr(runtime, "deviceGetAttribute", lambda attribute, _: values[attribute])
    monkeypatch.setattr(runtime, "getDeviceProperties", lambda _: {"name": b"RTX 3060"})
    cuda._device_properties.cache_clear()
    try:
        got = cuda._device_properties(0)
    finally:
        cuda._device_properties.cache_clear()
    assert got == cuda.Device("RTX 3060", (8, 6), 28, 99 * 1024, 1024, True)
