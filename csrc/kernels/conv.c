/* Convolution as two linear ops that are each other's adjoint:
 *   unfold (im2col): x (N, C, H, W) -> cols (N, C*kh*kw, L), cols[n, (c*kh + i)*kw + j, r*OW + s] =
 *                    x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw] (0 where that falls in the padding);
 *   fold (col2im):   cols -> x, every column entry added back at the position unfold read it from,
 *                    so overlapping windows sum.
 * The layout is PyTorch's F.unfold / F.fold. A convolution is then unfold and one matmul on BLAS
 * (nn/functional.py); its gradient is a matmul and a fold. Both ops are linear: the VJP of each is
 * the other, the JVP is the op itself on the tangent, the second-order term is zero and the
 * differentiable rule is the other op recorded, so convolutions of every order come for free. */
#include "conv.h"
#include <string.h>

/* Every (n, c) plane of the image owns one contiguous block of kh*kw*L columns entries, so both
 * kernels run plane by plane: planes are independent, which makes them split across threads with
 * results identical for any thread count. */
typedef struct {
    int dtype;
    const ad_conv_geom *g;
    int64_t oh, ow;
    int64_t rb, nr;            /* the window rows [rb, rb + nr) of the oh, as columns of nr * ow */
    const void *src;
    void *dst;
    int acc;                   /* unfold: add into dst instead of writing; fold: add into dst planes */
} conv_job;

