r"""Finite-difference gradient checking, for the tests and for learners.

For each entry :math:`θ_i` of each named array the central difference

.. math::  \frac{f(θ + h e_i) − f(θ − h e_i)}{2h} = \frac{∂f}{∂θ_i} + O(h^2)

is compared with the analytic gradient. Per array the relative error is

.. math::  \frac{‖g_{analytic} − g_{numeric}‖_2}{\max(‖g_{analytic}‖_2, ‖g_{numeric}‖_2)}

(0 where both vanish). In float64 with h = 1e-5 a correct gradient gives about 1e-9 or
less; above 1e-2 it is surely wrong (docs/derivation.md, "Checking gradients").

A gradient far smaller than the rounding noise of the differences cannot be checked in
relative terms: the noise of one numeric entry is about ν = ε · max(|f|, 1) / h (ε the
machine epsilon of the inputs' dtype). An array whose error ‖a − n‖ stays within
10 ν √k (k entries checked) is therefore also accepted, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npgru.backend import get_backend, namespace_of

Array = Any


@dataclass
class Entry:
    """The result for one named array."""

    rel_error: float
    worst_index: tuple[int, ...]  # where |analytic − numeric| is largest
    analytic: float  # the two values there
    numeric: float
    checked: int  # how many entries were perturbed
    abs_error: float = 0.0  # ‖analytic − numeric‖₂
    noise: float = 0.0  # ν √k: the rounding noise expected in ‖numeric‖
    threshold: float = 1e-6

    @property
    def within_noise(self) -> bool:
        """The error is no larger than rounding in the finite differences explains."""
        return self.abs_error <= 10 * self.noise

    @property
    def passed(self) -> bool:
        return self.rel_error < self.threshold or self.within_noise


@dataclass
class GradCheckReport:
    """Per-array relative errors; ``passed`` when each is below ``threshold`` or within the
    rounding noise of the finite differences (see the module docstring)."""

    threshold: float
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max((e.rel_error for e in self.entries.values()), default=0.0)

    @property
    def passed(self) -> bool:
        return all(e.passed for e in self.entries.values())

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [f"{'name':<10} {'rel. error':>10}  worst at (analytic vs numeric)"]
        for name, e in self.entries.items():
            lines.append(
                f"{name:<10} {e.rel_error:10.2e}  {e.worst_index} "
                f"({e.analytic:.6g} vs {e.numeric:.6g})"
                + (
                    ""
                    if e.rel_error < self.threshold or not e.passed
                    else "  within rounding noise"
                )
            )
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(
            f"{verdict}: max relative error {self.max_error:.2e} (threshold {self.threshold:g})"
        )
        return "\n".join(lines)


def check_gradients(
    f: Callable[[], Any],
    inputs: Mapping[str, Array],
    grads: Mapping[str, Array],
    *,
    h: float = 1e-5,
    threshold: float = 1e-6,
    max_entries: int | None = None,
    seed: int = 0,
) -> GradCheckReport:
    """Compare analytic gradients with central finite differences.

    Args:
        f: a function of no arguments returning a scalar (a float or 0-d array) that reads
            the arrays in ``inputs``. Each entry is perturbed in place and restored.
        inputs: name → array to differentiate with respect to (float64 recommended).
        grads: name → the analytic gradient of ``f`` for each name in ``inputs``.
        h: the finite-difference step.
        threshold: the report passes when every relative error is below it.
        max_entries: check at most this many random entries per array (``None``: all).
        seed: chooses those entries.

    Returns:
        A :class:`GradCheckReport`; ``print`` it for a table, test ``.passed``.

    Example: the gradient of :math:`f(W) = Σ (xW)^2` is :math:`2 x^T (xW)`.

    >>> import numpy as np
    >>> x, W = np.array([[1.0, 2.0]]), np.array([[0.5, -1.0], [0.25, 2.0]])
    >>> f = lambda: float(np.sum((x @ W) ** 2))
    >>> report = check_gradients(f, {"W": W}, {"W": 2 * x.T @ (x @ W)})
    >>> report.passed, report.max_error < 1e-8
    (True, True)
    """
    report = GradCheckReport(threshold)
    rng = np.random.default_rng(seed)
    f_size = max(abs(float(f())), 1.0)
    for name, A in inputs.items():
        if name not in grads:
            raise KeyError(f"no analytic gradient given for {name!r}")
        g = grads[name]
        analytic_all = get_backend(namespace_of(g)).asnumpy(g).astype(np.float64)
        if analytic_all.shape != tuple(A.shape):
            raise ValueError(
                f"gradient of {name} has shape {analytic_all.shape}, expected {tuple(A.shape)}"
            )
        size = math.prod(A.shape)
        flat_indices = np.arange(size)
        if max_entries is not None and size > max_entries:
            flat_indices = np.sort(rng.choice(size, max_entries, replace=False))
        analytic, numeric, where = [], [], []
        for k in flat_indices:
            idx = tuple(int(i) for i in np.unravel_index(k, A.shape))
            old = A[idx]  # indexing and assignment only: valid in every array-API namespace
            A[idx] = old + h
            f_plus = float(f())
            A[idx] = old - h
            f_minus = float(f())
            A[idx] = old
            numeric.append((f_plus - f_minus) / (2 * h))
            analytic.append(float(analytic_all[idx]))
            where.append(idx)
        a, n = np.array(analytic), np.array(numeric)
        scale = max(np.linalg.norm(a), np.linalg.norm(n))
        rel = float(np.linalg.norm(a - n) / scale) if scale > 0 else 0.0
        worst = int(np.argmax(np.abs(a - n))) if len(a) else 0
        eps = float(namespace_of(A).finfo(A.dtype).eps)
        report.entries[name] = Entry(
            rel,
            where[worst] if where else (),
            float(a[worst]) if len(a) else 0.0,
            float(n[worst]) if len(n) else 0.0,
            len(a),
            abs_error=float(np.linalg.norm(a - n)),
            noise=eps * f_size / h * math.sqrt(len(a)),
            threshold=threshold,
        )
    return report
