/* Record once, replay in C. A plan copies the recorded graph between a function's inputs and its
 * output out of the tape: one node record per recorded op, in creation order (a topological
 * order), with its shape, constants and saved index or mask, and its inputs pointing at records
 * of the plan. Every buffer is assigned once, at build time, in one arena: the inputs' values
 * (copied in by each replay, so that every operand address is fixed), each op's value, each
 * adjoint (reused by liveness: an adjoint lives from its first contribution to its node's turn in
 * the reverse sweep, and a freed buffer of the same size takes the next one), and a copy of every
 * constant. A replay then runs, with no Python and no allocation per op:
 *   forward   each op's forward kernel (ad_fwd_*: the code its constructor runs);
 *   reverse   the steps of ad_vjp's sweep for one cotangent row (ad_pass_row), in the order it
 *             takes them, each adding into (or writing, for an adjoint's first contribution) the
 *             buffer the build assigned.
 * Same kernels, same order, same first-write/accumulate pattern: the gradient is bit-identical to
 * ad.grad's. ad_plan_fuse (fusion.c) then runs chains of elementwise ops on large tensors tile by
 * tile, with the same bits. The records are private copies, so a plan outlives the graph it was built from and
 * can be replayed from any thread (one replay at a time per plan).
 *
 * What the graph does not hold is checked instead. A constant (a leaf that is not an input, or a
 * value made before the inputs were) was copied at build time; the version of the tensor it came
 * from is compared at every replay, so an in-place write to it since (an optimizer step on a
 * closed-over parameter) makes the replay return AD_PLAN_STALE instead of a stale result. Values
 * that left the graph while recording (item(), comparisons, numpy()) are the bindings' guards: the
 * plan computes the watched tensors they read, and the bindings compare them after the forward. */
#include "core.h"
#include "fusion.h"
#include "scalar_replay.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* One step of the reverse sweep: node's adjoint row g handed to input `which`, whose adjoint is
 * target. Every pointer is fixed at build time (inputs and the cotangent are copied into the
 * arena), so the fast path reads nothing but this record. */
typedef struct {
    int64_t node;              /* the node whose adjoint row is handed on */
    int64_t input;             /* the receiving node's index */
    int32_t which;             /* input slot of node */
    int32_t acc;               /* 0 for the receiver's first contribution (written), else added */
    int32_t fast;              /* the elementwise fast path (see fast_ew) */
    ad_ew_wfn d;               /* its kernel, NULL: the derivative is the constant 0 */
    const void *in[3];         /* the kernel's operands: node's inputs' values and its own */
    const void *g;
    void *target;
    int64_t n;                 /* node's elements */
    size_t zero_bytes;         /* the receiver's bytes (a zero contribution) */
    double c[2];
} rstep;

/* One op of the forward pass: the fast path's kernel call with its operands, or the node. */
typedef struct {
    ad_ew_fn fn;
    const void *in[3];         /* as fwd_part passes them: the inputs, then NULL */
    void *out;
    int64_t n;
    double c[2];
    ad_node *node;
} fstep;

struct ad_plan {
    atomic_flag busy;
    int fwd_done;
    int n_inputs, n_watch;
    int n_diff;                /* inputs [0, n_diff) get gradients, the rest are data */
    int64_t nn;                /* node records, creation order */
    ad_node *nodes;
    ad_node **ins;             /* input pointer arrays of records with more than 2 inputs */
    int64_t root;
    int64_t *input_idx;        /* record of input i */
    int64_t *watch_idx;
    int8_t *role;              /* R_OP, R_INPUT, R_CONST */
    int64_t *adj;              /* arena offset of a node's adjoint (-1: none, or given by the caller) */
    int32_t *input_no;         /* input number of an input record, else -1 */
    uint8_t *input_hit;        /* input i receives a contribution */
    rstep *steps;
    int64_t nsteps;
    int64_t nconst;
    int64_t *const_h;          /* handles held on the constants' tensors, and their versions */
    int64_t *const_ver;
    int64_t nops;
    fstep *fsteps;             /* the forward pass, one per op with elements */
    int64_t nfsteps;
    char *arena;
    size_t arena_bytes;
    void *seed;                /* the root's cotangent, copied in (or ones) by each reverse sweep */
    ad_fusion *fusion;         /* elementwise regions run tile by tile (fusion.c), or NULL */
    ad_scalar *scalar;         /* runs of one-element elementwise steps (scalar_replay.c), or NULL */
    uint8_t *transient;        /* records whose buffers are shared (fusion.h says which): never fused */
    /* the caller's buffers in place (bind_caller) */
    uint8_t *bound;            /* per input: BOUND_VALUE, BOUND_ADJ */
    void **home;               /* per input: its value's buffer in the arena */
    struct fixup *fix;         /* the steps' pointers to large inputs' values and adjoints */
    int64_t nfix;
};

enum { R_OP = 0, R_INPUT = 1, R_CONST = 2 };

static size_t value_bytes(const ad_node *n) { return (size_t)n->size * ad_itemsize(n->dtype); }

/* Where a buffer goes in the arena. A value of one element sits next to the last: a scalar
 * chain's values share cache lines. Anything larger starts on a 64-byte line and
 * keeps at least 128 bytes from the next buffer's start, and that is needed for bit-identity, not
 * only for speed: GCC vectorises the libm kernels with a runtime check that the input and output
 * are a vector apart, and falls back to the scalar loop (scalar libm, rounding differently from
 * libmvec) when they are closer; eager ops get separately allocated buffers and take the vector
 * loop, so the replay must too. */
static size_t arena_take(size_t *top, size_t bytes, int one_element)
{
    if (one_element) {
        size_t at = (*top + 7) & ~(size_t)7;
        *top = at + 8;
        return at;
    }
    size_t at = (*top + 63) & ~(size_t)63;
    *top = at + ((bytes + 63) & ~(size_t)63) + 64;
    return at;
}

typedef struct { ad_node *n; int64_t index; } node_entry;

static int entry_cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const node_entry *)a)->n, y = (uintptr_t)((const node_entry *)b)->n;
    return x < y ? -1 : x > y;
}

static int entry_cmp_pos(const void *a, const void *b)
{
    int64_t x = ((const node_entry *)a)->n->pos, y = ((const node_entry *)b)->n->pos;
    return x < y ? -1 : x > y;
}

/* index of n among the plan's records (sorted by pointer in byptr) */
static int64_t index_of(const node_entry *byptr, int64_t nn, ad_node *n)
{
    node_entry key = {n, 0}, *hit = bsearch(&key, byptr, (size_t)nn, sizeof key, entry_cmp_ptr);
    return hit ? hit->index : -1;
}

/* Freed buffers by size, for the liveness assignments at build time (values, adjoints). */
typedef struct { size_t bytes, off; } free_buf;
typedef struct { free_buf *b; int64_t n, cap; } free_list;

/* A buffer of `bytes`: the most recently freed one of that size among the last 16 (a chain reuses
 * one or two; looking further would make a build of 10^6 ops quadratic), else a new one. */
static size_t take_freed(free_list *fl, size_t *top, size_t bytes, int one_element)
{
    int64_t k = fl->n - 1;
    while (k >= 0 && k >= fl->n - 16 && fl->b[k].bytes != bytes) k--;
    if (k < 0 || k < fl->n - 16) return arena_take(top, bytes, one_element);
    size_t off = fl->b[k].off;
    fl->b[k] = fl->b[--fl->n];
    return off;
}

