"""The compiled Cython kernels against the numpy reference."""

import itertools

import numpy as np
import pytest

ck = pytest.importorskip("numgru._cython_kernels")
from numgru import _reference as ref  # noqa: E402
from kernel_runs import backward_layer as run_backward  # noqa: E402
from kernel_runs import forward_layer as run_forward  # noqa: E402

B, T, I, H = 7, 6, 3, 5
GRID = list(itertools.product([True, False], [False, True], [False, True]))
GRID_IDS = [f"reset_after={ra}-reverse={rv}-varied={va}" for ra, rv, va in GRID]

FORWARD_OUTPUTS = ("out", "h_last", "gates")
GRADIENTS = ("d_x", "d_h0", "d_w_ih", "d_w_hh", "d_b_ih", "d_b_hh")


def make_problem(B, T, I, H, dtype, varied, seed=0):
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(H)
    p = {
        "x": rng.standard_normal((B, T, I)),
        "w_ih": rng.uniform(-scale, scale, (3 * H, I)) * 2,
        "w_hh": rng.uniform(-scale, scale, (3 * H, H)) * 2,
        "b_ih": rng.uniform(-scale, scale, 3 * H),
        "b_hh": rng.uniform(-scale, scale, 3 * H),
        "h0": rng.standard_normal((B, H)) * 0.5,
        "d_out": rng.standard_normal((B, T, H)),
        "d_h_last": rng.standard_normal((B, H)),
    }
    p = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in p.items()}
    if varied:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        lengths[-1] = 1
    else:
        lengths = np.full(B, T)
    p["lengths"] = lengths.astype(np.int64)
    return p


def both(mod, p, reverse, reset_after, n_threads=1):
    fwd = run_forward(mod, p, reverse, reset_after, n_threads)
    return fwd, run_backward(mod, p, fwd, reverse, reset_after, n_threads)


def assert_same_bits(a, b, name):
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert a.tobytes() == b.tobytes(), f"{name} differs bitwise"


@pytest.fixture(params=ck._supported_simd_levels())
def simd_level(request):
    """Run a test with the kernels of each instruction-set level the CPU has."""
    previous = ck.SIMD_LEVEL
    ck._set_simd_level(request.param)
    yield request.param
    ck._set_simd_level(previous)


def test_module_constants():
    assert isinstance(ck.OPENMP_ENABLED, bool)
    assert ck.SIMD_LEVEL == ck._supported_simd_levels()[-1]
    assert "baseline" in ck._supported_simd_levels()
    with pytest.raises(ValueError, match="SIMD level"):
        ck._set_simd_level("sse1")


@pytest.mark.parametrize("reset_after, reverse, varied", GRID, ids=GRID_IDS)
def test_float64_matches_reference(reset_after, reverse, varied, simd_level):
    p = make_problem(B, T, I, H, np.float64, varied)
    fwd_ref, grad_ref = both(ref, p, reverse, reset_after)
    fwd, grad = both(ck, p, reverse, reset_after)
    for name in FORWARD_OUTPUTS:
        np.testing.assert_allclose(fwd[name], fwd_ref[name], rtol=0,
                                   atol=1e-10, err_msg=name)
    for name in GRADIENTS:
        np.testing.assert_allclose(grad[name], grad_ref[name], rtol=0,
                                   atol=1e-10, err_msg=name)


