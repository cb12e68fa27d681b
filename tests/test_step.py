"""GRU.step: the fast path, its fallback, and what the step kernels promise."""

import pickle

import numpy as np
import pytest

import numgru
from numgru import _reference as ref
from numgru._backends import get_backend
from numgru.gru import GRU

from conftest import BACKENDS, COMPILED_BACKENDS

DTYPES = ["float32", "float64"]


def _tolerance(dtype):
    return 2e-6 if dtype == "float32" else 1e-12


def _model(backend, dtype="float32", num_layers=1, bias=True, reset_after=True,
           input_size=5, hidden_size=21, seed=0):
    gru = GRU(input_size, hidden_size, num_layers=num_layers, bias=bias,
              reset_after=reset_after, dtype=dtype, backend=backend,
              random_state=seed)
    # larger weights than the default init make every gate term matter
    for value in gru.params.values():
        value *= 2.0
    return gru


def _inputs(gru, batch, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, gru.input_size)).astype(gru.dtype)
    h = rng.standard_normal(
        (gru.num_layers, batch, gru.hidden_size)).astype(gru.dtype)
    return x, h


def _reference_step(gru, x, h):
    """One step in float64 with the numpy reference kernels."""
    out = np.empty(h.shape)
    layer_input = x.astype(np.float64)
    for layer in range(gru.num_layers):
        w_ih, w_hh, b_ih, b_hh = (p.astype(np.float64)
                                  for p in gru._layer_params(layer, 0))
        ref.cell_forward(layer_input, w_ih, w_hh, b_ih, b_hh,
                         h[layer].astype(np.float64), gru.reset_after,
                         out[layer])
        layer_input = out[layer]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers, bias, reset_after", [
    (1, True, True), (1, True, False), (1, False, True), (2, True, True),
    (3, False, False), (9, True, False)])
@pytest.mark.parametrize("input_size, hidden_size", [(5, 21), (32, 16),
                                                     (17, 40)])
def test_step_matches_reference_and_forward(backend, dtype, num_layers, bias,
                                            reset_after, input_size,
                                            hidden_size):
    gru = _model(backend, dtype, num_layers, bias, reset_after, input_size,
                 hidden_size)
    x, h = _inputs(gru, 3)
    h_new = gru.step(x, h)
    assert h_new.dtype == gru.dtype and h_new.shape == h.shape
    np.testing.assert_allclose(h_new, _reference_step(gru, x, h), rtol=0,
                               atol=_tolerance(dtype))
    _, h_n = gru.forward(x[:, None], h)
    np.testing.assert_allclose(h_new, h_n, rtol=0, atol=_tolerance(dtype))


@pytest.fixture
def threads_for_any_size(monkeypatch):
    """Let every step call run on several threads, however small."""
    if "numba" in COMPILED_BACKENDS:
        from numgru import _numba_kernels
        monkeypatch.setattr(_numba_kernels, "_STEP_SERIAL_WORK", 0)
    if "cython" in COMPILED_BACKENDS:
        from numgru import _cython_kernels
        previous = _cython_kernels._set_step_serial_flops(0.0)
        yield
        _cython_kernels._set_step_serial_flops(previous)
    else:
        yield


def _serial_step(backend, dtype, reset_after, input_size=19, hidden_size=37):
    """A two-layer model, a batch of 23 samples and their step on one
    thread: (gru, x, h, h_new)."""
    gru = _model(backend, dtype, num_layers=2, reset_after=reset_after,
                 input_size=input_size, hidden_size=hidden_size)
    x, h = _inputs(gru, 23)
    numgru.set_num_threads(1)
    return gru, x, h, gru.step(x, h)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("input_size, hidden_size",
                         [(19, 37), (16, 32), (8, 32), (32, 20)])
def test_step_same_bits_for_any_batch_and_thread_count(
        backend, dtype, reset_after, input_size, hidden_size):
    # the Numba step takes four samples at a time, one at a time the rest:
    # (16, 32) gives rows of whole lane vectors; 19 and 37 leave a partial
    # vector at the end of every row, 8 at the end of the input weights'
    # rows only (float32), 20 of the recurrent ones only
    gru, x, h, serial = _serial_step(backend, dtype, reset_after, input_size,
                                     hidden_size)
    for b in (0, 11, 22):
        alone = gru.step(x[b:b + 1], np.ascontiguousarray(h[:, b:b + 1]))
        assert np.array_equal(alone[:, 0], serial[:, b])
    inner = gru.step(x[4:9], np.ascontiguousarray(h[:, 4:9]))
    assert np.array_equal(inner, serial[:, 4:9])
    numgru.set_num_threads(2)
    assert np.array_equal(gru.step(x, h), serial)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("input_size, hidden_size", [(19, 37), (16, 32)])
