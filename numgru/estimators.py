"""scikit-learn estimators built on the GRU engine.

The model is a stack of GRU layers read out at the last valid time step of
each series (for a bidirectional stack, the last layer's forward and reverse
final states side by side), followed by a linear head: identity output with
squared error for :class:`GRURegressor`, softmax with cross-entropy for
:class:`GRUClassifier`. Training is minibatch Adam or SGD, modelled on
scikit-learn's :class:`~sklearn.neural_network.MLPRegressor` and
:class:`~sklearn.neural_network.MLPClassifier`.
"""

import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import (BaseEstimator, ClassifierMixin, RegressorMixin,
                          _fit_context)
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import (_check_partial_fit_first_call,
                                      check_classification_targets)
from sklearn.utils.validation import (_check_sample_weight, check_array,
                                      check_consistent_length, column_or_1d)

from numgru._optim import AdamOptimizer, SGDOptimizer, clip_grad_norm
from numgru._sequences import check_sequences
from numgru._threads import thread_limit
from numgru.gru import GRU

__all__ = ["GRURegressor", "GRUClassifier"]

_PREDICT_CHUNK = 1024


def _batches(n_samples, batch_size):
    """Slices of ``batch_size`` consecutive samples, the last one shorter
    when needed: what ``sklearn.utils.gen_batches`` gives, without the
    argument validation it runs on every call (about 80 us, more than a
    forward pass over one short series)."""
    return [slice(start, min(start + batch_size, n_samples))
            for start in range(0, n_samples, batch_size)]


def _num_threads(n_jobs):
    """Context in which numgru's kernels use the thread count ``n_jobs`` asks for."""
    if n_jobs is None:
        return thread_limit(None)
    n_cpus = os.cpu_count() or 1
    return thread_limit(n_jobs if n_jobs > 0 else max(1, n_cpus + 1 + n_jobs))


_SHARED_PARAMETERS_DOC = """
    hidden_size : int, default=64
        Number of hidden units of each GRU layer (per direction).

    num_layers : int, default=1
        Number of stacked GRU layers.

    bidirectional : bool, default=False
        Run each layer in both directions. The head then reads the last
        layer's forward final state and its reverse final state (the reverse
        direction's state after reading the series back to its first step),
        concatenated.

    dropout : float, default=0.0
        Dropout probability applied between stacked layers during training
        (no effect with ``num_layers=1``).

    reset_after : bool, default=True
        GRU variant: ``True`` applies the reset gate after the recurrent
        matrix product (PyTorch, cuDNN, Keras default); ``False`` is the
        original formulation of Cho et al. (2014).

    solver : {"adam", "sgd"}, default="adam"
        Stochastic optimizer.

    learning_rate_init : float, default=1e-3
        Step size.

    batch_size : int or "auto", default=32
        Minibatch size; "auto" means ``min(200, n_samples)``. A value larger
        than the number of training samples means full batches.

    max_iter : int, default=200
        Maximum number of epochs (passes over the training data).

    alpha : float, default=1e-4
        Strength of the L2 penalty on the weight matrices (GRU input and
        recurrent weights and head weights, not biases). As in
        scikit-learn's MLP, a minibatch's loss gains
        ``0.5 * alpha * sum(||W||^2) / n``, where ``n`` is the number of
        samples in the minibatch (the sum of their weights when
        ``sample_weight`` is given).

    momentum : float, default=0.9
        Momentum of the SGD solver, in [0, 1].

    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum with the SGD solver.

    beta_1 : float, default=0.9
        Decay rate of Adam's first moment estimates, in [0, 1).

    beta_2 : float, default=0.999
        Decay rate of Adam's second moment estimates, in [0, 1).

    epsilon : float, default=1e-8
        Numerical stability constant of Adam.

    clip_grad_norm : float or None, default=None
        When set, rescale each minibatch's gradients (all parameters taken
        together) so that their global L2 norm is at most this value.

    shuffle : bool, default=True
        Shuffle the samples at every epoch.

    tol : float, default=1e-4
        Tolerance: when the training loss (or, with early stopping, the
        validation score) does not improve by at least ``tol`` for
        ``n_iter_no_change`` consecutive epochs, training stops.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified
        for the classifier) and stop when the validation score stops
        improving; the weights of the best epoch are restored at the end.

    validation_fraction : float, default=0.1
        Share of the training data held out with early stopping, in (0, 1).

    n_iter_no_change : int, default=10
        Number of epochs without improvement tolerated before stopping.

    warm_start : bool, default=False
        Start ``fit`` from the current weights instead of new random ones
        (the optimizer state is started afresh).

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, the validation split and
        dropout. With an int, ``fit`` is bitwise reproducible whatever
        ``n_jobs`` and ``backend`` thread settings are.

    verbose : bool, default=False
        Print one line per epoch with the training loss, the validation
        score (with early stopping) and the time the epoch took, e.g.
        ``Iteration 3, loss = 0.12345678, validation score = 0.900000,
        time = 0.41s``.

    backend : {"auto", "numba", "cython", "numpy"}, default="auto"
        GRU kernels to use (see :class:`numgru.gru.GRU`). Only the name is
        stored, so fitted estimators pickle without compiled code.

    dtype : {"float32", "float64"}, default="float32"
        Floating type of the weights and computations.

    n_jobs : int or None, default=None
        Number of threads used by the GRU kernels during ``fit`` and
        prediction; ``None`` keeps :func:`numgru.get_num_threads`, negative
        values count back from the number of CPUs (-1 means all). The
        previous setting is restored afterwards. Results do not depend on it.
"""

