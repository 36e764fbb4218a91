r"""Export to ONNX: a :class:`~npgru.model.GRULanguageModel` or a GRU layer (``npgru.GRU``) as
a graph of standard operators, one ONNX ``GRU`` node per layer.

``onnx`` and ``onnxruntime`` are optional (``pip install 'npgru[onnx]'``); ``onnx`` is
imported only when a graph is built. Use it through :func:`npgru.interop.to_onnx` or
``npgru export CHECKPOINT model.onnx``.

**The equations agree.** ONNX's ``GRU`` (opset 14, default activations f = σ, g = tanh)
computes, with gate blocks in the order z, r, h and weights multiplied on the left (``Xt·Wᵀ``)::

    zt = σ(Xt Wzᵀ + Ht-1 Rzᵀ + Wbz + Rbz)                       npgru's eq. 1
    rt = σ(Xt Wrᵀ + Ht-1 Rrᵀ + Wbr + Rbr)                       npgru's eq. 2
    ht = tanh(Xt Whᵀ + (rt ⊙ Ht-1) Rhᵀ + Rbh + Wbh)       linear_before_reset=0: eq. 3
    ht = tanh(Xt Whᵀ + rt ⊙ (Ht-1 Rhᵀ + Rbh) + Wbh)       linear_before_reset=1: eq. 3'
    Ht = (1 − zt) ⊙ ht + zt ⊙ Ht-1                              npgru's eq. 4

npgru's eq. 4 is ``H_t = Z_t ⊙ H_{t-1} + (1 − Z_t) ⊙ H~_t``, the same convention (Z keeps
the old state). npgru multiplies on the right (``X_t W_xz``), so each ONNX block is the
transpose of an npgru matrix::

    W  (3H, D) = [W_xz.T; W_xr.T; W_xh.T]      R (3H, H) = [W_hz.T; W_hr.T; W_hh.T]
    B  (6H,)   = [Wb | Rb] = [b_z, b_r, b_h | 0, 0, Rbh]   Rbh = 0 (d2l), b_hh (reset_after)

For the d2l variant (eq. 3) the candidate's bias is ``b_h = Wbh`` and ``Rbh = 0``; for
reset_after (eq. 3') ``b_h = Wbh`` sits outside the reset gate and ``b_hh = Rbh`` inside it,
as eq. 3' has them. npgru's one bias of each of z and r goes into Wb; their Rb are zero.

**The language model** (inputs and outputs those of :meth:`GRULanguageModel.forward`, in
order): ``X`` (B, T) int64 token ids and ``state`` (num_layers, B, H) → ``logits`` (T·B, V),
time-major, and ``new_state`` (num_layers, B, H). The token lookup is ``Transpose`` to (T, B)
and ``OneHot`` to (T, B, V) in the model's float type, exact (the GRU's input product then
picks rows of W_x, as npgru's gather does); an id outside 0..V−1 gives a zero row (−V..−1
count from the end), where npgru refuses it. Each layer takes its slice of the state
(``Slice``), runs ``GRU`` and drops the direction axis (``Squeeze``); the last layer's
states, reshaped to (T·B, H), go through ``Gemm`` with W_hq and b_q.

**The layer** (``npgru.GRU``, bidirectional and stacked): inputs ``X`` (T, B, D), ``H0``
(L·dirs, B, H) and ``lengths`` (B,) int32 (ONNX's ``sequence_lens``; give T for every
sequence to run them whole) → ``out`` (T, B, dirs·H) and ``H_n`` (L·dirs, B, H), both in
PyTorch's order (layer 0 forward, layer 0 backward, layer 1 forward, ...). ONNX's Y (T,
dirs, B, H) is transposed to (T, B, dirs, H) and reshaped to (T, B, dirs·H): the forward
direction's H columns, then the backward's, the concatenation the next layer reads. ONNX
Runtime gives zeros past each sequence's length and, in Y_h, the forward direction's state
at its last valid step and the backward direction's after it ran from that step back to
t = 0: npgru's semantics (``tests/test_onnx.py`` checks it). The ``"tanh"`` variant
(``npgru.RNN``) becomes ONNX's ``RNN`` operator, Ht = tanh(Xt Wiᵀ + Ht-1 Riᵀ + Wbi + Rbi)
with W = W_xh.T, R = W_hh.T, Wb = b_h, Rb = 0.

ONNX Runtime's ``GRU`` runs float32 only (it refuses float64 when the graph runs); export a
float64 model with ``dtype="float32"`` to run it there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npgru.checks import float_dtype
from npgru.errors import ConfigError, ShapeError, one_line
from npgru.files import atomic_write
from npgru.gru import PARAM_NAMES
from npgru.model import GRULanguageModel
from npgru.version import __version__

__all__ = ["OPSET", "onnx_blocks", "to_model_proto", "to_onnx"]

#: The ONNX opset of the graphs (ONNX Runtime 1.13 and newer run it); the IR version is the
#: lowest that carries it, so that older runtimes load the file.
OPSET = 17

#: ONNX's gate order, with npgru's input weight, hidden weight and bias of each gate.
ONNX_GATES = (
    ("z", "W_xz", "W_hz", "b_z"),
    ("r", "W_xr", "W_hr", "b_r"),
    ("h", "W_xh", "W_hh", "b_h"),
)

#: The attributes a layer (``npgru.GRU``, ``npgru.RNN``) has, by the layer's contract.
LAYER_ATTRIBUTES = ("params", "input_size", "hidden_size", "num_layers", "bidirectional",
                    "num_directions", "variant", "dtype")  # fmt: skip

#: The cell variant of ``npgru.RNN`` (ONNX's ``RNN`` operator); the others are GRU variants.
RNN_VARIANT = "tanh"

INSTALL = "pip install 'npgru[onnx]'"


def _onnx() -> Any:
    """The ``onnx`` module, or a ConfigError that says how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx package: {INSTALL}") from exc
    return onnx


