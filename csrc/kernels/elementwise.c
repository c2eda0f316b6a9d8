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

AD_SIMD static void unary_forward(int op, ad_node *n, const ad_node *x)
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

AD_SIMD int ad_vjp_unary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
#define CASE(OP, EXPR) case OP: if (n->dtype == AD_F64) UNARY_VJP(double, EXPR); else UNARY_VJP(float, EXPR); break;
    CASE(AD_OP_NEG, -G[i])
    CASE(AD_OP_EXP, G[i] * Y[i])
    CASE(AD_OP_LOG, G[i] / X[i])
    CASE(AD_OP_SQRT, G[i] / (2 * Y[i]))
    /* kinks: derivative 0 at 0; at a NaN input it is NaN (X[i] itself), so NaNs reach the grad.
     * The cotangent is multiplied by that 0, not replaced by it: a nonzero cotangent stays IEEE,
     * so an infinite one gives NaN (as the reference and the JVP below compute it). */
    CASE(AD_OP_ABS, X[i] > 0 ? G[i] : (X[i] < 0 ? -G[i] : G[i] * (X[i] == 0 ? 0 : X[i])))
    CASE(AD_OP_SIN, G[i] * cos(X[i]))
    CASE(AD_OP_COS, -G[i] * sin(X[i]))
    CASE(AD_OP_TANH, G[i] * (1 - Y[i] * Y[i]))
    CASE(AD_OP_SIGMOID, G[i] * (Y[i] * (1 - Y[i])))
    CASE(AD_OP_RELU, X[i] > 0 ? G[i] : G[i] * (X[i] != X[i] ? X[i] : 0))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

/* JVP. The local derivative is evaluated once per element into D and reused by all k tangent
 * directions, so a width-k sweep costs one transcendental call per element, not k. The
 * derivatives follow the reference: kinks (abs, relu) take derivative 0 at 0 and NaN at NaN. */
#define UNARY_DERIV(T, EXPR) do {                                            \
        const T *X = x->data, *Y = n->data; T *D = d; (void)X; (void)Y;     \
        for (int64_t i = 0; i < N; i++) D[i] = (EXPR);                      \
    } while (0)

#define TANGENT_TIMES_D(T, ...) do {                                         \
        const T *D = d, *TX = tin[0]; T *TO = tout;                          \
        for (int64_t r = 0; r < k; r++, TX += N, TO += N)                   \
            for (int64_t i = 0; i < N; i++) { T t = TX[i]; TO[i] = SAFE(t, t * D[i]); } \
    } while (0)

#define TANGENT_MAP(T, EXPR) do {                                            \
        const T *TX = tin[0]; T *TO = tout; int64_t KN = k * N;             \
        for (int64_t i = 0; i < KN; i++) { T t = TX[i]; TO[i] = (EXPR); }   \
    } while (0)

int ad_jvp_unary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *x = n->in[0];
    int64_t N = n->size;
    if (n->op == AD_OP_NEG) {
        BY_DTYPE(n->dtype, TANGENT_MAP, -t);
        return AD_OK;
    }
    size_t bytes = (size_t)(N ? N : 1) * ad_itemsize(n->dtype);
    void *d = ad_buf_alloc(T, bytes);
    if (!d) return ad_err(AD_ERR_MEMORY, "jvp of %s: out of memory (%zu bytes)", ad_ops[n->op].name, bytes);
    switch (n->op) {
#define CASE(OP, EXPR) case OP: BY_DTYPE(n->dtype, UNARY_DERIV, EXPR); break;
    CASE(AD_OP_EXP, Y[i])
    CASE(AD_OP_LOG, 1 / X[i])
    CASE(AD_OP_SQRT, 1 / (2 * Y[i]))
    CASE(AD_OP_ABS, X[i] > 0 ? 1 : (X[i] < 0 ? -1 : (X[i] != X[i] ? X[i] : 0)))
    CASE(AD_OP_SIN, cos(X[i]))
    CASE(AD_OP_COS, -sin(X[i]))
    CASE(AD_OP_TANH, 1 - Y[i] * Y[i])
    CASE(AD_OP_SIGMOID, Y[i] * (1 - Y[i]))
    CASE(AD_OP_RELU, X[i] > 0 ? 1 : (X[i] != X[i] ? X[i] : 0))
#undef CASE
    default:
        ad_buf_free(T, d, bytes);
        return ad_err(AD_ERR_RUNTIME, "internal: no JVP for op %d", n->op);
    }
    BY_DTYPE(n->dtype, TANGENT_TIMES_D, 0);
    ad_buf_free(T, d, bytes);
    return AD_OK;
}

