/* logsumexp, softmax and log_softmax over any set of axes. Forward and VJP side by side.
 *
 * Stability: every slice is shifted by its max m before exp, so exp never overflows and the
 * largest term is exactly 1 (no log(0) for inputs like -1000). A slice whose max is not finite
 * (all -inf, +inf, NaN, or empty) is not shifted, since inf - inf would invent a NaN: its
 * logsumexp is then -inf, +inf or NaN, as in SciPy. Sums and logs run in double for both dtypes.
 * On the contiguous fast path float32 takes its exponentials in float (exp_shift_ff, exp_shift_f),
 * through libmvec's 8-wide expf: the double exps made float32 softmax 2.9x PyTorch's time.
 *
 * VJPs (out = the op's output):  logsumexp  dx = g * softmax(x)
 *                                softmax    dx = out * (g - sum(g * out))
 *                                log_softmax dx = g - exp(out) * sum(g)
 * each written so that a zero cotangent contributes exactly 0 (the NaN-safety rule). */
#include "../core.h"
#include "vecmath.h"
#include <string.h>


static const char *op_label(int op)
{
    return op == AD_OP_LOGSUMEXP ? "logsumexp" : op == AD_OP_SOFTMAX ? "softmax" : "log_softmax";
}

/* Strides mapping an index of x to its slice's entry in a reduced buffer (0 on reduced axes). */
static int64_t reduced_strides(const ad_node *x, uint64_t mask, int64_t *ost)
{
    /* an empty x may have huge other dimensions whose product overflows; no element is visited */
    if (x->size == 0) { for (int i = 0; i < x->ndim; i++) ost[i] = 0; return 0; }
    int64_t s = 1;
    for (int i = x->ndim - 1; i >= 0; i--) {
        if (mask & ((uint64_t)1 << i)) { ost[i] = 0; }
        else { ost[i] = s; s *= x->shape[i]; }
    }
    return s;   /* number of slices */
}

/* Slices op n works on. For an empty x only logsumexp has any to fill (each slice is empty:
 * -inf, zero tangents), as many as its output has elements, a count ad_node_new validated. */
static int64_t slice_count(const ad_node *n, const ad_node *x, uint64_t mask, int64_t *rs)
{
    int64_t count = reduced_strides(x, mask, rs);
    return x->size == 0 && n->op == AD_OP_LOGSUMEXP ? n->size : count;
}

/* Visit every element of x: ix its (contiguous) position, io its slice. */
#define SLICE_WALK(x, mask, ...) do {                                                    \
        int64_t xs_[AD_MAXDIM], os_[AD_MAXDIM];                                          \
        ad_contig_strides((x)->ndim, (x)->shape, xs_);                                   \
        reduced_strides((x), (mask), os_);                                               \
        int64_t *st_[2] = {xs_, os_};                                                    \
        ad_iter it_;                                                                     \
        ad_iter_init(&it_, 2, (x)->ndim, (x)->shape, st_);                               \
        int64_t len_ = it_.shape[it_.ndim - 1], dx_ = it_.st[0][it_.ndim - 1],           \
                do_ = it_.st[1][it_.ndim - 1];                                           \
        AD_ITER_FOR(it_, ox_, oo_, o2_) {                                                \
            (void)o2_;                                                                   \
            for (int64_t k_ = 0; k_ < len_; k_++) {                                      \
                int64_t ix = ox_ + k_ * dx_, io = oo_ + k_ * do_;                        \
                __VA_ARGS__;                                                             \
            }                                                                            \
        }                                                                                \
    } while (0)

/* M[io] = shift of each slice, S[io] = sum exp(x - M) */
#define SHIFT_AND_SUM(TT, M, S) do {                                                     \
        const TT *X_ = x->data;                                                          \
        for (int64_t i = 0; i < nslices; i++) { M[i] = -INFINITY; S[i] = 0; }            \
        SLICE_WALK(x, mask, { double v = X_[ix]; if (v > M[io] || v != v) M[io] = v; }); \
        for (int64_t i = 0; i < nslices; i++) if (!isfinite(M[i])) M[i] = 0;             \
        SLICE_WALK(x, mask, S[io] += exp((double)X_[ix] - M[io]));                       \
    } while (0)

#define FINISH(TT) do {                                                                  \
        const TT *X = x->data; TT *Y = n->data;                                          \
        if (op == AD_OP_LOGSUMEXP)                                                       \
            for (int64_t i = 0; i < nslices; i++) Y[i] = (TT)(log(s[i]) + m[i]);         \
        else if (op == AD_OP_SOFTMAX)                                                    \
            SLICE_WALK(x, mask, Y[ix] = (TT)(exp((double)X[ix] - m[io]) / s[io]));       \
        else                                                                             \
            SLICE_WALK(x, mask, Y[ix] = (TT)(((double)X[ix] - m[io]) - log(s[io])));     \
    } while (0)

/* ---------------- the fast path: one contiguous run of reduced axes ----------------
 * x as ad_blocks (core.h): slice io = o * inner + j is x[o, :, j]. The loops below then walk
 * contiguous memory only: along a slice when inner == 1, along a row of `inner` slices otherwise
 * (every slice of the row advances together), so nothing is read with a stride and the exps run
 * through the vector loop. Other axis sets take the general walk above. */
/* exps are computed a chunk at a time into a stack buffer, summed from there (AD_SUM's eight
 * partial sums, so the result does not depend on the vector width) */
