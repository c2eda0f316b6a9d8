/* The tape and the node arena: handles, reference counts, buffers, errors, per-thread tapes.
 *
 * Memory: node records live in fixed chunks (pointers stay valid as the arena grows) and are
 * recycled through a free list; value and adjoint buffers come from power-of-two size classes
 * kept on free lists. The lists hold up to the tape's peak live bytes (at least POOL_CAP): a
 * loop that builds and drops a graph per step then reuses its buffers instead of having the
 * kernel map and zero them again each step (on 10^7-element tensors that zeroing cost more
 * than the ops). When the tape holds no node at all the lists shrink back to POOL_CAP. A node is freed when its last reference goes: the caller's
 * handles, its consumers, and an active sweep each hold one. Freeing cascades through a worklist,
 * never recursion, so a 10^6-node chain is released in a loop. */
#define _GNU_SOURCE
#include "core.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sched.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef __linux__
#include <sys/sysinfo.h>
#include <sys/mman.h>
#endif

/* handle = tape id (15 bits) | generation (22 bits) | slot (26 bits); always > 0 */
#define SLOT_BITS 26
#define GEN_BITS 22
#define TAPE_BITS 15
#define MAX_SLOTS (1u << SLOT_BITS)
#define GEN_MASK ((1u << GEN_BITS) - 1)
#define MAX_TAPES (1u << TAPE_BITS)
#define CHUNK_BITS 12
#define CHUNK (1u << CHUNK_BITS)

#define NCLASS 24          /* size classes 2^4 .. 2^27 bytes; larger buffers go straight to malloc */
#define MIN_CLASS 4
#define POOL_CAP ((int64_t)64 << 20)

struct ad_tape {
    atomic_flag lock;          /* see spin_lock */
    uint32_t id;
    int grad_enabled;
    int orphaned;              /* owner thread exited; the tape is reused by a new thread when empty */
    ad_node **chunks;
    uint32_t nchunks, nslots;  /* slots handed out so far */
    ad_node *free_nodes;
    ad_node **order;           /* creation order; NULL = released entry awaiting compaction */
    int64_t order_len, order_cap, order_dead;
    int order_held;            /* a sweep walks the order by position: no compaction */
    void *pool[NCLASS];
    int64_t pooled_bytes, live_bytes, live_nodes;
    int64_t peak_bytes;        /* most live_bytes since the tape last held no node (the pool's cap) */
    ad_node **work;            /* release worklist */
    int64_t work_cap;
    int anomaly;               /* anomaly mode (owner thread only, like grad_enabled) */
    ad_site_fn site_fn;
    int64_t pending_site;      /* site_fn's id for the op being recorded */
    uint64_t writes;           /* in-place writes so far (see "versions") */
    uint32_t gen_floor;        /* generation of a fresh slot's first node (see tape_reclaim) */
    int recording;             /* ad_record_mode depth (owner thread only) */
    int64_t escapes;           /* values that left the graph while recording (ad_tape_escape) */
    ad_node **cows;            /* every live alias (see "aliases"), in no order */
    int64_t ncows, cows_cap;
};

/* Every call takes its tape's lock, but it is contended only when another thread reads or drops
 * one of this tape's tensors. A test-and-set spinlock costs one atomic exchange where a pthread
 * mutex pair was 9% of a scalar chain's time; a waiter yields its CPU instead of spinning hot
 * (backward holds the lock for a whole sweep). */
static inline void spin_lock(atomic_flag *f)
{
    while (atomic_flag_test_and_set_explicit(f, memory_order_acquire)) sched_yield();
}

static inline void spin_unlock(atomic_flag *f) { atomic_flag_clear_explicit(f, memory_order_release); }

static _Thread_local char t_errmsg[1024];
static _Thread_local ad_tape *t_tape;
static _Atomic(ad_tape *) g_tapes[MAX_TAPES];
static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t g_key;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static uint32_t g_next_id = 1;

const char *ad_last_error(void) { return t_errmsg; }

int ad_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_errmsg, sizeof t_errmsg, fmt, ap);
    va_end(ap);
    return -code;
}

const char *ad_dtype_name(int dtype) { return dtype == AD_F32 ? "float32" : "float64"; }

const char *ad_shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, ndim == 1 ? ",)" : ")");
    return buf;
}

/* ---------- buffers ---------- */

/* No single buffer may exceed RAM + swap. The kernel's default overcommit heuristic refuses
 * such a malloc anyway; checking here keeps the answer AD_ERR_MEMORY where overcommit is
 * unlimited (the OOM killer would strike while the buffer is filled) and under ASan. */
static size_t max_buffer_bytes(void)
{
    static _Atomic size_t cached;
    size_t v = atomic_load(&cached);
    if (v) return v;
    v = SIZE_MAX;
#ifdef __linux__
    struct sysinfo si;
    if (sysinfo(&si) == 0 && si.mem_unit) {
        unsigned long long total = ((unsigned long long)si.totalram + si.totalswap) * si.mem_unit;
        if (total && total < SIZE_MAX) v = (size_t)total;
    }
#endif
    atomic_store(&cached, v);
    return v;
}

/* Sanitizer builds, and the valgrind build (-DAD_EXACT_ALLOC), give every buffer its exact size
 * and free it at once: the size classes would hide an overflow into a class's padding from the
 * tools, and the pool a use after free. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AD_EXACT_ALLOC 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(AD_EXACT_ALLOC)
#define AD_EXACT_ALLOC 1
#endif
/* ... and the fault-injection build, so that every buffer is an allocation that can fail */
#if defined(AD_FAULT_INJECTION) && !defined(AD_EXACT_ALLOC)
#define AD_EXACT_ALLOC 1
#endif

static int size_class(size_t bytes)
{
    int c = MIN_CLASS;
    while (((size_t)1 << c) < bytes) c++;
    return c - MIN_CLASS;
}

/* A large buffer comes fresh from the kernel (glibc maps it) and faults in one 4 KiB page at a
 * time: on a 10^7-element tensor the faults cost more than the op. Transparent huge pages cut them
 * 512-fold where the kernel offers them on request (THP "madvise", the common default), as NumPy
 * does for its own arrays of 4 MiB and more. */
static void *big_alloc(size_t bytes)
{
    void *p = malloc(bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && bytes >= ((size_t)4 << 20)) {
        uintptr_t lo = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, hi = ((uintptr_t)p + bytes) & ~(uintptr_t)4095;
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);   /* advice only: failure changes nothing */
    }
#endif
    return p;
}

/* The bytes a buffer takes: at least 64, so two live buffers always start a whole AVX-512 vector
 * apart. GCC's vectorised libm loops check at run time that the output is at least a vector away
 * from each input (a broadcast 0-d operand included) and otherwise run the scalar loop (scalar libm,
 * which rounds differently from libmvec). With malloc's 32- and 48-byte neighbours a small op's
 * last bits depended on where its buffers happened to land (logaddexp of a 0-d and a (4,) tensor:
 * about 1 call in 12 with a stirred heap), and then differed from its replay, whose arena keeps
 * buffers apart for the same reason (replay.c arena_take). */
