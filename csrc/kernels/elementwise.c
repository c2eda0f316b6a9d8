/* Elementwise ops: the drivers. Every op's formulas live in pyautodiff/opdefs.py, one row each,
 * and become small numeric kernels (ops_unary_*.c, ops_binary.c: the forward; w * d_j, the
 * derivative by input j times a cotangent or tangent w; the second-order coefficients h_jk) that
 * compute one formula over a contiguous run. This file walks the broadcast shapes and feeds
 * those kernels, once for all ops:
 *   VJP           contribution_j = g * d_j      (summed over broadcast axes when the sweep asks)
 *   JVP           tangent        = sum_j t_j * d_j
 *   second order  contribution_j = g * sum_k t_k * h_jk
 *   recorded      the same products as recorded ops, from the generated rec_d (higher order).
 *
 * NaN-safety: a zero cotangent or tangent contributes exactly zero, even where the derivative is
 * inf or NaN, so masked branches such as where(x > 0, sqrt(x), 0) keep finite gradients (in the
 * generated w * d kernels, safe_product below, and mul_zero_safe in the recorded rules). A nonzero
 * cotangent stays IEEE: d/dx sqrt(x) at 0 is +inf. For routing ops (maximum, minimum) a zero
 * derivative gives exactly zero whatever the cotangent.
 *
 * Broadcast operands are walked in runs along the innermost coalesced axis; a run whose operands
 * are not all contiguous is processed in chunks of CHUNK elements gathered into stack buffers, so
 * that every generated kernel is one plain loop over contiguous data (and the build stays small). */
#include "../core.h"
#include <math.h>
#include <string.h>

enum { CHUNK = AD_PAR_ALIGN };

static const ad_ew_kernels *kernels_of(int op)
{
    if (op >= AD_OP_UNARY_FIRST && op <= AD_OP_UNARY_LAST) return &ad_ew_unary[op - AD_OP_UNARY_FIRST];
    if (op >= AD_OP_BINARY_FIRST && op <= AD_OP_BINARY_LAST) return &ad_ew_binary[op - AD_OP_BINARY_FIRST];
    return NULL;
}

/* ---------------- runs over the output, with the inputs broadcast to it ---------------- */

typedef struct {
    ad_iter it;
    int64_t idx[AD_MAXDIM];
    int64_t oo, oa, ob;        /* the run's first element in out, a, b */
    int64_t len, dA, dB;       /* its length and a's and b's element strides along it */
    int single;
} runs;

/* b NULL: a unary op, one contiguous run. Returns 0 when there is nothing to walk. */
static int runs_init(runs *r, const ad_node *n, const ad_node *a, const ad_node *b)
{
    r->oo = r->oa = r->ob = 0;
    /* nothing broadcast (same sizes: at most leading 1s differ): one contiguous run, no iterator */
    r->single = !b || (a->size == n->size && b->size == n->size);
    if (r->single) {
        r->len = n->size;
        r->dA = 1;
        r->dB = b ? 1 : 0;
        return n->size > 0;
    }
    int64_t sa[AD_MAXDIM], sb[AD_MAXDIM], so[AD_MAXDIM];
    ad_contig_strides(n->ndim, n->shape, so);
    ad_bcast_strides(a->ndim, a->shape, n->ndim, n->shape, sa);
    ad_bcast_strides(b->ndim, b->shape, n->ndim, n->shape, sb);
    int64_t *strides[3] = {so, sa, sb};
    ad_iter_init(&r->it, 3, n->ndim, n->shape, strides);
    memset(r->idx, 0, sizeof r->idx);
    int last = r->it.ndim - 1;
    r->len = r->it.shape[last];
    r->dA = r->it.st[1][last];
    r->dB = r->it.st[2][last];
    return n->size > 0;
}

static int runs_next(runs *r)
{
    return !r->single && !ad_iter_next(&r->it, r->idx, &r->oo, &r->oa, &r->ob);
}

