/* Elementwise ops: unary, binary (NumPy broadcasting) and tensor-with-scalar. Each op's forward
 * and VJP expressions sit next to each other in the switch blocks below, written once for both
 * dtypes (tgmath picks expf/exp by type).
 *
 * NaN-safety: a zero cotangent contributes exactly zero (SAFE), even where the local derivative is
 * inf or NaN, so masked branches such as where(x > 0, sqrt(x), 0) keep finite gradients. A nonzero
 * cotangent stays IEEE: d/dx sqrt(x) at 0 is +inf. */
#include "../core.h"
#include <tgmath.h>
#include <string.h>

#define SAFE(g, e) ((g) == 0 ? 0 : (e))

/* dispatch a macro on the node's dtype */
#define BY_DTYPE(dt, M, ...) do { if ((dt) == AD_F64) M(double, __VA_ARGS__); else M(float, __VA_ARGS__); } while (0)

/* ---------------- unary ---------------- */

#define UNARY_FWD(T, EXPR) do {                                              \
        const T *X = x->data; T *Y = n->data; int64_t N = n->size;          \
        for (int64_t i = 0; i < N; i++) { T v = X[i]; (void)v; Y[i] = (EXPR); } \
    } while (0)

#define SINK_LOOP(T, EXPR) do {                                              \
        T *D = s->dst; int64_t N = s->size;                                 \
        if (s->accumulate) for (int64_t i = 0; i < N; i++) D[i] += (EXPR);  \
        else for (int64_t i = 0; i < N; i++) D[i] = (EXPR);                 \
    } while (0)

static void unary_forward(int op, ad_node *n, const ad_node *x)
{
    /* large arrays: libm is the bottleneck, use the SIMD loops; tiny ones skip the dispatch */
    if (n->size >= 64 && ad_vec_unary(op, n->dtype, x->data, n->data, n->size)) return;
    switch (op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) UNARY_FWD(double, EXPR); else UNARY_FWD(float, EXPR); break;
    CASE(AD_OP_NEG, -v)
    CASE(AD_OP_EXP, exp(v))
    CASE(AD_OP_LOG, log(v))
    CASE(AD_OP_SQRT, sqrt(v))
    CASE(AD_OP_ABS, fabs(v))
    CASE(AD_OP_SIN, sin(v))
    CASE(AD_OP_COS, cos(v))
    CASE(AD_OP_TANH, tanh(v))
    /* the two branches keep exp's argument non-positive: no overflow for large |v| */
    CASE(AD_OP_SIGMOID, v >= 0 ? 1 / (1 + exp(-v)) : exp(v) / (1 + exp(v)))
    CASE(AD_OP_RELU, v > 0 ? v : (v != v ? v : 0))
#undef CASE
    default: break;
    }
}

#define UNARY_VJP(T, EXPR) do {                                              \
        const T *G = g, *X = x->data, *Y = n->data; (void)X; (void)Y;        \
        SINK_LOOP(T, SAFE(G[i], EXPR));                                      \
    } while (0)

int ad_vjp_unary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) UNARY_VJP(double, EXPR); else UNARY_VJP(float, EXPR); break;
    CASE(AD_OP_NEG, -G[i])
    CASE(AD_OP_EXP, G[i] * Y[i])
    CASE(AD_OP_LOG, G[i] / X[i])
    CASE(AD_OP_SQRT, G[i] / (2 * Y[i]))
    CASE(AD_OP_ABS, X[i] > 0 ? G[i] : (X[i] < 0 ? -G[i] : 0))
    CASE(AD_OP_SIN, G[i] * cos(X[i]))
    CASE(AD_OP_COS, -G[i] * sin(X[i]))
    CASE(AD_OP_TANH, G[i] * (1 - Y[i] * Y[i]))
    CASE(AD_OP_SIGMOID, G[i] * Y[i] * (1 - Y[i]))
    CASE(AD_OP_RELU, X[i] > 0 ? G[i] : 0)
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

int64_t ad_unary(int op, int64_t hx)
{
    if (op < AD_OP_NEG || op > AD_OP_RELU)
        return ad_err(AD_ERR_TYPE, "unary: op code %d is not a unary op", op);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *n;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_node_new(T, op, x->dtype, x->ndim, x->shape, &n))) {
        unary_forward(op, n, x);
        st = ad_finish(T, n, 1, &x);
    }
    ad_unlock(T);
    return st;
}

/* ---------------- binary, broadcasting ---------------- */

/* Walk out (contiguous) with a and b broadcast to it; BODY sees io, ia, ib. The inner loop is
 * specialised for the common layouts so the compiler can vectorise it. */
