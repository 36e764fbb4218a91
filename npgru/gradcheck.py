r"""Finite-difference gradient checking, for the tests and for learners.

For each entry :math:`θ_i` of each named array the central difference

.. math::  Δ_h = \frac{f(θ + h e_i) − f(θ − h e_i)}{2h} = \frac{∂f}{∂θ_i} + O(h^2)

is the numeric gradient :math:`n`, compared with the analytic gradient :math:`a` array by
array:

.. math::  \text{rel. error} = \frac{‖a − n‖_2}{\max(‖a‖_2, ‖n‖_2)}

(0 where both vanish). The differences have an error of their own: rounding in ``f``
(about one unit in the last place of ``f``, divided by the step) and the :math:`O(h^2)`
truncation. The checker measures it instead of guessing it: every entry is also differenced
with the step :math:`2h`, and :math:`|Δ_h − Δ_{2h}|` (at least one rounding step of ``f``
divided by the step) is that entry's *fd noise*; its norm over the array, on the same scale
as the relative error, is the ``fd noise`` column of the report. Each array then gets one of
three verdicts:

* **passed**: the relative error is below ``threshold``, and so is the fd noise (the finite
  differences could have shown an error of that size);
* **failed**: it is not, and :math:`‖a − n‖` exceeds ``margin`` (5) times the fd noise, so
  the finite differences are good enough to show that :math:`a` is wrong;
* **inconclusive**: neither. The gradient is too small against the noise of the finite
  differences to be judged (typically at d2l's tiny initial weights); the report says what to
  do. Also every array whose numeric gradient is 0 at every checked entry: ``f`` did not
  change at all when it was perturbed, which mostly means that ``f`` does not read that
  array (it reads a copy), and then nothing about ``f``'s gradient can be learnt from it.
  Inconclusive is not passed: ``report.passed`` is true only when every array passed.

The margin: over 3,552 arrays of correct gradients (both variants, 1 and 2 layers, d2l's
initial weights and N(0, 0.5²), float64 and float32, 8 seeds; ``python
tests/test_gradcheck.py`` reruns the sweep), :math:`‖a − n‖` was at most 2.1 times the
measured fd noise and in 99% of them at most 1.2 times; 5 leaves more than twice that room.

Defaults depend on the precision of the inputs (and of ``f``'s result): float64 uses
:math:`h = 10^{-5}` and threshold :math:`10^{-6}`; float32 cannot resolve that step, so it
uses :math:`h = 10^{-2}` and threshold :math:`10^{-3}`, and the report says so.
"""

from __future__ import annotations

import math
import numbers
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npgru.backend import get_backend, namespace_of
from npgru.checks import integer
from npgru.errors import ConfigError, ShapeError
from npgru.optim import positive_float

Array = Any

#: The three verdicts, for an array and for a whole report.
PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"

#: (h, threshold) by the precision of the check. float32's step is near ε^(1/3) (where the
#: rounding and truncation errors of a central difference balance, docs/derivation.md §11);
#: its threshold is what that step resolves at weights of a normal size.
DEFAULTS = {"float64": (1e-5, 1e-6), "float32": (1e-2, 1e-3)}

#: An array fails when ‖a − n‖ exceeds this many times its measured fd noise.
MARGIN = 5.0


@dataclass
class Entry:
    """The result for one named array: the numbers behind its verdict."""

    rel_error: float  # ‖a − n‖ / max(‖a‖, ‖n‖)
    worst_index: tuple[int, ...]  # where |a − n| is largest
    analytic: float  # the two values there
    numeric: float
    checked: int  # how many entries were perturbed
    abs_error: float = 0.0  # ‖a − n‖₂
    noise: float = 0.0  # measured fd noise: ‖max(|Δ_h − Δ_2h|, one rounding step of f)‖₂
    threshold: float = 1e-6
    margin: float = MARGIN
    analytic_norm: float = 0.0  # ‖a‖₂
    numeric_norm: float = 0.0  # ‖n‖₂

    @property
    def scale(self) -> float:
        """max(‖a‖, ‖n‖): what the relative error and the relative noise are divided by."""
        return max(self.analytic_norm, self.numeric_norm)

    @property
    def rel_noise(self) -> float:
        """The measured fd noise on the scale of the relative error (inf when a = n = 0)."""
        if self.scale > 0:
            return self.noise / self.scale
        return math.inf if self.noise > 0 else 0.0

    @property
    def within_noise(self) -> bool:
        """‖a − n‖ is no more than ``margin`` times what the finite differences can resolve."""
        return self.abs_error <= self.margin * self.noise

    @property
    def flat(self) -> bool:
        """The numeric gradient is 0 at every checked entry: f never changed."""
        return self.numeric_norm == 0

    @property
    def verdict(self) -> str:
        """``"passed"``, ``"failed"`` or ``"inconclusive"`` (see the module docstring)."""
        if not math.isfinite(self.analytic_norm):
            return FAILED  # an analytic gradient with inf or nan is wrong whatever f does
        if not (math.isfinite(self.numeric_norm) and math.isfinite(self.noise)):
            return INCONCLUSIVE  # f is not finite near θ: nothing to compare with
        if self.flat:
            return INCONCLUSIVE  # f may not read the array: nothing to compare with
        if self.rel_error < self.threshold and self.rel_noise < self.threshold:
            return PASSED
        return INCONCLUSIVE if self.within_noise else FAILED

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED


