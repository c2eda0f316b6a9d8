/* matmul with NumPy semantics (1-D, 2-D, batched with broadcast batch axes). The products run in
 * an optimized gemm when the bindings hand one over (SciPy's BLAS); a blocked C loop otherwise.
 * VJP: dA = G @ B^T and dB = A^T @ G per batch; broadcast batch axes are summed by the sweep. */
#include "../core.h"
#include <string.h>
#include <limits.h>

typedef void (*dgemm_t)(const char *, const char *, const int *, const int *, const int *, const double *,
                        const double *, const int *, const double *, const int *, const double *, double *,
                        const int *);
typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                        const float *, const int *, const float *, const int *, const float *, float *,
                        const int *);
typedef void (*dgemv_t)(const char *, const int *, const int *, const double *, const double *, const int *,
                        const double *, const int *, const double *, double *, const int *);
typedef void (*sgemv_t)(const char *, const int *, const int *, const float *, const float *, const int *,
                        const float *, const int *, const float *, float *, const int *);
static dgemm_t g_dgemm;
static sgemm_t g_sgemm;
static dgemv_t g_dgemv;
static sgemv_t g_sgemv;

int ad_set_blas(void *dgemm, void *sgemm, void *dgemv, void *sgemv)
{
    g_dgemm = (dgemm_t)dgemm;
    g_sgemm = (sgemm_t)sgemm;
    g_dgemv = (dgemv_t)dgemv;
    g_sgemv = (sgemv_t)sgemv;
    return AD_OK;
}

/* y (m values at stride incy) = [y +] A x with A column-major (M x N, lda) or its transpose */
static int gemv(int dtype, int trans, int64_t M, int64_t N, const void *A, int64_t lda, const void *x, int64_t incx,
                int beta_one, void *y, int64_t incy)
{
    if (M > INT_MAX || N > INT_MAX || lda > INT_MAX || incx > INT_MAX || incy > INT_MAX || lda < (M > 1 ? M : 1) ||
        incx < 1 || incy < 1)
        return 0;
    int m = (int)M, n = (int)N, la = (int)lda, ix = (int)incx, iy = (int)incy;
    if (dtype == AD_F64 && g_dgemv) {
        double one = 1, beta = beta_one ? 1 : 0;
        g_dgemv(trans ? "T" : "N", &m, &n, &one, A, &la, x, &ix, &beta, y, &iy);
        return 1;
    }
    if (dtype == AD_F32 && g_sgemv) {
        float one = 1, beta = beta_one ? 1 : 0;
        g_sgemv(trans ? "T" : "N", &m, &n, &one, A, &la, x, &ix, &beta, y, &iy);
        return 1;
    }
    return 0;
}

/* C (m x n) = [C +] a b^T, an outer product (the inner dimension is 1): one pass over C, where
 * gemm would pack both operands first */
#define OUTER(T) do {                                                                              const T *a = A, *b = B; T *c = C;                                                         for (int64_t i = 0; i < m; i++) {                                                             T ai = a[i * sa], *ci = c + i * ldc;                                                      if (sb == 1) {                                                                                if (beta_one) for (int64_t j = 0; j < n; j++) ci[j] += ai * b[j];                         else for (int64_t j = 0; j < n; j++) ci[j] = ai * b[j];                               } else {                                                                                      if (beta_one) for (int64_t j = 0; j < n; j++) ci[j] += ai * b[j * sb];                    else for (int64_t j = 0; j < n; j++) ci[j] = ai * b[j * sb];                          }                                                                                     }                                                                                     } while (0)

static void outer(int dtype, int64_t m, int64_t n, const void *A, int64_t sa, const void *B, int64_t sb,
                  int beta_one, void *C, int64_t ldc)
{
    if (dtype == AD_F64) OUTER(double); else OUTER(float);
}

/* C (m x n, row-major, ldc) = [C +] op(A) op(B), row-major operands. */
#define GEMM_LOOP(T) do {                                                                  \
        const T *a = A, *b = B; T *c = C;                                                 \
        for (int64_t i = 0; i < m; i++) {                                                 \
            T *ci = c + i * ldc;                                                          \
            if (!beta_one) for (int64_t j = 0; j < n; j++) ci[j] = 0;                     \
            for (int64_t p = 0; p < k; p++) {                                             \
                T aip = transA ? a[p * lda + i] : a[i * lda + p];                         \
                if (aip == 0) continue;                                                   \
                if (!transB) { const T *bp = b + p * ldb; for (int64_t j = 0; j < n; j++) ci[j] += aip * bp[j]; } \
                else for (int64_t j = 0; j < n; j++) ci[j] += aip * b[j * ldb + p];       \
            }                                                                             \
        }                                                                                 \
    } while (0)

