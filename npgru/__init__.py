"""npgru: a GRU on plain arrays (NumPy or CuPy), with backpropagation through time by hand.

Start with :mod:`npgru.gru` (the cell, its forward and backward, one step or a sequence),
then :class:`GRU` (PyTorch's ``nn.GRU``: stacked, bidirectional, variable lengths),
:class:`RNN` (the plain tanh RNN of :mod:`npgru.rnn`, the same interface),
:class:`GRULanguageModel` (the d2l character model), :mod:`npgru.train` and
:mod:`npgru.timemachine` (d2l's ``train_ch8``, the program of ``npgru train``). The
derivation is in ``docs/derivation.md``.
"""

from npgru import checkpoint, data, gru, interop, layer, optim, rnn, train
from npgru.backend import Backend, get_backend
from npgru.errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    NpgruError,
    ShapeError,
)
from npgru.flat import FlatDict
from npgru.gradcheck import GradCheckReport, check_gradients
from npgru.layer import GRU, RNN
from npgru.loss import softmax_cross_entropy
from npgru.model import GRULanguageModel
from npgru.optim import clip_grad_norm, global_norm, sgd
from npgru.version import __version__

__all__ = [
    "GRU",
    "RNN",
    "Backend",
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "FlatDict",
    "GRULanguageModel",
    "GradCheckReport",
    "NpgruError",
    "ShapeError",
    "__version__",
    "check_gradients",
    "checkpoint",
    "clip_grad_norm",
    "data",
    "get_backend",
    "global_norm",
    "gru",
    "interop",
    "layer",
    "optim",
    "rnn",
    "sgd",
    "softmax_cross_entropy",
    "train",
]