@dataclass
class GradCheckReport:
    """The verdict of every array; ``print`` it for a table with what to do next.

    ``verdict`` is ``"failed"`` if any array failed, else ``"inconclusive"`` if any array is
    inconclusive, else ``"passed"``; ``passed`` (and ``bool(report)``) only in the last case.
    """

    threshold: float
    entries: dict[str, Entry] = field(default_factory=dict)
    h: float = DEFAULTS["float64"][0]
    precision: str = "float64"  # of the inputs and f: the lowest among them
    margin: float = MARGIN
    notes: list[str] = field(default_factory=list)  # said before the verdict, e.g. for float32

    @property
    def max_error(self) -> float:
        return max((e.rel_error for e in self.entries.values()), default=0.0)

    def names(self, verdict: str) -> list[str]:
        """The arrays with this verdict, in input order."""
        return [name for name, e in self.entries.items() if e.verdict == verdict]

    @property
    def verdict(self) -> str:
        for verdict in (FAILED, INCONCLUSIVE):
            if self.names(verdict):
                return verdict
        return PASSED

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [
            f"gradient check in {self.precision}: central differences with h = {self.h:g}, "
            "fd noise measured against 2h",
            f"{'name':<10} {'verdict':<12} {'rel. error':>10} {'fd noise':>10}  "
            "worst entry: analytic vs numeric",
        ]
        for name, e in self.entries.items():
            lines.append(
                f"{name:<10} {e.verdict:<12} {e.rel_error:10.2e} {e.rel_noise:10.2e}  "
                f"{e.worst_index}: {e.analytic:.6g} vs {e.numeric:.6g}"
            )
        paragraphs = [
            f"(passed: rel. error and fd noise < {self.threshold:g}; failed: rel. error > "
            f"{self.margin:g} x fd noise; otherwise inconclusive)",
            *self.notes,
        ]
        failed, unsure = self.names(FAILED), self.names(INCONCLUSIVE)
        n = len(self.entries)
        if failed:
            paragraphs.append(
                f"FAILED: {len(failed)} of {n} arrays disagree with the finite differences by "
                f"more than {self.margin:g} x their noise: {', '.join(failed)}. Look at the "
                "worst entry of each: a missing term, a transpose, a wrong factor or sign."
            )
        if unsure:
            flat = [name for name in unsure if self.entries[name].flat]
            small = [name for name in unsure if name not in flat]
            text = (
                f"{'Also ' if failed else ''}INCONCLUSIVE: {len(unsure)} of {n} arrays cannot "
                f"be judged: {', '.join(unsure)}."
            )
            if flat:
                text += (
                    f" f did not change when any checked entry of {', '.join(flat)} was "
                    "perturbed (a numeric gradient of 0 everywhere): f may not read the arrays "
                    "in inputs (does it read a copy, or arrays replaced since?): pass the very "
                    "arrays f reads. Or their effect on f is below its rounding."
                )
            if small:
                text += (
                    f" {'The gradients of ' + ', '.join(small) if flat else 'Their gradients'}"
                    " are too small against the noise of the finite differences (the fd noise "
                    "column) to show an error, or to exclude one; an array can pass once its fd "
                    f"noise is well below {self.threshold:g}."
                )
            paragraphs.append(text + " To judge them:")
            if self.precision == "float32":
                paragraphs.append(
                    "* check in float64 (build the model or the parameters with "
                    "dtype='float64'): its rounding noise is about 5e8 times smaller;"
                )
            paragraphs.append(
                "* rescale the weights to a size the network works at, e.g. "
                "p[...] = rng.normal(0, 0.5, p.shape) for each parameter p, and check again: at "
                "d2l's N(0, 0.01²) initial weights some gates barely touch the loss (CS231n's "
                "notes advise checking at a characteristic point, not at the initialization);"
            )
            if self.precision == "float64":
                paragraphs.append(
                    f"* or try a larger h (e.g. h={10 * self.h:g}): the rounding noise falls "
                    "as 1/h, the truncation error grows as h²."
                )
        if not failed and not unsure:
            paragraphs.append(
                f"PASSED: every relative error is below the threshold {self.threshold:g} "
                f"(max {self.max_error:.2e})."
            )
        for text in paragraphs:
            indent = "  " if text.startswith("* ") else ""
            lines.extend(
                textwrap.wrap(
                    text,
                    92,
                    initial_indent=indent,
                    subsequent_indent=indent + "  " * bool(indent),
                    break_on_hyphens=False,
                )
            )
        return "\n".join(lines)


