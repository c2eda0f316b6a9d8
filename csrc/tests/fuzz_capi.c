/* Random-call fuzz driver for the C API: malformed calls (stale, foreign and made-up handles,
 * absurd and negative shapes, NULL pointers, op codes and dtypes out of range, bad axes and
 * permutations, seeds of the wrong shape) mixed with valid ones, so that bad calls land on live,
 * half-released and swept graphs. Every call must return a handle or an error code with a
 * message, never crash (ASan/UBSan abort on the first memory or UB error), and when everything
 * is released the core's live counters must be back at zero.
 *
 *   fuzz_capi [seed [iterations]]      deterministic for a given seed
 */
#include "check.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

const char *__asan_default_options(void) { return "allocator_may_return_null=1:detect_leaks=1"; }

static uint64_t g_rng;
static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static int64_t below(int64_t n) { return (int64_t)(rnd() % (uint64_t)n); }
static int chance(int percent) { return below(100) < percent; }

#define POOL 48
static int64_t owned[POOL * 2];   /* one entry per reference we hold (duplicates allowed) */
static int nowned;
static int64_t stale[POOL];
static int nstale;
static int64_t made, errors, calls, fanouts, scalar_plans;
static int failures;

static void fail(const char *what, int64_t r)
{
    failures++;
    if (failures < 20)
        fprintf(stderr, "fuzz_capi: call #%lld %s returned %lld (error message: \"%s\")\n",
                (long long)calls, what, (long long)r, ad_last_error());
}

static void remember_stale(int64_t h)
{
    if (nstale < POOL) stale[nstale++] = h;
    else stale[below(POOL)] = h;
}

static void drop_owned(int i)
{
    int64_t h = owned[i];
    owned[i] = owned[--nowned];
    if (ad_release(h) != AD_OK) fail("ad_release(owned)", h);
    for (int k = 0; k < nowned; k++)
        if (owned[k] == h) return;
    remember_stale(h);
}

static void own(int64_t h)
{
    if (nowned == POOL * 2) drop_owned((int)below(nowned));
    owned[nowned++] = h;
}

/* A returned handle must be fully valid: info works and describes a consistent tensor. */
static void check_handle(const char *what, int64_t r, int zero_ok)
{
    if (r > 0) {
        ad_info_t info;
        int st = ad_info(r, &info);
        int64_t size = 1;
        int ok = st == AD_OK && info.ndim >= 0 && info.ndim <= AD_MAXDIM &&
                 (info.dtype == AD_F32 || info.dtype == AD_F64) && info.data != NULL;
        for (int i = 0; ok && i < info.ndim; i++) {
            ok = info.shape[i] >= 0;
            size = info.shape[i] == 0 || size == 0 ? 0 : size * info.shape[i];
        }
        if (!ok || size != info.size) { fail(what, r); return; }
        made++;
        own(r);
    } else if (r == 0) {
        if (!zero_ok) fail(what, r);
    } else {
        errors++;
        if (r < -AD_ERR_LINALG || ad_last_error()[0] == 0) fail(what, r);
    }
}

static void check_status(const char *what, int64_t st)
{
    if (st == 0) return;
    errors++;
    if (st > 0 || st < -AD_ERR_LINALG || ad_last_error()[0] == 0) fail(what, st);
}

/* ---- inputs ---- */

static int64_t foreign[8];
static int nforeign;

static int64_t made_up_handle(void)
{
    switch (below(6)) {
    case 0: return 0;
    case 1: return -(int64_t)below(10) - 1;
    case 2: return INT64_MIN + below(3);
    case 3: return INT64_MAX - below(3);
    /* real tape ids with generation 0, which no live node has */
    case 4: return ((int64_t)(1 + below(3)) << 48) | below(1 << 20);
    default: return (int64_t)(rnd() & ~(((uint64_t)0x3fffff) << 26));
    }
}

static int64_t any_handle(void)
{
    int k = (int)below(100);
    if (k < 70 && nowned) return owned[below(nowned)];
    if (k < 82 && nstale) return stale[below(nstale)];
    if (k < 88 && nforeign) return foreign[below(nforeign)];
    if (k < 94 && nowned) return owned[below(nowned)];
    return made_up_handle();
}

static int64_t dim(void)
{
    static const int64_t absurd[] = {-1, -2, -7, (int64_t)1 << 40, (int64_t)1 << 62, INT64_MAX, INT64_MIN};
    if (chance(4)) return absurd[below(sizeof absurd / sizeof absurd[0])];
    static const int64_t usual[] = {0, 1, 1, 2, 2, 3, 3, 4};
    return usual[below(8)];
}

static int ndim_arg(void)
{
    if (chance(3)) { static const int odd[] = {-1, -5, 9, 10, 16, 1000}; return odd[below(6)]; }
    return (int)below(5);
}

/* a shape array always has room for 16 entries, so an ndim up to 16 is read in bounds */
static const int64_t *shape_arg(int64_t *buf, int ndim)
{
    for (int i = 0; i < 16; i++) buf[i] = dim();
    if (chance(3) && ndim != 0) return NULL;
    if (ndim > 16) return chance(50) ? NULL : buf;   /* the core must reject ndim first */
    return buf;
}

/* a shape some existing tensor has, so reshapes and broadcasts sometimes succeed */
static int like_shape(int64_t *buf)
{
    ad_info_t info;
    if (!nowned || ad_info(owned[below(nowned)], &info)) return ndim_arg();
    for (int i = 0; i < info.ndim; i++) buf[i] = info.shape[i];
    if (info.ndim && chance(30)) buf[below(info.ndim)] = -1;
    return info.ndim;
}

