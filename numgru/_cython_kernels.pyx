# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
"""Compiled GRU kernels (Cython, OpenMP): the fallback backend.

Same functions, arguments and shapes as :mod:`numgru._reference`; see its
module docstring. Samples are split into blocks and blocks run in parallel
(``prange`` over blocks, static schedule). Every value a sample produces is
computed by the same sequence of floating-point operations whatever the
thread count, the batch size or the sample's position in the batch: matrix
products accumulate over their inner index in ascending order, one element at
a time (vector lanes never combine), with the same multiply-add in vector and
scalar code, and the compiler is not allowed to contract other expressions
into fused multiply-adds. Weight and bias gradients are owned column by column by one
thread and summed over samples, then steps, in ascending order.

``OPENMP_ENABLED`` tells whether the module was built with OpenMP; without
it the kernels run serially and give the same results. ``SIMD_LEVEL`` names
the instruction set the matrix products and float32 activations use, chosen
once at import from what the CPU supports.
"""

from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from libc.math cimport exp, tanh
from cython cimport floating
from cython.parallel cimport prange

import numpy as np

__all__ = ["layer_forward", "layer_backward", "cell_forward",
           "OPENMP_ENABLED", "SIMD_LEVEL"]

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>

    #ifdef _OPENMP
    #define NG_OPENMP 1
    #else
    #define NG_OPENMP 0
    #endif

    /* Matrix products C[m, n] += sum_k A[m, k] * B[k, n] (m < M, n < N).
       A[m, k] is at A[m * sam + k * sak]; B and C are row-major with leading
       dimensions ldb and ldc. Every element of C is updated one k after
       another in ascending order, c = madd(a, b, c), by the same operation in
       the vector and the scalar code paths, so an element never depends on
       M, N, the tiling or the other rows. madd is a fused multiply-add where
       the CPU has one (chosen once at import), else a multiply then an add.

       The variants are compiled for x86-64 with AVX-512, with AVX2 + FMA,
       and for the baseline; ng_init picks the best the CPU supports. */

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && \
        !defined(NG_NO_DISPATCH)
    #define NG_DISPATCH 1
    #define NG_ATTR_V4 __attribute__((target( \
        "avx512f,avx512vl,avx512bw,avx512dq,avx2,avx,fma")))
    #define NG_ATTR_V3 __attribute__((target("avx2,avx,fma")))
    #else
    #define NG_DISPATCH 0
    #endif
    #define NG_ATTR_BASE

    #define NG_KC 256            /* k rows per pass over a panel of B */
    #define NG_MR 4              /* rows of C per register tile */

    #define NG_MADD_PLAIN(a, b, c) ((c) + (a) * (b))

    /* C[m, n] for n0 <= n < N, one element at a time */
    #define NG_GEMM_COLUMNS(T, MADD_S)                                         \
        for (ptrdiff_t m = 0; m < M; m++)                                      \
            for (ptrdiff_t n = n0; n < N; n++) {                               \
                T acc = C[m * ldc + n];                                        \
                for (ptrdiff_t k = 0; k < kn; k++)                             \
                    acc = MADD_S(Ak[m * sam + k * sak], Bk[k * ldb + n], acc); \
                C[m * ldc + n] = acc;                                          \
            }

    #if defined(__GNUC__)
    #define NG_VEC 1

    /* lane-wise a * b + c for a scalar a, rounded once */
    #define NG_DEFINE_VFMA(NAME, T, V, L, FMA)                                 \
        static inline __attribute__((always_inline)) V NAME(T a, V b, V c)     \
        {                                                                      \
            V r;                                                               \
            for (int i = 0; i < L; i++) r[i] = FMA(a, b[i], c[i]);             \
            return r;                                                          \
        }

    #define NG_DEFINE_GEMM(NAME, ATTR, T, V, VU, L, MADD_V, MADD_S)            \
    ATTR static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,               \
        const T *A, ptrdiff_t sam, ptrdiff_t sak,                              \
        const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc)                        \
    {                                                                          \
        if (M <= 0 || N <= 0) return;                                          \
        for (ptrdiff_t k0 = 0; k0 < K; k0 += NG_KC) {                          \
            const ptrdiff_t kn = K - k0 < NG_KC ? K - k0 : NG_KC;              \
            const T *Ak = A + k0 * sak;                                        \
            const T *Bk = B + k0 * ldb;                                        \
            ptrdiff_t n0 = 0;                                                  \
            for (; n0 + 2 * L <= N; n0 += 2 * L) {                             \
                ptrdiff_t m0 = 0;                                              \
                for (; m0 + NG_MR <= M; m0 += NG_MR) {                         \
                    const T *a0 = Ak + m0 * sam, *a1 = a0 + sam;               \
                    const T *a2 = a1 + sam, *a3 = a2 + sam;                    \
                    T *c0 = C + m0 * ldc + n0, *c1 = c0 + ldc;                 \
                    T *c2 = c1 + ldc, *c3 = c2 + ldc;                          \
                    V x00 = *(const VU *)c0, x01 = *(const VU *)(c0 + L);      \
                    V x10 = *(const VU *)c1, x11 = *(const VU *)(c1 + L);      \
                    V x20 = *(const VU *)c2, x21 = *(const VU *)(c2 + L);      \
                    V x30 = *(const VU *)c3, x31 = *(const VU *)(c3 + L);      \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb) {             \
                        V b0 = *(const VU *)b, b1 = *(const VU *)(b + L);      \
                        T s0 = a0[k * sak], s1 = a1[k * sak];                  \
                        T s2 = a2[k * sak], s3 = a3[k * sak];                  \
                        x00 = MADD_V(s0, b0, x00); x01 = MADD_V(s0, b1, x01);  \
                        x10 = MADD_V(s1, b0, x10); x11 = MADD_V(s1, b1, x11);  \
                        x20 = MADD_V(s2, b0, x20); x21 = MADD_V(s2, b1, x21);  \
                        x30 = MADD_V(s3, b0, x30); x31 = MADD_V(s3, b1, x31);  \
                    }                                                          \
                    *(VU *)c0 = x00; *(VU *)(c0 + L) = x01;                    \
                    *(VU *)c1 = x10; *(VU *)(c1 + L) = x11;                    \
                    *(VU *)c2 = x20; *(VU *)(c2 + L) = x21;                    \
                    *(VU *)c3 = x30; *(VU *)(c3 + L) = x31;                    \
                }                                                              \
                for (; m0 < M; m0++) {                                         \
                    const T *a0 = Ak + m0 * sam;                               \
                    T *c0 = C + m0 * ldc + n0;                                 \
                    V x00 = *(const VU *)c0, x01 = *(const VU *)(c0 + L);      \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb) {             \
                        T s0 = a0[k * sak];                                    \
                        x00 = MADD_V(s0, *(const VU *)b, x00);                 \
                        x01 = MADD_V(s0, *(const VU *)(b + L), x01);           \
                    }                                                          \
                    *(VU *)c0 = x00; *(VU *)(c0 + L) = x01;                    \
                }                                                              \
            }                                                                  \
            for (; n0 + L <= N; n0 += L) {                                     \
                for (ptrdiff_t m0 = 0; m0 < M; m0++) {                         \
                    const T *a0 = Ak + m0 * sam;                               \
                    T *c0 = C + m0 * ldc + n0;                                 \
                    V x0 = *(const VU *)c0;                                    \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb)               \
                        x0 = MADD_V(a0[k * sak], *(const VU *)b, x0);          \
                    *(VU *)c0 = x0;                                            \
                }                                                              \
            }                                                                  \
            NG_GEMM_COLUMNS(T, MADD_S)                                         \
        }                                                                      \
    }

    #define NG_VTYPES(T, BYTES, SUF)                                           \
        typedef T ng_v##SUF __attribute__((vector_size(BYTES)));               \
        typedef T ng_vu##SUF __attribute__((vector_size(BYTES),                \
                                            aligned(sizeof(T)), may_alias));
    NG_VTYPES(float, 16, f16)
    NG_VTYPES(float, 32, f32)
    NG_VTYPES(float, 64, f64)
    NG_VTYPES(double, 16, d16)
    NG_VTYPES(double, 32, d32)
    NG_VTYPES(double, 64, d64)

    NG_DEFINE_GEMM(ng_gemm_float_base, NG_ATTR_BASE, float, ng_vf16,
                   ng_vuf16, 4, NG_MADD_PLAIN, NG_MADD_PLAIN)
    NG_DEFINE_GEMM(ng_gemm_double_base, NG_ATTR_BASE, double, ng_vd16,
                   ng_vud16, 2, NG_MADD_PLAIN, NG_MADD_PLAIN)
    #if NG_DISPATCH
    NG_DEFINE_VFMA(ng_fma_f32, float, ng_vf32, 8, __builtin_fmaf)
    NG_DEFINE_VFMA(ng_fma_f64, float, ng_vf64, 16, __builtin_fmaf)
    NG_DEFINE_VFMA(ng_fma_d32, double, ng_vd32, 4, __builtin_fma)
    NG_DEFINE_VFMA(ng_fma_d64, double, ng_vd64, 8, __builtin_fma)
    NG_DEFINE_GEMM(ng_gemm_float_v3, NG_ATTR_V3, float, ng_vf32, ng_vuf32, 8,
                   ng_fma_f32, __builtin_fmaf)
    NG_DEFINE_GEMM(ng_gemm_double_v3, NG_ATTR_V3, double, ng_vd32, ng_vud32,
                   4, ng_fma_d32, __builtin_fma)
    NG_DEFINE_GEMM(ng_gemm_float_v4, NG_ATTR_V4, float, ng_vf64, ng_vuf64, 16,
                   ng_fma_f64, __builtin_fmaf)
    NG_DEFINE_GEMM(ng_gemm_double_v4, NG_ATTR_V4, double, ng_vd64, ng_vud64,
                   8, ng_fma_d64, __builtin_fma)
    #endif

    #else  /* no vector extensions: one element at a time */
    #define NG_VEC 0
    #define NG_DEFINE_GEMM_SCALAR(NAME, T)                                     \
    static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,                    \
        const T *A, ptrdiff_t sam, ptrdiff_t sak,                              \
        const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc)                        \
    {                                                                          \
        const ptrdiff_t n0 = 0, kn = K;                                        \
        const T *Ak = A, *Bk = B;                                              \
        NG_GEMM_COLUMNS(T, NG_MADD_PLAIN)                                      \
    }
    NG_DEFINE_GEMM_SCALAR(ng_gemm_float_base, float)
    NG_DEFINE_GEMM_SCALAR(ng_gemm_double_base, double)
    #endif

    /* float32 tanh as a rational function (odd degree 13 over even degree 6)
       of the clamped argument; max abs error about 2e-7 on the whole line.
       Written without branches so that it vectorises. */
    #define NG_TANH_F32(x_in, out)                                             \
        do {                                                                   \
            float x = (x_in);                                                  \
            x = x < 7.90531110763549805f ? x : 7.90531110763549805f;           \
            x = x > -7.90531110763549805f ? x : -7.90531110763549805f;         \
            float x2 = x * x;                                                  \
            float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;     \
            p = p * x2 + -8.60467152213735e-11f;                               \
            p = p * x2 + 5.12229709037114e-08f;                                \
            p = p * x2 + 1.48572235717979e-05f;                                \
            p = p * x2 + 6.37261928875436e-04f;                                \
            p = p * x2 + 4.89352455891786e-03f;                                \
            p = p * x;                                                         \
            float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;      \
            q = q * x2 + 2.26843463243900e-03f;                                \
            q = q * x2 + 4.89352518554385e-03f;                                \
            (out) = p / q;                                                     \
        } while (0)

    /* v[i] = tanh(v[i]) and v[i] = 1 / (1 + exp(-v[i])) = (1 + tanh(v/2)) / 2 */
    #define NG_DEFINE_ACT_F32(SUF, ATTR)                                       \
    ATTR static void ng_tanh_float_##SUF(ptrdiff_t n, float *v)                \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) NG_TANH_F32(v[i], v[i]);             \
    }                                                                          \
    ATTR static void ng_sigmoid_float_##SUF(ptrdiff_t n, float *v)             \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) {                                    \
            float t;                                                           \
            NG_TANH_F32(0.5f * v[i], t);                                       \
            v[i] = 0.5f + 0.5f * t;                                            \
        }                                                                      \
    }
    NG_DEFINE_ACT_F32(base, NG_ATTR_BASE)
    #if NG_DISPATCH
    NG_DEFINE_ACT_F32(v3, NG_ATTR_V3)
    NG_DEFINE_ACT_F32(v4, NG_ATTR_V4)
    #endif

    static void ng_tanh_double(ptrdiff_t n, double *v)
    {
        for (ptrdiff_t i = 0; i < n; i++) v[i] = tanh(v[i]);
    }

    static void ng_sigmoid_double(ptrdiff_t n, double *v)
    {
        for (ptrdiff_t i = 0; i < n; i++) v[i] = 1.0 / (1.0 + exp(-v[i]));
    }

    /* the implementation chosen by ng_init */
    typedef void (*ng_gemm_float_t)(ptrdiff_t, ptrdiff_t, ptrdiff_t,
        const float *, ptrdiff_t, ptrdiff_t, const float *, ptrdiff_t,
        float *, ptrdiff_t);
    typedef void (*ng_gemm_double_t)(ptrdiff_t, ptrdiff_t, ptrdiff_t,
        const double *, ptrdiff_t, ptrdiff_t, const double *, ptrdiff_t,
        double *, ptrdiff_t);
    typedef void (*ng_act_float_t)(ptrdiff_t, float *);
    static ng_gemm_float_t ng_gemm_float = ng_gemm_float_base;
    static ng_gemm_double_t ng_gemm_double = ng_gemm_double_base;
    static ng_act_float_t ng_tanh_float = ng_tanh_float_base;
    static ng_act_float_t ng_sigmoid_float = ng_sigmoid_float_base;

    /* CPU support for level 2 (AVX-512), 1 (AVX2 + FMA); 0 always works */
    static int ng_cpu_supports(int level)
    {
    #if NG_DISPATCH
        __builtin_cpu_init();
        if (level == 2)
            return __builtin_cpu_supports("avx512f")
                && __builtin_cpu_supports("avx512vl")
                && __builtin_cpu_supports("avx512bw")
                && __builtin_cpu_supports("avx512dq")
                && __builtin_cpu_supports("avx2")
                && __builtin_cpu_supports("fma");
        if (level == 1)
            return __builtin_cpu_supports("avx2")
                && __builtin_cpu_supports("fma");
    #endif
        return level == 0;
    }

    /* select the implementations of a level the CPU supports */
    static int ng_select(int level)
    {
        if (!ng_cpu_supports(level)) return -1;
        ng_gemm_float = ng_gemm_float_base;
        ng_gemm_double = ng_gemm_double_base;
        ng_tanh_float = ng_tanh_float_base;
        ng_sigmoid_float = ng_sigmoid_float_base;
    #if NG_DISPATCH
        if (level == 1) {
            ng_gemm_float = ng_gemm_float_v3;
            ng_gemm_double = ng_gemm_double_v3;
            ng_tanh_float = ng_tanh_float_v3;
            ng_sigmoid_float = ng_sigmoid_float_v3;
        } else if (level == 2) {
            ng_gemm_float = ng_gemm_float_v4;
            ng_gemm_double = ng_gemm_double_v4;
            ng_tanh_float = ng_tanh_float_v4;
            ng_sigmoid_float = ng_sigmoid_float_v4;
        }
    #endif
        return level;
    }

    /* dst (cols, rows) = src (rows, cols) transposed */
    #define NG_TRANSPOSE(T)                                                    \
    static void ng_transpose_##T(ptrdiff_t rows, ptrdiff_t cols,               \
                                 const T *src, T *dst)                         \
    {                                                                          \
        for (ptrdiff_t i0 = 0; i0 < rows; i0 += 16)                            \
            for (ptrdiff_t j0 = 0; j0 < cols; j0 += 16)                        \
                for (ptrdiff_t i = i0; i < rows && i < i0 + 16; i++)           \
                    for (ptrdiff_t j = j0; j < cols && j < j0 + 16; j++)       \
                        dst[j * rows + i] = src[i * cols + j];                 \
    }
    NG_TRANSPOSE(float)
    NG_TRANSPOSE(double)
    """
    int NG_OPENMP
    void ng_gemm_float(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       const float *A, Py_ssize_t sam, Py_ssize_t sak,
                       const float *B, Py_ssize_t ldb,
                       float *C, Py_ssize_t ldc) noexcept nogil
    void ng_gemm_double(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                        const double *A, Py_ssize_t sam, Py_ssize_t sak,
                        const double *B, Py_ssize_t ldb,
                        double *C, Py_ssize_t ldc) noexcept nogil
    void ng_tanh_float(Py_ssize_t n, float *v) noexcept nogil
    void ng_tanh_double(Py_ssize_t n, double *v) noexcept nogil
    void ng_sigmoid_float(Py_ssize_t n, float *v) noexcept nogil
    void ng_sigmoid_double(Py_ssize_t n, double *v) noexcept nogil
    void ng_transpose_float(Py_ssize_t rows, Py_ssize_t cols,
                            const float *src, float *dst) noexcept nogil
    void ng_transpose_double(Py_ssize_t rows, Py_ssize_t cols,
                             const double *src, double *dst) noexcept nogil
    int ng_cpu_supports(int level) noexcept nogil
    int ng_select(int level) noexcept nogil


OPENMP_ENABLED = bool(NG_OPENMP)

_SIMD_LEVELS = ("baseline", "avx2", "avx512")


def _supported_simd_levels():
    """Names of the instruction-set levels this CPU can run, lowest first."""
    return [name for level, name in enumerate(_SIMD_LEVELS)
            if ng_cpu_supports(level)]


def _set_simd_level(name):
    """Select the kernels of one instruction-set level; returns its name.

    Results are bitwise identical for any thread count and batch layout at a
    given level; across levels they differ in the last bits (the AVX levels
    use fused multiply-adds in matrix products). Not thread-safe: meant for
    tests and set once at import.
    """
    global SIMD_LEVEL
    if name not in _SIMD_LEVELS or ng_select(_SIMD_LEVELS.index(name)) < 0:
        raise ValueError(f"SIMD level {name!r} is not supported here; "
                         f"supported: {_supported_simd_levels()}")
    SIMD_LEVEL = name
    return name


#: Instruction-set level of the kernels in use: "avx512", "avx2" or "baseline".
SIMD_LEVEL = _set_simd_level(max(_supported_simd_levels(), key=_SIMD_LEVELS.index))

# Largest number of samples one thread advances together through time.
_BLOCK = 32


# ---------------------------------------------------------------------------
# small typed helpers (dispatch on the fused type at compile time)

cdef inline void _gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                       const floating *A, Py_ssize_t sam, Py_ssize_t sak,
                       const floating *B, Py_ssize_t ldb,
                       floating *C, Py_ssize_t ldc) noexcept nogil:
    # C (M, N) += A (M, K) @ B (K, N), k ascending for every element
    if floating is float:
        ng_gemm_float(M, N, K, A, sam, sak, B, ldb, C, ldc)
    else:
        ng_gemm_double(M, N, K, A, sam, sak, B, ldb, C, ldc)


cdef inline void _tanh(Py_ssize_t n, floating *v) noexcept nogil:
    if floating is float:
        ng_tanh_float(n, v)
    else:
        ng_tanh_double(n, v)


cdef inline void _sigmoid(Py_ssize_t n, floating *v) noexcept nogil:
    if floating is float:
        ng_sigmoid_float(n, v)
    else:
        ng_sigmoid_double(n, v)


cdef inline void _transpose(Py_ssize_t rows, Py_ssize_t cols,
                            const floating *src, floating *dst) noexcept nogil:
    if floating is float:
        ng_transpose_float(rows, cols, src, dst)
    else:
        ng_transpose_double(rows, cols, src, dst)


cdef inline Py_ssize_t _time_index(Py_ssize_t step, Py_ssize_t length,
                                   bint reverse) noexcept nogil:
    # time index of processing step ``step`` for a sample of this length
    if reverse:
        return length - 1 - step
    return step


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for a >= 0, b > 0
    return (a + b - 1) // b


def _n_blocks(Py_ssize_t n_samples, int n_threads):
    """Number of sample blocks: a multiple of the thread count when possible."""
    n_threads = max(1, min(int(n_threads), n_samples))
    per_thread = _ceil_div(n_samples, n_threads)
    blocks_per_thread = _ceil_div(per_thread, _BLOCK)
    return min(n_samples, n_threads * blocks_per_thread)


# ---------------------------------------------------------------------------
# forward

cdef void _forward_block(
        const floating *x, const floating *wihT, const floating *whhT,
        const floating *b_ih, const floating *b_hh, const floating *h0,
        const int64_t *lengths, Py_ssize_t b_start, Py_ssize_t b_stop,
        Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, bint reverse,
        bint reset_after, floating *out, floating *h_last, floating *gates,
        floating *work, Py_ssize_t *iwork) noexcept nogil:
    # x (B, T, I), wihT (I, 3H), whhT (H, 3H), b_ih, b_hh (3H,), h0 (B, H),
    # lengths (B,), out (B, T, H), h_last (B, H) or NULL,
    # gates (B, T, 4H) or NULL; samples b_start <= b < b_stop.
    # work (nb, I + 8H), iwork (2 nb), nb = b_stop - b_start.
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t nb = b_stop - b_start
    cdef floating *xa = work                 # (nb, I)  inputs of active samples
    cdef floating *hp = xa + nb * I          # (nb, H)  their previous states
    cdef floating *gi = hp + nb * H          # (nb, 3H) gi, then [r, z, n]
    cdef floating *gh = gi + nb * G          # (nb, 3H) gh = [gh_r, gh_z, hn]
    cdef floating *rh = gh + nb * G          # (nb, H)  r * h_prev (reset before)
    cdef Py_ssize_t *act = iwork             # (nb,) active sample index
    cdef Py_ssize_t *tt = iwork + nb         # (nb,) its time index
    cdef Py_ssize_t b, i, j, s, t, L, na, max_len = 0
    cdef const floating *src
    cdef floating *g
    cdef floating *o
    cdef floating *gir
    cdef floating *ghr
    cdef floating *hpr
    cdef floating z

    for b in range(b_start, b_stop):
        L = lengths[b]
        if L > max_len:
            max_len = L
        if L < T:
            memset(out + (b * T + L) * H, 0, (T - L) * H * sizeof(floating))
            if gates != NULL:
                memset(gates + (b * T + L) * 4 * H, 0,
                       (T - L) * 4 * H * sizeof(floating))

    for s in range(max_len):
        # gather the samples still running at this step
        na = 0
        for b in range(b_start, b_stop):
            L = lengths[b]
            if s >= L:
                continue
            t = _time_index(s, L, reverse)
            act[na] = b
            tt[na] = t
            if s == 0:
                src = h0 + b * H
            elif reverse:
                src = out + (b * T + t + 1) * H
            else:
                src = out + (b * T + t - 1) * H
            memcpy(hp + na * H, src, H * sizeof(floating))
            memcpy(xa + na * I, x + (b * T + t) * I, I * sizeof(floating))
            memcpy(gi + na * G, b_ih, G * sizeof(floating))
            memcpy(gh + na * G, b_hh, G * sizeof(floating))
            na = na + 1

        # gi = W_ih x + b_ih ; gh = W_hh h_prev + b_hh (r, z blocks only
        # when the reset comes before the product)
        _gemm(na, G, I, xa, I, 1, wihT, G, gi, G)
        if reset_after:
            _gemm(na, G, H, hp, H, 1, whhT, G, gh, G)
        else:
            _gemm(na, 2 * H, H, hp, H, 1, whhT, G, gh, G)

        # r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z)
        for i in range(na):
            gir = gi + i * G
            ghr = gh + i * G
            for j in range(2 * H):
                gir[j] = gir[j] + ghr[j]
            _sigmoid(2 * H, gir)

        if reset_after:
            # n = tanh(gi_n + r * hn), hn = W_hn h_prev + b_hn
            for i in range(na):
                gir = gi + i * G
                ghr = gh + i * G
                for j in range(H):
                    gir[2 * H + j] = gir[2 * H + j] + gir[j] * ghr[2 * H + j]
        else:
            # n = tanh(gi_n + hn), hn = W_hn (r * h_prev) + b_hn
            for i in range(na):
                gir = gi + i * G
                hpr = hp + i * H
                for j in range(H):
                    rh[i * H + j] = gir[j] * hpr[j]
            _gemm(na, H, H, rh, H, 1, whhT + 2 * H, G, gh + 2 * H, G)
            for i in range(na):
                gir = gi + i * G
                ghr = gh + i * G
                for j in range(H):
                    gir[2 * H + j] = gir[2 * H + j] + ghr[2 * H + j]
        for i in range(na):
            _tanh(H, gi + i * G + 2 * H)

        # h = (1 - z) * n + z * h_prev
        for i in range(na):
            gir = gi + i * G
            ghr = gh + i * G
            hpr = hp + i * H
            b = act[i]
            t = tt[i]
            o = out + (b * T + t) * H
            for j in range(H):
                z = gir[H + j]
                o[j] = (1 - z) * gir[2 * H + j] + z * hpr[j]
            if gates != NULL:
                g = gates + (b * T + t) * 4 * H
                memcpy(g, gir, G * sizeof(floating))
                memcpy(g + G, ghr + 2 * H, H * sizeof(floating))

    if h_last != NULL:
        for b in range(b_start, b_stop):
            L = lengths[b]
            t = 0 if reverse else L - 1
            memcpy(h_last + b * H, out + (b * T + t) * H, H * sizeof(floating))


cdef void _forward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih,
                   const floating[:, ::1] w_hh, const floating[::1] b_ih,
                   const floating[::1] b_hh, const floating[:, ::1] h0,
                   const int64_t[::1] lengths, bint reverse, bint reset_after,
                   floating[:, :, ::1] out, floating *h_last_ptr,
                   floating *gates_ptr, int n_threads) except *:
    # x (B, T, I), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,), h0 (B, H),
    # lengths (B,), out (B, T, H), h_last (B, H) or NULL,
    # gates (B, T, 4H) or NULL
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = w_hh.shape[1], G = 3 * H
    cdef Py_ssize_t n_blocks, per_block, blk, b_start, b_stop, wsize
    if B == 0 or T == 0:
        return
    n_blocks = _n_blocks(B, n_threads)
    per_block = _ceil_div(B, n_blocks)
    n_blocks = _ceil_div(B, per_block)
    wsize = per_block * (I + 8 * H)
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] wihT = np.empty((I, G), dtype=dtype)
    cdef floating[:, ::1] whhT = np.empty((H, G), dtype=dtype)
    cdef floating[:, ::1] work = np.empty((n_blocks, wsize), dtype=dtype)
    cdef Py_ssize_t[:, ::1] iwork = np.empty((n_blocks, 2 * per_block),
                                             dtype=np.intp)
    with nogil:
        _transpose(G, I, &w_ih[0, 0], &wihT[0, 0])
        _transpose(G, H, &w_hh[0, 0], &whhT[0, 0])
        for blk in prange(n_blocks, schedule="static", num_threads=n_threads):
            b_start = blk * per_block
            b_stop = min(b_start + per_block, B)
            _forward_block(&x[0, 0, 0], &wihT[0, 0], &whhT[0, 0], &b_ih[0],
                           &b_hh[0], &h0[0, 0], &lengths[0], b_start, b_stop,
                           T, I, H, reverse, reset_after, &out[0, 0, 0],
                           h_last_ptr, gates_ptr, &work[blk, 0],
                           &iwork[blk, 0])


def layer_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih,
                  const floating[:, ::1] w_hh, const floating[::1] b_ih,
                  const floating[::1] b_hh, const floating[:, ::1] h0,
                  const int64_t[::1] lengths, bint reverse, bint reset_after,
                  floating[:, :, ::1] out, floating[:, ::1] h_last,
                  floating[:, :, ::1] gates, int n_threads=1):
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
    lengths : ndarray of shape (B,), dtype int64
        Valid steps per sample, ``1 <= lengths[b] <= T``.
    reverse : bool
        Process each sample from its last valid step to its first.
    reset_after : bool
        Apply the reset gate after the recurrent product (PyTorch) or
        before it (Cho et al. 2014).
    out : ndarray of shape (B, T, H)
        Written: state after each valid step, 0 past ``lengths[b]``.
    h_last : ndarray of shape (B, H)
        Written: state after each sample's last processed step.
    gates : ndarray of shape (B, T, 4H) or (0, 0, 0)
        Written when not empty: ``[r, z, n, hn]`` per valid step, 0 past
        ``lengths[b]``.
    n_threads : int, default=1
        Threads to use; results do not depend on it.

    Notes
    -----
    All floating arrays are C-contiguous and share one dtype (float32 or
    float64); inputs are validated by the caller.
    """
    cdef floating *gates_ptr = NULL
    if gates.shape[0] > 0 and gates.shape[1] > 0 and gates.shape[2] > 0:
        gates_ptr = &gates[0, 0, 0]
    if x.shape[0] == 0:
        return
    _forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, reset_after,
             out, &h_last[0, 0], gates_ptr, max(1, n_threads))