static size_t buf_bytes(size_t bytes)
{
    return bytes < 64 ? 64 : bytes;
}

void *ad_buf_alloc(ad_tape *T, size_t bytes)
{
    bytes = buf_bytes(bytes);
#ifdef AD_EXACT_ALLOC
    void *q = bytes > max_buffer_bytes() ? NULL : malloc(bytes);
    if (q) T->live_bytes += (int64_t)bytes;
    return q;
#endif
    int c = size_class(bytes);
    void *p;
    if (c < NCLASS) {
        size_t cb = (size_t)1 << (c + MIN_CLASS);
        if (T->pool[c]) {
            p = T->pool[c];
            T->pool[c] = *(void **)p;
            T->pooled_bytes -= (int64_t)cb;
        } else {
            p = big_alloc(cb);
        }
        if (p) T->live_bytes += (int64_t)cb;
    } else {
        p = bytes > max_buffer_bytes() ? NULL : big_alloc(bytes);
        if (p) T->live_bytes += (int64_t)bytes;
    }
    if (T->live_bytes > T->peak_bytes) T->peak_bytes = T->live_bytes;
    return p;
}

void ad_buf_free(ad_tape *T, void *p, size_t bytes)
{
    if (!p) return;
    bytes = buf_bytes(bytes);
#ifdef AD_EXACT_ALLOC
    T->live_bytes -= (int64_t)bytes;
    free(p);
    return;
#endif
    int c = size_class(bytes);
    if (c < NCLASS) {
        size_t cb = (size_t)1 << (c + MIN_CLASS);
        T->live_bytes -= (int64_t)cb;
        if (T->pooled_bytes + (int64_t)cb <= (T->peak_bytes > POOL_CAP ? T->peak_bytes : POOL_CAP)) {
            *(void **)p = T->pool[c];
            T->pool[c] = p;
            T->pooled_bytes += (int64_t)cb;
            return;
        }
    } else {
        T->live_bytes -= (int64_t)bytes;
    }
    free(p);
}

/* Free pooled buffers, the largest first, until at most `keep` bytes stay pooled. */
static void pool_shrink(ad_tape *T, int64_t keep)
{
    for (int c = NCLASS - 1; c >= 0 && T->pooled_bytes > keep; c--) {
        while (T->pool[c] && T->pooled_bytes > keep) {
            void *p = T->pool[c];
            T->pool[c] = *(void **)p;
            T->pooled_bytes -= (int64_t)((size_t)1 << (c + MIN_CLASS));
            free(p);
        }
    }
}

static void pool_trim(ad_tape *T)
{
    for (int c = 0; c < NCLASS; c++) {
        while (T->pool[c]) {
            void *p = T->pool[c];
            T->pool[c] = *(void **)p;
            free(p);
        }
    }
    T->pooled_bytes = 0;
}

/* ---------- tapes ---------- */

/* An orphaned tape (its thread exited) whose last node is gone: no live tensor refers to it, so
 * its memory (node records, creation order, worklist, pooled buffers) goes back to the system,
 * and only the small struct stays, for a new thread to take over with its id. A process that
 * runs many short-lived threads then holds memory for the tapes with live tensors only.
 * Handles into the freed records may still exist as plain integers (released ones, stale): they
 * must stay detectably stale. Until the tape is reused, every slot is past nslots (an invalid
 * handle); afterwards the new life's nodes start at a generation above every one the old life
 * issued (gen_floor), so an old handle matches no new node, as for a recycled slot (up to the
 * 22-bit wrap of generations, the same bound as a slot's own reuse). Called with the lock held. */
/* A chunk of node records (CHUNK of them, about a megabyte) is mapped on its own: zeroed pages
 * that become resident only as records are used, and that go back to the system when the chunk is
 * freed. From malloc, a freed chunk raises glibc's mmap threshold, after which the next threads'
 * chunks come from the heap, zeroed (all resident) and fragmenting it. */
