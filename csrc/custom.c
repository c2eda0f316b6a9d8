/* Custom functions, gradient hooks and read-only graph introspection.
 *
 * A custom node (AD_OP_CUSTOM) is an op whose value the bindings computed and whose derivative
 * rules they hold: the sweeps treat it like any node, except that its VJP / JVP calls the one
 * callback the bindings set (ad_set_custom_callback) with the node's handle as the key to their
 * records. A hooked node (F_HOOK) is any node whose complete gradient the bindings want to see
 * (and may replace) during a reverse sweep. Both go through call_rule, which unlocks the tape for
 * the call: the rule runs ordinary ops on this tape (the lock is not recursive), and another
 * thread waiting to drop one of this tape's tensors must not wait behind Python code. The sweep
 * keeps a reference on everything it still needs and holds the creation order (no compaction),
 * so the nodes the rule creates or drops meanwhile cannot pull anything from under it.
 *
 * The bindings keep a record per custom or hooked node; when such a node is freed (on any thread,
 * tape locked) its handle goes on a queue the bindings drain (ad_custom_reap), rather than calling
 * into them under the lock. */
#include "core.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic(ad_custom_fn) g_callback;
static _Atomic int64_t g_live;                 /* custom + hooked nodes alive, every tape */
static pthread_mutex_t g_dead_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t *g_dead;                        /* freed keys not yet reaped */
static int64_t g_dead_len, g_dead_cap;

void ad_set_custom_callback(ad_custom_fn fn) { atomic_store(&g_callback, fn); }

int64_t ad_custom_live(void) { return atomic_load(&g_live); }

void ad_custom_freed(ad_tape *T, ad_node *n)
{
    if (n->op != AD_OP_CUSTOM && !(n->flags & F_HOOK)) return;
    atomic_fetch_sub(&g_live, 1);
    int64_t key = ad_handle(T, n);
    pthread_mutex_lock(&g_dead_lock);
    if (g_dead_len == g_dead_cap) {
        int64_t cap = g_dead_cap ? 2 * g_dead_cap : 64;
        int64_t *grown = realloc(g_dead, (size_t)cap * sizeof *grown);
        /* no memory: the bindings' record of this node stays until exit (a leak, not a crash) */
        if (grown) { g_dead = grown; g_dead_cap = cap; }
    }
    if (g_dead_len < g_dead_cap) g_dead[g_dead_len++] = key;
    pthread_mutex_unlock(&g_dead_lock);
}

int ad_custom_reap(int64_t *keys, int cap)
{
    if (cap < 0 || (cap > 0 && !keys)) return ad_err(AD_ERR_VALUE, "custom_reap: bad buffer");
    pthread_mutex_lock(&g_dead_lock);
    int n = g_dead_len < cap ? (int)g_dead_len : cap;
    if (n > 0) memcpy(keys, g_dead + (g_dead_len - n), (size_t)n * sizeof *keys);   /* g_dead may be NULL */
    g_dead_len -= n;
    pthread_mutex_unlock(&g_dead_lock);
    return n;
}

void ad_add_into(int dtype, void *dst, int acc, const void *src, int64_t n)
{
    if (!acc) { ad_copy(dst, src, (size_t)n * ad_itemsize(dtype)); return; }
    if (dtype == AD_F64) { double *d = dst; const double *s = src; for (int64_t i = 0; i < n; i++) d[i] += s[i]; }
    else { float *d = dst; const float *s = src; for (int64_t i = 0; i < n; i++) d[i] += s[i]; }
}

static int same_shape(const ad_node *a, int ndim, const int64_t *shape)
{
    return a->ndim == ndim && !memcmp(a->shape, shape, (size_t)ndim * sizeof(int64_t));
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case AD_CUSTOM_VJP: case AD_CUSTOM_VJP_GRAPH: return "backward rule";
    case AD_CUSTOM_JVP: case AD_CUSTOM_JVP_GRAPH: return "forward-mode (jvp) rule";
    default: return "gradient hook";
    }
}

