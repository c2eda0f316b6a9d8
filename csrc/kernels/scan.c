/* scan: the first-order linear recurrence along one axis, the one primitive under cumsum, cumprod
 * and prod (pyautodiff/reduce_ops.py):
 *     forward  s_k = a_k s_{k-1} + b_k      (s_{-1} = 0)
 *     reverse  r_k = a_{k+1} r_{k+1} + b_k  (r_len = 0)
 * cumsum(x) is scan(1, x); cumprod(x) is scan(x, [x_0, 0, 0, ...]). The reverse form is the
 * transpose of the forward one in b, so each one's VJP is the other: no rule divides by a, and
 * the gradients are exact where a (cumprod's x) is zero. With s' the output shifted one place
 * back (s'_k = s_{k-1}, 0 at k = 0):
 *     forward: grad_b = lam = reverse scan(a, g), grad_a = lam * s'
 *              tangent  = forward scan(a, ta * s' + tb)
 *     reverse: grad_b = mu = forward scan(a, g), grad_a_k = mu_{k-1} r_k
 *              tangent  = reverse scan(a, shifted-forward(ta * r) + tb)
 * Every rule is scans, shifts and products, so the differentiable rules are recorded scans and
 * every order follows. A forward scan may also start from s_{-1} = 1 ("unit": cumprod is then
 * scan(x, 0), whose zero b takes no gradient, and the shifted output reads 1 at k = 0). The node
 * keeps the axis in c[0] and the mode (bit 0 reverse, bit 1 unit) in c[1]. */
#include "../core.h"
#include <string.h>

typedef struct { int64_t outer, len, inner; } blocks;

static int axis_of(const ad_node *n) { return (int)n->c[0]; }
static int reversed(const ad_node *n) { return ((int)n->c[1] & AD_SCAN_REVERSE) != 0; }
static int unit_start(const ad_node *n) { return ((int)n->c[1] & AD_SCAN_UNIT) != 0; }

static blocks blocks_of(const ad_node *n)
{
    int ax = axis_of(n);
    /* an empty tensor has no blocks; its other dimensions may be huge, so their product is not formed */
    if (n->size == 0) { blocks none = {0, 0, 0}; return none; }
    blocks b = {1, n->shape[ax], 1};
    for (int i = 0; i < ax; i++) b.outer *= n->shape[i];
    for (int i = ax + 1; i < n->ndim; i++) b.inner *= n->shape[i];
    return b;
}

/* O = the scan of B with multipliers A (NULL: all ones) in direction rev. O may be B. The inner
 * axes run contiguously in the innermost loop, so it vectorises. */
#define SCAN_T(TT, SUF)                                                                  \
    static void scan_##SUF(const TT *A, const TT *B, TT *O, blocks b, int rev, int unit) \
    {                                                                                    \
        if (!b.len) return;                                                              \
        if (b.inner == 1) {          /* along the last axis: one running value per row */ \
            for (int64_t o = 0; o < b.outer; o++) {                                      \
                const TT *x = B + o * b.len, *a = A ? A + o * b.len : NULL;              \
                TT *d = O + o * b.len, acc = unit ? 1 : 0;                               \
                if (!rev) for (int64_t k = 0; k < b.len; k++) { acc = (a && (k || unit) ? a[k] * acc : acc) + x[k]; d[k] = acc; } \
                else for (int64_t k = b.len - 1; k >= 0; k--) { acc = (a && k + 1 < b.len ? a[k + 1] * acc : acc) + x[k]; d[k] = acc; } \
            }                                                                            \
            return;                                                                      \
        }                                                                                \
        for (int64_t o = 0; o < b.outer; o++) {                                          \
            int64_t base = o * b.len * b.inner;                                          \
            int64_t first = rev ? base + (b.len - 1) * b.inner : base;                   \
            if (unit && !rev) for (int64_t j = 0; j < b.inner; j++) O[first + j] = (A ? A[first + j] : 1) + B[first + j]; \
            else if (O != B) ad_copy(O + first, B + first, (size_t)b.inner * sizeof(TT)); \
            for (int64_t k = 1; k < b.len; k++) {                                        \
                int64_t row = rev ? base + (b.len - 1 - k) * b.inner : base + k * b.inner; \
                int64_t prev = rev ? row + b.inner : row - b.inner;                      \
                const TT *a = A ? A + (rev ? prev : row) : NULL;                         \
                TT *d = O + row; const TT *p = O + prev, *x = B + row;                   \
                if (a) for (int64_t j = 0; j < b.inner; j++) d[j] = a[j] * p[j] + x[j];  \
                else for (int64_t j = 0; j < b.inner; j++) d[j] = p[j] + x[j];           \
            }                                                                            \
        }                                                                                \
    }
