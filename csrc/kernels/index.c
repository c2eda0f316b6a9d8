/* Indexing and selection: gather (t[...]), concatenate / stack, where, clip. Forward and VJP of
 * each op sit together.
 *
 * Basic indexing (ints, slices with steps, None, Ellipsis) is `slice`, a strided view copied;
 * advanced indexing (integer arrays, boolean masks) is `gather` of flat source positions that the
 * bindings compute with NumPy, in blocks of consecutive elements where the index leaves the
 * trailing axes whole. Offsets and indices are still checked here, because C must never read
 * outside a buffer whatever it is handed. gather's VJP scatter-adds: an element picked twice
 * collects both cotangents. */
#include "../core.h"
#include <string.h>
#include <math.h>


/* float32 meeting float64 computes in float64, as NumPy does; the cast is its own node so the
 * gradient flows back as float32 (the same rule as binary ops in elementwise.c). */
static int upcast(ad_tape *T, ad_node *x, ad_node **out)
{
    ad_node *c;
    int st = ad_node_new(T, AD_OP_CAST, AD_F64, x->ndim, x->shape, &c);
    if (st) return st;
    const float *src = x->data;
    double *dst = c->data;
    for (int64_t i = 0; i < c->size; i++) dst[i] = src[i];
    if ((st = ad_node_link(T, c, 1, &x))) { ad_node_discard(T, c); return st; }
    *out = c;
    return AD_OK;
}


/* ---------------- gather ----------------
 * Each index picks a block of `block` consecutive elements (block 1: one element): t[rows] on a
 * (10000, 64) tensor is 10^5 indices of 64-element rows, not 6.4 * 10^6 flat positions, so the
 * bindings build, and the op saves, an index `block` times smaller and the kernels copy rows. */

/* Copy the caller's index into n->aux when n will be recorded (its VJP and JVP read it). */
static int save_index(ad_tape *T, ad_node *n, ad_node *x, int64_t count, const int64_t *index, const char *name)
{
    if (!count || !ad_will_record(T, n->op, 1, &x)) return AD_OK;
    n->aux = ad_buf_alloc(T, (size_t)count * sizeof(int64_t));
    if (!n->aux) return ad_err(AD_ERR_MEMORY, "%s: out of memory saving the index", name);
    memcpy(n->aux, index, (size_t)count * sizeof(int64_t));
    n->aux_len = (int32_t)count;
    return AD_OK;
}

/* The checks gather and scatter_add share: `size` elements moved in blocks of `block` (it must
 * divide size), each index the start of a block inside a tensor of `limit` elements. */
static int check_blocks(const char *name, int64_t size, int64_t block, const int64_t *index, int64_t limit,
                        int lndim, const int64_t *lshape)
{
    if (size > INT32_MAX)
        return ad_err(AD_ERR_VALUE, "%s: cannot move more than %d elements at once", name, INT32_MAX);
    if (block < 1 || size % block)
        return ad_err(AD_ERR_VALUE, "%s: block of %lld elements does not divide the %lld elements moved",
                      name, (long long)block, (long long)size);
    if (size && !index) return ad_err(AD_ERR_VALUE, "%s: index is NULL", name);
    for (int64_t i = 0, count = size / block; i < count; i++) {
        if (index[i] < 0 || index[i] > limit - block) {
            char b[160];
            return ad_err(AD_ERR_INDEX, "%s: flat index %lld (block of %lld) is out of bounds for a tensor of shape %s (size %lld)",
                          name, (long long)index[i], (long long)block, ad_shape_str(b, sizeof b, lndim, lshape),
                          (long long)limit);
        }
    }
    return AD_OK;
}

/* The two directions of a block move, dst (+)= src: `pick` reads the blocks of src at the index
 * into consecutive blocks of dst (gather), `put` adds consecutive blocks of src into dst at the
 * index (scatter-add: repeated indices accumulate). */
#define BLOCK_MOVES(TT, SUF)                                                             \
    static void pick_##SUF(TT *D, const TT *S, const int64_t *I, int64_t count, int64_t block, int acc) \
    {                                                                                    \
        if (block == 1) {                                                                \
            if (acc) for (int64_t i = 0; i < count; i++) D[i] += S[I[i]];               \
            else for (int64_t i = 0; i < count; i++) D[i] = S[I[i]];                     \
            return;                                                                      \
        }                                                                                \
        for (int64_t i = 0; i < count; i++) {                                            \
            TT *d = D + i * block; const TT *r = S + I[i];                               \
            if (acc) for (int64_t j = 0; j < block; j++) d[j] += r[j];                   \
            else ad_copy(d, r, (size_t)block * sizeof(TT));                               \
        }                                                                                \
    }                                                                                    \
    static void put_##SUF(TT *D, const TT *S, const int64_t *I, int64_t count, int64_t block) \
    {                                                                                    \
        if (block == 1) { for (int64_t i = 0; i < count; i++) D[I[i]] += S[i]; return; } \
        for (int64_t i = 0; i < count; i++) {                                            \
            TT *d = D + I[i]; const TT *r = S + i * block;                               \
            for (int64_t j = 0; j < block; j++) d[j] += r[j];                            \
        }                                                                                \
    }
BLOCK_MOVES(double, d)
BLOCK_MOVES(float, f)
#undef BLOCK_MOVES

static void pick(int dtype, void *D, const void *S, const int64_t *I, int64_t count, int64_t block, int acc)
{
    if (dtype == AD_F64) pick_d(D, S, I, count, block, acc); else pick_f(D, S, I, count, block, acc);
}

/* dst = zeros (unless acc), then the blocks of src added at the index */
static void put(int dtype, void *D, int64_t dsize, const void *S, const int64_t *I, int64_t count, int64_t block,
                int acc)
{
    if (!acc) memset(D, 0, (size_t)dsize * ad_itemsize(dtype));
    if (dtype == AD_F64) put_d(D, S, I, count, block); else put_f(D, S, I, count, block);
}

int ad_mk_gather(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, const int64_t *index, int64_t block,
                 ad_node **out)
{
    ad_node *n;
    int st;
    if (ndim < 0 || ndim > AD_MAXDIM || (ndim > 0 && !shape))
        return ad_err(AD_ERR_VALUE, "getitem: the result would have %d dimensions; tensors have at most %d", ndim, AD_MAXDIM);
    if ((st = ad_node_new(T, AD_OP_GATHER, x->dtype, ndim, shape, &n))) return st;
    if ((st = check_blocks("getitem", n->size, block, index, x->size, x->ndim, x->shape))) {
        ad_node_discard(T, n);
        return st;
    }
    n->block = block;
    pick(x->dtype, n->data, x->data, index, n->size / block, block, 0);
    if ((st = save_index(T, n, x, n->size / block, index, "getitem"))) { ad_node_discard(T, n); return st; }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_gather(int64_t hx, int ndim, const int64_t *shape, const int64_t *index, int64_t block)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_gather(T, x, ndim, shape, index, block, &n));
}

