"""Conversions between numgru and PyTorch, Keras and ONNX.

All three frameworks compute the same GRU as numgru, with different
parameter layouts:

========================  ===================  ==============================
framework                 gate order           layout
========================  ===================  ==============================
PyTorch ``nn.GRU``        r, z, n              ``weight_ih_l{k}`` (3H, I),
                                               ``weight_hh_l{k}`` (3H, H),
                                               ``bias_ih_l{k}``,
                                               ``bias_hh_l{k}`` (3H,)
Keras ``GRU``             z, r, h              ``kernel`` (I, 3H),
                                               ``recurrent_kernel`` (H, 3H),
                                               ``bias`` (2, 3H) or (3H,)
ONNX ``GRU`` operator     z, r, h              W (D, 3H, I), R (D, 3H, H),
                                               B (D, 6H) = [Wb, Rb]
========================  ===================  ==============================

numgru uses PyTorch's names and layout. Converting reorders and transposes
arrays, which is exact: every round trip is bitwise, except one documented
case (a Keras ``reset_after=False`` GRU has a single bias, see
:func:`to_keras_weights`).

"Reset after" (``reset_after=True``, the default) is PyTorch's form and Keras
``reset_after=True`` and ONNX ``linear_before_reset=1``. The Cho et al. form
(``reset_after=False``) is Keras ``reset_after=False`` and ONNX
``linear_before_reset=0``; PyTorch has no equivalent.

PyTorch, Keras and ONNX are imported only inside the functions that need
them; none is a dependency of numgru.
"""

import numbers
import os

import numpy as np

from ._validation import check_dtype as _check_dtype
from .gru import GRU

__all__ = [
    "from_torch",
    "to_torch",
    "to_torch_state_dict",
    "from_keras_weights",
    "to_keras_weights",
    "to_onnx",
    "from_onnx",
]

DEFAULT_OPSET = 17
MIN_OPSET = 14


# ----------------------------------------------------------------- helpers
def _swap_rz(H):
    """Row indices turning gate blocks r, z, n into z, r, n (and back)."""
    return np.concatenate([np.arange(H, 2 * H), np.arange(0, H),
                           np.arange(2 * H, 3 * H)])