SCAN_T(double, d)
SCAN_T(float, f)
#undef SCAN_T

/* unit: a forward scan from s_{-1} = 1 (the rules' own scans start from 0) */
static void scan_from(int dtype, const void *A, const void *B, void *O, blocks b, int rev, int unit)
{
    if (dtype == AD_F64) scan_d(A, B, O, b, rev, unit); else scan_f(A, B, O, b, rev, unit);
}

static void scan(int dtype, const void *A, const void *B, void *O, blocks b, int rev)
{
    scan_from(dtype, A, B, O, b, rev, 0);
}

/* D_0 += Q_0 at the first entry of every block: the k = 0 term P_{-1} Q_0 of a lag-1 product
 * whose P is a unit scan's output (P_{-1} = 1), which `shifted` leaves 0. */
static void add_first(int dtype, void *D, const void *Q, blocks b)
{
    for (int64_t o = 0; o < b.outer; o++) {
        int64_t row = o * b.len * b.inner;
        if (dtype == AD_F64) { double *d = (double *)D + row; const double *q = (const double *)Q + row;
                               for (int64_t j = 0; j < b.inner; j++) d[j] += q[j]; }
        else { float *d = (float *)D + row; const float *q = (const float *)Q + row;
               for (int64_t j = 0; j < b.inner; j++) d[j] += q[j]; }
    }
}

/* D (+)= P_{k-1} * Q_k (lag 1: P one place back) or P_{k+1} * Q_{k+1} (lag -1: both one place
 * ahead), 0 where the shifted index leaves the axis; plus E (when not NULL). The products the
 * rules need: lam * s', mu_{k-1} r_k, and the tangents' ta * s', shifted-forward(ta * r). */
#define SHIFTED_T(TT, SUF)                                                               \
    static void shifted_##SUF(TT *D, const TT *P, const TT *Q, int lag, const TT *E, blocks b, int acc) \
    {                                                                                    \
        for (int64_t o = 0; o < b.outer; o++)                                            \
            for (int64_t k = 0; k < b.len; k++) {                                        \
                int64_t row = (o * b.len + k) * b.inner;                                 \
                int inside = lag == 1 ? k >= 1 : k + 1 < b.len;                          \
                const TT *p = P + row + (lag == 1 ? -b.inner : b.inner);                 \
                const TT *q = Q + row + (lag == 1 ? 0 : b.inner);                        \
                for (int64_t j = 0; j < b.inner; j++) {                                  \
                    TT v = inside ? p[j] * q[j] : 0;                                     \
                    if (E) v += E[row + j];                                              \
                    D[row + j] = acc ? D[row + j] + v : v;                               \
                }                                                                        \
            }                                                                            \
    }
SHIFTED_T(double, d)
SHIFTED_T(float, f)
#undef SHIFTED_T

static void shifted(int dtype, void *D, const void *P, const void *Q, int lag, const void *E, blocks b, int acc)
{
    if (dtype == AD_F64) shifted_d(D, P, Q, lag, E, b, acc); else shifted_f(D, P, Q, lag, E, b, acc);
}

static void add_into(int dtype, void *D, const void *S, int64_t n, int acc)
{
    if (!acc) { ad_copy(D, S, (size_t)n * ad_itemsize(dtype)); return; }
    if (dtype == AD_F64) { double *d = D; const double *s = S; for (int64_t i = 0; i < n; i++) d[i] += s[i]; }
    else { float *d = D; const float *s = S; for (int64_t i = 0; i < n; i++) d[i] += s[i]; }
}

/* The forward from the node's own parameters (axis c[0], mode c[1]): the constructor's, and a
 * replay's (replay.c), so the two cannot drift apart. */
int ad_fwd_scan(ad_node *n, ad_node *const *ins)
{
    int mode = (int)n->c[1];
    scan_from(n->dtype, ins[0]->data, ins[1]->data, n->data, blocks_of(n), mode & AD_SCAN_REVERSE,
              (mode & AD_SCAN_UNIT) != 0);
    return AD_OK;
}

