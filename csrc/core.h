/* Internals shared by tape.c, sweep.c, shape.c and kernels/: the node record, the tape, the
 * op table and the few helpers every kernel needs. Not part of the public API. */
#ifndef AD_CORE_H
#define AD_CORE_H

#include "ad.h"
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

/* Out-of-memory tests (csrc/fault.c): a build with -DAD_FAULT_INJECTION sends every allocation of
 * the core through the fault injector, which can fail the n-th one. */
#ifdef AD_FAULT_INJECTION
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
void *ad_fault_malloc(size_t n);
void *ad_fault_calloc(size_t n, size_t size);
void *ad_fault_realloc(void *p, size_t n);
int ad_fault_fail(void);   /* counts one allocation; 1: it is the one to fail */
#ifndef AD_FAULT_IMPL
#define malloc(n) ad_fault_malloc(n)
#define calloc(n, size) ad_fault_calloc(n, size)
#define realloc(p, n) ad_fault_realloc(p, n)
#endif
#endif

#define AD_MAXIN_INLINE 2

enum {
    F_REQUIRES_GRAD = 1,
    F_LEAF = 2,
    F_RELEASED = 4,   /* backward went through without retain_graph: inputs dropped */
    F_IN_USE = 8,
    F_VALUE_READ = 16, /* a consumer's VJP/JVP reads this node's value: it is kept (see ad_release) */
    F_ADJ_UNIFORM = 32, /* adj holds one value standing for every element (see sweep.c) */
    F_WALKED = 64,     /* visited by the dependence walk in progress (sweep.c); clear otherwise */
    F_HOOK = 128       /* the bindings have gradient hooks on this node (custom.c) */
};

typedef struct ad_node ad_node;
struct ad_node {
    uint32_t gen;
    uint32_t slot;
    int32_t refs;              /* handles held by the caller + consumers + an active sweep */
    uint16_t op;
    uint8_t dtype;
    uint8_t flags;
    int32_t ndim;
    int32_t nin;
    int32_t consumers;         /* recorded nodes that have this one as an input (part of refs) */
    int32_t cow_deps;          /* copy-on-write (tape.c, "aliases"): on a storage node, how many
                                * aliases read its values; -1 marks an alias itself */
    int64_t size;
    int64_t shape[AD_MAXDIM];
    void *data;
    void *adj;                 /* adjoint, alive only during a backward sweep */
    ad_node *grad;             /* leaves: accumulated gradient (a node without graph) */
    ad_node *in_inline[AD_MAXIN_INLINE];
    ad_node **in;
    int64_t pos;               /* index in the tape's creation order */
    double c[2];               /* constants (ad_unary's c0 and c1, clip bounds, ...) */
    uint64_t axes;             /* reductions: bit i set = axis i reduced */
    int32_t keepdims;
    int32_t aux_len;           /* entries in aux (perm of transpose, ...) */
    int64_t block;             /* gather, scatter_add: elements per index (kernels/index.c) */
    int64_t *aux;
    int64_t site;              /* anomaly mode: creation-site id from the bindings (0: none) */
    ad_node *next_free;
    /* in-place writes and versions (tape.c, "versions"): */
    uint32_t version;          /* in-place writes to the values (kept on the storage node) */
    int32_t views;             /* references held on this node as storage by views and aliases */
    uint32_t saved_ver[AD_MAXIN_INLINE]; /* inputs' versions when recorded (nin > 2: after in[]) */
    uint64_t oldest;           /* recorded: the tape's write count when n or its oldest recorded
                                * ancestor was recorded (a sweep skips the check when current) */
    ad_node *storage;          /* an alias (.data): the node whose values it shares; NULL: its own */
};

typedef struct ad_tape ad_tape;

/* One contribution to an input's adjoint. A VJP kernel writes `values` shaped like `shape` (the
 * input broadcast to the output for elementwise ops, the input itself otherwise) into dst,
 * adding when accumulate is set. When shape differs from the input's, the sweep sums dst over
 * the broadcast axes afterwards: broadcasting is undone in that one place, unless the op's
 * kernel sums while it writes (AD_VJP_REDUCES), which saves an output-sized scratch buffer and
 * two passes over it: the sweep then sets `reduce` and dst is shaped like the input. */
typedef struct {
    void *dst;
    int accumulate;
    int reduce;
    int g_uniform;             /* the cotangent is one value for every output element */
    int ndim;
    int64_t shape[AD_MAXDIM];
    int64_t size;
} ad_sink;

typedef int (*ad_vjp_fn)(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);

/* Shape of the contribution a VJP writes for input `which` (see ad_sink); NULL means the input's. */
typedef void (*ad_contrib_fn)(const ad_node *n, int which, int *ndim, int64_t *shape);

/* Tangent of n from its inputs' tangents (forward mode). Every tangent carries a leading batch
 * axis of k directions: tin[j] holds k x in[j]->size values (each direction shaped like input j),
 * or is NULL when input j's tangent is zero; the kernel overwrites tout, k x n->size values. The
 * sweep calls it only when at least one tin[j] is non-NULL. */
typedef int (*ad_jvp_fn)(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);

/* Optional VJP of k stacked cotangent rows at once (the batched reverse sweep), for ops where one
 * big product beats k small ones: writes k stacked contributions shaped like input `which` into
 * dst, adding when accumulate is set. Returns 1 when done, 0 to decline (the sweep then calls
 * the op's vjp once per row), or a negative status. */