/* valid output columns [lo, hi) of kernel column offset xoff: 0 <= s*sw + xoff < w */
static void col_range(int64_t xoff, int64_t sw, int64_t w, int64_t ow, int64_t *lo, int64_t *hi)
{
    int64_t l = xoff >= 0 ? 0 : (-xoff + sw - 1) / sw;
    int64_t h = w - 1 - xoff < 0 ? 0 : (w - 1 - xoff) / sw + 1;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* The rows copied are short (an image row, tens of elements): a call to memcpy per row costs more
 * than the copy, so GCC must not turn the copy loops back into calls. */
#define NO_MEMCPY __attribute__((optimize("no-tree-loop-distribute-patterns")))
#define DEF_CONV_KERNELS(SUF, T)                                                                        \
    NO_MEMCPY static void im2col_##SUF(void *ctx, int64_t p0, int64_t p1)                               \
    {                                                                                                   \
        const conv_job *j = ctx;                                                                        \
        const ad_conv_geom *g = j->g;                                                                   \
        const int64_t L = j->nr * j->ow, ow = j->ow;                                                    \
        for (int64_t p = p0; p < p1; p++) {                                                             \
            const T *xb = (const T *)j->src + p * g->h * g->w;                                          \
            T *cb = (T *)j->dst + p * g->kh * g->kw * L;                                                \
            for (int64_t ki = 0; ki < g->kh; ki++)                                                      \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                                \
                    T *restrict row = cb + (ki * g->kw + kj) * L;                                       \
                    int64_t xoff = kj * g->dw - g->pw, lo, hi;                                          \
                    col_range(xoff, g->sw, g->w, ow, &lo, &hi);                                         \
                    /* windows as wide as the image, stride 1: the image's rows follow each other  \
                     * as the windows' do, so the rows in the image are one copy, and the columns   \
                     * outside [lo, hi) (the neighbouring rows' ends) are then set to zero */       \
                    int64_t r0 = g->ph - ki * g->dh - j->rb, r1 = g->h + g->ph - ki * g->dh - j->rb;    \
                    r0 = r0 < 0 ? 0 : r0;                                                               \
                    r1 = r1 > j->nr ? j->nr : r1;                                                       \
                    if (!j->acc && g->sh == 1 && g->sw == 1 && ow == g->w && hi > lo && r1 > r0) {      \
                        memset(row, 0, (size_t)(r0 * ow) * sizeof(T));                                  \
                        memset(row + r1 * ow, 0, (size_t)((j->nr - r1) * ow) * sizeof(T));              \
                        ad_copy(row + r0 * ow + lo, xb + (j->rb + r0 - g->ph + ki * g->dh) * g->w + xoff + lo, \
                               (size_t)((r1 - r0 - 1) * ow + hi - lo) * sizeof(T));                     \
                        for (int64_t r = r0; r < r1; r++) {                                             \
                            for (int64_t c = 0; c < lo; c++) row[r * ow + c] = 0;                       \
                            for (int64_t c = hi; c < ow; c++) row[r * ow + c] = 0;                      \
                        }                                                                               \
                        continue;                                                                       \
                    }                                                                                   \
                    for (int64_t r = 0; r < j->nr; r++) {                                               \
                        T *restrict o = row + r * ow;                                                   \
                        int64_t ih = (j->rb + r) * g->sh - g->ph + ki * g->dh;                          \
                        if (ih < 0 || ih >= g->h) {                                                     \
                            if (!j->acc) memset(o, 0, (size_t)ow * sizeof(T));                          \
                            continue;                                                                   \
                        }                                                                               \
                        const T *restrict s = xb + ih * g->w + xoff;                                    \
                        if (j->acc) {                                                                   \
                            for (int64_t c = lo; c < hi; c++) o[c] += s[c * g->sw];                     \
                            continue;                                                                   \
                        }                                                                               \
                        for (int64_t c = 0; c < lo; c++) o[c] = 0;                                      \
                        if (g->sw == 1) for (int64_t c = lo; c < hi; c++) o[c] = s[c];                  \
                        else for (int64_t c = lo; c < hi; c++) o[c] = s[c * g->sw];                     \
                        for (int64_t c = hi; c < ow; c++) o[c] = 0;                                     \
                    }                                                                                   \
                }                                                                                       \
        }                                                                                               \
    }                                                                                                   \
    static void col2im_##SUF(void *ctx, int64_t p0, int64_t p1)                                         \
    {                                                                                                   \
        const conv_job *j = ctx;                                                                        \
        const ad_conv_geom *g = j->g;                                                                   \
        const int64_t L = j->nr * j->ow, ow = j->ow;                                                    \
        for (int64_t p = p0; p < p1; p++) {                                                             \
            T *xb = (T *)j->dst + p * g->h * g->w;                                                      \
            const T *cb = (const T *)j->src + p * g->kh * g->kw * L;                                    \
            if (!j->acc) memset(xb, 0, (size_t)(g->h * g->w) * sizeof(T));                              \
            for (int64_t ki = 0; ki < g->kh; ki++)                                                      \
                for (int64_t kj = 0; kj < g->kw; kj++) {                                                \
                    const T *restrict row = cb + (ki * g->kw + kj) * L;                                 \
                    int64_t xoff = kj * g->dw - g->pw, lo, hi;                                          \
                    col_range(xoff, g->sw, g->w, ow, &lo, &hi);                                         \
                    for (int64_t r = 0; r < j->nr; r++) {                                               \
                        int64_t ih = (j->rb + r) * g->sh - g->ph + ki * g->dh;                          \
                        if (ih < 0 || ih >= g->h) continue;                                             \
                        const T *restrict o = row + r * ow;                                             \
                        T *restrict d = xb + ih * g->w + xoff;                                          \
                        if (g->sw == 1) for (int64_t c = lo; c < hi; c++) d[c] += o[c];                 \
                        else for (int64_t c = lo; c < hi; c++) d[c * g->sw] += o[c];                    \
                    }                                                                                   \
                }                                                                                       \
        }                                                                                               \
    }
DEF_CONV_KERNELS(f32, float)
DEF_CONV_KERNELS(f64, double)

/* Planes per thread part: about 64K elements of columns each, so small convolutions stay on the
 * calling thread. */
