import numpy as np
import pytest

import numgru

BACKENDS = numgru.available_backends()
COMPILED_BACKENDS = [name for name in BACKENDS if name != "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _restore_threads():
    before = numgru.get_num_threads()
    yield
    numgru.set_num_threads(before)


def make_batch(rng, n_samples, n_steps, n_features, dtype=np.float64):
    """Random inputs and lengths with at least one full-length sample."""
    x = rng.standard_normal((n_samples, n_steps, n_features)).astype(dtype)
    lengths = rng.integers(1, n_steps + 1, size=n_samples)
    lengths[0] = n_steps
    return x, lengths
