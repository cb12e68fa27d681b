"""Conversions to and from PyTorch, Keras and ONNX (numgru.interop).

Round trips are checked bitwise. Agreement with Keras is checked through the
fixture files ``tests/fixtures/keras_*.npz`` (written by
``scripts/make_keras_fixtures.py``), so Keras is not needed here; the tests
that need PyTorch, onnx or ONNX Runtime skip when those are not installed.
"""

import glob
import json
import os

import numpy as np
import pytest

from numgru import GRU
from numgru.interop import (from_keras_weights, from_onnx, from_torch,
                            to_keras_weights, to_onnx, to_torch,
                            to_torch_state_dict)

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
KERAS_FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "keras_*.npz")))
TORCH_FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "torch_*.npz")))

# (num_layers, bidirectional, bias, reset_after)
CONFIGS = [
    (1, False, True, True),
    (1, False, True, False),
    (2, False, True, True),
    (3, False, False, False),
    (1, True, True, True),
    (2, True, True, False),
    (3, True, False, True),
]


def _config_id(config):
    layers, bidirectional, bias, reset_after = config
    return (f"L{layers}-{'bi' if bidirectional else 'uni'}-"
            f"{'bias' if bias else 'nobias'}-"
            f"{'after' if reset_after else 'before'}")


def make_gru(config, dtype="float64", input_size=4, hidden_size=5, seed=0):
    layers, bidirectional, bias, reset_after = config
    gru = GRU(input_size, hidden_size, num_layers=layers,
              bidirectional=bidirectional, bias=bias, reset_after=reset_after,
              dtype=dtype, random_state=seed)
    return gru


def make_inputs(gru, n_samples=5, n_steps=7, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_steps, gru.input_size)).astype(gru.dtype)
    h0 = rng.standard_normal((gru.num_layers * gru.num_directions, n_samples,
                              gru.hidden_size)).astype(gru.dtype)
    lengths = rng.integers(1, n_steps + 1, size=n_samples)
    lengths[0] = n_steps
    lengths[-1] = 1
    return x, h0, lengths


def assert_same_params(a, b):
    assert list(a.params) == list(b.params)
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype, name
        assert a.params[name].shape == b.params[name].shape, name
        assert a.params[name].tobytes() == b.params[name].tobytes(), name


def assert_same_config(a, b):
    for attr in ("input_size", "hidden_size", "num_layers", "bias",
                 "bidirectional", "reset_after", "dtype"):
        assert getattr(a, attr) == getattr(b, attr), attr


def max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected)))


# ------------------------------------------------------------------ PyTorch
def _fixture_state(path):
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        state = {key[len("param:"):]: data[key] for key in data.files
                 if key.startswith("param:")}
    return meta, state


@pytest.mark.parametrize("path", TORCH_FIXTURES, ids=os.path.basename)
def test_from_torch_numpy_state_dict_infers_configuration(path):
    meta, state = _fixture_state(path)
    gru = from_torch(state)
    assert gru.input_size == meta["input_size"]
    assert gru.hidden_size == meta["hidden_size"]
    assert gru.num_layers == meta["num_layers"]
    assert gru.bidirectional == meta["bidirectional"]
    assert gru.bias == meta["bias"]
    assert gru.reset_after
    assert gru.dtype == np.dtype(meta["dtype"])
    assert list(gru.params) == list(state)
    for name, value in gru.state_dict().items():
        assert value.tobytes() == state[name].tobytes()


def test_from_torch_copies_the_arrays():
    _, state = _fixture_state(os.path.join(FIXTURE_DIR, "torch_nobias_float64.npz"))
    gru = from_torch(state)
    before = state["weight_ih_l0"].copy()
    gru.params["weight_ih_l0"] += 1.0
    assert np.array_equal(state["weight_ih_l0"], before)


def test_from_torch_dtype_override():
    _, state = _fixture_state(os.path.join(FIXTURE_DIR, "torch_nobias_float64.npz"))
    gru = from_torch(state, dtype="float32", backend="numpy")
    assert gru.dtype == np.float32
    assert gru.backend == "numpy"