# --------------------------------------------------------------------------- the weights


def onnx_blocks(p: Mapping[str, np.ndarray], variant: str) -> tuple[np.ndarray, ...]:
    """ONNX's ``W``, ``R``, ``B`` of one direction from npgru's parameters of one cell.

    Args:
        p: the cell's parameters under their plain names (``W_xz`` …), NumPy arrays.
        variant: ``"d2l"`` or ``"reset_after"`` (ONNX ``GRU``), or ``"tanh"`` (ONNX ``RNN``).

    Returns:
        For a GRU: W (3H, D), R (3H, H), B (6H,) with blocks z, r, h (see the module
        docstring; Rb is zero but for reset_after's Rbh = b_hh). For the RNN: W (H, D) =
        W_xh.T, R (H, H) = W_hh.T, B (2H,) = [b_h, 0].
    """
    if variant == RNN_VARIANT:
        W, R, b = p["W_xh"].T, p["W_hh"].T, p["b_h"]
        return W, R, np.concatenate([b, np.zeros_like(b)])
    W = np.concatenate([p[w_x].T for _, w_x, _, _ in ONNX_GATES])
    R = np.concatenate([p[w_h].T for _, _, w_h, _ in ONNX_GATES])
    Wb = [p[b] for _, _, _, b in ONNX_GATES]
    zero = np.zeros_like(p["b_z"])
    Rbh = p["b_hh"] if variant == "reset_after" else zero  # eq. 3' inside the gate; eq. 3: 0
    return W, R, np.concatenate([*Wb, zero, zero, Rbh])


# --------------------------------------------------------------------------- what is exported


@dataclass
class _Net:
    """What the graph needs from a model or a layer, on the host."""

    kind: str  # "model" or "layer"
    variant: str
    input_size: int  # V for the model, D for the layer
    hidden_size: int
    num_layers: int
    num_directions: int
    cells: list[list[dict[str, np.ndarray]]]  # cells[l][d]: plain names -> arrays
    output: dict[str, np.ndarray]  # W_hq, b_q (model only)


def _host(obj: Any, a: Any) -> np.ndarray:
    """``a`` as a NumPy array on the host (CuPy arrays copied back)."""
    backend = getattr(obj, "backend", None)
    if backend is not None and hasattr(backend, "asnumpy"):
        return np.asarray(backend.asnumpy(a))
    if type(a).__module__.split(".")[0] == "cupy":
        return np.asarray(a.get())
    return np.asarray(a)


