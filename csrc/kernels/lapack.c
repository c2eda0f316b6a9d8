/* Linear algebra on LAPACK (SciPy's cython_lapack, handed over by the bindings like BLAS): solve
 * (inv is solve(A, I), as NumPy computes it), log|det| and det, cholesky. Batched over leading
 * axes (the bindings broadcast them first, so a node's operands share one batch shape).
 *
 * The forwards are LAPACK calls on column-major copies, as numpy.linalg makes them (getrf/getrs
 * for solve, getrf for det, potrf with the lower triangle for cholesky), so the values match
 * NumPy's. Every rule is written once, below, in recorded ops (matmul, transpose, the
 * elementwise ops, sum, and solve itself):
 *     solve   X = A^-1 B:       gB = A^-T G,  gA = -gB X^T;      dX = A^-1 (dB - dA X)
 *     logdet  y = log|det A|:   gA = g A^-T;                     dy = sum(A^-T * dA)
 *     det     y = det A:        gA = g y A^-T;                   dy = y sum(A^-T * dA)
 *     cholesky A = L L^T, reading A's lower triangle only (as NumPy):
 *             S = L^-T Phi(L^T G) L^-1,  gA = Phi(S + S^T)
 *             dL = L Phi(L^-1 (Q + Q^T) L^-T),  Q = Phi(dA)
 *   where Phi keeps the lower triangle and halves the diagonal. gA is the derivative of the
 *   function NumPy computes (of A's lower triangle: the upper one gets 0), so it agrees with
 *   finite differences of numpy.linalg.cholesky; for a symmetric direction it equals the usual
 *   symmetric gradient's. Triangular solves are general solves on L (its LU needs no pivoting
 *   beyond what getrf picks; cond(L) = sqrt(cond(A))): no triangular-solve op is needed.
 * The recorded rules (vjp_rec, jvp_rec) run those formulas on the tape's nodes; the numeric ones
 * (vjp, jvp, and vjp2, the formulas' own derivative, for hvp) run the same formulas on constant
 * copies of the values, so each formula exists once. They are O(n^3) like the forward.
 * det's gradient at a singular matrix is the adjugate, which A^-T cannot give: the rules then
 * raise a LinAlgError (AD_ERR_LINALG) naming the batch element rather than return a wrong
 * number; det itself is 0 there, as NumPy's.
 *
 * svd (gesdd, as numpy.linalg.svd: divide and conquer, the routine NumPy calls, so the values are
 * NumPy's; gesvd would differ from them in the last bits): the core has one output per node, so
 * one node holds the SVD, U, S and Vh packed along one last axis, and the bindings take them out
 * with slices (differentiable views). The singular values the user gets are a second node (the
 * same numbers, copied), whose rules need only U and V, never their derivative: a loss of S
 * alone (svdvals, the matrix norms) is differentiable at repeated singular values, where U and V
 * are not (any rotation within a repeated singular value's subspace is as good). The rules, with
 * F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal), are below (svd_vjp, svd_jvp); those that
 * need F raise a LinAlgError at a repeated or zero singular value rather than divide by zero. */
#include "../core.h"
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*getrf_t)(int *, int *, void *, int *, int *, int *);
typedef void (*getrs_t)(char *, int *, int *, void *, int *, int *, void *, int *, int *);
typedef void (*potrf_t)(char *, int *, void *, int *, int *);
static getrf_t g_getrf[2];
static getrs_t g_getrs[2];
static potrf_t g_potrf[2];
typedef void (*gesdd_t)(char *, int *, int *, void *, int *, void *, void *, int *, void *, int *, void *, int *,
                        int *, int *);
static gesdd_t g_gesdd[2];

int ad_set_lapack(void *dgetrf, void *sgetrf, void *dgetrs, void *sgetrs, void *dpotrf, void *spotrf,
                  void *dgesdd, void *sgesdd)
{
    g_gesdd[AD_F64] = (gesdd_t)dgesdd;
    g_gesdd[AD_F32] = (gesdd_t)sgesdd;
    g_getrf[AD_F64] = (getrf_t)dgetrf;
    g_getrf[AD_F32] = (getrf_t)sgetrf;
    g_getrs[AD_F64] = (getrs_t)dgetrs;
    g_getrs[AD_F32] = (getrs_t)sgetrs;
    g_potrf[AD_F64] = (potrf_t)dpotrf;
    g_potrf[AD_F32] = (potrf_t)spotrf;
    return AD_OK;
}

static const char *op_name(const ad_node *n)
{
    if (n->op == AD_OP_SOLVE) return n->c[0] ? "inv" : "solve";
    if (n->op == AD_OP_LOGDET) return n->c[0] ? "det" : "slogdet";
    if (n->op == AD_OP_SVD) return n->c[0] ? "svd" : "svdvals";
    return "cholesky";
}

/* "(1, 2)": batch element b of a batch shape (the axes before the last two) */
static const char *batch_str(char *buf, size_t len, const ad_node *x, int64_t b)
{
    int nb = x->ndim - 2;
    int64_t idx[AD_MAXDIM];
    for (int i = nb - 1; i >= 0; i--) { idx[i] = x->shape[i] ? b % x->shape[i] : 0; b = x->shape[i] ? b / x->shape[i] : 0; }
    return ad_shape_str(buf, len, nb, idx);
}

static int linalg_err(const ad_node *n, const ad_node *a, int64_t b, const char *what)
{
    char b1[160], b2[160];
    return ad_err(AD_ERR_LINALG, "%s: %s (batch element %s of a %s matrix of shape %s)", op_name(n), what,
                  batch_str(b1, sizeof b1, a, b), ad_dtype_name(a->dtype), ad_shape_str(b2, sizeof b2, a->ndim, a->shape));
}

/* m x m matrix at src (row-major) into dst column-major, i.e. transposed, in double or float */
static void to_colmajor(int dtype, void *dst, const void *src, int64_t rows, int64_t cols)
{
    if (dtype == AD_F64) { double *d = dst; const double *s = src;
                           for (int64_t i = 0; i < rows; i++) for (int64_t j = 0; j < cols; j++) d[j * rows + i] = s[i * cols + j]; }
    else { float *d = dst; const float *s = src;
           for (int64_t i = 0; i < rows; i++) for (int64_t j = 0; j < cols; j++) d[j * rows + i] = s[i * cols + j]; }
}

static int64_t batch_of(const ad_node *x)
{
    int64_t b = 1;
    for (int i = 0; i < x->ndim - 2; i++) b *= x->shape[i];
    return b;
}

/* A matrix dimension LAPACK's int can hold, and the routines the bindings gave */
static int lapack_ready(const char *op, int dtype, int64_t m, int need_potrf)
{
    if (m > 46340) return ad_err(AD_ERR_VALUE, "%s: matrices of size %lld exceed LAPACK's int indexing", op, (long long)m);
    if (!g_getrf[dtype] || !g_getrs[dtype] || (need_potrf && !g_potrf[dtype]))
        return ad_err(AD_ERR_RUNTIME, "%s: needs SciPy's LAPACK (scipy.linalg.cython_lapack), which was not found", op);
    return AD_OK;
}

/* ---------------- forwards (the constructors' and a replay's) ---------------- */