#define BCAST_WALK(...) do {                                                            \
        int64_t sa_[AD_MAXDIM], sb_[AD_MAXDIM], so_[AD_MAXDIM];                         \
        ad_contig_strides(n->ndim, n->shape, so_);                                      \
        ad_bcast_strides(a->ndim, a->shape, n->ndim, n->shape, sa_);                    \
        ad_bcast_strides(b->ndim, b->shape, n->ndim, n->shape, sb_);                    \
        int64_t *strides_[3] = {so_, sa_, sb_};                                         \
        ad_iter it_;                                                                    \
        ad_iter_init(&it_, 3, n->ndim, n->shape, strides_);                             \
        int64_t len_ = it_.shape[it_.ndim - 1], dO = it_.st[0][it_.ndim - 1],           \
                dA = it_.st[1][it_.ndim - 1], dB = it_.st[2][it_.ndim - 1];             \
        AD_ITER_FOR(it_, oo_, oa_, ob_) {                                               \
            if (dO == 1 && dA == 1 && dB == 1) {                                        \
                for (int64_t k_ = 0; k_ < len_; k_++) {                                 \
                    int64_t io = oo_ + k_, ia = oa_ + k_, ib = ob_ + k_; (void)io; (void)ia; (void)ib; __VA_ARGS__;          \
                }                                                                       \
            } else if (dO == 1 && dA == 1 && dB == 0) {                                 \
                for (int64_t k_ = 0; k_ < len_; k_++) {                                 \
                    int64_t io = oo_ + k_, ia = oa_ + k_, ib = ob_; (void)io; (void)ia; (void)ib; __VA_ARGS__;               \
                }                                                                       \
            } else if (dO == 1 && dA == 0 && dB == 1) {                                 \
                for (int64_t k_ = 0; k_ < len_; k_++) {                                 \
                    int64_t io = oo_ + k_, ia = oa_, ib = ob_ + k_; (void)io; (void)ia; (void)ib; __VA_ARGS__;               \
                }                                                                       \
            } else {                                                                    \
                for (int64_t k_ = 0; k_ < len_; k_++) {                                 \
                    int64_t io = oo_ + k_ * dO, ia = oa_ + k_ * dA, ib = ob_ + k_ * dB; (void)io; (void)ia; (void)ib; __VA_ARGS__; \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    } while (0)

#define BIN_FWD(T, EXPR) do {                                                           \
        const T *A = a->data, *B = b->data; T *Y = n->data;                            \
        BCAST_WALK({ T u = A[ia], v = B[ib]; Y[io] = (EXPR); });                        \
    } while (0)

/* maximum/minimum propagate NaN like NumPy */
static void binary_forward(int op, ad_node *n, const ad_node *a, const ad_node *b)
{
    switch (op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) BIN_FWD(double, EXPR); else BIN_FWD(float, EXPR); break;
    CASE(AD_OP_ADD, u + v)
    CASE(AD_OP_SUB, u - v)
    CASE(AD_OP_MUL, u * v)
    CASE(AD_OP_DIV, u / v)
    CASE(AD_OP_POW, pow(u, v))
    CASE(AD_OP_MAXIMUM, (u > v || u != u) ? u : v)
    CASE(AD_OP_MINIMUM, (u < v || u != u) ? u : v)
#undef CASE
    default: break;
    }
}

#define BIN_VJP(T, EXPR) do {                                                           \
        const T *A = a->data, *B = b->data, *Y = n->data, *G = g; T *D = s->dst;       \
        (void)Y; (void)A; (void)B;                                                                    \
        if (s->accumulate) BCAST_WALK({ T gi = G[io]; D[io] += SAFE(gi, EXPR); });     \
        else BCAST_WALK({ T gi = G[io]; D[io] = SAFE(gi, EXPR); });                     \
    } while (0)

/* Ties in maximum/minimum split the cotangent equally between the two sides. pow's exponent
 * gradient out*log(a) is taken as 0 where a == 0 (the limit along a -> 0+ for positive out). */
