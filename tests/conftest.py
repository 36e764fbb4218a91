"""Shared fixtures and helpers for the core tests (gru, model, loss, optim, gradcheck, backends).

Sizes are kept tiny (D 3–5, H 4–6, T 1–4, B 2–3) so that the whole suite stays fast; the
gradient checks run in float64, where a correct hand-derived gradient agrees with central
differences to about 1e-9 or better.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: Gradient checks: step and pass threshold asked for by issue 2.
FD_STEP = 1e-5
FD_THRESHOLD = 1e-7

#: Both GRU variants, for parametrized tests.
VARIANTS = ("d2l", "reset_after")


def perturb(params: Mapping[str, Any], rng: np.random.Generator, scale: float = 0.4) -> None:
    """Overwrite every array of ``params`` in place with N(0, scale²) draws.

    The library initializes weights at N(0, 0.01²) and biases at zero, where most gradients
    are tiny and a wrong term could hide under round-off. Writing in place (``p[...] = ...``)
    keeps the views of a :class:`~npgru.FlatDict` pointing into its shared buffer.
    """
    for p in params.values():
        host = rng.normal(0.0, scale, size=tuple(p.shape)).astype(np.asarray(p).dtype)
        p[...] = host


def random_params(
    D: int, H: int, variant: str, rng: np.random.Generator, *, dtype: str = "float64"
) -> dict[str, np.ndarray]:
    """GRU parameters of the variant with gate-sized random values (scale ~0.4)."""
    from npgru import gru

    params = gru.init_params(D, H, variant=variant, dtype=dtype, seed=0)
    perturb(params, rng)
    return params


def sequence_case(size: tuple, variant: str, dtype: str, tokens: bool, rng: np.random.Generator):
    """A sequence problem and the reference's answer, for the CUDA path to match.

    ``size`` is (T, B, H, D). The weights have std 0.4 / √(H/4) at most: larger ones make the
    recurrence chaotic (a round-off difference then doubles every step, and no two correct
    codes agree). Returns the inputs ``(X, H0, dHs, dH_last, params)`` and the reference's
    ``(Hs, cache)`` and ``(dX, dH0, grads)``.
    """
    from npgru import gru

    T, B, H, D = size
    scale = min(1.0, 2.0 / np.sqrt(H))
    params = {n: (a * scale).astype(dtype) for n, a in random_params(D, H, variant, rng).items()}
    X = rng.integers(0, D, size=(T, B)) if tokens else rng.normal(size=(T, B, D)).astype(dtype)
    H0 = rng.normal(size=(B, H)).astype(dtype)
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dH_last = rng.normal(size=(B, H)).astype(dtype)
    Hs, cache = gru.forward(X, H0, params)
    return (X, H0, dHs, dH_last, params), (Hs, cache), gru.backward(dHs, cache, dH_last)


def assert_rel(got: Any, ref: Any, what: str, tol: float) -> None:
    """``got`` equals ``ref`` to ``tol`` of ``ref``'s largest magnitude, and is finite."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.all(np.isfinite(got)), f"{what}: not finite"
    err = float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-300)
    assert err <= tol, f"{what}: max difference {err:.3e} of the largest magnitude (tol {tol:g})"


def assert_same_cache(got: Any, ref: Any, tol: float, to_host: Any = np.asarray) -> None:
    """The buffers of two sequence caches (gru.SeqCache) agree to ``tol`` (:func:`assert_rel`),
    and those the variant does not keep (RH for reset_after, G for d2l) are None in both."""
    for name in ("Z", "R", "H_tilde", "RH", "G"):
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None), f"{name}: {type(a).__name__}, not {type(b).__name__}"
        if b is not None:
            assert_rel(to_host(a), b, name, tol)


def assert_same_backward(got: tuple, ref: tuple, tol: float, to_host: Any = np.asarray) -> None:
    """Two results ``(dX, dH0, grads)`` of a sequence backward agree to ``tol``
    (:func:`assert_rel`); dX is None in both for token ids; the same gradients, in order."""
    (dX, dH0, grads), (ref_dX, ref_dH0, ref_grads) = got, ref
    assert_rel(to_host(dH0), ref_dH0, "dH0", tol)
    if ref_dX is None:
        assert dX is None
    else:
        assert_rel(to_host(dX), ref_dX, "dX", tol)
    assert list(grads) == list(ref_grads)
    for name in ref_grads:
        assert_rel(to_host(grads[name]), ref_grads[name], name, tol)


def one_line(err: BaseException) -> str:
    """The error's message, asserting it is a single, non-empty line."""
    msg = str(err)
    assert msg, f"{type(err).__name__} has an empty message"
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test (tests stay independent of their order)."""
    return np.random.default_rng(20240413)


#: The book, shipped with the tests (``$NPGRU_TEST_DATA`` names another copy).
BOOK = Path(os.environ.get("NPGRU_TEST_DATA") or Path(__file__).parent / "data" / "timemachine.txt")


@pytest.fixture(scope="session")
def book_path() -> Path:
    """The verified copy of *The Time Machine* the tests use."""
    assert BOOK.is_file(), f"the Time Machine text is not at {BOOK} (NPGRU_TEST_DATA)"
    return BOOK


def save_run_unchecked(path: Path, state: Any) -> None:
    """Write a run checkpoint as ``save_run`` does but without its checks (NaN included), to
    test that loading checks again: a hostile file need not come from ``save_run``."""
    from npgru import checkpoint

    meta = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": state.config,
            "vocab": state.vocab, "epoch": state.epoch, "history": state.history,
            "rng_state": state.rng_state}  # fmt: skip
    arrays = dict(state.params)
    if state.optimizer:
        meta["opt_step"] = state.optimizer["t"]
        arrays.update({"opt_" + k: a for k, a in state.optimizer.items() if k != "t"})
    checkpoint.save_checkpoint(path, arrays, meta)