/* r moved to run k (of n->size / len, in the walk's order), for a thread's part of the runs */
static void runs_seek(runs *r, int64_t k)
{
    r->oo = r->oa = r->ob = 0;
    for (int d = r->it.ndim - 2; d >= 0; d--) {
        r->idx[d] = k % r->it.shape[d];
        k /= r->it.shape[d];
        r->oo += r->idx[d] * r->it.st[0][d];
        r->oa += r->idx[d] * r->it.st[1][d];
        r->ob += r->idx[d] * r->it.st[2][d];
    }
}

/* A stack buffer for CHUNK elements of an operand that is not contiguous along a run. */
typedef struct {
    union { double d[CHUNK]; float f[CHUNK]; } v;
    const void *bcast;   /* the element it holds CHUNK copies of (a broadcast operand), or NULL */
} chunk;

/* m <= CHUNK elements of p from element `off` at stride st: p itself when contiguous, else
 * gathered into buf. A broadcast operand (st == 0) is copied out once per value, not per chunk:
 * x * w with a scalar w costs one fill, not one per 256 elements. */
static const void *view(int dtype, const void *p, int64_t off, int64_t st, int64_t m, chunk *buf)
{
    if (!p) return NULL;
    size_t isz = ad_itemsize(dtype);
    const char *s = (const char *)p + off * (int64_t)isz;
    if (st == 1) return s;
    if (st == 0) {
        if (buf->bcast != s) {
            if (dtype == AD_F64) { double x = *(const double *)s; for (int i = 0; i < CHUNK; i++) buf->v.d[i] = x; }
            else { float x = *(const float *)s; for (int i = 0; i < CHUNK; i++) buf->v.f[i] = x; }
            buf->bcast = s;
        }
        return &buf->v;
    }
    buf->bcast = NULL;
    if (dtype == AD_F64) for (int64_t i = 0; i < m; i++) buf->v.d[i] = ((const double *)s)[i * st];
    else for (int64_t i = 0; i < m; i++) buf->v.f[i] = ((const float *)s)[i * st];
    return &buf->v;
}

static void *at(int dtype, void *p, int64_t off) { return (char *)p + off * (int64_t)ad_itemsize(dtype); }
static const void *cat(int dtype, const void *p, int64_t off)
{
    return p ? (const char *)p + off * (int64_t)ad_itemsize(dtype) : NULL;
}

/* out (+)= w * d with the NaN-safety rule, for the second-order terms (the first-order kernels
 * have it fused, from the generator) */
#define DEF_SAFE_PRODUCT(T, SUF)                                                                  \
    static void safe_product_##SUF(const T *w, const T *d, T *out, int64_t m, int acc)            \
    {                                                                                             \
        if (acc) for (int64_t i = 0; i < m; i++) out[i] += SAFE(w[i], w[i] * d[i]);               \
        else for (int64_t i = 0; i < m; i++) out[i] = SAFE(w[i], w[i] * d[i]);                    \
    }
DEF_SAFE_PRODUCT(double, d)
DEF_SAFE_PRODUCT(float, f)

static void safe_product(int dtype, const void *w, const void *d, void *out, int64_t m, int acc)
{
    if (dtype == AD_F64) safe_product_d(w, d, out, m, acc);
    else safe_product_f(w, d, out, m, acc);
}

static void fill_zero(int dtype, void *p, int64_t m) { memset(p, 0, (size_t)m * ad_itemsize(dtype)); }

/* ---------------- threads ----------------
 * A pass whose operands are all contiguous over the whole output (nothing broadcast, nothing
 * summed) is split over the pool (threads.c) when it is long enough to pay for the dispatch; an
 * element's value does not depend on the split. */
enum { PAR_GRAIN = 32768 };

typedef struct {
    const ad_ew_kernels *K;
    const ad_node *n;
    const void *a, *b;         /* forward: the operands (n is not linked to them yet) */
    const void *g;             /* VJP: the cotangent (one value when uniform) */
    void *out;
    int which, both, uniform, acc;
} ew_job;