typedef int (*ad_vjp_rows_fn)(ad_tape *T, ad_node *n, const void *g, int64_t k, int which, void *dst,
                              int accumulate);

/* Second-order term of the VJP for forward-over-reverse (ad_hvp): the derivative of input
 * `which`'s contribution vjp(g) as the op's primals move along one tangent direction, with the
 * cotangent g held fixed. tin[j] is input j's tangent (NULL: zero), tout the output's (computed
 * from them). Written into the sink like a VJP contribution (accumulate honoured, never reduce). */
typedef int (*ad_vjp2_fn)(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout,
                          int which, ad_sink *s);

/* What an op's VJP can do beyond the plain contract (ad_opdef.flags); each one saves memory
 * passes on large tensors. */
enum {
    AD_VJP_REDUCES = 1,  /* honours ad_sink.reduce */
    AD_VJP_BOTH = 2,     /* which == AD_BOTH: in[0] and in[1] are one node; write the sum of both
                          * contributions in one pass (x * x) */
    AD_VJP_PASS0 = 4,    /* the contribution to in[0] is the cotangent itself (add, subtract, reshape) ... */
    AD_VJP_PASS1 = 8,    /* ... to in[1] (add): the sweep may hand the buffer over, not copy it */
    AD_VJP_CONST = 16,   /* the VJP does not depend on the primal values (or only through
                          * comparisons): its second-order term is zero, so it needs no vjp2 */
    /* Which values the op's VJP, JVP and vjp2 read, when AD_READS_KNOWN (otherwise: all). A value
     * nothing reads is freed once the caller drops its tensor (ad_release), as NumPy frees a
     * temporary: x*w + b keeps neither x*w nor its sum, only what tanh's VJP needs. */
    AD_READS_KNOWN = 32,
    AD_READS_IN0 = 64,
    AD_READS_IN1 = 128,
    AD_READS_OUT = 256,
};
#define AD_BOTH (-1)   /* not an input index */

/* The differentiable rules: an op's VJP and JVP built from recorded ops (the node-level ad_mk_*
 * constructors below), so that a sweep running them records a graph of its own, which a later
 * sweep can differentiate again (higher order). T is locked; *out receives a new node holding one
 * reference (the caller's).
 * vjp_rec: the contribution to input `which` for the cotangent node g (shaped like n), with the
 *          shape the numeric VJP's contribution has (ad_sink: the output's for elementwise ops,
 *          summed over broadcast axes by the sweep; the input's otherwise).
 * jvp_rec: the output's tangent from one tangent node per input (NULL: zero; at least one is not). */
typedef int (*ad_vjp_rec_fn)(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
typedef int (*ad_jvp_rec_fn)(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);

typedef struct {
    const char *name;
    ad_vjp_fn vjp;
    ad_contrib_fn contrib;
    ad_jvp_fn jvp;
    ad_vjp_rows_fn vjp_rows;
    int flags;
    ad_vjp2_fn vjp2;
    ad_vjp_rec_fn vjp_rec;
    ad_jvp_rec_fn jvp_rec;
} ad_opdef;

/* The body of a public op on one tensor: lock the calling thread's tape, resolve handle hx to x,
 * construct n with MK (an ad_mk_* call naming T, x and &n), hand out n's handle, unlock. */
#define AD_ONE_INPUT_ENTRY(hx, MK) do {                                                   \
        ad_tape *T;                                                                       \
        ad_node *x, *n;                                                                   \
        int64_t st = ad_lock_current(&T);                                                 \
        if (st) return st;                                                                \
        if (!(st = ad_resolve(T, (hx), &x)) && !(st = (MK))) st = ad_handle(T, n);        \
        ad_unlock(T);                                                                     \
        return st;                                                                        \
    } while (0)

/* Node-level op constructors, for code that holds the tape lock (the public ad_* functions are
 * thin wrappers: lock, resolve handles, construct, hand out the handle): inputs are live nodes of
 * T; *out receives a new node holding one reference (the caller's, dropped with ad_node_unref).
 * It is recorded when grad mode is on and an input requires grad, exactly as the public op. */
int ad_mk_unary(ad_tape *T, int op, ad_node *x, double c0, double c1, ad_node **out);
int ad_mk_binary(ad_tape *T, int op, ad_node *a, ad_node *b, ad_node **out);
/* The other families' constructors, same contract. Reductions and the softmax family take the
 * reduced axes as a bit mask (bit i = axis i, as ad_node.axes holds them; bits past ndim are an
 * error); the others take what their public op takes. */
int ad_mk_reduce(ad_tape *T, int op, ad_node *x, uint64_t axes, int keepdims, ad_node **out);
int ad_mk_softmax(ad_tape *T, int op, ad_node *x, uint64_t axes, int keepdims, ad_node **out);
int ad_mk_matmul(ad_tape *T, ad_node *a, ad_node *b, ad_node **out);
int ad_mk_reshape(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out);
int ad_mk_transpose(ad_tape *T, ad_node *x, int naxes, const int64_t *perm, ad_node **out);
int ad_mk_broadcast_to(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out);
int ad_mk_cast(ad_tape *T, ad_node *x, int dtype, ad_node **out);
int ad_mk_gather(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, const int64_t *index, int64_t block,
                 ad_node **out);
