/* Pure-C tests of the core, built with -fsanitize=address,undefined (LeakSanitizer on) by
 * tools/ctest.sh. They build graphs, run backward, release everything and check that the
 * core's own live counters return to where they were: a leak in the core shows up here even
 * when no Python is around to hide it, and LSan checks the process as a whole at exit. */
#include "check.h"
#include "../core.h"   /* ad_copy, an internal helper, is tested here too */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

/* allocator_may_return_null: huge shapes must become AD_ERR_MEMORY, not an ASan abort */
const char *__asan_default_options(void) { return "allocator_may_return_null=1:detect_leaks=1"; }

static int64_t mk(int dtype, int ndim, const int64_t *shape, const double *vals, int rg)
{
    int64_t size = 1;
    for (int i = 0; i < ndim; i++) size *= shape[i];
    void *buf = NULL;
    if (vals && size) {
        buf = malloc((size_t)size * (dtype == AD_F64 ? 8 : 4));
        for (int64_t i = 0; i < size; i++) {
            if (dtype == AD_F64) ((double *)buf)[i] = vals[i];
            else ((float *)buf)[i] = (float)vals[i];
        }
    }
    int64_t h = ad_tensor_new(dtype, ndim, shape, buf, rg);
    free(buf);
    return h;
}

static int64_t vec(int n, const double *vals, int rg)
{
    int64_t shape[1] = {n};
    return mk(AD_F64, 1, shape, vals, rg);
}

static double at(int64_t h, int64_t i)
{
    ad_info_t info;
    if (ad_info(h, &info) || i >= info.size) return NAN;
    return info.dtype == AD_F64 ? ((double *)info.data)[i] : ((float *)info.data)[i];
}

static ad_info_t info_of(int64_t h)
{
    ad_info_t info;
    memset(&info, 0, sizeof info);
    ad_info(h, &info);
    return info;
}

static ad_stats_t stats(void)
{
    ad_stats_t s;
    ad_stats(&s);
    return s;
}

/* Release a list of handles (0 entries are skipped). */
static void drop(int n, const int64_t *hs)
{
    for (int i = 0; i < n; i++)
        if (hs[i] > 0) CHECK(ad_release(hs[i]) == AD_OK);
}

#define DROP(...) do { int64_t hs_[] = {__VA_ARGS__}; drop((int)(sizeof hs_ / sizeof hs_[0]), hs_); } while (0)

#define CHECK_BASELINE(base)                                                              \
    do {                                                                                  \
        ad_stats_t now_ = stats();                                                        \
        CHECK(now_.live_nodes == (base).live_nodes);                                      \
        CHECK(now_.live_bytes == (base).live_bytes);                                      \
        if (now_.live_nodes != (base).live_nodes || now_.live_bytes != (base).live_bytes)  \
            fprintf(stderr, "    live_nodes %lld (was %lld), live_bytes %lld (was %lld)\n", \
                    (long long)now_.live_nodes, (long long)(base).live_nodes,             \
                    (long long)now_.live_bytes, (long long)(base).live_bytes);            \
    } while (0)

/* ------------------------------------------------------------------------------------------ */

static void test_lifecycle(void)
{
    ad_stats_t base = stats();
    double v[3] = {1, 2, 3};
    int64_t h = vec(3, v, 0);
    CHECK(h > 0);
    CHECK(stats().live_nodes == base.live_nodes + 1);
    CHECK(ad_retain(h) == AD_OK);
    CHECK(ad_release(h) == AD_OK);
    CHECK(at(h, 2) == 3);
    CHECK(ad_release(h) == AD_OK);
    CHECK_BASELINE(base);
    /* a released handle is reported, never dereferenced, even after its slot is reused */
    ad_info_t info;
    CHECK_ERR(ad_info(h, &info), AD_ERR_HANDLE);
    CHECK_ERR(ad_release(h), AD_ERR_HANDLE);
    int64_t h2 = vec(3, v, 0);
    CHECK(h2 != h);
    CHECK_ERR(ad_unary(AD_OP_EXP, h, 0, 0), AD_ERR_HANDLE);
    CHECK_ERR(ad_retain(h), AD_ERR_HANDLE);
    DROP(h2);
    CHECK_BASELINE(base);
    /* a recorded value nothing reads is freed with the caller's last handle; the node lives on
     * for its consumer, and the stale handle is reported, not dereferenced */
    int64_t x = vec(3, v, 1);
    int64_t y = ad_unary(AD_OP_MUL_S, x, 2.0, 0);    /* only the sum reads y, and sum reads nothing */
    int64_t z = ad_reduce(AD_OP_SUM, y, -1, NULL, 0);
    CHECK(x > 0 && y > 0 && z > 0);
    CHECK(ad_release(y) == AD_OK);
    CHECK_ERR(ad_info(y, &info), AD_ERR_HANDLE);
    CHECK_ERR(ad_unary(AD_OP_EXP, y, 0, 0), AD_ERR_HANDLE);
    CHECK(ad_backward(z, 0, 0) == AD_OK);
    int64_t g = ad_grad(x);
    CHECK(g > 0 && at(g, 0) == 2 && at(g, 2) == 2);
    DROP(g);
    DROP(z);
    DROP(x);
    CHECK_BASELINE(base);
}