def _is_layer(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in LAYER_ATTRIBUTES)


def layer_param_name(base: str, layer: int, direction: int) -> str:
    """The name of a parameter of layer ``layer``, direction ``direction`` in a layer's
    ``params``: ``W_xz``, ``W_xz_reverse``, ``W_xz_l1``, ``W_xz_l1_reverse``."""
    return base + ("" if layer == 0 else f"_l{layer}") + ("" if direction == 0 else "_reverse")


def _describe(obj: Any, dtype: Any) -> _Net:
    """The :class:`_Net` of a model or a layer; ConfigError for anything else, ShapeError
    for parameters that are missing, misshapen or not finite."""
    if isinstance(obj, GRULanguageModel):
        kind, variant = "model", obj.variant
        D, H, L, dirs = obj.vocab_size, obj.num_hiddens, obj.num_layers, 1

        def name(base: str, layer: int, direction: int) -> str:
            return base if layer == 0 else f"{base}_l{layer}"

    elif _is_layer(obj):
        kind, variant = "layer", obj.variant
        D, H, L = int(obj.input_size), int(obj.hidden_size), int(obj.num_layers)
        dirs = 2 if obj.bidirectional else 1
        if int(obj.num_directions) != dirs:
            raise ShapeError(f"the layer has num_directions={obj.num_directions} but "
                             f"bidirectional={obj.bidirectional}")  # fmt: skip
        name = layer_param_name
    else:
        raise ConfigError(
            "to_onnx exports a GRULanguageModel or a GRU layer (npgru.GRU), got "
            f"{type(obj).__name__}"
        )
    if variant != RNN_VARIANT and variant not in PARAM_NAMES:
        raise ConfigError(f"cannot export the unknown variant {variant!r}")
    bases = ("W_xh", "W_hh", "b_h") if variant == RNN_VARIANT else PARAM_NAMES[variant]
    target = np.dtype(float_dtype(obj.dtype if dtype is None else dtype))
    params = obj.params
    # everything named is checked before anything is copied
    wanted = [name(b, layer, d) for layer in range(L) for d in range(dirs) for b in bases]
    if kind == "model":
        wanted += ["W_hq", "b_q"]
    missing = [n for n in wanted if n not in params]
    if missing:
        raise ShapeError(f"the {kind}'s params lack {', '.join(missing[:6])}")
    shapes = {"W_hq": (H, D), "b_q": (D,)}
    for layer in range(L):
        width = D if layer == 0 else (dirs * H if kind == "layer" else H)
        for d in range(dirs):
            for b in bases:
                kind_of = b[2] if b.startswith("W_") else "b"
                shapes[name(b, layer, d)] = {"x": (width, H), "h": (H, H), "b": (H,)}[kind_of]
    for n in wanted:
        if tuple(params[n].shape) != shapes[n]:
            raise ShapeError(f"{kind} parameter {n} has shape {tuple(params[n].shape)}, "
                             f"expected {shapes[n]}")  # fmt: skip
    host = {n: _host(obj, params[n]) for n in wanted}
    bad = [n for n, a in host.items() if not np.all(np.isfinite(a))]
    if bad:
        raise ShapeError(f"refusing to export NaN or infinite values in {', '.join(bad[:6])}")
    host = {n: a.astype(target) for n, a in host.items()}
    cells = [
        [{b: host[name(b, layer, d)] for b in bases} for d in range(dirs)] for layer in range(L)
    ]
    output = {k: host[k] for k in ("W_hq", "b_q")} if kind == "model" else {}
    return _Net(kind, variant, D, H, L, dirs, cells, output)


# --------------------------------------------------------------------------- the graph


