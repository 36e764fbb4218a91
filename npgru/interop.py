r"""A :class:`~npgru.model.GRULanguageModel` to and from PyTorch (``nn.GRU`` + ``nn.Linear``).

The ``reset_after`` variant computes exactly what ``torch.nn.GRU`` computes (docs/interop.md
has the table). PyTorch stores, for each layer ``l``, ``weight_ih_l{l}`` (3H, D),
``weight_hh_l{l}`` (3H, H) and two biases ``bias_ih_l{l}``, ``bias_hh_l{l}`` (3H,), with row
blocks in gate order r, z, n; npgru multiplies weights on the right, so each of its matrices
is the transpose of a block (``[r]``, ``[z]``, ``[n]``: rows 0:H, H:2H, 2H:3H of PyTorch's
array)::

    W_xr = weight_ih[r].T   W_hr = weight_hh[r].T   b_r = bias_ih[r] + bias_hh[r]
    W_xz = weight_ih[z].T   W_hz = weight_hh[z].T   b_z = bias_ih[z] + bias_hh[z]
    W_xh = weight_ih[n].T   W_hh = weight_hh[n].T   b_h = bias_ih[n]   b_hh = bias_hh[n]
    W_hq = weight.T (nn.Linear)                     b_q = bias

This map P, PyTorch → npgru, is linear and sums two biases into one, so it has no inverse.
:func:`to_torch_state_dicts` uses the right inverse that puts ``b_r`` and ``b_z`` into
``bias_ih`` and zeros into ``bias_hh`` (the same function, and P of it gives back the npgru
parameters exactly). Gradients go the other way: since PyTorch's loss is npgru's loss after
P, PyTorch's gradient is the adjoint Pᵀ of npgru's, so both ``bias_ih`` and ``bias_hh`` of
gates r and z get the gradient of ``b_r`` / ``b_z`` (``to_torch_state_dicts(model, grads)``).

The d2l variant applies the reset gate before the hidden product, which ``nn.GRU`` cannot
express; it is refused.

:func:`to_onnx` writes a model (or a GRU layer) as an ONNX file of standard operators
(:mod:`npgru.export`, which has the map to ONNX's ``GRU``; ``pip install 'npgru[onnx]'``).

Arrays in and out are NumPy arrays on the host (a CuPy model's arrays are copied back with
its backend's ``asnumpy``). PyTorch is imported only when tensors are passed in or when
:func:`to_torch_modules` builds modules.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from npgru.backend import Backend
from npgru.checks import float_dtype
from npgru.errors import ConfigError, ShapeError
from npgru.gru import PARAM_NAMES
from npgru.layer import GRU, RNN
from npgru.model import GRULanguageModel

#: PyTorch's gate order (row blocks of weight_ih, weight_hh, bias_ih, bias_hh), with npgru's
#: input weight, hidden weight, the bias fed by bias_ih and the bias fed by bias_hh.
GATES = (
    ("r", "W_xr", "W_hr", "b_r", "b_r"),
    ("z", "W_xz", "W_hz", "b_z", "b_z"),
    ("n", "W_xh", "W_hh", "b_h", "b_hh"),
)

#: The keys of ``nn.Linear(...).state_dict()``.
LINEAR_KEYS = ("weight", "bias")

_LAYER_KEY = re.compile(r"(?:weight|bias)_(?:ih|hh)_l(\d+)")


def gru_keys(num_layers: int, bidirectional: bool = False) -> list[str]:
    """The keys of ``nn.GRU(..., num_layers, bidirectional=...).state_dict()`` (also those of
    ``nn.RNN``), in PyTorch's order."""
    return [
        f"{kind}_{part}_l{layer}{suffix}"
        for layer in range(num_layers)
        for suffix in (("", "_reverse") if bidirectional else ("",))
        for kind, part in (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))
    ]


def _name(name: str, layer: int) -> str:
    """npgru's name of a parameter of GRU layer ``layer`` (suffix ``_l{layer}`` for l > 0)."""
    return name if layer == 0 else f"{name}_l{layer}"