@pytest.mark.parametrize("reset_after, reverse, varied", GRID, ids=GRID_IDS)
def test_float32_matches_reference(reset_after, reverse, varied, simd_level):
    p = make_problem(B, T, I, H, np.float32, varied, seed=1)
    p64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
           for k, v in p.items()}
    fwd_ref, grad_ref = both(ref, p64, reverse, reset_after)
    fwd, grad = both(ck, p, reverse, reset_after)
    for name in FORWARD_OUTPUTS:
        assert fwd[name].dtype == np.float32
        np.testing.assert_allclose(fwd[name], fwd_ref[name], rtol=0,
                                   atol=1e-5, err_msg=name)
    for name in GRADIENTS:
        assert grad[name].dtype == np.float32
        np.testing.assert_allclose(grad[name], grad_ref[name], rtol=1e-5,
                                   atol=2e-5, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_sizes_match_reference(dtype, simd_level):
    # sizes that exercise the vector paths of the matrix products
    p = make_problem(37, 9, 20, 40, dtype, varied=True, seed=2)
    p64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
           for k, v in p.items()}
    tol = 1e-10 if dtype == np.float64 else 5e-5
    for reset_after, reverse in itertools.product([True, False], repeat=2):
        fwd_ref, grad_ref = both(ref, p64, reverse, reset_after)
        fwd, grad = both(ck, p, reverse, reset_after, n_threads=2)
        for name in FORWARD_OUTPUTS:
            np.testing.assert_allclose(fwd[name], fwd_ref[name], rtol=0,
                                       atol=tol, err_msg=name)
        for name in GRADIENTS:
            np.testing.assert_allclose(grad[name], grad_ref[name], rtol=tol,
                                       atol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_forward_without_gates_matches(dtype, reset_after, simd_level):
    # the training forward computes each step in one pass straight into the
    # cache (reset after): same states as inference, and gates that give
    # them back bit for bit
    p = make_problem(B, T, I, H, dtype, varied=True)
    with_gates = run_forward(ck, p, False, reset_after)
    without = run_forward(ck, p, False, reset_after, keep_gates=False)
    assert_same_bits(with_gates["out"], without["out"], "out")
    assert_same_bits(with_gates["h_last"], without["h_last"], "h_last")
    out, gates = with_gates["out"], with_gates["gates"]
    one = dtype(1)
    for b, length in enumerate(p["lengths"]):
        h_prev = np.concatenate([p["h0"][b][None], out[b, :length - 1]])
        z = gates[b, :length, H:2 * H]
        n = gates[b, :length, 2 * H:3 * H]
        assert_same_bits(out[b, :length], (one - z) * n + z * h_prev,
                         "out from the gates")
        assert np.all(gates[b, length:] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_bitwise_same_for_any_thread_count(dtype, reset_after, reverse,
                                           simd_level):
    p = make_problem(45, 11, 19, 37, dtype, varied=True, seed=3)
    fwd1, grad1 = both(ck, p, reverse, reset_after, n_threads=1)
    fwd2, grad2 = both(ck, p, reverse, reset_after, n_threads=2)
    fwd3, grad3 = both(ck, p, reverse, reset_after, n_threads=3)
    for name in FORWARD_OUTPUTS:
        assert_same_bits(fwd1[name], fwd2[name], name)
        assert_same_bits(fwd1[name], fwd3[name], name)
    for name in GRADIENTS:
        assert_same_bits(grad1[name], grad2[name], name)
        assert_same_bits(grad1[name], grad3[name], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_sample_alone_equals_sample_in_batch(dtype, reset_after, reverse,
                                             simd_level):
    p = make_problem(9, 8, 6, 21, dtype, varied=True, seed=4)
    fwd, grad = both(ck, p, reverse, reset_after, n_threads=2)
    k = 4
    per_sample = ("x", "h0", "d_out", "d_h_last", "lengths")
    alone = {name: (np.ascontiguousarray(v[k:k + 1]) if name in per_sample
                    else v) for name, v in p.items()}
    fwd_a, grad_a = both(ck, alone, reverse, reset_after, n_threads=2)
    for name in FORWARD_OUTPUTS:
        assert_same_bits(fwd_a[name][0], fwd[name][k], name)
    for name in ("d_x", "d_h0"):
        assert_same_bits(grad_a[name][0], grad[name][k], name)


def _cell_reference(p, reset_after):
    step = {k: v for k, v in p.items()}
    step["x"] = p["x"][:, :1].copy()
    step["lengths"] = np.ones(len(p["x"]), dtype=np.int64)
    if hasattr(ref, "cell_forward"):
        H = p["w_hh"].shape[1]
        h_new = np.empty((len(p["x"]), H), dtype=p["x"].dtype)
        ref.cell_forward(step["x"][:, 0], p["w_ih"], p["w_hh"], p["b_ih"],
                         p["b_hh"], p["h0"], reset_after, h_new)
        return h_new
    return run_forward(ref, step, False, reset_after)["h_last"]


@pytest.mark.parametrize("reset_after", [True, False])
def test_cell_forward(reset_after):
    p = make_problem(B, T, I, H, np.float64, varied=False, seed=5)
    x = np.ascontiguousarray(p["x"][:, 0])
    h_new = np.full(p["h0"].shape, np.nan)
    ck.cell_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"],
                    reset_after, h_new)
    np.testing.assert_allclose(h_new, _cell_reference(p, reset_after),
                               rtol=0, atol=1e-10)
    # same bits as one step of the layer kernel, for any thread count
    step = dict(p, x=np.ascontiguousarray(p["x"][:, :1]),
                lengths=np.ones(B, dtype=np.int64))
    layer = run_forward(ck, step, False, reset_after)["h_last"]
    assert_same_bits(h_new, layer, "h_new")
    h_new2 = np.empty_like(h_new)
    ck.cell_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"],
                    reset_after, h_new2, n_threads=2)
    assert_same_bits(h_new, h_new2, "h_new")


def test_cell_forward_float32():
    p = make_problem(B, T, I, H, np.float32, varied=False, seed=6)
    x = np.ascontiguousarray(p["x"][:, 0])
    h_new = np.empty(p["h0"].shape, dtype=np.float32)
    ck.cell_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"],
                    True, h_new)
    p64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
           for k, v in p.items()}
    np.testing.assert_allclose(h_new, _cell_reference(p64, True), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_work_arrays_kept_between_calls(n_threads):
    # once a forward and a backward have run, further calls take their work
    # arrays (transposed and packed weights, chunk arrays) from a kept
    # scratch array instead of allocating them again: fresh allocations of
    # that size can page-fault at every call
    import tracemalloc

    p = make_problem(16, 20, 50, 128, np.float32, varied=False)
    fwd = run_forward(ck, p, False, True, n_threads)
    grads = run_backward(ck, p, fwd, False, True, n_threads)
    tracemalloc.start()
    try:
        for _ in range(2):
            ck.layer_forward(p["x"], p["w_ih"], p["w_hh"], p["b_ih"],
                             p["b_hh"], p["h0"], p["lengths"], False, True,
                             fwd["out"], fwd["h_last"], fwd["gates"],
                             n_threads=n_threads)
            ck.layer_backward(p["x"], p["w_ih"], p["w_hh"], p["h0"],
                              p["lengths"], False, True, fwd["out"],
                              fwd["gates"], p["d_out"], p["d_h_last"],
                              grads["d_x"], grads["d_h0"], grads["d_w_ih"],
                              grads["d_w_hh"], grads["d_b_ih"],
                              grads["d_b_hh"], n_threads=n_threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the recurrent weights alone take 196 KiB
    assert peak < p["w_hh"].nbytes // 4


def test_read_only_inputs():
    p = make_problem(B, T, I, H, np.float64, varied=True, seed=7)
    for name in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "lengths"):
        p[name].flags.writeable = False
    fwd_ref = run_forward(ref, p, False, True)
    fwd = run_forward(ck, p, False, True)
    np.testing.assert_allclose(fwd["out"], fwd_ref["out"], rtol=0, atol=1e-10)


def test_nonlinearities_float32_accuracy(simd_level):
    # tanh and sigmoid through a layer with identity-like weights:
    # H = 1, I = 1, w_ih picks x into every gate, everything else zero.
    x = np.linspace(-20, 20, 200001).astype(np.float32)
    n = x.size
    p = {
        "x": x.reshape(n, 1, 1),
        "w_ih": np.ones((3, 1), dtype=np.float32),
        "w_hh": np.zeros((3, 1), dtype=np.float32),
        "b_ih": np.zeros(3, dtype=np.float32),
        "b_hh": np.zeros(3, dtype=np.float32),
        "h0": np.zeros((n, 1), dtype=np.float32),
        "lengths": np.ones(n, dtype=np.int64),
    }
    gates = run_forward(ck, p, False, True)["gates"][:, 0]
    x64 = x.astype(np.float64)
    assert np.abs(gates[:, 0] - 1 / (1 + np.exp(-x64))).max() <= 5e-7
    assert np.abs(gates[:, 2] - np.tanh(x64)).max() <= 5e-7


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ck._supported_simd_levels()),
                    reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avx2_and_avx512_give_the_same_bits(dtype):
    # both levels use one fused multiply-add per term, in the same order
    p = make_problem(11, 7, 21, 35, dtype, varied=True, seed=8)
    previous = ck.SIMD_LEVEL
    results = {}
    try:
        for level in ("avx2", "avx512"):
            ck._set_simd_level(level)
            results[level] = both(ck, p, True, True, n_threads=2)
    finally:
        ck._set_simd_level(previous)
    for part in (0, 1):
        for name, value in results["avx2"][part].items():
            assert_same_bits(value, results["avx512"][part][name], name)