_SHARED_ATTRIBUTES_DOC = """
    gru_ : numgru.gru.GRU
        The fitted GRU stack; its ``params`` use PyTorch's ``nn.GRU`` names.

    head_weight_ : ndarray of shape (n_outputs, D * hidden_size)
        Weights of the linear head (D is 2 when bidirectional, else 1).

    head_bias_ : ndarray of shape (n_outputs,)
        Bias of the linear head.

    n_outputs_ : int
        Number of outputs of the head.

    loss_ : float
        Training loss of the last epoch (including the L2 penalty).

    loss_curve_ : list of float
        Training loss of each epoch.

    validation_scores_ : list of float or None
        Validation score of each epoch with ``early_stopping=True``, else
        None.

    best_loss_ : float or None
        Lowest training loss reached; None with early stopping.

    best_validation_score_ : float or None
        Best validation score with early stopping, else None.

    n_iter_ : int
        Number of epochs run by the last ``fit``; ``partial_fit`` adds one
        per call.

    t_ : int
        Number of training samples seen by the optimizer.

    n_features_in_ : int
        Number of features seen in ``fit``: ``n_timesteps`` for 2d input
        (a batch of univariate series, as scikit-learn counts columns) and
        ``n_features`` (values per time step) for 3d or list input.

    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``fit`` got a 2d data frame with string column
        names.

    n_channels_ : int
        Values per time step the GRU reads (1 for 2d input).

    input_kind_ : {"2d", "3d", "list"}
        Kind of input ``X`` seen in ``fit``.
"""

_X_DOC = """X : array-like of shape (n_samples, n_timesteps, n_features) or \
(n_samples, n_timesteps), or list of array-like of shape \
(n_timesteps_i, n_features) or (n_timesteps_i,)
            Input series. A 2d array is a batch of univariate series; a list
            holds series of possibly different lengths."""


def _fill_doc(cls):
    cls.__doc__ = (cls.__doc__
                   .replace("%(shared_parameters)s", _SHARED_PARAMETERS_DOC.strip("\n"))
                   .replace("%(shared_attributes)s", _SHARED_ATTRIBUTES_DOC.strip("\n")))
    return cls