def cell_forward(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                 const floating[:, ::1] w_hh, const floating[::1] b_ih,
                 const floating[::1] b_hh, const floating[:, ::1] h,
                 bint reset_after, floating[:, ::1] h_new, int n_threads=1):
    """Advance one GRU layer by a single step.

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
        State before the step.
    reset_after : bool
        Apply the reset gate after the recurrent product (PyTorch) or
        before it (Cho et al. 2014).
    h_new : ndarray of shape (B, H)
        Written: state after the step. May not share memory with ``h``.
    n_threads : int, default=1
        Threads to use; results do not depend on it.

    Notes
    -----
    Gives bitwise the same state as :func:`layer_forward` run on one step.
    """
    cdef Py_ssize_t B = x.shape[0]
    if B == 0:
        return
    x3 = np.asarray(x).reshape(B, 1, x.shape[1])
    out3 = np.asarray(h_new).reshape(B, 1, h_new.shape[1])
    lengths = np.ones(B, dtype=np.int64)
    _forward[floating](x3, w_ih, w_hh, b_ih, b_hh, h, lengths, False,
                       reset_after, out3, NULL, NULL, max(1, n_threads))


# ---------------------------------------------------------------------------
# backward

cdef void _backward_block(
        const floating *w_hh, const floating *h0, const int64_t *lengths,
        Py_ssize_t b_start, Py_ssize_t b_stop, Py_ssize_t T, Py_ssize_t H,
        bint reverse, bint reset_after, const floating *out,
        const floating *gates, const floating *d_out,
        const floating *d_h_last, floating *d_h0, floating *d_gi,
        floating *d_ghn, floating *h_in, floating *rh_in,
        floating *work, Py_ssize_t *iwork) noexcept nogil:
    # w_hh (3H, H), h0 (B, H), lengths (B,), out (B, T, H),
    # gates (B, T, 4H), d_out (B, T, H), d_h_last (B, H), d_h0 (B, H) written;
    # kept for the weight gradients, valid for t < lengths[b]:
    #   d_gi (B, T, 3H) gradient of gi, d_ghn (B, T, H) gradient of hn
    #   (reset after), h_in (B, T, H) h_prev, rh_in (B, T, H) r * h_prev
    #   (reset before); samples b_start <= b < b_stop.
    # work (nb, 8H), iwork (2 nb), nb = b_stop - b_start.
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t nb = b_stop - b_start
    cdef floating *dh = work                  # (nb, H) gradient of the state
    cdef floating *dhn = dh + nb * H          # (nb, H) dh' at this step
    cdef floating *dga = dhn + nb * H         # (nb, 3H) gradient of gh
    cdef floating *acc = dga + nb * G         # (nb, H) W_hh^T dgh
    cdef floating *drh = acc + nb * H         # (nb, H) gradient of r * h_prev
    cdef Py_ssize_t *act = iwork
    cdef Py_ssize_t *tt = iwork + nb
    cdef Py_ssize_t b, i, j, s, t, L, na, max_len = 0
    cdef const floating *g
    cdef const floating *r
    cdef const floating *zz
    cdef const floating *n
    cdef const floating *hn
    cdef const floating *hprev
    cdef const floating *dout
    cdef floating *dgi
    cdef floating *dgar
    cdef floating *dhnr
    cdef floating dn, dz, da_n

    for b in range(b_start, b_stop):
        L = lengths[b]
        if L > max_len:
            max_len = L
        memcpy(dh + (b - b_start) * H, d_h_last + b * H, H * sizeof(floating))

    for s in range(max_len - 1, -1, -1):
        na = 0
        for b in range(b_start, b_stop):
            L = lengths[b]
            if s >= L:
                continue
            act[na] = b
            tt[na] = _time_index(s, L, reverse)
            na = na + 1

        for i in range(na):
            b = act[i]
            t = tt[i]
            if s == 0:
                hprev = h0 + b * H
            elif reverse:
                hprev = out + (b * T + t + 1) * H
            else:
                hprev = out + (b * T + t - 1) * H
            g = gates + (b * T + t) * 4 * H
            r = g
            zz = g + H
            n = g + 2 * H
            hn = g + 3 * H
            dout = d_out + (b * T + t) * H
            dhnr = dhn + i * H
            dgi = d_gi + (b * T + t) * G
            dgar = dga + i * G
            memcpy(h_in + (b * T + t) * H, hprev, H * sizeof(floating))
            for j in range(H):
                # dh' = dh + d_out ; dn = dh' (1 - z) ; dz = dh' (h_prev - n)
                dhnr[j] = dh[(b - b_start) * H + j] + dout[j]
                dn = dhnr[j] * (1 - zz[j])
                dz = dhnr[j] * (hprev[j] - n[j])
                # da_n = dn (1 - n^2) ; da_z = dz z (1 - z)
                da_n = dn * (1 - n[j] * n[j])
                dgi[H + j] = dz * zz[j] * (1 - zz[j])
                dgi[2 * H + j] = da_n
                dgar[H + j] = dgi[H + j]
                dgar[2 * H + j] = da_n
            if reset_after:
                for j in range(H):
                    # da_r = da_n hn r (1 - r) ; d(gh_n) = da_n r
                    dgi[j] = dgi[2 * H + j] * hn[j] * r[j] * (1 - r[j])
                    dgar[j] = dgi[j]
                    dgar[2 * H + j] = dgi[2 * H + j] * r[j]
                memcpy(d_ghn + (b * T + t) * H, dgar + 2 * H,
                       H * sizeof(floating))

        if reset_after:
            # dh_prev = dh' * z + W_hh^T [da_r, da_z, da_n * r]
            for i in range(na):
                memset(acc + i * H, 0, H * sizeof(floating))
            _gemm(na, H, G, dga, G, 1, w_hh, H, acc, H)
            for i in range(na):
                b = act[i]
                zz = gates + (b * T + tt[i]) * 4 * H + H
                for j in range(H):
                    dh[(b - b_start) * H + j] = (
                        dhn[i * H + j] * zz[j] + acc[i * H + j])
        else:
            # d(r * h_prev) = W_hn^T da_n ; da_r = d(r h_prev) * h_prev * r (1 - r)
            for i in range(na):
                memset(drh + i * H, 0, H * sizeof(floating))
            _gemm(na, H, H, dga + 2 * H, G, 1, w_hh + 2 * H * H, H, drh, H)
            for i in range(na):
                b = act[i]
                t = tt[i]
                g = gates + (b * T + t) * 4 * H
                r = g
                hprev = h_in + (b * T + t) * H
                dgi = d_gi + (b * T + t) * G
                for j in range(H):
                    dgi[j] = drh[i * H + j] * hprev[j] * r[j] * (1 - r[j])
                    dga[i * G + j] = dgi[j]
                    rh_in[(b * T + t) * H + j] = r[j] * hprev[j]
                memset(acc + i * H, 0, H * sizeof(floating))
            # dh_prev = dh' * z + d(r h_prev) * r + W_hrz^T [da_r, da_z]
            _gemm(na, H, 2 * H, dga, G, 1, w_hh, H, acc, H)
            for i in range(na):
                b = act[i]
                g = gates + (b * T + tt[i]) * 4 * H
                r = g
                zz = g + H
                for j in range(H):
                    dh[(b - b_start) * H + j] = (
                        dhn[i * H + j] * zz[j] + drh[i * H + j] * r[j]
                        + acc[i * H + j])

    for b in range(b_start, b_stop):
        memcpy(d_h0 + b * H, dh + (b - b_start) * H, H * sizeof(floating))