static int op_arg(int lo, int hi)
{
    if (chance(8)) { static const int odd[] = {-1, AD_OP_LEAF, AD_OP_COUNT, AD_OP_COUNT + 5, 1 << 30, -100000}; return odd[below(6)]; }
    return lo + (int)below(hi - lo + 1);
}

static double scalar_arg(void)
{
    static const double vals[] = {0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 3.0, -2.5, 1e300, -1e300, 1e-300, INFINITY, -INFINITY, NAN};
    return vals[below(sizeof vals / sizeof vals[0])];
}

static double data_buf[70000];

static void fill_data(int64_t n)
{
    for (int64_t i = 0; i < n; i++) data_buf[i] = chance(90) ? (double)below(9) - 4 : scalar_arg();
}

/* ---- foreign handles: tensors made on other threads, some of them with a graph ---- */

static void *make_foreign(void *p)
{
    (void)p;
    int64_t s[2] = {2, 2};
    for (int i = 0; i < 4 && nforeign < 8; i++) {
        int64_t x = ad_full(AD_F64, 2, s, 1.5, 1);
        foreign[nforeign++] = x;
        if (nforeign < 8) foreign[nforeign++] = ad_unary(AD_OP_EXP, x, 0, 0);
    }
    return NULL;
}

static int64_t fuzz_site(void) { return 1 + below(1000); }

/* Product of a shape the driver generated, or -1 when it is not small and valid: arrays that
 * the core reads per element (indices, condition bytes) are only passed for small shapes, or for
 * absurd ones that the core must reject before reading anything. */
static int64_t small_size(int nd, const int64_t *sh)
{
    if (!sh || nd < 0 || nd > AD_MAXDIM) return -1;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) {
        if (sh[i] < 0 || sh[i] > 70000) return -1;
        n *= sh[i];
        if (n > 35000) return -1;
    }
    return n;
}

static int64_t index_buf[35000];

/* an integer that no sane caller passes */
static int64_t absurd_int(void)
{
    static const int64_t v[] = {0, -1, -5, (int64_t)1 << 40, -((int64_t)1 << 62), INT64_MAX, INT64_MIN};
    return v[below(sizeof v / sizeof v[0])];
}

/* a gather / scatter_add block: mostly 1, sometimes rows, sometimes nonsense */
static int64_t block_arg(void)
{
    return chance(70) ? 1 : chance(80) ? 1 + (int64_t)below(8) : absurd_int();
}
static uint8_t cond_buf[35000];

static void optim_arg(ad_optim_t *o)
{
    o->kind = chance(10) ? (int)below(7) - 2 : (int)below(4);
    o->lr = chance(80) ? 0.01 : scalar_arg();
    o->weight_decay = chance(70) ? 0 : scalar_arg();
    o->momentum = chance(50) ? 0 : 0.9;
    o->dampening = chance(80) ? 0 : scalar_arg();
    o->nesterov = (int)below(2);
    o->beta1 = chance(80) ? 0.9 : scalar_arg();
    o->beta2 = chance(80) ? 0.999 : scalar_arg();
    o->eps = chance(80) ? 1e-8 : scalar_arg();
    o->decoupled = (int)below(2);
    o->amsgrad = (int)below(2);
    o->alpha = chance(80) ? 0.99 : scalar_arg();
    o->centered = (int)below(2);
    o->lr_decay = chance(80) ? 0 : scalar_arg();
}

/* A plan (csrc/replay.c) of random roots, inputs and watched tensors, replayed with buffers of the
 * sizes ad_plan_info gives (or NULL pointers where the API must refuse them), then freed. */
static double plan_buf[8][4096];
static void fuzz_plan(void)
{
    int64_t hs[16], watch[4], widx[4];
    int n = chance(10) ? (int)below(30) - 10 : (int)below(4);
    int nw = chance(10) ? (int)below(10) - 5 : (int)below(3);
    for (int i = 0; i < 16; i++) hs[i] = any_handle();
    for (int i = 0; i < 4; i++) watch[i] = any_handle();
    if (chance(20)) check_status("ad_record_mode", ad_record_mode((int)below(2)) < 0 ? -AD_ERR_VALUE : 0);
    ad_plan *p = NULL;
    int st = ad_plan_build(any_handle(), n, n > 16 || chance(5) ? NULL : hs, nw, nw > 4 || chance(5) ? NULL : watch,
                           chance(5) ? NULL : widx, chance(3) ? NULL : &p);
    check_status("ad_plan_build", st);
    if (st || !p) { ad_plan_free(p); return; }
    /* fused from a random size (a negative one is refused), or not */
    int64_t fused[3];
    if (chance(50))
        check_status("ad_plan_fuse", ad_plan_fuse(p, chance(10) ? (int64_t)below(4) - 2 : 1 + (int64_t)below(300),
                                                  fused, chance(50) ? NULL : fused + 1, fused + 2));
    const void *in[16];
    void *grads[16];
    int fits = 1;
    ad_info_t info;
    for (int i = 0; i < n; i++) {
        check_status("ad_plan_info", ad_plan_info(p, i, &info));
        fits &= info.size <= 4096;
        in[i] = plan_buf[i % 4];
        grads[i] = plan_buf[4 + i % 4];
    }
    check_status("ad_plan_info", ad_plan_info(p, -1, &info));
    fits &= info.size <= 4096 && n <= 4;
    if (chance(10)) check_status("ad_plan_info(bad)", ad_plan_info(p, (int)below(40) - 20, chance(50) ? NULL : &info));
    if (fits) {
        static double out[4096], seed[4096];
        for (int k = 0; k < 4096; k++) seed[k] = 1;
        /* inputs and grads alias on purpose sometimes: any values at all must replay cleanly */
        st = ad_plan_run(p, chance(5) && n ? NULL : in, chance(30) ? NULL : out, chance(50) ? NULL : seed,
                         chance(30) ? NULL : grads);
        if (st != AD_PLAN_STALE) check_status("ad_plan_run", st);
        if (!st && nw > 0) check_status("ad_plan_watch", ad_plan_watch(p, (int)below(nw + 2) - 1, &info));
        if (!st) check_status("ad_plan_backward", ad_plan_backward(p, chance(50) ? NULL : seed, chance(10) && n ? NULL : grads));
    } else {
        check_status("ad_plan_backward", ad_plan_backward(p, NULL, NULL));
    }
    int64_t ops, consts, bytes, sf = 0, sr = 0;
    check_status("ad_plan_stats", ad_plan_stats(p, &ops, &consts, &bytes));
    /* plans whose replays above ran steps in the scalar program (csrc/scalar_replay.c) */
    check_status("ad_plan_scalar_ops", ad_plan_scalar_ops(chance(5) ? NULL : p, &sf, chance(50) ? NULL : &sr));
    scalar_plans += sf + sr > 0;
    ad_plan_free(p);
}