int ad_gemm(int dtype, int transA, int transB, int64_t m, int64_t n, int64_t k, const void *A,
            int64_t lda, const void *B, int64_t ldb, int beta_one, void *C, int64_t ldc)
{
    if (m == 0 || n == 0) return AD_OK;
    if (k == 0) {
        if (!beta_one) for (int64_t i = 0; i < m; i++) memset((char *)C + (size_t)(i * ldc) * ad_itemsize(dtype), 0, (size_t)n * ad_itemsize(dtype));
        return AD_OK;
    }
    /* matrix-vector products on gemv, which streams the matrix once (gemm with one column packs
     * it first): a column result reads op(B)'s column, a row result op(A)'s row */
    if (n == 1 && gemv(dtype, !transA, transA ? m : k, transA ? k : m, A, lda, B, transB ? 1 : ldb, beta_one, C, ldc))
        return AD_OK;
    if (m == 1 && gemv(dtype, transB, transB ? k : n, transB ? n : k, B, ldb, A, transA ? lda : 1, beta_one, C, 1))
        return AD_OK;
    if (k == 1) {
        outer(dtype, m, n, A, transA ? 1 : lda, B, transB ? ldb : 1, beta_one, C, ldc);
        return AD_OK;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    /* kernels of our own for the shapes where BLAS packs more than it multiplies, or loses to
     * MKL; each is built for x86-64 only, runs only where the CPU has its instructions (checked
     * here, once for all of them) and returns 0 for shapes it was not measured to win */
    if (dtype == AD_F32 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        ad_gemm_small_f32(transA, transB, m, n, k, A, lda, B, ldb, beta_one, C, ldc))
        return AD_OK;   /* a small matrix with a long one, without BLAS's packing (gemm_small.c) */
    if (dtype == AD_F64 && __builtin_cpu_supports("avx512f") &&
        (ad_gemm_skinny_f64(transA, transB, m, n, k, A, lda, B, ldb, beta_one, C, ldc) ||  /* two small sides */
         ad_dgemm_avx512(transA, transB, m, n, k, A, lda, B, ldb, beta_one, C, ldc)))     /* every side large */
        return AD_OK;
#endif
    int fits = m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX;
    /* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T */
    if (fits && dtype == AD_F64 && g_dgemm) {
        int M = (int)n, N = (int)m, K = (int)k, LDA = (int)ldb, LDB = (int)lda, LDC = (int)ldc;
        double one = 1, beta = beta_one ? 1 : 0;
        g_dgemm(transB ? "T" : "N", transA ? "T" : "N", &M, &N, &K, &one, B, &LDA, A, &LDB, &beta, C, &LDC);
        return AD_OK;
    }
    if (fits && dtype == AD_F32 && g_sgemm) {
        int M = (int)n, N = (int)m, K = (int)k, LDA = (int)ldb, LDB = (int)lda, LDC = (int)ldc;
        float one = 1, beta = beta_one ? 1 : 0;
        g_sgemm(transB ? "T" : "N", transA ? "T" : "N", &M, &N, &K, &one, B, &LDA, A, &LDB, &beta, C, &LDC);
        return AD_OK;
    }
    if (dtype == AD_F64) GEMM_LOOP(double); else GEMM_LOOP(float);
    return AD_OK;
}

/* Matrix view of an operand: 1-D a is a row (1, k), 1-D b a column (k, 1). */
typedef struct { int nb; int64_t batch[AD_MAXDIM]; int64_t rows, cols; } mview;

static void view_of(const ad_node *x, int is_b, mview *v)
{
    if (x->ndim == 1) {
        v->nb = 0;
        v->rows = is_b ? x->shape[0] : 1;
        v->cols = is_b ? 1 : x->shape[0];
        return;
    }
    v->nb = x->ndim - 2;
    for (int i = 0; i < v->nb; i++) v->batch[i] = x->shape[i];
    v->rows = x->shape[x->ndim - 2];
    v->cols = x->shape[x->ndim - 1];
}

/* Output batch shape and, per output batch index, the matrix offsets of a and b. */
typedef struct { int nb; int64_t shape[AD_MAXDIM]; int64_t sa[AD_MAXDIM], sb[AD_MAXDIM]; int64_t count; } bplan;

static int plan_batches(const mview *va, const mview *vb, bplan *p)
{
    int st = ad_broadcast_shapes("matmul", va->nb, va->batch, vb->nb, vb->batch, &p->nb, p->shape);
    if (st) return st;
    ad_bcast_strides(va->nb, va->batch, p->nb, p->shape, p->sa);
    ad_bcast_strides(vb->nb, vb->batch, p->nb, p->shape, p->sb);
    p->count = ad_shape_size(p->nb, p->shape);
    return AD_OK;
}

/* The views and batch plan of a recorded matmul node (its shapes were checked when recorded). */
static void plan_of(const ad_node *n, mview *va, mview *vb, bplan *p)
{
    view_of(n->in[0], 0, va);
    view_of(n->in[1], 1, vb);
    plan_batches(va, vb, p);
}

/* b without batch axes (a matrix or a vector): every batch of a multiplies the same b, and a's
 * batches are contiguous, so the whole product is one gemm of count * m rows, and b's VJP,
 * summed over the batches, is one gemm over all those rows (no per-batch contributions for the
 * sweep to sum afterwards). */
static int folds(const mview *vb, const bplan *p) { return vb->nb == 0 && p->count > 1; }

static void batch_offsets(const bplan *p, int64_t t, int64_t *ia, int64_t *ib)
{
    *ia = 0; *ib = 0;
    for (int d = p->nb - 1; d >= 0; d--) {
        int64_t i = t % p->shape[d];
        t /= p->shape[d];
        *ia += i * p->sa[d];
        *ib += i * p->sb[d];
    }
}

/* n's values from a's and b's (same dtype), shared by ad_mk_matmul and the replay (replay.c). */
static void matmul_values(ad_node *n, const ad_node *a, const ad_node *b)
{
    mview va, vb;
    bplan p;
    view_of(a, 0, &va);
    view_of(b, 1, &vb);
    plan_batches(&va, &vb, &p);
    int64_t m = va.rows, k = va.cols, nn = vb.cols;
    size_t isz = ad_itemsize(a->dtype);
    /* an empty result may still have 2^50 batches of empty matrices: nothing to compute */
    int64_t batches = n->size ? p.count : 0;
    if (batches && folds(&vb, &p)) {
        ad_gemm(a->dtype, 0, 0, batches * m, nn, k, a->data, k, b->data, nn, 0, n->data, nn);
        batches = 0;
    }
    for (int64_t t = 0; t < batches; t++) {
        int64_t ia, ib;
        batch_offsets(&p, t, &ia, &ib);
        ad_gemm(a->dtype, 0, 0, m, nn, k, (char *)a->data + (size_t)(ia * m * k) * isz, k,
                (char *)b->data + (size_t)(ib * k * nn) * isz, nn, 0, (char *)n->data + (size_t)(t * m * nn) * isz, nn);
    }
}

int ad_fwd_matmul(ad_node *n, ad_node *const *ins)
{
    matmul_values(n, ins[0], ins[1]);
    return AD_OK;
}

int ad_mk_matmul(ad_tape *T, ad_node *a, ad_node *b, ad_node **out)
{
    ad_node *n, *tmp = NULL;
    char b1[160], b2[160];
    int st;
    if (a->ndim == 0 || b->ndim == 0)
        return ad_err(AD_ERR_VALUE, "matmul: operands must have at least 1 dimension, got shapes %s and %s "
                      "(use * to multiply by a scalar)",
                      ad_shape_str(b1, sizeof b1, a->ndim, a->shape), ad_shape_str(b2, sizeof b2, b->ndim, b->shape));
    mview va, vb;
    view_of(a, 0, &va);
    view_of(b, 1, &vb);
    if (va.cols != vb.rows)
        return ad_err(AD_ERR_VALUE, "matmul: inner dimensions do not match: shapes %s and %s (%lld != %lld)",
                      ad_shape_str(b1, sizeof b1, a->ndim, a->shape), ad_shape_str(b2, sizeof b2, b->ndim, b->shape),
                      (long long)va.cols, (long long)vb.rows);
    bplan p;
    if ((st = plan_batches(&va, &vb, &p))) return st;
    int64_t oshape[AD_MAXDIM + 2];
    int ond = p.nb;
    memcpy(oshape, p.shape, (size_t)p.nb * sizeof(int64_t));
    if (a->ndim > 1) oshape[ond++] = va.rows;
    if (b->ndim > 1) oshape[ond++] = vb.cols;
    if (ond > AD_MAXDIM)
        return ad_err(AD_ERR_VALUE, "matmul: result would have more than %d dimensions", AD_MAXDIM);
    /* promote float32 with float64 to float64 by reusing the binary ops' cast */
    if (a->dtype != b->dtype) {
        ad_node **lo = a->dtype == AD_F32 ? &a : &b;
        if ((st = ad_node_new(T, AD_OP_CAST, AD_F64, (*lo)->ndim, (*lo)->shape, &tmp))) return st;
        const float *src = (*lo)->data;
        double *dst = tmp->data;
        for (int64_t i = 0; i < tmp->size; i++) dst[i] = src[i];
        if ((st = ad_node_link(T, tmp, 1, lo))) { ad_node_discard(T, tmp); return st; }
        *lo = tmp;
    }
    if ((st = ad_node_new(T, AD_OP_MATMUL, a->dtype, ond, oshape, &n))) goto out;
    matmul_values(n, a, b);
    ad_node *ins[2] = {a, b};
    if (!(st = ad_record(T, n, 2, ins))) *out = n;
out:
    if (tmp) ad_node_unref(T, tmp);
    return st;
}

int64_t ad_matmul(int64_t ha, int64_t hb)
{
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n;
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) && !(st = ad_mk_matmul(T, a, b, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

/* contribution for input `which`: the output's batch axes + the input's own matrix axes */
void ad_contrib_matmul(const ad_node *n, int which, int *ndim, int64_t *shape)
{
    const ad_node *x = n->in[which];
    mview va, vb;
    bplan p;
    plan_of(n, &va, &vb, &p);
    int k = 0;
    if (which == 1 && folds(&vb, &p)) {   /* summed over the batches as it is written */
        *ndim = x->ndim;
        for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
        return;
    }
    for (int i = 0; i < p.nb; i++) shape[k++] = p.shape[i];
    if (x->ndim == 1) shape[k++] = x->shape[0];
    else { shape[k++] = x->shape[x->ndim - 2]; shape[k++] = x->shape[x->ndim - 1]; }
    *ndim = k;
}

int ad_vjp_matmul(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    mview va, vb;
    bplan p;
    plan_of(n, &va, &vb, &p);
    int64_t m = va.rows, k = va.cols, nn = vb.cols;
    size_t isz = ad_itemsize(n->dtype);
    if (folds(&vb, &p)) {
        int64_t rows = p.count * m;
        if (which == 0)   /* dA (rows x k) = G (rows x n) @ B^T */
            ad_gemm(n->dtype, 0, 1, rows, k, nn, g, nn, b->data, nn, s->accumulate, s->dst, k);
        else              /* dB (k x n) = sum over batches of A_t^T G_t = A_all^T @ G_all */
            ad_gemm(n->dtype, 1, 0, k, nn, rows, a->data, k, g, nn, s->accumulate, s->dst, nn);
        return AD_OK;
    }
    for (int64_t t = 0; t < p.count; t++) {
        int64_t ia, ib;
        batch_offsets(&p, t, &ia, &ib);
        const char *G = (const char *)g + (size_t)(t * m * nn) * isz;
        if (which == 0) {
            /* dA (m x k) = G (m x n) @ B^T */
            ad_gemm(n->dtype, 0, 1, m, k, nn, G, nn, (const char *)b->data + (size_t)(ib * k * nn) * isz, nn,
                    s->accumulate, (char *)s->dst + (size_t)(t * m * k) * isz, k);
        } else {
            /* dB (k x n) = A^T @ G */
            ad_gemm(n->dtype, 1, 0, k, nn, m, (const char *)a->data + (size_t)(ia * m * k) * isz, k, G, nn,
                    s->accumulate, (char *)s->dst + (size_t)(t * k * nn) * isz, nn);
        }
    }
    return AD_OK;
}

/* Batched VJP for jacrev's k cotangent rows. Without batch axes, row r's dA = G_r @ B^T, and the
 * rows of all G_r are contiguous, so the k products are one gemm of k*m rows; dB = A^T @ G_r is
 * one gemm too when B is a vector (dB rows stacked: G (k x m) @ A). A matrix B loops over rows.
 * With batch axes the sweep's per-row path handles the broadcast batch sums. */
int ad_vjp_rows_matmul(ad_tape *T, ad_node *n, const void *g, int64_t k, int which, void *dst, int accumulate)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    mview va, vb;
    bplan p;
    plan_of(n, &va, &vb, &p);
    if (p.count != 1 || p.nb != 0) return 0;
    int64_t m = va.rows, kk = va.cols, nn = vb.cols;
    size_t isz = ad_itemsize(n->dtype);
    if (which == 0) {
        ad_gemm(n->dtype, 0, 1, k * m, kk, nn, g, nn, b->data, nn, accumulate, dst, kk);
    } else if (nn == 1) {
        ad_gemm(n->dtype, 0, 0, k, kk, m, g, m, a->data, kk, accumulate, dst, kk);
    } else {
        for (int64_t r = 0; r < k; r++)
            ad_gemm(n->dtype, 1, 0, kk, nn, m, a->data, kk, (const char *)g + (size_t)(r * m * nn) * isz, nn,
                    accumulate, (char *)dst + (size_t)(r * kk * nn) * isz, nn);
    }
    return 1;
}

/* JVP: d(A @ B) = dA @ B + A @ dB, per direction and batch. Without batch axes the k directions
 * are folded into the gemm's rows where the layout allows it, so a width-k sweep is one gemm of
 * k*m rows (dA @ B) and, for a vector right operand, one more (dB @ A^T); other cases loop. */
int ad_jvp_matmul(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    mview va, vb;
    bplan p;
    plan_of(n, &va, &vb, &p);
    int64_t m = va.rows, kk = va.cols, nn = vb.cols;
    size_t isz = ad_itemsize(n->dtype);
    size_t sa = (size_t)a->size * isz, sb = (size_t)b->size * isz, so = (size_t)n->size * isz;
    const char *A = a->data, *B = b->data;
    if (p.count == 1) {
        int beta = 0;
        if (tin[0]) {
            /* rows of direction r follow those of direction r-1: (k*m x kk) @ (kk x nn) */
            ad_gemm(n->dtype, 0, 0, k * m, nn, kk, tin[0], kk, B, nn, 0, tout, nn);
            beta = 1;
        }
        if (tin[1]) {
            if (nn == 1) {
                /* out (k x m) += dB (k x kk) @ A^T */
                ad_gemm(n->dtype, 0, 1, k, m, kk, tin[1], kk, A, kk, beta, tout, m);
            } else {
                for (int64_t r = 0; r < k; r++)
                    ad_gemm(n->dtype, 0, 0, m, nn, kk, A, kk, (const char *)tin[1] + r * sb, nn, beta,
                            (char *)tout + r * so, nn);
            }
        }
        return AD_OK;
    }
    for (int64_t r = 0; r < k; r++) {
        const char *TA = tin[0] ? (const char *)tin[0] + r * sa : NULL;
        const char *TB = tin[1] ? (const char *)tin[1] + r * sb : NULL;
        char *TO = (char *)tout + r * so;
        for (int64_t t = 0; t < p.count; t++) {
            int64_t ia, ib;
            batch_offsets(&p, t, &ia, &ib);
            char *C = TO + (size_t)(t * m * nn) * isz;
            int beta = 0;
            if (TA) {
                ad_gemm(n->dtype, 0, 0, m, nn, kk, TA + (size_t)(ia * m * kk) * isz, kk,
                        B + (size_t)(ib * kk * nn) * isz, nn, 0, C, nn);
                beta = 1;
            }
            if (TB)
                ad_gemm(n->dtype, 0, 0, m, nn, kk, A + (size_t)(ia * m * kk) * isz, kk,
                        TB + (size_t)(ib * kk * nn) * isz, nn, beta, C, nn);
        }
    }
    return AD_OK;
}

/* Second-order term (ad_hvp): matmul is bilinear, so d/de of dA = G @ B^T is G @ dB^T, the VJP
 * itself with B moved to its tangent (and dB = A^T @ G likewise with A). */
int ad_vjp2_matmul(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                   int which, ad_sink *s)
{
    (void)tout;
    int other = 1 - which;
    if (!tin[other]) {
        if (!s->accumulate) memset(s->dst, 0, (size_t)s->size * ad_itemsize(n->dtype));
        return AD_OK;
    }
    ad_node moved = *n->in[other];
    moved.data = (void *)tin[other];
    ad_node *ins[2] = {n->in[0], n->in[1]};
    ins[other] = &moved;
    ad_node at_tangent = *n;
    at_tangent.in = ins;
    return ad_vjp_matmul(T, &at_tangent, g, which, s);
}

/* ---------------- differentiable rules (recorded ops, for higher order) ---------------- */

/* x as a matrix operand: a 1-D left operand as a row (1, k), a 1-D right one as a column (k, 1)
 * (view_of's convention); x itself, with a new reference, otherwise. */
static int as_matrix(ad_tape *T, ad_node *x, int is_b, ad_node **out)
{
    if (x->ndim >= 2) { x->refs++; *out = x; return AD_OK; }
    int64_t sh[2] = {is_b ? x->shape[0] : 1, is_b ? 1 : x->shape[0]};
    return ad_mk_reshape(T, x, 2, sh, out);
}

/* x with its last two axes swapped */
static int swap_last(ad_tape *T, ad_node *x, ad_node **out)
{
    int64_t perm[AD_MAXDIM];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[x->ndim - 2] = x->ndim - 1;
    perm[x->ndim - 1] = x->ndim - 2;
    return ad_mk_transpose(T, x, x->ndim, perm, out);
}

/* dA = G @ B^T, dB = A^T @ G on the matrix views, with the output's batch axes kept: the
 * contribution has ad_contrib_matmul's shape and the sweep sums the broadcast batch axes. */
int ad_vjp_rec_matmul(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    mview va, vb;
    bplan p;
    plan_of(n, &va, &vb, &p);
    int64_t gshape[AD_MAXDIM], cshape[AD_MAXDIM];
    int gnd = p.nb + 2, cnd;
    memcpy(gshape, p.shape, (size_t)p.nb * sizeof(int64_t));
    gshape[p.nb] = va.rows;
    gshape[p.nb + 1] = vb.cols;
    ad_node *g2 = NULL, *other = NULL, *other_t = NULL, *c = NULL;
    int st;
    if ((st = ad_rec_reshape(T, g, gnd, gshape, &g2)) ||
        (st = as_matrix(T, n->in[1 - which], which == 0, &other)) ||
        (st = swap_last(T, other, &other_t)))
        goto done;
    if ((st = which == 0 ? ad_mk_matmul(T, g2, other_t, &c) : ad_mk_matmul(T, other_t, g2, &c))) goto done;
    ad_contrib_matmul(n, which, &cnd, cshape);
    if (which == 1 && folds(&vb, &p)) {
        /* the folded contribution is b's own: c (batches, k, n) summed over the batches */
        ad_node *c2 = NULL;
        int64_t bshape[2] = {va.cols, vb.cols};
        if (!(st = ad_rec_unbroadcast(T, c, 2, bshape, &c2))) st = ad_rec_reshape(T, c2, cnd, cshape, out);
        if (c2) ad_node_unref(T, c2);
    } else {
        st = ad_rec_reshape(T, c, cnd, cshape, out);
    }
done:
    if (g2) ad_node_unref(T, g2);
    if (other) ad_node_unref(T, other);
    if (other_t) ad_node_unref(T, other_t);
    if (c) ad_node_unref(T, c);
    return st;
}

/* d(A @ B) = dA @ B + A @ dB */
int ad_jvp_rec_matmul(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    ad_node *ta = NULL, *tb = NULL;
    int st = AD_OK;
    if (tin[0] && (st = ad_mk_matmul(T, tin[0], n->in[1], tin[1] ? &ta : out))) return st;
    if (tin[1]) {
        if ((st = ad_mk_matmul(T, n->in[0], tin[1], tin[0] ? &tb : out))) goto done;
        if (tin[0]) st = ad_mk_binary(T, AD_OP_ADD, ta, tb, out);
    }
done:
    if (ta) ad_node_unref(T, ta);
    if (tb) ad_node_unref(T, tb);
    return st;
}
