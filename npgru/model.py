r"""The character-level language model of the d2l GRU chapter.

Token ids go in one-hot (as a row gather), through ``num_layers`` stacked GRU layers, then a
linear output layer::

    O_t = H_t W_hq + b_q        W_hq (H, V), b_q (V,)

(docs/derivation.md, section 9, also derives its gradient)

Logits are time-major, (T·B, V) with row ``t·B + b`` for step t of sequence b, exactly like
the seed notebook's ``torch.cat(outputs, dim=0)``; labels are therefore ``Y.T.reshape(-1)``.

Dropout (``dropout=p`` in :meth:`GRULanguageModel.loss_and_grads`, training only) multiplies
the states each layer hands on, to the next layer or to the output layer, by a mask
``K = [U >= p] / (1 - p)`` with ``U`` uniform in [0, 1) (inverted dropout, eq. 17); the
gradient goes back through the same mask (eq. 18; docs/derivation.md, section 12).
:meth:`~GRULanguageModel.forward` (prediction, validation) never drops.

Parameters of layer 0 carry the seed's names (``W_xz`` …); those of a deeper layer ``l`` add
the suffix ``_l{l}`` (``W_xz_l1``). All live in one flat buffer (:class:`~npgru.flat.FlatDict`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from npgru import cuda
from npgru import loss as reference_loss
from npgru.backend import Backend, get_backend, is_integer
from npgru.checks import float_dtype, gru_variant, integer, positive_int
from npgru.errors import ShapeError
from npgru.flat import FlatDict
from npgru.layer import GRU, IMPLS, numba_installed, resolve_impl

__all__ = ["IMPLS", "GRULanguageModel", "numba_installed", "resolve_impl"]

Array = Any


class GRULanguageModel:
    """A stacked GRU with a linear output layer, trained by hand-derived BPTT.

    Args:
        vocab_size: V, the number of token ids (input and output width).
        num_hiddens: H.
        num_layers: how many GRU layers are stacked (layer l > 0 reads layer l−1's states).
        variant: ``"d2l"`` (the seed's) or ``"reset_after"`` (cuDNN / ``nn.GRU``).
        dtype: ``"float32"`` for training, ``"float64"`` for gradient checks.
        seed: layer l draws its weights with seed ``seed + l``, the output layer with
            ``seed + num_layers`` (so layer 0 equals ``gru.init_params(V, H, seed=seed)``).
        backend: ``"numpy"``, ``"cupy"``, ``"auto"`` or a :class:`~npgru.backend.Backend`.
        impl: how the GRU layers and the loss run: ``"reference"``, the array-API code of
            :mod:`npgru.gru` and :mod:`npgru.loss` (readable, any backend); ``"cuda"``, the
            kernels of :mod:`npgru.cuda` (CuPy only; equal to the reference to round-off, many
            times faster on a GPU); ``"numba"``, the fused steps of :mod:`npgru.fused` (NumPy
            only, needs Numba, ``pip install 'npgru[fast]'``; equal to the reference to
            round-off, faster on a CPU); ``"auto"`` (the default): ``"cuda"`` on CuPy,
            ``"numba"`` on NumPy where Numba is installed, else ``"reference"``.

    Attributes:
        params: :class:`~npgru.flat.FlatDict` name → array, all views of ``params.flat``.
        rnn: the :class:`~npgru.layer.GRU` layer the tokens run through; it reads its
            weights from ``params``.
        backend: the :class:`~npgru.backend.Backend` in use.
        impl: ``"reference"``, ``"cuda"`` or ``"numba"``, what ``impl`` resolved to.
    """

    def __init__(
        self,
        vocab_size: int,
        num_hiddens: int,
        *,
        num_layers: int = 1,
        variant: str = "d2l",
        dtype: Any = "float32",
        seed: int | None = 0,
        backend: str | Backend = "numpy",
        impl: str = "auto",
    ):
        if seed is not None:
            integer("seed", seed, low=0)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.num_hiddens = positive_int("num_hiddens", num_hiddens)
        self.num_layers = positive_int("num_layers", num_layers)
        self.variant, self.dtype = gru_variant(variant), float_dtype(dtype)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        V, H = self.vocab_size, self.num_hiddens
        # layer l draws with seed + l (one direction), as gru.init_params(V, H, seed=seed)
        self.rnn = GRU(V, H, self.num_layers, variant=self.variant, dtype=self.dtype, seed=seed,
                       backend=self.backend, impl=impl)  # fmt: skip
        self.impl = self.rnn.impl
        # the loss, as the layers run: same signatures
        self._loss: Any = cuda if self.impl == "cuda" else reference_loss
        if self.impl == "numba":  # imported here: importing Numba takes a few tenths of a second
            from npgru import fused

            self._loss = fused
        arrays: dict[str, Array] = dict(self.rnn.params)
        rng = np.random.default_rng(None if seed is None else seed + self.num_layers)
        arrays["W_hq"] = self.backend.asarray(rng.normal(0.0, 0.01, (H, V)).astype(dtype))
        arrays["b_q"] = self.backend.asarray(np.zeros(V, dtype=dtype))
        self.params = FlatDict.from_arrays(arrays)
        self.rnn.params = self.params  # one buffer: the layer finds its names among the model's

    @property
    def config(self) -> dict[str, Any]:
        """What defines the model's shape: enough to rebuild it (checkpoints store it)."""
        return {
            "vocab_size": self.vocab_size,
            "num_hiddens": self.num_hiddens,
            "num_layers": self.num_layers,
            "variant": self.variant,
            "dtype": self.dtype,
        }

    def layer_params(self, layer: int, of: FlatDict | None = None) -> dict[str, Array]:
        """The GRU parameters of one layer under their plain names (views, not copies); or
        the entries of ``of``, a FlatDict laid out like ``params`` (such as the gradients)."""
        return self.rnn.layer_params(layer, 0, of)

    def begin_state(self, batch_size: int) -> Array:
        """The zero state (num_layers, B, H)."""
        B = positive_int("batch_size", batch_size)
        return self.xp.zeros((self.num_layers, B, self.num_hiddens), dtype=self.params.flat.dtype)

    def _check_tokens(self, X: Array, what: str) -> None:
        xp = self.xp
        if not hasattr(X, "ndim"):
            raise ShapeError(f"{what} must be an array of token ids (B, T), got {type(X).__name__}")
        if X.ndim != 2 or not is_integer(xp, X.dtype):
            raise ShapeError(f"{what} must be integer token ids (B, T), got {X.ndim}-D {X.dtype}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ShapeError(f"{what} must hold at least one sequence and one step, got (B, T) = "
                             f"{tuple(X.shape)}")  # fmt: skip
        # the range of the ids is checked where they are used (the reference's gru.forward
        # and loss); the CUDA path cannot check without waiting for the GPU: NaN marks them

    def _check_labels(self, X: Array, Y: Array) -> None:
        self._check_tokens(X, "X")
        self._check_tokens(Y, "Y")
        if tuple(Y.shape) != tuple(X.shape):
            raise ShapeError(f"Y has shape {tuple(Y.shape)} but X has {tuple(X.shape)}")

    def _run(
        self, X: Array, state: Array, masks: list[Array] | None = None
    ) -> tuple[Array, Array, Any, Array]:
        """Forward through the layers and the output layer; returns logits, the new state,
        the layer's cache and the top states (T·B, H).

        ``masks[l]`` (T, B, H), if given, scales the states layer ``l`` hands on (eq. 17)."""
        self._check_tokens(X, "X")
        B, T = X.shape
        expected = (self.num_layers, B, self.num_hiddens)
        if tuple(getattr(state, "shape", ())) != expected:
            got = tuple(state.shape) if hasattr(state, "shape") else type(state).__name__
            raise ShapeError(f"state has shape {got}, expected {expected}")
        # time-major token ids (T, B); the state carried on is never dropped
        out, new_state, cache = self.rnn.forward(X.T, state, masks=masks)
        top = self.xp.reshape(out, (T * B, self.num_hiddens))
        logits = top @ self.params["W_hq"] + self.params["b_q"]
        return logits, new_state, cache, top

    def forward(self, X: Array, state: Array) -> tuple[Array, Array]:
        """Logits for every position.

        Args:
            X: token ids (B, T).
            state: (num_layers, B, H), e.g. from :meth:`begin_state`.

        Returns:
            logits (T·B, V), time-major, and the new state (num_layers, B, H).
        """
        logits, new_state, _, _ = self._run(X, state)
        return logits, new_state

    def loss(self, X: Array, Y: Array, state: Array) -> tuple[Array, Array]:
        """Mean cross-entropy of predicting ``Y`` from ``X``, forward only (no dropout, no
        gradient): ``(loss, new_state)``, the loss a 0-d array on the model's device."""
        self._check_labels(X, Y)
        B, T = X.shape
        logits, new_state, _, _ = self._run(X, state)
        loss, _ = self._loss.softmax_cross_entropy(logits, self.xp.reshape(Y.T, (T * B,)))
        return loss, new_state

    def dropout_masks(self, shape: tuple[int, int], dropout: float, rng: Any) -> list[Array]:
        """One inverted-dropout mask per layer, (T, B, H) for ``shape == (B, T)`` (eq. 17):
        :meth:`npgru.layer.Recurrent.dropout_masks` for all ``num_layers`` layers, the top one
        included (its states go on to the output layer)."""
        B, T = shape
        return self.rnn.dropout_masks((T, B), dropout, rng, self.num_layers)

    def loss_and_grads(
        self,
        X: Array,
        Y: Array,
        state: Array,
        *,
        dropout: float = 0.0,
        rng: Any = None,
    ) -> tuple[Array, FlatDict, Array]:
        """Mean cross-entropy of predicting ``Y`` from ``X``, and its gradient.

        The state passed in is a constant: no gradient flows into earlier minibatches
        (truncated BPTT, as d2l's ``state.detach_()``).

        Args:
            X: token ids (B, T).
            Y: next-token labels (B, T).
            state: (num_layers, B, H).
            dropout: the probability p of dropping a state on its way to the next layer or
                to the output layer (0, d2l's: none); the kept ones are scaled by 1/(1 − p).
            rng: with ``dropout > 0``, the Generator the masks are drawn from
                (:meth:`dropout_masks`); the same generator state gives the same masks.

        Returns:
            loss (0-d array), grads (a FlatDict with exactly the keys of ``params``), and the
            new state (num_layers, B, H).
        """
        self._check_labels(X, Y)
        xp = self.xp
        B, T = X.shape
        masks = self.dropout_masks((B, T), dropout, rng) if dropout else None
        logits, new_state, cache, top = self._run(X, state, masks)
        loss, dO = self._loss.softmax_cross_entropy(logits, xp.reshape(Y.T, (T * B,)))
        grads = self.params.empty_like()  # every entry is assigned below
        # back through the output layer: docs/derivation.md, section 9
        grads["W_hq"] = top.T @ dO
        grads["b_q"] = xp.sum(dO, axis=0)
        dHs = xp.reshape(dO @ self.params["W_hq"].T, (T, B, self.num_hiddens))
        # back through the layers (and the masks, eq. 18): writes their gradients into `grads`
        self.rnn.backward(dHs, None, cache, grads=grads)
        return loss, grads, new_state