/* A plan of one-element values and random elementwise ops, the kind the scalar program runs
 * (csrc/scalar_replay.c), sometimes fused too, replayed at the inputs it was recorded at: its
 * value and gradients must be the graph's own (ad_vjp's), bit for bit, NaN included. It draws
 * its own random numbers, so that the other calls' stream (the seeds that reproduced past
 * failures) stays as it was. */
static uint64_t sp_rng;
static uint64_t sp_below(uint64_t n)
{
    sp_rng = sp_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (sp_rng >> 33) % n;
}

static int same_bits(int64_t h, const void *data, size_t bytes)
{
    ad_info_t info;
    return ad_info(h, &info) == AD_OK && info.size == 1 && !memcmp(info.data, data, bytes);
}

static void fuzz_scalar_plan(void)
{
    static const double vals[] = {0.0, -0.0, 1.5, -0.75, 2.0, 0.3, -3.0, 1e300, INFINITY, -INFINITY, NAN};
    enum { NV = sizeof vals / sizeof vals[0] };
    if (!sp_rng) sp_rng = g_rng;
    int dt = sp_below(2) ? AD_F64 : AD_F32, nin = 1 + (int)sp_below(3), nh = 0;
    size_t isz = dt == AD_F64 ? 8 : 4;
    double in64[3];
    float in32[3];
    const void *in[3];
    int64_t h[24], leaves[3], grads[3] = {0, 0, 0}, cot = 0, shape[1] = {1};
    ad_plan *p = NULL;
    for (int i = 0; i < nin; i++) {
        in64[i] = vals[sp_below(NV)];
        in32[i] = (float)in64[i];
        in[i] = dt == AD_F64 ? (const void *)&in64[i] : (const void *)&in32[i];
        if ((leaves[i] = h[nh] = ad_tensor_new(dt, 0, shape, in[i], 1)) <= 0) { fail("ad_tensor_new(0-d)", h[nh]); goto done; }
        nh++;
    }
    for (int k = 0, nops = 1 + (int)sp_below(16); k < nops && nh < 24; k++) {
        int64_t a = h[sp_below((uint64_t)nh)], b = h[sp_below((uint64_t)nh)], r;
        if (sp_below(3))
            r = ad_unary(AD_OP_UNARY_FIRST + (int)sp_below(AD_OP_UNARY_LAST - AD_OP_UNARY_FIRST + 1), a,
                         vals[sp_below(NV)], vals[sp_below(NV)]);
        else
            r = ad_binary(AD_OP_BINARY_FIRST + (int)sp_below(AD_OP_BINARY_LAST - AD_OP_BINARY_FIRST + 1), a, b);
        if (r > 0) h[nh++] = r;    /* an op may refuse its constants (hardtanh's bounds) */
    }
    if (nh == nin) goto done;
    int64_t root = h[nh - 1];
    int st = ad_plan_build(root, nin, leaves, 0, NULL, NULL, &p);
    if (st) { fail("ad_plan_build(scalars)", st); goto done; }
    int64_t fused[3];
    if (sp_below(3) == 0) check_status("ad_plan_fuse(scalars)", ad_plan_fuse(p, 1, fused, fused + 1, fused + 2));
    double out[1], g64[3];
    float g32[3];
    void *gp[3];
    for (int i = 0; i < nin; i++) gp[i] = dt == AD_F64 ? (void *)&g64[i] : (void *)&g32[i];
    if ((st = ad_plan_run(p, in, out, NULL, gp))) { fail("ad_plan_run(scalars)", st); goto done; }
    if ((cot = ad_full(dt, 1, shape, 1.0, 0)) <= 0) { fail("ad_full(cotangent)", cot); goto done; }
    if ((st = ad_vjp(root, cot, nin, leaves, grads))) { fail("ad_vjp(scalars)", st); goto done; }
    int ok = same_bits(root, out, isz);
    for (int i = 0; i < nin; i++) ok &= same_bits(grads[i], gp[i], isz);
    if (!ok) {
        failures++;
        fprintf(stderr, "fuzz_capi: call #%lld a scalar plan (%s, %d ops) replayed other bits than the graph\n",
                (long long)calls, dt == AD_F64 ? "float64" : "float32", nh - nin);
    }
    int64_t sf = 0;
    check_status("ad_plan_scalar_ops", ad_plan_scalar_ops(p, &sf, NULL));
    scalar_plans += sf > 0;
done:
    ad_plan_free(p);
    for (int i = 0; i < nh; i++) ad_release(h[i]);
    for (int i = 0; i < nin; i++) if (grads[i] > 0) ad_release(grads[i]);
    if (cot > 0) ad_release(cot);
}