static void scalar_forward(int op, ad_node *n, const ad_node *x, double cd);

int ad_mk_unary(ad_tape *T, int op, ad_node *x, double c0, double c1, ad_node **out)
{
    (void)c1;
    int scalar = op >= AD_OP_ADD_S && op <= AD_OP_RPOW_S;
    if (!scalar && (op < AD_OP_NEG || op > AD_OP_RELU))
        return ad_err(AD_ERR_TYPE, "unary: op code %d is not a unary op", op);
    ad_node *n;
    int st = ad_node_new(T, op, x->dtype, x->ndim, x->shape, &n);
    if (st) return st;
    if (scalar) { n->c[0] = c0; scalar_forward(op, n, x, c0); }
    else unary_forward(op, n, x);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

static int64_t unary_entry(int op, int64_t hx, double c0, double c1)
{
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *n;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_mk_unary(T, op, x, c0, c1, &n))) st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

int64_t ad_unary(int op, int64_t hx)
{
    if (op < AD_OP_NEG || op > AD_OP_RELU)
        return ad_err(AD_ERR_TYPE, "unary: op code %d is not a unary op", op);
    return unary_entry(op, hx, 0, 0);
}

/* ---------------- binary, broadcasting ---------------- */

/* An iterator it_ over out (contiguous) with a and b broadcast to it, and the inner run's length
 * and element strides (dO, dA, dB). */
#define BCAST_ITER                                                                      \
        int64_t sa_[AD_MAXDIM], sb_[AD_MAXDIM], so_[AD_MAXDIM];                         \
        ad_contig_strides(n->ndim, n->shape, so_);                                      \
        ad_bcast_strides(a->ndim, a->shape, n->ndim, n->shape, sa_);                    \
        ad_bcast_strides(b->ndim, b->shape, n->ndim, n->shape, sb_);                    \
        int64_t *strides_[3] = {so_, sa_, sb_};                                         \
        ad_iter it_;                                                                    \
        ad_iter_init(&it_, 3, n->ndim, n->shape, strides_);                             \
        int64_t len_ = it_.shape[it_.ndim - 1], dO = it_.st[0][it_.ndim - 1],           \
                dA = it_.st[1][it_.ndim - 1], dB = it_.st[2][it_.ndim - 1]

/* Walk out (contiguous) with a and b broadcast to it; BODY sees io, ia, ib. The inner loop is
 * specialised for the common layouts so the compiler can vectorise it. */
#define BCAST_WALK(...) do {                                                            \
        BCAST_ITER;                                                                     \
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
AD_SIMD static void binary_forward(int op, ad_node *n, const ad_node *a, const ad_node *b)
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

/* Input `SIDE`'s contribution summed over its broadcast axes as it is written (sink.reduce): D
 * is shaped like that input, and an inner run along which it is broadcast is summed like AD_SUM
 * (eight partial sums in double), so the result matches the scratch-then-unbroadcast route. */
