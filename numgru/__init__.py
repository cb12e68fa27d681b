"""numgru: fast gated recurrent units on CPUs.

A multi-layer, optionally bidirectional GRU whose forward and backward passes
are compiled loops (Numba by default, Cython as a fallback, numpy as the
readable reference), with PyTorch ``nn.GRU``'s parameters and semantics, and
scikit-learn estimators on top.
"""

from ._backends import available_backends
from ._threads import get_num_threads, set_num_threads
from .gru import GRU

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "available_backends",
    "get_num_threads",
    "set_num_threads",
]