/* VJP: the cotangent's blocks scatter-add back, so an element picked twice collects both. */
static int vjp_gather(ad_node *n, const void *g, ad_sink *s)
{
    put(n->dtype, s->dst, s->size, g, n->aux, n->aux_len, n->block, s->accumulate);
    return AD_OK;
}

/* JVP: each direction picks the same elements as the value did. */
static void jvp_gather(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    size_t isz = ad_itemsize(n->dtype);
    for (int64_t r = 0; r < k; r++)
        pick(n->dtype, (char *)tout + (size_t)(r * n->size) * isz,
             (const char *)tin[0] + (size_t)(r * n->in[0]->size) * isz, n->aux, n->aux_len, n->block, 0);
}

/* ---------------- scatter_add (the VJP of gather) ----------------
 * out = zeros(shape); block i of x is added at out.flat[index[i]:index[i] + block]. Its VJP is a
 * gather with the same index and gather's is a scatter_add, so the pair differentiates to any
 * order. */

int ad_mk_scatter_add(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, const int64_t *index, int64_t block,
                      ad_node **out)
{
    ad_node *n;
    int st;
    if (ndim < 0 || ndim > AD_MAXDIM || (ndim > 0 && !shape))
        return ad_err(AD_ERR_VALUE, "scatter_add: the result would have %d dimensions; tensors have at most %d", ndim, AD_MAXDIM);
    if ((st = ad_node_new(T, AD_OP_SCATTER_ADD, x->dtype, ndim, shape, &n))) return st;
    if ((st = check_blocks("scatter_add", x->size, block, index, n->size, ndim, shape))) {
        ad_node_discard(T, n);
        return st;
    }
    n->block = block;
    put(x->dtype, n->data, n->size, x->data, index, x->size / block, block, 0);
    if ((st = save_index(T, n, x, x->size / block, index, "scatter_add"))) { ad_node_discard(T, n); return st; }
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_scatter_add(int64_t hx, int ndim, const int64_t *shape, const int64_t *index, int64_t block)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_scatter_add(T, x, ndim, shape, index, block, &n));
}

/* VJP: each input block takes the cotangent of the place it was added to. */
static int vjp_scatter(ad_node *n, const void *g, ad_sink *s)
{
    pick(n->dtype, s->dst, g, n->aux, n->aux_len, n->block, s->accumulate);
    return AD_OK;
}

/* JVP: each direction is scattered as the values were. */
static void jvp_scatter(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    size_t isz = ad_itemsize(n->dtype);
    for (int64_t r = 0; r < k; r++)
        put(n->dtype, (char *)tout + (size_t)(r * n->size) * isz, n->size,
            (const char *)tin[0] + (size_t)(r * n->in[0]->size) * isz, n->aux, n->aux_len, n->block, 0);
}

/* ---------------- slice: basic indexing ----------------
 * Integers, slices with any step, None and Ellipsis select a strided view of x: an offset and
 * one stride per output axis (in elements, any sign), which ad_index (below) works out from the
 * index as written. One strided copy makes the value, with no index array at all; the VJP adds
 * the cotangent back through the same strides. aux holds the offset, then the strides. */

/* Is every element of the view inside x? (the lowest and highest positions it reaches) */
static int slice_in_bounds(const ad_node *x, int ndim, const int64_t *shape, int64_t offset, const int64_t *strides)
{
    int64_t lo = offset, hi = offset;
    for (int i = 0; i < ndim; i++) {
        int64_t reach;
        if (__builtin_mul_overflow(strides[i], shape[i] - 1, &reach)) return 0;
        if (reach < 0 ? __builtin_add_overflow(lo, reach, &lo) : __builtin_add_overflow(hi, reach, &hi)) return 0;
    }
    return lo >= 0 && hi < x->size;
}

int ad_mk_slice(ad_tape *T, ad_node *x, int ndim, const int64_t *shape, int64_t offset, const int64_t *strides,
                ad_node **out)
{
    ad_node *n;
    int st;
    if (ndim < 0 || ndim > AD_MAXDIM || (ndim > 0 && (!shape || !strides)))
        return ad_err(AD_ERR_VALUE, "getitem: the result would have %d dimensions; tensors have at most %d", ndim, AD_MAXDIM);
    if ((st = ad_node_new(T, AD_OP_SLICE, x->dtype, ndim, shape, &n))) return st;
    if (n->size && !slice_in_bounds(x, ndim, shape, offset, strides)) {
        char b1[160], b2[160];
        ad_node_discard(T, n);
        return ad_err(AD_ERR_INDEX, "getitem: a view of shape %s at offset %lld leaves a tensor of shape %s",
                      ad_shape_str(b1, sizeof b1, ndim, shape), (long long)offset,
                      ad_shape_str(b2, sizeof b2, x->ndim, x->shape));
    }
    n->aux = ad_buf_alloc(T, (size_t)(ndim + 1) * sizeof(int64_t));
    if (!n->aux) { ad_node_discard(T, n); return ad_err(AD_ERR_MEMORY, "getitem: out of memory"); }
    n->aux_len = ndim + 1;
    n->aux[0] = offset;
    if (ndim) memcpy(n->aux + 1, strides, (size_t)ndim * sizeof(int64_t));   /* a 0-d view may pass NULL */
    if (n->size)
        ad_copy_strided(x->dtype, n->data, (const char *)x->data + (size_t)offset * ad_itemsize(x->dtype), ndim,
                        shape, strides);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_slice(int64_t hx, int ndim, const int64_t *shape, int64_t offset, const int64_t *strides)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_slice(T, x, ndim, shape, offset, strides, &n));
}

/* ---------------- index: basic indexing from the index as written ----------------
 * The bindings pass x[...]'s parts as they are (ad.h: four int64 each) and the view is worked out
 * here, with NumPy's rules and messages, so that t[3] is one call with no arithmetic in Python.
 * The result is a slice node: replay, VJP and JVP are slice's. */

/* One slice bound, clamped into x's axis of n elements as slice.indices (PySlice_AdjustIndices) does. */
static int64_t slice_bound(int64_t v, int64_t n, int64_t step)
{
    if (v < 0) {
        v += n;
        if (v < 0) v = step < 0 ? -1 : 0;
    } else if (v >= n) {
        v = step < 0 ? n - 1 : n;
    }
    return v;
}