def test_from_torch_rejects_foreign_names():
    _, state = _fixture_state(os.path.join(FIXTURE_DIR, "torch_nobias_float64.npz"))
    with pytest.raises(ValueError, match="weight_hr_l0.*projections"):
        from_torch({**state, "weight_hr_l0": np.zeros((6, 6))})
    with pytest.raises(ValueError, match="gru.weight_ih_l0"):
        from_torch({"gru." + k: v for k, v in state.items()})
    with pytest.raises(ValueError, match="weight_ih_l0 and weight_hh_l0"):
        from_torch({"bias_ih_l0": np.zeros(18)})
    broken = dict(state)
    broken["weight_hh_l0"] = np.zeros((18, 5))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        from_torch(broken)
    with pytest.raises(TypeError, match="nn.GRU or a state dict"):
        from_torch(np.zeros(3))


def test_to_torch_state_dict_rejects_reset_before():
    gru = make_gru((1, False, True, False))
    with pytest.raises(ValueError, match="reset_after=False"):
        to_torch_state_dict(gru)
    with pytest.raises(TypeError, match="numgru.GRU"):
        to_torch_state_dict({"weight_ih_l0": np.zeros((3, 1))})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layers, bidirectional, bias",
                         [(1, False, True), (2, True, True), (3, False, False),
                          (2, True, False)])
def test_torch_state_dict_round_trip_is_bitwise(layers, bidirectional, bias, dtype):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.GRU(4, 6, num_layers=layers, bias=bias,
                          bidirectional=bidirectional)
    module = module.to(getattr(torch, dtype))
    original = module.state_dict()
    gru = from_torch(module)
    assert gru.dtype == np.dtype(dtype)
    assert (gru.num_layers, gru.bidirectional, gru.bias) == (layers, bidirectional, bias)
    back = to_torch_state_dict(gru)
    assert list(back) == list(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor), name
    # numpy state dict and tensors give the same model
    gru_from_numpy = from_torch({k: v.numpy() for k, v in original.items()})
    assert_same_params(gru, gru_from_numpy)
    # and the result loads into a fresh nn.GRU
    fresh = torch.nn.GRU(4, 6, num_layers=layers, bias=bias,
                         bidirectional=bidirectional).to(getattr(torch, dtype))
    fresh.load_state_dict(back)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[3]], ids=_config_id)
def test_to_torch_module_computes_the_same(config):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    gru = make_gru(config)
    x, h0, lengths = make_inputs(gru)
    module = to_torch(gru)
    assert module.batch_first
    packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                  batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out_p, h_n = module(packed, torch.from_numpy(h0))
    out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=x.shape[1])
    expected_out, expected_h_n = gru.forward(x, h0, lengths)
    assert max_error(out.numpy(), expected_out) < 1e-12
    assert max_error(h_n.numpy(), expected_h_n) < 1e-12


def test_from_torch_module_checks_type():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="LSTM"):
        from_torch(torch.nn.LSTM(3, 4))
    module = torch.nn.GRU(3, 4, num_layers=2, dropout=0.25, batch_first=False)
    gru = from_torch(module)
    assert gru.dropout == 0.25
    assert gru.dtype == np.float32