#define CHUNK 512
/* fast_fwd's op for "the shift and the sum only" (logsumexp's VJP) */
#define SHIFT_ONLY (-1)

/* exp(hi + lo) for float hi and a correction lo of at most half an ulp of hi: expf(hi) * (1 + lo),
 * to within expf's own error plus a rounding. lo is not finite only where hi overflowed to +-inf
 * (the shift of a huge x by a huge m of the other sign), where expf(hi) is already exact (0, inf)
 * or NaN: e * lo would make 0 * inf = NaN of a 0. */
static inline float exp_hi_lo(float hi, float lo)
{
    float e = expf(hi);
    return lo - lo == 0 ? e + e * lo : e;
}

/* exp(x - m) for a float32 x and a double shift m (logsumexp's output, in its VJP), in float:
 * t = x - m is formed in double and split into float hi + lo, so the result is within a few ulps
 * whatever |t| (expf(x - m) in float would carry the rounding of x - m, |t| / 2 ulps). Static
 * inline, so the vector loops that call it inline it and call libmvec's expf. */
static inline float exp_shift_f(float x, double m)
{
    double t = (double)x - m;
    float hi = (float)t;
    return exp_hi_lo(hi, (float)(t - hi));
}

/* The same for a float shift m (a slice's max, or 0): x - m = hi + lo exactly by Knuth's TwoSum,
 * in float, so 8 lanes a vector and no conversions to double (those made float32 softmax's
 * forward 1.5x PyTorch's). hi and lo are those of exp_shift_f wherever x - m is exact in double
 * (exponents of x and m less than 29 apart); elsewhere lo differs by far below an ulp of hi. */
static inline float exp_shift_ff(float x, float m)
{
    float hi = x - m, v = hi - x;
    return exp_hi_lo(hi, (x - (hi - v)) - (m + v));
}
#define EXP_SHIFT_d(x, m) exp((double)(x) - (m))
#define EXP_SHIFT_f(x, m) exp_shift_f((x), (m))
/* the same, m a slice's shift: a float32 value (a max of float32 values, or 0) */
#define EXP_MSHIFT_d(x, m) exp((double)(x) - (m))
#define EXP_MSHIFT_f(x, m) exp_shift_ff((x), (float)(m))
#define EXP_d exp
#define EXP_f expf

/* m = max of the slice (NaN if it holds one), then the shift: 0 unless m is finite */
#define MAX_RUN(TT, X, len, mout) do {                                                   \
        double m_ = _Generic((X), const double *: ad_max_f64, const float *: ad_max_f32)((X), (len), -INFINITY); \
        (mout) = isfinite(m_) ? m_ : 0;                                                  \
    } while (0)

/* per-slice shift and sum for a row layout (inner > 1): M, S hold `inner` slices */
#define ROWS_MAX(TT, X, len, inner, M) do {                                              \
        for (int64_t j = 0; j < (inner); j++) (M)[j] = -INFINITY;                        \
        for (int64_t r = 0; r < (len); r++) {                                            \
            const TT *R_ = (X) + r * (inner);                                            \
            for (int64_t j = 0; j < (inner); j++) {                                      \
                double v_ = R_[j];                                                       \
                (M)[j] = v_ > (M)[j] || v_ != v_ ? v_ : (M)[j];                          \
            }                                                                            \
        }                                                                                \
        for (int64_t j = 0; j < (inner); j++) if (!isfinite((M)[j])) (M)[j] = 0;         \
    } while (0)

/* the three forward ops on one block; Y0 is the block's output (len * inner values for softmax
 * and log_softmax, inner for logsumexp), m and s the block's `inner` slices */