/* main's later entry points: indexing, selection, normalisers, in-place updates, batched sweeps */
/* ---- fan-out with a value check ----
 * x (2, 3, 4) feeds two consumers of any op families; the gradient of sum(c1(x)) + sum(c2(x)) by
 * backward must be the sum of the two gradients taken one consumer at a time by ad_vjp:
 * contributions add up at a branch whatever path they take through the sweep (written by the
 * kernel, summed from a broadcast scratch, handed over, kept as one value). */
enum { FAN_KINDS = 15 };

static int64_t consumer(int kind, int64_t x, int dtype)
{
    static const int64_t perm[3] = {2, 0, 1}, swap[3] = {0, 2, 1}, big[4] = {3, 2, 3, 4}, cshape[4] = {2, 2, 3, 4};
    static const int64_t rows[4] = {12, 0, 12, 12}, gshape[3] = {4, 3, 4};
    static const int64_t vshape[3] = {2, 2, 2}, vstrides[3] = {12, 4, 2};
    int64_t ax, t, r, both[2] = {x, x};
    switch (kind) {
    case 0: return ad_unary(AD_OP_TANH, x, 0, 0);
    case 1: ax = 1; return ad_reduce(AD_OP_SUM, x, 1, &ax, 0);
    case 2: ax = 2; return ad_reduce(AD_OP_MAX, x, 1, &ax, 0);            /* ties: x holds halves */
    case 3: t = ad_transpose(x, 3, swap); r = ad_matmul(x, t); ad_release(t); return r;   /* x @ x^T */
    case 4: return ad_transpose(x, 3, perm);
    case 5: return ad_gather(x, 3, gshape, rows, 12);                      /* x[[1, 0, 1, 1]] */
    case 6: ax = 2; return ad_softmax(AD_OP_SOFTMAX, x, 1, &ax, 0);
    case 7: {                                                              /* x broadcast by where */
        for (int i = 0; i < 48; i++) cond_buf[i] = (uint8_t)(i % 3 != 1);
        t = ad_full(dtype, 0, NULL, 0.5, 0);
        r = ad_where(4, cshape, cond_buf, x, t);
        ad_release(t);
        return r;
    }
    case 8: return ad_concatenate(2, both, 1, 0);
    case 9: return ad_broadcast_to(x, 4, big);
    case 10: return ad_clip(x, -0.5, 0.5);
    case 11: return ad_binary(AD_OP_MUL, x, x);
    case 12: return ad_slice(x, 3, vshape, 4, vstrides);                  /* x[:, 1:3, ::2] */
    case 13:                                                               /* x on both sides */
        for (int i = 0; i < 24; i++) cond_buf[i] = (uint8_t)(i % 4 == 1);
        return ad_where(3, cshape + 1, cond_buf, x, x);
    default: ax = 0; return ad_reduce(AD_OP_MEAN, x, 1, &ax, 1);
    }
}

/* sum of every element of c, with the reference c holds handed over */
static int64_t summed(int64_t c)
{
    int64_t s = c > 0 ? ad_reduce(AD_OP_SUM, c, -1, NULL, 0) : c;
    if (c > 0) ad_release(c);
    return s;
}

static int read_values(int64_t h, double *out, int64_t n)
{
    ad_info_t info;
    if (ad_info(h, &info) != AD_OK || info.size != n) return 0;
    for (int64_t i = 0; i < n; i++)
        out[i] = info.dtype == AD_F64 ? ((const double *)info.data)[i] : ((const float *)info.data)[i];
    return 1;
}

static void fan_out_call(void)
{
    static const int64_t shape[3] = {2, 3, 4}, one[1] = {1};
    int dtype = chance(50) ? AD_F64 : AD_F32;
    double vals[24], both[24], sep[24] = {0};
    float vals32[24];
    for (int i = 0; i < 24; i++) { vals[i] = (double)(below(9) - 4) / 2; vals32[i] = (float)vals[i]; }
    int k1 = (int)below(FAN_KINDS), k2 = (int)below(FAN_KINDS);
    int prev = ad_set_grad_enabled(1);
    int64_t x = ad_tensor_new(dtype, 3, shape, dtype == AD_F64 ? (void *)vals : (void *)vals32, 1);
    int64_t a = summed(consumer(k1, x, dtype)), b = summed(consumer(k2, x, dtype));
    int64_t root = a > 0 && b > 0 ? ad_binary(AD_OP_ADD, a, b) : -1;
    int64_t cot = ad_full(dtype, 1, one, 1.0, 0), g = -1;   /* one cotangent row for a scalar */
    int ok = x > 0 && root > 0 && cot > 0;
    /* one consumer at a time (ad_vjp keeps the graphs), then both at once (backward) */
    for (int j = 0; j < 2 && ok; j++) {
        int64_t out;
        double part[24];
        ok = ad_vjp(j ? b : a, cot, 1, &x, &out) == AD_OK && read_values(out, part, 24);
        if (ok) { ad_release(out); for (int i = 0; i < 24; i++) sep[i] += part[i]; }
    }
    ok = ok && ad_backward(root, 0, 0) == AD_OK && (g = ad_grad(x)) > 0 && read_values(g, both, 24);
    if (!ok) {
        fail("fan-out: a valid call failed", (int64_t)(k1 * 100 + k2));
    } else {
        double worst = 0, scale = 1;
        for (int i = 0; i < 24; i++) scale = fmax(scale, fabs(sep[i]));
        for (int i = 0; i < 24; i++) worst = fmax(worst, fabs(both[i] - sep[i]));
        if (!(worst <= (dtype == AD_F64 ? 1e-12 : 1e-5) * scale)) {
            failures++;
            fprintf(stderr, "fuzz_capi: fan-out of consumers %d and %d (%s): backward's gradient differs from "
                    "the sum of the two by %g\n", k1, k2, dtype == AD_F64 ? "float64" : "float32", worst);
        }
    }
    fanouts++;
    int64_t hs[6] = {x, a, b, root, cot, g};
    for (int i = 0; i < 6; i++) if (hs[i] > 0) ad_release(hs[i]);
    ad_set_grad_enabled(prev);
}

