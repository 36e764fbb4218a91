r"""Recurrent layers like PyTorch's ``nn.GRU``: stacked, one or two directions, sequences of
different lengths in one batch.

A layer runs a cell module (:mod:`npgru.gru`; the plain RNN of :mod:`npgru.rnn`) over
``num_layers`` × ``num_directions`` parameter sets, time-major as PyTorch is::

    out, H_n, cache = layer.forward(X, H0, lengths)     X (T, B, D), H0 (L·dirs, B, H)
    dX, dH0, grads = layer.backward(d_out, dH_n, cache)

It adds no equations of its own, only three ways of routing arrays (``docs/derivation.md``,
section 15, derives their gradients):

* **lengths.** Sequence b ends after ``lengths[b]`` steps. Past its end the cell keeps the
  state (eq. 25), so the last state of the loop is each sequence's state at its last valid
  step, and the output there is zero (eq. 27), as ``pad_packed_sequence`` gives it.
* **the reverse direction** runs the same cell on each sequence reversed within its own
  length: step t of the reversed sequence b is step ``lengths[b] − 1 − t`` of X, and the
  padding stays where it is. Reversing twice is the identity, so the outputs are put back
  in order by the same gather, and every gradient goes back through it too (eq. 28).
* **stacking.** Layer l > 0 reads the outputs of both directions of layer l − 1 side by
  side, (T, B, 2H); its input gradient is the sum of what both directions send back.

Parameter names: the cell's names (``W_xz``, …) for layer 0, forward direction; deeper
layers add ``_l{l}`` and the reverse direction ``_reverse`` (``W_xz_l1_reverse``), as
PyTorch names ``weight_ih_l1_reverse``. All live in one flat buffer
(:class:`~npgru.flat.FlatDict`), so :mod:`npgru.optim` updates them in one call.
"""

from __future__ import annotations

import importlib.util
import warnings
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from npgru import cuda, gru, rnn
from npgru.backend import Backend, get_backend, is_floating, is_integer
from npgru.checks import check_lengths, float_dtype, fraction, gru_variant, integer, positive_int
from npgru.errors import BackendError, ConfigError, ShapeError
from npgru.flat import FlatDict

Array = Any

#: How a GRU layer runs: ``"reference"`` (the array-API code of :mod:`npgru.gru`, any
#: backend), ``"cuda"`` (the kernels of :mod:`npgru.cuda`, CuPy only), ``"numba"`` (the
#: fused CPU steps of :mod:`npgru.fused`, NumPy only, needs Numba) or ``"auto"``.
IMPLS = ("auto", "reference", "cuda", "numba")


def numba_installed() -> bool:
    """Whether Numba can be imported (``pip install 'npgru[fast]'``), without importing it."""
    return importlib.util.find_spec("numba") is not None


def resolve_impl(impl: Any, backend: Backend) -> str:
    """``"reference"``, ``"cuda"`` or ``"numba"``: what ``impl`` means on ``backend``.

    ``"auto"`` is the CUDA path on CuPy where its kernels compile and can run on the device
    (:func:`npgru.cuda.unavailable`), and the reference elsewhere: on a GPU they cannot run
    on, with one warning line (once per reason), never an error. On NumPy it is the fused
    steps of :mod:`npgru.fused` where Numba is installed, else the reference.

    Raises:
        ConfigError: an unknown impl, ``"cuda"`` on another backend than CuPy, or
            ``"numba"`` on another backend than NumPy.
        BackendError: ``"cuda"`` on a GPU its kernels cannot run on; ``"numba"`` without
            Numba.
    """
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ConfigError(f"unknown impl {impl!r}: choose one of {', '.join(map(repr, IMPLS))}")
    if impl == "cuda" and backend.name != "cupy":
        raise ConfigError(
            f"impl='cuda' runs on the cupy backend only, not {backend.name}: "
            "use impl='reference' or backend='cupy'"
        )
    if impl == "numba" and backend.name != "numpy":
        raise ConfigError(
            f"impl='numba' runs on the numpy backend only, not {backend.name}: "
            "use impl='reference' or backend='numpy'"
        )
    if impl == "numba" and not numba_installed():
        raise BackendError(
            "impl='numba' needs Numba: pip install 'npgru[fast]', or use impl='reference'"
        )
    if impl == "numba" or (impl == "auto" and backend.name == "numpy" and numba_installed()):
        return "numba"
    if impl == "reference" or backend.name != "cupy":
        return "reference"
    reason = cuda.unavailable(backend.xp)
    if reason is None:
        return "cuda"
    if impl == "cuda":
        raise BackendError(f"impl='cuda' cannot run here: {reason}; use impl='reference'")
    if reason not in _warned:  # a warning per reason, not one per model or checkpoint
        _warned.add(reason)
        warnings.warn(
            f"npgru: the CUDA kernels cannot run here ({reason}); using impl='reference'",
            RuntimeWarning,
            stacklevel=4,
        )
    return "reference"


