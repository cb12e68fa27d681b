"""numgru as an installed package: without Numba, and where nothing can be cached."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

import numgru

BLOCK_NUMBA = """
import importlib.abc
import sys


class BlockNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numba", "llvmlite"):
            raise ImportError(f"No module named {name!r} (blocked)")
        return None


sys.meta_path.insert(0, BlockNumba())
"""


def _run(code, env=None):
    # from a directory without a numgru source tree, so that the installed
    # package (with its compiled extension) is the one imported
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
        text=True, env={**os.environ, **(env or {})}, timeout=600,
        cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.skipif("cython" not in numgru.available_backends(),
                    reason="the Cython extension is not built here")
def test_works_without_numba_on_the_cython_backend():
    result = _run(BLOCK_NUMBA + """
import numpy as np
import numgru
from numgru.estimators import GRUClassifier

assert numgru.__file__ == {expected!r}, numgru.__file__

assert "numba" not in sys.modules
assert numgru.available_backends() == ["cython", "numpy"], numgru.available_backends()
gru = numgru.GRU(3, 8, num_layers=2, bidirectional=True, dtype="float64", random_state=0)
x = np.random.default_rng(0).standard_normal((5, 7, 3))
out, h_n, cache = gru.forward(x, lengths=[7, 3, 1, 5, 7], return_cache=True)
grads, d_x, d_h0 = gru.backward(cache, np.ones_like(out))
gru.backend = "numpy"
reference, _ = gru.forward(x, lengths=[7, 3, 1, 5, 7])
assert np.abs(out - reference).max() < 1e-10
clf = GRUClassifier(hidden_size=4, max_iter=3, random_state=0).fit(x, [0, 1, 0, 1, 0])
assert clf.predict(x).shape == (5,)
assert "numba" not in sys.modules
print("ok")
""".replace("{expected!r}", repr(numgru.__file__)), env={"NUMGRU_BACKEND": ""})
    assert result.stdout.strip().endswith("ok")


def test_numba_backend_runs_when_no_cache_can_be_written():
    if "numba" not in numgru.available_backends():
        pytest.skip("Numba is not installed")
    # a path below a regular file cannot be created, not even by root
    result = _run("""
import warnings
warnings.simplefilter("error")
import numpy as np
import numgru
gru = numgru.GRU(2, 4, dtype="float64", backend="numba", random_state=0)
x = np.ones((2, 3, 2))
out, _, cache = gru.forward(x, return_cache=True)
gru.backward(cache, np.ones_like(out))
gru.backend = "numpy"
assert np.abs(out - gru.forward(x)[0]).max() < 1e-10
print("ok")
""", env={"NUMBA_CACHE_DIR": os.path.join(os.devnull, "numba-cache")})
    assert result.stdout.strip().endswith("ok")
    assert "Warning" not in result.stderr, result.stderr