static int index_node(ad_tape *T, ad_node *x, int nparts, const int64_t *parts, ad_node **out)
{
    if (nparts < 0 || (nparts > 0 && !parts))
        return ad_err(AD_ERR_VALUE, "getitem: %d index parts%s", nparts, parts ? "" : " at NULL");
    int ellipses = 0, used = 0, added = 0;   /* Ellipses; parts that take an axis; axes they add */
    for (int i = 0; i < nparts; i++) {
        int64_t kind = parts[4 * i], base = kind & 3, flags = kind & ~(int64_t)3;
        if (kind < 0 || (flags & ~(int64_t)(AD_INDEX_NO_START | AD_INDEX_NO_STOP)) || (flags && base != AD_INDEX_SLICE))
            return ad_err(AD_ERR_VALUE, "getitem: part %d has unknown kind %lld", i, (long long)kind);
        ellipses += base == AD_INDEX_ELLIPSIS;
        used += base == AD_INDEX_INT || base == AD_INDEX_SLICE;
        added += base == AD_INDEX_NEWAXIS || base == AD_INDEX_SLICE;
    }
    /* in NumPy's order, with NumPy's words */
    if (ellipses > 1) return ad_err(AD_ERR_INDEX, "an index can only have a single ellipsis ('...')");
    if (used > x->ndim)
        return ad_err(AD_ERR_INDEX, "too many indices for array: array is %d-dimensional, but %d were indexed",
                      x->ndim, used);
    int ndim = added + x->ndim - used;
    if (ndim > AD_MAXDIM)
        return ad_err(AD_ERR_VALUE, "getitem: the result would have %d dimensions; tensors have at most %d", ndim, AD_MAXDIM);
    int64_t xstrides[AD_MAXDIM], shape[AD_MAXDIM], strides[AD_MAXDIM], offset = 0;
    ad_contig_strides(x->ndim, x->shape, xstrides);
    int d = 0, k = 0;   /* x's next axis, the view's next axis */
    for (int i = 0; i <= nparts; i++) {
        const int64_t *p = i < nparts ? parts + 4 * i : NULL;
        if (!p && ellipses) break;
        int64_t base = p ? p[0] & 3 : AD_INDEX_ELLIPSIS;   /* no Ellipsis written: one at the end */
        if (base == AD_INDEX_NEWAXIS) {
            shape[k] = 1;
            strides[k++] = 0;
        } else if (base == AD_INDEX_ELLIPSIS) {
            for (int e = x->ndim - used; e > 0; e--) {
                shape[k] = x->shape[d];
                strides[k++] = xstrides[d++];
            }
        } else if (base == AD_INDEX_INT) {
            int64_t at = p[1], n = x->shape[d];
            if (at < -n || at >= n)
                return ad_err(AD_ERR_INDEX, "index %lld is out of bounds for axis %d with size %lld", (long long)at, d,
                              (long long)n);
            offset += (at < 0 ? at + n : at) * xstrides[d++];
        } else {
            int64_t n = x->shape[d], step = p[3], len = 0;
            if (step == 0) return ad_err(AD_ERR_VALUE, "slice step cannot be zero");
            if (step < -INT64_MAX) step = -INT64_MAX;   /* as Python does: -step must not overflow */
            int64_t start = p[0] & AD_INDEX_NO_START ? (step < 0 ? n - 1 : 0) : slice_bound(p[1], n, step);
            int64_t stop = p[0] & AD_INDEX_NO_STOP ? (step < 0 ? -1 : n) : slice_bound(p[2], n, step);
            if (step < 0 ? stop < start : start < stop)
                len = step < 0 ? (start - stop - 1) / -step + 1 : (stop - start - 1) / step + 1;
            /* a step that reaches a second element is at most n: strides[d] * step cannot overflow */
            shape[k] = len;
            strides[k++] = len > 1 ? xstrides[d] * step : xstrides[d];
            if (len) offset += start * xstrides[d];
            d++;
        }
    }
    return ad_mk_slice(T, x, ndim, shape, offset, strides, out);
}

int64_t ad_index(int64_t hx, int nparts, const int64_t *parts)
{
    AD_ONE_INPUT_ENTRY(hx, index_node(T, x, nparts, parts, &n));
}

/* Does the view reach each element of x at most once? (Sufficient test: with the axes ordered by
 * |stride|, each stride steps past everything the smaller ones reach.) Basic indexing always
 * does; the C API also takes strides that overlap, a stride of 0 say. */
static int view_is_one_to_one(int ndim, const int64_t *shape, const int64_t *strides)
{
    int64_t st[AD_MAXDIM], ext[AD_MAXDIM];
    int k = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 1) continue;
        int64_t a = strides[i] < 0 ? -strides[i] : strides[i];
        int j = k++;
        for (; j > 0 && st[j - 1] > a; j--) { st[j] = st[j - 1]; ext[j] = ext[j - 1]; }
        st[j] = a;
        ext[j] = shape[i] - 1;
    }
    int64_t reach = 0;   /* the farthest the smaller strides get (in bounds: no overflow) */
    for (int j = 0; j < k; j++) {
        if (st[j] <= reach) return 0;
        reach += st[j] * ext[j];
    }
    return 1;
}

/* Slabs of about this many bytes of the gradient are zeroed just before the cotangent lands in
 * them (place_in_zeros): small enough to stay in L1/L2 between the two passes. */
#define ZERO_SLAB_BYTES ((int64_t)32 << 10)

/* dst (dsize elements) = zeros with g (contiguous strides gs) stored through a one-to-one view
 * (offset, strides vs). The view's outermost axis (largest |stride| S) cuts dst into slabs of S
 * elements, each holding its own elements only (one-to-one: the other axes reach less than S);
 * each group of slabs is zeroed right before the store into it, so the zeros are still in cache
 * when the cotangent overwrites them, and only the elements outside the view are zeroed. A memset
 * of the whole gradient first sends it all to memory and back before the cotangent is written:
 * for x[::2] 1.5x the bytes written. */
static void place_in_zeros(int dtype, void *dst, int64_t dsize, int64_t offset, int ndim, const int64_t *shape,
                           const int64_t *vs, const void *g, const int64_t *gs)
{
    size_t isz = ad_itemsize(dtype);
    int a = -1;
    int64_t widest = 0;
    for (int i = 0; i < ndim; i++) {
        int64_t w = vs[i] < 0 ? -vs[i] : vs[i];
        if (shape[i] > 1 && (a < 0 || w > widest)) { a = i; widest = w; }
    }
    if (a < 0) {   /* one element */
        memset(dst, 0, (size_t)dsize * isz);
        ad_strided_pass(dtype, (char *)dst + (size_t)offset * isz, vs, g, gs, ndim, shape, 0);
        return;
    }
    int64_t sh[AD_MAXDIM], ds[AD_MAXDIM], ss[AD_MAXDIM];
    memcpy(sh, shape, (size_t)ndim * sizeof *sh);
    memcpy(ds, vs, (size_t)ndim * sizeof *ds);
    memcpy(ss, gs, (size_t)ndim * sizeof *ss);
    const char *gp = g;
    if (ds[a] < 0) {   /* walk the outer axis towards higher addresses, g's rows backwards */
        offset += (sh[a] - 1) * ds[a];
        gp += (size_t)((sh[a] - 1) * ss[a]) * isz;
        ds[a] = -ds[a];
        ss[a] = -ss[a];
    }
    int64_t S = ds[a], N = sh[a], lo = 0;   /* lo: a slab's lowest element relative to its base */
    for (int i = 0; i < ndim; i++)
        if (i != a && sh[i] > 1 && ds[i] < 0) lo += ds[i] * (sh[i] - 1);
    int64_t group = ZERO_SLAB_BYTES / (S * (int64_t)isz);
    if (group < 1) group = 1;
    char *d = dst;
    int64_t zeroed = 0;   /* dst[0, zeroed) is zero or holds its cotangent */
    for (int64_t k = 0; k < N; k += group) {
        int64_t m = N - k < group ? N - k : group, base = offset + k * S;
        int64_t end = k + m < N ? base + lo + m * S : dsize;
        memset(d + (size_t)zeroed * isz, 0, (size_t)(end - zeroed) * isz);
        zeroed = end;
        sh[a] = m;
        ad_strided_pass(dtype, d + (size_t)base * isz, ds, gp + (ptrdiff_t)(k * ss[a]) * (ptrdiff_t)isz, ss, ndim, sh, 0);
    }
}

