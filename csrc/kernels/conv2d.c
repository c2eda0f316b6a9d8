/* conv2d as one op (issue 17): y (N, O, OH, OW) = w (O, C, kh, kw) correlated with x (N, C, H, W)
 * under the window geometry of unfold (conv.c), for groups == 1 (nn/_conv.py runs grouped and
 * mixed-dtype convolutions as unfold and a matmul).
 *
 * It computes what unfold and a matmul compute, but one sample at a time through a scratch
 * buffer of that sample's columns (C*kh*kw x L), reused across the samples, instead of the whole
 * batch's columns: those (N*C*kh*kw x L, 14 MB for a (32, 16, 28, 28) input and 3x3 filters) were
 * written by unfold, read by the forward product and kept for the weight's gradient, and the
 * input's gradient wrote as many again for fold to read, so float32 convolutions ran at the speed
 * of memory rather than of the products (1.5x PyTorch's time). One sample's columns stay in cache
 * between the pass that makes them and the product that reads them; the weight's gradient makes
 * them again (cheaper than keeping the batch's) and sums every sample's product into the one
 * weight gradient (beta = 1), with no per-sample contributions for the sweep to add up.
 *   forward        y_n = W (O x K) @ cols_n (K x L)
 *   input grad     dx_n = fold(W^T (K x O) @ G_n (O x L))
 *   weight grad    dW += G_n (O x L) @ cols_n^T, over n in order
 * (the forward and the input gradient in float32 a few window rows at a time, chunk_rows).
 * Samples and chunks run in order on the calling thread, the same gemm calls whatever the thread
 * count, so results are bit-identical for any thread count (only the column passes split, over
 * planes, as unfold's do; the products do not go to the thread pool). Bilinear: the JVP is the
 * forward at each tangent, the second-order term the VJP with the other input at its tangent,
 * and the differentiable rules are unfold, fold, matmul and sum recorded. */
#include "conv.h"
#include <stdlib.h>
#include <string.h>

typedef struct {
    const ad_conv_geom *g;
    int dtype;
    int64_t n, c, o, k, l, oh, ow, in_size; /* in_size: one sample's C*H*W */
} conv_dims;

/* the dimensions of a convolution of x by w with geometry g (shapes checked by ad_mk_conv2d) */
static void dims(const ad_node *x, const ad_node *w, const ad_conv_geom *g, conv_dims *d)
{
    d->g = g;
    d->dtype = x->dtype;
    d->n = x->shape[0];
    d->c = x->shape[1];
    d->o = w->shape[0];
    d->k = w->shape[1] * w->shape[2] * w->shape[3];
    d->oh = (g->h + 2 * g->ph - g->dh * (g->kh - 1) - 1) / g->sh + 1;
    d->ow = (g->w + 2 * g->pw - g->dw * (g->kw - 1) - 1) / g->sw + 1;
    d->l = d->oh * d->ow;
    d->in_size = x->shape[1] * x->shape[2] * x->shape[3];
}

static void dims_of(const ad_node *n, conv_dims *d) { dims(n->in[0], n->in[1], (const ad_conv_geom *)n->aux, d); }

/* one sample's columns (K x L), reused by every sample */
static int scratch_for(const conv_dims *d, const char *op, void **out)
{
    size_t bytes = (size_t)(d->k * d->l) * ad_itemsize(d->dtype);
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return ad_err(AD_ERR_MEMORY, "%s: out of memory for one sample's columns (%zu bytes)", op, bytes);
    return AD_OK;
}

#define AT(p, i) ((char *)(p) + (size_t)(i) * isz)

/* Window rows per pass of the forward and the input gradient. float32 products of a filter bank
 * small enough for gemm_small.c's kernels (which read the columns in place) run on a few rows at
 * a time, about 96 KB of columns (at least 256 columns): those stay in L2 between the pass that
 * writes them and the product that reads them, where a whole sample's (450 KB at C*kh*kw = 144,
 * L = 784) spill. Others, on BLAS, which packs its operands anyway, take the whole sample. */
static int64_t chunk_rows(const conv_dims *d)
{
    if (d->dtype != AD_F32 || d->o * d->k > 6144 || d->k == 0) return d->oh;
    int64_t cols = (96 * 1024) / (d->k * (int64_t)sizeof(float));
    if (cols < 256) cols = 256;
    int64_t r = (cols + d->ow - 1) / d->ow;
    return r < d->oh ? r : d->oh;
}

/* y = [y +] conv(x, w) */
static void forward(const conv_dims *d, const void *x, const void *w, void *y, int beta_one, void *cols)
{
    size_t isz = ad_itemsize(d->dtype);
    int64_t rows = chunk_rows(d);
    for (int64_t s = 0; s < d->n; s++)
        for (int64_t rb = 0; rb < d->oh; rb += rows) {
            int64_t nr = d->oh - rb < rows ? d->oh - rb : rows, m = nr * d->ow;
            ad_conv_windows_rows(1, d->dtype, d->g, d->c, d->oh, d->ow, rb, nr, AT(x, s * d->in_size), cols, 0);
            ad_gemm(d->dtype, 0, 0, d->o, m, d->k, w, d->k, cols, m, beta_one, AT(y, s * d->o * d->l + rb * d->ow),
                    d->l);
        }
}