#define BIN_REDUCE(T, SIDE, EXPR) do {                                                  \
        const ad_node *in_ = (SIDE) == 0 ? a : b;                                       \
        if (!s->accumulate) memset(D, 0, (size_t)in_->size * sizeof(T));                \
        BCAST_ITER;                                                                     \
        int64_t dR = (SIDE) == 0 ? dA : dB;                                             \
        /* the common case: the other operand runs contiguously beside the output */    \
        int fast_ = dO == 1 && ((SIDE) == 0 ? dB == 1 : dA == 1);                       \
        AD_ITER_FOR(it_, oo_, oa_, ob_) {                                               \
            int64_t oR = (SIDE) == 0 ? oa_ : ob_;                                       \
            if (dR == 0) {                                                              \
                double p_[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                \
                int64_t k_ = 0;                                                         \
                if (fast_)                                                              \
                    for (; k_ + 8 <= len_; k_ += 8)                                     \
                        for (int l_ = 0; l_ < 8; l_++) {                                \
                            int64_t io = oo_ + k_ + l_;                                 \
                            int64_t ia = (SIDE) == 0 ? oa_ : oa_ + k_ + l_;             \
                            int64_t ib = (SIDE) == 0 ? ob_ + k_ + l_ : ob_;             \
                            (void)ia; (void)ib;                                         \
                            T gi = G[io];                                               \
                            p_[l_] += SAFE(gi, EXPR);                                   \
                        }                                                               \
                for (; k_ < len_; k_++) {                                               \
                    int64_t io = oo_ + k_ * dO, ia = oa_ + k_ * dA, ib = ob_ + k_ * dB; \
                    (void)ia; (void)ib;                                                 \
                    T gi = G[io];                                                       \
                    p_[0] += SAFE(gi, EXPR);                                            \
                }                                                                       \
                D[oR] += (T)(((p_[0] + p_[1]) + (p_[2] + p_[3])) + ((p_[4] + p_[5]) + (p_[6] + p_[7]))); \
            } else {                                                                    \
                for (int64_t k_ = 0; k_ < len_; k_++) {                                 \
                    int64_t io = oo_ + k_ * dO, ia = oa_ + k_ * dA, ib = ob_ + k_ * dB; \
                    (void)ia; (void)ib;                                                 \
                    T gi = G[io];                                                       \
                    D[oR + k_ * dR] += SAFE(gi, EXPR);                                  \
                }                                                                       \
            }                                                                           \
        }                                                                               \
    } while (0)

/* E0, E1: the contributions to a and b at one output element (cotangent gi). */
#define BIN_VJP(T, E0, E1) do {                                                         \
        const T *A = a->data, *B = b->data, *Y = n->data, *G = g; T *D = s->dst;       \
        (void)Y; (void)A; (void)B;                                                      \
        if (which == AD_BOTH) {                                                         \
            if (s->accumulate) BCAST_WALK({ T gi = G[io]; D[io] += SAFE(gi, E0) + SAFE(gi, E1); }); \
            else BCAST_WALK({ T gi = G[io]; D[io] = SAFE(gi, E0) + SAFE(gi, E1); });    \
        } else if (s->reduce) {                                                         \
            if (which == 0) BIN_REDUCE(T, 0, E0); else BIN_REDUCE(T, 1, E1);            \
        } else if (s->g_uniform) {                                                      \
            const T g0 = G[0];                                                          \
            if (which == 0 && s->accumulate) BCAST_WALK({ T gi = g0; D[io] += SAFE(gi, E0); }); \
            else if (which == 0) BCAST_WALK({ T gi = g0; D[io] = SAFE(gi, E0); });      \
            else if (s->accumulate) BCAST_WALK({ T gi = g0; D[io] += SAFE(gi, E1); });  \
            else BCAST_WALK({ T gi = g0; D[io] = SAFE(gi, E1); });                      \
        } else if (which == 0) {                                                        \
            if (s->accumulate) BCAST_WALK({ T gi = G[io]; D[io] += SAFE(gi, E0); });    \
            else BCAST_WALK({ T gi = G[io]; D[io] = SAFE(gi, E0); });                   \
        } else {                                                                        \
            if (s->accumulate) BCAST_WALK({ T gi = G[io]; D[io] += SAFE(gi, E1); });    \
            else BCAST_WALK({ T gi = G[io]; D[io] = SAFE(gi, E1); });                   \
        }                                                                               \
    } while (0)

/* Ties in maximum/minimum split the cotangent equally between the two sides; a NaN operand is
 * the one the output came from, so it gets the cotangent (both do when both are NaN). pow's
 * exponent gradient out*log(a) is taken as 0 where a == 0 (the limit along a -> 0+ for positive
 * out). which == AD_BOTH (a and b are one node, so one shape): the sum of both contributions.
 * A uniform cotangent (sink.g_uniform: g holds one value) is read once, for a direct sink. */