class _Graph:
    """Nodes, initializers and value infos, collected in order."""

    def __init__(self, onnx: Any, dtype: np.dtype) -> None:
        self.onnx, self.h = onnx, onnx.helper
        self.float = self.h.np_dtype_to_tensor_dtype(dtype)
        self.dtype = dtype
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> list[str]:
        self.nodes.append(self.h.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs

    def value(self, name: str, elem: Any, shape: list[Any]) -> Any:
        return self.h.make_tensor_value_info(name, elem, shape)


def _recurrent(g: _Graph, net: _Net, layer: int, x: str, h0: str, lengths: str) -> tuple[str, str]:
    """One ONNX GRU (or RNN) node for layer ``layer``, both directions; its (Y, Y_h) names.

    Y is (T, dirs, B, H), Y_h (dirs, B, H)."""
    blocks = [onnx_blocks(cell, net.variant) for cell in net.cells[layer]]
    W, R, B = (g.const(f"{k}_l{layer}", np.stack([b[i] for b in blocks]))  # (dirs, ...)
               for i, k in enumerate("WRB"))  # fmt: skip
    direction = "bidirectional" if net.num_directions == 2 else "forward"
    attrs: dict[str, Any] = {"hidden_size": net.hidden_size, "direction": direction}
    op = "GRU"
    if net.variant == RNN_VARIANT:
        op = "RNN"
    else:
        attrs["linear_before_reset"] = int(net.variant == "reset_after")
    Y, Y_h = g.node(op, [x, W, R, B, lengths, h0], [f"Y_l{layer}", f"Y_h_l{layer}"], **attrs)
    return Y, Y_h


def _state_slice(g: _Graph, state: str, layer: int, dirs: int) -> str:
    """Rows dirs·l … dirs·(l+1) − 1 of the state (L·dirs, B, H): layer l's initial state."""
    starts = g.const(f"state_start_l{layer}", np.array([dirs * layer], np.int64))
    ends = g.const(f"state_end_l{layer}", np.array([dirs * (layer + 1)], np.int64))
    axes = g.const(f"state_axes_l{layer}", np.array([0], np.int64))
    return g.node("Slice", [state, starts, ends, axes], [f"initial_h_l{layer}"])[0]


def _model_graph(g: _Graph, net: _Net) -> Any:
    V, H, L = net.input_size, net.hidden_size, net.num_layers
    X, state = "X", "state"
    inputs = [
        g.value(X, g.onnx.TensorProto.INT64, ["batch", "steps"]),
        g.value(state, g.float, [L, "batch", H]),
    ]
    outputs = [
        g.value("logits", g.float, ["steps_times_batch", V]),
        g.value("new_state", g.float, [L, "batch", H]),
    ]
    tokens = g.node("Transpose", [X], ["X_time_major"], perm=[1, 0])[0]  # (T, B)
    depth = g.const("vocab_size", np.array(V, np.int64))
    on_off = g.const("one_hot_values", np.array([0, 1], g.dtype))
    x = g.node("OneHot", [tokens, depth, on_off], ["one_hot"], axis=-1)[0]  # (T, B, V)
    squeeze_axes = g.const("direction_axis", np.array([1], np.int64))
    finals = []
    for layer in range(L):
        h0 = _state_slice(g, state, layer, 1)
        Y, Y_h = _recurrent(g, net, layer, x, h0, "")
        x = g.node("Squeeze", [Y, squeeze_axes], [f"H_l{layer}"])[0]  # (T, B, H)
        finals.append(Y_h)
    g.node("Concat", finals, ["new_state"], axis=0)
    rows = g.const("top_shape", np.array([-1, H], np.int64))
    top = g.node("Reshape", [x, rows], ["top"])[0]  # (T·B, H), row t·B + b
    W_hq = g.const("W_hq", net.output["W_hq"])
    b_q = g.const("b_q", net.output["b_q"])
    g.node("Gemm", [top, W_hq, b_q], ["logits"])  # O = H W_hq + b_q
    return inputs, outputs


def _layer_graph(g: _Graph, net: _Net) -> Any:
    D, H, L, dirs = net.input_size, net.hidden_size, net.num_layers, net.num_directions
    inputs = [
        g.value("X", g.float, ["steps", "batch", D]),
        g.value("H0", g.float, [L * dirs, "batch", H]),
        g.value("lengths", g.onnx.TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        g.value("out", g.float, ["steps", "batch", dirs * H]),
        g.value("H_n", g.float, [L * dirs, "batch", H]),
    ]
    shape = g.const("out_shape", np.array([0, 0, dirs * H], np.int64))
    x, finals = "X", []
    for layer in range(L):
        h0 = _state_slice(g, "H0", layer, dirs)
        Y, Y_h = _recurrent(g, net, layer, x, h0, "lengths")
        Y = g.node("Transpose", [Y], [f"Y_tbdh_l{layer}"], perm=[0, 2, 1, 3])[0]  # (T, B, d, H)
        x = g.node("Reshape", [Y, shape], ["out" if layer == L - 1 else f"out_l{layer}"])[0]
        finals.append(Y_h)
    g.node("Concat", finals, ["H_n"], axis=0)
    return inputs, outputs


def to_model_proto(
    obj: Any, *, dtype: Any = None, metadata: Mapping[str, str] | None = None
) -> Any:
    """The ONNX ``ModelProto`` of a :class:`~npgru.model.GRULanguageModel` or a GRU layer,
    checked by ``onnx.checker.check_model(..., full_check=True)``.

    Args:
        obj: the model or the layer (see the module docstring for the graphs).
        dtype: the float type of the graph, ``None`` for the model's; ``"float32"`` for a
            float64 model that ONNX Runtime should run.
        metadata: extra ``metadata_props`` (strings); npgru adds ``npgru.kind``,
            ``npgru.variant`` and ``npgru.version``.

    Raises:
        ConfigError: ``obj`` is neither, or ``onnx`` is not installed.
        ShapeError: its parameters are missing, misshapen or not finite.
    """
    net = _describe(obj, dtype)
    onnx = _onnx()
    target = np.dtype(float_dtype(obj.dtype if dtype is None else dtype))
    g = _Graph(onnx, target)
    build = _model_graph if net.kind == "model" else _layer_graph
    inputs, outputs = build(g, net)
    name = "GRULanguageModel" if net.kind == "model" else type(obj).__name__
    graph = onnx.helper.make_graph(
        g.nodes, f"npgru_{name}", inputs, outputs, initializer=g.initializers,
        doc_string=f"npgru {name}, variant {net.variant}, {net.num_layers} layer(s)",
    )  # fmt: skip
    opsets = [onnx.helper.make_opsetid("", OPSET)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="npgru",
                                   producer_version=__version__)  # fmt: skip
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    props = {"npgru.kind": name, "npgru.variant": net.variant, "npgru.version": __version__}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"metadata must map strings to strings, got {key!r}: {value!r}")
        props[key] = value
    onnx.helper.set_model_props(model, props)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # a bug of this module, never the user's: say so in one line
        raise RuntimeError(f"npgru built an invalid ONNX graph: {one_line(exc)}") from exc
    return model


def to_onnx(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    dtype: Any = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``obj`` (a :class:`~npgru.model.GRULanguageModel` or a GRU layer) to ``path``
    as an ONNX model; see :func:`to_model_proto` and the module docstring.

    The file is written whole or not at all (:func:`npgru.files.atomic_write`).

    Returns:
        The path written (symlinks resolved).

    Raises:
        ConfigError: ``obj`` is not a model or a layer, ``onnx`` is not installed, or the
            file cannot be written (one line; any earlier file there is unchanged).
        ShapeError: the parameters are missing, misshapen or not finite.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"path must be a file name, got {path!r}")
    model = to_model_proto(obj, dtype=dtype, metadata=metadata)
    try:
        data = model.SerializeToString()
    except ValueError as exc:  # protobuf's limit of 2 GiB
        size = sum(math.prod(t.dims) for t in model.graph.initializer)
        raise ConfigError(f"the ONNX model holds {size:,} weights, more than one ONNX file "
                          f"can (2 GiB): {one_line(exc)}") from exc  # fmt: skip
    try:
        return atomic_write(path, lambda fh: fh.write(data))
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot write {os.fspath(path)}: {why}; any earlier file there is unchanged"
        ) from exc


def vocab_metadata(tokens: list[Any]) -> dict[str, str]:
    """``{"npgru.vocab": JSON list}``: the tokens, position = id, for a model's file."""
    return {"npgru.vocab": json.dumps(list(tokens), ensure_ascii=False)}