/* VJP: zeros, then the cotangent through the view's strides: stored when the view reaches each
 * element once, else added (an element reached twice collects both). */
static int vjp_slice(ad_node *n, const void *g, ad_sink *s)
{
    size_t isz = ad_itemsize(n->dtype);
    if (!n->size) {
        if (!s->accumulate) memset(s->dst, 0, (size_t)s->size * isz);
        return AD_OK;
    }
    int64_t gs[AD_MAXDIM];
    ad_contig_strides(n->ndim, n->shape, gs);
    int one_to_one = view_is_one_to_one(n->ndim, n->shape, n->aux + 1);
    if (!s->accumulate && one_to_one) {
        place_in_zeros(n->dtype, s->dst, s->size, n->aux[0], n->ndim, n->shape, n->aux + 1, g, gs);
        return AD_OK;
    }
    if (!s->accumulate) memset(s->dst, 0, (size_t)s->size * isz);
    ad_strided_pass(n->dtype, (char *)s->dst + (size_t)n->aux[0] * isz, n->aux + 1, g, gs,
                    n->ndim, n->shape, 1);
    return AD_OK;
}

/* JVP: each direction is viewed as the value was. */
static void jvp_slice(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    size_t isz = ad_itemsize(n->dtype);
    if (!n->size) return;
    for (int64_t r = 0; r < k; r++)
        ad_copy_strided(n->dtype, (char *)tout + (size_t)(r * n->size) * isz,
                        (const char *)tin[0] + (size_t)(r * n->in[0]->size + n->aux[0]) * isz, n->ndim, n->shape,
                        n->aux + 1);
}

/* The differentiable VJP: the cotangent scatter-added at the flat positions the view reaches
 * (a scatter_add, whose own VJP gathers them again). Only higher-order sweeps build the index. */
static int rec_slice_back(ad_tape *T, ad_node *n, ad_node *g, ad_node **out)
{
    size_t bytes = (size_t)(n->size ? n->size : 1) * sizeof(int64_t);
    int64_t *idx = ad_buf_alloc(T, bytes), pos[AD_MAXDIM] = {0};
    if (!idx) return ad_err(AD_ERR_MEMORY, "differentiable rule of getitem: out of memory");
    for (int64_t i = 0; i < n->size; i++) {
        int64_t p = n->aux[0];
        for (int d = 0; d < n->ndim; d++) p += pos[d] * n->aux[1 + d];
        idx[i] = p;
        for (int d = n->ndim - 1; d >= 0 && ++pos[d] == n->shape[d]; d--) pos[d] = 0;
    }
    const ad_node *x = n->in[0];
    int st = ad_mk_scatter_add(T, g, x->ndim, x->shape, idx, 1, out);
    ad_buf_free(T, idx, bytes);
    return st;
}

/* ---------------- concatenate / stack ---------------- */

/* Both ops lay the inputs side by side along one output axis: seen as (outer, extent, inner)
 * blocks, input k fills extent_k rows of every outer block (extent 1 for stack's new axis). */
static void axis_split(const ad_node *n, int axis, int64_t *outer, int64_t *inner)
{
    /* an empty result may have huge other dimensions whose product overflows: nothing to move */
    if (n->size == 0) { *outer = 0; *inner = 0; return; }
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < axis; i++) *outer *= n->shape[i];
    for (int i = axis + 1; i < n->ndim; i++) *inner *= n->shape[i];
}

static int axis_of(const ad_node *n)
{
    int a = 0;
    while (!(n->axes & ((uint64_t)1 << a))) a++;
    return a;
}

static int64_t extent(const ad_node *n, const ad_node *x, int axis)
{
    return n->op == AD_OP_STACK ? 1 : x->shape[axis];
}

int ad_concat_block(const ad_node *n, int which, int64_t *offset)
{
    if ((n->op != AD_OP_CONCATENATE && n->op != AD_OP_STACK) || which < 0 || which >= n->nin) return 0;
    int ax = axis_of(n);
    int64_t outer, inner, at = 0;
    axis_split(n, ax, &outer, &inner);
    if (outer != 1) return 0;
    for (int k = 0; k < which; k++) at += extent(n, n->in[k], ax);
    *offset = at * inner;
    return 1;
}

/* n's values from its inputs', along the axis in n->axes (shared with the replay). */
static void concat_values(ad_node *n, int nx, ad_node *const *ins)
{
    int ax = __builtin_ctzll(n->axes);
    int dtype = n->dtype;
    int64_t outer, inner;
    axis_split(n, ax, &outer, &inner);
    size_t item = ad_itemsize(dtype);
    char *Y = n->data;
    int stream = (size_t)n->size * item >= AD_STREAM_BYTES;
    for (int64_t o = 0, pos = 0; o < outer; o++) {
        for (int k = 0; k < nx; k++) {
            size_t len = (size_t)(extent(n, ins[k], ax) * inner);
            const char *src = (const char *)ins[k]->data + (size_t)o * len * item;
            /* stacking on the last axis moves one element per input and outer index: a memcpy
             * call per element cost more than the copy */
            if (len == 1 && item == 8) memcpy(Y + (size_t)pos * 8, src, 8);
            else if (len == 1) memcpy(Y + (size_t)pos * 4, src, 4);
            else ad_copy_to(Y + (size_t)pos * item, src, len * item, stream);
            pos += (int64_t)len;
        }
    }
}

