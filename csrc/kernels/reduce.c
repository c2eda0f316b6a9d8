/* Reductions over axes: sum, mean, max, min. Forward and VJP side by side. Sum and broadcast are
 * duals: the VJP of a reduction broadcasts the cotangent back over the reduced axes. max/min route
 * the cotangent to the arg-max; tied elements share it equally. */
#include "../core.h"
#include <math.h>
#include <string.h>

/* Strides that map an index of x to the reduced output (0 on reduced axes). */
static void reduced_strides(const ad_node *x, uint64_t mask, int64_t *ost)
{
    if (x->size == 0) { for (int i = 0; i < x->ndim; i++) ost[i] = 0; return; }   /* see reduced_count */
    int64_t s = 1;
    for (int i = x->ndim - 1; i >= 0; i--) {
        if (mask & ((uint64_t)1 << i)) { ost[i] = 0; }
        else { ost[i] = s; s *= x->shape[i]; }
    }
}

/* Elements per output element. For an empty x the product of the reduced axes can overflow
 * (shape (0, 2^40, 2^40)), and only whether it is zero matters there. */
static int64_t reduced_count(const ad_node *x, uint64_t mask)
{
    int64_t count = 1;
    for (int i = 0; i < x->ndim; i++) {
        if (!(mask & ((uint64_t)1 << i))) continue;
        if (x->shape[i] == 0) return 0;
        if (x->size) count *= x->shape[i];
    }
    return count;
}

#define REDUCE_WALK(...) do {                       \
        int64_t xs_[AD_MAXDIM], os_[AD_MAXDIM];                                      \
        ad_contig_strides(x->ndim, x->shape, xs_);                                   \
        reduced_strides(x, mask, os_);                                               \
        int64_t *st_[2] = {xs_, os_};                                                \
        ad_iter it_;                                                                 \
        ad_iter_init(&it_, 2, x->ndim, x->shape, st_);                               \
        int64_t len = it_.shape[it_.ndim - 1], dx = it_.st[0][it_.ndim - 1],         \
                dout = it_.st[1][it_.ndim - 1];                                      \
        AD_ITER_FOR(it_, ox, oo, o2_) {                                              \
            (void)o2_;                                                               \
            __VA_ARGS__;                                                             \
        }                                                                            \
    } while (0)

/* Accumulated in double (AD_SUM): vectorisable and accurate for float32 too. */
#define SUM_FWD(T) do {                                                                \
        const T *X = x->data; T *Y = n->data;                                          \
        double *acc = tmp;                                                             \
        for (int64_t i = 0; i < n->size; i++) acc[i] = 0;                              \
        REDUCE_WALK(if (dout == 0) {                                                   \
            acc[oo] += AD_SUM(T, X + ox, len, dx);                                     \
        } else {                                                                       \
            for (int64_t i = 0; i < len; i++) acc[oo + i * dout] += X[ox + i * dx];    \
        });                                                                            \
        for (int64_t i = 0; i < n->size; i++) Y[i] = (T)(acc[i] * scale);              \
    } while (0)

/* A sum of every element (a loss) over many elements is cut into blocks of SUM_BLOCK, each summed
 * by AD_SUM, and the block sums are added in order: the blocks do not depend on the thread
 * count, so neither does the result, and the blocks can be summed in parallel. */
enum { SUM_BLOCK = AD_SUM_BLOCK };

typedef struct { const void *x; int dtype; int64_t size; double *part; } sum_job;

static void sum_blocks(void *p, int64_t lo, int64_t hi)
{
    const sum_job *j = p;
    for (int64_t b = lo; b < hi; b++) {
        int64_t s = b * SUM_BLOCK, m = j->size - s < SUM_BLOCK ? j->size - s : SUM_BLOCK;
        j->part[b] = j->dtype == AD_F64 ? ad_sum_f64((const double *)j->x + s, m, 1)
                                        : ad_sum_f32((const float *)j->x + s, m, 1);
    }
}

/* the blocked sum of all of x, or 0 when x is too small for blocks (*done stays 0) */
static int sum_all(ad_tape *T, const ad_node *x, double *total, int *done)
{
    *done = 0;
    if (x->size < 2 * SUM_BLOCK) return AD_OK;
    int64_t nb = (x->size + SUM_BLOCK - 1) / SUM_BLOCK;
    double *part = ad_buf_alloc(T, (size_t)nb * sizeof(double));
    if (!part) return ad_err(AD_ERR_MEMORY, "sum: out of memory");
    sum_job j = {x->data, x->dtype, x->size, part};
    ad_parallel(nb, 1, 1, sum_blocks, &j);
    double t = 0;
    for (int64_t b = 0; b < nb; b++) t += part[b];
    ad_buf_free(T, part, (size_t)nb * sizeof(double));
    *total = t;
    *done = 1;
    return AD_OK;
}

