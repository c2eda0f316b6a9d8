/* Out of memory at every allocation of every sweep, the SQLite way (tools/ctest.sh builds the core
 * with -DAD_FAULT_INJECTION for this test; csrc/fault.c). For each sweep and n = 1, 2, ... the
 * n-th allocation of the call fails, until the call no longer reaches it. After each failure:
 * the status is AD_ERR_MEMORY with a message, the state is exactly what it was (every leaf's grad
 * bit for bit, the live node and byte counts, the graph not released), and the same call run
 * again without the fault succeeds with the gradients of a run that never failed. Whatever the
 * call made is freed (live counters back to the start, LeakSanitizer at exit). The calls: every
 * sweep, on a graph with and without solve/logdet/cholesky and svd/svdvals (run on the reference
 * LU, Cholesky and SVD below), building, fusing and running a plan, and the traced training step, whose parameters'
 * values, optimizer state and step counts are part of the state that must not change. */
#include "check.h"
#include "../testing.h"
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

const char *__asan_default_options(void) { return "allocator_may_return_null=1:detect_leaks=1"; }

#define NLEAF 3
#define MAXOUT 4
#define MAXVAL 16

typedef struct {
    int64_t leaf[NLEAF];       /* x (2, 3): no grad; w (3,): a grad it owns; b (3,): a grad the caller holds too */
    int64_t held;              /* the caller's handle to b's grad */
    int64_t root;              /* a scalar */
    int64_t extra[32];         /* intermediate tensors and sweep inputs, released with the graph */
    int nextra;
    int64_t in[NLEAF];         /* the sweep's cotangent or tangents, made before the fault is armed */
    ad_plan *plan;             /* a recorded plan of the root (NULL: none), freed with the graph */
    ad_train_param_t tp[2];    /* the training step's parameters w and b, their state leaves in extra */
    int64_t fuse_from;         /* the plan's (0: AD_PLAN_FUSE_MIN, whose small values share buffers) */
    double res[MAXOUT][MAXVAL]; /* what a plan writes: the root's values, then its inputs' gradients */
} graph;

static int64_t mk(int ndim, const int64_t *shape, const double *vals, int rg)
{
    return ad_tensor_new(AD_F64, ndim, shape, vals, rg);
}

static int64_t keep(graph *g, int64_t h)
{
    CHECK(h > 0);
    g->extra[g->nextra++] = h;
    return h;
}

/* tanh(x * w + b) (w and b broadcast over rows), its rows times w (w used twice), a logsumexp
 * over x's rows: broadcasting, fan-out, matmul, reductions, a leaf used by several ops. */
static const double xv[6] = {0.5, -1, 2, 1.5, 0.25, -0.75}, wv[3] = {0.3, -0.2, 0.8}, bv[3] = {0.1, 0.2, -0.3};

static void build(graph *g)
{
    memset(g, 0, sizeof *g);
    const double gw[3] = {1, 2, 3}, gb[3] = {-1, 0.5, 4};
    int64_t s23[2] = {2, 3}, s3[1] = {3}, ax1[1] = {1};
    int64_t x = mk(2, s23, xv, 1), w = mk(1, s3, wv, 1), b = mk(1, s3, bv, 1);
    g->leaf[0] = x, g->leaf[1] = w, g->leaf[2] = b;
    int64_t t = keep(g, mk(1, s3, gw, 0));
    CHECK(ad_set_grad(w, t) == AD_OK);                    /* stored as a copy: w's own */
    int64_t u = keep(g, mk(1, s3, gb, 0));
    CHECK(ad_set_grad(b, u) == AD_OK);
    g->held = ad_grad(b);                                  /* now shared with the caller */
    int64_t xw = keep(g, ad_binary(AD_OP_MUL, x, w));
    int64_t h = keep(g, ad_unary(AD_OP_TANH, keep(g, ad_binary(AD_OP_ADD, xw, b)), 0, 0));
    int64_t p = keep(g, ad_matmul(h, w));                  /* (2,) */
    int64_t pp = keep(g, ad_reduce(AD_OP_SUM, keep(g, ad_binary(AD_OP_MUL, p, p)), -1, NULL, 0));
    int64_t l = keep(g, ad_softmax(AD_OP_LOGSUMEXP, x, 1, ax1, 0));
    g->root = ad_binary(AD_OP_ADD, pp, keep(g, ad_reduce(AD_OP_MEAN, l, -1, NULL, 0)));
    CHECK(g->root > 0);
}

