/* The reverse sweep. Nodes sit on the tape in creation order, and an op's inputs always exist
 * before it, so walking the tape backwards from the root visits every node after all of its
 * consumers: the sweep is a loop, no recursion and no sort. Each visited node hands its adjoint to
 * its inputs through its op's VJP; contributions to the same input add up ("gradients accumulate
 * at branches"), and leaves collect theirs in their grad. */
#define _GNU_SOURCE
#include "core.h"
#include "testing.h"
#include <string.h>
#include <stdlib.h>
#include <time.h>

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    return na == nb && !memcmp(a, b, (size_t)na * sizeof(int64_t));
}

/* A scalar sum or mean gives every element of its input the same adjoint. Written out, that is
 * an output-sized buffer of one value, written once and read by the input's VJP; kept as one
 * value (F_ADJ_UNIFORM) it costs nothing, and a binary op's VJP reads it once. It is written out
 * (materialize) as soon as anything else needs the array: another contribution, or a VJP path
 * that reads it element by element. */
static int materialize(ad_tape *T, ad_node *m)
{
    size_t isz = ad_itemsize(m->dtype), bytes = (size_t)m->size * isz;
    void *full = ad_buf_alloc(T, bytes);
    if (!full) return ad_err(AD_ERR_MEMORY, "out of memory for the adjoint of a %s node (%zu bytes)", ad_ops[m->op].name, bytes);
    if (m->dtype == AD_F64) { double v = *(double *)m->adj, *d = full; for (int64_t i = 0; i < m->size; i++) d[i] = v; }
    else { float v = *(float *)m->adj, *d = full; for (int64_t i = 0; i < m->size; i++) d[i] = v; }
    ad_buf_free(T, m->adj, isz);
    m->adj = full;
    m->flags &= (uint8_t)~F_ADJ_UNIFORM;
    return AD_OK;
}

/* n is a sum or mean with one output element and m its interior input, with no adjoint yet and
 * a binary op's VJP to read it: m's adjoint becomes that one value (what the reduction's VJP
 * would write to every element, computed the same way). Returns 1 when done. */
static int pass_uniform(ad_tape *T, ad_node *n, int64_t *pending, int anomaly)
{
    if (anomaly || (n->op != AD_OP_SUM && n->op != AD_OP_MEAN) || n->size != 1 || n->nin != 1) return 0;
    ad_node *m = n->in[0];
    if (!(m->flags & F_REQUIRES_GRAD) || (m->flags & F_LEAF) || m->adj || m->size == 0 ||
        m->dtype != n->dtype || ad_ops[m->op].vjp != ad_vjp_binary)
        return 0;
    m->adj = ad_buf_alloc(T, ad_itemsize(m->dtype));
    if (!m->adj) return 0;   /* the ordinary path reports the shortage */
    double scale = n->op == AD_OP_MEAN ? 1.0 / (double)m->size : 1.0;
    if (m->dtype == AD_F64) *(double *)m->adj = *(const double *)n->adj * scale;
    else *(float *)m->adj = *(const float *)n->adj * (float)scale;
    m->flags |= F_ADJ_UNIFORM;
    m->refs++;   /* as adjoint_target */
    (*pending)++;
    return 1;
}

/* Set while a backward sweep defers leaves' grads to its end (see backward_locked). */
static _Thread_local int t_defer_leaves;
/* Set while ad_backward runs on this thread: a custom rule or hook it calls must not start
 * another (both would use the nodes' adj fields). */
static _Thread_local int t_in_backward;
/* The seed's values when backward reads them in place as adjoints (see backward_locked): the
 * bytes [t_borrow_lo, t_borrow_hi) of t_borrow_seed. An adjoint inside them is never freed or
 * written; with t_borrow_share, several nodes may hold it (or a block of it) at once, and a leaf
 * that ends up with one gets a grad that aliases the seed (tape.c, "aliases"). */
static _Thread_local const char *t_borrow_lo, *t_borrow_hi;
static _Thread_local ad_node *t_borrow_seed;
static _Thread_local int t_borrow_share;

static int borrowed(const void *adj)
{
    return (const char *)adj >= t_borrow_lo && (const char *)adj < t_borrow_hi;
}

static void free_adj(ad_tape *T, ad_node *n)
{
    if (!borrowed(n->adj)) ad_buf_free(T, n->adj, ad_adj_bytes(n));
    n->adj = NULL;
}

/* n's adjoint is about to be written: a borrowed one is copied into a buffer of n's own first. */
static int own_adj(ad_tape *T, ad_node *n)
{
    if (!borrowed(n->adj)) return AD_OK;
    void *mine = ad_buf_alloc(T, ad_adj_bytes(n));
    if (!mine) return ad_err(AD_ERR_MEMORY, "backward: out of memory for the adjoint of a %s node (%zu bytes)",
                             ad_ops[n->op].name, ad_adj_bytes(n));
    ad_copy(mine, n->adj, (size_t)n->size * ad_itemsize(n->dtype));
    n->adj = mine;
    return AD_OK;
}

/* Where input m's adjoint lives: a leaf's grad node, else m->adj (allocated on first use). */
static int adjoint_target(ad_tape *T, ad_node *m, void **dst, int *accumulate, int64_t *pending)
{
    if ((m->flags & F_LEAF) && !t_defer_leaves) {
        if (!m->grad) {
            ad_node *g;
            int st = ad_node_new(T, AD_OP_LEAF, m->dtype, m->ndim, m->shape, &g);
            if (st) return st;
            m->grad = g;
            *accumulate = 0;
        } else {
            if (ad_grad_shared(m->grad)) {
                /* Someone else holds the grad (the user's tensor from .grad, or a graph whose
                 * VJPs read its values after `x.grad = y`): accumulate into a copy, so what they
                 * hold never changes under them (PyTorch's AccumulateGrad does the same). A
                 * recorded grad (backward(create_graph=True)) is copied too: written in place,
                 * its value would no longer be what its recorded op computes. */
                ad_node *g;
                int st = ad_node_new(T, AD_OP_LEAF, m->dtype, m->ndim, m->shape, &g);
                if (st) return st;
                ad_copy(g->data, m->grad->data, (size_t)m->size * ad_itemsize(m->dtype));
                ad_node_unref(T, m->grad);
                m->grad = g;
            }
            *accumulate = 1;
        }
        *dst = m->grad->data;
        return AD_OK;
    }
    if (!m->adj) {
        int st = ad_tape_grow_adj(T, m);
        if (st) return st;
        m->refs++;   /* the sweep keeps m alive until its own turn */
        (*pending)++;
        *accumulate = 0;
    } else {
        int st = (m->flags & F_ADJ_UNIFORM) ? materialize(T, m) : own_adj(T, m);
        if (st) return st;
        *accumulate = 1;
    }
    *dst = m->adj;
    return AD_OK;
}

/* The contribution's shape for input m of n (see ad_sink); returns whether it lands in m's adjoint
 * as is (1) or must be summed over broadcast axes (0). reduce and g_uniform start off: the
 * caller turns them on. */
static int sink_shape(const ad_node *n, int j, const ad_node *m, ad_sink *s)
{
    const ad_opdef *def = &ad_ops[n->op];
    if (def->contrib) {
        def->contrib(n, j, &s->ndim, s->shape);
    } else {
        s->ndim = m->ndim;
        memcpy(s->shape, m->shape, sizeof s->shape);
    }
    s->size = ad_shape_size(s->ndim, s->shape);
    s->reduce = 0;
    s->g_uniform = 0;
    return same_shape(s->ndim, s->shape, m->ndim, m->shape);
}

/* Anomaly mode computes each contribution once more, apart, to check it before the real pass
 * (which stays the same as without the mode, so the mode never changes a gradient's bits).
 * *clean: neither the contributions nor the adjoint they will be added to hold NaN. */
static int anomaly_check(ad_tape *T, ad_node *n, int which, const void *target, int acc, int *clean)
{
    int nan = 0, st = AD_OK;
    for (int j = which == AD_BOTH ? 0 : which; j <= (which == AD_BOTH ? 1 : which) && !st; j++) {
        ad_node *m = n->in[j];
        ad_sink s;
        sink_shape(n, j, m, &s);
        size_t bytes = (size_t)s.size * ad_itemsize(m->dtype);
        s.dst = ad_buf_alloc(T, bytes);
        if (!s.dst) return ad_err(AD_ERR_MEMORY, "backward: out of memory (%zu bytes) in %s", bytes, ad_ops[n->op].name);
        s.accumulate = 0;
        st = ad_ops[n->op].vjp(T, n, n->adj, j, &s);
        if (!st) st = ad_anomaly_vjp(n, j, &s);
        nan |= ad_any_nan(m->dtype, s.dst, s.size);
        ad_buf_free(T, s.dst, bytes);
    }
    const ad_node *m = n->in[which == AD_BOTH ? 0 : which];
    *clean = !nan && !(acc && ad_any_nan(m->dtype, target, m->size));
    return st;
}

/* Input m's contribution from n into target: written or summed there by the kernel, or through
 * an output-shaped scratch that the sink sums over the broadcast axes. */
static int contribute(ad_tape *T, ad_node *n, int which, ad_node *m, void *target, int acc)
{
    const ad_opdef *def = &ad_ops[n->op];
    ad_sink s;
    int direct = sink_shape(n, which == AD_BOTH ? 0 : which, m, &s);
    if (direct || (def->flags & AD_VJP_REDUCES)) {
        s.dst = target;
        s.accumulate = acc;
        s.reduce = !direct;
        s.g_uniform = !!(n->flags & F_ADJ_UNIFORM);   /* pass_to_inputs allows it only here */
        return def->vjp(T, n, n->adj, which, &s);
    }
    size_t bytes = (size_t)s.size * ad_itemsize(m->dtype);
    s.dst = ad_buf_alloc(T, bytes);
    if (!s.dst) return ad_err(AD_ERR_MEMORY, "backward: out of memory (%zu bytes) in %s", bytes, def->name);
    s.accumulate = 0;
    int st = def->vjp(T, n, n->adj, which, &s);
    if (!st) ad_unbroadcast_into(m->dtype, target, acc, m->ndim, m->shape, s.dst, s.ndim, s.shape);
    ad_buf_free(T, s.dst, bytes);
    return st;
}

/* which: an input index, or AD_BOTH when in[0] and in[1] are one node and the op can add both
 * contributions in one pass. */
static int pass_to_input(ad_tape *T, ad_node *n, int which, int64_t *pending, int anomaly)
{
    int j = which == AD_BOTH ? 0 : which;
    ad_node *m = n->in[j];
    void *target;
    int acc;
    int st = adjoint_target(T, m, &target, &acc, pending);
    if (st) return st;
    if (n->size == 0) {
        /* an empty output has an empty cotangent and every VJP is linear in it: the contribution
         * is zero, without running kernels whose batch loops may be astronomically long */
        if (!acc) memset(target, 0, (size_t)m->size * ad_itemsize(m->dtype));
        return AD_OK;
    }
    int clean = 0;
    if (anomaly) st = anomaly_check(T, n, which, target, acc, &clean);
    if (!st) st = contribute(T, n, which, m, target, acc);
    if (!st && clean) st = ad_anomaly_accumulate(n, j, target);
    return st;
}

/* When n's cotangent passes unchanged to an input that has no adjoint yet, the buffer itself can
 * become that input's adjoint: a + b and a reshape hand their adjoint down without a copy. A leaf
 * takes it too while backward() defers leaves (their adjoint is collected in m->adj and becomes
 * the grad's values at the commit): x + y of two leaves then copies the cotangent once, not twice.
 * Equal sizes are enough: broadcasting that does not change the size only adds axes of one
 * element, so the cotangent's elements are already in the input's order. */