static ad_node *chunk_alloc(void)
{
#ifdef AD_FAULT_INJECTION
    if (ad_fault_fail()) return NULL;
#endif
#if defined(__linux__)
    void *p = mmap(NULL, CHUNK * sizeof(ad_node), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
#else
    return calloc(CHUNK, sizeof(ad_node));
#endif
}

static void chunk_free(ad_node *chunk)
{
#if defined(__linux__)
    if (chunk) munmap(chunk, CHUNK * sizeof(ad_node));
#else
    free(chunk);
#endif
}

/* malloc keeps what is freed in the middle of its heap for later mallocs; many reclaimed tapes
 * leave megabytes there, resident, in holes between allocations that live on. Once enough has been
 * freed since the last time, the holes' pages go back to the system (glibc's malloc_trim: a walk
 * over the free lists, so not at every reclaim). */
static void give_back(size_t bytes)
{
#ifdef __GLIBC__
    static _Atomic size_t freed;
    if (atomic_fetch_add(&freed, bytes) + bytes >= ((size_t)4 << 20)) {
        atomic_store(&freed, 0);
        malloc_trim(0);
    }
#else
    (void)bytes;
#endif
}

static void tape_reclaim(ad_tape *T)
{
    uint32_t top = T->gen_floor;
    for (uint32_t s = 0; s < T->nslots; s++) {
        uint32_t g = T->chunks[s >> CHUNK_BITS][s & (CHUNK - 1)].gen;
        /* generations wrap: "above" is within half the cycle ahead of the floor */
        if (((g - top) & GEN_MASK) < (GEN_MASK >> 1)) top = g;
    }
    T->gen_floor = (top + 1) & GEN_MASK;
    size_t heap_bytes = (size_t)(T->order_cap + T->work_cap) * sizeof(ad_node *) + (size_t)T->pooled_bytes;
    for (uint32_t c = 0; c < T->nchunks; c++) chunk_free(T->chunks[c]);
    free(T->chunks);
    free(T->order);
    free(T->work);
    free(T->cows);
    T->cows = NULL;
    T->ncows = T->cows_cap = 0;
    T->chunks = NULL;
    T->nchunks = T->nslots = 0;
    T->free_nodes = NULL;
    T->order = NULL;
    T->order_len = T->order_cap = T->order_dead = 0;
    T->work = NULL;
    T->work_cap = 0;
    pool_trim(T);
    T->peak_bytes = T->live_bytes;
    give_back(heap_bytes);
}

static void tape_thread_exit(void *p)
{
    ad_tape *T = p;
    spin_lock(&T->lock);
    T->orphaned = 1;
    if (T->live_nodes == 0) tape_reclaim(T);
    spin_unlock(&T->lock);
}

/* fork(): the child has only the forking thread. A lock another thread held at that moment would
 * stay held in the child for good (its next op on that tape, or the next new thread, would spin
 * forever), and that thread's op would be half done. So the registry lock and every tape's lock
 * are taken before the fork, which thereby waits for any op or sweep in progress to finish (the
 * intra-op pool holds its own lock likewise, threads.c; an op never waits for that one), and
 * released on both sides after it. In the child, the other threads' tapes are orphaned, as if
 * their threads had exited: tensors inherited from them can be read and dropped, and the tape
 * is freed with its last node. The forking thread's tape carries on. */
static void tape_before_fork(void)
{
    pthread_mutex_lock(&g_reg_lock);
    for (uint32_t i = 1; i < g_next_id; i++) spin_lock(&atomic_load(&g_tapes[i])->lock);
}

static void tape_after_fork_parent(void)
{
    for (uint32_t i = 1; i < g_next_id; i++) spin_unlock(&atomic_load(&g_tapes[i])->lock);
    pthread_mutex_unlock(&g_reg_lock);
}

static void tape_after_fork_child(void)
{
    for (uint32_t i = 1; i < g_next_id; i++) {
        ad_tape *T = atomic_load(&g_tapes[i]);
        if (T != t_tape && !T->orphaned) {
            T->orphaned = 1;
            if (T->live_nodes == 0) tape_reclaim(T);
        }
        spin_unlock(&T->lock);
    }
    pthread_mutex_unlock(&g_reg_lock);
}

static int g_init_failed;   /* the key or the fork handlers could not be set up (no memory) */

static void make_key(void)
{
    g_init_failed = pthread_key_create(&g_key, tape_thread_exit) != 0 ||
                    pthread_atfork(tape_before_fork, tape_after_fork_parent, tape_after_fork_child) != 0;
}

/* Tape structs are never freed (a reclaimed tape keeps its id for the next thread), so they come
 * from blocks of their own: one calloc each would sit between the short-lived allocations of the
 * threads that come and go, and keep their freed memory from going back to the system. Called
 * with g_reg_lock held. */
#define TAPE_BLOCK 256
static ad_tape *tape_alloc(void)
{
    static ad_tape *block;
    static uint32_t used = TAPE_BLOCK;
    if (used == TAPE_BLOCK) {
        ad_tape *b = calloc(TAPE_BLOCK, sizeof *b);
        if (!b) return NULL;
        block = b;
        used = 0;
    }
    return &block[used++];
}

ad_tape *ad_tape_current(void)
{
    if (t_tape) return t_tape;
    pthread_once(&g_once, make_key);
    if (g_init_failed) {
        ad_err(AD_ERR_MEMORY, "out of memory setting up the per-thread tapes");
        return NULL;
    }
    pthread_mutex_lock(&g_reg_lock);
    ad_tape *T = NULL;
    /* An empty tape whose thread exited (already reclaimed) is reused: no live tensor refers to
     * it, and stale handles into it stay detectably stale (tape_reclaim). */
    for (uint32_t i = 1; i < g_next_id && !T; i++) {
        ad_tape *c = atomic_load(&g_tapes[i]);
        if (!c) continue;
        spin_lock(&c->lock);
        if (c->orphaned && c->live_nodes == 0) {
            c->orphaned = 0;
            c->grad_enabled = 1;
            c->anomaly = 0;
            c->site_fn = NULL;
            T = c;
        }
        spin_unlock(&c->lock);
    }
    if (!T) {
        if (g_next_id >= MAX_TAPES) {
            pthread_mutex_unlock(&g_reg_lock);
            ad_err(AD_ERR_RUNTIME, "too many threads hold live tensors (at most %u tapes)", MAX_TAPES - 1);
            return NULL;
        }
        T = tape_alloc();
        if (!T) {
            pthread_mutex_unlock(&g_reg_lock);
            ad_err(AD_ERR_MEMORY, "out of memory creating the thread's tape");
            return NULL;
        }
        atomic_flag_clear(&T->lock);
        T->grad_enabled = 1;
        T->id = g_next_id++;
        atomic_store(&g_tapes[T->id], T);
    }
    pthread_mutex_unlock(&g_reg_lock);
    pthread_setspecific(g_key, T);
    t_tape = T;
    return T;
}

static _Atomic(ad_gil_hook) g_gil_hook;

void ad_set_gil_hook(ad_gil_hook hook) { atomic_store(&g_gil_hook, hook); }

void ad_long_work(int64_t elems)
{
    if (elems < AD_LONG_WORK) return;
    ad_gil_hook hook = atomic_load_explicit(&g_gil_hook, memory_order_relaxed);
    if (hook) hook();
}

int ad_lock_current(ad_tape **out)
{
    ad_tape *T = ad_tape_current();
    if (!T) return -AD_ERR_MEMORY;
    /* outside the lock: the hook runs Python, which may release tensors of this tape */
    if (T->anomaly && T->site_fn) T->pending_site = T->site_fn();
    spin_lock(&T->lock);
    *out = T;
    return AD_OK;
}

void ad_unlock(ad_tape *T) { spin_unlock(&T->lock); }

int ad_grad_mode(ad_tape *T) { return T->grad_enabled; }

static inline ad_node *slot_node(ad_tape *T, uint32_t slot)
{
    return &T->chunks[slot >> CHUNK_BITS][slot & (CHUNK - 1)];
}

int64_t ad_handle(ad_tape *T, ad_node *n)
{
    return ((int64_t)T->id << (SLOT_BITS + GEN_BITS)) | ((int64_t)n->gen << SLOT_BITS) | n->slot;
}

static ad_tape *handle_tape(int64_t h)
{
    if (h <= 0) return NULL;
    uint64_t id = (uint64_t)h >> (SLOT_BITS + GEN_BITS);
    if (id == 0 || id >= MAX_TAPES) return NULL;
    return atomic_load(&g_tapes[id]);
}

static int resolve_any_record(ad_tape *T, int64_t h, ad_node **out, int need_value)
{
    uint32_t slot = (uint32_t)(h & (MAX_SLOTS - 1));
    uint32_t gen = (uint32_t)((h >> SLOT_BITS) & GEN_MASK);
    if (slot >= T->nslots)
        return ad_err(AD_ERR_HANDLE, "invalid tensor handle %lld", (long long)h);
    ad_node *n = slot_node(T, slot);
    if (!(n->flags & F_IN_USE) || n->gen != gen)
        return ad_err(AD_ERR_HANDLE, "tensor handle %lld refers to a released node", (long long)h);
    /* a node whose value was freed (drop_unread_value) lives on only for its consumers: every
     * handle to it had been released, so using one is a use after release */
    if (!n->data && need_value)
        return ad_err(AD_ERR_HANDLE, "tensor handle %lld refers to a released tensor", (long long)h);
    ad_long_work(n->size);
    *out = n;
    return AD_OK;
}

static int resolve_any(ad_tape *T, int64_t h, ad_node **out) { return resolve_any_record(T, h, out, 1); }

/* ad_resolve(T, h) or, with need_value 0, ad_resolve_record */
static int resolve_on(ad_tape *T, int64_t h, ad_node **out, int need_value)
{
    if (h <= 0) return ad_err(AD_ERR_HANDLE, "invalid tensor handle %lld", (long long)h);
    if (handle_tape(h) != T) {
        if (!handle_tape(h)) return ad_err(AD_ERR_HANDLE, "invalid tensor handle %lld", (long long)h);
        return ad_err(AD_ERR_RUNTIME, "tensor was created on another thread; each thread records on "
                      "its own tape, so use tensors in ops only on the thread that made them "
                      "(or pass its values, e.g. t.numpy())");
    }
    return resolve_any_record(T, h, out, need_value);
}

int ad_resolve(ad_tape *T, int64_t h, ad_node **out) { return resolve_on(T, h, out, 1); }
int ad_resolve_record(ad_tape *T, int64_t h, ad_node **out) { return resolve_on(T, h, out, 0); }

/* Lock the tape a handle belongs to (any thread), for reads and releases. */
static int lock_handle(int64_t h, ad_tape **T, ad_node **n)
{
    ad_tape *t = handle_tape(h);
    if (!t) return ad_err(AD_ERR_HANDLE, "invalid tensor handle %lld", (long long)h);
    spin_lock(&t->lock);
    int st = resolve_any(t, h, n);
    if (st) { spin_unlock(&t->lock); return st; }
    *T = t;
    return AD_OK;
}

/* ---------- nodes ---------- */

/* Compaction keeps the tape as long as the live graph, so loops run in flat memory and a sweep,
 * which walks the order from its root down, does not step over the dead entries of every earlier
 * iteration. Done when more than half the entries are dead (each costs O(1) amortized), never
 * while a sweep holds the order. */
enum { COMPACT_MIN = 1024 };

static void order_compact(ad_tape *T)
{
    if (T->order_dead <= T->order_len / 2 || T->order_held) return;
    int64_t k = 0;
    for (int64_t i = 0; i < T->order_len; i++) {
        ad_node *m = T->order[i];
        if (m) { m->pos = k; T->order[k++] = m; }
    }
    T->order_len = k;
    T->order_dead = 0;
}

static int order_push(ad_tape *T, ad_node *n)
{
    /* Not only when the array is full: a tape that fills while a sweep holds it grows instead,
     * and in a loop whose every iteration makes nodes inside a sweep (a leaf's first grad) at
     * the same phase it would fill there every time and grow forever, each backward walking all
     * of it. Any push outside a sweep compacts once over COMPACT_MIN entries are dead (and more
     * than half), so the tape stays within twice the live graph plus that. (Not when a sweep lets
     * go of the order: it still reads positions after that.) */
    if (T->order_dead > COMPACT_MIN) order_compact(T);
    if (T->order_len == T->order_cap) {
        order_compact(T);
        if (T->order_len == T->order_cap) {
            int64_t cap = T->order_cap ? T->order_cap * 2 : 1024;
            ad_node **o = realloc(T->order, (size_t)cap * sizeof *o);
            if (!o) return ad_err(AD_ERR_MEMORY, "out of memory growing the tape to %lld entries", (long long)cap);
            T->order = o;
            T->order_cap = cap;
        }
    }
    n->pos = T->order_len;
    T->order[T->order_len++] = n;
    return AD_OK;
}

static ad_node *node_take(ad_tape *T)
{
    if (T->free_nodes) {
        ad_node *n = T->free_nodes;
        T->free_nodes = n->next_free;
        return n;
    }
    if (T->nslots == T->nchunks * CHUNK) {
        if (T->nslots >= MAX_SLOTS) {
            ad_err(AD_ERR_MEMORY, "node arena full (%u live nodes)", MAX_SLOTS);
            return NULL;
        }
        ad_node **c = realloc(T->chunks, (T->nchunks + 1) * sizeof *c);
        if (!c) { ad_err(AD_ERR_MEMORY, "out of memory growing the node arena"); return NULL; }
        T->chunks = c;
        c[T->nchunks] = chunk_alloc();
        if (!c[T->nchunks]) { ad_err(AD_ERR_MEMORY, "out of memory growing the node arena"); return NULL; }
        T->nchunks++;
    }
    ad_node *n = slot_node(T, T->nslots);
    n->slot = T->nslots++;
    n->gen = T->gen_floor;   /* ad_node_new issues gen + 1: above a reclaimed life's (tape_reclaim) */
    return n;
}

static void cow_forget(ad_tape *T, ad_node *g);
static int cow_detach(ad_tape *T, ad_node *g);

/* A fresh node of op and shape. Its values are a new buffer or, when `base` is given, base's
 * values (a view: no buffer of its own; the node holds base's storage, which keeps the values
 * alive and carries their version). */
static int node_make(ad_tape *T, int op, int dtype, int ndim, const int64_t *shape, ad_node *base, ad_node **out)
{
    if (ndim < 0 || ndim > AD_MAXDIM)
        return ad_err(AD_ERR_VALUE, "%s: tensors have at most %d dimensions, got %d", ad_ops[op].name, AD_MAXDIM, ndim);
    int64_t size = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return ad_err(AD_ERR_VALUE, "%s: negative dimension %lld in shape", ad_ops[op].name, (long long)shape[i]);
        if (shape[i] && size > (INT64_MAX / 8) / shape[i])
            return ad_err(AD_ERR_VALUE, "%s: shape has too many elements to address", ad_ops[op].name);
        size *= shape[i];
    }
    ad_long_work(size);
    size_t bytes = (size_t)size * ad_itemsize(dtype);
    if (size > 0 && (uint64_t)size > ((uint64_t)1 << 56) / ad_itemsize(dtype))
        return ad_err(AD_ERR_MEMORY, "%s: cannot allocate %lld elements", ad_ops[op].name, (long long)size);
    void *data = base ? base->data : ad_buf_alloc(T, bytes);
    if (!data)
        return ad_err(AD_ERR_MEMORY, "%s: out of memory allocating %zu bytes", ad_ops[op].name, bytes);
    ad_node *n = node_take(T);
    if (!n) { if (!base) ad_buf_free(T, data, bytes); return -AD_ERR_MEMORY; }
    uint32_t gen = (n->gen + 1) & GEN_MASK;
    uint32_t slot = n->slot;
    memset(n, 0, sizeof *n);
    n->gen = gen ? gen : 1;
    n->slot = slot;
    n->refs = 1;
    n->op = (uint16_t)op;
    n->dtype = (uint8_t)dtype;
    n->flags = F_IN_USE | F_LEAF;
    n->ndim = ndim;
    n->size = size;
    for (int i = 0; i < ndim; i++) n->shape[i] = shape[i];
    n->data = data;
    n->in = n->in_inline;
    int st = order_push(T, n);
    if (st) {
        if (!base) ad_buf_free(T, data, bytes);
        n->flags = 0;
        n->next_free = T->free_nodes;
        T->free_nodes = n;
        return st;
    }
    T->live_nodes++;
    T->live_bytes += (int64_t)sizeof(ad_node);
    if (base) {
        n->storage = ad_storage(base);
        n->storage->refs++;
        n->storage->views++;
    }
    *out = n;
    return AD_OK;
}