int ad_mk_scatter_add(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, const int64_t *index, int64_t block,
                      ad_node **out);
int ad_mk_slice(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, int64_t offset, const int64_t *strides,
                ad_node **out);
int ad_mk_concatenate(ad_tape *T, int nx, ad_node *const *xs, int64_t axis, int new_axis, ad_node **out);
/* Is input `which` of concatenation (or stack) n one contiguous block of n's values (nothing
 * outside the joined axis but ones before it)? Then *offset is the block's first element. */
int ad_concat_block(const ad_node *n, int which, int64_t *offset);
int ad_mk_where(ad_tape *T, int cond_ndim, const int64_t *cond_shape, const uint8_t *cond, ad_node *a, ad_node *b,
                ad_node **out);
int ad_mk_clip(ad_tape *T, ad_node *x, double lo, double hi, ad_node **out);
int ad_mk_scan(ad_tape *T, ad_node *a, ad_node *b, int axis, int mode, ad_node **out);
/* A new constant (unrecorded leaf) shaped like `shape`, every element `value` in dtype. */
int ad_mk_full(ad_tape *T, int dtype, int ndim, const int64_t *shape, double value, ad_node **out);

/* Helpers of the differentiable rules (kernels/reduce.c), same contract as the constructors:
 * ad_rec_expand: g, shaped like the result of reducing x over `axes` (keepdims or not), broadcast
 *                back to x's shape (the VJP of a sum);
 * ad_rec_unbroadcast: c summed over the axes along which a tensor of shape (ndim, shape) was
 *                broadcast to c's shape, then shaped like it (the sweep's one place where
 *                broadcasting is undone, as recorded ops). Both may hand back g / c itself with
 *                a new reference when there is nothing to do. */
int ad_rec_expand(ad_tape *T, ad_node *g, const ad_node *x, uint64_t axes, ad_node **out);
int ad_rec_unbroadcast(ad_tape *T, ad_node *c, int ndim, const int64_t *shape, ad_node **out);
/* x reshaped to (ndim, shape), or x itself with a new reference when it has that shape. */
int ad_rec_reshape(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out);

void ad_contrib_output(const ad_node *n, int which, int *ndim, int64_t *shape);
void ad_contrib_matmul(const ad_node *n, int which, int *ndim, int64_t *shape);

extern const ad_opdef ad_ops[AD_OP_COUNT];

/* May op n's VJP, JVP or second-order term read input i's value (i == -1: its own)? The flags
 * name the first two inputs only, so any later input counts as read; an op that does not say
 * reads everything. Used to free values early (tape.c) and to share a plan's buffers (replay.c). */
static inline int ad_op_reads(const ad_node *n, int i)
{
    int reads = ad_ops[n->op].flags;
    if (!(reads & AD_READS_KNOWN)) return 1;
    if (i < 0) return !!(reads & AD_READS_OUT);
    return i > 1 || (reads & (AD_READS_IN0 << i));
}

/* errors: set the thread's message, return -code (usable directly as a handle result) */
int ad_err(int code, const char *fmt, ...);

/* dtype helpers */
static inline size_t ad_itemsize(int dtype) { return dtype == AD_F32 ? 4 : 8; }
/* bytes of n->adj as allocated (one element when uniform) */
static inline size_t ad_adj_bytes(const ad_node *n)
{
    return (size_t)((n->flags & F_ADJ_UNIFORM) ? 1 : n->size) * ad_itemsize(n->dtype);
}
const char *ad_dtype_name(int dtype);
/* "(2, 3)" into buf */
const char *ad_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);

/* tape internals used by kernels and the sweep */
ad_tape *ad_tape_current(void);           /* thread's tape, created on demand (NULL: OOM, error set) */
int ad_lock_current(ad_tape **T);         /* current tape, locked */
void ad_unlock(ad_tape *T);
int ad_resolve(ad_tape *T, int64_t h, ad_node **out);   /* validate handle against T */
/* About to work on elems elements: lets the bindings release their interpreter lock when that is
 * long (ad_set_gil_hook). resolve and node_new call it; sweeps call it with INT64_MAX. */
void ad_long_work(int64_t elems);
int64_t ad_handle(ad_tape *T, ad_node *n);
int ad_grad_mode(ad_tape *T);
void *ad_buf_alloc(ad_tape *T, size_t bytes);
void ad_buf_free(ad_tape *T, void *p, size_t bytes);
/* New node with the given shape and an uninitialised value buffer; refs = 1 (the caller's). */
int ad_node_new(ad_tape *T, int op, int dtype, int ndim, const int64_t *shape, ad_node **out);
/* A node whose values are base's, read as `shape` (as many elements): a view. It shares base's
 * storage (kept alive by it; in-place writes through either are seen by both and bump the one
 * version). Only .data and the public reshape make these (as PyTorch's reshape, which may return a
 * view): rules and sweeps build with copies, so a grad never aliases another tensor. */
int ad_node_new_view(ad_tape *T, int op, ad_node *base, int ndim, const int64_t *shape, ad_node **out);
/* Aliases (tape.c): a leaf's grad that reads `data` (in base's values) in place, copy-on-write.
 * backward(W) makes them when the cotangent reaches a leaf unchanged (x + y, concatenate's rows),
 * as NumPy's and PyTorch's gradients there are views of W; here a write to either side first gives
 * the alias a copy of its own (ad_write_begin), so neither ever sees the other's writes. An alias
 * has no views (making one copies it first), and its storage never requires grad (which keeps
 * grads from referring to each other in a cycle). */