/* Call the bindings for node n with T unlocked; args[i] NULL passes 0. On success res[i] holds a
 * node with the reference the bindings handed over, or NULL (0). On failure nothing is held. */
static int call_rule(ad_tape *T, ad_node *n, int kind, int nargs, ad_node *const *args, int nres, ad_node **res)
{
    for (int i = 0; i < nres; i++) res[i] = NULL;
    ad_custom_fn fn = atomic_load(&g_callback);
    if (!fn) return ad_err(AD_ERR_RUNTIME, "%s node: no callback for custom rules is set (ad_set_custom_callback)",
                           ad_ops[n->op].name);
    int64_t hin_inline[4], hres_inline[4];
    int64_t *hin = nargs <= 4 ? hin_inline : malloc((size_t)nargs * sizeof *hin);
    int64_t *hres = nres <= 4 ? hres_inline : calloc((size_t)nres, sizeof *hres);
    int st = AD_OK;
    if (!hin || !hres) { st = ad_err(AD_ERR_MEMORY, "custom rule: out of memory"); goto done; }
    for (int i = 0; i < nargs; i++) hin[i] = args[i] ? ad_handle(T, args[i]) : 0;
    for (int i = 0; i < nres; i++) hres[i] = 0;
    int64_t key = ad_handle(T, n);
    ad_unlock(T);
    int rc = fn(kind, key, nargs, hin, nres, hres);
    ad_tape *again;
    ad_lock_current(&again);   /* the thread's tape, which exists: cannot fail */
    int bad = -1;
    for (int i = 0; i < nres; i++) {
        if (!hres[i]) continue;
        if (ad_resolve(T, hres[i], &res[i])) { res[i] = NULL; bad = i; }
    }
    if (rc || bad >= 0) {
        for (int i = 0; i < nres; i++)
            if (res[i]) { ad_node_unref(T, res[i]); res[i] = NULL; }
        st = rc ? ad_err(AD_ERR_RUNTIME, "the %s of a custom function or hook raised an exception", kind_name(kind))
                : ad_err(AD_ERR_HANDLE, "the %s of a custom function or hook returned an invalid handle for result %d",
                         kind_name(kind), bad);
    }
done:
    if (hin != hin_inline) free(hin);
    if (hres != hres_inline) free(hres);
    return st;
}

/* A rule's result must be shaped like `like` with its dtype: checked here so that no sweep ever
 * adds a wrongly shaped buffer (the bindings check first, with the function's name). */
static int check_result(const ad_node *n, int kind, int which, const ad_node *r, const ad_node *like)
{
    if (!r || (r->dtype == like->dtype && same_shape(r, like->ndim, like->shape))) return AD_OK;
    char b1[160], b2[160];
    return ad_err(AD_ERR_VALUE, "the %s of a %s node returned shape %s and dtype %s for %s %d, which has shape %s "
                  "and dtype %s", kind_name(kind), ad_ops[n->op].name, ad_shape_str(b1, sizeof b1, r->ndim, r->shape),
                  ad_dtype_name(r->dtype), kind == AD_CUSTOM_VJP || kind == AD_CUSTOM_VJP_GRAPH ? "input" : "output",
                  which, ad_shape_str(b2, sizeof b2, like->ndim, like->shape), ad_dtype_name(like->dtype));
}

static void drop_all(ad_tape *T, int n, ad_node **res)
{
    for (int i = 0; i < n; i++)
        if (res[i]) { ad_node_unref(T, res[i]); res[i] = NULL; }
}

/* A constant node shaped like n holding `values` (one value for all when uniform). */
static int node_from(ad_tape *T, const ad_node *like, const void *values, int uniform, ad_node **out)
{
    int st = ad_node_new(T, AD_OP_LEAF, like->dtype, like->ndim, like->shape, out);
    if (st) return st;
    size_t isz = ad_itemsize(like->dtype);
    if (!uniform) { ad_copy((*out)->data, values, (size_t)like->size * isz); return AD_OK; }
    for (int64_t i = 0; i < like->size; i++) memcpy((char *)(*out)->data + i * isz, values, isz);
    return AD_OK;
}

