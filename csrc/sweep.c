/* The reverse sweep. Nodes sit on the tape in creation order, and an op's inputs always exist
 * before it, so walking the tape backwards from the root visits every node after all of its
 * consumers: the sweep is a loop, no recursion and no sort. Each visited node hands its adjoint to
 * its inputs through its op's VJP; contributions to the same input add up ("gradients accumulate
 * at branches"), and leaves collect theirs in their grad. */
#define _GNU_SOURCE
#include "core.h"
#include <string.h>
#include <stdlib.h>
#include <time.h>

ad_node **ad_tape_order(ad_tape *T);

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    return na == nb && !memcmp(a, b, (size_t)na * sizeof(int64_t));
}

/* Where input m's adjoint lives: a leaf's grad node, else m->adj (allocated on first use). */
static int adjoint_target(ad_tape *T, ad_node *m, void **dst, int *accumulate, int64_t *pending)
{
    if (m->flags & F_LEAF) {
        if (!m->grad) {
            ad_node *g;
            int st = ad_node_new(T, AD_OP_LEAF, m->dtype, m->ndim, m->shape, &g);
            if (st) return st;
            m->grad = g;
            *accumulate = 0;
        } else {
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
        *accumulate = 1;
    }
    *dst = m->adj;
    return AD_OK;
}

static int pass_to_input(ad_tape *T, ad_node *n, int j, int64_t *pending, int anomaly)
{
    ad_node *m = n->in[j];
    ad_sink s;
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
    const ad_opdef *def = &ad_ops[n->op];
    if (def->contrib) {
        def->contrib(n, j, &s.ndim, s.shape);
    } else {
        s.ndim = m->ndim;
        memcpy(s.shape, m->shape, sizeof s.shape);
    }
    s.size = ad_shape_size(s.ndim, s.shape);
    if (same_shape(s.ndim, s.shape, m->ndim, m->shape) && !anomaly) {
        s.dst = target;
        s.accumulate = acc;
        return def->vjp(T, n, n->adj, j, &s);
    }
    /* anomaly mode takes this path too, so the contribution is checked before it is added */
    size_t bytes = (size_t)s.size * ad_itemsize(m->dtype);
    s.dst = ad_buf_alloc(T, bytes);
    if (!s.dst) return ad_err(AD_ERR_MEMORY, "backward: out of memory (%zu bytes) in %s", bytes, def->name);
    s.accumulate = 0;
    st = def->vjp(T, n, n->adj, j, &s);
    int clean = 0;   /* neither the contribution nor the adjoint it is added to holds NaN */
    if (!st && anomaly) {
        st = ad_anomaly_vjp(n, j, &s);
        clean = !ad_any_nan(m->dtype, s.dst, s.size) && !(acc && ad_any_nan(m->dtype, target, m->size));
    }
    if (!st) ad_unbroadcast_into(m->dtype, target, acc, m->ndim, m->shape, s.dst, s.ndim, s.shape);
    if (!st && clean) st = ad_anomaly_accumulate(n, j, target);
    ad_buf_free(T, s.dst, bytes);
    return st;
}

static void copy_seed(ad_node *root, void *dst, const ad_node *seed)
{
    if (!seed) {
        if (root->dtype == AD_F64) *(double *)dst = 1.0; else *(float *)dst = 1.0f;
        return;
    }
    if (seed->dtype == root->dtype) {
        memcpy(dst, seed->data, (size_t)root->size * ad_itemsize(root->dtype));
    } else if (root->dtype == AD_F64) {
        const float *s = seed->data; double *d = dst;
        for (int64_t i = 0; i < root->size; i++) d[i] = s[i];
    } else {
        const double *s = seed->data; float *d = dst;
        for (int64_t i = 0; i < root->size; i++) d[i] = (float)s[i];
    }
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

    int64_t pending = 0;
    if (root->flags & F_LEAF) {
        void *dst;
        int acc;
        if ((st = adjoint_target(T, root, &dst, &acc, &pending))) return st;
        if (!acc) { copy_seed(root, dst, seed); return AD_OK; }
        if ((st = ad_tape_grow_adj(T, root))) return st;
        copy_seed(root, root->adj, seed);
        if (root->dtype == AD_F64) { double *d = dst, *s = root->adj; for (int64_t i = 0; i < root->size; i++) d[i] += s[i]; }
        else { float *d = dst, *s = root->adj; for (int64_t i = 0; i < root->size; i++) d[i] += s[i]; }
        ad_buf_free(T, root->adj, (size_t)root->size * ad_itemsize(root->dtype));
        root->adj = NULL;
        return AD_OK;
    }

    if ((st = ad_tape_grow_adj(T, root))) return st;
    copy_seed(root, root->adj, seed);
    root->refs++;
    pending = 1;

    int anomaly = ad_anomaly_on(T);
    ad_node **order = ad_tape_order(T);
    int64_t i = root->pos;
    for (; i >= 0 && pending > 0; i--) {
        ad_node *n = order[i];
        if (!n || !n->adj) continue;
        if (n->flags & F_RELEASED) {
            st = ad_err(AD_ERR_RUNTIME, "backward: part of the graph (a %s node) was already released by an "
                        "earlier backward(); pass retain_graph=True to that backward() to keep it", ad_ops[n->op].name);
            break;
        }
        for (int j = 0; j < n->nin && !st; j++)
            if (n->in[j]->flags & F_REQUIRES_GRAD) st = pass_to_input(T, n, j, &pending, anomaly);
        /* A leaf's first grad is a new node: pushing it may have moved the tape array (realloc)
         * or compacted it, renumbering the nodes below. Re-read both; compaction keeps the order. */
        order = ad_tape_order(T);
        i = n->pos;
        if (st) break;
        ad_buf_free(T, n->adj, (size_t)n->size * ad_itemsize(n->dtype));
        n->adj = NULL;
        pending--;
        if (!retain) ad_node_drop_graph(T, n);
        ad_node_unref(T, n);
    }
    if (st) {
        /* leave no adjoint behind: the tape must stay usable after an error */
        for (; i >= 0 && pending > 0; i--) {
            ad_node *n = order[i];
            if (!n || !n->adj) continue;
            ad_buf_free(T, n->adj, (size_t)n->size * ad_itemsize(n->dtype));
            n->adj = NULL;
            pending--;
            ad_node_unref(T, n);
        }
    }
    return st;
}

int ad_backward(int64_t root_h, int64_t seed_h, int retain_graph)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    st = backward_locked(T, root_h, seed_h, retain_graph);
    ad_unlock(T);
    return st;
}

double ad_bench_sweep(int64_t n)
{
    if (n < 1) return ad_err(AD_ERR_VALUE, "bench_sweep: n must be positive, got %lld", (long long)n);
    int64_t shape[1] = {1};
    int64_t x = ad_full(AD_F64, 0, shape, 1.0, 1);
    if (x < 0) return (double)x;
    int64_t y = x;
    ad_retain(y);
    for (int64_t i = 0; i < n; i++) {
        int64_t z = ad_scalar(AD_OP_ADD_S, y, 1.0);
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
