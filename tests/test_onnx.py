"""ONNX export (npgru.export, npgru.interop.to_onnx): ONNX Runtime runs the exported graph and
gives npgru's numbers, the checker passes with full_check, the graph has model.forward's
inputs and outputs, and bad arguments are one-line npgru errors.

The weights are random and large (N(0, 0.5²), biases too), not the tiny N(0, 0.01²) init,
so that every gate matters: a gate block in the wrong place, a transposed matrix or a bias in
the wrong half of B changes the numbers by far more than 1e-5.

The layer (``npgru.GRU``, CONTRACT.md) is tested twice: through :class:`ContractLayer`, a
stand-in with the layer's attributes and parameter names whose forward is written from the
issue's semantics (npgru.gru.forward on each sequence, cut at its length, reversed for the
backward direction), and, once it exists, through ``npgru.GRU`` itself.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

import npgru
from npgru import export, interop
from npgru.errors import ConfigError, ShapeError
from npgru.gru import PARAM_NAMES
from npgru.gru import forward as gru_forward

onnx = pytest.importorskip(
    "onnx", reason="the onnx extra is not installed: pip install 'npgru[onnx]'"
)
ort = pytest.importorskip(
    "onnxruntime", reason="the onnx extra is not installed: pip install 'npgru[onnx]'"
)

VARIANTS = ["d2l", "reset_after"]
TOL = {"rtol": 1e-5, "atol": 1e-5}
NO_LAYER = "npgru.GRU not available yet"


def session(proto: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def randomize(params: Any, seed: int) -> None:
    """Every parameter (biases too) drawn from N(0, 0.5²), in place."""
    rng = np.random.default_rng(seed)
    for name in list(params):
        params[name] = rng.normal(0.0, 0.5, params[name].shape).astype(params[name].dtype)


def random_model(variant: str, num_layers: int, V: int = 11, H: int = 6, dtype: str = "float32"):
    model = npgru.GRULanguageModel(
        V, H, num_layers=num_layers, variant=variant, dtype=dtype, seed=3, impl="reference"
    )
    randomize(model.params, seed=7 + num_layers)
    return model


def dims(value_info: Any) -> list[Any]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_gives_the_models_forward(variant, num_layers, tmp_path):
    model = random_model(variant, num_layers)
    path = interop.to_onnx(model, tmp_path / "m.onnx")
    assert path == (tmp_path / "m.onnx").resolve()
    run = session(onnx.load(path))
    rng = np.random.default_rng(0)
    for B, T in ((3, 7), (1, 1), (5, 2)):  # one graph, any batch and length
        X = rng.integers(0, model.vocab_size, size=(B, T))
        state = rng.normal(0.0, 0.8, (num_layers, B, model.num_hiddens)).astype("float32")
        logits, new_state = run.run(None, {"X": X.astype(np.int64), "state": state})
        ours, our_state = model.forward(X, state)
        assert logits.shape == (T * B, model.vocab_size) and new_state.shape == state.shape
        np.testing.assert_allclose(logits, ours, **TOL)
        np.testing.assert_allclose(new_state, our_state, **TOL)
        # the check has teeth: the state matters, and so does the variant
        assert np.abs(logits - model.forward(X, 0 * state)[0]).max() > 1e-2


def test_the_variant_is_linear_before_reset_and_the_blocks_are_z_r_h():
    for variant, flag in (("d2l", 0), ("reset_after", 1)):
        model = random_model(variant, 2)
        proto = export.to_model_proto(model)
        grus = [n for n in proto.graph.node if n.op_type == "GRU"]
        assert len(grus) == 2
        for node in grus:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["linear_before_reset"] == flag and attrs["hidden_size"] == 6
            assert attrs["direction"] == b"forward"
        init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        H = 6
        assert np.array_equal(init["W_l1"][0, :H], model.params["W_xz_l1"].T)  # z first
        assert np.array_equal(init["R_l0"][0, H : 2 * H], model.params["W_hr"].T)  # then r
        assert np.array_equal(init["W_l0"][0, 2 * H :], model.params["W_xh"].T)  # then h
        B = init["B_l0"][0]
        assert np.array_equal(B[:H], model.params["b_z"]) and not B[3 * H : 5 * H].any()
        Rbh = model.params["b_hh"] if variant == "reset_after" else np.zeros(H)
        assert np.array_equal(B[5 * H :], Rbh) and np.array_equal(
            B[2 * H : 3 * H], model.params["b_h"]
        )
        assert np.array_equal(init["W_hq"], model.params["W_hq"])


def test_the_checker_passes_with_full_check(tmp_path):
    for variant in VARIANTS:
        path = interop.to_onnx(random_model(variant, 2), tmp_path / f"{variant}.onnx")
        proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
        onnx.checker.check_model(str(path), full_check=True)  # the file, as a user checks it
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", export.OPSET)]
        assert export.OPSET >= 17 and proto.producer_name == "npgru"
        ops = {n.op_type for n in proto.graph.node}
        assert ops == {
            "Transpose",
            "OneHot",
            "Slice",
            "GRU",
            "Squeeze",
            "Concat",
            "Reshape",
            "Gemm",
        }
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["npgru.variant"] == variant and props["npgru.version"] == npgru.__version__


def test_the_graphs_inputs_and_outputs_are_forwards():
    model = random_model("reset_after", 2, V=13, H=5)
    graph = export.to_model_proto(model).graph
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    got = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.input]
    assert got == [("X", i64, ["batch", "steps"]), ("state", f32, [2, "batch", 5])]
    got = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.output]
    assert got == [("logits", f32, ["steps_times_batch", 13]), ("new_state", f32, [2, "batch", 5])]
    inferred = onnx.shape_inference.infer_shapes(export.to_model_proto(model), strict_mode=True)
    assert [dims(v) for v in inferred.graph.output][1] == [2, "batch", 5]


def test_float64_is_kept_or_cast_and_metadata_is_stored(tmp_path):
    model = random_model("d2l", 1, dtype="float64")
    proto = export.to_model_proto(model)
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    onnx.checker.check_model(proto, full_check=True)
    proto32 = export.to_model_proto(model, dtype="float32", metadata={"npgru.vocab": '["a"]'})
    assert {p.key: p.value for p in proto32.metadata_props}["npgru.vocab"] == '["a"]'
    X = np.arange(12).reshape(2, 6) % 11
    state = np.full((1, 2, 6), 0.3)
    logits, _ = session(proto32).run(None, {"X": X, "state": state.astype("float32")})
    np.testing.assert_allclose(logits, model.forward(X, state)[0], rtol=1e-4, atol=1e-5)


def test_a_bad_argument_is_one_npgru_line(tmp_path):
    model = random_model("d2l", 1)
    for thing in (None, {"W_xz": np.zeros((2, 2))}, npgru.gru):
        with pytest.raises(ConfigError, match="GRULanguageModel or a GRU layer") as err:
            interop.to_onnx(thing, tmp_path / "x.onnx")
        assert "\n" not in str(err.value)
    (tmp_path / "folder").mkdir()
    (tmp_path / "old.onnx").write_bytes(b"old")
    for path in (tmp_path / "no" / "such" / "x.onnx", tmp_path / "folder", 42, ""):
        with pytest.raises(ConfigError) as err:
            interop.to_onnx(model, path)
        assert "\n" not in str(err.value) and ("cannot write" in str(err.value) or
                                               "file name" in str(err.value))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "old.onnx"]  # nothing left
    with pytest.raises(ConfigError, match="metadata must map strings"):
        export.to_model_proto(model, metadata={"n": 3})
    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        export.to_model_proto(model, dtype="int8")
    broken = random_model("d2l", 1)
    broken.params["b_q"] = np.full(11, np.nan, np.float32)
    with pytest.raises(ShapeError, match="NaN or infinite values in b_q"):
        export.to_model_proto(broken)


def test_without_onnx_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ConfigError) as err:
        interop.to_onnx(random_model("d2l", 1), tmp_path / "m.onnx")
    assert str(err.value) == "ONNX export needs the onnx package: pip install 'npgru[onnx]'"
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- the layer


class ContractLayer:
    """A stand-in for ``npgru.GRU`` / ``npgru.RNN`` (CONTRACT.md) until they land: their
    attributes, parameter names (``_l{l}``, ``_reverse``) and a forward written from the
    issue's words: each sequence b runs its first lengths[b] steps (the backward direction
    from step lengths[b] − 1 back to 0), ``out`` is zero past the end, ``H_n`` the state
    after the last step each direction ran; stacked layers read the concatenation."""

    def __init__(self, D: int, H: int, L: int, bidirectional: bool, variant: str, seed: int):
        self.input_size, self.hidden_size, self.num_layers = D, H, L
        self.bidirectional, self.num_directions = bidirectional, 2 if bidirectional else 1
        self.variant, self.dtype = variant, "float32"
        self.bases = ("W_xh", "W_hh", "b_h") if variant == "tanh" else PARAM_NAMES[variant]
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {}
        for layer in range(L):
            width = D if layer == 0 else self.num_directions * H
            for d in range(self.num_directions):
                for b in self.bases:
                    shape = {"x": (width, H), "h": (H, H)}.get(b[2], (H,)) if b[0] == "W" else (H,)
                    name = export.layer_param_name(b, layer, d)
                    self.params[name] = rng.normal(0.0, 0.5, shape).astype("float32")

    def cell(self, X: np.ndarray, h0: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """States H_1..H_n (n, 1, H) of one sequence X (n, 1, D) from h0 (1, H)."""
        if self.variant != "tanh":
            return np.array(gru_forward(X, h0, p)[0])
        Hs, h = [], h0
        for x in X:
            h = np.tanh(x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
            Hs.append(h)
        return np.stack(Hs)

    def forward(self, X: np.ndarray, H0: np.ndarray, lengths: np.ndarray):
        T, B, _ = X.shape
        H, dirs = self.hidden_size, self.num_directions
        H_n = np.zeros((self.num_layers * dirs, B, H), np.float32)
        for layer in range(self.num_layers):
            out = np.zeros((T, B, dirs * H), np.float32)
            for d in range(dirs):
                p = {b: self.params[export.layer_param_name(b, layer, d)] for b in self.bases}
                for s in range(B):
                    n = int(lengths[s])
                    seq = X[:n, s : s + 1] if d == 0 else X[:n, s : s + 1][::-1]
                    Hs = self.cell(np.ascontiguousarray(seq), H0[layer * dirs + d, s : s + 1], p)
                    H_n[layer * dirs + d, s] = Hs[-1, 0]  # the last step this direction ran
                    out[:n, s, d * H : (d + 1) * H] = (Hs if d == 0 else Hs[::-1])[:, 0]
            X = out
        return out, H_n, None


def layer_inputs(layer: Any, T: int = 6, B: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, (T, B, layer.input_size)).astype("float32")
    H0 = rng.normal(0.0, 0.8, (layer.num_layers * layer.num_directions, B, layer.hidden_size))
    lengths = np.array([T, 2, 1, T - 1][:B], dtype=np.int32)
    return X, H0.astype("float32"), lengths


def check_layer(layer: Any, lengths_none: bool = False) -> None:
    proto = export.to_model_proto(layer)
    onnx.checker.check_model(proto, full_check=True)
    X, H0, lengths = layer_inputs(layer)
    out, H_n = session(proto).run(None, {"X": X, "H0": H0, "lengths": lengths})
    ours_out, ours_H_n, _ = layer.forward(X, H0, lengths)
    np.testing.assert_allclose(out, np.asarray(ours_out), **TOL)
    np.testing.assert_allclose(H_n, np.asarray(ours_H_n), **TOL)
    if lengths_none:  # lengths=None in npgru is every sequence whole: T in ONNX
        T, B = X.shape[:2]
        full = np.full(B, T, np.int32)
        out, H_n = session(proto).run(None, {"X": X, "H0": H0, "lengths": full})
        ours_out, ours_H_n, _ = layer.forward(X, H0, None)
        np.testing.assert_allclose(out, np.asarray(ours_out), **TOL)
        np.testing.assert_allclose(H_n, np.asarray(ours_H_n), **TOL)


LAYER_CASES = [(v, L, bi) for v in VARIANTS for L in (1, 2) for bi in (False, True)]


@pytest.mark.parametrize(("variant", "num_layers", "bidirectional"), LAYER_CASES)
def test_the_layer_graph_gives_the_contracts_forward(variant, num_layers, bidirectional):
    check_layer(ContractLayer(5, 4, num_layers, bidirectional, variant, seed=num_layers))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_an_rnn_layer_becomes_onnx_rnn(bidirectional):
    layer = ContractLayer(5, 4, 2, bidirectional, "tanh", seed=2)
    assert {n.op_type for n in export.to_model_proto(layer).graph.node} >= {"RNN"}
    check_layer(layer)


def test_the_layer_graphs_inputs_and_outputs():
    layer = ContractLayer(5, 4, 2, True, "reset_after", seed=0)
    graph = export.to_model_proto(layer).graph
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    got = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.input]
    assert got == [("X", f32, ["steps", "batch", 5]), ("H0", f32, [4, "batch", 4]),
                   ("lengths", i32, ["batch"])]  # fmt: skip
    got = [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in graph.output]
    assert got == [("out", f32, ["steps", "batch", 8]), ("H_n", f32, [4, "batch", 4])]
    gru = next(n for n in graph.node if n.op_type == "GRU")
    assert list(gru.input)[4] == "lengths"  # sequence_lens


def test_a_layer_with_missing_or_misshapen_params_is_one_line():
    layer = ContractLayer(5, 4, 2, True, "d2l", seed=0)
    del layer.params["W_hz_l1_reverse"]
    with pytest.raises(ShapeError, match="lack W_hz_l1_reverse"):
        export.to_model_proto(layer)
    layer = ContractLayer(5, 4, 2, True, "d2l", seed=0)
    layer.params["W_xr_l1"] = layer.params["W_xr_l1"][:4]  # (4, 4): layer 1 reads 2H = 8
    with pytest.raises(ShapeError, match=r"W_xr_l1 has shape \(4, 4\), expected \(8, 4\)"):
        export.to_model_proto(layer)


def test_onnxruntime_masks_sequences_as_npgru_does():
    """What ONNX Runtime does with sequence_lens, checked on its own numbers: Y is zero past
    each sequence's length; Y_h holds the forward direction's state at its last valid step
    and the backward direction's at t = 0; and the backward direction starts at the last
    valid step (its first state is one step from H0 on X[lengths − 1]), not at T − 1."""
    layer = ContractLayer(3, 4, 1, True, "reset_after", seed=5)
    X, H0, lengths = layer_inputs(layer, T=5, B=3)
    lengths = np.array([5, 2, 1], np.int32)
    out, H_n = session(export.to_model_proto(layer)).run(
        None, {"X": X, "H0": H0, "lengths": lengths}
    )
    H = 4
    for b, n in enumerate(lengths):
        assert not out[n:, b].any()  # exactly zero past the end
        assert np.array_equal(H_n[0, b], out[n - 1, b, :H])  # forward: last valid step
        assert np.array_equal(H_n[1, b], out[0, b, H:])  # backward: ends at t = 0
        p = {k: layer.params[k + "_reverse"] for k in PARAM_NAMES["reset_after"]}
        first = layer.cell(X[n - 1 : n, b : b + 1], H0[1, b : b + 1], p)[0, 0]
        np.testing.assert_allclose(out[n - 1, b, H:], first, **TOL)  # starts at n − 1
        assert np.abs(out[n - 1, b, H:] - out[n - 1, b, :H]).max() > 1e-3


needs_layer = pytest.mark.skipif(not hasattr(npgru, "GRU"), reason=NO_LAYER)


@needs_layer
@pytest.mark.parametrize(("variant", "num_layers", "bidirectional"), LAYER_CASES)
def test_onnxruntime_gives_the_layers_forward(variant, num_layers, bidirectional):
    layer = npgru.GRU(5, 4, num_layers, bidirectional=bidirectional, variant=variant, seed=1)
    randomize(layer.params, seed=num_layers)
    check_layer(layer, lengths_none=True)


@needs_layer
def test_the_real_layer_has_the_contracts_names():
    layer = npgru.GRU(5, 4, 2, bidirectional=True, variant="reset_after")
    stand_in = ContractLayer(5, 4, 2, True, "reset_after", seed=0)
    assert set(layer.params) == set(stand_in.params)
    for name, p in stand_in.params.items():
        assert tuple(layer.params[name].shape) == p.shape, name


@pytest.mark.skipif(not hasattr(npgru, "RNN"), reason="npgru.RNN not available yet")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnxruntime_gives_the_rnn_layers_forward(bidirectional):
    layer = npgru.RNN(5, 4, 2, bidirectional=bidirectional, seed=1)
    randomize(layer.params, seed=3)
    check_layer(layer, lengths_none=True)