cdef void _input_grad_block(
        const floating *w_ih, const int64_t *lengths, Py_ssize_t b_start,
        Py_ssize_t b_stop, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
        const floating *d_gi, floating *d_x) noexcept nogil:
    # w_ih (3H, I), lengths (B,), d_gi (B, T, 3H), d_x (B, T, I) written
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t b, L
    for b in range(b_start, b_stop):
        L = lengths[b]
        memset(d_x + b * T * I, 0, T * I * sizeof(floating))
        # d_x = d_gi @ W_ih
        _gemm(L, I, G, d_gi + b * T * G, G, 1, w_ih, I, d_x + b * T * I, I)


cdef void _weight_grad_cols(
        const floating *x, const int64_t *lengths, Py_ssize_t B, Py_ssize_t T,
        Py_ssize_t I, Py_ssize_t H, bint reset_after, bint full,
        const floating *d_gi, const floating *d_ghn, const floating *h_in,
        const floating *rh_in, Py_ssize_t c0, Py_ssize_t c1,
        floating *dwihT, floating *dwhhT, floating *d_w_ih, floating *d_w_hh,
        floating *d_b_ih, floating *d_b_hh) noexcept nogil:
    # columns c0 <= c < c1 of the gate axis (3H), inside one gate block.
    # x (B, T, I), d_gi (B, T, 3H), d_ghn, h_in, rh_in (B, T, H),
    # dwihT (I, 3H), dwhhT (H, 3H) scratch; d_w_ih (3H, I), d_w_hh (3H, H),
    # d_b_ih, d_b_hh (3H,) written for these columns.
    # Sums run over samples, then steps, in ascending order.
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t nc = c1 - c0
    cdef Py_ssize_t b, t, i, j, L, nbatch, K
    cdef bint n_block = c0 >= 2 * H
    cdef const floating *hsrc = rh_in if (n_block and not reset_after) else h_in
    cdef const floating *gsrc
    cdef Py_ssize_t gld, gcol
    if n_block and reset_after:
        gsrc = d_ghn
        gld = H
        gcol = c0 - 2 * H
    else:
        gsrc = d_gi
        gld = G
        gcol = c0

    for i in range(I):
        memset(dwihT + i * G + c0, 0, nc * sizeof(floating))
    for i in range(H):
        memset(dwhhT + i * G + c0, 0, nc * sizeof(floating))
    memset(d_b_ih + c0, 0, nc * sizeof(floating))
    memset(d_b_hh + c0, 0, nc * sizeof(floating))

    # with all samples full length, one product covers the whole batch
    nbatch = 1 if full else B
    for b in range(nbatch):
        K = B * T if full else lengths[b]
        # dW_ih^T += X^T dGI ; dW_hh^T += H_prev^T dGH
        _gemm(I, nc, K, x + b * T * I, 1, I, d_gi + b * T * G + c0, G,
              dwihT + c0, G)
        _gemm(H, nc, K, hsrc + b * T * H, 1, H, gsrc + b * T * gld + gcol,
              gld, dwhhT + c0, G)
        for t in range(K):
            for j in range(nc):
                d_b_ih[c0 + j] = d_b_ih[c0 + j] + d_gi[(b * T + t) * G + c0 + j]
            for j in range(nc):
                d_b_hh[c0 + j] = (d_b_hh[c0 + j]
                                  + gsrc[(b * T + t) * gld + gcol + j])

    for j in range(c0, c1):
        for i in range(I):
            d_w_ih[j * I + i] = dwihT[i * G + j]
        for i in range(H):
            d_w_hh[j * H + i] = dwhhT[i * G + j]