def _to_numpy(value, name):
    """A C-contiguous numpy copy of an array, tensor or variable."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {value.dtype}")
        if str(value.dtype) not in ("torch.float32", "torch.float64"):
            value = value.float()
        value = value.numpy()
    try:
        array = np.array(value, copy=True)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, could not convert it: {exc}") from None
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    return np.ascontiguousarray(array)


def _infer_dtype(arrays, dtype):
    """``dtype`` if given, else float64 when every array is float64, else float32."""
    if dtype is not None:
        return dtype
    if arrays and all(a.dtype == np.float64 for a in arrays):
        return "float64"
    return "float32"


def _check_gru(gru, function):
    if not isinstance(gru, GRU):
        raise TypeError(f"{function} needs a numgru.GRU, got {type(gru).__name__}")


def _layer_arrays(gru, layer, direction):
    """(w_ih, w_hh, b_ih, b_hh) of one layer and direction; biases None if absent."""
    key = f"l{layer}{('', '_reverse')[direction]}"
    p = gru.params
    if gru.bias:
        return (p[f"weight_ih_{key}"], p[f"weight_hh_{key}"],
                p[f"bias_ih_{key}"], p[f"bias_hh_{key}"])
    return p[f"weight_ih_{key}"], p[f"weight_hh_{key}"], None, None


# ------------------------------------------------------------------ PyTorch
_TORCH_PREFIXES = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")


def _parse_torch_name(name):
    """(kind, layer, reverse) of a ``nn.GRU`` parameter name, or None."""
    for prefix in _TORCH_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            reverse = rest.endswith("_reverse")
            if reverse:
                rest = rest[:-len("_reverse")]
            if rest.isdigit():
                return prefix[:-2], int(rest), reverse
    return None


def from_torch(module_or_state_dict, *, dtype=None, backend="auto"):
    """Build a :class:`~numgru.GRU` from a PyTorch ``nn.GRU`` or its state dict.

    Parameters
    ----------
    module_or_state_dict : torch.nn.GRU or mapping of str to array-like
        A GRU module (``batch_first`` does not matter: numgru is always batch
        first), or its ``state_dict()``, with values as tensors or numpy
        arrays. From a state dict, the sizes, number of layers, direction and
        bias are read from the names and shapes.
    dtype : {"float32", "float64"} or None, default=None
        dtype of the result; None takes float64 when the parameters are
        float64, else float32.
    backend : {"auto", "numba", "cython", "numpy"}, default="auto"
        Backend of the result.

    Returns
    -------
    gru : numgru.GRU
        With ``reset_after=True`` and a copy of the parameters: the same
        function as the PyTorch module, batch first. A module's ``dropout``
        is carried over.

    Raises
    ------
    TypeError
        If the module is not an ``nn.GRU`` (an LSTM or RNN, say).
    ValueError
        If the module has projections (``proj_size > 0``), or the state
        dict's names or shapes are not those of an ``nn.GRU``.

    Examples
    --------
    >>> import numpy as np
    >>> from numgru.interop import from_torch
    >>> state = {"weight_ih_l0": np.zeros((12, 3)), "weight_hh_l0": np.zeros((12, 4)),
    ...          "bias_ih_l0": np.zeros(12), "bias_hh_l0": np.zeros(12)}
    >>> from_torch(state)
    GRU(3, 4, dtype='float64')

    From a module (``torch.nn.GRU(50, 128, batch_first=True)``, say)::

        gru = from_torch(module)
        out, h_n = gru.forward(x)    # x of shape (batch, steps, 50)
    """
    dropout = 0.0
    if hasattr(module_or_state_dict, "keys"):
        state = {str(k): _to_numpy(v, f"state_dict[{k!r}]")
                 for k, v in module_or_state_dict.items()}
        source = "state dict"
    elif hasattr(module_or_state_dict, "state_dict"):
        import torch

        module = module_or_state_dict
        if not isinstance(module, torch.nn.GRU):
            raise TypeError(
                f"from_torch needs a torch.nn.GRU or its state dict, got "
                f"{type(module).__name__}")
        if getattr(module, "proj_size", 0):
            raise ValueError(
                f"from_torch: nn.GRU with proj_size={module.proj_size} is not "
                f"supported (numgru has no projections)")
        state = {k: _to_numpy(v, k) for k, v in module.state_dict().items()}
        dropout = float(module.dropout)
        source = "module"
    else:
        raise TypeError(
            f"from_torch needs a torch.nn.GRU or a state dict (mapping of "
            f"names to arrays), got {type(module_or_state_dict).__name__}")

    parsed = {name: _parse_torch_name(name) for name in state}
    unknown = sorted(name for name, p in parsed.items() if p is None)
    if unknown:
        hint = ""
        if any(n.startswith("weight_hr_l") for n in unknown):
            hint = " (weight_hr_l* are projections, which numgru does not have)"
        raise ValueError(
            f"from_torch: {source} has names that are not nn.GRU parameters: "
            f"{unknown}{hint}; expected weight_ih_l{{k}}, weight_hh_l{{k}}, "
            f"bias_ih_l{{k}}, bias_hh_l{{k}} (suffix _reverse)")
    if "weight_ih_l0" not in state or "weight_hh_l0" not in state:
        raise ValueError(
            f"from_torch: {source} needs weight_ih_l0 and weight_hh_l0, got "
            f"{sorted(state)}")
    w_ih, w_hh = state["weight_ih_l0"], state["weight_hh_l0"]
    if w_hh.ndim != 2 or w_hh.shape[0] != 3 * w_hh.shape[1]:
        raise ValueError(
            f"from_torch: weight_hh_l0 must have shape (3*hidden_size, "
            f"hidden_size), got {w_hh.shape}")
    if w_ih.ndim != 2:
        raise ValueError(
            f"from_torch: weight_ih_l0 must have shape (3*hidden_size, "
            f"input_size), got {w_ih.shape}")
    num_layers = 1 + max(p[1] for p in parsed.values())
    bidirectional = any(p[2] for p in parsed.values())
    bias = any(p[0].startswith("bias") for p in parsed.values())
    gru = GRU(w_ih.shape[1], w_hh.shape[1], num_layers=num_layers, bias=bias,
              bidirectional=bidirectional, dropout=dropout,
              dtype=_infer_dtype(list(state.values()), dtype), backend=backend)
    gru.load_state_dict(state)
    return gru


def to_torch_state_dict(gru):
    """Return a state dict that ``torch.nn.GRU.load_state_dict`` accepts.

    Parameters
    ----------
    gru : numgru.GRU
        With ``reset_after=True``.

    Returns
    -------
    state_dict : collections.OrderedDict of str to torch.Tensor
        Copies of the parameters, same names, shapes and dtype, for
        ``nn.GRU(gru.input_size, gru.hidden_size, gru.num_layers,
        bias=gru.bias, bidirectional=gru.bidirectional, batch_first=True)``.

    Raises
    ------
    ValueError
        If ``gru.reset_after`` is False: PyTorch has no Cho-form GRU.

    Examples
    --------
    ::

        module = torch.nn.GRU(gru.input_size, gru.hidden_size, batch_first=True)
        module.load_state_dict(to_torch_state_dict(gru))
    """
    _check_gru(gru, "to_torch_state_dict")
    if not gru.reset_after:
        raise ValueError(
            "to_torch_state_dict: this GRU has reset_after=False (the Cho et "
            "al. form, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)), which "
            "torch.nn.GRU cannot compute; only reset_after=True converts")
    import collections

    import torch

    return collections.OrderedDict(
        (name, torch.from_numpy(value.copy())) for name, value in gru.params.items())


def to_torch(gru):
    """Return a ``torch.nn.GRU(..., batch_first=True)`` computing the same function.

    Parameters
    ----------
    gru : numgru.GRU
        With ``reset_after=True``.

    Returns
    -------
    module : torch.nn.GRU
        In ``gru``'s dtype, with ``batch_first=True`` and ``gru.dropout``.

    Raises
    ------
    ValueError
        If ``gru.reset_after`` is False.
    """
    state = to_torch_state_dict(gru)
    import torch

    module = torch.nn.GRU(gru.input_size, gru.hidden_size,
                          num_layers=gru.num_layers, bias=gru.bias,
                          batch_first=True, dropout=gru.dropout,
                          bidirectional=gru.bidirectional)
    module = module.to(torch.float64 if gru.dtype == np.float64 else torch.float32)
    module.load_state_dict(state)
    return module


# -------------------------------------------------------------------- Keras
def to_keras_weights(gru):
    """Return the weights of equivalent Keras ``GRU`` layers.

    Parameters
    ----------
    gru : numgru.GRU
        Any configuration. Its ``reset_after`` must match the Keras layers'
        (``keras.layers.GRU(units, reset_after=...)``); without bias, the
        Keras layers need ``use_bias=False``.

    Returns
    -------
    weights : list of list of ndarray
        One list per layer, for ``layer.set_weights(weights[k])``:
        ``[kernel, recurrent_kernel, bias]`` with ``kernel`` of shape
        (input_size, 3H) (the layer's input is D*H wide after the first
        layer), ``recurrent_kernel`` (H, 3H), gate blocks z, r, h, and
        ``bias`` of shape (2, 3H) (input bias, recurrent bias) when
        ``reset_after`` is True, (3H,) when it is False. ``bias`` is left out
        when ``gru.bias`` is False. For a bidirectional GRU each list holds
        the forward then the backward layer's weights (six arrays), the order
        of ``keras.layers.Bidirectional(GRU(...)).get_weights()``.

    Notes
    -----
    With ``reset_after=False`` Keras has a single bias per gate, and the
    Cho-form candidate ``tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` has both
    of numgru's candidate biases outside the reset gate, so every gate's
    biases add up: ``bias = b_ih + b_hh``. The conversion is exact as
    mathematics; in floating point the sum is rounded once, and converting
    back gives ``b_ih = bias, b_hh = 0`` (the same function, not the same
    arrays). When ``b_hh`` is all zeros, ``bias`` is ``b_ih`` bit for bit.
    With ``reset_after=True`` (``bias`` of shape (2, 3H)) nothing is summed
    and every round trip is bitwise.

    Examples
    --------
    >>> from numgru import GRU
    >>> from numgru.interop import to_keras_weights
    >>> weights = to_keras_weights(GRU(1, 64, random_state=0))
    >>> [w.shape for w in weights[0]]
    [(1, 192), (64, 192), (2, 192)]

    Then, in Keras, ``keras.layers.GRU(64).set_weights(weights[0])`` once
    the layer is built.
    """
    _check_gru(gru, "to_keras_weights")
    perm = _swap_rz(gru.hidden_size)
    layers = []
    for layer in range(gru.num_layers):
        arrays = []
        for direction in range(gru.num_directions):
            w_ih, w_hh, b_ih, b_hh = _layer_arrays(gru, layer, direction)
            arrays.append(np.ascontiguousarray(w_ih[perm].T))
            arrays.append(np.ascontiguousarray(w_hh[perm].T))
            if gru.bias:
                if gru.reset_after:
                    arrays.append(np.stack([b_ih[perm], b_hh[perm]]))
                elif np.any(b_hh):
                    arrays.append((b_ih + b_hh)[perm])
                else:
                    arrays.append(b_ih[perm])
        layers.append(arrays)
    return layers


def _is_array_like(value):
    return hasattr(value, "shape") and not isinstance(value, (list, tuple))


def from_keras_weights(weights, reset_after=True, *, dtype=None, backend="auto"):
    """Build a :class:`~numgru.GRU` from the weights of Keras ``GRU`` layers.

    Parameters
    ----------
    weights : list of array-like, or list of lists of array-like
        One layer's ``get_weights()`` (``[kernel, recurrent_kernel, bias]``,
        or ``[kernel, recurrent_kernel]`` with ``use_bias=False``), or a list
        of such lists for stacked layers, first layer first. A layer list of
        six (or four, without bias) arrays is a ``Bidirectional(GRU(...))``
        layer: forward then backward weights. Arrays are (input, 3H) and
        (H, 3H) with gate blocks z, r, h, as :func:`to_keras_weights` returns.
    reset_after : bool, default=True
        The Keras layers' ``reset_after``: bias of shape (2, 3H) when True,
        (3H,) when False.
    dtype : {"float32", "float64"} or None, default=None
        dtype of the result; None takes float64 when the weights are float64,
        else float32.
    backend : {"auto", "numba", "cython", "numpy"}, default="auto"
        Backend of the result.

    Returns
    -------
    gru : numgru.GRU
        A copy of the weights in PyTorch layout. With ``reset_after=False``
        the Keras bias becomes ``bias_ih`` and ``bias_hh`` is zeros.

    Raises
    ------
    ValueError
        If the number of arrays or a shape does not fit a Keras GRU layer,
        or a bias shape does not fit ``reset_after``.

    Examples
    --------
    >>> import numpy as np
    >>> from numgru.interop import from_keras_weights
    >>> kernel, recurrent_kernel = np.zeros((1, 24)), np.zeros((8, 24))
    >>> from_keras_weights([kernel, recurrent_kernel, np.zeros(24)], reset_after=False)
    GRU(1, 8, reset_after=False, dtype='float64')
    """
    if not isinstance(reset_after, (bool, np.bool_)):
        raise TypeError(f"reset_after must be True or False, got {reset_after!r}")
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"weights must be a list of arrays (one Keras layer's get_weights()) "
            f"or a list of such lists, got {type(weights).__name__}")
    if len(weights) == 0:
        raise ValueError("weights must not be empty")
    if all(_is_array_like(w) for w in weights):
        layers = [list(weights)]
    elif all(isinstance(w, (list, tuple)) for w in weights):
        layers = [list(w) for w in weights]
    else:
        raise TypeError(
            "weights must be a list of arrays (one layer) or a list of lists of "
            "arrays (one list per layer), not a mix")
    counts = {len(layer) for layer in layers}
    if len(counts) != 1 or counts.pop() not in (2, 3, 4, 6):
        raise ValueError(
            f"each layer's weights must be [kernel, recurrent_kernel(, bias)] "
            f"(2 or 3 arrays) or a Bidirectional layer's forward then backward "
            f"weights (4 or 6 arrays); got {[len(layer) for layer in layers]} "
            f"arrays per layer")
    n = len(layers[0])
    bidirectional = n in (4, 6)
    bias = n in (3, 6)
    per_direction = n // 2 if bidirectional else n
    D = 2 if bidirectional else 1
    converted = [[_to_numpy(a, f"weights[{k}][{i}]") for i, a in enumerate(layer)]
                 for k, layer in enumerate(layers)]

    recurrent0 = converted[0][1]
    if recurrent0.ndim != 2 or recurrent0.shape[1] != 3 * recurrent0.shape[0]:
        raise ValueError(
            f"recurrent_kernel of layer 0 must have shape (units, 3*units), got "
            f"{recurrent0.shape}")
    H = recurrent0.shape[0]
    kernel0 = converted[0][0]
    if kernel0.ndim != 2:
        raise ValueError(
            f"kernel of layer 0 must have shape (input_size, 3*units), got "
            f"{kernel0.shape}")
    input_size = kernel0.shape[0]
    bias_shape = (2, 3 * H) if reset_after else (3 * H,)
    perm = _swap_rz(H)
    state = {}
    for k, arrays in enumerate(converted):
        layer_input = input_size if k == 0 else D * H
        for direction in range(D):
            part = arrays[direction * per_direction:(direction + 1) * per_direction]
            where = f"layer {k}" + (f" ({('forward', 'backward')[direction]})"
                                    if bidirectional else "")
            kernel, recurrent = part[0], part[1]
            if kernel.shape != (layer_input, 3 * H):
                raise ValueError(
                    f"kernel of {where} must have shape {(layer_input, 3 * H)}, "
                    f"got {kernel.shape}")
            if recurrent.shape != (H, 3 * H):
                raise ValueError(
                    f"recurrent_kernel of {where} must have shape {(H, 3 * H)}, "
                    f"got {recurrent.shape}")
            suffix = f"l{k}{('', '_reverse')[direction]}"
            state[f"weight_ih_{suffix}"] = kernel.T[perm]
            state[f"weight_hh_{suffix}"] = recurrent.T[perm]
            if bias:
                b = part[2]
                if b.shape != bias_shape:
                    other = (3 * H,) if reset_after else (2, 3 * H)
                    hint = (f"; a bias of shape {other} belongs to "
                            f"reset_after={not reset_after}"
                            if b.shape == other else "")
                    raise ValueError(
                        f"bias of {where} must have shape {bias_shape} for "
                        f"reset_after={reset_after}, got {b.shape}{hint}")
                if reset_after:
                    state[f"bias_ih_{suffix}"] = b[0][perm]
                    state[f"bias_hh_{suffix}"] = b[1][perm]
                else:
                    state[f"bias_ih_{suffix}"] = b[perm]
                    state[f"bias_hh_{suffix}"] = np.zeros_like(b)
    gru = GRU(input_size, H, num_layers=len(converted), bias=bias,
              bidirectional=bidirectional, reset_after=bool(reset_after),
              dtype=_infer_dtype([a for layer in converted for a in layer], dtype),
              backend=backend)
    gru.load_state_dict(state)
    return gru


# --------------------------------------------------------------------- ONNX
def _check_opset(opset):
    import onnx

    latest = onnx.defs.onnx_opset_version()
    if (isinstance(opset, bool) or not isinstance(opset, numbers.Integral)
            or not MIN_OPSET <= opset <= latest):
        raise ValueError(
            f"opset must be an integer between {MIN_OPSET} and {latest} (the "
            f"newest this onnx package knows), got {opset!r}")
    return int(opset)


class _GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self):
        self.nodes = []
        self.initializers = []

    def constant(self, name, array):
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type, inputs, outputs, **attributes):
        from onnx import helper

        name = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name,
                                           **attributes))
        return outputs[0] if len(outputs) == 1 else outputs


def _add_gru_layers(g, gru, dtype, x_name, lengths_name, initial_h_name):
    """Add the GRU layers; return (Y name (B, T, D*H), list of Y_h names (D, B, H))."""
    H, D = gru.hidden_size, gru.num_directions
    perm = _swap_rz(H)
    layer_input = g.node("Transpose", [x_name], ["X_time_major"], perm=[1, 0, 2])
    shape_tbf = g.constant("shape_keep2_flatten", np.array([0, 0, -1], dtype=np.int64))
    y_h_names = []
    y_name = None
    for layer in range(gru.num_layers):
        W, R, B = [], [], []
        for direction in range(D):
            w_ih, w_hh, b_ih, b_hh = _layer_arrays(gru, layer, direction)
            W.append(w_ih[perm])
            R.append(w_hh[perm])
            if gru.bias:
                B.append(np.concatenate([b_ih[perm], b_hh[perm]]))
        inputs = [layer_input,
                  g.constant(f"W_l{layer}", np.stack(W).astype(dtype, copy=False)),
                  g.constant(f"R_l{layer}", np.stack(R).astype(dtype, copy=False)),
                  (g.constant(f"B_l{layer}", np.stack(B).astype(dtype, copy=False))
                   if gru.bias else ""),
                  lengths_name or ""]
        if initial_h_name:
            starts = g.constant(f"initial_h_start_l{layer}",
                                np.array([layer * D], dtype=np.int64))
            ends = g.constant(f"initial_h_end_l{layer}",
                              np.array([(layer + 1) * D], dtype=np.int64))
            inputs.append(g.node("Slice", [initial_h_name, starts, ends],
                                 [f"initial_h_l{layer}"]))
        while inputs[-1] == "":
            inputs.pop()
        y, y_h = g.node(
            "GRU", inputs, [f"Y_l{layer}", f"Y_h_l{layer}"], hidden_size=H,
            direction="bidirectional" if gru.bidirectional else "forward",
            linear_before_reset=int(gru.reset_after))
        y_h_names.append(y_h)
        if layer < gru.num_layers - 1:
            # (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H)
            t = g.node("Transpose", [y], [f"Y_l{layer}_tbdh"], perm=[0, 2, 1, 3])
            layer_input = g.node("Reshape", [t, shape_tbf], [f"X_l{layer + 1}"])
        else:
            # (T, D, B, H) -> (B, T, D, H) -> (B, T, D*H)
            t = g.node("Transpose", [y], ["Y_btdh"], perm=[2, 0, 1, 3])
            y_name = g.node("Reshape", [t, shape_tbf], ["Y_batch_first"])
    return y_name, y_h_names


def _onnx_float(dtype):
    from onnx import TensorProto

    return TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT


def _make_model(g, inputs, outputs, opset, graph_name, path):
    import onnx
    from onnx import helper

    graph = helper.make_graph(g.nodes, graph_name, inputs, outputs,
                              initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets,
                              producer_name="numgru")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


def _gru_to_onnx(gru, opset, dtype, with_lengths, with_initial_h, path):
    from onnx import TensorProto, helper

    H, D, L = gru.hidden_size, gru.num_directions, gru.num_layers
    elem = _onnx_float(dtype)
    g = _GraphBuilder()
    inputs = [helper.make_tensor_value_info(
        "X", elem, ["batch", "steps", gru.input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info(
            "sequence_lens", TensorProto.INT32, ["batch"]))
    if with_initial_h:
        inputs.append(helper.make_tensor_value_info(
            "initial_h", elem, [L * D, "batch", H]))
    y, y_h = _add_gru_layers(g, gru, dtype, "X",
                             "sequence_lens" if with_lengths else None,
                             "initial_h" if with_initial_h else None)
    g.node("Identity", [y], ["Y"])
    if len(y_h) == 1:
        g.node("Identity", y_h, ["Y_h"])
    else:
        g.node("Concat", y_h, ["Y_h"], axis=0)
    outputs = [helper.make_tensor_value_info("Y", elem, ["batch", "steps", D * H]),
               helper.make_tensor_value_info("Y_h", elem, [L * D, "batch", H])]
    return _make_model(g, inputs, outputs, opset, "numgru_GRU", path)


def _classes_tensor(classes):
    """``classes_`` as an array ONNX can hold (numbers, booleans or strings), or None."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biuf":
        return classes
    if classes.dtype.kind in "UO" and all(isinstance(c, str) for c in classes.tolist()):
        return classes.astype(object)
    return None


def _estimator_to_onnx(estimator, opset, dtype, with_lengths, path):
    from onnx import TensorProto, helper

    gru = getattr(estimator, "gru_", None)
    if not isinstance(gru, GRU):
        raise TypeError(
            f"to_onnx: {type(estimator).__name__}.gru_ must be a numgru.GRU, got "
            f"{type(gru).__name__}")
    H, D = gru.hidden_size, gru.num_directions
    head_weight = np.asarray(estimator.head_weight_)
    head_bias = np.asarray(estimator.head_bias_)
    if head_weight.ndim != 2 or head_weight.shape[1] != D * H:
        raise ValueError(
            f"to_onnx: head_weight_ must have shape (n_outputs, {D * H}), got "
            f"{head_weight.shape}")
    if head_bias.shape != (head_weight.shape[0],):
        raise ValueError(
            f"to_onnx: head_bias_ must have shape ({head_weight.shape[0]},), got "
            f"{head_bias.shape}")
    is_classifier = hasattr(estimator, "classes_")
    elem = _onnx_float(dtype)
    g = _GraphBuilder()
    inputs = [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, ["batch", "steps", gru.input_size])]
    x_name = "X"
    if elem != TensorProto.FLOAT:
        x_name = g.node("Cast", ["X"], ["X_cast"], to=elem)
    if with_lengths:
        inputs.append(helper.make_tensor_value_info(
            "lengths", TensorProto.INT32, ["batch"]))
    _, y_h = _add_gru_layers(g, gru, dtype, x_name,
                             "lengths" if with_lengths else None, None)
    # last layer's final states (D, B, H) -> (B, D, H) -> (B, D*H): [forward, reverse]
    t = g.node("Transpose", [y_h[-1]], ["last_state_bdh"], perm=[1, 0, 2])
    features = g.node(
        "Reshape", [t, g.constant("shape_keep1_flatten", np.array([0, -1], dtype=np.int64))],
        ["features"])
    scores = g.node("Gemm", [features,
                             g.constant("head_weight", head_weight.astype(dtype)),
                             g.constant("head_bias", head_bias.astype(dtype))],
                    ["scores"], transB=1)
    n_out = head_weight.shape[0]
    if is_classifier:
        probabilities = g.node("Softmax", [scores], ["probabilities_raw"], axis=1)
        if elem != TensorProto.FLOAT:
            probabilities = g.node("Cast", [probabilities], ["probabilities_float"],
                                   to=TensorProto.FLOAT)
        g.node("Identity", [probabilities], ["probabilities"])
        outputs = [helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["batch", n_out])]
        classes = _classes_tensor(estimator.classes_)
        if classes is not None:
            index = g.node("ArgMax", [scores], ["class_index"], axis=1, keepdims=0)
            g.node("Gather", [g.constant("classes", classes), index], ["label"], axis=0)
            outputs.append(helper.make_tensor_value_info(
                "label", g.initializers[-1].data_type, ["batch"]))
    else:
        if elem != TensorProto.FLOAT:
            scores = g.node("Cast", [scores], ["scores_float"], to=TensorProto.FLOAT)
        g.node("Identity", [scores], ["predictions"])
        outputs = [helper.make_tensor_value_info(
            "predictions", TensorProto.FLOAT, ["batch", n_out])]
    return _make_model(g, inputs, outputs, opset,
                       f"numgru_{type(estimator).__name__}", path)


def to_onnx(model, path=None, *, opset=DEFAULT_OPSET, dtype=None,
            with_lengths=False, with_initial_h=False):
    """Export a GRU or a fitted numgru estimator to ONNX.

    Parameters
    ----------
    model : numgru.GRU or fitted GRURegressor / GRUClassifier
        What to export.
    path : str or path-like, default=None
        Where to save the model; nothing is written when None.
    opset : int, default=17
        ONNX opset version, at least 14.
    dtype : {"float32", "float64"} or None, default=None
        Floating type of the weights and computations in the graph; None
        takes the GRU's dtype for a GRU and float32 for an estimator. ONNX
        Runtime's CPU GRU kernel runs float32 only.
    with_lengths : bool, default=False
        Add an int32 input of shape (batch,) with each sample's valid steps
        (``sequence_lens`` for a GRU, ``lengths`` for an estimator), passed to
        the ONNX GRU nodes.
    with_initial_h : bool, default=False
        Add an ``initial_h`` input of shape (num_layers * D, batch,
        hidden_size) (GRU only).

    Returns
    -------
    model_proto : onnx.ModelProto
        For a GRU: input ``X`` of shape (batch, steps, input_size) in the
        GRU's dtype, outputs ``Y`` (batch, steps, D * hidden_size) and ``Y_h``
        (num_layers * D, batch, hidden_size), as :meth:`GRU.forward`. Each
        layer is one ONNX ``GRU`` node (direction ``"forward"`` or
        ``"bidirectional"``, ``linear_before_reset`` 1 for ``reset_after``,
        else 0) running time-major, with ``Transpose`` and ``Reshape`` around
        it.

        For an estimator: input ``X`` of shape (batch, steps, n_features),
        float32 whatever ``dtype`` (a model fitted on 2d input, univariate
        series, reads shape (batch, steps, 1)), and output ``predictions``
        (batch, n_outputs) for a regressor or ``probabilities`` (batch,
        n_classes) for a classifier, both float32: the final state of the
        last layer (forward then reverse) through the linear head
        (``Gemm``), then ``Softmax`` for a classifier. A classifier whose
        ``classes_`` are numbers, booleans or strings also outputs ``label``
        (batch,), the class of highest probability, as ``predict``.

    Raises
    ------
    TypeError
        If ``model`` is neither a GRU nor a fitted numgru estimator.
    ValueError
        If ``opset`` is out of range, or the estimator's head does not fit
        its GRU.

    Examples
    --------
    >>> from numgru import GRU
    >>> from numgru.interop import to_onnx
    >>> proto = to_onnx(GRU(3, 8, num_layers=2, random_state=0), with_lengths=True)
    >>> [node.op_type for node in proto.graph.node if node.op_type == "GRU"]
    ['GRU', 'GRU']
    >>> [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    (['X', 'sequence_lens'], ['Y', 'Y_h'])
    """
    for flag_name, flag in (("with_lengths", with_lengths),
                            ("with_initial_h", with_initial_h)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{flag_name} must be True or False, got {flag!r}")
    if dtype is not None:
        dtype = _check_dtype(dtype)
    head_attributes = ("gru_", "head_weight_", "head_bias_")
    if isinstance(model, GRU):
        return _gru_to_onnx(model, _check_opset(opset), dtype or model.dtype,
                            bool(with_lengths), bool(with_initial_h), path)
    if all(hasattr(model, a) for a in head_attributes):
        if with_initial_h:
            raise ValueError("to_onnx: with_initial_h applies to a GRU, not an estimator")
        return _estimator_to_onnx(model, _check_opset(opset),
                                  dtype or np.dtype(np.float32),
                                  bool(with_lengths), path)
    if hasattr(model, "fit") and hasattr(model, "get_params"):
        from sklearn.exceptions import NotFittedError

        missing = [a for a in head_attributes if not hasattr(model, a)]
        raise NotFittedError(
            f"to_onnx: this {type(model).__name__} is not fitted yet (no "
            f"{', '.join(missing)}); call fit first")
    raise TypeError(
        f"to_onnx needs a numgru.GRU or a fitted numgru estimator, got "
        f"{type(model).__name__}")


def _onnx_attributes(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def from_onnx(model_or_path, *, dtype=None, backend="auto"):
    """Build a :class:`~numgru.GRU` from an ONNX model made of GRU nodes.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, str or path-like
        A model whose ``GRU`` nodes, in graph order, are the layers of one
        stacked GRU: each node's W, R and (optional) B are initializers (or
        ``Constant`` outputs), all nodes share ``hidden_size``, direction
        (``"forward"`` or ``"bidirectional"``) and ``linear_before_reset``,
        and use the default activations without ``clip``. Models written by
        :func:`to_onnx` and a single standard GRU node qualify; the other
        nodes (transposes, reshapes) are not interpreted.
    dtype : {"float32", "float64"} or None, default=None
        dtype of the result; None takes the dtype of the weights.
    backend : {"auto", "numba", "cython", "numpy"}, default="auto"
        Backend of the result.

    Returns
    -------
    gru : numgru.GRU
        ``reset_after`` is ``linear_before_reset == 1``; ``bias`` is False
        when no node has a B input.

    Raises
    ------
    ValueError
        If the model has no GRU node, or a node does not fit the above.

    Examples
    --------
    >>> from numgru import GRU
    >>> from numgru.interop import from_onnx, to_onnx
    >>> from_onnx(to_onnx(GRU(3, 8, bidirectional=True, random_state=0)))
    GRU(3, 8, bidirectional=True, dtype='float32')
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(model_or_path, (str, bytes, os.PathLike)):
        model = onnx.load(os.fspath(model_or_path))
    elif isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        raise TypeError(
            f"from_onnx needs an onnx.ModelProto or a path, got "
            f"{type(model_or_path).__name__}")
    graph = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attrs = _onnx_attributes(node)
            if "value" in attrs:
                tensors[node.output[0]] = numpy_helper.to_array(attrs["value"])
    gru_nodes = [n for n in graph.node
                 if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]
    if not gru_nodes:
        raise ValueError("from_onnx: the model has no GRU node")

    def weight(node, index, what):
        name = node.input[index] if len(node.input) > index else ""
        if name == "":
            return None
        if name not in tensors:
            raise ValueError(
                f"from_onnx: {what} of GRU node {node.name!r} ({name!r}) must be "
                f"an initializer or a Constant, it is computed or a graph input")
        return np.asarray(tensors[name])

    layers = []
    for node in gru_nodes:
        attrs = _onnx_attributes(node)
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in ("forward", "bidirectional"):
            raise ValueError(
                f"from_onnx: GRU node {node.name!r} has direction {direction!r}; "
                f"numgru supports 'forward' and 'bidirectional'")
        D = 2 if direction == "bidirectional" else 1
        activations = [a.decode() if isinstance(a, bytes) else a
                       for a in attrs.get("activations", [])]
        if activations and [a.lower() for a in activations] != ["sigmoid", "tanh"] * D:
            raise ValueError(
                f"from_onnx: GRU node {node.name!r} has activations {activations}; "
                f"numgru computes Sigmoid and Tanh only")
        if "clip" in attrs:
            raise ValueError(
                f"from_onnx: GRU node {node.name!r} uses clip={attrs['clip']}, "
                f"which numgru does not support")
        W = weight(node, 1, "W")
        R = weight(node, 2, "R")
        B = weight(node, 3, "B")
        if W is None or R is None:
            raise ValueError(f"from_onnx: GRU node {node.name!r} lacks W or R")
        if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 3 * R.shape[2]:
            raise ValueError(
                f"from_onnx: R of GRU node {node.name!r} must have shape "
                f"({D}, 3*hidden_size, hidden_size), got {R.shape}")
        H = R.shape[2]
        if "hidden_size" in attrs and attrs["hidden_size"] != H:
            raise ValueError(
                f"from_onnx: GRU node {node.name!r} has hidden_size="
                f"{attrs['hidden_size']} but R of shape {R.shape}")
        if W.ndim != 3 or W.shape[:2] != (D, 3 * H):
            raise ValueError(
                f"from_onnx: W of GRU node {node.name!r} must have shape "
                f"({D}, {3 * H}, input_size), got {W.shape}")
        if B is not None and B.shape != (D, 6 * H):
            raise ValueError(
                f"from_onnx: B of GRU node {node.name!r} must have shape "
                f"({D}, {6 * H}), got {B.shape}")
        layers.append({"name": node.name, "D": D, "H": H,
                       "lbr": int(attrs.get("linear_before_reset", 0)),
                       "W": W, "R": R, "B": B})

    first = layers[0]
    for k, layer in enumerate(layers[1:], start=1):
        for key, what in (("D", "direction"), ("H", "hidden_size"),
                          ("lbr", "linear_before_reset")):
            if layer[key] != first[key]:
                raise ValueError(
                    f"from_onnx: GRU nodes differ in {what} ({first['name']!r}: "
                    f"{first[key]}, {layer['name']!r}: {layer[key]}); they must "
                    f"be layers of one stacked GRU")
        if layer["W"].shape[2] != first["D"] * first["H"]:
            raise ValueError(
                f"from_onnx: GRU node {layer['name']!r} (layer {k}) has input size "
                f"{layer['W'].shape[2]}, expected {first['D'] * first['H']} (the "
                f"previous layer's output)")
    H, D = first["H"], first["D"]
    bias = any(layer["B"] is not None for layer in layers)
    perm = _swap_rz(H)
    state = {}
    for k, layer in enumerate(layers):
        for direction in range(D):
            suffix = f"l{k}{('', '_reverse')[direction]}"
            state[f"weight_ih_{suffix}"] = layer["W"][direction][perm]
            state[f"weight_hh_{suffix}"] = layer["R"][direction][perm]
            if bias:
                b = (layer["B"][direction] if layer["B"] is not None
                     else np.zeros(6 * H, dtype=layer["W"].dtype))
                state[f"bias_ih_{suffix}"] = b[:3 * H][perm]
                state[f"bias_hh_{suffix}"] = b[3 * H:][perm]
    gru = GRU(first["W"].shape[2], H, num_layers=len(layers), bias=bias,
              bidirectional=D == 2, reset_after=bool(first["lbr"]),
              dtype=_infer_dtype([layer["W"] for layer in layers], dtype),
              backend=backend)
    gru.load_state_dict(state)
    return gru