static int can_hand_over(const ad_node *n, int j)
{
    const ad_node *m = n->in[j];
    return j < 2 && (ad_ops[n->op].flags & (AD_VJP_PASS0 << j)) && (m->flags & F_REQUIRES_GRAD) &&
           (!(m->flags & F_LEAF) || t_defer_leaves) && !m->adj && m->dtype == n->dtype && n->size > 0 &&
           m->size == n->size;
}

/* Can n's uniform adjoint go to its VJP as one value: a binary op, each input's contribution
 * written directly (not summed over broadcast axes, not x op x, not handed over)? */
static int uniform_ok(const ad_node *n)
{
    if (ad_ops[n->op].vjp != ad_vjp_binary || n->in[0] == n->in[1]) return 0;
    ad_sink s;
    for (int j = 0; j < n->nin; j++)
        if ((n->in[j]->flags & F_REQUIRES_GRAD) && (!sink_shape(n, j, n->in[j], &s) || can_hand_over(n, j)))
            return 0;
    return 1;
}

/* All of n's contributions; consumes n's adjoint (freed, or handed to an input). */
static int pass_to_inputs(ad_tape *T, ad_node *n, int64_t *pending, int anomaly)
{
    int st = AD_OK;
    if ((n->flags & F_ADJ_UNIFORM) && !uniform_ok(n)) st = materialize(T, n);
    if (st) {
        /* nothing was passed on; the adjoint is consumed all the same (the caller's rollback
         * takes it as gone) */
    } else if (pass_uniform(T, n, pending, anomaly)) {
        /* done */
    } else if (n->nin == 2 && n->in[0] == n->in[1] && (ad_ops[n->op].flags & AD_VJP_BOTH)) {
        st = pass_to_input(T, n, AD_BOTH, pending, anomaly);
    } else if (t_borrow_share && borrowed(n->adj)) {
        /* the seed, read in place: every input it passes to unchanged (both of x + y, each input
         * of a concatenation along its first axis: a block of rows) holds it too, without a copy */
        for (int j = 0; j < n->nin && !st; j++) {
            ad_node *m = n->in[j];
            int64_t at = 0;
            if (can_hand_over(n, j)) {
                m->adj = n->adj;
            } else if ((m->flags & F_REQUIRES_GRAD) && !m->adj && m->size > 0 && m->dtype == n->dtype &&
                       ad_concat_block(n, j, &at)) {
                m->adj = (char *)n->adj + (size_t)at * ad_itemsize(n->dtype);
            } else {
                if (m->flags & F_REQUIRES_GRAD) st = pass_to_input(T, n, j, pending, anomaly);
                continue;
            }
            m->refs++;   /* as adjoint_target: the sweep keeps m alive until its own turn */
            (*pending)++;
        }
    } else {
        /* the input that takes the buffer over goes last, once the others have read it; anomaly
         * mode need not check it: a NaN in it was already in n's adjoint */
        int last = -1;
        for (int j = 0; j < n->nin; j++)
            if (can_hand_over(n, j)) last = j;
        for (int j = 0; j < n->nin && !st; j++)
            if (j != last && (n->in[j]->flags & F_REQUIRES_GRAD)) st = pass_to_input(T, n, j, pending, anomaly);
        if (!st && last >= 0) {
            ad_node *m = n->in[last];
            m->adj = n->adj;
            n->adj = NULL;
            m->refs++;   /* as adjoint_target: the sweep keeps m alive until its own turn */
            (*pending)++;
        }
    }
    free_adj(T, n);
    n->flags &= (uint8_t)~F_ADJ_UNIFORM;
    return st;
}

static void copy_seed(ad_node *root, void *dst, const ad_node *seed)
{
    if (!seed) {
        if (root->dtype == AD_F64) *(double *)dst = 1.0; else *(float *)dst = 1.0f;
        return;
    }
    if (seed->dtype == root->dtype) {
        ad_copy(dst, seed->data, (size_t)root->size * ad_itemsize(root->dtype));
    } else if (root->dtype == AD_F64) {
        const float *s = seed->data; double *d = dst;
        for (int64_t i = 0; i < root->size; i++) d[i] = s[i];
    } else {
        const double *s = seed->data; float *d = dst;
        for (int64_t i = 0; i < root->size; i++) d[i] = (float)s[i];
    }
}

/* Custom node n's contributions to its inputs, all from one call of its backward rule (custom.c);
 * consumes n's adjoint as pass_to_inputs does. */
static int custom_pass(ad_tape *T, ad_node *n, int64_t *pending)
{
    ad_node *inl[4] = {0}, **res = n->nin <= 4 ? inl : calloc((size_t)n->nin, sizeof *res);
    int st = res ? ad_custom_vjp(T, n, n->adj, !!(n->flags & F_ADJ_UNIFORM), res)
                 : ad_err(AD_ERR_MEMORY, "backward: out of memory");
    for (int j = 0; j < n->nin && !st; j++) {
        ad_node *m = n->in[j];
        void *dst;
        int acc;
        if (!res[j]) continue;
        if ((st = adjoint_target(T, m, &dst, &acc, pending))) break;
        ad_add_into(m->dtype, dst, acc, res[j]->data, m->size);
    }
    if (res) {
        for (int j = 0; j < n->nin; j++) if (res[j]) ad_node_unref(T, res[j]);
        if (res != inl) free(res);
    }
    free_adj(T, n);
    n->flags &= (uint8_t)~F_ADJ_UNIFORM;
    return st;
}

/* What backward's commit needs that can fail, allocated before it changes anything: for swept leaf
 * k, fresh[k] is a new grad node when the leaf has none or shares its grad (adjoint_target's
 * rules), else NULL; and room to release the swept graph. On failure nothing is left allocated. */
static int commit_prepare(ad_tape *T, ad_node **swept, int64_t nswept, ad_node ***fresh)
{
    ad_node **f = calloc((size_t)(nswept ? nswept : 1), sizeof *f);
    int st = f ? AD_OK : ad_err(AD_ERR_MEMORY, "backward: out of memory");
    for (int64_t k = 0; k < nswept && !st; k++) {
        ad_node *n = swept[k];
        if (!(n->flags & F_LEAF) || (n->grad && !ad_grad_shared(n->grad))) continue;
        if (!n->grad && borrowed(n->adj))
            st = ad_node_new_alias(T, t_borrow_seed, n->adj, n->ndim, n->shape, &f[k]);
        else
            st = ad_node_new(T, AD_OP_LEAF, n->dtype, n->ndim, n->shape, &f[k]);
    }
    if (!st) st = ad_tape_reserve_release(T);
    if (st && f) {
        for (int64_t k = 0; k < nswept; k++) if (f[k]) ad_node_unref(T, f[k]);
        free(f);
        f = NULL;
    }
    *fresh = f;
    return st;
}

static int backward_locked(ad_tape *T, int64_t root_h, int64_t seed_h, int retain)
{
    ad_node *root, *seed = NULL;
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    char b1[160], b2[160];
    if (!(root->flags & F_REQUIRES_GRAD))
        return ad_err(AD_ERR_RUNTIME, "backward: the tensor does not require grad (no input had "
                      "requires_grad=True, or it was computed under no_grad() or detached)");
    if (root->flags & F_RELEASED)
        return ad_err(AD_ERR_RUNTIME, "backward: trying to backward through the graph a second time; "
                      "its saved values were released by the first backward. Pass retain_graph=True to "
                      "the first backward() to keep the graph");
    if (seed_h) {
        if ((st = ad_resolve(T, seed_h, &seed))) return st;
        if (!same_shape(seed->ndim, seed->shape, root->ndim, root->shape))
            return ad_err(AD_ERR_VALUE, "backward: grad has shape %s but the tensor has shape %s",
                          ad_shape_str(b1, sizeof b1, seed->ndim, seed->shape),
                          ad_shape_str(b2, sizeof b2, root->ndim, root->shape));
    } else if (root->size != 1) {
        return ad_err(AD_ERR_RUNTIME, "backward: grad can be implicitly created only for tensors with one "
                      "element, but the tensor has shape %s; pass grad= (a cotangent of that shape)",
                      ad_shape_str(b1, sizeof b1, root->ndim, root->shape));
    }

    if ((st = ad_versions_check(T, root, 0, "backward"))) return st;
    int64_t pending = 0;
    if (root->flags & F_LEAF) {
        /* the seed is the contribution: into a buffer first, so that nothing changes on failure */
        void *dst;
        int acc;
        if ((st = ad_tape_grow_adj(T, root))) return st;
        copy_seed(root, root->adj, seed);
        if (!(st = adjoint_target(T, root, &dst, &acc, &pending)))
            ad_add_into(root->dtype, dst, acc, root->adj, root->size);
        ad_buf_free(T, root->adj, (size_t)root->size * ad_itemsize(root->dtype));
        root->adj = NULL;
        return st;
    }

    /* The seed is read in place as the root's adjoint, not copied, unless a hook or a custom rule
     * could write it. When it does not require grad it may also pass on, unchanged, to inputs
     * (x + y, a concatenation's blocks) and become leaves' grads: aliases of it, copy-on-write,
     * as NumPy's and PyTorch's gradients there are views of the cotangent. A seed that requires
     * grad could have a grad of its own aliasing another, a cycle: it is read only by the root's
     * VJP, so no input may take it over. */
    int borrow = seed && seed->dtype == root->dtype && root->size > 0 && !(root->flags & F_HOOK) &&
                 root->op != AD_OP_CUSTOM;
    int share = borrow && !(seed->flags & F_REQUIRES_GRAD) && !(ad_storage(seed)->flags & F_REQUIRES_GRAD);
    t_defer_leaves = 1;   /* as in the sweep below, for can_hand_over */
    for (int j = 0; j < root->nin && borrow && !share; j++)
        if (can_hand_over(root, j)) borrow = 0;
    t_defer_leaves = 0;
    if (borrow) {
        root->adj = seed->data;
        t_borrow_lo = seed->data;
        t_borrow_hi = t_borrow_lo + (size_t)root->size * ad_itemsize(root->dtype);
        t_borrow_seed = seed;
        t_borrow_share = share;
    } else {
        if ((st = ad_tape_grow_adj(T, root))) return st;
        copy_seed(root, root->adj, seed);
    }
    root->refs++;
    pending = 1;

    int anomaly = ad_anomaly_on(T);
    /* ---- an all-or-nothing sweep ----
     * Out of memory, or a custom rule or hook that raises, must leave every grad and the graph as
     * they were, so that the caller can free memory (or fix the rule) and run backward() again.
     * So leaves collect their adjoint like interior nodes (t_defer_leaves), swept nodes keep their
     * graph, and both are committed once the whole sweep has succeeded: first everything the
     * commit needs that can fail (commit_prepare), then what cannot. */
    ad_node **swept = NULL;
    int64_t nswept = 0, swept_cap = 0;
    t_defer_leaves = 1;
    /* A leaf's first grad is a new node appended to the tape mid-sweep: hold the order so
     * positions stay put, and re-read the array each step because growing it may move it. */
    ad_tape_hold_order(T, 1);
    int64_t i = root->pos;
    for (; i >= 0 && pending > 0; i--) {
        ad_node *n = ad_tape_order(T)[i];
        if (!n || !n->adj) continue;
        if (n->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "backward: part of the graph (a %s node) was already released by an "
                        "earlier backward(); pass retain_graph=True to that backward() to keep it", ad_ops[n->op].name);
            break;
        }
        if (nswept == swept_cap) {
            ad_node **grown = realloc(swept, (size_t)(swept_cap = swept_cap ? 2 * swept_cap : 64) * sizeof *grown);
            if (!grown) { st = ad_err(AD_ERR_MEMORY, "backward: out of memory"); break; }
            swept = grown;
        }
        if (n->flags & F_HOOK) {
            /* n's gradient is complete here: every consumer has been swept */
            if ((n->flags & F_ADJ_UNIFORM) && (st = materialize(T, n))) break;
            if ((st = own_adj(T, n)) || (st = ad_hook_numeric(T, n, n->adj))) break;
        }
        if (n->flags & F_LEAF) {
            swept[nswept++] = n;   /* its adjoint (and reference) wait for the commit */
            pending--;
            continue;
        }
        st = n->op == AD_OP_CUSTOM ? custom_pass(T, n, &pending) : pass_to_inputs(T, n, &pending, anomaly);
        pending--;
        swept[nswept++] = n;
        if (st) break;
    }
    t_defer_leaves = 0;
    if (st) {
        /* leave no adjoint behind: the tape must stay usable after an error */
        for (; i >= 0 && pending > 0; i--) {
            ad_node *n = ad_tape_order(T)[i];
            if (!n || !n->adj) continue;
            free_adj(T, n);
            n->flags &= (uint8_t)~F_ADJ_UNIFORM;
            pending--;
            ad_node_unref(T, n);
        }
    }
    /* the commit: leaves' adjoints into their grads, then the swept graph released (or not) */
    ad_node **fresh = NULL;
    if (!st) st = commit_prepare(T, swept, nswept, &fresh);
    for (int64_t k = 0; k < nswept && !st; k++) {
        ad_node *n = swept[k];
        if (!(n->flags & F_LEAF)) continue;
        if (!n->grad && fresh[k]->cow_deps < 0) {
            /* the seed, read in place: the grad is an alias of it (commit_prepare) */
            n->grad = fresh[k];
        } else if (!n->grad) {
            /* the adjoint buffer becomes the grad's values, no copy */
            void *values = fresh[k]->data;
            fresh[k]->data = n->adj;
            n->adj = values;
            n->grad = fresh[k];
        } else if (fresh[k]) {
            /* someone else holds the grad (see adjoint_target): the sum goes into a copy */
            ad_copy(fresh[k]->data, n->grad->data, (size_t)n->size * ad_itemsize(n->dtype));
            ad_add_into(n->dtype, fresh[k]->data, 1, n->adj, n->size);
            ad_node_unref(T, n->grad);
            n->grad = fresh[k];
        } else {
            ad_add_into(n->dtype, n->grad->data, 1, n->adj, n->size);
        }
    }
    for (int64_t k = 0; k < nswept; k++) {
        ad_node *n = swept[k];
        if (n->adj) free_adj(T, n);
        n->flags &= (uint8_t)~F_ADJ_UNIFORM;
        if (!st && !retain && !(n->flags & F_LEAF)) ad_node_drop_graph(T, n);
        ad_node_unref(T, n);
    }
    free(fresh);
    free(swept);
    ad_tape_hold_order(T, 0);
    t_borrow_lo = t_borrow_hi = NULL;
    t_borrow_seed = NULL;
    t_borrow_share = 0;
    return st;
}

