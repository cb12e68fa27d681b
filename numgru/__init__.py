"""numgru: fast gated recurrent units on CPUs.

A multi-layer, optionally bidirectional GRU whose forward and backward passes
are compiled loops (Numba by default, Cython as a fallback, numpy as the
readable reference), with PyTorch ``nn.GRU``'s parameters and semantics, and
scikit-learn estimators on top.
"""

from . import datasets
from ._backends import available_backends
from ._threads import get_num_threads, set_num_threads, thread_limit
from .estimators import GRUClassifier, GRURegressor
from .gru import GRU
from .interop import (from_keras_weights, from_onnx, from_torch, to_keras_weights,
                      to_onnx, to_torch, to_torch_state_dict)
from .persistence import load_model, save_model
from .preprocessing import SequenceScaler

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "GRUClassifier",
    "GRURegressor",
    "SequenceScaler",
    "available_backends",
    "datasets",
    "from_keras_weights",
    "from_onnx",
    "from_torch",
    "get_num_threads",
    "load_model",
    "save_model",
    "set_num_threads",
    "thread_limit",
    "to_keras_weights",
    "to_onnx",
    "to_torch",
    "to_torch_state_dict",
]