int ad_node_new(ad_tape *T, int op, int dtype, int ndim, const int64_t *shape, ad_node **out)
{
    return node_make(T, op, dtype, ndim, shape, NULL, out);
}

int ad_node_new_view(ad_tape *T, int op, ad_node *base, int ndim, const int64_t *shape, ad_node **out)
{
    /* a write through a view of an alias would land in the alias's storage: copy it first */
    int st = base->cow_deps < 0 ? cow_detach(T, base) : AD_OK;
    return st ? st : node_make(T, op, base->dtype, ndim, shape, base, out);
}

/* ---------- aliases: grads that read other values in place, copy-on-write ----------
 * An alias is a view (it holds its storage S, whose version it shares) whose data may start
 * anywhere in S's values, listed in T->cows and counted in S->cow_deps. Writers call
 * ad_write_begin first: a write to the alias gives it a copy of its values (cow_detach), a write
 * to S or to a view of S gives every alias of S one. The list is scanned only when S has aliases
 * (and on an alias's release): there are as many as leaves that took backward's cotangent. */
static void cow_forget(ad_tape *T, ad_node *g)
{
    for (int64_t i = T->ncows; i-- > 0;)
        if (T->cows[i] == g) { T->cows[i] = T->cows[--T->ncows]; break; }
    g->storage->cow_deps--;
    g->cow_deps = 0;
}

