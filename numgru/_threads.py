"""Thread count shared by every compiled backend."""

import os
import threading
from contextlib import contextmanager

from ._validation import check_positive_int

__all__ = ["set_num_threads", "get_num_threads", "thread_limit"]

_num_threads = max(1, os.cpu_count() or 1)
_local = threading.local()


def _clip(n):
    return min(n, max(1, os.cpu_count() or 1))


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
    _num_threads = _clip(check_positive_int(n, "n"))


def get_num_threads():
    """Return how many threads numgru's compiled kernels use.

    Inside :func:`thread_limit`, the limit set there for the calling Python
    thread.

    Returns
    -------
    n : int
    """
    return getattr(_local, "limit", None) or _num_threads


@contextmanager
def thread_limit(n):
    """Use ``n`` kernel threads in the calling Python thread only, for a block.

    Other Python threads keep their own setting, so two web-server workers
    predicting with different ``n_jobs`` do not interfere.

    Parameters
    ----------
    n : int or None
        Number of threads; None leaves the setting alone.
    """
    if n is None:
        yield
        return
    previous = getattr(_local, "limit", None)
    _local.limit = _clip(check_positive_int(n, "n"))
    try:
        yield
    finally:
        _local.limit = previous
