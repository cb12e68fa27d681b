"""The GRU engine: parameters, stacking of layers and directions, validation.

The per-layer, per-direction loops run in a backend's kernels
(:mod:`numgru._reference` documents their contract); this module owns the
parameters and everything the user passes in.
"""

import functools
import numbers

import numpy as np

from ._aligned import aligned_empty
from ._backends import BACKEND_NAMES, get_backend
from ._threads import get_num_threads
from ._validation import (check_dtype, check_float_array, check_lengths,
                          check_positive_int)

__all__ = ["GRU", "ForwardCache"]


class ForwardCache:
    """What :meth:`GRU.forward` keeps for :meth:`GRU.backward`.

    Treat it as opaque: it holds the inputs, outputs and gate activations of
    every layer and direction, and the dropout masks used.
    """

    def __init__(self, model, x_shape, lengths, h0, layers):
        self.model = model
        self.x_shape = x_shape
        self.lengths = lengths
        self.h0 = h0
        # one dict per layer: input, h0s, outputs, gates, dropout mask
        self.layers = layers


# Parameter arrays start on a 64-byte boundary: the streaming step reads
# weight rows with 64-byte vector loads, which run about 1.5x faster when
# they do not straddle cache lines.
def _aligned_copy(array, dtype):
    """A C-contiguous copy of ``array`` as ``dtype`` whose data starts on a
    64-byte boundary."""
    out = aligned_empty(array.shape, dtype)
    out[...] = array
    return out


