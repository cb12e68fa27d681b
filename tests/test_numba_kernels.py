"""The Numba kernels against the numpy reference, and their determinism."""

import itertools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from numgru import _reference as ref  # noqa: E402
from numgru import _numba_kernels as nk  # noqa: E402
from numgru._chunks import chunk_steps, step_chunks  # noqa: E402
from kernel_runs import backward_layer, both_forms, forward_layer  # noqa: E402


def make_problem(B, T, I, H, dtype, varied, seed=0):
    rng = np.random.default_rng(seed)
    p = dict(
        x=rng.standard_normal((B, T, I)),
        w_ih=rng.standard_normal((3 * H, I)) * 0.5,
        w_hh=rng.standard_normal((3 * H, H)) * 0.5,
        b_ih=rng.standard_normal(3 * H) * 0.3,
        b_hh=rng.standard_normal(3 * H) * 0.3,
        h0=rng.standard_normal((B, H)) * 0.5,
        d_out=rng.standard_normal((B, T, H)),
        d_h_last=rng.standard_normal((B, H)),
    )
    p = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in p.items()}
    if varied:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
    else:
        lengths = np.full(B, T)
    p["lengths"] = lengths.astype(np.int64)
    return p


def run(mod, p, reverse, reset_after, n_threads=1, keep_gates=True):
    fwd = forward_layer(mod, p, reverse, reset_after, n_threads, keep_gates,
                        fill=7)
    if not keep_gates:
        return {"out": fwd["out"], "h_last": fwd["h_last"]}
    return dict(fwd, **backward_layer(mod, p, fwd, reverse, reset_after,
                                      n_threads, fill=7))


GRID = list(itertools.product([True, False], [False, True], [False, True]))


@pytest.mark.parametrize("reset_after, reverse, varied", GRID)
def test_float64_matches_reference(reset_after, reverse, varied):
    p = make_problem(7, 6, 3, 5, np.float64, varied)
    want = run(ref, p, reverse, reset_after)
    got = run(nk, p, reverse, reset_after, n_threads=2)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10,
                                   err_msg=name)


@pytest.mark.parametrize("reset_after, reverse", [(True, False), (False, True)])
def test_float64_larger_shapes(reset_after, reverse):
    # exercises every tiling remainder: rows, k groups and column tiles
    p = make_problem(11, 5, 9, 45, np.float64, True, seed=3)
    want = run(ref, p, reverse, reset_after)
    got = run(nk, p, reverse, reset_after, n_threads=2)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10,
                                   err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_weight_gradient_same_bits_in_both_layouts(dtype, monkeypatch):
    # narrow inputs take vectors along the gate axis, wide ones along the
    # inputs: the same fma chains either way
    p = make_problem(11, 5, 9, 45, dtype, True, seed=4)
    assert nk._narrow_inputs(9, dtype)
    fwd = forward_layer(nk, p, False, True)
    narrow = backward_layer(nk, p, fwd, False, True)
    monkeypatch.setattr(nk, "_narrow_inputs", lambda I, dtype: False)
    wide = backward_layer(nk, p, fwd, False, True)
    for name in narrow:
        assert np.array_equal(narrow[name], wide[name]), name


@numba.njit
def _fma_chain_products(A, acol, X, ra, rx, D, j0, j1, db):
    # the weight-gradient product one element at a time: one fma chain per
    # element over the rows in order, continuing from its value in D
    for j in range(j0, j1):
        for i in range(X.shape[1]):
            v = D[j, i]
            for r in range(ra.shape[0]):
                v = nk._fma(A[ra[r], acol + j - j0], X[rx[r], i], v)
            D[j, i] = v
        v = db[j]
        for r in range(ra.shape[0]):
            v = v + A[ra[r], acol + j - j0]
        db[j] = v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows, n_out, n_cols", [
    (300, 384, 128), (7, 45, 45), (129, 27, 33), (260, 16, 64), (5, 3, 2)])
