# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False, nonecheck=False
"""Compiled GRU kernels (Cython): the fallback backend.

Same functions, arguments and shapes as :mod:`numgru._reference`; see its
module docstring. Samples are split into blocks; with several threads the
blocks (and, in the backward pass, column pieces of the weight gradients)
are work items split statically over OpenMP threads
(``prange(..., nogil=True, schedule="static")``), and small calls (under
``_serial_flops``) run on the calling thread alone. Every value a sample produces is computed by the
same sequence of floating-point operations whatever the thread count, the
block size, the batch size or the sample's position in the batch: matrix
products accumulate over their inner index in ascending order, one element at
a time (vector lanes never combine), with the same multiply-add in vector and
scalar code, and the compiler is not allowed to contract other expressions
into fused multiply-adds. The backward pass runs in chunks of steps (see
:mod:`numgru._chunks`), so its work arrays hold one chunk, not the whole
sequence. Weight and bias gradients are owned column by column by one work
item and summed chunk by chunk (last steps first), within a chunk over
samples, then steps in ascending time order. :func:`cell_forward` reads
the weights as they are (no packing) and gives the same bits as one step of
:func:`layer_forward`.

``OPENMP_ENABLED`` tells whether the module was built with OpenMP; without
it the work items run one after another on the calling thread, with the same
results. ``SIMD_LEVEL``
names the instruction set the matrix products and float32 activations use,
chosen once at import from what the CPU supports.
"""

from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, free
from cpython.buffer cimport PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE
from libc.math cimport exp, tanh
from cython cimport floating
from cython.parallel cimport prange

import os

import numpy as np

from ._aligned import aligned_empty
from ._chunks import chunk_steps, step_chunks

