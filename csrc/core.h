/* Internals shared by tape.c, sweep.c, shape.c and kernels/: the node record, the tape, the
 * op table and the few helpers every kernel needs. Not part of the public API. */
#ifndef AD_CORE_H
#define AD_CORE_H

#include "ad.h"
#include <pthread.h>
#include <stdarg.h>

#define AD_MAXIN_INLINE 2

enum {
    F_REQUIRES_GRAD = 1,
    F_LEAF = 2,
    F_RELEASED = 4,   /* backward went through without retain_graph: inputs dropped */
    F_IN_USE = 8
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
    int64_t size;
    int64_t shape[AD_MAXDIM];
    void *data;
    void *adj;                 /* adjoint, alive only during a backward sweep */
    ad_node *grad;             /* leaves: accumulated gradient (a node without graph) */
    ad_node *in_inline[AD_MAXIN_INLINE];
    ad_node **in;
    int64_t pos;               /* index in the tape's creation order */
    double c[2];               /* scalar parameters (ad_scalar's c, clip bounds, ...) */
    uint64_t axes;             /* reductions: bit i set = axis i reduced */
    int32_t keepdims;
    int32_t aux_len;           /* entries in aux (perm of transpose, ...) */
    int64_t *aux;
    int64_t site;              /* anomaly mode: creation-site id from the bindings (0: none) */
    ad_node *next_free;
};

typedef struct ad_tape ad_tape;

/* One contribution to an input's adjoint. A VJP kernel writes `values` shaped like `shape` (the
 * input broadcast to the output for elementwise ops, the input itself otherwise) into dst,
 * adding when accumulate is set. When shape differs from the input's, the sweep sums dst over
 * the broadcast axes afterwards: broadcasting is undone in that one place. */
typedef struct {
    void *dst;
    int accumulate;
    int ndim;
    int64_t shape[AD_MAXDIM];
    int64_t size;
} ad_sink;

typedef int (*ad_vjp_fn)(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);

/* Shape of the contribution a VJP writes for input `which` (see ad_sink); NULL means the input's. */
typedef void (*ad_contrib_fn)(const ad_node *n, int which, int *ndim, int64_t *shape);

typedef struct {
    const char *name;
    ad_vjp_fn vjp;
    ad_contrib_fn contrib;
} ad_opdef;

void ad_contrib_output(const ad_node *n, int which, int *ndim, int64_t *shape);
void ad_contrib_matmul(const ad_node *n, int which, int *ndim, int64_t *shape);

extern const ad_opdef ad_ops[AD_OP_COUNT];

/* errors: set the thread's message, return -code (usable directly as a handle result) */
int ad_err(int code, const char *fmt, ...);

/* dtype helpers */
static inline size_t ad_itemsize(int dtype) { return dtype == AD_F32 ? 4 : 8; }
const char *ad_dtype_name(int dtype);
/* "(2, 3)" into buf */
const char *ad_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);

/* tape internals used by kernels and the sweep */
ad_tape *ad_tape_current(void);           /* thread's tape, created on demand (NULL: OOM, error set) */
int ad_lock_current(ad_tape **T);         /* current tape, locked */
void ad_unlock(ad_tape *T);
int ad_resolve(ad_tape *T, int64_t h, ad_node **out);   /* validate handle against T */
int64_t ad_handle(ad_tape *T, ad_node *n);
int ad_grad_mode(ad_tape *T);
void *ad_buf_alloc(ad_tape *T, size_t bytes);
void ad_buf_free(ad_tape *T, void *p, size_t bytes);
/* New node with the given shape and an uninitialised value buffer; refs = 1 (the caller's). */
int ad_node_new(ad_tape *T, int op, int dtype, int ndim, const int64_t *shape, ad_node **out);
/* Connect inputs if grad mode is on and any requires grad; takes references on them. */
int ad_node_link(ad_tape *T, ad_node *n, int nin, ad_node **ins);
void ad_node_unref(ad_tape *T, ad_node *n);
void ad_node_drop_graph(ad_tape *T, ad_node *n);   /* release inputs and params, mark released */
static inline ad_node *ad_in(ad_node *n, int i) { return n->in[i]; }
/* A finished op: link inputs (or not) and return the handle, or free the node on failure. */
int64_t ad_finish(ad_tape *T, ad_node *n, int nin, ad_node **ins);
void ad_node_discard(ad_tape *T, ad_node *n);
ad_tape *ad_node_tape(ad_node *n);
int ad_tape_grow_adj(ad_tape *T, ad_node *n);  /* allocate n->adj (uninitialised) */

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

/* The sink's accumulate step: adj (in shape, accumulate?) += sum of src (out shape) over
 * broadcast axes. */
void ad_unbroadcast_into(int dtype, void *adj, int accumulate, int nin, const int64_t *in_shape,
                         const void *src, int nout, const int64_t *out_shape);
/* dst (contiguous, dst shape) = src viewed with element strides */
void ad_copy_strided(int dtype, void *dst, const void *src, int ndim, const int64_t *shape,
                     const int64_t *src_strides);

/* vjp entry points of each kernel family, referenced by the op table */
int ad_vjp_unary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_binary(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_scalar(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_reduce(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_matmul(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_vjp_layout(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);

/* forward helpers shared with the sweep */
int ad_gemm(int dtype, int transA, int transB, int64_t m, int64_t n, int64_t k, const void *A,
            int64_t lda, const void *B, int64_t ldb, int beta_one, void *C, int64_t ldc);

#endif