int ad_backward(int64_t root_h, int64_t seed_h, int retain_graph)
{
    if (t_in_backward)
        return ad_err(AD_ERR_RUNTIME, "backward: called from a custom function's rule or a hook while backward() "
                      "runs on this thread; use ad.autograd.grad or ad.vjp there (they leave .grad alone)");
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_long_work(INT64_MAX);
    t_in_backward = 1;
    st = backward_locked(T, root_h, seed_h, retain_graph);
    t_in_backward = 0;
    ad_unlock(T);
    return st;
}

double ad_bench_sweep(int64_t n)
{
    if (n < 1) return ad_err(AD_ERR_VALUE, "bench_sweep: n must be positive, got %lld", (long long)n);
    ad_long_work(INT64_MAX);
    int64_t shape[1] = {1};
    int64_t x = ad_full(AD_F64, 0, shape, 1.0, 1);
    if (x < 0) return (double)x;
    int64_t y = x;
    ad_retain(y);
    for (int64_t i = 0; i < n; i++) {
        int64_t z = ad_unary(AD_OP_ADD_S, y, 1.0, 0);
        ad_release(y);
        if (z < 0) { ad_release(x); return (double)z; }
        y = z;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int st = ad_backward(y, 0, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ad_release(y);
    ad_release(x);
    if (st) return st;
    return ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)n;
}

/* ---------------- batched sweeps: forward mode (ad_jvp) and batched reverse (ad_vjp) ----------------
 *
 * Design. Forward mode is a tangent sweep over the recorded tape, not tangents carried eagerly
 * beside every primal. The tape is already data in creation order, and creation order is a
 * topological order, so walking it forwards from the seeded leaves to the root visits every node
 * after all of its inputs: each node gets its tangent from its inputs' tangents through its op's
 * JVP kernel, in one C loop, with no recursion and no Python. Recording stays exactly what
 * reverse mode records, so the ordinary op path pays nothing for forward mode, and the same graph
 * serves jvp, vjp and both Jacobians.
 *
 * Tangents are vectors of k directions: every tangent carries a leading axis of size k, and a
 * JVP kernel maps all k at once (derivatives evaluated once per element, directions folded into
 * the gemm's rows for matmul). jacfwd pushes the n basis directions of its inputs through one
 * sweep of width n instead of n sweeps. The batched reverse sweep is the mirror image: the
 * cotangent has a leading axis of size k and every adjoint carries it; each node hands its k
 * adjoint rows to its inputs through the op's ordinary VJP kernel, once per row (the VJP kernels
 * are the tested single-cotangent ones; the loop over rows is inside the node, so one sweep
 * serves all k cotangents), except where an op has a batched VJP (matmul: k small products
 * become one gemm, 8x faster for jacrev of a 100x100 matvec). Neither sweep touches .grad or
 * releases the graph, so jvp, vjp and the Jacobians are free of side effects and a vjp function
 * can be called again.
 *
 * Only the nodes between the earliest seeded leaf (lo) and the root (hi) can matter, and state
 * for them lives in a scratch array indexed by creation position. Forward mode first marks the
 * root's ancestors in that range with a backward pass and counts how many marked consumers read
 * each one, so the forward pass computes tangents only for nodes that reach the root and frees
 * each tangent as soon as its last consumer has read it: a long chain holds O(1) tangents. */

enum { S_NEED = 1, S_SEED = 2, S_OWN = 4, S_HAS = 8 };

typedef struct {
    void *buf;          /* k rows of the node's tangent (or adjoint); NULL means zero */
    int64_t uses;       /* forward: marked consumers that have not read buf yet */
    uint8_t state;
} ad_slot;

/* Tangent and adjoint buffers are recycled within one sweep. Neighbouring nodes usually have the
 * same size, and a k-row buffer is often larger than the tape's pool keeps, so freeing it would
 * hand it back to the OS and the next node would fault in fresh pages: at k = 4000 that was most
 * of the sweep's time. */
#define RECYCLE_SLOTS 4
typedef struct { void *p[RECYCLE_SLOTS]; size_t bytes[RECYCLE_SLOTS]; } ad_recycler;

static void *rc_take(ad_tape *T, ad_recycler *r, size_t bytes)
{
    for (int i = 0; i < RECYCLE_SLOTS; i++)
        if (r->p[i] && r->bytes[i] == bytes) { void *q = r->p[i]; r->p[i] = NULL; return q; }
    return ad_buf_alloc(T, bytes);
}

static void rc_give(ad_tape *T, ad_recycler *r, void *q, size_t bytes)
{
    for (int i = 0; i < RECYCLE_SLOTS; i++)
        if (!r->p[i]) { r->p[i] = q; r->bytes[i] = bytes; return; }
    ad_buf_free(T, q, bytes);
}

static void rc_clear(ad_tape *T, ad_recycler *r)
{
    for (int i = 0; i < RECYCLE_SLOTS; i++)
        if (r->p[i]) { ad_buf_free(T, r->p[i], r->bytes[i]); r->p[i] = NULL; }
}

static size_t node_bytes(const ad_node *n) { return (size_t)n->size * ad_itemsize(n->dtype); }

/* Shape of k rows of a tensor shaped like n: (k, *n.shape), or (k, n.size) when that would
 * exceed AD_MAXDIM dimensions. */
static int batched_shape(const ad_node *n, int64_t k, int64_t *shape)
{
    shape[0] = k;
    if (n->ndim + 1 > AD_MAXDIM) { shape[1] = n->size; return 2; }
    for (int i = 0; i < n->ndim; i++) shape[i + 1] = n->shape[i];
    return n->ndim + 1;
}

/* Is b a (k, *n.shape) or (k, n.size) batch of values for n? */
static int is_batch_of(const ad_node *b, const ad_node *n, int64_t k)
{
    if (b->ndim < 1 || b->shape[0] != k) return 0;
    if (b->ndim == 2 && b->shape[1] == n->size) return 1;
    return same_shape(b->ndim - 1, b->shape + 1, n->ndim, n->shape);
}

/* Resolve and check the seeded nodes: on this tape, recorded (requires grad), no duplicates. */
static int resolve_leaves(ad_tape *T, const char *op, int n_leaves, const int64_t *leaves, ad_node **out)
{
    if (n_leaves < 0 || (n_leaves > 0 && !leaves))
        return ad_err(AD_ERR_VALUE, "%s: invalid list of %d inputs", op, n_leaves);
    for (int i = 0; i < n_leaves; i++) {
        int st = ad_resolve(T, leaves[i], &out[i]);
        if (st) return st;
        if (!(out[i]->flags & F_REQUIRES_GRAD))
            return ad_err(AD_ERR_RUNTIME, "%s: input %d does not require grad, so no graph was recorded "
                          "from it; create it with requires_grad=True (outside no_grad())", op, i);
        for (int j = 0; j < i; j++)
            if (out[j] == out[i]) return ad_err(AD_ERR_VALUE, "%s: input %d is the same tensor as input %d", op, i, j);
    }
    return AD_OK;
}

static int new_batch_node(ad_tape *T, const ad_node *like, int64_t k, ad_node **out)
{
    int64_t shape[AD_MAXDIM];
    int nd = batched_shape(like, k, shape);
    return ad_node_new(T, AD_OP_LEAF, like->dtype, nd, shape, out);
}

static int64_t min_pos(int n, ad_node **nodes, int64_t hi)
{
    int64_t lo = hi + 1;
    for (int i = 0; i < n; i++) if (nodes[i]->pos < lo) lo = nodes[i]->pos;
    return lo;
}

/* Resolve each input's tangent and check it is k directions shaped like the input. */
static int check_tangents(ad_tape *T, const char *op, int n_leaves, ad_node **nodes, const int64_t *tangents,
                          int64_t k, ad_node **tans)
{
    char b1[160], b2[160];
    if (n_leaves > 0 && !tangents) return ad_err(AD_ERR_VALUE, "%s: tangents is NULL", op);
    for (int i = 0; i < n_leaves; i++) {
        int st = ad_resolve(T, tangents[i], &tans[i]);
        if (st) return st;
        if (!is_batch_of(tans[i], nodes[i], k) || tans[i]->dtype != nodes[i]->dtype) {
            int64_t want[AD_MAXDIM];
            int nd = batched_shape(nodes[i], k, want);
            return ad_err(AD_ERR_VALUE, "%s: tangent %d has shape %s and dtype %s, but its input needs %lld "
                          "direction(s) of shape %s and dtype %s, i.e. a tangent of shape %s", op, i,
                          ad_shape_str(b1, sizeof b1, tans[i]->ndim, tans[i]->shape), ad_dtype_name(tans[i]->dtype),
                          (long long)k, ad_shape_str(b2, sizeof b2, nodes[i]->ndim, nodes[i]->shape),
                          ad_dtype_name(nodes[i]->dtype), ad_shape_str(b1, sizeof b1, nd, want));
        }
    }
    return AD_OK;
}

/* Mark the root's (position hi) ancestors down to lo in slots, counting each one's marked
 * consumers; a seed's own inputs are not looked through. */
static int mark_ancestors(ad_node **order, ad_slot *slots, int64_t lo, int64_t hi, const char *op)
{
    slots[hi - lo].state |= S_NEED;
    for (int64_t i = hi; i >= lo; i--) {
        ad_node *n = order[i];
        ad_slot *s = &slots[i - lo];
        if (!n || !(s->state & S_NEED) || (s->state & S_SEED)) continue;
        if (n->flags & F_RELEASED)
            return ad_err(AD_ERR_RUNTIME, "%s: part of the graph (a %s node) was released by an earlier backward(); "
                          "pass retain_graph=True to that backward() to keep it", op, ad_ops[n->op].name);
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            if (m->pos < lo) continue;
            slots[m->pos - lo].state |= S_NEED;
            slots[m->pos - lo].uses++;
        }
    }
    return AD_OK;
}