#define FAST_FWD(TT, SUF, ET)                                                            \
    AD_VEC_FN static void fast_fwd_##SUF(int op, const TT *X, TT *Y0, int64_t len, int64_t inner, \
                                         double *m, double *s)                           \
    {                                                                                    \
        ET e[CHUNK];                                                                     \
        if (inner == 1) {                                                                \
            double mm, ss = 0;                                                           \
            MAX_RUN(TT, X, len, mm);                                                     \
            for (int64_t c = 0; c < len; c += CHUNK) {                                   \
                int64_t w = len - c < CHUNK ? len - c : CHUNK;                           \
                /* softmax's exps go straight to its output, normalised below */         \
                ET *E = op == AD_OP_SOFTMAX ? Y0 + c : e;                                \
                AD_VEC_LOOP                                                              \
                for (int64_t i = 0; i < w; i++) E[i] = EXP_MSHIFT_##SUF(X[c + i], mm);   \
                ss += AD_SUM(ET, E, w, 1);                                               \
            }                                                                            \
            m[0] = mm; s[0] = ss;                                                        \
        } else {                                                                         \
            ROWS_MAX(TT, X, len, inner, m);                                              \
            for (int64_t j = 0; j < inner; j++) s[j] = 0;                                \
            for (int64_t r = 0; r < len; r++) {                                          \
                const TT *R = X + r * inner;                                             \
                for (int64_t c = 0; c < inner; c += CHUNK) {                             \
                    int64_t w = inner - c < CHUNK ? inner - c : CHUNK;                   \
                    AD_VEC_LOOP                                                          \
                    for (int64_t i = 0; i < w; i++) e[i] = EXP_MSHIFT_##SUF(R[c + i], m[c + i]); \
                    for (int64_t i = 0; i < w; i++) s[c + i] += e[i];                    \
                    if (op == AD_OP_SOFTMAX)                                             \
                        for (int64_t i = 0; i < w; i++) Y0[r * inner + c + i] = (TT)e[i]; \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        if (op == AD_OP_LOGSUMEXP) {                                                     \
            for (int64_t j = 0; j < inner; j++) Y0[j] = (TT)(log(s[j]) + m[j]);         \
        } else if (op == AD_OP_SOFTMAX && sizeof(TT) == 4) {                             \
            /* float32: times the reciprocal (double rounding costs well under an ulp of    \
             * float, and a double divide per element was a third of the forward's time) */ \
            for (int64_t j = 0; j < inner; j++) s[j] = 1 / s[j];                         \
            if (inner == 1) {   /* one flat loop: the (len, 1) nest below stays scalar */ \
                /* in float, the reciprocal rounded once more (half an ulp): the conversions \
                 * to double and back bound the loop, a sixth of the forward's time */   \
                const TT r1 = (TT)s[0];                                                  \
                for (int64_t i = 0; i < len; i++) Y0[i] = Y0[i] * r1;                    \
            } else {                                                                     \
                for (int64_t r = 0; r < len; r++)                                        \
                    for (int64_t j = 0; j < inner; j++)                                  \
                        Y0[r * inner + j] = (TT)((double)Y0[r * inner + j] * s[j]);      \
            }                                                                            \
        } else if (op == AD_OP_SOFTMAX && inner == 1) {                                  \
            /* float64: times the reciprocal too (an ulp at most, under libmvec exp's own 4; \
             * the divide per element was a sixth of the forward's time) */              \
            const double r1 = 1 / s[0];                                                  \
            for (int64_t i = 0; i < len; i++) Y0[i] = (TT)((double)Y0[i] * r1);         \
        } else if (op == AD_OP_SOFTMAX) {                                                \
            for (int64_t r = 0; r < len; r++)                                            \
                for (int64_t j = 0; j < inner; j++)                                      \
                    Y0[r * inner + j] = (TT)((double)Y0[r * inner + j] / s[j]);          \
        } else if (op == AD_OP_LOG_SOFTMAX) {                                            \
            for (int64_t j = 0; j < inner; j++) s[j] = log(s[j]);                        \
            if (inner == 1) {                                                            \
                const double m1 = m[0], s1 = s[0];                                       \
                for (int64_t i = 0; i < len; i++) Y0[i] = (TT)(((double)X[i] - m1) - s1); \
            } else {                                                                     \
                for (int64_t r = 0; r < len; r++)                                        \
                    for (int64_t j = 0; j < inner; j++)                                  \
                        Y0[r * inner + j] = (TT)(((double)X[r * inner + j] - m[j]) - s[j]); \
            }                                                                            \
        }                                                                                \
    }
FAST_FWD(double, d, double)
FAST_FWD(float, f, float)

/* ---------------- threads ----------------
 * Blocks are independent and each is computed the same way whichever thread runs it, so the
 * blocks are shared out over the pool (threads.c) with bit-identical results for any thread
 * count: a part is a range of whole blocks, each with its own slices of m and s (the callers'
 * buffers hold every slice, outer * inner). Parts of at least PAR_GRAIN elements, as the
 * elementwise passes. */
enum { PAR_GRAIN = 32768 };

typedef struct {
    int op;
    const ad_node *x, *n;
    const ad_blocks *b;
    const void *g;        /* backward: the cotangent */
    ad_sink *s;           /* backward: the sink */
    double *m, *t;        /* forward: m, s; backward: m, red */
} sm_job;

static void run_blocks(const ad_blocks *b, ad_par_fn fn, sm_job *j)
{
    int64_t xblock = b->len * b->inner;
    if (b->outer >= 2 && b->outer * xblock >= 2 * PAR_GRAIN)
        ad_parallel(b->outer, xblock >= PAR_GRAIN ? 1 : PAR_GRAIN / xblock, 1, fn, j);
    else
        fn(j, 0, b->outer);
}

static void fwd_blocks(void *p, int64_t lo, int64_t hi)
{
    const sm_job *j = p;
    const ad_blocks *b = j->b;
    size_t isz = ad_itemsize(j->x->dtype);
    int64_t xblock = b->len * b->inner, yblock = j->op == AD_OP_LOGSUMEXP ? b->inner : xblock;
    for (int64_t o = lo; o < hi; o++) {
        const char *X = (const char *)j->x->data + (size_t)(o * xblock) * isz;
        char *Y = (char *)j->n->data + (size_t)(o * yblock) * isz;
        double *m = j->m + o * b->inner, *s = j->t + o * b->inner;
        if (j->x->dtype == AD_F64) fast_fwd_d(j->op, (const double *)X, (double *)Y, b->len, b->inner, m, s);
        else fast_fwd_f(j->op, (const float *)X, (float *)Y, b->len, b->inner, m, s);
    }
}

/* Forward over all blocks; m and s have room for every slice (outer * inner each). */
static void fast_forward(int op, const ad_node *x, ad_node *n, const ad_blocks *b, double *m, double *s)
{
    sm_job j = {op, x, n, b, NULL, NULL, m, s};
    run_blocks(b, fwd_blocks, &j);
}

/* sum(SAFE(g, g * y)) over n contiguous values, in double: sixteen partial sums in four vectors,
 * so four add chains (AD_SUM's eight partial sums over a buffer of the products were bound by the
 * add latency, half of softmax's VJP), in GCC's vector extensions, which fix the order for every
 * clone (the same loop over scalar partial sums lost lanes 4-7 in GCC 12's AVX2 clone). */
typedef double sm_v4d __attribute__((vector_size(32)));
typedef int64_t sm_v4l __attribute__((vector_size(32)));
typedef float sm_v4f __attribute__((vector_size(16)));
typedef int32_t sm_v4i __attribute__((vector_size(16)));

/* a += SAFE(g, g * y) at four values: g * y in TT (what SAFE rounds the double product to), +0
 * where g is 0 (through a pointer: a vector passed or returned by value changes the non-AVX ABI) */
static inline void safe_acc4_f(sm_v4d *a, const float *G, const float *Y)
{
    sm_v4f g, y;
    memcpy(&g, G, sizeof g);
    memcpy(&y, Y, sizeof y);
    *a += __builtin_convertvector((sm_v4f)((sm_v4i)(g * y) & (g != 0)), sm_v4d);
}
static inline void safe_acc4_d(sm_v4d *a, const double *G, const double *Y)
{
    sm_v4d g, y;
    memcpy(&g, G, sizeof g);
    memcpy(&y, Y, sizeof y);
    *a += (sm_v4d)((sm_v4l)(g * y) & (g != 0));
}
#define SAFE_DOT(TT, SUF)                                                                \
    static inline double safe_dot_##SUF(const TT *G, const TT *Y, int64_t n)             \
    {                                                                                    \
        sm_v4d a[4] = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}};         \
        int64_t i = 0;                                                                   \
        for (; i + 16 <= n; i += 16)                                                     \
            for (int k = 0; k < 4; k++) safe_acc4_##SUF(&a[k], G + i + 4 * k, Y + i + 4 * k); \
        double t = 0;                                                                    \
        for (; i < n; i++) t += SAFE(G[i], (double)G[i] * Y[i]);                         \
        a[0] = (a[0] + a[1]) + (a[2] + a[3]);                                            \
        return ((a[0][0] + a[0][1]) + (a[0][2] + a[0][3])) + t;                          \
    }
SAFE_DOT(double, d)
SAFE_DOT(float, f)

/* The elementwise pass of the VJPs below on one slice of len elements (a block with inner == 1),
 * r its reduction (red, or logsumexp's lse): one fused loop, each element as the row layout
 * computes it, with no per-slice buffers to fill. */
#define SLICE_STORE(TT, VEC, EXPR) do {                                                  \
        if (acc) { VEC for (int64_t i = 0; i < len; i++) D[i] += (TT)(EXPR); }           \
        else { VEC for (int64_t i = 0; i < len; i++) D[i] = (TT)(EXPR); }                \
    } while (0)
