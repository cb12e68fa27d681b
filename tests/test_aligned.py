"""Work arrays start on cache-line boundaries."""

import numpy as np
import pytest

from numgru._aligned import ALIGNMENT, aligned_empty


def address(array):
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [7, (3, 5), (2, 3, 17), [4, 1]])
def test_aligned_empty(shape, dtype):
    for _ in range(5):
        array = aligned_empty(shape, dtype)
        expected = (shape,) if isinstance(shape, int) else tuple(shape)
        assert array.shape == expected
        assert array.dtype == np.dtype(dtype)
        assert array.flags.c_contiguous and array.flags.writeable
        assert address(array) % ALIGNMENT == 0
        array[...] = 1  # the whole view lies inside its buffer
        assert array.base.nbytes >= array.nbytes


def test_numba_packed_weights_aligned():
    nk = pytest.importorskip("numgru._numba_kernels")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        w = rng.standard_normal((45, 19)).astype(dtype)
        for packed in (nk._pack(w, nk._panel_width(w)),
                       nk._pack_transposed(w, 3, 40, 32),
                       nk._aligned_empty((3, 5, 7), w)):
            assert address(packed) % ALIGNMENT == 0
            assert packed.dtype == w.dtype and packed.flags.c_contiguous
        assert nk._aligned_empty((3, 5, 7), w).shape == (3, 5, 7)


def test_cython_scratch_aligned():
    ck = pytest.importorskip("numgru._cython_kernels")
    for dtype in (np.float32, np.float64):
        for n in (1, 1000, 100_000):
            scratch = ck._take_scratch(n, dtype)
            assert scratch.shape[0] >= n and scratch.dtype == dtype
            assert address(scratch) % ALIGNMENT == 0
