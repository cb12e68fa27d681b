"""Arrays whose data start on a cache-line boundary."""

import math

import numpy as np

__all__ = ["ALIGNMENT", "aligned_empty"]

# Bytes: one cache line, and the width of an AVX-512 vector. The kernels read
# rows of their work arrays (transposed or packed weights, per-step rows) a
# vector at a time, at every time step; a vector that starts off a line
# boundary spans two lines. Measured here, 2 threads, with these arrays on
# 64-byte boundaries instead of where numpy's and Numba's allocators put them
# (16 or 32 bytes past one): the Cython backward at B, T, I, H = 32, 20, 50,
# 128 about 1.07x faster (its scratch array aligned against 16 bytes off),
# Numba train steps 1.01x to 1.10x faster (that shape, (64, 100, 32, 128)
# and (128, 100, 128, 512)). Inputs and outputs, which a call reads or
# writes once, gave the same times aligned or not.
ALIGNMENT = 64


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array whose data start on an
    ``ALIGNMENT``-byte boundary.

    Parameters
    ----------
    shape : int or tuple of int
        Shape of the array.
    dtype : data-type
        Its element type; its item size divides ``ALIGNMENT`` (every
        floating and integer type does).

    Returns
    -------
    array : ndarray
        A view of a slightly larger array (its ``base``), which it keeps
        alive.
    """
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    size = math.prod(shape)
    raw = np.empty(size + ALIGNMENT // dtype.itemsize, dtype)
    start = -raw.ctypes.data % ALIGNMENT // dtype.itemsize
    return raw[start:start + size].reshape(shape)