/* X = A^-1 B per batch element: getrf of A, getrs, as numpy.linalg.solve (gesv) */
static int fwd_solve(ad_node *n, ad_node *A, ad_node *B)
{
    int64_t m = A->shape[A->ndim - 1], k = B->shape[B->ndim - 1], nb = batch_of(A);
    size_t isz = ad_itemsize(n->dtype);
    if (!m || !k || !nb) return AD_OK;
    int st = lapack_ready(op_name(n), n->dtype, m > k ? m : k, 0);
    if (st) return st;
    void *a = malloc((size_t)(m * m) * isz), *x = malloc((size_t)(m * k) * isz);
    int *piv = malloc((size_t)m * sizeof *piv);
    if (!a || !x || !piv) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory", op_name(n)); goto done; }
    int M = (int)m, K = (int)k, info = 0;
    for (int64_t b = 0; b < nb && !st; b++) {
        to_colmajor(n->dtype, a, (const char *)A->data + (size_t)(b * m * m) * isz, m, m);
        to_colmajor(n->dtype, x, (const char *)B->data + (size_t)(b * m * k) * isz, m, k);
        g_getrf[n->dtype](&M, &M, a, &M, piv, &info);
        if (info > 0) { st = linalg_err(n, A, b, "singular matrix"); break; }
        g_getrs[n->dtype]("N", &M, &K, a, &M, piv, x, &M, &info);
        to_colmajor(n->dtype, (char *)n->data + (size_t)(b * m * k) * isz, x, k, m);
    }
done:
    free(a); free(x); free(piv);
    return st;
}

/* log|det A| (mode 0) or det A (mode 1) per batch element from getrf's diagonal, as NumPy (det =
 * sign * exp(log|det|)); sign into `sign` when given. A singular matrix gives sign 0, -inf. */
static int fwd_logdet(ad_node *n, ad_node *A, void *sign)
{
    int64_t m = A->shape[A->ndim - 1], nb = batch_of(A);
    size_t isz = ad_itemsize(n->dtype);
    int st = AD_OK;
    void *a = NULL;
    int *piv = NULL;
    if (m && nb) {
        if ((st = lapack_ready(op_name(n), n->dtype, m, 0))) return st;
        a = malloc((size_t)(m * m) * isz);
        piv = malloc((size_t)m * sizeof *piv);
        if (!a || !piv) { free(a); free(piv); return ad_err(AD_ERR_MEMORY, "%s: out of memory", op_name(n)); }
    }
    int M = (int)m, info = 0;
    for (int64_t b = 0; b < nb; b++) {
        double s = 1, l = 0;
        if (m) {
            to_colmajor(n->dtype, a, (const char *)A->data + (size_t)(b * m * m) * isz, m, m);
            g_getrf[n->dtype](&M, &M, a, &M, piv, &info);
        }
        if (info > 0) { s = 0; l = -INFINITY; }
        else if (n->dtype == AD_F64) {
            const double *d = a;
            for (int i = 0; i < M; i++) { double u = d[(int64_t)i * m + i]; if (piv[i] != i + 1) s = -s; if (u < 0) s = -s; l += log(fabs(u)); }
        } else {
            const float *d = a;
            float lf = 0;   /* summed in float32, as NumPy's float32 slogdet */
            for (int i = 0; i < M; i++) { float u = d[(int64_t)i * m + i]; if (piv[i] != i + 1) s = -s; if (u < 0) s = -s; lf += logf(fabsf(u)); }
            l = lf;
        }
        double v = n->c[0] ? s * exp(l) : l;
        if (n->dtype == AD_F64) { ((double *)n->data)[b] = v; if (sign) ((double *)sign)[b] = s; }
        else { ((float *)n->data)[b] = n->c[0] ? (float)s * expf((float)l) : (float)l; if (sign) ((float *)sign)[b] = (float)s; }
    }
    free(a); free(piv);
    return st;
}

/* L with A = L L^T from A's lower triangle: potrf("L") on the column-major copy, as NumPy */
static int fwd_cholesky(ad_node *n, ad_node *A)
{
    int64_t m = A->shape[A->ndim - 1], nb = batch_of(A);
    size_t isz = ad_itemsize(n->dtype);
    if (!m || !nb) return AD_OK;
    int st = lapack_ready("cholesky", n->dtype, m, 1);
    if (st) return st;
    void *a = malloc((size_t)(m * m) * isz);
    if (!a) return ad_err(AD_ERR_MEMORY, "cholesky: out of memory");
    int M = (int)m, info = 0;
    for (int64_t b = 0; b < nb && !st; b++) {
        to_colmajor(n->dtype, a, (const char *)A->data + (size_t)(b * m * m) * isz, m, m);
        g_potrf[n->dtype]("L", &M, a, &M, &info);
        if (info > 0) { st = linalg_err(n, A, b, "matrix is not positive definite"); break; }
        void *o = (char *)n->data + (size_t)(b * m * m) * isz;
        to_colmajor(n->dtype, o, a, m, m);
        for (int64_t i = 0; i < m; i++)   /* potrf leaves the upper triangle as it was */
            memset((char *)o + (size_t)(i * m + i + 1) * isz, 0, (size_t)(m - i - 1) * isz);
    }
    free(a);
    return st;
}

/* An SVD's sizes: A is m x n, k = min(m, n); U is m x ku and Vh kv x n (ku = kv = k thin, m and n
 * full); a packed output holds U, S, Vh one after the other, len values per matrix */
typedef struct { int64_t m, n, k, ku, kv, len, nb; } svd_dims;

static svd_dims svd_dims_of(const ad_node *A, int jobz)
{
    svd_dims d;
    d.m = A->shape[A->ndim - 2];
    d.n = A->shape[A->ndim - 1];
    d.k = d.m < d.n ? d.m : d.n;
    d.ku = jobz == AD_SVD_FULL ? d.m : d.k;
    d.kv = jobz == AD_SVD_FULL ? d.n : d.k;
    d.len = d.m * d.ku + d.k + d.kv * d.n;
    d.nb = batch_of(A);
    return d;
}

static int all_finite(int dtype, const void *p, int64_t count)
{
    if (dtype == AD_F64) { const double *x = p; for (int64_t i = 0; i < count; i++) if (!isfinite(x[i])) return 0; }
    else { const float *x = p; for (int64_t i = 0; i < count; i++) if (!isfinite(x[i])) return 0; }
    return 1;
}

/* gesdd per batch element on the column-major copy, as numpy.linalg.svd (jobz n->c[1]: 'N' for
 * svdvals, 'S' thin, 'A' full): the singular values (c[0] = 0), or U, S, Vh packed (c[0] = 1) */
