/* Out of memory at every allocation of every sweep, the SQLite way (tools/ctest.sh builds the core
 * with -DAD_FAULT_INJECTION for this test; csrc/fault.c). For each sweep and n = 1, 2, ... the
 * n-th allocation of the call fails, until the call no longer reaches it. After each failure:
 * the status is AD_ERR_MEMORY with a message, the state is exactly what it was (every leaf's grad
 * bit for bit, the live node and byte counts, the graph not released), and the same call run
 * again without the fault succeeds with the gradients of a run that never failed. Whatever the
 * call made is freed (live counters back to the start, LeakSanitizer at exit). */
#include "check.h"
#include "../testing.h"
#include <stdint.h>
#include <stdlib.h>

const char *__asan_default_options(void) { return "allocator_may_return_null=1:detect_leaks=1"; }

#define NLEAF 3
#define MAXOUT 4
#define MAXVAL 16

typedef struct {
    int64_t leaf[NLEAF];       /* x (2, 3): no grad; w (3,): a grad it owns; b (3,): a grad the caller holds too */
    int64_t held;              /* the caller's handle to b's grad */
    int64_t root;              /* a scalar */
    int64_t extra[16];         /* intermediate tensors and sweep inputs, released with the graph */
    int nextra;
    int64_t in[NLEAF];         /* the sweep's cotangent or tangents, made before the fault is armed */
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
static void build(graph *g)
{
    memset(g, 0, sizeof *g);
    const double xv[6] = {0.5, -1, 2, 1.5, 0.25, -0.75}, wv[3] = {0.3, -0.2, 0.8}, bv[3] = {0.1, 0.2, -0.3};
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
}

typedef struct {
    int64_t live_nodes, live_bytes;
    int released;
    int has[NLEAF];
    double grad[NLEAF][MAXVAL];
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
    }
    return s;
}

static int same_snapshot(const snapshot *a, const snapshot *b)
{
    return a->live_nodes == b->live_nodes && a->live_bytes == b->live_bytes && a->released == b->released &&
           !memcmp(a->has, b->has, sizeof a->has) && !memcmp(a->grad, b->grad, sizeof a->grad);
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
static int jvp_recorded(graph *g, int64_t *out) { return ad_jvp_graph(g->root, NLEAF, g->leaf, g->in, out); }

/* a second backward through a graph kept by the first (which the prep runs) */
static void first_backward(graph *g) { CHECK(ad_backward(g->root, 0, 1) == AD_OK); }

typedef struct { snapshot after; double out[MAXOUT][MAXVAL * 2]; } result;

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
    return r;
}

static int same_result(const result *a, const result *b)
{
    return !memcmp(a->after.has, b->after.has, sizeof a->after.has) &&
           !memcmp(a->after.grad, b->after.grad, sizeof a->after.grad) &&
           a->after.released == b->after.released && !memcmp(a->out, b->out, sizeof a->out);
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
        {"jvp_graph", tangent, jvp_recorded},
    };
    for (size_t i = 0; i < sizeof sweeps / sizeof sweeps[0]; i++) sweep_every_allocation(sweeps[i]);
}

int main(void)
{
    if (ad_fault_arm(0) != AD_OK) {
        fprintf(stderr, "test_oom: the core must be built with -DAD_FAULT_INJECTION\n");
        return 1;
    }
    RUN(test_every_sweep);
    ad_stats_t end;
    ad_stats(&end);
    CHECK(end.live_nodes == 0 && end.live_bytes == 0);
    return REPORT();
}
