/* Layout ops: reshape, transpose, broadcast_to, cast. Values are copied into the new layout, so
 * every tensor stays contiguous and kernels never see strides from the user; a public reshape is a
 * view instead, which needs no strides: a contiguous tensor read with another shape. */
#include "../core.h"
#include <string.h>

int ad_mk_full(ad_tape *T, int dtype, int ndim, const int64_t *shape, double value, ad_node **out)
{
    ad_node *n;
    int st = ad_node_new(T, AD_OP_LEAF, dtype, ndim, shape, &n);
    if (st) return st;
    if (dtype == AD_F64) { double *d = n->data; for (int64_t i = 0; i < n->size; i++) d[i] = value; }
    else { float *d = n->data; float v = (float)value; for (int64_t i = 0; i < n->size; i++) d[i] = v; }
    *out = n;
    return AD_OK;
}

/* x's values read as `shape`: copied (ad_mk_reshape, what rules and sweeps build with), or a view
 * sharing them (the public ad_reshape, as PyTorch's reshape of a contiguous tensor, which every
 * tensor here is: no copy forward, and the gradient is handed down unchanged). */
static int reshape_to(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, int view, ad_node **out)
{
    char b1[160], b2[160];
    int64_t sh[AD_MAXDIM], known = 1;
    int infer = -1, st;
    ad_node *n;
    if (ndim < 0 || ndim > AD_MAXDIM || (ndim > 0 && !shape))
        return ad_err(AD_ERR_VALUE, "reshape: new shape must have 0 to %d dimensions, got %d", AD_MAXDIM, ndim);
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (shape[i] == -1) {
            if (infer >= 0) return ad_err(AD_ERR_VALUE, "reshape: can only specify one unknown dimension (-1)");
            infer = i;
        } else if (shape[i] < 0) {
            return ad_err(AD_ERR_VALUE, "reshape: negative dimension %lld in new shape", (long long)shape[i]);
        } else {
            if (shape[i] && known > INT64_MAX / shape[i]) return ad_err(AD_ERR_VALUE, "reshape: new shape is too large");
            known *= shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || x->size % known)
            return ad_err(AD_ERR_VALUE, "reshape: cannot reshape tensor of size %lld (shape %s) into shape %s",
                          (long long)x->size, ad_shape_str(b1, sizeof b1, x->ndim, x->shape), ad_shape_str(b2, sizeof b2, ndim, shape));
        sh[infer] = x->size / known;
        known = x->size;
    }
    if (known != x->size)
        return ad_err(AD_ERR_VALUE, "reshape: cannot reshape tensor of size %lld (shape %s) into shape %s",
                      (long long)x->size, ad_shape_str(b1, sizeof b1, x->ndim, x->shape), ad_shape_str(b2, sizeof b2, ndim, shape));
    if (view) {
        if ((st = ad_node_new_view(T, AD_OP_RESHAPE, x, ndim, sh, &n))) return st;
    } else {
        if ((st = ad_node_new(T, AD_OP_RESHAPE, x->dtype, ndim, sh, &n))) return st;
        ad_copy(n->data, x->data, (size_t)x->size * ad_itemsize(x->dtype));
    }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int ad_mk_reshape(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out)
{
    return reshape_to(T, x, ndim, shape, 0, out);
}

int ad_rec_reshape(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out)
{
    if (ndim == x->ndim && !memcmp(shape, x->shape, (size_t)ndim * sizeof(int64_t))) {
        x->refs++;
        *out = x;
        return AD_OK;
    }
    return ad_mk_reshape(T, x, ndim, shape, out);
}

int64_t ad_reshape(int64_t hx, int ndim, const int64_t *shape)
{
    AD_ONE_INPUT_ENTRY(hx, reshape_to(T, x, ndim, shape, 1, &n));
}