#define SLICE_VJP(TT, SUF)                                                               \
    AD_VEC_FN static void slice_vjp_##SUF(int op, const TT *X, const TT *Y, const TT *G, TT *D, int acc, \
                                          int64_t len, double r)                         \
    {                                                                                    \
        if (op == AD_OP_LOGSUMEXP) {                                                     \
            const TT g0 = G[0];                                                          \
            SLICE_STORE(TT, AD_VEC_LOOP, SAFE(g0, g0 * (double)EXP_SHIFT_##SUF(X[i], r)));   \
        } else if (op == AD_OP_SOFTMAX) {                                                \
            /* SAFE(d, y * d), d = g - r: d is 0 only where r is a TT value and g equals it, \
             * tested in TT (the double test's masks cost a third of the loop) */        \
            const TT rt = (TT)r;                                                         \
            if ((double)rt != r) SLICE_STORE(TT, , Y[i] * ((double)G[i] - r));           \
            else SLICE_STORE(TT, , G[i] == rt ? 0 : Y[i] * ((double)G[i] - r));          \
        } else if (r == 0) {                                                             \
            SLICE_STORE(TT, , G[i]);                                                     \
        } else {                                                                         \
            SLICE_STORE(TT, AD_VEC_LOOP, G[i] - (double)EXP_##SUF(Y[i]) * r);            \
        }                                                                                \
    }
SLICE_VJP(double, d)
SLICE_VJP(float, f)

/* VJPs on one block, D (+)= the contribution (STORE's accumulate rule):
 *   logsumexp   SAFE(g, g * exp(x - lse)), lse = log(s) + m recomputed in double from x (as the
 *               general path does; see LSE_VJP), g one value per slice
 *   softmax     SAFE(d, y * d), d = g - red, red = sum(SAFE(g, g * y))
 *   log_softmax red == 0 ? g : g - exp(y) * red, red = sum(g)
 * The elementwise pass of a block with inner == 1 (one slice) is slice_vjp's fused loop. */
#define FAST_VJP(TT, SUF, ET)                                                            \
    AD_VEC_FN static void fast_vjp_##SUF(int op, const TT *X, const TT *Y, const TT *G, TT *D, int acc, \
                                         int64_t len, int64_t inner, double *m, double *red) \
    {                                                                                    \
        double e[CHUNK];                                                                 \
        ET ex[CHUNK];                                                                    \
        if (op == AD_OP_LOGSUMEXP) {                                                     \
            fast_fwd_##SUF(SHIFT_ONLY, X, NULL, len, inner, m, red);                     \
            for (int64_t j = 0; j < inner; j++) red[j] = log(red[j]) + m[j];             \
        } else if (inner == 1) {                                                         \
            red[0] = 0;                                                                  \
            if (op == AD_OP_SOFTMAX) red[0] = safe_dot_##SUF(G, Y, len);                 \
            else for (int64_t c = 0; c < len; c += CHUNK)                                \
                red[0] += AD_SUM(TT, G + c, len - c < CHUNK ? len - c : CHUNK, 1);       \
        } else {                                                                         \
            for (int64_t j = 0; j < inner; j++) red[j] = 0;                              \
            for (int64_t r = 0; r < len; r++) {                                          \
                const TT *GR = G + r * inner, *YR = Y + r * inner;                       \
                if (op == AD_OP_SOFTMAX)                                                 \
                    for (int64_t j = 0; j < inner; j++) red[j] += SAFE(GR[j], (double)GR[j] * YR[j]); \
                else                                                                     \
                    for (int64_t j = 0; j < inner; j++) red[j] += GR[j];                 \
            }                                                                            \
        }                                                                                \
        if (inner == 1) {                                                                \
            slice_vjp_##SUF(op, X, Y, G, D, acc, len, red[0]);                           \
            return;                                                                      \
        }                                                                                \
        for (int64_t r = 0; r < len; r++) {                                              \
            const TT *XR = X + r * inner, *YR = Y + r * inner, *GR = G + r * inner;      \
            TT *DR = D + r * inner;                                                      \
            for (int64_t c = 0; c < inner; c += CHUNK) {                                 \
                int64_t w = inner - c < CHUNK ? inner - c : CHUNK;                       \
                const double *RD = red + c;                                              \
                if (op == AD_OP_LOGSUMEXP) {                                             \
                    const TT *GS = G + c;                                                \
                    AD_VEC_LOOP                                                          \
                    for (int64_t i = 0; i < w; i++) ex[i] = EXP_SHIFT_##SUF(XR[c + i], RD[i]); \
                    for (int64_t i = 0; i < w; i++) e[i] = SAFE(GS[i], GS[i] * (double)ex[i]); \
                } else if (op == AD_OP_SOFTMAX) {                                        \
                    for (int64_t i = 0; i < w; i++) {                                    \
                        double d = GR[c + i] - RD[i];                                    \
                        e[i] = SAFE(d, YR[c + i] * d);                                   \
                    }                                                                    \
                } else {                                                                 \
                    AD_VEC_LOOP                                                          \
                    for (int64_t i = 0; i < w; i++) ex[i] = EXP_##SUF(YR[c + i]);        \
                    for (int64_t i = 0; i < w; i++)                                      \
                        e[i] = RD[i] == 0 ? GR[c + i] : GR[c + i] - (double)ex[i] * RD[i]; \
                }                                                                        \
                if (acc) for (int64_t i = 0; i < w; i++) DR[c + i] += (TT)e[i];          \
                else for (int64_t i = 0; i < w; i++) DR[c + i] = (TT)e[i];               \
            }                                                                            \
        }                                                                                \
    }
FAST_VJP(double, d, double)
FAST_VJP(float, f, float)

static void vjp_blocks(void *p, int64_t lo, int64_t hi)
{
    const sm_job *j = p;
    const ad_node *n = j->n, *x = j->x;
    const ad_blocks *b = j->b;
    size_t isz = ad_itemsize(x->dtype);
    int64_t xblock = b->len * b->inner, gblock = n->op == AD_OP_LOGSUMEXP ? b->inner : xblock;
    for (int64_t o = lo; o < hi; o++) {
        size_t xo = (size_t)(o * xblock) * isz, go = (size_t)(o * gblock) * isz;
        const char *X = (const char *)x->data + xo, *Y = (const char *)n->data + xo;
        if (n->op == AD_OP_LOGSUMEXP) Y = NULL;   /* not read: lse is recomputed from x */
        double *m = j->m + o * b->inner, *red = j->t + o * b->inner;
        if (x->dtype == AD_F64)
            fast_vjp_d(n->op, (const double *)X, (const double *)Y, (const double *)((const char *)j->g + go),
                       (double *)((char *)j->s->dst + xo), j->s->accumulate, b->len, b->inner, m, red);
        else
            fast_vjp_f(n->op, (const float *)X, (const float *)Y, (const float *)((const char *)j->g + go),
                       (float *)((char *)j->s->dst + xo), j->s->accumulate, b->len, b->inner, m, red);
    }
}

/* m and red have room for every slice (outer * inner each; one buffer for both but logsumexp's) */
static void fast_backward(const ad_node *n, const void *g, ad_sink *s, const ad_blocks *b, double *m, double *red)
{
    sm_job j = {n->op, n->in[0], n, b, g, s, m, red};
    run_blocks(b, vjp_blocks, &j);
}

/* n's values (n shaped and its axes set) from x's, shared by ad_mk_softmax and the replay
 * (replay.c). */
static int softmax_values(ad_tape *T, ad_node *n, const ad_node *x)
{
    int op = n->op;
    uint64_t mask = n->axes;
    int64_t rs[AD_MAXDIM];
    int64_t nslices = slice_count(n, x, mask, rs);
    size_t tmp_bytes = (size_t)(nslices ? nslices : 1) * 2 * sizeof(double);
    double *m = ad_buf_alloc(T, tmp_bytes);
    if (!m) return ad_err(AD_ERR_MEMORY, "%s: out of memory", op_label(op));
    double *s = m + (nslices ? nslices : 1);
    ad_blocks b;
    if (ad_as_blocks(x, mask, &b)) fast_forward(op, x, n, &b, m, s);
    else if (x->dtype == AD_F64) { SHIFT_AND_SUM(double, m, s); FINISH(double); }
    else { SHIFT_AND_SUM(float, m, s); FINISH(float); }
    ad_buf_free(T, m, tmp_bytes);
    return AD_OK;
}

int ad_fwd_softmax(ad_tape *T, ad_node *n, ad_node *const *ins) { return softmax_values(T, n, ins[0]); }

int ad_mk_softmax(ad_tape *T, int op, ad_node *x, uint64_t mask, int keepdims, ad_node **out)
{
    if (op != AD_OP_LOGSUMEXP && op != AD_OP_SOFTMAX && op != AD_OP_LOG_SOFTMAX)
        return ad_err(AD_ERR_TYPE, "softmax: op code %d is not logsumexp, softmax or log_softmax", op);
    if (mask >> x->ndim)
        return ad_err(AD_ERR_VALUE, "%s: axis mask 0x%llx names an axis past the %d dimensions of the tensor",
                      op_label(op), (unsigned long long)mask, x->ndim);
    ad_node *n;
    int st;
    int64_t oshape[AD_MAXDIM];
    int ond = 0;
    if (op == AD_OP_LOGSUMEXP) {
        for (int i = 0; i < x->ndim; i++) {
            if (!(mask & ((uint64_t)1 << i))) oshape[ond++] = x->shape[i];
            else if (keepdims) oshape[ond++] = 1;
        }
    } else {
        ond = x->ndim;
        memcpy(oshape, x->shape, sizeof oshape);
    }
    if ((st = ad_node_new(T, op, x->dtype, ond, oshape, &n))) return st;
    n->axes = mask;
    n->keepdims = keepdims;
    if ((st = softmax_values(T, n, x))) { ad_node_discard(T, n); return st; }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_softmax(int op, int64_t hx, int naxes, const int64_t *axes, int keepdims)
{
    if (op != AD_OP_LOGSUMEXP && op != AD_OP_SOFTMAX && op != AD_OP_LOG_SOFTMAX)
        return ad_err(AD_ERR_TYPE, "softmax: op code %d is not logsumexp, softmax or log_softmax", op);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *n;
    uint64_t mask = 0;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_normalize_axes(op_label(op), x->ndim, naxes, axes, &mask)) &&
        !(st = ad_mk_softmax(T, op, x, mask, keepdims, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

#define STORE(D, i, v) do { if (s->accumulate) D[i] += (v); else D[i] = (v); } while (0)

/* The softmax is recomputed in double from x rather than taken as exp(x - out): a float32 out
 * near 1000 is off by up to 3e-5, which exp would carry into the gradient. */
#define LSE_VJP(TT) do {                                                                 \
        const TT *G = g, *X = x->data; TT *D = s->dst;                 \
        SLICE_WALK(x, mask, {                                                            \
            TT d = SAFE(G[io], (TT)(G[io] * (exp((double)X[ix] - m[io]) / sum[io])));    \
            STORE(D, ix, d); });                                                         \
    } while (0)

/* red[io] = sum over the slice of G (times Y for softmax) */
#define SOFTMAX_VJP(TT) do {                                                             \
        const TT *G = g, *Y = n->data; TT *D = s->dst;                                   \
        for (int64_t i = 0; i < nslices; i++) red[i] = 0;                                \
        if (n->op == AD_OP_SOFTMAX) {                                                    \
            SLICE_WALK(x, n->axes, red[io] += SAFE(G[ix], (double)G[ix] * Y[ix]));      \
            SLICE_WALK(x, n->axes, {                                                     \
                double d = G[ix] - red[io];                                              \
                STORE(D, ix, (TT)SAFE(d, Y[ix] * d)); });                                \
        } else {                                                                         \
            SLICE_WALK(x, n->axes, red[io] += G[ix]);                                    \
            SLICE_WALK(x, n->axes, {                                                     \
                double d = red[io] == 0 ? G[ix] : G[ix] - exp((double)Y[ix]) * red[io];  \
                STORE(D, ix, (TT)d); });                                                 \
        }                                                                                \
    } while (0)

int ad_vjp_softmax(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)which;
    const ad_node *x = n->in[0];
    uint64_t mask = n->axes;
    int64_t rs[AD_MAXDIM];
    int64_t nslices = slice_count(n, x, mask, rs);
    ad_blocks b;
    int fast = ad_as_blocks(x, mask, &b);
    if (n->op == AD_OP_LOGSUMEXP) {
        size_t tmp_bytes = (size_t)(nslices ? nslices : 1) * 2 * sizeof(double);
        double *m = ad_buf_alloc(T, tmp_bytes);
        if (!m) return ad_err(AD_ERR_MEMORY, "backward of logsumexp: out of memory");
        double *sum = m + (nslices ? nslices : 1);
        if (fast) fast_backward(n, g, s, &b, m, sum);
        else if (x->dtype == AD_F64) { SHIFT_AND_SUM(double, m, sum); LSE_VJP(double); }
        else { SHIFT_AND_SUM(float, m, sum); LSE_VJP(float); }
        ad_buf_free(T, m, tmp_bytes);
        return AD_OK;
    }
    size_t tmp_bytes = (size_t)(nslices ? nslices : 1) * sizeof(double);
    double *red = ad_buf_alloc(T, tmp_bytes);
    if (!red) return ad_err(AD_ERR_MEMORY, "backward of %s: out of memory", op_label(n->op));
    if (fast) fast_backward(n, g, s, &b, red, red);   /* m is logsumexp's only */
    else if (x->dtype == AD_F64) SOFTMAX_VJP(double);
    else SOFTMAX_VJP(float);
    ad_buf_free(T, red, tmp_bytes);
    return AD_OK;
}

/* JVPs (t = a tangent direction, out = the op's output), the transposes of the VJPs above:
 *   logsumexp   dout = sum(t * softmax(x))
 *   softmax     dout = out * (t - sum(t * out))
 *   log_softmax dout = t - sum(exp(out) * t)
 * The softmax weights are evaluated once (in double, from x, as the VJP does) and shared by the
 * k directions; a zero tangent contributes exactly 0. */
#define LSE_JVP(TT) do {                                                                 \
        const TT *X = x->data;                                                           \
        SLICE_WALK(x, mask, w[ix] = exp((double)X[ix] - m[io]) / sum[io]);               \
        for (int64_t r = 0; r < k; r++) {                                                \
            const TT *TX = (const TT *)tin[0] + r * x->size; TT *TO = (TT *)tout + r * n->size; \
            for (int64_t i = 0; i < nslices; i++) red[i] = 0;                            \
            SLICE_WALK(x, mask, red[io] += SAFE(TX[ix], TX[ix] * w[ix]));                \
            for (int64_t i = 0; i < nslices; i++) TO[i] = (TT)red[i];                    \
        }                                                                                \
    } while (0)

#define SOFTMAX_JVP(TT) do {                                                             \
        const TT *Y = n->data;                                                           \
        if (n->op == AD_OP_LOG_SOFTMAX)                                                  \
            SLICE_WALK(x, mask, { (void)io; w[ix] = exp((double)Y[ix]); });            \
        else                                                                             \
            SLICE_WALK(x, mask, { (void)io; w[ix] = Y[ix]; });                         \
        for (int64_t r = 0; r < k; r++) {                                                \
            const TT *TX = (const TT *)tin[0] + r * x->size; TT *TO = (TT *)tout + r * n->size; \
            for (int64_t i = 0; i < nslices; i++) red[i] = 0;                            \
            SLICE_WALK(x, mask, red[io] += SAFE(TX[ix], TX[ix] * w[ix]));                \
            if (n->op == AD_OP_SOFTMAX)                                                  \
                SLICE_WALK(x, mask, { double d = TX[ix] - red[io]; TO[ix] = (TT)SAFE(d, w[ix] * d); }); \
            else                                                                         \
                SLICE_WALK(x, mask, TO[ix] = (TT)(TX[ix] - red[io]));                    \
        }                                                                                \
    } while (0)