/* The marked nodes' tangents (k rows each, NULL where zero), in creation order. The root's goes
 * to root_buf when given. Unless keep is set, a tangent is freed once its last marked consumer
 * has read it, so a long chain holds O(1) of them; hvp keeps them all for its reverse pass. */
static int tangent_pass(ad_tape *T, ad_node **order, ad_slot *slots, int64_t lo, int64_t hi, int64_t k,
                        void *root_buf, int keep, ad_recycler *rc, const char *op)
{
    const void *tin_inline[4], **tin = tin_inline;
    int st = AD_OK;
    (void)order;   /* re-read each step: a custom node's rule may grow the order (see ad_tape_order) */
    for (int64_t i = lo; i <= hi && !st; i++) {
        ad_node *n = ad_tape_order(T)[i];
        ad_slot *s = &slots[i - lo];
        if (!n || (s->state & (S_NEED | S_SEED)) != S_NEED || n->nin == 0) continue;
        if (n->nin > 4) {
            if (tin != tin_inline) free(tin);
            tin = malloc((size_t)n->nin * sizeof *tin);
            if (!tin) { tin = tin_inline; st = ad_err(AD_ERR_MEMORY, "%s: out of memory", op); break; }
        }
        int any = 0;
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            tin[j] = m->pos >= lo ? slots[m->pos - lo].buf : NULL;
            any |= tin[j] != NULL;
        }
        if (any) {
            if (i == hi && root_buf) {
                s->buf = root_buf;
            } else {
                s->buf = rc_take(T, rc, (size_t)k * node_bytes(n));
                if (!s->buf) {
                    st = ad_err(AD_ERR_MEMORY, "%s: out of memory for the tangent of a %s node (%lld x %zu bytes)",
                                op, ad_ops[n->op].name, (long long)k, node_bytes(n));
                    break;
                }
                s->state |= S_OWN;
            }
            if (!ad_ops[n->op].jvp) { st = ad_err(AD_ERR_RUNTIME, "%s: op %s has no JVP", op, ad_ops[n->op].name); break; }
            /* an empty output has an empty tangent: nothing to compute, and the kernel's batch
             * loops may be astronomically long (2^50 empty matrices) */
            if (n->size && (st = ad_ops[n->op].jvp(T, n, (const void *const *)tin, k, s->buf))) break;
        }
        for (int j = 0; j < n->nin && !keep; j++) {
            ad_node *m = n->in[j];
            if (m->pos < lo) continue;
            ad_slot *sm = &slots[m->pos - lo];
            if (--sm->uses == 0 && (sm->state & S_OWN)) {
                rc_give(T, rc, sm->buf, (size_t)k * node_bytes(m));
                sm->buf = NULL;
                sm->state &= (uint8_t)~S_OWN;
            }
        }
    }
    if (tin != tin_inline) free(tin);
    return st;
}

static void free_slots(ad_tape *T, ad_node **order, ad_slot *slots, int64_t lo, int64_t hi, int64_t k)
{
    if (!slots) return;
    for (int64_t i = lo; i <= hi; i++)
        if (slots[i - lo].state & S_OWN) ad_buf_free(T, slots[i - lo].buf, (size_t)k * node_bytes(order[i]));
    free(slots);
}

static int jvp_locked(ad_tape *T, int64_t root_h, int n_leaves, const int64_t *leaves,
                      const int64_t *tangents, int64_t k, int64_t *out_h)
{
    ad_node *root, *out = NULL;
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    if (k < 1) return ad_err(AD_ERR_VALUE, "jvp: the number of tangent directions must be at least 1, got %lld", (long long)k);
    ad_node **nodes = calloc((size_t)(2 * n_leaves + 1), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "jvp: out of memory");
    ad_node **tans = nodes + n_leaves;
    ad_slot *slots = NULL;
    ad_node **order = ad_tape_order(T);
    int64_t lo = 0, hi = -1;
    int held = 0;
    ad_recycler rc = {{0}, {0}};
    if ((st = resolve_leaves(T, "jvp", n_leaves, leaves, nodes)) ||
        (st = check_tangents(T, "jvp", n_leaves, nodes, tangents, k, tans)) ||
        (st = ad_versions_check(T, root, min_pos(n_leaves, nodes, root->pos), "jvp")))
        goto done;
    /* made before positions are read: creating a node may compact the tape */
    if ((st = new_batch_node(T, root, k, &out))) goto done;
    size_t row = node_bytes(root);
    memset(out->data, 0, (size_t)k * row);

    hi = root->pos;
    lo = min_pos(n_leaves, nodes, hi);
    if (lo > hi || !(root->flags & F_REQUIRES_GRAD)) goto done;   /* root does not depend on the inputs */
    order = ad_tape_order(T);
    slots = calloc((size_t)(hi - lo + 1), sizeof *slots);
    if (!slots) { st = ad_err(AD_ERR_MEMORY, "jvp: out of memory for a sweep over %lld nodes", (long long)(hi - lo + 1)); goto done; }
    for (int i = 0; i < n_leaves; i++) {
        if (nodes[i]->pos > hi) continue;   /* recorded after root: cannot affect it */
        ad_slot *s = &slots[nodes[i]->pos - lo];
        s->state = S_SEED;
        s->buf = tans[i]->data;
    }
    ad_tape_hold_order(T, 1);   /* a custom node's rule creates nodes mid-sweep */
    held = 1;
    if ((st = mark_ancestors(order, slots, lo, hi, "jvp")) ||
        (st = tangent_pass(T, order, slots, lo, hi, k, out->data, 0, &rc, "jvp")))
        goto done;
    /* the root's tangent is the result, written in place unless the root is a seed itself */
    if (slots[hi - lo].state & S_SEED) ad_copy(out->data, slots[hi - lo].buf, (size_t)k * row);

done:
    free_slots(T, ad_tape_order(T), slots, lo, hi, k);
    if (held) ad_tape_hold_order(T, 0);
    rc_clear(T, &rc);
    free(nodes);
    if (st) {
        if (out) ad_node_discard(T, out);
        return st;
    }
    *out_h = ad_handle(T, out);
    return AD_OK;
}

int ad_jvp(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t k,
           int64_t *out_tangent)
{
    if (!out_tangent) return ad_err(AD_ERR_VALUE, "jvp: out_tangent is NULL");
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_long_work(INT64_MAX);
    st = jvp_locked(T, root, n_leaves, leaves, tangents, k, out_tangent);
    ad_unlock(T);
    return st;
}

/* For the second-order rows of ad_hvp: n's adjoint g (one row) and the k-row tangents of its
 * inputs (NULL: zero) and output. */
typedef struct {
    const void *g;
    const void *tin[2];
    const void *tout;
} ad_second;

/* Hand k adjoint rows of n to input j: row r of the input's adjoint gets the VJP of row r (with
 * sec, row r gets the second-order term along tangent direction r instead; g is unused). The
 * sink logic is pass_to_input's, with one broadcast scratch buffer shared by all rows. */
static int pass_rows_to_input(ad_tape *T, ad_node *n, const void *g, int j, void *target, int acc, int64_t k,
                              const ad_second *sec)
{
    ad_node *m = n->in[j];
    if (n->size == 0) {
        /* an empty output contributes zero, without running its kernel (see pass_to_input) */
        if (!acc) memset(target, 0, (size_t)k * node_bytes(m));
        return AD_OK;
    }
    const ad_opdef *def = &ad_ops[n->op];
    ad_sink s;
    size_t grow = node_bytes(n), mrow = node_bytes(m);
    int direct = sink_shape(n, j, m, &s);
    if (direct && def->vjp_rows && !sec) {
        int done = def->vjp_rows(T, n, g, k, j, target, acc);
        if (done) return done < 0 ? done : AD_OK;
    }
    if (!direct && (def->flags & AD_VJP_REDUCES) && !sec) {
        s.reduce = 1;
        direct = 1;
    }
    size_t bytes = (size_t)s.size * ad_itemsize(m->dtype);
    void *scratch = NULL;
    if (!direct && !(scratch = ad_buf_alloc(T, bytes)))
        return ad_err(AD_ERR_MEMORY, "vjp: out of memory (%zu bytes) in %s", bytes, def->name);
    int st = AD_OK;
    for (int64_t r = 0; r < k && !st; r++) {
        char *tr = (char *)target + r * mrow;
        s.dst = direct ? (void *)tr : scratch;
        s.accumulate = direct ? acc : 0;
        if (sec) {
            const void *tin[2];
            for (int i = 0; i < n->nin; i++)
                tin[i] = sec->tin[i] ? (const char *)sec->tin[i] + r * node_bytes(n->in[i]) : NULL;
            st = def->vjp2(T, n, sec->g, tin, (const char *)sec->tout + r * grow, j, &s);
        } else {
            st = def->vjp(T, n, (const char *)g + r * grow, j, &s);
        }
        if (!st && !direct) ad_unbroadcast_into(m->dtype, tr, acc, m->ndim, m->shape, scratch, s.ndim, s.shape);
    }
    ad_buf_free(T, scratch, bytes);
    return st;
}

int ad_pass_row(ad_tape *T, ad_node *n, const void *g, int j, void *target, int acc)
{
    return pass_rows_to_input(T, n, g, j, target, acc, 1, NULL);
}

/* An adjoint slot of the batched reverse sweeps, given a k-row buffer if it has none; *acc says
 * whether it already held a value (so the next contribution adds). */
static int slot_target(ad_tape *T, ad_recycler *rc, ad_slot *sm, const ad_node *m, int64_t k, int *acc,
                       const char *op)
{
    *acc = !!(sm->state & S_HAS);
    if (!sm->buf) {
        sm->buf = rc_take(T, rc, (size_t)k * node_bytes(m));
        if (!sm->buf)
            return ad_err(AD_ERR_MEMORY, "%s: out of memory for the adjoint of a %s node (%lld x %zu bytes)",
                          op, ad_ops[m->op].name, (long long)k, node_bytes(m));
        sm->state |= S_OWN;
    }
    sm->state |= S_HAS;
    return AD_OK;
}

/* The slot's buffer, if its own, goes back to the recycler once the node has been swept. */
static void slot_drop(ad_tape *T, ad_recycler *rc, ad_slot *s, const ad_node *n, int64_t k)
{
    if (!(s->state & S_OWN)) return;
    rc_give(T, rc, s->buf, (size_t)k * node_bytes(n));
    s->buf = NULL;
    s->state &= (uint8_t)~S_OWN;
}

/* The k adjoint rows of n through the bindings (custom.c), one call per row: n's hooks replace
 * each row in place; a custom node's backward rule hands each row to its inputs' slots. Without
 * the slot's own buffer (the root's cotangent is only read) a hooked row is copied first. */