def _check_exportable(model: GRULanguageModel) -> None:
    if not isinstance(model, GRULanguageModel):
        raise ConfigError(f"expected a GRULanguageModel, got {type(model).__name__}")
    if model.variant != "reset_after":
        raise ConfigError(
            f"the {model.variant!r} GRU variant has no PyTorch equivalent (nn.GRU applies the "
            "reset gate after the hidden product): train with variant='reset_after' to move "
            "a model to PyTorch"
        )


def to_torch_state_dicts(
    model: GRULanguageModel, grads: Mapping[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model as the state dicts of ``nn.GRU(V, H, num_layers)`` and ``nn.Linear(H, V)``.

    Args:
        model: a ``reset_after`` model (the d2l variant is refused with a ConfigError).
        grads: ``None`` to map the parameters; or gradients with the keys of
            ``model.params`` (e.g. from ``model.loss_and_grads``) to get the gradients of
            PyTorch's parameters instead (the adjoint map: see the module docstring).

    Returns:
        ``(gru_state_dict, linear_state_dict)``: new, contiguous NumPy arrays in the model's
        dtype, with exactly PyTorch's keys (in its order) and shapes. Load them into modules
        with ``{k: torch.from_numpy(v) for k, v in d.items()}``, or use
        :func:`to_torch_modules`.
    """
    _check_exportable(model)
    source = model.params if grads is None else grads
    if grads is not None:
        if set(grads) != set(model.params):
            missing = sorted(set(model.params) - set(grads))
            extra = sorted(set(grads) - set(model.params))
            raise ShapeError(
                f"grads must have the keys of model.params; missing {missing}, unexpected {extra}"
            )
        for name, p in model.params.items():
            if tuple(grads[name].shape) != tuple(p.shape):
                raise ShapeError(
                    f"grads[{name!r}] has shape {tuple(grads[name].shape)}, "
                    f"the parameter has {tuple(p.shape)}"
                )
    host = {
        name: model.backend.asnumpy(a).astype(model.dtype, copy=False) for name, a in source.items()
    }
    gru_sd: dict[str, np.ndarray] = {}
    for layer in range(model.num_layers):
        p = {name: host[_name(name, layer)] for name in PARAM_NAMES["reset_after"]}
        gru_sd.update(_torch_blocks(p, f"_l{layer}", adjoint=grads is not None))
    linear_sd = {
        "weight": np.array(host["W_hq"].T, order="C", copy=True),
        "bias": np.array(host["b_q"], copy=True),
    }
    return gru_sd, linear_sd


def _torch_blocks(
    p: Mapping[str, np.ndarray], suffix: str, *, adjoint: bool
) -> dict[str, np.ndarray]:
    """One layer and direction of npgru (plain names, host arrays) as PyTorch's four arrays
    ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` + ``suffix`` (the table of the
    module docstring); ``adjoint``: map gradients (both biases of r and z get their sum's)."""
    weight_ih = [p[w_x].T for _, w_x, _, _, _ in GATES]
    weight_hh = [p[w_h].T for _, _, w_h, _, _ in GATES]
    bias_ih = [p[b_i] for _, _, _, b_i, _ in GATES]
    if adjoint:  # the adjoint: both biases of a gate get the gradient of their sum
        bias_hh = [p[b_h] for _, _, _, _, b_h in GATES]
    else:  # the right inverse: gates r, z keep their whole bias in bias_ih
        bias_hh = [np.zeros_like(p["b_r"]), np.zeros_like(p["b_z"]), p["b_hh"]]
    # (concatenating transposes would give a Fortran-ordered array: ask for C order)
    return {
        f"weight_ih{suffix}": np.ascontiguousarray(np.concatenate(weight_ih)),
        f"weight_hh{suffix}": np.ascontiguousarray(np.concatenate(weight_hh)),
        f"bias_ih{suffix}": np.concatenate(bias_ih),
        f"bias_hh{suffix}": np.concatenate(bias_hh),
    }


def _npgru_blocks(sd: Mapping[str, np.ndarray], suffix: str, H: int) -> dict[str, np.ndarray]:
    """PyTorch's four arrays of one layer and direction (keys ending in ``suffix``) as npgru's
    parameters under their plain names, in float64 (the two biases of r and z summed)."""
    w_ih, w_hh = sd[f"weight_ih{suffix}"], sd[f"weight_hh{suffix}"]
    b_ih = sd[f"bias_ih{suffix}"].astype(np.float64)
    b_hh = sd[f"bias_hh{suffix}"].astype(np.float64)
    p = {}
    for k, (_, w_x, w_h, b_i, b_h) in enumerate(GATES):
        rows = slice(k * H, (k + 1) * H)
        p[w_x], p[w_h] = w_ih[rows].T, w_hh[rows].T
        if b_i == b_h:  # gates r, z: one npgru bias, the sum of PyTorch's two
            p[b_i] = b_ih[rows] + b_hh[rows]
        else:  # the candidate: b_h = b_in, b_hh = b_hn
            p[b_i], p[b_h] = b_ih[rows], b_hh[rows]
    return p


def _refuse_before_copying(value: Any, where: str) -> None:
    """ShapeError for a value that cannot hold real weights, read from its type alone (no
    copy): a meta tensor (a shape without values), complex or boolean tensors and arrays."""
    library = type(value).__module__.split(".")[0]
    if library == "torch":
        torch = sys.modules["torch"]  # a torch object exists, so torch is imported
        if isinstance(value, torch.Tensor):
            if value.is_meta:
                raise ShapeError(
                    f"{where} is a meta tensor (a shape without values): materialise the "
                    "module and load real weights into it (module.to_empty(device='cpu'), "
                    "then load_state_dict) before converting it"
                )
            if value.is_complex() or value.dtype == torch.bool:
                raise ShapeError(f"{where} is not real numbers ({value.dtype})")
            if value.layout != torch.strided:
                raise ShapeError(f"{where} is a {value.layout} tensor: pass .to_dense()")
    dtype = getattr(value, "dtype", None)
    kind = getattr(dtype, "kind", None)  # NumPy and CuPy dtypes
    if isinstance(kind, str) and kind not in "fiu":
        raise ShapeError(f"{where} is not real numbers ({dtype})")


def _to_host(value: Any, where: str) -> np.ndarray:
    """A NumPy array of real numbers from a NumPy or CuPy array, a PyTorch tensor (any
    device), or a list; ShapeError (naming ``where``) for anything else."""
    library = type(value).__module__.split(".")[0]
    if library == "cupy":
        return value.get()
    if library == "torch":
        torch = sys.modules["torch"]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype not in (torch.float16, torch.float32, torch.float64):
                # NumPy has no bfloat16 or float8: float32 holds them exactly (and keeps the
                # default model float32, as for float16); integers go to float64
                value = value.to(torch.float32 if value.is_floating_point() else torch.float64)
            return value.numpy()
    try:
        host = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{where} is not an array ({type(value).__name__}): {exc}") from exc
    if host.dtype.kind not in "fiu":
        raise ShapeError(f"{where} is not real numbers ({host.dtype})")
    return host


def _mapping(sd: Any, what: str) -> dict[str, Any]:
    """``sd`` as a dict with string keys (values untouched); ShapeError for a module or a
    non-mapping."""
    if hasattr(sd, "state_dict") and callable(sd.state_dict):
        raise ShapeError(f"{what} is a module: pass its .state_dict()")
    if not isinstance(sd, Mapping):
        raise ShapeError(f"{what} must be a mapping of names to arrays, got {type(sd).__name__}")
    return {str(k): v for k, v in sd.items()}


def _short(key: str) -> str:
    """``repr(key)``, cut to 60 characters (a key can be a megabyte long)."""
    text = repr(key)
    return text if len(text) <= 60 else f"{text[:45]}...{text[-12:]}"


def _num_layers(keys: list[str]) -> int:
    """The number of GRU layers the keys name: layers 0 … L−1, each named by some key.

    Counted from the keys that are there, never from the largest index: a key such as
    ``weight_ih_l99999999`` would otherwise ask for 10⁸ layers (and a list of 4·10⁸ names).
    """
    index_of = {}
    for key in keys:
        if m := _LAYER_KEY.fullmatch(key):
            digits = m.group(1)
            # int() of a 10⁵-digit string is slow (and refused from 4,300 digits on)
            index_of[key] = int(digits) if len(digits) <= 9 else 10**9
    layers = set(index_of.values())
    num_layers = len(layers)
    if layers and max(layers) >= num_layers:  # some layer below the top one is missing
        gap = min(set(range(num_layers + 1)) - layers)
        top = max(index_of, key=lambda k: index_of[k])
        raise ShapeError(
            f"gru state dict has {_short(top)} but no layer {gap} (no 'weight_ih_l{gap}'): "
            "nn.GRU numbers its layers 0, 1, 2, ... without gaps"
        )
    return max(num_layers, 1)


def _check_shape(sd: dict[str, np.ndarray], key: str, shape: tuple[int, ...], what: str) -> None:
    if tuple(sd[key].shape) != shape:
        raise ShapeError(f"{what}[{key!r}] has shape {tuple(sd[key].shape)}, expected {shape}")


def _dtype_of(sd: Mapping[str, np.ndarray], dtype: Any) -> str:
    """``dtype`` checked, or for ``None`` the dtype of ``weight_ih_l0`` (float32 for any
    float type other than float32 and float64)."""
    if dtype is None:
        source = sd["weight_ih_l0"].dtype
        dtype = source.name if source.name in ("float32", "float64") else "float32"
    return float_dtype(dtype)


def _check_finite(sd: Mapping[str, np.ndarray], what: str) -> None:
    """ShapeError naming the key of the first array with NaN or infinite values."""
    for key, a in sd.items():
        try:  # a broadcast view (torch's expand) may stand for more than memory holds
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        except MemoryError:
            raise ShapeError(
                f"{what}[{key!r}] holds {a.size:,} values, more than this machine has memory for"
            ) from None
        if bad:
            raise ShapeError(
                f"{what}[{key!r}] has {bad} NaN or infinite values (of {a.size}): convert the "
                "weights of a model that did not diverge"
            )


def from_torch_state_dicts(
    gru_sd: Mapping[str, Any],
    linear_sd: Mapping[str, Any],
    *,
    dtype: Any = None,
    backend: str | Backend = "numpy",
) -> GRULanguageModel:
    """A ``reset_after`` :class:`GRULanguageModel` equal to ``nn.GRU`` + ``nn.Linear``.

    Args:
        gru_sd: ``nn.GRU(V, H, num_layers).state_dict()`` (tensors or NumPy arrays); V, H
            and the number of layers are read from the shapes. Unidirectional, with biases.
        linear_sd: ``nn.Linear(H, V).state_dict()``.
        dtype: float32 or float64; ``None`` keeps the dtype of ``weight_ih_l0`` (float32
            for any other float type).
        backend: where the model's arrays live (see :func:`npgru.get_backend`).

    Returns:
        The model, whose :meth:`~GRULanguageModel.forward` on token ids X (B, T) and state
        (num_layers, B, H) gives the logits of ``linear(gru(one_hot(X.T), state)[0])``.

    Raises:
        ShapeError: missing or unexpected keys (e.g. a bidirectional GRU, or a layer index
            with no layers below it), wrong shapes, or values that are not finite real
            numbers (complex, NaN or inf, meta tensors without values); each names the dict
            and the key, and is raised before anything is allocated.
    """
    # Everything that can be refused from the names and types alone is refused first, before
    # any array is copied or the model allocated.
    gru_raw = _mapping(gru_sd, "gru state dict")
    linear_raw = _mapping(linear_sd, "linear state dict")
    reverse = sorted(k for k in gru_raw if k.endswith("_reverse"))
    if reverse:
        raise ShapeError(f"a bidirectional nn.GRU has no npgru equivalent (keys {reverse})")
    num_layers = _num_layers(list(gru_raw))
    expected = gru_keys(num_layers)
    missing = [k for k in expected if k not in gru_raw]
    extra = sorted(set(gru_raw) - set(expected))
    if missing or extra:
        raise ShapeError(
            f"gru state dict must have the keys of nn.GRU(..., num_layers={num_layers})"
            f".state_dict() (with biases); missing {missing}, unexpected "
            f"[{', '.join(_short(k) for k in extra[:5])}{', ...' if len(extra) > 5 else ''}]"
        )
    if set(linear_raw) != set(LINEAR_KEYS):
        raise ShapeError(
            f"linear state dict must have exactly the keys {list(LINEAR_KEYS)} of nn.Linear "
            f"(with bias); got [{', '.join(_short(k) for k in sorted(linear_raw)[:5])}]"
        )
    for what, raw in (("gru state dict", gru_raw), ("linear state dict", linear_raw)):
        for key, value in raw.items():
            _refuse_before_copying(value, f"{what}[{key!r}]")
    gru_sd = {k: _to_host(v, f"gru state dict[{k!r}]") for k, v in gru_raw.items()}
    linear_sd = {k: _to_host(v, f"linear state dict[{k!r}]") for k, v in linear_raw.items()}

    if gru_sd["weight_hh_l0"].ndim != 2 or gru_sd["weight_ih_l0"].ndim != 2:
        raise ShapeError("gru state dict: weight_ih_l0 and weight_hh_l0 must be 2-D")
    H = gru_sd["weight_hh_l0"].shape[1]
    V = gru_sd["weight_ih_l0"].shape[1]
    for layer in range(num_layers):
        D = V if layer == 0 else H
        _check_shape(gru_sd, f"weight_ih_l{layer}", (3 * H, D), "gru state dict")
        _check_shape(gru_sd, f"weight_hh_l{layer}", (3 * H, H), "gru state dict")
        _check_shape(gru_sd, f"bias_ih_l{layer}", (3 * H,), "gru state dict")
        _check_shape(gru_sd, f"bias_hh_l{layer}", (3 * H,), "gru state dict")
    _check_shape(linear_sd, "weight", (V, H), "linear state dict")
    _check_shape(linear_sd, "bias", (V,), "linear state dict")
    _check_finite(gru_sd, "gru state dict")
    _check_finite(linear_sd, "linear state dict")

    dtype = _dtype_of(gru_sd, dtype)
    model = GRULanguageModel(
        V, H, num_layers=num_layers, variant="reset_after", dtype=dtype, seed=0, backend=backend
    )

    def put(name: str, value: np.ndarray) -> None:
        # sums are formed in float64 and rounded once, to the model's dtype
        model.params[name] = model.backend.asarray(np.asarray(value).astype(dtype))

    for layer in range(num_layers):
        for name, value in _npgru_blocks(gru_sd, f"_l{layer}", H).items():
            put(_name(name, layer), value)
    put("W_hq", linear_sd["weight"].T)
    put("b_q", linear_sd["bias"])
    return model


def to_torch_modules(model: GRULanguageModel) -> tuple[Any, Any]:
    """New ``torch.nn.GRU`` and ``torch.nn.Linear`` (CPU, the model's dtype) equal to it.

    The GRU is time-major (``batch_first=False``), like npgru's state: for token ids X (B, T)
    and a state (num_layers, B, H), ``lin(gru(one_hot(X.T, V).to(dtype), state)[0])``
    reshaped to (T·B, V) is ``model.forward(X, state)[0]``. Needs PyTorch.
    """
    _check_exportable(model)
    try:
        import torch
    except ImportError as exc:
        raise ConfigError("to_torch_modules needs PyTorch: pip install torch") from exc
    gru_sd, linear_sd = to_torch_state_dicts(model)
    dtype = getattr(torch, model.dtype)
    V, H = model.vocab_size, model.num_hiddens
    rnn = torch.nn.GRU(V, H, num_layers=model.num_layers, dtype=dtype)
    linear = torch.nn.Linear(H, V, dtype=dtype)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in gru_sd.items()})
    linear.load_state_dict({k: torch.from_numpy(v) for k, v in linear_sd.items()})
    return rnn, linear


def to_onnx(
    model_or_layer: Any,
    path: str | os.PathLike[str],
    *,
    dtype: Any = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a :class:`GRULanguageModel` or a GRU layer (``npgru.GRU``) to ``path`` as ONNX.

    The standard ``GRU`` operator, one node per layer (``linear_before_reset`` = 1 for
    reset_after, 0 for d2l), the token lookup (``OneHot``) and the output layer (``Gemm``) as
    standard operators; for a model the graph's inputs and outputs are those of
    :meth:`GRULanguageModel.forward`, in order: ``X`` (B, T) int64, ``state`` (L, B, H) →
    ``logits`` (T·B, V), ``new_state`` (L, B, H). ``onnx.checker`` with ``full_check`` passes.
    See :mod:`npgru.export` (the equations side by side, the layer's graph) and
    docs/interop.md. Needs ``pip install 'npgru[onnx]'``.

    Args:
        model_or_layer: what to export.
        path: the ``.onnx`` file, written whole or not at all.
        dtype: the graph's float type; ``None`` keeps the model's. ONNX Runtime's ``GRU``
            runs float32 only: ``dtype="float32"`` for a float64 model it should run.
        metadata: extra ``metadata_props`` of the file (strings to strings).

    Returns:
        The path written.

    Raises:
        ConfigError: not a model or a layer, onnx not installed, or the file cannot be
            written. ShapeError: parameters missing, misshapen or not finite.
    """
    from npgru import export

    return export.to_onnx(model_or_layer, path, dtype=dtype, metadata=metadata)


# --------------------------------------------------------------------------------------
# the layer alone: npgru.GRU <-> nn.GRU (any number of layers, one or two directions)


def _layer_from_torch(
    module_or_state_dict: Any, dtype: Any, backend: str | Backend, kind: str
) -> Any:
    """:func:`gru_from_torch` (``kind`` "gru", 3 gates) and :func:`rnn_from_torch` ("rnn")."""
    what, gates = f"{kind} state dict", 3 if kind == "gru" else 1
    sd_raw = module_or_state_dict
    if hasattr(sd_raw, "state_dict") and callable(sd_raw.state_dict):
        if getattr(sd_raw, "proj_size", 0):
            raise ShapeError(f"an nn.{kind.upper()} with proj_size has no npgru equivalent")
        if getattr(sd_raw, "nonlinearity", "tanh") != "tanh":
            raise ShapeError("npgru.RNN is the tanh RNN: an nn.RNN(nonlinearity='relu') has "
                             "no npgru equivalent")  # fmt: skip
        sd_raw = sd_raw.state_dict()
    raw = _mapping(sd_raw, what)
    bidirectional = any(k.endswith("_reverse") for k in raw)
    num_layers = _num_layers([k.removesuffix("_reverse") for k in raw])
    expected = gru_keys(num_layers, bidirectional)
    missing = [k for k in expected if k not in raw]
    extra = sorted(set(raw) - set(expected))
    if missing or extra:
        raise ShapeError(
            f"{what} must have the keys of nn.{kind.upper()}(..., num_layers={num_layers}, "
            f"bidirectional={bidirectional}).state_dict() (with biases); missing {missing[:4]}, "
            f"unexpected [{', '.join(_short(k) for k in extra[:5])}{', ...' * (len(extra) > 5)}]"
        )
    for key, value in raw.items():
        _refuse_before_copying(value, f"{what}[{key!r}]")
    sd = {k: _to_host(v, f"{what}[{k!r}]") for k, v in raw.items()}
    if sd["weight_hh_l0"].ndim != 2 or sd["weight_ih_l0"].ndim != 2:
        raise ShapeError(f"{what}: weight_ih_l0 and weight_hh_l0 must be 2-D")
    H, D = sd["weight_hh_l0"].shape[1], sd["weight_ih_l0"].shape[1]
    dirs = 2 if bidirectional else 1
    for key in expected:
        part, index = key.split("_")[1], int(key.split("_l")[1].removesuffix("_reverse"))
        width = (D if index == 0 else dirs * H) if part == "ih" else H
        shape = (gates * H, width) if key.startswith("weight") else (gates * H,)
        _check_shape(sd, key, shape, what)
    _check_finite(sd, what)
    dtype = _dtype_of(sd, dtype)
    layer: Any
    if kind == "gru":
        layer = GRU(D, H, num_layers, bidirectional=bidirectional, variant="reset_after",
                    dtype=dtype, seed=0, backend=backend)  # fmt: skip
    else:
        layer = RNN(D, H, num_layers, bidirectional=bidirectional, dtype=dtype, seed=0,
                    backend=backend)  # fmt: skip
    for l in range(num_layers):
        for d in range(dirs):
            suffix = f"_l{l}" + ("_reverse" if d else "")
            if kind == "gru":
                blocks = _npgru_blocks(sd, suffix, H)
            else:  # W_xh = weight_ihᵀ, W_hh = weight_hhᵀ, b_h = bias_ih + bias_hh
                b_ih = sd[f"bias_ih{suffix}"].astype(np.float64)
                blocks = {"W_xh": sd[f"weight_ih{suffix}"].T, "W_hh": sd[f"weight_hh{suffix}"].T,
                          "b_h": b_ih + sd[f"bias_hh{suffix}"].astype(np.float64)}  # fmt: skip
            for name, value in blocks.items():
                # sums are formed in float64 and rounded once, to the layer's dtype
                host = np.asarray(value).astype(dtype)
                layer.params[layer.param_name(name, l, d)] = layer.backend.asarray(host)
    return layer


def gru_from_torch(
    module_or_state_dict: Any, dtype: Any = None, *, backend: str | Backend = "numpy"
) -> GRU:
    """A ``reset_after`` :class:`~npgru.layer.GRU` equal to an ``nn.GRU``.

    Args:
        module_or_state_dict: an ``nn.GRU`` (with biases, no ``proj_size``) or its
            ``state_dict()`` (tensors or NumPy arrays); D, H, the number of layers and
            the directions are read from the keys and shapes.
        dtype: float32 or float64; ``None`` keeps the dtype of ``weight_ih_l0`` (float32
            for any other float type).
        backend: where the layer's arrays live.

    Returns:
        The layer: for X (T, B, D), ``layer.forward(X, H0, lengths)`` gives what ``nn.GRU``
        gives on ``pack_padded_sequence(X, lengths, enforce_sorted=False)`` after
        ``pad_packed_sequence`` (``out`` and ``H_n``).

    Raises:
        ShapeError: missing or unexpected keys, wrong shapes, values that are not finite
            real numbers; each names the key, before anything is allocated.
    """
    return _layer_from_torch(module_or_state_dict, dtype, backend, "gru")


def gru_to_torch_state_dict(
    layer: GRU, grads: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The layer as the state dict of ``nn.GRU(D, H, num_layers, bidirectional=...)``.

    Args:
        layer: a ``reset_after`` :class:`~npgru.layer.GRU` (the d2l variant is refused).
        grads: ``None`` to map the parameters; or gradients with the keys of
            ``layer.params`` (from :meth:`~npgru.layer.Recurrent.backward`) to get the
            gradients of PyTorch's parameters (the adjoint map, see the module docstring).

    Returns:
        New contiguous NumPy arrays in the layer's dtype, with PyTorch's keys in its order;
        ``gru_from_torch`` of them gives back the layer's parameters exactly.
    """
    if not isinstance(layer, GRU):
        raise ConfigError(f"expected an npgru.GRU layer, got {type(layer).__name__}")
    if layer.variant != "reset_after":
        raise ConfigError(
            f"the {layer.variant!r} GRU variant has no PyTorch equivalent (nn.GRU applies the "
            "reset gate after the hidden product): use variant='reset_after'"
        )
    names = [layer.param_name(n, l, d) for l in range(layer.num_layers)
             for d in range(layer.num_directions) for n in PARAM_NAMES["reset_after"]]  # fmt: skip
    source: Mapping[str, Any] = layer.params if grads is None else grads
    if grads is not None:
        for name in names:
            if name not in grads or tuple(grads[name].shape) != tuple(layer.params[name].shape):
                raise ShapeError(f"grads must hold {name!r} with the shape of the parameter, "
                                 f"{tuple(layer.params[name].shape)}")  # fmt: skip
    sd: dict[str, np.ndarray] = {}
    for l in range(layer.num_layers):
        for d in range(layer.num_directions):
            p = {
                n: layer.backend.asnumpy(source[layer.param_name(n, l, d)]).astype(layer.dtype)
                for n in PARAM_NAMES["reset_after"]
            }
            suffix = f"_l{l}" + ("_reverse" if d else "")
            sd.update(_torch_blocks(p, suffix, adjoint=grads is not None))
    return sd


def rnn_from_torch(
    module_or_state_dict: Any, dtype: Any = None, *, backend: str | Backend = "numpy"
) -> RNN:
    """An :class:`~npgru.layer.RNN` equal to an ``nn.RNN(nonlinearity="tanh")``.

    ``W_xh = weight_ihᵀ``, ``W_hh = weight_hhᵀ`` and ``b_h = bias_ih + bias_hh`` for each layer
    and direction (docs/derivation.md, section 14). Arguments, results and errors as
    :func:`gru_from_torch`; an ``nn.RNN`` with ``nonlinearity="relu"`` is refused.
    """
    return _layer_from_torch(module_or_state_dict, dtype, backend, "rnn")


def rnn_to_torch_state_dict(
    layer: RNN, grads: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The layer as the state dict of ``nn.RNN(D, H, num_layers, bidirectional=...)``: the
    whole bias in ``bias_ih`` and zeros in ``bias_hh`` (with ``grads``: the adjoint map, both
    biases get the gradient of ``b_h``). ``rnn_from_torch`` of it gives back the layer."""
    if not isinstance(layer, RNN):
        raise ConfigError(f"expected an npgru.RNN layer, got {type(layer).__name__}")
    source: Mapping[str, Any] = layer.params if grads is None else grads
    sd: dict[str, np.ndarray] = {}
    for l in range(layer.num_layers):
        for d in range(layer.num_directions):
            p = {}
            for n in ("W_xh", "W_hh", "b_h"):
                name = layer.param_name(n, l, d)
                if name not in source or tuple(source[name].shape) != tuple(
                    layer.params[name].shape
                ):
                    raise ShapeError(f"grads must hold {name!r} with the shape of the parameter, "
                                     f"{tuple(layer.params[name].shape)}")  # fmt: skip
                p[n] = layer.backend.asnumpy(source[name]).astype(layer.dtype)
            suffix = f"_l{l}" + ("_reverse" if d else "")
            sd[f"weight_ih{suffix}"] = np.ascontiguousarray(p["W_xh"].T)
            sd[f"weight_hh{suffix}"] = np.ascontiguousarray(p["W_hh"].T)
            sd[f"bias_ih{suffix}"] = p["b_h"].copy()
            sd[f"bias_hh{suffix}"] = (
                p["b_h"].copy() if grads is not None else np.zeros_like(p["b_h"])
            )
    return sd