static int cow_detach(ad_tape *T, ad_node *g)
{
    size_t bytes = (size_t)g->size * ad_itemsize(g->dtype);
    void *buf = ad_buf_alloc(T, bytes);
    if (!buf)
        return ad_err(AD_ERR_MEMORY, "out of memory copying a gradient of shape %s before a write (%zu bytes)",
                      ad_shape_str((char[160]){0}, 160, g->ndim, g->shape), bytes);
    ad_copy(buf, g->data, bytes);
    ad_node *S = g->storage;
    cow_forget(T, g);
    g->version = S->version;   /* graphs that read g saved S's version: still current */
    g->data = buf;
    g->storage = NULL;
    S->views--;
    ad_node_unref(T, S);
    return AD_OK;
}

int ad_node_new_alias(ad_tape *T, ad_node *base, void *data, int ndim, const int64_t *shape, ad_node **out)
{
    ad_node *S = ad_storage(base);
    if (T->ncows == T->cows_cap) {
        int64_t cap = T->cows_cap ? 2 * T->cows_cap : 16;
        ad_node **c = realloc(T->cows, (size_t)cap * sizeof *c);
        if (!c) return ad_err(AD_ERR_MEMORY, "backward: out of memory");
        T->cows = c;
        T->cows_cap = cap;
    }
    int st = node_make(T, AD_OP_LEAF, base->dtype, ndim, shape, S, out);
    if (st) return st;
    (*out)->data = data;
    (*out)->cow_deps = -1;
    S->cow_deps++;
    T->cows[T->ncows++] = *out;
    return AD_OK;
}

int ad_write_begin(ad_tape *T, ad_node *n)
{
    if (n->cow_deps < 0) return cow_detach(T, n);
    ad_node *S = ad_storage(n);
    /* from the end: cow_detach moves the last entry into the freed place, already visited */
    for (int64_t i = T->ncows; S->cow_deps > 0 && i-- > 0;)
        if (T->cows[i]->storage == S) {
            int st = cow_detach(T, T->cows[i]);
            if (st) return st;
        }
    return AD_OK;
}

/* ---------- versions: in-place writes ----------
 * A node with more inputs than fit inline keeps their saved versions after its in[] array. */
static size_t ins_bytes(int nin) { return (size_t)nin * (sizeof(ad_node *) + sizeof(uint32_t)); }

static uint32_t *saved_versions(ad_node *n)
{
    return n->nin > AD_MAXIN_INLINE ? (uint32_t *)(n->in + n->nin) : n->saved_ver;
}

/* Does n's op read input i's value (i == -1: its own output) in its VJP, JVP or second-order term? */
static int reads_value(const ad_node *n, int i)
{
    int reads = ad_ops[n->op].flags;
    if (!(reads & AD_READS_KNOWN)) return 1;
    if (i < 0) return !!(reads & AD_READS_OUT);
    return i <= 1 && (reads & (AD_READS_IN0 << i));
}

/* At recording: the versions n's rules will expect, and the oldest write count its graph saw. */
static void versions_save(ad_tape *T, ad_node *n)
{
    uint32_t *v = saved_versions(n);
    n->oldest = T->writes;
    for (int i = 0; i < n->nin; i++) {
        v[i] = ad_storage(n->in[i])->version;
        if (!(n->in[i]->flags & F_LEAF) && n->in[i]->oldest < n->oldest) n->oldest = n->in[i]->oldest;
    }
}

void ad_tape_escape(ad_tape *T)
{
    if (T->recording) T->escapes++;
}

int64_t ad_record_mode(int on)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    if (on) T->recording++;
    else if (T->recording > 0) T->recording--;
    int64_t e = T->escapes;
    ad_unlock(T);
    return e;
}

void ad_version_bump(ad_tape *T, ad_node *n)
{
    ad_tape_escape(T);
    ad_storage(n)->version++;
    T->writes++;
}

/* n's rules read a value overwritten since n was recorded: the message names both versions. */
static int stale(const char *sweep, const ad_node *n, const char *what, ad_node *m, uint32_t saved)
{
    char b[160];
    return ad_err(AD_ERR_RUNTIME, "%s: a value needed for gradient computation was modified by an in-place "
                  "operation: %s of the %s node (shape %s, %s) is at version %u, but the %s node saved it at "
                  "version %u. Compute the gradient before modifying it, or modify a clone() instead",
                  sweep, what, ad_ops[n->op].name, ad_shape_str(b, sizeof b, m->ndim, m->shape),
                  ad_dtype_name(m->dtype), (unsigned)ad_storage(m)->version, ad_ops[n->op].name, (unsigned)saved);
}

int ad_versions_check(ad_tape *T, ad_node *root, int64_t lo, const char *sweep)
{
    /* no write since the oldest node of root's graph was recorded: nothing can be stale */
    if ((root->flags & F_LEAF) || root->oldest == T->writes) return AD_OK;
    int64_t cap = 64, top = 0, seen = 0;
    ad_node **stack = malloc((size_t)cap * sizeof *stack), **walked = malloc((size_t)cap * sizeof *walked);
    int st = AD_OK;
    if (!stack || !walked) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory checking versions", sweep); goto done; }
    stack[top++] = root;
    root->flags |= F_WALKED;
    walked[seen++] = root;
    while (top > 0 && !st) {
        ad_node *n = stack[--top];
        const uint32_t *v = saved_versions(n);
        char what[32];
        if (reads_value(n, -1) && ad_storage(n)->version != 0) { st = stale(sweep, n, "the output", n, 0); break; }
        for (int i = 0; i < n->nin && !st; i++) {
            ad_node *m = n->in[i];
            if (reads_value(n, i) && ad_storage(m)->version != v[i]) {
                snprintf(what, sizeof what, "input %d", i);
                st = stale(sweep, n, what, m, v[i]);
                break;
            }
            if ((m->flags & (F_LEAF | F_WALKED)) || !(m->flags & F_REQUIRES_GRAD) || m->pos < lo) continue;
            if (top == cap || seen == cap) {
                cap *= 2;
                ad_node **s2 = realloc(stack, (size_t)cap * sizeof *stack);
                if (s2) stack = s2;
                ad_node **w2 = s2 ? realloc(walked, (size_t)cap * sizeof *walked) : NULL;
                if (w2) walked = w2;
                if (!s2 || !w2) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory checking versions", sweep); break; }
            }
            m->flags |= F_WALKED;
            walked[seen++] = m;
            stack[top++] = m;
        }
    }
done:
    for (int64_t i = 0; walked && i < seen; i++) walked[i]->flags &= (uint8_t)~F_WALKED;
    free(stack);
    free(walked);
    return st;
}