/* NaN wins, as in NumPy. Every output starts at the identity (-inf for max, +inf for min; an
 * empty slice was refused above) and takes v where v is NaN or BETTER: a NaN result stays NaN, and
 * the select vectorises. A reduced run (the innermost axis reduced) is AD_DEF_EXTREME's vector
 * loop when contiguous, else four partial results, so the loop does not wait on one chain. */
#define TAKE(v, y, BETTER) ((v) != (v) || (BETTER) ? (v) : (y))
#define EXTREME_FWD(T, BETTER, RUN) do {                                                    \
        const T *X = x->data; T *Y = n->data;                                          \
        const T init = op == AD_OP_MAX ? -INFINITY : INFINITY;                         \
        for (int64_t i = 0; i < n->size; i++) Y[i] = init;                             \
        REDUCE_WALK(if (dout == 0 && dx == 1) {                                        \
            Y[oo] = RUN(X + ox, len, Y[oo]);                                           \
        } else if (dout == 0) {                                                        \
            T p[4] = {Y[oo], Y[oo], Y[oo], Y[oo]}, *y;                                 \
            int64_t i = 0;                                                             \
            for (; i + 4 <= len; i += 4)                                               \
                for (int l = 0; l < 4; l++) { T v = X[ox + (i + l) * dx]; y = &p[l]; p[l] = TAKE(v, *y, BETTER); } \
            for (; i < len; i++) { T v = X[ox + i * dx]; y = &p[0]; p[0] = TAKE(v, *y, BETTER); } \
            for (int l = 1; l < 4; l++) { T v = p[l]; y = &p[0]; p[0] = TAKE(v, *y, BETTER); } \
            Y[oo] = p[0];                                                              \
        } else {                                                                       \
            for (int64_t i = 0; i < len; i++) {                                        \
                T v = X[ox + i * dx], *y = &Y[oo + i * dout];                          \
                *y = TAKE(v, *y, BETTER);                                              \
            }                                                                          \
        });                                                                            \
    } while (0)

/* ---------------- one run of reduced axes, shared over threads ----------------
 * x as ad_blocks (core.h): output o * inner + j reduces x[o, :, j]. Each output is computed in the
 * order the general walk above takes (AD_SUM or the vector extreme along a contiguous slice when
 * inner == 1; else the rows taken one after another, each output in its own double or value), so
 * the values are the walk's, and columns go in tiles that stay in cache while every row passes.
 * The work is shared by whole blocks, or with one block by ranges of columns: an output is
 * computed alike whatever the split, so results are bit-identical for any thread count. */
enum { PAR_GRAIN = 32768, COL_TILE = 4096 };

typedef struct {
    int op;
    const ad_node *x;
    ad_node *n;
    ad_blocks b;
    double *acc;       /* sum and mean: a double per output */
    double scale;
} red_job;

#define DEF_RED_RANGE(NAME, T, SUM, MAX, MIN)                                                   \
    static AD_SIMD void NAME(const red_job *j, int64_t o, int64_t c0, int64_t c1)               \
    {                                                                                           \
        const int64_t len = j->b.len, inner = j->b.inner;                                       \
        const T *X = (const T *)j->x->data + o * len * inner;                                   \
        T *Y = (T *)j->n->data + o * inner;                                                     \
        const int sum = j->op == AD_OP_SUM || j->op == AD_OP_MEAN, mx = j->op == AD_OP_MAX;     \
        const T init = mx ? -INFINITY : INFINITY;                                               \
        if (inner == 1) {                                                                       \
            Y[0] = sum ? (T)((0 + SUM(X, len, 1)) * j->scale) : mx ? MAX(X, len, init) : MIN(X, len, init); \
            return;                                                                             \
        }                                                                                       \
        for (int64_t t0 = c0; t0 < c1; t0 += COL_TILE) {                                        \
            const int64_t t1 = c1 - t0 < COL_TILE ? c1 : t0 + COL_TILE;                         \
            if (sum) {                                                                          \
                double *acc = j->acc + o * inner;                                               \
                for (int64_t c = t0; c < t1; c++) acc[c] = 0;                                   \
                for (int64_t r = 0; r < len; r++)                                               \
                    for (int64_t c = t0; c < t1; c++) acc[c] += X[r * inner + c];               \
                for (int64_t c = t0; c < t1; c++) Y[c] = (T)(acc[c] * j->scale);                \
            } else {                                                                            \
                for (int64_t c = t0; c < t1; c++) Y[c] = init;                                  \
                for (int64_t r = 0; r < len; r++)                                               \
                    for (int64_t c = t0; c < t1; c++) {                                         \
                        T v = X[r * inner + c];                                                 \
                        Y[c] = mx ? AD_TAKE(v, Y[c], >) : AD_TAKE(v, Y[c], <);                  \
                    }                                                                           \
            }                                                                                   \
        }                                                                                       \
    }