__all__ = ["layer_forward", "layer_backward", "cell_forward",
           "step_prepare", "step_forward", "OPENMP_ENABLED", "SIMD_LEVEL"]

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
    /* eight rows at a time: eight independent chains */
    #define NG_GEMM_COLUMNS(T, MADD_S)                                         \
        for (ptrdiff_t n = n0; n < N; n++) {                                   \
            ptrdiff_t m = 0;                                                   \
            for (; m + 8 <= M; m += 8) {                                       \
                T c[8];                                                        \
                for (int i = 0; i < 8; i++) c[i] = C[(m + i) * ldc + n];       \
                for (ptrdiff_t k = 0; k < kn; k++) {                           \
                    const T bk = Bk[k * ldb + n];                              \
                    const T *ak = Ak + m * sam + k * sak;                      \
                    for (int i = 0; i < 8; i++)                                \
                        c[i] = MADD_S(ak[i * sam], bk, c[i]);                  \
                }                                                              \
                for (int i = 0; i < 8; i++) C[(m + i) * ldc + n] = c[i];       \
            }                                                                  \
            for (; m < M; m++) {                                               \
                T acc = C[m * ldc + n];                                        \
                for (ptrdiff_t k = 0; k < kn; k++)                             \
                    acc = MADD_S(Ak[m * sam + k * sak], Bk[k * ldb + n], acc); \
                C[m * ldc + n] = acc;                                          \
            }                                                                  \
        }


    /* the last N < L columns: C[m, n] += sum_k A[m, k] * B[k, n] */
    #define NG_DEFINE_TAIL(NAME, ATTR, T, MADD_S)                              \
    ATTR static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t kn,              \
        const T *Ak, ptrdiff_t sam, ptrdiff_t sak,                             \
        const T *Bk, ptrdiff_t ldb, T *C, ptrdiff_t ldc)                       \
    {                                                                          \
        const ptrdiff_t n0 = 0;                                                \
        NG_GEMM_COLUMNS(T, MADD_S)                                             \
    }
    NG_DEFINE_TAIL(ng_tail_float_base, NG_ATTR_BASE, float, NG_MADD_PLAIN)
    NG_DEFINE_TAIL(ng_tail_double_base, NG_ATTR_BASE, double, NG_MADD_PLAIN)
    #if NG_DISPATCH
    #include <immintrin.h>
    NG_DEFINE_TAIL(ng_tail_float_v3, NG_ATTR_V3, float, __builtin_fmaf)
    NG_DEFINE_TAIL(ng_tail_double_v3, NG_ATTR_V3, double, __builtin_fma)
    /* AVX-512: the columns as the first lanes of masked vectors, eight rows
       at a time; the same fused multiply-add per element, k ascending */
    #define NG_DEFINE_TAIL_V4(NAME, T, VEC, MASK, LOADZ, STORE, SET1, FMADD) \
    NG_ATTR_V4 static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t kn,        \
        const T *Ak, ptrdiff_t sam, ptrdiff_t sak,                             \
        const T *Bk, ptrdiff_t ldb, T *C, ptrdiff_t ldc)                       \
    {                                                                          \
        const MASK mask = (MASK)((1u << N) - 1u);                              \
        ptrdiff_t m = 0;                                                       \
        for (; m + 8 <= M; m += 8) {                                           \
            T *c = C + m * ldc;                                                \
            VEC x0 = LOADZ(mask, c), x1 = LOADZ(mask, c + ldc);                \
            VEC x2 = LOADZ(mask, c + 2 * ldc), x3 = LOADZ(mask, c + 3 * ldc);  \
            VEC x4 = LOADZ(mask, c + 4 * ldc), x5 = LOADZ(mask, c + 5 * ldc);  \
            VEC x6 = LOADZ(mask, c + 6 * ldc), x7 = LOADZ(mask, c + 7 * ldc);  \
            const T *a = Ak + m * sam;                                         \
            for (ptrdiff_t k = 0; k < kn; k++) {                               \
                const VEC b = LOADZ(mask, Bk + k * ldb);                       \
                const T *ak = a + k * sak;                                     \
                x0 = FMADD(SET1(ak[0]), b, x0);                                \
                x1 = FMADD(SET1(ak[sam]), b, x1);                              \
                x2 = FMADD(SET1(ak[2 * sam]), b, x2);                          \
                x3 = FMADD(SET1(ak[3 * sam]), b, x3);                          \
                x4 = FMADD(SET1(ak[4 * sam]), b, x4);                          \
                x5 = FMADD(SET1(ak[5 * sam]), b, x5);                          \
                x6 = FMADD(SET1(ak[6 * sam]), b, x6);                          \
                x7 = FMADD(SET1(ak[7 * sam]), b, x7);                          \
            }                                                                  \
            STORE(c, mask, x0); STORE(c + ldc, mask, x1);                      \
            STORE(c + 2 * ldc, mask, x2); STORE(c + 3 * ldc, mask, x3);        \
            STORE(c + 4 * ldc, mask, x4); STORE(c + 5 * ldc, mask, x5);        \
            STORE(c + 6 * ldc, mask, x6); STORE(c + 7 * ldc, mask, x7);        \
        }                                                                      \
        for (; m < M; m++) {                                                   \
            T *c = C + m * ldc;                                                \
            VEC x0 = LOADZ(mask, c);                                           \
            const T *a = Ak + m * sam;                                         \
            for (ptrdiff_t k = 0; k < kn; k++)                                 \
                x0 = FMADD(SET1(a[k * sak]), LOADZ(mask, Bk + k * ldb), x0);   \
            STORE(c, mask, x0);                                                \
        }                                                                      \
    }
    NG_DEFINE_TAIL_V4(ng_tail_float_v4, float, __m512, __mmask16,
                      _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps,
                      _mm512_set1_ps, _mm512_fmadd_ps)
    NG_DEFINE_TAIL_V4(ng_tail_double_v4, double, __m512d, __mmask8,
                      _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd,
                      _mm512_set1_pd, _mm512_fmadd_pd)
    #endif

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

    #define NG_DEFINE_GEMM(NAME, ATTR, T, V, VU, L, MADD_V, MADD_S, MR8, TAIL) \
    ATTR static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,               \
        const T *A, ptrdiff_t sam, ptrdiff_t sak,                              \
        const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc)                        \
    {                                                                          \
        if (M <= 0 || N <= 0) return;                                          \
        for (ptrdiff_t k0 = 0; k0 < K; k0 += NG_KC) {                          \
            const ptrdiff_t kn = K - k0 < NG_KC ? K - k0 : NG_KC;              \
            const T *Ak = A + k0 * sak;                                        \
            const T *Bk = B + k0 * ldb;                                        \
            /* rows m_t .. M-1, past the register tiles (which take            \
               M - M % NG_MR rows): four vectors at a time, four               \
               independent fma chains, where the one-row loops below           \
               take two */                                                     \
            const ptrdiff_t m_t = M - M % NG_MR;                               \
            const ptrdiff_t n_q = N - N % (4 * L);                             \
            for (ptrdiff_t m = m_t; m < M; m++) {                              \
                const T *a0 = Ak + m * sam;                                    \
                for (ptrdiff_t n = 0; n < n_q; n += 4 * L) {                   \
                    T *c0 = C + m * ldc + n;                                   \
                    V x0 = *(const VU *)c0, x1 = *(const VU *)(c0 + L);        \
                    V x2 = *(const VU *)(c0 + 2 * L);                          \
                    V x3 = *(const VU *)(c0 + 3 * L);                          \
                    const T *b = Bk + n;                                       \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb) {             \
                        T s0 = a0[k * sak];                                    \
                        x0 = MADD_V(s0, *(const VU *)b, x0);                   \
                        x1 = MADD_V(s0, *(const VU *)(b + L), x1);             \
                        x2 = MADD_V(s0, *(const VU *)(b + 2 * L), x2);         \
                        x3 = MADD_V(s0, *(const VU *)(b + 3 * L), x3);         \
                    }                                                          \
                    *(VU *)c0 = x0; *(VU *)(c0 + L) = x1;                      \
                    *(VU *)(c0 + 2 * L) = x2; *(VU *)(c0 + 3 * L) = x3;        \
                }                                                              \
            }                                                                  \
            ptrdiff_t n0 = 0;                                                  \
            for (; n0 + 2 * L <= N; n0 += 2 * L) {                             \
                ptrdiff_t m0 = 0;                                              \
                if (MR8) for (; m0 + 8 <= M; m0 += 8) {                        \
                    const T *a0 = Ak + m0 * sam;                               \
                    T *c0 = C + m0 * ldc + n0;                                 \
                    V x00 = *(const VU *)c0, x01 = *(const VU *)(c0 + L);      \
                    V x10 = *(const VU *)(c0 + ldc);                           \
                    V x11 = *(const VU *)(c0 + ldc + L);                       \
                    V x20 = *(const VU *)(c0 + 2 * ldc);                       \
                    V x21 = *(const VU *)(c0 + 2 * ldc + L);                   \
                    V x30 = *(const VU *)(c0 + 3 * ldc);                       \
                    V x31 = *(const VU *)(c0 + 3 * ldc + L);                   \
                    V x40 = *(const VU *)(c0 + 4 * ldc);                       \
                    V x41 = *(const VU *)(c0 + 4 * ldc + L);                   \
                    V x50 = *(const VU *)(c0 + 5 * ldc);                       \
                    V x51 = *(const VU *)(c0 + 5 * ldc + L);                   \
                    V x60 = *(const VU *)(c0 + 6 * ldc);                       \
                    V x61 = *(const VU *)(c0 + 6 * ldc + L);                   \
                    V x70 = *(const VU *)(c0 + 7 * ldc);                       \
                    V x71 = *(const VU *)(c0 + 7 * ldc + L);                   \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb) {             \
                        V b0 = *(const VU *)b, b1 = *(const VU *)(b + L);      \
                        const T *ak = a0 + k * sak;                            \
                        T s0 = ak[0], s1 = ak[sam], s2 = ak[2 * sam];          \
                        T s3 = ak[3 * sam], s4 = ak[4 * sam];                  \
                        T s5 = ak[5 * sam], s6 = ak[6 * sam];                  \
                        T s7 = ak[7 * sam];                                    \
                        x00 = MADD_V(s0, b0, x00); x01 = MADD_V(s0, b1, x01);  \
                        x10 = MADD_V(s1, b0, x10); x11 = MADD_V(s1, b1, x11);  \
                        x20 = MADD_V(s2, b0, x20); x21 = MADD_V(s2, b1, x21);  \
                        x30 = MADD_V(s3, b0, x30); x31 = MADD_V(s3, b1, x31);  \
                        x40 = MADD_V(s4, b0, x40); x41 = MADD_V(s4, b1, x41);  \
                        x50 = MADD_V(s5, b0, x50); x51 = MADD_V(s5, b1, x51);  \
                        x60 = MADD_V(s6, b0, x60); x61 = MADD_V(s6, b1, x61);  \
                        x70 = MADD_V(s7, b0, x70); x71 = MADD_V(s7, b1, x71);  \
                    }                                                          \
                    *(VU *)c0 = x00; *(VU *)(c0 + L) = x01;                    \
                    *(VU *)(c0 + ldc) = x10; *(VU *)(c0 + ldc + L) = x11;      \
                    *(VU *)(c0 + 2 * ldc) = x20;                               \
                    *(VU *)(c0 + 2 * ldc + L) = x21;                           \
                    *(VU *)(c0 + 3 * ldc) = x30;                               \
                    *(VU *)(c0 + 3 * ldc + L) = x31;                           \
                    *(VU *)(c0 + 4 * ldc) = x40;                               \
                    *(VU *)(c0 + 4 * ldc + L) = x41;                           \
                    *(VU *)(c0 + 5 * ldc) = x50;                               \
                    *(VU *)(c0 + 5 * ldc + L) = x51;                           \
                    *(VU *)(c0 + 6 * ldc) = x60;                               \
                    *(VU *)(c0 + 6 * ldc + L) = x61;                           \
                    *(VU *)(c0 + 7 * ldc) = x70;                               \
                    *(VU *)(c0 + 7 * ldc + L) = x71;                           \
                }                                                              \
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
                for (; m0 < (n0 < n_q ? m_t : M); m0++) {                      \
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
                ptrdiff_t m0 = 0;                                              \
                for (; m0 + 4 <= M; m0 += 4) {                                 \
                    const T *a0 = Ak + m0 * sam;                               \
                    T *c0 = C + m0 * ldc + n0;                                 \
                    V x0 = *(const VU *)c0;                                    \
                    V x1 = *(const VU *)(c0 + ldc);                            \
                    V x2 = *(const VU *)(c0 + 2 * ldc);                        \
                    V x3 = *(const VU *)(c0 + 3 * ldc);                        \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb) {             \
                        const V bv = *(const VU *)b;                           \
                        const T *ak = a0 + k * sak;                            \
                        x0 = MADD_V(ak[0], bv, x0);                            \
                        x1 = MADD_V(ak[sam], bv, x1);                          \
                        x2 = MADD_V(ak[2 * sam], bv, x2);                      \
                        x3 = MADD_V(ak[3 * sam], bv, x3);                      \
                    }                                                          \
                    *(VU *)c0 = x0; *(VU *)(c0 + ldc) = x1;                    \
                    *(VU *)(c0 + 2 * ldc) = x2; *(VU *)(c0 + 3 * ldc) = x3;    \
                }                                                              \
                for (; m0 < M; m0++) {                                         \
                    const T *a0 = Ak + m0 * sam;                               \
                    T *c0 = C + m0 * ldc + n0;                                 \
                    V x0 = *(const VU *)c0;                                    \
                    const T *b = Bk + n0;                                      \
                    for (ptrdiff_t k = 0; k < kn; k++, b += ldb)               \
                        x0 = MADD_V(a0[k * sak], *(const VU *)b, x0);          \
                    *(VU *)c0 = x0;                                            \
                }                                                              \
            }                                                                  \
            if (n0 < N)                                                        \
                TAIL(M, N - n0, kn, Ak, sam, sak, Bk + n0, ldb, C + n0, ldc);  \
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
                   ng_vuf16, 4, NG_MADD_PLAIN, NG_MADD_PLAIN, 0,
                   ng_tail_float_base)
    NG_DEFINE_GEMM(ng_gemm_double_base, NG_ATTR_BASE, double, ng_vd16,
                   ng_vud16, 2, NG_MADD_PLAIN, NG_MADD_PLAIN, 0,
                   ng_tail_double_base)
    #if NG_DISPATCH
    NG_DEFINE_VFMA(ng_fma_f32, float, ng_vf32, 8, __builtin_fmaf)
    NG_DEFINE_VFMA(ng_fma_f64, float, ng_vf64, 16, __builtin_fmaf)
    NG_DEFINE_VFMA(ng_fma_d32, double, ng_vd32, 4, __builtin_fma)
    NG_DEFINE_VFMA(ng_fma_d64, double, ng_vd64, 8, __builtin_fma)
    NG_DEFINE_GEMM(ng_gemm_float_v3, NG_ATTR_V3, float, ng_vf32, ng_vuf32, 8,
                   ng_fma_f32, __builtin_fmaf, 0, ng_tail_float_v3)
    NG_DEFINE_GEMM(ng_gemm_double_v3, NG_ATTR_V3, double, ng_vd32, ng_vud32,
                   4, ng_fma_d32, __builtin_fma, 0, ng_tail_double_v3)
    NG_DEFINE_GEMM(ng_gemm_float_v4, NG_ATTR_V4, float, ng_vf64, ng_vuf64, 16,
                   ng_fma_f64, __builtin_fmaf, 1, ng_tail_float_v4)
    NG_DEFINE_GEMM(ng_gemm_double_v4, NG_ATTR_V4, double, ng_vd64, ng_vud64,
                   8, ng_fma_d64, __builtin_fma, 1, ng_tail_double_v4)
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
       Written without branches so that it vectorises. Each Horner step is
       MADD(a, b, c) = a * b + c: a fused multiply-add in the vector code
       (the Numba kernels' bits), a multiply then an add in the baseline
       code. */
    #define NG_TANH_F32(x_in, out, MADD)                                       \
        do {                                                                   \
            float x = (x_in);                                                  \
            x = x < 7.90531110763549805f ? x : 7.90531110763549805f;           \
            x = x > -7.90531110763549805f ? x : -7.90531110763549805f;         \
            float x2 = x * x;                                                  \
            float p = MADD(x2, -2.76076847742355e-16f, 2.00018790482477e-13f); \
            p = MADD(p, x2, -8.60467152213735e-11f);                           \
            p = MADD(p, x2, 5.12229709037114e-08f);                            \
            p = MADD(p, x2, 1.48572235717979e-05f);                            \
            p = MADD(p, x2, 6.37261928875436e-04f);                            \
            p = MADD(p, x2, 4.89352455891786e-03f);                            \
            p = p * x;                                                         \
            float q = MADD(x2, 1.19825839466702e-06f, 1.18534705686654e-04f); \
            q = MADD(q, x2, 2.26843463243900e-03f);                            \
            q = MADD(q, x2, 4.89352518554385e-03f);                            \
            (out) = p / q;                                                     \
        } while (0)

    /* float32 sigmoid: 1 / (1 + exp(-x)) = (1 + tanh(x/2)) / 2 */
    #define NG_SIGMOID_F32(x_in, out, MADD)                                    \
        do {                                                                   \
            float t_;                                                          \
            NG_TANH_F32(0.5f * (x_in), t_, MADD);                              \
            (out) = MADD(0.5f, t_, 0.5f);                                      \
        } while (0)

    /* v[i] = tanh(v[i]) and v[i] = sigmoid(v[i]) */
    #define NG_DEFINE_ACT_F32(SUF, ATTR, MADD)                                 \
    ATTR static void ng_tanh_float_##SUF(ptrdiff_t n, float *v)                \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) NG_TANH_F32(v[i], v[i], MADD);       \
    }                                                                          \
    ATTR static void ng_sigmoid_float_##SUF(ptrdiff_t n, float *v)             \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) NG_SIGMOID_F32(v[i], v[i], MADD);    \
    }
    NG_DEFINE_ACT_F32(base, NG_ATTR_BASE, NG_MADD_PLAIN)
    #if NG_DISPATCH
    NG_DEFINE_ACT_F32(v3, NG_ATTR_V3, __builtin_fmaf)
    NG_DEFINE_ACT_F32(v4, NG_ATTR_V4, __builtin_fmaf)
    #endif

    /* The reset-after forward step of one sample from gi = W_ih x + b_ih and
       gh = W_hh h + b_hh (3H each): h_new into out (H,) and [r, z, n, hn]
       into g (4H,), in one pass (the stores of g, a row of the training
       cache, spread among the arithmetic). The same operations in the same
       order as ng_add, ng_sigmoid_*, ng_addmul, ng_tanh_* and ng_hnew, so
       the same bits; SIGMOID and TANH(x, out, MADD) set out to the
       activation of x for the type T. */
    #define NG_DEFINE_FWD_AFTER(NAME, ATTR, T, SIGMOID, TANH, MADD)            \
    ATTR static void NAME(ptrdiff_t H,                                         \
        const T *__restrict gi, const T *__restrict gh,                        \
        const T *__restrict h, T *__restrict out, T *__restrict g)             \
    {                                                                          \
        const T one = 1;                                                       \
        for (ptrdiff_t j = 0; j < H; j++) {                                    \
            T r, z, n;                                                         \
            SIGMOID(gi[j] + gh[j], r, MADD);                                   \
            SIGMOID(gi[H + j] + gh[H + j], z, MADD);                           \
            const T hn = gh[2 * H + j];                                        \
            TANH(gi[2 * H + j] + r * hn, n, MADD);                             \
            out[j] = (one - z) * n + z * h[j];                                 \
            g[j] = r;                                                          \
            g[H + j] = z;                                                      \
            g[2 * H + j] = n;                                                  \
            g[3 * H + j] = hn;                                                 \
        }                                                                      \
    }
    NG_DEFINE_FWD_AFTER(ng_fwd_after_float_base, NG_ATTR_BASE, float,
                        NG_SIGMOID_F32, NG_TANH_F32, NG_MADD_PLAIN)
    #if NG_DISPATCH
    NG_DEFINE_FWD_AFTER(ng_fwd_after_float_v3, NG_ATTR_V3, float,
                        NG_SIGMOID_F32, NG_TANH_F32, __builtin_fmaf)
    NG_DEFINE_FWD_AFTER(ng_fwd_after_float_v4, NG_ATTR_V4, float,
                        NG_SIGMOID_F32, NG_TANH_F32, __builtin_fmaf)
    #endif

    static void ng_tanh_double(ptrdiff_t n, double *v)
    {
        for (ptrdiff_t i = 0; i < n; i++) v[i] = tanh(v[i]);
    }

    static inline double ng_sigmoid_f64(double x)
    {
        return 1.0 / (1.0 + exp(-x));
    }

    static void ng_sigmoid_double(ptrdiff_t n, double *v)
    {
        for (ptrdiff_t i = 0; i < n; i++) v[i] = ng_sigmoid_f64(v[i]);
    }

    /* C[m, n] += sum_k A[m, k] * W[n, k] (m < M, n < N): the product with
       W transposed, without packing W. Every element is updated one k after
       another in ascending order with the same madd as ng_gemm_*, so it has
       the same bits as ng_gemm on the transposed W. The AVX-512 variant
       gathers 16 (float) or 8 (double) rows of W per k. */
    #define NG_DEFINE_GEMM_NT_SCALAR(NAME, ATTR, T, MADD_S)                    \
    ATTR static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,               \
        const T *A, ptrdiff_t lda, const T *W, ptrdiff_t ldw,                  \
        T *C, ptrdiff_t ldc)                                                   \
    {                                                                          \
        for (ptrdiff_t m = 0; m < M; m++)                                      \
            for (ptrdiff_t k = 0; k < K; k++) {                                \
                const T a = A[m * lda + k];                                    \
                T *c = C + m * ldc;                                            \
                for (ptrdiff_t n = 0; n < N; n++)                              \
                    c[n] = MADD_S(a, W[n * ldw + k], c[n]);                    \
            }                                                                  \
    }
    NG_DEFINE_GEMM_NT_SCALAR(ng_gemm_nt_float_base, NG_ATTR_BASE, float,
                             NG_MADD_PLAIN)
    NG_DEFINE_GEMM_NT_SCALAR(ng_gemm_nt_double_base, NG_ATTR_BASE, double,
                             NG_MADD_PLAIN)
    /* dst (cols, rows) = src (rows, cols) transposed, in blocks of 16 x 16 */
    #define NG_TRANSPOSE(NAME, T)                                              \
    static void NAME(ptrdiff_t rows, ptrdiff_t cols, const T *src, T *dst)     \
    {                                                                          \
        for (ptrdiff_t i0 = 0; i0 < rows; i0 += 16)                            \
            for (ptrdiff_t j0 = 0; j0 < cols; j0 += 16)                        \
                for (ptrdiff_t i = i0; i < rows && i < i0 + 16; i++)           \
                    for (ptrdiff_t j = j0; j < cols && j < j0 + 16; j++)       \
                        dst[j * rows + i] = src[i * cols + j];                 \
    }
    NG_TRANSPOSE(ng_transpose_float_base, float)
    NG_TRANSPOSE(ng_transpose_double, double)

    #if NG_DISPATCH
    NG_DEFINE_GEMM_NT_SCALAR(ng_gemm_nt_float_v3, NG_ATTR_V3, float,
                             __builtin_fmaf)
    NG_DEFINE_GEMM_NT_SCALAR(ng_gemm_nt_double_v3, NG_ATTR_V3, double,
                             __builtin_fma)
    #include <immintrin.h>
    /* r[j] (16 rows of 16 floats) transposed in place */
    NG_ATTR_V4 static inline __attribute__((always_inline)) void
    ng_transpose16_v4(__m512 *r)
    {
        __m512 t[16];
    #pragma GCC unroll 16
        for (int i = 0; i < 8; i++) {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
    #pragma GCC unroll 16
        for (int i = 0; i < 4; i++) {
            __m512d a = _mm512_castps_pd(t[4 * i]);
            __m512d b = _mm512_castps_pd(t[4 * i + 1]);
            __m512d c = _mm512_castps_pd(t[4 * i + 2]);
            __m512d d = _mm512_castps_pd(t[4 * i + 3]);
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
    #pragma GCC unroll 16
        for (int j = 0; j < 4; j++) {
            t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
            t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
            t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
            t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
        }
    #pragma GCC unroll 16
        for (int j = 0; j < 4; j++) {
            r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
            r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
            r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
            r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
        }
    }

    /* as ng_transpose_float_base: 16 x 16 blocks through registers, the
       edges with masked loads and stores (nothing outside the arrays is
       touched) */
    NG_ATTR_V4 static void ng_transpose_float_v4(ptrdiff_t rows,
        ptrdiff_t cols, const float *src, float *dst)
    {
        __m512 r[16];
        for (ptrdiff_t i0 = 0; i0 < rows; i0 += 16) {
            const ptrdiff_t ni = rows - i0 < 16 ? rows - i0 : 16;
            const __mmask16 imask = (__mmask16)((1u << ni) - 1u);
            for (ptrdiff_t j0 = 0; j0 < cols; j0 += 16) {
                const ptrdiff_t nj = cols - j0 < 16 ? cols - j0 : 16;
                const __mmask16 jmask = (__mmask16)((1u << nj) - 1u);
                for (int l = 0; l < 16; l++)
                    r[l] = l < ni ? _mm512_maskz_loadu_ps(
                               jmask, src + (i0 + l) * cols + j0)
                           : _mm512_setzero_ps();
                ng_transpose16_v4(r);
                for (int l = 0; l < nj; l++)
                    _mm512_mask_storeu_ps(dst + (j0 + l) * rows + i0, imask,
                                          r[l]);
            }
        }
    }

    NG_ATTR_V4 static void ng_gemm_nt_float_v4(ptrdiff_t M, ptrdiff_t N,
        ptrdiff_t K, const float *A, ptrdiff_t lda, const float *W,
        ptrdiff_t ldw, float *C, ptrdiff_t ldc)
    {
        for (ptrdiff_t n0 = 0; n0 < N; n0 += 16) {
            const ptrdiff_t nn = N - n0 < 16 ? N - n0 : 16;
            const __mmask16 mask = (__mmask16)((1u << nn) - 1u);
            const float *w = W + n0 * ldw;
            for (ptrdiff_t m0 = 0; m0 < M; m0 += 4) {
                const ptrdiff_t mm = M - m0 < 4 ? M - m0 : 4;
                const float *a0 = A + m0 * lda;
                const float *a1 = mm > 1 ? a0 + lda : a0;
                const float *a2 = mm > 2 ? a0 + 2 * lda : a0;
                const float *a3 = mm > 3 ? a0 + 3 * lda : a0;
                float *c0 = C + m0 * ldc + n0;
                __m512 x0 = _mm512_maskz_loadu_ps(mask, c0);
                __m512 x1 = mm > 1 ? _mm512_maskz_loadu_ps(mask, c0 + ldc) : x0;
                __m512 x2 = mm > 2 ? _mm512_maskz_loadu_ps(mask, c0 + 2 * ldc) : x0;
                __m512 x3 = mm > 3 ? _mm512_maskz_loadu_ps(mask, c0 + 3 * ldc) : x0;
                for (ptrdiff_t k0 = 0; k0 < K; k0 += 16) {
                    const ptrdiff_t kn = K - k0 < 16 ? K - k0 : 16;
                    const __mmask16 kmask = (__mmask16)((1u << kn) - 1u);
                    __m512 r[16];
    #pragma GCC unroll 16
                    for (int l = 0; l < 16; l++)
                        r[l] = l < nn ? _mm512_maskz_loadu_ps(
                                   kmask, w + l * ldw + k0)
                               : _mm512_setzero_ps();
                    ng_transpose16_v4(r);
                    if (kn == 16 && mm == 4) {
    #pragma GCC unroll 16
                        for (int j = 0; j < 16; j++) {
                            x0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[k0 + j]), r[j], x0);
                            x1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[k0 + j]), r[j], x1);
                            x2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[k0 + j]), r[j], x2);
                            x3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[k0 + j]), r[j], x3);
                        }
                    } else if (kn == 16 && mm == 1) {
    #pragma GCC unroll 16
                        for (int j = 0; j < 16; j++)
                            x0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[k0 + j]), r[j], x0);
                    } else {
                        for (int j = 0; j < kn; j++) {
                            x0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[k0 + j]), r[j], x0);
                            x1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[k0 + j]), r[j], x1);
                            x2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[k0 + j]), r[j], x2);
                            x3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[k0 + j]), r[j], x3);
                        }
                    }
                }
                _mm512_mask_storeu_ps(c0, mask, x0);
                if (mm > 1) _mm512_mask_storeu_ps(c0 + ldc, mask, x1);
                if (mm > 2) _mm512_mask_storeu_ps(c0 + 2 * ldc, mask, x2);
                if (mm > 3) _mm512_mask_storeu_ps(c0 + 3 * ldc, mask, x3);
            }
        }
    }
    NG_ATTR_V4 static void ng_gemm_nt_double_v4(ptrdiff_t M, ptrdiff_t N,
        ptrdiff_t K, const double *A, ptrdiff_t lda, const double *W,
        ptrdiff_t ldw, double *C, ptrdiff_t ldc)
    {
        if ((ptrdiff_t)(int)(8 * ldw) != 8 * ldw) {
            ng_gemm_nt_double_v3(M, N, K, A, lda, W, ldw, C, ldc);
            return;
        }
        const __m256i idx = _mm256_mullo_epi32(
            _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
            _mm256_set1_epi32((int)ldw));
        const __m512d zero = _mm512_setzero_pd();
        for (ptrdiff_t n0 = 0; n0 < N; n0 += 8) {
            const ptrdiff_t nn = N - n0 < 8 ? N - n0 : 8;
            const __mmask8 mask = (__mmask8)((1u << nn) - 1u);
            const double *w = W + n0 * ldw;
            for (ptrdiff_t m0 = 0; m0 < M; m0++) {
                const double *a0 = A + m0 * lda;
                double *c0 = C + m0 * ldc + n0;
                __m512d x0 = _mm512_maskz_loadu_pd(mask, c0);
                for (ptrdiff_t k = 0; k < K; k++) {
                    __m512d wk = _mm512_mask_i32gather_pd(zero, mask, idx,
                                                          w + k, 8);
                    x0 = _mm512_fmadd_pd(_mm512_set1_pd(a0[k]), wk, x0);
                }
                _mm512_mask_storeu_pd(c0, mask, x0);
            }
        }
    }
    #endif

    typedef void (*ng_gemm_nt_float_t)(ptrdiff_t, ptrdiff_t, ptrdiff_t,
        const float *, ptrdiff_t, const float *, ptrdiff_t, float *,
        ptrdiff_t);
    typedef void (*ng_gemm_nt_double_t)(ptrdiff_t, ptrdiff_t, ptrdiff_t,
        const double *, ptrdiff_t, const double *, ptrdiff_t, double *,
        ptrdiff_t);
    static ng_gemm_nt_float_t ng_gemm_nt_float = ng_gemm_nt_float_base;
    static ng_gemm_nt_double_t ng_gemm_nt_double = ng_gemm_nt_double_base;
    typedef void (*ng_transpose_float_t)(ptrdiff_t, ptrdiff_t, const float *,
                                         float *);
    static ng_transpose_float_t ng_transpose_float = ng_transpose_float_base;

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
    typedef void (*ng_fwd_after_float_t)(ptrdiff_t, const float *,
        const float *, const float *, float *, float *);
    static ng_fwd_after_float_t ng_fwd_after_float = ng_fwd_after_float_base;

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
        ng_fwd_after_float = ng_fwd_after_float_base;
        ng_gemm_nt_float = ng_gemm_nt_float_base;
        ng_gemm_nt_double = ng_gemm_nt_double_base;
        ng_transpose_float = ng_transpose_float_base;
    #if NG_DISPATCH
        if (level == 1) {
            ng_gemm_nt_float = ng_gemm_nt_float_v3;
            ng_gemm_nt_double = ng_gemm_nt_double_v3;
            ng_gemm_float = ng_gemm_float_v3;
            ng_gemm_double = ng_gemm_double_v3;
            ng_tanh_float = ng_tanh_float_v3;
            ng_sigmoid_float = ng_sigmoid_float_v3;
            ng_fwd_after_float = ng_fwd_after_float_v3;
        } else if (level == 2) {
            ng_gemm_nt_float = ng_gemm_nt_float_v4;
            ng_gemm_nt_double = ng_gemm_nt_double_v4;
            ng_transpose_float = ng_transpose_float_v4;
            ng_gemm_float = ng_gemm_float_v4;
            ng_gemm_double = ng_gemm_double_v4;
            ng_tanh_float = ng_tanh_float_v4;
            ng_sigmoid_float = ng_sigmoid_float_v4;
            ng_fwd_after_float = ng_fwd_after_float_v4;
        }
    #endif
        return level;
    }


    /* element-wise steps of the forward and backward passes. Plain IEEE
       operations without contraction: every instruction set gives the same
       bits, so GCC on Linux builds clones for AVX-512, AVX2 and the
       baseline and picks one at load time. */
    #if NG_DISPATCH && defined(__linux__) && !defined(__clang__)
    #define NG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define NG_CLONES
    #endif
    #define NG_DEFINE_ELEMENTWISE(T)                                           \
    /* a += b */                                                               \
    NG_CLONES static void ng_add_##T(ptrdiff_t n, T *__restrict a,             \
                                     const T *__restrict b)                    \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) a[i] = a[i] + b[i];                  \
    }                                                                          \
    /* a += b * c */                                                           \
    NG_CLONES static void ng_addmul_##T(ptrdiff_t n, T *__restrict a,          \
                                        const T *__restrict b,                 \
                                        const T *__restrict c)                 \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) a[i] = a[i] + b[i] * c[i];           \
    }                                                                          \
    /* out = a * b + c */                                                      \
    NG_CLONES static void ng_muladd_##T(ptrdiff_t n, T *__restrict out,        \
                                        const T *__restrict a,                 \
                                        const T *__restrict b,                 \
                                        const T *__restrict c)                 \
    {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = a[i] * b[i] + c[i];         \
    }                                                                          \
    /* out = (1 - z) * nv + z * h */                                           \
    NG_CLONES static void ng_hnew_##T(ptrdiff_t n, T *__restrict out,          \
                                      const T *__restrict z,                   \
                                      const T *__restrict nv,                  \
                                      const T *__restrict h)                   \
    {                                                                          \
        const T one = 1;                                                       \
        for (ptrdiff_t i = 0; i < n; i++)                                      \
            out[i] = (one - z[i]) * nv[i] + z[i] * h[i];                       \
    }                                                                          \
    /* dh' = dh + d_out ; dn = dh' (1 - z) ; dz = dh' (h_prev - n) ;           \
       da_n = dn (1 - n^2) ; da_z = dz z (1 - z) ; dgi, dga: z and n blocks */ \
    NG_CLONES static void ng_bwd_zn_##T(ptrdiff_t H, const T *__restrict dh,   \
        const T *__restrict dout, const T *__restrict z,                       \
        const T *__restrict nv, const T *__restrict hprev,                     \
        T *__restrict dhn, T *__restrict dgi, T *__restrict dga)               \
    {                                                                          \
        const T one = 1;                                                       \
        for (ptrdiff_t j = 0; j < H; j++) {                                    \
            const T d = dh[j] + dout[j];                                       \
            const T dn = d * (one - z[j]);                                     \
            const T dz = d * (hprev[j] - nv[j]);                               \
            const T da_n = dn * (one - nv[j] * nv[j]);                         \
            const T da_z = dz * z[j] * (one - z[j]);                           \
            dhn[j] = d;                                                        \
            dgi[H + j] = da_z;                                                 \
            dgi[2 * H + j] = da_n;                                             \
            dga[H + j] = da_z;                                                 \
            dga[2 * H + j] = da_n;                                             \
        }                                                                      \
    }                                                                          \
    /* reset after: da_r = da_n hn r (1 - r) ; d(gh_n) = da_n r */             \
    NG_CLONES static void ng_bwd_r_##T(ptrdiff_t H, const T *__restrict hn,    \
        const T *__restrict r, T *__restrict dgi, T *__restrict dga,           \
        T *__restrict dghn)                                                    \
    {                                                                          \
        const T one = 1;                                                       \
        for (ptrdiff_t j = 0; j < H; j++) {                                    \
            const T da_n = dgi[2 * H + j];                                     \
            const T da_r = da_n * hn[j] * r[j] * (one - r[j]);                 \
            dgi[j] = da_r;                                                     \
            dga[j] = da_r;                                                     \
            dga[2 * H + j] = da_n * r[j];                                      \
            dghn[j] = da_n * r[j];                                             \
        }                                                                      \
    }
    NG_DEFINE_ELEMENTWISE(float)
    NG_DEFINE_ELEMENTWISE(double)

    /* float64: the C library's functions (MADD unused) */
    #define NG_SIGMOID_F64(x_in, out, MADD) ((out) = ng_sigmoid_f64(x_in))
    #define NG_TANH_F64(x_in, out, MADD) ((out) = tanh(x_in))
    NG_DEFINE_FWD_AFTER(ng_fwd_after_double, NG_CLONES, double,
                        NG_SIGMOID_F64, NG_TANH_F64, NG_MADD_PLAIN)
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
    void ng_gemm_nt_float(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                          const float *A, Py_ssize_t lda,
                          const float *W, Py_ssize_t ldw,
                          float *C, Py_ssize_t ldc) noexcept nogil
    void ng_gemm_nt_double(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                           const double *A, Py_ssize_t lda,
                           const double *W, Py_ssize_t ldw,
                           double *C, Py_ssize_t ldc) noexcept nogil
    void ng_tanh_float(Py_ssize_t n, float *v) noexcept nogil
    void ng_tanh_double(Py_ssize_t n, double *v) noexcept nogil
    void ng_sigmoid_float(Py_ssize_t n, float *v) noexcept nogil
    void ng_sigmoid_double(Py_ssize_t n, double *v) noexcept nogil
    void ng_transpose_float(Py_ssize_t rows, Py_ssize_t cols,
                            const float *src, float *dst) noexcept nogil
    void ng_transpose_double(Py_ssize_t rows, Py_ssize_t cols,
                             const double *src, double *dst) noexcept nogil
    void ng_add_float(Py_ssize_t, float *, const float *) noexcept nogil
    void ng_add_double(Py_ssize_t, double *, const double *) noexcept nogil
    void ng_addmul_float(Py_ssize_t, float *, const float *,
                         const float *) noexcept nogil
    void ng_addmul_double(Py_ssize_t, double *, const double *,
                          const double *) noexcept nogil
    void ng_muladd_float(Py_ssize_t, float *, const float *, const float *,
                         const float *) noexcept nogil
    void ng_muladd_double(Py_ssize_t, double *, const double *,
                          const double *, const double *) noexcept nogil
    void ng_hnew_float(Py_ssize_t, float *, const float *, const float *,
                       const float *) noexcept nogil
    void ng_hnew_double(Py_ssize_t, double *, const double *,
                        const double *, const double *) noexcept nogil
    void ng_bwd_zn_float(Py_ssize_t, const float *, const float *,
                         const float *, const float *, const float *,
                         float *, float *, float *) noexcept nogil
    void ng_bwd_zn_double(Py_ssize_t, const double *, const double *,
                          const double *, const double *, const double *,
                          double *, double *, double *) noexcept nogil
    void ng_bwd_r_float(Py_ssize_t, const float *, const float *, float *,
                        float *, float *) noexcept nogil
    void ng_bwd_r_double(Py_ssize_t, const double *, const double *,
                         double *, double *, double *) noexcept nogil
    void ng_fwd_after_float(Py_ssize_t, const float *, const float *,
                            const float *, float *, float *) noexcept nogil
    void ng_fwd_after_double(Py_ssize_t, const double *, const double *,
                             const double *, double *, double *) noexcept nogil
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

