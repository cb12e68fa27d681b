"""numgru agrees with PyTorch ``nn.GRU``: outputs, final states, gradients.

The reference values are PyTorch's, stored in ``tests/fixtures/torch_*.npz``
by ``scripts/make_torch_fixtures.py``; these tests read them with numpy only
and run without PyTorch. Every available backend is checked.
"""

import glob
import json
import os

import numpy as np
import pytest

from numgru import GRU, available_backends

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "torch_*.npz")))
BACKENDS = available_backends()

# Largest error allowed, relative to max(1, largest magnitude of the reference)
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def _fixture_id(path):
    return os.path.basename(path)[len("torch_"):-len(".npz")]


def load_fixture(path):
    """Return (meta, arrays) of a fixture file."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays


def _prefixed(arrays, prefix):
    return {key[len(prefix):]: value for key, value in arrays.items()
            if key.startswith(prefix)}


def assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape}, expected {expected.shape}")
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    error = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
    assert error <= tol * scale, (
        f"{what}: max abs error {error:.3g} > {tol:g} * {scale:.3g}")
    return error


def run_against_fixture(path, backend, dtype):
    meta, arrays = load_fixture(path)
    params = _prefixed(arrays, "param:")
    gru = GRU(meta["input_size"], meta["hidden_size"],
              num_layers=meta["num_layers"], bias=meta["bias"],
              bidirectional=meta["bidirectional"], dtype=dtype, backend=backend)
    assert list(gru.params) == list(params)
    gru.load_state_dict(params)
    out, h_n, cache = gru.forward(arrays["x"], arrays["h0"],
                                  arrays.get("lengths"), return_cache=True)
    grads, d_x, d_h0 = gru.backward(cache, arrays["d_output"], arrays["d_h_n"])
    assert out.dtype == np.dtype(dtype)
    tol = TOLERANCE[dtype]
    errors = {
        "out": assert_close(out, arrays["out"], tol, "out"),
        "h_n": assert_close(h_n, arrays["h_n"], tol, "h_n"),
        "d_x": assert_close(d_x, arrays["d_x"], tol, "d_x"),
        "d_h0": assert_close(d_h0, arrays["d_h0"], tol, "d_h0"),
    }
    expected_grads = _prefixed(arrays, "grad:")
    assert sorted(grads) == sorted(expected_grads)
    for name, expected in expected_grads.items():
        errors[name] = assert_close(grads[name], expected, tol, f"grad of {name}")
    return errors


def test_fixtures_present():
    names = [_fixture_id(path) for path in FIXTURES]
    assert "textbook_float64" in names
    assert any("lengths" in name for name in names)
    assert any("bidir" in name for name in names)
    assert any("nobias" in name for name in names)
    assert any(name.endswith("float32") for name in names)


def test_textbook_fixture_configuration():
    meta, arrays = load_fixture(os.path.join(FIXTURE_DIR, "torch_textbook_float64.npz"))
    assert (meta["input_size"], meta["hidden_size"], meta["num_layers"]) == (50, 128, 1)
    assert arrays["x"].shape == (32, 20, 50)
    assert not np.any(arrays["h0"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", FIXTURES, ids=_fixture_id)
def test_agrees_with_torch_in_fixture_dtype(path, backend):
    meta, _ = load_fixture(path)
    run_against_fixture(path, backend, meta["dtype"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "path", [p for p in FIXTURES if p.endswith("float64.npz")], ids=_fixture_id)
def test_float32_agrees_with_torch_float64(path, backend):
    # The inputs and parameters of every fixture are exact in float32.
    run_against_fixture(path, backend, "float32")