int ad_write(int64_t dst_h, int64_t src_h)
{
    ad_tape *T;
    ad_node *d, *s;
    int st = ad_lock_current(&T);
    if (st) return st;
    char b1[160], b2[160];
    if ((st = ad_resolve(T, dst_h, &d)) || (st = ad_resolve(T, src_h, &s))) goto out;
    if (d->dtype != s->dtype || d->ndim != s->ndim || memcmp(d->shape, s->shape, (size_t)d->ndim * sizeof(int64_t))) {
        st = ad_err(AD_ERR_VALUE, "write: the values have shape %s and dtype %s, but the tensor has shape %s and dtype %s",
                    ad_shape_str(b1, sizeof b1, s->ndim, s->shape), ad_dtype_name(s->dtype),
                    ad_shape_str(b2, sizeof b2, d->ndim, d->shape), ad_dtype_name(d->dtype));
    } else if (T->grad_enabled && (d->flags & F_REQUIRES_GRAD) && (d->flags & F_LEAF)) {
        st = ad_err(AD_ERR_RUNTIME, "a leaf tensor that requires grad is being used in an in-place operation; "
                    "update it inside no_grad() (as an optimizer does), or use an out-of-place op");
    } else if (T->grad_enabled && !(d->flags & F_LEAF)) {
        /* with grad mode on, an in-place op on a recorded tensor must itself be recorded */
        st = ad_err(AD_ERR_RUNTIME, "write: the tensor was computed by %s and grad mode is on: an in-place "
                    "update of it must be recorded (the bindings record it as a new node)", ad_ops[d->op].name);
    } else if (!(st = ad_write_begin(T, d))) {
        /* the same memory (t.copy_(t.data)): nothing to copy; aliases at different places in
         * one storage hold different values, so the pointers are compared, not the storages */
        if (d->size && d->data != s->data)
            ad_copy(d->data, s->data, (size_t)d->size * ad_itemsize(d->dtype));
        ad_version_bump(T, d);
    }
out:
    ad_unlock(T);
    return st;
}

int64_t ad_data(int64_t h)
{
    ad_tape *T;
    ad_node *x, *n;
    int st = ad_lock_current(&T);
    if (st) return st;
    int64_t r = ad_resolve(T, h, &x);
    if (!r) {
        if (x->flags & F_REQUIRES_GRAD) ad_tape_escape(T);
        r = ad_node_new_view(T, AD_OP_LEAF, x, x->ndim, x->shape, &n);
        if (!r) r = ad_handle(T, n);
    }
    ad_unlock(T);
    return r;
}

int64_t ad_version(int64_t h)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    int64_t v = ad_storage(n)->version;
    ad_unlock(T);
    return v;
}

/* ---------- end of versions ---------- */

/* Whether ad_node_link will record an op on these inputs (1) or make its result a constant (0). */
int ad_will_record(ad_tape *T, int op, int nin, ad_node *const *ins)
{
    if (!T->grad_enabled) return 0;
    for (int i = 0; i < nin; i++)
        if (ins[i]->flags & F_REQUIRES_GRAD) return 1;
    /* while a function is recorded (ad.record), a value computed from tensors that do not require
     * grad (w.T of a frozen weight) is recorded too: the plan then recomputes it from them, and an
     * in-place write to one is caught by the plan's version check; a constant would go stale (an op
     * a plan cannot run, a custom function, stays a constant, as before) */
    return T->recording && nin > 0 && ad_op_replayable(op);
}

int ad_node_link(ad_tape *T, ad_node *n, int nin, ad_node **ins)
{
    int any = 0;
    for (int i = 0; i < nin; i++) any |= ins[i]->flags & F_REQUIRES_GRAD;
    if (ad_will_record(T, n->op, nin, ins)) any = 1;
    if (!any || !T->grad_enabled) {
        if (any) ad_tape_escape(T);   /* a value of the graph computed off it (no_grad) */
        /* nothing to differentiate: a constant, free of its inputs and parameters */
        if (n->aux) { ad_buf_free(T, n->aux, (size_t)n->aux_len * sizeof(int64_t)); n->aux = NULL; n->aux_len = 0; }
        n->op = AD_OP_LEAF;
        return AD_OK;
    }
    if (nin > AD_MAXIN_INLINE) {
        n->in = ad_buf_alloc(T, ins_bytes(nin));
        if (!n->in) { n->in = n->in_inline; return ad_err(AD_ERR_MEMORY, "out of memory recording %s", ad_ops[n->op].name); }
    }
    for (int i = 0; i < nin; i++) {
        n->in[i] = ins[i];
        ins[i]->refs++;
        ins[i]->consumers++;
        if (ad_op_reads(n, i)) ins[i]->flags |= F_VALUE_READ;
    }
    n->nin = nin;
    n->flags = (uint8_t)((n->flags & ~F_LEAF) | F_REQUIRES_GRAD);
    versions_save(T, n);
    return AD_OK;
}

int ad_record(ad_tape *T, ad_node *n, int nin, ad_node **ins)
{
    if (T->anomaly) {
        n->site = T->pending_site;
        int st = ad_anomaly_forward(n, nin, ins);
        if (st) { ad_node_discard(T, n); return st; }
    }
    int st = ad_node_link(T, n, nin, ins);
    if (st) { ad_node_discard(T, n); return st; }
    return AD_OK;
}

int64_t ad_finish(ad_tape *T, ad_node *n, int nin, ad_node **ins)
{
    int st = ad_record(T, n, nin, ins);
    return st ? st : ad_handle(T, n);
}

static int work_push(ad_tape *T, ad_node *n, int64_t *len)
{
    if (*len == T->work_cap) {
        int64_t cap = T->work_cap ? T->work_cap * 2 : 256;
        ad_node **w = realloc(T->work, (size_t)cap * sizeof *w);
        if (!w) return -1;
        T->work = w;
        T->work_cap = cap;
    }
    T->work[(*len)++] = n;
    return 0;
}

int ad_tape_reserve_release(ad_tape *T)
{
    if (T->work_cap > T->live_nodes) return AD_OK;
    int64_t cap = T->live_nodes + 256;
    ad_node **w = realloc(T->work, (size_t)cap * sizeof *w);
    if (!w) return ad_err(AD_ERR_MEMORY, "out of memory for the release worklist (%lld nodes)", (long long)cap);
    T->work = w;
    T->work_cap = cap;
    return AD_OK;
}