AD_SIMD int ad_vjp_binary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    switch (n->op) {
#define CASE(OP, E0, E1) case OP: if (n->dtype == AD_F64) BIN_VJP(double, E0, E1); else BIN_VJP(float, E0, E1); break;
    CASE(AD_OP_ADD, gi, gi)
    CASE(AD_OP_SUB, gi, -gi)
    CASE(AD_OP_MUL, gi * B[ib], gi * A[ia])
    CASE(AD_OP_DIV, gi / B[ib], -gi * Y[io] / B[ib])
    /* derivatives taken as 0 (exponent 0, base 0) multiply the cotangent rather than replace it,
     * so a nonzero cotangent stays IEEE (inf * 0 = NaN), as in the reference and the JVP. The
     * local derivative is formed first, as in the JVP: gi * B first underflows to 0 for tiny
     * gi and B (1e-265 each), losing the term or making 0 * inf = NaN where it is inf. */
    CASE(AD_OP_POW, B[ib] == 0 ? gi * 0 : gi * (B[ib] * pow(A[ia], B[ib] - 1)),
                    A[ia] == 0 ? gi * 0 : gi * (Y[io] * log(A[ia])))
    CASE(AD_OP_MAXIMUM, (A[ia] > B[ib] || A[ia] != A[ia]) ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0),
                        (B[ib] > A[ia] || B[ib] != B[ib]) ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
    CASE(AD_OP_MINIMUM, (A[ia] < B[ib] || A[ia] != A[ia]) ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0),
                        (B[ib] < A[ia] || B[ib] != B[ib]) ? gi : (A[ia] == B[ib] ? gi * 0.5f : 0))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

/* JVP: the output tangent is the sum of each input's tangent, broadcast to the output, times its
 * local derivative. Derivatives are evaluated once into output-shaped buffers and reused by the
 * k directions. maximum/minimum route instead of multiplying: the winner's tangent passes, ties
 * average, and the loser contributes exactly 0 even for an infinite tangent (as the reference).
 * A NaN operand is the winner, since the output came from it. */
#define BIN_DERIV(T, EXPR) do {                                                         \
        const T *A = a->data, *B = b->data, *Y = n->data; T *D = dst;                  \
        (void)A; (void)B; (void)Y;                                                      \
        BCAST_WALK({ D[io] = (EXPR); });                                                \
    } while (0)

static void binary_deriv(int op, int which, ad_node *n, const ad_node *a, const ad_node *b, void *dst)
{
    switch (op * 2 + which) {
#define CASE(OP, W, EXPR) case OP * 2 + W: BY_DTYPE(n->dtype, BIN_DERIV, EXPR); break;
    CASE(AD_OP_MUL, 0, B[ib])
    CASE(AD_OP_MUL, 1, A[ia])
    CASE(AD_OP_DIV, 0, 1 / B[ib])
    CASE(AD_OP_DIV, 1, -Y[io] / B[ib])
    CASE(AD_OP_POW, 0, B[ib] == 0 ? 0 : B[ib] * pow(A[ia], B[ib] - 1))
    CASE(AD_OP_POW, 1, A[ia] == 0 ? 0 : Y[io] * log(A[ia]))
    CASE(AD_OP_MAXIMUM, 0, (A[ia] > B[ib] || A[ia] != A[ia]) ? 1 : (A[ia] == B[ib] ? 0.5f : 0))
    CASE(AD_OP_MAXIMUM, 1, (B[ib] > A[ia] || B[ib] != B[ib]) ? 1 : (A[ia] == B[ib] ? 0.5f : 0))
    CASE(AD_OP_MINIMUM, 0, (A[ia] < B[ib] || A[ia] != A[ia]) ? 1 : (A[ia] == B[ib] ? 0.5f : 0))
    CASE(AD_OP_MINIMUM, 1, (B[ib] < A[ia] || B[ib] != B[ib]) ? 1 : (A[ia] == B[ib] ? 0.5f : 0))
#undef CASE
    default: break;
    }
}

#define ROUTE(t, w) ((w) == 0 ? 0 : (t) * (w))
/* one direction: TA/TB are that direction's input tangents (NULL: zero), TO its output tangent */
#define BIN_TANGENT(T, TERM) do {                                                       \
        const T *TA = ta, *TB = tb, *DA = da, *DB = db; T *TO = to;                     \
        if (TA && TB) BCAST_WALK({ T u = TA[ia], v = TB[ib]; TO[io] = TERM(u, DA[io]) + TERM(v, DB[io]); }); \
        else if (TA) BCAST_WALK({ T u = TA[ia]; TO[io] = TERM(u, DA[io]); });          \
        else BCAST_WALK({ T v = TB[ib]; TO[io] = TERM(v, DB[io]); });                   \
    } while (0)