static int vjp_results(ad_tape *T, ad_node *n, int kind, ad_node *g, ad_node **res)
{
    int st = call_rule(T, n, kind, 1, &g, n->nin, res);
    for (int j = 0; j < n->nin && !st; j++) {
        /* a contribution to an input that does not require grad is never used */
        if (res[j] && !(n->in[j]->flags & F_REQUIRES_GRAD)) { ad_node_unref(T, res[j]); res[j] = NULL; }
        st = check_result(n, kind, j, res[j], n->in[j]);
    }
    if (st) drop_all(T, n->nin, res);
    return st;
}

int ad_custom_vjp(ad_tape *T, ad_node *n, const void *g, int g_uniform, ad_node **res)
{
    ad_node *gn;
    int st = node_from(T, n, g, g_uniform, &gn);
    if (st) return st;
    st = vjp_results(T, n, AD_CUSTOM_VJP, gn, res);
    ad_node_unref(T, gn);
    return st;
}

int ad_custom_vjp_graph(ad_tape *T, ad_node *n, ad_node *g, ad_node **res)
{
    return vjp_results(T, n, AD_CUSTOM_VJP_GRAPH, g, res);
}

int ad_hook_numeric(ad_tape *T, ad_node *n, void *g)
{
    ad_node *gn, *r;
    int st = node_from(T, n, g, 0, &gn);
    if (st) return st;
    st = call_rule(T, n, AD_CUSTOM_HOOK, 1, &gn, 1, &r);
    ad_node_unref(T, gn);
    if (!st && (st = check_result(n, AD_CUSTOM_HOOK, 0, r, n)) == AD_OK && r)
        ad_copy(g, r->data, (size_t)n->size * ad_itemsize(n->dtype));
    if (!st && r) ad_node_unref(T, r);
    else if (r) ad_node_unref(T, r);
    return st;
}

int ad_hook_graph(ad_tape *T, ad_node *n, ad_node **g)
{
    ad_node *r;
    int st = call_rule(T, n, AD_CUSTOM_HOOK, 1, g, 1, &r);
    if (!st) st = check_result(n, AD_CUSTOM_HOOK, 0, r, n);
    if (st) { if (r) ad_node_unref(T, r); return st; }
    if (r) { ad_node_unref(T, *g); *g = r; }
    return AD_OK;
}

/* Forward mode, k directions: one call per direction, each input's tangent row as a node. */
int ad_jvp_custom(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    ad_node *inl[4], **args = n->nin <= 4 ? inl : calloc((size_t)n->nin, sizeof *args);
    if (!args) return ad_err(AD_ERR_MEMORY, "custom jvp: out of memory");
    size_t row = (size_t)n->size * ad_itemsize(n->dtype);
    int st = AD_OK;
    for (int64_t r = 0; r < k && !st; r++) {
        for (int j = 0; j < n->nin; j++) args[j] = NULL;
        for (int j = 0; j < n->nin && !st; j++) {
            const ad_node *m = n->in[j];
            if (tin[j]) st = node_from(T, m, (const char *)tin[j] + r * m->size * ad_itemsize(m->dtype), 0, &args[j]);
        }
        ad_node *out = NULL;
        if (!st) st = call_rule(T, n, AD_CUSTOM_JVP, n->nin, args, 1, &out);
        if (!st) st = check_result(n, AD_CUSTOM_JVP, 0, out, n);
        if (!st) {
            if (out) ad_copy((char *)tout + r * row, out->data, row);
            else memset((char *)tout + r * row, 0, row);
        }
        if (out) ad_node_unref(T, out);
        drop_all(T, n->nin, args);
    }
    if (args != inl) free(args);
    return st;
}

int ad_jvp_rec_custom(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    int st = call_rule(T, n, AD_CUSTOM_JVP_GRAPH, n->nin, tin, 1, out);
    if (!st) st = check_result(n, AD_CUSTOM_JVP_GRAPH, 0, *out, n);
    if (!st && !*out) st = ad_mk_full(T, n->dtype, n->ndim, n->shape, 0, out);
    else if (st && *out) { ad_node_unref(T, *out); *out = NULL; }
    return st;
}