static void drop_graph(graph *g)
{
    for (int i = 0; i < NLEAF; i++) ad_release(g->leaf[i]);
    ad_release(g->held);
    ad_release(g->root);
    for (int i = 0; i < g->nextra; i++) ad_release(g->extra[i]);
    ad_plan_free(g->plan);
}

typedef struct {
    int64_t live_nodes, live_bytes;
    int released;
    int has[NLEAF];
    double grad[NLEAF][MAXVAL];
    double val[NLEAF][MAXVAL];          /* the leaves' values (a training step updates them) */
    double state[2][3][MAXVAL];         /* the training step's optimizer state leaves */
    int64_t step[2];                    /* and step counts */
} snapshot;

static void values(int64_t h, double *out)
{
    ad_info_t info;
    memset(out, 0, MAXVAL * sizeof *out);
    if (ad_info(h, &info) == AD_OK && info.size <= MAXVAL) memcpy(out, info.data, (size_t)info.size * sizeof *out);
}

static snapshot snap(const graph *g)
{
    snapshot s;
    memset(&s, 0, sizeof s);
    ad_stats_t st;
    ad_stats(&st);
    s.live_nodes = st.live_nodes;
    s.live_bytes = st.live_bytes;
    ad_info_t info;
    ad_info(g->root, &info);
    s.released = info.graph_released;
    for (int i = 0; i < NLEAF; i++) {
        int64_t gh = ad_grad(g->leaf[i]);
        s.has[i] = gh > 0;
        if (gh > 0) { values(gh, s.grad[i]); ad_release(gh); }
        values(g->leaf[i], s.val[i]);
    }
    for (int i = 0; i < 2; i++) {
        s.step[i] = g->tp[i].step;
        for (int j = 0; j < 3; j++) if (g->tp[i].state[j] > 0) values(g->tp[i].state[j], s.state[i][j]);
    }
    return s;
}

/* everything but the live counters (a successful call may make tensors) */
static int same_state(const snapshot *a, const snapshot *b)
{
    return a->released == b->released && !memcmp(a->has, b->has, sizeof a->has) &&
           !memcmp(a->grad, b->grad, sizeof a->grad) && !memcmp(a->val, b->val, sizeof a->val) &&
           !memcmp(a->state, b->state, sizeof a->state) && !memcmp(a->step, b->step, sizeof a->step);
}

static int same_snapshot(const snapshot *a, const snapshot *b)
{
    return a->live_nodes == b->live_nodes && a->live_bytes == b->live_bytes && same_state(a, b);
}

/* One sweep: prep makes its inputs (g->in), run runs it on g, its new tensors into out. */
typedef struct {
    const char *name;
    void (*prep)(graph *g);
    int (*run)(graph *g, int64_t *out);
} sweep;

static int64_t full(int ndim, const int64_t *shape, double v) { return ad_full(AD_F64, ndim, shape, v, 0); }

static int backward_free(graph *g, int64_t *out) { (void)out; return ad_backward(g->root, 0, 0); }
static int backward_retain(graph *g, int64_t *out) { (void)out; return ad_backward(g->root, 0, 1); }
static int backward_graph(graph *g, int64_t *out) { (void)out; return ad_backward_graph(g->root, 0); }

static void cotangent_rows(graph *g) { int64_t s2[1] = {2}; g->in[0] = keep(g, full(1, s2, 1.5)); }
static void cotangent(graph *g) { g->in[0] = keep(g, full(0, NULL, 1.5)); }

/* k = 2 tangent directions per leaf (k = 0: one, unbatched) */
static void tangents_k(graph *g, int k)
{
    int64_t s23[3] = {k, 2, 3}, s3[2] = {k, 3};
    int b = k == 0;   /* skip the batch axis */
    g->in[0] = keep(g, full(3 - b, s23 + b, 0.5));
    g->in[1] = keep(g, full(2 - b, s3 + b, -1));
    g->in[2] = keep(g, full(2 - b, s3 + b, 2));
}
static void tangent_rows(graph *g) { tangents_k(g, 2); }
static void tangent(graph *g) { tangents_k(g, 0); }