int ad_mk_concatenate(ad_tape *T, int nx, ad_node *const *xs, int64_t axis, int new_axis, ad_node **out)
{
    const char *name = new_axis ? "stack" : "concatenate";
    if (nx < 1 || !xs) return ad_err(AD_ERR_VALUE, "%s: need at least one tensor", name);
    ad_node **ins = ad_buf_alloc(T, (size_t)nx * sizeof *ins);
    ad_node **casts = ad_buf_alloc(T, (size_t)nx * sizeof *casts);
    ad_node *n = NULL;
    int ncast = 0, st = AD_OK;
    char b1[160], b2[160];
    if (!ins || !casts) { st = ad_err(AD_ERR_MEMORY, "%s: out of memory", name); goto out; }
    int dtype = AD_F32;
    for (int k = 0; k < nx; k++) {
        ins[k] = xs[k];
        if (ins[k]->dtype == AD_F64) dtype = AD_F64;
    }
    const ad_node *x0 = ins[0];
    int ndim = x0->ndim + (new_axis ? 1 : 0);
    if (!new_axis && x0->ndim == 0) {
        st = ad_err(AD_ERR_VALUE, "concatenate: zero-dimensional tensors cannot be concatenated (use stack)");
        goto out;
    }
    if (ndim > AD_MAXDIM) { st = ad_err(AD_ERR_VALUE, "stack: the result would have %d dimensions; tensors have at most %d", ndim, AD_MAXDIM); goto out; }
    if (axis < -(int64_t)ndim || axis >= ndim) {
        st = ad_err(AD_ERR_VALUE, "%s: axis %lld is out of bounds for a result of dimension %d", name, (long long)axis, ndim);
        goto out;
    }
    int ax = (int)(axis < 0 ? axis + ndim : axis);
    int64_t shape[AD_MAXDIM];
    for (int i = 0, j = 0; i < ndim; i++) shape[i] = (new_axis && i == ax) ? nx : x0->shape[j++];
    if (!new_axis) shape[ax] = 0;
    for (int k = 0; k < nx; k++) {
        const ad_node *x = ins[k];
        int ok = x->ndim == x0->ndim;
        for (int i = 0; ok && i < x->ndim; i++)
            if (x->shape[i] != x0->shape[i] && (new_axis || i != ax)) ok = 0;
        if (!ok) {
            st = new_axis
                ? ad_err(AD_ERR_VALUE, "stack: all tensors must have the same shape, got %s (tensor 0) and %s (tensor %d)",
                         ad_shape_str(b1, sizeof b1, x0->ndim, x0->shape), ad_shape_str(b2, sizeof b2, x->ndim, x->shape), k)
                : ad_err(AD_ERR_VALUE, "concatenate: shapes must match except along axis %d, got %s (tensor 0) and %s (tensor %d)",
                         ax, ad_shape_str(b1, sizeof b1, x0->ndim, x0->shape), ad_shape_str(b2, sizeof b2, x->ndim, x->shape), k);
            goto out;
        }
        if (!new_axis) shape[ax] += x->shape[ax];
    }
    for (int k = 0; k < nx; k++) {
        if (ins[k]->dtype == dtype) continue;
        if ((st = upcast(T, ins[k], &ins[k]))) goto out;
        casts[ncast++] = ins[k];
    }
    if ((st = ad_node_new(T, new_axis ? AD_OP_STACK : AD_OP_CONCATENATE, dtype, ndim, shape, &n))) goto out;
    n->axes = (uint64_t)1 << ax;
    concat_values(n, nx, ins);
    if (!(st = ad_record(T, n, nx, ins))) *out = n;
out:
    for (int k = 0; k < ncast; k++) ad_node_unref(T, casts[k]);
    if (ins) ad_buf_free(T, ins, (size_t)nx * sizeof *ins);
    if (casts) ad_buf_free(T, casts, (size_t)nx * sizeof *casts);
    return st;
}

int64_t ad_concatenate(int nx, const int64_t *hs, int64_t axis, int new_axis)
{
    const char *name = new_axis ? "stack" : "concatenate";
    if (nx < 1 || !hs) return ad_err(AD_ERR_VALUE, "%s: need at least one tensor", name);
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node **xs = ad_buf_alloc(T, (size_t)nx * sizeof *xs), *n;
    if (!xs) st = ad_err(AD_ERR_MEMORY, "%s: out of memory", name);
    for (int k = 0; k < nx && !st; k++) st = ad_resolve(T, hs[k], &xs[k]);
    if (!st && !(st = ad_mk_concatenate(T, nx, xs, axis, new_axis, &n))) st = ad_handle(T, n);
    if (xs) ad_buf_free(T, xs, (size_t)nx * sizeof *xs);
    ad_unlock(T);
    return st;
}

/* The cotangent of input `which` is its block of rows in every outer block of g. */
static int vjp_concatenate(ad_node *n, const void *g, int which, ad_sink *s)
{
    int ax = axis_of(n);
    int64_t outer, inner, offset = 0;
    axis_split(n, ax, &outer, &inner);
    for (int k = 0; k < which; k++) offset += extent(n, n->in[k], ax);
    int64_t len = extent(n, n->in[which], ax) * inner, total = n->shape[ax] * inner;
    int stream = (size_t)n->size * ad_itemsize(n->dtype) >= AD_STREAM_BYTES;
#define SLICE(TT) do {                                                                   \
        TT *D = s->dst; const TT *G = g;                                                 \
        if (len == 1) {   /* stacked on the last axis: a strided pick, one element each */ \
            const TT *src = G + offset;                                                  \
            if (s->accumulate) for (int64_t o = 0; o < outer; o++) D[o] += src[o * total]; \
            else for (int64_t o = 0; o < outer; o++) D[o] = src[o * total];              \
            break;                                                                       \
        }                                                                                \
        for (int64_t o = 0; o < outer; o++) {                                            \
            const TT *src = G + o * total + offset * inner; TT *dst = D + o * len;       \
            if (s->accumulate) for (int64_t i = 0; i < len; i++) dst[i] += src[i];       \
            else ad_copy_to(dst, src, (size_t)len * sizeof(TT), stream);                   \
        }                                                                                \
    } while (0)
    if (n->dtype == AD_F64) SLICE(double); else SLICE(float);
#undef SLICE
    return AD_OK;
}

/* JVP: each direction is laid out as the values were; an input without a tangent fills zeros. */
static void jvp_concatenate(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    int ax = axis_of(n);
    int64_t outer, inner;
    axis_split(n, ax, &outer, &inner);
    size_t item = ad_itemsize(n->dtype);
    for (int64_t r = 0; r < k; r++) {
        char *Y = (char *)tout + (size_t)(r * n->size) * item;
        for (int64_t o = 0, pos = 0; o < outer; o++) {
            for (int j = 0; j < n->nin; j++) {
                const ad_node *x = n->in[j];
                size_t len = (size_t)(extent(n, x, ax) * inner);
                if (tin[j])
                    ad_copy(Y + (size_t)pos * item, (const char *)tin[j] + ((size_t)(r * x->size) + (size_t)o * len) * item,
                           len * item);
                else
                    memset(Y + (size_t)pos * item, 0, len * item);
                pos += (int64_t)len;
            }
        }
    }
}

/* ---------------- where ---------------- */

/* cond broadcast to the output, one byte per element; kept in aux (packed into int64 words)
 * while the node is recorded, since the VJP selects with it. */
static int64_t mask_words(int64_t size) { return (size + 7) / 8; }