#define TIMES_SAFE(t, d) SAFE(t, (t) * (d))
#define ADD_SUB_TANGENT(T, SIGN) do {                                                   \
        const T *TA = ta, *TB = tb; T *TO = to;                                         \
        if (TA && TB) BCAST_WALK({ TO[io] = TA[ia] SIGN TB[ib]; });                      \
        else if (TA) BCAST_WALK({ TO[io] = TA[ia]; });                                   \
        else BCAST_WALK({ TO[io] = SIGN TB[ib]; });                                      \
    } while (0)

int ad_jvp_binary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *a = n->in[0], *b = n->in[1];
    size_t isz = ad_itemsize(n->dtype);
    size_t sa = (size_t)a->size * isz, sb = (size_t)b->size * isz, so = (size_t)n->size * isz;
    int op = n->op;
    if (op == AD_OP_ADD || op == AD_OP_SUB) {
        for (int64_t r = 0; r < k; r++) {
            const void *ta = tin[0] ? (const char *)tin[0] + r * sa : NULL;
            const void *tb = tin[1] ? (const char *)tin[1] + r * sb : NULL;
            void *to = (char *)tout + r * so;
            if (op == AD_OP_ADD) BY_DTYPE(n->dtype, ADD_SUB_TANGENT, +);
            else BY_DTYPE(n->dtype, ADD_SUB_TANGENT, -);
        }
        return AD_OK;
    }
    size_t dbytes = so ? so : 1;
    void *da = NULL, *db = NULL;
    if (tin[0] && !(da = ad_buf_alloc(T, dbytes))) goto oom;
    if (tin[1] && !(db = ad_buf_alloc(T, dbytes))) goto oom;
    if (da) binary_deriv(op, 0, n, a, b, da);
    if (db) binary_deriv(op, 1, n, a, b, db);
    int route = op == AD_OP_MAXIMUM || op == AD_OP_MINIMUM;
    for (int64_t r = 0; r < k; r++) {
        const void *ta = tin[0] ? (const char *)tin[0] + r * sa : NULL;
        const void *tb = tin[1] ? (const char *)tin[1] + r * sb : NULL;
        void *to = (char *)tout + r * so;
        if (route) BY_DTYPE(n->dtype, BIN_TANGENT, ROUTE);
        else BY_DTYPE(n->dtype, BIN_TANGENT, TIMES_SAFE);
    }
    ad_buf_free(T, da, dbytes);
    ad_buf_free(T, db, dbytes);
    return AD_OK;
oom:
    ad_buf_free(T, da, dbytes);
    return ad_err(AD_ERR_MEMORY, "jvp of %s: out of memory (%zu bytes)", ad_ops[op].name, dbytes);
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

int ad_mk_binary(ad_tape *T, int op, ad_node *a, ad_node *b, ad_node **out)
{
    if (op < AD_OP_ADD || op > AD_OP_MINIMUM)
        return ad_err(AD_ERR_TYPE, "binary: op code %d is not a binary op", op);
    ad_node *n, *tmp = NULL;
    int nout, st;
    int64_t shape[AD_MAXDIM];
    if (!(st = ad_broadcast_shapes(ad_ops[op].name, a->ndim, a->shape, b->ndim, b->shape, &nout, shape)) &&
        !(st = promote(T, &a, &b, &tmp)) &&
        !(st = ad_node_new(T, op, a->dtype, nout, shape, &n))) {
        binary_forward(op, n, a, b);
        ad_node *ins[2] = {a, b};
        if (!(st = ad_record(T, n, 2, ins))) *out = n;
    }
    if (tmp) ad_node_unref(T, tmp);
    return st;
}