void ad_conv_windows_rows(int unfold, int dtype, const ad_conv_geom *g, int64_t planes, int64_t oh, int64_t ow,
                          int64_t rb, int64_t nr, const void *src, void *dst, int acc)
{
    conv_job j = {dtype, g, oh, ow, rb, nr, src, dst, acc};
    int64_t per_plane = g->kh * g->kw * nr * ow + g->h * g->w;
    int64_t grain = per_plane >= 65536 ? 1 : 65536 / (per_plane ? per_plane : 1);
    ad_par_fn fn = unfold ? (dtype == AD_F64 ? im2col_f64 : im2col_f32) : (dtype == AD_F64 ? col2im_f64 : col2im_f32);
    if (planes) ad_parallel(planes, grain, 1, fn, &j);
}

void ad_conv_windows(int unfold, int dtype, const ad_conv_geom *g, int64_t planes, int64_t oh, int64_t ow,
                     const void *src, void *dst, int acc)
{
    ad_conv_windows_rows(unfold, dtype, g, planes, oh, ow, 0, oh, src, dst, acc);
}

/* The output size of the windows, or an error naming the op and every parameter. Each parameter
 * is bounded so that no product below overflows. */
int ad_conv_geom_check(const char *op, const ad_conv_geom *g, int64_t *oh, int64_t *ow)
{
    const int64_t big = (int64_t)1 << 31;
    int ok = g->kh >= 1 && g->kw >= 1 && g->sh >= 1 && g->sw >= 1 && g->dh >= 1 && g->dw >= 1 && g->ph >= 0 &&
             g->pw >= 0 && g->h >= 0 && g->w >= 0 && g->kh < big && g->kw < big && g->sh < big && g->sw < big &&
             g->dh < big && g->dw < big && g->ph < big && g->pw < big && g->h < big && g->w < big;
    if (!ok)
        return ad_err(AD_ERR_VALUE, "%s: kernel_size (%lld, %lld), stride (%lld, %lld) and dilation (%lld, %lld) must "
                      "be positive and padding (%lld, %lld) non-negative (each below 2**31)", op,
                      (long long)g->kh, (long long)g->kw, (long long)g->sh, (long long)g->sw, (long long)g->dh,
                      (long long)g->dw, (long long)g->ph, (long long)g->pw);
    int64_t span_h = g->dh * (g->kh - 1) + 1, span_w = g->dw * (g->kw - 1) + 1;
    if (g->h + 2 * g->ph < span_h || g->w + 2 * g->pw < span_w)
        return ad_err(AD_ERR_VALUE, "%s: the kernel spans (%lld, %lld) with dilation (%lld, %lld), larger than the "
                      "padded image (%lld, %lld) (image (%lld, %lld), padding (%lld, %lld))", op,
                      (long long)span_h, (long long)span_w, (long long)g->dh, (long long)g->dw,
                      (long long)(g->h + 2 * g->ph), (long long)(g->w + 2 * g->pw), (long long)g->h,
                      (long long)g->w, (long long)g->ph, (long long)g->pw);
    *oh = (g->h + 2 * g->ph - span_h) / g->sh + 1;
    *ow = (g->w + 2 * g->pw - span_w) / g->sw + 1;
    return AD_OK;
}

static int mul3(int64_t a, int64_t b, int64_t c, int64_t *r)
{
    int64_t t;
    return __builtin_mul_overflow(a, b, &t) || __builtin_mul_overflow(t, c, r);
}

static int finish(ad_tape *T, ad_node *n, ad_node *x, const ad_conv_geom *g, const char *op, ad_node **out)
{
    n->aux = ad_buf_alloc(T, AD_CONV_GEOM_LEN * sizeof(int64_t));
    if (!n->aux) { ad_node_discard(T, n); return ad_err(AD_ERR_MEMORY, "%s: out of memory", op); }
    n->aux_len = AD_CONV_GEOM_LEN;
    memcpy(n->aux, g, sizeof *g);
    int st = ad_record(T, n, 1, &x);
    if (st) return st;
    *out = n;
    return AD_OK;
}