def test_weight_gradient_product_is_one_fma_chain(dtype, n_rows, n_out,
                                                  n_cols):
    # register tiles, packed copies and passes over the rows change the
    # speed of the product, never its bits
    rng = np.random.default_rng(n_rows + n_out)
    A = rng.standard_normal((n_rows + 9, n_out + 5)).astype(dtype)
    X = rng.standard_normal((n_rows + 4, n_cols)).astype(dtype)
    ra = rng.permutation(n_rows + 9)[:n_rows].astype(np.int64)
    rx = rng.permutation(n_rows + 4)[:n_rows].astype(np.int64)
    D0 = rng.standard_normal((n_out + 2, n_cols)).astype(dtype)
    db0 = rng.standard_normal(n_out + 2).astype(dtype)
    j0, j1, acol = 1, n_out + 1, 3
    D, db = D0.copy(), db0.copy()
    nk._outer_acc(A, acol, X, 0, n_cols, ra, rx, n_rows, D, j0, j1, 0, db)
    D_chain, db_chain = D0.copy(), db0.copy()
    _fma_chain_products(A, acol, X, ra, rx, D_chain, j0, j1, db_chain)
    assert np.array_equal(D, D_chain)
    assert np.array_equal(db, db_chain)


@numba.njit
def _fma_chain_rows(A, ia, ak0, W, wk0, n_sum, C, ic, cj0):
    # C[ic[a], cj0+j] += sum_k A[ia[a], ak0+k] * W[wk0+k, j], one element
    # at a time: one fma chain over k ascending
    for a in range(ia.shape[0]):
        for j in range(W.shape[1]):
            v = C[ic[a], cj0 + j]
            for k in range(n_sum):
                v = nk._fma(A[ia[a], ak0 + k], W[wk0 + k, j], v)
            C[ic[a], cj0 + j] = v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows, n_sum, n_cols", [
    (29, 300, 50), (13, 40, 48), (8, 7, 17), (5, 9, 1), (12, 260, 33),
    (1, 32, 96), (16, 300, 130), (3, 5, 80), (18, 20, 64)])
@pytest.mark.parametrize("tiles", ["panels", "wide"])
def test_recurrent_product_is_one_fma_chain(dtype, n_rows, n_sum, n_cols,
                                            tiles):
    # the products of the recurrence and of the input gradient, with column
    # counts that leave 2, 1 or less than 1 vector for the last tiles, and
    # row counts that leave rows outside the multi-row register tiles (those
    # go against two or four tiles at once); the weights packed as the
    # kernels pack them (tiles of one panel) and in tiles of several panels
    rng = np.random.default_rng(n_rows + n_cols)
    A = rng.standard_normal((n_rows + 3, n_sum + 2)).astype(dtype)
    W = rng.standard_normal((n_sum + 1, n_cols)).astype(dtype)
    max_width = nk._panel_width(W) if tiles == "panels" else 256
    C0 = rng.standard_normal((n_rows + 5, n_cols + 2)).astype(dtype)
    ia = rng.permutation(n_rows + 3)[:n_rows].astype(np.int64)
    ic = rng.permutation(n_rows + 5)[:n_rows].astype(np.int64)
    C = C0.copy()
    nk._gemm_acc(A, ia, 2, nk._pack(W, max_width), 1, n_sum, n_cols, C,
                 ic, 1, n_rows)
    C_chain = C0.copy()
    _fma_chain_rows(A, ia, 2, W, 1, n_sum, C_chain, ic, 1)
    assert np.array_equal(C[ic], C_chain[ic])
    untouched = np.setdiff1d(np.arange(n_rows + 5), ic)
    assert np.array_equal(C[untouched], C0[untouched])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows, n_sum, n_cols", [
    (29, 300, 50), (13, 40, 48), (8, 7, 17), (5, 9, 1), (1, 32, 96),
    (16, 300, 130), (3, 5, 80)])