static void one_newer_call(void)
{
    int64_t sh[16], axes[16], hs[16], outs[16];
    int nd;
    switch (below(25)) {
    case 22: fuzz_plan(); fuzz_scalar_plan(); break;
    case 23: case 24: fan_out_call(); break;
    case 20: {
        /* convolution windows: a fitting 4-D or 3-D leaf now and then, parameters mostly sane */
        int64_t k[2], s[2], p[2], d[2], o[2];
        for (int i = 0; i < 2; i++) {
            k[i] = chance(90) ? 1 + below(3) : absurd_int();
            s[i] = chance(90) ? 1 + below(2) : absurd_int();
            p[i] = chance(90) ? below(2) : absurd_int();
            d[i] = chance(90) ? 1 + below(2) : absurd_int();
            o[i] = chance(90) ? below(6) : absurd_int();
        }
        if (chance(40)) {
            int64_t shp[4] = {below(3), 1 + below(3), below(7), below(7)};
            check_handle("ad_full", ad_full((int)below(2), 4, shp, 0.5, (int)below(2)), 0);
        }
        int64_t x = any_handle();
        check_handle("ad_unfold", ad_unfold(x, chance(97) ? k : NULL, s, p, chance(97) ? d : NULL), 0);
        check_handle("ad_fold", ad_fold(any_handle(), chance(97) ? o : NULL, k, s, chance(97) ? p : NULL, d), 0);
        if (chance(40)) {   /* a filter bank that fits x's channels now and then */
            int64_t wshp[4] = {below(3), 1 + below(3), 1 + below(3), 1 + below(3)};
            check_handle("ad_full", ad_full((int)below(2), 4, wshp, 0.25, (int)below(2)), 0);
        }
        check_handle("ad_conv2d", ad_conv2d(x, any_handle(), chance(97) ? s : NULL, p, chance(97) ? d : NULL), 0);
        break;
    }
    case 21: {
        /* the scan (issue 17): a and b the same node (a valid call) or any two handles */
        int64_t b = any_handle();
        check_handle("ad_scan", ad_scan(chance(60) ? b : any_handle(), b, chance(90) ? (int)below(6) - 1 : (int)absurd_int(),
                                        (int)below(5)), 0);   /* modes 3 and 4 are errors */
        /* linear algebra (kernels/lapack.c): shape and dtype checks; without SciPy's LAPACK here a
         * valid call is a clean AD_ERR_RUNTIME */
        check_handle("ad_solve", ad_solve(any_handle(), chance(50) ? b : any_handle(), (int)below(2)), 0);
        check_handle("ad_logdet", ad_logdet(any_handle(), (int)below(2), NULL), 0);
        check_handle("ad_cholesky", ad_cholesky(any_handle()), 0);
        {   /* the SVD: a status and two handles (the values; the packed SVD for jobz 1 and 2) or none */
            int64_t out[2] = {-1, -1};
            int jobz = chance(90) ? (int)below(3) : (int)absurd_int(), null_out = chance(3);
            int st = ad_svd(any_handle(), jobz, null_out ? NULL : out);
            check_status("ad_svd", st);
            if (!null_out && st && (out[0] || out[1])) fail("ad_svd: a handle out after a failure", st);
            if (!st) {
                check_handle("ad_svd values", out[0], 0);
                if (jobz) check_handle("ad_svd packed", out[1], 0);
                else if (out[1]) fail("ad_svd: a second handle for jobz 0", out[1]);
            }
        }
        break;
    }
    case 16: {
        /* custom nodes and hooks with no callback set: every sweep through one must fail cleanly
         * (backward's all-or-nothing path included) */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3);
        for (int i = 0; i < 16; i++) hs[i] = any_handle();
        check_handle("ad_custom", ad_custom(n, n > 16 || chance(5) ? NULL : hs, any_handle()), 0);
        break;
    }
    case 17: check_status("ad_set_hook", ad_set_hook(any_handle())); break;
    case 18: {
        ad_node_info_t info;
        int cap = chance(10) ? (int)below(30) - 10 : (int)below(4);
        int64_t st = ad_node_inputs(any_handle(), chance(5) ? NULL : &info, cap, cap > 16 || chance(5) ? NULL : hs);
        check_status("ad_node_inputs", st);
        int64_t keys[8];
        int got = ad_custom_reap(chance(5) ? NULL : keys, (int)below(10) - 1);
        if (got < -AD_ERR_LINALG || got > 8) fail("ad_custom_reap returned an impossible count", got);
        break;
    }
    case 14: {
        /* basic indexing: a strided view, mostly inside the source, sometimes reaching out */
        nd = chance(50) ? like_shape(sh) : ndim_arg();
        for (int i = 0; nd > 0 && i < nd && i < 16; i++) if (sh[i] < 0) sh[i] = 1;
        int64_t st[16];
        for (int i = 0; i < 16; i++) st[i] = chance(90) ? (int64_t)below(7) - 3 : absurd_int();
        int64_t off = chance(90) ? (int64_t)below(12) : absurd_int();
        check_handle("ad_slice", ad_slice(any_handle(), nd, chance(90) ? sh : shape_arg(sh, nd), off,
                                          chance(95) ? st : NULL), 0);
        /* the same from the index as written: small parts mostly, bounds and steps of any size */
        int64_t parts[4 * 16];
        int np = chance(5) ? (int)absurd_int() : (int)below(6);
        for (int i = 0; i < 16; i++) {
            int64_t *p = parts + 4 * i;
            p[0] = chance(97) ? (chance(30) ? AD_INDEX_SLICE | 4 * below(4) : below(4)) : absurd_int();
            for (int j = 1; j < 4; j++) p[j] = chance(90) ? below(9) - 4 : absurd_int();
        }
        check_handle("ad_index", ad_index(any_handle(), np, np > 16 || chance(3) ? NULL : parts), 0);
        break;
    }
    case 0: {
        nd = chance(50) ? like_shape(sh) : ndim_arg();
        for (int i = 0; nd > 0 && i < nd && i < 16; i++) if (sh[i] < 0) sh[i] = 1;
        const int64_t *s = chance(90) ? sh : shape_arg(sh, nd);
        int64_t n = small_size(nd, s);
        for (int64_t i = 0; i < (n > 0 ? n : 0); i++)
            index_buf[i] = chance(97) ? below(8) : (chance(50) ? -1 - below(3) : (int64_t)1 << 40);
        /* an index array only when its length is known; absurd shapes get NULL */
        check_handle("ad_gather", ad_gather(any_handle(), nd, s, n >= 0 && chance(95) ? index_buf : NULL, block_arg()), 0);
        break;
    }
    case 1: {
        int n = chance(10) ? (int)below(40) - 20 : (int)below(5);
        for (int i = 0; i < 16; i++) hs[i] = any_handle();
        const int64_t *xs = n > 16 || chance(5) ? NULL : hs;
        check_handle("ad_concatenate", ad_concatenate(n, xs, chance(10) ? dim() : below(7) - 3, (int)below(2)), 0);
        break;
    }
    case 2: {
        nd = chance(50) ? like_shape(sh) : ndim_arg();
        for (int i = 0; nd > 0 && i < nd && i < 16; i++) if (sh[i] < 0) sh[i] = 1;
        const int64_t *s = chance(90) ? sh : shape_arg(sh, nd);
        int64_t n = small_size(nd, s);
        for (int64_t i = 0; i < (n > 0 ? n : 0); i++) cond_buf[i] = (uint8_t)(chance(95) ? below(2) : below(256));
        check_handle("ad_where", ad_where(nd, s, n >= 0 && chance(95) ? cond_buf : NULL, any_handle(), any_handle()), 0);
        break;
    }
    case 3: check_handle("ad_clip", ad_clip(any_handle(), scalar_arg(), scalar_arg()), 0); break;
    case 4: {
        int n = chance(20) ? -1 : (int)below(chance(5) ? 17 : 4);
        for (int i = 0; i < 16; i++) axes[i] = chance(5) ? dim() : below(9) - 4;
        check_handle("ad_softmax", ad_softmax(op_arg(AD_OP_LOGSUMEXP, AD_OP_LOG_SOFTMAX), any_handle(), n,
                                              chance(5) ? NULL : axes, (int)below(2)), 0);
        break;
    }
    case 5: {
        /* the data must hold size elements of the tensor's dtype (the caller's contract) */
        int64_t h = any_handle();
        ad_info_t info;
        if (ad_info(h, &info) == AD_OK && info.size <= 35000) {
            fill_data(info.size);
            if (info.dtype == AD_F32) { float *f = (float *)data_buf; for (int64_t i = 0; i < info.size; i++) f[i] = (float)data_buf[i]; }
            check_status("ad_assign", ad_assign(h, chance(5) ? NULL : data_buf));
        } else {
            check_status("ad_assign", ad_assign(h, NULL));
        }
        break;
    }
    case 6: {
        ad_optim_t o;
        optim_arg(&o);
        check_status("ad_optim_step", ad_optim_step(chance(5) ? NULL : &o, any_handle(),
                                                    chance(30) ? 0 : any_handle(), chance(50) ? 0 : any_handle(),
                                                    chance(50) ? 0 : any_handle(),
                                                    chance(90) ? 1 + below(5) : (int64_t)below(5) - 3));
        break;
    }
    case 8: {
        /* Hessian-vector products: like jvp, with one result per input */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3) + 1;
        int64_t k = chance(10) ? dim() : 1 + below(3), res[16];
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); outs[i] = any_handle(); res[i] = -1; }
        int64_t st = ad_hvp(any_handle(), n, n > 16 || chance(5) ? NULL : hs, n > 16 || chance(5) ? NULL : outs, k,
                            n > 16 || chance(5) ? NULL : res);
        check_status("ad_hvp", st);
        for (int i = 0; st == 0 && i < n; i++) check_handle("ad_hvp's result", res[i], 0);
        break;
    }
    case 7: {
        /* batched forward mode: n inputs with k tangent directions each */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3) + 1;
        int64_t k = chance(10) ? dim() : 1 + below(3);
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); outs[i] = any_handle(); }
        int64_t out = 0;
        int64_t st = ad_jvp(any_handle(), n, n > 16 || chance(5) ? NULL : hs, n > 16 || chance(5) ? NULL : outs, k,
                            chance(5) ? NULL : &out);
        check_status("ad_jvp", st);
        if (st == 0) check_handle("ad_jvp's tangent", out, 0);
        break;
    }
    case 9: {
        /* recorded reverse sweep: one cotangent shaped like the root */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3) + 1;
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); outs[i] = -1; }
        int64_t st = ad_vjp_graph(any_handle(), any_handle(), n, n > 16 || chance(5) ? NULL : hs,
                                  n > 16 || chance(5) ? NULL : outs);
        check_status("ad_vjp_graph", st);
        for (int i = 0; st == 0 && i < n; i++) check_handle("ad_vjp_graph's grad", outs[i], 0);
        break;
    }
    case 10: {
        /* recorded forward sweep: one tangent per input, shaped like it */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3) + 1;
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); outs[i] = any_handle(); }
        int64_t out = 0;
        int64_t st = ad_jvp_graph(any_handle(), n, n > 16 || chance(5) ? NULL : hs, n > 16 || chance(5) ? NULL : outs,
                                  chance(5) ? NULL : &out);
        check_status("ad_jvp_graph", st);
        if (st == 0) check_handle("ad_jvp_graph's tangent", out, 0);
        break;
    }
    case 11: {
        /* scatter_add: one index per element of x, into a result of the given shape */
        int64_t x = any_handle();
        ad_info_t info;
        nd = chance(50) ? like_shape(sh) : ndim_arg();
        for (int i = 0; nd > 0 && i < nd && i < 16; i++) if (sh[i] < 0) sh[i] = 1;
        const int64_t *s = chance(90) ? sh : shape_arg(sh, nd);
        int64_t n = small_size(nd, s);
        int known = ad_info(x, &info) == AD_OK && info.size <= 35000;
        for (int64_t i = 0; known && i < info.size; i++)
            index_buf[i] = chance(97) ? below(n > 0 ? n : 1) : (chance(50) ? -1 - below(3) : (int64_t)1 << 40);
        /* an index array only when x's size is known; otherwise NULL */
        check_handle("ad_scatter_add", ad_scatter_add(x, nd, s, known && chance(95) ? index_buf : NULL, block_arg()), 0);
        break;
    }
    case 12: {
        /* the dependence walk of the transforms: n stop tensors, flags back per stop */
        int n = chance(10) ? (int)below(30) - 10 : (int)below(4);
        int reached[16];
        int64_t outside = -1;
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); reached[i] = -1; }
        int *flags = chance(20) ? NULL : reached;
        int64_t st = ad_depends(any_handle(), n, n > 16 || chance(5) ? NULL : hs, flags, chance(5) ? NULL : &outside);
        check_status("ad_depends", st);
        for (int i = 0; st == 0 && flags && i < n && i < 16; i++)
            if (reached[i] != 0 && reached[i] != 1) fail("ad_depends left a reached flag that is not 0 or 1", reached[i]);
        break;
    }
    case 13:
        /* backward with create_graph: the recorded sweep into the leaves' grads */
        check_status("ad_backward_graph", ad_backward_graph(any_handle(), chance(50) ? 0 : any_handle()));
        break;
    case 15: {
        /* in-place writes and aliases, with grad mode either way: the sweeps above then meet
         * bumped versions and nodes that share their values */
        int prev = ad_set_grad_enabled((int)below(2));
        check_status("ad_write", ad_write(any_handle(), any_handle()));
        check_handle("ad_data", ad_data(any_handle()), 0);
        int64_t v = ad_version(any_handle());
        if (v < 0) check_status("ad_version", v);
        ad_set_grad_enabled(prev);
        break;
    }
    default: {
        int n = chance(10) ? (int)below(30) - 10 : (int)below(3) + 1;
        for (int i = 0; i < 16; i++) { hs[i] = any_handle(); outs[i] = -1; }
        int64_t st = ad_vjp(any_handle(), any_handle(), n, n > 16 || chance(5) ? NULL : hs,
                            n > 16 || chance(5) ? NULL : outs);
        check_status("ad_vjp", st);
        for (int i = 0; st == 0 && i < n; i++) check_handle("ad_vjp's grad", outs[i], 0);
        break;
    }
    }
}