int ad_mk_unfold(ad_tape *T, ad_node *x, const ad_conv_geom *geom, ad_node **out)
{
    char b[160];
    if (x->ndim != 4)
        return ad_err(AD_ERR_VALUE, "unfold: input must be 4-D (N, C, H, W), got shape %s (%s)",
                      ad_shape_str(b, sizeof b, x->ndim, x->shape), ad_dtype_name(x->dtype));
    ad_conv_geom g = *geom;
    g.h = x->shape[2];
    g.w = x->shape[3];
    int64_t oh, ow, k, L, sh[3];
    int st = ad_conv_geom_check("unfold", &g, &oh, &ow);
    if (st) return st;
    if (mul3(x->shape[1], g.kh, g.kw, &k) || mul3(oh, ow, 1, &L) || mul3(x->shape[0], k, L, &sh[2]))
        return ad_err(AD_ERR_VALUE, "unfold: the columns of a %s input would be too large",
                      ad_shape_str(b, sizeof b, x->ndim, x->shape));
    sh[0] = x->shape[0];
    sh[1] = k;
    sh[2] = L;
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_UNFOLD, x->dtype, 3, sh, &n))) return st;
    ad_conv_windows(1, x->dtype, &g, x->shape[0] * x->shape[1], oh, ow, x->data, n->data, 0);
    return finish(T, n, x, &g, "unfold", out);
}

int ad_mk_fold(ad_tape *T, ad_node *x, const ad_conv_geom *g, ad_node **out)
{
    char b[160];
    int64_t oh, ow, L;
    int st = ad_conv_geom_check("fold", g, &oh, &ow);
    if (st) return st;
    if (mul3(oh, ow, 1, &L)) return ad_err(AD_ERR_VALUE, "fold: output size (%lld, %lld) is too large", (long long)g->h, (long long)g->w);
    if (x->ndim != 3 || x->shape[1] % (g->kh * g->kw) || x->shape[2] != L)
        return ad_err(AD_ERR_VALUE, "fold: input must be 3-D (N, C * %lld * %lld, %lld) for kernel (%lld, %lld) and "
                      "output size (%lld, %lld), got shape %s (%s)", (long long)g->kh, (long long)g->kw,
                      (long long)L, (long long)g->kh, (long long)g->kw, (long long)g->h, (long long)g->w,
                      ad_shape_str(b, sizeof b, x->ndim, x->shape), ad_dtype_name(x->dtype));
    int64_t c = x->shape[1] / (g->kh * g->kw), size;
    int64_t sh[4] = {x->shape[0], c, g->h, g->w};
    if (mul3(sh[0], c, g->h * g->w, &size))
        return ad_err(AD_ERR_VALUE, "fold: an output of shape %s would be too large", ad_shape_str(b, sizeof b, 4, sh));
    ad_node *n;
    if ((st = ad_node_new(T, AD_OP_FOLD, x->dtype, 4, sh, &n))) return st;
    ad_conv_windows(0, x->dtype, g, sh[0] * c, oh, ow, x->data, n->data, 0);
    return finish(T, n, x, g, "fold", out);
}

static int geom_args(const char *op, const int64_t *kernel, const int64_t *stride, const int64_t *padding,
                     const int64_t *dilation, ad_conv_geom *g)
{
    if (!kernel || !stride || !padding || !dilation)
        return ad_err(AD_ERR_VALUE, "%s: kernel, stride, padding and dilation must each be two integers, got NULL", op);
    *g = (ad_conv_geom){kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0],
                        dilation[1], 0, 0};
    return AD_OK;
}

int64_t ad_unfold(int64_t hx, const int64_t *kernel, const int64_t *stride, const int64_t *padding,
                  const int64_t *dilation)
{
    ad_conv_geom g;
    int st = geom_args("unfold", kernel, stride, padding, dilation, &g);
    if (st) return st;
    AD_ONE_INPUT_ENTRY(hx, ad_mk_unfold(T, x, &g, &n));
}