# Samples one thread advances together through time, weights in cache and
# one thread (see _n_blocks).
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


cdef inline void _gemm_nt(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                          const floating *A, Py_ssize_t lda,
                          const floating *W, Py_ssize_t ldw,
                          floating *C, Py_ssize_t ldc) noexcept nogil:
    # C (M, N) += A (M, K) @ W (N, K)^T, same bits as _gemm on W^T
    if floating is float:
        ng_gemm_nt_float(M, N, K, A, lda, W, ldw, C, ldc)
    else:
        ng_gemm_nt_double(M, N, K, A, lda, W, ldw, C, ldc)


cdef inline void _add(Py_ssize_t n, floating *a,
                     const floating *b) noexcept nogil:
    # a += b
    if floating is float:
        ng_add_float(n, a, b)
    else:
        ng_add_double(n, a, b)


cdef inline void _addmul(Py_ssize_t n, floating *a, const floating *b,
                        const floating *c) noexcept nogil:
    # a += b * c
    if floating is float:
        ng_addmul_float(n, a, b, c)
    else:
        ng_addmul_double(n, a, b, c)


cdef inline void _muladd(Py_ssize_t n, floating *out, const floating *a,
                        const floating *b, const floating *c) noexcept nogil:
    # out = a * b + c
    if floating is float:
        ng_muladd_float(n, out, a, b, c)
    else:
        ng_muladd_double(n, out, a, b, c)


cdef inline void _hnew(Py_ssize_t n, floating *out, const floating *z,
                      const floating *nv, const floating *h) noexcept nogil:
    # out = (1 - z) * nv + z * h
    if floating is float:
        ng_hnew_float(n, out, z, nv, h)
    else:
        ng_hnew_double(n, out, z, nv, h)


cdef inline void _bwd_zn(Py_ssize_t H, const floating *dh,
                         const floating *dout, const floating *z,
                         const floating *nv, const floating *hprev,
                         floating *dhn, floating *dgi,
                         floating *dga) noexcept nogil:
    if floating is float:
        ng_bwd_zn_float(H, dh, dout, z, nv, hprev, dhn, dgi, dga)
    else:
        ng_bwd_zn_double(H, dh, dout, z, nv, hprev, dhn, dgi, dga)


cdef inline void _bwd_r(Py_ssize_t H, const floating *hn, const floating *r,
                        floating *dgi, floating *dga,
                        floating *dghn) noexcept nogil:
    if floating is float:
        ng_bwd_r_float(H, hn, r, dgi, dga, dghn)
    else:
        ng_bwd_r_double(H, hn, r, dgi, dga, dghn)


cdef inline void _fwd_after(Py_ssize_t H, const floating *gi,
                            const floating *gh, const floating *h,
                            floating *out, floating *g) noexcept nogil:
    # reset-after step of one sample: out (H,) the new state, g (4H,)
    # [r, z, n, hn], from gi (3H,) and gh (3H,) with their biases
    if floating is float:
        ng_fwd_after_float(H, gi, gh, h, out, g)
    else:
        ng_fwd_after_double(H, gi, gh, h, out, g)


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


# The weights of the recurrence and input-gradient products are laid out in
# panels of _PANEL_BYTES of columns, each panel a contiguous (K, width)
# block, so a product reads one panel's weights in memory order (a row-major
# layout spreads them over whole rows, one per k). Measured against the
# row-major layout, 2 threads, float32, (B, T, I, H) = (128, 100, 128, 512):
# forward 1.21x and backward 1.15x faster; 1.0x to 1.17x at the smaller
# benchmark shapes. Same products, same bits.
cdef enum:
    _PANEL_BYTES = 128


cdef inline Py_ssize_t _panel_width(floating *tag) noexcept nogil:
    # columns per panel (tag: NULL, selects the dtype)
    return _PANEL_BYTES // sizeof(floating)


cdef void _transpose_panels(Py_ssize_t n, Py_ssize_t K, const floating *src,
                            floating *dst) noexcept nogil:
    # src (n, K) row-major -> dst: the columns of src^T (K, n) in panels of
    # P = _panel_width columns, panel p at dst + p*P*K as a (K, width) block
    cdef Py_ssize_t P = _panel_width(<floating *>NULL)
    cdef Py_ssize_t n0 = 0
    while n0 < n:
        _transpose(min(P, n - n0), K, src + n0 * K, dst + n0 * K)
        n0 += P


