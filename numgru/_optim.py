"""Stochastic optimizers that update parameter arrays in place.

Each optimizer is built from the list of parameter arrays it will update
(for their shapes and common dtype) and, for every minibatch, receives that
list again with the gradients in the same order. Updates are written into
the parameter arrays themselves, so a model holding them, such as
:class:`numgru.gru.GRU`, sees the new values without copying. The optimizer
keeps no reference to the parameters (only its own state, in the
parameters' dtype), so it pickles independently of the model.
"""

import math

import numpy as np

from ._backends import loaded_numba_function

__all__ = ["AdamOptimizer", "SGDOptimizer", "clip_grad_norm"]


def _adam_kernel():
    """The compiled one-pass Adam step once the Numba backend is loaded, else
    None (other backends do not import Numba for it). Both give the same
    bits."""
    return loaded_numba_function("adam_step")


def clip_grad_norm(grads, max_norm):
    """Scale gradients in place so that their global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    grads : list of ndarray
        Gradients of all parameters.
    max_norm : float
        Largest allowed norm of all gradients taken together.

    Returns
    -------
    total_norm : float
        Global norm before clipping.
    """
    total_norm = float(np.sqrt(sum(float(np.dot(g.ravel(), g.ravel()))
                                   for g in grads)))
    if total_norm > max_norm:
        factor = max_norm / (total_norm + 1e-6)
        for grad in grads:
            grad *= grad.dtype.type(factor)
    return total_norm


class BaseOptimizer:
    """Common interface of the stochastic optimizers.

    The optimizer's state (moments, velocities) is held in flat arrays, one
    value per parameter value, so that an update runs a few operations over
    all parameters at once rather than a few per parameter array. Each value
    goes through the same operations, in the same order, as it would one
    array at a time.

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and one common
        dtype).
    learning_rate_init : float, default=0.1
        Step size.

    Attributes
    ----------
    learning_rate : float
        Current step size.
    """

    def __init__(self, params, learning_rate_init=0.1):
        dtypes = {np.dtype(param.dtype) for param in params}
        if len(dtypes) > 1:
            raise ValueError(
                f"params must share one dtype, got {sorted(map(str, dtypes))}")
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self._shapes = [tuple(param.shape) for param in params]
        self._dtype = dtypes.pop() if dtypes else np.dtype(np.float64)

    def _zeros(self):
        """A flat state array: one zero per parameter value."""
        return np.zeros(sum(math.prod(shape) for shape in self._shapes),
                        dtype=self._dtype)

    def _per_param(self, flat):
        """Views of a flat state array, one per parameter, in their shapes."""
        views, start = [], 0
        for shape in self._shapes:
            size = math.prod(shape)
            views.append(flat[start:start + size].reshape(shape))
            start += size
        return views

    def update_params(self, params, grads):
        """Apply one update step to the parameters, in place.

        Parameters
        ----------
        params : list of ndarray
            Parameter arrays, in the order the optimizer was built with;
            modified in place.
        grads : list of ndarray
            Gradients, in the same order and shapes as ``params``.
        """
        if len(grads) != len(params) or len(params) != len(self._shapes):
            raise ValueError(f"expected one gradient per parameter "
                             f"({len(self._shapes)}), got {len(grads)} "
                             f"gradients for {len(params)} parameters")
        for grad, shape in zip(grads, self._shapes):
            if grad.shape != shape:
                raise ValueError(f"expected gradients of shapes {self._shapes}, "
                                 f"got one of shape {grad.shape}")
        grad = np.concatenate(grads, axis=None).astype(self._dtype, copy=False)
        for param, update in zip(params, self._per_param(self._get_updates(grad))):
            param += update

    def _get_updates(self, grad):
        """The flat update of all parameters from their flat gradient
        (which the optimizer owns and may overwrite)."""
        raise NotImplementedError

    def iteration_ends(self, time_step):
        """Hook called at the end of each epoch; does nothing by default.

        Parameters
        ----------
        time_step : int
            Number of training samples seen so far.
        """

    def trigger_stopping(self, msg, verbose):
        """Decide whether training stops when it no longer improves.

        Parameters
        ----------
        msg : str
            Reason printed when ``verbose``.
        verbose : bool
            Whether to print the reason.

        Returns
        -------
        stop : bool
            Always True for these optimizers.
        """
        if verbose:
            print(msg + " Stopping.")
        return True

    # Optimizers pickled by earlier numgru versions hold their state as lists
    # of per-parameter arrays under these names; unpickling flattens them.
    _LISTED_STATE = {"ms": "_m", "vs": "_v", "velocities": "_velocity"}

    def __setstate__(self, state):
        for listed, flat in self._LISTED_STATE.items():
            arrays = state.pop(listed, None)
            if arrays is None:
                continue
            dtype = state.setdefault("_dtype", np.dtype(
                arrays[0].dtype if arrays else np.float64))
            state.setdefault("_shapes", [tuple(array.shape) for array in arrays])
            state[flat] = np.concatenate(
                [np.ravel(array) for array in arrays] or [np.zeros(0)]
            ).astype(dtype)
        self.__dict__.update(state)