@pytest.fixture
def always_parallel():
    """Use several threads even for tiny problems (no serial shortcut)."""
    previous = ck._set_serial_flops(0.0)
    yield
    ck._set_serial_flops(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_threaded_path_same_bits_as_serial(dtype, reset_after, reverse,
                                           simd_level):
    p = make_problem(45, 11, 19, 37, dtype, varied=True, seed=9)
    fwd1, grad1 = both(ck, p, reverse, reset_after, n_threads=1)
    previous = ck._set_serial_flops(0.0)
    try:
        for n_threads in (2, 3, 4):
            fwd, grad = both(ck, p, reverse, reset_after, n_threads=n_threads)
            for name in FORWARD_OUTPUTS:
                assert_same_bits(fwd1[name], fwd[name], name)
            for name in GRADIENTS:
                assert_same_bits(grad1[name], grad[name], name)
    finally:
        ck._set_serial_flops(previous)


@pytest.mark.parametrize("reset_after, reverse", [(True, False), (False, True)])
def test_long_sequences_in_chunks(reset_after, reverse, always_parallel):
    # the backward holds work arrays for chunks of steps: several chunks
    # here, with samples ending inside, at and before chunk boundaries
    from numgru._chunks import chunk_steps
    B, T = 6, 300
    assert chunk_steps(B, T) < T // 4
    p = make_problem(B, T, 4, 64, np.float64, varied=True, seed=6)
    p["w_hh"] *= 0.2   # a contracting recurrence: rounding does not grow
    p["lengths"][1:4] = [chunk_steps(B, T), 1, T - 1]
    want = both(ref, p, reverse, reset_after)
    one = both(ck, p, reverse, reset_after, n_threads=1)
    two = both(ck, p, reverse, reset_after, n_threads=2)
    for part in range(2):
        for name in want[part]:
            np.testing.assert_allclose(two[part][name], want[part][name],
                                       rtol=0, atol=1e-10, err_msg=name)
            assert_same_bits(one[part][name], two[part][name], name)


def test_threaded_path_from_concurrent_python_threads(always_parallel):
    from concurrent.futures import ThreadPoolExecutor
    problems = [make_problem(20 + k, 7, 5, 24, np.float32, varied=True,
                             seed=20 + k) for k in range(6)]
    expected = [both(ck, p, False, True, n_threads=1) for p in problems]

    def run(k):
        return both(ck, problems[k], False, True, n_threads=2)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, list(range(6)) * 3))
    for k, (fwd, grad) in enumerate(results):
        fwd1, grad1 = expected[k % 6]
        for name in FORWARD_OUTPUTS:
            assert_same_bits(fwd1[name], fwd[name], name)
        for name in GRADIENTS:
            assert_same_bits(grad1[name], grad[name], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 4, 9])