cdef void _copy_panels(Py_ssize_t K, Py_ssize_t N, const floating *src,
                       floating *dst) noexcept nogil:
    # src (K, N) row-major -> dst: its columns in panels, as
    # _transpose_panels lays out the columns of a transpose
    cdef Py_ssize_t P = _panel_width(<floating *>NULL)
    cdef Py_ssize_t n0 = 0, width, k
    while n0 < N:
        width = min(P, N - n0)
        for k in range(K):
            memcpy(dst + n0 * K + k * width, src + k * N + n0,
                   width * sizeof(floating))
        n0 += P


cdef inline void _gemm_panels(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K,
                              const floating *A, Py_ssize_t sam,
                              Py_ssize_t sak, const floating *Bp,
                              Py_ssize_t k_rows, Py_ssize_t k0,
                              floating *C, Py_ssize_t ldc) noexcept nogil:
    # C (M, N) += A (M, K) @ B[k0:k0+K] with B (k_rows, N) in panels
    # (_transpose_panels, _copy_panels)
    cdef Py_ssize_t P = _panel_width(<floating *>NULL)
    cdef Py_ssize_t n0 = 0, width
    while n0 < N:
        width = min(P, N - n0)
        _gemm(M, width, K, A, sam, sak, Bp + n0 * k_rows + k0 * width, width,
              C + n0, ldc)
        n0 += P


cdef inline Py_ssize_t _time_index(Py_ssize_t step, Py_ssize_t length,
                                   bint reverse) noexcept nogil:
    # time index of processing step ``step`` for a sample of this length
    if reverse:
        return length - 1 - step
    return step


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for a >= 0, b > 0
    return (a + b - 1) // b


def _n_blocks(Py_ssize_t n_samples, int n_threads, Py_ssize_t weight_bytes=0):
    """Number of sample blocks (results do not depend on it).

    Weights that fit in a core's cache: blocks of ``_BLOCK`` samples for one
    thread, of ``_SMALL_BLOCK`` for several (several blocks per thread,
    claimed one at a time, so that a thread the OS keeps waiting holds the
    others up little). Larger weights are streamed from memory once per
    block and step: blocks of up to ``_BIG_BLOCK`` samples. At least one
    block per thread.
    """
    n_threads = max(1, min(int(n_threads), n_samples))
    if weight_bytes > _CACHE_BYTES:
        per_block = _BIG_BLOCK
    elif n_threads > 1:
        per_block = _SMALL_BLOCK
    else:
        per_block = _BLOCK
    return min(n_samples, max(n_threads, _ceil_div(n_samples, per_block)))


# Samples per block (see _n_blocks) and the cache size the weights are
# compared with.
_SMALL_BLOCK = 8
_BIG_BLOCK = 64
_CACHE_BYTES = 768 * 1024


# Work arrays of the forward and backward passes (transposed or packed
# weights, per-block work, the backward's chunk arrays) are cut from one
# scratch array, kept between calls (one per dtype, up to _SCRATCH_KEEP
# bytes) so that calls do not page-fault fresh memory. Allocating them anew
# at every call let the C allocator hand memory back to the system and fault
# it in again: in a loop of forward(return_cache=True) and backward, B, T,
# I, H = 32, 20, 50, 128, that was about 690 page faults per train step in
# some processes, which then took 2.5 ms instead of 1.5 ms. The scratch
# starts on a 64-byte boundary and every piece on a multiple of 64 bytes
# from it (see numgru._aligned). Taking the scratch removes it from the
# pool: concurrent calls never share.
_scratch = {}
_SCRATCH_KEEP = 64 * 1024 * 1024


def _take_scratch(Py_ssize_t n, dtype):
    """A 1-D array of at least ``n`` elements of ``dtype`` (uninitialised),
    starting on a cache-line boundary."""
    a = _scratch.pop(np.dtype(dtype).char, None)
    if a is None or a.shape[0] < n:
        a = aligned_empty(max(n, 1), dtype)
    return a


def _give_back_scratch(a):
    if a.nbytes <= _SCRATCH_KEEP:
        _scratch[a.dtype.char] = a


cdef inline Py_ssize_t _lines(Py_ssize_t n) noexcept nogil:
    # n rounded up to a multiple of 16 elements: pieces cut one after another
    # from a scratch array then all start on its 64-byte alignment
    return (n + 15) // 16 * 16


# Below this many floating-point operations (forward pass of one layer) a
# call runs on the calling thread only: waking (and, on a busy machine,
# waiting for) other OpenMP threads costs more than the work. Results do not
# depend on it.
cdef double _serial_flops = 2.5e7


def _set_serial_flops(double value):
    """Set the serial-work threshold (in flops); returns the previous one.

    For tests: 0 makes every call with several sample blocks use threads.
    """
    global _serial_flops
    previous = _serial_flops
    _serial_flops = value
    return previous


# The same for step_forward (GRU.step), 6 B L H (I + H) flops for L layers.
# Two threads beat one at far less work for a step than for a forward pass.
# Measured, 2 threads against one, same bits (medians of 11 interleaved
# rounds), at (B, I, H): below 2^15 B H (I + H), 0.66x to 0.96x at 8 to 16
# samples of (I, H) = (8, 32), (16, 32), (32, 32) (one run of 16 samples of
# (8, 32): 1.13x); above it, 1.16x at (8, 1, 64), 1.14x at (8, 16, 64),
# 0.91x to 1.46x over seven runs at (8, 32, 128), 1.33x at (64, 8, 32),
# 1.42x at (8, 128, 512), 1.74x at (32, 64, 256).
cdef double _step_serial_flops = 6.0 * (1 << 15)


def _set_step_serial_flops(double value):
    """Set the step's serial-work threshold (in flops); returns the previous
    one. For tests: 0 makes every step of over four samples use threads."""
    global _step_serial_flops
    previous = _step_serial_flops
    _step_serial_flops = value
    return previous


cdef int _use_threads(Py_ssize_t B, Py_ssize_t T, Py_ssize_t I,
                      Py_ssize_t H, int n_threads,
                      double serial_flops) noexcept nogil:
    # threads worth using for a (B, T, I, H) layer, or T layers of a step:
    # 1 below serial_flops (_serial_flops or _step_serial_flops)
    if n_threads <= 1 or B < 2:
        return 1
    if 6.0 * B * T * H * (I + H) < serial_flops:
        return 1
    return n_threads



# ---------------------------------------------------------------------------
# threads
#
# Work items (sample blocks, or column pieces of the weight gradients) are
# split statically over OpenMP threads by _run_job. Each item writes only its
# own part of the outputs, so an item's result does not depend on which
# thread runs it.

ctypedef void (*_item_fn)(void *args, Py_ssize_t item) noexcept nogil

cdef struct _Args:
    # what the work items of one call need (arrays as untyped pointers)
    const void *x
    const void *w_ih
    const void *w_hh
    const void *b_ih
    const void *b_hh
    const void *h0
    const int64_t *lengths
    void *out
    void *h_last
    void *gates
    void *work
    Py_ssize_t *iwork
    Py_ssize_t wstride
    Py_ssize_t istride
    Py_ssize_t per_block
    Py_ssize_t B
    Py_ssize_t T
    Py_ssize_t I
    Py_ssize_t H
    bint reverse
    bint reset_after
    Py_ssize_t s_lo          # backward: the chunk of steps s_lo .. s_hi-1
    Py_ssize_t s_hi
    bint first               # its first and last chunks
    bint last
    const Py_ssize_t *row0   # each sample's first row in the chunk arrays
    Py_ssize_t n_rows        # rows in the chunk arrays
    const void *d_out
    const void *d_h_last
    void *d_h0
    void *d_gi
    void *aux
    void *h_in
    void *x_c
    void *d_x
    void *dwihT
    void *dwhhT
    void *d_w_ih
    void *d_w_hh
    void *d_b_ih
    void *d_b_hh
    Py_ssize_t per_gate


cdef class _Job:
    """Items 0 .. n-1 of one parallel loop and the arguments they share."""
    cdef _item_fn fn
    cdef _Args args
    cdef Py_ssize_t n


cdef inline void _set_layer_args(_Args *args, Py_ssize_t per_block,
                                 Py_ssize_t B, Py_ssize_t T, Py_ssize_t I,
                                 Py_ssize_t H, bint reverse,
                                 bint reset_after) noexcept:
    # the sizes and options every work item of a layer call reads
    args.per_block = per_block
    args.B = B
    args.T = T
    args.I = I
    args.H = H
    args.reverse = reverse
    args.reset_after = reset_after


cdef void _run_job(_Job job, int n_threads) except *:
    # run the job's items, split statically over up to n_threads OpenMP
    # threads; every item writes only its own part of the outputs
    cdef Py_ssize_t item
    cdef _item_fn fn = job.fn
    cdef _Args *args = &job.args
    with nogil:
        for item in prange(job.n, schedule="static", num_threads=n_threads):
            fn(args, item)


# ---------------------------------------------------------------------------
# forward

cdef void _forward_block(
        const floating *x, const floating *wihT, const floating *whhT,
        const floating *b_ih, const floating *b_hh, const floating *h0,
        const int64_t *lengths, Py_ssize_t b_start, Py_ssize_t b_stop,
        Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, bint reverse,
        bint reset_after, floating *out, floating *h_last, floating *gates,
        floating *work, Py_ssize_t *iwork) noexcept nogil:
    # x (B, T, I), b_ih, b_hh (3H,), h0 (B, H),
    # wihT: W_ih^T (I, 3H); whhT: W_hh^T[:, :2H] (H, 2H) then W_hh^T[:, 2H:]
    # (H, H) from whhT + 2H*H; each in panels (_transpose_panels)
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
    cdef floating one = 1
    cdef const floating *whh_n = whhT + 2 * H * H

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
        _gemm_panels(na, G, I, xa, I, 1, wihT, I, 0, gi, G)
        _gemm_panels(na, 2 * H, H, hp, H, 1, whhT, H, 0, gh, G)
        if reset_after:
            _gemm_panels(na, H, H, hp, H, 1, whh_n, H, 0, gh + 2 * H, G)

        if reset_after and gates != NULL:
            # training: the whole step of each sample in one pass, written
            # straight to its row of the cache (the same values as below)
            for i in range(na):
                b = act[i]
                t = tt[i]
                _fwd_after(H, gi + i * G, gh + i * G, hp + i * H,
                           out + (b * T + t) * H,
                           gates + (b * T + t) * 4 * H)
            continue

        # r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z)
        for i in range(na):
            gir = gi + i * G
            ghr = gh + i * G
            _add(2 * H, gir, ghr)
            _sigmoid(2 * H, gir)

        if reset_after:
            # n = tanh(gi_n + r * hn), hn = W_hn h_prev + b_hn
            for i in range(na):
                gir = gi + i * G
                ghr = gh + i * G
                _addmul(H, gir + 2 * H, gir, ghr + 2 * H)
        else:
            # n = tanh(gi_n + hn), hn = W_hn (r * h_prev) + b_hn
            for i in range(na):
                gir = gi + i * G
                hpr = hp + i * H
                for j in range(H):
                    rh[i * H + j] = gir[j] * hpr[j]
            _gemm_panels(na, H, H, rh, H, 1, whh_n, H, 0, gh + 2 * H, G)
            for i in range(na):
                gir = gi + i * G
                ghr = gh + i * G
                _add(H, gir + 2 * H, ghr + 2 * H)
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
            _hnew(H, o, gir + H, gir + 2 * H, hpr)
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
    n_threads = _use_threads(B, T, I, H, n_threads, _serial_flops)
    n_blocks = _n_blocks(B, n_threads, 3 * H * (I + H) * sizeof(floating))
    per_block = _ceil_div(B, n_blocks)
    n_blocks = _ceil_div(B, per_block)
    if n_blocks < 2:
        n_threads = 1
    wsize = per_block * (I + 8 * H)
    dtype = np.float32 if floating is float else np.float64
    # work arrays cut from the kept scratch: W_ih^T (I*G), W_hh^T (H*G),
    # per-block work (n_blocks, wsize)
    scratch = _take_scratch(
        _lines(I * G) + _lines(H * G) + n_blocks * wsize, dtype)
    cdef floating[::1] space = scratch
    cdef floating *wihT = &space[0]
    cdef floating *whhT = wihT + _lines(I * G)
    cdef floating *work = whhT + _lines(H * G)
    cdef Py_ssize_t[:, ::1] iwork = np.empty((n_blocks, 2 * per_block),
                                             dtype=np.intp)
    with nogil:
        _transpose_panels(G, I, &w_ih[0, 0], wihT)
        _transpose_panels(2 * H, H, &w_hh[0, 0], whhT)
        _transpose_panels(H, H, &w_hh[2 * H, 0], whhT + 2 * H * H)
        if n_threads == 1:
            for blk in range(n_blocks):
                b_start = blk * per_block
                b_stop = min(b_start + per_block, B)
                _forward_block(&x[0, 0, 0], wihT, whhT,
                               &b_ih[0], &b_hh[0], &h0[0, 0], &lengths[0],
                               b_start, b_stop, T, I, H, reverse, reset_after,
                               &out[0, 0, 0], h_last_ptr, gates_ptr,
                               work + blk * wsize, &iwork[blk, 0])
    if n_threads > 1:
        job = _Job()
        job.fn = _forward_item_f if floating is float else _forward_item_d
        job.n = n_blocks
        job.args.x = &x[0, 0, 0]
        job.args.w_ih = wihT
        job.args.w_hh = whhT
        job.args.b_ih = &b_ih[0]
        job.args.b_hh = &b_hh[0]
        job.args.h0 = &h0[0, 0]
        job.args.lengths = &lengths[0]
        job.args.out = &out[0, 0, 0]
        job.args.h_last = h_last_ptr
        job.args.gates = gates_ptr
        job.args.work = work
        job.args.iwork = &iwork[0, 0]
        job.args.wstride = wsize
        job.args.istride = 2 * per_block
        _set_layer_args(&job.args, per_block, B, T, I, H, reverse,
                        reset_after)
        _run_job(job, n_threads)
    _give_back_scratch(scratch)


cdef void _forward_item(_Args *a, Py_ssize_t blk,
                        floating *tag) noexcept nogil:
    # one sample block of the forward pass (tag: NULL, selects the dtype)
    cdef Py_ssize_t b_start = blk * a.per_block
    cdef Py_ssize_t b_stop = min(b_start + a.per_block, a.B)
    _forward_block(<const floating *>a.x, <const floating *>a.w_ih,
                   <const floating *>a.w_hh, <const floating *>a.b_ih,
                   <const floating *>a.b_hh, <const floating *>a.h0,
                   a.lengths, b_start, b_stop, a.T, a.I, a.H, a.reverse,
                   a.reset_after, <floating *>a.out, <floating *>a.h_last,
                   <floating *>a.gates,
                   <floating *>a.work + blk * a.wstride,
                   a.iwork + blk * a.istride)


cdef void _forward_item_f(void *a, Py_ssize_t blk) noexcept nogil:
    _forward_item(<_Args *>a, blk, <float *>NULL)


cdef void _forward_item_d(void *a, Py_ssize_t blk) noexcept nogil:
    _forward_item(<_Args *>a, blk, <double *>NULL)


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