int ad_mk_transpose(ad_tape *T, ad_node *x, int naxes, const int64_t *perm, ad_node **out)
{
    int64_t p[AD_MAXDIM], sh[AD_MAXDIM], xs[AD_MAXDIM], src[AD_MAXDIM];
    ad_node *n;
    int st;
    if (naxes < 0) {
        for (int i = 0; i < x->ndim; i++) p[i] = x->ndim - 1 - i;
    } else {
        uint64_t seen = 0;
        if (naxes != x->ndim)
            return ad_err(AD_ERR_VALUE, "transpose: axes has %d entries but the tensor has %d dimensions", naxes, x->ndim);
        if (naxes > 0 && !perm) return ad_err(AD_ERR_VALUE, "transpose: axes is NULL");
        for (int i = 0; i < naxes; i++) {
            int64_t a = perm[i];
            if (a < -(int64_t)x->ndim || a >= x->ndim)
                return ad_err(AD_ERR_VALUE, "transpose: axis %lld is out of bounds for a tensor of dimension %d", (long long)a, x->ndim);
            if (a < 0) a += x->ndim;
            if (seen & ((uint64_t)1 << a)) return ad_err(AD_ERR_VALUE, "transpose: repeated axis %lld in axes", (long long)a);
            seen |= (uint64_t)1 << a;
            p[i] = a;
        }
    }
    ad_contig_strides(x->ndim, x->shape, xs);
    for (int i = 0; i < x->ndim; i++) { sh[i] = x->shape[p[i]]; src[i] = xs[p[i]]; }
    if ((st = ad_node_new(T, AD_OP_TRANSPOSE, x->dtype, x->ndim, sh, &n))) return st;
    ad_copy_strided(x->dtype, n->data, x->data, x->ndim, sh, src);
    if (x->ndim) {
        n->aux = ad_buf_alloc(T, (size_t)x->ndim * sizeof(int64_t));
        if (!n->aux) { ad_node_discard(T, n); return ad_err(AD_ERR_MEMORY, "transpose: out of memory"); }
        memcpy(n->aux, p, (size_t)x->ndim * sizeof(int64_t));
        n->aux_len = x->ndim;
    }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_transpose(int64_t hx, int naxes, const int64_t *perm)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_transpose(T, x, naxes, perm, &n));
}

int ad_mk_broadcast_to(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, ad_node **out)
{
    char b1[160], b2[160];
    ad_node *n;
    int st;
    int ok = ndim >= x->ndim && ndim <= AD_MAXDIM && (ndim == 0 || shape);
    for (int i = 0; ok && i < ndim; i++) {
        int j = i - (ndim - x->ndim);
        if (shape[i] < 0 || (j >= 0 && x->shape[j] != 1 && x->shape[j] != shape[i])) ok = 0;
    }
    if (!ok)
        return ad_err(AD_ERR_VALUE, "broadcast_to: cannot broadcast a tensor of shape %s to shape %s",
                      ad_shape_str(b1, sizeof b1, x->ndim, x->shape),
                      ad_shape_str(b2, sizeof b2, ndim > AD_MAXDIM || ndim < 0 || !shape ? 0 : ndim, shape));
    int64_t src[AD_MAXDIM];
    ad_bcast_strides(x->ndim, x->shape, ndim, shape, src);
    if ((st = ad_node_new(T, AD_OP_BROADCAST_TO, x->dtype, ndim, shape, &n))) return st;
    ad_copy_strided(x->dtype, n->data, x->data, ndim, shape, src);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_broadcast_to(int64_t hx, int ndim, const int64_t *shape)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_broadcast_to(T, x, ndim, shape, &n));
}

static void convert(int to, void *dst, int from, const void *src, int64_t size, int accumulate)
{
    if (to == from) {
        if (!accumulate) { ad_copy(dst, src, (size_t)size * ad_itemsize(to)); return; }
    }
#define CONV(TD, TS) do { TD *d = dst; const TS *s = src;                                 \
        if (accumulate) for (int64_t i = 0; i < size; i++) d[i] += (TD)s[i];             \
        else for (int64_t i = 0; i < size; i++) d[i] = (TD)s[i]; } while (0)
    if (to == AD_F64 && from == AD_F64) CONV(double, double);
    else if (to == AD_F64) CONV(double, float);
    else if (from == AD_F64) CONV(float, double);
    else CONV(float, float);
#undef CONV
}