class BaseGRUEstimator(BaseEstimator):
    """Shared training and prediction code of the GRU estimators.

    Not meant to be used directly; see :class:`GRURegressor` and
    :class:`GRUClassifier` for the parameters.
    """

    _parameter_constraints = {
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "num_layers": [Interval(Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "reset_after": ["boolean"],
        "solver": [StrOptions({"adam", "sgd"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [StrOptions({"auto"}),
                       Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "clip_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "shuffle": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "backend": [StrOptions({"auto", "numba", "cython", "numpy"})],
        "dtype": [StrOptions({"float32", "float64"})],
        "n_jobs": [Interval(Integral, None, -1, closed="right"),
                   Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, hidden_size=64, *, num_layers=1, bidirectional=False,
                 dropout=0.0, reset_after=True, solver="adam",
                 learning_rate_init=1e-3, batch_size=32, max_iter=200,
                 alpha=1e-4, momentum=0.9, nesterovs_momentum=True,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, clip_grad_norm=None,
                 shuffle=True, tol=1e-4, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10,
                 warm_start=False, random_state=None, verbose=False,
                 backend="auto", dtype="float32", n_jobs=None):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.reset_after = reset_after
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.alpha = alpha
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.clip_grad_norm = clip_grad_norm
        self.shuffle = shuffle
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.backend = backend
        self.dtype = dtype
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------- hooks
    # Subclasses define the target handling and the loss.

    def _validate_targets(self, y, first_pass, classes=None):
        raise NotImplementedError

    def _loss_and_output_grad(self, outputs, y, sample_weight, weight_sum):
        raise NotImplementedError

    def _validation_score(self, outputs, y, sample_weight):
        raise NotImplementedError

    # --------------------------------------------------------- model pieces

    @property
    def _n_directions(self):
        return 2 if self.bidirectional else 1

    def _initialize(self, n_channels, n_outputs):
        """Create the GRU, the head, and reset the training history."""
        random_state = self._random_state
        self.gru_ = GRU(
            n_channels, self.hidden_size, num_layers=self.num_layers,
            bias=True, bidirectional=self.bidirectional,
            reset_after=self.reset_after, dropout=self.dropout,
            dtype=self.dtype, backend=self.backend,
            random_state=int(random_state.randint(np.iinfo(np.int32).max)))
        n_head_inputs = self._n_directions * self.hidden_size
        bound = np.sqrt(6.0 / (n_head_inputs + n_outputs))
        self.head_weight_ = random_state.uniform(
            -bound, bound, (n_outputs, n_head_inputs)).astype(self.dtype)
        self.head_bias_ = np.zeros(n_outputs, dtype=self.dtype)
        self.n_outputs_ = n_outputs
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self._init_stopping_state()

    def _init_stopping_state(self):
        """Reset what the stopping criterion tracks, for the current setting."""
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _parameter_arrays(self):
        """All trainable arrays (live references), GRU first, then the head."""
        return list(self.gru_.params.values()) + [self.head_weight_,
                                                  self.head_bias_]

    def _last_hidden(self, h_n):
        """Read-out features (B, D*H) from the final states ``h_n``."""
        if self.bidirectional:
            return np.concatenate([h_n[-2], h_n[-1]], axis=1)
        return h_n[-1]

    def _head(self, features):
        return features @ self.head_weight_.T + self.head_bias_

    def _raw_outputs(self, values, lengths, full=False):
        """Head outputs (n_samples, n_outputs) for a padded batch; ``full``
        when every length is ``values.shape[1]`` (no per-chunk lengths to
        check then)."""
        n_samples = values.shape[0]
        outputs = np.empty((n_samples, self.n_outputs_), dtype=self.dtype)
        for chunk in _batches(n_samples, _PREDICT_CHUNK):
            if full:
                x, chunk_lengths = values[chunk], None
            else:
                chunk_lengths = lengths[chunk]
                n_steps = int(chunk_lengths.max())
                x = np.ascontiguousarray(values[chunk, :n_steps])
            _, h_n = self.gru_.forward(x, lengths=chunk_lengths)
            outputs[chunk] = self._head(self._last_hidden(h_n))
        return outputs

    def _predict_outputs(self, X):
        """Validate ``X`` and return the head outputs as float64."""
        # scikit-learn's check_is_fitted, narrowed to the attributes the
        # predictions read (_initialize sets them together, n_outputs_
        # last) and without its look through the tags and attributes
        if not hasattr(self, "n_outputs_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call "
                f"'fit' with appropriate arguments before using this "
                f"estimator.")
        batch = check_sequences(X, dtype=self.dtype, estimator=self,
                                reset=False)
        with _num_threads(self.n_jobs):
            # arrays (not lists) hold series of one length
            outputs = self._raw_outputs(batch.values, batch.lengths,
                                        full=batch.kind != "list")
        return outputs.astype(np.float64)

    # -------------------------------------------------------------- training

    def _train_batch(self, values, lengths, y, sample_weight):
        """One forward/backward pass and optimizer step; return the loss."""
        if sample_weight is not None and not sample_weight.sum() > 0:
            return 0.0
        loss, grad_list = self._loss_and_gradients(values, lengths, y,
                                                   sample_weight)
        if self.clip_grad_norm is not None:
            clip_grad_norm(grad_list, self.clip_grad_norm)
        self._optimizer.update_params(self._parameter_arrays(), grad_list)
        return loss

    def _loss_and_gradients(self, values, lengths, y, sample_weight):
        """Minibatch loss (with L2 penalty) and gradients of all parameters.

        The gradients are listed in the order of ``_parameter_arrays``.
        """
        gru = self.gru_
        if sample_weight is None:
            weight_sum = float(values.shape[0])
        else:
            weight_sum = float(sample_weight.sum())
        _, h_n, cache = gru.forward(
            values, lengths=lengths, return_cache=True, training=True,
            rng=self._dropout_rng)
        features = self._last_hidden(h_n)
        outputs = self._head(features)
        loss, d_outputs = self._loss_and_output_grad(
            outputs, y, sample_weight, weight_sum)
        d_outputs = d_outputs.astype(self.dtype, copy=False)

        penalty_scale = self.alpha / weight_sum
        weight_names = [name for name in gru.params if name.startswith("weight")]
        # summed in the parameters' dtype, as scikit-learn's MLP does
        squared_norm = sum(
            float(np.einsum("ij,ij->", weight, weight))
            for weight in [self.head_weight_]
            + [gru.params[name] for name in weight_names])
        loss += 0.5 * penalty_scale * squared_norm

        cast = np.dtype(self.dtype).type
        d_head_weight = d_outputs.T @ features
        d_head_weight += cast(penalty_scale) * self.head_weight_
        d_head_bias = d_outputs.sum(axis=0)
        d_features = d_outputs @ self.head_weight_
        d_h_n = np.zeros_like(h_n)
        hidden = self.hidden_size
        if self.bidirectional:
            d_h_n[-2] = d_features[:, :hidden]
            d_h_n[-1] = d_features[:, hidden:]
        else:
            d_h_n[-1] = d_features
        grads, _, _ = gru.backward(cache, None, d_h_n)
        for name in weight_names:
            grads[name] += cast(penalty_scale) * gru.params[name]
        grad_list = [grads[name] for name in gru.params]
        grad_list += [d_head_weight, d_head_bias]
        return loss, grad_list

    def _snapshot(self):
        return [array.copy() for array in self._parameter_arrays()]

    def _restore(self, snapshot):
        for array, saved in zip(self._parameter_arrays(), snapshot):
            array[...] = saved

    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the "
                f"target y is None.")
        fitted = hasattr(self, "gru_")
        first_pass = not fitted or (not self.warm_start and not incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")

        batch = check_sequences(X, dtype=self.dtype, estimator=self,
                                reset=first_pass)
        y_encoded, n_outputs = self._validate_targets(y, first_pass, classes)
        check_consistent_length(batch.lengths, y_encoded)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, batch.lengths, dtype=np.float64,
                ensure_non_negative=True)

        if not incremental or not hasattr(self, "_random_state"):
            self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(batch.n_channels, n_outputs)
        else:
            if n_outputs != self.n_outputs_:
                raise ValueError(
                    f"y has {n_outputs} outputs but the fitted model has "
                    f"{self.n_outputs_}; refit with warm_start=False")
            if (self.best_loss_ is None) != bool(self.early_stopping):
                self._init_stopping_state()
        if not incremental or not hasattr(self, "_optimizer"):
            self._make_optimizer()
        if not incremental or not hasattr(self, "_dropout_rng"):
            self._dropout_rng = np.random.default_rng(
                self._random_state.randint(np.iinfo(np.int32).max))

        with _num_threads(self.n_jobs):
            self._fit_stochastic(batch, y_encoded, sample_weight, incremental)
        return self

    def _make_optimizer(self):
        params = self._parameter_arrays()
        if self.solver == "sgd":
            self._optimizer = SGDOptimizer(
                params, self.learning_rate_init, self.momentum,
                self.nesterovs_momentum)
        else:
            self._optimizer = AdamOptimizer(
                params, self.learning_rate_init, self.beta_1, self.beta_2,
                self.epsilon)

    def _fit_stochastic(self, batch, y, sample_weight, incremental):
        values, lengths = batch.values, batch.lengths
        n_total = values.shape[0]
        all_indices = np.arange(n_total)
        early_stopping = self.early_stopping
        if early_stopping:
            stratify = y if isinstance(self, ClassifierMixin) else None
            train_indices, val_indices = train_test_split(
                all_indices, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
            if val_indices.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase "
                    "'validation_fraction' or the size of your dataset.")
            val_values = values[val_indices]
            val_lengths = lengths[val_indices]
            val_y = y[val_indices]
            val_weight = (None if sample_weight is None
                          else sample_weight[val_indices])
        else:
            train_indices = all_indices
        n_samples = train_indices.shape[0]

        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            batch_size = min(self.batch_size, n_samples)

        if not incremental:
            self.n_iter_ = 0
            self._no_improvement_count = 0
        best_snapshot = None
        try:
            for _ in range(1 if incremental else self.max_iter):
                epoch_start = time.perf_counter()
                if self.shuffle:
                    order = train_indices[
                        self._random_state.permutation(n_samples)]
                else:
                    order = train_indices
                accumulated_loss = 0.0
                for batch_slice in _batches(n_samples, batch_size):
                    indices = order[batch_slice]
                    batch_lengths = lengths[indices]
                    n_steps = int(batch_lengths.max())
                    batch_values = np.ascontiguousarray(
                        values[indices, :n_steps])
                    batch_weight = (None if sample_weight is None
                                    else sample_weight[indices])
                    batch_loss = self._train_batch(
                        batch_values, batch_lengths, y[indices], batch_weight)
                    accumulated_loss += batch_loss * indices.shape[0]

                self.n_iter_ += 1
                self.loss_ = accumulated_loss / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)

                if early_stopping:
                    outputs = self._raw_outputs(val_values, val_lengths)
                    score = self._validation_score(outputs, val_y, val_weight)
                    self.validation_scores_.append(score)
                    if score < self.best_validation_score_ + self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        best_snapshot = self._snapshot()
                else:
                    if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if self.loss_curve_[-1] < self.best_loss_:
                        self.best_loss_ = self.loss_curve_[-1]

                if self.verbose:
                    line = f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}"
                    if early_stopping:
                        line += f", validation score = {score:.6f}"
                    line += f", time = {time.perf_counter() - epoch_start:.2f}s"
                    print(line, flush=True)

                self._optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = (f"Validation score did not improve more than "
                               f"tol={self.tol:f} for {self.n_iter_no_change} "
                               f"consecutive epochs.")
                    else:
                        msg = (f"Training loss did not improve more than "
                               f"tol={self.tol:f} for {self.n_iter_no_change} "
                               f"consecutive epochs.")
                    if self._optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0

                if not incremental and self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations "
                        f"({self.max_iter}) reached and the optimization "
                        f"hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")

        if early_stopping and best_snapshot is not None:
            self._restore(best_snapshot)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags


@_fill_doc
class GRURegressor(RegressorMixin, BaseGRUEstimator):
    """Recurrent regressor: a GRU stack read out at the last time step.

    Each series runs through the GRU layers; the hidden state at its last
    valid time step (for a bidirectional stack, the last layer's forward and
    reverse final states concatenated) feeds a linear head. Trained with
    minibatch Adam or SGD on half the mean squared error (averaged over
    samples, weighted by ``sample_weight``, and over outputs), plus an L2
    penalty (see ``alpha``), like :class:`~sklearn.neural_network.MLPRegressor`.

    Series may have different lengths (pass a list); padding never reaches
    the model, and a series' prediction does not depend on the other series
    in its batch.

    Parameters
    ----------
%(shared_parameters)s

    Attributes
    ----------
%(shared_attributes)s

    See Also
    --------
    GRUClassifier : The classification counterpart.
    numgru.preprocessing.SequenceScaler : Per-channel standardisation.

    Examples
    --------
    >>> import numpy as np
    >>> from numgru.estimators import GRURegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 10, 2))
    >>> y = X[:, :, 0].sum(axis=1)
    >>> model = GRURegressor(hidden_size=8, max_iter=5, random_state=0)
    >>> model = model.fit(X, y)  # doctest: +SKIP
    >>> model.predict(X[:3]).shape  # doctest: +SKIP
    (3,)
    """

    def _validate_targets(self, y, first_pass, classes=None):
        y = check_array(y, ensure_2d=False, dtype=np.float64,
                        ensure_all_finite=True, input_name="y",
                        ensure_min_samples=1)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim not in (1, 2):
            raise ValueError(f"y must have shape (n_samples,) or (n_samples, "
                             f"n_outputs), got {y.shape}")
        if y.ndim == 2 and y.shape[1] == 0:
            raise ValueError("y has 0 outputs; at least 1 is required")
        y2d = y.reshape(y.shape[0], -1)
        return y2d.astype(self.dtype), y2d.shape[1]

    def _loss_and_output_grad(self, outputs, y, sample_weight, weight_sum):
        residual = outputs - y
        n_outputs = outputs.shape[1]
        per_sample = np.mean(residual.astype(np.float64) ** 2, axis=1)
        if sample_weight is None:
            loss = 0.5 * float(per_sample.sum()) / weight_sum
            d_outputs = residual / (weight_sum * n_outputs)
        else:
            loss = 0.5 * float(per_sample @ sample_weight) / weight_sum
            factor = (sample_weight / (weight_sum * n_outputs))[:, None]
            d_outputs = residual * factor.astype(residual.dtype)
        return loss, d_outputs

    def _validation_score(self, outputs, y, sample_weight):
        return r2_score(y.astype(np.float64), outputs.astype(np.float64),
                        sample_weight=sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to series ``X`` and targets ``y``.

        Parameters
        ----------
        %(X)s

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in the loss.

        Returns
        -------
        self : GRURegressor
            Fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Run one epoch over ``X``, ``y``, starting from the current weights.

        Parameters
        ----------
        %(X)s

        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in the loss.

        Returns
        -------
        self : GRURegressor
            Updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predict targets for series ``X``.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predicted values (1d when the model has a single output).
        """
        outputs = self._predict_outputs(X)
        if outputs.shape[1] == 1:
            return outputs.ravel()
        return outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


@_fill_doc
class GRUClassifier(ClassifierMixin, BaseGRUEstimator):
    """Recurrent classifier: a GRU stack read out at the last time step.

    Each series runs through the GRU layers; the hidden state at its last
    valid time step (for a bidirectional stack, the last layer's forward and
    reverse final states concatenated) feeds a linear head with one output
    per class and a softmax. Trained with minibatch Adam or SGD on the
    cross-entropy (averaged over samples, weighted by ``sample_weight``),
    plus an L2 penalty (see ``alpha``), like
    :class:`~sklearn.neural_network.MLPClassifier`. Binary problems use the
    same two-output softmax. Labels can be of any sortable type (integers,
    strings, ...).

    Series may have different lengths (pass a list); padding never reaches
    the model, and a series' prediction does not depend on the other series
    in its batch.

    Parameters
    ----------
%(shared_parameters)s

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.

%(shared_attributes)s

    See Also
    --------
    GRURegressor : The regression counterpart.
    numgru.preprocessing.SequenceScaler : Per-channel standardisation.

    Examples
    --------
    >>> from numgru.datasets import load_japanese_vowels
    >>> from numgru.estimators import GRUClassifier
    >>> X_train, y_train = load_japanese_vowels("train")
    >>> clf = GRUClassifier(hidden_size=64, max_iter=100, random_state=0)
    >>> clf = clf.fit(X_train, y_train)  # doctest: +SKIP
    >>> X_test, y_test = load_japanese_vowels("test")
    >>> clf.score(X_test, y_test) > 0.95  # doctest: +SKIP
    True
    """

    def _validate_targets(self, y, first_pass, classes=None):
        y = column_or_1d(y, warn=True)
        if y.shape[0] == 0:
            raise ValueError("y is empty: found 0 labels")
        check_classification_targets(y)
        if classes is not None or not first_pass:
            if first_pass and hasattr(self, "classes_"):
                del self.classes_
            _check_partial_fit_first_call(self, classes)
        else:
            self.classes_ = np.unique(y)
        n_classes = self.classes_.shape[0]
        if n_classes < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes "
                f"in the data, but the data contains only one class: "
                f"{self.classes_[0]!r}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(
                f"y contains labels not seen in classes_ "
                f"{self.classes_.tolist()}: {unknown.tolist()}")
        return np.searchsorted(self.classes_, y), n_classes

    def _loss_and_output_grad(self, outputs, y, sample_weight, weight_sum):
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        proba = exp / exp.sum(axis=1, keepdims=True)
        rows = np.arange(y.shape[0])
        true_proba = np.maximum(proba[rows, y].astype(np.float64),
                                np.finfo(proba.dtype).tiny)
        log_loss = -np.log(true_proba)
        d_outputs = proba.copy()
        d_outputs[rows, y] -= 1
        if sample_weight is None:
            loss = float(log_loss.sum()) / weight_sum
            d_outputs /= d_outputs.dtype.type(weight_sum)
        else:
            loss = float(log_loss @ sample_weight) / weight_sum
            d_outputs *= (sample_weight / weight_sum)[:, None].astype(
                d_outputs.dtype)
        return loss, d_outputs

    def _validation_score(self, outputs, y, sample_weight):
        return accuracy_score(y, outputs.argmax(axis=1),
                              sample_weight=sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to series ``X`` and labels ``y``.

        Parameters
        ----------
        %(X)s

        y : array-like of shape (n_samples,)
            Class labels, at least two distinct values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in the loss.

        Returns
        -------
        self : GRUClassifier
            Fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Run one epoch over ``X``, ``y``, starting from the current weights.

        Parameters
        ----------
        %(X)s

        y : array-like of shape (n_samples,)
            Class labels.

        classes : array-like of shape (n_classes,), default=None
            All classes that can appear across calls; required on the first
            call, optional (and then checked) on later ones.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples in the loss.

        Returns
        -------
        self : GRUClassifier
            Updated estimator.
        """
        if not hasattr(self, "gru_") and classes is None:
            raise ValueError(
                "classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight=sample_weight, incremental=True,
                         classes=classes)

    def predict_proba(self, X):
        """Class probabilities for series ``X``.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probability of each class, in the order of ``classes_``.
        """
        outputs = self._predict_outputs(X)
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """Logarithm of the class probabilities for series ``X``.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probability of each class, in the order of ``classes_``.
        """
        outputs = self._predict_outputs(X)
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def predict(self, X):
        """Predict class labels for series ``X``.

        Parameters
        ----------
        %(X)s

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels, taken from ``classes_``.
        """
        outputs = self._predict_outputs(X)
        return self.classes_[outputs.argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


def _fill_method_docs(cls):
    for name in ("fit", "partial_fit", "predict", "predict_proba",
                 "predict_log_proba"):
        method = cls.__dict__.get(name)
        if method is not None and method.__doc__:
            method.__doc__ = method.__doc__.replace("%(X)s", _X_DOC)


_fill_method_docs(GRURegressor)
_fill_method_docs(GRUClassifier)
