/* float64 products with two small dimensions on AVX-512F, without BLAS's packing of the long operand.
 *
 * A matmul of a tall matrix with a small one, (m x k) @ (k x n) with k, n in the tens and m in the
 * thousands (a batch of rows through a dense layer; the op matrix's (25,n,10) @ (25,10,10) and
 * (8,n,32) @ (32,32)), and its VJP make three products, each with two small sides:
 *   forward  C (m x n) = A (m x k) @ B (k x n)        "tall": a long operand times a small one
 *   dA       (m x k)   = G (m x n) @ B^T (n x k)      "tall" with B transposed
 *   dB       (k x n)   = A^T (k x m) @ G (m x n)      "long inner": a small result of long sums
 * OpenBLAS copies the long operand into packed panels before its kernel runs; with k, n this small
 * the kernel does so few flops per packed element that the copy costs about as much as the
 * products. Timed alone (scipy.linalg.blas.dgemm against torch.bmm on MKL, 1 thread, medians):
 * 1.4-2.0x MKL's time on (1000, 10, 10) x 25 and (8000, 32, 32), 1.25-1.65x at (80000, 32, 32).
 * Here the long operand is read once, in place, and the small one sits in registers or L1:
 *   tall: op(B) is copied (zero-padded to whole vectors, so the inner loop has no masks) into a
 *     k x 8*NV block; for every MR rows of A the MR x n block of C lives in MR * NV zmm
 *     accumulators, and each A(i, p) is broadcast against B's row p.
 *   long inner: rows of A and G are streamed in chunks small enough to stay in L1; a block of KB
 *     rows of C (KB x NV accumulators) takes, per row i of the chunk, KB broadcasts of A(i, .)
 *     against G's row i. Each chunk's sums are added to C once.
 * Both are single-threaded with a fixed order of summation for every element (tall: p = 0..k-1;
 * long inner: i in order within fixed 128-row chunks, the chunks added in order), whatever the
 * blocking of rows, so results are deterministic and independent of the thread count. They differ
 * from BLAS's in the last bits, as BLAS's own kernels differ from one another.
 *
 * Only x86-64 CPUs with AVX-512F (ad_gemm checks the CPU) and shapes where this wins come here
 * (ad_gemm_skinny_f64 returns 0 otherwise, writing nothing, and ad_gemm goes on to BLAS). */
#include "../core.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))
#define INLINE static inline __attribute__((always_inline))

/* largest small sides: op(B)'s copy is at most 64 x 32 doubles (16 KB, L1) */
#define MAX_K 64
#define MAX_N 32

/* lanes [0, r) of 8, r = n - 8 * (NV - 1) in 1..8 */
static __mmask8 tail_lanes(int64_t n) { int r = (int)(n - ((n - 1) / 8) * 8); return (__mmask8)((1u << r) - 1); }

/* rows [0, R) of C = [C +] acc, NV vectors each; the last vector through a mask: C's rows are n
 * long, and the next row follows */
AVX512 INLINE void store_rows(const int R, const int NV, __m512d acc[16][4], double *C, int64_t ldc, __mmask8 last,
                              int beta_one)
{
    for (int r = 0; r < R; r++) {
        double *c = C + r * ldc;
        for (int v = 0; v < NV - 1; v++) {
            if (beta_one) acc[r][v] = _mm512_add_pd(acc[r][v], _mm512_loadu_pd(c + 8 * v));
            _mm512_storeu_pd(c + 8 * v, acc[r][v]);
        }
        if (beta_one) acc[r][NV - 1] = _mm512_add_pd(acc[r][NV - 1], _mm512_maskz_loadu_pd(last, c + 8 * (NV - 1)));
        _mm512_mask_storeu_pd(c + 8 * (NV - 1), last, acc[r][NV - 1]);
    }
}

