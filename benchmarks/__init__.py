"""Benchmarks of numgru: the asv suite and the side-by-side comparison.

The asv suite (``bench_gru``, ``bench_estimators``) tracks numgru against
itself across commits; ``compare`` times numgru next to PyTorch and ONNX
Runtime in one process, which is the only honest way to compare them on a
noisy machine.

The anchor shapes are (batch B, steps T, inputs I, hidden H).
"""

import numpy as np

from .compare import N_THREADS, SHAPES, STREAM_STEP_SHAPE

__all__ = [
    "ANCHOR_SHAPES",
    "BACKENDS",
    "SLOW_FOR_NUMPY",
    "STREAM_STEP_SHAPE",
    "N_THREADS",
    "skip_unless_runnable",
]

#: Anchor shapes, name to (B, T, I, H): the comparison script's, with names
#: that are valid asv parameter identifiers.
ANCHOR_SHAPES = {name.replace("-", "_"): shape for name, shape in SHAPES.items()}

#: Every backend name; those not importable here are skipped in ``setup``.
#: Listing them all keeps the parameter grid the same across commits.
BACKENDS = ["numba", "cython", "numpy"]

#: Shapes at which the numpy reference backend is too slow to be worth timing.
SLOW_FOR_NUMPY = ("medium", "large")

DTYPE = np.float32


def skip_unless_runnable(backend, shape_name=None):
    """Raise ``NotImplementedError`` (asv's skip) for a combination not to run.

    Parameters
    ----------
    backend : str
        A numgru backend name.
    shape_name : str, optional
        A key of :data:`ANCHOR_SHAPES`.

    Raises
    ------
    NotImplementedError
        If the backend is not importable here, or it is the numpy reference
        at a shape listed in :data:`SLOW_FOR_NUMPY`.
    """
    import numgru

    if backend not in numgru.available_backends():
        raise NotImplementedError(f"backend {backend!r} is not available")
    if backend == "numpy" and shape_name in SLOW_FOR_NUMPY:
        raise NotImplementedError(f"numpy backend is not timed at {shape_name!r}")


def make_inputs(shape, seed=0):
    """Random float32 inputs and output gradients for a (B, T, I, H) shape.

    Parameters
    ----------
    shape : tuple of int
        (B, T, I, H).
    seed : int, default=0

    Returns
    -------
    x : ndarray of shape (B, T, I)
    d_output : ndarray of shape (B, T, H)
    """
    n_samples, n_steps, n_inputs, n_hidden = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_steps, n_inputs)).astype(DTYPE)
    d_output = rng.standard_normal((n_samples, n_steps, n_hidden)).astype(DTYPE)
    return x, d_output
