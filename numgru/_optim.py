"""Stochastic optimizers that update parameter arrays in place.

Each optimizer is built from the list of parameter arrays it will update
(for their shapes and dtypes) and, for every minibatch, receives that list
again with the gradients in the same order. Updates are written into the
parameter arrays themselves, so a model holding them, such as
:class:`numgru.gru.GRU`, sees the new values without copying. The optimizer
keeps no reference to the parameters (only its own state, in the
parameters' dtype), so it pickles independently of the model.
"""

import numpy as np

__all__ = ["AdamOptimizer", "SGDOptimizer", "clip_grad_norm"]


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

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and dtypes).
    learning_rate_init : float, default=0.1
        Step size.

    Attributes
    ----------
    learning_rate : float
        Current step size.
    """

    def __init__(self, params, learning_rate_init=0.1):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)

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
        if len(grads) != len(params):
            raise ValueError(f"expected one gradient per parameter, got "
                             f"{len(grads)} gradients for {len(params)} "
                             f"parameters")
        for param, update in zip(params, self._get_updates(grads)):
            param += update

    def _get_updates(self, grads):
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


class SGDOptimizer(BaseOptimizer):
    """Stochastic gradient descent with (Nesterov) momentum.

    ``velocity = momentum * velocity - learning_rate * grad``; the update is
    ``velocity`` (classical momentum) or
    ``momentum * velocity - learning_rate * grad`` (Nesterov).

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and dtypes).
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
        self.velocities = [np.zeros_like(param) for param in params]

    def _get_updates(self, grads):
        updates = []
        for velocity, grad in zip(self.velocities, grads):
            velocity *= velocity.dtype.type(self.momentum)
            velocity -= velocity.dtype.type(self.learning_rate) * grad
            if self.nesterov:
                updates.append(velocity.dtype.type(self.momentum) * velocity
                               - velocity.dtype.type(self.learning_rate) * grad)
            else:
                updates.append(velocity)
        return updates


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma and Ba, 2014), as in scikit-learn's MLP.

    Parameters
    ----------
    params : list of ndarray
        Parameter arrays the optimizer will update (shapes and dtypes).
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
        self.ms = [np.zeros_like(param) for param in params]
        self.vs = [np.zeros_like(param) for param in params]

    def _get_updates(self, grads):
        self.t += 1
        self.learning_rate = (self.learning_rate_init
                              * np.sqrt(1 - self.beta_2 ** self.t)
                              / (1 - self.beta_1 ** self.t))
        updates = []
        for m, v, grad in zip(self.ms, self.vs, grads):
            cast = m.dtype.type
            m *= cast(self.beta_1)
            m += cast(1 - self.beta_1) * grad
            v *= cast(self.beta_2)
            v += cast(1 - self.beta_2) * (grad * grad)
            updates.append(cast(-self.learning_rate) * m
                           / (np.sqrt(v) + cast(self.epsilon)))
        return updates