int ad_jvp_softmax(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *x = n->in[0];
    uint64_t mask = n->axes;
    int64_t rs[AD_MAXDIM];
    int64_t nslices = slice_count(n, x, mask, rs);
    size_t ns = (size_t)(nslices ? nslices : 1), nx = (size_t)(x->size ? x->size : 1);
    size_t tmp_bytes = (3 * ns + nx) * sizeof(double);
    double *m = ad_buf_alloc(T, tmp_bytes);
    if (!m) return ad_err(AD_ERR_MEMORY, "jvp of %s: out of memory", op_label(n->op));
    double *sum = m + ns, *red = sum + ns, *w = red + ns;
    if (n->op == AD_OP_LOGSUMEXP) {
        if (x->dtype == AD_F64) { SHIFT_AND_SUM(double, m, sum); LSE_JVP(double); }
        else { SHIFT_AND_SUM(float, m, sum); LSE_JVP(float); }
    } else {
        if (x->dtype == AD_F64) SOFTMAX_JVP(double); else SOFTMAX_JVP(float);
    }
    ad_buf_free(T, m, tmp_bytes);
    return AD_OK;
}

/* Second-order terms (ad_hvp): the VJPs above differentiated along the tangents t (input) and
 * dout (output) with g fixed, p = softmax(x):
 *   logsumexp   g * p * (t - dout)
 *   softmax     dout * (g - sum(g * out)) - out * sum(g * dout)
 *   log_softmax -p * dout * sum(g) */
