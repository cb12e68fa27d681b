"""Checks run on user input before any compiled kernel sees it."""

import numbers

import numpy as np

from ._backends import loaded_numba_function

__all__ = [
    "check_float_array",
    "check_lengths",
    "check_positive_int",
    "check_dtype",
]

_FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def check_positive_int(value, name, minimum=1):
    """Return ``value`` as an int, or raise if it is not an integer >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_dtype(dtype):
    """Return the numpy dtype for ``"float32"`` / ``"float64"`` (or their types)."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def check_float_array(value, name, shape, dtype, allow_empty=False):
    """Convert ``value`` to a C-contiguous array of ``dtype`` and check it.

    Parameters
    ----------
    value : array-like
        The user's input.
    name : str
        Argument name used in error messages.
    shape : tuple
        Expected shape; ``None`` entries accept any size. A string entry
        names the dimension in the message.
    dtype : numpy.dtype
        Target dtype.
    allow_empty : bool, default=False
        Whether a dimension of size 0 is accepted.

    Returns
    -------
    array : ndarray of shape ``shape``
    """
    if (type(value) is np.ndarray and value.dtype == dtype
            and value.flags.c_contiguous and value.ndim == len(shape)
            and all(not isinstance(wanted, int) or actual == wanted
                    for actual, wanted in zip(value.shape, shape))
            and (allow_empty or value.size)):
        array = value  # already in the right form: only finiteness to check
    else:
        array = _convert_float_array(value, name, shape, dtype, allow_empty)
    if not all_finite(array):
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def all_finite(array):
    """Whether no value of a C-contiguous float array is NaN or infinite.

    One compiled pass over the values once the Numba backend is loaded, else
    numpy's check (so that other backends do not import Numba for it).
    Measured, float32, 32,000 to 820,000 values: 1.1x to 2.6x faster than
    ``np.isfinite(array).all()``, which first writes a boolean array as large
    as the input (most when the values are not in cache, as after a training
    step).
    """
    kernel = _all_finite_kernel()
    if kernel is None:
        return bool(np.isfinite(array).all())
    return bool(kernel(array.reshape(-1)))


def _all_finite_kernel():
    return loaded_numba_function("all_finite")


def _convert_float_array(value, name, shape, dtype, allow_empty):
    """Shape and type checks of :func:`check_float_array`, then the conversion."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and foreign objects
        raise TypeError(f"{name} must be a numeric array, could not convert it: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must be a numeric array, got dtype {array.dtype}")
    expected = tuple(size if isinstance(size, int) else None for size in shape)
    described = "(" + ", ".join(
        str(size) if isinstance(size, int) else (size or "any")
        for size in shape) + ")"
    if array.ndim != len(shape):
        raise ValueError(
            f"{name} must be a {len(shape)}D array of shape {described}, "
            f"got a {array.ndim}D array of shape {array.shape}")
    for axis, (actual, wanted) in enumerate(zip(array.shape, expected)):
        if wanted is not None and actual != wanted:
            raise ValueError(
                f"{name} must have shape {described}, got {array.shape} "
                f"(axis {axis} is {actual}, expected {wanted})")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def check_lengths(lengths, n_samples, n_steps):
    """Return valid per-sample lengths as a contiguous int64 array.

    ``None`` means every sample uses all ``n_steps`` steps.
    """
    if lengths is None:
        return np.full(n_samples, n_steps, dtype=np.int64)
    try:
        array = np.asarray(lengths)
    except Exception as exc:
        raise TypeError(f"lengths must be an array of integers: {exc}") from None
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            raise ValueError("lengths must contain whole numbers of steps")
    elif array.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an array of integers, got dtype {array.dtype}")
    if array.shape != (n_samples,):
        raise ValueError(
            f"lengths must have shape ({n_samples},), one length per sample, "
            f"got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if array.size and (array.min() < 1 or array.max() > n_steps):
        raise ValueError(
            f"lengths must be between 1 and the number of steps ({n_steps}), "
            f"got values from {array.min()} to {array.max()}")
    return array