static int custom_rows(ad_tape *T, ad_recycler *rc, ad_slot *slots, int64_t lo, ad_node *n, ad_slot *s, int64_t k)
{
    size_t row = node_bytes(n);
    int st = AD_OK;
    if ((n->flags & F_HOOK) && !(s->state & (S_OWN | S_SEED))) {
        void *own = rc_take(T, rc, (size_t)k * row);
        if (!own) return ad_err(AD_ERR_MEMORY, "vjp: out of memory");
        ad_copy(own, s->buf, (size_t)k * row);
        s->buf = own;
        s->state |= S_OWN;
    }
    for (int64_t r = 0; r < k && (n->flags & F_HOOK) && !st; r++) st = ad_hook_numeric(T, n, (char *)s->buf + r * row);
    if (st || n->op != AD_OP_CUSTOM || (s->state & S_SEED)) return st;
    /* every input's slot holds a value (zeros when new) before the rows are added in */
    for (int j = 0; j < n->nin; j++) {
        ad_node *m = n->in[j];
        int acc;
        if (m->pos < lo || !(m->flags & F_REQUIRES_GRAD)) continue;
        if ((st = slot_target(T, rc, &slots[m->pos - lo], m, k, &acc, "vjp"))) return st;
        if (!acc) memset(slots[m->pos - lo].buf, 0, (size_t)k * node_bytes(m));
    }
    ad_node *inl[4] = {0}, **res = n->nin <= 4 ? inl : calloc((size_t)n->nin, sizeof *res);
    if (!res) return ad_err(AD_ERR_MEMORY, "vjp: out of memory");
    for (int64_t r = 0; r < k && !st; r++) {
        if ((st = ad_custom_vjp(T, n, (char *)s->buf + r * row, 0, res))) break;
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            if (res[j] && m->pos >= lo)
                ad_add_into(m->dtype, (char *)slots[m->pos - lo].buf + r * node_bytes(m), 1, res[j]->data, m->size);
            if (res[j]) { ad_node_unref(T, res[j]); res[j] = NULL; }
        }
    }
    for (int j = 0; j < n->nin; j++) if (res[j]) ad_node_unref(T, res[j]);
    if (res != inl) free(res);
    return st;
}

/* Seed root r's slot with its k cotangent rows. The last-recorded root's cotangent is only read
 * (nothing inside the sweep consumes it), unless the same root comes twice; every other root is
 * an input of later nodes, whose contributions add into its slot: it gets a buffer of its own. */
static int seed_root(ad_tape *T, ad_recycler *rc, ad_slot *s, const ad_node *r, const ad_node *cot, int64_t k,
                     int64_t hi)
{
    size_t bytes = (size_t)k * node_bytes(r);
    if (!(s->state & S_HAS) && r->pos == hi && !(s->state & S_SEED)) {
        s->buf = cot->data;
        s->state |= S_HAS;
        return AD_OK;
    }
    if (!(s->state & (S_OWN | S_SEED))) {
        void *own = rc_take(T, rc, bytes);
        if (!own) return ad_err(AD_ERR_MEMORY, "vjp: out of memory for a cotangent (%zu bytes)", bytes);
        if (s->state & S_HAS) ad_copy(own, s->buf, bytes);   /* a borrowed cotangent, now added to */
        s->buf = own;
        s->state |= S_OWN;
    }
    ad_add_into(r->dtype, s->buf, !!(s->state & S_HAS), cot->data, k * r->size);
    s->state |= S_HAS;
    return AD_OK;
}

/* The reverse sweep of ad_vjp and ad_vjp_many: the roots' cotangents (k rows each, checked by the
 * caller) pulled back to the leaves in one pass over the tape. A leaf's result is (k, *shape), or
 * shaped like the leaf when leaf_shaped (k == 1). */
static int vjp_sweep(ad_tape *T, const char *op, int n_roots, ad_node **roots, ad_node **cots, int64_t k,
                     int n_leaves, const int64_t *leaves, int leaf_shaped, int64_t *out_h)
{
    int st;
    if (n_leaves > 0 && !out_h) return ad_err(AD_ERR_VALUE, "%s: out_grads is NULL", op);
    ad_node **nodes = calloc((size_t)(2 * n_leaves + 1), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "%s: out of memory", op);
    ad_node **outs = nodes + n_leaves;
    ad_slot *slots = NULL;
    ad_node **order = ad_tape_order(T);
    int64_t lo = 0, hi = -1;
    int held = 0;
    ad_recycler rc = {{0}, {0}};
    if ((st = resolve_leaves(T, op, n_leaves, leaves, nodes))) goto done;
    for (int r = 0; r < n_roots; r++)
        if ((st = ad_versions_check(T, roots[r], min_pos(n_leaves, nodes, roots[r]->pos), op))) goto done;
    /* made before positions are read: creating a node may compact the tape */
    for (int i = 0; i < n_leaves; i++)
        if ((st = leaf_shaped ? ad_node_new(T, AD_OP_LEAF, nodes[i]->dtype, nodes[i]->ndim, nodes[i]->shape, &outs[i])
                              : new_batch_node(T, nodes[i], k, &outs[i])))
            goto done;

    for (int r = 0; r < n_roots; r++)
        if ((roots[r]->flags & F_REQUIRES_GRAD) && roots[r]->pos > hi) hi = roots[r]->pos;
    lo = min_pos(n_leaves, nodes, hi);
    if (lo > hi) goto done;   /* no root depends on the inputs */
    order = ad_tape_order(T);
    slots = calloc((size_t)(hi - lo + 1), sizeof *slots);
    if (!slots) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory for a sweep over %lld nodes", op, (long long)(hi - lo + 1)); goto done; }
    for (int i = 0; i < n_leaves; i++) {
        if (nodes[i]->pos > hi) continue;   /* recorded after every root: its gradient is zero */
        ad_slot *s = &slots[nodes[i]->pos - lo];
        s->state = S_SEED;
        s->buf = outs[i]->data;   /* a requested node's adjoint is accumulated in place */
    }
    for (int r = 0; r < n_roots; r++) {
        if (!(roots[r]->flags & F_REQUIRES_GRAD) || roots[r]->pos < lo) continue;
        if ((st = seed_root(T, &rc, &slots[roots[r]->pos - lo], roots[r], cots[r], k, hi))) goto done;
    }

    /* a custom rule or hook creates nodes mid-sweep: positions must stay put (see ad_tape_order) */
    ad_tape_hold_order(T, 1);
    held = 1;
    for (int64_t i = hi; i >= lo; i--) {
        ad_node *n = ad_tape_order(T)[i];
        ad_slot *s = &slots[i - lo];
        if (!n || !(s->state & S_HAS)) continue;
        if (n->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "%s: part of the graph (a %s node) was released by an earlier backward(); "
                        "pass retain_graph=True to that backward() to keep it", op, ad_ops[n->op].name);
            goto done;
        }
        if ((n->flags & F_HOOK) || (n->op == AD_OP_CUSTOM && !(s->state & S_SEED))) {
            if ((st = custom_rows(T, &rc, slots, lo, n, s, k))) goto done;
            if (n->op == AD_OP_CUSTOM) { slot_drop(T, &rc, s, n, k); continue; }
        }
        /* a requested node counts as independent, as in the forward sweep: its adjoint is the
         * result and does not flow on into its own inputs */
        for (int j = 0; j < n->nin && !(s->state & S_SEED); j++) {
            ad_node *m = n->in[j];
            if (!(m->flags & F_REQUIRES_GRAD) || m->pos < lo) continue;
            ad_slot *sm = &slots[m->pos - lo];
            int acc;
            if ((st = slot_target(T, &rc, sm, m, k, &acc, op)) ||
                (st = pass_rows_to_input(T, n, s->buf, j, sm->buf, acc, k, NULL)))
                goto done;
        }
        slot_drop(T, &rc, s, n, k);
    }

done:
    order = ad_tape_order(T);
    if (slots) {
        for (int64_t i = lo; i <= hi; i++)
            if (slots[i - lo].state & S_OWN) ad_buf_free(T, slots[i - lo].buf, (size_t)k * node_bytes(order[i]));
    }
    if (held) ad_tape_hold_order(T, 0);
    rc_clear(T, &rc);
    for (int i = 0; i < n_leaves; i++) {
        if (!outs[i]) continue;
        if (st) { ad_node_discard(T, outs[i]); continue; }
        /* an input no root depends on has a zero gradient */
        if (!slots || nodes[i]->pos > hi || !(slots[nodes[i]->pos - lo].state & S_HAS))
            memset(outs[i]->data, 0, (size_t)k * node_bytes(nodes[i]));
        out_h[i] = ad_handle(T, outs[i]);
    }
    free(slots);
    free(nodes);
    return st;
}

static int vjp_locked(ad_tape *T, int64_t root_h, int64_t cot_h, int n_leaves, const int64_t *leaves,
                      int64_t *out_h)
{
    char b1[160], b2[160];
    ad_node *root, *cot;
    int st;
    if ((st = ad_resolve(T, root_h, &root)) || (st = ad_resolve(T, cot_h, &cot))) return st;
    int64_t k = cot->ndim >= 1 ? cot->shape[0] : 0;
    if (k < 1 || !is_batch_of(cot, root, k) || cot->dtype != root->dtype) {
        int64_t want[AD_MAXDIM];
        int nd = batched_shape(root, k < 1 ? 1 : k, want);
        return ad_err(AD_ERR_VALUE, "vjp: cotangent has shape %s and dtype %s, but the output has shape %s and "
                      "dtype %s: expected k >= 1 cotangents stacked on a leading axis, e.g. shape %s, dtype %s",
                      ad_shape_str(b1, sizeof b1, cot->ndim, cot->shape), ad_dtype_name(cot->dtype),
                      ad_shape_str(b2, sizeof b2, root->ndim, root->shape), ad_dtype_name(root->dtype),
                      ad_shape_str(b1, sizeof b1, nd, want), ad_dtype_name(root->dtype));
    }
    return vjp_sweep(T, "vjp", 1, &root, &cot, k, n_leaves, leaves, 0, out_h);
}

int ad_vjp(int64_t root, int64_t cotangent, int n_leaves, const int64_t *leaves, int64_t *out_grads)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_long_work(INT64_MAX);
    st = vjp_locked(T, root, cotangent, n_leaves, leaves, out_grads);
    ad_unlock(T);
    return st;
}

static int vjp_many_locked(ad_tape *T, int n_roots, const int64_t *roots_h, const int64_t *cots_h, int n_leaves,
                           const int64_t *leaves, int64_t *out_h)
{
    char b1[160], b2[160];
    if (n_roots < 1 || !roots_h || !cots_h)
        return ad_err(AD_ERR_VALUE, "vjp_many: invalid list of %d outputs and their cotangents", n_roots);
    ad_node **nodes = calloc((size_t)(2 * n_roots), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "vjp_many: out of memory");
    ad_node **roots = nodes, **cots = nodes + n_roots;
    int st = AD_OK;
    for (int r = 0; r < n_roots && !st; r++) {
        if ((st = ad_resolve(T, roots_h[r], &roots[r])) || (st = ad_resolve(T, cots_h[r], &cots[r]))) break;
        if (!same_shape(cots[r]->ndim, cots[r]->shape, roots[r]->ndim, roots[r]->shape) || cots[r]->dtype != roots[r]->dtype)
            st = ad_err(AD_ERR_VALUE, "vjp_many: cotangent %d has shape %s and dtype %s, but its output has shape %s "
                        "and dtype %s; they must match", r,
                        ad_shape_str(b1, sizeof b1, cots[r]->ndim, cots[r]->shape), ad_dtype_name(cots[r]->dtype),
                        ad_shape_str(b2, sizeof b2, roots[r]->ndim, roots[r]->shape), ad_dtype_name(roots[r]->dtype));
    }
    if (!st) st = vjp_sweep(T, "vjp", n_roots, roots, cots, 1, n_leaves, leaves, 1, out_h);
    free(nodes);
    return st;
}