DEF_RED_RANGE(red_range_d, double, ad_sum_f64, ad_max_f64, ad_min_f64)
DEF_RED_RANGE(red_range_f, float, ad_sum_f32, ad_max_f32, ad_min_f32)

static void red_range(const red_job *j, int64_t o, int64_t c0, int64_t c1)
{
    if (j->x->dtype == AD_F64) red_range_d(j, o, c0, c1); else red_range_f(j, o, c0, c1);
}

static void red_blocks(void *p, int64_t lo, int64_t hi)
{
    const red_job *j = p;
    for (int64_t o = lo; o < hi; o++) red_range(j, o, 0, j->b.inner);
}

static void red_cols(void *p, int64_t lo, int64_t hi) { red_range(p, 0, lo, hi); }

/* The max or min of a whole large x (one block, one slice): the vector extreme of each run of
 * AD_SUM_BLOCK in parallel, the partial results taken in order. Max and min are exact, so this is
 * the serial value. */
typedef struct { const ad_node *x; int mx; void *part; } extreme_job;

static AD_SIMD void extreme_blocks(void *p, int64_t lo, int64_t hi)
{
    const extreme_job *j = p;
    for (int64_t b = lo; b < hi; b++) {
        int64_t s = b * AD_SUM_BLOCK, m = j->x->size - s < AD_SUM_BLOCK ? j->x->size - s : AD_SUM_BLOCK;
        if (j->x->dtype == AD_F64) {
            const double *X = (const double *)j->x->data + s;
            ((double *)j->part)[b] = j->mx ? ad_max_f64(X, m, -INFINITY) : ad_min_f64(X, m, INFINITY);
        } else {
            const float *X = (const float *)j->x->data + s;
            ((float *)j->part)[b] = j->mx ? ad_max_f32(X, m, -INFINITY) : ad_min_f32(X, m, INFINITY);
        }
    }
}

static int extreme_all(ad_tape *T, int op, const ad_node *x, ad_node *n)
{
    int64_t nb = (x->size + AD_SUM_BLOCK - 1) / AD_SUM_BLOCK;
    size_t bytes = (size_t)nb * sizeof(double);
    void *part = ad_buf_alloc(T, bytes);
    if (!part) return ad_err(AD_ERR_MEMORY, "%s: out of memory", op == AD_OP_MAX ? "max" : "min");
    extreme_job j = {x, op == AD_OP_MAX, part};
    ad_parallel(nb, 1, 1, extreme_blocks, &j);
    if (x->dtype == AD_F64) {
        double y = ((double *)part)[0];
        for (int64_t b = 1; b < nb; b++) y = j.mx ? AD_TAKE(((double *)part)[b], y, >) : AD_TAKE(((double *)part)[b], y, <);
        *(double *)n->data = y;
    } else {
        float y = ((float *)part)[0];
        for (int64_t b = 1; b < nb; b++) y = j.mx ? AD_TAKE(((float *)part)[b], y, >) : AD_TAKE(((float *)part)[b], y, <);
        *(float *)n->data = y;
    }
    ad_buf_free(T, part, bytes);
    return AD_OK;
}

/* The run of reduced axes b of x into n: over threads when x is large enough to pay for them. */
static int reduce_blocks(ad_tape *T, int op, const ad_node *x, ad_node *n, const ad_blocks *b, double *acc,
                         double scale)
{
    red_job j = {op, x, n, *b, acc, scale};
    int big = x->size >= 2 * PAR_GRAIN;
    if (big && b->outer == 1 && b->inner == 1 && op != AD_OP_SUM && op != AD_OP_MEAN)
        return extreme_all(T, op, x, n);
    int64_t xblock = b->len * b->inner;
    if (big && b->outer >= 2)
        ad_parallel(b->outer, xblock >= PAR_GRAIN ? 1 : PAR_GRAIN / xblock, 1, red_blocks, &j);
    else if (big && b->inner >= 2)
        ad_parallel(b->inner, b->len >= PAR_GRAIN ? 16 : (PAR_GRAIN / b->len + 15) / 16 * 16, 16, red_cols, &j);
    else
        red_blocks(&j, 0, b->outer);
    return AD_OK;
}