int ad_node_new_alias(ad_tape *T, ad_node *base, void *data, int ndim, const int64_t *shape, ad_node **out);
/* Call before writing into n's values in place: separates n, or the aliases of n's storage, from
 * the memory about to change (a copy each; out of memory leaves every value as it was). */
int ad_write_begin(ad_tape *T, ad_node *n);
/* A leaf's grad that backward must not add into in place: someone else holds it, it is recorded
 * (create_graph), or it is an alias of other values. */
static inline int ad_grad_shared(const ad_node *g) { return g->refs > 1 || !(g->flags & F_LEAF) || g->cow_deps < 0; }
/* Connect inputs if grad mode is on and any requires grad; takes references on them. */
int ad_node_link(ad_tape *T, ad_node *n, int nin, ad_node **ins);
void ad_node_unref(ad_tape *T, ad_node *n);
void ad_node_drop_graph(ad_tape *T, ad_node *n);   /* release inputs and params, mark released */
static inline ad_node *ad_in(ad_node *n, int i) { return n->in[i]; }
/* A finished op: link inputs (or not), or free the node on failure (status returned). */
int ad_record(ad_tape *T, ad_node *n, int nin, ad_node **ins);
/* ad_record, then the node's handle (or the negative status). */
int64_t ad_finish(ad_tape *T, ad_node *n, int nin, ad_node **ins);
void ad_node_discard(ad_tape *T, ad_node *n);
ad_tape *ad_node_tape(ad_node *n);
int ad_tape_grow_adj(ad_tape *T, ad_node *n);  /* allocate n->adj (uninitialised) */
/* Room for releasing every live node at once, so that the releases of a sweep's commit cannot
 * run out of memory (ad_node_unref would keep a node it has no room to free). */
int ad_tape_reserve_release(ad_tape *T);
/* The creation order, and the sweep's hold on it: while held, nodes created (leaves' grads) are
 * appended but the order is never compacted, so positions stay valid; the array itself may still
 * move when it grows, so re-read ad_tape_order after creating a node. */
ad_node **ad_tape_order(ad_tape *T);
void ad_tape_hold_order(ad_tape *T, int hold);

/* Versions (tape.c): every in-place write to a node's values bumps its version; a recorded node
 * keeps the versions of the inputs whose values its rules read; a sweep first checks them over the
 * root's recorded ancestors (from creation position lo up) and fails, before changing anything,
 * naming the op and both versions, when a value it would read was overwritten since. */
static inline ad_node *ad_storage(ad_node *n) { return n->storage ? n->storage : n; }
void ad_version_bump(ad_tape *T, ad_node *n);
int ad_versions_check(ad_tape *T, ad_node *root, int64_t lo, const char *sweep);

/* anomaly mode (anomaly.c): NaN made from NaN-free values is an AD_ERR_FLOAT naming the op */
int ad_anomaly_on(ad_tape *T);
int ad_anomaly_forward(ad_node *n, int nin, ad_node **ins);
/* contribution of n's VJP for input `which` (s->size values at s->dst, not accumulated) */
int ad_anomaly_vjp(ad_node *n, int which, const ad_sink *s);
/* after a NaN-free contribution was added to a NaN-free adjoint `adj` of n's input `which` */
int ad_anomaly_accumulate(ad_node *n, int which, const void *adj);
int ad_any_nan(int dtype, const void *p, int64_t count);

/* shapes (shape.c) */
int ad_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb,
                        int *nout, int64_t *sout);
int64_t ad_shape_size(int ndim, const int64_t *shape);
/* element strides of `shape` viewed at `out` shape (0 on broadcast axes); shape right-aligned */
void ad_bcast_strides(int ndim, const int64_t *shape, int nout, const int64_t *out, int64_t *st);
void ad_contig_strides(int ndim, const int64_t *shape, int64_t *st);
int ad_normalize_axes(const char *op, int ndim, int naxes, const int64_t *axes, uint64_t *mask);

/* Iterate over `shape` with up to 3 operands (element strides); calls body(off0, off1, off2, n,
 * inner strides) for each run of the innermost (coalesced) axis. */
typedef struct {
    int ndim;
    int nop;
    int64_t shape[AD_MAXDIM];
    int64_t st[3][AD_MAXDIM];
} ad_iter;
void ad_iter_init(ad_iter *it, int nop, int ndim, const int64_t *shape, int64_t *const *strides);
/* walks outer indices; usage: AD_ITER_FOR(it, o0, o1, o2) { inner loop over it.shape[it.ndim-1] } */
#define AD_ITER_FOR(it, o0, o1, o2)                                                          \
    for (int64_t _idx[AD_MAXDIM] = {0}, o0 = 0, o1 = 0, o2 = 0, _done = ((it).shape[0] == 0); \
         !_done; _done = ad_iter_next(&(it), _idx, &o0, &o1, &o2))
int ad_iter_next(const ad_iter *it, int64_t *idx, int64_t *o0, int64_t *o1, int64_t *o2);