def test_step_parallel_path_same_bits(backend, dtype, reset_after, input_size,
                                      hidden_size, threads_for_any_size):
    gru, x, h, serial = _serial_step(backend, dtype, reset_after, input_size,
                                     hidden_size)
    numgru.set_num_threads(2)
    assert np.array_equal(gru.step(x, h), serial)
    with numgru.thread_limit(1):
        assert np.array_equal(gru.step(x, h), serial)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_fast_path_and_converted_input_give_the_same_bits(backend):
    gru = _model(backend, "float32", num_layers=2)
    x, h = _inputs(gru, 4)
    expected = gru.step(x, h)
    # converted on the way in: lists, float64, strided and Fortran arrays
    assert np.array_equal(gru.step(x.tolist(), h.tolist()), expected)
    assert np.array_equal(gru.step(x.astype(np.float64), h), expected)
    wide = np.zeros((4, 2 * gru.input_size), np.float32)
    wide[:, ::2] = x
    assert np.array_equal(gru.step(wide[:, ::2], h), expected)
    assert np.array_equal(gru.step(np.asfortranarray(x), h), expected)
    assert np.array_equal(gru.step(x, np.asfortranarray(h)), expected)
    # read-only input is used as it is
    x_ro, h_ro = x.copy(), h.copy()
    x_ro.flags.writeable = False
    h_ro.flags.writeable = False
    assert np.array_equal(gru.step(x_ro, h_ro), expected)
    # no state means zeros
    assert np.array_equal(gru.step(x), gru.step(x, np.zeros_like(h)))


def test_step_returns_a_new_state_and_leaves_its_input(backend):
    gru = _model(backend)
    x, h = _inputs(gru, 2)
    x0, h0 = x.copy(), h.copy()
    first = gru.step(x, h)
    second = gru.step(x, h)
    assert first is not second and not np.shares_memory(first, h)
    assert np.array_equal(first, second)
    assert np.array_equal(x, x0) and np.array_equal(h, h0)


def test_step_sees_new_and_changed_parameters(backend):
    gru = _model(backend, num_layers=2)
    other = _model(backend, num_layers=2, seed=5)
    x, h = _inputs(gru, 3)
    before = gru.step(x, h)
    # load_state_dict replaces every array
    gru.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(gru.step(x, h), other.step(x, h))
    # a change made in place
    gru.params["weight_hh_l1"][3, :] += 0.5
    changed = gru.step(x, h)
    assert not np.array_equal(changed, other.step(x, h))
    np.testing.assert_allclose(changed, _reference_step(gru, x, h), rtol=0,
                               atol=2e-6)
    # one array replaced, then a new params dict
    gru.params["bias_ih_l0"] = gru.params["bias_ih_l0"] + 1.0
    np.testing.assert_allclose(gru.step(x, h), _reference_step(gru, x, h),
                               rtol=0, atol=2e-6)
    gru.params = dict(_model(backend, num_layers=2).params)
    np.testing.assert_array_equal(gru.step(x, h), before)


def test_step_with_parameters_to_convert(backend):
    # parameters the kernels cannot read as they are: converted at each
    # step, so that changes made to them in place are still seen
    gru = _model(backend)
    x, h = _inputs(gru, 3)
    expected = gru.step(x, h)
    gru.params["weight_ih_l0"] = np.asfortranarray(gru.params["weight_ih_l0"])
    gru.params["weight_hh_l0"] = gru.params["weight_hh_l0"].astype(np.float64)
    np.testing.assert_array_equal(gru.step(x, h), expected)
    gru.params["weight_hh_l0"][0] += 1.0
    np.testing.assert_allclose(gru.step(x, h), _reference_step(gru, x, h),
                               rtol=0, atol=2e-6)
    assert not np.array_equal(gru.step(x, h), expected)


def test_step_rejects_parameters_of_the_wrong_shape(backend):
    gru = _model(backend)
    gru.params["weight_hh_l0"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"params\['weight_hh_l0'\] must be "
                                         r"an array of shape \(63, 21\)"):
        gru.step(np.zeros((1, 5), np.float32))