static const char *op_label(int op)
{
    return op == AD_OP_SUM ? "sum" : op == AD_OP_MEAN ? "mean" : op == AD_OP_MAX ? "max" : "min";
}

/* n's values (n shaped and its axes set) from x's: the forward of every reduction, shared by
 * ad_mk_reduce and the replay (replay.c). */
static AD_SIMD int reduce_values(ad_tape *T, ad_node *n, const ad_node *x)
{
    int op = n->op, st = AD_OK;
    uint64_t mask = n->axes;
    int64_t count = reduced_count(x, mask);
    size_t tmp_bytes = (size_t)(n->size ? n->size : 1) * sizeof(double);
    void *tmp = ad_buf_alloc(T, tmp_bytes);
    if (!tmp) return ad_err(AD_ERR_MEMORY, "%s: out of memory", op_label(op));
    double scale = op == AD_OP_MEAN ? 1.0 / (double)count : 1.0;
    if (op == AD_OP_MEAN && count == 0) scale = NAN;
    ad_blocks b;
    int whole_sum = (op == AD_OP_SUM || op == AD_OP_MEAN) && n->size == 1 && x->size >= 2 * AD_SUM_BLOCK;
    if (!whole_sum && ad_as_blocks(x, mask, &b)) {
        st = reduce_blocks(T, op, x, n, &b, tmp, scale);
        ad_buf_free(T, tmp, tmp_bytes);
        return st;
    }
    switch (op) {
    case AD_OP_SUM: case AD_OP_MEAN: {
        double total;
        int done = 0;
        if (n->size == 1 && (st = sum_all(T, x, &total, &done))) {
            ad_buf_free(T, tmp, tmp_bytes);
            return st;
        }
        if (done) {
            if (x->dtype == AD_F64) *(double *)n->data = total * scale; else *(float *)n->data = (float)(total * scale);
        } else if (x->dtype == AD_F64) {
            SUM_FWD(double);
        } else {
            SUM_FWD(float);
        }
        break;
    }
    case AD_OP_MAX:
        if (x->dtype == AD_F64) EXTREME_FWD(double, v > *y, ad_max_f64); else EXTREME_FWD(float, v > *y, ad_max_f32);
        break;
    case AD_OP_MIN:
        if (x->dtype == AD_F64) EXTREME_FWD(double, v < *y, ad_min_f64); else EXTREME_FWD(float, v < *y, ad_min_f32);
        break;
    }
    ad_buf_free(T, tmp, tmp_bytes);
    return AD_OK;
}

int ad_fwd_reduce(ad_tape *T, ad_node *n, ad_node *const *ins) { return reduce_values(T, n, ins[0]); }

AD_SIMD int ad_mk_reduce(ad_tape *T, int op, ad_node *x, uint64_t mask, int keepdims, ad_node **out)
{
    if (op < AD_OP_SUM || op > AD_OP_MIN)
        return ad_err(AD_ERR_TYPE, "reduce: op code %d is not a reduction", op);
    if (x->ndim < 64 && (mask >> x->ndim))
        return ad_err(AD_ERR_VALUE, "%s: axis mask 0x%llx names an axis past the %d dimensions of the tensor",
                      op_label(op), (unsigned long long)mask, x->ndim);
    ad_node *n;
    int st;
    int64_t oshape[AD_MAXDIM], count = reduced_count(x, mask);
    int ond = 0;
    for (int i = 0; i < x->ndim; i++) {
        if (mask & ((uint64_t)1 << i)) {
            if (keepdims) oshape[ond++] = 1;
        } else {
            oshape[ond++] = x->shape[i];
        }
    }
    if ((op == AD_OP_MAX || op == AD_OP_MIN) && count == 0) {
        char b[160];
        return ad_err(AD_ERR_VALUE, "%s: cannot reduce over a zero-size axis of a tensor of shape %s (max and min have no identity)",
                      op_label(op), ad_shape_str(b, sizeof b, x->ndim, x->shape));
    }
    if ((st = ad_node_new(T, op, x->dtype, ond, oshape, &n))) return st;
    n->axes = mask;
    n->keepdims = keepdims;
    if ((st = reduce_values(T, n, x))) { ad_node_discard(T, n); return st; }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_reduce(int op, int64_t hx, int naxes, const int64_t *axes, int keepdims)
{
    if (op < AD_OP_SUM || op > AD_OP_MIN)
        return ad_err(AD_ERR_TYPE, "reduce: op code %d is not a reduction", op);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *n;
    uint64_t mask = 0;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_normalize_axes(op_label(op), x->ndim, naxes, axes, &mask)) &&
        !(st = ad_mk_reduce(T, op, x, mask, keepdims, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

/* The walk visits every element of x exactly once, so a first contribution assigns instead of
 * zeroing the buffer and adding (one pass over the adjoint instead of two). */
#define SUM_VJP_WALK(T, OP) REDUCE_WALK(if (dout == 0) {                               \
            T gi = G[oo] * sc;                                                         \
            for (int64_t i = 0; i < len; i++) D[ox + i * dx] OP gi;                    \
        } else {                                                                       \
            for (int64_t i = 0; i < len; i++) D[ox + i * dx] OP G[oo + i * dout] * sc; \
        })
#define SUM_VJP(T) do {                                                                \
        const T *G = g; T *D = s->dst; const T sc = (T)scale;                          \
        if (s->accumulate) SUM_VJP_WALK(T, +=); else SUM_VJP_WALK(T, =);               \
    } while (0)

