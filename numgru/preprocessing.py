"""Preprocessing for batches of sequences."""

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils.validation import check_is_fitted

from numgru._sequences import check_sequences, unpad_like

__all__ = ["SequenceScaler"]


class SequenceScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise each channel of a batch of sequences.

    Every channel (feature per time step) is shifted by its mean and divided
    by its standard deviation, both computed over the valid time steps of
    all series in ``fit`` (padding never counts). Unlike
    :class:`sklearn.preprocessing.StandardScaler`, a 2d input of shape
    (n_samples, n_timesteps) is a batch of univariate series and gets one
    mean and one scale, shared by all time steps.

    The output is the same kind of container as the input: a 2d array for 2d
    input, a 3d array for 3d input, and a list of arrays (each with its
    original shape) for a list of series.

    Parameters
    ----------
    with_mean : bool, default=True
        Subtract the per-channel mean.
    with_std : bool, default=True
        Divide by the per-channel standard deviation. Channels with zero
        variance are left unscaled (scale 1).
    copy : bool, default=True
        Kept for compatibility with scikit-learn scalers; the result is
        always a new array.

    Attributes
    ----------
    mean_ : ndarray of shape (n_channels,) or None
        Per-channel mean, or None when ``with_mean=False``.
    var_ : ndarray of shape (n_channels,) or None
        Per-channel variance, or None when ``with_std=False``.
    scale_ : ndarray of shape (n_channels,) or None
        Per-channel scale (standard deviation, 1 where it is 0), or None
        when ``with_std=False``.
    n_steps_seen_ : int
        Number of valid time steps the statistics were computed from.
    n_features_in_ : int
        ``n_timesteps`` for 2d input, ``n_features`` for 3d or list input.
    n_channels_ : int
        Values per time step (1 for 2d input).
    input_kind_ : {"2d", "3d", "list"}
        Kind of input seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from numgru.preprocessing import SequenceScaler
    >>> X = [np.array([[0.0, 10.0], [2.0, 30.0]]), np.array([[4.0, 20.0]])]
    >>> scaler = SequenceScaler().fit(X)
    >>> scaler.mean_
    array([ 2., 20.])
    >>> [x.shape for x in scaler.transform(X)]
    [(2, 2), (1, 2)]
    """

    _parameter_constraints = {
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
        "copy": ["boolean"],
    }

    def __init__(self, *, with_mean=True, with_std=True, copy=True):
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the per-channel mean and scale over all valid time steps.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of array-like \
                of shape (n_timesteps_i, n_features) or (n_timesteps_i,)
            Series to compute the statistics from.
        y : None
            Ignored.

        Returns
        -------
        self : SequenceScaler
            Fitted scaler.
        """
        if hasattr(self, "n_steps_seen_"):
            del self.n_steps_seen_     # start the statistics over
        return self._update(X)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Update the per-channel mean and scale with one more batch.

        The statistics after several calls are those of all the valid time
        steps seen so far (up to rounding), as if ``fit`` had been given
        them together. The first call on an unfitted scaler fixes the
        number of features; ``fit`` starts the statistics over.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of array-like \
                of shape (n_timesteps_i, n_features) or (n_timesteps_i,)
            Series to add to the statistics.
        y : None
            Ignored.

        Returns
        -------
        self : SequenceScaler
            Fitted scaler.
        """
        return self._update(X)

    def _update(self, X):
        # mean and sum of squared deviations of the steps seen so far,
        # combined with a new batch's (Chan, Golub and LeVeque's update)
        first = not hasattr(self, "n_steps_seen_")
        batch = check_sequences(X, estimator=self, reset=first)
        valid = np.arange(batch.values.shape[1]) < batch.lengths[:, None]
        steps = batch.values[valid].astype(np.float64)     # (n_steps, C)
        n_new = steps.shape[0]                              # >= 1
        mean_new = steps.mean(axis=0)
        ss_new = ((steps - mean_new) ** 2).sum(axis=0)
        if first:
            n, mean, ss = n_new, mean_new, ss_new
        else:
            n_old = self.n_steps_seen_
            n = n_old + n_new
            delta = mean_new - self._mean
            mean = self._mean + delta * (n_new / n)
            ss = self._sum_squares + ss_new + delta ** 2 * (n_old * n_new / n)
        self.n_steps_seen_ = int(n)
        self._mean = mean
        self._sum_squares = ss
        if self.with_std:
            self.var_ = ss / n
            scale = np.sqrt(self.var_)
            tiny = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1)
            scale[scale < tiny] = 1.0
            self.scale_ = scale
        else:
            self.var_ = None
            self.scale_ = None
        self.mean_ = mean if self.with_mean else None
        return self

    def _apply(self, X, inverse):
        check_is_fitted(self)
        batch = check_sequences(X, estimator=self, reset=False)
        values = batch.values
        dtype = values.dtype
        mean = np.zeros(values.shape[2]) if self.mean_ is None else self.mean_
        scale = np.ones(values.shape[2]) if self.scale_ is None else self.scale_
        if inverse:
            result = values * scale.astype(dtype) + mean.astype(dtype)
        else:
            result = (values - mean.astype(dtype)) / scale.astype(dtype)
        valid = np.arange(values.shape[1]) < batch.lengths[:, None]
        result[~valid] = 0
        return unpad_like(result.astype(dtype, copy=False), batch)

    def transform(self, X):
        """Standardise ``X`` with the statistics from ``fit``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of array-like \
                of shape (n_timesteps_i, n_features) or (n_timesteps_i,)
            Series to transform.

        Returns
        -------
        X_scaled : ndarray of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of ndarray
            Same kind and shapes as ``X``; float32 if ``X`` is float32, else
            float64.
        """
        return self._apply(X, inverse=False)

    def inverse_transform(self, X):
        """Undo :meth:`transform`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of array-like \
                of shape (n_timesteps_i, n_features) or (n_timesteps_i,)
            Standardised series.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_timesteps) or \
                (n_samples, n_timesteps, n_features), or list of ndarray
            Same kind and shapes as ``X``, in the original units.
        """
        return self._apply(X, inverse=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