int ad_mk_scan(ad_tape *T, ad_node *a, ad_node *b, int axis, int mode, ad_node **out)
{
    if (mode < 0 || mode > (AD_SCAN_REVERSE | AD_SCAN_UNIT) || mode == (AD_SCAN_REVERSE | AD_SCAN_UNIT))
        return ad_err(AD_ERR_VALUE, "scan: mode %d is not 0, reverse (1) or unit start (2)", mode);
    char b1[160], b2[160];
    if (a->dtype != b->dtype)
        return ad_err(AD_ERR_TYPE, "scan: multipliers and values must have one dtype");
    if (a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t)))
        return ad_err(AD_ERR_VALUE, "scan: multipliers of shape %s and values of shape %s must have one shape",
                      ad_shape_str(b1, sizeof b1, a->ndim, a->shape), ad_shape_str(b2, sizeof b2, b->ndim, b->shape));
    if (axis < 0 || axis >= b->ndim)
        return ad_err(AD_ERR_VALUE, "scan: axis %d is out of bounds for a tensor of shape %s", axis,
                      ad_shape_str(b1, sizeof b1, b->ndim, b->shape));
    ad_node *n;
    int st = ad_node_new(T, AD_OP_SCAN, b->dtype, b->ndim, b->shape, &n);
    if (st) return st;
    n->c[0] = axis;
    n->c[1] = mode;
    ad_node *ins[2] = {a, b};
    ad_fwd_scan(n, ins);
    if ((st = ad_record(T, n, 2, ins))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_scan(int64_t ha, int64_t hb, int axis, int mode)
{
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n;
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) && !(st = ad_mk_scan(T, a, b, axis, mode, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

static void *scratch(ad_tape *T, const ad_node *n, size_t *bytes)
{
    *bytes = (size_t)(n->size ? n->size : 1) * ad_itemsize(n->dtype);
    return ad_buf_alloc(T, *bytes);
}

/* VJP: the transposed scan of g (grad_b), times the shifted output for grad_a. */
int ad_vjp_scan(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    blocks b = blocks_of(n);
    int rev = reversed(n);
    const void *A = n->in[0]->data;
    if (which == 1 && !s->accumulate) {
        scan(n->dtype, A, g, s->dst, b, !rev);
        return AD_OK;
    }
    size_t bytes;
    void *lam = scratch(T, n, &bytes);
    if (!lam) return ad_err(AD_ERR_MEMORY, "scan: out of memory in the backward sweep");
    scan(n->dtype, A, g, lam, b, !rev);
    if (which == 1) add_into(n->dtype, s->dst, lam, n->size, s->accumulate);
    else if (!rev) {
        shifted(n->dtype, s->dst, n->data, lam, 1, NULL, b, s->accumulate);   /* lam_k s_{k-1} */
        if (unit_start(n)) add_first(n->dtype, s->dst, lam, b);
    } else shifted(n->dtype, s->dst, lam, n->data, 1, NULL, b, s->accumulate);             /* mu_{k-1} r_k */
    ad_buf_free(T, lam, bytes);
    return AD_OK;
}

/* JVP: the same scan of ta * (shifted output) + tb, per direction. */
int ad_jvp_scan(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    blocks b = blocks_of(n);
    int rev = reversed(n);
    size_t isz = ad_itemsize(n->dtype);
    for (int64_t r = 0; r < k; r++) {
        void *o = (char *)tout + (size_t)(r * n->size) * isz;
        const void *ta = tin[0] ? (const char *)tin[0] + (size_t)(r * n->size) * isz : NULL;
        const void *tb = tin[1] ? (const char *)tin[1] + (size_t)(r * n->size) * isz : NULL;
        if (ta) {
            shifted(n->dtype, o, rev ? ta : n->data, rev ? n->data : ta, rev ? -1 : 1, tb, b, 0);
            if (unit_start(n)) add_first(n->dtype, o, ta, b);
        } else {
            ad_copy(o, tb, (size_t)n->size * isz);
        }
        scan(n->dtype, n->in[0]->data, o, o, b, rev);
    }
    return AD_OK;
}

/* Second-order term: the VJP's contribution as a and b move along (ta, tb) with g fixed. lam
 * depends on a only: d lam is the transposed scan's own tangent (ta, 0) at output lam; grad_a's
 * product rule adds lam times the output's tangent tout. */
int ad_vjp2_scan(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                 ad_sink *s)
{
    blocks b = blocks_of(n);
    int rev = reversed(n);
    const void *A = n->in[0]->data, *ta = tin[0];
    size_t bytes;
    void *lam = scratch(T, n, &bytes), *dlam = scratch(T, n, &bytes);
    if (!lam || !dlam) {
        if (lam) ad_buf_free(T, lam, bytes);
        if (dlam) ad_buf_free(T, dlam, bytes);
        return ad_err(AD_ERR_MEMORY, "scan: out of memory in the second-order sweep");
    }
    scan(n->dtype, A, g, lam, b, !rev);
    if (ta) {
        /* lam runs in direction !rev: its tangent is that direction's scan of the shifted product */
        if (!rev) shifted(n->dtype, dlam, ta, lam, -1, NULL, b, 0);
        else shifted(n->dtype, dlam, lam, ta, 1, NULL, b, 0);
        scan(n->dtype, A, dlam, dlam, b, !rev);
    } else {
        memset(dlam, 0, (size_t)n->size * ad_itemsize(n->dtype));
    }
    if (which == 1) {
        add_into(n->dtype, s->dst, dlam, n->size, s->accumulate);
    } else {
        /* forward: d(lam_k s_{k-1}) = dlam_k s_{k-1} + lam_k ds_{k-1}; reverse: d(mu_{k-1} r_k) */
        if (!rev) {
            shifted(n->dtype, s->dst, n->data, dlam, 1, NULL, b, s->accumulate);
            if (unit_start(n)) add_first(n->dtype, s->dst, dlam, b);
            if (tout) shifted(n->dtype, s->dst, tout, lam, 1, NULL, b, 1);
        } else {
            shifted(n->dtype, s->dst, dlam, n->data, 1, NULL, b, s->accumulate);
            if (tout) shifted(n->dtype, s->dst, lam, tout, 1, NULL, b, 1);
        }
    }
    ad_buf_free(T, lam, bytes);
    ad_buf_free(T, dlam, bytes);
    return AD_OK;
}

/* ---------------- differentiable rules: recorded scans, shifts and products ---------------- */

/* v shifted one place along the scan axis, a 0 entering at the start (right) or the end (left):
 * a slice of v concatenated with a slab of `fill` (0, or a unit scan's s_{-1} = 1), so it is
 * differentiable like both. */
static int shift_node(ad_tape *T, ad_node *v, int axis, int right, double fill, ad_node **out)
{
    int64_t len = v->shape[axis];
    if (len == 0) { v->refs++; *out = v; return AD_OK; }
    int64_t zs[AD_MAXDIM], ss[AD_MAXDIM], strides[AD_MAXDIM];
    memcpy(zs, v->shape, sizeof zs);
    memcpy(ss, v->shape, sizeof ss);
    zs[axis] = 1;
    ss[axis] = len - 1;
    ad_contig_strides(v->ndim, v->shape, strides);
    ad_node *z, *sl;
    int st = ad_mk_full(T, v->dtype, v->ndim, zs, fill, &z);
    if (st) return st;
    if ((st = ad_mk_slice(T, v, v->ndim, ss, right ? 0 : strides[axis], strides, &sl))) { ad_node_unref(T, z); return st; }
    ad_node *parts[2] = {right ? z : sl, right ? sl : z};
    st = ad_mk_concatenate(T, 2, parts, axis, 0, out);
    ad_node_unref(T, z);
    ad_node_unref(T, sl);
    return st;
}

/* p * shift(q) (right) or shift(p * q) (left): the products of the rules, as nodes */
static int times_shifted(ad_tape *T, ad_node *p, ad_node *q, int axis, int right, double fill, ad_node **out)
{
    ad_node *t;
    int st;
    if (right) {
        if ((st = shift_node(T, q, axis, 1, fill, &t))) return st;
        st = ad_mk_binary(T, AD_OP_MUL, p, t, out);
    } else {
        if ((st = ad_mk_binary(T, AD_OP_MUL, p, q, &t))) return st;
        st = shift_node(T, t, axis, 0, fill, out);
    }
    ad_node_unref(T, t);
    return st;
}

int ad_vjp_rec_scan(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    int ax = axis_of(n), rev = reversed(n);
    ad_node *lam, *t;
    int st = ad_mk_scan(T, n->in[0], g, ax, rev ? 0 : AD_SCAN_REVERSE, &lam);
    if (st || which == 1) { if (!st) *out = lam; return st; }
    if (!rev) {
        st = times_shifted(T, lam, n, ax, 1, unit_start(n), out);          /* lam_k s_{k-1} */
    } else {
        if (!(st = shift_node(T, lam, ax, 1, 0, &t))) {        /* mu_{k-1} r_k */
            st = ad_mk_binary(T, AD_OP_MUL, t, n, out);
            ad_node_unref(T, t);
        }
    }
    ad_node_unref(T, lam);
    return st;
}

int ad_jvp_rec_scan(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    int ax = axis_of(n), rev = reversed(n);
    ad_node *c = NULL, *part = NULL;
    int st = AD_OK;
    if (tin[0] && (st = rev ? times_shifted(T, tin[0], n, ax, 0, 0, &part)
                           : times_shifted(T, tin[0], n, ax, 1, unit_start(n), &part)))
        return st;
    if (part && tin[1]) st = ad_mk_binary(T, AD_OP_ADD, part, tin[1], &c);
    else if (part) { c = part; part = NULL; }
    else if (tin[1]) { c = tin[1]; c->refs++; }
    else st = ad_mk_full(T, n->dtype, n->ndim, n->shape, 0, &c);
    if (part) ad_node_unref(T, part);
    if (st) return st;
    st = ad_mk_scan(T, n->in[0], c, ax, rev ? AD_SCAN_REVERSE : 0, out);   /* a tangent starts from 0 */
    ad_node_unref(T, c);
    return st;
}