# -------------------------------------------------------------------- Keras
def _random_keras_weights(rng, n_features, units, layers, bidirectional,
                          bias, reset_after, dtype=np.float64):
    weights = []
    for k in range(layers):
        n_in = n_features if k == 0 else units * (2 if bidirectional else 1)
        arrays = []
        for _ in range(2 if bidirectional else 1):
            arrays.append(rng.standard_normal((n_in, 3 * units)).astype(dtype))
            arrays.append(rng.standard_normal((units, 3 * units)).astype(dtype))
            if bias:
                shape = (2, 3 * units) if reset_after else (3 * units,)
                arrays.append(rng.standard_normal(shape).astype(dtype))
        weights.append(arrays)
    return weights


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_keras_weights_round_trip_is_bitwise(config, dtype):
    layers, bidirectional, bias, reset_after = config
    rng = np.random.default_rng(3)
    weights = _random_keras_weights(rng, 3, 4, layers, bidirectional, bias,
                                    reset_after, dtype)
    gru = from_keras_weights(weights, reset_after=reset_after)
    assert gru.dtype == np.dtype(dtype)
    assert (gru.input_size, gru.hidden_size) == (3, 4)
    assert (gru.num_layers, gru.bidirectional, gru.bias, gru.reset_after) == config
    back = to_keras_weights(gru)
    assert len(back) == len(weights)
    for layer_back, layer in zip(back, weights):
        assert len(layer_back) == len(layer)
        for a, b in zip(layer_back, layer):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_gru_to_keras_and_back(config):
    gru = make_gru(config)
    weights = to_keras_weights(gru)
    back = from_keras_weights(weights, reset_after=gru.reset_after)
    assert_same_config(gru, back)
    if gru.reset_after or not gru.bias:
        assert_same_params(gru, back)
    else:
        # One Keras bias per gate: b_ih + b_hh, rounded once; b_hh becomes 0.
        x, h0, lengths = make_inputs(gru)
        for name in gru.params:
            if name.startswith("bias_hh"):
                assert not np.any(back.params[name])
            elif name.startswith("bias_ih"):
                hh = name.replace("bias_ih", "bias_hh")
                assert np.array_equal(back.params[name],
                                      gru.params[name] + gru.params[hh])
            else:
                assert back.params[name].tobytes() == gru.params[name].tobytes()
        out, h_n = gru.forward(x, h0, lengths)
        out_back, h_n_back = back.forward(x, h0, lengths)
        assert max_error(out_back, out) < 1e-14
        assert max_error(h_n_back, h_n) < 1e-14
        # with b_hh zero, nothing is summed and the round trip is bitwise
        assert_same_params(back, from_keras_weights(to_keras_weights(back),
                                                    reset_after=False))


def test_keras_weights_layout():
    gru = make_gru((1, False, True, True), hidden_size=3)
    H = 3
    kernel, recurrent, bias = to_keras_weights(gru)[0]
    w_ih, w_hh = gru.params["weight_ih_l0"], gru.params["weight_hh_l0"]
    b_ih, b_hh = gru.params["bias_ih_l0"], gru.params["bias_hh_l0"]
    # Keras blocks z, r, h; PyTorch blocks r, z, n
    assert np.array_equal(kernel[:, :H], w_ih[H:2 * H].T)
    assert np.array_equal(kernel[:, H:2 * H], w_ih[:H].T)
    assert np.array_equal(kernel[:, 2 * H:], w_ih[2 * H:].T)
    assert np.array_equal(recurrent[:, :H], w_hh[H:2 * H].T)
    assert np.array_equal(bias[0, H:2 * H], b_ih[:H])
    assert np.array_equal(bias[1, 2 * H:], b_hh[2 * H:])


def test_from_keras_weights_errors():
    rng = np.random.default_rng(0)
    after = _random_keras_weights(rng, 3, 4, 1, False, True, True)[0]
    before = _random_keras_weights(rng, 3, 4, 1, False, True, False)[0]
    with pytest.raises(ValueError, match=r"\(2, 12\) belongs to reset_after=True"):
        from_keras_weights(after, reset_after=False)
    with pytest.raises(ValueError, match=r"\(12,\) belongs to reset_after=False"):
        from_keras_weights(before, reset_after=True)
    with pytest.raises(ValueError, match="2 or 3 arrays"):
        from_keras_weights(after[:1])
    with pytest.raises(ValueError, match="recurrent_kernel of layer 0"):
        from_keras_weights([after[0], after[1][:, :6], after[2]])
    with pytest.raises(ValueError, match="kernel of layer 1"):
        from_keras_weights([after, after])  # layer 1 must read 4 inputs, not 3
    with pytest.raises(TypeError, match="not a mix"):
        from_keras_weights([after, after[0]])
    with pytest.raises(TypeError, match="list of arrays"):
        from_keras_weights(after[0])
    with pytest.raises(TypeError, match="reset_after"):
        from_keras_weights(after, reset_after="yes")
    with pytest.raises(TypeError, match="numgru.GRU"):
        to_keras_weights(after)