def layer_backward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih,
                   const floating[:, ::1] w_hh, const floating[:, ::1] h0,
                   const int64_t[::1] lengths, bint reverse, bint reset_after,
                   const floating[:, :, ::1] out,
                   const floating[:, :, ::1] gates,
                   const floating[:, :, ::1] d_out,
                   const floating[:, ::1] d_h_last, floating[:, :, ::1] d_x,
                   floating[:, ::1] d_h0, floating[:, ::1] d_w_ih,
                   floating[:, ::1] d_w_hh, floating[::1] d_b_ih,
                   floating[::1] d_b_hh, int n_threads=1):
    """Gradients of one GRU layer in one direction.

    Parameters
    ----------
    x : ndarray of shape (B, T, I)
        Layer input given to :func:`layer_forward`.
    w_ih : ndarray of shape (3H, I)
        Input weights.
    w_hh : ndarray of shape (3H, H)
        Recurrent weights.
    h0 : ndarray of shape (B, H)
        Initial state.
    lengths : ndarray of shape (B,), dtype int64
        Valid steps per sample.
    reverse : bool
        Direction used in the forward pass.
    reset_after : bool
        Gate variant used in the forward pass.
    out : ndarray of shape (B, T, H)
        ``out`` written by :func:`layer_forward` for the same inputs.
    gates : ndarray of shape (B, T, 4H)
        ``gates`` written by :func:`layer_forward` for the same inputs.
    d_out : ndarray of shape (B, T, H)
        Gradient of the loss with respect to ``out`` (ignored past
        ``lengths[b]``).
    d_h_last : ndarray of shape (B, H)
        Gradient with respect to ``h_last``.
    d_x : ndarray of shape (B, T, I)
        Written: gradient with respect to ``x``, 0 past ``lengths[b]``.
    d_h0 : ndarray of shape (B, H)
        Written: gradient with respect to ``h0``.
    d_w_ih : ndarray of shape (3H, I)
        Written (overwritten, not accumulated).
    d_w_hh : ndarray of shape (3H, H)
        Written.
    d_b_ih, d_b_hh : ndarray of shape (3H,)
        Written.
    n_threads : int, default=1
        Threads to use; results do not depend on it.
    """
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = w_hh.shape[1], G = 3 * H
    cdef Py_ssize_t n_blocks, per_block, blk, b_start, b_stop, b
    cdef Py_ssize_t n_tasks, per_gate, task, gate, piece, c0, c1
    cdef bint full = True
    n_threads = max(1, n_threads)
    dtype = np.float32 if floating is float else np.float64
    if B == 0 or T == 0:
        d_w_ih[...] = 0
        d_w_hh[...] = 0
        d_b_ih[...] = 0
        d_b_hh[...] = 0
        return
    for b in range(B):
        if lengths[b] != T:
            full = False

    n_blocks = _n_blocks(B, n_threads)
    per_block = _ceil_div(B, n_blocks)
    n_blocks = _ceil_div(B, per_block)
    cdef floating[:, :, ::1] d_gi = np.empty((B, T, G), dtype=dtype)
    cdef floating[:, :, ::1] h_in = np.empty((B, T, H), dtype=dtype)
    cdef floating[:, :, ::1] aux = np.empty((B, T, H), dtype=dtype)
    cdef floating[:, ::1] work = np.empty((n_blocks, per_block * 8 * H),
                                          dtype=dtype)
    cdef Py_ssize_t[:, ::1] iwork = np.empty((n_blocks, 2 * per_block),
                                             dtype=np.intp)
    cdef floating[:, ::1] dwihT = np.empty((I, G), dtype=dtype)
    cdef floating[:, ::1] dwhhT = np.empty((H, G), dtype=dtype)

    # column pieces of each gate block, one task each, aligned to 16 columns
    per_gate = max(1, min(n_threads, H // 16))
    n_tasks = 3 * per_gate

    with nogil:
        for blk in prange(n_blocks, schedule="static", num_threads=n_threads):
            b_start = blk * per_block
            b_stop = min(b_start + per_block, B)
            _backward_block(&w_hh[0, 0], &h0[0, 0], &lengths[0], b_start,
                            b_stop, T, H, reverse, reset_after,
                            &out[0, 0, 0], &gates[0, 0, 0], &d_out[0, 0, 0],
                            &d_h_last[0, 0], &d_h0[0, 0], &d_gi[0, 0, 0],
                            &aux[0, 0, 0], &h_in[0, 0, 0], &aux[0, 0, 0],
                            &work[blk, 0], &iwork[blk, 0])
            _input_grad_block(&w_ih[0, 0], &lengths[0], b_start, b_stop, T,
                              I, H, &d_gi[0, 0, 0], &d_x[0, 0, 0])

        for task in prange(n_tasks, schedule="static", num_threads=n_threads):
            gate = task // per_gate
            piece = task % per_gate
            c0 = gate * H + ((H * piece) // per_gate) // 16 * 16
            if piece == per_gate - 1:
                c1 = (gate + 1) * H
            else:
                c1 = gate * H + ((H * (piece + 1)) // per_gate) // 16 * 16
            _weight_grad_cols(&x[0, 0, 0], &lengths[0], B, T, I, H,
                              reset_after, full, &d_gi[0, 0, 0],
                              &aux[0, 0, 0], &h_in[0, 0, 0], &aux[0, 0, 0],
                              c0, c1, &dwihT[0, 0], &dwhhT[0, 0],
                              &d_w_ih[0, 0], &d_w_hh[0, 0], &d_b_ih[0],
                              &d_b_hh[0])