cdef void _cell_block(const floating *x, const floating *w_ih,
                      const floating *w_hh, const floating *b_ih,
                      const floating *b_hh, const floating *h, Py_ssize_t B,
                      Py_ssize_t I, Py_ssize_t H, bint reset_after,
                      floating *h_new, floating *work) noexcept nogil:
    # x (B, I), w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,), h (B, H),
    # h_new (B, H) written; work (B, 7H). The same operations, in the same
    # order, as one step of _forward_block, with unpacked weights.
    cdef Py_ssize_t G = 3 * H
    cdef floating *gi = work                # (B, 3H) gi, then [r, z, n]
    cdef floating *gh = gi + B * G          # (B, 3H) [gh_r, gh_z, hn]
    cdef floating *rh = gh + B * G          # (B, H) r * h (reset before)
    cdef floating *gir
    cdef floating *ghr
    cdef const floating *hpr
    cdef floating *o
    cdef floating z
    cdef floating one = 1
    cdef Py_ssize_t i, j
    for i in range(B):
        memcpy(gi + i * G, b_ih, G * sizeof(floating))
        memcpy(gh + i * G, b_hh, G * sizeof(floating))
    _gemm_nt(B, G, I, x, I, w_ih, I, gi, G)
    if reset_after:
        _gemm_nt(B, G, H, h, H, w_hh, H, gh, G)
    else:
        _gemm_nt(B, 2 * H, H, h, H, w_hh, H, gh, G)
    for i in range(B):
        gir = gi + i * G
        ghr = gh + i * G
        _add(2 * H, gir, ghr)
        _sigmoid(2 * H, gir)
    if reset_after:
        for i in range(B):
            gir = gi + i * G
            ghr = gh + i * G
            _addmul(H, gir + 2 * H, gir, ghr + 2 * H)
    else:
        for i in range(B):
            gir = gi + i * G
            hpr = h + i * H
            for j in range(H):
                rh[i * H + j] = gir[j] * hpr[j]
        _gemm_nt(B, H, H, rh, H, w_hh + 2 * H * H, H, gh + 2 * H, G)
        for i in range(B):
            gir = gi + i * G
            ghr = gh + i * G
            _add(H, gir + 2 * H, ghr + 2 * H)
    for i in range(B):
        _tanh(H, gi + i * G + 2 * H)
    for i in range(B):
        gir = gi + i * G
        hpr = h + i * H
        o = h_new + i * H
        _hnew(H, o, gir + H, gir + 2 * H, hpr)


cdef extern from "Python.h":
    int _ng_get_buffer "PyObject_GetBuffer" (object, Py_buffer *, int)
    void PyErr_Clear()


cdef int _buffer_kind(const Py_buffer *v) noexcept:
    # 1 for native float32, 2 for native float64, 0 for anything else
    cdef const char *f = v.format
    if f == NULL:
        return 0
    if f[0] == 64 or f[0] == 61:         # '@' or '='
        f += 1
    if f[0] == 102 and f[1] == 0 and v.itemsize == 4:      # 'f'
        return 1
    if f[0] == 100 and f[1] == 0 and v.itemsize == 8:      # 'd'
        return 2
    return 0


cdef int _cell_fast(object x, object w_ih, object w_hh, object b_ih,
                    object b_hh, object h, bint reset_after,
                    object h_new) except -1:
    # one serial step without copies or packing when every array is a
    # C-contiguous float32 or float64 buffer of the expected shape and the
    # work is small; returns 0 (nothing done) otherwise
    cdef Py_buffer v[8]
    cdef int n_got = 0, kind = 0, ok = 1, k
    cdef Py_ssize_t B, I, H, G
    cdef void *work
    cdef tuple objs = (x, w_ih, w_hh, b_ih, b_hh, h, h_new)
    cdef int[7] ndims = [2, 2, 2, 1, 1, 2, 2]
    for k in range(7):
        if _ng_get_buffer(objs[k], &v[k], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
                          | (PyBUF_WRITABLE if k == 6 else 0)) != 0:
            PyErr_Clear()
            ok = 0
            break
        n_got += 1
        if v[k].ndim != ndims[k]:
            ok = 0
            break
        if k == 0:
            kind = _buffer_kind(&v[0])
        if kind == 0 or _buffer_kind(&v[k]) != kind:
            ok = 0
            break
    try:
        if not ok:
            return 0
        B = v[0].shape[0]
        I = v[0].shape[1]
        H = v[2].shape[1]
        G = 3 * H
        if (B < 1 or H < 1 or v[1].shape[0] != G or v[1].shape[1] != I
                or v[2].shape[0] != G or v[3].shape[0] != G
                or v[4].shape[0] != G or v[5].shape[0] != B
                or v[5].shape[1] != H or v[6].shape[0] != B
                or v[6].shape[1] != H):
            return 0
        if 6.0 * B * H * (I + H) >= _serial_flops:
            return 0
        work = malloc(B * 7 * H * v[0].itemsize)
        if work == NULL:
            return 0
        with nogil:
            if kind == 1:
                _cell_block(<const float *>v[0].buf, <const float *>v[1].buf,
                            <const float *>v[2].buf, <const float *>v[3].buf,
                            <const float *>v[4].buf, <const float *>v[5].buf,
                            B, I, H, reset_after, <float *>v[6].buf,
                            <float *>work)
            else:
                _cell_block(<const double *>v[0].buf,
                            <const double *>v[1].buf,
                            <const double *>v[2].buf,
                            <const double *>v[3].buf,
                            <const double *>v[4].buf,
                            <const double *>v[5].buf,
                            B, I, H, reset_after, <double *>v[6].buf,
                            <double *>work)
        free(work)
        return 1
    finally:
        for k in range(n_got):
            PyBuffer_Release(&v[k])


def cell_forward(x, w_ih, w_hh, b_ih, b_hh, h, reset_after, h_new,
                 n_threads=1):
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
    if not _cell_fast(x, w_ih, w_hh, b_ih, b_hh, h, reset_after, h_new):
        _cell_forward_generic(x, w_ih, w_hh, b_ih, b_hh, h, reset_after,
                              h_new, n_threads)


def _cell_forward_generic(const floating[:, ::1] x,
                          const floating[:, ::1] w_ih,
                          const floating[:, ::1] w_hh,
                          const floating[::1] b_ih, const floating[::1] b_hh,
                          const floating[:, ::1] h, bint reset_after,
                          floating[:, ::1] h_new, int n_threads=1):
    # cell_forward through the layer kernel (large batches, odd arrays)
    cdef Py_ssize_t B = x.shape[0]
    if B == 0:
        return
    x3 = np.asarray(x).reshape(B, 1, x.shape[1])
    out3 = np.asarray(h_new).reshape(B, 1, h_new.shape[1])
    lengths = np.ones(B, dtype=np.int64)
    _forward[floating](x3, w_ih, w_hh, b_ih, b_hh, h, lengths, False,
                       reset_after, out3, NULL, NULL, max(1, n_threads))


# ---------------------------------------------------------------------------
# streaming step (GRU.step)