@pytest.mark.parametrize("bad, exc, message", [
    (np.zeros((2, 4), np.float32), ValueError, "x_t must have shape"),
    (np.zeros(5, np.float32), ValueError, "x_t must be a 2D array"),
    (np.zeros((1, 2, 5), np.float32), ValueError, "x_t must be a 2D array"),
    (np.zeros((0, 5), np.float32), ValueError, "x_t must not be empty"),
    (np.array([[1.0, np.nan, 0, 0, 0]], np.float32), ValueError,
     "x_t contains NaN or infinity"),
    (np.array([[1.0, np.inf, 0, 0, 0]]), ValueError,
     "x_t contains NaN or infinity"),
    ([["a"] * 5], TypeError, "x_t must be a numeric array"),
])
def test_step_rejects_bad_input(backend, bad, exc, message):
    gru = _model(backend)
    with pytest.raises(exc, match=message):
        gru.step(bad)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 2, 21), np.float32), "h must have shape"),
    (np.zeros((2, 1, 21), np.float32), "h must have shape"),
    (np.zeros((1, 1, 20), np.float32), "h must have shape"),
    (np.zeros((1, 21), np.float32), "h must be a 3D array"),
    (np.full((1, 1, 21), np.nan, np.float32), "h contains NaN or infinity"),
    (np.full((1, 1, 21), -np.inf), "h contains NaN or infinity"),
])
def test_step_rejects_bad_state(backend, bad, message):
    gru = _model(backend)
    with pytest.raises(ValueError, match=message):
        gru.step(np.zeros((1, 5), np.float32), bad)


def test_step_parameters_start_on_cache_lines():
    gru = GRU(7, 13, num_layers=2, random_state=0)
    loaded = GRU(7, 13, num_layers=2, random_state=1)
    loaded.load_state_dict(gru.state_dict())
    restored = pickle.loads(pickle.dumps(gru))
    for model in (gru, loaded, restored):
        for value in model.params.values():
            assert value.__array_interface__["data"][0] % 64 == 0
            assert value.flags.c_contiguous and value.flags.writeable
    for name, value in gru.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
        np.testing.assert_array_equal(restored.params[name], value)


def test_step_after_pickle(backend):
    gru = _model(backend)
    x, h = _inputs(gru, 2)
    expected = gru.step(x, h)
    restored = pickle.loads(pickle.dumps(gru))
    np.testing.assert_array_equal(restored.step(x, h), expected)
    restored.params["weight_ih_l0"][...] = 0
    assert gru.params["weight_ih_l0"].any()


def test_no_bias_zeros_are_made_once():
    gru = GRU(3, 4, bias=False, random_state=0)
    first = gru._layer_params(0, 0)
    second = gru._layer_params(0, 0)
    assert first[2] is second[2] and first[3] is second[3]
    assert not first[2].any() and first[2].shape == (12,)


def test_step_backend_change(monkeypatch):
    x = np.ones((1, 3), np.float32)
    gru = GRU(3, 4, backend="numpy", random_state=0)
    expected = gru.step(x)
    for name in BACKENDS:
        gru.backend = name
        np.testing.assert_allclose(gru.step(x), expected, rtol=0, atol=2e-6)
    gru.backend = "auto"
    monkeypatch.setenv("NUMGRU_BACKEND", "numpy")
    np.testing.assert_array_equal(gru.step(x), expected)


# ---------------------------------------------------------------------------
# the backends' step_forward

def _backend_step(backend, dtype=np.float32, I=6, H=10, L=2, bias=True):
    kernels = get_backend(backend)
    gru = GRU(I, H, num_layers=L, bias=bias, dtype=dtype, random_state=3)
    weights, biases = gru._step_names()
    prepared = kernels.step_prepare(gru.params, weights, biases)
    return kernels, gru, prepared


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_step_forward_declines_what_it_cannot_take(backend):
    kernels, gru, prepared = _backend_step(backend)
    x, h = _inputs(gru, 3)
    good = kernels.step_forward(x, h, prepared, True, 1)
    np.testing.assert_allclose(good, _reference_step(gru, x, h), rtol=0,
                               atol=2e-6)
    bad_x = [x.astype(np.float64), np.asfortranarray(x), x[:2], x[:, :5],
             x.tolist(), x[None], x.astype(">f4"), np.full_like(x, np.inf)]
    for bad in bad_x:
        assert kernels.step_forward(bad, h, prepared, True, 1) is None
    bad_h = [h[:1], h[:, :2], h.astype(np.float64), np.asfortranarray(h),
             h[0], np.full_like(h, np.nan)]
    for bad in bad_h:
        assert kernels.step_forward(x, bad, prepared, True, 1) is None
    # parameters it cannot read as they are
    params = gru.params
    for name, bad in [
            ("weight_ih_l0", params["weight_ih_l0"].astype(np.float64)),
            ("weight_hh_l1", np.asfortranarray(params["weight_hh_l1"])),
            ("bias_hh_l0", params["bias_hh_l0"][:-1]),
            ("weight_ih_l1", params["weight_ih_l1"].tolist())]:
        kept = params[name]
        params[name] = bad
        assert kernels.step_forward(x, h, prepared, True, 1) is None
        params[name] = kept
    del params["bias_ih_l1"]
    assert kernels.step_forward(x, h, prepared, True, 1) is None


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_step_forward_without_state_or_bias(backend, dtype, bias):
    kernels, gru, prepared = _backend_step(backend, dtype, bias=bias)
    x, _ = _inputs(gru, 4)
    zeros = np.zeros((gru.num_layers, 4, gru.hidden_size), dtype)
    out = kernels.step_forward(x, None, prepared, True, 1)
    np.testing.assert_array_equal(
        out, kernels.step_forward(x, zeros, prepared, True, 1))
    np.testing.assert_allclose(out, _reference_step(gru, x, zeros), rtol=0,
                               atol=_tolerance(np.dtype(dtype).name))