/* C[r, 0:n] (r < MR) = [C +] sum_p A[r * lda + p] Bp[p * ldp + 0:8 * NV], op(B) as whole vectors */
AVX512 INLINE void tall_block(const int MR, const int NV, int64_t k, const double *A, int64_t lda, const double *Bp,
                              int64_t ldp, double *C, int64_t ldc, __mmask8 last, int beta_one)
{
    __m512d acc[16][4];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_pd();
    for (int64_t p = 0; p < k; p++) {
        __m512d b[4];
        for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_pd(Bp + p * ldp + v * 8);
        for (int r = 0; r < MR; r++) {
            __m512d a = _mm512_set1_pd(A[r * lda + p]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_pd(a, b[v], acc[r][v]);
        }
    }
    store_rows(MR, NV, acc, C, ldc, last, beta_one);
}

/* rows in blocks of MR (MR * NV accumulators, at most 24 of the 32 zmm registers), the rest in
 * blocks of 4 and then single rows */
#define TALL_ROWS(MR, NV)                                                                          \
    do {                                                                                           \
        int64_t i = 0;                                                                             \
        for (; i + MR <= m; i += MR) tall_block(MR, NV, k, A + i * lda, lda, Bp, ldp, C + i * ldc, ldc, last, beta_one); \
        for (; i + 4 <= m; i += 4) tall_block(4, NV, k, A + i * lda, lda, Bp, ldp, C + i * ldc, ldc, last, beta_one);   \
        for (; i < m; i++) tall_block(1, NV, k, A + i * lda, lda, Bp, ldp, C + i * ldc, ldc, last, beta_one);           \
    } while (0)

AVX512 static void tall(int transB, int64_t m, int64_t n, int64_t k, const double *A, int64_t lda, const double *B,
                        int64_t ldb, int beta_one, double *C, int64_t ldc)
{
    int NV = (int)((n + 7) / 8);
    double buf[MAX_K * MAX_N] __attribute__((aligned(64)));
    const double *Bp = B;
    int64_t ldp = ldb;
    if (transB || n % 8) {
        /* op(B) is copied when its rows are not whole vectors in place: B transposed, or n not a
         * multiple of 8, padded to whole vectors so the inner loop needs no masked loads (the
         * padding lanes are never stored; zeros keep NaN and denormals out of them) */
        ldp = 8 * NV;
        for (int64_t p = 0; p < k; p++) {
            double *row = buf + p * ldp;
            if (transB) for (int64_t j = 0; j < n; j++) row[j] = B[j * ldb + p];
            else for (int64_t j = 0; j < n; j++) row[j] = B[p * ldb + j];
            for (int64_t j = n; j < ldp; j++) row[j] = 0;
        }
        Bp = buf;
    }
    __mmask8 last = tail_lanes(n);
    switch (NV) {
    case 1: TALL_ROWS(16, 1); break;
    case 2: TALL_ROWS(12, 2); break;
    case 3: TALL_ROWS(8, 3); break;
    default: TALL_ROWS(6, 4); break;
    }
}

/* C[r, 0:n] (r < KB) = [C +] sum_{i < rows} A[i * lda + r] G[i * ldg + 0:n] */
AVX512 INLINE void inner_block(const int KB, const int NV, int64_t rows, const double *A, int64_t lda,
                               const double *G, int64_t ldg, double *C, int64_t ldc, __mmask8 last, int beta_one)
{
    __m512d acc[16][4];
    for (int r = 0; r < KB; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_pd();
    for (int64_t i = 0; i < rows; i++) {
        __m512d g[4];
        for (int v = 0; v < NV - 1; v++) g[v] = _mm512_loadu_pd(G + i * ldg + 8 * v);
        g[NV - 1] = _mm512_maskz_loadu_pd(last, G + i * ldg + 8 * (NV - 1));
        for (int r = 0; r < KB; r++) {
            __m512d a = _mm512_set1_pd(A[i * lda + r]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_pd(a, g[v], acc[r][v]);
        }
    }
    store_rows(KB, NV, acc, C, ldc, last, beta_one);
}

#define INNER_ROWS(KB, NV)                                                                         \
    do {                                                                                           \
        int64_t r = 0;                                                                             \
        for (; r + KB <= m; r += KB) inner_block(KB, NV, rows, a + r, lda, g, ldg, C + r * ldc, ldc, last, beta); \
        for (; r + 4 <= m; r += 4) inner_block(4, NV, rows, a + r, lda, g, ldg, C + r * ldc, ldc, last, beta);    \
        for (; r < m; r++) inner_block(1, NV, rows, a + r, lda, g, ldg, C + r * ldc, ldc, last, beta);            \
    } while (0)

/* fixed chunk length: the order of summation must not depend on anything but the shapes. 128
 * rows of A and G, (k + n) * 1 KB, stay in L1 (k + n <= 48) or L2 while every block of C's rows
 * passes over them */
#define CHUNK 128

/* C (m x n) = [C +] A^T G, A (k x m) and G (k x n) row-major, k long */
AVX512 static void long_inner(int64_t m, int64_t n, int64_t k, const double *A, int64_t lda, const double *G,
                              int64_t ldg, int beta_one, double *C, int64_t ldc)
{
    int NV = (int)((n + 7) / 8);
    __mmask8 last = tail_lanes(n);
    for (int64_t i0 = 0; i0 < k; i0 += CHUNK) {
        int64_t rows = k - i0 < CHUNK ? k - i0 : CHUNK;
        const double *a = A + i0 * lda, *g = G + i0 * ldg;
        int beta = beta_one || i0 > 0;
        switch (NV) {
        case 1: INNER_ROWS(16, 1); break;
        case 2: INNER_ROWS(12, 2); break;
        case 3: INNER_ROWS(8, 3); break;
        default: INNER_ROWS(6, 4); break;
        }
    }
}

int ad_gemm_skinny_f64(int transA, int transB, int64_t m, int64_t n, int64_t k, const double *A, int64_t lda,
                       const double *B, int64_t ldb, int beta_one, double *C, int64_t ldc)
{
    if (m <= 0 || n <= 0 || k <= 0) return 0;
    /* at least 8 rows: with fewer, copying op(B) costs more than BLAS's packing of A saves
     * (3 x 64 x 32: 1.2x OpenBLAS's time; 50 x 32 x 32 and larger m: 0.45-0.95x) */
    if (!transA && n <= MAX_N && k <= MAX_K && m >= 8) {
        tall(transB, m, n, k, A, lda, B, ldb, beta_one, C, ldc);
        return 1;
    }
    if (transA && !transB && m <= MAX_K && n <= MAX_N) {
        long_inner(m, n, k, A, lda, B, ldb, beta_one, C, ldc);
        return 1;
    }
    return 0;
}

#endif