_warned: set[str] = set()


class LayerCache(NamedTuple):
    """What :meth:`Recurrent.backward` needs from :meth:`Recurrent.forward`."""

    cells: list[list[Any]]  # cells[l][d]: the cell module's cache of layer l, direction d
    modules: list[ModuleType]  # the module each layer ran on (its backward goes back)
    M: Array | None  # (T, B, 1) mask of valid steps (eq. 25), None without lengths
    order: Array | None  # (T·B,) the gather that reverses each sequence (eq. 28)
    masks: list[Array] | None  # dropout masks of the outputs handed on (eq. 17)
    tokens: bool  # X was token ids (no dX)
    shape: tuple[int, int]  # (T, B)


class Recurrent:
    """The machinery every recurrent layer shares; a subclass names its cell module.

    Attributes:
        params: :class:`~npgru.flat.FlatDict` name → array, all views of ``params.flat``.
        input_size, hidden_size, num_layers: D, H, L.
        bidirectional: whether a reverse direction runs beside the forward one.
        num_directions: 2 if bidirectional, else 1.
        variant: the cell's variant (``"d2l"``/``"reset_after"`` for the GRU).
        dtype: ``"float32"`` or ``"float64"``.
        backend: the :class:`~npgru.backend.Backend` in use.
        impl: what ``impl`` resolved to (``"reference"``, ``"cuda"`` or ``"numba"``); calls
            with ``lengths`` always run on the reference (the fast paths have no masks).
    """

    #: the cell module (forward/backward over a sequence, init_params, PARAM_NAMES)
    cell: ModuleType = gru

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        variant: str,
        dtype: Any = "float32",
        seed: int | None = 0,
        backend: str | Backend = "numpy",
        impl: str = "reference",
    ):
        if seed is not None:
            integer("seed", seed, low=0)
        if not isinstance(bidirectional, bool):
            raise ConfigError(f"bidirectional must be True or False, got {bidirectional!r}")
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.variant, self.dtype = variant, float_dtype(dtype)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.impl = impl
        self._module = self.cell  # the calls without lengths: the cell or a fast path of it
        H, dirs = self.hidden_size, self.num_directions
        arrays: dict[str, Array] = {}
        for layer in range(self.num_layers):
            for direction in range(dirs):
                k = layer * dirs + direction  # H0's index, and the seed's offset
                p = self.cell.init_params(
                    self.input_size if layer == 0 else dirs * H,
                    H,
                    variant=variant,
                    dtype=dtype,
                    seed=None if seed is None else seed + k,
                    backend=self.backend,
                )
                arrays.update({self.param_name(n, layer, direction): a for n, a in p.items()})
        self.params = FlatDict.from_arrays(arrays)
        # per layer and direction, a forward and a backward workspace: repeated batches of
        # one shape allocate no large buffers (see gru.Workspace)
        self._workspaces = [(gru.Workspace(), gru.Workspace()) for _ in range(len(arrays))]

    # ----------------------------------------------------------------------------------
    # names and states

    @staticmethod
    def param_name(name: str, layer: int, direction: int = 0) -> str:
        """The name of cell parameter ``name`` of ``layer`` in ``direction`` (0 forward,
        1 reverse): ``W_xz``, ``W_xz_l1``, ``W_xz_reverse``, ``W_xz_l1_reverse``."""
        return name + ("" if layer == 0 else f"_l{layer}") + ("" if direction == 0 else "_reverse")

    def layer_params(self, layer: int, direction: int = 0, of: Any = None) -> dict[str, Array]:
        """The cell parameters of one layer and direction under their plain names (views, not
        copies); or the entries of ``of``, a mapping laid out like ``params`` (gradients)."""
        of = self.params if of is None else of
        names = self.cell.PARAM_NAMES[self.variant]
        return {n: of[self.param_name(n, layer, direction)] for n in names}

    def begin_state(self, batch_size: int) -> Array:
        """The zero state (L·dirs, B, H)."""
        B = positive_int("batch_size", batch_size)
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        return self.xp.zeros(shape, dtype=self.params.flat.dtype)

    def __repr__(self) -> str:
        extra = ", bidirectional=True" if self.bidirectional else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{extra}, variant={self.variant!r}, dtype="
                f"{self.dtype!r}, backend={self.backend.name!r}, impl={self.impl!r})")  # fmt: skip

    # ----------------------------------------------------------------------------------
    # checks

    def _check_inputs(self, X: Array, H0: Array | None) -> tuple[bool, int, int, Array]:
        """Validate X and H0; return (tokens, T, B, H0 or zeros)."""
        xp, D = self.xp, self.input_size
        if not hasattr(X, "ndim") or not hasattr(X, "dtype"):
            raise ShapeError(f"X must be an array (T, B, D={D}), got {type(X).__name__}")
        tokens = X.ndim == 2 and is_integer(xp, X.dtype)
        dense = X.ndim == 3 and is_floating(xp, X.dtype)
        if not (tokens or dense):
            raise ShapeError(f"X must be (T, B, D={D}) {self.dtype} or (T, B) integer token ids, "
                             f"got {X.ndim}-D {X.dtype}")  # fmt: skip
        if dense and (X.shape[2] != D or X.dtype != self.params.flat.dtype):
            raise ShapeError(f"X must be (T, B, D={D}) {self.dtype}, got {tuple(X.shape)} "
                             f"{X.dtype}")  # fmt: skip
        T, B = X.shape[:2]
        if T < 1 or B < 1:
            raise ShapeError(
                f"X must hold at least one step and one sequence, got {tuple(X.shape)}"
            )
        expected = (self.num_layers * self.num_directions, B, self.hidden_size)
        if H0 is None:
            return tokens, T, B, self.begin_state(B)
        if tuple(getattr(H0, "shape", ())) != expected or H0.dtype != self.params.flat.dtype:
            got = f"{tuple(H0.shape)} {H0.dtype}" if hasattr(H0, "shape") else type(H0).__name__
            raise ShapeError(f"H0 must be (num_layers·directions, B, H) = {expected} "
                             f"{self.dtype}, got {got}")  # fmt: skip
        return tokens, T, B, H0

    def _lengths(self, lengths: Any, T: int, B: int) -> tuple[Array, Array]:
        """``lengths`` on this backend, and the mask M (T, B, 1) of eq. 25."""
        xp = self.xp
        M = check_lengths(lengths, T, B, xp, self.params.flat.dtype)  # lists, NumPy, xp arrays
        # the lengths as int64 on the layer's backend, counted from the mask
        return xp.sum(xp.astype(M[:, :, 0], xp.int64), axis=0), M

    def _reversal(self, lengths: Array | None, T: int, B: int) -> Array | None:
        """The gather (T·B,) that reverses each sequence within its length (eq. 28): row
        t·B + b of the result is row (lengths[b] − 1 − t)·B + b, for t < lengths[b]; the rows
        past the end stay. ``None`` without lengths (a plain flip then)."""
        if lengths is None:
            return None
        xp = self.xp
        t = xp.arange(T, dtype=lengths.dtype)[:, None]
        source = xp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
        return xp.reshape(source * B + xp.arange(B, dtype=lengths.dtype)[None, :], (T * B,))

    def _reverse(self, A: Array, order: Array | None) -> Array:
        """Each sequence of A (T, B, ...) reversed within its length (its own inverse)."""
        xp = self.xp
        if order is None:
            return xp.flip(A, axis=0)
        T, B = A.shape[:2]
        flat = xp.reshape(A, (T * B, *A.shape[2:]))
        return xp.reshape(xp.take(flat, order, axis=0), A.shape)

    # ----------------------------------------------------------------------------------
    # forward and backward

    def dropout_masks(
        self, shape: tuple[int, int], dropout: float, rng: Any, count: int
    ) -> list[Array]:
        """``count`` inverted-dropout masks (T, B, dirs·H) for ``shape == (T, B)`` (eq. 17):
        ``K = [U >= p] / (1 − p)``, ``U`` drawn by ``rng.random`` on the layer's device (a
        NumPy or CuPy ``Generator``), or on the host and uploaded for another backend."""
        p = fraction("dropout", dropout)
        if rng is None:
            raise ConfigError("dropout > 0 needs rng, a random Generator for the masks")
        T, B = shape
        size = (count, T, B, self.num_directions * self.hidden_size)
        dtype = self.params.flat.dtype
        if self.backend.name in ("numpy", "cupy"):
            U = rng.random(size, dtype=dtype)
        else:
            U = self.backend.asarray(np.asarray(rng.random(size), dtype=self.dtype))
        keep = self.xp.astype(U >= p, dtype)  # eq. 17: K = [U >= p] / (1 - p)
        return list(keep * (1.0 / (1.0 - p)))

    def forward(
        self,
        X: Array,
        H0: Array | None = None,
        lengths: Any = None,
        *,
        dropout: float = 0.0,
        rng: Any = None,
        masks: list[Array] | None = None,
        params: Any = None,
    ) -> tuple[Array, Array, LayerCache]:
        """Run every layer and direction over the batch.

        Args:
            X: inputs (T, B, D), float in the layer's dtype; or token ids (T, B), integers
                in [0, D), standing for one-hot rows (a row gather, no product).
            H0: initial states (L·dirs, B, H) in PyTorch's order (layer 0 forward, layer 0
                reverse, layer 1 forward, …); ``None``: zeros.
            lengths: ``None`` (all sequences run T steps) or (B,) integers in 1..T (an array
                of the backend, a NumPy array or a list).
            dropout: the probability of dropping an output handed on to the next layer
                (not after the last layer, as ``nn.GRU``), training only; 0: none.
            rng: with ``dropout > 0``, the Generator the masks are drawn from.
            masks: instead of ``dropout``, the masks themselves: ``masks[l]`` (T, B, dirs·H)
                multiplies layer l's output; as many as the layers to mask, from layer 0.
            params: a mapping with the layer's names to run with instead of ``params`` (e.g.
                a model's flat buffer that holds more).

        Returns:
            out (T, B, dirs·H): the top layer's outputs, both directions side by side, zero
            where t >= lengths[b]; H_n (L·dirs, B, H): each sequence's state at its last
            valid step (for the reverse direction: after running back to t = 0); the cache
            for :meth:`backward`. ``out`` may live in the layer's buffers: the next
            ``forward`` overwrites it.
        """
        tokens, T, B, H0 = self._check_inputs(X, H0)
        xp, dirs = self.xp, self.num_directions
        M = order = None
        module = self._module
        if lengths is not None:
            lengths, M = self._lengths(lengths, T, B)
            order = self._reversal(lengths, T, B)
            module = self.cell  # the fast paths take no lengths
        if dropout and masks is None:
            masks = self.dropout_masks((T, B), dropout, rng, self.num_layers - 1)
        extra = {} if lengths is None else {"lengths": lengths}
        inputs, cells, last = X, [], []
        for layer in range(self.num_layers):
            outs, caches = [], []
            for direction in range(dirs):
                k = layer * dirs + direction
                x = inputs if direction == 0 else self._reverse(inputs, order)
                Hs, cache = module.forward(
                    x,
                    H0[k, ...],
                    self.layer_params(layer, direction, of=params),
                    workspace=self._workspaces[k][0],
                    **extra,
                )
                last.append(Hs[-1, ...])  # eq. 25: the state at each sequence's last step
                outs.append(Hs if direction == 0 else self._reverse(Hs, order))
                caches.append(cache)
            cells.append(caches)
            inputs = outs[0] if dirs == 1 else xp.concat(outs, axis=2)
            if M is not None:
                inputs = inputs * M  # eq. 27: zero past the end
            if masks is not None and layer < len(masks):
                inputs = inputs * masks[layer]  # eq. 17
        modules = [module] * self.num_layers
        cache = LayerCache(cells, modules, M, order, masks, tokens, (T, B))
        return inputs, xp.stack(last), cache

    def backward(
        self,
        d_out: Array | None,
        dH_n: Array | None,
        cache: LayerCache,
        *,
        grads: Any = None,
    ) -> tuple[Array | None, Array, Any]:
        """Backpropagation through every layer and direction (eqs. 26–28 around the cell's).

        Args:
            d_out: gradient with respect to ``out`` (T, B, dirs·H), or ``None``.
            dH_n: gradient with respect to ``H_n`` (L·dirs, B, H), or ``None``.
            cache: from :meth:`forward`.
            grads: a mapping with the layer's names to write the gradients into (e.g. a
                model's flat buffer); ``None``: a new FlatDict like ``params``.

        Returns:
            dX (T, B, D), ``None`` for token ids; dH0 (L·dirs, B, H); the gradients.
        """
        xp, H, dirs = self.xp, self.hidden_size, self.num_directions
        T, B = cache.shape
        width = dirs * H
        if d_out is not None and (tuple(getattr(d_out, "shape", ())) != (T, B, width)
                                  or d_out.dtype != self.params.flat.dtype):  # fmt: skip
            got = f"{tuple(d_out.shape)} {d_out.dtype}" if hasattr(d_out, "shape") else d_out
            raise ShapeError(f"d_out must be (T, B, directions·H) = {(T, B, width)} "
                             f"{self.dtype} like out, got {got}")  # fmt: skip
        states = (self.num_layers * dirs, B, H)
        if dH_n is not None and (tuple(getattr(dH_n, "shape", ())) != states
                                 or dH_n.dtype != self.params.flat.dtype):  # fmt: skip
            got = f"{tuple(dH_n.shape)} {dH_n.dtype}" if hasattr(dH_n, "shape") else dH_n
            raise ShapeError(f"dH_n must be {states} {self.dtype} like H_n, got {got}")
        if grads is None:
            grads = self.params.empty_like()  # every entry of the layer is written below
        M, order, masks = cache.M, cache.order, cache.masks
        dH0: list[Array] = [None] * (self.num_layers * dirs)
        d_inputs = d_out
        for layer in range(self.num_layers - 1, -1, -1):
            if d_inputs is not None and masks is not None and layer < len(masks):
                d_inputs = d_inputs * masks[layer]  # eq. 18
            if d_inputs is not None and M is not None:
                d_inputs = d_inputs * M  # eq. 27: nothing flows back from the padding
            d_below = None
            for direction in range(dirs):
                k = layer * dirs + direction
                dHs = None
                if d_inputs is not None:
                    dHs = (
                        d_inputs
                        if dirs == 1
                        else d_inputs[:, :, direction * H : (direction + 1) * H]
                    )
                    if direction == 1:
                        dHs = self._reverse(dHs, order)  # eq. 28
                dX, dH0[k], _ = cache.modules[layer].backward(
                    dHs,
                    cache.cells[layer][direction],
                    None if dH_n is None else dH_n[k, ...],
                    workspace=self._workspaces[k][1],
                    grads=self.layer_params(layer, direction, of=grads),
                )
                if dX is not None and direction == 1:
                    dX = self._reverse(dX, order)
                d_below = dX if d_below is None else d_below + dX
            d_inputs = d_below
        return d_inputs, xp.stack(dH0), grads


