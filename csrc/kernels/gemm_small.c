/* float32 products of a small matrix with a long one, on AVX2 + FMA without BLAS's packing.
 *
 * A convolution's three im2col products (nn/_conv.py) are of this kind, per sample:
 *   forward   Y (O x L)  = W (O x K) @ cols (K x L)          ("wide": small A, wide row-major B)
 *   input     dcols (K x L) = W^T (K x O) @ G (O x L)        ("wide" with A transposed)
 *   weight    dW (O x K) += G (O x L) @ cols^T (L x K)       ("dots": both long rows, small C)
 * with O, K in the tens to hundreds and L in the thousands. BLAS (OpenBLAS) copies both operands
 * into packed panels before its kernel runs; with a small O or K the kernel does so few flops per
 * packed element that the packing and the zeroing of C (beta = 0) cost as much as the products
 * (perf, conv (8,3,64,64) * 16x5x5 float32: sgemm_kernel 21% of the time, the packing copies 25%,
 * sgemm_beta 7.5%). Here the wide operand is read in place: a 16-column strip of B (k x 16 floats,
 * a few KB) stays in L1 while every 6-row block of A is broadcast against it; the dots kernel
 * streams 4 rows of A and 3 of B at once into 12 vector accumulators.
 *
 * Only x86-64 with AVX2 and FMA (ad_gemm checks the CPU) and shapes where this wins take these
 * paths (ad_gemm_small_f32 returns 0 otherwise, and ad_gemm goes on to BLAS). Summation order
 * differs from BLAS's, as BLAS's differs between its own kernels: results agree to rounding. */
#include "../core.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX2_FMA __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* lanes [0, n) of 8 as a maskload/maskstore mask */
AVX2_FMA INLINE __m256i tail_mask(int64_t n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), lanes);
}

/* C[r, 0:nc] (r < MR, nc <= 16) = [C +] sum_p a(r, p) B[p, 0:nc], a(r, p) = A[r * sr + p * sp] */
AVX2_FMA INLINE void wide_block(const int MR, int64_t nc, int64_t k, const float *A, int64_t sr, int64_t sp,
                                const float *B, int64_t ldb, float *C, int64_t ldc, int beta_one)
{
    __m256 c0[6], c1[6];
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm256_setzero_ps();
    if (nc == 16) {
        for (int64_t p = 0; p < k; p++) {
            /* the next strip's line of this row: k rows far apart are too many streams for the
             * hardware prefetcher (harmless past the end: a prefetch never faults) */
            _mm_prefetch((const char *)(B + p * ldb + 16), _MM_HINT_T0);
            __m256 b0 = _mm256_loadu_ps(B + p * ldb), b1 = _mm256_loadu_ps(B + p * ldb + 8);
            for (int r = 0; r < MR; r++) {
                __m256 a = _mm256_broadcast_ss(A + r * sr + p * sp);
                c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
            }
        }
    } else {
        __m256i m0 = tail_mask(nc), m1 = tail_mask(nc - 8);
        for (int64_t p = 0; p < k; p++) {
            __m256 b0 = _mm256_maskload_ps(B + p * ldb, m0), b1 = _mm256_maskload_ps(B + p * ldb + 8, m1);
            for (int r = 0; r < MR; r++) {
                __m256 a = _mm256_broadcast_ss(A + r * sr + p * sp);
                c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
            }
        }
    }
    for (int r = 0; r < MR; r++) {
        float *c = C + r * ldc;
        if (nc == 16) {
            if (beta_one) {
                c0[r] = _mm256_add_ps(c0[r], _mm256_loadu_ps(c));
                c1[r] = _mm256_add_ps(c1[r], _mm256_loadu_ps(c + 8));
            }
            _mm256_storeu_ps(c, c0[r]);
            _mm256_storeu_ps(c + 8, c1[r]);
        } else {
            __m256i m0 = tail_mask(nc), m1 = tail_mask(nc - 8);
            if (beta_one) {
                c0[r] = _mm256_add_ps(c0[r], _mm256_maskload_ps(c, m0));
                c1[r] = _mm256_add_ps(c1[r], _mm256_maskload_ps(c + 8, m1));
            }
            _mm256_maskstore_ps(c, m0, c0[r]);
            _mm256_maskstore_ps(c + 8, m1, c1[r]);
        }
    }
}

