/* float64 gemm on AVX-512F for products with every side large (C = [C +] op(A) op(B), row-major).
 *
 * SciPy's OpenBLAS (0.3.30, SKYLAKEX kernels) runs a 500 x 500 x 500 dgemm in 1.21x the time of
 * PyTorch's MKL on this Intel machine (1 thread, medians of 30; perf: 57% of the time in
 * dgemm_kernel_SKYLAKEX, 8% in its packing copies). This is the usual blocked gemm (Goto's loops):
 * op(B) is copied in blocks of KC x NC into panels NR = 24 columns wide, op(A) in blocks of MC x KC
 * into panels MR = 8 rows tall, and a micro-kernel computes each 8 x 24 tile of C in 24 zmm
 * accumulators (per step of k: 3 loads of B's panel, 8 broadcasts of A's, 24 FMAs; 90 GFlop/s on
 * data in L1 here). A panel of A (8 x KC doubles, 12 KB) stays in L1 while B's block (KC x NC, at
 * most 1 MB) passes over it from L2; the tile of C is prefetched before its kc steps. The copies
 * move whole vectors (loads, or gathers for the strided side) so every store is contiguous: with
 * scalar copies they took 14% of the time, and this gemm lost to OpenBLAS at 1000^3.
 * Measured (1 thread, medians, interleaved): 0.77-0.92x OpenBLAS's time on (m, k, n) from 128^3 to
 * 1000^3, 300 x 2000 x 300, 5000 x 200 x 200; 500^3 at 1.09x MKL's (OpenBLAS 1.18x).
 *
 * Each element of C is a chain of FMAs over k in order within each KC block, the blocks added to C
 * in order: the summation order depends on the shapes only (deterministic, independent of thread
 * count; single-threaded). Edges (m % 8, n % 24) are padded with zeros in the packed copies and
 * written through a masked store. Only AVX-512F CPUs (ad_gemm checks the CPU) and shapes measured to
 * win come here (ad_dgemm_avx512 returns 0 otherwise, writing nothing). */
#include "../core.h"
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))
#define MR 8
#define NR 24
#define KC 192
#define MC 192
#define NC 672