def _as_rng(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    raise TypeError(
        "random_state must be None, an integer or a numpy random generator, "
        f"got {type(random_state).__name__}")


class GRU:
    """A multi-layer, optionally bidirectional gated recurrent unit.

    Parameters carry PyTorch ``nn.GRU``'s names and shapes, so a PyTorch
    state dict converted to numpy loads as is. Input is batch first.

    Parameters
    ----------
    input_size : int
        Number of features of each input step.
    hidden_size : int
        Number of hidden units of each layer and direction.
    num_layers : int, default=1
        Number of stacked layers.
    bias : bool, default=True
        Whether the layers have ``bias_ih`` and ``bias_hh``.
    bidirectional : bool, default=False
        Whether each layer also runs over the sequence in reverse; the
        outputs of both directions are concatenated.
    reset_after : bool, default=True
        ``True`` is PyTorch's (and cuDNN's) candidate
        ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``; ``False`` is the
        Cho et al. (2014) form ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
    dropout : float, default=0.0
        Probability of zeroing each output of a layer before it feeds the next
        one; applied only in ``forward(..., training=True)``.
    dtype : {"float32", "float64"}, default="float32"
        Floating type of parameters and computations.
    backend : {"auto", "numba", "cython", "numpy"}, default="auto"
        Which kernels run; see :func:`numgru.available_backends`.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the initial parameters, drawn from U(-1/sqrt(H), 1/sqrt(H)) as
        PyTorch does.

    Attributes
    ----------
    params : dict of str to ndarray
        The live parameter arrays, in ``state_dict`` order. Updating them in
        place updates the model.

    Examples
    --------
    >>> import numpy as np, numgru
    >>> gru = numgru.GRU(input_size=3, hidden_size=8, random_state=0)
    >>> out, h_n = gru.forward(np.zeros((4, 10, 3)))
    >>> out.shape, h_n.shape
    ((4, 10, 8), (1, 4, 8))
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True,
                 bidirectional=False, reset_after=True, dropout=0.0,
                 dtype="float32", backend="auto", random_state=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        for flag_name, flag in (("bias", bias), ("bidirectional", bidirectional),
                                ("reset_after", reset_after)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{flag_name} must be True or False, got {flag!r}")
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.reset_after = bool(reset_after)
        if (isinstance(dropout, bool) or not isinstance(dropout, numbers.Real)
                or not 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.dtype = check_dtype(dtype)
        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ValueError(
                f"backend must be 'auto' or one of {', '.join(BACKEND_NAMES)}, "
                f"got {backend!r}")
        self.backend = backend
        self.params = {}
        rng = _as_rng(random_state)
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self._param_shapes().items():
            self.params[name] = _aligned_copy(
                rng.uniform(-bound, bound, size=shape), self.dtype)

    # ------------------------------------------------------------------ names
    @property
    def num_directions(self):
        """2 for a bidirectional GRU, else 1."""
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse")[:self.num_directions]

    def _param_shapes(self):
        """Ordered {name: shape} as ``nn.GRU`` lists its parameters."""
        H = self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else H * self.num_directions
            for suffix in self._suffixes():
                shapes[f"weight_ih_l{layer}{suffix}"] = (3 * H, layer_input)
                shapes[f"weight_hh_l{layer}{suffix}"] = (3 * H, H)
                if self.bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (3 * H,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (3 * H,)
        return shapes

    def _layer_params(self, layer, direction):
        """(w_ih, w_hh, b_ih, b_hh) of one layer and direction, biases zero if absent."""
        names = self._layer_names[layer][direction]
        params = self.params
        if self.bias:
            return (params[names[0]], params[names[1]], params[names[2]],
                    params[names[3]])
        zeros = self._zero_bias
        return params[names[0]], params[names[1]], zeros, zeros

    @functools.cached_property
    def _zero_bias(self):
        """The biases of a GRU without bias: zeros of shape (3H,) (never written)."""
        return np.zeros(3 * self.hidden_size, dtype=self.dtype)

    @functools.cached_property
    def _layer_names(self):
        """Parameter names per layer and direction: [layer][direction] -> 4 names."""
        return [[tuple(f"{kind}_l{layer}{suffix}" for kind in
                       ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                 for suffix in self._suffixes()]
                for layer in range(self.num_layers)]

    # ------------------------------------------------------------- state dict
    def state_dict(self):
        """Return a copy of the parameters.

        Returns
        -------
        state : dict of str to ndarray
            PyTorch ``nn.GRU`` names and shapes, e.g. ``weight_ih_l0`` of
            shape (3*hidden_size, input_size).
        """
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict):
        """Replace the parameters with those of ``state_dict``.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            Exactly the names and shapes :meth:`state_dict` returns (a PyTorch
            ``nn.GRU`` state dict of the same configuration, converted to
            numpy, qualifies). Values are copied and cast to this model's dtype.

        Raises
        ------
        ValueError
            If a name is missing or unexpected, or a shape differs.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(
                f"state_dict must be a mapping of names to arrays, got "
                f"{type(state_dict).__name__}")
        shapes = self._param_shapes()
        missing = [name for name in shapes if name not in state_dict]
        unexpected = [name for name in state_dict if name not in shapes]
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not match this GRU (num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, bias={self.bias}): "
                f"missing {missing}, unexpected {unexpected}")
        loaded = {}
        for name, shape in shapes.items():
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            loaded[name] = _aligned_copy(check_float_array(
                value, f"state_dict[{name!r}]", shape, self.dtype), self.dtype)
        self.params = loaded

    # ---------------------------------------------------------------- forward
    def _check_x(self, x, name="x"):
        return check_float_array(
            x, name, ("batch", "steps", self.input_size), self.dtype)

    def _check_state(self, h, name, n_samples):
        shape = (self.num_layers * self.num_directions, n_samples, self.hidden_size)
        if h is None:
            return np.zeros(shape, dtype=self.dtype)
        return check_float_array(h, name, shape, self.dtype)

    def forward(self, x, h0=None, lengths=None, return_cache=False,
                training=False, rng=None):
        """Run the GRU over a batch of sequences.

        Parameters
        ----------
        x : array-like of shape (batch, steps, input_size)
            Input sequences, batch first. Converted once to the model's dtype.
        h0 : array-like of shape (num_layers * D, batch, hidden_size), default=None
            Initial states (zeros when None); D is 2 when bidirectional.
        lengths : array-like of int of shape (batch,), default=None
            Valid steps of each sample, between 1 and ``steps``; None means
            all. Outputs past a sample's length are 0, its final state is the
            state at its last valid step, and the reverse direction starts
            there (PyTorch packed-sequence semantics).
        return_cache : bool, default=False
            Also return what :meth:`backward` needs.
        training : bool, default=False
            Apply dropout between layers (when ``dropout > 0``).
        rng : numpy.random.Generator, default=None
            Source of dropout masks; a fresh unseeded generator when None.

        Returns
        -------
        output : ndarray of shape (batch, steps, D * hidden_size)
            Outputs of the last layer at every step.
        h_n : ndarray of shape (num_layers * D, batch, hidden_size)
            Final state of every layer and direction.
        cache : ForwardCache
            Only when ``return_cache`` is true.
        """
        x = self._check_x(x)
        n_samples, n_steps, _ = x.shape
        lengths = check_lengths(lengths, n_samples, n_steps)
        h0 = self._check_state(h0, "h0", n_samples)
        kernels = get_backend(self.backend)
        n_threads = get_num_threads()
        H, D = self.hidden_size, self.num_directions
        apply_dropout = training and self.dropout > 0.0 and self.num_layers > 1
        if apply_dropout:
            rng = _as_rng(rng)
        no_gates = np.empty((0, 0, 0), dtype=self.dtype)
        h_n = np.empty_like(h0)
        layer_input = x
        layer_records = []
        for layer in range(self.num_layers):
            mask = None
            if apply_dropout and layer > 0:
                keep = np.asarray(1.0 - self.dropout, dtype=self.dtype)
                mask = (rng.random(layer_input.shape) < keep).astype(self.dtype) / keep
                layer_input = layer_input * mask
            outputs, gates_per_direction = [], []
            for direction in range(D):
                w_ih, w_hh, b_ih, b_hh = self._layer_params(layer, direction)
                out = np.empty((n_samples, n_steps, H), dtype=self.dtype)
                gates = (np.empty((n_samples, n_steps, 4 * H), dtype=self.dtype)
                         if return_cache else no_gates)
                index = layer * D + direction
                kernels.layer_forward(
                    layer_input, w_ih, w_hh, b_ih, b_hh, h0[index], lengths,
                    direction == 1, self.reset_after, out, h_n[index], gates,
                    n_threads)
                outputs.append(out)
                gates_per_direction.append(gates)
            if return_cache:
                layer_records.append({"input": layer_input, "mask": mask,
                                      "outputs": outputs,
                                      "gates": gates_per_direction})
            layer_input = outputs[0] if D == 1 else np.concatenate(outputs, axis=2)
        if return_cache:
            return layer_input, h_n, ForwardCache(self, x.shape, lengths, h0,
                                                  layer_records)
        return layer_input, h_n

    __call__ = forward

    # --------------------------------------------------------------- backward
    def backward(self, cache, d_output, d_h_n=None):
        """Gradients of a scalar loss, given its gradients w.r.t. the outputs.

        Parameters
        ----------
        cache : ForwardCache
            From ``forward(..., return_cache=True)`` on this model, with the
            parameters unchanged since.
        d_output : array-like of shape (batch, steps, D * hidden_size) or None
            Gradient of the loss w.r.t. ``output`` (entries past a sample's
            length are ignored); None when the loss does not depend on
            ``output`` (zeros, as for ``d_h_n``).
        d_h_n : array-like of shape (num_layers * D, batch, hidden_size), default=None
            Gradient of the loss w.r.t. ``h_n``; zeros when None.

        Returns
        -------
        grads : dict of str to ndarray
            Gradient of every parameter, with :meth:`state_dict`'s names.
        d_x : ndarray of shape (batch, steps, input_size)
            Gradient w.r.t. ``x`` (0 past each sample's length).
        d_h0 : ndarray of shape (num_layers * D, batch, hidden_size)
            Gradient w.r.t. ``h0``.
        """
        if not isinstance(cache, ForwardCache):
            raise TypeError(
                "cache must be the ForwardCache returned by "
                "forward(..., return_cache=True)")
        if cache.model is not self:
            raise ValueError("cache was made by another GRU's forward")
        n_samples, n_steps, _ = cache.x_shape
        H, D = self.hidden_size, self.num_directions
        if d_output is None:
            d_output = np.zeros((n_samples, n_steps, D * H), dtype=self.dtype)
        else:
            d_output = check_float_array(
                d_output, "d_output", (n_samples, n_steps, D * H), self.dtype)
        d_h_n = self._check_state(d_h_n, "d_h_n", n_samples)
        kernels = get_backend(self.backend)
        n_threads = get_num_threads()
        lengths = cache.lengths
        grads = {}
        d_h0 = np.empty_like(d_h_n)
        d_layer_output = d_output
        for layer in range(self.num_layers - 1, -1, -1):
            record = cache.layers[layer]
            layer_input = record["input"]
            d_layer_input = None
            for direction in range(D):
                w_ih, w_hh, _, _ = self._layer_params(layer, direction)
                d_out = np.ascontiguousarray(
                    d_layer_output[:, :, direction * H:(direction + 1) * H])
                index = layer * D + direction
                d_x = np.empty_like(layer_input)
                d_w_ih = np.empty_like(w_ih)
                d_w_hh = np.empty_like(w_hh)
                d_b_ih = np.empty(3 * H, dtype=self.dtype)
                d_b_hh = np.empty(3 * H, dtype=self.dtype)
                kernels.layer_backward(
                    layer_input, w_ih, w_hh, cache.h0[index], lengths,
                    direction == 1, self.reset_after, record["outputs"][direction],
                    record["gates"][direction], d_out, d_h_n[index], d_x,
                    d_h0[index], d_w_ih, d_w_hh, d_b_ih, d_b_hh, n_threads)
                names = self._layer_names[layer][direction]
                grads[names[0]] = d_w_ih
                grads[names[1]] = d_w_hh
                if self.bias:
                    grads[names[2]] = d_b_ih
                    grads[names[3]] = d_b_hh
                if d_layer_input is None:
                    d_layer_input = d_x
                else:
                    d_layer_input += d_x
            if record["mask"] is not None:
                d_layer_input *= record["mask"]
            d_layer_output = d_layer_input
        ordered = {name: grads[name] for name in self.params}
        return ordered, d_layer_output, d_h0

    # ------------------------------------------------------------------- step
    # The step runs through the backend's step_forward when it has one. It
    # takes arrays already in final form (C-contiguous, of the model's
    # dtype, with the expected shapes, finite) as they are and declines
    # anything else, which then goes through the full validation of
    # _step_checked and is passed again, converted: both ways give the same
    # bits. The kernels look the weights up in ``params`` at every call.
    _step_plan = None

    def step(self, x_t, h=None):
        """Advance a unidirectional GRU by one step (streaming inference).

        Parameters
        ----------
        x_t : array-like of shape (batch, input_size)
            Input at this step.
        h : array-like of shape (num_layers, batch, hidden_size), default=None
            State before this step (zeros when None).

        Returns
        -------
        h_new : ndarray of shape (num_layers, batch, hidden_size)
            State after this step; ``h_new[-1]`` is the last layer's output.

        Notes
        -----
        Equal to one step of :meth:`forward` up to rounding: the compiled
        backends compute each gate as a dot product over one row of the
        weights, in an order fixed by the code, so a sample's result does
        not depend on the rest of the batch or the thread count.
        """
        if self.bidirectional:
            raise ValueError(
                "step needs a unidirectional GRU: a bidirectional one needs the "
                "whole sequence")
        plan = self._step_plan
        backend = self.backend
        if (plan is None or plan[0] is not self.params or plan[1] != backend
                or (backend == "auto" and plan[2] is not get_backend(backend))):
            plan = self._make_step_plan()
        if plan[3] is not None:
            h_new = plan[3](x_t, h, plan[4], self.reset_after)
            if h_new is not None:
                return h_new
        return self._step_checked(x_t, h, plan)

    def _make_step_plan(self):
        """(params, backend name, kernel module, its step_forward or None,
        the weights as step_forward takes them), kept on the model."""
        kernels = get_backend(self.backend)
        forward = getattr(kernels, "step_forward", None)
        prepare = getattr(kernels, "step_prepare", None)
        prepared = None
        if forward is None or prepare is None or type(self.params) is not dict:
            forward = None
        else:
            prepared = prepare(self.params, *self._step_names())
        plan = (self.params, self.backend, kernels, forward, prepared)
        self._step_plan = plan
        return plan

    def _step_names(self):
        """Names of ``w_ih`` and ``w_hh`` of every layer, and of ``b_ih`` and
        ``b_hh`` of every layer (None without bias)."""
        weights = tuple(name for layer in self._layer_names
                        for name in layer[0][:2])
        biases = tuple(name for layer in self._layer_names
                       for name in layer[0][2:])
        return weights, (biases if self.bias else None)

    def _step_params(self):
        """The parameters the step reads, checked and converted to arrays of
        the model's dtype: {name: C-contiguous array}."""
        shapes = self._param_shapes()
        weights, biases = self._step_names()
        params = {}
        for name in weights + (biases or ()):
            value = self.params[name]
            if not isinstance(value, np.ndarray) or value.shape != shapes[name]:
                raise ValueError(
                    f"params[{name!r}] must be an array of shape "
                    f"{shapes[name]}, got "
                    f"{getattr(value, 'shape', type(value).__name__)}")
            params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        return params

    def _step_checked(self, x_t, h, plan):
        """:meth:`step` with full validation and conversion of its input."""
        x_t = check_float_array(x_t, "x_t", ("batch", self.input_size), self.dtype)
        h = self._check_state(h, "h", x_t.shape[0])
        n_threads = get_num_threads()
        params = self._step_params()
        weights, biases = self._step_names()
        kernels = plan[2]
        if plan[3] is not None:
            prepared = kernels.step_prepare(params, weights, biases)
            h_new = plan[3](x_t, h, prepared, self.reset_after, n_threads)
            if h_new is not None:
                return h_new
        h_new = np.empty_like(h)
        layer_input = x_t
        for layer in range(self.num_layers):
            w_ih, w_hh = params[weights[2 * layer]], params[weights[2 * layer + 1]]
            if biases is None:
                b_ih = b_hh = self._zero_bias
            else:
                b_ih = params[biases[2 * layer]]
                b_hh = params[biases[2 * layer + 1]]
            kernels.cell_forward(layer_input, w_ih, w_hh, b_ih, b_hh, h[layer],
                                 self.reset_after, h_new[layer], n_threads)
            layer_input = h_new[layer]
        return h_new

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_step_plan", None)
        return state

    def __setstate__(self, state):
        # an unpickled dtype is a new object equal to numpy's own: numpy's
        # is put back (the step kernels compare dtype objects first) and the
        # parameters are copied to aligned arrays again
        dtype = state.get("dtype")
        if isinstance(dtype, np.dtype) and dtype.isnative:
            state["dtype"] = dtype = np.dtype(dtype.name)
        params = state.get("params")
        if isinstance(params, dict):
            state["params"] = {
                name: (_aligned_copy(value, dtype) if isinstance(value, np.ndarray)
                       and value.dtype == dtype else value)
                for name, value in params.items()}
        self.__dict__.update(state)

    def __repr__(self):
        options = [f"{self.input_size}", f"{self.hidden_size}"]
        defaults = {"num_layers": 1, "bias": True, "bidirectional": False,
                    "reset_after": True, "dropout": 0.0, "backend": "auto"}
        for name, default in defaults.items():
            if getattr(self, name) != default:
                options.append(f"{name}={getattr(self, name)!r}")
        options.append(f"dtype='{self.dtype.name}'")
        return f"GRU({', '.join(options)})"