int64_t ad_binary(int op, int64_t ha, int64_t hb)
{
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n;
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) && !(st = ad_mk_binary(T, op, a, b, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

/* ---------------- tensor with a Python scalar ---------------- */

#define SCALAR_FWD(T, EXPR) do {                                              \
        const T *X = x->data; T *Y = n->data; const T c = (T)cd; int64_t N = n->size; \
        (void)c;                                                             \
        for (int64_t i = 0; i < N; i++) { T v = X[i]; Y[i] = (EXPR); }      \
    } while (0)

AD_SIMD static void scalar_forward(int op, ad_node *n, const ad_node *x, double cd)
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

AD_SIMD int ad_vjp_scalar(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
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
    CASE(AD_OP_POW_S, c == 0 ? G[i] * 0 : (c == 2 ? G[i] * (2 * X[i]) : G[i] * (c * pow(X[i], c - 1))))
    CASE(AD_OP_RPOW_S, c == 0 ? G[i] * 0 : G[i] * (Y[i] * log(c)))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
    return AD_OK;
}

/* JVP: as the unary ops, the local derivative is evaluated once and shared by the k directions. */
#define SCALAR_DERIV(T, EXPR) do {                                           \
        const T *X = x->data, *Y = n->data; const T c = (T)n->c[0]; T *D = d; \
        (void)X; (void)Y; (void)c;                                           \
        for (int64_t i = 0; i < N; i++) D[i] = (EXPR);                      \
    } while (0)

int ad_jvp_scalar(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *x = n->in[0];
    int64_t N = n->size;
    if (n->op == AD_OP_ADD_S) {
        memcpy(tout, tin[0], (size_t)(k * N) * ad_itemsize(n->dtype));
        return AD_OK;
    }
    if (n->op == AD_OP_RSUB_S) {
        BY_DTYPE(n->dtype, TANGENT_MAP, -t);
        return AD_OK;
    }
    size_t bytes = (size_t)(N ? N : 1) * ad_itemsize(n->dtype);
    void *d = ad_buf_alloc(T, bytes);
    if (!d) return ad_err(AD_ERR_MEMORY, "jvp of %s: out of memory (%zu bytes)", ad_ops[n->op].name, bytes);
    switch (n->op) {
#define CASE(OP, EXPR) case OP: BY_DTYPE(n->dtype, SCALAR_DERIV, EXPR); break;
    CASE(AD_OP_MUL_S, c)
    CASE(AD_OP_DIV_S, 1 / c)
    CASE(AD_OP_RDIV_S, -Y[i] / X[i])
    CASE(AD_OP_POW_S, c == 0 ? 0 : (c == 2 ? 2 * X[i] : c * pow(X[i], c - 1)))
    CASE(AD_OP_RPOW_S, c == 0 ? 0 : Y[i] * log(c))
#undef CASE
    default:
        ad_buf_free(T, d, bytes);
        return ad_err(AD_ERR_RUNTIME, "internal: no JVP for op %d", n->op);
    }
    BY_DTYPE(n->dtype, TANGENT_TIMES_D, 0);
    ad_buf_free(T, d, bytes);
    return AD_OK;
}

int64_t ad_scalar(int op, int64_t hx, double c)
{
    if (op < AD_OP_ADD_S || op > AD_OP_RPOW_S)
        return ad_err(AD_ERR_TYPE, "scalar: op code %d is not a tensor-scalar op", op);
    return unary_entry(op, hx, c, 0);
}

/* ---------------- second-order terms (ad_hvp) ----------------
 * d/de vjp(g) as the primals move along the tangents (t: an input's, ty: the output's), g fixed.
 * Unary f: g * f''(x) * t. A zero cotangent or tangent contributes exactly zero (SAFE). */
#define UNARY_VJP2(T, EXPR) do {                                             \
        const T *G = g, *X = x->data, *Y = n->data, *TX = tin[0]; (void)X; (void)Y; \
        SINK_LOOP(T, SAFE(G[i], SAFE(TX[i], EXPR)));                         \
    } while (0)

AD_SIMD int ad_vjp2_unary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                          int which, ad_sink *s)
{
    (void)T; (void)tout; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
#define CASE(OP, EXPR) case OP: BY_DTYPE(n->dtype, UNARY_VJP2, EXPR); break;
    CASE(AD_OP_EXP, G[i] * Y[i] * TX[i])
    CASE(AD_OP_LOG, -G[i] * TX[i] / (X[i] * X[i]))
    CASE(AD_OP_SQRT, -G[i] * TX[i] / (4 * Y[i] * Y[i] * Y[i]))
    CASE(AD_OP_SIN, -G[i] * Y[i] * TX[i])
    CASE(AD_OP_COS, -G[i] * Y[i] * TX[i])
    CASE(AD_OP_TANH, -2 * G[i] * Y[i] * (1 - Y[i] * Y[i]) * TX[i])
    CASE(AD_OP_SIGMOID, G[i] * (Y[i] * (1 - Y[i]) * (1 - 2 * Y[i])) * TX[i])
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no second-order term for op %s", ad_ops[n->op].name);
    }
    return AD_OK;
}