static void fwd_part(void *p, int64_t lo, int64_t hi)
{
    const ew_job *j = p;
    int dt = j->n->dtype;
    const void *in[3] = {cat(dt, j->a, lo), cat(dt, j->b, lo), NULL};
    j->K->fwd[dt](in, at(dt, j->out, lo), hi - lo, j->n->c);
}

/* g * d_which (both inputs' sum when j->both) over [lo, hi): in one call per kernel, or chunk by
 * chunk from copies of a uniform cotangent */
static void vjp_part(void *p, int64_t lo, int64_t hi)
{
    const ew_job *j = p;
    const ad_node *n = j->n;
    int dt = n->dtype;
    chunk bg;
    bg.bcast = NULL;
    int64_t step = j->uniform ? CHUNK : hi - lo;
    for (int64_t k = lo; k < hi; k += step) {
        int64_t m = hi - k < step ? hi - k : step;
        const void *in[3] = {cat(dt, n->in[0]->data, k), n->nin > 1 ? cat(dt, n->in[1]->data, k) : NULL,
                             cat(dt, n->data, k)};
        const void *gk = j->uniform ? view(dt, j->g, 0, 0, m, &bg) : cat(dt, j->g, k);
        void *out = at(dt, j->out, k);
        int wrote = 0;
        for (int w = j->which; w <= (j->both ? 1 : j->which); w++) {
            if (!j->K->d[w][dt]) continue;
            j->K->d[w][dt](in, gk, out, m, n->c, j->acc || wrote);
            wrote = 1;
        }
        if (!wrote && !j->acc) fill_zero(dt, out, m);
    }
}

/* ---------------- forward ---------------- */

/* Runs [lo, hi) of a broadcast forward: each run is computed alike (its chunks counted from its
 * own start) whichever part it falls in, so the runs can be shared over threads. */
typedef struct { const ad_ew_kernels *K; ad_node *n; const ad_node *a, *b; runs r; } bc_job;

static void fwd_runs(void *p, int64_t lo, int64_t hi)
{
    const bc_job *j = p;
    ad_node *n = j->n;
    const ad_node *a = j->a, *b = j->b;
    int dt = n->dtype;
    ad_ew_fn f = j->K->fwd[dt];
    runs r = j->r;
    runs_seek(&r, lo);
    chunk ba, bb;
    ba.bcast = bb.bcast = NULL;
    for (int64_t q = lo; q < hi; q++) {
        /* contiguous operands go in one call; others in gathered chunks */
        int64_t step = (r.dA == 1 && (!b || r.dB == 1)) ? r.len : CHUNK;
        for (int64_t k = 0; k < r.len; k += step) {
            int64_t m = r.len - k < step ? r.len - k : step;
            const void *in[3] = {view(dt, a->data, r.oa + k * r.dA, r.dA, m, &ba),
                                 b ? view(dt, b->data, r.ob + k * r.dB, r.dB, m, &bb) : NULL, NULL};
            f(in, at(dt, n->data, r.oo + k), m, n->c);
        }
        if (q + 1 < hi) runs_next(&r);
    }
}

static void forward(const ad_ew_kernels *K, ad_node *n, const ad_node *a, const ad_node *b)
{
    if (!b || (a->size == n->size && b->size == n->size)) {
        ew_job j = {K, n, a->data, b ? b->data : NULL, NULL, n->data, 0, 0, 0, 0};
        /* a small op (most scalar graphs) calls its kernel here: the pool's bookkeeping would be
         * a tenth of a 0-d op's C time */
        if (n->size >= 2 * PAR_GRAIN) ad_parallel(n->size, PAR_GRAIN, AD_PAR_ALIGN, fwd_part, &j);
        else if (n->size) fwd_part(&j, 0, n->size);
        return;
    }
    bc_job j = {.K = K, .n = n, .a = a, .b = b};
    if (!runs_init(&j.r, n, a, b)) return;
    int64_t nruns = n->size / j.r.len;
    if (n->size >= 2 * PAR_GRAIN && nruns >= 2)
        ad_parallel(nruns, j.r.len >= PAR_GRAIN ? 1 : PAR_GRAIN / j.r.len, 1, fwd_runs, &j);
    else
        fwd_runs(&j, 0, nruns);
}