static int vjp_rows(graph *g, int64_t *out) { return ad_vjp(g->root, g->in[0], NLEAF, g->leaf, out); }
static int jvp_rows(graph *g, int64_t *out) { return ad_jvp(g->root, NLEAF, g->leaf, g->in, 2, out); }
static int hvp_rows(graph *g, int64_t *out) { return ad_hvp(g->root, NLEAF, g->leaf, g->in, 2, out); }
static int vjp_recorded(graph *g, int64_t *out) { return ad_vjp_graph(g->root, g->in[0], NLEAF, g->leaf, out); }
/* the root twice: its second cotangent adds into a buffer of the sweep's own */
static void two_cotangents(graph *g) { cotangent(g); g->in[1] = keep(g, full(0, NULL, -0.5)); }
static int vjp_many(graph *g, int64_t *out)
{
    const int64_t roots[2] = {g->root, g->root};
    return ad_vjp_many(2, roots, g->in, NLEAF, g->leaf, out);
}
static int jvp_recorded(graph *g, int64_t *out) { return ad_jvp_graph(g->root, NLEAF, g->leaf, g->in, out); }

/* a second backward through a graph kept by the first (which the prep runs) */
static void first_backward(graph *g) { CHECK(ad_backward(g->root, 0, 1) == AD_OK); }

/* backward(seed) where the seed reaches leaves unchanged, concatenate([w, b]) + reshape(x): x's
 * grad becomes an alias of the seed (tape.c, "aliases"), w adds it into the grad it owns, b into a
 * copy of the one the caller holds. The root goes in in[1], the seed in in[0]. */
static void aliasing_root(graph *g)
{
    int64_t s6[1] = {6};
    const int64_t wb[2] = {g->leaf[1], g->leaf[2]};
    int64_t cat = keep(g, ad_concatenate(2, wb, 0, 0));
    int64_t flat = keep(g, ad_reshape(g->leaf[0], 1, s6));
    g->in[1] = keep(g, ad_binary(AD_OP_ADD, cat, flat));
    g->in[0] = keep(g, full(1, s6, 1.5));
}
static int backward_seeded(graph *g, int64_t *out) { (void)out; return ad_backward(g->in[1], g->in[0], 0); }
/* then writes to the seed and to the alias: each first copies the alias's values */
static void aliased(graph *g) { aliasing_root(g); CHECK(ad_backward(g->in[1], g->in[0], 1) == AD_OK); }
static int write_seed(graph *g, int64_t *out)
{
    static const double v[6] = {9, 9, 9, 9, 9, 9};
    (void)out;
    return ad_assign(g->in[0], v);
}
static int write_alias(graph *g, int64_t *out)
{
    (void)out;
    int64_t gx = ad_grad(g->leaf[0]);
    int st = gx > 0 ? ad_write(gx, g->leaf[0]) : (int)gx;
    ad_release(gx);
    return st;
}

/* ---- plans (replay.c), fused plans (fusion.c) and the traced training step (train_step.c) ---- */

static const int64_t s3[1] = {3}, s33[2] = {3, 3};

/* the root with a chain of elementwise ops of one shape on top, which ad_plan_fuse fuses:
 * sum(tanh(exp(x * x) + x)) + the root */
static void fusable(graph *g)
{
    int64_t x = g->leaf[0], old = keep(g, g->root);
    int64_t e = keep(g, ad_unary(AD_OP_EXP, keep(g, ad_binary(AD_OP_MUL, x, x)), 0, 0));
    int64_t t = keep(g, ad_unary(AD_OP_TANH, keep(g, ad_binary(AD_OP_ADD, e, x)), 0, 0));
    g->root = ad_binary(AD_OP_ADD, keep(g, ad_reduce(AD_OP_SUM, t, -1, NULL, 0)), old);
    CHECK(g->root > 0);
    g->fuse_from = 1;   /* fuse() fuses from one element: the plan keeps every value for it */
}

/* the plan of the root from x, w, b (all differentiated) */
static int build_plan(graph *g)
{
    const int64_t in[NLEAF] = {g->leaf[0], g->leaf[1], g->leaf[2]};
    return ad_plan_build_data(g->root, NLEAF, in, NLEAF, 0, NULL, NULL, g->fuse_from ? g->fuse_from : AD_PLAN_FUSE_MIN,
                              &g->plan);
}