/* Binary: ta, tb are the operands' tangents at the element (0 where the tangent is zero); each
 * tangent's term is SAFE on its own, so a zero tangent adds exactly 0 beside an infinite
 * coefficient. pow takes log(a) as 0 at a == 0, as its VJP does. */
#define BIN_VJP2(T, E0, E1) do {                                                        \
        const T *A = a->data, *B = b->data, *Y = n->data, *G = g, *TA = tin[0], *TB = tin[1], \
                *TY = tout; T *D = s->dst;                                              \
        (void)A; (void)B; (void)Y; (void)TY;                                            \
        if (which == 0) {                                                               \
            if (s->accumulate) BCAST_WALK({ BIN_T2(T); D[io] += SAFE(gi, E0); });       \
            else BCAST_WALK({ BIN_T2(T); D[io] = SAFE(gi, E0); });                      \
        } else {                                                                        \
            if (s->accumulate) BCAST_WALK({ BIN_T2(T); D[io] += SAFE(gi, E1); });       \
            else BCAST_WALK({ BIN_T2(T); D[io] = SAFE(gi, E1); });                      \
        }                                                                               \
    } while (0)
#define BIN_T2(T) T gi = G[io], ta = TA ? TA[ia] : 0, tb = TB ? TB[ib] : 0; (void)ta; (void)tb
#define LNA (A[ia] == 0 ? 0 : log(A[ia]))

AD_SIMD int ad_vjp2_binary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                           int which, ad_sink *s)
{
    (void)T;
    const ad_node *a = n->in[0], *b = n->in[1];
    switch (n->op) {
#define CASE(OP, E0, E1) case OP: if (n->dtype == AD_F64) BIN_VJP2(double, E0, E1); else BIN_VJP2(float, E0, E1); break;
    CASE(AD_OP_MUL, gi * tb, gi * ta)
    CASE(AD_OP_DIV, -gi * SAFE(tb, tb / (B[ib] * B[ib])),
                    gi * (SAFE(tb, 2 * A[ia] * tb / (B[ib] * B[ib] * B[ib])) - SAFE(ta, ta / (B[ib] * B[ib]))))
    CASE(AD_OP_POW, gi * (SAFE(tb, tb * pow(A[ia], B[ib] - 1) * (1 + B[ib] * LNA)) +
                          SAFE(ta, B[ib] * (B[ib] - 1) * pow(A[ia], B[ib] - 2) * ta)),
                    A[ia] == 0 ? gi * 0 : gi * (SAFE(TY[io], TY[io] * LNA) + SAFE(ta, Y[io] * ta / A[ia])))
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no second-order term for op %s", ad_ops[n->op].name);
    }
    return AD_OK;
}
#undef LNA

#define SCALAR_VJP2(T, EXPR) do {                                            \
        const T *G = g, *X = x->data, *Y = n->data, *TX = tin[0]; const T c = (T)n->c[0]; \
        (void)X; (void)Y; (void)c;                                           \
        SINK_LOOP(T, SAFE(G[i], SAFE(TX[i], EXPR)));                         \
    } while (0)

AD_SIMD int ad_vjp2_scalar(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                           int which, ad_sink *s)
{
    (void)T; (void)tout; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
#define CASE(OP, EXPR) case OP: BY_DTYPE(n->dtype, SCALAR_VJP2, EXPR); break;
    CASE(AD_OP_RDIV_S, 2 * G[i] * Y[i] * TX[i] / (X[i] * X[i]))
    CASE(AD_OP_POW_S, (c == 0 || c == 1) ? G[i] * 0 : G[i] * (c * (c - 1) * pow(X[i], c - 2)) * TX[i])
    CASE(AD_OP_RPOW_S, c == 0 ? G[i] * 0 : G[i] * (Y[i] * log(c) * log(c)) * TX[i])
#undef CASE
    default: return ad_err(AD_ERR_RUNTIME, "internal: no second-order term for op %s", ad_ops[n->op].name);
    }
    return AD_OK;
}