/* ---------------- VJP ---------------- */

/* The inputs of n's kernels for m elements of the run at k: a, b gathered, y contiguous. */
static void run_inputs(const ad_node *n, const runs *r, int64_t k, int64_t m, chunk *ba, chunk *bb,
                       const void *in[3])
{
    int dt = n->dtype;
    const ad_node *a = n->in[0], *b = n->nin > 1 ? n->in[1] : NULL;
    in[0] = view(dt, a->data, r->oa + k * r->dA, r->dA, m, ba);
    in[1] = b ? view(dt, b->data, r->ob + k * r->dB, r->dB, m, bb) : NULL;
    in[2] = cat(dt, n->data, r->oo + k);
}

/* Sum of m values in eight lanes carried across the chunks of one run (lane = element % 8 for
 * whole blocks of eight, the tail in lane 0), the order AD_SUM uses: a contribution summed while
 * it is written equals the one summed afterwards by the sink. */
void ad_ew_lane_sum(int dtype, const void *v, int64_t k0, int64_t m, int64_t len, double *p)
{
    /* k0 is a multiple of CHUNK, so of 8: the chunk's whole blocks start at lane 0 */
    int64_t whole = len - len % 8 - k0;
    int64_t mw = whole <= 0 ? 0 : whole < m ? whole : m, i = 0;
    if (dtype == AD_F64) {
        const double *x = v;
        for (; i + 8 <= mw; i += 8)
            for (int l = 0; l < 8; l++) p[l] += x[i + l];
        for (; i < m; i++) p[0] += x[i];
    } else {
        const float *x = v;
        for (; i + 8 <= mw; i += 8)
            for (int l = 0; l < 8; l++) p[l] += x[i + l];
        for (; i < m; i++) p[0] += x[i];
    }
}

/* Contribution of n's cotangent g to input `which` (or to both, AD_BOTH): g * d_which, written
 * into the sink directly, or summed over input `which`'s broadcast axes as it is written. */