int ad_vjp_many(int n_roots, const int64_t *roots, const int64_t *cotangents, int n_leaves, const int64_t *leaves,
                int64_t *out_grads)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_long_work(INT64_MAX);
    st = vjp_many_locked(T, n_roots, roots, cotangents, n_leaves, leaves, out_grads);
    ad_unlock(T);
    return st;
}

/* ---------------- Hessian-vector products: forward over reverse ----------------
 *
 * For a scalar root f and k tangent directions v, H v is the derivative of the gradient along v.
 * A forward tangent pass (kept whole) gives every node's tangent; then one reverse pass carries,
 * per node, the ordinary adjoint g (one row) and its derivative along v, gdot (k rows). An op
 * hands its inputs vjp(g) as in backward and vjp(gdot) + vjp2(g, tangents) as their gdot: the
 * first term is the batched VJP of the k rows, the second the derivative of the VJP itself as the
 * op's values move along the tangents (zero for ops whose VJP does not read their values). The
 * seeded inputs' gdot rows are the result. */

static int hvp_locked(ad_tape *T, int64_t root_h, int n_leaves, const int64_t *leaves, const int64_t *tangents,
                      int64_t k, int64_t *out_h)
{
    char b1[160];
    ad_node *root;
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    if (root->size != 1)
        return ad_err(AD_ERR_VALUE, "hvp: the function must return a scalar (one element), but its output has "
                      "shape %s", ad_shape_str(b1, sizeof b1, root->ndim, root->shape));
    if (k < 1) return ad_err(AD_ERR_VALUE, "hvp: the number of tangent directions must be at least 1, got %lld", (long long)k);
    if (n_leaves > 0 && !out_h) return ad_err(AD_ERR_VALUE, "hvp: out_hvp is NULL");
    ad_node **nodes = calloc((size_t)(3 * n_leaves + 1), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "hvp: out of memory");
    ad_node **tans = nodes + n_leaves, **outs = tans + n_leaves;
    ad_slot *tan = NULL, *adj = NULL, *adt = NULL;
    ad_node **order = ad_tape_order(T);
    int64_t lo = 0, hi = -1;
    ad_recycler rc = {{0}, {0}};
    int held = 0;
    if ((st = resolve_leaves(T, "hvp", n_leaves, leaves, nodes)) ||
        (st = check_tangents(T, "hvp", n_leaves, nodes, tangents, k, tans)) ||
        (st = ad_versions_check(T, root, min_pos(n_leaves, nodes, root->pos), "hvp")))
        goto done;
    /* made before positions are read: creating a node may compact the tape */
    for (int i = 0; i < n_leaves; i++)
        if ((st = new_batch_node(T, nodes[i], k, &outs[i]))) goto done;

    hi = root->pos;
    lo = min_pos(n_leaves, nodes, hi);
    if (lo > hi || !(root->flags & F_REQUIRES_GRAD)) goto done;   /* root does not depend on the inputs */
    order = ad_tape_order(T);
    int64_t span = hi - lo + 1;
    tan = calloc((size_t)span, sizeof *tan);
    adj = calloc((size_t)span, sizeof *adj);
    adt = calloc((size_t)span, sizeof *adt);
    if (!tan || !adj || !adt) { st = ad_err(AD_ERR_MEMORY, "hvp: out of memory for a sweep over %lld nodes", (long long)span); goto done; }
    for (int i = 0; i < n_leaves; i++) {
        if (nodes[i]->pos > hi) continue;   /* recorded after root: its rows are zero */
        int64_t p = nodes[i]->pos - lo;
        tan[p].state = S_SEED;
        tan[p].buf = tans[i]->data;
        adt[p].state = S_SEED;
        adt[p].buf = outs[i]->data;   /* accumulated in place */
    }
    if ((st = mark_ancestors(order, tan, lo, hi, "hvp"))) goto done;
    for (int64_t i = lo; i <= hi; i++) {
        ad_node *n = order[i];
        /* their second-order terms live in the bindings: ad.hvp / ad.hessian take the recorded
         * path (forward over the recorded reverse sweep) when such nodes are alive */
        if (n && (tan[i - lo].state & S_NEED) && (n->op == AD_OP_CUSTOM || (n->flags & F_HOOK))) {
            st = ad_err(AD_ERR_RUNTIME, "hvp: the graph holds a %s; its second-order term is not in the core, so "
                        "differentiate it by composition (e.g. jvp of the recorded vjp)",
                        n->op == AD_OP_CUSTOM ? "custom function" : "tensor with a gradient hook");
            goto done;
        }
    }
    /* the linear algebra ops' numeric rules make (and free) constant nodes mid-sweep
     * (kernels/lapack.c): hold the order, so positions stay put, and re-read the array */
    ad_tape_hold_order(T, 1);
    held = 1;
    if ((st = tangent_pass(T, order, tan, lo, hi, k, NULL, 1, &rc, "hvp"))) goto done;

    /* the root's adjoint is 1 and its derivative along v is 0 (no gdot rows) */
    ad_slot *sr = &adj[hi - lo];
    int acc;
    if ((st = slot_target(T, &rc, sr, root, 1, &acc, "hvp"))) goto done;
    if (root->dtype == AD_F64) *(double *)sr->buf = 1.0; else *(float *)sr->buf = 1.0f;

    for (int64_t i = hi; i >= lo; i--) {
        ad_node *n = ad_tape_order(T)[i];
        ad_slot *a = &adj[i - lo], *at = &adt[i - lo];
        if (!n || !(a->state & S_HAS) || (at->state & S_SEED)) continue;  /* a seed does not flow on */
        if (n->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "hvp: part of the graph (a %s node) was released by an earlier backward(); "
                        "pass retain_graph=True to that backward() to keep it", ad_ops[n->op].name);
            goto done;
        }
        const ad_opdef *def = &ad_ops[n->op];
        int second = tan[i - lo].buf && !(def->flags & AD_VJP_CONST);
        if (second && (!def->vjp2 || n->nin > 2)) {
            st = ad_err(AD_ERR_RUNTIME, "hvp: op %s has no second-order rule", def->name);
            goto done;
        }
        ad_second sec = {a->buf, {NULL, NULL}, tan[i - lo].buf};
        for (int j = 0; j < n->nin && second; j++)
            if (n->in[j]->pos >= lo) sec.tin[j] = tan[n->in[j]->pos - lo].buf;
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            if (!(m->flags & F_REQUIRES_GRAD) || m->pos < lo) continue;
            ad_slot *am = &adj[m->pos - lo], *atm = &adt[m->pos - lo];
            if (!(atm->state & S_SEED)) {
                if ((st = slot_target(T, &rc, am, m, 1, &acc, "hvp")) ||
                    (st = pass_rows_to_input(T, n, a->buf, j, am->buf, acc, 1, NULL)))
                    goto done;
            }
            if (!(at->state & S_HAS) && !second) continue;
            if ((st = slot_target(T, &rc, atm, m, k, &acc, "hvp"))) goto done;
            if ((at->state & S_HAS) && (st = pass_rows_to_input(T, n, at->buf, j, atm->buf, acc, k, NULL))) goto done;
            if (second && (st = pass_rows_to_input(T, n, NULL, j, atm->buf, acc || (at->state & S_HAS), k, &sec)))
                goto done;
        }
        slot_drop(T, &rc, a, n, 1);
        slot_drop(T, &rc, at, n, k);
    }

done:
    for (int i = 0; i < n_leaves; i++) {
        if (!outs[i]) continue;
        if (st) { ad_node_discard(T, outs[i]); continue; }
        /* a direction the gradient does not depend on gives zero rows */
        if (!adt || nodes[i]->pos > hi || !(adt[nodes[i]->pos - lo].state & S_HAS))
            memset(outs[i]->data, 0, (size_t)k * node_bytes(nodes[i]));
        out_h[i] = ad_handle(T, outs[i]);
    }
    order = ad_tape_order(T);
    free_slots(T, order, adt, lo, hi, k);
    free_slots(T, order, adj, lo, hi, 1);
    free_slots(T, order, tan, lo, hi, k);
    if (held) ad_tape_hold_order(T, 0);
    rc_clear(T, &rc);
    free(nodes);
    return st;
}

int ad_hvp(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t k, int64_t *out_hvp)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_long_work(INT64_MAX);
    st = hvp_locked(T, root, n_leaves, leaves, tangents, k, out_hvp);
    ad_unlock(T);
    return st;
}

/* ---------------- recorded sweeps: derivatives of any order ----------------
 *
 * ad_vjp_graph and ad_jvp_graph walk the tape as ad_vjp and ad_jvp do, but each adjoint and
 * tangent is a node, built by the ops' differentiable rules (vjp_rec / jvp_rec) out of recorded
 * ops, with grad mode on: the result carries a graph of its own, which any sweep (a recorded one
 * again, for third order) can differentiate. The sink logic is pass_to_input's, as recorded ops:
 * a contribution shaped like the output is summed over the broadcast axes (ad_rec_unbroadcast),
 * and contributions to one input add up with a recorded add.
 *
 * Every adjoint or tangent node is held by one reference in the sweep's slot array; a slot is
 * dropped as soon as its node has been swept (reverse) or its last consumer has read it
 * (forward), so the nodes that are no part of the result are freed as the sweep goes, and on an
 * error dropping the remaining slots frees everything the sweep made. New nodes are appended to
 * the creation order while the sweep walks it by position, so the order is held (no compaction)
 * and re-read at every step (growing it may move it). */

static int no_rule(const char *sweep, const ad_node *n)
{
    return ad_err(AD_ERR_RUNTIME, "%s: %s has no differentiable rule (its derivative cannot be recorded, so "
                  "it cannot be differentiated twice yet)", sweep, ad_ops[n->op].name);
}

/* A rule's result must be what the numeric kernel writes: a bug there is reported, not swept on. */
static int check_rule_result(const char *sweep, const ad_node *n, const char *what, const ad_node *r, int dtype,
                             int ndim, const int64_t *shape)
{
    if (r->dtype == dtype && same_shape(r->ndim, r->shape, ndim, shape)) return AD_OK;
    char b1[160], b2[160];
    return ad_err(AD_ERR_RUNTIME, "%s: internal: the differentiable rule of %s made a %s of shape %s and dtype %s, "
                  "expected shape %s and dtype %s", sweep, ad_ops[n->op].name, what,
                  ad_shape_str(b1, sizeof b1, r->ndim, r->shape), ad_dtype_name(r->dtype),
                  ad_shape_str(b2, sizeof b2, ndim, shape), ad_dtype_name(dtype));
}

/* n's contribution to input j for its adjoint node g, as a new node shaped like the input */
static int contribution_rec(ad_tape *T, ad_node *n, ad_node *g, int j, ad_node **out)
{
    const ad_opdef *def = &ad_ops[n->op];
    ad_node *m = n->in[j], *c;
    if (!def->vjp_rec) return no_rule("vjp_graph", n);
    /* an empty output contributes zero, without running the rule (see pass_to_input) */
    if (n->size == 0) return ad_mk_full(T, m->dtype, m->ndim, m->shape, 0, out);
    int st = def->vjp_rec(T, n, g, j, &c);
    if (st) return st;
    ad_sink s;
    int direct = sink_shape(n, j, m, &s);
    if ((st = check_rule_result("vjp_graph", n, "contribution", c, m->dtype, s.ndim, s.shape))) {
        ad_node_unref(T, c);
        return st;
    }
    if (direct) { *out = c; return AD_OK; }
    st = ad_rec_unbroadcast(T, c, m->ndim, m->shape, out);
    ad_node_unref(T, c);
    return st;
}