static int give_back(free_list *fl, size_t bytes, size_t off)
{
    if (fl->n == fl->cap) {
        int64_t cap = fl->cap ? 2 * fl->cap : 16;
        free_buf *g = realloc(fl->b, (size_t)cap * sizeof *g);
        if (!g) return ad_err(AD_ERR_MEMORY, "record: out of memory");
        fl->b = g;
        fl->cap = cap;
    }
    fl->b[fl->n++] = (free_buf){bytes, off};
    return AD_OK;
}


static int plan_fail(ad_plan *p, int st)
{
    ad_plan_free(p);
    return st;
}

/* Does node n's reverse step to its input m (slot j) copy n's adjoint unchanged into m's first
 * one (add, subtract's first operand, add_scalar: AD_VJP_PASS0/1)? Then m can take over n's
 * adjoint buffer, as eager's sweep hands it over, and the step goes: one pass less per such op,
 * same bits (a copy is exact). Not when m is n's operand twice (x + x: the second step would add
 * the buffer into itself), nor for the root (its cotangent is the caller's seed: the caller
 * checks), one-element nodes (the scalar program's) or values of fuse_from elements and more
 * (fused regions run the plan's steps as they are; the nodes involved are marked transient for
 * ad_plan_fuse too). */
static int hands_over(const ad_node *n, int j, const ad_node *m, int64_t fuse_from)
{
    int flags = ad_ops[n->op].flags;
    if (j > 1 || !(flags & (j ? AD_VJP_PASS1 : AD_VJP_PASS0))) return 0;
    if (m->size != n->size || m->dtype != n->dtype || n->size <= 1 || n->size >= fuse_from) return 0;
    for (int k = 0; k < n->nin; k++)
        if (k != j && n->in[k] == n->in[j]) return 0;
    return 1;
}

/* The same for a concatenation's step to the one input that needs a gradient, when that input
 * is one block of it (*at: the block's first element): the step copies the block, so the input's
 * adjoint can be the block itself ([1, y[:-1]] in an ODE's right-hand side). */
static int views_block(const ad_node *n, int j, const ad_node *m, int64_t fuse_from, int64_t *at)
{
    return m->size > 1 && m->dtype == n->dtype && n->size < fuse_from && ad_concat_block(n, j, at);
}

/* Are n's values one contiguous block of its operand's, in order (*at: the first element)? */
static int is_view(const ad_node *n, int64_t *at)
{
    if (n->size <= 1 || n->dtype != n->in[0]->dtype) return 0;
    if (n->op == AD_OP_RESHAPE) { *at = 0; return 1; }
    if (n->op != AD_OP_SLICE || n->aux_len != n->ndim + 1) return 0;
    int64_t contig[AD_MAXDIM];
    ad_contig_strides(n->ndim, n->shape, contig);
    for (int d = 0; d < n->ndim; d++)
        if (n->shape[d] > 1 && n->aux[1 + d] != contig[d]) return 0;
    *at = n->aux[0];
    return 1;
}

static int is_stop(ad_node *n, int64_t lo) { return n->nin == 0 || n->pos < lo; }

/* The family whose forward (ad_fwd_*) recomputes an op, 0 for none (custom functions: their
 * forward is Python). The walk refuses an op without one, so a replay never meets it. */
enum { FAM_NONE, FAM_EW, FAM_REDUCE, FAM_MATMUL, FAM_LAYOUT, FAM_INDEX, FAM_SOFTMAX, FAM_CONV, FAM_SCAN, FAM_LAPACK };

static int family_of(int op)
{
    if (op >= AD_OP_UNARY_FIRST && op <= AD_OP_BINARY_LAST) return FAM_EW;
    switch (op) {
    case AD_OP_SUM: case AD_OP_MEAN: case AD_OP_MAX: case AD_OP_MIN:
        return FAM_REDUCE;
    case AD_OP_MATMUL:
        return FAM_MATMUL;
    case AD_OP_RESHAPE: case AD_OP_TRANSPOSE: case AD_OP_BROADCAST_TO: case AD_OP_CAST:
        return FAM_LAYOUT;
    case AD_OP_GATHER: case AD_OP_CONCATENATE: case AD_OP_STACK: case AD_OP_WHERE: case AD_OP_CLIP:
    case AD_OP_SCATTER_ADD: case AD_OP_SLICE:
        return FAM_INDEX;
    case AD_OP_LOGSUMEXP: case AD_OP_SOFTMAX: case AD_OP_LOG_SOFTMAX:
        return FAM_SOFTMAX;
    case AD_OP_UNFOLD: case AD_OP_FOLD: case AD_OP_CONV2D:
        return FAM_CONV;
    case AD_OP_SCAN:
        return FAM_SCAN;
    case AD_OP_SOLVE: case AD_OP_LOGDET: case AD_OP_CHOLESKY: case AD_OP_SVD:
        return FAM_LAPACK;
    default:
        return FAM_NONE;
    }
}

int ad_op_replayable(int op) { return family_of(op) != FAM_NONE; }

static int forward_node(ad_tape *T, ad_node *n)
{
    switch (family_of(n->op)) {
    case FAM_EW: return ad_fwd_ew(n, n->in);
    case FAM_REDUCE: return ad_fwd_reduce(T, n, n->in);
    case FAM_MATMUL: return ad_fwd_matmul(n, n->in);
    case FAM_LAYOUT: return ad_fwd_layout(n, n->in);
    case FAM_INDEX: return ad_fwd_index(n, n->in);
    case FAM_SOFTMAX: return ad_fwd_softmax(T, n, n->in);
    case FAM_CONV: return ad_fwd_conv(n, n->in);
    case FAM_SCAN: return ad_fwd_scan(n, n->in);
    case FAM_LAPACK: return ad_fwd_lapack(n, n->in);
    default: return ad_err(AD_ERR_RUNTIME, "replay: op %s cannot be replayed", ad_ops[n->op].name);
    }
}

/* Collect the nodes reached from the starts (root and watched tensors) through recorded inputs,
 * not looking through inputs, leaves, or nodes made before the first input (lo). */
