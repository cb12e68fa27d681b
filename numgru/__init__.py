"""numgru: fast gated recurrent units on CPUs.

A multi-layer, optionally bidirectional GRU whose forward and backward passes
are compiled loops (Numba by default, Cython as a fallback, numpy as the
readable reference), with PyTorch ``nn.GRU``'s parameters and semantics, and
scikit-learn estimators on top.

The estimators, scaler, persistence, interop and data sets are imported on
first use, so a program that only runs the engine does not pay for importing
scikit-learn.
"""

import importlib

from ._backends import available_backends
from ._threads import get_num_threads, set_num_threads, thread_limit
from .gru import GRU

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "GRUClassifier": "estimators",
    "GRURegressor": "estimators",
    "SequenceScaler": "preprocessing",
    "load_model": "persistence",
    "save_model": "persistence",
    "from_keras_weights": "interop",
    "from_onnx": "interop",
    "from_torch": "interop",
    "to_keras_weights": "interop",
    "to_onnx": "interop",
    "to_torch": "interop",
    "to_torch_state_dict": "interop",
}
_LAZY_MODULES = ("datasets", "estimators", "interop", "persistence", "preprocessing")

__all__ = sorted([
    "GRU", "available_backends", "get_num_threads", "set_num_threads",
    "thread_limit", "datasets", *_LAZY_ATTRIBUTES,
])


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
        return getattr(module, name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'numgru' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