static int vjp_ew(ad_node *n, const void *g, int which, ad_sink *s)
{
    const ad_ew_kernels *K = kernels_of(n->op);
    int dt = n->dtype;
    int both = which == AD_BOTH;
    int j = both ? 0 : which;
    int uniform = s->g_uniform;   /* g is one value: a chunk of copies of it stands for g */
    if (s->reduce && !s->accumulate) fill_zero(dt, s->dst, n->in[j]->size);
    runs r;
    if (!runs_init(&r, n, n->in[0], n->nin > 1 ? n->in[1] : NULL)) {
        if (!s->accumulate && !s->reduce) fill_zero(dt, s->dst, s->size);
        return AD_OK;
    }
    if (r.single && !s->reduce && n->size >= 2 * PAR_GRAIN) {
        ew_job job = {K, n, NULL, NULL, g, s->dst, j, both, uniform, s->accumulate};
        ad_parallel(n->size, PAR_GRAIN, AD_PAR_ALIGN, vjp_part, &job);
        return AD_OK;
    }
    int64_t dR = j == 0 ? r.dA : r.dB;
    /* the strides along a run are the same for every run: decide the route once */
    int contiguous = r.dA == 1 && (n->nin < 2 || r.dB == 1);
    if (contiguous && !uniform && (!s->reduce || dR == 1)) {
        /* the common case, each run in one call per input straight into the sink (an input
         * summed over outer axes only adds into its adjoint at its own offsets) */
        ad_ew_wfn f0 = K->d[j][dt], f1 = both ? K->d[1][dt] : NULL;
        int acc = s->reduce || s->accumulate;
        do {
            const void *in[3] = {cat(dt, n->in[0]->data, r.oa), n->nin > 1 ? cat(dt, n->in[1]->data, r.ob) : NULL,
                                 cat(dt, n->data, r.oo)};
            void *out = at(dt, s->dst, !s->reduce ? r.oo : j == 0 ? r.oa : r.ob);
            const void *gk = cat(dt, g, r.oo);
            if (f0) f0(in, gk, out, r.len, n->c, acc);
            if (f1) f1(in, gk, out, r.len, n->c, acc || f0);
            if (!f0 && !f1 && !acc) fill_zero(dt, out, r.len);
        } while (runs_next(&r));
        return AD_OK;
    }
    chunk ba, bb, bc, bg;
    ba.bcast = bb.bcast = bg.bcast = NULL;
    do {
        double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t k = 0; k < r.len; k += CHUNK) {
            int64_t m = r.len - k < CHUNK ? r.len - k : CHUNK;
            const void *in[3];
            run_inputs(n, &r, k, m, &ba, &bb, in);
            const void *gk = uniform ? view(dt, g, 0, 0, m, &bg) : cat(dt, g, r.oo + k);
            /* where the input runs along the output (summed over outer axes only), its
             * contributions add straight into its adjoint; summed along the run, or strided,
             * they are formed in a chunk first */
            int direct = !s->reduce || dR == 1;
            void *out = !s->reduce ? at(dt, s->dst, r.oo + k)
                        : dR == 1 ? at(dt, s->dst, (j == 0 ? r.oa : r.ob) + k) : (void *)&bc.v;
            int acc = s->reduce ? dR == 1 : s->accumulate, wrote = 0;
            for (int w = j; w <= (both ? 1 : j); w++) {
                if (!K->d[w][dt]) continue;
                K->d[w][dt](in, gk, out, m, n->c, acc || wrote);
                wrote = 1;
            }
            if (!wrote && !acc) fill_zero(dt, out, m);
            if (direct) continue;
            if (dR == 0) {
                ad_ew_lane_sum(dt, &bc.v, k, m, r.len, p);
            } else {
                int64_t o = (j == 0 ? r.oa : r.ob) + k * dR;
                if (dt == AD_F64) for (int64_t i = 0; i < m; i++) ((double *)s->dst)[o + i * dR] += bc.v.d[i];
                else for (int64_t i = 0; i < m; i++) ((float *)s->dst)[o + i * dR] += bc.v.f[i];
            }
        }
        if (s->reduce && dR == 0) {
            double total = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            int64_t o = j == 0 ? r.oa : r.ob;
            if (dt == AD_F64) ((double *)s->dst)[o] += total;
            else ((float *)s->dst)[o] += (float)total;
        }
    } while (runs_next(&r));
    return AD_OK;
}

int ad_vjp_unary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    return vjp_ew(n, g, which, s);
}

int ad_vjp_binary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    return vjp_ew(n, g, which, s);
}

/* ---------------- JVP: k directions, sum_j t_j * d_j ---------------- */

