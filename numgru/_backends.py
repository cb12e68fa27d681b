"""Backend selection: the kernels are looked up by name, never stored.

A backend is a module exposing ``layer_forward`` and ``layer_backward`` with
the signatures documented in :mod:`numgru._reference`.
"""

import importlib
import os
import sys

# OpenMP threads that spin while waiting take the cores from everything else
# on a busy server: measured here under load, a 2-thread Cython train step ran
# 4x to 9x slower than a 1-thread one with spinning waits, and as fast with
# sleeping ones. Threads that sleep at once, though, must be woken at every
# parallel region, and a backward pass opens one or two per chunk of steps: GNU
# OpenMP threads spin 10,000 times (about 0.1 ms) before they sleep, which
# took a 2-thread Cython backward from 1.7 to 0.9 ms (B, T, I, H = 32, 20,
# 50, 128) and from 9.0 to 7.0 ms (64, 100, 32, 128) on a quiet machine, and
# changed nothing next to two busy processes (50,000 spins doubled the times
# there). Other OpenMP runtimes ignore GOMP_SPINCOUNT and sleep at once. The
# runtime reads these when the kernels load it, so they are set before any
# backend is imported; a wait policy the user set is kept, and then so is
# the runtime's spin count.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

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


def loaded_numba_function(name):
    """The Numba kernels' function ``name`` if that module is already
    imported, else None.

    For helpers with a compiled form and a numpy form of the same bits: they
    use the compiled one once the Numba backend is in use, and never import
    Numba themselves (other backends would pay its start-up).
    """
    module = sys.modules.get(_MODULES["numba"])
    return None if module is None else getattr(module, name)


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

    Resolutions are remembered per name (and, for ``"auto"``, value of
    ``NUMGRU_BACKEND``), so the per-call cost stays a dictionary lookup.
    """
    key = (name, os.environ.get("NUMGRU_BACKEND")) if name == "auto" else name
    module = _resolved.get(key)
    if module is None:
        module = _resolved[key] = _loaded[resolve_backend(name)]
    return module
