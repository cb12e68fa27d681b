"""Thread count shared by every compiled backend."""

import os

from ._validation import check_positive_int

__all__ = ["set_num_threads", "get_num_threads"]

_num_threads = max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set how many threads numgru's compiled kernels use.

    Results do not depend on it: outputs and gradients are bitwise identical
    for any thread count.

    Parameters
    ----------
    n : int
        Number of threads, at least 1. Values above the number of CPUs are
        clipped to it.
    """
    global _num_threads
    n = check_positive_int(n, "n")
    _num_threads = min(n, max(1, os.cpu_count() or 1))


def get_num_threads():
    """Return how many threads numgru's compiled kernels use.

    Returns
    -------
    n : int
    """
    return _num_threads