/* The NaN-safety rule, in one place: a zero cotangent (or tangent) contributes exactly zero, even
 * where the local derivative is inf or NaN. Written as a function so both operands are evaluated
 * first: the compiler then vectorises a select, where `g == 0 ? 0 : expr` made it guard expr's
 * loads with masked loads through a stack slot (a store-to-load chain that halved VJP speed). */
static inline double ad_zero_safe_d(double g, double v) { return g == 0 ? 0 : v; }
static inline float ad_zero_safe_f(float g, float v) { return g == 0 ? 0 : v; }
#define SAFE(g, e) _Generic((g), float: ad_zero_safe_f, default: ad_zero_safe_d)((g), (e))

/* Sum of n values at stride st, in double with eight partial sums: one running sum is bound by
 * the add latency (4 cycles per element) and drifts in float32; eight vectorise and stay accurate. */
#define AD_DEF_SUM(NAME, T)                                                          \
    static inline double NAME(const T *x, int64_t n, int64_t st)                     \
    {                                                                                \
        double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                      \
        int64_t i = 0;                                                               \
        if (st == 1)                                                                 \
            for (; i + 8 <= n; i += 8)                                               \
                for (int l = 0; l < 8; l++) p[l] += x[i + l];                        \
        for (; i < n; i++) p[0] += x[i * st];                                        \
        return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));    \
    }
/* A sum of all of x of 2 * AD_SUM_BLOCK elements or more is AD_SUM of each block of AD_SUM_BLOCK,
 * the blocks added in order (reduce.c; the fused replay's folded sum, fusion.c, follows it). */
#define AD_SUM_BLOCK (1 << 16)
AD_DEF_SUM(ad_sum_f64, double)
AD_DEF_SUM(ad_sum_f32, float)
#define AD_SUM(T, x, n, st) _Generic((x), const double *: ad_sum_f64, double *: ad_sum_f64, \
                                          const float *: ad_sum_f32, float *: ad_sum_f32)(x, n, st)

/* The max (CMP >) or min (CMP <) of y and n contiguous values, NaN winning as in NumPy: a partial
 * result takes v where v is NaN or better, and a NaN one stays NaN (nothing compares better than
 * it). Four vectors of partial results in GCC's (and clang's) vector extensions: the loop
 * vectoriser leaves such compare-and-select chains scalar, which made max over a whole tensor 2-3x
 * NumPy's time. Max and min are exact, so the order of the partial results changes no value. */
#define AD_TAKE(v, y, CMP) ((v) != (v) || (v) CMP (y) ? (v) : (y))
#define AD_DEF_EXTREME(NAME, T, I, CMP)                                                  \
    static inline T NAME(const T *x, int64_t n, T y)                                     \
    {                                                                                    \
        typedef T vec __attribute__((vector_size(32)));                                  \
        typedef I ivec __attribute__((vector_size(32)));                                 \
        enum { W = 32 / sizeof(T) };                                                     \
        int64_t i = 0;                                                                   \
        if (n >= 4 * W) {                                                                \
            vec p[4];                                                                    \
            for (int k = 0; k < 4; k++)                                                  \
                for (int l = 0; l < W; l++) p[k][l] = y;                                 \
            for (; i + 4 * W <= n; i += 4 * W)                                           \
                for (int k = 0; k < 4; k++) {                                            \
                    vec v;                                                               \
                    __builtin_memcpy(&v, x + i + k * W, sizeof v);                       \
                    ivec take = (v != v) | (v CMP p[k]);                                 \
                    p[k] = (vec)((take & (ivec)v) | (~take & (ivec)p[k]));               \
                }                                                                        \
            for (int k = 0; k < 4; k++)                                                  \
                for (int l = 0; l < W; l++) y = AD_TAKE(p[k][l], y, CMP);                \
        }                                                                                \
        for (; i < n; i++) y = AD_TAKE(x[i], y, CMP);                                    \
        return y;                                                                        \
    }
AD_DEF_EXTREME(ad_max_f64, double, int64_t, >)
AD_DEF_EXTREME(ad_max_f32, float, int32_t, >)
AD_DEF_EXTREME(ad_min_f64, double, int64_t, <)
AD_DEF_EXTREME(ad_min_f32, float, int32_t, <)

/* Copy of n bytes of tensor data. glibc's memcpy moves 2 KB to about 1 MB with `rep movsb`, which
 * on AMD Zen runs 4-25x slower when dst and src differ in alignment mod 32 (measured on this
 * machine: 8 KB at an 8-byte offset 1.2-10 us against 0.44 us; a concatenation or a slice shifts
 * every row so). That range goes through ad_copy_mid's loop of 16-byte moves (shape.c), as fast as
 * memcpy at equal alignment; below and above it memcpy is the faster. */
void ad_copy_mid(void *restrict dst, const void *restrict src, size_t n);
static inline void ad_copy(void *dst, const void *src, size_t n)
{
    if (n > 2048 && n < ((size_t)768 << 10)) ad_copy_mid(dst, src, n);
    else memcpy(dst, src, n);
}

/* An op that writes AD_STREAM_BYTES or more in all (its output, or all of a cotangent's blocks)
 * copies with streaming stores (ad_copy_stream, shape.c): written around the caches, the result
 * costs no read of each line before its write and does not evict what the op reads (its inputs,
 * the cotangent), which the next call of a loop reads again. Measured on this 2-core AMD machine
 * (32 MB L3): concatenate and stack of 4 x (500, 500) float64 on axis 0, forward + backward,
 * 1.3-1.7x faster. Smaller results stay in cache, where the next op most likely reads them. */