def _precision(xp: Any, dtype: Any, what: str) -> str:
    """``"float64"`` or ``"float32"``, the precision of ``dtype``; ShapeError for others."""
    wrong = ShapeError(f"{what} must be float32 or float64, got {dtype}")
    isdtype = getattr(xp, "isdtype", None)
    if isdtype is not None and not isdtype(dtype, "real floating"):
        raise wrong  # complex128 has float64's eps, but no order: no finite differences
    try:
        eps = float(xp.finfo(dtype).eps)
    except (TypeError, ValueError) as exc:
        raise wrong from exc
    for name in ("float64", "float32"):
        if eps == float(np.finfo(name).eps):
            return name
    raise wrong


def _scalar(value: Any) -> float:
    """``value``, what f returned, as a float: a real number or a 0-d array, nothing else."""
    shape = getattr(value, "shape", None)
    if shape is None:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = tuple(shape) == ()
    if not ok:
        if isinstance(value, tuple | list):
            got = f"a {type(value).__name__} of {len(value)} items"
        elif shape is not None:
            got = f"an array of shape {tuple(shape)}"
        else:
            got = f"{type(value).__name__} {value!r:.40}"
        raise ShapeError(
            f"f must return the scalar loss (a float or a 0-d array), got {got}: if f "
            "returns (loss, state) or the like, pass lambda: f()[0]"
        )
    return float(value)


def _norm(v: np.ndarray) -> float:
    """‖v‖₂ of a float64 vector without overflow or underflow (0 only if v is)."""
    m = float(np.max(np.abs(v))) if v.size else 0.0
    if 0 < m < math.inf:
        return m * float(np.linalg.norm(v / m))
    return float(np.linalg.norm(v))  # 0, or inf / NaN as they are