static int walk(ad_node **starts, int nstart, int64_t lo, node_entry **out, int64_t *count)
{
    int64_t cap = 64, top = 0, seen = 0, seen_cap = 64;
    ad_node **stack = malloc((size_t)cap * sizeof *stack);
    node_entry *list = malloc((size_t)seen_cap * sizeof *list);
    int st = AD_OK;
    if (!stack || !list) { st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto done; }
    for (int i = 0; i < nstart; i++) {
        if (top == cap) {
            ad_node **g = realloc(stack, (size_t)(cap *= 2) * sizeof *g);
            if (!g) { st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto done; }
            stack = g;
        }
        stack[top++] = starts[i];
    }
    while (top > 0) {
        ad_node *m = stack[--top];
        if (m->flags & F_WALKED) continue;
        if (seen == seen_cap) {
            node_entry *g = realloc(list, (size_t)(seen_cap *= 2) * sizeof *g);
            if (!g) { st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto done; }
            list = g;
        }
        m->flags |= F_WALKED;
        list[seen].n = m;
        list[seen++].index = 0;
        if (is_stop(m, lo)) continue;
        if (m->op == AD_OP_CUSTOM || (m->flags & F_HOOK)) {
            st = ad_err(AD_ERR_RUNTIME, "record: the function uses a %s, which runs Python in its rules; "
                        "a recorded function replays in C only (call it eagerly instead)",
                        m->op == AD_OP_CUSTOM ? "custom function (ad.custom_vjp, ad.Function)" : "gradient hook");
            goto done;
        }
        if (!family_of(m->op)) {
            st = ad_err(AD_ERR_RUNTIME, "record: op %s has no forward for a replay", ad_ops[m->op].name);
            goto done;
        }
        if (m->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "record: part of the graph (a %s node) was released by backward(); "
                        "record a function whose graph is intact", ad_ops[m->op].name);
            goto done;
        }
        for (int j = 0; j < m->nin; j++) {
            if (top == cap) {
                ad_node **g = realloc(stack, (size_t)(cap *= 2) * sizeof *g);
                if (!g) { st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto done; }
                stack = g;
            }
            stack[top++] = m->in[j];
        }
    }
done:
    for (int64_t i = 0; i < seen; i++) list[i].n->flags &= (uint8_t)~F_WALKED;
    free(stack);
    if (st) { free(list); return st; }
    *out = list;
    *count = seen;
    return AD_OK;
}

/* The elementwise fast path. An elementwise op whose inputs all have its shape and dtype, below the
 * size the kernels split over threads, is one call of its generated kernel over the whole tensor in
 * the eager forward (elementwise.c's fwd_part) and one call of w * d_j per input in ad_vjp's step
 * (vjp_ew's contiguous route): the replay makes those calls itself, with the same arguments, and
 * skips the drivers' shape walks, which cost more than a scalar op's arithmetic. */
static const ad_ew_kernels *fast_ew(const ad_node *n)
{
    if (n->size == 0 || n->size >= 65536 || n->nin < 1 || n->nin > 2) return NULL;
    const ad_ew_kernels *K;
    if (n->op >= AD_OP_UNARY_FIRST && n->op <= AD_OP_UNARY_LAST) K = &ad_ew_unary[n->op - AD_OP_UNARY_FIRST];
    else if (n->op >= AD_OP_BINARY_FIRST && n->op <= AD_OP_BINARY_LAST) K = &ad_ew_binary[n->op - AD_OP_BINARY_FIRST];
    else return NULL;
    for (int j = 0; j < n->nin; j++) {
        const ad_node *m = n->in[j];
        if (m->dtype != n->dtype || m->ndim != n->ndim || memcmp(m->shape, n->shape, (size_t)n->ndim * sizeof(int64_t)))
            return NULL;
    }
    return K;
}

/* The scalar program of p's fast one-element steps, leaving out those fusion's regions run. */
static int scalar_program(const ad_plan *p, const ad_fusion *fusion, ad_scalar **out)
{
    size_t nf = (size_t)(p->nfsteps ? p->nfsteps : 1), ns = (size_t)(p->nsteps ? p->nsteps : 1);
    ad_scalar_fstep *f = malloc(nf * sizeof *f);
    ad_scalar_rstep *s = malloc(ns * sizeof *s);
    uint8_t *f_skip = fusion ? calloc(nf, 1) : NULL, *s_skip = fusion ? calloc(ns, 1) : NULL;
    int st;
    if (!f || !s || (fusion && (!f_skip || !s_skip))) {
        st = ad_err(AD_ERR_MEMORY, "record: out of memory for a scalar program");
    } else {
        for (int64_t k = 0; k < p->nfsteps; k++) f[k] = (ad_scalar_fstep){p->fsteps[k].node, p->fsteps[k].fn != NULL};
        for (int64_t k = 0; k < p->nsteps; k++) {
            const rstep *r = &p->steps[k];
            s[k] = (ad_scalar_rstep){&p->nodes[r->node], r->g, r->target, r->which, r->acc, r->fast};
        }
        ad_fusion_mark(fusion, f_skip, s_skip);
        st = ad_scalar_build(p->arena, p->arena_bytes, f, p->nfsteps, f_skip, s, p->nsteps, s_skip, out);
    }
    free(f);
    free(s);
    free(f_skip);
    free(s_skip);
    return st;
}

/* ---- the caller's buffers in place ----
 * ad_plan_run with gradients runs the forward and the reverse in one call, while the caller's
 * arrays are alive and unchanged: a large input is then read where it is and a large gradient
 * written where the caller wants it, instead of a copy in and a copy out (two of an elementwise
 * plan's four or five passes over memory). For the call, the plan's pointers to the input's value
 * (its record's data, the fast steps' operands, the fused regions') and to its adjoint (the steps'
 * targets) point at the caller's buffers; after it, back at the arena. The bits do not change: no
 * kernel's result depends on where its buffers are (loops are cut by element counts, never by
 * alignment), and distinct buffers of this size are far more than a vector apart, as arena_take
 * wants. Small inputs keep the copy: it costs less than the binding and keeps them near the rest. */
enum { INPLACE_MIN_BYTES = 32768, BOUND_VALUE = 1, BOUND_ADJ = 2 };
enum { FX_FWD_IN0, FX_FWD_IN1, FX_REV_IN0, FX_REV_IN1, FX_REV_TARGET };
struct fixup { int64_t k; int32_t input; int32_t what; };

static int large_input(const ad_plan *p, const ad_node *m)
{
    int64_t idx = m - p->nodes;
    return p->role[idx] == R_INPUT && value_bytes(m) >= INPLACE_MIN_BYTES;
}

/* The steps' pointers to large inputs (counted when fix is NULL). */
static int64_t list_fixups(const ad_plan *p, struct fixup *fix)
{
    int64_t c = 0;
#define ADD(kk, m, w) do { if (fix) fix[c] = (struct fixup){(kk), p->input_no[(m) - p->nodes], (w)}; c++; } while (0)
    for (int64_t k = 0; k < p->nfsteps; k++) {
        const ad_node *n = p->fsteps[k].node;
        if (!p->fsteps[k].fn) continue;   /* a node's forward reads its inputs' records */
        for (int j = 0; j < n->nin && j < 2; j++)
            if (large_input(p, n->in[j])) ADD(k, n->in[j], FX_FWD_IN0 + j);
    }
    for (int64_t k = 0; k < p->nsteps; k++) {
        const rstep *s = &p->steps[k];
        const ad_node *n = &p->nodes[s->node];
        if (s->fast)
            for (int j = 0; j < n->nin && j < 2; j++)
                if (large_input(p, n->in[j])) ADD(k, n->in[j], FX_REV_IN0 + j);
        if (large_input(p, &p->nodes[s->input])) ADD(k, &p->nodes[s->input], FX_REV_TARGET);
    }
#undef ADD
    return c;
}

