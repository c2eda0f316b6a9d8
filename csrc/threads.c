/* Intra-op threads: one pool of workers that large elementwise kernels split their range over.
 *
 * Only work whose every output element is computed the same way whatever the split is shared
 * out (elementwise forward and VJP passes, not the sums), so results are bit-identical for any
 * thread count: a part is a contiguous range of elements, and a range's values never depend on
 * where it starts.
 *
 * One op at a time uses the pool. An op that finds it busy (another Python thread's op is
 * running in parallel) runs on its own thread instead of waiting: two threads of the caller are
 * already two streams of work. Worker threads never touch a tape, a lock of the core or Python.
 *
 * fork(): the child has none of the workers, so the atfork handlers hold the pool's lock across
 * the fork (no dispatch is half done in the child) and the child starts with an empty pool,
 * which its first parallel op fills again. */
#include "core.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 64

typedef struct {
    pthread_mutex_t lock;           /* held by the dispatching op for its whole run */
    pthread_mutex_t m;              /* guards the fields below, with the two conditions */
    pthread_cond_t go, done;
    int nworkers;                   /* started */
    uint64_t epoch;                 /* bumped per dispatch: a worker runs each epoch once */
    int parts, pending;
    ad_par_fn fn;
    void *ctx;
    int64_t n, align;
} pool_t;

static pool_t g_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                        PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 0, 1};
static _Atomic int g_threads;       /* the setting; 0 until first read (the machine's cores) */
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

/* Part p of `parts`: whole blocks of `align` elements, the last part taking the remainder, so
 * every part but the last is a multiple of align long and starts at a multiple of it. */
static void part_range(int64_t n, int64_t align, int parts, int p, int64_t *lo, int64_t *hi)
{
    int64_t blocks = n / align, per = blocks / parts, extra = blocks % parts;
    *lo = (per * p + (p < extra ? p : extra)) * align;
    *hi = p == parts - 1 ? n : *lo + (per + (p < extra)) * align;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;   /* part id + 1; part 0 is the dispatcher's */
    uint64_t seen = 0;
    pthread_mutex_lock(&g_pool.m);
    for (;;) {
        while (g_pool.epoch == seen) pthread_cond_wait(&g_pool.go, &g_pool.m);
        seen = g_pool.epoch;
        if (id >= g_pool.parts) continue;
        ad_par_fn fn = g_pool.fn;
        void *ctx = g_pool.ctx;
        int64_t lo, hi;
        part_range(g_pool.n, g_pool.align, g_pool.parts, id, &lo, &hi);
        pthread_mutex_unlock(&g_pool.m);
        fn(ctx, lo, hi);
        pthread_mutex_lock(&g_pool.m);
        if (--g_pool.pending == 0) pthread_cond_signal(&g_pool.done);
    }
    return NULL;
}

static void before_fork(void) { pthread_mutex_lock(&g_pool.lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&g_pool.lock); }
static void after_fork_child(void)
{
    /* the workers did not come along; their mutex may be held by a thread that no longer exists */
    pthread_mutex_init(&g_pool.m, NULL);
    pthread_cond_init(&g_pool.go, NULL);
    pthread_cond_init(&g_pool.done, NULL);
    g_pool.nworkers = 0;
    g_pool.pending = 0;
    pthread_mutex_unlock(&g_pool.lock);
}
static void install_atfork(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

int ad_get_num_threads(void)
{
    int t = atomic_load(&g_threads);
    if (t) return t;
    /* PYAUTODIFF_NUM_THREADS, else OMP_NUM_THREADS (PyTorch's rule), else the machine's cores */
    long v = 0;
    const char *env = getenv("PYAUTODIFF_NUM_THREADS");
    if (!env || !*env) env = getenv("OMP_NUM_THREADS");
    if (env && *env) {
        char *end;
        v = strtol(env, &end, 10);
        if (*end) v = 0;
    }
    if (v < 1) v = sysconf(_SC_NPROCESSORS_ONLN);
    t = v < 1 ? 1 : v > MAX_THREADS ? MAX_THREADS : (int)v;
    int zero = 0;
    atomic_compare_exchange_strong(&g_threads, &zero, t);
    return atomic_load(&g_threads);
}

int ad_set_num_threads(int n)
{
    if (n < 1 || n > MAX_THREADS)
        return ad_err(AD_ERR_VALUE, "set_num_threads: %d threads; expected 1 to %d", n, MAX_THREADS);
    atomic_store(&g_threads, n);
    return AD_OK;
}

void ad_parallel(int64_t n, int64_t grain, int64_t align, ad_par_fn fn, void *ctx)
{
    int threads = ad_get_num_threads();
    if (align < 1) align = 1;
    int64_t most = n / (grain > align ? grain : align);
    int parts = most < threads ? (int)most : threads;
    if (parts <= 1 || pthread_mutex_trylock(&g_pool.lock)) {
        fn(ctx, 0, n);
        return;
    }
    pthread_once(&g_atfork_once, install_atfork);
    pthread_mutex_lock(&g_pool.m);
    while (g_pool.nworkers < parts - 1) {
        pthread_t t;
        pthread_attr_t attr;
        int ok = pthread_attr_init(&attr) == 0;
        ok = ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
             pthread_create(&t, &attr, worker, (void *)(intptr_t)(g_pool.nworkers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;   /* no more threads to be had: the ones there are share the work */
        g_pool.nworkers++;
    }
    if (parts > g_pool.nworkers + 1) parts = g_pool.nworkers + 1;
    g_pool.fn = fn;
    g_pool.ctx = ctx;
    g_pool.n = n;
    g_pool.align = align;
    g_pool.parts = parts;
    g_pool.pending = parts - 1;
    g_pool.epoch++;
    pthread_cond_broadcast(&g_pool.go);
    pthread_mutex_unlock(&g_pool.m);
    int64_t lo, hi;
    part_range(n, align, parts, 0, &lo, &hi);
    fn(ctx, lo, hi);
    pthread_mutex_lock(&g_pool.m);
    while (g_pool.pending > 0) pthread_cond_wait(&g_pool.done, &g_pool.m);
    pthread_mutex_unlock(&g_pool.m);
    pthread_mutex_unlock(&g_pool.lock);
}