def _load_keras_fixture(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    weights = []
    for k in range(meta["num_layers"]):
        layer, i = [], 0
        while f"weights:{k}:{i}" in arrays:
            layer.append(arrays[f"weights:{k}:{i}"])
            i += 1
        weights.append(layer)
    return meta, weights, arrays


def _keras_tolerance(meta):
    # Keras 3.15 rounds float64 matrix products to float32 in its generic
    # cell loop (used for reset_after=False); its torch backend's
    # reset_after=True path and float32 fixtures are compared at their
    # dtype's precision.
    if meta["dtype"] == "float64" and (meta["reset_after"] or meta["float64_matmul"]):
        return 1e-10
    return 1e-5


def test_keras_fixtures_present():
    names = [os.path.basename(p) for p in KERAS_FIXTURES]
    assert "keras_textbook_float32.npz" in names
    metas = [_load_keras_fixture(p)[0] for p in KERAS_FIXTURES]
    assert {m["reset_after"] for m in metas} == {True, False}
    assert any(m["bidirectional"] for m in metas)
    assert any(m["num_layers"] > 1 for m in metas)


@pytest.mark.parametrize("path", KERAS_FIXTURES, ids=os.path.basename)
def test_agrees_with_keras(path, backend):
    meta, weights, arrays = _load_keras_fixture(path)
    gru = from_keras_weights(weights, reset_after=meta["reset_after"],
                             backend=backend)
    assert gru.dtype == np.dtype(meta["dtype"])
    assert gru.bidirectional == meta["bidirectional"]
    D = gru.num_directions
    out, h_n = gru.forward(arrays["x"])
    last = h_n[-D:]
    if meta["return_sequences"]:
        output = out
    else:
        output = np.concatenate(list(last), axis=1)
    tol = _keras_tolerance(meta)
    assert max_error(output, arrays["output"]) <= tol
    assert max_error(last, arrays["states"]) <= tol
    # and back to the same Keras weights
    for layer_back, layer in zip(to_keras_weights(gru), weights):
        for a, b in zip(layer_back, layer):
            assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_onnx_round_trip_is_bitwise(config, dtype, tmp_path):
    pytest.importorskip("onnx")
    gru = make_gru(config, dtype=dtype)
    model = to_onnx(gru, with_lengths=True, with_initial_h=True)
    back = from_onnx(model)
    assert_same_config(gru, back)
    assert_same_params(gru, back)
    path = tmp_path / "gru.onnx"
    to_onnx(gru, path)
    assert_same_params(gru, from_onnx(str(path)))
    assert_same_params(gru, from_onnx(path))


def test_onnx_graph_structure():
    onnx = pytest.importorskip("onnx")
    gru = make_gru((3, True, True, False), dtype="float32")
    model = to_onnx(gru, opset=18, with_lengths=True, with_initial_h=True)
    assert model.opset_import[0].version == 18
    grus = [n for n in model.graph.node if n.op_type == "GRU"]
    assert len(grus) == 3
    for node in grus:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["direction"] == b"bidirectional"
        assert attrs["linear_before_reset"] == 0
        assert attrs["hidden_size"] == 5
    assert [i.name for i in model.graph.input] == ["X", "sequence_lens", "initial_h"]
    assert [o.name for o in model.graph.output] == ["Y", "Y_h"]
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT32


def _ort_session(model):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variable_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_agrees_with_onnxruntime(config, variable_lengths):
    pytest.importorskip("onnx")
    gru = make_gru(config, dtype="float32", input_size=6, hidden_size=7)
    x, h0, lengths = make_inputs(gru, n_samples=6, n_steps=9)
    if not variable_lengths:
        lengths = np.full(x.shape[0], x.shape[1])
    expected_out, expected_h_n = gru.forward(x, h0, lengths)
    # with sequence_lens and initial_h
    session = _ort_session(to_onnx(gru, with_lengths=True, with_initial_h=True))
    y, y_h = session.run(None, {"X": x, "sequence_lens": lengths.astype(np.int32),
                                "initial_h": h0})
    assert y.shape == expected_out.shape and y_h.shape == expected_h_n.shape
    assert max_error(y, expected_out) < 1e-5
    assert max_error(y_h, expected_h_n) < 1e-5
    if not variable_lengths:
        # without the optional inputs: zero initial state, all steps valid
        session = _ort_session(to_onnx(gru))
        y, y_h = session.run(None, {"X": x})
        expected_out, expected_h_n = gru.forward(x)
        assert max_error(y, expected_out) < 1e-5
        assert max_error(y_h, expected_h_n) < 1e-5


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_float64_agrees_with_onnx_reference(config):
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    gru = make_gru(config, dtype="float64")
    x, h0, _ = make_inputs(gru)
    y, y_h = ReferenceEvaluator(to_onnx(gru, with_initial_h=True)).run(
        None, {"X": x, "initial_h": h0})
    expected_out, expected_h_n = gru.forward(x, h0)
    assert max_error(y, expected_out) < 1e-12
    assert max_error(y_h, expected_h_n) < 1e-12


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_from_onnx_single_standard_gru_node(direction, linear_before_reset):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    D, H, I = (2 if direction == "bidirectional" else 1), 4, 3
    rng = np.random.default_rng(5)
    W = rng.uniform(-0.5, 0.5, (D, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-0.5, 0.5, (D, 3 * H, H)).astype(np.float32)
    B = rng.uniform(-0.5, 0.5, (D, 6 * H)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"],
                            hidden_size=H, direction=direction,
                            linear_before_reset=linear_before_reset)
    graph = helper.make_graph(
        [node], "single_gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", D, "B", H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D, "B", H])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                     numpy_helper.from_array(B, "B")])
    opsets = [helper.make_opsetid("", 14)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    gru = from_onnx(model)
    assert (gru.input_size, gru.hidden_size, gru.num_layers) == (I, H, 1)
    assert gru.bidirectional == (D == 2)
    assert gru.reset_after == bool(linear_before_reset)
    x = rng.standard_normal((5, 6, I)).astype(np.float32)
    y, y_h = _ort_session(model).run(None, {"X": x.transpose(1, 0, 2)})
    out, h_n = gru.forward(x)
    # ONNX Y is (T, D, B, H)
    y = y.transpose(2, 0, 1, 3).reshape(5, 6, D * H)
    assert max_error(y, out) < 1e-5
    assert max_error(y_h, h_n) < 1e-5
    # and numgru writes the same weights back
    exported = from_onnx(to_onnx(gru))
    assert_same_params(gru, exported)


def test_onnx_errors():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    gru = make_gru((1, False, True, True), dtype="float32")
    with pytest.raises(ValueError, match="opset"):
        to_onnx(gru, opset=9)
    with pytest.raises(TypeError, match="numgru.GRU or a fitted"):
        to_onnx(object())
    with pytest.raises(TypeError, match="with_lengths"):
        to_onnx(gru, with_lengths=1)
    with pytest.raises(ValueError, match="dtype"):
        to_onnx(gru, dtype="float16")
    with pytest.raises(TypeError, match="ModelProto or a path"):
        from_onnx(42)

    def single_node_model(**attributes):
        H = 2
        W = np.zeros((1, 3 * H, 3), dtype=np.float32)
        R = np.zeros((1, 3 * H, H), dtype=np.float32)
        node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"],
                                hidden_size=H, **attributes)
        graph = helper.make_graph(
            [node], "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 1, 3])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(W, "W"),
                         numpy_helper.from_array(R, "R")])
        return helper.make_model(graph)

    assert not from_onnx(single_node_model()).bias
    with pytest.raises(ValueError, match="direction 'reverse'"):
        from_onnx(single_node_model(direction="reverse"))
    with pytest.raises(ValueError, match="clip"):
        from_onnx(single_node_model(clip=3.0))
    with pytest.raises(ValueError, match="activations"):
        from_onnx(single_node_model(activations=["Relu", "Tanh"]))
    empty = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])]))
    with pytest.raises(ValueError, match="no GRU node"):
        from_onnx(empty)