static int jvp_ew(ad_node *n, const void *const *tin, int64_t kdir, void *tout)
{
    const ad_ew_kernels *K = kernels_of(n->op);
    int dt = n->dtype;
    int nin = n->nin;
    size_t isz = ad_itemsize(dt);
    runs r;
    if (!runs_init(&r, n, n->in[0], nin > 1 ? n->in[1] : NULL)) return AD_OK;
    chunk ba, bb, bt;
    ba.bcast = bb.bcast = bt.bcast = NULL;
    do {
        int64_t step = r.dA == 1 && (nin < 2 || r.dB == 1) ? r.len : CHUNK;
        for (int64_t k = 0; k < r.len; k += step) {
            int64_t m = r.len - k < step ? r.len - k : step;
            const void *in[3];
            run_inputs(n, &r, k, m, &ba, &bb, in);
            for (int64_t q = 0; q < kdir; q++) {
                void *to = at(dt, tout, q * n->size + r.oo + k);
                int wrote = 0;
                for (int j = 0; j < nin; j++) {
                    if (!tin[j] || !K->d[j][dt]) continue;
                    int64_t off = j == 0 ? r.oa : r.ob, st = j == 0 ? r.dA : r.dB;
                    const void *t = view(dt, cat(dt, tin[j], q * n->in[j]->size), off + k * st, st, m, &bt);
                    K->d[j][dt](in, t, to, m, n->c, wrote);
                    wrote = 1;
                }
                if (!wrote) memset(to, 0, (size_t)m * isz);
            }
        }
    } while (runs_next(&r));
    return AD_OK;
}

int ad_jvp_unary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    return jvp_ew(n, tin, k, tout);
}

int ad_jvp_binary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    return jvp_ew(n, tin, k, tout);
}

/* ---------------- second order (ad_hvp): g * sum_k t_k * h_{which,k} ----------------
 * d/de of the VJP as the primals move along the tangents, g fixed; y's own motion is inside h.
 * Each tangent's term is safe on its own, so a zero tangent adds exactly 0 beside an infinite
 * coefficient; the sink is output-shaped (never reduce). */
static int vjp2_ew(ad_node *n, const void *g, const void *const *tin, int which, ad_sink *s)
{
    const ad_ew_kernels *K = kernels_of(n->op);
    int dt = n->dtype, nin = n->nin;
    runs r;
    if (!runs_init(&r, n, n->in[0], nin > 1 ? n->in[1] : NULL)) {
        if (!s->accumulate) fill_zero(dt, s->dst, s->size);
        return AD_OK;
    }
    chunk ba, bb, bh, bt, bi, bg;
    ba.bcast = bb.bcast = bt.bcast = bg.bcast = NULL;
    do {
        for (int64_t k = 0; k < r.len; k += CHUNK) {
            int64_t m = r.len - k < CHUNK ? r.len - k : CHUNK;
            const void *in[3];
            run_inputs(n, &r, k, m, &ba, &bb, in);
            int wrote = 0;
            for (int q = 0; q < nin; q++) {
                ad_ew_fn h = K->h[which][q][dt];
                if (!h || !tin[q]) continue;
                int64_t off = q == 0 ? r.oa : r.ob, st = q == 0 ? r.dA : r.dB;
                const void *t = view(dt, tin[q], off + k * st, st, m, &bt);
                h(in, &bh.v, m, n->c);
                safe_product(dt, t, &bh.v, &bi.v, m, wrote);
                wrote = 1;
            }
            void *dst = at(dt, s->dst, r.oo + k);
            if (!wrote) {
                if (!s->accumulate) fill_zero(dt, dst, m);
                continue;
            }
            const void *gk = s->g_uniform ? view(dt, g, 0, 0, m, &bg) : cat(dt, g, r.oo + k);
            safe_product(dt, gk, &bi.v, dst, m, s->accumulate);
        }
    } while (runs_next(&r));
    return AD_OK;
}

int ad_vjp2_unary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                  ad_sink *s)
{
    (void)T; (void)tout;
    return vjp2_ew(n, g, tin, which, s);
}

int ad_vjp2_binary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                   ad_sink *s)
{
    (void)T; (void)tout;
    return vjp2_ew(n, g, tin, which, s);
}

/* ---------------- constructing the ops ---------------- */

/* float32 meeting float64 computes in float64, as NumPy does; the cast is a node of its own so
 * the gradient flows back as float32. */
static int promote(ad_tape *T, ad_node **a, ad_node **b, ad_node **tmp)
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