def check_gradients(
    f: Callable[[], Any],
    inputs: Mapping[str, Array],
    grads: Mapping[str, Array],
    *,
    h: float | None = None,
    threshold: float | None = None,
    margin: float = MARGIN,
    max_entries: int | None = None,
    seed: int = 0,
) -> GradCheckReport:
    """Compare analytic gradients with central finite differences; three verdicts.

    Args:
        f: a function of no arguments returning a scalar (a float or 0-d array) that reads
            the arrays in ``inputs``. Each entry is perturbed in place and restored, also
            when ``f`` raises.
        inputs: name → float32 or float64 array to differentiate with respect to (float64
            recommended: float32 resolves only large relative errors); at least one, none
            empty.
        grads: name → the analytic gradient of ``f`` for each name in ``inputs``, and for
            no other name.
        h: the finite-difference step (``None``: 1e-5 in float64, 1e-2 in float32).
        threshold: an array passes when its relative error is below it (``None``: 1e-6 in
            float64, 1e-3 in float32).
        margin: an array that does not pass fails when ‖a − n‖ exceeds ``margin`` times
            the measured noise of the finite differences, else it is inconclusive.
        max_entries: check at most this many random entries per array (``None``: all).
        seed: chooses those entries.

    Returns:
        A :class:`GradCheckReport`; ``print`` it for a table and what to do, test
        ``.passed`` or read ``.verdict``. ``f`` is called once, then four times per entry
        (at ±h and ±2h).

    Raises:
        ShapeError: ``f`` returns no scalar (e.g. ``(loss, state)``), ``inputs`` is empty or
            has an empty or non-float array, ``grads`` misses a name or has one more, or
            a gradient has the wrong shape.
        ConfigError: ``h``, ``threshold``, ``margin`` or ``max_entries`` out of range.

    Example: the gradient of :math:`f(W) = Σ (xW)^2` is :math:`2 x^T (xW)`.

    >>> import numpy as np
    >>> x, W = np.array([[1.0, 2.0]]), np.array([[0.5, -1.0], [0.25, 2.0]])
    >>> f = lambda: float(np.sum((x @ W) ** 2))
    >>> report = check_gradients(f, {"W": W}, {"W": 2 * x.T @ (x @ W)})
    >>> report.verdict, report.max_error < 1e-8
    ('passed', True)
    >>> report = check_gradients(f, {"W": W}, {"W": 2 * x.T @ (x @ W) * 1.01})
    >>> report.verdict
    'failed'
    """
    if not margin >= 1.0:
        raise ConfigError(f"margin must be at least 1, got {margin!r}")
    if max_entries is not None and (
        isinstance(max_entries, bool) or not isinstance(max_entries, numbers.Integral)
        or max_entries < 1
    ):  # fmt: skip
        raise ConfigError(f"max_entries must be a positive integer or None, got {max_entries!r}")
    if not inputs:
        raise ShapeError("inputs is empty: pass the arrays f reads, by name, to check anything")
    for name, A in inputs.items():
        if math.prod(A.shape) == 0:
            raise ShapeError(f"input {name!r} has no entries (shape {tuple(A.shape)}): drop it")
    extra = [name for name in grads if name not in inputs]
    if extra:
        raise ShapeError(
            f"grads has arrays that are not in inputs: {extra}; to check some arrays only, "
            "pass their gradients only: {name: grads[name] for name in inputs}"
        )
    value = f()
    _scalar(value)
    precisions = {
        _precision(namespace_of(A), A.dtype, f"input {name!r}") for name, A in inputs.items()
    }
    if hasattr(value, "dtype"):
        precisions.add(_precision(namespace_of(value), value.dtype, "the value of f"))
    precision = "float32" if "float32" in precisions else "float64"
    default_h, default_threshold = DEFAULTS[precision]
    # a real number each, not a bool or a string: float(True) would be a threshold of 1
    h = default_h if h is None else positive_float("h", h)
    threshold = default_threshold if threshold is None else positive_float("threshold", threshold)
    report = GradCheckReport(threshold, h=h, precision=precision, margin=margin)
    if precision == "float32":
        report.notes.append(
            f"float32: h = {h:g} and threshold {threshold:g} (float64 uses "
            f"{DEFAULTS['float64'][0]:g} and {DEFAULTS['float64'][1]:g}, finer than float32 "
            "resolves); a float32 check can "
            "see only large errors: check in float64 to prove a gradient."
        )
    work = np.dtype(precision)
    rng = np.random.default_rng(integer("seed", seed, low=0))
    for name, A in inputs.items():
        if name not in grads:
            raise ShapeError(f"no analytic gradient given for {name!r}: grads needs every input")
        g = grads[name]
        analytic_all = get_backend(namespace_of(g)).asnumpy(g).astype(np.float64)
        if analytic_all.shape != tuple(A.shape):
            raise ShapeError(
                f"gradient of {name} has shape {analytic_all.shape}, expected {tuple(A.shape)}"
            )
        size = math.prod(A.shape)
        flat_indices = np.arange(size)
        if max_entries is not None and size > max_entries:
            flat_indices = np.sort(rng.choice(size, max_entries, replace=False))
        analytic, numeric, noise, where = [], [], [], []
        for k in flat_indices:
            idx = tuple(int(i) for i in np.unravel_index(k, A.shape))
            # indexing and assignment only: valid in every array-API namespace
            old = A[idx] * 1  # a copy, sign of zero included
            diffs = []
            for step in (h, 2 * h):
                values = []
                try:
                    for x in (old + step, old - step):
                        A[idx] = x
                        values.append((float(A[idx]), _scalar(f())))  # the step as stored
                finally:  # also when f raises: the caller's arrays are never left perturbed
                    A[idx] = old
                (x_plus, f_plus), (x_minus, f_minus) = values
                if x_plus == x_minus:
                    raise ValueError(
                        f"h = {h:g} does not change {name}{list(idx)} = {float(old):g} in "
                        f"{A.dtype}: choose a larger h"
                    )
                diffs.append((f_plus - f_minus) / (x_plus - x_minus))
                if step == h:  # one rounding step of f, as a difference quotient
                    ulp = float(np.spacing(np.asarray(max(abs(f_plus), abs(f_minus)), work)))
                    quantum = ulp / (x_plus - x_minus)
            numeric.append(diffs[0])
            noise.append(max(abs(diffs[0] - diffs[1]), quantum))
            analytic.append(float(analytic_all[idx]))
            where.append(idx)
        a, n, u = np.array(analytic), np.array(numeric), np.array(noise)
        a_norm, n_norm, abs_error = _norm(a), _norm(n), _norm(a - n)
        scale = max(a_norm, n_norm)
        with np.errstate(invalid="ignore"):
            rel = abs_error / scale if scale > 0 else (0.0 if abs_error == 0 else math.nan)
            worst = int(np.nanargmax(np.abs(a - n))) if len(a) and np.isfinite(a - n).any() else 0
        report.entries[name] = Entry(
            float(rel),
            where[worst] if where else (),
            float(a[worst]) if len(a) else 0.0,
            float(n[worst]) if len(n) else 0.0,
            len(a),
            abs_error=abs_error,
            noise=_norm(u),
            threshold=threshold,
            margin=margin,
            analytic_norm=a_norm,
            numeric_norm=n_norm,
        )
    return report