/* n = mask ? a : b, mask one byte per element of n (shared with the replay). */
static void where_select(ad_node *n, const uint8_t *mask, const ad_node *a, const ad_node *b)
{
    int nout = n->ndim;
    const int64_t *shape = n->shape;
    int64_t so[AD_MAXDIM], sa[AD_MAXDIM], sb[AD_MAXDIM];
    ad_contig_strides(nout, shape, so);
    ad_bcast_strides(a->ndim, a->shape, nout, shape, sa);
    ad_bcast_strides(b->ndim, b->shape, nout, shape, sb);
    {
        int64_t *strides[3] = {so, sa, sb};
        ad_iter it;
        ad_iter_init(&it, 3, nout, shape, strides);
        int64_t len = it.shape[it.ndim - 1], d0 = it.st[0][it.ndim - 1], da = it.st[1][it.ndim - 1],
                db = it.st[2][it.ndim - 1];
#define SELECT(TT) do {                                                                  \
        const TT *A = a->data, *B = b->data; TT *Y = n->data;                            \
        AD_ITER_FOR(it, oo, oa, ob)                                                      \
            for (int64_t k = 0; k < len; k++)                                            \
                Y[oo + k * d0] = mask[oo + k * d0] ? A[oa + k * da] : B[ob + k * db];    \
    } while (0)
        if (n->dtype == AD_F64) SELECT(double); else SELECT(float);
#undef SELECT
    }
}

int ad_mk_where(ad_tape *T, int cnd, const int64_t *cshape, const uint8_t *cond, ad_node *a, ad_node *b, ad_node **out)
{
    if (cnd < 0 || cnd > AD_MAXDIM || (cnd > 0 && !cshape))
        return ad_err(AD_ERR_VALUE, "where: the condition must have 0 to %d dimensions, got %d", AD_MAXDIM, cnd);
    ad_node *n = NULL, *tmp = NULL;
    int nab, nout, st;
    int64_t sab[AD_MAXDIM], shape[AD_MAXDIM];
    uint8_t *mask = NULL;
    size_t mask_bytes = 0;
    if ((st = ad_broadcast_shapes("where", a->ndim, a->shape, b->ndim, b->shape, &nab, sab)) ||
        (st = ad_broadcast_shapes("where", cnd, cshape, nab, sab, &nout, shape)))
        goto out;
    int64_t csize = ad_shape_size(cnd, cshape);
    if (csize && !cond) { st = ad_err(AD_ERR_VALUE, "where: cond is NULL"); goto out; }
    if (a->dtype != b->dtype) {
        ad_node **lo = a->dtype == AD_F32 ? &a : &b;
        if ((st = upcast(T, *lo, lo))) goto out;
        tmp = *lo;
    }
    if ((st = ad_node_new(T, AD_OP_WHERE, a->dtype, nout, shape, &n))) goto out;
    mask_bytes = (size_t)mask_words(n->size) * sizeof(int64_t);
    mask = ad_buf_alloc(T, mask_bytes);
    if (!mask) { ad_node_discard(T, n); st = ad_err(AD_ERR_MEMORY, "where: out of memory"); goto out; }
    int64_t sc[AD_MAXDIM], so[AD_MAXDIM];
    ad_contig_strides(nout, shape, so);
    ad_bcast_strides(cnd, cshape, nout, shape, sc);
    {
        int64_t *strides[2] = {so, sc};
        ad_iter it;
        ad_iter_init(&it, 2, nout, shape, strides);
        int64_t len = it.shape[it.ndim - 1], d0 = it.st[0][it.ndim - 1], d1 = it.st[1][it.ndim - 1];
        AD_ITER_FOR(it, oo, oc, o2) {
            (void)o2;
            for (int64_t k = 0; k < len; k++) mask[oo + k * d0] = cond[oc + k * d1] != 0;
        }
    }
    where_select(n, mask, a, b);
    ad_node *ins[2] = {a, b};
    if (ad_will_record(T, n->op, 2, ins)) {
        n->aux = (int64_t *)mask;
        n->aux_len = (int32_t)mask_words(n->size);
        if ((int64_t)n->aux_len != mask_words(n->size)) {
            n->aux = NULL;
            n->aux_len = 0;
            ad_node_discard(T, n);
            st = ad_err(AD_ERR_VALUE, "where: result too large to record");
            goto out;
        }
        mask = NULL;
    }
    if (!(st = ad_record(T, n, 2, ins))) *out = n;
out:
    if (mask) ad_buf_free(T, mask, mask_bytes);
    if (tmp) ad_node_unref(T, tmp);
    return st;
}

int64_t ad_where(int cnd, const int64_t *cshape, const uint8_t *cond, int64_t ha, int64_t hb)
{
    if (cnd < 0 || cnd > AD_MAXDIM || (cnd > 0 && !cshape))
        return ad_err(AD_ERR_VALUE, "where: the condition must have 0 to %d dimensions, got %d", AD_MAXDIM, cnd);
    /* the condition's shape comes from the caller, not from a node: validate it like one */
    int64_t size = 1;
    for (int i = 0; i < cnd; i++) {
        if (cshape[i] < 0)
            return ad_err(AD_ERR_VALUE, "where: negative dimension %lld in the condition's shape", (long long)cshape[i]);
        if (cshape[i] && size > (INT64_MAX / 8) / cshape[i])
            return ad_err(AD_ERR_VALUE, "where: the condition's shape has too many elements to address");
        size *= cshape[i];
    }
    ad_tape *T;
    int64_t st = ad_lock_current(&T);
    if (st) return st;
    ad_node *a, *b, *n;
    if (!(st = ad_resolve(T, ha, &a)) && !(st = ad_resolve(T, hb, &b)) &&
        !(st = ad_mk_where(T, cnd, cshape, cond, a, b, &n)))
        st = ad_handle(T, n);
    ad_unlock(T);
    return st;
}

/* Selection, not multiplication: the side not chosen gets exactly 0 whatever g holds. The
 * contribution is output-shaped; the sweep sums broadcast axes back. */
static int vjp_where(ad_node *n, const void *g, int which, ad_sink *s)
{
    const uint8_t *M = (const uint8_t *)n->aux;
    uint8_t pick = which == 0;
#define SEL(TT) do {                                                                     \
        TT *D = s->dst; const TT *G = g;                                                 \
        if (s->accumulate) { for (int64_t i = 0; i < s->size; i++) if (M[i] == pick) D[i] += G[i]; } \
        else for (int64_t i = 0; i < s->size; i++) D[i] = M[i] == pick ? G[i] : 0;       \
    } while (0)
    if (n->dtype == AD_F64) SEL(double); else SEL(float);
#undef SEL
    return AD_OK;
}

/* JVP: the tangent is selected exactly as the value was (np.where(cond, ta, tb)); a side without
 * a tangent selects 0. */