int ad_mk_unary(ad_tape *T, int op, ad_node *x, double c0, double c1, ad_node **out)
{
    if (op < AD_OP_UNARY_FIRST || op > AD_OP_UNARY_LAST)
        return ad_err(AD_ERR_TYPE, "unary: op code %d is not a unary elementwise op", op);
    ad_node *n;
    int st = ad_node_new(T, op, x->dtype, x->ndim, x->shape, &n);
    if (st) return st;
    n->c[0] = c0;
    n->c[1] = c1;
    forward(kernels_of(op), n, x, NULL);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int ad_mk_binary(ad_tape *T, int op, ad_node *a, ad_node *b, ad_node **out)
{
    if (op < AD_OP_BINARY_FIRST || op > AD_OP_BINARY_LAST)
        return ad_err(AD_ERR_TYPE, "binary: op code %d is not a binary elementwise op", op);
    ad_node *n, *tmp = NULL;
    int nout, st;
    int64_t shape[AD_MAXDIM];
    if (!(st = ad_broadcast_shapes(ad_ops[op].name, a->ndim, a->shape, b->ndim, b->shape, &nout, shape)) &&
        !(st = promote(T, &a, &b, &tmp)) &&
        !(st = ad_node_new(T, op, a->dtype, nout, shape, &n))) {
        forward(kernels_of(op), n, a, b);
        ad_node *ins[2] = {a, b};
        if (!(st = ad_record(T, n, 2, ins))) *out = n;
    }
    if (tmp) ad_node_unref(T, tmp);
    return st;
}

int ad_fwd_ew(ad_node *n, ad_node *const *ins)
{
    forward(kernels_of(n->op), n, ins[0], n->op <= AD_OP_UNARY_LAST ? NULL : ins[1]);
    return AD_OK;
}

int64_t ad_unary(int op, int64_t hx, double c0, double c1)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_unary(T, op, x, c0, c1, &n));
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

/* ---------------- the differentiable rules ---------------- */

/* A constant node shaped like n (no graph), values from fn at every element. */
int ad_ew_eval(ad_tape *T, ad_node *n, const ad_ew_fn fn[2], ad_node **out)
{
    ad_node *c;
    int st = ad_node_new(T, AD_OP_LEAF, n->dtype, n->ndim, n->shape, &c);
    if (st) return st;
    int dt = n->dtype;
    runs r;
    if (runs_init(&r, n, n->in[0], n->nin > 1 ? n->in[1] : NULL)) {
        chunk ba, bb;
        ba.bcast = bb.bcast = NULL;
    ba.bcast = bb.bcast = NULL;
        do {
            for (int64_t k = 0; k < r.len; k += CHUNK) {
                int64_t m = r.len - k < CHUNK ? r.len - k : CHUNK;
                const void *in[3];
                run_inputs(n, &r, k, m, &ba, &bb, in);
                fn[dt](in, at(dt, c->data, r.oo + k), m, n->c);
            }
        } while (runs_next(&r));
    }
    *out = c;
    return AD_OK;
}

/* cond's values (0 or 1) at every element of `like`'s shape, as the bytes ad_mk_where takes. */
static uint8_t *mask_of(ad_tape *T, const ad_node *vals, int nonzero)
{
    size_t bytes = (size_t)(vals->size ? vals->size : 1);
    uint8_t *m = ad_buf_alloc(T, bytes);
    if (!m) return NULL;
    for (int64_t i = 0; i < vals->size; i++) {
        double v = vals->dtype == AD_F64 ? ((const double *)vals->data)[i] : ((const float *)vals->data)[i];
        m[i] = nonzero ? v != 0 : v == 1;
    }
    return m;
}

static int select_by(ad_tape *T, const ad_node *vals, int nonzero, ad_node *p, ad_node *q, ad_node **out)
{
    uint8_t *m = mask_of(T, vals, nonzero);
    if (!m) return ad_err(AD_ERR_MEMORY, "out of memory for a mask of %lld elements", (long long)vals->size);
    int st = ad_mk_where(T, vals->ndim, vals->shape, m, p, q, out);
    ad_buf_free(T, m, (size_t)(vals->size ? vals->size : 1));
    return st;
}