# --------------------------------------------------------------- estimators
class _FittedHead:
    """An object with a fitted estimator's attributes, for the ONNX export."""

    def __init__(self, gru, n_outputs, classes=None, seed=0):
        rng = np.random.default_rng(seed)
        D = gru.num_directions
        self.gru_ = gru
        self.head_weight_ = rng.standard_normal(
            (n_outputs, D * gru.hidden_size)).astype(gru.dtype)
        self.head_bias_ = rng.standard_normal(n_outputs).astype(gru.dtype)
        if classes is not None:
            self.classes_ = np.asarray(classes)

    def scores(self, x, lengths=None):
        _, h_n = self.gru_.forward(x, lengths=lengths)
        D = self.gru_.num_directions
        features = np.concatenate(list(h_n[-D:]), axis=1)
        return features @ self.head_weight_.T + self.head_bias_


def _softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", [(1, False, True, True), (2, True, True, False),
                                    (2, False, True, True)], ids=_config_id)
def test_estimator_like_export_agrees_with_onnxruntime(config, dtype):
    pytest.importorskip("onnx")
    gru = make_gru(config, dtype=dtype, input_size=3, hidden_size=6)
    x, _, lengths = make_inputs(gru, n_samples=7, n_steps=8)
    x32 = x.astype(np.float32)
    regressor = _FittedHead(gru, 2)
    session = _ort_session(to_onnx(regressor))
    (predictions,) = session.run(["predictions"], {"X": x32})
    assert predictions.dtype == np.float32
    assert max_error(predictions, regressor.scores(x32)) < 1e-5
    session = _ort_session(to_onnx(regressor, with_lengths=True))
    (predictions,) = session.run(None, {"X": x32, "lengths": lengths.astype(np.int32)})
    assert max_error(predictions, regressor.scores(x32, lengths)) < 1e-5

    classifier = _FittedHead(gru, 3, classes=["a", "b", "c"], seed=1)
    session = _ort_session(to_onnx(classifier, with_lengths=True))
    probabilities, label = session.run(
        ["probabilities", "label"], {"X": x32, "lengths": lengths.astype(np.int32)})
    assert probabilities.shape == (7, 3)
    scores = classifier.scores(x32, lengths)
    assert max_error(probabilities, _softmax(scores)) < 1e-5
    assert label.tolist() == classifier.classes_[scores.argmax(axis=1)].tolist()