/* ---- one random call ---- */

static void one_call(void)
{
    int64_t sh[16], axes[16];
    int nd;
    calls++;
    switch (below(30)) {
    case 0: {
        nd = ndim_arg();
        const int64_t *s = shape_arg(sh, nd);
        int dtype = chance(5) ? (int)below(5) - 2 : (int)below(2);
        int64_t n = 1;
        for (int i = 0; s && i < nd && i < 16; i++) n = s[i] < 0 || s[i] > 70000 ? -1 : (n < 0 ? n : n * s[i]);
        const void *data = NULL;
        /* data only when its length is known to fit; the core reads exactly size elements */
        if (s && nd >= 0 && nd <= AD_MAXDIM && n >= 0 && n <= 35000 && chance(70)) {
            fill_data(n);
            if (dtype == AD_F32) { float *f = (float *)data_buf; for (int64_t i = 0; i < n; i++) f[i] = (float)data_buf[i]; }
            data = data_buf;
        }
        check_handle("ad_tensor_new", ad_tensor_new(dtype, nd, s, data, (int)below(2)), 0);
        break;
    }
    case 1:
        nd = ndim_arg();
        check_handle("ad_full", ad_full(chance(5) ? 3 : (int)below(2), nd, shape_arg(sh, nd), scalar_arg(), (int)below(2)), 0);
        break;
    case 2: {
        int64_t h = any_handle();
        int64_t st = ad_retain(h);
        check_status("ad_retain", st);
        if (st == 0) own(h);
        break;
    }
    case 3: {
        if (nowned && chance(80)) { drop_owned((int)below(nowned)); break; }
        int64_t h = chance(50) && nstale ? stale[below(nstale)] : made_up_handle();
        /* a handle whose last reference we dropped may still be live (its consumers hold the
         * node): releasing it again would be an over-release no API can detect, so only dead
         * handles are released here, and the generation check must reject them */
        ad_info_t info;
        if (ad_info(h, &info) == AD_OK) break;
        int64_t st = ad_release(h);
        if (st == 0) fail("ad_release of a released or made-up handle succeeded", h);
        check_status("ad_release", st);
        break;
    }
    case 4: {
        ad_info_t info;
        check_status("ad_info", ad_info(any_handle(), chance(5) ? NULL : &info));
        break;
    }
    case 5: check_status("ad_set_requires_grad", ad_set_requires_grad(any_handle(), (int)below(3))); break;
    case 6: check_handle("ad_detach", ad_detach(any_handle()), 0); break;
    case 7:
    case 8: check_handle("ad_unary", ad_unary(op_arg(AD_OP_UNARY_FIRST, AD_OP_UNARY_LAST), any_handle(), scalar_arg(), scalar_arg()), 0); break;
    case 9:
    case 10: check_handle("ad_binary", ad_binary(op_arg(AD_OP_BINARY_FIRST, AD_OP_BINARY_LAST), any_handle(), any_handle()), 0); break;
    case 11: check_handle("ad_unary", ad_unary(op_arg(AD_OP_ADD_S, AD_OP_RPOW_S), any_handle(), scalar_arg(), 0), 0); break;
    case 12: {
        int n = chance(20) ? -1 : (int)below(chance(5) ? 17 : 4);
        for (int i = 0; i < 16; i++) axes[i] = chance(5) ? dim() : below(9) - 4;
        check_handle("ad_reduce", ad_reduce(op_arg(AD_OP_SUM, AD_OP_MIN), any_handle(), n,
                                            chance(5) ? NULL : axes, (int)below(2)), 0);
        break;
    }
    case 13: check_handle("ad_matmul", ad_matmul(any_handle(), any_handle()), 0); break;
    case 14:
        nd = chance(60) ? like_shape(sh) : ndim_arg();
        check_handle("ad_reshape", ad_reshape(any_handle(), nd, nd == like_shape(sh) || chance(50) ? sh : shape_arg(sh, nd)), 0);
        break;
    case 15: {
        int n = chance(20) ? -1 : (int)below(chance(5) ? 17 : 5);
        for (int i = 0; i < 16; i++) axes[i] = chance(5) ? dim() : below(n > 0 ? n : 1);
        if (n > 0 && chance(50)) for (int i = 0; i < n; i++) axes[i] = n - 1 - i;
        check_handle("ad_transpose", ad_transpose(any_handle(), n, chance(5) ? NULL : axes), 0);
        break;
    }
    case 16:
        nd = chance(60) ? like_shape(sh) : ndim_arg();
        if (nd >= 0 && nd < 8 && chance(40)) { for (int i = 7; i > 0; i--) sh[i] = sh[i - 1]; sh[0] = below(3); nd++; }
        check_handle("ad_broadcast_to", ad_broadcast_to(any_handle(), nd, chance(70) ? sh : shape_arg(sh, nd)), 0);
        break;
    case 17: check_handle("ad_cast", ad_cast(any_handle(), chance(10) ? (int)below(7) - 3 : (int)below(2)), 0); break;
    case 18:
    case 19: {
        int64_t seed = chance(50) ? 0 : any_handle();
        check_status("ad_backward", ad_backward(any_handle(), seed, (int)below(2)));
        break;
    }
    case 20: check_handle("ad_grad", ad_grad(any_handle()), 1); break;
    case 21: check_status("ad_set_grad", ad_set_grad(any_handle(), chance(30) ? 0 : any_handle())); break;
    case 22: {
        int prev = ad_set_grad_enabled(chance(70));
        if (prev != 0 && prev != 1) fail("ad_set_grad_enabled", prev);
        break;
    }
    case 24: case 25: case 26: case 27: case 28: one_newer_call(); break;
    case 23: {
        int prev = ad_set_anomaly(chance(30), chance(50) ? fuzz_site : NULL);
        if (prev != 0 && prev != 1) fail("ad_set_anomaly", prev);
        if (ad_anomaly_site() < 0) fail("ad_anomaly_site", ad_anomaly_site());
        break;
    }
    default: {
        ad_stats_t s;
        check_status("ad_stats", ad_stats(chance(10) ? NULL : &s));
        break;
    }
    }
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
    long iters = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    g_rng = seed * 0x2545F4914F6CDD1DULL + 1;
    pthread_t th;
    pthread_create(&th, NULL, make_foreign, NULL);
    pthread_join(th, NULL);
    for (long i = 0; i < iters; i++) one_call();
    ad_set_grad_enabled(1);
    while (nowned) drop_owned(0);
    for (int i = 0; i < nforeign; i++)
        if (foreign[i] > 0) ad_release(foreign[i]);
    ad_stats_t s;
    ad_stats(&s);
    if (s.live_nodes || s.live_bytes) {
        failures++;
        fprintf(stderr, "fuzz_capi: %lld nodes and %lld bytes still live after releasing everything\n",
                (long long)s.live_nodes, (long long)s.live_bytes);
    }
    printf("fuzz_capi seed %llu: %lld calls, %lld handles made, %lld error statuses, %lld fan-outs checked, "
           "%lld plans with a scalar program, %d failures\n", (unsigned long long)seed, (long long)calls, (long long)made,
           (long long)errors, (long long)fanouts, (long long)scalar_plans, failures);
    return failures ? 1 : 0;
}