/* C[0:mr, 0:nr] = [C +] Ap (kc x MR, k-major) x Bp (kc x NR, k-major) */
AVX512 static void micro(int64_t kc, const double *Ap, const double *Bp, double *C, int64_t ldc, int mr, int nr,
                         int beta_one)
{
    __m512d c[MR][3];
    for (int r = 0; r < MR; r++) c[r][0] = c[r][1] = c[r][2] = _mm512_setzero_pd();
    /* the tile of C is needed only after the kc steps: fetch it now, under them */
    for (int r = 0; r < mr; r++) {
        _mm_prefetch((const char *)(C + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + r * ldc + 8), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + r * ldc + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + r * ldc + 23), _MM_HINT_T0);
    }
    for (int64_t p = 0; p < kc; p++) {
        __m512d b0 = _mm512_load_pd(Bp), b1 = _mm512_load_pd(Bp + 8), b2 = _mm512_load_pd(Bp + 16);
        for (int r = 0; r < MR; r++) {
            __m512d a = _mm512_set1_pd(Ap[r]);
            c[r][0] = _mm512_fmadd_pd(a, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_pd(a, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_pd(a, b2, c[r][2]);
        }
        Ap += MR;
        Bp += NR;
    }
    if (mr == MR && nr == NR) {
        for (int r = 0; r < MR; r++) {
            double *cr = C + r * ldc;
            for (int v = 0; v < 3; v++) {
                __m512d x = c[r][v];
                if (beta_one) x = _mm512_add_pd(x, _mm512_loadu_pd(cr + 8 * v));
                _mm512_storeu_pd(cr + 8 * v, x);
            }
        }
        return;
    }
    for (int r = 0; r < mr; r++) {
        double *cr = C + r * ldc;
        for (int v = 0; v < 3 && 8 * v < nr; v++) {
            int lanes = nr - 8 * v < 8 ? nr - 8 * v : 8;
            __mmask8 mk = (__mmask8)((1u << lanes) - 1);
            __m512d x = c[r][v];
            if (beta_one) x = _mm512_add_pd(x, _mm512_maskz_loadu_pd(mk, cr + 8 * v));
            _mm512_mask_storeu_pd(cr + 8 * v, mk, x);
        }
    }
}

/* op(X)(i, p) of a row-major X: X[i * ld + p], or X[p * ld + i] transposed */
#define AT(X, tr, ld, i, p) ((tr) ? (X)[(p) * (ld) + (i)] : (X)[(i) * (ld) + (p)])

/* rows [i0, i0 + mc) and columns [p0, p0 + kc) of op(A) as panels of MR rows, k-major, zero-padded.
 * A whole panel is moved a vector at a time: a column of A^T's rows is contiguous (a load), one of
 * A's is 8 rows apart (a gather), so every store is a whole, contiguous step of the panel. */
AVX512 static void pack_a(int transA, const double *A, int64_t lda, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                          double *Ap)
{
    const __m512i rows8 = _mm512_setr_epi64(0, lda, 2 * lda, 3 * lda, 4 * lda, 5 * lda, 6 * lda, 7 * lda);
    for (int64_t i = 0; i < mc; i += MR) {
        int64_t rows = mc - i < MR ? mc - i : MR;
        if (rows == MR && transA) {
            for (int64_t p = 0; p < kc; p++) _mm512_store_pd(Ap + p * MR, _mm512_loadu_pd(A + (p0 + p) * lda + i0 + i));
        } else if (rows == MR) {
            const double *src = A + (i0 + i) * lda + p0;
            for (int64_t p = 0; p < kc; p++) _mm512_store_pd(Ap + p * MR, _mm512_i64gather_pd(rows8, src + p, 8));
        } else {
            for (int64_t p = 0; p < kc; p++)
                for (int64_t r = 0; r < MR; r++)
                    Ap[p * MR + r] = r < rows ? (transA ? A[(p0 + p) * lda + i0 + i + r] : A[(i0 + i + r) * lda + p0 + p]) : 0;
        }
        Ap += kc * MR;
    }
}

/* rows [p0, p0 + kc) of op(B) as panels of NR columns, k-major, zero-padded (B^T's columns by
 * gathers, as A's above) */
AVX512 static void pack_b(int transB, const double *B, int64_t ldb, int64_t p0, int64_t kc, int64_t n, double *Bp)
{
    const __m512i rows8 = _mm512_setr_epi64(0, ldb, 2 * ldb, 3 * ldb, 4 * ldb, 5 * ldb, 6 * ldb, 7 * ldb);
    for (int64_t j = 0; j < n; j += NR) {
        int64_t cols = n - j < NR ? n - j : NR;
        if (cols == NR && !transB) {
            for (int64_t p = 0; p < kc; p++) {
                const double *src = B + (p0 + p) * ldb + j;
                for (int v = 0; v < 3; v++) _mm512_store_pd(Bp + p * NR + 8 * v, _mm512_loadu_pd(src + 8 * v));
            }
        } else if (cols == NR) {
            for (int64_t p = 0; p < kc; p++)
                for (int v = 0; v < 3; v++)
                    _mm512_store_pd(Bp + p * NR + 8 * v, _mm512_i64gather_pd(rows8, B + (j + 8 * v) * ldb + p0 + p, 8));
        } else {
            for (int64_t p = 0; p < kc; p++)
                for (int64_t q = 0; q < NR; q++)
                    Bp[p * NR + q] = q < cols ? (transB ? B[(j + q) * ldb + p0 + p] : B[(p0 + p) * ldb + j + q]) : 0;
        }
        Bp += kc * NR;
    }
}

int ad_dgemm_avx512(int transA, int transB, int64_t m, int64_t n, int64_t k, const double *A, int64_t lda,
                    const double *B, int64_t ldb, int beta_one, double *C, int64_t ldc)
{
    /* every side >= 128, where it was measured to win (below, the packing is a larger share and
     * gemm_skinny.c or BLAS take the product) */
    if (m < 128 || n < 128 || k < 128) return 0;
    int64_t ncmax = n < NC ? (n + NR - 1) / NR * NR : NC;
    double *Bp = aligned_alloc(64, (size_t)(KC * ncmax) * sizeof(double));
    double *Ap = aligned_alloc(64, (size_t)(MC * KC) * sizeof(double));
    if (!Bp || !Ap) { free(Bp); free(Ap); return 0; }
    for (int64_t j0 = 0; j0 < n; j0 += NC) {
        int64_t nc = n - j0 < NC ? n - j0 : NC;
        for (int64_t p0 = 0; p0 < k; p0 += KC) {
            int64_t kc = k - p0 < KC ? k - p0 : KC;
            int beta = beta_one || p0 > 0;
            pack_b(transB, transB ? B + j0 * ldb : B + j0, ldb, p0, kc, nc, Bp);
            for (int64_t i0 = 0; i0 < m; i0 += MC) {
                int64_t mc = m - i0 < MC ? m - i0 : MC;
                pack_a(transA, A, lda, i0, mc, p0, kc, Ap);
                for (int64_t i = 0; i < mc; i += MR) {
                    int mr = (int)(mc - i < MR ? mc - i : MR);
                    for (int64_t j = 0; j < nc; j += NR) {
                        int nr = (int)(nc - j < NR ? nc - j : NR);
                        micro(kc, Ap + (i / MR) * kc * MR, Bp + (j / NR) * kc * NR, C + (i0 + i) * ldc + j0 + j, ldc,
                              mr, nr, beta);
                    }
                }
            }
        }
    }
    free(Bp);
    free(Ap);
    return 1;
}

#endif