int ad_ew_where(ad_tape *T, ad_node *n, const ad_ew_fn cond[2], ad_node *p, ad_node *q, ad_node **out)
{
    ad_node *c;
    int st = ad_ew_eval(T, n, cond, &c);
    if (st) return st;
    st = select_by(T, c, 0, p, q, out);
    ad_node_unref(T, c);
    return st;
}

static int zeros_like(ad_tape *T, const ad_node *n, ad_node **out)
{
    return ad_mk_full(T, n->dtype, n->ndim, n->shape, 0, out);
}

/* w * d_j as recorded ops, w a cotangent (shaped like n) or input j's tangent. */
static int times_d(ad_tape *T, ad_node *n, int j, ad_node *w, ad_node **out)
{
    const ad_ew_kernels *K = kernels_of(n->op);
    if (!K->rec_d[j]) return zeros_like(T, n, out);
    ad_node *d;
    double c;
    int st = K->rec_d[j](T, n, &d, &c);
    if (st) return st;
    if (!d) {
        if (c == 0 && K->route) return zeros_like(T, n, out);
        if (c == 1) { w->refs++; *out = w; return AD_OK; }
        if (isfinite(c)) return ad_mk_unary(T, AD_OP_MUL_S, w, c, 0, out);
        /* w * inf: a zero w must still give 0 */
        if ((st = ad_mk_full(T, n->dtype, 0, NULL, c, &d))) return st;
    }
    /* the NaN-safety rule as an op: a zero cotangent or tangent gives exactly 0, whatever d is */
    ad_node *prod = NULL, *zero = NULL;
    st = ad_mk_binary(T, AD_OP_MUL_SAFE, w, d, &prod);
    if (!st && K->route) {
        /* where d is 0 the input gets exactly 0, even from an infinite cotangent; d is piecewise
         * constant for such ops, so d's values decide (d broadcast to n's shape first) */
        ad_node *dfull = NULL;
        if (!(st = zeros_like(T, n, &zero)) && !(st = ad_mk_binary(T, AD_OP_ADD, d, zero, &dfull))) {
            ad_node *picked;
            if (!(st = select_by(T, dfull, 1, prod, zero, &picked))) { ad_node_unref(T, prod); prod = picked; }
        }
        if (dfull) ad_node_unref(T, dfull);
        if (zero) ad_node_unref(T, zero);
    }
    ad_node_unref(T, d);
    if (st) { if (prod) ad_node_unref(T, prod); return st; }
    *out = prod;
    return AD_OK;
}

int ad_vjp_rec_ew(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    return times_d(T, n, which, g, out);
}

int ad_jvp_rec_ew(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    ad_node *sum = NULL;
    int st = AD_OK;
    for (int j = 0; j < n->nin && !st; j++) {
        if (!tin[j]) continue;
        ad_node *term, *next;
        if ((st = times_d(T, n, j, tin[j], &term))) break;
        if (!sum) { sum = term; continue; }
        st = ad_mk_binary(T, AD_OP_ADD, sum, term, &next);
        ad_node_unref(T, term);
        ad_node_unref(T, sum);
        sum = st ? NULL : next;
    }
    if (!st && !sum) st = zeros_like(T, n, &sum);
    /* an input's tangent times a constant keeps the input's shape: broadcast it to n's */
    if (!st && (sum->ndim != n->ndim || memcmp(sum->shape, n->shape, (size_t)n->ndim * sizeof(int64_t)))) {
        ad_node *zero, *full;
        if (!(st = zeros_like(T, n, &zero))) {
            st = ad_mk_binary(T, AD_OP_ADD, sum, zero, &full);
            ad_node_unref(T, zero);
            if (!st) { ad_node_unref(T, sum); sum = full; }
        }
    }
    if (st) { if (sum) ad_node_unref(T, sum); return st; }
    *out = sum;
    return AD_OK;
}