cdef extern from *:
    """
    /* One GRU step of a stack of unidirectional layers, for streaming.

       Every gate pre-activation is a dot product over one row of the
       row-major weights, computed in L lanes (L = 16 for float, 8 for
       double): lane l accumulates the terms k = l, l + L, l + 2L, ... in
       ascending order with one multiply-add each (terms past the end of a
       row are zeros), then the lanes are summed in a fixed tree (lane l
       with lane l + L/2, then l + L/4, ... down to 1). For the r and z gates
       the terms of W_ih x and then those of W_hh h go into the same lanes.
       A sample's result therefore depends only on its own inputs, never on
       the rest of the batch, the grouping of samples or the thread count;
       the AVX-512 and AVX2 code give the same bits (the baseline rounds the
       product and the sum separately). */

    #define NG_SL_F 16           /* lanes of the float dot products */
    #define NG_SL_D 8            /* lanes of the double dot products */
    #define NG_SG 4              /* samples that share one pass over W */

    /* out[s * ldo + r] = dot(W[r], A[s]) (+ dot(W2[r], A2[s]) in the same
       lanes when K2 > 0) for r < nr, s < ns: baseline, one row at a time */
    #define NG_DEFINE_STEP_DOTS_BASE(T, SUF, L)                                \
    static void ng_step_dots_##SUF##_base(T *out, ptrdiff_t ldo,               \
        ptrdiff_t nr, ptrdiff_t ns, const T *W, ptrdiff_t ldw, const T *A,     \
        ptrdiff_t lda, ptrdiff_t K, const T *W2, ptrdiff_t ldw2,               \
        const T *A2, ptrdiff_t lda2, ptrdiff_t K2)                             \
    {                                                                          \
        for (ptrdiff_t s = 0; s < ns; s++)                                     \
            for (ptrdiff_t r = 0; r < nr; r++) {                               \
                T acc[L];                                                      \
                for (int l = 0; l < L; l++) acc[l] = 0;                        \
                for (int part = 0; part < 2; part++) {                         \
                    const T *w = part ? W2 + r * ldw2 : W + r * ldw;           \
                    const T *a = part ? A2 + s * lda2 : A + s * lda;           \
                    const ptrdiff_t kk = part ? K2 : K;                        \
                    ptrdiff_t k0 = 0;                                          \
                    for (; k0 + L <= kk; k0 += L)                              \
                        for (int l = 0; l < L; l++)                            \
                            acc[l] = acc[l] + w[k0 + l] * a[k0 + l];           \
                    if (k0 < kk)                                               \
                        for (int l = 0; l < L; l++) {                          \
                            const T wv = k0 + l < kk ? w[k0 + l] : 0;          \
                            const T av = k0 + l < kk ? a[k0 + l] : 0;          \
                            acc[l] = acc[l] + wv * av;                         \
                        }                                                      \
                }                                                              \
                for (int half = L / 2; half > 0; half /= 2)                    \
                    for (int l = 0; l < half; l++)                             \
                        acc[l] = acc[l] + acc[l + half];                       \
                out[s * ldo + r] = acc[0];                                     \
            }                                                                  \
    }
    NG_DEFINE_STEP_DOTS_BASE(float, f, NG_SL_F)
    NG_DEFINE_STEP_DOTS_BASE(double, d, NG_SL_D)

    #if NG_DISPATCH
    /* AVX2: a lane vector is two registers, lo (lanes 0 .. L/2-1) and hi
       (lanes L/2 .. L-1); tiles of four row-sample pairs.
       lo/hi[r * ST + s] += terms of dot(W[r], A[s]), r < nr (<= RT) */
    #define NG_DEFINE_STEP_TILE_V3(T, SUF, V, NH, LOADU, MASKLOAD, FMADD,      \
                                   ADD, RT, ST)                                \
    NG_ATTR_V3 static inline __attribute__((always_inline)) void               \
    ng_step_acc_##SUF##_##RT##x##ST##_v3(V *lo, V *hi, ptrdiff_t nr,           \
        const T *W, ptrdiff_t ldw, const T *A, ptrdiff_t lda, ptrdiff_t K)     \
    {                                                                          \
        const ptrdiff_t kf = K - K % (2 * NH);                                 \
        for (ptrdiff_t k0 = 0; k0 < kf; k0 += 2 * NH) {                        \
            V a0[ST], a1[ST];                                                  \
            _Pragma("GCC unroll 4")                                            \
            for (int s = 0; s < ST; s++) {                                     \
                a0[s] = LOADU(A + s * lda + k0);                               \
                a1[s] = LOADU(A + s * lda + k0 + NH);                          \
            }                                                                  \
            _Pragma("GCC unroll 4")                                            \
            for (int r = 0; r < RT; r++) {                                     \
                if (r >= nr) break;                                            \
                const V w0 = LOADU(W + r * ldw + k0);                          \
                const V w1 = LOADU(W + r * ldw + k0 + NH);                     \
                _Pragma("GCC unroll 4")                                        \
                for (int s = 0; s < ST; s++) {                                 \
                    lo[r * ST + s] = FMADD(w0, a0[s], lo[r * ST + s]);         \
                    hi[r * ST + s] = FMADD(w1, a1[s], hi[r * ST + s]);         \
                }                                                              \
            }                                                                  \
        }                                                                      \
        if (kf < K) {                                                          \
            const __m256i m0 = ng_step_mask_##SUF##_v3(K - kf);                \
            const __m256i m1 = ng_step_mask_##SUF##_v3(K - kf - NH);           \
            V a0[ST], a1[ST];                                                  \
            _Pragma("GCC unroll 4")                                            \
            for (int s = 0; s < ST; s++) {                                     \
                a0[s] = MASKLOAD(A + s * lda + kf, m0);                        \
                a1[s] = MASKLOAD(A + s * lda + kf + NH, m1);                   \
            }                                                                  \
            _Pragma("GCC unroll 4")                                            \
            for (int r = 0; r < RT; r++) {                                     \
                if (r >= nr) break;                                            \
                const V w0 = MASKLOAD(W + r * ldw + kf, m0);                   \
                const V w1 = MASKLOAD(W + r * ldw + kf + NH, m1);              \
                _Pragma("GCC unroll 4")                                        \
                for (int s = 0; s < ST; s++) {                                 \
                    lo[r * ST + s] = FMADD(w0, a0[s], lo[r * ST + s]);         \
                    hi[r * ST + s] = FMADD(w1, a1[s], hi[r * ST + s]);         \
                }                                                              \
            }                                                                  \
        }                                                                      \
    }                                                                          \
    NG_ATTR_V3 static void ng_step_rows_##SUF##_##RT##x##ST##_v3(T *out,       \
        ptrdiff_t ldo, ptrdiff_t nr, const T *W, ptrdiff_t ldw, const T *A,    \
        ptrdiff_t lda, ptrdiff_t K, const T *W2, ptrdiff_t ldw2,               \
        const T *A2, ptrdiff_t lda2, ptrdiff_t K2)                             \
    {                                                                          \
        for (ptrdiff_t r0 = 0; r0 < nr; r0 += RT) {                            \
            const ptrdiff_t rn = nr - r0 < RT ? nr - r0 : RT;                  \
            V lo[RT * ST], hi[RT * ST];                                        \
            _Pragma("GCC unroll 4")                                            \
            for (int i = 0; i < RT * ST; i++)                                  \
                lo[i] = hi[i] = ng_step_zero_##SUF##_v3();                     \
            ng_step_acc_##SUF##_##RT##x##ST##_v3(lo, hi, rn, W + r0 * ldw,     \
                                                 ldw, A, lda, K);              \
            if (K2 > 0)                                                        \
                ng_step_acc_##SUF##_##RT##x##ST##_v3(                          \
                    lo, hi, rn, W2 + r0 * ldw2, ldw2, A2, lda2, K2);           \
            for (ptrdiff_t r = 0; r < rn; r++)                                 \
                for (int s = 0; s < ST; s++)                                   \
                    out[s * ldo + r0 + r] = ng_step_sum_##SUF##_v3(            \
                        ADD(lo[r * ST + s], hi[r * ST + s]));                  \
        }                                                                      \
    }

    NG_ATTR_V3 static inline __attribute__((always_inline)) __m256i
    ng_step_mask_f_v3(ptrdiff_t n)
    {
        /* lanes i < n of 8 floats */
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const int c = n < 0 ? 0 : (n > 8 ? 8 : (int)n);
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), idx);
    }
    NG_ATTR_V3 static inline __attribute__((always_inline)) __m256i
    ng_step_mask_d_v3(ptrdiff_t n)
    {
        /* lanes i < n of 4 doubles */
        const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
        const long long c = n < 0 ? 0 : (n > 4 ? 4 : (long long)n);
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x(c), idx);
    }
    NG_ATTR_V3 static inline __attribute__((always_inline)) __m256
    ng_step_zero_f_v3(void) { return _mm256_setzero_ps(); }
    NG_ATTR_V3 static inline __attribute__((always_inline)) __m256d
    ng_step_zero_d_v3(void) { return _mm256_setzero_pd(); }
    /* v holds b[l] = acc[l] + acc[l + 8]; sum (b[l] + b[l + 4]) in the tree */
    NG_ATTR_V3 static inline __attribute__((always_inline)) float
    ng_step_sum_f_v3(__m256 v)
    {
        __m128 c = _mm_add_ps(_mm256_castps256_ps128(v),
                              _mm256_extractf128_ps(v, 1));
        __m128 d = _mm_add_ps(c, _mm_movehl_ps(c, c));
        return _mm_cvtss_f32(d) + _mm_cvtss_f32(_mm_shuffle_ps(d, d, 1));
    }
    /* v holds b[l] = acc[l] + acc[l + 4]; sum (b[l] + b[l + 2]) in the tree */
    NG_ATTR_V3 static inline __attribute__((always_inline)) double
    ng_step_sum_d_v3(__m256d v)
    {
        __m128d c = _mm_add_pd(_mm256_castpd256_pd128(v),
                               _mm256_extractf128_pd(v, 1));
        return _mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c));
    }
    #define NG_MASKLOAD_F(p, m) _mm256_maskload_ps(p, m)
    #define NG_MASKLOAD_D(p, m) _mm256_maskload_pd(p, m)
    NG_DEFINE_STEP_TILE_V3(float, f, __m256, 8, _mm256_loadu_ps,
                           NG_MASKLOAD_F, _mm256_fmadd_ps, _mm256_add_ps,
                           4, 1)
    NG_DEFINE_STEP_TILE_V3(float, f, __m256, 8, _mm256_loadu_ps,
                           NG_MASKLOAD_F, _mm256_fmadd_ps, _mm256_add_ps,
                           1, 4)
    NG_DEFINE_STEP_TILE_V3(double, d, __m256d, 4, _mm256_loadu_pd,
                           NG_MASKLOAD_D, _mm256_fmadd_pd, _mm256_add_pd,
                           4, 1)
    NG_DEFINE_STEP_TILE_V3(double, d, __m256d, 4, _mm256_loadu_pd,
                           NG_MASKLOAD_D, _mm256_fmadd_pd, _mm256_add_pd,
                           1, 4)
    /* four samples at a time (one row per tile), then one at a time (four
       rows per tile) */
    #define NG_DEFINE_STEP_DOTS_V3(T, SUF)                                     \
    NG_ATTR_V3 static void ng_step_dots_##SUF##_v3(T *out, ptrdiff_t ldo,      \
        ptrdiff_t nr, ptrdiff_t ns, const T *W, ptrdiff_t ldw, const T *A,     \
        ptrdiff_t lda, ptrdiff_t K, const T *W2, ptrdiff_t ldw2,               \
        const T *A2, ptrdiff_t lda2, ptrdiff_t K2)                             \
    {                                                                          \
        ptrdiff_t s = 0;                                                       \
        for (; s + 4 <= ns; s += 4)                                            \
            ng_step_rows_##SUF##_1x4_v3(out + s * ldo, ldo, nr, W, ldw,        \
                A + s * lda, lda, K, W2, ldw2, A2 + s * lda2, lda2, K2);       \
        for (; s < ns; s++)                                                    \
            ng_step_rows_##SUF##_4x1_v3(out + s * ldo, ldo, nr, W, ldw,        \
                A + s * lda, lda, K, W2, ldw2, A2 + s * lda2, lda2, K2);       \
    }
    NG_DEFINE_STEP_DOTS_V3(float, f)
    NG_DEFINE_STEP_DOTS_V3(double, d)

    /* AVX-512: a lane vector is one register; tiles of 16 (float) or 8
       (double) row-sample pairs, summed together by transposing adds */
    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512
    ng_step_sum16_v4(const __m512 *a)
    {
        /* lane i of the result: the tree sum of a[i] */
        __m512 s[8], t[4], u[2];
    #pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                                 _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    #pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88),
                                 _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xDD));
    #pragma GCC unroll 2
        for (int i = 0; i < 2; i++)
            u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                                 _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
        __m512 v = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88),
                                 _mm512_shuffle_ps(u[0], u[1], 0xDD));
        /* lane 4q + e of v holds a[4e + q] */
        const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13,
                                              2, 6, 10, 14, 3, 7, 11, 15);
        return _mm512_permutexvar_ps(idx, v);
    }
    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512d
    ng_step_sum8_v4(const __m512d *a)
    {
        __m512d s[4], t[2];
    #pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            s[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x44),
                                 _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xEE));
    #pragma GCC unroll 2
        for (int i = 0; i < 2; i++)
            t[i] = _mm512_add_pd(_mm512_shuffle_f64x2(s[2 * i], s[2 * i + 1], 0x88),
                                 _mm512_shuffle_f64x2(s[2 * i], s[2 * i + 1], 0xDD));
        __m512d v = _mm512_add_pd(_mm512_unpacklo_pd(t[0], t[1]),
                                  _mm512_unpackhi_pd(t[0], t[1]));
        /* lane 2q + e of v holds a[4e + q] */
        const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
        return _mm512_permutexvar_pd(idx, v);
    }

    /* acc[r * ST + s] += terms of dot(W[r], A[s]), r < nr (<= RT), s < ST */
    #define NG_DEFINE_STEP_TILE_V4(T, SUF, V, MASK, L, LOADZ, LOADU, FMADD,   \
                                   RT, ST)                                     \
    NG_ATTR_V4 static inline __attribute__((always_inline)) void               \
    ng_step_acc_##SUF##_##RT##x##ST##_v4(V *acc, ptrdiff_t nr, const T *W,     \
        ptrdiff_t ldw, const T *A, ptrdiff_t lda, ptrdiff_t K)                 \
    {                                                                          \
        const ptrdiff_t kf = K - K % L;                                        \
        const MASK m = (MASK)((1ull << (K - kf)) - 1u);                        \
        if (nr == RT) {                                                        \
            for (ptrdiff_t k0 = 0; k0 < kf; k0 += L) {                         \
                V a[ST];                                                       \
                _Pragma("GCC unroll 16")                                       \
                for (int s = 0; s < ST; s++) a[s] = LOADU(A + s * lda + k0);   \
                _Pragma("GCC unroll 16")                                       \
                for (int r = 0; r < RT; r++) {                                 \
                    const V w = LOADU(W + r * ldw + k0);                       \
                    _Pragma("GCC unroll 16")                                   \
                    for (int s = 0; s < ST; s++)                               \
                        acc[r * ST + s] = FMADD(w, a[s], acc[r * ST + s]);     \
                }                                                              \
            }                                                                  \
            if (kf < K) {                                                      \
                V a[ST];                                                       \
                _Pragma("GCC unroll 16")                                       \
                for (int s = 0; s < ST; s++)                                   \
                    a[s] = LOADZ(m, A + s * lda + kf);                         \
                _Pragma("GCC unroll 16")                                       \
                for (int r = 0; r < RT; r++) {                                 \
                    const V w = LOADZ(m, W + r * ldw + kf);                    \
                    _Pragma("GCC unroll 16")                                   \
                    for (int s = 0; s < ST; s++)                               \
                        acc[r * ST + s] = FMADD(w, a[s], acc[r * ST + s]);     \
                }                                                              \
            }                                                                  \
            return;                                                            \
        }                                                                      \
        for (ptrdiff_t k0 = 0; k0 < K; k0 += L) {                              \
            const MASK mk = k0 < kf ? (MASK)~0u : m;                           \
            V a[ST];                                                           \
            _Pragma("GCC unroll 16")                                           \
            for (int s = 0; s < ST; s++) a[s] = LOADZ(mk, A + s * lda + k0);   \
            _Pragma("GCC unroll 16")                                           \
            for (int r = 0; r < RT; r++) {                                     \
                if (r >= nr) break;                                            \
                const V w = LOADZ(mk, W + r * ldw + k0);                       \
                _Pragma("GCC unroll 16")                                       \
                for (int s = 0; s < ST; s++)                                   \
                    acc[r * ST + s] = FMADD(w, a[s], acc[r * ST + s]);         \
            }                                                                  \
        }                                                                      \
    }                                                                          \
    NG_ATTR_V4 static void ng_step_rows_##SUF##_##RT##x##ST##_v4(T *out,       \
        ptrdiff_t ldo, ptrdiff_t nr, const T *W, ptrdiff_t ldw, const T *A,    \
        ptrdiff_t lda, ptrdiff_t K, const T *W2, ptrdiff_t ldw2,               \
        const T *A2, ptrdiff_t lda2, ptrdiff_t K2)                             \
    {                                                                          \
        for (ptrdiff_t r0 = 0; r0 < nr; r0 += RT) {                            \
            const ptrdiff_t rn = nr - r0 < RT ? nr - r0 : RT;                  \
            V acc[L];                                                          \
            _Pragma("GCC unroll 16")                                           \
            for (int i = 0; i < L; i++) acc[i] = ng_step_zero_##SUF##_v4();    \
            ng_step_acc_##SUF##_##RT##x##ST##_v4(acc, rn, W + r0 * ldw, ldw,   \
                                                 A, lda, K);                   \
            if (K2 > 0)                                                        \
                ng_step_acc_##SUF##_##RT##x##ST##_v4(acc, rn, W2 + r0 * ldw2,  \
                                                     ldw2, A2, lda2, K2);      \
            const V sum = ng_step_sum_##SUF##_v4(acc);                         \
            if (ST == 1) {                                                     \
                ng_step_store_##SUF##_v4(out + r0, rn, sum);                   \
            } else {                                                           \
                T tmp[L];                                                      \
                ng_step_store_##SUF##_v4(tmp, L, sum);                         \
                for (ptrdiff_t r = 0; r < rn; r++)                             \
                    for (int s = 0; s < ST; s++)                               \
                        out[s * ldo + r0 + r] = tmp[r * ST + s];               \
            }                                                                  \
        }                                                                      \
    }

    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512
    ng_step_zero_f_v4(void) { return _mm512_setzero_ps(); }
    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512d
    ng_step_zero_d_v4(void) { return _mm512_setzero_pd(); }
    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512
    ng_step_sum_f_v4(const __m512 *a) { return ng_step_sum16_v4(a); }
    NG_ATTR_V4 static inline __attribute__((always_inline)) __m512d
    ng_step_sum_d_v4(const __m512d *a) { return ng_step_sum8_v4(a); }
    NG_ATTR_V4 static inline __attribute__((always_inline)) void
    ng_step_store_f_v4(float *p, ptrdiff_t n, __m512 v)
    {
        _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
    }
    NG_ATTR_V4 static inline __attribute__((always_inline)) void
    ng_step_store_d_v4(double *p, ptrdiff_t n, __m512d v)
    {
        _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1u), v);
    }
    NG_DEFINE_STEP_TILE_V4(float, f, __m512, __mmask16, 16,
                           _mm512_maskz_loadu_ps, _mm512_loadu_ps,
                           _mm512_fmadd_ps, 16, 1)
    NG_DEFINE_STEP_TILE_V4(float, f, __m512, __mmask16, 16,
                           _mm512_maskz_loadu_ps, _mm512_loadu_ps,
                           _mm512_fmadd_ps, 4, 4)
    NG_DEFINE_STEP_TILE_V4(double, d, __m512d, __mmask8, 8,
                           _mm512_maskz_loadu_pd, _mm512_loadu_pd,
                           _mm512_fmadd_pd, 8, 1)
    NG_DEFINE_STEP_TILE_V4(double, d, __m512d, __mmask8, 8,
                           _mm512_maskz_loadu_pd, _mm512_loadu_pd,
                           _mm512_fmadd_pd, 2, 4)

    #define NG_DEFINE_STEP_DOTS_V4(T, SUF, RT1, RT4)                           \
    NG_ATTR_V4 static void ng_step_dots_##SUF##_v4(T *out, ptrdiff_t ldo,      \
        ptrdiff_t nr, ptrdiff_t ns, const T *W, ptrdiff_t ldw, const T *A,     \
        ptrdiff_t lda, ptrdiff_t K, const T *W2, ptrdiff_t ldw2,               \
        const T *A2, ptrdiff_t lda2, ptrdiff_t K2)                             \
    {                                                                          \
        ptrdiff_t s = 0;                                                       \
        for (; s + 4 <= ns; s += 4)                                            \
            ng_step_rows_##SUF##_##RT4##x4_v4(out + s * ldo, ldo, nr, W, ldw,  \
                A + s * lda, lda, K, W2, ldw2, A2 + s * lda2, lda2, K2);       \
        for (; s < ns; s++)                                                    \
            ng_step_rows_##SUF##_##RT1##x1_v4(out + s * ldo, ldo, nr, W, ldw,  \
                A + s * lda, lda, K, W2, ldw2, A2 + s * lda2, lda2, K2);       \
    }
    NG_DEFINE_STEP_DOTS_V4(float, f, 16, 4)
    NG_DEFINE_STEP_DOTS_V4(double, d, 8, 2)
    #endif

    typedef void (*ng_step_dots_f_t)(float *, ptrdiff_t, ptrdiff_t, ptrdiff_t,
        const float *, ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
        const float *, ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t);
    typedef void (*ng_step_dots_d_t)(double *, ptrdiff_t, ptrdiff_t,
        ptrdiff_t, const double *, ptrdiff_t, const double *, ptrdiff_t,
        ptrdiff_t, const double *, ptrdiff_t, const double *, ptrdiff_t,
        ptrdiff_t);

    #if NG_DISPATCH
    /* the level ng_select chose, read from the function it installed */
    static int ng_step_level(void)
    {
        if (ng_gemm_nt_float == ng_gemm_nt_float_v4) return 2;
        if (ng_gemm_nt_float == ng_gemm_nt_float_v3) return 1;
        return 0;
    }
    #endif

    /* One layer, samples 0 .. ns-1 (ns <= NG_SG): x (ns, I), h (ns, H),
       h_new (ns, H) written; w_ih (3H, I), w_hh (3H, H), b_ih, b_hh (3H,);
       work (ns, 5H). */
    #define NG_DEFINE_STEP_GROUP(T, SUF)                                       \
    static void ng_step_group_##SUF(ng_step_dots_##SUF##_t dots,               \
        ptrdiff_t ns, ptrdiff_t I, ptrdiff_t H, const T *x, const T *w_ih,     \
        const T *w_hh, const T *b_ih, const T *b_hh, const T *h,               \
        int reset_after, T *h_new, T *work)                                    \
    {                                                                          \
        const ptrdiff_t G = 3 * H;                                             \
        T *pre = work;             /* (ns, 3H) pre-activations, then gates */  \
        T *hn = pre + ns * G;      /* (ns, H) W_hn h, or W_hn (r * h) */       \
        T *rh = hn + ns * H;       /* (ns, H) r * h (reset before) */          \
        dots(pre, G, 2 * H, ns, w_ih, I, x, I, I, w_hh, H, h, H, H);           \
        dots(pre + 2 * H, G, H, ns, w_ih + 2 * H * I, I, x, I, I,              \
             w_hh, H, h, H, 0);                                                \
        if (reset_after)                                                       \
            dots(hn, H, H, ns, w_hh + 2 * H * H, H, h, H, H,                   \
                 w_hh, H, h, H, 0);                                            \
        for (ptrdiff_t s = 0; s < ns; s++) {                                   \
            T *p = pre + s * G;                                                \
            for (ptrdiff_t j = 0; j < 2 * H; j++)                              \
                p[j] = p[j] + (b_ih[j] + b_hh[j]);                             \
            for (ptrdiff_t j = 2 * H; j < G; j++) p[j] = p[j] + b_ih[j];       \
            ng_sigmoid_##T(2 * H, p);                                          \
            if (reset_after) {                                                 \
                const T *q = hn + s * H;                                       \
                for (ptrdiff_t j = 0; j < H; j++)                              \
                    p[2 * H + j] = p[2 * H + j]                                \
                        + p[j] * (q[j] + b_hh[2 * H + j]);                     \
            } else {                                                           \
                for (ptrdiff_t j = 0; j < H; j++)                              \
                    rh[s * H + j] = p[j] * h[s * H + j];                       \
            }                                                                  \
        }                                                                      \
        if (!reset_after) {                                                    \
            dots(hn, H, H, ns, w_hh + 2 * H * H, H, rh, H, H,                  \
                 w_hh, H, rh, H, 0);                                           \
            for (ptrdiff_t s = 0; s < ns; s++)                                 \
                for (ptrdiff_t j = 0; j < H; j++)                              \
                    pre[s * G + 2 * H + j] = pre[s * G + 2 * H + j]            \
                        + (hn[s * H + j] + b_hh[2 * H + j]);                   \
        }                                                                      \
        for (ptrdiff_t s = 0; s < ns; s++) {                                   \
            T *p = pre + s * G;                                                \
            ng_tanh_##T(H, p + 2 * H);                                         \
            ng_hnew_##T(H, h_new + s * H, p + H, p + 2 * H, h + s * H);        \
        }                                                                      \
    }                                                                          \
    /* samples b0 .. b1-1 of one layer, in groups of NG_SG */                  \
    static void ng_step_layer_##SUF(ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t I,   \
        ptrdiff_t H, const T *x, const T *w_ih, const T *w_hh, const T *b_ih,  \
        const T *b_hh, const T *h, int reset_after, T *h_new, T *work)         \
    {                                                                          \
        ng_step_dots_##SUF##_t dots = ng_step_dots_##SUF##_base;               \
        NG_STEP_PICK(SUF)                                                      \
        for (ptrdiff_t b = b0; b < b1; b += NG_SG) {                           \
            const ptrdiff_t ns = b1 - b < NG_SG ? b1 - b : NG_SG;              \
            ng_step_group_##SUF(dots, ns, I, H, x + b * I, w_ih, w_hh, b_ih,   \
                                b_hh, h + b * H, reset_after, h_new + b * H,   \
                                work);                                         \
        }                                                                      \
    }
    #if NG_DISPATCH
    #define NG_STEP_PICK(SUF)                                                  \
        switch (ng_step_level()) {                                             \
        case 2: dots = ng_step_dots_##SUF##_v4; break;                         \
        case 1: dots = ng_step_dots_##SUF##_v3; break;                         \
        default: break;                                                        \
        }
    #else
    #define NG_STEP_PICK(SUF)
    #endif
    NG_DEFINE_STEP_GROUP(float, f)
    NG_DEFINE_STEP_GROUP(double, d)

    /* samples b0 .. b1-1 (of B) through layers 0 .. L-1: x (B, I),
       h and h_new (L, B, H); w holds w_ih, w_hh, b_ih, b_hh of every layer.
       Returns -1 when out of memory. */
    #define NG_DEFINE_STEP_STACK(T, SUF)                                       \
    static int ng_step_stack_##SUF(ptrdiff_t b0, ptrdiff_t b1, ptrdiff_t B,    \
        ptrdiff_t L, ptrdiff_t I, ptrdiff_t H, void *const *w, const T *x,     \
        const T *h, int reset_after, T *h_new)                                 \
    {                                                                          \
        T *work = (T *)malloc((size_t)(NG_SG * 5 * H) * sizeof(T));            \
        if (work == NULL) return -1;                                           \
        for (ptrdiff_t l = 0; l < L; l++)                                      \
            ng_step_layer_##SUF(b0, b1, l ? H : I, H,                          \
                                l ? h_new + (l - 1) * B * H : x,               \
                                (const T *)w[4 * l], (const T *)w[4 * l + 1],  \
                                (const T *)w[4 * l + 2],                       \
                                (const T *)w[4 * l + 3], h + l * B * H,        \
                                reset_after, h_new + l * B * H, work);         \
        free(work);                                                            \
        return 0;                                                              \
    }                                                                          \
    /* 1 when no v[i] is NaN or infinite */                                    \
    static int ng_all_finite_##SUF(ptrdiff_t n, const T *v)                    \
    {                                                                          \
        int bad = 0;                                                           \
        for (ptrdiff_t i = 0; i < n; i++) bad |= !(v[i] - v[i] == 0);          \
        return !bad;                                                           \
    }
    NG_DEFINE_STEP_STACK(float, f)
    NG_DEFINE_STEP_STACK(double, d)
    """
    int ng_step_stack_f(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t B,
                        Py_ssize_t L, Py_ssize_t I, Py_ssize_t H,
                        void **w, const float *x, const float *h,
                        int reset_after, float *h_new) noexcept nogil
    int ng_step_stack_d(Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t B,
                        Py_ssize_t L, Py_ssize_t I, Py_ssize_t H,
                        void **w, const double *x, const double *h,
                        int reset_after, double *h_new) noexcept nogil
    int ng_all_finite_f(Py_ssize_t n, const float *v) noexcept nogil
    int ng_all_finite_d(Py_ssize_t n, const double *v) noexcept nogil
    int NG_SG