static int fuse(graph *g)
{
    int64_t regions = 0;
    int st = ad_plan_fuse(g->plan, 1, &regions, NULL, NULL);
    if (!st) CHECK(regions > 0);
    return st;
}

static int plan_run(graph *g)
{
    const void *in[NLEAF] = {xv, wv, bv};
    void *grads[NLEAF] = {g->res[1], g->res[2], g->res[3]};
    return ad_plan_run(g->plan, in, g->res[0], NULL, grads);
}

static void planned(graph *g) { CHECK(build_plan(g) == AD_OK); }
static void fusable_planned(graph *g) { fusable(g); planned(g); }
static void fused(graph *g) { fusable_planned(g); CHECK(fuse(g) == AD_OK); }

/* building, fusing and running a plan in one call; on failure nothing of it is left */
static int build_fuse_run(graph *g, int64_t *out)
{
    (void)out;
    int st = build_plan(g);
    if (!st) st = fuse(g);
    if (!st) st = plan_run(g);
    if (st) { ad_plan_free(g->plan); g->plan = NULL; }
    return st;
}
static int fuse_run(graph *g, int64_t *out) { (void)out; int st = fuse(g); return st ? st : plan_run(g); }
static int run_plan(graph *g, int64_t *out) { (void)out; return plan_run(g); }

/* The training step: w (Adam with amsgrad and decay, its grad its own: overwritten in place) and
 * b (SGD with Nesterov momentum, its grad held by the caller: replaced) at step 3, x the batch. */
static const ad_optim_t groups[2] = {
    {.kind = AD_OPTIM_ADAM, .lr = 0.1, .weight_decay = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .amsgrad = 1},
    {.kind = AD_OPTIM_SGD, .lr = 0.05, .momentum = 0.9, .nesterov = 1},
};

static void trainable(graph *g)
{
    const int64_t in[NLEAF] = {g->leaf[1], g->leaf[2], g->leaf[0]};
    CHECK(ad_plan_build_data(g->root, NLEAF, in, 2, 0, NULL, NULL, g->fuse_from ? g->fuse_from : AD_PLAN_FUSE_MIN,
                             &g->plan) == AD_OK);
    const double sv[3][3] = {{0.05, -0.1, 0.2}, {0.01, 0.02, 0.03}, {0.02, 0.03, 0.04}};
    for (int i = 0; i < 2; i++) {
        ad_train_param_t *q = &g->tp[i];
        q->param = g->leaf[1 + i];
        q->step = 3;
        q->group = i;
        q->hit = 1;
        for (int j = 0; j < (i ? 1 : 3); j++) q->state[j] = keep(g, mk(1, s3, sv[j], 0));
    }
}
static void fused_trainable(graph *g) { fusable(g); trainable(g); CHECK(fuse(g) == AD_OK); }

static int train_step(graph *g, int64_t *out)
{
    (void)out;
    const void *data[1] = {xv};
    return ad_plan_train_step(g->plan, AD_TRAIN_STEP, 2, g->tp, 2, groups, data, g->res[0]);
}

/* the bindings' two phases: the forward (then their guards), the rest */
static int train_phases(graph *g, int64_t *out)
{
    (void)out;
    const void *data[1] = {xv};
    int st = ad_plan_train_step(g->plan, AD_TRAIN_FORWARD, 2, g->tp, 2, groups, data, g->res[0]);
    return st ? st : ad_plan_train_step(g->plan, AD_TRAIN_FINISH, 2, g->tp, 2, groups, data, NULL);
}

/* ---- solve, logdet, cholesky (kernels/lapack.c) ----
 * No SciPy here: the reference LU with partial pivoting and Cholesky below, in LAPACK's Fortran
 * signatures (column-major, 1-based pivots), stand in for dgetrf, dgetrs and dpotrf. */
static void ref_getrf(int *m, int *n, double *a, int *lda, int *ipiv, int *info)
{
    int N = *n, L = *lda;
    CHECK(*m == N);
    *info = 0;
    for (int k = 0; k < N; k++) {
        int p = k;
        for (int i = k + 1; i < N; i++) if (fabs(a[i + k * L]) > fabs(a[p + k * L])) p = i;
        ipiv[k] = p + 1;
        if (p != k) for (int j = 0; j < N; j++) { double t = a[k + j * L]; a[k + j * L] = a[p + j * L]; a[p + j * L] = t; }
        if (a[k + k * L] == 0) { if (!*info) *info = k + 1; continue; }
        for (int i = k + 1; i < N; i++) {
            a[i + k * L] /= a[k + k * L];
            for (int j = k + 1; j < N; j++) a[i + j * L] -= a[i + k * L] * a[k + j * L];
        }
    }
}