@pytest.mark.skipif("cython" not in COMPILED_BACKENDS, reason="no cython")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_step_same_bits_at_every_vector_level(dtype):
    from numgru import _cython_kernels as ck
    kernels, gru, prepared = _backend_step("cython", dtype, I=19, H=37)
    x, h = _inputs(gru, 6)
    levels = ck._supported_simd_levels()
    previous = ck.SIMD_LEVEL
    results = {}
    try:
        for level in levels:
            ck._set_simd_level(level)
            results[level] = ck.step_forward(x, h, prepared, True, 1)
    finally:
        ck._set_simd_level(previous)
    vector_levels = [level for level in levels if level != "baseline"]
    for level in vector_levels[1:]:
        assert np.array_equal(results[level], results[vector_levels[0]])
    for level in levels:
        np.testing.assert_allclose(
            results[level], _reference_step(gru, x, h), rtol=0,
            atol=_tolerance(np.dtype(dtype).name))


@pytest.mark.skipif("numba" not in COMPILED_BACKENDS, reason="no numba")
def test_numba_cell_forward_rejects_arrays_that_do_not_fit():
    from numgru import _numba_kernels as nk
    gru = GRU(4, 6, random_state=0)
    w_ih, w_hh, b_ih, b_hh = gru._layer_params(0, 0)
    x = np.ones((2, 4), np.float32)
    h = np.zeros((2, 6), np.float32)
    h_new = np.empty_like(h)
    nk.cell_forward(x, w_ih, w_hh, b_ih, b_hh, h, True, h_new)
    for args in [(x[:, :3], w_ih, w_hh, b_ih, b_hh, h),
                 (x, w_ih, w_hh[:, :5], b_ih, b_hh, h),
                 (x, w_ih, w_hh, b_ih[:-1], b_hh, h),
                 (x, w_ih.astype(np.float64), w_hh, b_ih, b_hh, h),
                 (x, np.asfortranarray(w_ih), w_hh, b_ih, b_hh, h)]:
        with pytest.raises(ValueError, match="cell_forward"):
            nk.cell_forward(*args, True, h_new)


@pytest.mark.skipif(set(COMPILED_BACKENDS) != {"numba", "cython"},
                    reason="needs both compiled backends")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("input_size, hidden_size", [
    (1, 4), (5, 21), (16, 32), (32, 100), (3, 129), (40, 8)])
def test_numba_and_cython_steps_give_the_same_bits(dtype, reset_after,
                                                   input_size, hidden_size):
    # two codes written apart that spell out one order of operations: row
    # ends past the last full vector, row counts that are not a multiple of
    # the rows summed together, single and several samples. Cython's
    # baseline code rounds products and sums apart, so only its vector code
    # is held to Numba's bits.
    from numgru import _cython_kernels as ck
    levels = [level for level in ck._supported_simd_levels()
              if level != "baseline"]
    if not levels:
        pytest.skip("the Cython step has no vector code on this machine")
    models = [_model(backend, dtype, num_layers=2, reset_after=reset_after,
                     input_size=input_size, hidden_size=hidden_size)
              for backend in ("numba", "cython")]
    previous = ck.SIMD_LEVEL
    try:
        for level in levels:
            ck._set_simd_level(level)
            for batch in (1, 3, 6):
                x, h = _inputs(models[0], batch, seed=batch)
                numba_state, cython_state = (model.step(x, h)
                                             for model in models)
                assert np.array_equal(numba_state, cython_state)
    finally:
        ck._set_simd_level(previous)