cdef extern from *:
    """
    /* The leading fields of a numpy array object (PyArrayObject_fields in
       numpy/ndarraytypes.h). They are part of numpy's binary interface,
       unchanged since numpy 1.7, which compiled extensions rely on; the
       step reads them for the checks it makes on every call, far cheaper
       than acquiring buffers. Only objects whose type is exactly
       numpy.ndarray are read this way. */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } ng_array_head;
    #define NG_ARRAY_C_CONTIGUOUS 0x0001
    #define NG_ARRAY_ALIGNED 0x0100
    """
    ctypedef struct ng_array_head:
        char *data
        int nd
        Py_ssize_t *dimensions
        void *descr
        int flags
    int NG_ARRAY_C_CONTIGUOUS
    int NG_ARRAY_ALIGNED


cdef object _ndarray = np.ndarray
cdef object _float32 = np.dtype(np.float32)
cdef object _float64 = np.dtype(np.float64)


cdef inline ng_array_head *_step_array(object obj, int ndim,
                                       int *kind) noexcept:
    # obj as an array head when it is exactly a numpy.ndarray with ndim
    # dimensions, C-contiguous and aligned, of the native float32 (kind 1)
    # or float64 (kind 2) dtype and, when *kind is already set, of that
    # kind; NULL otherwise
    cdef ng_array_head *a
    cdef int k
    if type(obj) is not _ndarray:
        return NULL
    a = <ng_array_head *><void *>obj
    if a.nd != ndim or (a.flags & (NG_ARRAY_C_CONTIGUOUS | NG_ARRAY_ALIGNED)
                        != (NG_ARRAY_C_CONTIGUOUS | NG_ARRAY_ALIGNED)):
        return NULL
    if a.descr == <void *>_float32:
        k = 1
    elif a.descr == <void *>_float64:
        k = 2
    elif <object>a.descr == _float32:    # an equal dtype object (unpickled)
        k = 1
    elif <object>a.descr == _float64:
        k = 2
    else:
        return NULL
    if kind[0] != 0 and kind[0] != k:
        return NULL
    kind[0] = k
    return a


cdef class _StepWeights:
    """Where :func:`step_forward` finds the weights: a dict and names."""
    cdef readonly dict params
    cdef readonly tuple weight_names
    cdef readonly object bias_names
    cdef readonly Py_ssize_t n_layers


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
    prepared = _StepWeights()
    prepared.params = params
    prepared.weight_names = tuple(weight_names)
    prepared.bias_names = (tuple(bias_names) if bias_names is not None
                           else None)
    prepared.n_layers = len(prepared.weight_names) // 2
    if (prepared.n_layers < 1
            or len(prepared.weight_names) != 2 * prepared.n_layers
            or (bias_names is not None
                and len(prepared.bias_names) != 2 * prepared.n_layers)):
        raise ValueError("step_prepare needs two weight names (and two bias "
                         "names) per layer")
    return prepared


def step_forward(x, h, _StepWeights prepared, bint reset_after,
                 n_threads=None):
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
    cdef Py_ssize_t L = prepared.n_layers, B, I, H, G, layer, k
    cdef Py_ssize_t n_chunks, per_chunk, chunk, threads = 1
    cdef int kind = 0, n_failed = 0
    cdef bint finite
    cdef ng_array_head *a
    cdef ng_array_head *hx
    cdef ng_array_head *hh
    cdef void *ptrs_small[32]
    cdef void **ptrs = ptrs_small
    cdef void *zeros = NULL
    cdef char *x_data
    cdef char *h_data
    cdef char *out_data
    hx = _step_array(x, 2, &kind)
    if hx == NULL:
        return None
    B = hx.dimensions[0]
    I = hx.dimensions[1]
    params = prepared.params
    # strong references to the arrays while the GIL is released
    weights = [params.get(name) for name in prepared.weight_names]
    biases = (None if prepared.bias_names is None
              else [params.get(name) for name in prepared.bias_names])
    a = _step_array(weights[1], 2, &kind)
    if a == NULL:
        return None
    H = a.dimensions[1]
    G = 3 * H
    if B < 1 or I < 1 or H < 1:
        return None
    if 4 * L > 32:
        ptrs = <void **>malloc(4 * L * sizeof(void *))
        if ptrs == NULL:
            raise MemoryError()
    try:
        for layer in range(L):
            a = _step_array(weights[2 * layer], 2, &kind)
            if (a == NULL or a.dimensions[0] != G
                    or a.dimensions[1] != (I if layer == 0 else H)):
                return None
            ptrs[4 * layer] = a.data
            a = _step_array(weights[2 * layer + 1], 2, &kind)
            if a == NULL or a.dimensions[0] != G or a.dimensions[1] != H:
                return None
            ptrs[4 * layer + 1] = a.data
            if biases is not None:
                for k in range(2):
                    a = _step_array(biases[2 * layer + k], 1, &kind)
                    if a == NULL or a.dimensions[0] != G:
                        return None
                    ptrs[4 * layer + 2 + k] = a.data
        dtype = _float32 if kind == 1 else _float64
        if biases is None:
            zeros = malloc(G * (4 if kind == 1 else 8))
            if zeros == NULL:
                raise MemoryError()
            memset(zeros, 0, G * (4 if kind == 1 else 8))
            for layer in range(L):
                ptrs[4 * layer + 2] = zeros
                ptrs[4 * layer + 3] = zeros
        if h is None:
            h = np.zeros((L, B, H), dtype=dtype)
        hh = _step_array(h, 3, &kind)
        if (hh == NULL or hh.dimensions[0] != L or hh.dimensions[1] != B
                or hh.dimensions[2] != H):
            return None
        x_data = hx.data
        h_data = hh.data
        with nogil:
            if kind == 1:
                finite = (ng_all_finite_f(B * I, <const float *>x_data)
                          and ng_all_finite_f(L * B * H,
                                              <const float *>h_data))
            else:
                finite = (ng_all_finite_d(B * I, <const double *>x_data)
                          and ng_all_finite_d(L * B * H,
                                              <const double *>h_data))
        if not finite:
            return None
        h_new = np.empty((L, B, H), dtype=dtype)
        out_data = (<ng_array_head *><void *>h_new).data
        # samples split into chunks of whole groups, one chunk per thread
        if B > NG_SG:
            if n_threads is None:
                from ._threads import get_num_threads
                n_threads = get_num_threads()
            threads = _use_threads(B, L, I, H, n_threads,
                                   _step_serial_flops)
        n_chunks = min(threads, _ceil_div(B, NG_SG))
        per_chunk = _ceil_div(_ceil_div(B, n_chunks), NG_SG) * NG_SG
        n_chunks = _ceil_div(B, per_chunk)
        with nogil:
            if n_chunks < 2:
                if kind == 1:
                    n_failed = -ng_step_stack_f(
                        0, B, B, L, I, H, ptrs, <const float *>x_data,
                        <const float *>h_data, reset_after,
                        <float *>out_data)
                else:
                    n_failed = -ng_step_stack_d(
                        0, B, B, L, I, H, ptrs, <const double *>x_data,
                        <const double *>h_data, reset_after,
                        <double *>out_data)
            else:
                for chunk in prange(n_chunks, schedule="static",
                                    num_threads=threads):
                    if kind == 1:
                        n_failed -= ng_step_stack_f(
                            chunk * per_chunk,
                            min(B, (chunk + 1) * per_chunk), B, L, I, H,
                            ptrs, <const float *>x_data,
                            <const float *>h_data, reset_after,
                            <float *>out_data)
                    else:
                        n_failed -= ng_step_stack_d(
                            chunk * per_chunk,
                            min(B, (chunk + 1) * per_chunk), B, L, I, H,
                            ptrs, <const double *>x_data,
                            <const double *>h_data, reset_after,
                            <double *>out_data)
        if n_failed:
            raise MemoryError()
        return h_new
    finally:
        free(zeros)
        if ptrs != ptrs_small:
            free(ptrs)


# ---------------------------------------------------------------------------
# backward
#
# The steps are processed in chunks, last chunk first (numgru._chunks): the
# recurrence over one chunk for every sample block, then that chunk's terms
# of the weight gradients. A chunk's rows (one per valid sample step) are
# stored sample by sample, each sample's steps in ascending time order from
# row row0[b], so that a sample's rows of x and of the chunk arrays line up.