/* dx = [dx +] the input's gradient for cotangent g */
static void grad_input(const conv_dims *d, const void *w, const void *g, void *dx, int accumulate, void *cols)
{
    size_t isz = ad_itemsize(d->dtype);
    int64_t rows = chunk_rows(d);
    for (int64_t s = 0; s < d->n; s++) {
        void *dxs = AT(dx, s * d->in_size);
        if (!accumulate) memset(dxs, 0, (size_t)d->in_size * isz);
        for (int64_t rb = 0; rb < d->oh; rb += rows) {
            int64_t nr = d->oh - rb < rows ? d->oh - rb : rows, m = nr * d->ow;
            ad_gemm(d->dtype, 1, 0, d->k, m, d->o, w, d->k, AT(g, s * d->o * d->l + rb * d->ow), d->l, 0, cols, m);
            ad_conv_windows_rows(0, d->dtype, d->g, d->c, d->oh, d->ow, rb, nr, cols, dxs, 1);
        }
    }
}

/* dw = [dw +] the weight's gradient for cotangent g, the samples' products summed in order */
static void grad_weight(const conv_dims *d, const void *x, const void *g, void *dw, int accumulate, void *cols)
{
    size_t isz = ad_itemsize(d->dtype);
    if (d->n == 0 && !accumulate) memset(dw, 0, (size_t)(d->o * d->k) * isz);
    for (int64_t s = 0; s < d->n; s++) {
        ad_conv_windows(1, d->dtype, d->g, d->c, d->oh, d->ow, AT(x, s * d->in_size), cols, 0);
        ad_gemm(d->dtype, 0, 1, d->o, d->k, d->l, AT(g, s * d->o * d->l), d->l, cols, d->l, accumulate || s > 0,
                dw, d->k);
    }
}