class GRU(Recurrent):
    """A GRU layer with PyTorch's interface (``nn.GRU``, time-major): stacked layers, one or
    two directions, sequences of different lengths in one batch.

    Args:
        input_size: D, the width of X_t (or the number of token ids for (T, B) int inputs).
        hidden_size: H.
        num_layers: L, stacked; layer l > 0 reads layer l − 1's outputs (dirs·H wide).
        bidirectional: also run each sequence backwards (PyTorch's ``bidirectional``).
        variant: ``"d2l"`` (the d2l chapter's) or ``"reset_after"`` (``nn.GRU``'s).
        dtype: ``"float32"`` or ``"float64"``.
        seed: layer l, direction d draws its weights with seed ``seed + l·dirs + d``.
        backend: ``"numpy"``, ``"cupy"``, ``"auto"`` or a :class:`~npgru.backend.Backend`.
        impl: ``"auto"``, ``"reference"``, ``"cuda"`` or ``"numba"`` (see
            :func:`resolve_impl`); calls with ``lengths`` run on the reference.

    Example::

        layer = npgru.GRU(8, 16, num_layers=2, bidirectional=True)
        out, H_n, cache = layer.forward(X, lengths=[5, 3])    # X (5, 2, 8) float32
        dX, dH0, grads = layer.backward(d_out, None, cache)
    """

    cell = gru

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        variant: str = "d2l",
        dtype: Any = "float32",
        seed: int | None = 0,
        backend: str | Backend = "numpy",
        impl: str = "auto",
    ):
        backend = get_backend(backend)
        resolved = resolve_impl(impl, backend)
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            variant=gru_variant(variant),
            dtype=dtype,
            seed=seed,
            backend=backend,
            impl=resolved,
        )
        if resolved == "cuda":
            self._module = cuda
        elif resolved == "numba":  # imported here: importing Numba takes a few tenths of a second
            from npgru import fused

            self._module = fused