@pytest.mark.parametrize("classes", [[3, 7, 11], [0.5, 1.5, 2.5], ["x", "y", "z"]],
                         ids=["int", "float", "str"])
def test_classifier_export_labels(classes):
    pytest.importorskip("onnx")
    gru = make_gru((1, False, True, True), dtype="float32")
    x, _, _ = make_inputs(gru, n_samples=9)
    classifier = _FittedHead(gru, 3, classes=classes, seed=2)
    (label,) = _ort_session(to_onnx(classifier)).run(["label"], {"X": x})
    expected = classifier.classes_[classifier.scores(x).argmax(axis=1)]
    assert label.tolist() == expected.tolist()


def test_classifier_export_without_representable_labels():
    pytest.importorskip("onnx")
    gru = make_gru((1, False, True, True), dtype="float32")
    classifier = _FittedHead(gru, 2, classes=np.array([("a", 1), None], dtype=object))
    model = to_onnx(classifier)
    assert [o.name for o in model.graph.output] == ["probabilities"]


def _fit_estimators():
    estimators = pytest.importorskip("numgru.estimators")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 6, 2)).astype(np.float32)
    y_reg = X[:, :, 0].sum(axis=1)
    y_cls = np.where(X[:, -1, 1] > 0, "up", "down")
    regressor = estimators.GRURegressor(hidden_size=5, max_iter=3, batch_size=8,
                                        random_state=0)
    classifier = estimators.GRUClassifier(hidden_size=5, num_layers=2,
                                          bidirectional=True, max_iter=3,
                                          batch_size=8, random_state=0)
    return X, regressor.fit(X, y_reg), classifier.fit(X, y_cls)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fitted_estimators_export_agrees_with_predict():
    pytest.importorskip("onnx")
    X, regressor, classifier = _fit_estimators()
    (predictions,) = _ort_session(to_onnx(regressor)).run(None, {"X": X})
    assert max_error(predictions[:, 0], regressor.predict(X)) < 1e-5
    probabilities, label = _ort_session(to_onnx(classifier)).run(None, {"X": X})
    assert max_error(probabilities, classifier.predict_proba(X)) < 1e-5
    assert label.tolist() == classifier.predict(X).tolist()
    # variable lengths: the same as predicting each truncated series
    lengths = np.array([6, 1, 3, 6, 2, 5] * 4)
    (probabilities,) = _ort_session(to_onnx(classifier, with_lengths=True)).run(
        ["probabilities"], {"X": X, "lengths": lengths.astype(np.int32)})
    expected = classifier.predict_proba([X[i, :n] for i, n in enumerate(lengths)])
    assert max_error(probabilities, expected) < 1e-5


def test_unfitted_estimator_export_raises():
    estimators = pytest.importorskip("numgru.estimators")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        to_onnx(estimators.GRURegressor())
