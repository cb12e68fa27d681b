"""Numba GRU kernels: the default backend.

Same contract as :mod:`numgru._reference` (see its module docstring for every
shape): ``layer_forward`` and ``layer_backward`` run one layer in one direction
over a batch, ``cell_forward`` runs one step, ``step_prepare`` and
``step_forward`` are the fast path of :meth:`numgru.GRU.step`. Each public
function is a thin wrapper that sets the thread count and calls a private
compiled kernel.

How the kernels are organised:

- Parallelism is over fixed-size blocks of samples. Each block runs its own
  full time loop; there is no synchronisation between steps. A parallel
  region runs one worker per thread. Worker i first runs sample block i, in
  the forward and in every region of the backward, so that a block's
  activations are read back on the core that wrote them; further tasks
  (sample blocks, weight-gradient tiles) are taken one at a time from a
  shared counter, so tasks of unequal cost share the threads evenly.
- The sequence is processed in chunks of about an eighth of its steps (see
  ``numgru._chunks``): the forward computes the input projection ``x @ W_ih^T``
  of a block one chunk at a time, and the backward runs the recurrence over
  one chunk, then adds that chunk's terms to the weight gradients. Work
  arrays therefore hold one chunk (two when, with several threads, the
  weight gradients of one chunk are computed next to the recurrence over
  the following one), not the whole sequence.
- Every matrix product is written as ``C[row, j] += A[row, k] * W[k, j]`` with
  ``k`` ascending and one fused multiply-add per term, on SIMD vectors along
  ``j`` held in registers (tiles of 8 rows by 2 vectors with AVX-512, of 5
  or 4 rows with AVX2's fewer registers; see ``_WIDE_TILES``). A value of
  ``C`` therefore depends only on its own row of ``A``, never on the block
  size, the tiling, the thread count or the other samples in the batch:
  results are bitwise reproducible. No BLAS is called.
- Weight gradients are reductions over the valid ``(b, t)`` rows in a fixed
  order (chunks from the last steps to the first; within a chunk ``b``
  ascending, then the processing step ascending), each output element owned
  by one task.
- Small calls (little work per step, or fewer than two sample blocks) run a
  serial build of the same kernels: no parallel region, same bits.
- The streaming step (``cell_forward``, ``step_forward``) needs no packing:
  each gate pre-activation is a dot product over one row of the row-major
  weights, in lanes of a 64-byte vector summed in a fixed tree, an order
  spelled out by the code. It agrees with a one-step ``layer_forward`` to
  rounding, and a sample's result does not depend on its batch or the thread
  count.
- Work arrays are kept per Python thread and reused. They, the packed
  weights and the per-block rows start on 64-byte boundaries (see
  ``numgru._aligned``).
- float64 uses ``np.tanh`` and ``np.exp``; float32 uses a rational
  approximation of ``tanh`` (max abs error 3.5e-7) on SIMD vectors;
  sigmoid(x) = (1 + tanh(x / 2)) / 2.
"""

import operator
import os
import threading

import numpy as np
import numba
from llvmlite import binding as llvm_binding
from llvmlite import ir as ll_ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from ._aligned import ALIGNMENT, aligned_empty
from ._chunks import chunk_steps

__all__ = ["layer_forward", "layer_backward", "cell_forward",
           "step_prepare", "step_forward"]


# ---------------------------------------------------------------------------
# Threading layer and cache location (decided once, at import)
# ---------------------------------------------------------------------------

# OMP_WAIT_POLICY defaults to PASSIVE (set in numgru._backends, which is
# imported before this module) so idle OpenMP threads sleep instead of spin.


def _threadsafe_layer_available():
    for name in ("tbbpool", "omppool"):
        try:
            __import__("numba.np.ufunc." + name)
        except ImportError:
            continue
        return True
    return False


if "NUMBA_THREADING_LAYER" not in os.environ and _threadsafe_layer_available():
    numba.config.THREADING_LAYER = "threadsafe"


def _cache_available():
    """Whether numba finds a writable place to cache this module's kernels.

    Numba caches next to the source file, else in a user-wide directory; in a
    read-only install with neither writable, caching is turned off instead of
    failing at import.
    """
    def probe():
        pass

    try:
        from numba.core.caching import CompileResultCacheImpl
    except ImportError:
        return True
    try:
        CompileResultCacheImpl(probe)
    except RuntimeError:
        return False
    return True


_JIT_CACHE = _cache_available()

_JIT = dict(cache=_JIT_CACHE, error_model="numpy", nogil=True)

_serial_lock = threading.Lock()
_layer_checked = False
_needs_lock = False


# ---------------------------------------------------------------------------
# Scalar building blocks, specialised by dtype at compile time
# ---------------------------------------------------------------------------

@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma): of three scalars of one float type,
    or lane by lane when some operands are vectors (``_Vector``), a scalar
    operand then standing for every lane. The same in vector and scalar
    code."""
    if isinstance(a, types.Float) and a == b and a == c:
        def codegen(context, builder, signature, args):
            return builder.fma(*args)
        return a(a, b, c), codegen
    vecty = next((t for t in (a, b, c) if isinstance(t, _Vector)), None)
    if vecty is None or not all(t == vecty or t == vecty.dtype
                                for t in (a, b, c)):
        return None

    def vector_codegen(context, builder, signature, args):
        vt = context.get_value_type(vecty)
        operands = [value if isinstance(ty, _Vector) else
                    _splat(builder, value, vt)
                    for value, ty in zip(args, signature.args)]
        name = f"llvm.fma.v{vecty.count}f{vecty.dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(
            builder.module, ll_ir.FunctionType(vt, [vt] * 3), name)
        return builder.call(fma, operands)
    return vecty(a, b, c), vector_codegen


def _unit(x):
    """1 in the floating type of ``x``."""


def _tanh(x):
    """tanh in the floating type of ``x``."""


def _sigmoid(x):
    """Logistic sigmoid in the floating type of ``x``."""


_T_CLAMP = np.float32(9.0)
_T_A1 = np.float32(4.89352455891786e-03)
_T_A3 = np.float32(6.37261928875436e-04)
_T_A5 = np.float32(1.48572235717979e-05)
_T_A7 = np.float32(5.12229709037114e-08)
_T_A9 = np.float32(-8.60467152213735e-11)
_T_A11 = np.float32(2.00018790482477e-13)
_T_A13 = np.float32(-2.76076847742355e-16)
_T_B0 = np.float32(4.89352518554385e-03)
_T_B2 = np.float32(2.26843463243900e-03)
_T_B4 = np.float32(1.18534705686654e-04)
_T_B6 = np.float32(1.19825839466702e-06)
_F32_HALF = np.float32(0.5)
_F32_ONE = np.float32(1.0)
_F64_ONE = np.float64(1.0)


def _is_f32(x):
    """Whether ``x`` is a float32 scalar or a vector of float32."""
    if isinstance(x, _Vector):
        x = x.dtype
    return isinstance(x, types.Float) and x.bitwidth == 32


def _lanewise(scalar_function, count):
    """A function applying ``scalar_function`` to each of ``count`` lanes."""
    def apply(x):
        out = x
        for i in range(count):
            out = _with_lane(out, i, scalar_function(_lane(x, i)))
        return out
    return apply


@overload(_unit, jit_options=dict(error_model="numpy"))
def _unit_impl(x):
    if _is_f32(x):
        return lambda x: _F32_ONE
    return lambda x: _F64_ONE


@njit(inline="always", error_model="numpy")
def _tanh_f32(x):
    # rational approximation on [-9, 9], result clipped to [-1, 1] so that
    # large |x| (and +-inf) give exactly +-1. Each Horner step is one fused
    # multiply-add: a chain of fma latencies instead of a multiply's plus an
    # add's (the Cython kernels' vector code does the same, for the same
    # bits)
    v = min(max(x, -_T_CLAMP), _T_CLAMP)
    v2 = v * v
    p = _fma(v2, _T_A13, _T_A11)
    p = _fma(p, v2, _T_A9)
    p = _fma(p, v2, _T_A7)
    p = _fma(p, v2, _T_A5)
    p = _fma(p, v2, _T_A3)
    p = _fma(p, v2, _T_A1)
    p = p * v
    q = _fma(v2, _T_B6, _T_B4)
    q = _fma(q, v2, _T_B2)
    q = _fma(q, v2, _T_B0)
    return min(max(p / q, -_F32_ONE), _F32_ONE)


@overload(_tanh, jit_options=dict(error_model="numpy"))
def _tanh_impl(x):
    if _is_f32(x):
        return lambda x: _tanh_f32(x)
    if isinstance(x, _Vector):
        return _lanewise(_tanh_f64, x.count)
    return lambda x: np.tanh(x)


@overload(_sigmoid, jit_options=dict(error_model="numpy"))
def _sigmoid_impl(x):
    if _is_f32(x):
        return lambda x: _fma(_F32_HALF, _tanh_f32(_F32_HALF * x), _F32_HALF)
    if isinstance(x, _Vector):
        return _lanewise(_sigmoid_f64, x.count)
    return lambda x: _sigmoid_f64(x)


@njit(inline="always", error_model="numpy")
def _tanh_f64(x):
    return np.tanh(x)


@njit(inline="always", error_model="numpy")
def _sigmoid_f64(x):
    return _F64_ONE / (_F64_ONE + np.exp(-x))


# ---------------------------------------------------------------------------
# SIMD vectors: LLVM vector values held in registers
# ---------------------------------------------------------------------------

def _vector_bytes():
    """Bytes per SIMD register used by the matrix products.

    The widest registers of the CPU Numba compiles for: 64 with AVX-512, 32
    with AVX, else 16. Only speed depends on it: every lane is computed with
    the same fused multiply-add as scalar code.
    """
    if numba.config.CPU_NAME not in (None, "host"):
        return 16
    try:
        features = llvm_binding.get_host_cpu_features()
    except Exception:  # pragma: no cover - feature query unsupported
        return 16
    if features.get("avx512f"):
        return 64
    if features.get("avx"):
        return 32
    return 16


_VECTOR_BYTES = _vector_bytes()
# Register tiles of the matrix products: 8 rows by 2 vectors take 16
# accumulators, which fit AVX-512's 32 registers; AVX2 has 16, and there
# the same tiles spilled to memory. Measured on a Zen 3 (AVX2), one thread,
# the recurrent product of a 16-sample block (16 x 128 by 128 x 384): 31
# GFLOP/s with tiles of 8 rows, 49 with 6, 63 with 4, 72 with 5 (ten
# accumulators: enough independent chains to keep both FMA units busy,
# few enough that LLVM spills none). So AVX2 takes tiles of 5 rows, then 4.
_WIDE_TILES = _VECTOR_BYTES >= 64


class _Vector(types.Type):
    """``count`` values of the float type ``dtype`` as one LLVM vector (one
    SIMD register at the width _vector_of picks; the step uses 64 bytes)."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"numgru_vector({dtype} x {count})")


@register_model(_Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ll_ir.VectorType(element, fe_type.count))