class SGDOptimizer(BaseOptimizer):
    """Stochastic gradient descent with (Nesterov) momentum.

    ``velocity = momentum * velocity - learning_rate * grad``; the update is
    ``velocity`` (classical momentum) or
    ``momentum * velocity - learning_rate * grad`` (Nesterov).

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and one common
        dtype).
    learning_rate_init : float, default=0.1
        Step size.
    momentum : float, default=0.9
        Momentum factor in [0, 1].
    nesterov : bool, default=True
        Use Nesterov's momentum.

    Attributes
    ----------
    velocities : list of ndarray
        Momentum buffers, one per parameter.
    """

    def __init__(self, params, learning_rate_init=0.1, momentum=0.9,
                 nesterov=True):
        super().__init__(params, learning_rate_init)
        self.momentum = momentum
        self.nesterov = nesterov
        self._velocity = self._zeros()

    @property
    def velocities(self):
        """list of ndarray: the momentum buffer of each parameter (views)."""
        return self._per_param(self._velocity)

    def _get_updates(self, grad):
        cast = self._dtype.type
        velocity = self._velocity
        velocity *= cast(self.momentum)
        grad *= cast(self.learning_rate)
        velocity -= grad
        if not self.nesterov:
            return velocity
        update = cast(self.momentum) * velocity
        update -= grad
        return update


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma and Ba, 2014), as in scikit-learn's MLP.

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and one common
        dtype).
    learning_rate_init : float, default=0.001
        Step size.
    beta_1 : float, default=0.9
        Decay rate of the first moment estimate, in [0, 1).
    beta_2 : float, default=0.999
        Decay rate of the second moment estimate, in [0, 1).
    epsilon : float, default=1e-8
        Added to the denominator for numerical stability.

    Attributes
    ----------
    t : int
        Number of update steps taken.
    ms : list of ndarray
        First moment estimates.
    vs : list of ndarray
        Second moment estimates.
    """

    def __init__(self, params, learning_rate_init=0.001, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8):
        super().__init__(params, learning_rate_init)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.t = 0
        self._m = self._zeros()
        self._v = self._zeros()

    @property
    def ms(self):
        """list of ndarray: the first moment of each parameter (views)."""
        return self._per_param(self._m)

    @property
    def vs(self):
        """list of ndarray: the second moment of each parameter (views)."""
        return self._per_param(self._v)

    def _get_updates(self, grad):
        self.t += 1
        self.learning_rate = (self.learning_rate_init
                              * np.sqrt(1 - self.beta_2 ** self.t)
                              / (1 - self.beta_1 ** self.t))
        cast = self._dtype.type
        m, v = self._m, self._v
        kernel = _adam_kernel()
        if kernel is not None:
            kernel(grad, m, v, cast(self.beta_1), cast(1 - self.beta_1),
                   cast(self.beta_2), cast(1 - self.beta_2),
                   cast(-self.learning_rate), cast(self.epsilon))
            return grad
        m *= cast(self.beta_1)
        m += cast(1 - self.beta_1) * grad
        v *= cast(self.beta_2)
        grad *= grad
        grad *= cast(1 - self.beta_2)
        v += grad
        update = cast(-self.learning_rate) * m
        denominator = np.sqrt(v)
        denominator += cast(self.epsilon)
        update /= denominator
        return update