int ad_mk_cast(ad_tape *T, ad_node *x, int dtype, ad_node **out)
{
    if (dtype != AD_F32 && dtype != AD_F64)
        return ad_err(AD_ERR_TYPE, "cast: dtype code %d is not float32 (0) or float64 (1)", dtype);
    ad_node *n;
    int st = ad_node_new(T, AD_OP_CAST, dtype, x->ndim, x->shape, &n);
    if (st) return st;
    convert(dtype, n->data, x->dtype, x->data, x->size, 0);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_cast(int64_t hx, int dtype)
{
    if (dtype != AD_F32 && dtype != AD_F64)
        return ad_err(AD_ERR_TYPE, "cast: dtype code %d is not float32 (0) or float64 (1)", dtype);
    AD_ONE_INPUT_ENTRY(hx, ad_mk_cast(T, x, dtype, &n));
}

int ad_vjp_layout(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)which;
    const ad_node *x = n->in[0];
    switch (n->op) {
    case AD_OP_RESHAPE:
    case AD_OP_BROADCAST_TO:   /* contribution is output-shaped: the sweep sums the broadcast axes */
    case AD_OP_CAST:
        convert(x->dtype, s->dst, n->dtype, g, s->size, s->accumulate);
        return AD_OK;
    case AD_OP_TRANSPOSE: {
        /* the cotangent, contiguous in output order, written to each element's input position */
        int64_t xs[AD_MAXDIM], ds[AD_MAXDIM], gs[AD_MAXDIM];
        ad_contig_strides(x->ndim, x->shape, xs);
        ad_contig_strides(n->ndim, n->shape, gs);
        for (int i = 0; i < n->ndim; i++) ds[i] = xs[n->aux[i]];
        ad_strided_pass(n->dtype, s->dst, ds, g, gs, n->ndim, n->shape, s->accumulate);
        return AD_OK;
    }
    default:
        return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
}

/* JVP: layout ops are linear, so each tangent direction moves exactly as the value did. */
int ad_jvp_layout(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    const ad_node *x = n->in[0];
    size_t sx = (size_t)x->size * ad_itemsize(x->dtype), so = (size_t)n->size * ad_itemsize(n->dtype);
    int64_t src[AD_MAXDIM];
    switch (n->op) {
    case AD_OP_RESHAPE:
    case AD_OP_CAST:
        /* contiguous in both layouts: all k directions convert in one pass */
        convert(n->dtype, tout, x->dtype, tin[0], k * n->size, 0);
        return AD_OK;
    case AD_OP_TRANSPOSE: {
        int64_t xs[AD_MAXDIM];
        ad_contig_strides(x->ndim, x->shape, xs);
        for (int i = 0; i < n->ndim; i++) src[i] = xs[n->aux[i]];
        break;
    }
    case AD_OP_BROADCAST_TO:
        ad_bcast_strides(x->ndim, x->shape, n->ndim, n->shape, src);
        break;
    default:
        return ad_err(AD_ERR_RUNTIME, "internal: no JVP for op %d", n->op);
    }
    for (int64_t r = 0; r < k; r++)
        ad_copy_strided(n->dtype, (char *)tout + r * so, (const char *)tin[0] + r * sx, n->ndim, n->shape, src);
    return AD_OK;
}

/* ---------------- differentiable rules (recorded ops, for higher order) ----------------
 * Layout ops are linear, so each rule is the op's own transpose: reshape back, the inverse
 * permutation, the cotangent as is for broadcast_to (its contribution is output-shaped and the
 * sweep sums the broadcast axes), a cast back to the input's dtype; the JVPs repeat the op on
 * the tangent. */
int ad_vjp_rec_layout(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    (void)which;
    ad_node *x = n->in[0];
    switch (n->op) {
    case AD_OP_RESHAPE:
        return ad_mk_reshape(T, g, x->ndim, x->shape, out);
    case AD_OP_TRANSPOSE: {
        int64_t inv[AD_MAXDIM];
        for (int i = 0; i < n->ndim; i++) inv[n->aux[i]] = i;
        return ad_mk_transpose(T, g, n->ndim, inv, out);
    }
    case AD_OP_BROADCAST_TO:
        g->refs++;
        *out = g;
        return AD_OK;
    case AD_OP_CAST:
        return ad_mk_cast(T, g, x->dtype, out);
    default:
        return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

int ad_jvp_rec_layout(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    switch (n->op) {
    case AD_OP_RESHAPE: return ad_mk_reshape(T, tin[0], n->ndim, n->shape, out);
    case AD_OP_TRANSPOSE: return ad_mk_transpose(T, tin[0], n->ndim, n->aux, out);
    case AD_OP_BROADCAST_TO: return ad_mk_broadcast_to(T, tin[0], n->ndim, n->shape, out);
    case AD_OP_CAST: return ad_mk_cast(T, tin[0], n->dtype, out);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

/* The forward of a recorded layout node from its input's values (the replay, replay.c): the same
 * copies the constructors above make. */
int ad_fwd_layout(ad_node *n, ad_node *const *ins)
{
    const ad_node *x = ins[0];
    int64_t src[AD_MAXDIM], xs[AD_MAXDIM];
    switch (n->op) {
    case AD_OP_RESHAPE:
        ad_copy(n->data, x->data, (size_t)x->size * ad_itemsize(x->dtype));
        return AD_OK;
    case AD_OP_TRANSPOSE:
        ad_contig_strides(x->ndim, x->shape, xs);
        for (int i = 0; i < x->ndim; i++) src[i] = xs[n->aux[i]];
        ad_copy_strided(x->dtype, n->data, x->data, x->ndim, n->shape, src);
        return AD_OK;
    case AD_OP_BROADCAST_TO:
        ad_bcast_strides(x->ndim, x->shape, n->ndim, n->shape, src);
        ad_copy_strided(x->dtype, n->data, x->data, n->ndim, n->shape, src);
        return AD_OK;
    case AD_OP_CAST:
        convert(n->dtype, n->data, x->dtype, x->data, x->size, 0);
        return AD_OK;
    default:
        return ad_err(AD_ERR_RUNTIME, "internal: no forward for op %d", n->op);
    }
}