static int fwd_svd(ad_node *n, ad_node *A)
{
    int packed = n->c[0] != 0, jobz = (int)n->c[1], dt = n->dtype;
    svd_dims d = svd_dims_of(A, jobz);
    size_t isz = ad_itemsize(dt);
    int64_t per = packed ? d.len : d.k;   /* output values per matrix */
    if (!d.nb || !per) return AD_OK;
    if (!d.k) {   /* no singular values: full U (m x m) and Vh (n x n) are identities, as NumPy's */
        memset(n->data, 0, (size_t)(d.nb * per) * isz);
        for (int64_t b = 0; b < d.nb; b++)
            for (int64_t i = 0; i < d.ku + d.kv; i++) {
                int64_t at = b * per + (i < d.ku ? i * d.ku + i : d.m * d.ku + (i - d.ku) * d.n + (i - d.ku));
                if (dt == AD_F64) ((double *)n->data)[at] = 1; else ((float *)n->data)[at] = 1;
            }
        return AD_OK;
    }
    const char *op = op_name(n);
    if (d.m * d.n > INT_MAX || d.m * d.ku > INT_MAX || d.kv * d.n > INT_MAX)
        return ad_err(AD_ERR_VALUE, "%s: matrices of %lld x %lld exceed LAPACK's int indexing", op, (long long)d.m,
                      (long long)d.n);
    if (!g_gesdd[dt])
        return ad_err(AD_ERR_RUNTIME, "%s: needs SciPy's LAPACK (scipy.linalg.cython_lapack), which was not found", op);
    char job = "NSA"[jobz];
    int M = (int)d.m, N = (int)d.n, LDVT = jobz ? (int)d.kv : 1, lwork = -1, info = 0, st = AD_OK;
    union { double d; float f; } wq = {0};
    void *a = malloc((size_t)(d.m * d.n) * isz), *s = malloc((size_t)d.k * isz), *work = NULL;
    void *u = malloc((size_t)(jobz ? d.m * d.ku : 1) * isz), *vt = malloc((size_t)(jobz ? d.kv * d.n : 1) * isz);
    int *iwork = malloc((size_t)(8 * d.k) * sizeof *iwork);
    if (!a || !s || !u || !vt || !iwork) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory", op); goto done; }
    g_gesdd[dt](&job, &M, &N, a, &M, s, u, &M, vt, &LDVT, &wq, &lwork, iwork, &info);   /* workspace query */
    /* sgesdd reports its size as a float, which may round below the integer it needs: a margin */
    double want = dt == AD_F64 ? wq.d : wq.f * 1.0001 + 1;
    if (info || want > INT_MAX) { st = ad_err(AD_ERR_RUNTIME, "%s: gesdd's workspace query failed", op); goto done; }
    lwork = want < 1 ? 1 : (int)want;
    if (!(work = malloc((size_t)lwork * isz))) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory", op); goto done; }
    for (int64_t b = 0; b < d.nb; b++) {
        const char *src = (const char *)A->data + (size_t)(b * d.m * d.n) * isz;
        if (!all_finite(dt, src, d.m * d.n)) { st = linalg_err(n, A, b, "SVD did not converge (a NaN or infinite entry)"); break; }
        to_colmajor(dt, a, src, d.m, d.n);
        g_gesdd[dt](&job, &M, &N, a, &M, s, u, &M, vt, &LDVT, work, &lwork, iwork, &info);
        if (info > 0) { st = linalg_err(n, A, b, "SVD did not converge"); break; }
        if (info < 0) { st = ad_err(AD_ERR_RUNTIME, "%s: gesdd rejected its argument %d", op, -info); break; }
        char *o = (char *)n->data + (size_t)(b * per) * isz;
        if (!packed) { memcpy(o, s, (size_t)d.k * isz); continue; }
        to_colmajor(dt, o, u, d.ku, d.m);   /* column-major m x ku, as row-major ku x m: transposed */
        memcpy(o + (size_t)(d.m * d.ku) * isz, s, (size_t)d.k * isz);
        to_colmajor(dt, o + (size_t)(d.m * d.ku + d.k) * isz, vt, d.n, d.kv);
    }
done:
    free(a); free(s); free(u); free(vt); free(iwork); free(work);
    return st;
}

int ad_fwd_lapack(ad_node *n, ad_node *const *ins)
{
    if (n->op == AD_OP_SVD) return fwd_svd(n, ins[0]);
    if (n->op == AD_OP_SOLVE) return fwd_solve(n, ins[0], ins[1]);
    if (n->op == AD_OP_LOGDET) return fwd_logdet(n, ins[0], NULL);
    return fwd_cholesky(n, ins[0]);
}

/* ---------------- constructors ---------------- */

static int check_square(const char *op, const ad_node *a)
{
    char b1[160];
    if (a->ndim < 2)
        return ad_err(AD_ERR_LINALG, "%s: %d-dimensional array given; the array must be at least two-dimensional",
                      op, a->ndim);
    if (a->shape[a->ndim - 1] != a->shape[a->ndim - 2])
        return ad_err(AD_ERR_LINALG, "%s: last 2 dimensions of the array must be square, got shape %s", op,
                      ad_shape_str(b1, sizeof b1, a->ndim, a->shape));
    return AD_OK;
}

static int finish(ad_tape *T, ad_node *n, int nin, ad_node **ins, int st, ad_node **out)
{
    if (st) { ad_node_discard(T, n); return st; }
    if ((st = ad_record(T, n, nin, ins))) return st;
    *out = n;
    return AD_OK;
}

/* inv (name 1) is solve(A, I): only the messages differ */
int ad_mk_solve(ad_tape *T, ad_node *a, ad_node *b, int name, ad_node **out)
{
    const char *op = name ? "inv" : "solve";
    char b1[160], b2[160];
    int st = check_square(op, a);
    if (st) return st;
    if (a->dtype != b->dtype)
        return ad_err(AD_ERR_TYPE, "%s: a (%s) and b (%s) must have one dtype", op, ad_dtype_name(a->dtype),
                      ad_dtype_name(b->dtype));
    if (b->ndim != a->ndim || b->shape[b->ndim - 2] != a->shape[a->ndim - 1] ||
        memcmp(a->shape, b->shape, (size_t)(a->ndim - 2) * sizeof(int64_t)))
        return ad_err(AD_ERR_VALUE, "%s: b of shape %s does not match a of shape %s (expected (..., %lld, k) with "
                      "a's batch axes)", op, ad_shape_str(b1, sizeof b1, b->ndim, b->shape),
                      ad_shape_str(b2, sizeof b2, a->ndim, a->shape), (long long)a->shape[a->ndim - 1]);
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_SOLVE, b->dtype, b->ndim, b->shape, &n))) return st;
    n->c[0] = name;
    ad_node *ins[2] = {a, b};
    return finish(T, n, 2, ins, fwd_solve(n, a, b), out);
}

static int mk_logdet(ad_tape *T, ad_node *a, int det, void *sign, ad_node **out)
{
    int st = check_square(det ? "det" : "slogdet", a);
    if (st) return st;
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_LOGDET, a->dtype, a->ndim - 2, a->shape, &n))) return st;
    n->c[0] = det;
    return finish(T, n, 1, &a, fwd_logdet(n, a, sign), out);
}

static int mk_cholesky(ad_tape *T, ad_node *a, ad_node **out)
{
    int st = check_square("cholesky", a);
    if (st) return st;
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_CHOLESKY, a->dtype, a->ndim, a->shape, &n))) return st;
    return finish(T, n, 1, &a, fwd_cholesky(n, a), out);
}