/* The sweeps ask a custom node for all of its inputs' contributions at once (ad_custom_vjp); the
 * per-input table entries exist only so that nothing reaches a NULL. */
int ad_vjp_custom_unused(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)g; (void)which; (void)s;
    return ad_err(AD_ERR_RUNTIME, "internal: a %s node reached a per-input VJP", ad_ops[n->op].name);
}

int ad_vjp_rec_custom_unused(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    (void)T; (void)g; (void)which; (void)out;
    return ad_err(AD_ERR_RUNTIME, "internal: a %s node reached a per-input recorded VJP", ad_ops[n->op].name);
}

/* ---------------- public entry points ---------------- */

int64_t ad_custom(int n_in, const int64_t *ins, int64_t value)
{
    if (n_in < 0 || (n_in > 0 && !ins)) return ad_err(AD_ERR_VALUE, "custom: invalid list of %d inputs", n_in);
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *inl[4], **nodes = n_in <= 4 ? inl : malloc((size_t)n_in * sizeof *nodes), *v, *n = NULL;
    int64_t h;
    if (!nodes) { h = ad_err(AD_ERR_MEMORY, "custom: out of memory"); goto done; }
    if ((h = ad_resolve(T, value, &v))) goto done;
    for (int i = 0; i < n_in; i++)
        if ((h = ad_resolve(T, ins[i], &nodes[i]))) goto done;
    if ((h = ad_node_new(T, AD_OP_CUSTOM, v->dtype, v->ndim, v->shape, &n))) goto done;
    ad_copy(n->data, v->data, (size_t)v->size * ad_itemsize(v->dtype));
    h = ad_finish(T, n, n_in, nodes);
    /* recorded: the bindings keep a record for it until ad_custom_reap reports it freed */
    if (h > 0 && n->op == AD_OP_CUSTOM) atomic_fetch_add(&g_live, 1);
done:
    if (nodes != inl) free(nodes);
    ad_unlock(T);
    return h;
}

int ad_set_hook(int64_t h)
{
    ad_tape *T;
    ad_node *n;
    int st = ad_lock_current(&T);
    if (st) return st;
    if (!(st = ad_resolve(T, h, &n))) {
        if (!(n->flags & F_REQUIRES_GRAD))
            st = ad_err(AD_ERR_RUNTIME, "register_hook: the tensor does not require grad, so no gradient will "
                        "ever flow into it");
        else if (!(n->flags & F_HOOK)) {
            n->flags |= F_HOOK;
            atomic_fetch_add(&g_live, 1);
        }
    }
    ad_unlock(T);
    return st;
}

int ad_node_inputs(int64_t h, ad_node_info_t *info, int cap, int64_t *inputs)
{
    if (!info) return ad_err(AD_ERR_VALUE, "node_inputs: info is NULL");
    if (cap < 0 || (cap > 0 && !inputs)) return ad_err(AD_ERR_VALUE, "node_inputs: bad inputs buffer");
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *n;
    /* an interior node whose value nobody reads has none (drop_unread_value), yet is in the graph */
    if ((st = ad_resolve_record(T, h, &n))) { ad_unlock(T); return st; }
    memset(info, 0, sizeof *info);
    info->op = n->op;
    info->dtype = n->dtype;
    info->ndim = n->ndim;
    memcpy(info->shape, n->shape, sizeof info->shape);
    info->bytes = (int64_t)(sizeof(ad_node) + (n->data ? (size_t)n->size * ad_itemsize(n->dtype) : 0) +
                            (size_t)n->aux_len * sizeof(int64_t));
    info->nin = n->nin;
    info->requires_grad = !!(n->flags & F_REQUIRES_GRAD);
    info->is_leaf = !!(n->flags & F_LEAF);
    info->has_grad = n->grad != NULL;
    info->graph_released = !!(n->flags & F_RELEASED);
    info->has_hook = !!(n->flags & F_HOOK);
    for (int i = 0; i < n->nin && i < cap; i++) inputs[i] = ad_handle(T, n->in[i]);
    ad_unlock(T);
    return AD_OK;
}