#define SOFTMAX_VJP2(TT) do {                                                            \
        const TT *G = g, *X = x->data, *Y = n->data, *TX = tin[0], *TY = tout; TT *D = s->dst; \
        for (int64_t i = 0; i < nslices; i++) { r1[i] = 0; r2[i] = 0; }                  \
        if (n->op == AD_OP_LOGSUMEXP) {                                                  \
            SHIFT_AND_SUM(TT, r1, r2);                                                   \
            SLICE_WALK(x, mask, {                                                        \
                double p = exp((double)X[ix] - r1[io]) / r2[io];                         \
                STORE(D, ix, (TT)SAFE(G[io], G[io] * (SAFE(TX[ix], p * TX[ix]) - SAFE(TY[io], p * TY[io])))); }); \
        } else if (n->op == AD_OP_SOFTMAX) {                                             \
            SLICE_WALK(x, mask, { r1[io] += SAFE(G[ix], (double)G[ix] * Y[ix]);          \
                                  r2[io] += SAFE(G[ix], (double)G[ix] * TY[ix]); });     \
            SLICE_WALK(x, mask, STORE(D, ix, (TT)(SAFE(TY[ix], TY[ix] * (G[ix] - r1[io])) - \
                                                  SAFE(r2[io], Y[ix] * r2[io]))));       \
        } else {                                                                         \
            SLICE_WALK(x, mask, r1[io] += G[ix]);                                        \
            SLICE_WALK(x, mask, STORE(D, ix, (TT)SAFE(r1[io], SAFE(TY[ix], -exp((double)Y[ix]) * TY[ix] * r1[io])))); \
        }                                                                                \
    } while (0)