/* Input i's value (what BOUND_VALUE) or adjoint (BOUND_ADJ), now at from, at to. */
static void rebind(ad_plan *p, int i, int what, void *from, void *to)
{
    for (int64_t q = 0; q < p->nfix; q++) {
        const struct fixup *x = &p->fix[q];
        if (x->input != i || (x->what == FX_REV_TARGET) != (what == BOUND_ADJ)) continue;
        switch (x->what) {
        case FX_FWD_IN0: case FX_FWD_IN1: p->fsteps[x->k].in[x->what - FX_FWD_IN0] = to; break;
        case FX_REV_IN0: case FX_REV_IN1: p->steps[x->k].in[x->what - FX_REV_IN0] = to; break;
        default: p->steps[x->k].target = to; break;
        }
    }
    if (what == BOUND_VALUE) p->nodes[p->input_idx[i]].data = to;
    ad_fusion_rebind(p->fusion, from, to);
}

static int overlap(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return na && nb && x < y + nb && y < x + na;
}

/* Binds the large inputs and gradients of a replay with gradients and returns how many, none when
 * one of them overlaps another of the caller's buffers (a gradient written over an input the
 * reverse still reads, an output over an input): the copies keep such calls as they were. None
 * either in a plan with watched tensors, whose values ad_plan_watch reads after the call. */
static int bind_caller(ad_plan *p, const void *const *inputs, const void *out, void *const *grads)
{
    if (!p->nfix || !inputs || p->n_watch) return 0;
    size_t out_bytes = out && p->root >= 0 ? value_bytes(&p->nodes[p->root]) : 0;
    for (int i = 0; i < p->n_inputs; i++) {
        size_t bi = value_bytes(&p->nodes[p->input_idx[i]]);
        if (!large_input(p, &p->nodes[p->input_idx[i]])) continue;
        const void *gi = i < p->n_diff ? grads[i] : NULL;
        if (overlap(inputs[i], bi, out, out_bytes) || overlap(gi, gi ? bi : 0, out, out_bytes)) return 0;
        for (int j = 0; j < p->n_inputs; j++) {
            size_t bj = value_bytes(&p->nodes[p->input_idx[j]]);
            const void *gj = j < p->n_diff ? grads[j] : NULL;
            if (overlap(inputs[i], bi, gj, gj ? bj : 0) || overlap(gi, gi ? bi : 0, inputs[j], bj) ||
                (j != i && overlap(gi, gi ? bi : 0, gj, gj ? bj : 0)))
                return 0;
        }
    }
    int bound = 0;
    for (int i = 0; i < p->n_inputs; i++) {
        int64_t x = p->input_idx[i];
        if (!large_input(p, &p->nodes[x]) || !inputs[i]) continue;
        rebind(p, i, BOUND_VALUE, p->home[i], (void *)inputs[i]);
        p->bound[i] |= BOUND_VALUE;
        bound++;
        if (i < p->n_diff && grads[i] && p->input_hit[i] && x != p->root) {
            rebind(p, i, BOUND_ADJ, p->arena + p->adj[x], grads[i]);
            p->bound[i] |= BOUND_ADJ;
            bound++;
        }
    }
    return bound;
}

static void unbind_caller(ad_plan *p, const void *const *inputs, void *const *grads)
{
    for (int i = 0; i < p->n_inputs; i++) {
        if (p->bound[i] & BOUND_VALUE) rebind(p, i, BOUND_VALUE, (void *)inputs[i], p->home[i]);
        if (p->bound[i] & BOUND_ADJ) rebind(p, i, BOUND_ADJ, grads[i], p->arena + p->adj[p->input_idx[i]]);
        p->bound[i] = 0;
    }
}