static void node_free_one(ad_tape *T, ad_node *n)
{
    if (n->cow_deps < 0) cow_forget(T, n);
    if (!n->storage) ad_buf_free(T, n->data, (size_t)n->size * ad_itemsize(n->dtype));
    if (n->adj) ad_buf_free(T, n->adj, ad_adj_bytes(n));
    if (n->aux) ad_buf_free(T, n->aux, (size_t)n->aux_len * sizeof(int64_t));
    if (n->in != n->in_inline) ad_buf_free(T, n->in, ins_bytes(n->nin));
    ad_custom_freed(T, n);   /* the bindings drop their record of a custom or hooked node */
    T->order[n->pos] = NULL;
    T->order_dead++;
    n->flags = 0;
    n->gen = (n->gen + 1) & GEN_MASK;
    n->next_free = T->free_nodes;
    T->free_nodes = n;
    T->live_nodes--;
    T->live_bytes -= (int64_t)sizeof(ad_node);
    if (T->live_nodes == 0) {
        pool_shrink(T, POOL_CAP);
        T->peak_bytes = T->live_bytes;
    }
}

/* Drop one reference; whatever reaches zero is freed, and so are the inputs it alone kept. */
/* One reference fewer on m (it stays alive, or goes on the worklist to be freed). A node with a
 * grad that only its recorded consumers and its views still reference has no handle that could
 * read the grad any more (a view's handle reads the view's grad), so the grad goes too: a grad
 * recorded by ad_backward_graph refers to its own leaf, possibly through a view of it (x.reshape),
 * a cycle that would otherwise keep both alive for good. */
static void unref_one(ad_tape *T, ad_node *m, int64_t *len)
{
    if (--m->refs == 0) {
        /* no memory for the worklist: keep the node (a leak beats a crash) */
        if (work_push(T, m, len)) m->refs = 1;
        return;
    }
    if (m->grad && m->refs == m->consumers + m->views) {
        ad_node *g = m->grad;
        m->grad = NULL;
        unref_one(T, g, len);
    }
}

void ad_node_unref(ad_tape *T, ad_node *n)
{
    int64_t len = 0;
    unref_one(T, n, &len);
    if (!len) return;
    ad_node *cur = T->work[--len];
    for (;;) {
        for (int i = 0; i < cur->nin; i++) {
            ad_node *m = cur->in[i];
            m->consumers--;
            unref_one(T, m, &len);
        }
        if (cur->grad) unref_one(T, cur->grad, &len);
        if (cur->storage) {
            cur->storage->views--;
            unref_one(T, cur->storage, &len);
        }
        node_free_one(T, cur);
        if (!len) break;
        cur = T->work[--len];
    }
    if (T->orphaned && T->live_nodes == 0) tape_reclaim(T);
}

void ad_node_drop_graph(ad_tape *T, ad_node *n)
{
    int nin = n->nin;
    ad_node *ins_inline[AD_MAXIN_INLINE];
    ad_node **ins = n->in;
    if (n->in == n->in_inline) { memcpy(ins_inline, n->in_inline, sizeof ins_inline); ins = ins_inline; }
    n->nin = 0;
    n->in = n->in_inline;
    if (n->aux) { ad_buf_free(T, n->aux, (size_t)n->aux_len * sizeof(int64_t)); n->aux = NULL; n->aux_len = 0; }
    n->flags |= F_RELEASED;
    for (int i = 0; i < nin; i++) { ins[i]->consumers--; ad_node_unref(T, ins[i]); }
    if (ins != ins_inline) ad_buf_free(T, ins, ins_bytes(nin));
}

void ad_node_discard(ad_tape *T, ad_node *n)
{
    n->refs = 1;
    ad_node_unref(T, n);
}

int ad_tape_grow_adj(ad_tape *T, ad_node *n)
{
    size_t bytes = (size_t)n->size * ad_itemsize(n->dtype);
    n->adj = ad_buf_alloc(T, bytes);
    if (!n->adj) return ad_err(AD_ERR_MEMORY, "out of memory for the adjoint of a %s node (%zu bytes)", ad_ops[n->op].name, bytes);
    return AD_OK;
}

/* ---------- public: lifetime and inspection ---------- */

static int check_dtype(const char *op, int dtype)
{
    if (dtype != AD_F32 && dtype != AD_F64)
        return ad_err(AD_ERR_TYPE, "%s: dtype code %d is not float32 (0) or float64 (1)", op, dtype);
    return AD_OK;
}

int64_t ad_tensor_new(int dtype, int ndim, const int64_t *shape, const void *data, int requires_grad)
{
    int st = check_dtype("tensor", dtype);
    if (st) return st;
    if (ndim > 0 && !shape) return ad_err(AD_ERR_VALUE, "tensor: shape is NULL");
    ad_tape *T;
    if ((st = ad_lock_current(&T))) return st;
    ad_node *n;
    st = ad_node_new(T, AD_OP_LEAF, dtype, ndim, shape, &n);
    if (!st) {
        size_t bytes = (size_t)n->size * ad_itemsize(dtype);
        if (data) ad_copy(n->data, data, bytes);
        else memset(n->data, 0, bytes);
        if (requires_grad) n->flags |= F_REQUIRES_GRAD;
        st = (int)0;
    }
    int64_t h = st ? st : ad_handle(T, n);
    ad_unlock(T);
    return h;
}

int64_t ad_full(int dtype, int ndim, const int64_t *shape, double value, int requires_grad)
{
    int st = check_dtype("full", dtype);
    if (st) return st;
    if (ndim > 0 && !shape) return ad_err(AD_ERR_VALUE, "full: shape is NULL");
    ad_tape *T;
    if ((st = ad_lock_current(&T))) return st;
    ad_node *n;
    st = ad_node_new(T, AD_OP_LEAF, dtype, ndim, shape, &n);
    int64_t h = st;
    if (!st) {
        if (dtype == AD_F64) { double *d = n->data; for (int64_t i = 0; i < n->size; i++) d[i] = value; }
        else { float *d = n->data; float v = (float)value; for (int64_t i = 0; i < n->size; i++) d[i] = v; }
        if (requires_grad) n->flags |= F_REQUIRES_GRAD;
        h = ad_handle(T, n);
    }
    ad_unlock(T);
    return h;
}

int ad_retain(int64_t h)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    n->refs++;
    ad_unlock(T);
    return AD_OK;
}

/* The caller's last handle to a recorded node is going and only its consumers hold it: if
 * neither they (F_VALUE_READ) nor its own op's VJP/JVP read its value, nothing ever will (no
 * new consumer can be made without a handle), so the value is freed now rather than when the
 * graph goes. Only a count of the holders that are consumers is needed: any other holder (the
 * caller, a sweep, a leaf whose grad it is, a view of it) makes refs exceed it and keeps the
 * value. A view has no buffer of its own to free. */
