"""The GRU engine: gradients, backend agreement, determinism, validation."""

import itertools
import pickle
import threading

import numpy as np
import pytest

import numgru
from numgru.gru import GRU

from conftest import BACKENDS, COMPILED_BACKENDS, make_batch

CONFIGS = list(itertools.product(
    [1, 2, 3],          # num_layers
    [False, True],      # bidirectional
    [False, True],      # variable lengths
    [False, True],      # h0 given
    [True, False],      # reset_after
))


def _config_id(config):
    layers, bidirectional, varied, with_h0, reset_after = config
    return (f"L{layers}-{'bi' if bidirectional else 'uni'}-"
            f"{'lengths' if varied else 'full'}-{'h0' if with_h0 else 'noh0'}-"
            f"{'after' if reset_after else 'before'}")


def _setup(config, backend, seed=0, n_samples=3, n_steps=5, n_features=3, hidden=4):
    layers, bidirectional, varied, with_h0, reset_after = config
    rng = np.random.default_rng(seed)
    gru = GRU(n_features, hidden, num_layers=layers, bidirectional=bidirectional,
              reset_after=reset_after, dtype="float64", backend=backend,
              random_state=seed)
    # larger weights than the default init make every gate term matter
    for value in gru.params.values():
        value *= 2.0
    x, lengths = make_batch(rng, n_samples, n_steps, n_features)
    if not varied:
        lengths = None
    D = gru.num_directions
    h0 = rng.standard_normal((layers * D, n_samples, hidden)) if with_h0 else None
    d_out = rng.standard_normal((n_samples, n_steps, D * hidden))
    d_h_n = rng.standard_normal((layers * D, n_samples, hidden))
    return gru, x, h0, lengths, d_out, d_h_n