cdef void _backward_block(
        const floating *x, const floating *w_ih, const floating *w_hh,
        const floating *h0, const int64_t *lengths, Py_ssize_t b_start,
        Py_ssize_t b_stop, Py_ssize_t T, Py_ssize_t I, Py_ssize_t H,
        bint reverse, bint reset_after, Py_ssize_t s_lo, Py_ssize_t s_hi,
        bint first, bint last, const Py_ssize_t *row0,
        const floating *out, const floating *gates, const floating *d_out,
        const floating *d_h_last, floating *d_h0, floating *d_x,
        floating *d_gi, floating *aux, floating *h_in, floating *x_c,
        floating *work, Py_ssize_t *iwork) noexcept nogil:
    # Steps s_hi-1 down to s_lo of samples b_start <= b < b_stop, then the
    # input gradient at these steps.
    # x (B, T, I), w_ih (3H, I) and w_hh (3H, H) in panels (_copy_panels),
    # h0 (B, H), lengths (B,),
    # out (B, T, H), gates (B, T, 4H), d_out (B, T, H), d_h_last (B, H);
    # d_h0 (B, H) written when last; d_x (B, T, I) zeroed for these samples
    # when first, rows of these steps written; row0 (B,) first chunk row of
    # each sample. Chunk rows written for these steps:
    #   d_gi (R, 3H) gradient of gi, aux (R, H) gradient of hn (reset
    #   after) or r * h_prev (reset before), h_in (R, H) h_prev, x_c (R, I)
    #   the input.
    # work (nb, 8H), its first nb * H values the gradient of the states
    # (carried from chunk to chunk); iwork (3 nb); nb = b_stop - b_start.
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t nb = b_stop - b_start
    cdef floating *dh = work                  # (nb, H) gradient of the state
    cdef floating *dhn = dh + nb * H          # (nb, H) dh' at this step
    cdef floating *dga = dhn + nb * H         # (nb, 3H) gradient of gh
    cdef floating *acc = dga + nb * G         # (nb, H) W_hh^T dgh
    cdef floating *drh = acc + nb * H         # (nb, H) gradient of r * h_prev
    cdef Py_ssize_t *act = iwork              # (nb,) active sample
    cdef Py_ssize_t *tt = iwork + nb          # (nb,) its time index
    cdef Py_ssize_t *cr = iwork + 2 * nb      # (nb,) its chunk row
    cdef Py_ssize_t b, i, j, s, t, c, L, n, t_lo, na
    cdef const floating *g
    cdef const floating *r
    cdef const floating *zz
    cdef const floating *nv
    cdef const floating *hn
    cdef const floating *hprev
    cdef const floating *dout
    cdef floating *dgi
    cdef floating *dgar
    cdef floating *dhnr
    cdef floating one = 1

    if first:
        for b in range(b_start, b_stop):
            memcpy(dh + (b - b_start) * H, d_h_last + b * H,
                   H * sizeof(floating))
            memset(d_x + b * T * I, 0, T * I * sizeof(floating))

    for s in range(s_hi - 1, s_lo - 1, -1):
        na = 0
        for b in range(b_start, b_stop):
            L = lengths[b]
            if s >= L:
                continue
            t = _time_index(s, L, reverse)
            # first time index of the sample's steps in this chunk
            t_lo = L - min(s_hi, L) if reverse else s_lo
            act[na] = b
            tt[na] = t
            cr[na] = row0[b] + t - t_lo
            na = na + 1

        for i in range(na):
            b = act[i]
            t = tt[i]
            c = cr[i]
            if s == 0:
                hprev = h0 + b * H
            elif reverse:
                hprev = out + (b * T + t + 1) * H
            else:
                hprev = out + (b * T + t - 1) * H
            g = gates + (b * T + t) * 4 * H
            r = g
            zz = g + H
            nv = g + 2 * H
            hn = g + 3 * H
            dout = d_out + (b * T + t) * H
            dhnr = dhn + i * H
            dgi = d_gi + c * G
            dgar = dga + i * G
            memcpy(h_in + c * H, hprev, H * sizeof(floating))
            # dh' = dh + d_out ; dn = dh' (1 - z) ; dz = dh' (h_prev - n)
            # da_n = dn (1 - n^2) ; da_z = dz z (1 - z)
            _bwd_zn(H, dh + (b - b_start) * H, dout, zz, nv, hprev, dhnr, dgi,
                    dgar)
            if reset_after:
                # da_r = da_n hn r (1 - r) ; d(gh_n) = da_n r
                _bwd_r(H, hn, r, dgi, dgar, aux + c * H)

        if reset_after:
            # dh_prev = dh' * z + W_hh^T [da_r, da_z, da_n * r]
            for i in range(na):
                memset(acc + i * H, 0, H * sizeof(floating))
            _gemm_panels(na, H, G, dga, G, 1, w_hh, G, 0, acc, H)
            for i in range(na):
                b = act[i]
                zz = gates + (b * T + tt[i]) * 4 * H + H
                _muladd(H, dh + (b - b_start) * H, dhn + i * H, zz,
                        acc + i * H)
        else:
            # d(r * h_prev) = W_hn^T da_n ; da_r = d(r h_prev) * h_prev * r (1 - r)
            for i in range(na):
                memset(drh + i * H, 0, H * sizeof(floating))
            _gemm_panels(na, H, H, dga + 2 * H, G, 1, w_hh, G, 2 * H, drh, H)
            for i in range(na):
                b = act[i]
                c = cr[i]
                r = gates + (b * T + tt[i]) * 4 * H
                hprev = h_in + c * H
                dgi = d_gi + c * G
                for j in range(H):
                    dgi[j] = drh[i * H + j] * hprev[j] * r[j] * (one - r[j])
                    dga[i * G + j] = dgi[j]
                    aux[c * H + j] = r[j] * hprev[j]
                memset(acc + i * H, 0, H * sizeof(floating))
            # dh_prev = dh' * z + d(r h_prev) * r + W_hrz^T [da_r, da_z]
            _gemm_panels(na, H, 2 * H, dga, G, 1, w_hh, G, 0, acc, H)
            for i in range(na):
                b = act[i]
                g = gates + (b * T + tt[i]) * 4 * H
                r = g
                zz = g + H
                for j in range(H):
                    dh[(b - b_start) * H + j] = (
                        dhn[i * H + j] * zz[j] + drh[i * H + j] * r[j]
                        + acc[i * H + j])

    # inputs of these steps (for the weight gradients), and their gradient
    # d_x = d_gi @ W_ih
    for b in range(b_start, b_stop):
        L = lengths[b]
        n = min(s_hi, L) - s_lo
        if n <= 0:
            continue
        t_lo = L - s_lo - n if reverse else s_lo
        memcpy(x_c + row0[b] * I, x + (b * T + t_lo) * I,
               n * I * sizeof(floating))
        _gemm_panels(n, I, G, d_gi + row0[b] * G, G, 1, w_ih, G, 0,
                     d_x + (b * T + t_lo) * I, I)

    if last:
        for b in range(b_start, b_stop):
            memcpy(d_h0 + b * H, dh + (b - b_start) * H, H * sizeof(floating))


cdef void _weight_grad_cols(
        Py_ssize_t n_rows, Py_ssize_t I, Py_ssize_t H, bint reset_after,
        bint first, bint last, const floating *x_c, const floating *d_gi,
        const floating *aux, const floating *h_in, Py_ssize_t c0,
        Py_ssize_t c1, floating *dwihT, floating *dwhhT, floating *d_w_ih,
        floating *d_w_hh, floating *d_b_ih, floating *d_b_hh) noexcept nogil:
    # Columns c0 <= c < c1 of the gate axis (3H), inside one gate block:
    # adds the n_rows chunk rows (see _backward_block) to dwihT (I, 3H),
    # dwhhT (H, 3H) and d_b_ih, d_b_hh (3H,); zeroes them first when first;
    # writes d_w_ih (3H, I), d_w_hh (3H, H) when last. Rows are added in
    # ascending order.
    cdef Py_ssize_t G = 3 * H
    cdef Py_ssize_t nc = c1 - c0
    cdef Py_ssize_t i, j
    cdef bint n_block = c0 >= 2 * H
    cdef floating one = 1
    cdef const floating *hsrc = h_in
    cdef const floating *gsrc = d_gi + c0
    cdef Py_ssize_t gld = G
    if n_block and reset_after:
        # gradient of hn, and of its bias (gh_n = hn)
        gsrc = aux + (c0 - 2 * H)
        gld = H
    elif n_block:
        # hn = W_hn (r * h_prev) + b_hn
        hsrc = aux

    if first:
        for i in range(I):
            memset(dwihT + i * G + c0, 0, nc * sizeof(floating))
        for i in range(H):
            memset(dwhhT + i * G + c0, 0, nc * sizeof(floating))
        memset(d_b_ih + c0, 0, nc * sizeof(floating))
        memset(d_b_hh + c0, 0, nc * sizeof(floating))

    # dW_ih^T += X^T dGI ; dW_hh^T += H_prev^T dGH
    _gemm(I, nc, n_rows, x_c, 1, I, d_gi + c0, G, dwihT + c0, G)
    _gemm(H, nc, n_rows, hsrc, 1, H, gsrc, gld, dwhhT + c0, G)
    # d_b += sum of the rows, as products with a row of ones:
    # madd(1, g, acc) rounds g + acc once, like a plain sum
    _gemm(1, nc, n_rows, &one, 0, 0, d_gi + c0, G, d_b_ih + c0, G)
    _gemm(1, nc, n_rows, &one, 0, 0, gsrc, gld, d_b_hh + c0, gld)

    if last:
        for j in range(c0, c1):
            for i in range(I):
                d_w_ih[j * I + i] = dwihT[i * G + j]
            for i in range(H):
                d_w_hh[j * H + i] = dwhhT[i * G + j]


cdef void _weight_grad_task(_Args *a, Py_ssize_t task,
                            floating *tag) noexcept nogil:
    # one column piece of one gate block of the weight gradients, columns
    # aligned to 16 (tag: NULL, selects the dtype)
    cdef Py_ssize_t H = a.H
    cdef Py_ssize_t gate = task // a.per_gate
    cdef Py_ssize_t piece = task % a.per_gate
    cdef Py_ssize_t c0, c1
    c0 = gate * H + ((H * piece) // a.per_gate) // 16 * 16
    if piece == a.per_gate - 1:
        c1 = (gate + 1) * H
    else:
        c1 = gate * H + ((H * (piece + 1)) // a.per_gate) // 16 * 16
    _weight_grad_cols(a.n_rows, a.I, H, a.reset_after, a.first, a.last,
                      <const floating *>a.x_c, <const floating *>a.d_gi,
                      <const floating *>a.aux, <const floating *>a.h_in,
                      c0, c1, <floating *>a.dwihT, <floating *>a.dwhhT,
                      <floating *>a.d_w_ih, <floating *>a.d_w_hh,
                      <floating *>a.d_b_ih, <floating *>a.d_b_hh)


cdef void _weight_grad_item_f(void *a, Py_ssize_t task) noexcept nogil:
    _weight_grad_task(<_Args *>a, task, <float *>NULL)


cdef void _weight_grad_item_d(void *a, Py_ssize_t task) noexcept nogil:
    _weight_grad_task(<_Args *>a, task, <double *>NULL)


cdef void _backward_item(_Args *a, Py_ssize_t blk,
                         floating *tag) noexcept nogil:
    # one sample block of the backward pass over one chunk of steps
    cdef Py_ssize_t b_start = blk * a.per_block
    cdef Py_ssize_t b_stop = min(b_start + a.per_block, a.B)
    _backward_block(
        <const floating *>a.x, <const floating *>a.w_ih,
        <const floating *>a.w_hh, <const floating *>a.h0, a.lengths,
        b_start, b_stop, a.T, a.I, a.H, a.reverse, a.reset_after, a.s_lo,
        a.s_hi, a.first, a.last, a.row0, <const floating *>a.out,
        <const floating *>a.gates, <const floating *>a.d_out,
        <const floating *>a.d_h_last, <floating *>a.d_h0,
        <floating *>a.d_x, <floating *>a.d_gi, <floating *>a.aux,
        <floating *>a.h_in, <floating *>a.x_c,
        <floating *>a.work + blk * a.wstride, a.iwork + blk * a.istride)


cdef void _backward_item_f(void *a, Py_ssize_t blk) noexcept nogil:
    _backward_item(<_Args *>a, blk, <float *>NULL)


cdef void _backward_item_d(void *a, Py_ssize_t blk) noexcept nogil:
    _backward_item(<_Args *>a, blk, <double *>NULL)


cdef void _run_items(_Job job, int n_threads) except *:
    # the job's items on up to n_threads threads, or one after another on
    # the calling thread (same results)
    cdef Py_ssize_t item
    if n_threads > 1:
        _run_job(job, n_threads)
    else:
        with nogil:
            for item in range(job.n):
                job.fn(&job.args, item)


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
    cdef Py_ssize_t n_blocks, per_block, b, n, n_rows, steps, max_len = 0
    n_threads = max(1, n_threads)
    dtype = np.float32 if floating is float else np.float64
    if B == 0 or T == 0:
        d_w_ih[...] = 0
        d_w_hh[...] = 0
        d_b_ih[...] = 0
        d_b_hh[...] = 0
        return
    for b in range(B):
        max_len = max(max_len, lengths[b])

    n_threads = _use_threads(B, T, I, H, n_threads, _serial_flops)
    n_blocks = _n_blocks(B, n_threads, 3 * H * (I + H) * sizeof(floating))
    per_block = _ceil_div(B, n_blocks)
    n_blocks = _ceil_div(B, per_block)
    steps = chunk_steps(B, T)
    # chunk arrays: d_gi (R, 3H), aux, h_in (R, H), x_c (R, I)
    cdef Py_ssize_t R = B * steps
    # work arrays cut from the kept scratch: the packed W_ih (G*I) and W_hh
    # (G*H), d_W_ih^T (I, G), d_W_hh^T (H, G), the chunk arrays and the
    # per-block work (n_blocks, per_block * 8H)
    cdef Py_ssize_t wstride = per_block * 8 * H
    scratch = _take_scratch(
        2 * (_lines(I * G) + _lines(H * G)) + _lines(R * (G + 2 * H + I))
        + n_blocks * wstride, dtype)
    cdef floating[::1] space = scratch
    cdef floating *w_ih_p = &space[0]
    cdef floating *w_hh_p = w_ih_p + _lines(G * I)
    cdef floating *dwihT = w_hh_p + _lines(G * H)
    cdef floating *dwhhT = dwihT + _lines(I * G)
    cdef floating *chunk = dwhhT + _lines(H * G)
    cdef floating *work = chunk + _lines(R * (G + 2 * H + I))
    cdef Py_ssize_t[:, ::1] iwork = np.empty((n_blocks, 3 * per_block),
                                             dtype=np.intp)
    cdef Py_ssize_t[::1] row0 = np.empty(B, dtype=np.intp)
    with nogil:
        _copy_panels(G, I, &w_ih[0, 0], w_ih_p)
        _copy_panels(G, H, &w_hh[0, 0], w_hh_p)

    job = _Job()
    job.fn = _backward_item_f if floating is float else _backward_item_d
    job.n = n_blocks
    job.args.x = &x[0, 0, 0]
    job.args.w_ih = w_ih_p
    job.args.w_hh = w_hh_p
    job.args.h0 = &h0[0, 0]
    job.args.lengths = &lengths[0]
    job.args.out = <void *>&out[0, 0, 0]
    job.args.gates = <void *>&gates[0, 0, 0]
    job.args.work = work
    job.args.iwork = &iwork[0, 0]
    job.args.wstride = wstride
    job.args.istride = iwork.shape[1]
    _set_layer_args(&job.args, per_block, B, T, I, H, reverse, reset_after)
    job.args.d_out = &d_out[0, 0, 0]
    job.args.d_h_last = &d_h_last[0, 0]
    job.args.d_h0 = &d_h0[0, 0]
    job.args.d_x = &d_x[0, 0, 0]
    job.args.row0 = &row0[0]
    job.args.d_gi = chunk
    job.args.aux = chunk + R * G
    job.args.h_in = chunk + R * (G + H)
    job.args.x_c = chunk + R * (G + 2 * H)
    job.args.dwihT = dwihT
    job.args.dwhhT = dwhhT
    job.args.d_w_ih = &d_w_ih[0, 0]
    job.args.d_w_hh = &d_w_hh[0, 0]
    job.args.d_b_ih = &d_b_ih[0]
    job.args.d_b_hh = &d_b_hh[0]
    # column pieces of each gate block, one task each, aligned to 16 columns
    job.args.per_gate = (max(1, min(2 * n_threads, H // 32))
                         if n_threads > 1 else 1)
    tasks = _Job()
    tasks.fn = (_weight_grad_item_f if floating is float
                else _weight_grad_item_d)
    tasks.n = 3 * job.args.per_gate

    chunks = step_chunks(max_len, steps)
    for k, (s_lo, s_hi) in enumerate(chunks):
        n_rows = 0
        for b in range(B):
            row0[b] = n_rows
            n = min(s_hi, lengths[b]) - s_lo
            if n > 0:
                n_rows += n
        job.args.s_lo = s_lo
        job.args.s_hi = s_hi
        job.args.first = k == 0
        job.args.last = k == len(chunks) - 1
        job.args.n_rows = n_rows
        _run_items(job, n_threads)
        tasks.args = job.args
        _run_items(tasks, n_threads)
    _give_back_scratch(scratch)