int64_t ad_fold(int64_t hx, const int64_t *output_size, const int64_t *kernel, const int64_t *stride,
                const int64_t *padding, const int64_t *dilation)
{
    ad_conv_geom g;
    int st = geom_args("fold", kernel, stride, padding, dilation, &g);
    if (st) return st;
    if (!output_size) return ad_err(AD_ERR_VALUE, "fold: output_size must be two integers, got NULL");
    g.h = output_size[0];
    g.w = output_size[1];
    AD_ONE_INPUT_ENTRY(hx, ad_mk_fold(T, x, &g, &n));
}

/* The geometry a node keeps, and the window counts it implies (checked when it was made). */
static const ad_conv_geom *geom_of(const ad_node *n, int64_t *oh, int64_t *ow)
{
    const ad_conv_geom *g = (const ad_conv_geom *)n->aux;
    *oh = (g->h + 2 * g->ph - g->dh * (g->kh - 1) - 1) / g->sh + 1;
    *ow = (g->w + 2 * g->pw - g->dw * (g->kw - 1) - 1) / g->sw + 1;
    return g;
}

/* The image-side node (unfold's input, fold's output) gives the planes. */
static int64_t planes_of(const ad_node *n)
{
    const ad_node *img = n->op == AD_OP_UNFOLD ? n->in[0] : n;
    return img->shape[0] * img->shape[1];
}

int ad_vjp_conv(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T; (void)which;
    int64_t oh, ow;
    const ad_conv_geom *geom = geom_of(n, &oh, &ow);
    if (n->op != AD_OP_UNFOLD && n->op != AD_OP_FOLD) return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    /* the adjoint of unfold is fold, and of fold unfold */
    ad_conv_windows(n->op == AD_OP_FOLD, n->dtype, geom, planes_of(n), oh, ow, g, s->dst, s->accumulate);
    return AD_OK;
}

int ad_jvp_conv(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    int64_t oh, ow;
    const ad_conv_geom *geom = geom_of(n, &oh, &ow);
    if (n->op != AD_OP_UNFOLD && n->op != AD_OP_FOLD) return ad_err(AD_ERR_RUNTIME, "internal: no JVP for op %d", n->op);
    size_t isz = ad_itemsize(n->dtype);
    for (int64_t r = 0; r < k; r++)
        ad_conv_windows(n->op == AD_OP_UNFOLD, n->dtype, geom, planes_of(n), oh, ow,
            (const char *)tin[0] + (size_t)(r * n->in[0]->size) * isz, (char *)tout + (size_t)(r * n->size) * isz, 0);
    return AD_OK;
}

int ad_vjp_rec_conv(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    (void)which;
    const ad_conv_geom *geom = (const ad_conv_geom *)n->aux;
    switch (n->op) {
    case AD_OP_UNFOLD: return ad_mk_fold(T, g, geom, out);
    case AD_OP_FOLD: return ad_mk_unfold(T, g, geom, out);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

int ad_jvp_rec_conv(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    const ad_conv_geom *geom = (const ad_conv_geom *)n->aux;
    switch (n->op) {
    case AD_OP_UNFOLD: return ad_mk_unfold(T, tin[0], geom, out);
    case AD_OP_FOLD: return ad_mk_fold(T, tin[0], geom, out);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

/* The forward of a recorded unfold or fold from its input's values (the replay, replay.c): the
 * pass its constructor ran, with the geometry it kept. */
int ad_fwd_conv(ad_node *n, ad_node *const *ins)
{
    int64_t oh, ow;
    if (n->op == AD_OP_CONV2D) return ad_fwd_conv2d(n, ins);
    const ad_conv_geom *geom = geom_of(n, &oh, &ow);
    if (n->op != AD_OP_UNFOLD && n->op != AD_OP_FOLD) return ad_err(AD_ERR_RUNTIME, "internal: no forward for op %d", n->op);
    ad_conv_windows(n->op == AD_OP_UNFOLD, n->dtype, geom, planes_of(n), oh, ow, ins[0]->data, n->data, 0);
    return AD_OK;
}
