"""Where the GPU time of a training step goes: npgru's CUDA kernels alone, and the whole step.

    python benchmarks/cuda_kernels.py          # needs CuPy and a GPU
    python benchmarks/cuda_kernels.py --dry    # NumPy, reference path: a smoke test

1. Per size and variant, the GPU milliseconds (CUDA events) of one ``cuda.forward``, one
   ``cuda.backward`` (its kernel, then the weight gradients written into arrays given, as
   the model does) and one loss kernel, and
   the host time per call: where the GPU time is below the host time, the host sets the pace.
2. Per size, one training step as ``bench.py`` makes it (loss_and_grads, clip, sgd) three
   ways: ``synced``, reading the loss after every step as bench.py and d2l do; ``queued``,
   steps back to back with one synchronization at the end (the GPU's own pace); and
   ``host``, the time Python takes to issue a step. synced − queued is time the GPU waits
   for the host at the start of each step; queued ≈ host means the host sets the pace.

   Both 1 and 2 run twice: as npgru chooses (``on chip``: the recurrent weights kept in
   shared memory where they fit, see npgru/cuda.py ``_slab``; ``global`` where they do not)
   and with the weights always read from global memory (``global*``), side by side.
3. At the first size, the host's time in a synced step by function (cProfile, own time):
   a call that waits for the GPU shows up there as far more than a launch's few µs.

To compare with another revision, run its own copy of this script (benchmarks/gpu_check.sh
does, for each tree in BASELINE).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SIZES, NpgruStep

from npgru import cuda, gru
from npgru import loss as reference_loss


@contextlib.contextmanager
def weights_from_global(forced: bool) -> Iterator[None]:
    """With ``forced``, the CUDA kernels read their weights from global memory throughout."""
    if not forced:
        yield
        return
    chosen = cuda._slab
    cuda._slab = lambda *args: 0
    try:
        yield
    finally:
        cuda._slab = chosen


def weights_label(dry: bool, forced: bool, dtype: Any, B: int, H: int) -> str:
    """Where the forward kernel reads its weights at this size: ``on chip``, ``global``, or
    ``global*`` (forced); ``reference`` for --dry."""
    if dry:
        return "reference"
    if forced:
        return "global*"
    import cupy

    name, tiles = cuda._gru_kernel("gru_forward", dtype, B, H)
    return "on chip" if cuda._slab(name, cupy, tiles, H, dtype) else "global"


class Clock:
    """GPU time from CUDA events on CuPy; host time on NumPy (``--dry``)."""

    def __init__(self, dry: bool):
        self.dry = dry
        if not dry:
            import cupy

            self.cupy = cupy

    def sync(self) -> None:
        if not self.dry:
            self.cupy.cuda.Device().synchronize()

    def ms(self, fn: Callable[[], Any], reps: int) -> tuple[float, float]:
        """(device ms per call, host ms per call) over ``reps`` back-to-back calls."""
        fn()
        self.sync()
        t0 = time.perf_counter()
        if self.dry:
            for _ in range(reps):
                fn()
            host = (time.perf_counter() - t0) / reps * 1e3
            return host, host
        start, stop = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        host = (time.perf_counter() - t0) / reps * 1e3
        stop.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, stop) / reps, host


def kernel_times(args: argparse.Namespace, clock: Clock) -> None:
    # --dry: the reference on NumPy, so that only the script itself is tested
    layer, losses = (gru, reference_loss) if args.dry else (cuda, cuda)
    xp = np if args.dry else clock.cupy
    rng = np.random.default_rng(0)
    for variant, name, forced in (
        (v, n, f) for v in ("d2l", "reset_after") for n in args.sizes for f in args.forced
    ):
        with weights_from_global(forced):
            s = SIZES[name]
            T, B, H, D = s["T"], s["B"], s["H"], s["V"]
            params = gru.init_params(D, H, variant=variant, seed=0, backend=args.backend)
            X = xp.asarray(rng.integers(0, D, size=(T, B)))
            H0 = xp.zeros((B, H), dtype=xp.float32)
            dHs = xp.asarray(rng.normal(size=(T, B, H)).astype(np.float32))
            O = xp.asarray(rng.normal(size=(T * B, D)).astype(np.float32))
            y = xp.asarray(rng.integers(0, D, size=T * B))
            ws, wsb = gru.Workspace(), gru.Workspace()
            grads = {n: xp.empty_like(p) for n, p in params.items()}  # written in place
            _, cache = layer.forward(X, H0, params, workspace=ws)
            runs = []
            for _ in range(args.rounds):
                f = clock.ms(lambda: layer.forward(X, H0, params, workspace=ws), args.reps)  # noqa: B023
                bwd = lambda: layer.backward(dHs, cache, workspace=wsb, grads=grads)  # noqa: B023,E731
                b = clock.ms(bwd, args.reps)
                c = clock.ms(lambda: losses.softmax_cross_entropy(O, y), args.reps)  # noqa: B023
                runs.append((f, b, c))
            f, b, c = (min(r[i][0] for r in runs) for i in range(3))
            hf, hb, hc = (statistics.median(r[i][1] for r in runs) for i in range(3))
            where = weights_label(args.dry, forced, np.float32, B, H)
            print(
                f"{variant:<11} {name:<5} {where:<9} T {T:3d} B {B:3d} H {H:3d}: forward "
                f"{f:.3f} ms (host {hf:.3f}), backward {b:.3f} ms (host {hb:.3f}), loss {c:.3f} ms "
                f"(host {hc:.3f}); per step fwd {f / T * 1e3:.1f} µs, bwd {b / T * 1e3:.1f} µs"
            )


def step_times(args: argparse.Namespace, clock: Clock) -> None:
    """Rounds alternate between the weights as chosen and forced global, in one process."""
    for name in args.sizes:
        size = SIZES[name]
        step = NpgruStep(size, seed=0, backend=args.backend, impl="auto")
        times = {forced: ([], [], []) for forced in args.forced}  # synced, queued, host
        for forced in args.forced:
            with weights_from_global(forced):
                step.step()  # compile and allocate outside the timings
        for _ in range(args.rounds):
            for forced, (synced, queued, host) in times.items():
                with weights_from_global(forced):
                    t0 = time.perf_counter()
                    for _ in range(args.reps):
                        step.step()  # reads the loss: one synchronization per step
                    synced.append((time.perf_counter() - t0) / args.reps * 1e3)
                    q, h = clock.ms(step.issue, args.reps)  # no read-back: queued
                    queued.append(q)
                    host.append(h)
        for forced, (synced, queued, host) in times.items():
            s, q, h = min(synced), min(queued), statistics.median(host)
            tokens = size["B"] * size["T"]
            where = weights_label(args.dry, forced, np.float32, size["B"], size["H"])
            print(
                f"training step {name:<5} (B {size['B']}, T {size['T']}, H {size['H']}, "
                f"weights {where}): synced {s:.3f} ms ({tokens / s * 1e3:,.0f} tokens/s), "
                f"queued {q:.3f} ms, host {h:.3f} ms; the GPU waits {s - q:.3f} ms a step "
                "for the host"
            )


def host_profile(args: argparse.Namespace, top: int = 15) -> None:
    """Where the host's time goes in a synced training step, by function (own time)."""
    name = args.sizes[0]
    step = NpgruStep(SIZES[name], seed=0, backend=args.backend, impl="auto")
    step.step()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.reps):
        step.step()
    profile.disable()
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (cc, calls, own, cum, _)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    print(
        f"host profile, synced step at {name}, ms per step (cProfile, {args.reps} steps; "
        "operators such as @ count in their caller's own time):"
    )
    n = args.reps
    for (file, line, function), (_, calls, own, cum, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"  own {own / n * 1e3:7.3f}  total {cum / n * 1e3:7.3f}  {calls / n:5.1f} calls  "
              f"{function} ({where})")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="d2l,large,long", help="of bench.py's: d2l,large,long")
    parser.add_argument("--reps", type=int, default=20, help="calls per timing (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="timings per figure (default 3)")
    parser.add_argument("--dry", action="store_true", help="NumPy and the reference path")
    args = parser.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}: choose from {', '.join(SIZES)}")
    args.backend = "numpy" if args.dry else "cupy"
    args.forced = [False] if args.dry else [False, True]  # True: weights from global memory
    clock = Clock(args.dry)
    kernel_times(args, clock)
    step_times(args, clock)
    host_profile(args)


if __name__ == "__main__":
    main()