int ad_vjp_binary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    int code = n->op * 2 + which;
    switch (code) {
#define CASE(OP, W, EXPR) case OP * 2 + W: if (n->dtype == AD_F64) BIN_VJP(double, EXPR); else BIN_VJP(float, EXPR); break;
    CASE(AD_OP_ADD, 0, gi)
    CASE(AD_OP_ADD, 1, gi)
    CASE(AD_OP_SUB, 0, gi)
    CASE(AD_OP_SUB, 1, -gi)
    CASE(AD_OP_MUL, 0, gi * B[ib])
    CASE(AD_OP_MUL, 1, gi * A[ia])
    CASE(AD_OP_DIV, 0, gi / B[ib])
    CASE(AD_OP_DIV, 1, -gi * Y[io] / B[ib])
    CASE(AD_OP_POW, 0, B[ib] == 0 ? 0 : gi * B[ib] * pow(A[ia], B[ib] - 1))
    CASE(AD_OP_POW, 1, A[ia] == 0 ? 0 : gi * Y[io] * log(A[ia]))
    CASE(AD_OP_MAXIMUM, 0, A[ia] > B[ib] ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
    CASE(AD_OP_MAXIMUM, 1, B[ib] > A[ia] ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
    CASE(AD_OP_MINIMUM, 0, A[ia] < B[ib] ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
    CASE(AD_OP_MINIMUM, 1, B[ib] < A[ia] ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

/* float32 meeting float64 computes in float64, as NumPy does; the cast is a node of its own so
 * the gradient flows back as float32. */
static int64_t promote(ad_tape *T, ad_node **a, ad_node **b, ad_node **tmp)
{
    *tmp = NULL;
    if ((*a)->dtype == (*b)->dtype) return AD_OK;
    ad_node **lo = (*a)->dtype == AD_F32 ? a : b;
    ad_node *c;
    int st = ad_node_new(T, AD_OP_CAST, AD_F64, (*lo)->ndim, (*lo)->shape, &c);
    if (st) return st;
    const float *src = (*lo)->data;
    double *dst = c->data;
    for (int64_t i = 0; i < c->size; i++) dst[i] = src[i];
    if ((st = ad_node_link(T, c, 1, lo))) { ad_node_discard(T, c); return st; }
    *lo = c;
    *tmp = c;
    return AD_OK;
}

int64_t ad_binary(int op, int64_t ha, int64_t hb)
{
    if (op < AD_OP_ADD || op > AD_OP_MINIMUM)
        return ad_err(AD_ERR_TYPE, "binary: op code %d is not a binary op", op);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n, *tmp = NULL;
    int nout;
    int64_t shape[AD_MAXDIM];
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) &&
        !(st = ad_broadcast_shapes(ad_ops[op].name, a->ndim, a->shape, b->ndim, b->shape, &nout, shape)) &&
        !(st = promote(T, &a, &b, &tmp)) &&
        !(st = ad_node_new(T, op, a->dtype, nout, shape, &n))) {
        binary_forward(op, n, a, b);
        ad_node *ins[2] = {a, b};
        st = ad_finish(T, n, 2, ins);
    }
    if (tmp) ad_node_unref(T, tmp);
    ad_unlock(T);
    return st;
}

/* ---------------- tensor with a Python scalar ---------------- */

#define SCALAR_FWD(T, EXPR) do {                                              \
        const T *X = x->data; T *Y = n->data; const T c = (T)cd; int64_t N = n->size; \
        (void)c;                                                             \
        for (int64_t i = 0; i < N; i++) { T v = X[i]; Y[i] = (EXPR); }      \
    } while (0)

static void scalar_forward(int op, ad_node *n, const ad_node *x, double cd)
{
    switch (op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) SCALAR_FWD(double, EXPR); else SCALAR_FWD(float, EXPR); break;
    CASE(AD_OP_ADD_S, v + c)
    CASE(AD_OP_MUL_S, v * c)
    CASE(AD_OP_RSUB_S, c - v)
    CASE(AD_OP_DIV_S, v / c)
    CASE(AD_OP_RDIV_S, c / v)
    CASE(AD_OP_RPOW_S, pow(c, v))
#undef CASE
    case AD_OP_POW_S:
        /* squaring is common and pow() is slow */
        if (cd == 2) { if (n->dtype == AD_F64) SCALAR_FWD(double, v * v); else SCALAR_FWD(float, v * v); }
        else if (n->dtype == AD_F64) SCALAR_FWD(double, pow(v, c));
        else SCALAR_FWD(float, pow(v, c));
        break;
    default: break;
    }
}

#define SCALAR_VJP(T, EXPR) do {                                              \
        const T *G = g, *X = x->data, *Y = n->data; const T c = (T)n->c[0];  \
        (void)X; (void)Y; (void)c;                                           \
        SINK_LOOP(T, SAFE(G[i], EXPR));                                      \
    } while (0)

int ad_vjp_scalar(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) SCALAR_VJP(double, EXPR); else SCALAR_VJP(float, EXPR); break;
    CASE(AD_OP_ADD_S, G[i])
    CASE(AD_OP_MUL_S, G[i] * c)
    CASE(AD_OP_RSUB_S, -G[i])
    CASE(AD_OP_DIV_S, G[i] / c)
    CASE(AD_OP_RDIV_S, -G[i] * Y[i] / X[i])
    CASE(AD_OP_POW_S, c == 0 ? 0 : (c == 2 ? 2 * G[i] * X[i] : G[i] * c * pow(X[i], c - 1)))
    CASE(AD_OP_RPOW_S, c == 0 ? 0 : G[i] * Y[i] * log(c))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

int64_t ad_scalar(int op, int64_t hx, double c)
{
    if (op < AD_OP_ADD_S || op > AD_OP_RPOW_S)
        return ad_err(AD_ERR_TYPE, "scalar: op code %d is not a tensor-scalar op", op);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *n;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_node_new(T, op, x->dtype, x->ndim, x->shape, &n))) {
        n->c[0] = c;
        scalar_forward(op, n, x, c);
        st = ad_finish(T, n, 1, &x);
    }
    ad_unlock(T);
    return st;
}