/* the singular values (packed 0) or the packed SVD (1) of a, by gesdd with jobz */
static int mk_svd(ad_tape *T, ad_node *a, int packed, int jobz, ad_node **out)
{
    const char *op = packed ? "svd" : "svdvals";
    if (a->ndim < 2)
        return ad_err(AD_ERR_LINALG, "%s: %d-dimensional array given; the array must be at least two-dimensional",
                      op, a->ndim);
    if (a->shape[a->ndim - 2] > INT_MAX || a->shape[a->ndim - 1] > INT_MAX)   /* (and the packed size fits) */
        return ad_err(AD_ERR_VALUE, "%s: matrices of %lld x %lld exceed LAPACK's int indexing", op,
                      (long long)a->shape[a->ndim - 2], (long long)a->shape[a->ndim - 1]);
    svd_dims d = svd_dims_of(a, jobz);
    int64_t shape[AD_MAXDIM];
    memcpy(shape, a->shape, (size_t)(a->ndim - 2) * sizeof *shape);
    shape[a->ndim - 2] = packed ? d.len : d.k;
    ad_node *n;
    int st = ad_node_new(T, AD_OP_SVD, a->dtype, a->ndim - 1, shape, &n);
    if (st) return st;
    n->c[0] = packed;
    n->c[1] = jobz;
    return finish(T, n, 1, &a, fwd_svd(n, a), out);
}

/* The singular values of p, the packed SVD of a, as their own node: copied from p, so one gesdd
 * call gives both; a replay recomputes them by that same call (c[1], p's jobz), bit for bit. */
static int mk_svd_values_of(ad_tape *T, ad_node *a, ad_node *p, ad_node **out)
{
    svd_dims d = svd_dims_of(a, (int)p->c[1]);
    int64_t shape[AD_MAXDIM];
    memcpy(shape, a->shape, (size_t)(a->ndim - 2) * sizeof *shape);
    shape[a->ndim - 2] = d.k;
    ad_node *n;
    int st = ad_node_new(T, AD_OP_SVD, a->dtype, a->ndim - 1, shape, &n);
    if (st) return st;
    n->c[1] = p->c[1];
    size_t isz = ad_itemsize(a->dtype);
    for (int64_t b = 0; b < (d.k ? d.nb : 0); b++)
        memcpy((char *)n->data + (size_t)(b * d.k) * isz, (const char *)p->data + (size_t)(b * d.len + d.m * d.ku) * isz,
               (size_t)d.k * isz);
    return finish(T, n, 1, &a, AD_OK, out);
}

int ad_svd(int64_t ha, int jobz, int64_t *out)
{
    if (!out) return ad_err(AD_ERR_VALUE, "svd: out is NULL");
    out[0] = out[1] = 0;
    if (jobz < AD_SVD_VALS || jobz > AD_SVD_FULL)
        return ad_err(AD_ERR_VALUE, "svd: jobz %d is not 0 (values), 1 (thin) or 2 (full)", jobz);
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *p = NULL, *s = NULL;
    if (!(st = ad_resolve(T, ha, &a))) {
        if (jobz == AD_SVD_VALS) st = mk_svd(T, a, 0, AD_SVD_VALS, &s);
        else if (!(st = mk_svd(T, a, 1, jobz, &p)) && (st = mk_svd_values_of(T, a, p, &s))) ad_node_unref(T, p);
        if (!st) {
            out[0] = ad_handle(T, s);
            if (p) out[1] = ad_handle(T, p);
        }
    }
    ad_unlock(T);
    return st;
}

int64_t ad_solve(int64_t ha, int64_t hb, int name)
{
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n;
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) && !(st = ad_mk_solve(T, a, b, name != 0, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

int64_t ad_logdet(int64_t ha, int det, void *sign)
{
    AD_ONE_INPUT_ENTRY(ha, mk_logdet(T, x, det != 0, sign, &n));
}

int64_t ad_cholesky(int64_t ha)
{
    AD_ONE_INPUT_ENTRY(ha, mk_cholesky(T, x, &n));
}

/* ---------------- the rules, once, as recorded ops ----------------
 * An expression context: every node made is kept in tmp and released at the end; the first
 * failure sticks (later steps see NULL operands and do nothing), so a formula reads as one. */
typedef struct { ad_tape *T; int st; int nt; ad_node *tmp[400]; } ex;

/* (o by address: it is read after the constructor ran, which filled it) */
static ad_node *track(ex *e, int st, ad_node **po)
{
    ad_node *o = *po;
    if (st) { if (!e->st) e->st = st; return NULL; }
    if (e->nt == (int)(sizeof e->tmp / sizeof e->tmp[0])) {   /* a formula here makes fewer */
        ad_node_unref(e->T, o);
        e->st = ad_err(AD_ERR_RUNTIME, "linalg rule: too many temporaries");
        return NULL;
    }
    return e->tmp[e->nt++] = o;
}

#define LIVE(e) (!(e)->st)
static ad_node *bin(ex *e, int op, ad_node *a, ad_node *b)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a || !b) return NULL;
    return track(e, ad_mk_binary(e->T, op, a, b, &o), &o);
}
static ad_node *scale(ex *e, ad_node *a, double c)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    return track(e, ad_mk_unary(e->T, AD_OP_MUL_S, a, c, 0, &o), &o);
}
static ad_node *mm(ex *e, ad_node *a, ad_node *b)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a || !b) return NULL;
    return track(e, ad_mk_matmul(e->T, a, b, &o), &o);
}
static ad_node *mT(ex *e, ad_node *a)   /* the last two axes swapped */
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    int64_t p[AD_MAXDIM];
    for (int i = 0; i < a->ndim; i++) p[i] = i;
    p[a->ndim - 2] = a->ndim - 1;
    p[a->ndim - 1] = a->ndim - 2;
    return track(e, ad_mk_transpose(e->T, a, a->ndim, p, &o), &o);
}
static ad_node *solve(ex *e, ad_node *a, ad_node *b)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a || !b) return NULL;
    return track(e, ad_mk_solve(e->T, a, b, 0, &o), &o);
}
static ad_node *sum2(ex *e, ad_node *a)   /* summed over the last two axes */
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    return track(e, ad_mk_reduce(e->T, AD_OP_SUM, a, (uint64_t)3 << (a->ndim - 2), 0, &o), &o);
}
static ad_node *as_matrix(ex *e, ad_node *y)   /* a batch-shaped y as (..., 1, 1) */
{
    ad_node *o = NULL;
    if (!LIVE(e) || !y) return NULL;
    int64_t sh[AD_MAXDIM];
    memcpy(sh, y->shape, (size_t)y->ndim * sizeof *sh);
    sh[y->ndim] = sh[y->ndim + 1] = 1;
    return track(e, ad_mk_reshape(e->T, y, y->ndim + 2, sh, &o), &o);
}
/* a constant shaped like x: the identity in each batch element (eye) or Phi's mask (lower 1,
 * diagonal 1/2, upper 0), or a copy of `data` (NULL: zeros) */