/* Route to the elements equal to the result; NaN results route to the NaN elements. */
#define IS_HIT(v, y) ((v) == (y) || ((v) != (v) && (y) != (y)))
#define EXTREME_VJP(T) do {                                                            \
        const T *G = g, *X = x->data, *Y = n->data; T *D = s->dst;                     \
        double *share = tmp;   /* first the tie count of each output, then its share */ \
        for (int64_t i = 0; i < n->size; i++) share[i] = 0;                            \
        REDUCE_WALK(if (dout == 0 && dx == 1) {                                        \
            /* an integer count of a compare, split on y's NaN-ness: vectorises */     \
            const T *XR = X + ox, y = Y[oo];                                           \
            int64_t c = 0;                                                             \
            if (y == y) for (int64_t i = 0; i < len; i++) c += XR[i] == y;             \
            else for (int64_t i = 0; i < len; i++) c += XR[i] != XR[i];                \
            share[oo] += (double)c;                                                    \
        } else if (dout == 0) {                                                        \
            double c = 0;                                                              \
            for (int64_t i = 0; i < len; i++) c += IS_HIT(X[ox + i * dx], Y[oo]);      \
            share[oo] += c;                                                            \
        } else {                                                                       \
            for (int64_t i = 0; i < len; i++)                                          \
                share[oo + i * dout] += IS_HIT(X[ox + i * dx], Y[oo + i * dout]);       \
        });                                                                            \
        /* one division per output, not per element (the same quotient, rounded once) */ \
        for (int64_t i = 0; i < n->size; i++) share[i] = G[i] != 0 ? G[i] / share[i] : 0; \
        const int acc_ = s->accumulate;                                                \
        REDUCE_WALK(if (dout == 0 && dx == 1 && Y[oo] == Y[oo]) {                      \
            const T *XR = X + ox, y = Y[oo], q = (T)share[oo];                         \
            T *DR = D + ox;                                                            \
            if (acc_) for (int64_t i = 0; i < len; i++) DR[i] += XR[i] == y ? q : 0;   \
            else for (int64_t i = 0; i < len; i++) DR[i] = XR[i] == y ? q : 0;         \
        } else if (dout == 0) {                                                        \
            const T y = Y[oo], q = (T)share[oo];                                       \
            for (int64_t i = 0; i < len; i++) {                                        \
                T c = IS_HIT(X[ox + i * dx], y) ? q : 0;                               \
                if (acc_) D[ox + i * dx] += c; else D[ox + i * dx] = c;                \
            }                                                                          \
        } else {                                                                       \
            for (int64_t i = 0; i < len; i++) {                                        \
                int64_t o = oo + i * dout;                                             \
                T c = IS_HIT(X[ox + i * dx], Y[o]) ? (T)share[o] : 0;                  \
                if (acc_) D[ox + i * dx] += c; else D[ox + i * dx] = c;                \
            }                                                                          \
        });                                                                            \
    } while (0)

/* The VJP of a sum or mean over one run of axes (x as ad_blocks): row (o, r) of x's adjoint gets
 * g[o, :] * scale, each element written once and alike however the rows are split: over threads
 * when large, bit-identical for any thread count. */
typedef struct { const ad_node *x; const void *g; ad_sink *s; ad_blocks b; double scale; } sum_vjp_job;

