"""The CUDA path without a GPU: every kernel compiles, and the path is refused where it
cannot run.

Compiling needs NVRTC and the CUDA headers, which pip installs without a GPU or a driver:
``pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12`` (CI does).
CuPy's own ``compile`` needs a driver, so the test calls NVRTC directly, as CuPy would.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line

import npgru
from npgru import cuda
from npgru.errors import BackendError, ConfigError


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


def compile_source(arch: str, *extra: str) -> tuple[str, str]:
    """NVRTC-compile npgru's kernels for ``arch``; return (PTX, log). Fails on any error."""
    nvrtc = pytest.importorskip(
        "cupy_backends.cuda.libs.nvrtc", reason="NVRTC not installed (pip install cupy-cuda12x)"
    )
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the library itself is missing: nvidia-cuda-nvrtc-cu12
        pytest.skip(f"NVRTC cannot load ({exc}): pip install nvidia-cuda-nvrtc-cu12")
    options = [f"-arch={arch}", *cuda.OPTIONS, *extra, *(f"-I{d}" for d in _include_dirs())]
    prog = nvrtc.createProgram(cuda.SOURCE.read_text(), "gru.cu", [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as exc:
        pytest.fail(f"gru.cu does not compile ({exc}):\n{nvrtc.getProgramLog(prog)}")
    return nvrtc.getPTX(prog).decode(), nvrtc.getProgramLog(prog)


@pytest.mark.parametrize("arch", ["compute_90", "compute_80", "compute_75"])
def test_every_kernel_compiles(arch):
    ptx, log = compile_source(arch)
    assert "warning" not in log.lower(), log
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    missing = set(cuda.kernel_names()) - entries
    assert not missing, f"kernels launched by npgru.cuda but not in gru.cu: {sorted(missing)}"


def test_kernels_keep_their_registers():
    """Nothing in local memory: no spills (a spill in the time loop would cost every step)
    and no stack frame (an array indexed at run time, say, lives there)."""
    _, log = compile_source("sm_90", "--ptxas-options=-v")  # ptxas reports every entry
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
    assert npgru.GRULanguageModel(5, 4).impl == "reference"  # auto, on NumPy
    params = npgru.gru.init_params(3, 4)
    with pytest.raises(BackendError) as err:
        cuda.forward(np.zeros((2, 1), dtype=np.int64), np.zeros((1, 4), np.float32), params)
    assert "reference" in one_line(err.value)