@pytest.mark.parametrize("hidden", [5, 16, 37])
def test_cell_forward_same_bits_as_layer_step(dtype, reset_after, batch,
                                              hidden, simd_level):
    # the unpacked-weight product of the cell against the layer kernel,
    # for sizes on and off the vector widths
    p = make_problem(batch, 2, 19, hidden, dtype, varied=False, seed=11)
    x = np.ascontiguousarray(p["x"][:, 0])
    h_new = np.full(p["h0"].shape, np.nan, dtype=dtype)
    ck.cell_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"],
                    reset_after, h_new)
    step = dict(p, x=np.ascontiguousarray(p["x"][:, :1]),
                lengths=np.ones(batch, dtype=np.int64))
    layer = run_forward(ck, step, False, reset_after)["h_last"]
    assert_same_bits(h_new, layer, "h_new")
    # the general path (used for large batches) gives the same bits
    previous = ck._set_serial_flops(0.0)
    try:
        h_gen = np.full_like(h_new, np.nan)
        ck.cell_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                        p["h0"], reset_after, h_gen, n_threads=2)
    finally:
        ck._set_serial_flops(previous)
    assert_same_bits(h_new, h_gen, "h_new")


def test_cell_forward_rejects_bad_arrays():
    p = make_problem(3, 2, 4, 6, np.float64, varied=False, seed=12)
    x = np.ascontiguousarray(p["x"][:, 0])
    h_new = np.empty_like(p["h0"])
    args = [x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["h0"]]
    # non-contiguous input: not silently misread
    bad = list(args)
    bad[0] = np.asfortranarray(np.stack([x, x], axis=1))[:, 0]
    with pytest.raises((ValueError, TypeError)):
        ck.cell_forward(*bad, True, h_new)
    # mixed dtypes
    bad = list(args)
    bad[1] = bad[1].astype(np.float32)
    with pytest.raises((ValueError, TypeError)):
        ck.cell_forward(*bad, True, h_new)
    # read-only output
    ro = np.empty_like(p["h0"])
    ro.flags.writeable = False
    with pytest.raises((ValueError, TypeError, BufferError)):
        ck.cell_forward(*args, True, ro)
    # read-only inputs are fine
    for a in args:
        a.flags.writeable = False
    ck.cell_forward(*args, True, h_new)
    np.testing.assert_allclose(h_new, _cell_reference(p, True), rtol=0,
                               atol=1e-10)