AVX2_FMA static void wide(int transA, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                          const float *B, int64_t ldb, int beta_one, float *C, int64_t ldc)
{
    int64_t sr = transA ? 1 : lda, sp = transA ? lda : 1;
    for (int64_t j = 0; j < n; j += 16) {
        int64_t nc = n - j < 16 ? n - j : 16;
        for (int64_t i = 0; i < m;) {
            /* blocks of 6 rows; the last 7 to 9 as two blocks of 4 or 5 rather than 6 and a thin
             * one, which would pass over the strip of B for little work */
            int64_t left = m - i, rows = left >= 10 || left == 6 ? 6 : left > 6 ? (left + 1) / 2 : left;
            const float *a = A + i * sr;
            float *c = C + i * ldc + j;
            switch (rows) {
            case 6: wide_block(6, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            case 5: wide_block(5, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            case 4: wide_block(4, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            case 3: wide_block(3, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            case 2: wide_block(2, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            default: wide_block(1, nc, k, a, sr, sp, B + j, ldb, c, ldc, beta_one); break;
            }
            i += rows;
        }
    }
}

AVX2_FMA INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* C[r, q] (r < MR, q < NR) = [C +] dot(A[r, 0:k], B[q, 0:k]) */
AVX2_FMA INLINE void dots_block(const int MR, const int NR, int64_t k, const float *A, int64_t lda, const float *B,
                                int64_t ldb, float *C, int64_t ldc, int beta_one)
{
    __m256 acc[4][3];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NR; q++) acc[r][q] = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 8 <= k; p += 8) {
        __m256 b[3];
        for (int q = 0; q < NR; q++) b[q] = _mm256_loadu_ps(B + q * ldb + p);
        for (int r = 0; r < MR; r++) {
            __m256 a = _mm256_loadu_ps(A + r * lda + p);
            for (int q = 0; q < NR; q++) acc[r][q] = _mm256_fmadd_ps(a, b[q], acc[r][q]);
        }
    }
    if (p < k) {
        __m256i mk = tail_mask(k - p);
        __m256 b[3];
        for (int q = 0; q < NR; q++) b[q] = _mm256_maskload_ps(B + q * ldb + p, mk);
        for (int r = 0; r < MR; r++) {
            __m256 a = _mm256_maskload_ps(A + r * lda + p, mk);
            for (int q = 0; q < NR; q++) acc[r][q] = _mm256_fmadd_ps(a, b[q], acc[r][q]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < NR; q++) {
            float v = hsum(acc[r][q]);
            C[r * ldc + q] = beta_one ? C[r * ldc + q] + v : v;
        }
}

#define DOTS_ROWS(MR)                                                                           \
    do {                                                                                        \
        int64_t q = 0;                                                                          \
        for (; q + 3 <= n; q += 3) dots_block(MR, 3, k, a, lda, B + q * ldb, ldb, c + q, ldc, beta_one); \
        if (n - q == 2) dots_block(MR, 2, k, a, lda, B + q * ldb, ldb, c + q, ldc, beta_one);            \
        else if (n - q == 1) dots_block(MR, 1, k, a, lda, B + q * ldb, ldb, c + q, ldc, beta_one);       \
    } while (0)

AVX2_FMA static void dots(int64_t m, int64_t n, int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb,
                          int beta_one, float *C, int64_t ldc)
{
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a = A + i * lda;
        float *c = C + i * ldc;
        DOTS_ROWS(4);
    }
    const float *a = A + i * lda;
    float *c = C + i * ldc;
    switch (m - i) {
    case 3: DOTS_ROWS(3); break;
    case 2: DOTS_ROWS(2); break;
    case 1: DOTS_ROWS(1); break;
    default: break;
    }
}

int ad_gemm_small_f32(int transA, int transB, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                      const float *B, int64_t ldb, int beta_one, float *C, int64_t ldc)
{
    if (m <= 0 || n <= 0 || k <= 0) return 0;
    /* op(A) small enough to stay in L1 (24 KB) while every strip of B passes over it, B wide and
     * row-major. Measured against OpenBLAS (1 thread, min of 20): 0.6-0.7x its time at m x k =
     * 32x144, 144x32, 16x75, 64x10; 1.1-1.4x at 128x64, 256x64, 512x16 (A spills L1), so those
     * stay on BLAS. */
    if (!transB && m * k <= 6144 && n >= 64) {
        wide(transA, m, n, k, A, lda, B, ldb, beta_one, C, ldc);
        return 1;
    }
    /* A (m x k) times B^T, B (n x k): long rows on both sides, a small C. Measured: 0.93-0.98x
     * OpenBLAS's time on conv's weight gradients (m x n = 32x144, 16x75, k = 784, 4096), up to
     * 1.5x on squarer products (256x256, 512x512), so only a few rows of A, with a slice of B
     * (n x 256 floats) that fits L2, come here. */
    if (!transA && transB && k >= 256 && m <= 64 && n <= 256) {
        /* in slices along k: the slice of B (n rows) stays in L2 while every block of A's rows
         * passes over it. Each slice ends in 12 horizontal sums per block, so the slices are as
         * long as 256 KB of B allows (at least 256 floats) and of even length: k = 784 (a 28x28
         * image's windows) is two slices of 392, not three of 256 and one of 16. */
        int64_t most = 65536 / n < 256 ? 256 : (65536 / n) & ~(int64_t)7;
        int64_t parts = (k + most - 1) / most, slice = ((k + parts - 1) / parts + 7) & ~(int64_t)7;
        for (int64_t p = 0; p < k; p += slice)
            dots(m, n, k - p < slice ? k - p : slice, A + p, lda, B + p, ldb, beta_one || p > 0, C, ldc);
        return 1;
    }
    return 0;
}

#endif