enum { K_EYE = 1, K_PHI = 2 };
static ad_node *konst(ex *e, const ad_node *x, int kind, const void *data)
{
    ad_node *o = NULL;
    if (!LIVE(e)) return NULL;
    int ndim = kind == K_PHI ? 2 : x->ndim;
    const int64_t *shape = kind == K_PHI ? x->shape + x->ndim - 2 : x->shape;
    if (!track(e, ad_mk_full(e->T, x->dtype, ndim, shape, 0, &o), &o)) return NULL;
    if (data) ad_copy(o->data, data, (size_t)o->size * ad_itemsize(o->dtype));
    if (kind) {
        int64_t m = x->shape[x->ndim - 1];
        for (int64_t b = 0; b < (m ? o->size / (m * m) : 0); b++)
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = kind == K_EYE ? i : 0; j <= i; j++) {
                    double v = kind == K_PHI && j == i ? 0.5 : 1.0;
                    int64_t at = (b * m + i) * m + j;
                    if (o->dtype == AD_F64) ((double *)o->data)[at] = v; else ((float *)o->data)[at] = (float)v;
                }
    }
    return o;
}

/* The result r (a node of the context) handed out with its own reference; temporaries released */
static int done(ex *e, ad_node *r, ad_node **out)
{
    if (!e->st && r) { r->refs++; *out = r; }
    else if (!e->st) e->st = ad_err(AD_ERR_RUNTIME, "linalg rule: no result");
    for (int i = 0; i < e->nt; i++) ad_node_unref(e->T, e->tmp[i]);
    return e->st;
}

/* The values a rule reads: the inputs, the output, and the node's constant (solve/inv, mode) */
typedef struct { int op; double c0; ad_node *a, *b, *y; const ad_node *node; } vals;

/* A^-T (A's inverse, transposed) for det and slogdet's rules; a singular A is an error, since the
 * gradient there (the adjugate) is not A^-T det A */
static ad_node *inv_t(ex *e, const vals *v)
{
    if (!LIVE(e)) return NULL;
    int64_t nb = v->y->size;
    for (int64_t b = 0; b < nb; b++) {
        double y = v->y->dtype == AD_F64 ? ((double *)v->y->data)[b] : ((float *)v->y->data)[b];
        if (v->c0 ? y == 0 : y == -INFINITY) {
            e->st = linalg_err(v->node, v->a, b, "the derivative at a singular matrix (the adjugate) is not "
                               "implemented; the value itself is 0 (det) or -inf (slogdet)");
            return NULL;
        }
    }
    return mT(e, solve(e, v->a, konst(e, v->a, K_EYE, NULL)));
}

/* ---- the SVD's rules ----
 * Written once over pairs (value, tangent): the VJP and JVP (numeric and recorded) run them with
 * no tangents; vjp2, hvp's second-order term, runs the same VJP with the primals' tangents and
 * keeps the tangent of the result, so that derivative is not a second formula to keep in step. */
typedef struct { ad_node *v, *t; } du;   /* a value and its tangent (NULL: zero) */

static du dual(ad_node *v, ad_node *t)
{
    du r = {v, t};
    return r;
}
static ad_node *unary(ex *e, int op, ad_node *a)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    return track(e, ad_mk_unary(e->T, op, a, 0, 0, &o), &o);
}
/* t broadcast to v's shape (a tangent of one operand of a broadcasting op) */
static ad_node *fit(ex *e, ad_node *t, const ad_node *v)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !t || !v) return t;
    if (t->ndim == v->ndim && !memcmp(t->shape, v->shape, (size_t)v->ndim * sizeof *v->shape)) return t;
    return track(e, ad_mk_broadcast_to(e->T, t, v->ndim, v->shape, &o), &o);
}
static ad_node *tsum(ex *e, ad_node *a, ad_node *b) { return !a ? b : !b ? a : bin(e, AD_OP_ADD, a, b); }
static du d_add(ex *e, du a, du b)
{
    ad_node *v = bin(e, AD_OP_ADD, a.v, b.v);
    return dual(v, fit(e, tsum(e, a.t, b.t), v));
}
static du d_sub(ex *e, du a, du b)
{
    ad_node *v = bin(e, AD_OP_SUB, a.v, b.v);
    ad_node *t = a.t && b.t ? bin(e, AD_OP_SUB, a.t, b.t) : a.t ? a.t : b.t ? scale(e, b.t, -1) : NULL;
    return dual(v, fit(e, t, v));
}
static du d_mul(ex *e, du a, du b)
{
    ad_node *v = bin(e, AD_OP_MUL, a.v, b.v);
    return dual(v, fit(e, tsum(e, a.t ? bin(e, AD_OP_MUL, a.t, b.v) : NULL, b.t ? bin(e, AD_OP_MUL, a.v, b.t) : NULL), v));
}
static du d_mm(ex *e, du a, du b)
{
    return dual(mm(e, a.v, b.v), tsum(e, a.t ? mm(e, a.t, b.v) : NULL, b.t ? mm(e, a.v, b.t) : NULL));
}
static du d_T(ex *e, du a) { return dual(mT(e, a.v), a.t ? mT(e, a.t) : NULL); }
static du d_recip(ex *e, du a)   /* d(1/x) = -dx / x^2 */
{
    ad_node *r = unary(e, AD_OP_RECIPROCAL, a.v);
    return dual(r, a.t ? scale(e, bin(e, AD_OP_MUL, bin(e, AD_OP_MUL, r, r), a.t), -1) : NULL);
}
static ad_node *view(ex *e, ad_node *a, int ndim, const int64_t *shape, int64_t off, const int64_t *strides)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    return track(e, ad_mk_slice(e->T, a, ndim, shape, off, strides, &o), &o);
}
static ad_node *reshape(ex *e, ad_node *a, int ndim, const int64_t *shape)
{
    ad_node *o = NULL;
    if (!LIVE(e) || !a) return NULL;
    return track(e, ad_mk_reshape(e->T, a, ndim, shape, &o), &o);
}
static du d_reshape(ex *e, du a, int ndim, const int64_t *shape)
{
    return dual(reshape(e, a.v, ndim, shape), a.t ? reshape(e, a.t, ndim, shape) : NULL);
}
static ad_node *zeros(ex *e, int dtype, int ndim, const int64_t *shape)
{
    ad_node *o = NULL;
    if (!LIVE(e)) return NULL;
    return track(e, ad_mk_full(e->T, dtype, ndim, shape, 0, &o), &o);
}

/* U, S and Vh of a packed SVD p (its tangent too): views of its last axis */
static void svd_parts(ex *e, du p, const svd_dims *d, du *u, du *s, du *vh)
{
    *u = *s = *vh = dual(NULL, NULL);
    if (!LIVE(e) || !p.v) return;
    int nb = p.v->ndim - 1;
    int64_t sh[AD_MAXDIM], st[AD_MAXDIM];
    ad_contig_strides(p.v->ndim, p.v->shape, st);
    memcpy(sh, p.v->shape, (size_t)nb * sizeof *sh);
    int64_t at[3] = {0, d->m * d->ku, d->m * d->ku + d->k}, rows[3] = {d->m, d->k, d->kv}, cols[3] = {d->ku, 1, d->n};
    du *out[3] = {u, s, vh};
    for (int i = 0; i < 3; i++) {
        sh[nb] = rows[i], sh[nb + 1] = cols[i], st[nb] = cols[i], st[nb + 1] = 1;
        int ndim = i == 1 ? nb + 1 : nb + 2;   /* S is a vector */
        if (i == 1) st[nb] = 1;
        *out[i] = dual(view(e, p.v, ndim, sh, at[i], st), p.t ? view(e, p.t, ndim, sh, at[i], st) : NULL);
    }
}