#define AD_STREAM_BYTES ((size_t)4 << 20)
void ad_copy_stream(void *restrict dst, const void *restrict src, size_t n);
static inline void ad_copy_to(void *dst, const void *src, size_t n, int stream)
{
    if (stream) ad_copy_stream(dst, src, n);
    else ad_copy(dst, src, n);
}

/* A reduction over one contiguous run of axes (the last, the first, a middle one, or several
 * adjacent ones) sees x as `outer` blocks of shape (len, inner): output o * inner + j reduces
 * x[o, :, j]. Kernels then walk contiguous memory only, and can share blocks (or, with one block,
 * columns) over threads with every output computed alike. 0 for an empty x, no axes, or a gap
 * between the reduced axes (those take a general walk). */
typedef struct { int64_t outer, len, inner; } ad_blocks;
static inline int ad_as_blocks(const ad_node *x, uint64_t mask, ad_blocks *b)
{
    if (!mask || x->size == 0) return 0;
    int a = __builtin_ctzll(mask);
    uint64_t run = mask >> a;
    if (run & (run + 1)) return 0;                 /* a gap between reduced axes */
    int e = a + __builtin_popcountll(mask);
    b->outer = b->len = b->inner = 1;
    for (int i = 0; i < x->ndim; i++) {
        if (i < a) b->outer *= x->shape[i];
        else if (i < e) b->len *= x->shape[i];
        else b->inner *= x->shape[i];
    }
    return 1;
}

/* The sink's accumulate step: adj (in shape, accumulate?) += sum of src (out shape) over
 * broadcast axes. */
void ad_unbroadcast_into(int dtype, void *adj, int accumulate, int nin, const int64_t *in_shape,
                         const void *src, int nout, const int64_t *out_shape);
/* dst (contiguous, dst shape) = src viewed with element strides */
void ad_copy_strided(int dtype, void *dst, const void *src, int ndim, const int64_t *shape,
                     const int64_t *src_strides);
/* dst viewed with dst_strides = (or += when accumulate) src viewed with src_strides, over shape
 * (strides in elements, any sign); transposes run in cache-sized tiles */
void ad_strided_pass(int dtype, void *dst, const int64_t *dst_strides, const void *src,
                     const int64_t *src_strides, int ndim, const int64_t *shape, int accumulate);

