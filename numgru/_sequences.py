"""Turn user input into a padded batch of sequences, with validation.

numgru estimators and transformers accept three kinds of input ``X``:

``"2d"``
    An array-like of shape (n_samples, n_timesteps): a batch of univariate
    series of equal length (one value per time step). This is the kind
    scikit-learn's generic tools and checks use; ``n_features_in_`` is
    ``n_timesteps`` as scikit-learn expects, and the model sees one channel.
``"3d"``
    An array-like of shape (n_samples, n_timesteps, n_features): series of
    equal length with ``n_features`` channels. ``n_features_in_`` is
    ``n_features``.
``"list"``
    A list (or tuple, or 1D object array) of arrays, one per series, each of
    shape (n_timesteps_i, n_features) or (n_timesteps_i,) for univariate
    series; lengths may differ. ``n_features_in_`` is ``n_features``.

A Python list or tuple counts as ``"list"`` when its elements are numpy
arrays or when they do not stack into a regular array; nested lists of
numbers that stack regularly count as ``"2d"`` or ``"3d"``.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.utils.validation import check_array, validate_data

__all__ = ["SequenceBatch", "check_sequences", "sequence_input_kind",
           "unpad_like"]


@dataclass
class SequenceBatch:
    """A validated batch of sequences, padded to a common length.

    Attributes
    ----------
    values : ndarray of shape (n_samples, max_timesteps, n_channels)
        C-contiguous and writeable (read-only input is copied); zeros past
        each series' length.
    lengths : ndarray of shape (n_samples,), dtype int64
        Valid time steps per series, each at least 1.
    kind : {"2d", "3d", "list"}
        Which kind of input it came from (see module docstring).
    item_ndims : tuple of int or None
        For ``"list"`` input, the number of dimensions of each series (1 or
        2), so that transformers can return the same shapes.
    """

    values: np.ndarray
    lengths: np.ndarray
    kind: str
    item_ndims: tuple = None

    @property
    def n_samples(self):
        """Number of series in the batch."""
        return self.values.shape[0]

    @property
    def n_channels(self):
        """Number of values per time step."""
        return self.values.shape[2]


def _is_array_like_series(obj):
    return isinstance(obj, np.ndarray) or (
        hasattr(obj, "__array__") and not np.isscalar(obj)
    )


def sequence_input_kind(X, name="X"):
    """Tell which kind of input ``X`` is: ``"2d"``, ``"3d"`` or ``"list"``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_timesteps) or \
            (n_samples, n_timesteps, n_features), or list of array-like
        Input to classify.
    name : str, default="X"
        Argument name used in error messages.

    Returns
    -------
    kind : {"2d", "3d", "list"}
    """
    if X is None:
        raise ValueError(f"{name} is None; expected an array-like of shape "
                         f"(n_samples, n_timesteps[, n_features]) or a list "
                         f"of arrays of shape (n_timesteps_i[, n_features])")
    if isinstance(X, (str, bytes)):
        raise TypeError(f"{name} must be array-like or a list of arrays, "
                        f"got a string")
    if hasattr(X, "sparse") or type(X).__module__.startswith("scipy.sparse"):
        # Let the 2d validation raise scikit-learn's usual sparse error.
        return "2d"
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1:
        if len(X) and all(_is_array_like_series(x) for x in X):
            return "list"
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError(f"{name} is empty: found 0 series, at least 1 "
                             f"is required")
        if any(_is_array_like_series(x) for x in X):
            return "list"
        try:
            array = np.asarray(X)
        except ValueError:
            return "list"
        if array.dtype == object and array.ndim == 1:
            return "list"
        return "3d" if array.ndim == 3 else "2d"
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(X).ndim
        except ValueError:
            return "list"
    return "3d" if ndim == 3 else "2d"


def _resolve_dtype(dtype, arrays):
    """Model dtype, or float32/float64 following the input when None."""
    if dtype is not None:
        return np.dtype(dtype)
    if all(a.dtype == np.float32 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _check_numeric(array, name):
    """Convert to a real float array or raise a clear error."""
    if array.dtype.kind in "biuf":
        return array
    if array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported in {name}")
    if array.dtype.kind in "OUS":
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{name} must contain numbers only; could not convert it to "
                f"float: {exc}") from None
    raise TypeError(f"{name} must contain numbers, got dtype {array.dtype}")


def _check_finite(array, name):
    if not np.isfinite(array).all():
        what = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(
            f"Input {name} contains {what} or a value too large for "
            f"{array.dtype!r}; series must be finite (numgru does not impute "
            f"missing values)")


def _check_list(X, dtype, name):
    series = []
    item_ndims = []
    n_channels = None
    for i, item in enumerate(X):
        item_name = f"{name}[{i}]"
        if item is None or isinstance(item, (str, bytes)):
            raise TypeError(f"{item_name} must be an array of shape "
                            f"(n_timesteps, n_features) or (n_timesteps,), "
                            f"got {type(item).__name__}")
        if hasattr(item, "toarray"):
            raise TypeError(f"{item_name} is a sparse matrix; numgru needs "
                            f"dense arrays")
        array = _check_numeric(np.asarray(item), item_name)
        if array.ndim == 1:
            array = array[:, None]
            item_ndims.append(1)
        elif array.ndim == 2:
            item_ndims.append(2)
        else:
            raise ValueError(f"{item_name} must have shape (n_timesteps, "
                             f"n_features) or (n_timesteps,), got an array "
                             f"with {array.ndim} dimensions {array.shape}")
        if array.shape[0] == 0:
            raise ValueError(f"{item_name} has zero time steps; every series "
                             f"needs at least one")
        if array.shape[1] == 0:
            raise ValueError(f"{item_name} has 0 features per time step; at "
                             f"least 1 is required")
        if n_channels is None:
            n_channels = array.shape[1]
        elif array.shape[1] != n_channels:
            raise ValueError(
                f"all series in {name} must have the same number of features "
                f"per time step: {name}[0] has {n_channels}, {item_name} has "
                f"{array.shape[1]}")
        series.append(array)
    if not series:
        raise ValueError(f"{name} is empty: found 0 series, at least 1 is "
                         f"required")
    out_dtype = _resolve_dtype(dtype, series)
    lengths = np.fromiter((s.shape[0] for s in series), dtype=np.int64,
                          count=len(series))
    values = np.zeros((len(series), int(lengths.max()), n_channels),
                      dtype=out_dtype)
    for i, array in enumerate(series):
        values[i, :array.shape[0]] = array
        _check_finite(values[i, :array.shape[0]], f"{name}[{i}]")
    return SequenceBatch(values, lengths, "list", tuple(item_ndims))


def _check_3d(X, dtype, name):
    array = np.asarray(X)
    if hasattr(X, "toarray"):
        raise TypeError(f"{name} is sparse; numgru needs dense arrays")
    array = _check_numeric(array, name)
    out_dtype = _resolve_dtype(dtype, [array])
    n_samples, n_timesteps, n_channels = array.shape
    if n_samples == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={array.shape}) "
                         f"while a minimum of 1 is required in {name}.")
    if n_timesteps == 0:
        raise ValueError(f"{name} has zero time steps (shape={array.shape}); "
                         f"at least 1 is required")
    if n_channels == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={array.shape})"
                         f" while a minimum of 1 is required in {name}.")
    values = np.ascontiguousarray(array, dtype=out_dtype)
    if not values.flags.writeable:
        values = values.copy()
    _check_finite(values, name)
    lengths = np.full(n_samples, n_timesteps, dtype=np.int64)
    return SequenceBatch(values, lengths, "3d")


def _check_2d(X, dtype, name, estimator, reset):
    check_dtype = dtype if dtype is not None else [np.float64, np.float32]
    if estimator is not None:
        array = validate_data(estimator, X, reset=reset, dtype=check_dtype,
                              ensure_all_finite=True)
    else:
        array = check_array(X, dtype=check_dtype, ensure_all_finite=True,
                            input_name=name)
    values = np.ascontiguousarray(array[:, :, None])
    if not values.flags.writeable:
        values = values.copy()
    lengths = np.full(values.shape[0], values.shape[1], dtype=np.int64)
    return SequenceBatch(values, lengths, "2d")


def check_sequences(X, *, dtype=None, estimator=None, reset=True, name="X"):
    """Validate ``X`` and return it as a padded batch of sequences.

    With an ``estimator``, also record (``reset=True``) or check
    (``reset=False``) what it was fitted on: ``n_features_in_`` (and
    ``feature_names_in_`` for 2d data frames), ``n_channels_`` (values per
    time step) and ``input_kind_``. A model fitted on any kind accepts every
    kind later as long as the channel count matches; a 2d array given to a
    model fitted on 2d input must also have the same number of time steps
    (scikit-learn's ``n_features_in_`` contract).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_timesteps) or \
            (n_samples, n_timesteps, n_features), or list of array-like of \
            shape (n_timesteps_i, n_features) or (n_timesteps_i,)
        Input series (see the module docstring for the three kinds).
    dtype : str or numpy dtype or None, default=None
        Float type of the result; None keeps float32 input as float32 and
        converts anything else to float64.
    estimator : estimator instance or None, default=None
        Estimator whose fitted input attributes are set or checked.
    reset : bool, default=True
        Whether to set (fit) or check (predict, transform) those attributes.
    name : str, default="X"
        Argument name used in error messages.

    Returns
    -------
    batch : SequenceBatch
        Padded values, lengths and the kind of input.

    Raises
    ------
    ValueError
        Empty input, wrong number of dimensions, NaN or infinity, zero-length
        series, series with different channel counts, or a channel count
        that differs from the one seen in fit.
    TypeError
        Non-numeric data that cannot be converted, or sparse input.
    """
    kind = sequence_input_kind(X, name=name)
    fitted_kind = None
    if estimator is not None and not reset:
        fitted_kind = getattr(estimator, "input_kind_", None)
    if kind == "2d":
        uses_feature_count = fitted_kind in (None, "2d")
        if not uses_feature_count and estimator.n_channels_ != 1:
            raise ValueError(
                f"{name} is 2d, which means a batch of univariate series "
                f"(n_samples, n_timesteps), but {type(estimator).__name__} "
                f"was fitted on series with {estimator.n_channels_} features "
                f"per time step; pass an array of shape (n_samples, "
                f"n_timesteps, {estimator.n_channels_}) or a list of arrays")
        batch = _check_2d(X, dtype, name,
                          estimator if uses_feature_count else None, reset)
    elif kind == "3d":
        batch = _check_3d(X, dtype, name)
    else:
        batch = _check_list(X, dtype, name)

    if estimator is not None:
        if reset:
            if kind != "2d":
                estimator.n_features_in_ = batch.n_channels
                if hasattr(estimator, "feature_names_in_"):
                    del estimator.feature_names_in_
            estimator.n_channels_ = batch.n_channels
            estimator.input_kind_ = kind
        elif batch.n_channels != estimator.n_channels_:
            raise ValueError(
                f"{name} has {batch.n_channels} features per time step, but "
                f"{type(estimator).__name__} is expecting "
                f"{estimator.n_channels_} features per time step as input.")
    return batch


def unpad_like(values, batch):
    """Return ``values`` in the same kind of container ``batch`` came from.

    Parameters
    ----------
    values : ndarray of shape (n_samples, max_timesteps, n_channels)
        Padded values aligned with ``batch``.
    batch : SequenceBatch
        The batch the values were computed from.

    Returns
    -------
    X : ndarray of shape (n_samples, n_timesteps) or \
            (n_samples, n_timesteps, n_channels), or list of ndarray
        2d for ``"2d"`` input, 3d for ``"3d"``, and a list of arrays of the
        original shapes for ``"list"``.
    """
    if batch.kind == "2d":
        return values[:, :, 0]
    if batch.kind == "3d":
        return values
    out = []
    for i, (length, ndim) in enumerate(zip(batch.lengths, batch.item_ndims)):
        item = values[i, :length]
        out.append(item[:, 0].copy() if ndim == 1 else item.copy())
    return out
