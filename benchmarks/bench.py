#!/usr/bin/env python
"""Training speed of npgru beside PyTorch, measured side by side on this machine.

What is timed is ONE full training step of d2l's character model, in float32:
forward, mean softmax cross-entropy, backward, clipping to global norm 1, SGD with lr 1,
the state carried over (detached) to the next step, and ``float(loss)`` read back as d2l's
loop does. Three contenders run the same step on the same random token batches:

* ``npgru``:   ``GRULanguageModel.loss_and_grads`` + ``clip_grad_norm`` + ``sgd``, with
  ``--impl`` (auto: the fused steps of ``npgru.fused`` on NumPy where Numba is installed);
* ``reference``: the same with ``impl="reference"``, the readable array code (on NumPy with
  Numba, ``npgru/reference`` is what the fused steps gain);
* ``scratch``: the seed notebook's from-scratch GRU in PyTorch with autograd (one-hot
  inputs, the output layer applied step by step, ``torch.cat`` time-major),
  ``F.cross_entropy`` (mean), ``clip_grad_norm_``, SGD by hand under ``no_grad``
  (the semantics of d2l's ``train_epoch_ch8`` and ``sgd``);
* ``nn.GRU``:  ``nn.GRU`` + ``nn.Linear`` on one-hot inputs (d2l's ``RNNModel``),
  ``torch.optim.SGD``.

The machine's trap (docs/performance.md, section 2): with 2 threads, OpenBLAS's small
products run in a fast or a slow mode that is fixed per *process*. So the driver starts
``--procs`` fresh worker processes (this script with ``--worker``, answering in JSON), each
worker interleaves the contenders (round-robin, the order rotated every round), and the
report gives per-process medians and the median over processes of each ratio.

Each worker also measures the matrix-multiply rate of exactly the products a training step
needs, and from the FLOPs per token the best tokens/s any implementation could reach here
(the "bound"); the fraction of it that npgru reaches is printed last.

Examples::

    python benchmarks/bench.py                      # d2l, large, long; 2 threads; ~5 min
    python benchmarks/bench.py --threads 1          # the 1-thread run
    python benchmarks/bench.py --quick              # smoke run, < 30 s
    python benchmarks/bench.py --profile            # where npgru's time goes (d2l size)
    python benchmarks/bench.py --e2e                # examples/timemachine.py vs PyTorch
    python benchmarks/bench.py --e2e --e2e-epochs 500 --e2e-runs 5 --contenders npgru,reference
                                                    # d2l's whole run, fused vs reference
    python benchmarks/bench.py --backend cupy       # GPU: npgru on CuPy vs torch on cuda
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import linecache
import math
import os
import platform
import pstats
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SIZES = {
    "d2l": {"B": 32, "T": 35, "H": 256, "V": 28},
    "large": {"B": 128, "T": 35, "H": 512, "V": 28},
    "long": {"B": 32, "T": 200, "H": 256, "V": 28},
}
CONTENDERS = ("npgru", "reference", "scratch", "nn.GRU")
JSON_MARK = "BENCH_JSON "
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------------------
# FLOPs of one training step and the matrix-multiply bound


def step_products(B: int, T: int, H: int, V: int) -> list[dict[str, Any]]:
    """The matrix products of one training step of the d2l variant, one-hot inputs.

    The input side costs no multiply-adds: X_t W_x for one-hot X_t is a row gather, and
    dW_x = Σ_t X_tᵀ dA_t is a scatter-add. What remains (per step t, then once per
    sequence) is listed here; ``count`` is how many times one training step needs it.
    A product is stored as A (``a``) and B (``b``); ``ta``/``tb`` say it is used transposed.
    Rows with ``count`` 0 are measured for information only.
    """
    N = T * B
    rows = [
        ("fwd  H_{t-1} W_zr", (B, H), False, (H, 2 * H), False, T),
        ("fwd  (R*H) W_hh", (B, H), False, (H, H), False, T),
        ("bwd  dA_h W_hh^T", (B, H), False, (H, H), True, T),
        ("bwd  dA_zr W_zr^T", (B, 2 * H), False, (H, 2 * H), True, T),
        ("grad H^T dA_zr", (N, H), True, (N, 2 * H), False, 1),
        ("grad G^T dA_h", (N, H), True, (N, H), False, 1),
        ("out  H W_hq", (N, H), False, (H, V), False, 1),
        ("out  H^T dO", (N, H), True, (N, V), False, 1),
        ("out  dO W_hq^T", (N, V), False, (H, V), True, 1),
        ("info H^T [dA] (TB,H)^T(TB,3H)", (N, H), True, (N, 3 * H), False, 0),
    ]
    out = []
    for name, a, ta, b, tb, count in rows:
        m, k = (a[1], a[0]) if ta else a
        k2, n = (b[1], b[0]) if tb else b
        assert k == k2, (name, a, b)
        shape = f"({m},{k})@({k},{n})"
        out.append(
            {
                "name": name,
                "shape": shape,
                "a": a,
                "ta": ta,
                "b": b,
                "tb": tb,
                "count": count,
                "flops": 2 * m * k * n,
            }
        )
    return out


def flops_per_token(B: int, T: int, H: int, V: int) -> float:
    """Multiply-add FLOPs per token of one training step: 18·H² + 6·H·V."""
    total = sum(p["flops"] * p["count"] for p in step_products(B, T, H, V))
    assert total == T * B * (18 * H * H + 6 * H * V)
    return total / (T * B)


class RateProbe:
    """Times the matrix products of :func:`step_products` on the backend ``xp``.

    Each product gets its operands (random float32, transposed views where the step uses
    them transposed, an ``out`` buffer) and a repetition count calibrated so that one timed
    block lasts about ``block_time``. :meth:`measure` times one block of every product and
    appends its rate (FLOP/s) to ``p["rates"]``; the worker calls it once per round, between
    the contenders, so the bound is measured under the same conditions as they are.
    """

    def __init__(self, xp: Any, sync: Any, prods: list[dict], block_time: float):
        import numpy as np

        self.xp, self.sync, self.prods = xp, sync, prods
        rng = np.random.default_rng(0)
        self.ops = []
        for p in prods:
            A = xp.asarray(rng.standard_normal(p["a"], dtype=np.float32))
            Bm = xp.asarray(rng.standard_normal(p["b"], dtype=np.float32))
            A_op = A.T if p["ta"] else A
            B_op = Bm.T if p["tb"] else Bm
            C = xp.empty((A_op.shape[0], B_op.shape[1]), dtype=xp.float32)
            reps = 1
            while True:  # calibrate: enough repetitions for one block to last block_time
                dt = self._block(A_op, B_op, C, reps)
                if dt >= block_time or reps >= 1 << 20:
                    break
                reps = max(2 * reps, math.ceil(reps * block_time / max(dt, 1e-9)))
            p["rates"] = []
            self.ops.append((p, A_op, B_op, C, reps))

    def _block(self, A_op: Any, B_op: Any, C: Any, reps: int) -> float:
        matmul = self.xp.matmul
        matmul(A_op, B_op, out=C)
        self.sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            matmul(A_op, B_op, out=C)
        self.sync()
        return time.perf_counter() - t0

    def measure(self) -> None:
        for p, A_op, B_op, C, reps in self.ops:
            p["rates"].append(p["flops"] * reps / self._block(A_op, B_op, C, reps))


def bound_tokens_per_s(prods: list[dict], tokens: int) -> float:
    """tokens / Σ_i (flops_i / rate_i): no implementation does the products faster."""
    seconds = sum(p["count"] * p["flops"] / p["rate"] for p in prods if p["count"])
    return tokens / seconds


# ------------------------------------------------------------------------------------------
# the contenders: each makes one full training step per call of step()


def _random_batches(size: dict, seed: int, n: int = 4) -> list[tuple[Any, Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (size["B"], size["T"])
    return [
        (rng.integers(0, size["V"], shape), rng.integers(0, size["V"], shape)) for _ in range(n)
    ]


class NpgruStep:
    """npgru: loss_and_grads, clip_grad_norm, sgd; the state carried over."""

    name = "npgru"

    def __init__(self, size: dict, seed: int, backend: str, impl: str = "auto", name: str = ""):
        import npgru

        self.name = name or self.name
        self.npgru = npgru
        self.model = npgru.GRULanguageModel(
            size["V"], size["H"], seed=seed, backend=backend, impl=impl
        )
        be = self.model.backend
        self.batches = [(be.asarray(X), be.asarray(Y)) for X, Y in _random_batches(size, seed)]
        self.state = self.model.begin_state(size["B"])
        self.i = 0
        if be.name == "cupy":
            self.sync = be.xp.cuda.Device().synchronize
        else:
            self.sync = _no_sync

    def issue(self) -> Any:
        """One training step, the loss left on the device (no synchronization)."""
        X, Y = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss, grads, self.state = self.model.loss_and_grads(X, Y, self.state)
        self.npgru.clip_grad_norm(grads, 1.0)
        self.npgru.sgd(self.model.params, grads, 1.0)
        return loss

    def step(self) -> float:
        return float(self.issue())


def _no_sync() -> None:
    return None


class TorchScratchStep:
    """The seed notebook's from-scratch GRU with autograd, d2l's train_epoch_ch8 + sgd."""

    name = "scratch"

    def __init__(self, size: dict, seed: int, device: str):
        import torch

        self.torch = torch
        self.F = torch.nn.functional
        B, H, V = size["B"], size["H"], size["V"]
        self.V = V
        gen = torch.Generator().manual_seed(seed)

        def normal(shape: tuple[int, ...]) -> Any:
            return (torch.randn(shape, generator=gen) * 0.01).to(device)

        params = []
        for _gate in "zrh":  # W_x*, W_h*, b_* for the update gate, reset gate, candidate
            params += [normal((V, H)), normal((H, H)), torch.zeros(H, device=device)]
        params += [normal((H, V)), torch.zeros(V, device=device)]
        for p in params:
            p.requires_grad_(True)
        self.params = params
        self.batches = [
            (torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device))
            for X, Y in _random_batches(size, seed)
        ]
        self.state = torch.zeros((B, H), device=device)
        self.i = 0
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else _no_sync

    def forward(self, X: Any, H: Any) -> tuple[Any, Any]:
        torch = self.torch
        W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = self.params
        inputs = self.F.one_hot(X.T, self.V).type(torch.float32)  # (T, B, V)
        outputs = []
        for X_t in inputs:
            Z = torch.sigmoid(X_t @ W_xz + H @ W_hz + b_z)
            R = torch.sigmoid(X_t @ W_xr + H @ W_hr + b_r)
            H_tilde = torch.tanh(X_t @ W_xh + (R * H) @ W_hh + b_h)
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H @ W_hq + b_q)  # the seed applies the output layer per step
        return torch.cat(outputs, dim=0), H

    def step(self) -> float:
        torch = self.torch
        X, Y = self.batches[self.i % len(self.batches)]
        self.i += 1
        logits, state = self.forward(X, self.state.detach())
        loss = self.F.cross_entropy(logits, Y.T.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        with torch.no_grad():
            for p in self.params:  # d2l.sgd with lr 1, batch_size 1
                p -= 1.0 * p.grad
                p.grad.zero_()
        self.state = state.detach()
        return float(loss.detach())


class TorchNNStep:
    """nn.GRU + nn.Linear on one-hot inputs (d2l's RNNModel), torch.optim.SGD."""

    name = "nn.GRU"

    def __init__(self, size: dict, seed: int, device: str):
        import torch

        self.torch = torch
        self.F = torch.nn.functional
        B, H, V = size["B"], size["H"], size["V"]
        self.H, self.V = H, V
        torch.manual_seed(seed)
        self.rnn = torch.nn.GRU(V, H).to(device)
        self.linear = torch.nn.Linear(H, V).to(device)
        self.params = [*self.rnn.parameters(), *self.linear.parameters()]
        self.opt = torch.optim.SGD(self.params, lr=1.0)
        self.batches = [
            (torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device))
            for X, Y in _random_batches(size, seed)
        ]
        self.state = torch.zeros((1, B, H), device=device)
        self.i = 0
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else _no_sync

    def step(self) -> float:
        X, Y = self.batches[self.i % len(self.batches)]
        self.i += 1
        inputs = self.F.one_hot(X.T, self.V).type(self.torch.float32)  # (T, B, V)
        Hs, state = self.rnn(inputs, self.state.detach())
        logits = self.linear(Hs.reshape(-1, self.H))  # time-major (T·B, V)
        loss = self.F.cross_entropy(logits, Y.T.reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.state = state.detach()
        return float(loss.detach())


def make_contender(name: str, size: dict, seed: int, backend: str, impl: str = "auto") -> Any:
    device = "cuda" if backend == "cupy" else "cpu"
    if name == "npgru":
        return NpgruStep(size, seed, backend, impl)
    if name == "reference":
        return NpgruStep(size, seed, backend, "reference", name="reference")
    if name == "scratch":
        return TorchScratchStep(size, seed, device)
    if name == "nn.GRU":
        return TorchNNStep(size, seed, device)
    raise ValueError(f"unknown contender {name!r}")


# ------------------------------------------------------------------------------------------
# environment: threads, BLAS, versions


def set_threads(n: int, torch_too: bool = True) -> None:
    """Limit NumPy's BLAS (threadpoolctl) and PyTorch (set_num_threads) to ``n`` threads."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        print(
            "warning: threadpoolctl is not installed; NumPy's BLAS threads not set", file=sys.stderr
        )
    if torch_too:
        try:
            import torch

            torch.set_num_threads(n)
        except ImportError:
            pass


def environment(with_torch: bool = True) -> dict[str, Any]:
    """Which BLAS NumPy uses and with how many threads; torch version and threads; CPU."""
    import numpy as np

    env: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [
            {k: v for k, v in info.items() if k != "filepath"}
            | {"file": Path(info["filepath"]).name}
            for info in threadpool_info()
        ]
    except ImportError:
        env["threadpools"] = "threadpoolctl not installed"
    if with_torch:
        try:
            import torch

            env["torch"] = torch.__version__
            env["torch_threads"] = torch.get_num_threads()
        except ImportError:
            env["torch"] = None
    env["cpu"] = cpu_model()
    env["cores"] = os.cpu_count()
    return env


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_env(env: dict[str, Any]) -> str:
    lines = [
        f"machine: {env['cpu']}, {env['cores']} cores; Python {env['python']}, "
        f"NumPy {env['numpy']}, torch {env.get('torch')} "
        f"(torch threads {env.get('torch_threads')})"
    ]
    pools = env["threadpools"]
    if isinstance(pools, str):
        lines.append(f"thread pools: {pools}")
    else:
        for p in pools:
            extra = ", ".join(
                f"{k} {p[k]}" for k in ("version", "architecture", "threading_layer") if p.get(k)
            )
            lines.append(
                f"thread pool: {p['internal_api']} ({p['user_api']}, {p['file']}), "
                f"{p['num_threads']} threads{', ' + extra if extra else ''}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the worker: one process, all sizes, contenders interleaved


def _xp_and_sync(backend: str) -> tuple[Any, Any]:
    if backend == "cupy":
        import cupy

        return cupy, cupy.cuda.Device().synchronize
    import numpy

    return numpy, _no_sync


def time_steps(c: Any, reps: int) -> list[float]:
    """Seconds of each of ``reps`` consecutive training steps (clock read after a sync)."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loss = c.step()
        c.sync()
        out.append(time.perf_counter() - t0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{c.name}: loss became {loss}")
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend == "numpy":
        set_threads(args.threads)
    import torch  # noqa: F401  (imported before timing anything, as the contenders need it)

    if args.backend == "numpy":
        set_threads(args.threads)
    xp, sync = _xp_and_sync(args.backend)
    result: dict[str, Any] = {"env": environment(), "sizes": {}}
    for size_name in args.sizes:
        size = SIZES[size_name]
        B, T, H, V = size["B"], size["T"], size["H"], size["V"]
        prods = step_products(B, T, H, V)
        probe = RateProbe(xp, sync, prods, args.rate_time)
        entry: dict[str, Any] = {"times": {}, "errors": {}}
        contenders = []
        for name in args.contenders:
            try:
                c = make_contender(name, size, args.seed, args.backend, args.impl)
                t_warm = time_steps(c, args.warmup)  # first calls: allocation, caches
                entry["times"][name] = []
                contenders.append((c, statistics.median(t_warm[len(t_warm) // 2 :])))
                if name == "npgru":
                    entry["impl"] = c.model.impl
            except Exception as exc:  # report and go on: one broken contender
                entry["errors"][name] = f"{type(exc).__name__}: {exc}"
        for r in range(args.rounds):
            probe.measure()
            k = r % max(1, len(contenders))
            for c, t_est in contenders[k:] + contenders[:k]:  # rotate the order every round
                if c.name in entry["errors"]:
                    continue
                reps = max(2, min(1000, math.ceil(args.block / max(t_est, 1e-6))))
                try:
                    entry["times"][c.name] += time_steps(c, reps)
                except Exception as exc:
                    entry["errors"][c.name] = f"{type(exc).__name__}: {exc}"
        for name in list(entry["times"]):
            if name in entry["errors"] or not entry["times"][name]:
                del entry["times"][name]
        for p in prods:
            p["rate"] = statistics.median(p["rates"])
        entry["products"] = [
            {k: p[k] for k in ("name", "shape", "count", "flops", "rate")} for p in prods
        ]
        entry["bound"] = bound_tokens_per_s(prods, B * T)
        entry["median_s"] = {n: statistics.median(t) for n, t in entry["times"].items()}
        entry["steps"] = {n: len(t) for n, t in entry["times"].items()}
        del entry["times"]
        result["sizes"][size_name] = entry
        del contenders
    return result


# ------------------------------------------------------------------------------------------
# the driver: fresh processes, medians, the table


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_ENV:
        env[var] = str(threads)
    return env


def cpu_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat); None elsewhere.

    Steal time counts as busy: the hypervisor gave the core to someone else.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_load(seconds: float) -> float | None:
    """Cores kept busy by other processes over the next ``seconds`` (None: unknown)."""
    b0 = cpu_busy_seconds()
    if b0 is None:
        return None
    time.sleep(seconds)
    return (cpu_busy_seconds() - b0) / seconds


def wait_quiet(limit: float, max_wait: float) -> float | None:
    """Wait (at most ``max_wait`` s) until other processes use under ``limit`` cores."""
    t0 = time.perf_counter()
    load = others_load(1.0)
    while load is not None and load > limit and time.perf_counter() - t0 < max_wait:
        print(f"  (machine busy: other processes use {load:.2f} cores; waiting)", flush=True)
        time.sleep(4.0)
        load = others_load(1.0)
    return load


def run_workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``args.procs`` workers; one disturbed by other processes is run again.

    This machine may be shared: whatever else runs during a measurement (tests, builds)
    takes cores from the contenders, and on 2 cores that changes everything. The CPU time
    of the whole machine (/proc/stat, steal included) minus the worker's own gives the load
    of the others; above ``--max-others`` cores on average the process is measured again
    (at most ``--retries`` times), else kept and flagged.
    """
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--sizes",
        ",".join(args.sizes),
        "--contenders",
        ",".join(args.contenders),
        "--threads",
        str(args.threads),
        "--backend",
        args.backend,
        "--impl",
        args.impl,
        "--seed",
        str(args.seed),
        "--rounds",
        str(args.rounds),
        "--block",
        str(args.block),
        "--warmup",
        str(args.warmup),
        "--rate-time",
        str(args.rate_time),
    ]
    results = []
    for i in range(args.procs):
        best = None
        for attempt in range(args.retries + 1):
            wait_quiet(args.max_others, args.max_wait)
            t0 = time.perf_counter()
            busy0, cpu0 = cpu_busy_seconds(), children_cpu_seconds()
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env=child_env(args.threads),
                check=False,
                timeout=args.worker_timeout,
            )
            wall = time.perf_counter() - t0
            busy1, cpu1 = cpu_busy_seconds(), children_cpu_seconds()
            others = None if busy0 is None else max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / wall
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(JSON_MARK)]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"worker {i + 1} failed (exit {proc.returncode})")
            res = json.loads(lines[-1][len(JSON_MARK) :])
            res["others_cores"] = others
            res["disturbed"] = others is not None and others > args.max_others
            done = ", ".join(
                f"{s}: "
                + " ".join(
                    f"{n} {SIZES[s]['B'] * SIZES[s]['T'] / t:,.0f}"
                    for n, t in e["median_s"].items()
                )
                for s, e in res["sizes"].items()
            )
            load = "?" if others is None else f"{others:.2f}"
            print(
                f"  process {i + 1}/{args.procs} ({wall:.0f} s, others {load} cores) tok/s  {done}",
                flush=True,
            )
            if best is None or (others or 0.0) < (best.get("others_cores") or 0.0):
                best = res
            if not res["disturbed"]:
                break
            if attempt < args.retries:
                print("  disturbed by other processes: measuring this process again", flush=True)
            else:
                print("  still disturbed: the least disturbed attempt is kept, flagged", flush=True)
        results.append(best)
    return results


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    clean = [r for r in results if not r.get("disturbed")]
    summary: dict[str, Any] = {
        "others_cores": [r.get("others_cores") for r in results],
        "disturbed": [r.get("disturbed", False) for r in results],
        "used": len(clean) or len(results),
    }
    for s in args.sizes:
        size = SIZES[s]
        tokens = size["B"] * size["T"]
        per = [r["sizes"][s] for r in clean or results]
        tps = {
            n: [tokens / e["median_s"][n] for e in per if n in e["median_s"]]
            for n in args.contenders
        }
        ratio = {}
        for other in ("nn.GRU", "scratch", "reference"):
            ratio[other] = [
                e["median_s"][other] / e["median_s"]["npgru"]
                for e in per
                if "npgru" in e["median_s"] and other in e["median_s"]
            ]
        frac = [
            tokens / e["median_s"]["npgru"] / e["bound"] for e in per if "npgru" in e["median_s"]
        ]
        frac_ref = [
            tokens / e["median_s"]["reference"] / e["bound"]
            for e in per
            if "reference" in e["median_s"]
        ]
        rates = {}
        for j, p in enumerate(per[0]["products"]):
            rates[p["name"]] = {
                "shape": p["shape"],
                "count": p["count"],
                "flops": p["flops"],
                "rates": [e["products"][j]["rate"] for e in per],
            }
        errors = {n: e["errors"][n] for e in per for n in e["errors"]}
        summary[s] = {
            "size": size,
            "tokens_per_step": tokens,
            "flops_per_token": flops_per_token(**size),
            "tok_s": {n: _med(v) for n, v in tps.items()},
            "tok_s_all": tps,
            "ratio": {n: _med(v) for n, v in ratio.items()},
            "ratio_all": ratio,
            "bound": _med([e["bound"] for e in per]),
            "bound_all": [e["bound"] for e in per],
            "fraction": _med(frac),
            "fraction_all": frac,
            "fraction_reference": _med(frac_ref),
            "impl": sorted({e["impl"] for e in per if "impl" in e}),
            "rates": rates,
            "steps": [e["steps"] for e in per],
            "errors": errors,
        }
    return summary


def _fmt(x: float, spec: str = ",.0f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_report(args: argparse.Namespace, env: dict, summary: dict[str, Any]) -> None:
    print()
    sizes = {k: v for k, v in summary.items() if k in SIZES}
    for s, d in sizes.items():
        size = d["size"]
        print(
            f"== {s}: B {size['B']}, T {size['T']}, H {size['H']}, V {size['V']} "
            f"({d['tokens_per_step']} tokens/step, {d['flops_per_token'] / 1e6:.3f} MFLOP/token)"
        )
        print("   matrix products of one step (rate: median over processes, min..max):")
        for name, r in d["rates"].items():
            g = [x / 1e9 for x in r["rates"]]
            cnt = f"x{r['count']}" if r["count"] else "info"
            print(
                f"     {name:<31} {r['shape']:<22} {cnt:>5}  {_med(g):7.1f} GFLOP/s "
                f"({min(g):.1f}..{max(g):.1f})"
            )
        b = d["bound_all"]
        print(f"   bound: {d['bound']:,.0f} tokens/s (per process {min(b):,.0f}..{max(b):,.0f})")
        print(f"   npgru resolved impl: {', '.join(d['impl']) or '?'}")
        for n, v in d["tok_s_all"].items():
            print(f"   {n:<9} tok/s per process: " + " ".join(f"{x:,.0f}" for x in v))
        for n, v in d["ratio_all"].items():
            print(f"   npgru/{n:<9} per process: " + " ".join(f"{x:.2f}" for x in v))
        if not math.isnan(d["fraction_reference"]):
            print(f"   reference: {d['fraction_reference']:.0%} of the bound")
        if d["errors"]:
            for n, e in d["errors"].items():
                print(f"   ERROR {n}: {e}")
    print()
    print(describe_env(env))
    loads = ["?" if x is None else f"{x:.2f}" for x in summary["others_cores"]]
    flagged = sum(summary["disturbed"])
    print(f"other processes during each worker (cores): {' '.join(loads)}")
    if flagged:
        if summary["used"] < len(loads):
            print(f"  {flagged} disturbed process(es) left out of the medians")
        else:
            print("  WARNING: every process was disturbed by other load; numbers are unreliable")
    dev = "cuda" if args.backend == "cupy" else "cpu"
    print(
        f"backend: npgru on {args.backend} (impl {args.impl}), torch on {dev}; "
        f"threads {args.threads}; "
        f"{summary['used']} processes x {args.rounds} interleaved rounds; medians"
    )
    print()
    head = (
        f"{'size':<6} {'npgru tok/s':>12} {'scratch tok/s':>14} {'nn.GRU tok/s':>13} "
        f"{'npgru/nn.GRU':>13} {'npgru/scratch':>14} {'npgru/ref':>10} {'bound tok/s':>12} "
        f"{'of bound':>9}"
    )
    print(head)
    print("-" * len(head))
    # On a GPU the rate of each small product is its launch cost, not the device's
    # arithmetic: the "bound" from those rates bounds nothing there, so it is not shown.
    on_gpu = args.backend == "cupy"
    for s, d in sizes.items():
        t, r = d["tok_s"], d["ratio"]
        bound, fraction = (math.nan, math.nan) if on_gpu else (d["bound"], d["fraction"])
        print(
            f"{s:<6} {_fmt(t.get('npgru')):>12} {_fmt(t.get('scratch')):>14} "
            f"{_fmt(t.get('nn.GRU')):>13} {_fmt(r.get('nn.GRU'), '.2f'):>13} "
            f"{_fmt(r.get('scratch'), '.2f'):>14} {_fmt(r.get('reference'), '.2f'):>10} "
            f"{_fmt(bound):>12} {_fmt(fraction, '.0%'):>9}"
        )
    if on_gpu:
        print("(bound: not shown on a GPU, where small products are launch-bound)")


# ------------------------------------------------------------------------------------------
# --profile: where npgru's time goes


class LineTimer:
    """Exclusive wall time per source line of the files under ``root`` (a small tracer).

    Time spent in a traced callee is charged to the callee's lines, not to the calling line;
    time in untraced code (NumPy's C functions, other libraries) is charged to the line that
    called it. Tracing adds a little time to every line event (reported beside the result).
    """

    def __init__(self, root: str):
        self.root = root
        self.times: dict[tuple[str, int], float] = defaultdict(float)
        self.hits: dict[tuple[str, int], int] = defaultdict(int)
        self.frames: dict[Any, list] = {}
        self.stack: list[Any] = []

    def _charge(self, frame: Any, now: float) -> None:
        state = self.frames[frame]
        if state[1] is not None:
            key = (frame.f_code.co_filename, state[0])
            self.times[key] += now - state[1]
        state[0], state[1] = frame.f_lineno, now

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "call" or not frame.f_code.co_filename.startswith(self.root):
            return None
        now = time.perf_counter()
        if self.stack:  # pause the caller's line while the callee runs
            parent = self.stack[-1]
            self._charge(parent, now)
            self.frames[parent][1] = None
        self.stack.append(frame)
        self.frames[frame] = [frame.f_lineno, now]
        return self._local

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        now = time.perf_counter()
        if frame not in self.frames:
            return self._local
        if event == "line":
            self._charge(frame, now)
            self.hits[(frame.f_code.co_filename, frame.f_lineno)] += 1
        elif event == "return":
            self._charge(frame, now)
            del self.frames[frame]
            if self.stack and self.stack[-1] is frame:
                self.stack.pop()
            if self.stack:
                self.frames[self.stack[-1]][1] = now
        return self._local

    def __enter__(self) -> LineTimer:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.settrace(None)


def run_profile(args: argparse.Namespace) -> None:
    set_threads(args.threads, torch_too=False)
    size_name = args.sizes[0]
    size = SIZES[size_name]
    tokens = size["B"] * size["T"]
    c = NpgruStep(size, args.seed, args.backend, args.impl)
    print(describe_env(environment(with_torch=False)))
    print(f"profile of one npgru training step at {size_name} ({size}), threads {args.threads}\n")
    time_steps(c, 20)
    n = args.profile_steps
    base = statistics.median(time_steps(c, n))
    print(
        f"untraced: {base * 1e3:.2f} ms/step = {tokens / base:,.0f} tokens/s "
        f"(median of {n} steps)\n"
    )

    # phases, timed by hand around the public calls
    model, npg = c.model, c.npgru
    phases: dict[str, list[float]] = defaultdict(list)
    X, Y = c.batches[0]
    for _ in range(n):
        t0 = time.perf_counter()
        model.forward(X, c.state)
        c.sync()
        t1 = time.perf_counter()
        loss, grads, c.state = model.loss_and_grads(X, Y, c.state)
        c.sync()
        t2 = time.perf_counter()
        npg.clip_grad_norm(grads, 1.0)
        c.sync()
        t3 = time.perf_counter()
        npg.sgd(model.params, grads, 1.0)
        float(loss)
        c.sync()
        t4 = time.perf_counter()
        phases["forward alone (model.forward)"].append(t1 - t0)
        phases["loss_and_grads (forward + loss + backward)"].append(t2 - t1)
        phases["clip_grad_norm"].append(t3 - t2)
        phases["sgd + float(loss)"].append(t4 - t3)
    print("phases (median ms per step):")
    for k, v in phases.items():
        print(f"  {k:<45} {statistics.median(v) * 1e3:7.3f}")
    print()

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        c.step()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
    text = buf.getvalue()
    start = text.find("   ncalls")
    print(f"cProfile, {n} steps, sorted by own time (tottime):")
    print(text[start:].rstrip() if start >= 0 else text.rstrip())
    print()

    root = str(ROOT / "npgru")
    lt = LineTimer(root)
    t0 = time.perf_counter()
    with lt:
        for _ in range(n):
            c.step()
    traced = (time.perf_counter() - t0) / n
    total = sum(lt.times.values()) / n
    print(
        f"line timer (exclusive wall time per line of npgru/, {n} steps): traced step "
        f"{traced * 1e3:.2f} ms vs {base * 1e3:.2f} ms untraced; lines below sum to "
        f"{total * 1e3:.2f} ms/step"
    )
    print(f"  {'ms/step':>8} {'share':>6} {'hits/step':>9}  where")
    top = sorted(lt.times.items(), key=lambda kv: -kv[1])[: args.profile_top]
    for (fname, lineno), t in top:
        src = linecache.getline(fname, lineno).strip()
        rel = os.path.relpath(fname, ROOT)
        hits = lt.hits.get((fname, lineno), 0) / n
        print(f"  {t / n * 1e3:8.3f} {t / n / total:6.1%} {hits:9.0f}  {rel}:{lineno}  {src[:70]}")


# ------------------------------------------------------------------------------------------
# --e2e: the example's own epoch speed beside PyTorch's


SPEED_RE = re.compile(r"perplexity\s+([0-9.,]+),\s+([0-9.,]+)\s+tokens/sec on\s+(.+)")


def default_data() -> str | None:
    path = ROOT / "tests" / "data" / "timemachine.txt"  # ships with the tests
    return str(path) if path.exists() else None


def run_e2e(args: argparse.Namespace) -> None:
    data = args.data or default_data()
    example = ROOT / "examples" / "timemachine.py"
    torch_script = ROOT / "benchmarks" / "torch_timemachine.py"
    common = ["--epochs", str(args.e2e_epochs)] + (["--data", data] if data else [])
    torch_common = [*common, "--threads", str(args.threads), "--quiet"]
    npgru_cmd = [sys.executable, str(example), *common, *shlex.split(args.e2e_args)]
    every = {  # the example itself (impl auto: fused on NumPy with Numba), its reference path
        "npgru": [*npgru_cmd, "--impl", args.impl],
        "reference": [*npgru_cmd, "--impl", "reference"],
        "nn.GRU": [sys.executable, str(torch_script), *torch_common],
        "scratch": [sys.executable, str(torch_script), *torch_common, "--scratch"],
    }
    jobs = [(name, every[name]) for name in args.contenders]
    print(
        f"end to end: {args.e2e_epochs} epochs each, {args.e2e_runs} alternating runs, "
        f"threads {args.threads}; {', '.join(args.contenders)}"
    )
    # per contender: (tokens/s, perplexity, wall s, run) of each run
    got: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
    noisy: dict[str, list[tuple[float, float, float, int]]] = defaultdict(list)
    for run in range(args.e2e_runs):
        for name, cmd in jobs:
            wait_quiet(args.max_others, args.max_wait)
            t0 = time.perf_counter()
            busy0, cpu0 = cpu_busy_seconds(), children_cpu_seconds()
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=False,
                env=child_env(args.threads),
                cwd=ROOT,
            )
            wall = time.perf_counter() - t0
            others = None
            if busy0 is not None:
                used = children_cpu_seconds() - cpu0
                others = max(0.0, cpu_busy_seconds() - busy0 - used) / wall
            m = None
            for line in proc.stdout.splitlines():
                m = SPEED_RE.search(line) or m
            if proc.returncode != 0 or m is None:
                print(f"  {name}: failed (exit {proc.returncode}): {shlex.join(cmd)}")
                print("   " + (proc.stderr or proc.stdout).strip()[-600:].replace("\n", "\n   "))
                continue
            speed = float(m.group(2).replace(",", ""))
            disturbed = others is not None and others > args.max_others
            bucket = noisy if disturbed else got
            bucket[name].append((speed, float(m.group(1).replace(",", "")), wall, run))
            load = "?" if others is None else f"{others:.2f}"
            print(
                f"  run {run + 1} {name:<8} {speed:>10,.0f} tokens/s "
                f"(perplexity {m.group(1)}, on {m.group(3).strip()}; {wall:.0f} s; "
                f"others {load} cores{', disturbed' if disturbed else ''})",
                flush=True,
            )
    for name in list(noisy):
        if not got.get(name):  # only disturbed runs: show them, marked
            got[name + " (disturbed!)"] = noisy[name]
    print(f"\n{'e2e':<22} {'tokens/s (median)':>18} {'perplexity':>11} {'wall s (median)':>16}")
    speed, wall_s = {}, {}
    for name, v in got.items():
        speed[name], wall_s[name] = _med([x[0] for x in v]), _med([x[2] for x in v])
        print(
            f"{name:<22} {speed[name]:>18,.0f} {_med([x[1] for x in v]):>11.2f} "
            f"{wall_s[name]:>16.1f}"
        )
    if "npgru" in speed:
        # the machine's speed can drift between runs of a minute (a VM's neighbours): the
        # ratio within each run, whose contenders ran one after the other, is steadier
        mine = {x[3]: x[0] for x in got["npgru"]}
        for other in ("reference", "nn.GRU", "scratch"):
            if other in speed:
                paired = [mine[x[3]] / x[0] for x in got[other] if x[3] in mine]
                each = " ".join(f"{r:.2f}" for r in paired)
                print(
                    f"npgru/{other}: {speed['npgru'] / speed[other]:.2f} (tokens/s), "
                    f"{wall_s[other] / wall_s['npgru']:.2f} (wall time of the whole run); "
                    f"within each run {each or '-'}, median {_fmt(_med(paired), '.2f')}"
                )


# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        default="d2l,large,long",
        help=f"comma-separated, from {', '.join(SIZES)} (default: all)",
    )
    ap.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated subset of npgru,reference,scratch,nn.GRU (npgru is needed for "
        "the ratios); --e2e runs them too",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads for NumPy's BLAS and for PyTorch alike (default 2)",
    )
    ap.add_argument("--procs", type=int, default=5, help="fresh worker processes (default 5)")
    ap.add_argument(
        "--rounds", type=int, default=8, help="interleaved rounds per process (default 8)"
    )
    ap.add_argument(
        "--block",
        type=float,
        default=0.3,
        help="seconds of back-to-back steps per contender per round (default 0.3)",
    )
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps per contender")
    ap.add_argument(
        "--rate-time",
        type=float,
        default=0.03,
        help="seconds per timed block of a matrix-product rate (one per round)",
    )
    ap.add_argument(
        "--backend",
        choices=("numpy", "cupy"),
        default="numpy",
        help="numpy: all on the CPU; cupy: npgru on CuPy, torch on cuda",
    )
    ap.add_argument(
        "--impl",
        choices=("auto", "reference", "cuda", "numba"),
        default="auto",
        help="npgru's GRULanguageModel(impl=...): auto is cuda on cupy, numba on numpy where "
        "Numba is installed, else reference",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: d2l size, 2 processes")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--worker-timeout", type=float, default=600)
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.1,
        help="cores other processes may use during a worker before it is run again (default 0.1)",
    )
    ap.add_argument(
        "--retries", type=int, default=2, help="re-measurements of a disturbed process (default 2)"
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=60,
        help="seconds to wait for a quiet machine before each process",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile npgru's training step at the first size instead",
    )
    ap.add_argument("--profile-steps", type=int, default=50)
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument(
        "--e2e",
        action="store_true",
        help="run examples/timemachine.py and torch_timemachine.py instead",
    )
    ap.add_argument(
        "--e2e-epochs", type=int, default=30, help="epochs per --e2e run (d2l's run: 500)"
    )
    ap.add_argument("--e2e-runs", type=int, default=3)
    ap.add_argument("--e2e-args", default="", help="extra arguments for examples/timemachine.py")
    ap.add_argument("--data", help="the text for --e2e (default tests/data/timemachine.txt)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for s in args.sizes:
        if s not in SIZES:
            ap.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    for c in args.contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    if args.quick and not args.worker:
        if "--sizes" not in " ".join(argv if argv is not None else sys.argv):
            args.sizes = ["d2l"]
        args.procs, args.rounds, args.block, args.warmup = 2, 3, 0.15, 3
        args.rate_time = 0.02
        args.profile_steps, args.e2e_epochs, args.e2e_runs = 15, 3, 1
        args.max_wait, args.retries = 10, 1
    if args.threads < 1 or args.procs < 1 or args.rounds < 1:
        ap.error("--threads, --procs and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(JSON_MARK + json.dumps(worker(args)), flush=True)
        return
    if args.profile:
        run_profile(args)
        return
    if args.e2e:
        run_e2e(args)
        return
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    # NPGRU_COMMIT: where the tree was copied without its own git history (a lent GPU machine)
    commit = (
        os.environ.get("NPGRU_COMMIT")
        or subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    print(f"npgru benchmark, {when}, commit {commit or '?'}")
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{args.procs} fresh processes, threads {args.threads}, sizes {', '.join(args.sizes)}",
        flush=True,
    )
    t0 = time.perf_counter()
    results = run_workers(args)
    summary = summarize(args, results)
    env = results[0]["env"]
    print_report(args, env, summary)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "when": when,
                    "commit": commit,
                    "argv": sys.argv,
                    "threads": args.threads,
                    "backend": args.backend,
                    "env": env,
                    "summary": summary,
                    "processes": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