/* vjp entry points of each kernel family, referenced by the op table */
int ad_vjp_unary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_binary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_reduce(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_matmul(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_layout(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_index(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_softmax(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
/* second-order terms (ad_vjp2_fn) of the families whose VJP reads the primals */
int ad_vjp2_unary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which, ad_sink *s);
int ad_vjp2_binary(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which, ad_sink *s);
int ad_vjp2_matmul(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which, ad_sink *s);
int ad_vjp2_softmax(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which, ad_sink *s);

/* Hot elementwise loops are also compiled for AVX2 and AVX-512 and the widest one the CPU has is
 * picked at load time (an ifunc), so the wheel needs no -march=native yet keeps up with NumPy's
 * own SIMD dispatch. -std=c11 keeps -ffp-contract=off, so every clone rounds identically. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__)
#define AD_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AD_SIMD
#endif

/* Loops that call libm's transcendental functions vectorise through glibc's libmvec (SSE2 / AVX2
 * / AVX-512 versions, at most 4 ulp error) where the build found it: kernels/vecmath.h declares
 * the functions `omp declare simd`, AD_VEC_LOOP asks for the vector loop, and AD_VEC_FN clones the
 * function for AVX2 and AVX-512 (glibc's scalar tanh costs ~18 ns an element here, 13x NumPy's
 * SIMD one). Plain arithmetic loops get no clones: they are bound by memory on large arrays. */
#if defined(AD_HAVE_LIBMVEC) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define AD_VEC_LOOP _Pragma("omp simd")
#define AD_VEC_FN AD_SIMD
/* no vector calls into libm here: the scalar functions, as NumPy's results on small arrays */
#define AD_SCALAR_FN __attribute__((optimize("no-tree-vectorize")))
#else
#define AD_VEC_LOOP
#define AD_VEC_FN
#define AD_SCALAR_FN
#endif
/* Below this many elements a libm loop runs the scalar functions (libmvec's are accurate to 4
 * ulp, libm's to about 1, and on small arrays the vector call saves nothing worth a different
 * last bit from NumPy's). */
#define AD_VEC_MIN 64

/* Elementwise kernels, generated from pyautodiff/opdefs.py (kernels/ops_*.c, tabled in ops_kernels.c):
 * each computes one formula at n contiguous elements. in[0] and in[1] are the inputs (x, or a and
 * b), in[2] the output y, c the node's constants (n->c). Arrays of two are indexed by dtype. */
typedef void (*ad_ew_fn)(const void *const *in, void *out, int64_t n, const double *c);
/* out (+= when acc) w * dy/d(input) at n elements, w a cotangent or tangent; the NaN-safety rule
 * applied (and routing, for the ops that route) */
typedef void (*ad_ew_wfn)(const void *const *in, const void *w, void *out, int64_t n, const double *c,
                          int acc);
typedef struct {
    ad_ew_fn fwd[2];
    ad_ew_wfn d[2][2];         /* [which][dtype]: w * dy/d(input which); NULL: the constant 0 */
    ad_ew_fn h[2][2][2];       /* [which][k][dtype]: d(d[which])/d(input k), the second-order
                                * coefficient (through y too); NULL: 0 */
    /* d[which] as recorded ops (*node, a new reference), or *node = NULL and *scalar when it
     * reads no tensor value (add: 1, x * c: c) */
    int (*rec_d[2])(ad_tape *T, ad_node *n, ad_node **node, double *scalar);
    uint8_t route;             /* where d is 0 the input gets exactly 0, whatever the cotangent */
} ad_ew_kernels;
extern const ad_ew_kernels ad_ew_unary[AD_OP_UNARY_LAST - AD_OP_UNARY_FIRST + 1];
extern const ad_ew_kernels ad_ew_binary[AD_OP_BINARY_LAST - AD_OP_BINARY_FIRST + 1];
/* The differentiable rule of every elementwise op, from its rec_d (elementwise.c). */
int ad_vjp_rec_ew(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_ew(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
/* For the generated rules: fn evaluated at every element of n (inputs broadcast) into a new
 * constant node shaped like n; cond ? p : q with cond evaluated like ad_ew_eval. */
int ad_ew_eval(ad_tape *T, ad_node *n, const ad_ew_fn fn[2], ad_node **out);
int ad_ew_where(ad_tape *T, ad_node *n, const ad_ew_fn cond[2], ad_node *p, ad_node *q, ad_node **out);
/* vjp_ew's sum of m contributions v (elements k0.. of a run of len) into one value's eight
 * lanes p, shared with the fused replay (fusion.c) so that both sum in one order. */
void ad_ew_lane_sum(int dtype, const void *v, int64_t k0, int64_t m, int64_t len, double *p);

/* Intra-op threads (threads.c): fn(ctx, lo, hi) over parts of [0, n) on the pool, at least grain
 * elements a part, every part but the last a multiple of `align` long (so it starts at a multiple
 * of align), in parallel when the setting and n allow, else fn(ctx, 0, n) here. Only for work
 * whose every element is computed alike however the range is split (bit-identical results for
 * any thread count). Elementwise passes align to AD_PAR_ALIGN: a kernel's vector loop then meets
 * an element in its main body whatever the split, and only the last few of the whole range in
 * its tail (which may call the scalar libm); it is the driver's chunk, so chunked passes cut the
 * range where one thread would. */
typedef void (*ad_par_fn)(void *ctx, int64_t lo, int64_t hi);
void ad_parallel(int64_t n, int64_t grain, int64_t align, ad_par_fn fn, void *ctx);
#define AD_PAR_ALIGN 256

/* float32 C = [C +] op(A) op(B) for a small matrix with a long one on AVX2 + FMA (gemm_small.c);
 * 0 when the shapes do not suit it, and nothing was written. These three kernels exist on x86-64
 * only, and the caller (ad_gemm) checks that the CPU has their instructions. */
int ad_gemm_small_f32(int transA, int transB, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                      const float *B, int64_t ldb, int beta_one, float *C, int64_t ldc);

/* float64 C = [C +] op(A) op(B) with two small sides on AVX-512F (gemm_skinny.c): A (m x k) @
 * op(B) with k, n small, or A^T G with m, n small; 0 when the shapes do not suit it */
int ad_gemm_skinny_f64(int transA, int transB, int64_t m, int64_t n, int64_t k, const double *A, int64_t lda,
                       const double *B, int64_t ldb, int beta_one, double *C, int64_t ldc);

/* float64 C = [C +] op(A) op(B) with every side large, blocked on AVX-512F (dgemm_avx512.c); 0 when
 * the shapes do not suit it */
int ad_dgemm_avx512(int transA, int transB, int64_t m, int64_t n, int64_t k, const double *A, int64_t lda,
                    const double *B, int64_t ldb, int beta_one, double *C, int64_t ldc);

/* forward helpers shared with the sweep */
int ad_gemm(int dtype, int transA, int transB, int64_t m, int64_t n, int64_t k, const void *A,
            int64_t lda, const void *B, int64_t ldb, int beta_one, void *C, int64_t ldc);

/* jvp entry points of each kernel family, referenced by the op table */
int ad_jvp_unary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_binary(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_reduce(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_matmul(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_layout(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_index(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_softmax(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp_rows_matmul(ad_tape *T, ad_node *n, const void *g, int64_t k, int which, void *dst, int accumulate);

/* differentiable rules (ad_vjp_rec_fn / ad_jvp_rec_fn) of the non-elementwise families, next to
 * each family's numeric VJP and JVP. A rule may hand back an existing node (the cotangent itself,
 * for broadcast_to) with a new reference instead of a new node. */
int ad_vjp_rec_reduce(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_vjp_rec_matmul(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_vjp_rec_layout(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_vjp_rec_index(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_vjp_rec_softmax(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_reduce(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_jvp_rec_matmul(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_jvp_rec_layout(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_jvp_rec_index(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_jvp_rec_softmax(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
/* issue 17: the scan family (kernels/scan.c), every rule of it */
int ad_vjp_scan(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_jvp_scan(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp2_scan(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                 ad_sink *s);
int ad_vjp_rec_scan(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_scan(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
/* issue 17: solve, logdet/det and cholesky (kernels/lapack.c), every rule of them */
int ad_mk_solve(ad_tape *T, ad_node *a, ad_node *b, int name, ad_node **out);
int ad_vjp_lapack(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_jvp_lapack(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp2_lapack(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                   ad_sink *s);
int ad_vjp_rec_lapack(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_lapack(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);

/* ---- replay (replay.c) ----
 * The forward of a recorded node from its inputs' values ins[j] (n's own shape, constants and
 * saved index or mask as recorded), into n->data: the very code its constructor runs, so a
 * replayed value is bit-identical to the eager one. */
int ad_fwd_ew(ad_node *n, ad_node *const *ins);
int ad_fwd_reduce(ad_tape *T, ad_node *n, ad_node *const *ins);
int ad_fwd_softmax(ad_tape *T, ad_node *n, ad_node *const *ins);
int ad_fwd_matmul(ad_node *n, ad_node *const *ins);
int ad_fwd_layout(ad_node *n, ad_node *const *ins);
int ad_fwd_index(ad_node *n, ad_node *const *ins);
int ad_fwd_conv(ad_node *n, ad_node *const *ins);
int ad_fwd_scan(ad_node *n, ad_node *const *ins);
int ad_fwd_lapack(ad_node *n, ad_node *const *ins);
/* One cotangent row of n (g, shaped like n) handed to input j's adjoint `target` (+= when acc):
 * the batched reverse sweep's step (sweep.c) for k = 1, so a replayed gradient is bit-identical
 * to ad_vjp's. */
int ad_pass_row(ad_tape *T, ad_node *n, const void *g, int j, void *target, int acc);
/* While the calling thread records (ad_record_begin): a value computed from a node that requires
 * grad without being recorded (an op under no_grad, detach, .data) or an in-place write; the
 * recording then fails rather than bake in a value that would not follow new inputs. */
void ad_tape_escape(ad_tape *T);

/* ---- custom nodes and hooks (custom.c): rules that live in the bindings ----
 * Each runs the bindings' callback with T unlocked (they run ops on this tape) and T locked
 * again on return; results are checked here, at the boundary, before the sweep uses them.
 * ad_custom_vjp: custom node n's contribution to each input for its cotangent g (n->size values,
 *   or one value standing for all when g_uniform): res[j] is a new node shaped like input j with
 *   its dtype, or NULL for zero (and for inputs that do not require grad).
 * ad_custom_vjp_graph: the same for a cotangent node, as recorded ops.
 * ad_hook_numeric: n's hooks for its complete gradient g (n->size values), replaced in place.
 * ad_hook_graph: the same for a gradient node: *g may be replaced by a new reference.
 * ad_custom_freed: tape.c tells when a custom or hooked node is freed (T locked). */
int ad_custom_vjp(ad_tape *T, ad_node *n, const void *g, int g_uniform, ad_node **res);
int ad_custom_vjp_graph(ad_tape *T, ad_node *n, ad_node *g, ad_node **res);
int ad_hook_numeric(ad_tape *T, ad_node *n, void *g);
int ad_hook_graph(ad_tape *T, ad_node *n, ad_node **g);
void ad_custom_freed(ad_tape *T, ad_node *n);
/* ad_resolve, but a node whose value was freed (drop_unread_value) resolves too (tape.c) */
int ad_resolve_record(ad_tape *T, int64_t h, ad_node **out);
int ad_jvp_custom(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_jvp_rec_custom(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_vjp_custom_unused(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_rec_custom_unused(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
/* dst (+= when acc) n values of src */
void ad_add_into(int dtype, void *dst, int acc, const void *src, int64_t n);

/* optim.c's step in two parts, for the traced training step (train_step.c) too; T locked.
 * ad_optim_prepare checks the settings and step count, resolves leaf hp and the state leaves its
 * step needs (s[i] NULL when not needed); ad_optim_apply updates p from grad (p's size and dtype)
 * and bumps the versions of p and its state. */
int ad_optim_prepare(ad_tape *T, const ad_optim_t *o, int64_t hp, const int64_t hs[3], int64_t t, ad_node **p,
                     ad_node *s[3]);
void ad_optim_apply(ad_tape *T, const ad_optim_t *o, ad_node *p, ad_node *const s[3], const void *grad, int64_t t);
/* Whether a plan can run op (replay.c): tape.c records such an op while recording even when no
 * input requires grad, so that a plan recomputes it. */
int ad_op_replayable(int op);
/* Whether ad_node_link will record op on these inputs rather than make its result a constant
 * (tape.c): a constructor that saves data only for its rules (an index, a mask) asks this. */
int ad_will_record(ad_tape *T, int op, int nin, ad_node *const *ins);
/* A replay with hooks run under the tape's lock (replay.c; train_step.c uses it): prepare before
 * the forward (it may fill the caller's inputs and grads arrays), finish after the replay with its
 * status (its return value is the call's). forward/backward select the passes. */
typedef struct {
    int (*prepare)(ad_tape *T, void *ctx);
    int (*finish)(ad_tape *T, void *ctx, int st);
    void *ctx;
} ad_plan_hooks;
int ad_plan_replay_hooked(ad_plan *p, int forward, int backward, const void *const *inputs, void *out,
                          void *const *grads, const ad_plan_hooks *h);

#endif