/* *slot += c, recorded; takes over the reference c holds */
static int accumulate_rec(ad_tape *T, ad_node **slot, ad_node *c)
{
    if (!*slot) { *slot = c; return AD_OK; }
    ad_node *sum;
    int st = ad_mk_binary(T, AD_OP_ADD, *slot, c, &sum);
    ad_node_unref(T, c);
    if (st) return st;
    ad_node_unref(T, *slot);
    *slot = sum;
    return AD_OK;
}

static int vjp_graph_locked(ad_tape *T, int64_t root_h, int64_t cot_h, int n_leaves, const int64_t *leaves,
                            int64_t *out_h)
{
    char b1[160], b2[160];
    ad_node *root, *cot;
    int st;
    if ((st = ad_resolve(T, root_h, &root)) || (st = ad_resolve(T, cot_h, &cot))) return st;
    if (!same_shape(cot->ndim, cot->shape, root->ndim, root->shape) || cot->dtype != root->dtype)
        return ad_err(AD_ERR_VALUE, "vjp_graph: cotangent has shape %s and dtype %s, but the output has shape %s and "
                      "dtype %s; they must match",
                      ad_shape_str(b1, sizeof b1, cot->ndim, cot->shape), ad_dtype_name(cot->dtype),
                      ad_shape_str(b2, sizeof b2, root->ndim, root->shape), ad_dtype_name(root->dtype));
    if (n_leaves > 0 && !out_h) return ad_err(AD_ERR_VALUE, "vjp_graph: out_grads is NULL");
    ad_node **nodes = calloc((size_t)(2 * n_leaves + 1), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "vjp_graph: out of memory");
    ad_node **res = nodes + n_leaves, **adj = NULL;
    uint8_t *seed = NULL;   /* per position: S_SEED (a requested input), S_NEED (leads to one) */
    int64_t lo = 0, hi = -1;
    int held = 0;
    if ((st = resolve_leaves(T, "vjp_graph", n_leaves, leaves, nodes)) ||
        (st = ad_versions_check(T, root, min_pos(n_leaves, nodes, root->pos), "vjp_graph")))
        goto done;
    hi = root->pos;
    lo = min_pos(n_leaves, nodes, hi);
    if (lo > hi || !(root->flags & F_REQUIRES_GRAD)) goto done;   /* root does not depend on the inputs */
    adj = calloc((size_t)(hi - lo + 1), sizeof *adj);
    seed = calloc((size_t)(hi - lo + 1), 1);
    if (!adj || !seed) { st = ad_err(AD_ERR_MEMORY, "vjp_graph: out of memory for a sweep over %lld nodes", (long long)(hi - lo + 1)); goto done; }
    for (int i = 0; i < n_leaves; i++)
        if (nodes[i]->pos <= hi) seed[nodes[i]->pos - lo] = S_SEED | S_NEED;
    /* S_NEED: the node leads to a requested input. Contributions go only there, so a branch that
     * reaches none records nothing (and needs no rule). */
    for (int64_t i = lo; i <= hi; i++) {
        ad_node *n = ad_tape_order(T)[i];
        for (int j = 0; n && !(seed[i - lo] & S_NEED) && j < n->nin; j++)
            if (n->in[j]->pos >= lo && (seed[n->in[j]->pos - lo] & S_NEED)) seed[i - lo] |= S_NEED;
    }
    cot->refs++;
    adj[hi - lo] = cot;

    ad_tape_hold_order(T, 1);
    held = 1;
    for (int64_t i = hi; i >= lo; i--) {
        ad_node *n = ad_tape_order(T)[i], *a = adj[i - lo];
        /* n's gradient is complete here: its hooks see it (and may replace it) */
        if (n && a && (n->flags & F_HOOK)) {
            if ((st = ad_hook_graph(T, n, &adj[i - lo]))) goto done;
            a = adj[i - lo];
        }
        /* a requested node's adjoint is a result and does not flow on into its inputs (as in ad_vjp) */
        if (!n || !a || (seed[i - lo] & S_SEED)) continue;
        if (n->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "vjp_graph: part of the graph (a %s node) was released by an earlier "
                        "backward(); pass retain_graph=True to that backward() to keep it", ad_ops[n->op].name);
            goto done;
        }
        if (n->op == AD_OP_CUSTOM) {
            /* all inputs' contributions from one call of the function's backward rule (custom.c) */
            ad_node *inl[4] = {0}, **res = n->nin <= 4 ? inl : calloc((size_t)n->nin, sizeof *res);
            st = res ? ad_custom_vjp_graph(T, n, a, res) : ad_err(AD_ERR_MEMORY, "vjp_graph: out of memory");
            for (int j = 0; j < n->nin; j++) {
                ad_node *m = n->in[j];
                if (!res || !res[j]) continue;
                if (st || m->pos < lo || !(seed[m->pos - lo] & S_NEED)) ad_node_unref(T, res[j]);
                else st = accumulate_rec(T, &adj[m->pos - lo], res[j]);
            }
            if (res != inl) free(res);
            if (st) goto done;
            adj[i - lo] = NULL;
            ad_node_unref(T, a);
            continue;
        }
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j], *c;
            if (!(m->flags & F_REQUIRES_GRAD) || m->pos < lo || !(seed[m->pos - lo] & S_NEED)) continue;
            if ((st = contribution_rec(T, n, a, j, &c)) || (st = accumulate_rec(T, &adj[m->pos - lo], c))) goto done;
        }
        adj[i - lo] = NULL;
        ad_node_unref(T, a);
    }

done:
    /* the order stays held while zeros are made: positions are still read */
    for (int i = 0; i < n_leaves && !st; i++) {
        ad_node **slot = adj && nodes[i]->pos <= hi ? &adj[nodes[i]->pos - lo] : NULL;
        if (slot && *slot) { res[i] = *slot; *slot = NULL; }
        /* an input the root does not depend on has a zero gradient */
        else st = ad_mk_full(T, nodes[i]->dtype, nodes[i]->ndim, nodes[i]->shape, 0, &res[i]);
    }
    for (int i = 0; i < n_leaves; i++) {
        if (!res[i]) continue;
        if (st) ad_node_unref(T, res[i]);
        else out_h[i] = ad_handle(T, res[i]);
    }
    if (held) ad_tape_hold_order(T, 0);
    if (adj) {
        for (int64_t i = 0; i <= hi - lo; i++)
            if (adj[i]) ad_node_unref(T, adj[i]);
    }
    free(adj);
    free(seed);
    free(nodes);
    return st;
}

static int jvp_graph_locked(ad_tape *T, int64_t root_h, int n_leaves, const int64_t *leaves, const int64_t *tangents,
                            int64_t *out_h)
{
    char b1[160], b2[160];
    ad_node *root;
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    ad_node **nodes = calloc((size_t)(2 * n_leaves + 1), sizeof *nodes);
    if (!nodes) return ad_err(AD_ERR_MEMORY, "jvp_graph: out of memory");
    ad_node **tans = nodes + n_leaves, **tan = NULL, *result = NULL;
    ad_node *tin_inline[4], **tin = tin_inline;
    int tin_cap = 4;
    ad_slot *slots = NULL;
    int64_t lo = 0, hi = -1;
    int held = 0;
    if ((st = resolve_leaves(T, "jvp_graph", n_leaves, leaves, nodes)) ||
        (st = ad_versions_check(T, root, min_pos(n_leaves, nodes, root->pos), "jvp_graph")))
        goto done;
    if (n_leaves > 0 && !tangents) { st = ad_err(AD_ERR_VALUE, "jvp_graph: tangents is NULL"); goto done; }
    for (int i = 0; i < n_leaves; i++) {
        if ((st = ad_resolve(T, tangents[i], &tans[i]))) goto done;
        if (!same_shape(tans[i]->ndim, tans[i]->shape, nodes[i]->ndim, nodes[i]->shape) || tans[i]->dtype != nodes[i]->dtype) {
            st = ad_err(AD_ERR_VALUE, "jvp_graph: tangent %d has shape %s and dtype %s, but its input has shape %s and "
                        "dtype %s; they must match", i,
                        ad_shape_str(b1, sizeof b1, tans[i]->ndim, tans[i]->shape), ad_dtype_name(tans[i]->dtype),
                        ad_shape_str(b2, sizeof b2, nodes[i]->ndim, nodes[i]->shape), ad_dtype_name(nodes[i]->dtype));
            goto done;
        }
    }
    hi = root->pos;
    lo = min_pos(n_leaves, nodes, hi);
    if (lo > hi || !(root->flags & F_REQUIRES_GRAD)) goto done;   /* root does not depend on the inputs */
    slots = calloc((size_t)(hi - lo + 1), sizeof *slots);
    tan = calloc((size_t)(hi - lo + 1), sizeof *tan);
    if (!slots || !tan) { st = ad_err(AD_ERR_MEMORY, "jvp_graph: out of memory for a sweep over %lld nodes", (long long)(hi - lo + 1)); goto done; }
    for (int i = 0; i < n_leaves; i++) {
        if (nodes[i]->pos > hi) continue;   /* recorded after root: cannot affect it */
        slots[nodes[i]->pos - lo].state = S_SEED;
        tans[i]->refs++;
        tan[nodes[i]->pos - lo] = tans[i];
    }
    if ((st = mark_ancestors(ad_tape_order(T), slots, lo, hi, "jvp_graph"))) goto done;

    ad_tape_hold_order(T, 1);
    held = 1;
    for (int64_t i = lo; i <= hi; i++) {
        ad_node *n = ad_tape_order(T)[i];
        if (!n || (slots[i - lo].state & (S_NEED | S_SEED)) != S_NEED || n->nin == 0) continue;
        if (n->nin > tin_cap) {
            ad_node **grown = malloc((size_t)n->nin * sizeof *tin);
            if (!grown) { st = ad_err(AD_ERR_MEMORY, "jvp_graph: out of memory"); goto done; }
            if (tin != tin_inline) free(tin);
            tin = grown;
            tin_cap = n->nin;
        }
        int any = 0;
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            tin[j] = m->pos >= lo ? tan[m->pos - lo] : NULL;
            any |= tin[j] != NULL;
        }
        if (any) {
            const ad_opdef *def = &ad_ops[n->op];
            if (!def->jvp_rec) { st = no_rule("jvp_graph", n); goto done; }
            /* an empty output has an empty tangent: no rule to run (see tangent_pass) */
            if (n->size == 0) st = ad_mk_full(T, n->dtype, n->ndim, n->shape, 0, &tan[i - lo]);
            else st = def->jvp_rec(T, n, tin, &tan[i - lo]);
            if (st) goto done;
            if ((st = check_rule_result("jvp_graph", n, "tangent", tan[i - lo], n->dtype, n->ndim, n->shape))) goto done;
        }
        /* a tangent goes once its last consumer has read it: a long chain holds O(1) of them */
        for (int j = 0; j < n->nin; j++) {
            ad_node *m = n->in[j];
            if (m->pos < lo) continue;
            if (--slots[m->pos - lo].uses == 0 && tan[m->pos - lo]) {
                ad_node_unref(T, tan[m->pos - lo]);
                tan[m->pos - lo] = NULL;
            }
        }
    }
    result = tan[hi - lo];
    tan[hi - lo] = NULL;

done:
    /* the root's tangent is zero when it does not depend on the inputs */
    if (!st && !result) st = ad_mk_full(T, root->dtype, root->ndim, root->shape, 0, &result);
    if (held) ad_tape_hold_order(T, 0);
    if (tan) {
        for (int64_t i = 0; i <= hi - lo; i++)
            if (tan[i]) ad_node_unref(T, tan[i]);
    }
    if (st && result) { ad_node_unref(T, result); result = NULL; }
    if (!st) *out_h = ad_handle(T, result);
    if (tin != tin_inline) free(tin);
    free(tan);
    free(slots);
    free(nodes);
    return st;
}