class RNN(Recurrent):
    """A plain tanh RNN layer with PyTorch's interface (``nn.RNN(nonlinearity="tanh")``,
    time-major): the cell of :mod:`npgru.rnn` in the same machinery as :class:`GRU`, so the
    two can be compared on the same task with the same code (``docs/gradient-flow.md``).

    Args:
        input_size: D, the width of X_t (or the number of token ids for (T, B) int inputs).
        hidden_size: H.
        num_layers: L, stacked; layer l > 0 reads layer l − 1's outputs (dirs·H wide).
        bidirectional: also run each sequence backwards.
        dtype: ``"float32"`` or ``"float64"``.
        seed: layer l, direction d draws its weights with seed ``seed + l·dirs + d``.
        backend: ``"numpy"``, ``"cupy"``, ``"auto"`` or a :class:`~npgru.backend.Backend`.

    It runs on the reference code of :mod:`npgru.rnn` on every backend (``impl`` is
    ``"reference"``); ``forward`` and ``backward`` are those of :class:`Recurrent`.
    """

    cell = rnn

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        dtype: Any = "float32",
        seed: int | None = 0,
        backend: str | Backend = "numpy",
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bidirectional=bidirectional,
            variant="tanh",
            dtype=dtype,
            seed=seed,
            backend=backend,
            impl="reference",
        )