def _loss(gru, x, h0, lengths, d_out, d_h_n):
    out, h_n = gru.forward(x, h0, lengths)
    return float(np.sum(out * d_out) + np.sum(h_n * d_h_n))


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_gradients_match_finite_differences(config, backend):
    gru, x, h0, lengths, d_out, d_h_n = _setup(config, backend)
    _, _, cache = gru.forward(x, h0, lengths, return_cache=True)
    grads, d_x, d_h0 = gru.backward(cache, d_out, d_h_n)
    rng = np.random.default_rng(1)
    eps = 1e-6
    # directional derivative along random directions in every argument
    for _ in range(2):
        directions = {name: rng.standard_normal(p.shape) for name, p in gru.params.items()}
        v_x = rng.standard_normal(x.shape)
        v_h0 = rng.standard_normal((len(d_h_n),) + d_h_n.shape[1:])
        base_h0 = np.zeros_like(v_h0) if h0 is None else h0
        original = gru.state_dict()

        def shifted_loss(sign):
            gru.load_state_dict({name: original[name] + sign * eps * directions[name]
                                 for name in original})
            return _loss(gru, x + sign * eps * v_x, base_h0 + sign * eps * v_h0,
                         lengths, d_out, d_h_n)

        numeric = (shifted_loss(1) - shifted_loss(-1)) / (2 * eps)
        gru.load_state_dict(original)
        analytic = (sum(np.sum(grads[name] * directions[name]) for name in grads)
                    + np.sum(d_x * v_x) + np.sum(d_h0 * v_h0))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gradients_elementwise_finite_differences(reset_after, backend):
    config = (2, True, True, True, reset_after)
    gru, x, h0, lengths, d_out, d_h_n = _setup(config, backend, n_samples=2,
                                               n_steps=4, n_features=2, hidden=3)
    _, _, cache = gru.forward(x, h0, lengths, return_cache=True)
    grads, d_x, _ = gru.backward(cache, d_out, d_h_n)
    eps = 1e-6
    for name, param in gru.params.items():
        numeric = np.zeros_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + eps
            plus = _loss(gru, x, h0, lengths, d_out, d_h_n)
            param[index] = saved - eps
            minus = _loss(gru, x, h0, lengths, d_out, d_h_n)
            param[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    numeric_x = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[index] += eps
        plus = _loss(gru, shifted, h0, lengths, d_out, d_h_n)
        shifted[index] -= 2 * eps
        minus = _loss(gru, shifted, h0, lengths, d_out, d_h_n)
        numeric_x[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(d_x, numeric_x, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_compiled_backend_matches_reference(config, backend_name):
    results = []
    for name in ("numpy", backend_name):
        gru, x, h0, lengths, d_out, d_h_n = _setup(config, name, n_samples=5,
                                                   n_steps=7, hidden=6)
        out, h_n, cache = gru.forward(x, h0, lengths, return_cache=True)
        grads, d_x, d_h0 = gru.backward(cache, d_out, d_h_n)
        results.append((out, h_n, grads, d_x, d_h0))
    (out_a, h_a, g_a, dx_a, dh_a), (out_b, h_b, g_b, dx_b, dh_b) = results
    np.testing.assert_allclose(out_b, out_a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(h_b, h_a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx_b, dx_a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dh_b, dh_a, rtol=0, atol=1e-10)
    for name in g_a:
        np.testing.assert_allclose(g_b[name], g_a[name], rtol=0, atol=1e-10,
                                   err_msg=name)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_float32_matches_float64_reference(backend_name):
    rng = np.random.default_rng(3)
    x, lengths = make_batch(rng, 6, 9, 4)
    reference = GRU(4, 8, num_layers=2, bidirectional=True, dtype="float64",
                    backend="numpy", random_state=3)
    fast = GRU(4, 8, num_layers=2, bidirectional=True, dtype="float32",
               backend=backend_name)
    fast.load_state_dict(reference.state_dict())
    out64, h64, cache64 = reference.forward(x, lengths=lengths, return_cache=True)
    out32, h32, cache32 = fast.forward(x, lengths=lengths, return_cache=True)
    assert out32.dtype == np.float32 and h32.dtype == np.float32
    np.testing.assert_allclose(out32, out64, atol=1e-5)
    np.testing.assert_allclose(h32, h64, atol=1e-5)
    d_out = rng.standard_normal(out64.shape)
    g64, dx64, _ = reference.backward(cache64, d_out)
    g32, dx32, _ = fast.backward(cache32, d_out)
    np.testing.assert_allclose(dx32, dx64, atol=1e-4)
    for name in g64:
        np.testing.assert_allclose(g32[name], g64[name], atol=1e-4, rtol=1e-4)


def _train_step(gru, x, lengths, d_out):
    out, h_n, cache = gru.forward(x, lengths=lengths, return_cache=True)
    grads, d_x, d_h0 = gru.backward(cache, d_out)
    return out, h_n, grads, d_x, d_h0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_bitwise_identical_for_any_thread_count(backend_name, dtype):
    rng = np.random.default_rng(4)
    x, lengths = make_batch(rng, 9, 11, 5)
    gru = GRU(5, 16, num_layers=2, bidirectional=True, dtype=dtype,
              backend=backend_name, random_state=4)
    d_out = rng.standard_normal((9, 11, 32))
    numgru.set_num_threads(1)
    single = _train_step(gru, x, lengths, d_out)
    numgru.set_num_threads(2)
    double = _train_step(gru, x, lengths, d_out)
    for a, b in zip(single[:2] + single[3:], double[:2] + double[3:]):
        assert np.array_equal(a, b)
    for name in single[2]:
        assert np.array_equal(single[2][name], double[2][name]), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_sample_result_does_not_depend_on_batch(backend_name, dtype):
    rng = np.random.default_rng(5)
    x, lengths = make_batch(rng, 9, 8, 3)
    lengths[4] = 5
    gru = GRU(3, 12, num_layers=2, bidirectional=True, dtype=dtype,
              backend=backend_name, random_state=5)
    d_out = rng.standard_normal((9, 8, 24))
    out_all, h_all, _, dx_all, dh_all = _train_step(gru, x, lengths, d_out)
    out_one, h_one, _, dx_one, dh_one = _train_step(gru, x[4:5], lengths[4:5], d_out[4:5])
    assert np.array_equal(out_all[4], out_one[0])
    assert np.array_equal(h_all[:, 4], h_one[:, 0])
    assert np.array_equal(dx_all[4], dx_one[0])
    assert np.array_equal(dh_all[:, 4], dh_one[:, 0])


def test_padding_never_leaks(backend):
    rng = np.random.default_rng(6)
    x, lengths = make_batch(rng, 4, 7, 2)
    gru = GRU(2, 5, num_layers=2, bidirectional=True, dtype="float64",
              backend=backend, random_state=6)
    out, h_n = gru.forward(x, lengths=lengths)
    noisy = x.copy()
    for b, length in enumerate(lengths):
        noisy[b, length:] = 1e3
        assert not out[b, length:].any()
    out_noisy, h_noisy = gru.forward(noisy, lengths=lengths)
    np.testing.assert_array_equal(out, out_noisy)
    np.testing.assert_array_equal(h_n, h_noisy)
    # a truncated sample alone gives the same result as with padding
    b = int(np.argmin(lengths))
    out_short, h_short = gru.forward(x[b:b + 1, :lengths[b]])
    np.testing.assert_allclose(out_short[0], out[b, :lengths[b]], atol=1e-12)
    np.testing.assert_allclose(h_short[:, 0], h_n[:, b], atol=1e-12)


def test_reverse_direction_starts_at_last_valid_step(backend):
    gru = GRU(1, 3, bidirectional=True, dtype="float64", backend=backend, random_state=0)
    x = np.arange(1.0, 6.0).reshape(1, 5, 1) / 5
    out, h_n = gru.forward(x, lengths=[3])
    flipped = x[:, 2::-1]
    reverse_only = GRU(1, 3, dtype="float64", backend=backend)
    reverse_only.load_state_dict({name.replace("_reverse", ""): value
                                  for name, value in gru.params.items()
                                  if name.endswith("_reverse")})
    out_flipped, h_flipped = reverse_only.forward(flipped)
    np.testing.assert_allclose(out[0, :3, 3:], out_flipped[0, ::-1], atol=1e-12)
    np.testing.assert_allclose(h_n[1], h_flipped[0], atol=1e-12)


def test_dropout_only_in_training_and_gradients_respect_mask(backend):
    rng = np.random.default_rng(7)
    x, lengths = make_batch(rng, 3, 4, 2)
    gru = GRU(2, 4, num_layers=2, dropout=0.5, dtype="float64", backend=backend,
              random_state=7)
    plain = GRU(2, 4, num_layers=2, dtype="float64", backend=backend)
    plain.load_state_dict(gru.state_dict())
    np.testing.assert_array_equal(gru.forward(x, lengths=lengths)[0],
                                  plain.forward(x, lengths=lengths)[0])
    d_out = rng.standard_normal((3, 4, 4))
    outs = [gru.forward(x, lengths=lengths, training=True,
                        rng=np.random.default_rng(11), return_cache=True)
            for _ in range(2)]
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert not np.allclose(outs[0][0], plain.forward(x, lengths=lengths)[0])
    grads, _, _ = gru.backward(outs[0][2], d_out)
    eps = 1e-6
    name = "weight_ih_l0"
    direction = rng.standard_normal(gru.params[name].shape)
    original = gru.params[name].copy()
    losses = []
    for sign in (1, -1):
        gru.params[name][...] = original + sign * eps * direction
        out, _ = gru.forward(x, lengths=lengths, training=True,
                             rng=np.random.default_rng(11))
        losses.append(np.sum(out * d_out))
    gru.params[name][...] = original
    numeric = (losses[0] - losses[1]) / (2 * eps)
    assert numeric == pytest.approx(np.sum(grads[name] * direction), rel=1e-6)


def test_step_matches_forward(backend):
    rng = np.random.default_rng(8)
    gru = GRU(3, 6, num_layers=2, dtype="float64", backend=backend, random_state=8)
    x = rng.standard_normal((2, 5, 3))
    out, h_n = gru.forward(x)
    h = None
    for t in range(5):
        h = gru.step(x[:, t], h)
        np.testing.assert_allclose(h[-1], out[:, t], atol=1e-12)
    np.testing.assert_allclose(h, h_n, atol=1e-12)
    with pytest.raises(ValueError, match="unidirectional"):
        GRU(3, 6, bidirectional=True, backend=backend).step(x[:, 0])


def test_concurrent_python_threads(backend):
    rng = np.random.default_rng(9)
    x, lengths = make_batch(rng, 16, 12, 4, dtype=np.float32)
    gru = GRU(4, 32, num_layers=2, backend=backend, random_state=9)
    expected, _ = gru.forward(x, lengths=lengths)
    results, errors = [], []

    def worker():
        try:
            for _ in range(5):
                results.append(gru.forward(x, lengths=lengths)[0])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 20
    for result in results:
        assert np.array_equal(result, expected)


def test_state_dict_round_trip_and_pickle(backend):
    gru = GRU(3, 4, num_layers=2, bidirectional=True, backend=backend, random_state=1)
    state = gru.state_dict()
    assert list(state) == list(gru.params)
    assert state["weight_ih_l1"].shape == (12, 8)
    assert state["weight_hh_l0_reverse"].shape == (12, 4)
    other = GRU(3, 4, num_layers=2, bidirectional=True, backend=backend, random_state=2)
    other.load_state_dict(state)
    x = np.ones((2, 3, 3))
    np.testing.assert_array_equal(other.forward(x)[0], gru.forward(x)[0])
    restored = pickle.loads(pickle.dumps(gru))
    np.testing.assert_array_equal(restored.forward(x)[0], gru.forward(x)[0])
    assert restored.backend == backend
    state["weight_ih_l0"][...] = 0
    assert gru.params["weight_ih_l0"].any(), "state_dict must return copies"


def test_same_seed_same_parameters():
    a = GRU(3, 4, num_layers=2, random_state=0).state_dict()
    b = GRU(3, 4, num_layers=2, random_state=0).state_dict()
    c = GRU(3, 4, num_layers=2, random_state=1).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    bound = 1 / np.sqrt(4)
    assert all(np.abs(v).max() <= bound for v in a.values())


def test_bias_false_has_no_bias_parameters(backend):
    gru = GRU(2, 3, bias=False, backend=backend, dtype="float64")
    assert set(gru.params) == {"weight_ih_l0", "weight_hh_l0"}
    _, _, cache = gru.forward(np.ones((1, 2, 2)), return_cache=True)
    grads, _, _ = gru.backward(cache, np.ones((1, 2, 3)))
    assert set(grads) == {"weight_ih_l0", "weight_hh_l0"}


def test_other_numeric_input_is_converted():
    gru = GRU(2, 3, random_state=0)
    out, h_n = gru.forward(np.ones((1, 4, 2), dtype=np.int64))
    assert out.dtype == np.float32 and h_n.dtype == np.float32
    out64, _ = gru.forward(np.ones((1, 4, 2), dtype=np.float64))
    np.testing.assert_array_equal(out, out64)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("x, exc, message", [
    (np.ones((4, 2)), ValueError, "x must be a 3D array"),
    (np.ones((2, 4, 5)), ValueError, r"x must have shape .*axis 2 is 5, expected 3"),
    (np.full((2, 4, 3), np.nan), ValueError, "x contains NaN or infinity"),
    (np.full((2, 4, 3), np.inf), ValueError, "x contains NaN or infinity"),
    (np.ones((0, 4, 3)), ValueError, "x must not be empty"),
    (np.ones((2, 0, 3)), ValueError, "x must not be empty"),
    (np.array([[["a", "b", "c"]]]), TypeError, "x must be a numeric array"),
    ([[[1, 2, 3]], [[1, 2]]], TypeError, "x must be a numeric array"),
])
def test_bad_x(x, exc, message):
    gru = GRU(3, 2, backend="numpy")
    with pytest.raises(exc, match=message):
        gru.forward(x)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_bad_value_anywhere_is_found(dtype, compiled, monkeypatch):
    # the finiteness check sums v * 0 over the values in any order: a single
    # NaN or infinity at any position, in a vector's worth of values or in
    # the tail after the last whole vector, must still make it NaN
    from numgru import _validation
    if compiled:
        from numgru import _numba_kernels  # noqa: F401  (loads the kernel)
        assert _validation._all_finite_kernel() is not None
    else:
        monkeypatch.setattr(_validation, "_all_finite_kernel", lambda: None)
    values = np.random.default_rng(0).standard_normal(83).astype(dtype)
    values[5] = np.finfo(dtype).max   # finite extremes stay finite
    values[6] = -np.finfo(dtype).max
    assert _validation.all_finite(values)
    assert _validation.all_finite(values[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for position in range(values.size):
            spoiled = values.copy()
            spoiled[position] = bad
            assert not _validation.all_finite(spoiled)


@pytest.mark.parametrize("lengths, exc, message", [
    ([0, 3], ValueError, "lengths must be between 1 and the number of steps"),
    ([4, 5], ValueError, "lengths must be between 1 and the number of steps"),
    ([1, 2, 3], ValueError, r"lengths must have shape \(2,\)"),
    ([1.5, 2], ValueError, "whole numbers"),
    (["a", "b"], TypeError, "lengths must be an array of integers"),
])
def test_bad_lengths(lengths, exc, message):
    gru = GRU(3, 2, backend="numpy")
    with pytest.raises(exc, match=message):
        gru.forward(np.ones((2, 4, 3)), lengths=lengths)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_backward_without_d_output_is_backward_of_zeros(backend, bidirectional):
    rng = np.random.default_rng(0)
    gru = GRU(3, 4, num_layers=2, bidirectional=bidirectional, backend=backend,
              random_state=0)
    x = rng.standard_normal((5, 6, 3))
    _, h_n, cache = gru.forward(x, lengths=[6, 1, 3, 6, 2], return_cache=True)
    d_h_n = rng.standard_normal(h_n.shape)
    zeros = np.zeros((5, 6, gru.num_directions * 4))
    want = gru.backward(cache, zeros, d_h_n)
    got = gru.backward(cache, None, d_h_n)
    for name in want[0]:
        assert got[0][name].tobytes() == want[0][name].tobytes(), name
    assert got[1].tobytes() == want[1].tobytes()
    assert got[2].tobytes() == want[2].tobytes()


def test_bad_h0_and_gradients():
    gru = GRU(3, 2, num_layers=2, backend="numpy")
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 1, 2\)"):
        gru.forward(np.ones((1, 4, 3)), h0=np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="h0 contains NaN"):
        gru.forward(np.ones((1, 4, 3)), h0=np.full((2, 1, 2), np.nan))
    _, _, cache = gru.forward(np.ones((1, 4, 3)), return_cache=True)
    with pytest.raises(ValueError, match="d_output must have shape"):
        gru.backward(cache, np.ones((1, 4, 3)))
    with pytest.raises(ValueError, match="d_h_n must have shape"):
        gru.backward(cache, np.ones((1, 4, 2)), np.ones((1, 1, 2)))
    with pytest.raises(TypeError, match="cache must be the ForwardCache"):
        gru.backward({}, np.ones((1, 4, 2)))
    other = GRU(3, 2, num_layers=2, backend="numpy")
    with pytest.raises(ValueError, match="another GRU"):
        other.backward(cache, np.ones((1, 4, 2)))


def test_bad_state_dict():
    gru = GRU(3, 2, backend="numpy")
    state = gru.state_dict()
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        gru.load_state_dict({k: v for k, v in state.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match=r"unexpected \['weight_ih_l1'\]"):
        gru.load_state_dict({**state, "weight_ih_l1": np.ones((6, 2))})
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\] must have shape"):
        gru.load_state_dict({**state, "weight_hh_l0": np.ones((6, 3))})
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        gru.load_state_dict([1, 2])
    np.testing.assert_array_equal(gru.params["weight_hh_l0"], state["weight_hh_l0"])


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"input_size": 0}, ValueError, "input_size must be an integer >= 1"),
    ({"hidden_size": 2.5}, TypeError, "hidden_size must be an integer"),
    ({"num_layers": 0}, ValueError, "num_layers must be an integer >= 1"),
    ({"bidirectional": "yes"}, TypeError, "bidirectional must be True or False"),
    ({"dropout": 1.0}, ValueError, r"dropout must be a number in \[0, 1\)"),
    ({"dtype": "int32"}, ValueError, "dtype must be 'float32' or 'float64'"),
    ({"backend": "torch"}, ValueError, "backend must be 'auto' or one of"),
])
def test_bad_constructor_arguments(kwargs, exc, message):
    arguments = {"input_size": 3, "hidden_size": 2, **kwargs}
    with pytest.raises(exc, match=message):
        GRU(**arguments)


def test_thread_count_api():
    numgru.set_num_threads(1)
    assert numgru.get_num_threads() == 1
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        numgru.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        numgru.set_num_threads("2")


def test_available_backends_and_env(monkeypatch):
    from numgru._backends import resolve_backend
    assert "numpy" in BACKENDS
    assert resolve_backend("auto") == BACKENDS[0]
    monkeypatch.setenv("NUMGRU_BACKEND", "numpy")
    assert resolve_backend("auto") == "numpy"
    monkeypatch.setenv("NUMGRU_BACKEND", "fortran")
    with pytest.raises(ValueError, match="NUMGRU_BACKEND must be one of"):
        resolve_backend("auto")