#define DEF_SUM_VJP_ROWS(NAME, T)                                                               \
    static AD_SIMD void NAME(const sum_vjp_job *j, int64_t lo, int64_t hi)                      \
    {                                                                                           \
        const int64_t len = j->b.len, inner = j->b.inner;                                       \
        const T *G = j->g, sc = (T)j->scale;                                                    \
        T *D = j->s->dst;                                                                       \
        const int acc = j->s->accumulate;                                                       \
        for (int64_t u = lo; u < hi;) {                                                         \
            const int64_t o = u / len, end = (o + 1) * len < hi ? (o + 1) * len : hi;          \
            const T *Go = G + o * inner;                                                        \
            if (inner == 1) {                                                                   \
                const T gi = Go[0] * sc;                                                        \
                if (acc) for (int64_t i = u; i < end; i++) D[i] += gi;                          \
                else for (int64_t i = u; i < end; i++) D[i] = gi;                               \
            } else {                                                                            \
                for (int64_t r = u; r < end; r++) {                                             \
                    T *Dr = D + r * inner;                                                      \
                    if (acc) for (int64_t c = 0; c < inner; c++) Dr[c] += Go[c] * sc;           \
                    else for (int64_t c = 0; c < inner; c++) Dr[c] = Go[c] * sc;                \
                }                                                                               \
            }                                                                                   \
            u = end;                                                                            \
        }                                                                                       \
    }
DEF_SUM_VJP_ROWS(sum_vjp_rows_d, double)
DEF_SUM_VJP_ROWS(sum_vjp_rows_f, float)

static void sum_vjp_rows(void *p, int64_t lo, int64_t hi)
{
    const sum_vjp_job *j = p;
    if (j->x->dtype == AD_F64) sum_vjp_rows_d(j, lo, hi); else sum_vjp_rows_f(j, lo, hi);
}

AD_SIMD int ad_vjp_reduce(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)which;
    const ad_node *x = n->in[0];
    uint64_t mask = n->axes;
    int64_t count = reduced_count(x, mask);
    double scale = n->op == AD_OP_MEAN ? 1.0 / (double)(count ? count : 1) : 1.0;
    if (n->op == AD_OP_SUM || n->op == AD_OP_MEAN) {
        sum_vjp_job j = {x, g, s, {0, 0, 0}, scale};
        if (ad_as_blocks(x, mask, &j.b)) {
            int64_t rows = j.b.outer * j.b.len;
            if (x->size >= 2 * PAR_GRAIN)
                ad_parallel(rows, j.b.inner >= PAR_GRAIN ? 1 : PAR_GRAIN / j.b.inner, 1, sum_vjp_rows, &j);
            else
                sum_vjp_rows(&j, 0, rows);
        } else if (x->dtype == AD_F64) {
            SUM_VJP(double);
        } else {
            SUM_VJP(float);
        }
        return AD_OK;
    }
    size_t tmp_bytes = (size_t)(n->size ? n->size : 1) * sizeof(double);
    void *tmp = ad_buf_alloc(T, tmp_bytes);
    if (!tmp) return ad_err(AD_ERR_MEMORY, "backward of %s: out of memory", op_label(n->op));
    if (x->dtype == AD_F64) EXTREME_VJP(double); else EXTREME_VJP(float);
    ad_buf_free(T, tmp, tmp_bytes);
    return AD_OK;
}

/* JVP: sum and mean are linear, so each tangent direction is reduced exactly like the forward
 * value (SUM_FWD on views whose data point at that direction). max/min pass on the mean of the
 * winners' tangents: the adjoint of splitting the cotangent equally among ties. */
#define EXTREME_JVP(T) do {                                                            \
        const T *X = x->data, *Y = n->data;                                            \
        double *cnt = tmp, *acc = cnt + n->size;                                       \
        for (int64_t i = 0; i < n->size; i++) cnt[i] = 0;                              \
        REDUCE_WALK(for (int64_t i = 0; i < len; i++)                                  \
            cnt[oo + i * dout] += IS_HIT(X[ox + i * dx], Y[oo + i * dout]));           \
        for (int64_t r = 0; r < k; r++) {                                              \
            const T *TX = (const T *)tin[0] + r * x->size;                             \
            T *TO = (T *)tout + r * n->size;                                           \
            for (int64_t i = 0; i < n->size; i++) acc[i] = 0;                          \
            REDUCE_WALK(for (int64_t i = 0; i < len; i++)                              \
                if (IS_HIT(X[ox + i * dx], Y[oo + i * dout]))                          \
                    acc[oo + i * dout] += TX[ox + i * dx]);                            \
            for (int64_t i = 0; i < n->size; i++) TO[i] = (T)(acc[i] / cnt[i]);        \
        }                                                                              \
    } while (0)