int ad_vjp2_softmax(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                    int which, ad_sink *s)
{
    (void)which;
    const ad_node *x = n->in[0];
    uint64_t mask = n->axes;
    int64_t rs[AD_MAXDIM];
    int64_t nslices = slice_count(n, x, mask, rs);
    size_t tmp_bytes = (size_t)(nslices ? nslices : 1) * 2 * sizeof(double);
    double *r1 = ad_buf_alloc(T, tmp_bytes);
    if (!r1) return ad_err(AD_ERR_MEMORY, "second-order term of %s: out of memory", op_label(n->op));
    double *r2 = r1 + (nslices ? nslices : 1);
    if (x->dtype == AD_F64) SOFTMAX_VJP2(double); else SOFTMAX_VJP2(float);
    ad_buf_free(T, r1, tmp_bytes);
    return AD_OK;
}

/* ---------------- differentiable rules (recorded ops, for higher order) ----------------
 * The formulas of the VJPs and JVPs above, as recorded ops (p = softmax(x), y = the output, sums
 * over the op's axes with keepdims, so they broadcast back):
 *   logsumexp    vjp expand(g) * p            jvp sum(t * p)
 *   softmax      vjp y * (g - sum(g * y))     jvp y * (t - sum(t * y))
 *   log_softmax  vjp g - exp(y) * sum(g)      jvp t - sum(exp(y) * t)
 * softmax's VJP and JVP are one formula (the Jacobian is symmetric), as are log_softmax's up to
 * a transpose, so each is written once below with `v` the cotangent or the tangent. */