static void ref_getrs(char *trans, int *n, int *nrhs, double *a, int *lda, int *ipiv, double *b, int *ldb, int *info)
{
    int N = *n, L = *lda, LB = *ldb;
    CHECK(trans[0] == 'N');
    *info = 0;
    for (int c = 0; c < *nrhs; c++) {
        double *x = b + c * LB;
        for (int k = 0; k < N; k++) { int p = ipiv[k] - 1; double t = x[k]; x[k] = x[p]; x[p] = t; }
        for (int i = 0; i < N; i++) for (int j = 0; j < i; j++) x[i] -= a[i + j * L] * x[j];
        for (int i = N - 1; i >= 0; i--) {
            for (int j = i + 1; j < N; j++) x[i] -= a[i + j * L] * x[j];
            x[i] /= a[i + i * L];
        }
    }
}

static void ref_potrf(char *uplo, int *n, double *a, int *lda, int *info)
{
    int N = *n, L = *lda;
    CHECK(uplo[0] == 'L');
    *info = 0;
    for (int j = 0; j < N; j++) {
        double d = a[j + j * L];
        for (int k = 0; k < j; k++) d -= a[j + k * L] * a[j + k * L];
        if (d <= 0) { *info = j + 1; return; }
        a[j + j * L] = sqrt(d);
        for (int i = j + 1; i < N; i++) {
            double v = a[i + j * L];
            for (int k = 0; k < j; k++) v -= a[i + k * L] * a[j + k * L];
            a[i + j * L] = v / a[j + j * L];
        }
    }
}

/* A = C * w + 4 I (columns scaled by w; its lower triangle's symmetric matrix positive definite),
 * B = D * b: the root + sum(solve(A, B)^2) + logdet(A) + sum(cholesky(A)), every rule of the three
 * ops on the way of backward, vjp, jvp and hvp, and of the plan's replay */
static void with_linalg(graph *g)
{
    const double cv[9] = {0.5, -0.25, 0.1, 0.2, 0.3, -0.4, -0.1, 0.15, 0.6};
    const double dv[9] = {1, 0.5, -1, 0.25, 2, 0.75, -0.5, 1.5, 1}, iv[9] = {4, 0, 0, 0, 4, 0, 0, 0, 4};
    int64_t old = keep(g, g->root);
    int64_t a = keep(g, ad_binary(AD_OP_ADD, keep(g, ad_binary(AD_OP_MUL, keep(g, mk(2, s33, cv, 0)), g->leaf[1])),
                                  keep(g, mk(2, s33, iv, 0))));
    int64_t b = keep(g, ad_binary(AD_OP_MUL, keep(g, mk(2, s33, dv, 0)), g->leaf[2]));
    int64_t x = keep(g, ad_solve(a, b, 0));
    int64_t sx = keep(g, ad_reduce(AD_OP_SUM, keep(g, ad_binary(AD_OP_MUL, x, x)), -1, NULL, 0));
    int64_t ld = keep(g, ad_logdet(a, 0, NULL));
    int64_t sl = keep(g, ad_reduce(AD_OP_SUM, keep(g, ad_cholesky(a)), -1, NULL, 0));
    g->root = ad_binary(AD_OP_ADD, keep(g, ad_binary(AD_OP_ADD, sx, ld)), keep(g, ad_binary(AD_OP_ADD, sl, old)));
    CHECK(g->root > 0);
    g->in[0] = a, g->in[1] = b;
}
static void linalg_cotangent_rows(graph *g) { with_linalg(g); cotangent_rows(g); }
static void linalg_cotangent(graph *g) { with_linalg(g); cotangent(g); }
static void linalg_tangent_rows(graph *g) { with_linalg(g); tangent_rows(g); }
static void linalg_tangent(graph *g) { with_linalg(g); tangent(g); }
static void linalg_planned(graph *g) { with_linalg(g); planned(g); }

