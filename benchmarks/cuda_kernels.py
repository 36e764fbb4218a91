"""GPU time of npgru's CUDA kernels alone, per call, at the benchmark sizes (CUDA events).

    python benchmarks/cuda_kernels.py            # needs CuPy and a GPU

Prints, per size, the milliseconds of one ``cuda.forward``, one ``cuda.backward`` (the
kernel and the weight-gradient products) and one loss kernel, and the host time per call:
where the GPU time is below the host time, the host sets the pace.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import cupy

from npgru import cuda, gru

SIZES = {"d2l": (35, 32, 256, 28), "large": (35, 128, 512, 28), "long": (200, 32, 256, 28)}


def gpu_ms(fn, reps: int = 20) -> tuple[float, float]:
    """(GPU ms per call from events, host ms per call) over ``reps`` back-to-back calls."""
    fn()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    t0 = time.perf_counter()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    host = (time.perf_counter() - t0) / reps * 1e3
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / reps, host


def main() -> None:
    rng = np.random.default_rng(0)
    for variant in ("d2l", "reset_after"):
        for name, (T, B, H, D) in SIZES.items():
            params = gru.init_params(D, H, variant=variant, seed=0, backend="cupy")
            X = cupy.asarray(rng.integers(0, D, size=(T, B)))
            H0 = cupy.zeros((B, H), dtype=cupy.float32)
            dHs = cupy.asarray(rng.normal(size=(T, B, H)).astype(np.float32))
            ws, wsb = gru.Workspace(), gru.Workspace()
            _, cache = cuda.forward(X, H0, params, workspace=ws)
            f = gpu_ms(lambda: cuda.forward(X, H0, params, workspace=ws))  # noqa: B023
            b = gpu_ms(lambda: cuda.backward(dHs, cache, workspace=wsb))  # noqa: B023
            O = cupy.asarray(rng.normal(size=(T * B, D)).astype(np.float32))
            y = cupy.asarray(rng.integers(0, D, size=T * B))
            s = gpu_ms(lambda: cuda.softmax_cross_entropy(O, y))  # noqa: B023
            print(
                f"{variant:<11} {name:<5} T {T:3d} B {B:3d} H {H:3d}: forward {f[0]:.3f} ms "
                f"(host {f[1]:.3f}), backward {b[0]:.3f} ms (host {b[1]:.3f}), "
                f"loss {s[0]:.3f} ms (host {s[1]:.3f}); per step fwd {f[0] / T * 1e3:.1f} µs, "
                f"bwd {b[0] / T * 1e3:.1f} µs"
            )


if __name__ == "__main__":
    main()