int ad_jvp_reduce(ad_tape *T, ad_node *node, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *x = node->in[0];
    ad_node *n = node;
    uint64_t mask = node->axes;
    int64_t count = 1;
    for (int i = 0; i < x->ndim; i++)
        if (mask & ((uint64_t)1 << i)) count *= x->shape[i];
    int extreme = node->op == AD_OP_MAX || node->op == AD_OP_MIN;
    size_t tmp_bytes = (size_t)(node->size ? node->size : 1) * sizeof(double) * (extreme ? 2 : 1);
    void *tmp = ad_buf_alloc(T, tmp_bytes);
    if (!tmp) return ad_err(AD_ERR_MEMORY, "jvp of %s: out of memory", op_label(node->op));
    if (extreme) {
        if (x->dtype == AD_F64) EXTREME_JVP(double); else EXTREME_JVP(float);
    } else {
        double scale = node->op == AD_OP_MEAN ? 1.0 / (double)count : 1.0;
        if (node->op == AD_OP_MEAN && count == 0) scale = NAN;
        size_t isz = ad_itemsize(x->dtype);
        for (int64_t r = 0; r < k; r++) {
            /* views of direction r: same shapes, data in the tangent buffers */
            ad_node xr = *node->in[0], nr = *node;
            xr.data = (char *)tin[0] + (size_t)(r * xr.size) * isz;
            nr.data = (char *)tout + (size_t)(r * nr.size) * isz;
            const ad_node *x = &xr;
            ad_node *n = &nr;
            if (x->dtype == AD_F64) SUM_FWD(double); else SUM_FWD(float);
        }
    }
    ad_buf_free(T, tmp, tmp_bytes);
    return AD_OK;
}

/* ---------------- differentiable rules (recorded ops, for higher order) ---------------- */

static int same_dims(int na, const int64_t *a, int nb, const int64_t *b)
{
    return na == nb && !memcmp(a, b, (size_t)na * sizeof(int64_t));
}

int ad_rec_expand(ad_tape *T, ad_node *g, const ad_node *x, uint64_t axes, ad_node **out)
{
    int64_t keep[AD_MAXDIM];
    for (int i = 0; i < x->ndim; i++) keep[i] = (axes & ((uint64_t)1 << i)) ? 1 : x->shape[i];
    ad_node *k;
    int st = ad_rec_reshape(T, g, x->ndim, keep, &k);
    if (st) return st;
    if (same_dims(x->ndim, keep, x->ndim, x->shape)) { *out = k; return AD_OK; }
    st = ad_mk_broadcast_to(T, k, x->ndim, x->shape, out);
    ad_node_unref(T, k);
    return st;
}

int ad_rec_unbroadcast(ad_tape *T, ad_node *c, int ndim, const int64_t *shape, ad_node **out)
{
    int lead = c->ndim - ndim;
    if (lead < 0) {
        char b1[160], b2[160];
        return ad_err(AD_ERR_RUNTIME, "internal: a contribution of shape %s cannot be summed down to shape %s",
                      ad_shape_str(b1, sizeof b1, c->ndim, c->shape), ad_shape_str(b2, sizeof b2, ndim, shape));
    }
    uint64_t mask = 0;
    for (int i = 0; i < c->ndim; i++)
        if (i < lead || (shape[i - lead] == 1 && c->shape[i] != 1)) mask |= (uint64_t)1 << i;
    ad_node *s = c;
    int st;
    c->refs++;
    if (mask) {
        st = ad_mk_reduce(T, AD_OP_SUM, c, mask, 0, &s);
        ad_node_unref(T, c);
        if (st) return st;
    }
    st = ad_rec_reshape(T, s, ndim, shape, out);
    ad_node_unref(T, s);
    return st;
}

/* sum: the cotangent broadcast back over the reduced axes (sum and broadcast are duals); mean
 * scales it first, as its numeric VJP does. */
static int vjp_rec_reduce_sum(ad_tape *T, ad_node *n, ad_node *g, ad_node **out)
{
    const ad_node *x = n->in[0];
    if (n->op == AD_OP_SUM) return ad_rec_expand(T, g, x, n->axes, out);
    int64_t count = reduced_count(x, n->axes);
    ad_node *scaled;
    int st = ad_mk_unary(T, AD_OP_MUL_S, g, 1.0 / (double)(count ? count : 1), 0, &scaled);
    if (st) return st;
    st = ad_rec_expand(T, scaled, x, n->axes, out);
    ad_node_unref(T, scaled);
    return st;
}