/* the three forwards on with_linalg's A and B (in[0], in[1]): their results, or nothing */
static int linalg_forward(graph *g, int64_t *out)
{
    out[0] = ad_solve(g->in[0], g->in[1], 0);
    out[1] = out[0] > 0 ? ad_logdet(g->in[0], 1, g->res[0]) : 0;
    out[2] = out[1] > 0 ? ad_cholesky(g->in[0]) : 0;
    for (int i = 0; i < 3; i++) {
        if (out[i] > 0) continue;
        int st = (int)out[i];
        for (int j = 0; j < i; j++) ad_release(out[j]);
        memset(out, 0, 3 * sizeof *out);
        return st;
    }
    return AD_OK;
}

/* ---- svd, svdvals (kernels/lapack.c) ----
 * The reference gesdd for dgesdd: one-sided Jacobi (Hestenes) on the columns of a (m >= n here),
 * singular values sorted descending, in LAPACK's Fortran signature (column-major). */
static void ref_gesdd(char *jobz, int *m, int *n, double *a, int *lda, double *s, double *u, int *ldu, double *vt,
                      int *ldvt, double *work, int *lwork, int *iwork, int *info)
{
    (void)iwork;
    int M = *m, N = *n, L = *lda;
    *info = 0;
    if (*lwork == -1) { work[0] = 1; return; }
    CHECK(M >= N && N <= 8);
    double v[64] = {0};
    for (int i = 0; i < N; i++) v[i + i * N] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (int p = 0; p < N; p++)
            for (int q = p + 1; q < N; q++) {
                double al = 0, be = 0, ga = 0;
                for (int r = 0; r < M; r++) {
                    al += a[r + p * L] * a[r + p * L];
                    be += a[r + q * L] * a[r + q * L];
                    ga += a[r + p * L] * a[r + q * L];
                }
                if (fabs(ga) <= 1e-15 * sqrt(al * be)) continue;
                rotated = 1;
                double z = (be - al) / (2 * ga), t = (z >= 0 ? 1 : -1) / (fabs(z) + sqrt(1 + z * z));
                double c = 1 / sqrt(1 + t * t), sn = c * t;
                for (int r = 0; r < M; r++) {
                    double x = a[r + p * L], y = a[r + q * L];
                    a[r + p * L] = c * x - sn * y, a[r + q * L] = sn * x + c * y;
                }
                for (int r = 0; r < N; r++) {
                    double x = v[r + p * N], y = v[r + q * N];
                    v[r + p * N] = c * x - sn * y, v[r + q * N] = sn * x + c * y;
                }
            }
        if (!rotated) break;
    }
    int order[8];
    double norm[8];
    for (int i = 0; i < N; i++) {
        norm[i] = 0;
        for (int r = 0; r < M; r++) norm[i] += a[r + i * L] * a[r + i * L];
        norm[i] = sqrt(norm[i]);
        order[i] = i;
    }
    for (int i = 0; i < N; i++)   /* descending */
        for (int j = i + 1; j < N; j++)
            if (norm[order[j]] > norm[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    for (int i = 0; i < N; i++) {
        int c = order[i];
        s[i] = norm[c];
        if (jobz[0] == 'N') continue;
        for (int r = 0; r < M; r++) u[r + i * *ldu] = a[r + c * L] / norm[c];
        for (int r = 0; r < N; r++) vt[i + r * *ldvt] = v[r + c * N];
    }
}

/* A = C * w + diag(5, 3, 1) (distinct singular values): the root + sum(svdvals(A)^2) + sum(P^3),
 * P the packed thin SVD of A, so that every rule of both kinds of node is on the way */
static void with_svd(graph *g)
{
    const double cv[9] = {0.5, -0.25, 0.1, 0.2, 0.3, -0.4, -0.1, 0.15, 0.6}, dv[9] = {5, 0, 0, 0, 3, 0, 0, 0, 1};
    int64_t old = keep(g, g->root), v[2], p[2];
    int64_t a = keep(g, ad_binary(AD_OP_ADD, keep(g, ad_binary(AD_OP_MUL, keep(g, mk(2, s33, cv, 0)), g->leaf[1])),
                                  keep(g, mk(2, s33, dv, 0))));
    CHECK(ad_svd(a, AD_SVD_VALS, v) == AD_OK);
    CHECK(ad_svd(a, AD_SVD_THIN, p) == AD_OK);
    keep(g, v[0]), keep(g, p[0]), keep(g, p[1]);
    int64_t sv = keep(g, ad_reduce(AD_OP_SUM, keep(g, ad_binary(AD_OP_MUL, v[0], v[0])), -1, NULL, 0));
    int64_t p3 = keep(g, ad_binary(AD_OP_MUL, p[1], keep(g, ad_binary(AD_OP_MUL, p[1], p[1]))));
    int64_t sp = keep(g, ad_reduce(AD_OP_SUM, p3, -1, NULL, 0));
    g->root = ad_binary(AD_OP_ADD, keep(g, ad_binary(AD_OP_ADD, sv, sp)), old);
    CHECK(g->root > 0);
    g->in[0] = a;
}
static void svd_cotangent_rows(graph *g) { with_svd(g); cotangent_rows(g); }
static void svd_cotangent(graph *g) { with_svd(g); cotangent(g); }
static void svd_tangent_rows(graph *g) { with_svd(g); tangent_rows(g); }
static void svd_tangent(graph *g) { with_svd(g); tangent(g); }
static void svd_planned(graph *g) { with_svd(g); planned(g); }

/* both calls on with_svd's A: the values, then the packed SVD and its values (three handles) */
static int svd_forward(graph *g, int64_t *out)
{
    int st = ad_svd(g->in[0], AD_SVD_VALS, out);   /* out[1] = 0 */
    if (!st && (st = ad_svd(g->in[0], AD_SVD_FULL, out + 1))) { ad_release(out[0]); out[0] = 0; }
    return st;
}

typedef struct { snapshot after; double out[MAXOUT][MAXVAL * 2]; double res[MAXOUT][MAXVAL]; } result;

static result outcome(graph *g, const int64_t *out)
{
    result r;
    memset(&r, 0, sizeof r);
    r.after = snap(g);
    for (int i = 0; i < MAXOUT; i++) {
        ad_info_t info;
        if (out[i] > 0 && ad_info(out[i], &info) == AD_OK && info.size <= 2 * MAXVAL)
            memcpy(r.out[i], info.data, (size_t)info.size * sizeof(double));
    }
    memcpy(r.res, g->res, sizeof r.res);
    return r;
}

static int same_result(const result *a, const result *b)
{
    return same_state(&a->after, &b->after) && !memcmp(a->out, b->out, sizeof a->out) &&
           !memcmp(a->res, b->res, sizeof a->res);
}

static void drop_out(int64_t *out)
{
    for (int i = 0; i < MAXOUT; i++) if (out[i] > 0) ad_release(out[i]);
    memset(out, 0, MAXOUT * sizeof *out);
}

static void sweep_every_allocation(sweep sw)
{
    const char *name = sw.name;
    ad_stats_t base;
    ad_stats(&base);
    graph g;
    int64_t out[MAXOUT] = {0};
    /* the reference: the sweep with no fault */
    build(&g);
    if (sw.prep) sw.prep(&g);
    CHECK(sw.run(&g, out) == AD_OK);
    result want = outcome(&g, out);
    drop_out(out);
    drop_graph(&g);
    int failures = 0;
    for (int64_t n = 1;; n++) {
        build(&g);
        if (sw.prep) sw.prep(&g);
        snapshot before = snap(&g);
        CHECK(ad_fault_arm(n) == AD_OK);
        int st = sw.run(&g, out);
        int64_t made = ad_fault_count();
        ad_fault_arm(0);
        if (st) {
            failures++;
            CHECK(st == -AD_ERR_MEMORY);
            CHECK(ad_last_error()[0] != 0);
            snapshot now = snap(&g);
            CHECK(same_snapshot(&before, &now));
            for (int i = 0; i < MAXOUT; i++) CHECK(out[i] == 0);
            if (st != -AD_ERR_MEMORY || !same_snapshot(&before, &now))
                fprintf(stderr, "    %s, allocation %lld: status %d (%s); live nodes %lld -> %lld, bytes %lld -> %lld\n",
                        name, (long long)n, st, ad_last_error(), (long long)before.live_nodes,
                        (long long)now.live_nodes, (long long)before.live_bytes, (long long)now.live_bytes);
            /* the caller frees memory and tries again: the same sweep succeeds, right */
            st = sw.run(&g, out);
            CHECK(st == AD_OK);
        } else if (made >= n) {
            /* the failed allocation was one the core can do without (e.g. a fast path's) */
        }
        result got = outcome(&g, out);
        CHECK(same_result(&want, &got));
        if (!same_result(&want, &got)) fprintf(stderr, "    %s, allocation %lld: wrong result after the retry\n", name, (long long)n);
        drop_out(out);
        drop_graph(&g);
        ad_stats_t now;
        ad_stats(&now);
        CHECK(now.live_nodes == base.live_nodes && now.live_bytes == base.live_bytes);
        if (made < n) break;    /* the call never reached the n-th allocation: every one was tried */
        if (n > 100000) { CHECK(!"too many allocations"); break; }
    }
    fprintf(stderr, "  %s: %d allocations failed in turn\n", name, failures);
    CHECK(failures > 0);
}

static void test_every_sweep(void)
{
    const sweep sweeps[] = {
        {"backward", NULL, backward_free},
        {"backward(retain_graph)", NULL, backward_retain},
        {"backward after backward(retain_graph)", first_backward, backward_free},
        {"backward(create_graph)", NULL, backward_graph},
        {"vjp", cotangent_rows, vjp_rows},
        {"jvp", tangent_rows, jvp_rows},
        {"hvp", tangent_rows, hvp_rows},
        {"vjp_graph", cotangent, vjp_recorded},
        {"vjp_many", two_cotangents, vjp_many},
        {"backward(seed) with grads aliasing the seed", aliasing_root, backward_seeded},
        {"a write to a seed that grads alias", aliased, write_seed},
        {"a write to a grad that aliases a seed", aliased, write_alias},
        {"jvp_graph", tangent, jvp_recorded},
        {"plan build + fuse + run", fusable, build_fuse_run},
        {"plan fuse + run", fusable_planned, fuse_run},
        {"fused plan run", fused, run_plan},
        {"train_step", trainable, train_step},
        {"train_step forward, finish", trainable, train_phases},
        {"train_step, fused plan", fused_trainable, train_step},
        {"solve, logdet(det, sign), cholesky", with_linalg, linalg_forward},
        {"backward through solve/logdet/cholesky", with_linalg, backward_retain},
        {"backward(create_graph) through solve/logdet/cholesky", with_linalg, backward_graph},
        {"vjp through solve/logdet/cholesky", linalg_cotangent_rows, vjp_rows},
        {"jvp through solve/logdet/cholesky", linalg_tangent_rows, jvp_rows},
        {"hvp through solve/logdet/cholesky", linalg_tangent_rows, hvp_rows},
        {"vjp_graph through solve/logdet/cholesky", linalg_cotangent, vjp_recorded},
        {"jvp_graph through solve/logdet/cholesky", linalg_tangent, jvp_recorded},
        {"plan run through solve/logdet/cholesky", linalg_planned, run_plan},
        {"svd, svdvals", with_svd, svd_forward},
        {"backward through svd/svdvals", with_svd, backward_retain},
        {"backward(create_graph) through svd/svdvals", with_svd, backward_graph},
        {"vjp through svd/svdvals", svd_cotangent_rows, vjp_rows},
        {"jvp through svd/svdvals", svd_tangent_rows, jvp_rows},
        {"hvp through svd/svdvals", svd_tangent_rows, hvp_rows},
        {"vjp_graph through svd/svdvals", svd_cotangent, vjp_recorded},
        {"jvp_graph through svd/svdvals", svd_tangent, jvp_recorded},
        {"plan run through svd/svdvals", svd_planned, run_plan},
    };
    for (size_t i = 0; i < sizeof sweeps / sizeof sweeps[0]; i++) sweep_every_allocation(sweeps[i]);
}

int main(void)
{
    if (ad_fault_arm(0) != AD_OK) {
        fprintf(stderr, "test_oom: the core must be built with -DAD_FAULT_INJECTION\n");
        return 1;
    }
    /* f64 only: the f32 ops are not swept */
    CHECK(ad_set_lapack((void *)ref_getrf, NULL, (void *)ref_getrs, NULL, (void *)ref_potrf, NULL, (void *)ref_gesdd, NULL) == AD_OK);
    RUN(test_every_sweep);
    ad_stats_t end;
    ad_stats(&end);
    CHECK(end.live_nodes == 0 && end.live_bytes == 0);
    return REPORT();
}