static int build_locked(ad_tape *T, int64_t root_h, int n_inputs, const int64_t *inputs, int n_diff, int n_watch,
                        const int64_t *watch, int64_t *watch_index, int64_t fuse_from, ad_plan **out)
{
    if (n_inputs < 0 || (n_inputs > 0 && !inputs) || n_watch < 0 || (n_watch > 0 && (!watch || !watch_index)))
        return ad_err(AD_ERR_VALUE, "record: invalid lists of %d inputs and %d watched tensors", n_inputs, n_watch);
    if (n_diff < 0 || n_diff > n_inputs)
        return ad_err(AD_ERR_VALUE, "record: %d differentiated inputs of %d", n_diff, n_inputs);
    if (fuse_from < 1)
        return ad_err(AD_ERR_VALUE, "record: fuse_from is %lld; expected 1 or more (INT64_MAX when nothing is fused)",
                      (long long)fuse_from);
    ad_node *root;
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    ad_plan *p = calloc(1, sizeof *p);
    ad_node **starts = calloc((size_t)n_inputs + (size_t)n_watch + 1, sizeof *starts);
    node_entry *list = NULL, *byptr = NULL;
    free_list fl = {0}, vfl = {0};
    uint8_t *kept = NULL;
    int64_t *last = NULL, *view = NULL;
    int64_t nn = 0;
    if (!p || !starts) { free(starts); free(p); return ad_err(AD_ERR_MEMORY, "record: out of memory"); }
    atomic_flag_clear(&p->busy);
    p->n_inputs = n_inputs;
    p->n_diff = n_diff;
    p->n_watch = n_watch;
    /* the inputs: distinct leaves of this tape */
    int64_t lo = INT64_MAX;
    for (int i = 0; i < n_inputs && !st; i++) {
        ad_node *x;
        if ((st = ad_resolve(T, inputs[i], &x))) break;
        if (x->nin != 0) { st = ad_err(AD_ERR_VALUE, "record: input %d is not a leaf", i); break; }
        /* F_WALKED marks the inputs seen so far (cleared below): a repeat is found in one look */
        if (x->flags & F_WALKED) { st = ad_err(AD_ERR_VALUE, "record: input %d repeats an earlier input", i); break; }
        x->flags |= F_WALKED;
        starts[i] = x;
        if (x->pos < lo) lo = x->pos;
    }
    for (int i = 0; i < n_inputs && starts[i]; i++) starts[i]->flags &= (uint8_t)~F_WALKED;
    if (st) goto fail;
    /* the inputs are starts too, so that each has a record even when nothing reaches it (they are
     * leaves: the walk stops at them) */
    starts[n_inputs] = root;
    for (int i = 0; i < n_watch; i++)
        if ((st = ad_resolve(T, watch[i], &starts[n_inputs + 1 + i]))) goto fail;
    if ((st = walk(starts, n_inputs + 1 + n_watch, lo, &list, &nn))) goto fail;
    qsort(list, (size_t)nn, sizeof *list, entry_cmp_pos);
    size_t cnt = nn > 0 ? (size_t)nn : 1;   /* entries of the per-record arrays */
    byptr = malloc(cnt * sizeof *byptr);
    p->nodes = calloc(cnt, sizeof *p->nodes);
    p->role = calloc(cnt, sizeof *p->role);
    p->adj = malloc(cnt * sizeof *p->adj);
    p->input_no = malloc(cnt * sizeof *p->input_no);
    p->input_idx = malloc((size_t)(n_inputs ? n_inputs : 1) * sizeof *p->input_idx);
    p->input_hit = calloc((size_t)(n_inputs ? n_inputs : 1), 1);
    p->watch_idx = malloc((size_t)(n_watch ? n_watch : 1) * sizeof *p->watch_idx);
    p->const_h = calloc(cnt, sizeof *p->const_h);
    p->const_ver = calloc(cnt, sizeof *p->const_ver);
    p->fsteps = calloc(cnt, sizeof *p->fsteps);
    if (!p->fsteps || !byptr || !p->nodes || !p->role || !p->adj || !p->input_no || !p->input_idx || !p->input_hit ||
        !p->watch_idx || !p->const_h || !p->const_ver) {
        st = ad_err(AD_ERR_MEMORY, "record: out of memory for a plan of %lld nodes", (long long)nn);
        goto fail;
    }
    p->nn = nn;
    for (int64_t i = 0; i < nn; i++) {
        list[i].index = i;
        byptr[i] = list[i];
    }
    qsort(byptr, (size_t)nn, sizeof *byptr, entry_cmp_ptr);
    for (int64_t i = 0; i < nn; i++) { p->input_no[i] = -1; p->adj[i] = -1; }
    for (int i = 0; i < n_inputs; i++) {
        p->input_idx[i] = index_of(byptr, nn, starts[i]);
        p->input_no[p->input_idx[i]] = i;
    }
    p->root = index_of(byptr, nn, root);

    /* roles, sizes of the arena: values of ops and constants, input pointer arrays */
    size_t top = 0;
    int64_t nins = 0;
    for (int64_t i = 0; i < nn; i++) {
        ad_node *n = list[i].n;
        p->role[i] = p->input_no[i] >= 0 ? R_INPUT : is_stop(n, lo) ? R_CONST : R_OP;
        if (p->role[i] == R_CONST && !n->data) {
            st = ad_err(AD_ERR_RUNTIME, "record: a %s value the function reads was freed before the plan was built",
                        ad_ops[n->op].name);
            goto fail;
        }
        if (p->role[i] == R_OP && n->nin > AD_MAXIN_INLINE) nins += n->nin;
    }
    if (nins && !(p->ins = malloc((size_t)nins * sizeof *p->ins))) {
        st = ad_err(AD_ERR_MEMORY, "record: out of memory");
        goto fail;
    }
    /* the records: copies of the nodes, their inputs pointing at records */
    size_t *val_off = malloc(cnt * sizeof *val_off);
    size_t *aux_off = malloc(cnt * sizeof *aux_off);
    if (!val_off || !aux_off) { free(val_off); free(aux_off); st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto fail; }
    /* values by liveness too: a value no reverse step, guard or caller reads (kept[i] == 0) is
     * needed only until its last reader in the forward, and its buffer then goes to a later value
     * of the same size. Without it a replay's forward writes every value of the graph to fresh
     * memory: the ode eval's 2,500 values of 8 KB are 20 MB, far out of cache. A buffer is given
     * back after its reader's own value has one, never to it: an op never writes over its operand,
     * as eager never does (arena_take says why that matters to the bits). Values of fuse_from
     * elements and more keep theirs: a fused region (fusion.c) reads its operands again in its
     * reverse, and saves more than reuse does. */
    kept = malloc(cnt);
    last = malloc(cnt * sizeof *last);
    if (!kept || !last) { free(val_off); free(aux_off); st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto fail; }
    for (int64_t i = 0; i < nn; i++) {
        ad_node *n = list[i].n;
        last[i] = i;
        kept[i] = p->role[i] != R_OP || n->size <= 1 || n->size >= fuse_from || ad_op_reads(n, -1);
        if (p->role[i] != R_OP) continue;
        for (int j = 0; j < n->nin; j++) {
            int64_t m = index_of(byptr, nn, n->in[j]);
            last[m] = i;
            if (ad_op_reads(n, j)) kept[m] = 1;
        }
    }
    if (p->root >= 0) kept[p->root] = 1;
    for (int i = 0; i < n_watch; i++) kept[index_of(byptr, nn, starts[n_inputs + 1 + i])] = 1;
    /* views: a reshape, or a slice that is one block of its operand ([1, y[:-1]]'s y[:-1]), of a
     * value of the plan below fuse_from elements is that value's block, not a copy of it (no
     * forward step): the operand then lives as long as the view is read, and is kept if it is */
    view = malloc(2 * cnt * sizeof *view);
    p->transient = calloc(cnt, 1);
    if (!view || !p->transient) { free(val_off); free(aux_off); st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto fail; }
    int64_t *view_at = view + cnt;
    for (int64_t i = nn - 1; i >= 0; i--) {
        ad_node *n = list[i].n;
        view[i] = p->role[i] == R_OP && n->size < fuse_from && n->nin == 1 && is_view(n, &view_at[i])
                      ? index_of(byptr, nn, n->in[0]) : -1;
        if (view[i] < 0 || p->role[view[i]] != R_OP) { view[i] = -1; continue; }
        kept[view[i]] |= kept[i];
        if (last[i] > last[view[i]]) last[view[i]] = last[i];
        p->transient[i] = 1;
    }
    for (int64_t i = 0; i < nn && !st; i++) {
        ad_node *n = list[i].n;
        size_t bytes = value_bytes(n);
        if (view[i] >= 0) val_off[i] = val_off[view[i]] + (size_t)view_at[i] * ad_itemsize(n->dtype);
        else val_off[i] = kept[i] ? arena_take(&top, bytes, n->size <= 1) : take_freed(&vfl, &top, bytes, 0);
        aux_off[i] = p->role[i] == R_OP && n->aux_len > 0 ? arena_take(&top, (size_t)n->aux_len * sizeof(int64_t), 0) : 0;
        if (p->role[i] != R_OP) continue;
        /* operands read here for the last time (once each: x * x names x twice), then i itself
         * if nothing reads it; a view owns no buffer, the value it is a block of does */
        for (int j = 0; j <= n->nin && !st; j++)
            for (int64_t m = j < n->nin ? index_of(byptr, nn, n->in[j]) : i; m >= 0 && !st; m = view[m]) {
                if (kept[m] || last[m] != i || p->transient[m]) continue;
                p->transient[m] = 1;
                st = give_back(&vfl, value_bytes(list[m].n), val_off[m]);
            }
    }
    if (st) { free(val_off); free(aux_off); goto fail; }
    /* adjoints by liveness, in the order of the reverse sweep: the steps of ad_vjp's loop for the
     * nodes that depend on an input (an input's own adjoint has a buffer of its own, copied out
     * to the caller's gradient at the end) */
    uint8_t *dep = calloc(cnt, 1), *has = calloc(cnt, 1);
    /* an adjoint's buffer (offset, bytes), which a handed-over adjoint may be a block of */
    size_t *home = malloc(cnt * sizeof *home), *home_bytes = malloc(cnt * sizeof *home_bytes);
    int64_t cap_steps = 0;
    for (int64_t i = 0; i < nn; i++) if (p->role[i] == R_OP) cap_steps += list[i].n->nin;
    p->steps = malloc((size_t)(cap_steps ? cap_steps : 1) * sizeof *p->steps);
    if (!dep || !has || !p->steps || !home || !home_bytes) {
        free(dep); free(has); free(val_off); free(aux_off); free(home); free(home_bytes);
        st = ad_err(AD_ERR_MEMORY, "record: out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < nn; i++) {
        ad_node *n = list[i].n;
        if (p->role[i] == R_INPUT) dep[i] = p->input_no[i] < n_diff;   /* a data input gets no gradient */
        else if (p->role[i] == R_OP)
            for (int j = 0; j < n->nin; j++) dep[i] |= dep[index_of(byptr, nn, n->in[j])];
    }
    if (p->root >= 0 && dep[p->root]) has[p->root] = 1;
    for (int i = 0; i < n_diff; i++)
        p->adj[p->input_idx[i]] = (int64_t)arena_take(&top, value_bytes(starts[i]), starts[i]->size <= 1);
    for (int64_t i = nn - 1; i >= 0 && !st; i--) {
        ad_node *n = list[i].n;
        if (!has[i] || p->role[i] != R_OP) continue;
        int handed = 0, deps = 0;
        for (int j = 0; j < n->nin; j++) deps += dep[index_of(byptr, nn, n->in[j])];
        for (int j = 0; j < n->nin; j++) {
            int64_t m = index_of(byptr, nn, n->in[j]);
            if (!dep[m]) continue;
            int64_t at = 0;
            if (!has[m] && p->role[m] == R_OP && !handed && i != p->root &&
                (hands_over(n, j, list[m].n, fuse_from) || (deps == 1 && views_block(n, j, list[m].n, fuse_from, &at)))) {
                /* the step would copy i's adjoint (or a block of it) into m's fresh one: m takes
                 * the buffer (the block of it) instead, and gives the buffer back when done */
                p->adj[m] = p->adj[i] + at * (int64_t)ad_itemsize(n->dtype);
                home[m] = home[i];
                home_bytes[m] = home_bytes[i];
                p->transient[m] = p->transient[i] = 1;
                handed = has[m] = 1;
                continue;
            }
            rstep *s = &p->steps[p->nsteps++];
            s->node = i;
            s->input = m;
            s->which = j;
            s->acc = has[m];
            if (!has[m] && p->role[m] == R_OP) {
                home_bytes[m] = value_bytes(list[m].n);
                home[m] = take_freed(&fl, &top, home_bytes[m], list[m].n->size <= 1);
                p->adj[m] = (int64_t)home[m];
            }
            has[m] = 1;
        }
        if (i != p->root && p->adj[i] >= 0 && !handed) st = give_back(&fl, home_bytes[i], home[i]);
    }
    free(home);
    free(home_bytes);
    for (int i = 0; i < n_inputs; i++) p->input_hit[i] = has[p->input_idx[i]] && p->input_idx[i] != p->root;
    free(dep);
    free(has);
    size_t seed_off = p->root >= 0 ? arena_take(&top, value_bytes(list[p->root].n), list[p->root].n->size <= 1) : 0;
    if (!st && !(p->arena = calloc(1, top ? top : 1))) st = ad_err(AD_ERR_MEMORY, "record: out of memory for a plan arena of %zu bytes", top);
    if (st) { free(val_off); free(aux_off); goto fail; }
    p->arena_bytes = top;

    int64_t next_in = 0;
    for (int64_t i = 0; i < nn; i++) {
        ad_node *n = list[i].n, *r = &p->nodes[i];
        *r = *n;
        r->refs = 1;
        r->consumers = 0;
        r->adj = NULL;
        r->grad = NULL;
        r->storage = NULL;
        r->next_free = NULL;
        r->aux = NULL;
        r->in = r->in_inline;
        r->in_inline[0] = r->in_inline[1] = NULL;
        r->pos = i;
        r->flags = (uint8_t)(F_IN_USE | F_REQUIRES_GRAD);
        r->data = p->arena + val_off[i];
        if (p->role[i] == R_CONST) {
            ad_copy(r->data, n->data, value_bytes(n));
            r->nin = 0;
            r->flags |= F_LEAF;
            n->refs++;   /* held (released by ad_plan_free), so its version can be read */
            p->const_h[p->nconst] = ad_handle(T, n);
            p->const_ver[p->nconst++] = ad_storage(n)->version;
            continue;
        }
        if (p->role[i] == R_INPUT) { r->flags |= F_LEAF; continue; }
        p->nops++;
        if (n->nin > AD_MAXIN_INLINE) { r->in = p->ins + next_in; next_in += n->nin; }
        for (int j = 0; j < n->nin; j++) r->in[j] = &p->nodes[index_of(byptr, nn, n->in[j])];
        if (n->aux_len > 0) {
            r->aux = (int64_t *)(p->arena + aux_off[i]);
            memcpy(r->aux, n->aux, (size_t)n->aux_len * sizeof(int64_t));
        }
    }
    free(val_off);
    free(aux_off);
    if (p->root >= 0) p->seed = p->arena + seed_off;
    for (int64_t i = 0; i < nn; i++) {
        ad_node *n = &p->nodes[i];
        if (p->role[i] != R_OP || n->size == 0 || view[i] >= 0) continue;   /* nothing to compute */
        fstep *f = &p->fsteps[p->nfsteps++];
        const ad_ew_kernels *K = fast_ew(n);
        f->node = n;
        if (!K) continue;
        f->fn = K->fwd[n->dtype];
        f->in[0] = n->in[0]->data;
        f->in[1] = n->nin > 1 ? n->in[1]->data : NULL;
        f->out = n->data;
        f->n = n->size;
        f->c[0] = n->c[0];
        f->c[1] = n->c[1];
    }
    for (int64_t k = 0; k < p->nsteps; k++) {
        rstep *s = &p->steps[k];
        ad_node *n = &p->nodes[s->node];
        const ad_ew_kernels *K = fast_ew(n);
        s->g = s->node == p->root ? p->seed : p->arena + p->adj[s->node];
        s->target = p->arena + p->adj[s->input];
        s->zero_bytes = value_bytes(&p->nodes[s->input]);
        s->n = n->size;
        s->fast = K != NULL;
        if (!K) continue;
        s->d = K->d[s->which][n->dtype];
        s->in[0] = n->in[0]->data;
        s->in[1] = n->nin > 1 ? n->in[1]->data : NULL;
        s->in[2] = n->data;
        s->c[0] = n->c[0];
        s->c[1] = n->c[1];
    }
    for (int i = 0; i < n_watch; i++) {
        int64_t w = index_of(byptr, nn, starts[n_inputs + 1 + i]);
        p->watch_idx[i] = w;
        watch_index[i] = p->role[w] == R_CONST ? -1 : i;
    }
    if ((st = scalar_program(p, NULL, &p->scalar))) goto fail;
    p->nfix = list_fixups(p, NULL);
    p->bound = calloc((size_t)(n_inputs ? n_inputs : 1), 1);
    p->home = malloc((size_t)(n_inputs ? n_inputs : 1) * sizeof *p->home);
    p->fix = malloc((size_t)(p->nfix ? p->nfix : 1) * sizeof *p->fix);
    if (!p->bound || !p->home || !p->fix) { st = ad_err(AD_ERR_MEMORY, "record: out of memory"); goto fail; }
    list_fixups(p, p->fix);
    for (int i = 0; i < n_inputs; i++) p->home[i] = p->nodes[p->input_idx[i]].data;
    free(starts);
    free(list);
    free(byptr);
    free(fl.b);
    free(vfl.b);
    free(kept);
    free(last);
    free(view);
    *out = p;
    return AD_OK;
fail:
    free(starts);
    free(list);
    free(byptr);
    free(fl.b);
    free(vfl.b);
    free(kept);
    free(last);
    free(view);
    return plan_fail(p, st);
}

int ad_plan_build_data(int64_t root, int n_inputs, const int64_t *inputs, int n_diff, int n_watch,
                       const int64_t *watch, int64_t *watch_index, int64_t fuse_from, ad_plan **out)
{
    if (!out) return ad_err(AD_ERR_VALUE, "record: out is NULL");
    *out = NULL;
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    st = build_locked(T, root, n_inputs, inputs, n_diff, n_watch, watch, watch_index, fuse_from, out);
    ad_unlock(T);
    return st;
}

int ad_plan_build(int64_t root, int n_inputs, const int64_t *inputs, int n_watch, const int64_t *watch,
                  int64_t *watch_index, ad_plan **out)
{
    return ad_plan_build_data(root, n_inputs, inputs, n_inputs, n_watch, watch, watch_index, AD_PLAN_FUSE_MIN, out);
}

int ad_plan_inputs(const ad_plan *p, int *n_inputs, int *n_diff)
{
    if (!p) return ad_err(AD_ERR_VALUE, "plan_inputs: plan is NULL");
    if (n_inputs) *n_inputs = p->n_inputs;
    if (n_diff) *n_diff = p->n_diff;
    return AD_OK;
}

void ad_plan_free(ad_plan *p)
{
    if (!p) return;
    for (int64_t i = 0; i < p->nconst; i++) ad_release(p->const_h[i]);
    free(p->nodes);
    free(p->ins);
    free(p->input_idx);
    free(p->watch_idx);
    free(p->role);
    free(p->adj);
    free(p->input_no);
    free(p->input_hit);
    free(p->steps);
    free(p->const_h);
    free(p->const_ver);
    free(p->fsteps);
    free(p->transient);
    free(p->bound);
    free(p->home);
    free(p->fix);
    free(p->arena);
    ad_fusion_free(p->fusion);
    ad_scalar_free(p->scalar);
    free(p);
}

static void info_of(const ad_node *n, ad_info_t *out)
{
    memset(out, 0, sizeof *out);
    out->dtype = n->dtype;
    out->ndim = n->ndim;
    memcpy(out->shape, n->shape, sizeof out->shape);
    out->size = n->size;
}

int ad_plan_info(const ad_plan *p, int i, ad_info_t *out)
{
    if (!p || !out) return ad_err(AD_ERR_VALUE, "plan_info: plan or out is NULL");
    if (i < -1 || i >= p->n_inputs) return ad_err(AD_ERR_VALUE, "plan_info: no input %d (the plan has %d)", i, p->n_inputs);
    info_of(&p->nodes[i < 0 ? p->root : p->input_idx[i]], out);
    return AD_OK;
}

int ad_plan_stats(const ad_plan *p, int64_t *ops, int64_t *constants, int64_t *bytes)
{
    if (!p) return ad_err(AD_ERR_VALUE, "plan_stats: plan is NULL");
    if (ops) *ops = p->nops;
    if (constants) *constants = p->nconst;
    if (bytes) *bytes = (int64_t)p->arena_bytes;
    return AD_OK;
}

static int claim(ad_plan *p, const char *what)
{
    if (!p) return ad_err(AD_ERR_VALUE, "%s: plan is NULL", what);
    if (atomic_flag_test_and_set_explicit(&p->busy, memory_order_acquire))
        return ad_err(AD_ERR_RUNTIME, "%s: another thread is replaying this plan; serialize the calls (the "
                      "Python callable holds a lock) or record one callable per thread", what);
    return AD_OK;
}

static void unclaim(ad_plan *p) { atomic_flag_clear_explicit(&p->busy, memory_order_release); }

/* The constants' versions: an in-place write since the build makes the plan stale. */
static int constants_current(const ad_plan *p)
{
    for (int64_t i = 0; i < p->nconst; i++) {
        int64_t v = ad_version(p->const_h[i]);
        if (v < 0) return (int)v;
        if (v != p->const_ver[i]) return AD_PLAN_STALE;
    }
    return AD_OK;
}

/* with_reverse: the cotangent is in place (seed_in) and the reverse follows: a fused region may
 * run its reverse steps in its forward pass (fusion.c) */
static int forward_locked(ad_tape *T, ad_plan *p, const void *const *inputs, void *out, int with_reverse)
{
    if (p->n_inputs > 0 && !inputs) return ad_err(AD_ERR_VALUE, "replay: inputs is NULL");
    for (int i = 0; i < p->n_inputs; i++) {
        ad_node *x = &p->nodes[p->input_idx[i]];
        if (!x->size) continue;
        if (!inputs[i]) return ad_err(AD_ERR_VALUE, "replay: input %d is NULL", i);
        if (!(p->bound[i] & BOUND_VALUE)) ad_copy(x->data, inputs[i], value_bytes(x));
    }
    int st = AD_OK;
    for (int64_t k = 0; k < p->nfsteps && !st; k++) {
        int64_t next = p->fusion ? ad_fusion_forward(p->fusion, k, with_reverse) : k;
        if (next == k) next = ad_scalar_forward(p->scalar, k, p->arena);
        if (next < 0) { st = ad_err(AD_ERR_RUNTIME, "replay: the scalar program has an unknown instruction"); break; }
        if (next != k) { k = next - 1; continue; }
        const fstep *f = &p->fsteps[k];
        if (f->fn) f->fn(f->in, f->out, f->n, f->c);
        else st = forward_node(T, f->node);
    }
    if (!st && out && p->root >= 0) ad_copy(out, p->nodes[p->root].data, value_bytes(&p->nodes[p->root]));
    p->fwd_done = !st;
    return st;
}

/* The gradients' buffers checked and the root's cotangent copied in, before a reverse sweep. */
static int seed_in(ad_plan *p, const void *seed, void *const *grads)
{
    if (p->n_diff > 0 && !grads) return ad_err(AD_ERR_VALUE, "replay: grads is NULL");
    for (int i = 0; i < p->n_diff; i++)
        if (!grads[i] && p->nodes[p->input_idx[i]].size > 0) return ad_err(AD_ERR_VALUE, "replay: grads[%d] is NULL", i);
    ad_node *root = p->root >= 0 ? &p->nodes[p->root] : NULL;
    if (root) {
        if (seed) {
            ad_copy(p->seed, seed, value_bytes(root));
        } else if (root->size != 1) {
            return ad_err(AD_ERR_RUNTIME, "replay: a cotangent is needed for an output of %lld elements", (long long)root->size);
        } else if (root->dtype == AD_F64) {
            *(double *)p->seed = 1;
        } else {
            *(float *)p->seed = 1;
        }
    }
    return AD_OK;
}

static int backward_locked(ad_tape *T, ad_plan *p, const void *seed, void *const *grads, int seeded)
{
    if (!p->fwd_done) return ad_err(AD_ERR_RUNTIME, "replay: backward before a forward");
    int st = seeded ? AD_OK : seed_in(p, seed, grads);
    if (st) return st;
    for (int64_t k = 0; k < p->nsteps && !st; k++) {
        int64_t next = p->fusion ? ad_fusion_reverse(p->fusion, k) : k;
        if (next == k) next = ad_scalar_reverse(p->scalar, k, p->arena);
        if (next < 0) { st = ad_err(AD_ERR_RUNTIME, "replay: the scalar program has an unknown instruction"); break; }
        if (next != k) { k = next - 1; continue; }
        const rstep *s = &p->steps[k];
        if (s->fast) {
            if (s->d) s->d(s->in, s->g, s->target, s->n, s->c, s->acc);
            else if (!s->acc) memset(s->target, 0, s->zero_bytes);
        } else if (s->n == 0) {
            /* an empty output contributes zero, without running its kernel (as pass_to_input) */
            if (!s->acc) memset(s->target, 0, s->zero_bytes);
        } else {
            st = ad_pass_row(T, &p->nodes[s->node], s->g, s->which, s->target, s->acc);
        }
    }
    for (int i = 0; i < p->n_diff && !st; i++) {
        int64_t x = p->input_idx[i];
        size_t bytes = value_bytes(&p->nodes[x]);
        if (!bytes) continue;
        if (x == p->root) ad_copy(grads[i], p->seed, bytes);
        else if (p->bound[i] & BOUND_ADJ) continue;   /* the reverse wrote it there */
        else if (p->input_hit[i]) ad_copy(grads[i], p->arena + p->adj[x], bytes);
        else memset(grads[i], 0, bytes);
    }
    return st;
}

int ad_plan_forward(ad_plan *p, const void *const *inputs, void *out)
{
    return ad_plan_run(p, inputs, out, NULL, NULL);
}

int ad_plan_run(ad_plan *p, const void *const *inputs, void *out, const void *seed, void *const *grads)
{
    int st = claim(p, "replay");
    if (st) return st;
    p->fwd_done = 0;
    /* before locking this thread's tape: a constant may live on it */
    if ((st = constants_current(p))) { unclaim(p); return st; }
    ad_tape *T;
    if ((st = ad_lock_current(&T))) { unclaim(p); return st; }
    ad_long_work(INT64_MAX);
    if (grads) st = seed_in(p, seed, grads);
    int bound = !st && grads ? bind_caller(p, inputs, out, grads) : 0;
    if (!st) st = forward_locked(T, p, inputs, out, grads != NULL);
    if (!st && grads) st = backward_locked(T, p, seed, grads, 1);
    if (bound) {
        unbind_caller(p, inputs, grads);
        p->fwd_done = 0;   /* the inputs' values were the caller's: a backward alone needs a forward again */
    }
    ad_unlock(T);
    unclaim(p);
    return st;
}

int ad_plan_replay_hooked(ad_plan *p, int forward, int backward, const void *const *inputs, void *out,
                          void *const *grads, const ad_plan_hooks *h)
{
    int st = claim(p, "replay");
    if (st) return st;
    if (forward) {
        p->fwd_done = 0;
        if ((st = constants_current(p))) { unclaim(p); return st; }
    }
    ad_tape *T;
    if ((st = ad_lock_current(&T))) { unclaim(p); return st; }
    ad_long_work(INT64_MAX);
    st = h && h->prepare ? h->prepare(T, h->ctx) : AD_OK;
    if (!st && forward && backward) st = seed_in(p, NULL, grads);
    /* a forward alone is the guarded step's first half: a backward follows when the guards hold */
    if (!st && forward) st = forward_locked(T, p, inputs, out, 1);
    if (!st && backward) st = backward_locked(T, p, NULL, grads, forward);
    if (h && h->finish) st = h->finish(T, h->ctx, st);
    ad_unlock(T);
    unclaim(p);
    return st;
}

int ad_plan_backward(ad_plan *p, const void *seed, void *const *grads)
{
    int st = claim(p, "replay");
    if (st) return st;
    ad_tape *T;
    if ((st = ad_lock_current(&T))) { unclaim(p); return st; }
    ad_long_work(INT64_MAX);
    st = backward_locked(T, p, seed, grads, 0);
    ad_unlock(T);
    unclaim(p);
    return st;
}

int ad_plan_fuse(ad_plan *p, int64_t min_elements, int64_t *regions, int64_t *ops, int64_t *tile)
{
    int st = claim(p, "plan_fuse");
    if (st) return st;
    size_t cnt = (size_t)(p->nn > 0 ? p->nn : 1);
    if (min_elements < 0) {
        unclaim(p);
        return ad_err(AD_ERR_VALUE, "plan_fuse: min_elements is %lld; expected 0 (off) or more", (long long)min_elements);
    }
    ad_fuse_plan P = {p->nodes, p->nn, NULL, NULL, NULL, p->nfsteps, NULL, p->nsteps, p->root, p->transient};
    uint8_t *pinned = calloc(cnt, 1);
    int8_t *is_op = malloc(cnt);
    int64_t *fnode = malloc((size_t)(p->nfsteps ? p->nfsteps : 1) * sizeof *fnode);
    ad_fuse_step *steps = malloc((size_t)(p->nsteps ? p->nsteps : 1) * sizeof *steps);
    ad_fusion *f = NULL;
    if (!pinned || !is_op || !fnode || !steps) {
        st = ad_err(AD_ERR_MEMORY, "plan_fuse: out of memory");
    } else {
        for (int64_t i = 0; i < p->nn; i++) is_op[i] = p->role[i] == R_OP;
        if (p->root >= 0) pinned[p->root] = 1;
        for (int i = 0; i < p->n_watch; i++) pinned[p->watch_idx[i]] = 1;
        for (int64_t k = 0; k < p->nfsteps; k++) fnode[k] = p->fsteps[k].node - p->nodes;
        for (int64_t k = 0; k < p->nsteps; k++) {
            const rstep *s = &p->steps[k];
            steps[k] = (ad_fuse_step){s->node, s->input, s->which, s->acc, s->g, s->target};
        }
        P.is_op = is_op;
        P.pinned = pinned;
        P.fnode = fnode;
        P.steps = steps;
        st = ad_fusion_build(&P, min_elements, &f);
    }
    /* the scalar program leaves the new regions' steps to them (without regions before or
     * after, the one the build made stays) */
    ad_scalar *sc = NULL;
    int remake = f || p->fusion;
    if (!st && remake && (st = scalar_program(p, f, &sc))) ad_fusion_free(f);
    if (!st) {
        ad_fusion_free(p->fusion);
        p->fusion = f;
        if (remake) {
            ad_scalar_free(p->scalar);
            p->scalar = sc;
        }
        /* the last forward left values where the old regions put them: a reverse needs a new one */
        p->fwd_done = 0;
        int64_t a, b, c;
        ad_fusion_counts(f, &a, &b, &c);
        if (regions) *regions = a;
        if (ops) *ops = b;
        if (tile) *tile = c;
    }
    free(pinned);
    free(is_op);
    free(fnode);
    free(steps);
    unclaim(p);
    return st;
}

int ad_plan_scalar_ops(const ad_plan *p, int64_t *fwd, int64_t *rev)
{
    if (!p) return ad_err(AD_ERR_VALUE, "plan_scalar_ops: plan is NULL");
    ad_scalar_counts(p->scalar, fwd, rev);
    return AD_OK;
}

int ad_plan_watch(ad_plan *p, int w, ad_info_t *out)
{
    if (!p || !out) return ad_err(AD_ERR_VALUE, "plan_watch: plan or out is NULL");
    if (w < 0 || w >= p->n_watch) return ad_err(AD_ERR_VALUE, "plan_watch: no watched tensor %d (the plan has %d)", w, p->n_watch);
    if (!p->fwd_done) return ad_err(AD_ERR_RUNTIME, "plan_watch: no forward has run");
    const ad_node *n = &p->nodes[p->watch_idx[w]];
    info_of(n, out);
    out->data = n->data;
    return AD_OK;
}
