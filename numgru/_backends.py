"""Backend selection: the kernels are looked up by name, never stored.

A backend is a module exposing ``layer_forward`` and ``layer_backward`` with
the signatures documented in :mod:`numgru._reference`.
"""

import importlib
import os

# OpenMP threads that spin while waiting take the cores from everything else
# on a busy server: measured here under load, a 2-thread Cython train step ran
# 4x to 9x slower than a 1-thread one with spinning waits, and as fast with
# sleeping ones. The runtime reads this when the kernels load it, so it is set
# before any backend is imported; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["available_backends", "get_backend", "resolve_backend"]

BACKEND_NAMES = ("numba", "cython", "numpy")
_MODULES = {
    "numba": "numgru._numba_kernels",
    "cython": "numgru._cython_kernels",
    "numpy": "numgru._reference",
}
_loaded = {}
_failures = {}


def _load(name):
    if name not in _loaded and name not in _failures:
        try:
            _loaded[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            _failures[name] = exc
    return _loaded.get(name)


def available_backends():
    """Return the names of the backends that can run here, fastest first.

    Returns
    -------
    names : list of str
        A subset of ``["numba", "cython", "numpy"]``; ``"numpy"`` is always
        present.
    """
    return [name for name in BACKEND_NAMES if _load(name) is not None]


def resolve_backend(name):
    """Turn a backend name (possibly ``"auto"``) into a concrete, available one.

    ``"auto"`` picks the environment variable ``NUMGRU_BACKEND`` when it is
    set, else the first of numba, cython, numpy that imports.

    Parameters
    ----------
    name : {"auto", "numba", "cython", "numpy"}

    Returns
    -------
    name : str
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name == "auto":
        forced = os.environ.get("NUMGRU_BACKEND", "").strip().lower()
        if forced and forced != "auto":
            if forced not in BACKEND_NAMES:
                raise ValueError(
                    f"environment variable NUMGRU_BACKEND must be one of "
                    f"{', '.join(BACKEND_NAMES)}, got {forced!r}")
            name = forced
        else:
            return available_backends()[0]
    if name not in BACKEND_NAMES:
        raise ValueError(
            f"backend must be 'auto' or one of {', '.join(BACKEND_NAMES)}, "
            f"got {name!r}")
    if _load(name) is None:
        raise ValueError(
            f"backend {name!r} is not available here ({_failures[name]}); "
            f"available backends: {', '.join(available_backends())}")
    return name


_resolved = {}


def get_backend(name):
    """Return the kernel module for a backend name (``"auto"`` allowed).

    Resolutions are remembered per name and value of ``NUMGRU_BACKEND``, so
    the per-call cost stays a dictionary lookup.
    """
    key = (name, os.environ.get("NUMGRU_BACKEND"))
    module = _resolved.get(key)
    if module is None:
        module = _resolved[key] = _loaded[resolve_backend(name)]
    return module