static void test_gradient_values(void)
{
    ad_stats_t base = stats();
    /* d/dx sum(x*x) = 2x: the same node on both sides accumulates at the branch */
    double xv[3] = {1, -2, 3};
    int64_t x = vec(3, xv, 1);
    int64_t y = ad_binary(AD_OP_MUL, x, x);
    int64_t s = ad_reduce(AD_OP_SUM, y, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t g = ad_grad(x);
    for (int i = 0; i < 3; i++) CHECK(at(g, i) == 2 * xv[i]);
    DROP(g, s, y, x);

    /* broadcasting is undone in the sweep: grad b = column sums of a */
    int64_t sa[2] = {2, 3};
    double av[6] = {0, 1, 2, 3, 4, 5}, bv[3] = {10, 20, 30};
    int64_t a = mk(AD_F64, 2, sa, av, 1), b = vec(3, bv, 1);
    int64_t c = ad_binary(AD_OP_MUL, a, b);
    s = ad_reduce(AD_OP_SUM, c, -1, NULL, 0);
    CHECK(at(s, 0) == 0 * 10 + 1 * 20 + 2 * 30 + 3 * 10 + 4 * 20 + 5 * 30);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t ga = ad_grad(a), gb = ad_grad(b);
    for (int i = 0; i < 6; i++) CHECK(at(ga, i) == bv[i % 3]);
    CHECK(at(gb, 0) == 3 && at(gb, 1) == 5 && at(gb, 2) == 7);
    CHECK(info_of(gb).ndim == 1 && info_of(gb).shape[0] == 3);
    DROP(ga, gb, s, c, a, b);

    /* matmul: d sum(A@B)/dA[i,k] = sum_j B[k,j], d/dB[k,j] = sum_i A[i,k] */
    int64_t sA[2] = {2, 3}, sB[2] = {3, 2};
    double Av[6] = {1, 2, 3, 4, 5, 6}, Bv[6] = {1, -1, 2, -2, 3, -3.5};
    int64_t A = mk(AD_F64, 2, sA, Av, 1), B = mk(AD_F64, 2, sB, Bv, 1);
    int64_t P = ad_matmul(A, B);
    CHECK(at(P, 0) == 1 * 1 + 2 * 2 + 3 * 3);
    CHECK(at(P, 3) == 4 * -1 + 5 * -2 + 6 * -3.5);
    s = ad_reduce(AD_OP_SUM, P, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t gA = ad_grad(A), gB = ad_grad(B);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 3; k++) CHECK(at(gA, i * 3 + k) == Bv[k * 2] + Bv[k * 2 + 1]);
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 2; j++) CHECK(at(gB, k * 2 + j) == Av[k] + Av[3 + k]);
    DROP(gA, gB, s, P, A, B);

    /* max routes to the arg-max; ties split equally */
    double tv[3] = {3, 3, 1};
    int64_t t = vec(3, tv, 1);
    int64_t m = ad_reduce(AD_OP_MAX, t, -1, NULL, 0);
    CHECK(ad_backward(m, 0, 0) == AD_OK);
    g = ad_grad(t);
    CHECK(at(g, 0) == 0.5 && at(g, 1) == 0.5 && at(g, 2) == 0);
    DROP(g, m, t);

    /* float32 meeting float64 promotes; the float32 leaf still gets a float32 grad */
    int64_t s1[1] = {2};
    double fv[2] = {1.5, -2};
    int64_t f = mk(AD_F32, 1, s1, fv, 1), d = vec(2, fv, 0);
    int64_t pr = ad_binary(AD_OP_MUL, f, d);
    CHECK(info_of(pr).dtype == AD_F64);
    s = ad_reduce(AD_OP_SUM, pr, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    g = ad_grad(f);
    CHECK(info_of(g).dtype == AD_F32);
    CHECK(at(g, 0) == 1.5 && at(g, 1) == -2);
    DROP(g, s, pr, f, d);

    /* reshape/transpose move the cotangent back; power by a scalar: 3 x^2 */
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2};
    x = mk(AD_F64, 2, s23, av, 1);
    int64_t r = ad_reshape(x, 2, s32);
    int64_t tr = ad_transpose(r, -1, NULL);
    int64_t p3 = ad_unary(AD_OP_POW_S, tr, 3.0, 0);
    s = ad_reduce(AD_OP_SUM, p3, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    g = ad_grad(x);
    for (int i = 0; i < 6; i++) CHECK(at(g, i) == 3 * av[i] * av[i]);
    DROP(g, s, p3, tr, r, x);
    CHECK_BASELINE(base);
}

static void test_graph_release(void)
{
    ad_stats_t base = stats();
    double xv[2] = {0.5, 1.5};
    int64_t x = vec(2, xv, 1);
    int64_t e = ad_unary(AD_OP_EXP, x, 0, 0);
    int64_t t = ad_unary(AD_OP_TANH, e, 0, 0);
    int64_t s = ad_reduce(AD_OP_SUM, t, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    CHECK(info_of(s).graph_released == 1);
    CHECK_ERR(ad_backward(s, 0, 0), AD_ERR_RUNTIME);
    CHECK(strstr(ad_last_error(), "retain_graph") != NULL);
    /* values stay readable after the graph is gone */
    CHECK_CLOSE(at(s, 0), tanh(exp(0.5)) + tanh(exp(1.5)), 1e-15);
    int64_t g = ad_grad(x);
    DROP(g, s, t, e, x);
    CHECK_BASELINE(base);

    /* retain_graph: the second backward works and grads accumulate */
    x = vec(2, xv, 1);
    int64_t y = ad_unary(AD_OP_MUL_S, x, 3.0, 0);
    s = ad_reduce(AD_OP_SUM, y, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 1) == AD_OK);
    CHECK(ad_backward(s, 0, 1) == AD_OK);
    g = ad_grad(x);
    CHECK(at(g, 0) == 6 && at(g, 1) == 6);
    CHECK(ad_set_grad(x, 0) == AD_OK);
    CHECK(ad_grad(x) == 0);
    DROP(g, s, y, x);
    CHECK_BASELINE(base);

    /* graphs that never see backward are freed when their last handle goes */
    for (int k = 0; k < 2000; k++) {
        x = vec(2, xv, 1);
        y = ad_unary(AD_OP_SIN, x, 0, 0);
        int64_t z = ad_binary(AD_OP_ADD, y, x);
        DROP(x, y);
        s = ad_reduce(AD_OP_MEAN, z, -1, NULL, 0);
        DROP(z, s);
    }
    CHECK_BASELINE(base);
    CHECK(stats().tape_length < 4096);
}

static void test_long_chain(void)
{
    ad_stats_t base = stats();
    int64_t shape[1] = {1};
    int64_t x = ad_full(AD_F64, 0, shape, 0.25, 1), y = x;
    CHECK(ad_retain(y) == AD_OK);
    for (int i = 0; i < 1000000; i++) {
        int64_t z = ad_unary(i % 2 ? AD_OP_ADD_S : AD_OP_MUL_S, y, 1.0, 0);
        ad_release(y);
        y = z;
    }
    CHECK(y > 0);
    CHECK(ad_backward(y, 0, 0) == AD_OK);
    int64_t g = ad_grad(x);
    CHECK(at(g, 0) == 1.0);
    DROP(g, y, x);
    CHECK_BASELINE(base);
}

static void test_fanout(void)
{
    ad_stats_t base = stats();
    double xv[2] = {1, 2};
    int64_t x = vec(2, xv, 1), acc = x;
    ad_retain(acc);
    for (int i = 0; i < 100000; i++) {
        int64_t z = ad_binary(AD_OP_ADD, acc, x);
        ad_release(acc);
        acc = z;
    }
    CHECK(at(acc, 1) == 2.0 * 100001);
    int64_t s = ad_reduce(AD_OP_SUM, acc, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t g = ad_grad(x);
    CHECK(at(g, 0) == 100001 && at(g, 1) == 100001);
    DROP(g, s, acc, x);
    CHECK_BASELINE(base);
}

/* Regression: a leaf's first grad is a new node, and pushing it can grow (realloc) or compact
 * the creation-order array the sweep is walking. The sweep used a stale pointer and index:
 * heap-use-after-free under ASan. Both growth paths are driven here by filling the tape to its
 * capacity right before backward. */
static void sweep_with_full_tape(int garbage, int retain)
{
    ad_stats_t base = stats();
    double one = 1.0;
    int64_t x = vec(1, &one, 1), w = vec(1, &one, 1);
    /* dead entries below the graph make the push compact instead of grow */
    for (int i = 0; i < garbage; i++) { int64_t t = vec(1, &one, 0); ad_release(t); }
    int64_t y = ad_binary(AD_OP_MUL, x, w);
    while (stats().tape_length % 1024 != 1022) {
        int64_t z = ad_unary(AD_OP_ADD_S, y, 1.0, 0);
        ad_release(y);
        y = z;
    }
    /* x is used at the top, so its grad node is created first, while the tape is full */
    int64_t top = ad_binary(AD_OP_MUL, y, x);
    int64_t s = ad_reduce(AD_OP_SUM, top, -1, NULL, 0);
    CHECK(ad_backward(s, 0, retain) == AD_OK);
    int64_t gx = ad_grad(x), gw = ad_grad(w);
    /* top = (x*w + k) * x, k = number of +1s: d/dx = 2xw + k, d/dw = x^2 */
    CHECK(at(gw, 0) == 1.0);
    CHECK(at(gx, 0) == at(top, 0) / 1.0 + 1.0);
    DROP(gx, gw, s, top, y, x, w);
    CHECK_BASELINE(base);
}

static void test_sweep_tape_growth(void)
{
    sweep_with_full_tape(0, 0);
    sweep_with_full_tape(0, 1);
    sweep_with_full_tape(700, 0);
    sweep_with_full_tape(700, 1);
}

/* ---- threads ---- */

typedef struct { int64_t h; int64_t out[4]; int steps; } thread_arg;

static void *make_tensor(void *p)
{
    thread_arg *a = p;
    double v[2] = {1, 2};
    a->h = vec(2, v, 1);
    return NULL;
}

/* a small regression model trained by plain gradient descent, all in the C API */
static void train(int steps, int64_t *out_bits)
{
    int64_t sx[2] = {8, 3}, sw[2] = {3, 1};
    double xv[24], wv[3] = {0.1, -0.2, 0.3}, yv[8];
    for (int i = 0; i < 24; i++) xv[i] = sin(i * 0.7);
    for (int i = 0; i < 8; i++) yv[i] = cos(i * 0.3);
    int64_t sy[2] = {8, 1};
    int64_t X = mk(AD_F64, 2, sx, xv, 0), Y = mk(AD_F64, 2, sy, yv, 0);
    int64_t W = mk(AD_F64, 2, sw, wv, 1);
    for (int step = 0; step < steps; step++) {
        int64_t P = ad_matmul(X, W);
        int64_t T = ad_unary(AD_OP_TANH, P, 0, 0);
        int64_t D = ad_binary(AD_OP_SUB, T, Y);
        int64_t Q = ad_unary(AD_OP_POW_S, D, 2.0, 0);
        int64_t L = ad_reduce(AD_OP_MEAN, Q, -1, NULL, 0);
        ad_backward(L, 0, 0);
        int64_t G = ad_grad(W);
        int64_t step_w = ad_unary(AD_OP_MUL_S, G, -0.1, 0);
        int64_t Wd = ad_detach(W);
        int64_t Wn = ad_binary(AD_OP_ADD, Wd, step_w);
        int64_t Wl = ad_detach(Wn);
        ad_set_requires_grad(Wl, 1);
        DROP(P, T, D, Q, L, G, step_w, Wd, Wn, W);
        W = Wl;
    }
    for (int i = 0; i < 3; i++) { double w = at(W, i); memcpy(&out_bits[i], &w, 8); }
    DROP(X, Y, W);
}

static void *train_thread(void *p)
{
    thread_arg *a = p;
    train(a->steps, a->out);
    ad_stats_t s = stats();
    a->h = s.live_nodes;   /* every thread's tape must end empty */
    return NULL;
}

static void test_threads(void)
{
    ad_stats_t base = stats();
    thread_arg a = {0};
    pthread_t th;
    pthread_create(&th, NULL, make_tensor, &a);
    pthread_join(th, NULL);
    CHECK(a.h > 0);
    /* another thread's tensor: readable, releasable, but not usable in ops here */
    CHECK(at(a.h, 1) == 2);
    CHECK_ERR(ad_unary(AD_OP_EXP, a.h, 0, 0), AD_ERR_RUNTIME);
    CHECK(strstr(ad_last_error(), "another thread") != NULL);
    double v = 1;
    int64_t mine = vec(1, &v, 0);
    CHECK_ERR(ad_binary(AD_OP_ADD, mine, a.h), AD_ERR_RUNTIME);
    CHECK_ERR(ad_backward(a.h, 0, 0), AD_ERR_RUNTIME);
    CHECK_ERR(ad_set_grad(mine, a.h), AD_ERR_RUNTIME);
    CHECK(ad_release(a.h) == AD_OK);      /* the exited thread's last node: its tape is reclaimed */
    CHECK_ERR(ad_release(a.h), AD_ERR_HANDLE);
    /* a new thread takes the reclaimed tape over (same id) and fills its first slots again: the
     * old handle must still be stale, not a handle to the new node in the same slot */
    thread_arg b = {0};
    pthread_create(&th, NULL, make_tensor, &b);
    pthread_join(th, NULL);
    CHECK(b.h > 0 && b.h >> 48 == a.h >> 48 && (b.h & ((1 << 26) - 1)) == (a.h & ((1 << 26) - 1)));
    CHECK(b.h != a.h);
    CHECK_ERR(ad_release(a.h), AD_ERR_HANDLE);
    CHECK(at(b.h, 1) == 2);
    CHECK(ad_release(b.h) == AD_OK);
    DROP(mine);

    /* four threads at once give bit-identical results to the same work done sequentially */
    int64_t seq[4][4];
    for (int k = 0; k < 4; k++) train(200 + k, seq[k]);
    thread_arg args[4];
    pthread_t ths[4];
    for (int k = 0; k < 4; k++) {
        memset(&args[k], 0, sizeof args[k]);
        args[k].steps = 200 + k;
        pthread_create(&ths[k], NULL, train_thread, &args[k]);
    }
    for (int k = 0; k < 4; k++) pthread_join(ths[k], NULL);
    for (int k = 0; k < 4; k++) {
        CHECK(args[k].h == 0);
        CHECK(memcmp(args[k].out, seq[k], 3 * sizeof(int64_t)) == 0);
    }
    CHECK_BASELINE(base);
}

/* ---- bad input: every case is an error code with a message, never a crash ---- */

static void test_bad_input(void)
{
    ad_stats_t base = stats();
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s24[2] = {2, 4}, s0[1] = {0};
    double v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t a = mk(AD_F64, 2, s23, v, 1), b = mk(AD_F64, 1, s4, v, 1), c = mk(AD_F64, 2, s24, v, 0);
    int64_t sc = ad_full(AD_F64, 0, NULL, 2.0, 1);
    CHECK(a > 0 && b > 0 && c > 0 && sc > 0);

    CHECK_ERR(ad_binary(AD_OP_ADD, a, b), AD_ERR_VALUE);
    CHECK(strstr(ad_last_error(), "(2, 3)") && strstr(ad_last_error(), "(4,)"));
    CHECK_ERR(ad_matmul(a, c), AD_ERR_VALUE);
    CHECK(strstr(ad_last_error(), "(2, 3)") && strstr(ad_last_error(), "(2, 4)"));
    CHECK_ERR(ad_matmul(sc, a), AD_ERR_VALUE);
    int64_t ax[2] = {2, 0}, dup[2] = {1, -1};
    CHECK_ERR(ad_reduce(AD_OP_SUM, a, 1, ax, 0), AD_ERR_VALUE);
    CHECK_ERR(ad_reduce(AD_OP_SUM, a, 2, dup, 0), AD_ERR_VALUE);
    CHECK_ERR(ad_reduce(AD_OP_SUM, a, 1, NULL, 0), AD_ERR_VALUE);
    int64_t empty = mk(AD_F64, 1, s0, NULL, 0);
    CHECK_ERR(ad_reduce(AD_OP_MAX, empty, -1, NULL, 0), AD_ERR_VALUE);
    DROP(empty);
    int64_t bad_shape[2] = {4, 2};
    CHECK_ERR(ad_reshape(a, 2, bad_shape), AD_ERR_VALUE);
    int64_t two_infer[2] = {-1, -1};
    CHECK_ERR(ad_reshape(a, 2, two_infer), AD_ERR_VALUE);
    CHECK_ERR(ad_reshape(a, 2, NULL), AD_ERR_VALUE);
    CHECK_ERR(ad_reshape(a, 99, s23), AD_ERR_VALUE);
    CHECK_ERR(ad_backward(a, 0, 0), AD_ERR_RUNTIME);      /* non-scalar, no seed */
    CHECK_ERR(ad_backward(a, b, 0), AD_ERR_VALUE);        /* seed of the wrong shape */
    CHECK_ERR(ad_backward(c, 0, 0), AD_ERR_RUNTIME);      /* does not require grad */
    int64_t perm_bad[2] = {0, 0};
    CHECK_ERR(ad_transpose(a, 2, perm_bad), AD_ERR_VALUE);
    CHECK_ERR(ad_transpose(a, 1, perm_bad), AD_ERR_VALUE);
    /* regression: NULL perm / NULL shape were dereferenced */
    CHECK_ERR(ad_transpose(a, 2, NULL), AD_ERR_VALUE);
    CHECK_ERR(ad_broadcast_to(a, 2, NULL), AD_ERR_VALUE);
    int64_t s253[3] = {2, 5, 3};
    CHECK_ERR(ad_broadcast_to(a, 3, s253), AD_ERR_VALUE);
    CHECK_ERR(ad_broadcast_to(a, 1, s4), AD_ERR_VALUE);

    /* op codes and dtypes outside their range */
    CHECK_ERR(ad_unary(AD_OP_ADD, a, 0, 0), AD_ERR_TYPE);
    CHECK_ERR(ad_unary(-1, a, 0, 0), AD_ERR_TYPE);
    CHECK_ERR(ad_binary(AD_OP_EXP, a, a), AD_ERR_TYPE);
    CHECK_ERR(ad_binary(1 << 30, a, a), AD_ERR_TYPE);
    CHECK_ERR(ad_unary(AD_OP_SUM, a, 1.0, 0), AD_ERR_TYPE);
    CHECK_ERR(ad_reduce(AD_OP_COUNT, a, -1, NULL, 0), AD_ERR_TYPE);
    CHECK_ERR(ad_cast(a, 7), AD_ERR_TYPE);
    CHECK_ERR(ad_tensor_new(2, 1, s4, NULL, 0), AD_ERR_TYPE);
    CHECK_ERR(ad_full(-1, 1, s4, 0, 0), AD_ERR_TYPE);

    /* handles that were never valid */
    int64_t bogus[] = {0, -1, INT64_MIN, INT64_MAX, 1, (int64_t)1 << 48, ((int64_t)1 << 48) | 12345};
    for (size_t i = 0; i < sizeof bogus / sizeof bogus[0]; i++) {
        CHECK(ad_unary(AD_OP_EXP, bogus[i], 0, 0) < 0);
        CHECK(ad_release(bogus[i]) < 0);
        CHECK(ad_grad(bogus[i]) < 0);
        CHECK(ad_backward(bogus[i], 0, 0) < 0);
        /* regression: a negative or foreign grad handle was resolved against the wrong tape */
        CHECK(ad_set_grad(a, bogus[i]) < 0 || bogus[i] == 0);
        CHECK(ad_binary(AD_OP_ADD, a, bogus[i]) < 0);
    }

    /* NULL out-parameters and shapes */
    CHECK_ERR(ad_info(a, NULL), AD_ERR_VALUE);
    CHECK_ERR(ad_stats(NULL), AD_ERR_VALUE);
    CHECK_ERR(ad_tensor_new(AD_F64, 2, NULL, NULL, 0), AD_ERR_VALUE);
    CHECK_ERR(ad_full(AD_F64, 1, NULL, 0, 0), AD_ERR_VALUE);

    /* absurd shapes: negative, too many dims, element counts past int64 or past memory */
    int64_t neg[2] = {2, -3}, huge[2] = {(int64_t)1 << 40, (int64_t)1 << 30};
    int64_t big[2] = {1000000, 1000000}, max2[2] = {INT64_MAX, INT64_MAX};
    CHECK_ERR(ad_full(AD_F64, 2, neg, 0, 0), AD_ERR_VALUE);
    CHECK_ERR(ad_full(AD_F64, 9, s23, 0, 0), AD_ERR_VALUE);
    CHECK_ERR(ad_full(AD_F64, -1, s23, 0, 0), AD_ERR_VALUE);
    CHECK(ad_full(AD_F64, 2, huge, 0, 0) < 0);
    CHECK_ERR(ad_full(AD_F64, 2, big, 0, 0), AD_ERR_MEMORY);
    CHECK(ad_full(AD_F32, 2, max2, 0, 0) < 0);
    int64_t bshape[3] = {(int64_t)1 << 40, 1 << 20, 3};
    CHECK(ad_broadcast_to(a, 3, bshape) < 0);

    /* a tensor cannot be its own grad; a grad computed from the tensor is stored as a copy
     * (regression: aliasing it made a reference cycle, a leak) */
    int64_t self = mk(AD_F64, 2, s23, v, 1);
    CHECK_ERR(ad_set_grad(self, self), AD_ERR_RUNTIME);
    int64_t twice = ad_unary(AD_OP_MUL_S, self, 2.0, 0);
    CHECK(ad_set_grad(self, twice) == AD_OK);
    int64_t sg = ad_grad(self);
    CHECK(sg > 0 && sg != twice && at(sg, 5) == 12);
    DROP(sg, twice, self);

    DROP(a, b, c, sc);
    CHECK_BASELINE(base);
}

/* Zero-size tensors whose other dimensions are huge are legal (they hold no elements); products
 * of their dimensions must not overflow and loops over their batches must not run. */
static void test_empty(void)
{
    ad_stats_t base = stats();
    int64_t s03[2] = {0, 3};
    int64_t e = ad_full(AD_F64, 2, s03, 1.0, 1);
    int64_t s = ad_reduce(AD_OP_SUM, e, -1, NULL, 0);
    CHECK(info_of(s).ndim == 0 && at(s, 0) == 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t g = ad_grad(e);
    CHECK(g > 0 && info_of(g).size == 0 && info_of(g).shape[1] == 3);
    DROP(g, s, e);

    int64_t wide[3] = {0, (int64_t)1 << 40, (int64_t)1 << 40};
    int64_t z = ad_full(AD_F64, 3, wide, 1.0, 1);
    CHECK(z > 0 && info_of(z).size == 0);
    int64_t ax12[2] = {1, 2};
    int64_t r = ad_reduce(AD_OP_SUM, z, 2, ax12, 0);   /* reduced count 2^80 overflowed */
    CHECK(r > 0 && info_of(r).size == 0);
    int64_t m = ad_reduce(AD_OP_MEAN, z, 2, ax12, 1);
    CHECK(m > 0);
    int64_t zz = ad_binary(AD_OP_MUL, z, z);          /* the iterator's element count overflowed */
    CHECK(zz > 0);
    int64_t ax0[1] = {0};
    int64_t r0 = ad_reduce(AD_OP_SUM, z, 1, ax0, 0);  /* (2^40, 2^40) of zeros: no memory for it */
    CHECK(r0 == -AD_ERR_MEMORY || r0 == -AD_ERR_VALUE);
    DROP(r, m, zz, z);

    /* a batch of 2^50 empty matrices: nothing to multiply, in forward or backward */
    int64_t sa[4] = {(int64_t)1 << 30, 1 << 20, 0, 3}, sb[2] = {3, 4};
    int64_t A = ad_full(AD_F64, 4, sa, 1.0, 1), B = ad_full(AD_F64, 2, sb, 1.0, 1);
    CHECK(A > 0 && B > 0);
    int64_t P = ad_matmul(A, B);
    CHECK(P > 0 && info_of(P).size == 0 && info_of(P).ndim == 4);
    s = ad_reduce(AD_OP_SUM, P, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 1) == AD_OK);
    int64_t gB = ad_grad(B);
    CHECK(gB > 0);
    for (int i = 0; i < 12; i++) CHECK(at(gB, i) == 0);
    /* the batched sweeps on the same graph: nothing to compute either */
    int64_t sc[5] = {1, (int64_t)1 << 30, 1 << 20, 0, 4};
    int64_t cot = ad_full(AD_F64, 5, sc, 1.0, 0);
    int64_t vg = 0;
    CHECK(ad_vjp(P, cot, 1, &B, &vg) == AD_OK);
    CHECK(vg > 0 && info_of(vg).size == 12);
    for (int i = 0; i < 12; i++) CHECK(at(vg, i) == 0);
    int64_t st1[3] = {1, 3, 4}, tan = ad_full(AD_F64, 3, st1, 1.0, 0), tout = 0;
    CHECK(ad_jvp(P, 1, &B, &tan, 1, &tout) == AD_OK);
    CHECK(tout > 0 && info_of(tout).size == 0);
    DROP(vg, cot, tan, tout, gB, s, P, A, B);

    /* regression: softmax's slice count overflowed for empty tensors with huge dimensions */
    z = ad_full(AD_F64, 3, wide, 1.0, 1);
    int64_t ax0b[1] = {0};
    int64_t sm = ad_softmax(AD_OP_SOFTMAX, z, 1, ax0b, 0);
    CHECK(sm > 0 && info_of(sm).size == 0);
    int64_t ls = ad_softmax(AD_OP_LOGSUMEXP, z, 2, ax12, 0);
    CHECK(ls > 0 && info_of(ls).size == 0);
    CHECK(ad_softmax(AD_OP_LOGSUMEXP, z, 1, ax0b, 0) < 0);   /* (2^40, 2^40) results */
    int64_t e03 = ad_full(AD_F64, 2, s03, 1.0, 1);
    int64_t lse = ad_softmax(AD_OP_LOGSUMEXP, e03, 1, ax0b, 0);
    CHECK(lse > 0 && at(lse, 0) == -INFINITY && at(lse, 2) == -INFINITY);
    int64_t lsum = ad_reduce(AD_OP_SUM, lse, -1, NULL, 0);
    CHECK(ad_backward(lsum, 0, 0) == AD_OK);
    g = ad_grad(e03);
    CHECK(g > 0 && info_of(g).size == 0);
    DROP(g, lsum, lse, e03, ls, sm, z);

    /* regression: concatenating empty tensors with huge other dimensions overflowed int64 */
    int64_t s0h[3] = {0, (int64_t)1 << 62, 3};
    int64_t e0 = ad_full(AD_F64, 3, s0h, 1.0, 1);
    int64_t pair[2] = {e0, e0};
    int64_t cat = ad_concatenate(2, pair, 0, 0);
    CHECK(cat > 0 && info_of(cat).size == 0);
    int64_t stk = ad_concatenate(2, pair, 1, 1);
    CHECK(stk < 0 || info_of(stk).size == 0);
    DROP(cat, e0);
    if (stk > 0) DROP(stk);

    /* regression: an input recorded after the root indexed past the batched sweeps' slot
     * arrays (a heap-buffer-overflow write in ad_vjp); its gradient is zero */
    double two = 2.0;
    int64_t a1 = vec(1, &two, 1);
    int64_t r1 = ad_unary(AD_OP_EXP, a1, 0, 0);
    int64_t later = vec(1, &two, 1);
    int64_t ins2[2] = {a1, later}, outs2[2] = {0, 0};
    int64_t s11[2] = {1, 1};
    int64_t cot1 = ad_full(AD_F64, 2, s11, 1.0, 0);
    CHECK(ad_vjp(r1, cot1, 2, ins2, outs2) == AD_OK);
    CHECK_CLOSE(at(outs2[0], 0), exp(2.0), 1e-15);
    CHECK(at(outs2[1], 0) == 0);
    int64_t tans[2] = {ad_full(AD_F64, 2, s11, 1.0, 0), ad_full(AD_F64, 2, s11, 1.0, 0)}, tout1 = 0;
    CHECK(ad_jvp(r1, 2, ins2, tans, 1, &tout1) == AD_OK);
    CHECK_CLOSE(at(tout1, 0), exp(2.0), 1e-15);
    DROP(outs2[0], outs2[1], tans[0], tans[1], tout1, cot1, later, r1, a1);

    /* regression: where() read a caller's condition shape without validating it */
    int64_t one = ad_full(AD_F64, 0, NULL, 1.0, 0);
    uint8_t c1 = 1;
    int64_t negc[1] = {-1}, hugec[2] = {(int64_t)1 << 62, 4}, minc[1] = {INT64_MIN};
    CHECK_ERR(ad_where(1, negc, &c1, one, one), AD_ERR_VALUE);
    CHECK_ERR(ad_where(1, minc, &c1, one, one), AD_ERR_VALUE);
    CHECK_ERR(ad_where(2, hugec, NULL, one, one), AD_ERR_VALUE);
    DROP(one);
    CHECK_BASELINE(base);
}

/* ---- anomaly mode ---- */

static int64_t g_site;
static int64_t next_site(void) { return ++g_site; }

static void test_anomaly(void)
{
    ad_stats_t base = stats();
    double m1 = -1, nanv = NAN, one = 1, zero = 0;
    int64_t neg = vec(1, &m1, 1), nan = vec(1, &nanv, 1);
    /* off: NaN is plain IEEE */
    int64_t l = ad_unary(AD_OP_LOG, neg, 0, 0);
    CHECK(l > 0 && isnan(at(l, 0)));
    DROP(l);

    CHECK(ad_set_anomaly(1, next_site) == 0);
    CHECK_ERR(ad_unary(AD_OP_LOG, neg, 0, 0), AD_ERR_FLOAT);
    CHECK(strstr(ad_last_error(), "log") && strstr(ad_last_error(), "(1,) float64"));
    CHECK(ad_anomaly_site() == g_site);
    /* NaN that flows in from the data is not the op's fault */
    l = ad_unary(AD_OP_LOG, nan, 0, 0);
    CHECK(l > 0);
    /* inf is not NaN */
    int64_t z = vec(1, &zero, 0);
    int64_t inf = ad_unary(AD_OP_RDIV_S, z, 1.0, 0);
    CHECK(inf > 0 && at(inf, 0) == INFINITY);
    DROP(l, inf, z);

    /* backward: log(a*b) at a=1, b=0 is -inf; its VJP gives inf, and multiply's VJP inf*0 = NaN */
    int64_t a = vec(1, &one, 1), b = vec(1, &zero, 1);
    int64_t p = ad_binary(AD_OP_MUL, a, b);
    int64_t mul_site = g_site;
    int64_t lg = ad_unary(AD_OP_LOG, p, 0, 0);
    CHECK(lg > 0 && at(lg, 0) == -INFINITY);
    CHECK_ERR(ad_backward(lg, 0, 0), AD_ERR_FLOAT);
    CHECK(strstr(ad_last_error(), "multiply") != NULL);
    CHECK(ad_anomaly_site() == mul_site);
    DROP(lg, p, a, b);

    /* accumulation: d/dx (sqrt(x) - sqrt(x)) at 0 is inf - inf */
    int64_t x = vec(1, &zero, 1);
    int64_t r1 = ad_unary(AD_OP_SQRT, x, 0, 0), r2 = ad_unary(AD_OP_SQRT, x, 0, 0);
    int64_t d = ad_binary(AD_OP_SUB, r1, r2);
    CHECK_ERR(ad_backward(d, 0, 0), AD_ERR_FLOAT);
    CHECK(strstr(ad_last_error(), "adding the gradient from sqrt") != NULL);
    DROP(d, r1, r2, x);

    CHECK(ad_set_anomaly(0, NULL) == 1);
    x = vec(1, &zero, 1);
    r1 = ad_unary(AD_OP_SQRT, x, 0, 0);
    r2 = ad_unary(AD_OP_SQRT, x, 0, 0);
    d = ad_binary(AD_OP_SUB, r1, r2);
    CHECK(ad_backward(d, 0, 0) == AD_OK);
    int64_t g = ad_grad(x);
    CHECK(isnan(at(g, 0)));
    DROP(g, d, r1, r2, x, neg, nan);
    CHECK_BASELINE(base);
}

/* The recorded sweeps: derivatives built from recorded ops can be differentiated again. Closed
 * forms: f(u, w) = u . (M w) has grad_u = M w and d/dw <grad_u, v> = M^T v; g(x) = x . (A x) has
 * the tangent t.(A x) + x.(A t) along t, whose derivative along s is t.(A s) + s.(A t). A sweep
 * that fails part-way (an op without a rule, if any) leaves the tape as it was. */
static void test_recorded_sweeps(void)
{
    ad_stats_t base = stats();
    const double M[12] = {1, 2, 0, -1, 0.5, 3, 1, 2, -2, 1, 0, 4}, uv[3] = {1, -1, 2}, wv[4] = {0.5, 1, -1, 2};
    const double v[3] = {2, 0.5, -1};
    int64_t sm[2] = {3, 4}, s0[1] = {0};
    int64_t m = mk(AD_F64, 2, sm, M, 0), u = vec(3, uv, 1), w = vec(4, wv, 1);
    int64_t mw = ad_matmul(m, w), f = ad_matmul(u, mw);
    CHECK(mw > 0 && f > 0);
    int64_t one = mk(AD_F64, 0, s0, (const double[]){1}, 0), leaves[2] = {u, w}, g[2] = {0, 0};
    CHECK(ad_vjp_graph(f, one, 2, leaves, g) == AD_OK);
    for (int i = 0; i < 3; i++) {
        double e = 0;
        for (int j = 0; j < 4; j++) e += M[i * 4 + j] * wv[j];
        CHECK_CLOSE(at(g[0], i), e, 1e-15);
    }
    CHECK(info_of(g[0]).requires_grad);
    /* second order, recorded again and by the numeric sweep */
    int64_t vh = vec(3, v, 0), d[2] = {0, 0};
    CHECK(ad_vjp_graph(g[0], vh, 2, leaves, d) == AD_OK);
    int64_t s13[2] = {1, 3}, vrow = mk(AD_F64, 2, s13, v, 0), dn[2] = {0, 0};
    CHECK(ad_vjp(g[0], vrow, 2, leaves, dn) == AD_OK);
    for (int j = 0; j < 4; j++) {
        double e = 0;
        for (int i = 0; i < 3; i++) e += M[i * 4 + j] * v[i];
        CHECK_CLOSE(at(d[1], j), e, 1e-15);
        CHECK_CLOSE(at(dn[1], j), e, 1e-15);
    }
    for (int i = 0; i < 3; i++) CHECK(at(d[0], i) == 0 && at(dn[0], i) == 0);

    /* forward over forward */
    const double A[9] = {1, 2, 0, -1, 3, 1, 0.5, 0, 2}, xv[3] = {0.3, -1, 2}, t[3] = {1, 0, -2}, sv[3] = {0.5, 2, 1};
    int64_t s33[2] = {3, 3};
    int64_t a = mk(AD_F64, 2, s33, A, 0), x = vec(3, xv, 1), ax = ad_matmul(a, x), q = ad_matmul(x, ax);
    int64_t th = vec(3, t, 0), tq = 0;
    CHECK(ad_jvp_graph(q, 1, &x, &th, &tq) == AD_OK);
    double e1 = 0, e2 = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            e1 += t[i] * A[i * 3 + j] * xv[j] + xv[i] * A[i * 3 + j] * t[j];
            e2 += t[i] * A[i * 3 + j] * sv[j] + sv[i] * A[i * 3 + j] * t[j];
        }
    CHECK_CLOSE(at(tq, 0), e1, 1e-14);
    int64_t srow = mk(AD_F64, 2, s13, sv, 0), tqs = 0;
    CHECK(ad_jvp(tq, 1, &x, &srow, 1, &tqs) == AD_OK);
    CHECK_CLOSE(at(tqs, 0), e2, 1e-14);

    /* a failure part-way (exp's rule, while the elementwise rules are not there) frees all it made */
    int64_t e = ad_unary(AD_OP_EXP, x, 0, 0), em = ad_matmul(e, ax), r = 0;
    ad_stats_t before = stats();
    int st = ad_vjp_graph(em, one, 1, &x, &r);
    CHECK(st == AD_OK || (st == -AD_ERR_RUNTIME && strstr(ad_last_error(), "exp has no differentiable rule")));
    if (st == AD_OK) DROP(r);
    CHECK_BASELINE(before);
    /* a cotangent of the wrong shape, a tangent of the wrong dtype */
    CHECK_ERR(ad_vjp_graph(f, vh, 2, leaves, d), AD_ERR_VALUE);
    int64_t t32 = mk(AD_F32, 1, (int64_t[]){3}, t, 0);
    CHECK_ERR(ad_jvp_graph(q, 1, &x, &t32, &tq), AD_ERR_VALUE);

    DROP(m, u, w, mw, f, one, g[0], g[1], vh, d[0], d[1], vrow, dn[0], dn[1], a, x, ax, q, th, tq, srow, tqs,
         e, em, t32);
    CHECK_BASELINE(base);
}

/* ad_depends: what a root reaches, stopping at a transform's own inputs; ad_backward_graph:
 * recorded grads, accumulated as recorded sums, differentiable again; a numeric backward after it
 * accumulates into a copy (the recorded grad's value stays what its op computed). */
/* ad_copy (core.h) at every size class (memcpy below 2 KB, the 16-byte loop up to 768 KB, memcpy
 * above) and every relative alignment: byte-exact, and nothing written past the end. */
static void test_copy(void)
{
    enum { MAX = (800 << 10) + 200 };
    unsigned char *src = malloc(MAX + 64), *dst = malloc(MAX + 128);
    CHECK(src && dst);
    if (!src || !dst) { free(src); free(dst); return; }
    for (size_t i = 0; i < MAX + 64; i++) src[i] = (unsigned char)(i * 131 + 7);
    const size_t sizes[] = {0, 1, 63, 64, 65, 2048, 2049, 3000, 8192 + 5, 100000, (768 << 10) - 1, 768 << 10, MAX};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
        for (int so = 0; so < 32; so += 7)
            for (int d = 0; d < 40; d += 8) {
                size_t n = sizes[k];
                memset(dst, 0xAB, MAX + 128);
                ad_copy(dst + d, src + so, n);
                CHECK(memcmp(dst + d, src + so, n) == 0);
                CHECK(dst[d + n] == 0xAB && (d == 0 || dst[d - 1] == 0xAB));
            }
    free(src);
    free(dst);
}

static void test_dependence_and_backward_graph(void)
{
    ad_stats_t base = stats();
    const double xv[2] = {1, 2}, wv[2] = {3, 4};
    int64_t x = vec(2, xv, 1), w = vec(2, wv, 1), c = vec(2, wv, 0);
    int64_t xx = ad_binary(AD_OP_MUL, x, x), xxw = ad_binary(AD_OP_MUL, xx, w), y = ad_reduce(AD_OP_SUM, xxw, -1, NULL, 0);
    int64_t xc = ad_binary(AD_OP_MUL, x, c);
    CHECK(y > 0 && xc > 0);
    int reached[2] = {-1, -1};
    int64_t outside = -1, stop[2] = {x, w};
    CHECK(ad_depends(y, 1, stop, reached, &outside) == AD_OK);
    CHECK(reached[0] == 1 && outside == 1);              /* w is a requires-grad leaf outside {x} */
    CHECK(ad_depends(y, 2, stop, reached, &outside) == AD_OK);
    CHECK(reached[0] == 1 && reached[1] == 1 && outside == 0);
    int64_t stop_xx[1] = {xx};
    CHECK(ad_depends(y, 1, stop_xx, reached, &outside) == AD_OK);
    CHECK(reached[0] == 1 && outside == 1);              /* x is behind xx: not looked through */
    int64_t stop_w[1] = {w};
    CHECK(ad_depends(xc, 1, stop_w, reached, &outside) == AD_OK);
    CHECK(reached[0] == 0 && outside == 1);
    CHECK(ad_depends(c, 0, NULL, NULL, &outside) == AD_OK && outside == 0);   /* a constant */
    CHECK_ERR(ad_depends(y, 2, (int64_t[]){x, x}, reached, &outside), AD_ERR_VALUE);

    /* y = sum(x^2 w): dy/dx = 2 x w, dy/dw = x^2, recorded */
    CHECK(ad_backward_graph(y, 0) == AD_OK);
    int64_t gx = ad_grad(x), gw = ad_grad(w);
    for (int i = 0; i < 2; i++) {
        CHECK_CLOSE(at(gx, i), 2 * xv[i] * wv[i], 1e-15);
        CHECK_CLOSE(at(gw, i), xv[i] * xv[i], 1e-15);
    }
    CHECK(info_of(gx).requires_grad && !info_of(gx).is_leaf);
    /* again: the grads accumulate as recorded sums */
    CHECK(ad_backward_graph(y, 0) == AD_OK);
    int64_t gx2 = ad_grad(x);
    CHECK_CLOSE(at(gx2, 0), 4 * xv[0] * wv[0], 1e-15);
    /* s = sum(x.grad) = sum(4 x w): ds/dw = 4 x, by a numeric backward into w's recorded grad,
     * which accumulates into a copy: gw (held here) keeps its value */
    int64_t s = ad_reduce(AD_OP_SUM, gx2, -1, NULL, 0);
    CHECK(ad_backward(s, 0, 0) == AD_OK);
    int64_t gw2 = ad_grad(w);
    for (int i = 0; i < 2; i++) {
        CHECK_CLOSE(at(gw2, i), 2 * xv[i] * xv[i] + 4 * xv[i], 1e-15);
        CHECK_CLOSE(at(gw, i), xv[i] * xv[i], 1e-15);
    }
    CHECK_ERR(ad_backward_graph(c, 0), AD_ERR_RUNTIME);   /* a constant does not require grad */
    /* x.grad depends on x: the reference cycle is broken by clearing the grads */
    CHECK(ad_set_grad(x, 0) == AD_OK && ad_set_grad(w, 0) == AD_OK);
    DROP(x, w, c, xx, xxw, y, xc, gx, gw, gx2, s, gw2);
    CHECK_BASELINE(base);
}

int main(void)
{
    ad_stats_t base = stats();
    RUN(test_lifecycle);
    RUN(test_gradient_values);
    RUN(test_graph_release);
    RUN(test_sweep_tape_growth);
    RUN(test_long_chain);
    RUN(test_fanout);
    RUN(test_threads);
    RUN(test_bad_input);
    RUN(test_empty);
    RUN(test_anomaly);
    RUN(test_recorded_sweeps);
    RUN(test_dependence_and_backward_graph);
    RUN(test_copy);
    ad_stats_t end = stats();
    /* the core's own counters: everything the tests made is gone */
    CHECK(end.live_nodes == 0 && base.live_nodes == 0);
    CHECK(end.live_bytes == 0);
    if (end.live_nodes || end.live_bytes)
        fprintf(stderr, "leak: %lld nodes, %lld bytes still live\n", (long long)end.live_nodes,
                (long long)end.live_bytes);
    return REPORT();
}