/* max/min are piecewise constant in their winners, so the rules take them as constants from the
 * values: hit marks the elements equal to their slice's result (the NaNs of a NaN result), cnt
 * (shaped like n; NULL when no slice has a tie) how many share each result. */
static int extreme_winners(ad_tape *T, ad_node *n, uint8_t **hit_out, size_t *hit_bytes, ad_node **cnt_out)
{
    const ad_node *x = n->in[0];
    uint64_t mask = n->axes;
    size_t hb = (size_t)(x->size ? x->size : 1);
    uint8_t *hit = ad_buf_alloc(T, hb);
    if (!hit) return ad_err(AD_ERR_MEMORY, "differentiable rule of %s: out of memory", op_label(n->op));
    ad_node *cnt;
    int st = ad_mk_full(T, n->dtype, n->ndim, n->shape, 0, &cnt);
    if (st) { ad_buf_free(T, hit, hb); return st; }
    int ties = 0;
#define WINNERS(TT) do {                                                                \
        const TT *X = x->data, *Y = n->data; TT *C = cnt->data;                        \
        REDUCE_WALK(for (int64_t i = 0; i < len; i++) {                                \
                int64_t o = oo + i * dout, e = ox + i * dx;                            \
                hit[e] = IS_HIT(X[e], Y[o]);                                           \
                C[o] += hit[e];                                                        \
            });                                                                        \
        for (int64_t i = 0; i < n->size; i++) ties |= C[i] > 1;                        \
    } while (0)
    if (n->dtype == AD_F64) WINNERS(double); else WINNERS(float);
#undef WINNERS
    if (!ties) { ad_node_unref(T, cnt); cnt = NULL; }
    *hit_out = hit;
    *hit_bytes = hb;
    *cnt_out = cnt;
    return AD_OK;
}

/* where(hit, v, 0): selection, so the elements that lost get exactly 0 whatever v holds */
static int select_hits(ad_tape *T, const ad_node *x, const uint8_t *hit, ad_node *v, ad_node **out)
{
    ad_node *zero;
    int st = ad_mk_full(T, v->dtype, 0, NULL, 0, &zero);
    if (st) return st;
    st = ad_mk_where(T, x->ndim, x->shape, hit, v, zero, out);
    ad_node_unref(T, zero);
    return st;
}

/* max/min: the cotangent, divided among tied winners, goes to the winners:
 * where(hit, expand(g / cnt), 0) */
static int vjp_rec_extreme(ad_tape *T, ad_node *n, ad_node *g, ad_node **out)
{
    uint8_t *hit;
    size_t hb;
    ad_node *cnt, *share = NULL, *wide = NULL;
    int st = extreme_winners(T, n, &hit, &hb, &cnt);
    if (st) return st;
    if (cnt && (st = ad_mk_binary(T, AD_OP_DIV, g, cnt, &share))) goto done;
    if ((st = ad_rec_expand(T, share ? share : g, n->in[0], n->axes, &wide))) goto done;
    st = select_hits(T, n->in[0], hit, wide, out);
done:
    if (share) ad_node_unref(T, share);
    if (wide) ad_node_unref(T, wide);
    if (cnt) ad_node_unref(T, cnt);
    ad_buf_free(T, hit, hb);
    return st;
}

int ad_vjp_rec_reduce(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    (void)which;
    if (n->op == AD_OP_SUM || n->op == AD_OP_MEAN) return vjp_rec_reduce_sum(T, n, g, out);
    return vjp_rec_extreme(T, n, g, out);
}

/* JVP: sum and mean reduce the tangent as they reduce the value; max/min pass on the mean of the
 * winners' tangents, sum(where(hit, t, 0)) / cnt. */
int ad_jvp_rec_reduce(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    if (n->op == AD_OP_SUM || n->op == AD_OP_MEAN) return ad_mk_reduce(T, n->op, tin[0], n->axes, n->keepdims, out);
    uint8_t *hit;
    size_t hb;
    ad_node *cnt, *picked = NULL, *s = NULL;
    int st = extreme_winners(T, n, &hit, &hb, &cnt);
    if (st) return st;
    if ((st = select_hits(T, n->in[0], hit, tin[0], &picked))) goto done;
    if ((st = ad_mk_reduce(T, AD_OP_SUM, picked, n->axes, n->keepdims, cnt ? &s : out))) goto done;
    if (cnt) st = ad_mk_binary(T, AD_OP_DIV, s, cnt, out);
done:
    if (s) ad_node_unref(T, s);
    if (picked) ad_node_unref(T, picked);
    if (cnt) ad_node_unref(T, cnt);
    ad_buf_free(T, hit, hb);
    return st;
}