static void jvp_where(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *a = n->in[0], *b = n->in[1];
    const uint8_t *M = (const uint8_t *)n->aux;
    int64_t so[AD_MAXDIM], sa[AD_MAXDIM], sb[AD_MAXDIM];
    ad_contig_strides(n->ndim, n->shape, so);
    ad_bcast_strides(a->ndim, a->shape, n->ndim, n->shape, sa);
    ad_bcast_strides(b->ndim, b->shape, n->ndim, n->shape, sb);
    int64_t *strides[3] = {so, sa, sb};
    ad_iter it;
    ad_iter_init(&it, 3, n->ndim, n->shape, strides);
    int64_t len = it.shape[it.ndim - 1], d0 = it.st[0][it.ndim - 1], da = it.st[1][it.ndim - 1],
            db = it.st[2][it.ndim - 1];
#define SELECT_T(TT) do {                                                                \
        for (int64_t r = 0; r < k; r++) {                                                \
            const TT *TA = tin[0] ? (const TT *)tin[0] + r * a->size : NULL;             \
            const TT *TB = tin[1] ? (const TT *)tin[1] + r * b->size : NULL;             \
            TT *TO = (TT *)tout + r * n->size;                                           \
            AD_ITER_FOR(it, oo, oa, ob)                                                  \
                for (int64_t q = 0; q < len; q++) {                                      \
                    int64_t io = oo + q * d0;                                            \
                    TO[io] = M[io] ? (TA ? TA[oa + q * da] : 0) : (TB ? TB[ob + q * db] : 0); \
                }                                                                        \
        }                                                                                \
    } while (0)
    if (n->dtype == AD_F64) SELECT_T(double); else SELECT_T(float);
#undef SELECT_T
}

/* ---------------- clip ---------------- */

/* n = clip(x, n->c[0], n->c[1]) (shared with the replay). */
static void clip_values(ad_node *n, const ad_node *x)
{
    double lo = n->c[0], hi = n->c[1];
    int nan_bound = lo != lo || hi != hi;
#define CLIP(TT) do {                                                                    \
        const TT *X = x->data; TT *Y = n->data; const TT l = (TT)lo, h = (TT)hi;         \
        for (int64_t i = 0; i < n->size; i++) {                                          \
            TT t = X[i] < l ? l : X[i];                                                  \
            Y[i] = nan_bound ? (TT)NAN : (t > h ? h : t);                                \
        }                                                                                \
    } while (0)
    if (n->dtype == AD_F64) CLIP(double); else CLIP(float);
#undef CLIP
}

/* np.clip is minimum(maximum(x, lo), hi): NaN x stays NaN, lo > hi gives hi, a NaN bound gives NaN. */
int ad_mk_clip(ad_tape *T, ad_node *x, double lo, double hi, ad_node **out)
{
    ad_node *n;
    int st = ad_node_new(T, AD_OP_CLIP, x->dtype, x->ndim, x->shape, &n);
    if (st) return st;
    n->c[0] = lo;
    n->c[1] = hi;
    clip_values(n, x);
    if ((st = ad_record(T, n, 1, &x))) return st;
    *out = n;
    return AD_OK;
}

int64_t ad_clip(int64_t hx, double lo, double hi)
{
    AD_ONE_INPUT_ENTRY(hx, ad_mk_clip(T, x, lo, hi, &n));
}

/* Gradient 1 on the closed interval [lo, hi] (as PyTorch's clamp), 0 strictly outside, NaN at a
 * NaN input; a zero cotangent contributes 0 regardless, and a nonzero one is multiplied by the
 * 0 outside (an infinite cotangent gives NaN there, as in the reference). */
static int vjp_clip(ad_node *n, const void *g, ad_sink *s)
{
    const ad_node *x = n->in[0];
#define CLIP_VJP(TT) do {                                                                \
        TT *D = s->dst; const TT *G = g, *X = x->data;                                   \
        const TT l = (TT)n->c[0], h = (TT)n->c[1];                                       \
        for (int64_t i = 0; i < s->size; i++) {                                          \
            TT v = X[i];                                                                 \
            TT d = SAFE(G[i], v != v ? (TT)NAN : (v >= l && v <= h ? G[i] : G[i] * (TT)0)); \
            if (s->accumulate) D[i] += d; else D[i] = d;                                 \
        }                                                                                \
    } while (0)
    if (n->dtype == AD_F64) CLIP_VJP(double); else CLIP_VJP(float);
#undef CLIP_VJP
    return AD_OK;
}

/* JVP: the tangent passes on [lo, hi], is 0 outside and NaN at a NaN input; a zero tangent
 * contributes exactly 0 (the NaN-safety rule, as in the VJP). */
static void jvp_clip(ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    const ad_node *x = n->in[0];
#define CLIP_JVP(TT) do {                                                                \
        const TT *X = x->data, l = (TT)n->c[0], h = (TT)n->c[1];                          \
        for (int64_t r = 0; r < k; r++) {                                                \
            const TT *TX = (const TT *)tin[0] + r * x->size; TT *TO = (TT *)tout + r * n->size; \
            for (int64_t i = 0; i < n->size; i++) {                                      \
                TT v = X[i], t = TX[i];                                                  \
                TT d = v != v ? (TT)NAN : (v >= l && v <= h ? 1 : 0);                    \
                TO[i] = SAFE(t, t * d);                                                  \
            }                                                                            \
        }                                                                                \
    } while (0)
    if (n->dtype == AD_F64) CLIP_JVP(double); else CLIP_JVP(float);
#undef CLIP_JVP
}

int ad_vjp_index(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s)
{
    (void)T;
    switch (n->op) {
    case AD_OP_GATHER: return vjp_gather(n, g, s);
    case AD_OP_SLICE: return vjp_slice(n, g, s);
    case AD_OP_SCATTER_ADD: return vjp_scatter(n, g, s);
    case AD_OP_CONCATENATE: case AD_OP_STACK: return vjp_concatenate(n, g, which, s);
    case AD_OP_WHERE: return vjp_where(n, g, which, s);
    case AD_OP_CLIP: return vjp_clip(n, g, s);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no VJP for op %d", n->op);
    }
}

int ad_jvp_index(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout)
{
    (void)T;
    switch (n->op) {
    case AD_OP_GATHER: jvp_gather(n, tin, k, tout); return AD_OK;
    case AD_OP_SLICE: jvp_slice(n, tin, k, tout); return AD_OK;
    case AD_OP_SCATTER_ADD: jvp_scatter(n, tin, k, tout); return AD_OK;
    case AD_OP_CONCATENATE: case AD_OP_STACK: jvp_concatenate(n, tin, k, tout); return AD_OK;
    case AD_OP_WHERE: jvp_where(n, tin, k, tout); return AD_OK;
    case AD_OP_CLIP: jvp_clip(n, tin, k, tout); return AD_OK;
    default: return ad_err(AD_ERR_RUNTIME, "internal: no JVP for op %d", n->op);
    }
}

/* ---------------- differentiable rules (recorded ops, for higher order) ---------------- */

/* a 0-d zero of n's dtype: the side of a selection that is not chosen */
static int zero_of(ad_tape *T, const ad_node *n, ad_node **out)
{
    return ad_mk_full(T, n->dtype, 0, NULL, 0, out);
}

/* where(mask, v, 0) (or where(mask, 0, v) with v_second) over n's shape */
static int select_mask(ad_tape *T, const ad_node *n, const uint8_t *mask, ad_node *v, int v_second, ad_node **out)
{
    ad_node *zero;
    int st = zero_of(T, n, &zero);
    if (st) return st;
    st = ad_mk_where(T, n->ndim, n->shape, mask, v_second ? zero : v, v_second ? v : zero, out);
    ad_node_unref(T, zero);
    return st;
}