@pytest.mark.parametrize("tiles", ["panels", "wide"])
def test_product_from_a_bias_row_is_one_fma_chain(dtype, n_rows, n_sum,
                                                  n_cols, tiles):
    # the forward's products start each sum from the bias row instead of
    # from C: the same chain as writing the bias to C first, also past the
    # first pass of _KC terms (n_sum = 300) and in the last partial tile;
    # packed as in test_recurrent_product_is_one_fma_chain
    rng = np.random.default_rng(n_rows + n_cols + 1)
    A = rng.standard_normal((n_rows + 3, n_sum + 2)).astype(dtype)
    W = rng.standard_normal((n_sum + 1, n_cols)).astype(dtype)
    max_width = nk._panel_width(W) if tiles == "panels" else 256
    bias = rng.standard_normal((1, n_cols + 2)).astype(dtype)
    C0 = rng.standard_normal((n_rows + 5, n_cols + 2)).astype(dtype)
    ia = rng.permutation(n_rows + 3)[:n_rows].astype(np.int64)
    ic = rng.permutation(n_rows + 5)[:n_rows].astype(np.int64)
    C = C0.copy()
    nk._gemm_from(A, ia, 2, nk._pack(W, max_width), 1, n_sum, n_cols, C,
                  ic, 1, n_rows, bias, np.zeros(n_rows, np.int64))
    C_chain = C0.copy()
    C_chain[ic, 1:n_cols + 1] = bias[0, 1:n_cols + 1]
    _fma_chain_rows(A, ia, 2, W, 1, n_sum, C_chain, ic, 1)
    assert np.array_equal(C[ic], C_chain[ic])
    untouched = np.setdiff1d(np.arange(n_rows + 5), ic)
    assert np.array_equal(C[untouched], C0[untouched])
    assert np.array_equal(C[:, 0], C0[:, 0])
    assert np.array_equal(C[:, n_cols + 1:], C0[:, n_cols + 1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [1, 3, 4, 5, 8, 13, 21])
@pytest.mark.parametrize("vectors, vectors2", [(1, 0), (2, 3), (3, 1)])
def test_step_dot_groups_give_the_same_bits(dtype, n_rows, vectors,
                                            vectors2):
    # rows of whole lane vectors: groups of four rows (AVX2), groups of
    # eight then four (AVX-512; run here whatever the machine) and the
    # general code with its masked loads of a partial last vector give the
    # same bits, with and without a second operand pair summed in the same
    # lanes
    lanes = 64 // np.dtype(dtype).itemsize
    K, K2 = vectors * lanes, max(vectors2, 1) * lanes
    with2 = vectors2 > 0
    rng = np.random.default_rng(n_rows * 10 + vectors)
    w = rng.standard_normal((n_rows + 7, K)).astype(dtype)
    w2 = rng.standard_normal((n_rows + 7, K2)).astype(dtype)
    a = rng.standard_normal((3, K)).astype(dtype)
    a2 = rng.standard_normal((2, K2)).astype(dtype)
    results = []
    for run in ("fours", "eights", "partial", "dispatch"):
        out = np.full(n_rows + 9, -1.0, dtype)
        args = (out, 2, w, 5, n_rows, a, 1, w2, a2, 1, with2)
        if run == "partial":
            nk._step_partial(*args)
        elif run == "dispatch":
            nk._step_dots(*args)
        else:
            nk._step_whole(*args, run == "eights")
        results.append(out)
    for out in results[1:]:
        assert np.array_equal(out, results[0])
    expected = w[5:5 + n_rows].astype(np.float64) @ a[1].astype(np.float64)
    if with2:
        expected += w2[5:5 + n_rows].astype(np.float64) @ a2[1].astype(
            np.float64)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(results[0][2:2 + n_rows], expected,
                               rtol=tolerance, atol=tolerance)
    assert np.all(results[0][:2] == -1) and np.all(results[0][2 + n_rows:] == -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_cols", [1, 7, 16, 50, 128, 300, 513])
def test_pack_tiles_the_columns(dtype, n_cols):
    # whole vectors, a part of a vector at the end of a tile, several tiles
    rng = np.random.default_rng(n_cols)
    w = rng.standard_normal((11, n_cols)).astype(dtype)
    lanes = nk._VECTOR_BYTES // np.dtype(dtype).itemsize
    for max_width in (2 * lanes, 256):
        width = min(max_width, -(-n_cols // lanes) * lanes)
        want = np.zeros((-(-n_cols // width), 11, width), dtype)
        for tile in range(want.shape[0]):
            cols = w[:, tile * width:(tile + 1) * width]
            want[tile, :, :cols.shape[1]] = cols
        got = nk._pack(w, max_width)
        assert got.shape == want.shape
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows, n_cols", [
    (384, 50), (96, 32), (99, 33), (5, 7), (48, 1), (600, 20)])
def test_transposed_pack_matches_the_packed_transpose(dtype, n_rows, n_cols):
    # whole register blocks, rows and columns past the last block, a tile
    # narrower than a vector, and more rows than one tile holds
    rng = np.random.default_rng(n_rows + n_cols)
    w = rng.standard_normal((n_rows + 7, n_cols)).astype(dtype)
    lanes = nk._VECTOR_BYTES // np.dtype(dtype).itemsize
    for r0, n in ((0, n_rows), (3, n_rows), (7, n_rows // 3 + 1)):
        for width in (2 * lanes, 256):
            want = nk._pack(np.ascontiguousarray(w[r0:r0 + n].T), width)
            got = nk._pack_transposed(w, r0, n, width)
            assert got.shape == want.shape
            assert np.array_equal(got, want)


@pytest.mark.parametrize("max_len, steps", [(1, 1), (20, 3), (20, 20), (21, 4),
                                            (300, 38), (7, 9)])
def test_backward_setup_chunks(max_len, steps):
    # the chunks the Numba backward computes for itself are step_chunks',
    # which the Cython backend uses: same summation order
    B, I, H = 3, 5, 8
    rng = np.random.default_rng(max_len)
    lengths = np.array([max_len, max(1, max_len // 2), 1], np.int64)
    w_ih = rng.standard_normal((3 * H, I))
    d_h_last = rng.standard_normal((B, H))
    d_w_ih = np.full((3 * H, I), np.nan)
    for narrow in (False, True):
        dh, _, _, chunks, d_w_ih_k = nk._backward_setup(
            w_ih, lengths, steps, d_h_last, d_w_ih, narrow)
        assert [tuple(c) for c in chunks] == step_chunks(max_len, steps)
        assert np.array_equal(dh, d_h_last) and dh is not d_h_last
        assert d_w_ih_k.shape == ((I, 3 * H) if narrow else (3 * H, I))
        assert narrow or d_w_ih_k is d_w_ih


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("I, H", [(3, 40), (300, 264)])
def test_backward_zeroes_every_gradient_element(n_threads, I, H, monkeypatch):
    # the tasks of the first chunk zero the gradients, each its own part:
    # outputs full of NaN beforehand come back equal to the reference, with
    # samples shorter than the sequence (their d_x rows past the end are 0),
    # narrow (I = 3) input weights in tiles of _NARROW_ROWS gates, and
    # (I = 300, H = 264) weight-gradient tiles split along both axes
    # (_TASK_ROWS, _TASK_COLS)
    assert ((I == 3 and 3 * H > nk._NARROW_ROWS)
            or (3 * H > nk._TASK_ROWS and min(I, H) > nk._TASK_COLS))
    for name in ("_SERIAL_WORK", "_SERIAL_TOTAL", "_SERIAL_CHUNK"):
        monkeypatch.setattr(nk, name, 0)
    B, T = 5, 9
    p = make_problem(B, T, I, H, np.float64, True, seed=11)
    p["lengths"][:] = [T, 1, 4, T, 7]
    fwd = forward_layer(ref, p, False, True, 1, True, fill=7)
    want = backward_layer(ref, p, fwd, False, True, 1, fill=7)
    got = backward_layer(nk, p, fwd, False, True, n_threads, fill=np.nan)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-10,
                                   err_msg=name)


@pytest.mark.parametrize("reset_after, reverse", [(True, False), (False, True)])
def test_float64_long_sequences_in_chunks(reset_after, reverse, monkeypatch):
    # the kernels hold work arrays for chunks of steps: several chunks here,
    # with samples ending inside, at and before chunk boundaries
    B, T = 6, 300
    assert chunk_steps(B, T) < T // 4
    p = make_problem(B, T, 4, 64, np.float64, True, seed=6)
    p["w_hh"] *= 0.2   # a contracting recurrence: rounding does not grow
    p["lengths"][1:4] = [chunk_steps(B, T), 1, T - 1]
    want = run(ref, p, reverse, reset_after)
    one = run(nk, p, reverse, reset_after, n_threads=1)
    for name in ("_SERIAL_WORK", "_SERIAL_TOTAL", "_SERIAL_CHUNK"):
        monkeypatch.setattr(nk, name, 0)   # parallel forward and backward
    assert not nk._serial(B, T, 4, 64, 2, backward=True)
    # the parallel backward with chunks overlapped, then one after another
    for overlap_bytes in (nk._OVERLAP_BYTES, 0):
        monkeypatch.setattr(nk, "_OVERLAP_BYTES", overlap_bytes)
        two = run(nk, p, reverse, reset_after, n_threads=2)
        for name in want:
            np.testing.assert_allclose(two[name], want[name], rtol=0,
                                       atol=1e-10, err_msg=name)
            assert np.array_equal(one[name], two[name]), name


@pytest.mark.parametrize("reset_after", [True, False])
def test_float32_matches_reference(reset_after):
    p = make_problem(7, 6, 3, 5, np.float32, True)
    p64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
           for k, v in p.items()}
    want = run(ref, p64, True, reset_after)
    got = run(nk, p, True, reset_after, n_threads=2)
    for name in want:
        assert got[name].dtype == np.float32
        scale = max(1.0, np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=0,
                                   atol=1e-5 * scale, err_msg=name)


def test_no_gates_forward_equals_gates_forward():
    p = make_problem(7, 6, 3, 5, np.float32, True)
    a = run(nk, p, False, True, keep_gates=False)
    b = run(nk, p, False, True)
    for name in a:
        assert np.array_equal(a[name], b[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
def test_bitwise_thread_count(dtype, reset_after):
    p = make_problem(9, 6, 3, 21, dtype, True, seed=1)
    one = run(nk, p, False, reset_after, n_threads=1)
    two = run(nk, p, False, reset_after, n_threads=2)
    for name in one:
        assert np.array_equal(one[name], two[name]), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after, reverse", [(True, False), (False, True)])
def test_bitwise_batch_composition(dtype, reset_after, reverse):
    p = make_problem(9, 6, 3, 21, dtype, True, seed=2)
    batch = run(nk, p, reverse, reset_after, n_threads=2)
    pos = 4
    alone = {k: (v[pos:pos + 1].copy() if k not in ("w_ih", "w_hh", "b_ih",
                                                   "b_hh") else v)
             for k, v in p.items()}
    single = run(nk, alone, reverse, reset_after, n_threads=2)
    for name in ("out", "h_last", "gates", "d_x", "d_h0"):
        assert np.array_equal(single[name][0], batch[name][pos]), name


def test_concurrent_python_threads():
    p = make_problem(16, 8, 4, 24, np.float32, True, seed=4)
    want = run(nk, p, False, True, keep_gates=False)
    errors = []

    def work():
        try:
            for _ in range(5):
                got = run(nk, p, False, True, n_threads=2, keep_gates=False)
                for name in want:
                    if not np.array_equal(got[name], want[name]):
                        errors.append(name)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_activations_accuracy_and_saturation():
    from numba import njit

    @njit(error_model="numpy")
    def apply(x):
        t = np.empty_like(x)
        s = np.empty_like(x)
        for i in range(x.shape[0]):
            t[i] = nk._tanh(x[i])
            s[i] = nk._sigmoid(x[i])
        return t, s

    x = np.concatenate([np.linspace(-20, 20, 400001),
                        [-1e30, -1e5, 1e5, 1e30, -np.inf, np.inf, 0.0]])
    for dtype, tol in [(np.float32, 5e-7), (np.float64, 1e-15)]:
        xd = x.astype(dtype)
        t, s = apply(xd)
        assert t.dtype == dtype and s.dtype == dtype
        assert np.all(np.isfinite(t)) and np.all(np.isfinite(s))
        x64 = xd.astype(np.float64)
        with np.errstate(over="ignore"):
            s_ref = 1.0 / (1.0 + np.exp(-x64))
        assert np.abs(t - np.tanh(x64)).max() <= tol
        assert np.abs(s - s_ref).max() <= tol
        assert np.all(np.abs(t) <= 1) and np.all((s >= 0) & (s <= 1))
        assert t[-3] == -1 and t[-2] == 1 and s[-3] == 0 and s[-2] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("B, I, H", [(1, 3, 21), (9, 3, 21), (6, 33, 40),
                                     (40, 17, 64)])
def test_cell_forward_is_one_step(reset_after, B, I, H, dtype):
    p = make_problem(B, 1, I, H, dtype, False, seed=5)
    layer = run(nk, p, False, reset_after, keep_gates=False)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    results = []
    for n_threads in (1, 2):
        h_new = np.full_like(p["h0"], 7)
        nk.cell_forward(p["x"][:, 0], p["w_ih"], p["w_hh"], p["b_ih"],
                        p["b_hh"], p["h0"], reset_after, h_new,
                        n_threads=n_threads)
        np.testing.assert_allclose(h_new, layer["out"][:, 0], rtol=0,
                                   atol=tol)
        results.append(h_new)
    # bitwise: thread count, and a sample alone vs inside the batch
    assert np.array_equal(results[0], results[1])
    pos = B // 2
    alone = np.full_like(p["h0"][pos:pos + 1], 7)
    nk.cell_forward(p["x"][pos:pos + 1, 0], p["w_ih"], p["w_hh"], p["b_ih"],
                    p["b_hh"], p["h0"][pos:pos + 1], reset_after, alone,
                    n_threads=2)
    assert np.array_equal(alone[0], results[0][pos])
    p64 = make_problem(B, 1, I, H, np.float64, False, seed=5)
    want = np.empty_like(p64["h0"])
    ref.cell_forward(p64["x"][:, 0], p64["w_ih"], p64["w_hh"], p64["b_ih"],
                     p64["b_hh"], p64["h0"], reset_after, want)
    got = np.empty_like(p64["h0"])
    nk.cell_forward(p64["x"][:, 0], p64["w_ih"], p64["w_hh"], p64["b_ih"],
                    p64["b_hh"], p64["h0"], reset_after, got)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("B", [2, 16, 40])
def test_serial_and_parallel_paths_agree(B, monkeypatch):
    # the serial path (small work) and the parallel one give the same bits
    p = make_problem(B, 7, 5, 24, np.float32, True, seed=6)
    monkeypatch.setattr(nk, "_serial", lambda *a, **k: False)
    par = run(nk, p, True, True, n_threads=2)
    monkeypatch.setattr(nk, "_serial", lambda *a, **k: True)
    ser = run(nk, p, True, True, n_threads=2)
    for name in par:
        assert np.array_equal(par[name], ser[name]), name


# the problems of test_other_register_tiles_give_the_same_bits: rows that
# leave 5-, 4- and 1-row tiles, columns past the last vector pair, a
# weight-gradient group of 40 outputs with a vector left over (I = 20), and
# inputs narrow enough for the gate-axis input-weight gradient (I = 3)
_TILE_PROBLEMS = [(13, 6, 20, 42), (9, 5, 3, 16)]

_OTHER_TILES_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from numgru import _numba_kernels as nk
from kernel_runs import both_forms
problems = np.load(sys.argv[2])
results = {}
for k in range(int(problems["count"])):
    p = {name[len(f"{k}_"):]: problems[name] for name in problems.files
         if name.startswith(f"{k}_")}
    for name, value in both_forms(nk, p).items():
        results[f"{k}_{name}"] = value
np.savez(sys.argv[3], wide=nk._WIDE_TILES, vector_bytes=nk._VECTOR_BYTES,
         **results)
"""


def test_other_register_tiles_give_the_same_bits(tmp_path):
    # the kernels compiled for a CPU without AVX (16-byte vectors, and the
    # 5- and 4-row tiles AVX2 uses) give this build's bits: the register
    # tiles never change a result. Runs in a fresh process with its own
    # Numba cache, since the vector width is fixed at import.
    problem_inputs = [make_problem(*shape, np.float32, varied=True, seed=k)
                      for k, shape in enumerate(_TILE_PROBLEMS)]
    problems = {"count": len(problem_inputs)}
    for k, p in enumerate(problem_inputs):
        for name, value in p.items():
            problems[f"{k}_{name}"] = value
    np.savez(tmp_path / "problems.npz", **problems)
    env = dict(os.environ, NUMBA_CPU_NAME="generic",
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-c", _OTHER_TILES_SCRIPT, tests_dir,
                    str(tmp_path / "problems.npz"),
                    str(tmp_path / "results.npz")],
                   env=env, check=True, timeout=900)
    other = np.load(tmp_path / "results.npz")
    assert not other["wide"] and int(other["vector_bytes"]) == 16
    for k, p in enumerate(problem_inputs):
        for name, value in both_forms(nk, p).items():
            assert np.array_equal(other[f"{k}_{name}"], value,
                                  equal_nan=True), (_TILE_PROBLEMS[k], name)