/* The recorded sweeps run with grad mode on, whatever the caller's, so that the rules record. */
int ad_vjp_graph(int64_t root, int64_t cotangent, int n_leaves, const int64_t *leaves, int64_t *out_grads)
{
    int prev = ad_set_grad_enabled(1);
    if (prev < 0) return prev;
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (!st) {
        ad_long_work(INT64_MAX);
        st = vjp_graph_locked(T, root, cotangent, n_leaves, leaves, out_grads);
        ad_unlock(T);
    }
    ad_set_grad_enabled(prev);
    return st;
}

int ad_jvp_graph(int64_t root, int n_leaves, const int64_t *leaves, const int64_t *tangents, int64_t *out_tangent)
{
    if (!out_tangent) return ad_err(AD_ERR_VALUE, "jvp_graph: out_tangent is NULL");
    int prev = ad_set_grad_enabled(1);
    if (prev < 0) return prev;
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (!st) {
        ad_long_work(INT64_MAX);
        st = jvp_graph_locked(T, root, n_leaves, leaves, tangents, out_tangent);
        ad_unlock(T);
    }
    ad_set_grad_enabled(prev);
    return st;
}

/* ---- dependence: which requires-grad tensors a root reaches ----
 *
 * The transforms in Python ask this to decide whether a derivative must stay on the tape (it
 * depends on a requires-grad tensor other than the transform's own inputs, e.g. a closed-over
 * parameter), and backward(create_graph=True) to find the leaves whose grad it records. A
 * depth-first walk over the root's recorded ancestors: each is visited once (F_WALKED marks it
 * and is cleared afterwards), so the cost is that of the graph f recorded, not of the tape. */

typedef struct { ad_node *n; int index; } stop_entry;

static int stop_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const stop_entry *)a)->n, y = (uintptr_t)((const stop_entry *)b)->n;
    return x < y ? -1 : x > y;
}

/* The walk. stop (n_stop nodes, not looked through) marks reached[i]; the requires-grad leaves
 * reached outside stop are counted in *outside and, when leaves is given, listed in *leaves (a
 * malloc'd array the caller frees). */
static int walk_dependence(ad_node *root, int n_stop, ad_node **stop, int *reached, int64_t *outside,
                           ad_node ***leaves)
{
    int64_t cap = 64, top = 0, seen = 0, seen_cap = 64, nleaves = 0, leaves_cap = 0;
    ad_node **stack = malloc((size_t)cap * sizeof *stack), **walked = malloc((size_t)seen_cap * sizeof *walked);
    stop_entry *sorted = n_stop > 0 ? malloc((size_t)n_stop * sizeof *sorted) : NULL;
    int st = AD_OK;
    *outside = 0;
    if (leaves) *leaves = NULL;
    if (!stack || !walked || (n_stop > 0 && !sorted)) { st = ad_err(AD_ERR_MEMORY, "dependence walk: out of memory"); goto done; }
    for (int i = 0; i < n_stop; i++) {
        sorted[i].n = stop[i];
        sorted[i].index = i;
        if (reached) reached[i] = 0;
    }
    if (n_stop > 1) qsort(sorted, (size_t)n_stop, sizeof *sorted, stop_cmp);
    /* stop nodes count as walked from the start: the walk never looks through them */
    for (int i = 0; i < n_stop; i++) stop[i]->flags |= F_WALKED;
    if (!(root->flags & F_REQUIRES_GRAD)) goto done;
    stack[top++] = root;
    for (;;) {
        ad_node *m = NULL;
        if (top == 0) break;
        m = stack[--top];
        if (m->flags & F_WALKED) {
            if (n_stop > 0) {
                stop_entry key = { m, 0 }, *hit = bsearch(&key, sorted, (size_t)n_stop, sizeof *sorted, stop_cmp);
                if (hit && reached) reached[hit->index] = 1;
            }
            continue;
        }
        m->flags |= F_WALKED;
        if (seen == seen_cap) {
            ad_node **grown = realloc(walked, (size_t)(seen_cap *= 2) * sizeof *walked);
            if (!grown) { st = ad_err(AD_ERR_MEMORY, "dependence walk: out of memory"); m->flags &= (uint8_t)~F_WALKED; goto done; }
            walked = grown;
        }
        walked[seen++] = m;
        if (m->flags & F_LEAF) {
            (*outside)++;
            if (leaves) {
                if (nleaves == leaves_cap) {
                    leaves_cap = leaves_cap ? 2 * leaves_cap : 16;
                    ad_node **grown = realloc(*leaves, (size_t)leaves_cap * sizeof **leaves);
                    if (!grown) { st = ad_err(AD_ERR_MEMORY, "dependence walk: out of memory"); goto done; }
                    *leaves = grown;
                }
                (*leaves)[nleaves++] = m;
            }
            continue;
        }
        for (int j = 0; j < m->nin; j++) {
            ad_node *p = m->in[j];
            /* a tensor that does not require grad has no requires-grad ancestors */
            if (!(p->flags & F_REQUIRES_GRAD)) continue;
            if (top == cap) {
                ad_node **grown = realloc(stack, (size_t)(cap *= 2) * sizeof *stack);
                if (!grown) { st = ad_err(AD_ERR_MEMORY, "dependence walk: out of memory"); goto done; }
                stack = grown;
            }
            stack[top++] = p;
        }
    }
done:
    for (int64_t i = 0; i < seen; i++) walked[i]->flags &= (uint8_t)~F_WALKED;
    for (int i = 0; i < n_stop; i++) stop[i]->flags &= (uint8_t)~F_WALKED;
    if (st && leaves) { free(*leaves); *leaves = NULL; }
    free(stack);
    free(walked);
    free(sorted);
    return st;
}

int ad_depends(int64_t root_h, int n_stop, const int64_t *stop, int *reached, int64_t *outside)
{
    if (!outside) return ad_err(AD_ERR_VALUE, "depends: outside is NULL");
    if (n_stop < 0 || (n_stop > 0 && !stop)) return ad_err(AD_ERR_VALUE, "depends: bad stop list");
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *root, **nodes = calloc((size_t)n_stop + 1, sizeof *nodes);
    if (!nodes) st = ad_err(AD_ERR_MEMORY, "depends: out of memory");
    else if (!(st = ad_resolve(T, root_h, &root))) {
        for (int i = 0; i < n_stop && !st; i++) {
            st = ad_resolve(T, stop[i], &nodes[i]);
            for (int j = 0; j < i && !st; j++)
                if (nodes[j] == nodes[i]) st = ad_err(AD_ERR_VALUE, "depends: stop tensors %d and %d are the same tensor", j, i);
        }
        if (!st) st = walk_dependence(root, n_stop, nodes, reached, outside, NULL);
    }
    free(nodes);
    ad_unlock(T);
    return st;
}

/* backward(create_graph=True): the recorded sweep to every requires-grad leaf the root reaches,
 * each result added (recorded) to the leaf's grad. */
static int backward_graph_locked(ad_tape *T, int64_t root_h, int64_t seed_h)
{
    ad_node *root, *seed = NULL, *one = NULL, **leaves = NULL;
    int64_t n = 0, *hs = NULL;
    char b1[160], b2[160];
    int st = ad_resolve(T, root_h, &root);
    if (st) return st;
    if (!(root->flags & F_REQUIRES_GRAD))
        return ad_err(AD_ERR_RUNTIME, "backward: the tensor does not require grad (no input had "
                      "requires_grad=True, or it was computed under no_grad() or detached)");
    if (seed_h) {
        if ((st = ad_resolve(T, seed_h, &seed))) return st;
        if (!same_shape(seed->ndim, seed->shape, root->ndim, root->shape) || seed->dtype != root->dtype)
            return ad_err(AD_ERR_VALUE, "backward: grad has shape %s and dtype %s but the tensor has shape %s and dtype %s",
                          ad_shape_str(b1, sizeof b1, seed->ndim, seed->shape), ad_dtype_name(seed->dtype),
                          ad_shape_str(b2, sizeof b2, root->ndim, root->shape), ad_dtype_name(root->dtype));
    } else if (root->size != 1) {
        return ad_err(AD_ERR_RUNTIME, "backward: grad can be implicitly created only for tensors with one "
                      "element, but the tensor has shape %s; pass grad= (a cotangent of that shape)",
                      ad_shape_str(b1, sizeof b1, root->ndim, root->shape));
    } else if ((st = ad_mk_full(T, root->dtype, root->ndim, root->shape, 1, &one))) {
        return st;
    }
    int64_t cot_h = ad_handle(T, seed ? seed : one);
    if ((st = ad_versions_check(T, root, 0, "backward"))) goto done;
    if ((st = walk_dependence(root, 0, NULL, NULL, &n, &leaves))) goto done;
    hs = calloc((size_t)(2 * n + 1), sizeof *hs);
    if (!hs) { st = ad_err(AD_ERR_MEMORY, "backward: out of memory"); goto done; }
    for (int64_t i = 0; i < n; i++) hs[i] = ad_handle(T, leaves[i]);
    if (n > INT32_MAX) { st = ad_err(AD_ERR_VALUE, "backward: too many leaves"); goto done; }
    if ((st = vjp_graph_locked(T, root_h, cot_h, (int)n, hs, hs + n))) goto done;
    /* all or nothing, as ad_backward: every leaf's new grad is built first (hs[n + i] becomes it,
     * or 0 when the leaf keeps its grad), and installed only once all are */
    for (int64_t i = 0; i < n; i++) {
        ad_node *g, *sum;
        ad_resolve(T, hs[n + i], &g);   /* a fresh result: holds the one reference we own */
        hs[n + i] = 0;
        if (!st && leaves[i]->refs == leaves[i]->consumers + leaves[i]->views) {
            /* no handle reaches this leaf (only recorded consumers and views of it keep it):
             * nobody can read its grad, and storing a recorded grad that refers to the leaf would
             * make a cycle (tape.c, unref_one) */
            ad_node_unref(T, g);
            continue;
        }
        if (!st && g == leaves[i]) {
            /* the leaf's grad is the leaf itself (root = x + s with seed s: the cotangent passes
             * through): a leaf holding itself would never be freed, so its grad is a recorded
             * identity of it, which the release of the leaf's last handle drops (tape.c) */
            ad_node *id;
            st = ad_mk_reshape(T, g, g->ndim, g->shape, &id);
            ad_node_unref(T, g);
            if (st) continue;
            g = id;
        }
        if (!st && leaves[i]->grad) {
            st = ad_mk_binary(T, AD_OP_ADD, leaves[i]->grad, g, &sum);
            ad_node_unref(T, g);
            if (st) continue;
            g = sum;
        } else if (st) {
            ad_node_unref(T, g);
            continue;
        }
        hs[n + i] = ad_handle(T, g);
    }
    if (!st) st = ad_tape_reserve_release(T);
    for (int64_t i = 0; i < n; i++) {
        ad_node *g;
        if (!hs[n + i]) continue;
        ad_resolve(T, hs[n + i], &g);
        if (st) { ad_node_unref(T, g); continue; }
        if (leaves[i]->grad) ad_node_unref(T, leaves[i]->grad);
        leaves[i]->grad = g;
    }
done:
    if (one) ad_node_unref(T, one);
    free(hs);
    free(leaves);
    return st;
}

int ad_backward_graph(int64_t root, int64_t seed)
{
    int prev = ad_set_grad_enabled(1);
    if (prev < 0) return prev;
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (!st) {
        ad_long_work(INT64_MAX);
        st = backward_graph_locked(T, root, seed);
        ad_unlock(T);
    }
    ad_set_grad_enabled(prev);
    return st;
}