/* The block of g that concatenate / stack filled from input `which`, as a gather of g's flat
 * positions (so its own VJP is a scatter_add, and that one's a gather again). */
static int rec_concat_block(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    const ad_node *m = n->in[which];
    int ax = axis_of(n);
    int64_t outer, inner, offset = 0;
    axis_split(n, ax, &outer, &inner);
    for (int k = 0; k < which; k++) offset += extent(n, n->in[k], ax);
    /* one block of len elements per outer block of g */
    int64_t len = extent(n, m, ax) * inner, total = n->shape[ax] * inner, count = len ? outer : 0;
    size_t bytes = (size_t)(count ? count : 1) * sizeof(int64_t);
    int64_t *idx = ad_buf_alloc(T, bytes);
    if (!idx) return ad_err(AD_ERR_MEMORY, "differentiable rule of %s: out of memory", ad_ops[n->op].name);
    for (int64_t o = 0; o < count; o++) idx[o] = o * total + offset * inner;
    int st = ad_mk_gather(T, g, m->ndim, m->shape, idx, len ? len : 1, out);
    ad_buf_free(T, idx, bytes);
    return st;
}

/* clip's derivative as a constant node (1 on [lo, hi], 0 outside, NaN at a NaN input: piecewise
 * constant), times w (a cotangent or tangent) with the zero-safe product: the same numbers as the
 * numeric VJP and JVP, an infinite cotangent outside the interval included. */
static int clip_times_derivative(ad_tape *T, const ad_node *n, ad_node *w, ad_node **out)
{
    const ad_node *x = n->in[0];
    ad_node *d;
    int st = ad_mk_full(T, n->dtype, x->ndim, x->shape, 0, &d);
    if (st) return st;
#define DERIV(TT) do {                                                                   \
        const TT *X = x->data, l = (TT)n->c[0], h = (TT)n->c[1]; TT *D = d->data;         \
        for (int64_t i = 0; i < x->size; i++)                                            \
            D[i] = X[i] != X[i] ? (TT)NAN : (X[i] >= l && X[i] <= h ? 1 : 0);            \
    } while (0)
    if (n->dtype == AD_F64) DERIV(double); else DERIV(float);
#undef DERIV
    st = ad_mk_binary(T, AD_OP_MUL_SAFE, w, d, out);
    ad_node_unref(T, d);
    return st;
}

int ad_vjp_rec_index(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out)
{
    const ad_node *x = n->in[0];
    switch (n->op) {
    case AD_OP_GATHER: return ad_mk_scatter_add(T, g, x->ndim, x->shape, n->aux, n->block, out);
    case AD_OP_SCATTER_ADD: return ad_mk_gather(T, g, x->ndim, x->shape, n->aux, n->block, out);
    case AD_OP_SLICE: return rec_slice_back(T, n, g, out);
    case AD_OP_CONCATENATE: case AD_OP_STACK: return rec_concat_block(T, n, g, which, out);
    /* output-shaped, as the numeric contribution: the sweep sums the broadcast axes */
    case AD_OP_WHERE: return select_mask(T, n, (const uint8_t *)n->aux, g, which == 1, out);
    case AD_OP_CLIP: return clip_times_derivative(T, n, g, out);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

/* JVPs: each op applied to the tangents, with 0 for an input that has none. */
static int jvp_rec_concatenate(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    size_t bytes = (size_t)n->nin * sizeof(ad_node *);
    ad_node **ts = ad_buf_alloc(T, bytes);
    if (!ts) return ad_err(AD_ERR_MEMORY, "differentiable rule of %s: out of memory", ad_ops[n->op].name);
    int st = AD_OK, made = 0;
    for (; made < n->nin && !st; made++) {
        if (tin[made]) { ts[made] = tin[made]; tin[made]->refs++; }
        else st = ad_mk_full(T, n->dtype, n->in[made]->ndim, n->in[made]->shape, 0, &ts[made]);
    }
    if (st) made--;   /* the failed entry holds nothing */
    if (!st) st = ad_mk_concatenate(T, n->nin, ts, axis_of(n), n->op == AD_OP_STACK, out);
    for (int j = 0; j < made; j++) ad_node_unref(T, ts[j]);
    ad_buf_free(T, ts, bytes);
    return st;
}

int ad_jvp_rec_index(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out)
{
    switch (n->op) {
    case AD_OP_GATHER: return ad_mk_gather(T, tin[0], n->ndim, n->shape, n->aux, n->block, out);
    case AD_OP_SCATTER_ADD: return ad_mk_scatter_add(T, tin[0], n->ndim, n->shape, n->aux, n->block, out);
    case AD_OP_SLICE: return ad_mk_slice(T, tin[0], n->ndim, n->shape, n->aux[0], n->aux + 1, out);
    case AD_OP_CONCATENATE: case AD_OP_STACK: return jvp_rec_concatenate(T, n, tin, out);
    case AD_OP_WHERE: {
        ad_node *zero;
        int st = zero_of(T, n, &zero);
        if (st) return st;
        st = ad_mk_where(T, n->ndim, n->shape, (const uint8_t *)n->aux, tin[0] ? tin[0] : zero,
                         tin[1] ? tin[1] : zero, out);
        ad_node_unref(T, zero);
        return st;
    }
    case AD_OP_CLIP: return clip_times_derivative(T, n, tin[0], out);
    default: return ad_err(AD_ERR_RUNTIME, "internal: no differentiable rule for op %s", ad_ops[n->op].name);
    }
}

/* The forward of a recorded node of this family from its inputs' values and its saved index,
 * mask or view (the replay, replay.c). */
int ad_fwd_index(ad_node *n, ad_node *const *ins)
{
    const ad_node *x = ins[0];
    switch (n->op) {
    case AD_OP_GATHER:
        pick(n->dtype, n->data, x->data, n->aux, n->size / n->block, n->block, 0);
        return AD_OK;
    case AD_OP_SCATTER_ADD:
        put(n->dtype, n->data, n->size, x->data, n->aux, x->size / n->block, n->block, 0);
        return AD_OK;
    case AD_OP_SLICE:
        if (n->size)
            ad_copy_strided(n->dtype, n->data, (const char *)x->data + (size_t)n->aux[0] * ad_itemsize(n->dtype),
                            n->ndim, n->shape, n->aux + 1);
        return AD_OK;
    case AD_OP_CONCATENATE:
    case AD_OP_STACK:
        concat_values(n, n->nin, ins);
        return AD_OK;
    case AD_OP_WHERE:
        where_select(n, (const uint8_t *)n->aux, ins[0], ins[1]);
        return AD_OK;
    case AD_OP_CLIP:
        clip_values(n, x);
        return AD_OK;
    default:
        return ad_err(AD_ERR_RUNTIME, "internal: no forward for op %d", n->op);
    }
}