/* s (..., k) as a row (..., 1, k) or a column (..., k, 1) */
static du s_as(ex *e, du s, int col)
{
    if (!LIVE(e) || !s.v) return dual(NULL, NULL);
    int64_t sh[AD_MAXDIM];
    int nb = s.v->ndim - 1;
    memcpy(sh, s.v->shape, (size_t)nb * sizeof *sh);
    sh[nb] = col ? s.v->shape[nb] : 1;
    sh[nb + 1] = col ? 1 : s.v->shape[nb];
    return d_reshape(e, s, nb + 2, sh);
}

/* The diagonal of x (..., k, k), as (..., k) */
static du d_diag(ex *e, du x, ad_node *eye)
{
    du p = d_mul(e, x, dual(eye, NULL));
    ad_node *o = NULL, *t = NULL;
    if (!LIVE(e) || !p.v) return dual(NULL, NULL);
    uint64_t ax = (uint64_t)1 << (p.v->ndim - 2);
    ad_node *v = track(e, ad_mk_reduce(e->T, AD_OP_SUM, p.v, ax, 0, &o), &o);
    if (p.t) t = track(e, ad_mk_reduce(e->T, AD_OP_SUM, p.t, ax, 0, &o), &o);
    return dual(v, t);
}

/* F_ij = 1 / (s_j^2 - s_i^2), 0 on the diagonal (1 / (E + I) - I: no division by the diagonal's 0) */
static du f_matrix(ex *e, du srow, du scol, ad_node **eye)
{
    du diff = d_sub(e, d_mul(e, srow, srow), d_mul(e, scol, scol));
    *eye = konst(e, diff.v, K_EYE, NULL);
    return d_sub(e, d_recip(e, d_add(e, diff, dual(*eye, NULL))), dual(*eye, NULL));
}

/* F's divisions need distinct nonzero singular values (and a thin SVD, or a square matrix: the
 * extra columns of full U or Vh are any orthonormal completion, not a function of A): else an
 * error naming the op, the batch element and the values, never an inf or a NaN passed on.
 * s: the singular values, d->k per batch element, sorted descending (gesdd's order). */
static int svd_needs_distinct(ex *e, const ad_node *node, const ad_node *a, const ad_node *s, int64_t s_stride,
                              int64_t s_off, const svd_dims *d, int jobz, const char *what)
{
    char b1[160], msg[320];
    if (!LIVE(e)) return 0;
    if (jobz == AD_SVD_FULL && d->m != d->n) {
        e->st = ad_err(AD_ERR_LINALG, "%s: U and Vh of full_matrices=True have no derivative for a matrix that is "
                       "not square (shape %s): their last columns are any orthonormal completion; use "
                       "full_matrices=False", op_name(node), ad_shape_str(b1, sizeof b1, a->ndim, a->shape));
        return 0;
    }
    for (int64_t b = 0; b < d->nb; b++)
        for (int64_t i = 0; i < d->k; i++) {
            int64_t at = b * s_stride + s_off + i;
            double si = s->dtype == AD_F64 ? ((double *)s->data)[at] : ((float *)s->data)[at];
            double sj = i + 1 < d->k ? (s->dtype == AD_F64 ? ((double *)s->data)[at + 1] : ((float *)s->data)[at + 1]) : -1;
            if (si != 0 && si != sj) continue;
            if (si == 0) snprintf(msg, sizeof msg, "%s needs distinct nonzero singular values; s[%lld] = 0", what, (long long)i);
            else snprintf(msg, sizeof msg, "%s needs distinct nonzero singular values; s[%lld] = s[%lld] = %g", what,
                          (long long)i, (long long)i + 1, si);
            e->st = linalg_err(node, a, b, msg);
            return 0;
        }
    return 1;
}
#define SVD_WHAT "the derivative of the singular vectors (U, Vh; also svdvals' and norm's second derivative)"

/* VJP of the packed SVD for cotangents gU, gS, gVh: with J = U^T gU, K = Vh gVh^T,
 *   gA = U (diag(gS) + (F o (J - J^T)) S + S (F o (K - K^T))) Vh
 *        [+ (gU - U J) S^-1 Vh when m > n]  [+ U S^-1 (gVh - K^T Vh) when m < n] */
static du svd_vjp_packed(ex *e, const svd_dims *d, du u, du s, du vh, du gu, du gs, du gvh)
{
    ad_node *eye;
    du srow = s_as(e, s, 0), scol = s_as(e, s, 1), f = f_matrix(e, srow, scol, &eye);
    du j = d_mm(e, d_T(e, u), gu), k = d_mm(e, vh, d_T(e, gvh));
    du inner = d_add(e, d_mul(e, s_as(e, gs, 0), dual(eye, NULL)),
                     d_add(e, d_mul(e, d_mul(e, f, d_sub(e, j, d_T(e, j))), srow),
                           d_mul(e, scol, d_mul(e, f, d_sub(e, k, d_T(e, k))))));
    du ga = d_mm(e, d_mm(e, u, inner), vh);
    if (d->m > d->n) ga = d_add(e, ga, d_mm(e, d_mul(e, d_sub(e, gu, d_mm(e, u, j)), d_recip(e, srow)), vh));
    if (d->m < d->n) ga = d_add(e, ga, d_mm(e, u, d_mul(e, d_recip(e, scol), d_sub(e, gvh, d_mm(e, d_T(e, k), vh)))));
    return ga;
}

/* JVP of the packed SVD along dA: with dS = U^T dA V, ds = diag(dS),
 *   dU = U (F o (dS S + S dS^T)) [+ (dA V - U dS) S^-1 when m > n],
 *   dV = V (F o (S dS + dS^T S)) [+ (dA^T U - V dS^T) S^-1 when m < n]; packed as the output */
static ad_node *svd_jvp_packed(ex *e, const svd_dims *d, du u, du s, du vh, du da)
{
    ad_node *eye;
    du srow = s_as(e, s, 0), scol = s_as(e, s, 1), f = f_matrix(e, srow, scol, &eye), v = d_T(e, vh);
    du ds_m = d_mm(e, d_mm(e, d_T(e, u), da), v), dss = d_mul(e, ds_m, srow), sds = d_mul(e, scol, ds_m);
    du du_ = d_mm(e, u, d_mul(e, f, d_add(e, dss, d_T(e, dss))));
    du dv = d_mm(e, v, d_mul(e, f, d_add(e, sds, d_T(e, sds))));
    if (d->m > d->n) du_ = d_add(e, du_, d_mul(e, d_sub(e, d_mm(e, da, v), d_mm(e, u, ds_m)), d_recip(e, srow)));
    if (d->m < d->n) dv = d_add(e, dv, d_mul(e, d_sub(e, d_mm(e, d_T(e, da), u), d_mm(e, v, d_T(e, ds_m))), d_recip(e, srow)));
    ad_node *parts[3] = {du_.v, d_diag(e, ds_m, eye).v, mT(e, dv.v)};
    if (!LIVE(e)) return NULL;
    int nb = u.v->ndim - 2;
    int64_t sh[AD_MAXDIM];
    memcpy(sh, u.v->shape, (size_t)nb * sizeof *sh);
    for (int i = 0; i < 3; i += 2) {
        sh[nb] = parts[i]->size / (d->nb ? d->nb : 1);
        parts[i] = reshape(e, parts[i], nb + 1, sh);
    }
    ad_node *o = NULL;
    if (!LIVE(e)) return NULL;
    return track(e, ad_mk_concatenate(e->T, 3, parts, nb, 0, &o), &o);
}