/* a * b, then (optionally) reduced over the op's axes with keepdims */
static int mul_sum(ad_tape *T, ad_node *a, ad_node *b, const ad_node *n, int keepdims, ad_node **out)
{
    ad_node *prod;
    int st = ad_mk_binary(T, AD_OP_MUL, a, b, &prod);
    if (st) return st;
    st = ad_mk_reduce(T, AD_OP_SUM, prod, n->axes, keepdims, out);
    ad_node_unref(T, prod);
    return st;
}

/* y * (v - sum(v * y)) */
static int rec_softmax(ad_tape *T, ad_node *n, ad_node *v, ad_node **out)
{
    ad_node *s = NULL, *d = NULL;
    int st;
    if (!(st = mul_sum(T, v, n, n, 1, &s)) && !(st = ad_mk_binary(T, AD_OP_SUB, v, s, &d)))
        st = ad_mk_binary(T, AD_OP_MUL, n, d, out);
    if (s) ad_node_unref(T, s);
    if (d) ad_node_unref(T, d);
    return st;
}

/* v - exp(y) * sum(v) (transpose 0) or v - sum(exp(y) * v) (transpose 1) */
static int rec_log_softmax(ad_tape *T, ad_node *n, ad_node *v, int transpose, ad_node **out)
{
    ad_node *p = NULL, *s = NULL, *w = NULL;
    int st = ad_mk_unary(T, AD_OP_EXP, n, 0, 0, &p);
    if (st) return st;
    if (transpose) st = mul_sum(T, p, v, n, 1, &w);
    else if (!(st = ad_mk_reduce(T, AD_OP_SUM, v, n->axes, 1, &s))) st = ad_mk_binary(T, AD_OP_MUL, p, s, &w);
    if (!st) st = ad_mk_binary(T, AD_OP_SUB, v, w, out);
    ad_node_unref(T, p);
    if (s) ad_node_unref(T, s);
    if (w) ad_node_unref(T, w);
    return st;
}

/* p = softmax(x) over logsumexp's axes, recorded from x (what the numeric rules recompute) */
static int lse_weights(ad_tape *T, ad_node *n, ad_node **p)
{
    return ad_mk_softmax(T, AD_OP_SOFTMAX, n->in[0], n->axes, 0, p);
}

int ad_vjp_rec_softmax(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    (void)which;
    if (n->op == AD_OP_SOFTMAX) return rec_softmax(T, n, g, out);
    if (n->op == AD_OP_LOG_SOFTMAX) return rec_log_softmax(T, n, g, 0, out);
    ad_node *p, *wide = NULL;
    int st = lse_weights(T, n, &p);
    if (st) return st;
    if (!(st = ad_rec_expand(T, g, n->in[0], n->axes, &wide))) st = ad_mk_binary(T, AD_OP_MUL, wide, p, out);
    ad_node_unref(T, p);
    if (wide) ad_node_unref(T, wide);
    return st;
}

int ad_jvp_rec_softmax(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    if (n->op == AD_OP_SOFTMAX) return rec_softmax(T, n, tin[0], out);
    if (n->op == AD_OP_LOG_SOFTMAX) return rec_log_softmax(T, n, tin[0], 1, out);
    ad_node *p;
    int st = lse_weights(T, n, &p);
    if (st) return st;
    st = mul_sum(T, tin[0], p, n, n->keepdims, out);
    ad_node_unref(T, p);
    return st;
}