def _vector_of(dtype):
    return _Vector(dtype, _VECTOR_BYTES // (dtype.bitwidth // 8))


def _is_float_matrix(a):
    return (isinstance(a, types.Array) and a.ndim == 2
            and isinstance(a.dtype, types.Float))


def _item_pointer(context, builder, aryty, ary, indices):
    # address of ary[indices]; indices is a list of (value, Numba type)
    # pairs, in bounds and not negative
    arr = context.make_array(aryty)(context, builder, ary)
    inds = [context.cast(builder, value, ty, types.intp)
            for value, ty in indices]
    return cgutils.get_item_pointer2(
        context, builder, data=arr.data,
        shape=cgutils.unpack_tuple(builder, arr.shape),
        strides=cgutils.unpack_tuple(builder, arr.strides),
        layout=aryty.layout, inds=inds)


def _vector_pointer(context, builder, aryty, ary, indices, vecty):
    # address of ary[indices] as a pointer to a vector; the caller guarantees
    # that the last axis is contiguous and holds the whole vector from there
    ptr = _item_pointer(context, builder, aryty, ary, indices)
    return builder.bitcast(ptr, context.get_value_type(vecty).as_pointer())


@intrinsic
def _sload(typingctx, a, i, j):
    """a[i, j] of a 2-D float array, for indices in bounds and not negative:
    without the code for negative indices that Numba adds to a[i, j]."""
    if not (_is_float_matrix(a) and isinstance(i, types.Integer)
            and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, a, args[0],
                            [(args[1], i), (args[2], j)])
        return builder.load(ptr)
    return a.dtype(a, i, j), codegen


@intrinsic
def _vload(typingctx, a, i, j):
    """The vector a[i, j:j + lanes] (a row-contiguous 2-D float array)."""
    if not (_is_float_matrix(a) and isinstance(i, types.Integer)
            and isinstance(j, types.Integer)):
        return None
    vecty = _vector_of(a.dtype)

    def codegen(context, builder, signature, args):
        ptr = _vector_pointer(context, builder, a, args[0],
                              [(args[1], i), (args[2], j)], vecty)
        return builder.load(ptr, align=a.dtype.bitwidth // 8)
    return vecty(a, i, j), codegen


@intrinsic
def _vstore(typingctx, a, i, j, v):
    """a[i, j:j + lanes] = v."""
    if not (_is_float_matrix(a) and isinstance(i, types.Integer)
            and isinstance(j, types.Integer) and v == _vector_of(a.dtype)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _vector_pointer(context, builder, a, args[0],
                              [(args[1], i), (args[2], j)], v)
        builder.store(args[3], ptr, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, i, j, v), codegen


@intrinsic
def _vtranspose(typingctx, src, i, j, dst, k, l):
    """dst[k + q, l:l + L] = src[i:i + L, j + q] for q < L, L = _lanes(dst):
    an L x L block moved across the diagonal (both arrays row-contiguous,
    the whole block within them)."""
    if not (_is_float_matrix(src) and _is_float_matrix(dst)
            and src.dtype == dst.dtype
            and all(isinstance(t, types.Integer) for t in (i, j, k, l))):
        return None
    vecty = _vector_of(dst.dtype)
    L = vecty.count

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        i0, j0, k0, l0 = (context.cast(builder, args[n], signature.args[n],
                                       types.intp) for n in (1, 2, 4, 5))
        align = dst.dtype.bitwidth // 8

        def row(ary, aryty, first, q, column):
            index = builder.add(first, ll_ir.Constant(intp, q))
            return _vector_pointer(context, builder, aryty, ary,
                                   [(index, types.intp), (column, types.intp)],
                                   vecty)
        rows = [builder.load(row(args[0], src, i0, q, j0), align=align)
                for q in range(L)]
        # interleaving rows q and q + L/2 (q < L/2), log2(L) times over,
        # transposes the block
        lanes = ll_ir.VectorType(ll_ir.IntType(32), L)
        half = L // 2
        low = ll_ir.Constant(lanes, [x for p in range(half)
                                     for x in (p, L + p)])
        high = ll_ir.Constant(lanes, [x for p in range(half, L)
                                      for x in (p, L + p)])
        for _ in range(L.bit_length() - 1):
            rows = [builder.shuffle_vector(rows[p], rows[p + half], mask)
                    for p in range(half) for mask in (low, high)]
        for q in range(L):
            builder.store(rows[q], row(args[3], dst, k0, q, l0), align=align)
        return context.get_dummy_value()
    return types.none(src, i, j, dst, k, l), codegen


@intrinsic
def _lanes(typingctx, a):
    """Values per vector for the dtype of the array ``a`` (a constant)."""
    if not (_is_float_matrix(a) or _is_float_vector(a)):
        return None
    count = _vector_of(a.dtype).count

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, count)
    return types.intp(a), codegen


def _is_float_vector(a):
    return (isinstance(a, types.Array) and a.ndim == 1
            and isinstance(a.dtype, types.Float))


# The gates of a step go through four vectors at a time as one LLVM vector
# of four times the lanes (a group): each operation on it becomes four
# independent instructions in a row. A tanh or sigmoid is a chain of 13 to
# 15 dependent operations (19 to 21 before its Horner steps were fused),
# and one vector at a time left the chains of later vectors waiting in the
# scheduler behind the first ones; in a group the four chains advance
# together. Same operations on every lane, so the same bits. More than four
# chains at once spill AVX2's 16 registers. Measured on a Zen 3 (AVX2),
# float32, with unfused Horner steps: the gates of 16 samples 1.25x to
# 1.3x faster at H = 32 and 128; a layer's forward over a 16-sample block,
# one thread, 1.06x faster at (T, I, H) = (50, 8, 32), 1.04x at (100, 1,
# 64), 1.02x at (100, 32, 128), 1.01x at (20, 50, 128). Where the gates are
# kept for backward and that cache goes to memory it costs instead: 0.94x
# to 0.97x at (32 samples, 100, 32, 128) and 0.98x at (32, 100, 128, 512)
# against vectors one at a time, in two passes (r and z, then n); 1.02x to
# 1.04x faster where the cache stays in the caches, at (16, 50, 8, 32),
# (16, 100, 1, 64) and (16, 20, 50, 128).
_GROUP = 4


def _group_of(dtype):
    return _Vector(dtype, _GROUP * _vector_of(dtype).count)


def _contiguous_load(vector_type_of, doc):
    """An intrinsic loading ``a[j:j + n]`` of a contiguous 1-D float array
    as one vector of the type ``vector_type_of(a.dtype)`` (n lanes)."""
    @intrinsic
    def load(typingctx, a, j):
        if not (_is_float_vector(a) and isinstance(j, types.Integer)):
            return None
        vecty = vector_type_of(a.dtype)

        def codegen(context, builder, signature, args):
            ptr = _vector_pointer(context, builder, a, args[0],
                                  [(args[1], j)], vecty)
            return builder.load(ptr, align=a.dtype.bitwidth // 8)
        return vecty(a, j), codegen
    load.__doc__ = doc
    return load


def _contiguous_store(vector_type_of, doc):
    """An intrinsic storing a vector of the type ``vector_type_of(a.dtype)``
    to ``a[j:j + n]`` of a contiguous 1-D float array."""
    @intrinsic
    def store(typingctx, a, j, v):
        if not (_is_float_vector(a) and isinstance(j, types.Integer)
                and v == vector_type_of(a.dtype)):
            return None

        def codegen(context, builder, signature, args):
            ptr = _vector_pointer(context, builder, a, args[0],
                                  [(args[1], j)], v)
            builder.store(args[2], ptr, align=a.dtype.bitwidth // 8)
            return context.get_dummy_value()
        return types.none(a, j, v), codegen
    store.__doc__ = doc
    return store


_vload1 = _contiguous_load(
    _vector_of, "The vector a[j:j + lanes] (a contiguous 1-D float array).")
_vstore1 = _contiguous_store(_vector_of, "a[j:j + lanes] = v.")
_gload = _contiguous_load(
    _group_of, "The group a[j:j + 4 * lanes] (a contiguous 1-D float array).")
_gstore = _contiguous_store(_group_of, "a[j:j + 4 * lanes] = v, a group.")


def _vector_operands(a, b):
    """The vector type of ``a op b`` (a vector and a vector or its scalar)."""
    vecty = a if isinstance(a, _Vector) else b
    if not isinstance(vecty, _Vector):
        return None
    if all(t == vecty or t == vecty.dtype for t in (a, b)):
        return vecty
    return None


def _splat(builder, value, vt):
    undef = ll_ir.Constant(vt, ll_ir.Undefined)
    lane0 = ll_ir.Constant(ll_ir.IntType(32), 0)
    return builder.shuffle_vector(
        builder.insert_element(undef, value, lane0), undef,
        ll_ir.Constant(ll_ir.VectorType(ll_ir.IntType(32), vt.count),
                       [0] * vt.count))


def _vector_binary(emit):
    """An intrinsic applying ``emit(builder, x, y)`` to two vectors, where a
    scalar operand is first broadcast to every lane."""
    @intrinsic
    def binary(typingctx, a, b):
        vecty = _vector_operands(a, b)
        if vecty is None:
            return None

        def codegen(context, builder, signature, args):
            vt = context.get_value_type(vecty)
            x, y = (value if isinstance(ty, _Vector) else
                    _splat(builder, value, vt)
                    for value, ty in zip(args, signature.args))
            return emit(builder, x, y)
        return vecty(a, b), codegen
    return binary


_vadd = _vector_binary(lambda builder, x, y: builder.fadd(x, y))
_vsub = _vector_binary(lambda builder, x, y: builder.fsub(x, y))
_vmul = _vector_binary(lambda builder, x, y: builder.fmul(x, y))
_vdiv = _vector_binary(lambda builder, x, y: builder.fdiv(x, y))
# max(x, y) and min(x, y) as Numba computes them for scalars: y when
# y > x (y < x), else x, so a NaN x is kept and a NaN y is not
_vmax = _vector_binary(lambda builder, x, y: builder.select(
    builder.fcmp_ordered(">", y, x), y, x))
_vmin = _vector_binary(lambda builder, x, y: builder.select(
    builder.fcmp_ordered("<", y, x), y, x))


def _register_vector_operator(function, vector_op):
    @overload(function, jit_options=dict(error_model="numpy"))
    def impl(a, b):
        if _vector_operands(a, b) is not None:
            return lambda a, b: vector_op(a, b)
        return None


for _function, _vector_op in ((operator.add, _vadd), (operator.sub, _vsub),
                              (operator.mul, _vmul),
                              (operator.truediv, _vdiv), (max, _vmax),
                              (min, _vmin)):
    _register_vector_operator(_function, _vector_op)


@intrinsic
def _lane(typingctx, v, i):
    """Lane ``i`` of the vector ``v``."""
    if not (isinstance(v, _Vector) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.extract_element(args[0], args[1])
    return v.dtype(v, i), codegen


@intrinsic
def _with_lane(typingctx, v, i, s):
    """``v`` with lane ``i`` replaced by the scalar ``s``."""
    if not (isinstance(v, _Vector) and isinstance(i, types.Integer)
            and s == v.dtype):
        return None

    def codegen(context, builder, signature, args):
        return builder.insert_element(args[0], args[2], args[1])
    return v(v, i, s), codegen


# ---------------------------------------------------------------------------
# Tasks handed out one at a time
# ---------------------------------------------------------------------------
#
# A prange loop splits its iterations between threads in equal contiguous
# parts, fixed in advance (Numba's OpenMP layer ignores
# set_parallel_chunksize), so tasks of unequal cost would leave a thread
# idle. A parallel region instead runs one worker per thread, and each
# worker takes the next task from a shared counter until none is left. Each
# task writes its own outputs, so which thread ran it never changes a bit.
#
# Worker i runs sample block i before it takes any task: the forward and
# the backward then process a block on the same thread when there is one
# block per thread (with the OpenMP threading layer, worker i is the same
# thread in every region), so the block's gates and states are read back
# from the cache of the core that wrote them. Measured at the textbook-torch
# shape, 2 threads: a train step 1.02x to 1.05x faster than with every block
# taken from the counter.
#
# Weights packed by every worker: the forward and the backward pack their
# weights inside the parallel region, each worker a copy of its own, not on
# the calling thread before the region. OpenMP threads that idle for more
# than about 0.1 ms fall asleep (GOMP_SPINCOUNT, see numgru._backends), and
# waking them took about 65 us on the development machine. In a train loop
# at the textbook-torch shape the forward's packs took 25 to 35 us on the
# calling thread (the weights had left the cache), often enough for the
# threads to fall asleep first; inside the region they run while the other
# threads start. Each copy also stays in its own core's cache. Measured at
# the GRU level, 2 threads: forward 1.08x faster at textbook-torch and 1.13x
# at small, train step 1.07x at textbook-torch, no change at the other
# shapes. The arrays of a parallel function are made with np.empty: Numba
# turns np.zeros there into a parallel region of its own.


@intrinsic
def _take_task(typingctx, counter):
    """Add 1 to ``counter[0]`` (int64 array) atomically; return its old value.

    The memory order is relaxed: tasks own their outputs, and the end of the
    parallel region orders everything else.
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and counter.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary,
                                       [context.get_constant(types.intp, 0)])
        one = ll_ir.Constant(ll_ir.IntType(64), 1)
        return builder.atomic_rmw("add", ptr, one, "monotonic")
    return types.int64(counter), codegen


# ---------------------------------------------------------------------------
# Matrix products in a fixed summation order
# ---------------------------------------------------------------------------
#
# Every product below adds to C one fused multiply-add per term, in
# ascending order of the summation index, starting from C's value (or, in
# the forward, from the bias): an element of C is one fma chain whose value
# depends only on its own row of A and column of W. Register tiles (8 or 4
# rows x 2 vectors), the split of the sum into passes (values go to memory
# and back unchanged) and the split of the work between threads change the
# speed, never the bits.

_KC = 256   # summation indices per pass over a panel of W
_RC = 128   # rows per pass in the weight-gradient products (a pass's
            # packed rows then stay in the L1 cache: 1.08x faster than 256)
# outputs per packed group of A's columns in the weight-gradient products
# (whole vectors: copied a vector at a time); with AVX2, eight tiles of 5
_AP = 16 if _WIDE_TILES else 40


@njit(**_JIT)
def _panel2(A, ia, ka, W, kw, kn, wn, C, ic, cn, na, S, iS):
    # A (*, >= ka+kn)   W (>= kw+kn, >= wn+2L)   C, S (*, >= cn+2L)
    # ia, ic, iS (>= na,) row indices into A, C and S;  L = _lanes(C)
    # C[ic[a], cn:cn+2L] = S[iS[a], cn:cn+2L]
    #                      + sum_k A[ia[a], ka+k] * W[kw+k, wn:wn+2L]
    # (S, iS = C, ic adds to C; a bias row as S starts from the bias)
    L = _lanes(C)
    a = 0
    while _WIDE_TILES and a + 8 <= na:
        r0 = ia[a + 0]
        r1 = ia[a + 1]
        r2 = ia[a + 2]
        r3 = ia[a + 3]
        r4 = ia[a + 4]
        r5 = ia[a + 5]
        r6 = ia[a + 6]
        r7 = ia[a + 7]
        q0 = ic[a + 0]
        q1 = ic[a + 1]
        q2 = ic[a + 2]
        q3 = ic[a + 3]
        q4 = ic[a + 4]
        q5 = ic[a + 5]
        q6 = ic[a + 6]
        q7 = ic[a + 7]
        x00 = _vload(S, iS[a + 0], cn)
        x01 = _vload(S, iS[a + 0], cn + L)
        x10 = _vload(S, iS[a + 1], cn)
        x11 = _vload(S, iS[a + 1], cn + L)
        x20 = _vload(S, iS[a + 2], cn)
        x21 = _vload(S, iS[a + 2], cn + L)
        x30 = _vload(S, iS[a + 3], cn)
        x31 = _vload(S, iS[a + 3], cn + L)
        x40 = _vload(S, iS[a + 4], cn)
        x41 = _vload(S, iS[a + 4], cn + L)
        x50 = _vload(S, iS[a + 5], cn)
        x51 = _vload(S, iS[a + 5], cn + L)
        x60 = _vload(S, iS[a + 6], cn)
        x61 = _vload(S, iS[a + 6], cn + L)
        x70 = _vload(S, iS[a + 7], cn)
        x71 = _vload(S, iS[a + 7], cn + L)
        for k in range(kn):
            b0 = _vload(W, kw + k, wn)
            b1 = _vload(W, kw + k, wn + L)
            s = _sload(A, r0, ka + k)
            x00 = _fma(s, b0, x00)
            x01 = _fma(s, b1, x01)
            s = _sload(A, r1, ka + k)
            x10 = _fma(s, b0, x10)
            x11 = _fma(s, b1, x11)
            s = _sload(A, r2, ka + k)
            x20 = _fma(s, b0, x20)
            x21 = _fma(s, b1, x21)
            s = _sload(A, r3, ka + k)
            x30 = _fma(s, b0, x30)
            x31 = _fma(s, b1, x31)
            s = _sload(A, r4, ka + k)
            x40 = _fma(s, b0, x40)
            x41 = _fma(s, b1, x41)
            s = _sload(A, r5, ka + k)
            x50 = _fma(s, b0, x50)
            x51 = _fma(s, b1, x51)
            s = _sload(A, r6, ka + k)
            x60 = _fma(s, b0, x60)
            x61 = _fma(s, b1, x61)
            s = _sload(A, r7, ka + k)
            x70 = _fma(s, b0, x70)
            x71 = _fma(s, b1, x71)
        _vstore(C, q0, cn, x00)
        _vstore(C, q0, cn + L, x01)
        _vstore(C, q1, cn, x10)
        _vstore(C, q1, cn + L, x11)
        _vstore(C, q2, cn, x20)
        _vstore(C, q2, cn + L, x21)
        _vstore(C, q3, cn, x30)
        _vstore(C, q3, cn + L, x31)
        _vstore(C, q4, cn, x40)
        _vstore(C, q4, cn + L, x41)
        _vstore(C, q5, cn, x50)
        _vstore(C, q5, cn + L, x51)
        _vstore(C, q6, cn, x60)
        _vstore(C, q6, cn + L, x61)
        _vstore(C, q7, cn, x70)
        _vstore(C, q7, cn + L, x71)
        a += 8
    while not _WIDE_TILES and a + 5 <= na:
        r0 = ia[a + 0]
        r1 = ia[a + 1]
        r2 = ia[a + 2]
        r3 = ia[a + 3]
        r4 = ia[a + 4]
        q0 = ic[a + 0]
        q1 = ic[a + 1]
        q2 = ic[a + 2]
        q3 = ic[a + 3]
        q4 = ic[a + 4]
        x00 = _vload(S, iS[a + 0], cn)
        x01 = _vload(S, iS[a + 0], cn + L)
        x10 = _vload(S, iS[a + 1], cn)
        x11 = _vload(S, iS[a + 1], cn + L)
        x20 = _vload(S, iS[a + 2], cn)
        x21 = _vload(S, iS[a + 2], cn + L)
        x30 = _vload(S, iS[a + 3], cn)
        x31 = _vload(S, iS[a + 3], cn + L)
        x40 = _vload(S, iS[a + 4], cn)
        x41 = _vload(S, iS[a + 4], cn + L)
        for k in range(kn):
            b0 = _vload(W, kw + k, wn)
            b1 = _vload(W, kw + k, wn + L)
            s = _sload(A, r0, ka + k)
            x00 = _fma(s, b0, x00)
            x01 = _fma(s, b1, x01)
            s = _sload(A, r1, ka + k)
            x10 = _fma(s, b0, x10)
            x11 = _fma(s, b1, x11)
            s = _sload(A, r2, ka + k)
            x20 = _fma(s, b0, x20)
            x21 = _fma(s, b1, x21)
            s = _sload(A, r3, ka + k)
            x30 = _fma(s, b0, x30)
            x31 = _fma(s, b1, x31)
            s = _sload(A, r4, ka + k)
            x40 = _fma(s, b0, x40)
            x41 = _fma(s, b1, x41)
        _vstore(C, q0, cn, x00)
        _vstore(C, q0, cn + L, x01)
        _vstore(C, q1, cn, x10)
        _vstore(C, q1, cn + L, x11)
        _vstore(C, q2, cn, x20)
        _vstore(C, q2, cn + L, x21)
        _vstore(C, q3, cn, x30)
        _vstore(C, q3, cn + L, x31)
        _vstore(C, q4, cn, x40)
        _vstore(C, q4, cn + L, x41)
        a += 5
    while a + 4 <= na:
        r0 = ia[a]
        r1 = ia[a + 1]
        r2 = ia[a + 2]
        r3 = ia[a + 3]
        q0 = ic[a]
        q1 = ic[a + 1]
        q2 = ic[a + 2]
        q3 = ic[a + 3]
        x00 = _vload(S, iS[a + 0], cn)
        x01 = _vload(S, iS[a + 0], cn + L)
        x10 = _vload(S, iS[a + 1], cn)
        x11 = _vload(S, iS[a + 1], cn + L)
        x20 = _vload(S, iS[a + 2], cn)
        x21 = _vload(S, iS[a + 2], cn + L)
        x30 = _vload(S, iS[a + 3], cn)
        x31 = _vload(S, iS[a + 3], cn + L)
        for k in range(kn):
            b0 = _vload(W, kw + k, wn)
            b1 = _vload(W, kw + k, wn + L)
            s = _sload(A, r0, ka + k)
            x00 = _fma(s, b0, x00)
            x01 = _fma(s, b1, x01)
            s = _sload(A, r1, ka + k)
            x10 = _fma(s, b0, x10)
            x11 = _fma(s, b1, x11)
            s = _sload(A, r2, ka + k)
            x20 = _fma(s, b0, x20)
            x21 = _fma(s, b1, x21)
            s = _sload(A, r3, ka + k)
            x30 = _fma(s, b0, x30)
            x31 = _fma(s, b1, x31)
        _vstore(C, q0, cn, x00)
        _vstore(C, q0, cn + L, x01)
        _vstore(C, q1, cn, x10)
        _vstore(C, q1, cn + L, x11)
        _vstore(C, q2, cn, x20)
        _vstore(C, q2, cn + L, x21)
        _vstore(C, q3, cn, x30)
        _vstore(C, q3, cn + L, x31)
        a += 4
    while a < na:
        r0 = ia[a]
        q0 = ic[a]
        x00 = _vload(S, iS[a], cn)
        x01 = _vload(S, iS[a], cn + L)
        for k in range(kn):
            s = _sload(A, r0, ka + k)
            x00 = _fma(s, _vload(W, kw + k, wn), x00)
            x01 = _fma(s, _vload(W, kw + k, wn + L), x01)
        _vstore(C, q0, cn, x00)
        _vstore(C, q0, cn + L, x01)
        a += 1


@njit(**_JIT)
def _panel1(A, ia, ka, W, kw, kn, wn, C, ic, cn, na, S, iS):
    # as _panel2, for one vector: C[ic[a], cn:cn+L] = S[iS[a], cn:cn+L]
    # + ... W[kw+k, wn:wn+L]
    a = 0
    while a + 8 <= na:
        r0 = ia[a]
        r1 = ia[a + 1]
        r2 = ia[a + 2]
        r3 = ia[a + 3]
        r4 = ia[a + 4]
        r5 = ia[a + 5]
        r6 = ia[a + 6]
        r7 = ia[a + 7]
        x0 = _vload(S, iS[a], cn)
        x1 = _vload(S, iS[a + 1], cn)
        x2 = _vload(S, iS[a + 2], cn)
        x3 = _vload(S, iS[a + 3], cn)
        x4 = _vload(S, iS[a + 4], cn)
        x5 = _vload(S, iS[a + 5], cn)
        x6 = _vload(S, iS[a + 6], cn)
        x7 = _vload(S, iS[a + 7], cn)
        for k in range(kn):
            b0 = _vload(W, kw + k, wn)
            x0 = _fma(_sload(A, r0, ka + k), b0, x0)
            x1 = _fma(_sload(A, r1, ka + k), b0, x1)
            x2 = _fma(_sload(A, r2, ka + k), b0, x2)
            x3 = _fma(_sload(A, r3, ka + k), b0, x3)
            x4 = _fma(_sload(A, r4, ka + k), b0, x4)
            x5 = _fma(_sload(A, r5, ka + k), b0, x5)
            x6 = _fma(_sload(A, r6, ka + k), b0, x6)
            x7 = _fma(_sload(A, r7, ka + k), b0, x7)
        _vstore(C, ic[a], cn, x0)
        _vstore(C, ic[a + 1], cn, x1)
        _vstore(C, ic[a + 2], cn, x2)
        _vstore(C, ic[a + 3], cn, x3)
        _vstore(C, ic[a + 4], cn, x4)
        _vstore(C, ic[a + 5], cn, x5)
        _vstore(C, ic[a + 6], cn, x6)
        _vstore(C, ic[a + 7], cn, x7)
        a += 8
    while a + 4 <= na:
        r0 = ia[a]
        r1 = ia[a + 1]
        r2 = ia[a + 2]
        r3 = ia[a + 3]
        x0 = _vload(S, iS[a], cn)
        x1 = _vload(S, iS[a + 1], cn)
        x2 = _vload(S, iS[a + 2], cn)
        x3 = _vload(S, iS[a + 3], cn)
        for k in range(kn):
            b0 = _vload(W, kw + k, wn)
            x0 = _fma(_sload(A, r0, ka + k), b0, x0)
            x1 = _fma(_sload(A, r1, ka + k), b0, x1)
            x2 = _fma(_sload(A, r2, ka + k), b0, x2)
            x3 = _fma(_sload(A, r3, ka + k), b0, x3)
        _vstore(C, ic[a], cn, x0)
        _vstore(C, ic[a + 1], cn, x1)
        _vstore(C, ic[a + 2], cn, x2)
        _vstore(C, ic[a + 3], cn, x3)
        a += 4
    while a < na:
        r0 = ia[a]
        x0 = _vload(S, iS[a], cn)
        for k in range(kn):
            x0 = _fma(_sload(A, r0, ka + k), _vload(W, kw + k, wn), x0)
        _vstore(C, ic[a], cn, x0)
        a += 1


@njit(**_JIT)
def _columns(A, ia, ka, W, kw, kn, wn, m, C, ic, cn, na, S, iS):
    # as _panel2 (L < m < 2L) or _panel1 (m < L) for the m columns left: W
    # holds whole vectors from wn (packed tiles are padded), C and S only
    # cn+m columns, so the rows go through a padded copy
    # C[ic[a], cn+j] = S[iS[a], cn+j] + sum_k A[ia[a], ka+k] * W[kw+k, wn+j]
    L = _lanes(C)
    two = m > L
    padded = np.zeros((na, 2 * L if two else L), C.dtype)
    rows = np.arange(na)
    for a in range(na):
        for j in range(m):
            padded[a, j] = S[iS[a], cn + j]
    if two:
        _panel2(A, ia, ka, W, kw, kn, wn, padded, rows, 0, na, padded, rows)
    else:
        _panel1(A, ia, ka, W, kw, kn, wn, padded, rows, 0, na, padded, rows)
    for a in range(na):
        for j in range(m):
            C[ic[a], cn + j] = padded[a, j]


@njit(**_JIT)
def _tiled_rows(na):
    # how many of na rows _panel2 takes in register tiles of several rows
    # (8 or 5, then 4); it takes the rest one row at a time
    per_tile = 8 if _WIDE_TILES else 5
    n = na - na % per_tile
    if na - n >= 4:
        n += 4
    return n


@njit(**_JIT)
def _row_tiles4(A, r, ka, Wp, t0, kw, kn, C, q, cn, S, s_row):
    # one row of A against the four whole tiles t0 .. t0+3 of Wp (packed in
    # tiles of two vectors, see _panel_width): eight independent fma chains
    # where _panel2 on one row has two
    # C[q, cn+j] = S[s_row, cn+j] + sum_k A[r, ka+k] * W[kw+k, t0*2L+j],
    # j < 8L, k ascending
    L = _lanes(C)
    W0 = Wp[t0]
    W1 = Wp[t0 + 1]
    W2 = Wp[t0 + 2]
    W3 = Wp[t0 + 3]
    x0 = _vload(S, s_row, cn)
    x1 = _vload(S, s_row, cn + L)
    x2 = _vload(S, s_row, cn + 2 * L)
    x3 = _vload(S, s_row, cn + 3 * L)
    x4 = _vload(S, s_row, cn + 4 * L)
    x5 = _vload(S, s_row, cn + 5 * L)
    x6 = _vload(S, s_row, cn + 6 * L)
    x7 = _vload(S, s_row, cn + 7 * L)
    for k in range(kn):
        s = _sload(A, r, ka + k)
        x0 = _fma(s, _vload(W0, kw + k, 0), x0)
        x1 = _fma(s, _vload(W0, kw + k, L), x1)
        x2 = _fma(s, _vload(W1, kw + k, 0), x2)
        x3 = _fma(s, _vload(W1, kw + k, L), x3)
        x4 = _fma(s, _vload(W2, kw + k, 0), x4)
        x5 = _fma(s, _vload(W2, kw + k, L), x5)
        x6 = _fma(s, _vload(W3, kw + k, 0), x6)
        x7 = _fma(s, _vload(W3, kw + k, L), x7)
    _vstore(C, q, cn, x0)
    _vstore(C, q, cn + L, x1)
    _vstore(C, q, cn + 2 * L, x2)
    _vstore(C, q, cn + 3 * L, x3)
    _vstore(C, q, cn + 4 * L, x4)
    _vstore(C, q, cn + 5 * L, x5)
    _vstore(C, q, cn + 6 * L, x6)
    _vstore(C, q, cn + 7 * L, x7)


@njit(**_JIT)
def _row_tiles2(A, r, ka, Wp, t0, kw, kn, C, q, cn, S, s_row):
    # _row_tiles4 for the two tiles t0 and t0+1: four chains
    L = _lanes(C)
    W0 = Wp[t0]
    W1 = Wp[t0 + 1]
    x0 = _vload(S, s_row, cn)
    x1 = _vload(S, s_row, cn + L)
    x2 = _vload(S, s_row, cn + 2 * L)
    x3 = _vload(S, s_row, cn + 3 * L)
    for k in range(kn):
        s = _sload(A, r, ka + k)
        x0 = _fma(s, _vload(W0, kw + k, 0), x0)
        x1 = _fma(s, _vload(W0, kw + k, L), x1)
        x2 = _fma(s, _vload(W1, kw + k, 0), x2)
        x3 = _fma(s, _vload(W1, kw + k, L), x3)
    _vstore(C, q, cn, x0)
    _vstore(C, q, cn + L, x1)
    _vstore(C, q, cn + 2 * L, x2)
    _vstore(C, q, cn + 3 * L, x3)


@njit(**_JIT)
def _gemm_acc(A, ia, ak0, Wp, wk0, nk, nj, C, ic, cj0, na):
    # A (*, >= ak0+nk)   Wp (n_tiles, >= wk0+nk, JT) packed W, see _pack
    # C (*, >= cj0+nj)   ia, ic (>= na,) row indices into A and C
    # C[ic[a], cj0+j] += sum_k A[ia[a], ak0+k] * W[wk0+k, j], k ascending
    _gemm_from(A, ia, ak0, Wp, wk0, nk, nj, C, ic, cj0, na, C, ic)


@njit(**_JIT)
def _gemm_from(A, ia, ak0, Wp, wk0, nk, nj, C, ic, cj0, na, S, iS):
    # _gemm_acc, each sum starting from S[iS[a], cj0+j] instead of from C
    # (S (*, >= cj0+nj), iS (>= na,)): with a bias as the one row of S,
    # C = bias + A W without writing the bias to C first. nk >= 1.
    L = _lanes(C)
    JT = Wp.shape[2]
    # The rows _panel2 would take one at a time (two fma chains, each
    # waiting on the last fma) go against two or four whole tiles at once
    # instead: four or eight chains. Where the rows are split changes the
    # speed, never the bits. Measured side by side, one thread, float32:
    # a forward of one sample 1.40x to 1.57x faster at (T, I, H) = (50, 8,
    # 32), (100, 1, 64) and (20, 50, 128), of two samples 1.34x, of three
    # 1.22x, a train step of one sample 1.26x; at the 16-sample blocks of
    # larger batches, which leave one row, no change.
    n_tiled = _tiled_rows(na)
    n_paired = 0
    if JT == 2 * L and n_tiled < na:
        n_paired = nj // JT - nj // JT % 2
    for a in range(n_tiled, na):
        t = 0
        while t + 4 <= n_paired:
            _row_tiles4(A, ia[a], ak0, Wp, t, wk0, nk, C, ic[a],
                        cj0 + t * JT, S, iS[a])
            t += 4
        if t < n_paired:
            _row_tiles2(A, ia[a], ak0, Wp, t, wk0, nk, C, ic[a],
                        cj0 + t * JT, S, iS[a])
    for tile in range(Wp.shape[0]):
        W = Wp[tile]
        j_lo = tile * JT
        m = min(JT, nj - j_lo)
        c_lo = cj0 + j_lo
        rows = n_tiled if tile < n_paired else na
        if rows == 0:
            continue
        for k_lo in range(0, nk, _KC):
            kn = min(_KC, nk - k_lo)
            ka = ak0 + k_lo
            kw = wk0 + k_lo
            # the first pass starts from S, the next ones from C
            if k_lo == 0:
                src, isrc = S, iS
            else:
                src, isrc = C, ic
            n = 0
            while n + 2 * L <= m:
                _panel2(A, ia, ka, W, kw, kn, n, C, ic, c_lo + n, rows, src,
                        isrc)
                n += 2 * L
            if n + L == m:
                _panel1(A, ia, ka, W, kw, kn, n, C, ic, c_lo + n, rows, src,
                        isrc)
                n += L
            if n < m:
                _columns(A, ia, ka, W, kw, kn, n, m - n, C, ic, c_lo + n,
                         rows, src, isrc)


@intrinsic
def _address(typingctx, a):
    """The address of the first element of the array ``a``, as an integer."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(array.data,
                                context.get_value_type(types.intp))
    return types.intp(a), codegen


@njit(**_JIT)
def _aligned_empty(shape, like):
    # an uninitialised C-contiguous array of the given shape (a tuple) and
    # the dtype of the array `like`, starting on a 64-byte boundary (see
    # numgru._aligned; Numba's own arrays start on 32-byte ones)
    n = 1
    for extent in shape:
        n *= extent
    pad = ALIGNMENT // like.itemsize
    buf = np.empty(n + pad, like.dtype)
    start = -_address(buf) % ALIGNMENT // like.itemsize
    return buf[start:start + n].reshape(shape)


@njit(**_JIT)
def _pack(w, max_width):
    # w (K, N) row-contiguous   returns (ceil(N/width), K, width): the
    # columns of w in contiguous tiles, tile t holding columns t*width ..
    # t*width+width-1 (zero padded), so a pass over one tile reads memory in
    # order. The width (whole vectors, at most max_width) changes speed,
    # never results.
    packed = _aligned_empty(_packed_shape(w, max_width), w)
    _pack_into(w, packed)
    return packed


@njit(**_JIT)
def _packed_shape(w, max_width):
    # the shape of _pack(w, max_width)
    K, N = w.shape
    return _tiled_shape(K, N, _lanes(w), max_width)


@njit(**_JIT)
def _tiled_shape(K, N, L, max_width):
    # (n_tiles, K, width): N columns of K rows in tiles of whole L-lane
    # vectors, at most max_width wide (the last tile zero padded)
    width = _tile_width(N, L, max_width)
    return ((N + width - 1) // width, K, width)


@njit(**_JIT)
def _pack_into(w, packed):
    # packed (n_tiles, K, width) = _pack(w, width), copied a vector at a
    # time where whole vectors fit
    K, N = w.shape
    L = _lanes(w)
    n_tiles, _, width = packed.shape
    for tile in range(n_tiles):
        j0 = tile * width
        m = min(width, N - j0)
        P = packed[tile]
        for k in range(K):
            j = 0
            while j + L <= m:
                _vstore(P, k, j, _vload(w, k, j0 + j))
                j += L
            for j in range(j, m):
                P[k, j] = w[k, j0 + j]
            for j in range(m, width):
                P[k, j] = 0


@njit(**_JIT)
def _tile_width(n, lanes, max_width):
    # columns per packed tile for n columns: whole vectors, at most max_width
    return min(max_width, (n + lanes - 1) // lanes * lanes)


@njit(**_JIT)
def _pack_transposed(w, r0, n, max_width):
    # w (*, K) row-contiguous
    # returns _pack(w[r0:r0+n].T, max_width): (n_tiles, K, width)
    # blocks of L x L values are transposed in registers, the edges one
    # value at a time
    K = w.shape[1]
    L = _lanes(w)
    n_tiles, _, width = _tiled_shape(K, n, L, max_width)
    packed = _aligned_empty((n_tiles, K, width), w)
    for tile in range(n_tiles):
        r_lo = r0 + tile * width
        m = min(width, n - tile * width)
        P = packed[tile]
        j = 0
        while j + L <= m:
            k = 0
            while k + L <= K:
                _vtranspose(w, r_lo + j, k, P, k, j)
                k += L
            for k in range(k, K):
                for q in range(j, j + L):
                    P[k, q] = w[r_lo + q, k]
            j += L
        for k in range(K):
            for q in range(j, m):
                P[k, q] = w[r_lo + q, k]
            for q in range(m, width):
                P[k, q] = 0
    return packed


@njit(**_JIT)
def _panel_width(w):
    # columns per tile of the packed weights of the forward's and backward's
    # products: two vectors, one _panel2 each, so that a panel's weights are
    # one contiguous block. In wider tiles a panel's rows lie a tile's width
    # apart, and at widths of 1 KB they all fall in a few sets of the L1
    # cache and evict each other between the register tiles of rows. On an
    # AVX-512 machine, 2 threads, float32: forward 1.11x faster than with
    # 256-wide tiles at (B, T, I, H) = (128, 100, 128, 512), 1.05x at
    # (64, 100, 32, 128), 1.07x at (32, 20, 50, 128). On an AVX2 machine,
    # backward 1.24x faster at (128, 100, 128, 512), 1.06x at
    # (64, 100, 32, 128), 1.05x at (32, 20, 50, 128), no change at the
    # smaller shapes.
    return 2 * _lanes(w)


@njit(**_JIT)
def _pack_forward(w_ih, w_hh):
    # w_ih (3H, I), w_hh (3H, H) row-contiguous   returns W_ih^T,
    # W_hh^T[:, :2H] and W_hh^T[:, 2H:] packed for _gemm_acc (see _pack)
    # in tiles of _panel_width columns
    H = w_hh.shape[1]
    width = _panel_width(w_hh)
    return (_pack_transposed(w_ih, 0, 3 * H, width),
            _pack_transposed(w_hh, 0, 2 * H, width),
            _pack_transposed(w_hh, 2 * H, H, width))


@njit(**_JIT)
def _outer_panel(A, c, X, xk, ra, rx, r_lo, r_hi, D, j, dk, two):
    # A (R, >= c+4)   X (R, >= xk+vw)   D (>= j+4, >= dk+vw)
    # ra, rx (>= r_hi,) row indices into A and X; vw = 2L if two else L, L = _lanes(D)
    # D[j+jj, dk:dk+vw] += sum_r A[ra[r], c+jj] * X[rx[r], xk:xk+vw]
    # for jj < 4, r ascending from r_lo to r_hi
    L = _lanes(D)
    x00 = _vload(D, j, dk)
    x10 = _vload(D, j + 1, dk)
    x20 = _vload(D, j + 2, dk)
    x30 = _vload(D, j + 3, dk)
    if two:
        x01 = _vload(D, j, dk + L)
        x11 = _vload(D, j + 1, dk + L)
        x21 = _vload(D, j + 2, dk + L)
        x31 = _vload(D, j + 3, dk + L)
        for r in range(r_lo, r_hi):
            qa = ra[r]
            qx = rx[r]
            u0 = _vload(X, qx, xk)
            u1 = _vload(X, qx, xk + L)
            s = _sload(A, qa, c)
            x00 = _fma(s, u0, x00)
            x01 = _fma(s, u1, x01)
            s = _sload(A, qa, c + 1)
            x10 = _fma(s, u0, x10)
            x11 = _fma(s, u1, x11)
            s = _sload(A, qa, c + 2)
            x20 = _fma(s, u0, x20)
            x21 = _fma(s, u1, x21)
            s = _sload(A, qa, c + 3)
            x30 = _fma(s, u0, x30)
            x31 = _fma(s, u1, x31)
        _vstore(D, j, dk + L, x01)
        _vstore(D, j + 1, dk + L, x11)
        _vstore(D, j + 2, dk + L, x21)
        _vstore(D, j + 3, dk + L, x31)
    else:
        for r in range(r_lo, r_hi):
            qa = ra[r]
            qx = rx[r]
            u0 = _vload(X, qx, xk)
            x00 = _fma(_sload(A, qa, c), u0, x00)
            x10 = _fma(_sload(A, qa, c + 1), u0, x10)
            x20 = _fma(_sload(A, qa, c + 2), u0, x20)
            x30 = _fma(_sload(A, qa, c + 3), u0, x30)
    _vstore(D, j, dk, x00)
    _vstore(D, j + 1, dk, x10)
    _vstore(D, j + 2, dk, x20)
    _vstore(D, j + 3, dk, x30)


@njit(**_JIT)
def _outer_packed8(Ap, a0, Xp, rn, D, j, dk):
    # as _outer_panel with two vectors, for 8 outputs and packed rows:
    # Ap (>= rn, >= a0+8)   Xp (>= rn, 2L)   D (>= j+8, >= dk+2L)
    # D[j+jj, dk:dk+2L] += sum_r Ap[r, a0+jj] * Xp[r, :], r ascending below rn
    L = _lanes(D)
    x00 = _vload(D, j + 0, dk)
    x01 = _vload(D, j + 0, dk + L)
    x10 = _vload(D, j + 1, dk)
    x11 = _vload(D, j + 1, dk + L)
    x20 = _vload(D, j + 2, dk)
    x21 = _vload(D, j + 2, dk + L)
    x30 = _vload(D, j + 3, dk)
    x31 = _vload(D, j + 3, dk + L)
    x40 = _vload(D, j + 4, dk)
    x41 = _vload(D, j + 4, dk + L)
    x50 = _vload(D, j + 5, dk)
    x51 = _vload(D, j + 5, dk + L)
    x60 = _vload(D, j + 6, dk)
    x61 = _vload(D, j + 6, dk + L)
    x70 = _vload(D, j + 7, dk)
    x71 = _vload(D, j + 7, dk + L)
    for r in range(rn):
        u0 = _vload(Xp, r, 0)
        u1 = _vload(Xp, r, L)
        s = _sload(Ap, r, a0 + 0)
        x00 = _fma(s, u0, x00)
        x01 = _fma(s, u1, x01)
        s = _sload(Ap, r, a0 + 1)
        x10 = _fma(s, u0, x10)
        x11 = _fma(s, u1, x11)
        s = _sload(Ap, r, a0 + 2)
        x20 = _fma(s, u0, x20)
        x21 = _fma(s, u1, x21)
        s = _sload(Ap, r, a0 + 3)
        x30 = _fma(s, u0, x30)
        x31 = _fma(s, u1, x31)
        s = _sload(Ap, r, a0 + 4)
        x40 = _fma(s, u0, x40)
        x41 = _fma(s, u1, x41)
        s = _sload(Ap, r, a0 + 5)
        x50 = _fma(s, u0, x50)
        x51 = _fma(s, u1, x51)
        s = _sload(Ap, r, a0 + 6)
        x60 = _fma(s, u0, x60)
        x61 = _fma(s, u1, x61)
        s = _sload(Ap, r, a0 + 7)
        x70 = _fma(s, u0, x70)
        x71 = _fma(s, u1, x71)
    _vstore(D, j + 0, dk, x00)
    _vstore(D, j + 0, dk + L, x01)
    _vstore(D, j + 1, dk, x10)
    _vstore(D, j + 1, dk + L, x11)
    _vstore(D, j + 2, dk, x20)
    _vstore(D, j + 2, dk + L, x21)
    _vstore(D, j + 3, dk, x30)
    _vstore(D, j + 3, dk + L, x31)
    _vstore(D, j + 4, dk, x40)
    _vstore(D, j + 4, dk + L, x41)
    _vstore(D, j + 5, dk, x50)
    _vstore(D, j + 5, dk + L, x51)
    _vstore(D, j + 6, dk, x60)
    _vstore(D, j + 6, dk + L, x61)
    _vstore(D, j + 7, dk, x70)
    _vstore(D, j + 7, dk + L, x71)


@njit(**_JIT)
def _outer_packed4(Ap, a0, Xp, rn, D, j, dk):
    # _outer_packed8 for 4 outputs: the tile for AVX2 (see _WIDE_TILES)
    # D[j+jj, dk:dk+2L] += sum_r Ap[r, a0+jj] * Xp[r, :], jj < 4
    L = _lanes(D)
    x00 = _vload(D, j + 0, dk)
    x01 = _vload(D, j + 0, dk + L)
    x10 = _vload(D, j + 1, dk)
    x11 = _vload(D, j + 1, dk + L)
    x20 = _vload(D, j + 2, dk)
    x21 = _vload(D, j + 2, dk + L)
    x30 = _vload(D, j + 3, dk)
    x31 = _vload(D, j + 3, dk + L)
    for r in range(rn):
        u0 = _vload(Xp, r, 0)
        u1 = _vload(Xp, r, L)
        s = _sload(Ap, r, a0 + 0)
        x00 = _fma(s, u0, x00)
        x01 = _fma(s, u1, x01)
        s = _sload(Ap, r, a0 + 1)
        x10 = _fma(s, u0, x10)
        x11 = _fma(s, u1, x11)
        s = _sload(Ap, r, a0 + 2)
        x20 = _fma(s, u0, x20)
        x21 = _fma(s, u1, x21)
        s = _sload(Ap, r, a0 + 3)
        x30 = _fma(s, u0, x30)
        x31 = _fma(s, u1, x31)
    _vstore(D, j + 0, dk, x00)
    _vstore(D, j + 0, dk + L, x01)
    _vstore(D, j + 1, dk, x10)
    _vstore(D, j + 1, dk + L, x11)
    _vstore(D, j + 2, dk, x20)
    _vstore(D, j + 2, dk + L, x21)
    _vstore(D, j + 3, dk, x30)
    _vstore(D, j + 3, dk + L, x31)


@njit(**_JIT)
def _outer_packed5(Ap, a0, Xp, rn, D, j, dk):
    # _outer_packed8 for 5 outputs: the tile for AVX2 (see _WIDE_TILES)
    # D[j+jj, dk:dk+2L] += sum_r Ap[r, a0+jj] * Xp[r, :], jj < 5
    L = _lanes(D)
    x00 = _vload(D, j + 0, dk)
    x01 = _vload(D, j + 0, dk + L)
    x10 = _vload(D, j + 1, dk)
    x11 = _vload(D, j + 1, dk + L)
    x20 = _vload(D, j + 2, dk)
    x21 = _vload(D, j + 2, dk + L)
    x30 = _vload(D, j + 3, dk)
    x31 = _vload(D, j + 3, dk + L)
    x40 = _vload(D, j + 4, dk)
    x41 = _vload(D, j + 4, dk + L)
    for r in range(rn):
        u0 = _vload(Xp, r, 0)
        u1 = _vload(Xp, r, L)
        s = _sload(Ap, r, a0 + 0)
        x00 = _fma(s, u0, x00)
        x01 = _fma(s, u1, x01)
        s = _sload(Ap, r, a0 + 1)
        x10 = _fma(s, u0, x10)
        x11 = _fma(s, u1, x11)
        s = _sload(Ap, r, a0 + 2)
        x20 = _fma(s, u0, x20)
        x21 = _fma(s, u1, x21)
        s = _sload(Ap, r, a0 + 3)
        x30 = _fma(s, u0, x30)
        x31 = _fma(s, u1, x31)
        s = _sload(Ap, r, a0 + 4)
        x40 = _fma(s, u0, x40)
        x41 = _fma(s, u1, x41)
    _vstore(D, j + 0, dk, x00)
    _vstore(D, j + 0, dk + L, x01)
    _vstore(D, j + 1, dk, x10)
    _vstore(D, j + 1, dk + L, x11)
    _vstore(D, j + 2, dk, x20)
    _vstore(D, j + 2, dk + L, x21)
    _vstore(D, j + 3, dk, x30)
    _vstore(D, j + 3, dk + L, x31)
    _vstore(D, j + 4, dk, x40)
    _vstore(D, j + 4, dk + L, x41)


@njit(**_JIT)
def _outer_row(A, c, X, xk0, nv, ra, rx, r_lo, r_hi, D, j, dk0):
    # one output row, nv a multiple of L = _lanes(D):
    # D[j, dk0+i] += sum_r A[ra[r], c] * X[rx[r], xk0+i] for i < nv,
    # r ascending from r_lo to r_hi
    L = _lanes(D)
    for i in range(0, nv, L):
        v = _vload(D, j, dk0 + i)
        for r in range(r_lo, r_hi):
            qa = ra[r]
            qx = rx[r]
            v = _fma(_sload(A, qa, c), _vload(X, qx, xk0 + i), v)
        _vstore(D, j, dk0 + i, v)


@njit(**_JIT)
def _outer_panel_t(A, c, X, xk, ni, ra, rx, r_lo, r_hi, D, j, dk, tmp):
    # A (R, >= c+L)   X (R, >= xk+ni)   D (>= j+L, >= dk+ni)   1 <= ni <= 4
    # tmp (4, L) scratch;  L = _lanes(D)
    # D[j+l, dk+i] += sum_r A[ra[r], c+l] * X[rx[r], xk+i]  (l < L, i < ni)
    # Vectors run along j here (a row of A), for inputs too narrow for
    # vectors along i; each element is the same fma chain as in _outer_panel.
    L = _lanes(D)
    for i in range(4):
        for lane in range(L):
            tmp[i, lane] = D[j + lane, dk + i] if i < ni else 0
    # columns past ni repeat the last one; their sums are never stored
    x1 = xk + min(1, ni - 1)
    x2 = xk + min(2, ni - 1)
    x3 = xk + min(3, ni - 1)
    v0 = _vload(tmp, 0, 0)
    v1 = _vload(tmp, 1, 0)
    v2 = _vload(tmp, 2, 0)
    v3 = _vload(tmp, 3, 0)
    for r in range(r_lo, r_hi):
        qa = ra[r]
        qx = rx[r]
        a = _vload(A, qa, c)
        v0 = _fma(_sload(X, qx, xk), a, v0)
        v1 = _fma(_sload(X, qx, x1), a, v1)
        v2 = _fma(_sload(X, qx, x2), a, v2)
        v3 = _fma(_sload(X, qx, x3), a, v3)
    _vstore(tmp, 0, 0, v0)
    _vstore(tmp, 1, 0, v1)
    _vstore(tmp, 2, 0, v2)
    _vstore(tmp, 3, 0, v3)
    for i in range(ni):
        for lane in range(L):
            D[j + lane, dk + i] = tmp[i, lane]


@njit(**_JIT)
def _bias_acc(A, c, nj, ra, r_lo, r_hi, db, j0, tmp):
    # A (R, >= c+nj)   db (>= j0+nj,)   tmp (4, L) scratch;  L = _lanes(tmp)
    # db[j0+l] += sum_r A[ra[r], c+l], r ascending from r_lo to r_hi;
    # 4 vectors of l at a time (independent chains), then one, then scalars
    L = _lanes(tmp)
    l0 = 0
    while l0 + 4 * L <= nj:
        for i in range(4):
            for lane in range(L):
                tmp[i, lane] = db[j0 + l0 + i * L + lane]
        v0 = _vload(tmp, 0, 0)
        v1 = _vload(tmp, 1, 0)
        v2 = _vload(tmp, 2, 0)
        v3 = _vload(tmp, 3, 0)
        for r in range(r_lo, r_hi):
            q = ra[r]
            v0 = _vadd(v0, _vload(A, q, c + l0))
            v1 = _vadd(v1, _vload(A, q, c + l0 + L))
            v2 = _vadd(v2, _vload(A, q, c + l0 + 2 * L))
            v3 = _vadd(v3, _vload(A, q, c + l0 + 3 * L))
        _vstore(tmp, 0, 0, v0)
        _vstore(tmp, 1, 0, v1)
        _vstore(tmp, 2, 0, v2)
        _vstore(tmp, 3, 0, v3)
        for i in range(4):
            for lane in range(L):
                db[j0 + l0 + i * L + lane] = tmp[i, lane]
        l0 += 4 * L
    while l0 + L <= nj:
        for lane in range(L):
            tmp[0, lane] = db[j0 + l0 + lane]
        v0 = _vload(tmp, 0, 0)
        for r in range(r_lo, r_hi):
            v0 = _vadd(v0, _vload(A, ra[r], c + l0))
        _vstore(tmp, 0, 0, v0)
        for lane in range(L):
            db[j0 + l0 + lane] = tmp[0, lane]
        l0 += L
    for lane in range(l0, nj):
        v = db[j0 + lane]
        for r in range(r_lo, r_hi):
            v = v + A[ra[r], c + lane]
        db[j0 + lane] = v


@njit(**_JIT)
def _outer_acc(A, acol, X, xk0, nk, ra, rx, nrows, D, j0, j1, dk0, db):
    # A (*, *)   X (*, >= xk0+nk)   ra, rx (>= nrows,) row indices into A
    # and X, in summation order   D (*, >= dk0+nk)   db (*,)
    # D[j, dk0+i] += sum_r A[ra[r], acol+j-j0] * X[rx[r], xk0+i]  (r ascending)
    # and, when dk0 == 0, db[j] += sum_r A[ra[r], acol+j-j0], for j0 <= j < j1
    # Rows r go in passes of _RC. Columns i up to a multiple of L go in
    # vectors along i (8 or 4 outputs j at a time), the rest in vectors
    # along j; every element is one fma chain (bias: one sum) over r
    # ascending, continuing from its value in D.
    L = _lanes(D)
    tmp = np.empty((4, L), D.dtype)
    with_bias = dk0 == 0
    nv = nk - nk % L
    # the 8 x 2L tiles read A and X through contiguous copies of a pass's
    # rows (the same values in the same order): Xp holds the columns in
    # panels of 2L, Ap the columns of one group of _AP outputs (copied a
    # vector at a time), or of 8 outputs for the rest
    n_pair = nv // (2 * L) if j1 - j0 >= 8 else 0
    Xp = _aligned_empty((n_pair, _RC, 2 * L), D)
    Ap = _aligned_empty((_RC, _AP), D)
    for r_lo in range(0, nrows, _RC):
        r_hi = min(r_lo + _RC, nrows)
        rn = r_hi - r_lo
        for pair in range(n_pair):
            xp = Xp[pair]
            for r in range(rn):
                qx = rx[r_lo + r]
                _vstore(xp, r, 0, _vload(X, qx, xk0 + pair * 2 * L))
                _vstore(xp, r, L, _vload(X, qx, xk0 + pair * 2 * L + L))
        j = j0
        while j + 8 <= j1:
            c = acol + j - j0
            width = _AP if j + _AP <= j1 and n_pair > 0 else 8
            if width == _AP:
                for r in range(rn):
                    qa = ra[r_lo + r]
                    for lane in range(0, _AP, L):
                        _vstore(Ap, r, lane, _vload(A, qa, c + lane))
            elif n_pair > 0:
                for r in range(rn):
                    qa = ra[r_lo + r]
                    for jj in range(8):
                        Ap[r, jj] = A[qa, c + jj]
            # outputs per tile: 8 (two tiles of 4 with AVX2), or 5 in the
            # AVX2 groups of _AP (see _WIDE_TILES)
            tile = 5 if width == _AP and not _WIDE_TILES else 8
            for a0 in range(0, width, tile):
                i = 0
                for pair in range(n_pair):
                    if tile == 5:
                        _outer_packed5(Ap, a0, Xp[pair], rn, D, j + a0,
                                       dk0 + i)
                    elif _WIDE_TILES:
                        _outer_packed8(Ap, a0, Xp[pair], rn, D, j + a0,
                                       dk0 + i)
                    else:
                        _outer_packed4(Ap, a0, Xp[pair], rn, D, j + a0,
                                       dk0 + i)
                        _outer_packed4(Ap, a0 + 4, Xp[pair], rn, D,
                                       j + a0 + 4, dk0 + i)
                    i += 2 * L
                if i < nv:
                    # the last vector of columns: 4 outputs at a time, then
                    # one at a time
                    n4 = tile - tile % 4
                    for jj in range(0, n4, 4):
                        _outer_panel(A, c + a0 + jj, X, xk0 + i, ra, rx, r_lo,
                                     r_hi, D, j + a0 + jj, dk0 + i, False)
                    for jj in range(n4, tile):
                        _outer_row(A, c + a0 + jj, X, xk0 + i, nv - i, ra, rx,
                                   r_lo, r_hi, D, j + a0 + jj, dk0 + i)
            j += width
        while j + 4 <= j1:
            c = acol + j - j0
            i = 0
            while i + 2 * L <= nv:
                _outer_panel(A, c, X, xk0 + i, ra, rx, r_lo, r_hi, D, j,
                             dk0 + i, True)
                i += 2 * L
            if i < nv:
                _outer_panel(A, c, X, xk0 + i, ra, rx, r_lo, r_hi, D, j,
                             dk0 + i, False)
            j += 4
        while j < j1:
            _outer_row(A, acol + j - j0, X, xk0, nv, ra, rx, r_lo, r_hi, D, j,
                       dk0)
            j += 1
        j = j0
        while j + L <= j1:
            for i in range(nv, nk, 4):
                _outer_panel_t(A, acol + j - j0, X, xk0 + i, min(4, nk - i),
                               ra, rx, r_lo, r_hi, D, j, dk0 + i, tmp)
            j += L
        for jr in range(j, j1):
            c = acol + jr - j0
            for i in range(nv, nk):
                v = D[jr, dk0 + i]
                for r in range(r_lo, r_hi):
                    qa = ra[r]
                    qx = rx[r]
                    v = _fma(_sload(A, qa, c), _sload(X, qx, xk0 + i), v)
                D[jr, dk0 + i] = v
        if with_bias:
            _bias_acc(A, acol, j1 - j0, ra, r_lo, r_hi, db, j0, tmp)


@njit(**_JIT)
def _outer_t8(X, rx, xm, nm, A, ra, ac, r_lo, r_hi, DT, dm, dj, two):
    # DT (>= dm+nm, >= dj+vw)   X (*, >= xm+nm)   A (*, >= ac+vw)
    # ra, rx (>= r_hi,) row indices into A and X; 1 <= nm <= 8;
    # vw = 2L if two else L, L = _lanes(DT):
    # DT[dm+i, dj:dj+vw] += sum_r X[rx[r], xm+i] * A[ra[r], ac:ac+vw]
    # for i < nm, r ascending from r_lo to r_hi. Rows past nm repeat the
    # last one; their sums are never stored.
    L = _lanes(DT)
    m1 = min(1, nm - 1)
    m2 = min(2, nm - 1)
    m3 = min(3, nm - 1)
    m4 = min(4, nm - 1)
    m5 = min(5, nm - 1)
    m6 = min(6, nm - 1)
    m7 = min(7, nm - 1)
    y0 = _vload(DT, dm, dj)
    y1 = _vload(DT, dm + m1, dj)
    y2 = _vload(DT, dm + m2, dj)
    y3 = _vload(DT, dm + m3, dj)
    y4 = _vload(DT, dm + m4, dj)
    y5 = _vload(DT, dm + m5, dj)
    y6 = _vload(DT, dm + m6, dj)
    y7 = _vload(DT, dm + m7, dj)
    if two:
        z0 = _vload(DT, dm, dj + L)
        z1 = _vload(DT, dm + m1, dj + L)
        z2 = _vload(DT, dm + m2, dj + L)
        z3 = _vload(DT, dm + m3, dj + L)
        z4 = _vload(DT, dm + m4, dj + L)
        z5 = _vload(DT, dm + m5, dj + L)
        z6 = _vload(DT, dm + m6, dj + L)
        z7 = _vload(DT, dm + m7, dj + L)
        for r in range(r_lo, r_hi):
            qa = ra[r]
            qx = rx[r]
            u0 = _vload(A, qa, ac)
            u1 = _vload(A, qa, ac + L)
            s = _sload(X, qx, xm)
            y0 = _fma(s, u0, y0)
            z0 = _fma(s, u1, z0)
            s = _sload(X, qx, xm + m1)
            y1 = _fma(s, u0, y1)
            z1 = _fma(s, u1, z1)
            s = _sload(X, qx, xm + m2)
            y2 = _fma(s, u0, y2)
            z2 = _fma(s, u1, z2)
            s = _sload(X, qx, xm + m3)
            y3 = _fma(s, u0, y3)
            z3 = _fma(s, u1, z3)
            s = _sload(X, qx, xm + m4)
            y4 = _fma(s, u0, y4)
            z4 = _fma(s, u1, z4)
            s = _sload(X, qx, xm + m5)
            y5 = _fma(s, u0, y5)
            z5 = _fma(s, u1, z5)
            s = _sload(X, qx, xm + m6)
            y6 = _fma(s, u0, y6)
            z6 = _fma(s, u1, z6)
            s = _sload(X, qx, xm + m7)
            y7 = _fma(s, u0, y7)
            z7 = _fma(s, u1, z7)
        _vstore(DT, dm, dj + L, z0)
        if nm > 1:
            _vstore(DT, dm + 1, dj + L, z1)
        if nm > 2:
            _vstore(DT, dm + 2, dj + L, z2)
        if nm > 3:
            _vstore(DT, dm + 3, dj + L, z3)
        if nm > 4:
            _vstore(DT, dm + 4, dj + L, z4)
        if nm > 5:
            _vstore(DT, dm + 5, dj + L, z5)
        if nm > 6:
            _vstore(DT, dm + 6, dj + L, z6)
        if nm > 7:
            _vstore(DT, dm + 7, dj + L, z7)
    else:
        for r in range(r_lo, r_hi):
            qa = ra[r]
            qx = rx[r]
            u0 = _vload(A, qa, ac)
            y0 = _fma(_sload(X, qx, xm), u0, y0)
            y1 = _fma(_sload(X, qx, xm + m1), u0, y1)
            y2 = _fma(_sload(X, qx, xm + m2), u0, y2)
            y3 = _fma(_sload(X, qx, xm + m3), u0, y3)
            y4 = _fma(_sload(X, qx, xm + m4), u0, y4)
            y5 = _fma(_sload(X, qx, xm + m5), u0, y5)
            y6 = _fma(_sload(X, qx, xm + m6), u0, y6)
            y7 = _fma(_sload(X, qx, xm + m7), u0, y7)
    _vstore(DT, dm, dj, y0)
    if nm > 1:
        _vstore(DT, dm + 1, dj, y1)
    if nm > 2:
        _vstore(DT, dm + 2, dj, y2)
    if nm > 3:
        _vstore(DT, dm + 3, dj, y3)
    if nm > 4:
        _vstore(DT, dm + 4, dj, y4)
    if nm > 5:
        _vstore(DT, dm + 5, dj, y5)
    if nm > 6:
        _vstore(DT, dm + 6, dj, y6)
    if nm > 7:
        _vstore(DT, dm + 7, dj, y7)


@njit(**_JIT)
def _outer_t(X, rx, nm, A, ra, ac, nj, n_rows, DT, dj0):
    # X (*, >= nm)   A (*, >= ac+nj)   DT (>= nm, >= dj0+nj)
    # ra, rx (>= n_rows,) row indices into A and X, in summation order:
    # DT[m, dj0+j] += sum_r X[rx[r], m] * A[ra[r], ac+j]  (m < nm, j < nj)
    # in vectors along j (tiles of 8 m by 2 vectors), then one value at a
    # time; every element is one fma chain over r ascending, continuing from
    # its value in DT.
    L = _lanes(DT)
    j = 0
    while _WIDE_TILES and j + 2 * L <= nj:
        for m in range(0, nm, 8):
            _outer_t8(X, rx, m, min(8, nm - m), A, ra, ac + j, 0, n_rows, DT,
                      m, dj0 + j, True)
        j += 2 * L
    while j + L <= nj:
        for m in range(0, nm, 8):
            _outer_t8(X, rx, m, min(8, nm - m), A, ra, ac + j, 0, n_rows, DT,
                      m, dj0 + j, False)
        j += L
    for jr in range(j, nj):
        for m in range(nm):
            v = DT[m, dj0 + jr]
            for r in range(n_rows):
                v = _fma(X[rx[r], m], A[ra[r], ac + jr], v)
            DT[m, dj0 + jr] = v


# ---------------------------------------------------------------------------
# One step, elementwise part (one sample)
# ---------------------------------------------------------------------------
#
# Each function runs over j in vectors of L = _lanes(h) values, then one
# value at a time for the H % L left; both evaluate the same expressions
# (shared value functions, no fused multiply-add), so a value does not
# depend on which of the two loops computed it.

@njit(inline="always", **_JIT)
def _copy(src, dst, n):
    # src, dst (>= n,): dst[:n] = src[:n], no temporary
    for j in range(n):
        dst[j] = src[j]


@njit(inline="always", **_JIT)
def _rz_values(a_r, a_z):
    # the reset and update gates from their pre-activations: returns (r, z)
    return _sigmoid(a_r), _sigmoid(a_z)


@njit(inline="always", **_JIT)
def _n_values(z, a_n, h, one):
    # candidate and new state from the candidate's pre-activation:
    # returns (h_new, n)
    n = _tanh(a_n)
    return (one - z) * n + z * h, n


@njit(inline="always", **_JIT)
def _item(a, j):
    # a[j]: the one-value counterpart of _vload1 and _gload
    return a[j]


@njit(inline="always", **_JIT)
def _set_item(a, j, v):
    # a[j] = v: the one-value counterpart of _vstore1 and _gstore
    a[j] = v


@njit(inline="always", **_JIT)
def _by_lane_blocks(step_at, gi, gh, h, out, g, H):
    # step_at(gi, gh, h, out, g, H, j, load, store) for every lane j of H:
    # a group at a time (see _GROUP), then single vectors, then single values
    L = _lanes(h)
    j = 0
    while j + _GROUP * L <= H:
        step_at(gi, gh, h, out, g, H, j, _gload, _gstore)
        j += _GROUP * L
    while j + L <= H:
        step_at(gi, gh, h, out, g, H, j, _vload1, _vstore1)
        j += L
    for j in range(j, H):
        step_at(gi, gh, h, out, g, H, j, _item, _set_item)


@njit(inline="always", **_JIT)
def _after_at(gi, gh, h, h_new, g, H, j, load, store):
    # _step_after for the lanes from j that load and store move
    r, z = _rz_values(load(gi, j) + load(gh, j),
                      load(gi, H + j) + load(gh, H + j))
    hn = load(gh, 2 * H + j)
    v, n = _n_values(z, load(gi, 2 * H + j) + r * hn, load(h, j),
                     _unit(h[0]))
    store(h_new, j, v)
    store(g, j, r)
    store(g, H + j, z)
    store(g, 2 * H + j, n)
    store(g, 3 * H + j, hn)


@njit(inline="always", **_JIT)
def _step_after(gi, gh, h, h_new, g, H):
    # gi (3H,) input projection + b_ih    gh (3H,) W_hh h + b_hh
    # h (H,) previous state   h_new (H,) written   g (4H,) written [r, z, n, hn]
    _by_lane_blocks(_after_at, gi, gh, h, h_new, g, H)


@njit(inline="always", **_JIT)
def _before_rz_at(gi, gh, h, rh, g, H, j, load, store):
    # _step_before_rz for the lanes from j that load and store move
    r, z = _rz_values(load(gi, j) + load(gh, j),
                      load(gi, H + j) + load(gh, H + j))
    store(g, j, r)
    store(g, H + j, z)
    store(rh, j, r * load(h, j))


@njit(inline="always", **_JIT)
def _step_before_rz(gi, gh, h, rh, g, H):
    # gi (3H,)   gh (>= 2H,) W_hr h + b_hr, W_hz h + b_hz   h (H,)
    # rh (H,) written r * h   g (4H,) written [r, z, ., .]
    _by_lane_blocks(_before_rz_at, gi, gh, h, rh, g, H)


@njit(inline="always", **_JIT)
def _before_n_at(gi, gh, h, h_new, g, H, j, load, store):
    # _step_before_n for the lanes from j that load and store move
    hn = load(gh, 2 * H + j)
    v, n = _n_values(load(g, H + j), load(gi, 2 * H + j) + hn, load(h, j),
                     _unit(h[0]))
    store(h_new, j, v)
    store(g, 2 * H + j, n)
    store(g, 3 * H + j, hn)


@njit(inline="always", **_JIT)
def _step_before_n(gi, gh, h, h_new, g, H):
    # gi (3H,)   gh (3H,) with gh[2H:] = W_hn (r * h) + b_hn   h (H,)
    # h_new (H,) written   g (4H,) [r, z] read, [n, hn] written
    _by_lane_blocks(_before_n_at, gi, gh, h, h_new, g, H)


@njit(inline="always", **_JIT)
def _back_after_values(r, z, n, hn, h, dhj, one):
    # reset_after step backward: returns (da_r, da_z, da_n, dgh_n, dh' * z)
    dn = dhj * (one - z)
    dz = dhj * (h - n)
    da_n = dn * (one - n * n)
    da_z = dz * z * (one - z)
    da_r = da_n * hn * r * (one - r)
    return da_r, da_z, da_n, da_n * r, dhj * z


@njit(inline="always", **_JIT)
def _step_back_after(g, h, dh, d_out, dh_new, dgi, dghn, H):
    # g (4H,) [r, z, n, hn]   h (H,) previous state   dh (H,) from later steps
    # d_out (H,) gradient of this step's output
    # written: dh_new (H,) = dh' * z (the W_hh^T term is added by the caller)
    #          dgi (3H,) = [da_r, da_z, da_n]   dghn (H,) = da_n * r
    one = _unit(h[0])
    L = _lanes(h)
    j = 0
    while j + L <= H:
        a_r, a_z, a_n, a_hn, d = _back_after_values(
            _vload1(g, j), _vload1(g, H + j), _vload1(g, 2 * H + j),
            _vload1(g, 3 * H + j), _vload1(h, j),
            _vload1(dh, j) + _vload1(d_out, j), one)
        _vstore1(dgi, j, a_r)
        _vstore1(dgi, H + j, a_z)
        _vstore1(dgi, 2 * H + j, a_n)
        _vstore1(dghn, j, a_hn)
        _vstore1(dh_new, j, d)
        j += L
    for j in range(j, H):
        a_r, a_z, a_n, a_hn, d = _back_after_values(
            g[j], g[H + j], g[2 * H + j], g[3 * H + j], h[j],
            dh[j] + d_out[j], one)
        dgi[j] = a_r
        dgi[H + j] = a_z
        dgi[2 * H + j] = a_n
        dghn[j] = a_hn
        dh_new[j] = d


@njit(inline="always", **_JIT)
def _back_zn_values(z, n, h, dhj, one):
    # reset-before step backward, z and n parts: returns (da_z, da_n)
    dn = dhj * (one - z)
    dz = dhj * (h - n)
    return dz * z * (one - z), dn * (one - n * n)


@njit(inline="always", **_JIT)
def _step_back_before_zn(g, h, dh, d_out, dh_new, dgi, H):
    # g (4H,) [r, z, n, hn]   h (H,)   dh (H,)   d_out (H,)
    # written: dh_new (H,) = dh' (finished by _step_back_before_r)
    #          dgi[H:3H] = [da_z, da_n]
    one = _unit(h[0])
    L = _lanes(h)
    j = 0
    while j + L <= H:
        dhj = _vload1(dh, j) + _vload1(d_out, j)
        a_z, a_n = _back_zn_values(_vload1(g, H + j), _vload1(g, 2 * H + j),
                                   _vload1(h, j), dhj, one)
        _vstore1(dgi, H + j, a_z)
        _vstore1(dgi, 2 * H + j, a_n)
        _vstore1(dh_new, j, dhj)
        j += L
    for j in range(j, H):
        dhj = dh[j] + d_out[j]
        a_z, a_n = _back_zn_values(g[H + j], g[2 * H + j], h[j], dhj, one)
        dgi[H + j] = a_z
        dgi[2 * H + j] = a_n
        dh_new[j] = dhj


@njit(inline="always", **_JIT)
def _back_r_values(r, z, h, d_rh, dh, one):
    # reset-before step backward, r part: returns (da_r, dh' * z + d_rh * r, r * h)
    return d_rh * h * r * (one - r), dh * z + d_rh * r, r * h


@njit(inline="always", **_JIT)
def _step_back_before_r(g, h, d_rh, dh_new, dgi, hin, H):
    # g (4H,)   h (H,)   d_rh (H,) = W_hn^T da_n, gradient of r * h
    # dh_new (H,) in: dh', out: dh' * z + d_rh * r
    # written: dgi[:H] = da_r   hin (H,) = r * h
    one = _unit(h[0])
    L = _lanes(h)
    j = 0
    while j + L <= H:
        a_r, d, rh = _back_r_values(_vload1(g, j), _vload1(g, H + j),
                                    _vload1(h, j), _vload1(d_rh, j),
                                    _vload1(dh_new, j), one)
        _vstore1(dgi, j, a_r)
        _vstore1(dh_new, j, d)
        _vstore1(hin, j, rh)
        j += L
    for j in range(j, H):
        a_r, d, rh = _back_r_values(g[j], g[H + j], h[j], d_rh[j], dh_new[j],
                                    one)
        dgi[j] = a_r
        dh_new[j] = d
        hin[j] = rh


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

@njit(**_JIT)
def _project_steps(x2, w_ih_p, b_ih, lengths, T, reverse, b0, nb, s_lo, s_hi,
                   gi, row_x, row_g, zero_rows):
    # gi[s*TC + step - s_lo] = b_ih + W_ih x_t for the samples b0+s (s < nb)
    # and their valid steps s_lo <= step < s_hi, t the step's time index
    # x2 (B*T, I)   w_ih_p W_ih^T (I, 3H) packed by _pack   b_ih (3H,)
    # gi (nb*TC, 3H) written   row_x, row_g (>= nb*TC,) scratch
    # zero_rows (>= nb*TC,) zeros: every row's sums start from row 0 of
    # b_ih seen as a (1, 3H) array
    I = x2.shape[1]
    G = b_ih.shape[0]
    TC = gi.shape[0] // nb
    n_rows = 0
    for s in range(nb):
        b = b0 + s
        for step in range(s_lo, min(s_hi, lengths[b])):
            t = lengths[b] - 1 - step if reverse else step
            r = s * TC + step - s_lo
            row_x[n_rows] = b * T + t
            row_g[n_rows] = r
            n_rows += 1
    _gemm_from(x2, row_x, 0, w_ih_p, 0, I, G, gi, row_g, 0, n_rows,
               b_ih.reshape(1, G), zero_rows)


@njit(**_JIT)
def _forward_kernel_task(ib, x2, w_ih_p, w_rz_p, w_n_p, b_ih, b_hh, h0,
                         lengths, T, reverse, reset_after, out2, h_last,
                         gates2, keep_gates, gibuf, block):
    # x2 (B*T, I)   b_ih, b_hh (3H,)
    # w_ih_p, w_rz_p, w_n_p: W_ih^T (I, 3H), W_hh^T[:, :2H] (H, 2H) and
    #   W_hh^T[:, 2H:] (H, H), packed by _pack
    # h0 (B, H)   lengths (B,)   out2 (B*T, H)   h_last (B, H)
    # gates2 (B*T, 4H) when keep_gates, else unused
    # gibuf (B*TC, 3H) work space for the input projection of TC steps
    # block: samples per parallel task
    B, H = h0.shape
    I = x2.shape[1]
    G = 3 * H
    TC = gibuf.shape[0] // B
    b0 = ib * block
    nb = min(B, b0 + block) - b0
    max_len = 0
    for s in range(nb):
        max_len = max(max_len, lengths[b0 + s])
    # the input projection of steps s_lo .. s_lo+TC-1 goes to rows
    # s*TC + step - s_lo of gi
    gi = gibuf[b0 * TC:(b0 + nb) * TC]
    row_x = np.empty(nb * TC, np.int64)
    row_g = np.empty(nb * TC, np.int64)
    # zero what lies past each sample's length
    for s in range(nb):
        b = b0 + s
        for t in range(lengths[b], T):
            out2[b * T + t, :] = 0
            if keep_gates:
                gates2[b * T + t, :] = 0
    h = _aligned_empty((nb, H), x2)
    for s in range(nb):
        h[s, :] = h0[b0 + s]
    gh = _aligned_empty((nb, G), x2)
    rh = _aligned_empty((nb, H), x2)
    scratch = _aligned_empty((nb, 4 * H), x2)
    active = np.empty(nb, np.int64)
    bias_hh = b_hh.reshape(1, G)
    # row indices that all name the one row of a bias seen as (1, 3H)
    zero_rows = np.zeros(nb * TC, np.int64)
    for step in range(max_len):
        if step % TC == 0:
            _project_steps(x2, w_ih_p, b_ih, lengths, T, reverse, b0, nb,
                           step, min(step + TC, max_len), gi, row_x, row_g,
                           zero_rows)
        s_lo = step - step % TC
        na = 0
        for s in range(nb):
            if step < lengths[b0 + s]:
                active[na] = s
                na += 1
        # gh = b_hh + W_hh h (the n block after the reset when not
        # reset_after), each sum starting from the bias row
        _gemm_from(h, active, 0, w_rz_p, 0, H, 2 * H, gh, active, 0, na,
                   bias_hh, zero_rows)
        if reset_after:
            _gemm_from(h, active, 0, w_n_p, 0, H, H, gh, active, 2 * H, na,
                       bias_hh, zero_rows)
        if not reset_after:
            for a in range(na):
                s = active[a]
                b = b0 + s
                t = lengths[b] - 1 - step if reverse else step
                g = gates2[b * T + t] if keep_gates else scratch[s]
                _step_before_rz(gi[s * TC + step - s_lo], gh[s], h[s], rh[s],
                                g, H)
            _gemm_from(rh, active, 0, w_n_p, 0, H, H, gh, active, 2 * H, na,
                       bias_hh, zero_rows)
        for a in range(na):
            s = active[a]
            b = b0 + s
            t = lengths[b] - 1 - step if reverse else step
            g = gates2[b * T + t] if keep_gates else scratch[s]
            o = out2[b * T + t]
            gs = gi[s * TC + step - s_lo]
            if reset_after:
                _step_after(gs, gh[s], h[s], o, g, H)
            else:
                _step_before_n(gs, gh[s], h[s], o, g, H)
            _copy(o, h[s], H)
    for s in range(nb):
        h_last[b0 + s, :] = h[s]

@njit(parallel=True, **_JIT)
def _forward_kernel(x2, w_ih, w_hh, b_ih, b_hh, h0, lengths, T, reverse,
                    reset_after, out2, h_last, gates2, keep_gates, gibuf,
                    block, n_workers):
    # one task per sample block: worker i runs block i, then takes blocks
    # n_run, n_run + 1, ... one at a time (_take_task), as blocks of shorter
    # samples cost less; n_run workers on up to n_workers threads
    # w_ih (3H, I), w_hh (3H, H) row-contiguous, packed by every worker for
    # itself (see "Weights packed by every worker" above)
    n_blocks = (h0.shape[0] + block - 1) // block
    n_run = min(n_workers, n_blocks)
    counter = np.empty(1, np.int64)
    counter[0] = 0
    for worker in prange(n_run):
        w_ih_p, w_rz_p, w_n_p = _pack_forward(w_ih, w_hh)
        ib = np.int64(worker)
        while ib < n_blocks:
            _forward_kernel_task(ib, x2, w_ih_p, w_rz_p, w_n_p, b_ih, b_hh,
                                 h0, lengths, T, reverse, reset_after, out2,
                                 h_last, gates2, keep_gates, gibuf, block)
            ib = _take_task(counter) + n_run


@njit(**_JIT)
def _forward_kernel_serial(x2, w_ih, w_hh, b_ih, b_hh, h0, lengths, T,
                           reverse, reset_after, out2, h_last, gates2,
                           keep_gates, gibuf, block):
    # _forward_kernel without a parallel region (same results)
    w_ih_p, w_rz_p, w_n_p = _pack_forward(w_ih, w_hh)
    n_blocks = (h0.shape[0] + block - 1) // block
    for ib in range(n_blocks):
        _forward_kernel_task(ib, x2, w_ih_p, w_rz_p, w_n_p, b_ih, b_hh, h0,
                             lengths, T, reverse, reset_after, out2, h_last,
                             gates2, keep_gates, gibuf, block)


@njit(**_JIT)
def _backward_kernel_task(ib, w_ih_p, w_hh_p, h0, lengths, T, reverse,
                          reset_after, out2, gates2, d_out2, dh, dh_new, d_rh,
                          d_x2, s_lo, s_hi, dgi_c, dghn_c, hp_c, hin_c, block,
                          first):
    # Steps s_hi-1 down to s_lo of the samples of block ib; first: the
    # first chunk (the block's rows of d_x2 are zeroed here).
    # w_ih_p, w_hh_p: W_ih (3H, I) and W_hh (3H, H), packed by _pack
    # h0 (B, H)   lengths (B,)
    # out2 (B*T, H)   gates2 (B*T, 4H)   d_out2 (B*T, H)
    # dh (B, H) in: gradient of the states after step s_hi-1 (d_h_last
    #   where a sample's steps end); out: after step s_lo-1
    # dh_new, d_rh (B, H) scratch
    # d_x2 (B*T, I): rows of these steps added to (zeroed when first)
    # written, chunk row b*TC + step - s_lo (TC = dgi_c.shape[0] // B):
    #   dgi_c (B*TC, 3H) gradient of gi   dghn_c (B*TC, H) gradient of gh_n
    #   (reset_after)   hp_c (B*TC, H) previous state   hin_c (B*TC, H) r * h
    #   (reset before)
    B, H = h0.shape
    I = d_x2.shape[1]
    G = 3 * H
    TC = dgi_c.shape[0] // B
    b0 = ib * block
    nb = min(B, b0 + block) - b0
    if first:
        d_x2[b0 * T:(b0 + nb) * T] = 0
    active = np.empty(nb, np.int64)
    rows = np.empty(nb, np.int64)
    crow = np.empty(nb, np.int64)
    for step in range(s_hi - 1, s_lo - 1, -1):
        na = 0
        for s in range(nb):
            b = b0 + s
            if step < lengths[b]:
                t = lengths[b] - 1 - step if reverse else step
                active[na] = b
                rows[na] = b * T + t
                crow[na] = b * TC + step - s_lo
                na += 1
        for a in range(na):
            b = active[a]
            q = rows[a]
            c = crow[a]
            if step == 0:
                _copy(h0[b], hp_c[c], H)
            elif reverse:
                _copy(out2[q + 1], hp_c[c], H)
            else:
                _copy(out2[q - 1], hp_c[c], H)
        if reset_after:
            for a in range(na):
                b = active[a]
                q = rows[a]
                c = crow[a]
                _step_back_after(gates2[q], hp_c[c], dh[b], d_out2[q],
                                 dh_new[b], dgi_c[c], dghn_c[c], H)
            _gemm_acc(dgi_c, crow, 0, w_hh_p, 0, 2 * H, H, dh_new, active,
                      0, na)
            _gemm_acc(dghn_c, crow, 0, w_hh_p, 2 * H, H, H, dh_new, active,
                      0, na)
        else:
            for a in range(na):
                b = active[a]
                q = rows[a]
                c = crow[a]
                _step_back_before_zn(gates2[q], hp_c[c], dh[b], d_out2[q],
                                     dh_new[b], dgi_c[c], H)
                for j in range(H):
                    d_rh[b, j] = 0
            _gemm_acc(dgi_c, crow, 2 * H, w_hh_p, 2 * H, H, H, d_rh, active,
                      0, na)
            for a in range(na):
                b = active[a]
                q = rows[a]
                c = crow[a]
                _step_back_before_r(gates2[q], hp_c[c], d_rh[b], dh_new[b],
                                    dgi_c[c], hin_c[c], H)
            _gemm_acc(dgi_c, crow, 0, w_hh_p, 0, 2 * H, H, dh_new, active,
                      0, na)
        for a in range(na):
            b = active[a]
            _copy(dh_new[b], dh[b], H)
    # gradient of the inputs at these steps
    row_q = np.empty(nb * (s_hi - s_lo), np.int64)
    row_c = np.empty(nb * (s_hi - s_lo), np.int64)
    n_rows = 0
    for s in range(nb):
        b = b0 + s
        for step in range(s_lo, min(s_hi, lengths[b])):
            t = lengths[b] - 1 - step if reverse else step
            row_q[n_rows] = b * T + t
            row_c[n_rows] = b * TC + step - s_lo
            n_rows += 1
    _gemm_acc(dgi_c, row_c, 0, w_ih_p, 0, G, I, d_x2, row_q, 0, n_rows)


_TASK_ROWS = 256  # rows of a weight gradient per task (copies of the inputs
                  # made by a task are shared by more rows when larger)
_TASK_COLS = 256  # columns of a weight gradient per task
_NARROW_ROWS = 64  # rows per task of the input-weight gradient when narrow
                   # (it makes no copies): the smallest tasks, taken last,
                   # then even out the threads' ends. Measured, 2 threads,
                   # (B, T, I, H) = (64, 100, 32, 128): the gap between the
                   # two threads' ends in a region fell from 40-65 to 10-25
                   # us; in three A/B runs the backward got 1.02x to 1.04x
                   # faster, the train step 1.00x to 1.03x; no change at the
                   # other narrow shapes


@njit(**_JIT)
def _task_output(which, I, H, narrow):
    # output `which` of the weight-gradient tasks (see _weight_grad_setup):
    # its gate rows [j_lo, j_hi), its columns nk and the gate rows per task
    j_lo = 0 if which < 2 else 2 * H
    j_hi = 2 * H if which == 1 else 3 * H
    nk = I if which == 0 else H
    rows = _NARROW_ROWS if which == 0 and narrow else _TASK_ROWS
    return j_lo, j_hi, nk, rows


@njit(**_JIT)
def _weight_grad_setup(lengths, T, reverse, s_lo, s_hi, TC, I, H, narrow):
    # The rows of steps s_lo .. s_hi-1 in summation order (b ascending, then
    # step ascending): chunk rows rc (b*TC + step - s_lo) and input rows rx
    # (b*T + t); and the task table, rows (which, j0, j1, k0, k1), largest
    # first. which 0: d_w_ih, 1: d_w_hh[:2H], 2: d_w_hh[2H:]; each task owns
    # the tile [j0, j1) x [k0, k1) of that output; narrow as in
    # _weight_grad_task.
    B = lengths.shape[0]
    rc = np.empty(B * (s_hi - s_lo), np.int64)
    rx = np.empty(B * (s_hi - s_lo), np.int64)
    n_rows = 0
    for b in range(B):
        for step in range(s_lo, min(s_hi, lengths[b])):
            t = lengths[b] - 1 - step if reverse else step
            rc[n_rows] = b * TC + step - s_lo
            rx[n_rows] = b * T + t
            n_rows += 1
    n_task = 0
    for which in range(3):
        j_lo, j_hi, nk, rows = _task_output(which, I, H, narrow)
        n_task += ((j_hi - j_lo + rows - 1) // rows
                   * ((nk + _TASK_COLS - 1) // _TASK_COLS))
    tasks = np.empty((n_task, 5), np.int64)
    n_task = 0
    for which in range(3):
        j_lo, j_hi, nk, rows = _task_output(which, I, H, narrow)
        for j in range(j_lo, j_hi, rows):
            for k in range(0, nk, _TASK_COLS):
                tasks[n_task, 0] = which
                tasks[n_task, 1] = j
                tasks[n_task, 2] = min(j + rows, j_hi)
                tasks[n_task, 3] = k
                tasks[n_task, 4] = min(k + _TASK_COLS, nk)
                n_task += 1
    size = (tasks[:, 2] - tasks[:, 1]) * (tasks[:, 4] - tasks[:, 3])
    return rc, rx, n_rows, tasks[np.argsort(-size, kind="mergesort")]


@njit(**_JIT)
def _weight_grad_task(it, tasks, rc, rx, n_rows, x2, dgi_c, dghn_c, hp_c,
                      hin_c, reset_after, narrow, d_w_ih, d_w_hh, d_b_ih,
                      d_b_hh, first):
    # task it of _weight_grad_setup's table: adds the rows (rc, rx) of one
    # chunk of steps to its tile of d_w_ih (3H, I), or of its transpose
    # (I, 3H) when narrow, or of d_w_hh (3H, H), and to d_b_ih or d_b_hh
    # (3H,); arrays as in _backward_kernel_task. first: the first chunk (the
    # tile and its bias, which the task owns, are zeroed here)
    H = hp_c.shape[1]
    which = tasks[it, 0]
    j0 = tasks[it, 1]
    j1 = tasks[it, 2]
    k0 = tasks[it, 3]
    nk = tasks[it, 4] - k0
    if first:
        if which == 0 and narrow:
            d_w_ih[k0:k0 + nk, j0:j1] = 0
        elif which == 0:
            d_w_ih[j0:j1, k0:k0 + nk] = 0
        else:
            d_w_hh[j0:j1, k0:k0 + nk] = 0
        if k0 == 0:
            if which == 0:
                d_b_ih[j0:j1] = 0
            else:
                d_b_hh[j0:j1] = 0
    if which == 0 and narrow:
        # vectors along the gate axis (see _narrow_inputs)
        _outer_t(x2, rx, nk, dgi_c, rc, j0, j1 - j0, n_rows, d_w_ih, j0)
        _bias_acc(dgi_c, j0, j1 - j0, rc, 0, n_rows, d_b_ih, j0,
                  np.empty((4, _lanes(d_b_ih)), d_b_ih.dtype))
    elif which == 0:
        _outer_acc(dgi_c, j0, x2, k0, nk, rc, rx, n_rows, d_w_ih, j0, j1, k0,
                   d_b_ih)
    elif which == 1:
        _outer_acc(dgi_c, j0, hp_c, k0, nk, rc, rc, n_rows, d_w_hh, j0, j1,
                   k0, d_b_hh)
    elif reset_after:
        _outer_acc(dghn_c, j0 - 2 * H, hp_c, k0, nk, rc, rc, n_rows, d_w_hh,
                   j0, j1, k0, d_b_hh)
    else:
        _outer_acc(dgi_c, j0, hin_c, k0, nk, rc, rc, n_rows, d_w_hh, j0, j1,
                   k0, d_b_hh)


@njit(**_JIT)
def _backward_setup(w_ih, lengths, TC, d_h_last, d_w_ih, narrow):
    # Returns what the backward kernels work with: dh (a copy of d_h_last),
    # dh_new and d_rh (scratch like dh), chunks (n, 2): the (s_lo, s_hi) of
    # step_chunks(max(lengths), TC), and d_w_ih_k, where the kernels add
    # d_w_ih: an (I, 3H) array when narrow, else d_w_ih. The tasks of the
    # first chunk zero the gradients (each its own part, on its own thread).
    # Arrays as in layer_backward.
    dh = _aligned_empty(d_h_last.shape, d_h_last)
    dh[...] = d_h_last
    dh_new = _aligned_empty(dh.shape, dh)
    d_rh = _aligned_empty(dh.shape, dh)
    if narrow:
        d_w_ih_k = _aligned_empty((w_ih.shape[1], w_ih.shape[0]), w_ih)
    else:
        d_w_ih_k = d_w_ih
    max_len = lengths.max()
    chunks = np.empty(((max_len + TC - 1) // TC, 2), np.int64)
    for k in range(chunks.shape[0]):
        chunks[k, 1] = max_len - k * TC
        chunks[k, 0] = max(0, chunks[k, 1] - TC)
    return dh, dh_new, d_rh, chunks, d_w_ih_k


@njit(**_JIT)
def _backward_finish(narrow, d_w_ih_k, d_w_ih, dh, d_h0):
    # the last writes of a backward: d_w_ih from the kernels' transpose
    # when narrow, and d_h0
    if narrow:
        d_w_ih[:] = d_w_ih_k.T
    d_h0[:] = dh


@njit(parallel=True, **_JIT)
def _backward_kernel(w_ih, w_hh, h0, lengths, T, reverse, reset_after, out2,
                     gates2, d_out2, d_h_last, d_h0, x2, d_x2, dgi_c2,
                     dghn_c2, hp_c2, hin_c2, d_w_ih, d_w_hh, d_b_ih, d_b_hh,
                     narrow, block, n_workers):
    # For each chunk of steps (s_lo, s_hi) = chunks[k], in order: the
    # recurrence over the chunk (one task per sample block), then its terms
    # of the weight gradients (one task per output tile). The chunk arrays
    # dgi_c2 (S, B*TC, 3H), dghn_c2, hp_c2, hin_c2 (S, *, H) hold S = 1 or 2
    # chunks, chunk k in [k % S]. With S = 2, one parallel region runs the
    # recurrence of chunk k together with the weight gradients of chunk
    # k - 1; with S = 1, each has its own region. In a region, worker i
    # runs sample block i, then takes further blocks, then weight-gradient
    # tasks (largest first), one at a time (_take_task, one counter each).
    # Each weight-gradient tile adds its chunks in order, as in
    # _backward_kernel_serial (same bits). The chunks and work arrays come
    # from _backward_setup; other arrays as in layer_backward,
    # _backward_kernel_task and _weight_grad_task. n_workers: the threads of
    # the region. Worker i packs its own copy of the weights, w_ih_ps[i] and
    # w_hh_ps[i], in the first region (see "Weights packed by every worker"
    # above); that region has n_packs workers, and only workers whose index
    # is below the number of blocks ever run a block.
    B, H = h0.shape
    n_blocks = (B + block - 1) // block
    n_sets = dgi_c2.shape[0]
    TC = dgi_c2.shape[1] // B
    I = x2.shape[1]
    dh, dh_new, d_rh, chunks, d_w_ih_k = _backward_setup(
        w_ih, lengths, TC, d_h_last, d_w_ih, narrow)
    n_packs = min(n_workers, n_blocks)
    w_ih_ps = _aligned_empty(
        (n_packs,) + _packed_shape(w_ih, _panel_width(w_ih)), w_ih)
    w_hh_ps = _aligned_empty(
        (n_packs,) + _packed_shape(w_hh, _panel_width(w_hh)), w_hh)
    n_chunks = chunks.shape[0]
    next_block = np.empty(1, np.int64)
    next_tile = np.empty(1, np.int64)
    for k in range(n_chunks + 1):
        n_rec = n_blocks if k < n_chunks else 0
        s_lo = chunks[min(k, n_chunks - 1), 0]
        s_hi = chunks[min(k, n_chunks - 1), 1]
        # the weight-gradient tasks of chunk k - 1 (none for k = 0)
        w_lo = chunks[max(k - 1, 0), 0]
        w_hi = chunks[max(k - 1, 0), 1]
        rc, rx, n_rows, tasks = _weight_grad_setup(lengths, T, reverse, w_lo,
                                                   w_hi, TC, I, H, narrow)
        n_tasks = tasks.shape[0] if k > 0 else 0
        now = k % n_sets
        before = (k + n_sets - 1) % n_sets
        # the n_rb sample blocks of chunk k and the n_wg weight-gradient
        # tasks of chunk k - 1: one region, or two in turn when S = 1
        for phase in range(3 - n_sets):
            n_wg = 0 if n_sets == 1 and phase == 1 else n_tasks
            n_rb = 0 if n_sets == 1 and phase == 0 else n_rec
            n_run = min(n_workers, n_wg + n_rb)
            if n_run == 0:
                continue
            next_block[0] = 0
            next_tile[0] = 0
            for worker in prange(n_run):
                if k == 0 and worker < n_packs:
                    _pack_into(w_ih, w_ih_ps[worker])
                    _pack_into(w_hh, w_hh_ps[worker])
                it = np.int64(worker)
                while it < n_rb:
                    _backward_kernel_task(it, w_ih_ps[worker],
                                          w_hh_ps[worker], h0, lengths, T,
                                          reverse, reset_after, out2, gates2,
                                          d_out2, dh, dh_new, d_rh, d_x2,
                                          s_lo, s_hi, dgi_c2[now],
                                          dghn_c2[now], hp_c2[now],
                                          hin_c2[now], block, k == 0)
                    it = _take_task(next_block) + n_run
                it = _take_task(next_tile)
                while it < n_wg:
                    _weight_grad_task(it, tasks, rc, rx, n_rows, x2,
                                      dgi_c2[before], dghn_c2[before],
                                      hp_c2[before], hin_c2[before],
                                      reset_after, narrow, d_w_ih_k, d_w_hh,
                                      d_b_ih, d_b_hh, k == 1)
                    it = _take_task(next_tile)
    _backward_finish(narrow, d_w_ih_k, d_w_ih, dh, d_h0)


@njit(**_JIT)
def _backward_kernel_serial(w_ih, w_hh, h0, lengths, T, reverse, reset_after,
                            out2, gates2, d_out2, d_h_last, d_h0, x2, d_x2,
                            dgi_c2, dghn_c2, hp_c2, hin_c2, d_w_ih, d_w_hh,
                            d_b_ih, d_b_hh, narrow, block):
    # _backward_kernel without a parallel region (same results), each chunk
    # in the first of the double chunk arrays
    dgi_c = dgi_c2[0]
    dghn_c = dghn_c2[0]
    hp_c = hp_c2[0]
    hin_c = hin_c2[0]
    B, H = h0.shape
    n_blocks = (B + block - 1) // block
    TC = dgi_c.shape[0] // B
    w_ih_p = _pack(w_ih, _panel_width(w_ih))
    w_hh_p = _pack(w_hh, _panel_width(w_hh))
    dh, dh_new, d_rh, chunks, d_w_ih_k = _backward_setup(
        w_ih, lengths, TC, d_h_last, d_w_ih, narrow)
    for k in range(chunks.shape[0]):
        s_lo = chunks[k, 0]
        s_hi = chunks[k, 1]
        for ib in range(n_blocks):
            _backward_kernel_task(ib, w_ih_p, w_hh_p, h0, lengths, T, reverse,
                                  reset_after, out2, gates2, d_out2, dh,
                                  dh_new, d_rh, d_x2, s_lo, s_hi, dgi_c,
                                  dghn_c, hp_c, hin_c, block, k == 0)
        rc, rx, n_rows, tasks = _weight_grad_setup(
            lengths, T, reverse, s_lo, s_hi, TC, x2.shape[1], H, narrow)
        for it in range(tasks.shape[0]):
            _weight_grad_task(it, tasks, rc, rx, n_rows, x2, dgi_c, dghn_c,
                              hp_c, hin_c, reset_after, narrow, d_w_ih_k,
                              d_w_hh, d_b_ih, d_b_hh, k == 0)
    _backward_finish(narrow, d_w_ih_k, d_w_ih, dh, d_h0)


# ---------------------------------------------------------------------------
# Input check
# ---------------------------------------------------------------------------

@njit(fastmath={"reassoc"}, **_JIT)
def all_finite(values):
    # values (n,) float: whether no value is NaN or infinite
    # v * 0 is 0 for a finite v and NaN otherwise, so the sum of the
    # products is 0 exactly when every value is finite; reassoc lets the
    # sum run on SIMD vectors in any order (it never changes which case
    # it is), and nothing else is relaxed: v * 0 is not folded to 0
    if values.shape[0] == 0:
        return True
    total = values[0] * 0
    for i in range(1, values.shape[0]):
        total += values[i] * 0
    return total == 0


# ---------------------------------------------------------------------------
# Optimizer step
# ---------------------------------------------------------------------------

@njit(**_JIT)
def adam_step(grad, m, v, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2,
              minus_rate, epsilon):
    # grad, m, v (n,) float, one dtype; the scalars of that dtype.
    # m and v updated in place; grad overwritten with the update:
    #   m = m * beta_1 + one_minus_beta_1 * grad
    #   v = v * beta_2 + (grad * grad) * one_minus_beta_2
    #   grad = (minus_rate * m) / (sqrt(v) + epsilon)
    # each operation rounded on its own, in this order (numpy's order in
    # numgru._optim.AdamOptimizer, hence the same bits), in one pass
    for i in range(grad.shape[0]):
        g = grad[i]
        mi = m[i] * beta_1
        mi = mi + one_minus_beta_1 * g
        vi = v[i] * beta_2
        vi = vi + (g * g) * one_minus_beta_2
        m[i] = mi
        v[i] = vi
        grad[i] = (minus_rate * mi) / (np.sqrt(vi) + epsilon)


# ---------------------------------------------------------------------------
# One step for streaming (cell_forward, step_forward)
# ---------------------------------------------------------------------------
#
# A step reads the row-major weights as they are, row by row: every gate
# pre-activation is a dot product over one weight row, computed in the L
# lanes of a 64-byte vector (L = 16 for float32, 8 for float64). Lane l
# accumulates the terms k = l, l + L, l + 2L, ... in ascending order with
# one fused multiply-add each (terms past the end of a row are zeros); the
# lanes are then summed in a fixed tree: lane l with lane l + L/2, then with
# l + L/4, ... down to l + 1. The intrinsics below spell this order out
# instead of leaving it to the compiler, so a sample's result depends only on
# its own inputs, never on the batch, the thread count or the code the
# kernel is compiled into. The Cython backend's step uses the same order.


def _step_lanes(dtype):
    """The lanes of a step dot product: a vector of 64 bytes of ``dtype``."""
    return _Vector(dtype, 64 // (dtype.bitwidth // 8))


def _is_step_matrix(a):
    # a C-contiguous 2-D float array
    return (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
            and isinstance(a.dtype, types.Float))


@intrinsic
def _lanes_count(typingctx, a):
    """Lanes per step vector for the dtype of the array ``a`` (a constant)."""
    if not _is_step_matrix(a):
        return None
    count = _step_lanes(a.dtype).count

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, count)
    return types.intp(a), codegen


@intrinsic
def _lanes_zero(typingctx, a):
    """Lanes of zeros, of the dtype of the array ``a``."""
    if not _is_step_matrix(a):
        return None
    lanes = _step_lanes(a.dtype)

    def codegen(context, builder, signature, args):
        return ll_ir.Constant(context.get_value_type(lanes), None)
    return lanes(a), codegen


@intrinsic
def _lanes_load(typingctx, a, i, j):
    """a[i, j:j + L], all within the row."""
    if not (_is_step_matrix(a) and isinstance(i, types.Integer)
            and isinstance(j, types.Integer)):
        return None
    lanes = _step_lanes(a.dtype)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, a, args[0],
                            [(args[1], i), (args[2], j)])
        vecty = context.get_value_type(lanes)
        return builder.load(builder.bitcast(ptr, vecty.as_pointer()),
                            align=a.dtype.bitwidth // 8)
    return lanes(a, i, j), codegen


@intrinsic
def _lanes_load_tail(typingctx, a, i, j, n):
    """a[i, j:n] followed by zeros, for j < n < j + L (the end of a row): one
    masked load, which reads nothing past column n - 1."""
    if not (_is_step_matrix(a) and all(isinstance(t, types.Integer)
                                       for t in (i, j, n))):
        return None
    lanes = _step_lanes(a.dtype)

    def codegen(context, builder, signature, args):
        vecty = context.get_value_type(lanes)
        intp = context.get_value_type(types.intp)
        start = context.cast(builder, args[2], j, types.intp)
        stop = context.cast(builder, args[3], n, types.intp)
        ptr = builder.bitcast(
            _item_pointer(context, builder, a, args[0],
                          [(args[1], i), (start, types.intp)]),
            vecty.as_pointer())
        # lane l is read when l < n - j
        count = builder.sub(stop, start)
        splat = builder.insert_element(
            ll_ir.Constant(ll_ir.VectorType(intp, lanes.count), None), count,
            ll_ir.Constant(ll_ir.IntType(32), 0))
        splat = builder.shuffle_vector(
            splat, splat,
            ll_ir.Constant(ll_ir.VectorType(ll_ir.IntType(32), lanes.count),
                           [0] * lanes.count))
        index = ll_ir.Constant(ll_ir.VectorType(intp, lanes.count),
                               list(range(lanes.count)))
        mask = builder.icmp_signed("<", index, splat)
        i32 = ll_ir.IntType(32)
        load = cgutils.get_or_insert_function(
            builder.module,
            ll_ir.FunctionType(vecty, [vecty.as_pointer(), i32, mask.type,
                                       vecty]),
            f"llvm.masked.load.v{lanes.count}f{a.dtype.bitwidth}.p0")
        return builder.call(load, [
            ptr, ll_ir.Constant(i32, a.dtype.bitwidth // 8), mask,
            ll_ir.Constant(vecty, None)])
    return lanes(a, i, j, n), codegen


def _tree_sums(builder, vectors, count):
    # the tree sums of equally long LLVM vectors (a power of two of them),
    # in order. Each vector is a list of segments, one per row; a stage adds
    # the upper half of every segment to its lower half, packing the
    # segments of two vectors into one while there are several vectors.
    i32 = ll_ir.IntType(32)

    def shuffle(x, y, lanes):
        return builder.shuffle_vector(
            x, y, ll_ir.Constant(ll_ir.VectorType(i32, len(lanes)), lanes))

    state = list(vectors)
    segments, width = 1, count
    while width > 1:
        half = width // 2
        pairs = len(state) > 1
        groups = ([(state[k], state[k + 1]) for k in range(0, len(state), 2)]
                  if pairs else [(state[0], state[0])])
        state = []
        for x, y in groups:
            low, high = [], []
            for offset in ((0, segments * width) if pairs else (0,)):
                for s in range(segments):
                    first = offset + s * width
                    low += range(first, first + half)
                    high += range(first + half, first + width)
            state.append(builder.fadd(shuffle(x, y, low), shuffle(x, y, high)))
        if pairs:
            segments *= 2
        width = half
    return [builder.extract_element(v, ll_ir.Constant(i32, k))
            for v in state for k in range(segments)]


@intrinsic
def _lanes_sums(typingctx, vectors):
    """The tree sums of a tuple of lane vectors (a power of two of them), as a
    tuple of the same length."""
    if not (isinstance(vectors, types.UniTuple)
            and isinstance(vectors.dtype, _Vector)
            and vectors.count & (vectors.count - 1) == 0):
        return None
    count = vectors.count
    tuple_type = types.UniTuple(vectors.dtype.dtype, count)

    def codegen(context, builder, signature, args):
        items = [builder.extract_value(args[0], i) for i in range(count)]
        sums = _tree_sums(builder, items, vectors.dtype.count)
        return context.make_tuple(builder, tuple_type, sums)
    return tuple_type(vectors), codegen


@njit(inline="always", **_JIT)
def _step_acc4(w, r0, r1, r2, r3, a, s, c0, c1, c2, c3):
    # c_q plus the terms of dot(w[r_q], a[s]) for q < 4, in the step's lane
    # order: w (rows, K), a (samples, K), K a whole number of lane vectors,
    # c_q lane vectors
    lanes = _lanes_count(w)
    for k in range(0, w.shape[1], lanes):
        v = _lanes_load(a, s, k)
        c0 = _fma(_lanes_load(w, r0, k), v, c0)
        c1 = _fma(_lanes_load(w, r1, k), v, c1)
        c2 = _fma(_lanes_load(w, r2, k), v, c2)
        c3 = _fma(_lanes_load(w, r3, k), v, c3)
    return c0, c1, c2, c3


@njit(inline="always", **_JIT)
def _step_acc8(w, r0, a, s, c0, c1, c2, c3, c4, c5, c6, c7):
    # _step_acc4 for the eight rows r0 .. r0 + 7
    lanes = _lanes_count(w)
    for k in range(0, w.shape[1], lanes):
        v = _lanes_load(a, s, k)
        c0 = _fma(_lanes_load(w, r0, k), v, c0)
        c1 = _fma(_lanes_load(w, r0 + 1, k), v, c1)
        c2 = _fma(_lanes_load(w, r0 + 2, k), v, c2)
        c3 = _fma(_lanes_load(w, r0 + 3, k), v, c3)
        c4 = _fma(_lanes_load(w, r0 + 4, k), v, c4)
        c5 = _fma(_lanes_load(w, r0 + 5, k), v, c5)
        c6 = _fma(_lanes_load(w, r0 + 6, k), v, c6)
        c7 = _fma(_lanes_load(w, r0 + 7, k), v, c7)
    return c0, c1, c2, c3, c4, c5, c6, c7


@njit(**_JIT)
def _step_whole(out, o, w, r, nr, a, s, w2, a2, s2, with2, eights):
    # _step_dots for rows of whole lane vectors (w.shape[1] and, when with2,
    # w2.shape[1] multiples of the lane count): groups of four rows, after
    # groups of eight when eights. A last group of fewer rows repeats row
    # r + nr - 1; whole groups index their rows without that clamp.
    i = 0
    if eights:
        while i + 8 <= nr:
            r0 = r + i
            c0 = _lanes_zero(w)
            c0, c1, c2, c3, c4, c5, c6, c7 = _step_acc8(
                w, r0, a, s, c0, c0, c0, c0, c0, c0, c0, c0)
            if with2:
                c0, c1, c2, c3, c4, c5, c6, c7 = _step_acc8(
                    w2, r0, a2, s2, c0, c1, c2, c3, c4, c5, c6, c7)
            t = _lanes_sums((c0, c1, c2, c3, c4, c5, c6, c7))
            for q in range(8):
                out[o + i + q] = t[q]
            i += 8
    while i + 4 <= nr:
        r0 = r + i
        c0 = _lanes_zero(w)
        c0, c1, c2, c3 = _step_acc4(w, r0, r0 + 1, r0 + 2, r0 + 3, a, s,
                                    c0, c0, c0, c0)
        if with2:
            c0, c1, c2, c3 = _step_acc4(w2, r0, r0 + 1, r0 + 2, r0 + 3, a2,
                                        s2, c0, c1, c2, c3)
        t = _lanes_sums((c0, c1, c2, c3))
        out[o + i] = t[0]
        out[o + i + 1] = t[1]
        out[o + i + 2] = t[2]
        out[o + i + 3] = t[3]
        i += 4
    if i < nr:
        r0 = r + i
        last = r + nr - 1
        r1 = min(r0 + 1, last)
        r2 = min(r0 + 2, last)
        c0 = _lanes_zero(w)
        c0, c1, c2, c3 = _step_acc4(w, r0, r1, r2, last, a, s,
                                    c0, c0, c0, c0)
        if with2:
            c0, c1, c2, c3 = _step_acc4(w2, r0, r1, r2, last, a2, s2,
                                        c0, c1, c2, c3)
        t = _lanes_sums((c0, c1, c2, c3))
        for q in range(nr - i):
            out[o + i + q] = t[q]


@njit(**_JIT)
def _step_partial(out, o, w, r, nr, a, s, w2, a2, s2, with2):
    # _step_dots for any row length: eight rows at a time (the last group
    # repeats row r + nr - 1 where rows run out), the last partial lane
    # vector of a row read with a masked load. The eight accumulators are
    # written out one by one: the same loop over a tuple of them, or over
    # the two operand pairs, compiled to slower code.
    lanes = _lanes_count(w)
    n = w.shape[1]
    n2 = w2.shape[1]
    full = n - n % lanes
    full2 = n2 - n2 % lanes
    last = r + nr - 1
    for i in range(0, nr, 8):
        r0 = r + i
        r1 = min(r0 + 1, last)
        r2 = min(r0 + 2, last)
        r3 = min(r0 + 3, last)
        r4 = min(r0 + 4, last)
        r5 = min(r0 + 5, last)
        r6 = min(r0 + 6, last)
        r7 = min(r0 + 7, last)
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = _lanes_zero(w)
        for k in range(0, full, lanes):
            v = _lanes_load(a, s, k)
            c0 = _fma(_lanes_load(w, r0, k), v, c0)
            c1 = _fma(_lanes_load(w, r1, k), v, c1)
            c2 = _fma(_lanes_load(w, r2, k), v, c2)
            c3 = _fma(_lanes_load(w, r3, k), v, c3)
            c4 = _fma(_lanes_load(w, r4, k), v, c4)
            c5 = _fma(_lanes_load(w, r5, k), v, c5)
            c6 = _fma(_lanes_load(w, r6, k), v, c6)
            c7 = _fma(_lanes_load(w, r7, k), v, c7)
        if full < n:
            v = _lanes_load_tail(a, s, full, n)
            c0 = _fma(_lanes_load_tail(w, r0, full, n), v, c0)
            c1 = _fma(_lanes_load_tail(w, r1, full, n), v, c1)
            c2 = _fma(_lanes_load_tail(w, r2, full, n), v, c2)
            c3 = _fma(_lanes_load_tail(w, r3, full, n), v, c3)
            c4 = _fma(_lanes_load_tail(w, r4, full, n), v, c4)
            c5 = _fma(_lanes_load_tail(w, r5, full, n), v, c5)
            c6 = _fma(_lanes_load_tail(w, r6, full, n), v, c6)
            c7 = _fma(_lanes_load_tail(w, r7, full, n), v, c7)
        if with2:
            for k in range(0, full2, lanes):
                v = _lanes_load(a2, s2, k)
                c0 = _fma(_lanes_load(w2, r0, k), v, c0)
                c1 = _fma(_lanes_load(w2, r1, k), v, c1)
                c2 = _fma(_lanes_load(w2, r2, k), v, c2)
                c3 = _fma(_lanes_load(w2, r3, k), v, c3)
                c4 = _fma(_lanes_load(w2, r4, k), v, c4)
                c5 = _fma(_lanes_load(w2, r5, k), v, c5)
                c6 = _fma(_lanes_load(w2, r6, k), v, c6)
                c7 = _fma(_lanes_load(w2, r7, k), v, c7)
            if full2 < n2:
                v = _lanes_load_tail(a2, s2, full2, n2)
                c0 = _fma(_lanes_load_tail(w2, r0, full2, n2), v, c0)
                c1 = _fma(_lanes_load_tail(w2, r1, full2, n2), v, c1)
                c2 = _fma(_lanes_load_tail(w2, r2, full2, n2), v, c2)
                c3 = _fma(_lanes_load_tail(w2, r3, full2, n2), v, c3)
                c4 = _fma(_lanes_load_tail(w2, r4, full2, n2), v, c4)
                c5 = _fma(_lanes_load_tail(w2, r5, full2, n2), v, c5)
                c6 = _fma(_lanes_load_tail(w2, r6, full2, n2), v, c6)
                c7 = _fma(_lanes_load_tail(w2, r7, full2, n2), v, c7)
        t = _lanes_sums((c0, c1, c2, c3, c4, c5, c6, c7))
        for q in range(8):
            if i + q < nr:
                out[o + i + q] = t[q]


@njit(**_JIT)
def _step_dots(out, o, w, r, nr, a, s, w2, a2, s2, with2):
    # out[o + i] = dot(w[r + i], a[s]) for i < nr, plus dot(w2[r + i], a2[s2])
    # in the same lanes when with2; w (rows, K) a (samples, K),
    # w2 (rows, K2) a2 (samples, K2), out (>= o + nr,). Rows go in groups:
    # one load of a serves every row of the group, and the rows' sums share
    # the shuffles of one tree. Rows of whole lane vectors go to code
    # without the masked loads of a partial last vector, in groups of four
    # rows with AVX2 (a lane vector is two registers there, and eight rows'
    # sixteen accumulators spilled) and of eight with AVX-512 (one register;
    # eight rows were 1.2x faster than four on an AVX-512 Xeon). Measured
    # on a Zen 3 (AVX2), B=1, I, H = 32, 128, in-process A/B against
    # _step_partial for every row length (medians of 15 interleaved rounds):
    # one sample's dot products and gates 1.20x to 1.64x faster in four
    # processes, step_forward 1.03x to 1.41x (median 1.14x) in five. The
    # masked loads kept in the same loops, inline or in a call behind a
    # branch never taken, lost the gain (1.04x and 0.87x).
    lanes = _lanes_count(w)
    if w.shape[1] % lanes != 0 or (with2 and w2.shape[1] % lanes != 0):
        _step_partial(out, o, w, r, nr, a, s, w2, a2, s2, with2)
    else:
        _step_whole(out, o, w, r, nr, a, s, w2, a2, s2, with2, _WIDE_TILES)


@njit(inline="always", **_JIT)
def _step_acc_samples4(w, r, a, s0, c0, c1, c2, c3):
    # c_q plus the terms of dot(w[r], a[s0 + q]) for q < 4 over the whole
    # lane vectors of the rows, in the step's lane order: w (rows, K),
    # a (samples, K); one load of the weights serves the four samples
    lanes = _lanes_count(w)
    for k in range(0, w.shape[1] - w.shape[1] % lanes, lanes):
        v = _lanes_load(w, r, k)
        c0 = _fma(v, _lanes_load(a, s0, k), c0)
        c1 = _fma(v, _lanes_load(a, s0 + 1, k), c1)
        c2 = _fma(v, _lanes_load(a, s0 + 2, k), c2)
        c3 = _fma(v, _lanes_load(a, s0 + 3, k), c3)
    return c0, c1, c2, c3


@njit(inline="always", **_JIT)
def _step_tails4(w, a, s0):
    # the last, partial lane vectors of the rows a[s0 + q], q < 4, followed
    # by zeros (masked loads: nothing is read past the rows); zeros when the
    # rows of w (rows, K) and a (samples, K) are whole lane vectors
    lanes = _lanes_count(w)
    n = w.shape[1]
    full = n - n % lanes
    t0 = t1 = t2 = t3 = _lanes_zero(w)
    if full < n:
        t0 = _lanes_load_tail(a, s0, full, n)
        t1 = _lanes_load_tail(a, s0 + 1, full, n)
        t2 = _lanes_load_tail(a, s0 + 2, full, n)
        t3 = _lanes_load_tail(a, s0 + 3, full, n)
    return t0, t1, t2, t3


@njit(inline="always", **_JIT)
def _step_tail_acc4(w, r, t0, t1, t2, t3, c0, c1, c2, c3):
    # c_q plus the terms of the last, partial lane vector of w[r] times t_q
    # (from _step_tails4), as _step_partial adds them
    n = w.shape[1]
    v = _lanes_load_tail(w, r, n - n % _lanes_count(w), n)
    return (_fma(v, t0, c0), _fma(v, t1, c1),
            _fma(v, t2, c2), _fma(v, t3, c3))


@njit(inline="always", **_JIT)
def _step_store4(out, j, c0, c1, c2, c3):
    # out[q, j] = the tree sum of c_q, q < 4
    t = _lanes_sums((c0, c1, c2, c3))
    out[0, j] = t[0]
    out[1, j] = t[1]
    out[2, j] = t[2]
    out[3, j] = t[3]


@njit(**_JIT)
def _step_dots_samples4(out, o, w, r, nr, a, s0, w2, a2, s02, with2):
    # _step_dots for the four samples s0 .. s0 + 3 of a (and s02 .. of a2)
    # at once: out[q, o + i] for q < 4, out (4, >= o + nr). Rows that end in
    # a partial lane vector add it last, as _step_partial does; the four
    # samples' partial vectors are loaded once, before the rows (loading
    # them at every row made the step 0.8x as fast as one sample at a time
    # at B, I, H = 8, 8, 32). Rows of whole lane vectors run in a loop of
    # their own, untouched by the partial ones: sharing the general loop,
    # they ran 0.97x to 0.99x as fast in seven side-by-side runs.
    lanes = _lanes_count(w)
    tail = w.shape[1] % lanes != 0
    tail2 = with2 and w2.shape[1] % lanes != 0
    if not (tail or tail2):
        for i in range(nr):
            c0 = _lanes_zero(w)
            c0, c1, c2, c3 = _step_acc_samples4(w, r + i, a, s0,
                                                c0, c0, c0, c0)
            if with2:
                c0, c1, c2, c3 = _step_acc_samples4(w2, r + i, a2, s02,
                                                    c0, c1, c2, c3)
            _step_store4(out, o + i, c0, c1, c2, c3)
        return
    t0, t1, t2, t3 = _step_tails4(w, a, s0)
    u0, u1, u2, u3 = t0, t1, t2, t3
    if tail2:
        u0, u1, u2, u3 = _step_tails4(w2, a2, s02)
    for i in range(nr):
        c0 = _lanes_zero(w)
        c0, c1, c2, c3 = _step_acc_samples4(w, r + i, a, s0, c0, c0, c0, c0)
        if tail:
            c0, c1, c2, c3 = _step_tail_acc4(w, r + i, t0, t1, t2, t3,
                                             c0, c1, c2, c3)
        if with2:
            c0, c1, c2, c3 = _step_acc_samples4(w2, r + i, a2, s02,
                                                c0, c1, c2, c3)
            if tail2:
                c0, c1, c2, c3 = _step_tail_acc4(w2, r + i, u0, u1, u2, u3,
                                                 c0, c1, c2, c3)
        _step_store4(out, o + i, c0, c1, c2, c3)


@njit(inline="always", **_JIT)
def _step_rz_gates(p, b_ih, b_hh, H):
    # p (3H,): the r and z pre-activations (without biases) become the gates
    for j in range(2 * H):
        p[j] = _sigmoid(p[j] + (b_ih[j] + b_hh[j]))


@njit(inline="always", **_JIT)
def _step_new_state(p, hn, b_ih, b_hh, h, b, h_new, reset_after, H):
    # p (3H,) [r, z, W_in x]   hn (H,) W_hn h (reset_after) or W_hn (r * h)
    # on entry, the candidate on exit   h, h_new (B, H): row b of h_new
    one = _unit(p[0])
    if reset_after:
        for j in range(H):
            hn[j] = _tanh((p[2 * H + j] + b_ih[2 * H + j])
                          + p[j] * (hn[j] + b_hh[2 * H + j]))
    else:
        for j in range(H):
            hn[j] = _tanh((p[2 * H + j] + b_ih[2 * H + j])
                          + (hn[j] + b_hh[2 * H + j]))
    for j in range(H):
        z = p[H + j]
        h_new[b, j] = (one - z) * hn[j] + z * h[b, j]


@njit(**_JIT)
def _step_sample(x, w_ih, w_hh, b_ih, b_hh, h, b, reset_after, h_new, p, q):
    # sample b of one layer: x (B, I), w_ih (3H, I), w_hh (3H, H),
    # b_ih, b_hh (3H,), h (B, H), h_new (B, H) row b written;
    # p (3H,) and q (2, H) scratch. Each elementwise loop writes one array.
    H = h.shape[1]
    hn = q[0]
    # r and z: the input and the recurrent terms in the same lanes
    _step_dots(p, 0, w_ih, 0, 2 * H, x, b, w_hh, h, b, True)
    _step_dots(p, 2 * H, w_ih, 2 * H, H, x, b, w_hh, h, b, False)
    _step_rz_gates(p, b_ih, b_hh, H)
    if reset_after:
        _step_dots(hn, 0, w_hh, 2 * H, H, h, b, w_hh, h, b, False)
    else:
        rh = q[1]
        for j in range(H):
            rh[j] = p[j] * h[b, j]
        _step_dots(hn, 0, w_hh, 2 * H, H, q, 1, w_hh, q, 1, False)
    _step_new_state(p, hn, b_ih, b_hh, h, b, h_new, reset_after, H)


@njit(**_JIT)
def _step_samples4(x, w_ih, w_hh, b_ih, b_hh, h, b, reset_after, h_new, p,
                   q):
    # _step_sample for the four samples b .. b + 3: p (4, 3H) and
    # q (2, 4, H) scratch
    H = h.shape[1]
    hn = q[0]
    _step_dots_samples4(p, 0, w_ih, 0, 2 * H, x, b, w_hh, h, b, True)
    _step_dots_samples4(p, 2 * H, w_ih, 2 * H, H, x, b, w_hh, h, b, False)
    for s in range(4):
        _step_rz_gates(p[s], b_ih, b_hh, H)
    if reset_after:
        _step_dots_samples4(hn, 0, w_hh, 2 * H, H, h, b, w_hh, h, b, False)
    else:
        rh = q[1]
        for s in range(4):
            for j in range(H):
                rh[s, j] = p[s, j] * h[b + s, j]
        _step_dots_samples4(hn, 0, w_hh, 2 * H, H, rh, 0, w_hh, rh, 0,
                            False)
    for s in range(4):
        _step_new_state(p[s], hn[s], b_ih, b_hh, h, b + s, h_new,
                        reset_after, H)


@njit(**_JIT)
def _step_samples(x, w_ih, w_hh, b_ih, b_hh, h, layer, reset_after, h_new,
                  b0, b1):
    # samples b0 .. b1-1 of one layer: x (B, I), h and h_new (L, B, H), the
    # layer's rows h[layer] read and h_new[layer] written. Four samples at a
    # time share each weight load.
    H = h.shape[2]
    work = np.empty((5, H), h_new.dtype)
    p = work[:3].reshape(3 * H)
    q = work[3:]
    h_in = h[layer]
    h_out = h_new[layer]
    b = b0
    if b1 - b0 >= 4:
        p4 = np.empty((4, 3 * H), h_new.dtype)
        q4 = np.empty((2, 4, H), h_new.dtype)
        while b + 4 <= b1:
            _step_samples4(x, w_ih, w_hh, b_ih, b_hh, h_in, b, reset_after,
                           h_out, p4, q4)
            b += 4
    while b < b1:
        _step_sample(x, w_ih, w_hh, b_ih, b_hh, h_in, b, reset_after, h_out,
                     p, q)
        b += 1


@njit(**_JIT)
def _all_finite(a):
    # whether no value of the 2-D array a is NaN or infinite; the step's
    # check of its few hundred values, kept apart from all_finite: calling
    # all_finite on the raveled arrays made a B=1 GRU.step 0.05 to 0.2 us
    # slower (in 4 of 5 side-by-side runs)
    finite = True
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            finite &= a[i, j] - a[i, j] == 0
    return finite


@njit(**_JIT)
def _layer_fits(x, w_ih, w_hh, b_ih, b_hh, h, layer, h_new, check):
    # whether the shapes fit together (x (B, I), w_ih (3H, I), w_hh (3H, H),
    # b_ih, b_hh (3H,), h and h_new (L, B, H), 0 <= layer < L) and, for
    # check >= 1, h[layer] is finite, for check >= 2, x too
    L, B, H = h.shape
    I = x.shape[1]
    if (B < 1 or H < 1 or I < 1 or layer < 0 or layer >= L
            or x.shape[0] != B or h_new.shape != h.shape
            or w_ih.shape[0] != 3 * H or w_ih.shape[1] != I
            or w_hh.shape[0] != 3 * H or w_hh.shape[1] != H
            or b_ih.shape[0] != 3 * H or b_hh.shape[0] != 3 * H):
        return False
    return ((check < 1 or _all_finite(h[layer]))
            and (check < 2 or _all_finite(x)))


@intrinsic
def _pointer_like(typingctx, address, array):
    """The integer ``address`` as a pointer to the dtype of ``array``."""
    if not (isinstance(address, types.Integer)
            and isinstance(array, types.Array)):
        return None
    pointer = types.CPointer(array.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))
    return pointer(address, array), codegen


def _step_types_fit(x, h, h_new):
    # whether Numba types suit the step kernels: C-contiguous float arrays
    # of one dtype, x 2-D, h and h_new 3-D, h_new writable
    arrays = (x, h, h_new)
    return (all(isinstance(a, types.Array) and a.layout == "C"
                and a.dtype == h_new.dtype for a in arrays)
            and isinstance(h_new.dtype, types.Float)
            and [a.ndim for a in arrays] == [2, 3, 3] and h_new.mutable)


def _step_at_typed(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at, b_hh_at,
                   I, H, reset_after, check, run):
    """Compiled as _step_at_typed_impl chooses for the argument types."""


@overload(_step_at_typed, jit_options=dict(_JIT))
def _step_at_typed_impl(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at,
                        b_hh_at, I, H, reset_after, check, run):
    if not _step_types_fit(x, h, h_new):
        return (lambda x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at, b_hh_at,
                I, H, reset_after, check, run: False)

    def impl(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at, b_hh_at, I, H,
             reset_after, check, run):
        w_ih = numba.carray(_pointer_like(w_ih_at, h_new), (3 * H, I))
        w_hh = numba.carray(_pointer_like(w_hh_at, h_new), (3 * H, H))
        b_ih = numba.carray(_pointer_like(b_ih_at, h_new), 3 * H)
        b_hh = numba.carray(_pointer_like(b_hh_at, h_new), 3 * H)
        if not _layer_fits(x, w_ih, w_hh, b_ih, b_hh, h, layer, h_new, check):
            return False
        if run:
            _step_samples(x, w_ih, w_hh, b_ih, b_hh, h, layer, reset_after,
                          h_new, 0, x.shape[0])
        return True
    return impl


@njit(**_JIT)
def _step_at(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at, b_hh_at, I, H,
             reset_after, check, run):
    # layer `layer` of a step on the calling thread (when run), after
    # checking the arrays; the layer's weights are C-contiguous arrays of the
    # dtype of h_new at the given addresses: w_ih (3H, I), w_hh (3H, H),
    # b_ih, b_hh (3H,). x (B, I), h and h_new (L, B, H). False (nothing
    # written) when the types or shapes do not fit or a checked array is not
    # finite (see _layer_fits).
    return _step_at_typed(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at,
                          b_hh_at, I, H, reset_after, check, run)


@njit(**_JIT)
def _step_first(x, h, h_new, first, reset_after):
    # _step_at(x, h, 0, h_new, *first, reset_after, 2, True): the first
    # layer's weight arguments in one int64 array, which Numba's dispatcher
    # unboxes in less time than six separate integers (measured: 0.25 us
    # against 0.44 us for the call of an empty function)
    return _step_at_typed(x, h, 0, h_new, first[0], first[1], first[2],
                          first[3], first[4], first[5], reset_after, 2, True)


@njit(parallel=True, **_JIT)
def _step_at_parallel(x, h, layer, h_new, w_ih_at, w_hh_at, b_ih_at,
                      b_hh_at, I, H, reset_after, block):
    # _step_at's work as parallel tasks of `block` samples, once
    # _step_at(..., run=False) accepted the arrays
    w_ih = numba.carray(_pointer_like(w_ih_at, h_new), (3 * H, I))
    w_hh = numba.carray(_pointer_like(w_hh_at, h_new), (3 * H, H))
    b_ih = numba.carray(_pointer_like(b_ih_at, h_new), 3 * H)
    b_hh = numba.carray(_pointer_like(b_hh_at, h_new), 3 * H)
    B = x.shape[0]
    n_blocks = (B + block - 1) // block
    for ib in prange(n_blocks):
        _step_samples(x, w_ih, w_hh, b_ih, b_hh, h, layer, reset_after,
                      h_new, ib * block, min(B, ib * block + block))


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------

def _block_size(B, H, n_threads):
    """Samples per parallel task; any value gives the same bits."""
    per_thread = -(-B // n_threads)
    cap = 64 if H >= 256 else 16
    return max(1, min(cap, per_thread))


_SERIAL_WORK = 1 << 17   # B * H * (I + H) below this: one step of a layer's
                         # forward is too little work to share between threads
_SERIAL_TOTAL = 1 << 20  # B * T * H * (I + H) below this: run serially
_SERIAL_CHUNK = 1 << 20  # B * TC * H * (I + H) below this: the backward, which
                         # opens one or two parallel regions per chunk of TC
                         # steps, runs serially


def _serial(B, T, I, H, n_threads, backward=False):
    """Whether a layer call runs without a parallel region (same bits)."""
    if n_threads <= 1 or B < 2:
        return True
    if -(-B // _block_size(B, H, n_threads)) < 2:
        return True
    if backward:
        return B * chunk_steps(B, T) * H * (I + H) < _SERIAL_CHUNK
    return B * H * (I + H) < _SERIAL_WORK and B * T * H * (I + H) < _SERIAL_TOTAL


class _Run:
    """Set the thread count and serialise calls when the layer needs it."""

    def __init__(self, n_threads):
        self.n = max(1, min(int(n_threads), numba.config.NUMBA_NUM_THREADS))
        self.locked = False

    def __enter__(self):
        numba.set_num_threads(self.n)
        if _needs_lock or not _layer_checked:
            _serial_lock.acquire()
            self.locked = True
        return self

    def __exit__(self, *exc):
        global _layer_checked, _needs_lock
        if self.locked:
            if not _layer_checked:
                try:
                    _needs_lock = numba.threading_layer() == "workqueue"
                    _layer_checked = True
                except ValueError:
                    pass
            _serial_lock.release()
        return False


_buffers = threading.local()


def _work(slot, size, dtype):
    """A work array of ``size`` elements, reused between calls.

    Each Python thread keeps its own buffers (slots 0-2), grown when a call
    needs more: large calls then pay neither the allocation nor the page
    faults of fresh memory again. The contents are never read before being
    written by the kernels.
    """
    dtype = np.dtype(dtype)
    bufs = getattr(_buffers, "bufs", None)
    if bufs is None:
        bufs = _buffers.bufs = [None, None, None]
    buf = bufs[slot]
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = aligned_empty(max(size, 1), dtype)
        bufs[slot] = buf
    return buf[:size]


def _keep(gates):
    return gates.size > 0


def layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse,
                  reset_after, out, h_last, gates, n_threads=1):
    """Run one GRU layer in one direction over a batch.

    Parameters
    ----------
    x : ndarray of shape (B, T, I)
        Layer input, batch first.
    w_ih : ndarray of shape (3H, I)
        Input weights, gate blocks r, z, n.
    w_hh : ndarray of shape (3H, H)
        Recurrent weights, gate blocks r, z, n.
    b_ih, b_hh : ndarray of shape (3H,)
        Input and recurrent biases.
    h0 : ndarray of shape (B, H)
        Initial state.
    lengths : ndarray of shape (B,), int64
        Valid steps per sample, ``1 <= lengths[b] <= T``.
    reverse : bool
        Process each sample from its last valid step to its first.
    reset_after : bool
        PyTorch / cuDNN form (True) or the original Cho et al. form (False).
    out : ndarray of shape (B, T, H)
        Written: state after each valid step, 0 past ``lengths[b]``.
    h_last : ndarray of shape (B, H)
        Written: state after the last valid step.
    gates : ndarray of shape (B, T, 4H) or (0, 0, 0)
        Written when not empty: ``[r, z, n, hn]`` per valid step, 0 past
        ``lengths[b]``.
    n_threads : int, default=1
        Threads to use. Results do not depend on it.

    Notes
    -----
    All floating arrays are C-contiguous and share one dtype (float32 or
    float64); inputs are validated by the caller.
    """
    B, T, I = x.shape
    H = w_hh.shape[1]
    keep = _keep(gates)
    gates2 = gates.reshape(B * T, 4 * H) if keep else np.empty((1, 4 * H),
                                                               x.dtype)
    # the kernels pack the weights (_pack_forward), whose row-wide vector
    # reads need rows in one piece
    w_ih = np.ascontiguousarray(w_ih)
    w_hh = np.ascontiguousarray(w_hh)
    TC = chunk_steps(B, T)
    gibuf = _work(0, B * TC * 3 * H, x.dtype).reshape(B * TC, 3 * H)
    if _serial(B, T, I, H, n_threads):
        _forward_kernel_serial(x.reshape(B * T, I), w_ih, w_hh, b_ih, b_hh,
                               h0, lengths, T, bool(reverse),
                               bool(reset_after), out.reshape(B * T, H),
                               h_last, gates2, keep, gibuf,
                               _block_size(B, H, 1))
        return
    with _Run(n_threads) as run:
        _forward_kernel(x.reshape(B * T, I), w_ih, w_hh, b_ih, b_hh, h0,
                        lengths, T, bool(reverse), bool(reset_after),
                        out.reshape(B * T, H), h_last, gates2, keep, gibuf,
                        _block_size(B, H, run.n), run.n)


def layer_backward(x, w_ih, w_hh, h0, lengths, reverse, reset_after, out,
                   gates, d_out, d_h_last, d_x, d_h0, d_w_ih, d_w_hh, d_b_ih,
                   d_b_hh, n_threads=1):
    """Gradients of one GRU layer in one direction.

    Parameters
    ----------
    x, w_ih, w_hh, h0, lengths, reverse, reset_after :
        As for :func:`layer_forward`.
    out : ndarray of shape (B, T, H)
        What :func:`layer_forward` wrote for the same inputs.
    gates : ndarray of shape (B, T, 4H)
        What :func:`layer_forward` wrote for the same inputs.
    d_out : ndarray of shape (B, T, H)
        Gradient of the loss w.r.t. ``out`` (ignored past lengths).
    d_h_last : ndarray of shape (B, H)
        Gradient w.r.t. ``h_last``.
    d_x : ndarray of shape (B, T, I)
        Written: gradient w.r.t. ``x``, 0 past lengths.
    d_h0 : ndarray of shape (B, H)
        Written: gradient w.r.t. ``h0``.
    d_w_ih : ndarray of shape (3H, I)
        Written (overwritten, not accumulated).
    d_w_hh : ndarray of shape (3H, H)
        Written.
    d_b_ih, d_b_hh : ndarray of shape (3H,)
        Written.
    n_threads : int, default=1
        Threads to use. Results do not depend on it.
    """
    B, T, I = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    TC = chunk_steps(B, T)
    serial = _serial(B, T, I, H, n_threads, backward=True)
    # chunk arrays: two when the parallel kernel overlaps the recurrence of
    # a chunk with the weight gradients of the one before (see
    # _backward_kernel), which it does when the recurrent weights stay in a
    # core's cache; larger ones are read from memory at every step, and the
    # overlapped weight gradients then slowed a large backward (B, T, I, H =
    # 128, 100, 128, 512) by a fifth
    overlap = not serial and w_hh.nbytes <= _OVERLAP_BYTES
    n_sets = 2 if overlap else 1
    R = B * TC
    dgi_c = _work(0, n_sets * R * 3 * H, dtype).reshape(n_sets, R, 3 * H)
    hp_c = _work(1, n_sets * R * H, dtype).reshape(n_sets, R, H)
    if reset_after:
        dghn_c = _work(2, n_sets * R * H, dtype).reshape(n_sets, R, H)
        hin_c = np.empty((n_sets, 1, H), dtype)
    else:
        dghn_c = np.empty((n_sets, 1, H), dtype)
        hin_c = _work(2, n_sets * R * H, dtype).reshape(n_sets, R, H)
    # steps go backwards in chunks of TC (step_chunks): the recurrence over
    # a chunk, then its terms of the weight gradients (added in this fixed
    # order); with narrow inputs the kernels add up the transpose of d_w_ih.
    # The kernels pack the weights (_pack_into, whose vector reads need rows
    # in one piece) and zero the gradients themselves: one compiled call, no
    # Python work in between.
    w_ih = np.ascontiguousarray(w_ih)
    w_hh = np.ascontiguousarray(w_hh)
    args = (w_ih, w_hh, h0, lengths, T, bool(reverse), bool(reset_after),
            out.reshape(B * T, H), gates.reshape(B * T, 4 * H),
            d_out.reshape(B * T, H), d_h_last, d_h0, x.reshape(B * T, I),
            d_x.reshape(B * T, I), dgi_c, dghn_c, hp_c, hin_c, d_w_ih, d_w_hh,
            d_b_ih, d_b_hh, _narrow_inputs(I, dtype))
    if serial:
        _backward_kernel_serial(*args, _block_size(B, H, 1))
    else:
        with _Run(n_threads) as run:
            _backward_kernel(*args, _block_size(B, H, run.n), run.n)


def _narrow_inputs(I, dtype):
    """Whether the input-weight gradient runs with vectors along the gate
    axis: for inputs of fewer than four vectors. Measured, float32: 1.3x to
    3x the speed of vectors along the inputs at a half, one and three
    vectors, the same at two, 1.2x slower at four. Same bits either way."""
    return I < 4 * (_VECTOR_BYTES // np.dtype(dtype).itemsize)


_OVERLAP_BYTES = 768 * 1024   # recurrent weights up to this size: the
                               # backward overlaps chunks (layer_backward)
# GRU.step runs a layer on the calling thread for batches up to
# _SERIAL_BATCH samples, or below _STEP_SERIAL_WORK = B * H * (I + H). Each
# thread reads all the weights for its samples. Measured, 2 threads against
# one, same bits, medians of 11 interleaved rounds: at 1 << 17 (the
# forward's threshold), 0.74x and 0.82x at (B, I, H) = (8, 32, 128), 0.95x
# and 0.97x at (128, 8, 32); at twice that, 1.0x at (16, 32, 128), 1.13x at
# (256, 8, 32); 0.97x and 1.40x at (8, 128, 512).
_SERIAL_BATCH = 4
_STEP_SERIAL_WORK = 1 << 18


def _step_serial(B, I, H):
    """Whether a step of one layer (B samples, I inputs, H hidden units)
    runs on the calling thread whatever the thread count (same bits)."""
    return B <= _SERIAL_BATCH or B * H * (I + H) < _STEP_SERIAL_WORK


class _StepWeights:
    """Where :func:`step_forward` finds the weights, and what it found there.

    ``params`` and the names say where the weights are. ``state`` holds
    what was found there when last checked, replaced as a whole so that
    concurrent steps see either the old or the new one: the arrays (which
    it keeps alive) in the order of the names, then, if they suit the
    kernels, their dtype, the hidden size, per layer the addresses of
    ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` and the layer's input and hidden
    sizes as :func:`_step_at` takes them, and the first layer's as an int64
    array for :func:`_step_first` (None otherwise). The kernels read the
    weights through these addresses, so changes made in place are seen.
    """

    __slots__ = ("params", "getter", "n_layers", "bias", "state")

    def __init__(self, params, weight_names, bias_names):
        names = list(weight_names) + list(bias_names or ())
        self.params = params
        self.getter = operator.itemgetter(*names)
        self.n_layers = len(weight_names) // 2
        self.bias = bias_names is not None
        self.state = (None, None, 0, None, None)

    def check(self, sources):
        """Check the arrays ``sources`` (in the order of the names) and
        return the new state."""
        self.state = state = (sources,) + self._layers(sources)
        return state

    def _layers(self, sources):
        # (dtype, H, per-layer kernel arguments, the first layer's as an
        # int64 array), or (None, 0, None, None)
        unfit = (None, 0, None, None)
        n_layers = self.n_layers
        weights = sources[:2 * n_layers]
        if self.bias:
            biases = sources[2 * n_layers:]
        else:
            w_hh = weights[1]
            if type(w_hh) is not np.ndarray or w_hh.ndim != 2:
                return unfit
            biases = _zeros_for(n_layers, w_hh.shape[1], w_hh.dtype)
        arrays = []
        for layer in range(n_layers):
            arrays += [weights[2 * layer], weights[2 * layer + 1],
                       biases[2 * layer], biases[2 * layer + 1]]
        if not all(type(a) is np.ndarray for a in arrays):
            return unfit
        dtype = arrays[0].dtype
        if (dtype not in (np.float32, np.float64) or not dtype.isnative
                or arrays[0].ndim != 2 or arrays[1].ndim != 2):
            return unfit
        I = arrays[0].shape[1]
        H = arrays[1].shape[1]
        for k, a in enumerate(arrays):
            if k % 4 < 2:
                shape = (3 * H, H if k % 4 == 1 or k >= 4 else I)
            else:
                shape = (3 * H,)
            if (a.dtype != dtype or a.shape != shape
                    or not a.flags.c_contiguous or a.size == 0):
                return unfit
        # the zero biases are kept alive by _zero_biases
        layers = tuple(
            tuple(a.__array_interface__["data"][0]
                  for a in arrays[4 * layer:4 * layer + 4])
            + (I if layer == 0 else H, H)
            for layer in range(n_layers))
        return (np.dtype(dtype.type), H, layers,
                np.array(layers[0], np.int64))


def step_prepare(params, weight_names, bias_names=None):
    """Describe the weights of a stack of layers for :func:`step_forward`.

    See the step entry points in :mod:`numgru._reference`.

    Parameters
    ----------
    params : dict of str to ndarray
        Holds the weights.
    weight_names : sequence of 2L str
        Keys of ``w_ih`` and ``w_hh`` of each layer in turn.
    bias_names : sequence of 2L str, default=None
        Keys of ``b_ih`` and ``b_hh`` of each layer in turn; None for zero
        biases.

    Returns
    -------
    prepared : object
        What :func:`step_forward` takes.
    """
    n_layers = len(weight_names) // 2
    if (n_layers < 1 or len(weight_names) != 2 * n_layers
            or (bias_names is not None and len(bias_names) != 2 * n_layers)):
        raise ValueError("step_prepare needs two weight names (and two bias "
                         "names) per layer")
    return _StepWeights(params, weight_names, bias_names)


def _run_layer(x, h, layer, h_new, layers, reset_after, n_threads, check):
    """One layer of a step, in parallel when it is large enough; False
    (nothing written) when _step_at does not accept the arrays. ``layers``
    holds the weights' arguments of every layer (see _StepWeights)."""
    args = layers[layer]
    B = len(x)
    I, H = args[4], args[5]
    if n_threads > 1 and not _step_serial(B, I, H):
        if not _step_at(x, h, layer, h_new, *args, reset_after, check,
                        False):
            return False
        with _Run(n_threads) as run:
            _step_at_parallel(x, h, layer, h_new, *args, reset_after,
                              _block_size(B, H, run.n))
        return True
    return _step_at(x, h, layer, h_new, *args, reset_after, check, True)


def cell_forward(x, w_ih, w_hh, b_ih, b_hh, h, reset_after, h_new,
                 n_threads=1):
    """One step of one GRU layer (a GRU cell) for a batch.

    Parameters
    ----------
    x : ndarray of shape (B, I)
        Input at this step.
    w_ih : ndarray of shape (3H, I)
        Input weights, gate blocks r, z, n.
    w_hh : ndarray of shape (3H, H)
        Recurrent weights, gate blocks r, z, n.
    b_ih, b_hh : ndarray of shape (3H,)
        Input and recurrent biases.
    h : ndarray of shape (B, H)
        Previous state.
    reset_after : bool
        PyTorch / cuDNN form (True) or the original Cho et al. form (False).
    h_new : ndarray of shape (B, H)
        Written: the new state, as :func:`step_forward` computes it. Equal
        to what :func:`layer_forward` gives for a one-step sequence up to
        rounding (the sums run in another fixed order); a sample's result
        does not depend on the batch or the thread count.
    n_threads : int, default=1
        Threads to use when the batch is large enough to split.

    Raises
    ------
    ValueError
        If the arrays' shapes, dtypes or layouts do not fit together.
    """
    B, H = h.shape
    if B == 0:
        return
    state = _StepWeights(None, ("w_ih", "w_hh"), ("b_ih", "b_hh")).check(
        (w_ih, w_hh, b_ih, b_hh))
    if state[3] is None or not _run_layer(
            x, h.reshape(1, B, H), 0, h_new.reshape(1, B, H), state[3],
            bool(reset_after), n_threads, 0):
        raise ValueError(
            f"cell_forward: arrays that do not fit together: x {x.shape} "
            f"{x.dtype}, w_ih {w_ih.shape} {w_ih.dtype}, w_hh {w_hh.shape} "
            f"{w_hh.dtype}, b_ih {b_ih.shape} {b_ih.dtype}, b_hh "
            f"{b_hh.shape} {b_hh.dtype}, h {h.shape} {h.dtype}, h_new "
            f"{h_new.shape} {h_new.dtype} (C-contiguous float arrays of one "
            f"dtype expected)")


_zero_biases = {}


def _zeros_for(n_layers, H, dtype):
    """(b_ih, b_hh) of every layer as zeros, kept between calls (never
    written)."""
    key = (n_layers, H, dtype)
    zeros = _zero_biases.get(key)
    if zeros is None:
        zeros = _zero_biases[key] = (np.zeros(3 * H, dtype),) * (2 * n_layers)
    return zeros


def step_forward(x, h, prepared, reset_after, n_threads=None):
    """Advance a stack of unidirectional GRU layers by one step.

    The fast path of :meth:`numgru.GRU.step`; see the step entry points in
    :mod:`numgru._reference` for what it accepts and computes.

    Parameters
    ----------
    x : ndarray of shape (B, I)
        Input at this step.
    h : ndarray of shape (L, B, H) or None
        State of every layer before the step; zeros when None.
    prepared : object
        From :func:`step_prepare`.
    reset_after : bool
        PyTorch / cuDNN form (True) or the original Cho et al. form (False).
    n_threads : int or None, default=None
        Threads for large batches; None for :func:`numgru.get_num_threads`.

    Returns
    -------
    h_new : ndarray of shape (L, B, H) or None
        State after the step, or None (nothing computed) for arrays not in
        the expected form.
    """
    try:
        sources = prepared.getter(prepared.params)
    except (KeyError, TypeError):
        return None
    state = prepared.state
    try:
        # tuples compare their items by identity first: the same arrays are
        # equal at once; any other array makes numpy compare values and
        # raise, its result having several elements
        same = sources == state[0]
    except ValueError:
        same = False
    if not same:
        state = prepared.check(sources)
    _, dtype, hidden, layers, first = state
    if layers is None:
        return None
    # the dtype object first: most arrays share numpy's own
    if (type(x) is not np.ndarray or (x.dtype is not dtype and x.dtype != dtype)
            or x.ndim != 2):
        return None
    n_layers = len(layers)
    if h is None:
        h = np.zeros((n_layers, len(x), hidden), dtype)
    elif (type(h) is not np.ndarray
            or (h.dtype is not dtype and h.dtype != dtype) or h.ndim != 3
            or len(h) != n_layers):
        return None
    h_new = np.empty(h.shape, dtype)
    reset_after = bool(reset_after)
    B = len(x)
    if B <= _SERIAL_BATCH or (
            n_layers == 1 and _step_serial(B, x.shape[1], hidden)):
        # a layer _run_layer would run on the calling thread anyway (the
        # batch test first: it alone decides a one-sample step)
        n_threads = 1
    elif n_threads is None:
        from ._threads import get_num_threads
        n_threads = get_num_threads()
    if n_layers == 1 and n_threads <= 1:
        # the streaming case, without the checks of _run_layer
        if _step_first(x, h, h_new, first, reset_after):
            return h_new
        return None
    if not _run_layer(x, h, 0, h_new, layers, reset_after, n_threads, 2):
        return None
    for layer in range(1, n_layers):
        if not _run_layer(h_new[layer - 1], h, layer, h_new, layers,
                          reset_after, n_threads, 1):
            return None
    return h_new