int ad_mk_conv2d(ad_tape *T, ad_node *x, ad_node *w, const ad_conv_geom *geom, ad_node **out)
{
    char b1[160], b2[160];
    if (x->ndim != 4 || w->ndim != 4 || x->shape[1] != w->shape[1] || x->dtype != w->dtype)
        return ad_err(AD_ERR_VALUE, "conv2d: input must be (N, C, H, W) and weight (O, C, kh, kw) of the same "
                      "dtype, got input %s (%s) and weight %s (%s)", ad_shape_str(b1, sizeof b1, x->ndim, x->shape),
                      ad_dtype_name(x->dtype), ad_shape_str(b2, sizeof b2, w->ndim, w->shape), ad_dtype_name(w->dtype));
    ad_conv_geom g = *geom;
    g.kh = w->shape[2];
    g.kw = w->shape[3];
    g.h = x->shape[2];
    g.w = x->shape[3];
    int64_t oh, ow, k, l, size, cols;
    int st = ad_conv_geom_check("conv2d", &g, &oh, &ow);
    if (st) return st;
    int64_t sh[4] = {x->shape[0], w->shape[0], oh, ow};
    if (__builtin_mul_overflow(w->shape[1], g.kh * g.kw, &k) || __builtin_mul_overflow(oh, ow, &l) ||
        __builtin_mul_overflow(k, l, &cols) || __builtin_mul_overflow(sh[0], sh[1], &size) ||
        __builtin_mul_overflow(size, l, &size) || cols > ((int64_t)1 << 40))
        return ad_err(AD_ERR_VALUE, "conv2d: input %s and weight %s give an output or columns too large",
                      ad_shape_str(b1, sizeof b1, x->ndim, x->shape), ad_shape_str(b2, sizeof b2, w->ndim, w->shape));
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_CONV2D, x->dtype, 4, sh, &n))) return st;
    n->aux = ad_buf_alloc(T, AD_CONV_GEOM_LEN * sizeof(int64_t));
    if (!n->aux) { ad_node_discard(T, n); return ad_err(AD_ERR_MEMORY, "conv2d: out of memory"); }
    n->aux_len = AD_CONV_GEOM_LEN;
    memcpy(n->aux, &g, sizeof g);
    if (n->size) {
        conv_dims d;
        void *c;
        dims(x, w, (const ad_conv_geom *)n->aux, &d);
        if ((st = scratch_for(&d, "conv2d", &c))) { ad_node_discard(T, n); return st; }
        forward(&d, x->data, w->data, n->data, 0, c);
        free(c);
    }
    ad_node *ins[2] = {x, w};
    if ((st = ad_record(T, n, 2, ins))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_conv2d(int64_t hx, int64_t hw, const int64_t *stride, const int64_t *padding, const int64_t *dilation)
{
    if (!stride || !padding || !dilation)
        return ad_err(AD_ERR_VALUE, "conv2d: stride, padding and dilation must each be two integers, got NULL");
    ad_conv_geom g = {1, 1, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], 0, 0};
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *x, *w, *n;
    if (!(st = ad_resolve(T, hx, &x)) && !(st = ad_resolve(T, hw, &w)) && !(st = ad_mk_conv2d(T, x, w, &g, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

int ad_vjp_conv2d(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    conv_dims d;
    dims_of(n, &d);
    void *c;
    int st = scratch_for(&d, "conv2d backward", &c);
    if (st) return st;
    if (which == 0) grad_input(&d, n->in[1]->data, g, s->dst, s->accumulate, c);
    else grad_weight(&d, n->in[0]->data, g, s->dst, s->accumulate, c);
    free(c);
    return AD_OK;
}

int ad_jvp_conv2d(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    conv_dims d;
    dims_of(n, &d);
    size_t isz = ad_itemsize(n->dtype);
    void *c;
    int st = scratch_for(&d, "conv2d forward-mode", &c);
    if (st) return st;
    for (int64_t r = 0; r < k; r++) {
        void *y = AT(tout, r * n->size);
        if (tin[0]) forward(&d, AT(tin[0], r * n->in[0]->size), n->in[1]->data, y, 0, c);
        if (tin[1]) forward(&d, n->in[0]->data, AT(tin[1], r * n->in[1]->size), y, tin[0] != NULL, c);
        if (!tin[0] && !tin[1]) memset(y, 0, (size_t)n->size * isz);
    }
    free(c);
    return AD_OK;
}

/* bilinear: the derivative of the VJP for input `which` along the tangents is that VJP with the
 * other input moved to its tangent (zero where it has none) */
int ad_vjp2_conv2d(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                   ad_sink *s)
{
    (void)T; (void)tout;
    int other = 1 - which;
    if (!tin[other]) {
        if (!s->accumulate) memset(s->dst, 0, (size_t)s->size * ad_itemsize(n->dtype));
        return AD_OK;
    }
    conv_dims d;
    dims_of(n, &d);
    void *c;
    int st = scratch_for(&d, "conv2d second order", &c);
    if (st) return st;
    if (which == 0) grad_input(&d, tin[1], g, s->dst, s->accumulate, c);
    else grad_weight(&d, tin[0], g, s->dst, s->accumulate, c);
    free(c);
    return AD_OK;
}

/* The rules as recorded ops on the (N, C*kh*kw, L) columns:
 *   dx = fold(W^T @ G),  dW = sum over n of G_n @ unfold(x)_n^T */
int ad_vjp_rec_conv2d(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    conv_dims d;
    dims_of(n, &d);
    int64_t gsh[3] = {d.n, d.o, d.l}, wsh[2] = {d.o, d.k}, swap[3] = {0, 2, 1}, t2[2] = {1, 0};
    ad_node *g3 = NULL, *a = NULL, *b = NULL, *c = NULL, *e = NULL;
    int st = ad_rec_reshape(T, g, 3, gsh, &g3);
    if (st) goto done;
    if (which == 0) {
        if (!(st = ad_rec_reshape(T, n->in[1], 2, wsh, &a)) && !(st = ad_mk_transpose(T, a, 2, t2, &b)) &&
            !(st = ad_mk_matmul(T, b, g3, &c)))
            st = ad_mk_fold(T, c, d.g, out);
    } else {
        if (!(st = ad_mk_unfold(T, n->in[0], d.g, &a)) && !(st = ad_mk_transpose(T, a, 3, swap, &b)) &&
            !(st = ad_mk_matmul(T, g3, b, &c)) && !(st = ad_mk_reduce(T, AD_OP_SUM, c, 1, 0, &e)))
            st = ad_rec_reshape(T, e, 4, n->in[1]->shape, out);
    }
done:
    if (g3) ad_node_unref(T, g3);
    if (a) ad_node_unref(T, a);
    if (b) ad_node_unref(T, b);
    if (c) ad_node_unref(T, c);
    if (e) ad_node_unref(T, e);
    return st;
}

/* d conv(x, w) = conv(dx, w) + conv(x, dw) */
int ad_jvp_rec_conv2d(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    const ad_conv_geom *g = (const ad_conv_geom *)n->aux;
    ad_node *ta = NULL, *tb = NULL;
    int st = AD_OK;
    if (tin[0] && (st = ad_mk_conv2d(T, tin[0], n->in[1], g, tin[1] ? &ta : out))) return st;
    if (tin[1]) {
        if ((st = ad_mk_conv2d(T, n->in[0], tin[1], g, tin[0] ? &tb : out))) goto done;
        if (tin[0]) st = ad_mk_binary(T, AD_OP_ADD, ta, tb, out);
    }
done:
    if (ta) ad_node_unref(T, ta);
    if (tb) ad_node_unref(T, tb);
    return st;
}

/* The forward of a recorded conv2d from its inputs' values (the replay, replay.c). */
int ad_fwd_conv2d(ad_node *n, ad_node *const *ins)
{
    conv_dims d;
    void *c;
    dims(ins[0], ins[1], (const ad_conv_geom *)n->aux, &d);
    if (!n->size) return AD_OK;
    int st = scratch_for(&d, "conv2d", &c);
    if (st) return st;
    forward(&d, ins[0]->data, ins[1]->data, n->data, 0, c);
    free(c);
    return AD_OK;
}