/* 1 where a singular value is positive, else 0: a zero singular value (exactly) contributes 0 to
 * the derivative of svdvals, the kink's smallest subgradient (like abs'(0) = 0, and the vector
 * 2-norm's gradient at 0); its u v^T there would depend on the signs gesdd happened to pick */
static ad_node *positive_mask(ex *e, const ad_node *s)
{
    ad_node *o = zeros(e, s->dtype, s->ndim, s->shape);
    if (!o) return NULL;
    for (int64_t i = 0; i < s->size; i++) {
        if (s->dtype == AD_F64) ((double *)o->data)[i] = ((double *)s->data)[i] > 0;
        else ((float *)o->data)[i] = ((float *)s->data)[i] > 0;
    }
    return o;
}

/* The thin SVD of a, packed, for svdvals' rules (U and V): a new node, recorded when a is (so a
 * recorded rule is differentiable again, through the packed SVD's rules), else a constant */
static ad_node *thin_svd_of(ex *e, ad_node *a)
{
    ad_node *o = NULL;
    if (!LIVE(e)) return NULL;
    return track(e, mk_svd(e->T, a, 1, AD_SVD_THIN, &o), &o);
}

/* The VJP of either kind of node for cotangent g, and its tangent as the primals move along ta
 * (output tangent ty) with g held (vjp2); ta NULL: the plain VJP.
 *   svdvals: gA = U diag(g) V^T, no F: any singular values; its tangent needs dU and dV (F).
 *   svd (packed): svd_vjp_packed, whose F needs distinct nonzero singular values. */
static du svd_vjp(ex *e, const vals *v, ad_node *g, ad_node *ta, ad_node *ty)
{
    const ad_node *node = v->node;
    int jobz = (int)node->c[1];
    if (!LIVE(e) || !v->a || !v->y) return dual(NULL, NULL);   /* the constant copies failed */
    if (node->c[0]) {
        svd_dims d = svd_dims_of(v->a, jobz);
        if (!v->a->size || !d.k) return dual(konst(e, v->a, 0, NULL), NULL);
        if (!svd_needs_distinct(e, node, v->a, v->y, d.len, d.m * d.ku, &d, jobz, SVD_WHAT)) return dual(NULL, NULL);
        du u, s, vh, gu, gs, gvh;
        svd_parts(e, dual(v->y, ta ? ty : NULL), &d, &u, &s, &vh);
        svd_parts(e, dual(g, NULL), &d, &gu, &gs, &gvh);
        return svd_vjp_packed(e, &d, u, s, vh, gu, gs, gvh);
    }
    svd_dims d = svd_dims_of(v->a, AD_SVD_THIN);
    if (!v->a->size || !d.k) return dual(konst(e, v->a, 0, NULL), NULL);
    du p = dual(thin_svd_of(e, v->a), NULL), u, s, vh;
    if (ta) {   /* the singular vectors move: their JVP, which needs F */
        if (!svd_needs_distinct(e, node, v->a, v->y, d.k, 0, &d, AD_SVD_THIN, "the second derivative")) return dual(NULL, NULL);
        svd_parts(e, p, &d, &u, &s, &vh);
        p.t = svd_jvp_packed(e, &d, u, s, vh, dual(ta, NULL));
    }
    svd_parts(e, p, &d, &u, &s, &vh);
    du gm = s_as(e, dual(bin(e, AD_OP_MUL, g, positive_mask(e, v->y)), NULL), 0);
    return d_mm(e, d_mul(e, u, gm), vh);
}

/* The JVP of either kind of node along ta: svdvals' diag(U^T dA V) (0 at a zero singular value),
 * the packed SVD's svd_jvp_packed */
static ad_node *svd_jvp(ex *e, const vals *v, ad_node *ta)
{
    const ad_node *node = v->node;
    int jobz = (int)node->c[1], packed = node->c[0] != 0;
    if (!LIVE(e) || !v->a || !v->y) return NULL;
    svd_dims d = svd_dims_of(v->a, packed ? jobz : AD_SVD_THIN);
    if (!v->a->size || !d.k) return konst(e, v->y, 0, NULL);
    du u, s, vh;
    if (packed) {
        if (!svd_needs_distinct(e, node, v->a, v->y, d.len, d.m * d.ku, &d, jobz, SVD_WHAT)) return NULL;
        svd_parts(e, dual(v->y, NULL), &d, &u, &s, &vh);
        return svd_jvp_packed(e, &d, u, s, vh, dual(ta, NULL));
    }
    svd_parts(e, dual(thin_svd_of(e, v->a), NULL), &d, &u, &s, &vh);
    ad_node *eye = konst(e, mm(e, vh.v, mT(e, vh.v)), K_EYE, NULL);
    ad_node *ds = d_diag(e, d_mm(e, d_mm(e, d_T(e, u), dual(ta, NULL)), d_T(e, vh)), eye).v;
    return bin(e, AD_OP_MUL, ds, positive_mask(e, v->y));
}

static ad_node *rule_vjp(ex *e, const vals *v, ad_node *g, int which)
{
    if (v->op == AD_OP_SVD) return svd_vjp(e, v, g, NULL, NULL).v;
    if (v->op == AD_OP_SOLVE) {
        ad_node *gb = solve(e, mT(e, v->a), g);
        return which == 1 ? gb : scale(e, mm(e, gb, mT(e, v->y)), -1);
    }
    if (v->op == AD_OP_LOGDET) {
        ad_node *w = v->c0 ? bin(e, AD_OP_MUL, g, v->y) : g;
        return bin(e, AD_OP_MUL, as_matrix(e, w), inv_t(e, v));
    }
    ad_node *phi = konst(e, v->a, K_PHI, NULL), *lt = mT(e, v->y);
    ad_node *p = bin(e, AD_OP_MUL, mm(e, lt, g), phi);
    ad_node *s = mT(e, solve(e, lt, mT(e, solve(e, lt, p))));     /* L^-T P L^-1 */
    return bin(e, AD_OP_MUL, bin(e, AD_OP_ADD, s, mT(e, s)), phi);
}

/* tangents ta (of in[0]) and tb (of in[1], solve only); either may be NULL, not both */
static ad_node *rule_jvp(ex *e, const vals *v, ad_node *ta, ad_node *tb)
{
    if (v->op == AD_OP_SVD) return svd_jvp(e, v, ta);
    if (v->op == AD_OP_SOLVE) {
        ad_node *r = ta ? scale(e, mm(e, ta, v->y), -1) : NULL;
        r = r && tb ? bin(e, AD_OP_ADD, tb, r) : r ? r : tb;
        return solve(e, v->a, r);
    }
    if (v->op == AD_OP_LOGDET) {
        ad_node *d = sum2(e, bin(e, AD_OP_MUL, inv_t(e, v), ta));
        return v->c0 ? bin(e, AD_OP_MUL, v->y, d) : d;
    }
    ad_node *phi = konst(e, v->a, K_PHI, NULL), *q = bin(e, AD_OP_MUL, ta, phi);
    ad_node *z = solve(e, v->y, mT(e, solve(e, v->y, bin(e, AD_OP_ADD, q, mT(e, q)))));   /* L^-1 dA L^-T */
    return mm(e, v->y, bin(e, AD_OP_MUL, z, phi));
}