static void drop_unread_value(ad_tape *T, ad_node *n)
{
    int flags = ad_ops[n->op].flags;
    if (n->refs - 1 != n->consumers || n->consumers == 0 || (n->flags & (F_LEAF | F_VALUE_READ)) || n->storage ||
        n->op == AD_OP_LEAF || !(flags & AD_READS_KNOWN) || (flags & AD_READS_OUT) || !n->data)
        return;
    ad_buf_free(T, n->data, (size_t)n->size * ad_itemsize(n->dtype));
    n->data = NULL;
}

int ad_release(int64_t h)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    drop_unread_value(T, n);
    ad_node_unref(T, n);
    ad_unlock(T);
    return AD_OK;
}

int ad_info(int64_t h, ad_info_t *out)
{
    if (!out) return ad_err(AD_ERR_VALUE, "info: out is NULL");
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    out->dtype = n->dtype;
    out->ndim = n->ndim;
    for (int i = 0; i < n->ndim; i++) out->shape[i] = n->shape[i];
    out->size = n->size;
    out->data = n->data;
    out->requires_grad = !!(n->flags & F_REQUIRES_GRAD);
    out->is_leaf = !!(n->flags & F_LEAF);
    out->graph_released = !!(n->flags & F_RELEASED);
    ad_unlock(T);
    return AD_OK;
}

int ad_set_requires_grad(int64_t h, int flag)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    if (!(n->flags & F_LEAF)) {
        st = ad_err(AD_ERR_RUNTIME, "requires_grad can only be changed on leaf tensors; use detach() "
                    "to make a leaf from a computed tensor");
    } else if (flag) {
        /* the storage of an alias never requires grad: its own grad could then be an alias of
         * the first one's owner, a reference cycle (see "aliases") */
        if (n->cow_deps >= 0) st = ad_write_begin(T, n);
        if (!st) n->flags |= F_REQUIRES_GRAD;
    } else {
        n->flags &= (uint8_t)~F_REQUIRES_GRAD;
    }
    ad_unlock(T);
    return st;
}

int64_t ad_detach(int64_t h)
{
    ad_tape *T; ad_node *x, *n;
    int st = ad_lock_current(&T);
    if (st) return st;
    int64_t r = ad_resolve(T, h, &x);
    if (!r) {
        if (x->flags & F_REQUIRES_GRAD) ad_tape_escape(T);
        r = ad_node_new(T, AD_OP_LEAF, x->dtype, x->ndim, x->shape, &n);
        if (!r) {
            ad_copy(n->data, x->data, (size_t)x->size * ad_itemsize(x->dtype));
            r = ad_handle(T, n);
        }
    }
    ad_unlock(T);
    return r;
}

int64_t ad_grad(int64_t h)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    int64_t r = 0;
    if (n->grad) { n->grad->refs++; r = ad_handle(T, n->grad); }
    ad_unlock(T);
    return r;
}

int ad_set_grad(int64_t h, int64_t gh)
{
    ad_tape *T; ad_node *n, *g = NULL;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    if (gh) {
        /* the tape check comes first: resolve_any only checks slot and generation, which a
         * handle of another tape (or a negative one) can match */
        if (handle_tape(gh) != T)
            st = handle_tape(gh) ? ad_err(AD_ERR_RUNTIME, "grad: the new grad belongs to another thread's tape")
                                 : ad_err(AD_ERR_HANDLE, "invalid tensor handle %lld", (long long)gh);
        else if (!(st = resolve_any(T, gh, &g)) && g == n)
            st = ad_err(AD_ERR_RUNTIME, "grad: a tensor cannot be its own grad (it would keep itself alive)");
        if (st) {
            ad_unlock(T);
            return st;
        }
        char b1[128], b2[128];
        if (g->ndim != n->ndim || memcmp(g->shape, n->shape, (size_t)n->ndim * sizeof(int64_t)) || g->dtype != n->dtype) {
            st = ad_err(AD_ERR_VALUE, "grad: assigned grad has shape %s and dtype %s, but the tensor has shape %s and dtype %s",
                        ad_shape_str(b1, sizeof b1, g->ndim, g->shape), ad_dtype_name(g->dtype),
                        ad_shape_str(b2, sizeof b2, n->ndim, n->shape), ad_dtype_name(n->dtype));
            ad_unlock(T);
            return st;
        }
        /* stored as a copy: backward accumulates into the grad in place, which must not change a
         * tensor the caller holds, and a grad computed from x (x.grad = 2 * x) would hold x in a
         * reference cycle: both would leak */
        ad_node *c;
        if ((st = ad_node_new(T, AD_OP_LEAF, g->dtype, g->ndim, g->shape, &c))) {
            ad_unlock(T);
            return st;
        }
        ad_copy(c->data, g->data, (size_t)g->size * ad_itemsize(g->dtype));
        g = c;
    }
    if (n->grad) ad_node_unref(T, n->grad);
    n->grad = g;
    ad_unlock(T);
    return AD_OK;
}

int ad_assign(int64_t h, const void *data)
{
    ad_tape *T; ad_node *n;
    int st = lock_handle(h, &T, &n);
    if (st) return st;
    if (!(n->flags & F_LEAF)) {
        /* a computed tensor's values are saved for its graph's VJPs; changing them would make
         * the gradients silently wrong */
        st = ad_err(AD_ERR_RUNTIME, "assign: only leaf tensors can be updated in place; this one "
                    "was computed by %s", ad_ops[n->op].name);
    } else if (n->size && !data) {
        st = ad_err(AD_ERR_VALUE, "assign: data is NULL");
    } else if (!(st = ad_write_begin(T, n))) {
        if (n->size) ad_copy(n->data, data, (size_t)n->size * ad_itemsize(n->dtype));
        ad_version_bump(T, n);
    }
    ad_unlock(T);
    return st;
}

int ad_grad_enabled(void)
{
    ad_tape *T = ad_tape_current();
    return T ? T->grad_enabled : 1;
}

int ad_set_grad_enabled(int enabled)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    int prev = T->grad_enabled;
    T->grad_enabled = !!enabled;
    ad_unlock(T);
    return prev;
}

int ad_set_anomaly(int enabled, ad_site_fn site_fn)
{
    ad_tape *T = ad_tape_current();
    if (!T) return -AD_ERR_MEMORY;
    int prev = T->anomaly;
    T->anomaly = !!enabled;
    T->site_fn = site_fn;
    T->pending_site = 0;
    return prev;
}

int ad_anomaly_on(ad_tape *T) { return T->anomaly; }

int ad_stats(ad_stats_t *out)
{
    if (!out) return ad_err(AD_ERR_VALUE, "stats: out is NULL");
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    out->live_nodes = T->live_nodes;
    out->live_bytes = T->live_bytes;
    out->pooled_bytes = T->pooled_bytes;
    out->tape_length = T->order_len;
    ad_unlock(T);
    return AD_OK;
}

/* sweep.c needs to walk the creation order */
ad_node **ad_tape_order(ad_tape *T) { return T->order; }
/* counted: a custom rule run inside a sweep may run a sweep of its own */
void ad_tape_hold_order(ad_tape *T, int hold) { T->order_held += hold ? 1 : -1; }