/* The VJP's derivative as the primals move along (ta, tb) with output tangent ty, g fixed */
static ad_node *rule_vjp2(ex *e, const vals *v, ad_node *g, ad_node *ta, ad_node *ty, int which)
{
    if (v->op == AD_OP_SVD) {
        du r = svd_vjp(e, v, g, ta, ty);
        return r.t ? r.t : r.v ? konst(e, v->a, 0, NULL) : NULL;
    }
    if (v->op == AD_OP_SOLVE) {
        /* gB = A^-T G: d gB = -A^-T dA^T gB; gA = -gB X^T: d gA = -(d gB X^T + gB dX^T) */
        ad_node *gb = solve(e, mT(e, v->a), g);
        ad_node *dgb = ta ? scale(e, solve(e, mT(e, v->a), mm(e, mT(e, ta), gb)), -1) : NULL;
        if (which == 1) return dgb ? dgb : konst(e, v->b, 0, NULL);
        ad_node *r = scale(e, mm(e, gb, mT(e, ty)), -1);
        return dgb ? bin(e, AD_OP_SUB, r, mm(e, dgb, mT(e, v->y))) : r;
    }
    if (v->op == AD_OP_LOGDET) {
        /* d A^-T = -(A^-1 dA A^-1)^T = -W dA^T W with W = A^-T */
        ad_node *w = inv_t(e, v);
        ad_node *r = bin(e, AD_OP_MUL, as_matrix(e, v->c0 ? bin(e, AD_OP_MUL, g, v->y) : g),
                         scale(e, mm(e, w, mm(e, mT(e, ta), w)), -1));
        return v->c0 ? bin(e, AD_OP_ADD, r, bin(e, AD_OP_MUL, as_matrix(e, bin(e, AD_OP_MUL, g, ty)), w)) : r;
    }
    /* cholesky: with R(Y) = L^-T Y, S = R(P) L^-1, P = Phi(L^T G):
     * dS = -R(dL^T S) - S dL L^-1 + R(dP) L^-1, dP = Phi(dL^T G), d gA = Phi(dS + dS^T) */
    ad_node *phi = konst(e, v->a, K_PHI, NULL), *lt = mT(e, v->y), *dlt = mT(e, ty);
    ad_node *p = bin(e, AD_OP_MUL, mm(e, lt, g), phi), *dp = bin(e, AD_OP_MUL, mm(e, dlt, g), phi);
    ad_node *s = mT(e, solve(e, lt, mT(e, solve(e, lt, p))));
    ad_node *right = bin(e, AD_OP_SUB, solve(e, lt, dp), mm(e, s, ty));          /* R(dP) - S dL */
    ad_node *ds = bin(e, AD_OP_SUB, mT(e, solve(e, lt, mT(e, right))), solve(e, lt, mm(e, dlt, s)));
    return bin(e, AD_OP_MUL, bin(e, AD_OP_ADD, ds, mT(e, ds)), phi);
}

/* ---- recorded: the formulas on the tape's nodes ---- */
static vals vals_of(ad_node *n)
{
    vals v = {n->op, n->c[0], n->in[0], n->nin > 1 ? n->in[1] : NULL, n, n};
    return v;
}

int ad_vjp_rec_lapack(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    ex e = {T, 0, 0, {0}};
    vals v = vals_of(n);
    return done(&e, rule_vjp(&e, &v, g, which), out);
}

int ad_jvp_rec_lapack(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    ex e = {T, 0, 0, {0}};
    vals v = vals_of(n);
    return done(&e, rule_jvp(&e, &v, tin[0], n->nin > 1 ? tin[1] : NULL), out);
}

/* ---- numeric: the same formulas on constant copies (nothing recorded) ---- */
static vals const_vals(ex *e, ad_node *n)
{
    vals v = {n->op, n->c[0], konst(e, n->in[0], 0, n->in[0]->data),
              n->nin > 1 ? konst(e, n->in[1], 0, n->in[1]->data) : NULL, konst(e, n, 0, n->data), n};
    return v;
}

/* a constant shaped like x from `data` (k-th row of a stacked buffer), or NULL for NULL */
static ad_node *row_of(ex *e, const ad_node *x, const void *data, int64_t r)
{
    return data ? konst(e, x, 0, (const char *)data + (size_t)(r * x->size) * ad_itemsize(x->dtype)) : NULL;
}

static int sink_out(ex *e, ad_node *r, ad_sink *s)
{
    ad_node *res = NULL;
    int st = done(e, r, &res);
    if (st) return st;
    ad_add_into(res->dtype, s->dst, s->accumulate, res->data, res->size);
    ad_node_unref(e->T, res);
    return AD_OK;
}

static ad_node *cotangent(ex *e, ad_node *n, const void *g, int uniform)
{
    ad_node *o = konst(e, n, 0, uniform ? NULL : g);
    if (o && uniform) {
        size_t isz = ad_itemsize(n->dtype);
        for (int64_t i = 0; i < o->size; i++) memcpy((char *)o->data + i * isz, g, isz);
    }
    return o;
}

int ad_vjp_lapack(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    ex e = {T, 0, 0, {0}};
    vals v = const_vals(&e, n);
    return sink_out(&e, rule_vjp(&e, &v, cotangent(&e, n, g, s->g_uniform), which), s);
}

int ad_jvp_lapack(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    for (int64_t r = 0; r < k; r++) {
        ex e = {T, 0, 0, {0}};
        vals v = const_vals(&e, n);
        ad_node *res = NULL;
        int st = done(&e, rule_jvp(&e, &v, row_of(&e, n->in[0], tin[0], r),
                                   n->nin > 1 ? row_of(&e, n->in[1], tin[1], r) : NULL), &res);
        if (st) return st;
        ad_copy((char *)tout + (size_t)(r * n->size) * ad_itemsize(n->dtype), res->data, (size_t)n->size * ad_itemsize(n->dtype));
        ad_node_unref(T, res);
    }
    return AD_OK;
}

int ad_vjp2_lapack(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                   ad_sink *s)
{
    ex e = {T, 0, 0, {0}};
    vals v = const_vals(&e, n);
    ad_node *gn = cotangent(&e, n, g, 0), *ta = row_of(&e, n->in[0], tin[0], 0);
    ad_node *ty = tout ? row_of(&e, n, tout, 0) : konst(&e, n, 0, NULL);
    if (!ta && v.op != AD_OP_SOLVE)   /* one input: no tangent, no change */
        return sink_out(&e, konst(&e, n->in[0], 0, NULL), s);
    return sink_out(&e, rule_vjp2(&e, &v, gn, ta, ty, which), s);
}
