/* Shapes, strides, NumPy broadcasting, reduction axes and the strided iterator every kernel
 * loops with. */
#include "core.h"
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* An empty shape may have huge other dimensions (0, 2^40, 2^40): their product overflows, and
 * no element is ever addressed, so sizes and strides of empty shapes are 0. */
static int has_zero_dim(int ndim, const int64_t *shape)
{
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 1;
    return 0;
}

int64_t ad_shape_size(int ndim, const int64_t *shape)
{
    if (has_zero_dim(ndim, shape)) return 0;
    int64_t s = 1;
    for (int i = 0; i < ndim; i++) s *= shape[i];
    return s;
}

int ad_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb,
                        int *nout, int64_t *sout)
{
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int64_t a = i < n - na ? 1 : sa[i - (n - na)];
        int64_t b = i < n - nb ? 1 : sb[i - (n - nb)];
        if (a != b && a != 1 && b != 1) {
            char b1[160], b2[160];
            return ad_err(AD_ERR_VALUE, "%s: operands could not be broadcast together with shapes %s %s",
                          op, ad_shape_str(b1, sizeof b1, na, sa), ad_shape_str(b2, sizeof b2, nb, sb));
        }
        sout[i] = a == 1 ? b : a;
    }
    *nout = n;
    return AD_OK;
}

void ad_contig_strides(int ndim, const int64_t *shape, int64_t *st)
{
    if (has_zero_dim(ndim, shape)) { for (int i = 0; i < ndim; i++) st[i] = 0; return; }
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) { st[i] = s; s *= shape[i]; }
}

void ad_bcast_strides(int ndim, const int64_t *shape, int nout, const int64_t *out, int64_t *st)
{
    (void)out;
    if (has_zero_dim(ndim, shape)) { for (int i = 0; i < nout; i++) st[i] = 0; return; }
    int64_t s = 1;
    for (int i = nout - 1; i >= 0; i--) {
        int j = i - (nout - ndim);
        if (j < 0 || shape[j] == 1) {
            st[i] = 0;   /* missing or size-1 axes never advance */
        } else {
            st[i] = s;
            s *= shape[j];
        }
    }
}

int ad_normalize_axes(const char *op, int ndim, int naxes, const int64_t *axes, uint64_t *mask)
{
    uint64_t m = 0;
    if (naxes < 0) {
        for (int i = 0; i < ndim; i++) m |= (uint64_t)1 << i;
        *mask = m;
        return AD_OK;
    }
    if (naxes > 0 && !axes) return ad_err(AD_ERR_VALUE, "%s: axes is NULL", op);
    for (int i = 0; i < naxes; i++) {
        int64_t a = axes[i];
        if (a < -(int64_t)ndim || a >= ndim)
            return ad_err(AD_ERR_VALUE, "%s: axis %lld is out of bounds for a tensor of dimension %d", op, (long long)a, ndim);
        if (a < 0) a += ndim;
        if (m & ((uint64_t)1 << a))
            return ad_err(AD_ERR_VALUE, "%s: duplicate value in axis (axis %lld given twice)", op, (long long)a);
        m |= (uint64_t)1 << a;
    }
    *mask = m;
    return AD_OK;
}

/* Merge axes that are contiguous for every operand, drop size-1 axes: most elementwise work
 * becomes one flat inner loop. */
void ad_iter_init(ad_iter *it, int nop, int ndim, const int64_t *shape, int64_t *const *strides)
{
    it->nop = nop;
    int k = 0;
    if (has_zero_dim(ndim, shape)) {
        it->ndim = 1;
        it->shape[0] = 0;
        for (int o = 0; o < 3; o++) it->st[o][0] = 0;
        return;
    }
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 1) continue;
        if (k > 0) {
            int merge = 1;
            for (int o = 0; o < nop; o++)
                if (it->st[o][k - 1] != strides[o][i] * shape[i]) { merge = 0; break; }
            if (merge) {
                it->shape[k - 1] *= shape[i];
                for (int o = 0; o < nop; o++) it->st[o][k - 1] = strides[o][i];
                continue;
            }
        }
        it->shape[k] = shape[i];
        for (int o = 0; o < nop; o++) it->st[o][k] = strides[o][i];
        k++;
    }
    if (k == 0) {
        it->shape[0] = 1;
        for (int o = 0; o < 3; o++) it->st[o][0] = 0;
        k = 1;
    }
    for (int o = nop; o < 3; o++)
        for (int i = 0; i < k; i++) it->st[o][i] = 0;
    it->ndim = k;
}

int ad_iter_next(const ad_iter *it, int64_t *idx, int64_t *o0, int64_t *o1, int64_t *o2)
{
    for (int d = it->ndim - 2; d >= 0; d--) {
        if (++idx[d] < it->shape[d]) {
            *o0 += it->st[0][d]; *o1 += it->st[1][d]; *o2 += it->st[2][d];
            return 0;
        }
        *o0 -= it->st[0][d] * (it->shape[d] - 1);
        *o1 -= it->st[1][d] * (it->shape[d] - 1);
        *o2 -= it->st[2][d] * (it->shape[d] - 1);
        idx[d] = 0;
    }
    return 1;
}

#define UNBROADCAST(T)                                                                     \
    do {                                                                                   \
        T *a = adj; const T *s = src;                                                      \
        if (!accumulate) memset(a, 0, (size_t)ad_shape_size(nin, in_shape) * sizeof(T)); \
        int64_t sa[AD_MAXDIM], ss[AD_MAXDIM];                                              \
        ad_bcast_strides(nin, in_shape, nout, out_shape, sa);                              \
        ad_contig_strides(nout, out_shape, ss);                                            \
        int64_t *strides[2] = {sa, ss};                                                    \
        ad_iter it;                                                                        \
        ad_iter_init(&it, 2, nout, out_shape, strides);                                    \
        int64_t len = it.shape[it.ndim - 1], ia = it.st[0][it.ndim - 1],                   \
                is = it.st[1][it.ndim - 1];                                                \
        AD_ITER_FOR(it, oa, os, o2) {                                                      \
            (void)o2;                                                                      \
            if (ia == 0) {                                                                 \
                a[oa] += (T)AD_SUM(T, s + os, len, is);                                    \
            } else {                                                                       \
                for (int64_t i = 0; i < len; i++) a[oa + i * ia] += s[os + i * is];        \
            }                                                                              \
        }                                                                                  \
    } while (0)

AD_SIMD void ad_unbroadcast_into(int dtype, void *adj, int accumulate, int nin, const int64_t *in_shape,
                         const void *src, int nout, const int64_t *out_shape)
{
    if (dtype == AD_F64) UNBROADCAST(double);
    else UNBROADCAST(float);
}

/* A transpose-like pass (each side contiguous along a different axis) walked row by row reads
 * or writes one element per cache line. It goes in BLOCK x BLOCK squares of 8 x 8 elements: a
 * square's 8 rows on each side are 8 cache lines (a whole line each for float64), and 8 lines a
 * power-of-two stride apart fit one L1 set's 12 ways, where 32 (the tile this had before) evicted
 * each other: a 1024 x 1024 float64 transpose took 4.0 ms. A BLOCK square's 64 + 64 rows stay
 * within the TLB's reach. */
#define BLOCK 64
#define MICRO 8

#define PASS(T, ASSIGN) do {                                                               \
        T *d = dst; const T *s = src;                                                      \
        if (q < 0) {                                                                       \
            AD_ITER_FOR(it, od, os, o2) {                                                  \
                (void)o2;                                                                  \
                T *dd = d + od; const T *ss = s + os;                                      \
                /* one side contiguous: a loop the compiler unrolls without stride checks */  \
                if (dl == 1 && sl == 1) for (int64_t j = 0; j < len; j++) ASSIGN(dd[j], ss[j]); \
                else if (dl == 1) for (int64_t j = 0; j < len; j++) ASSIGN(dd[j], ss[j * sl]); \
                else if (sl == 1) for (int64_t j = 0; j < len; j++) ASSIGN(dd[j * dl], ss[j]); \
                else for (int64_t j = 0; j < len; j++) ASSIGN(dd[j * dl], ss[j * sl]);     \
            }                                                                              \
            break;                                                                         \
        }                                                                                  \
        int64_t idx[AD_MAXDIM] = {0}, od = 0, os = 0, nq = it.shape[q], dq = it.st[0][q], sq = it.st[1][q]; \
        for (;;) {                                                                         \
            for (int64_t I0 = 0; I0 < nq; I0 += BLOCK)                                     \
                for (int64_t J0 = 0; J0 < len; J0 += BLOCK) {                              \
                    int64_t I1 = I0 + BLOCK < nq ? I0 + BLOCK : nq;                        \
                    int64_t J1 = J0 + BLOCK < len ? J0 + BLOCK : len;                      \
                    for (int64_t i0 = I0; i0 < I1; i0 += MICRO)                            \
                        for (int64_t j0 = J0; j0 < J1; j0 += MICRO) {                      \
                            T *db = d + od + i0 * dq + j0 * dl;                            \
                            const T *sb = s + os + i0 * sq + j0 * sl;                      \
                            if (i0 + MICRO <= I1 && j0 + MICRO <= J1 && dl == 1 && sq == 1) { \
                                for (int i = 0; i < MICRO; i++)                            \
                                    for (int j = 0; j < MICRO; j++)                        \
                                        ASSIGN(db[i * dq + j], sb[i + j * sl]);            \
                            } else if (i0 + MICRO <= I1 && j0 + MICRO <= J1 && sl == 1 && dq == 1) { \
                                for (int j = 0; j < MICRO; j++)                            \
                                    for (int i = 0; i < MICRO; i++)                        \
                                        ASSIGN(db[i + j * dl], sb[i * sq + j]);            \
                            } else {                                                       \
                                int64_t ni = I1 - i0 < MICRO ? I1 - i0 : MICRO;            \
                                int64_t nj = J1 - j0 < MICRO ? J1 - j0 : MICRO;            \
                                for (int64_t i = 0; i < ni; i++)                           \
                                    for (int64_t j = 0; j < nj; j++)                       \
                                        ASSIGN(db[i * dq + j * dl], sb[i * sq + j * sl]);  \
                            }                                                              \
                        }                                                                  \
                }                                                                          \
            int d_ = it.ndim - 2;                                                          \
            for (; d_ >= 0; d_--) {                                                        \
                if (d_ == q) continue;                                                     \
                if (++idx[d_] < it.shape[d_]) { od += it.st[0][d_]; os += it.st[1][d_]; break; } \
                od -= it.st[0][d_] * (it.shape[d_] - 1);                                   \
                os -= it.st[1][d_] * (it.shape[d_] - 1);                                   \
                idx[d_] = 0;                                                               \
            }                                                                              \
            if (d_ < 0) break;                                                             \
        }                                                                                  \
    } while (0)
#define SET(a, b) ((a) = (b))
#define ADD(a, b) ((a) += (b))

void ad_strided_pass(int dtype, void *dst, const int64_t *dst_strides, const void *src,
                     const int64_t *src_strides, int ndim, const int64_t *shape, int accumulate)
{
    int64_t sd[AD_MAXDIM], ss[AD_MAXDIM];
    for (int i = 0; i < ndim; i++) { sd[i] = dst_strides[i]; ss[i] = src_strides[i]; }
    int64_t *strides[2] = {sd, ss};
    ad_iter it;
    ad_iter_init(&it, 2, ndim, shape, strides);
    int last = it.ndim - 1, q = -1;
    int64_t len = it.shape[last], dl = it.st[0][last], sl = it.st[1][last];
    /* tile when the side that is not contiguous along the last axis is contiguous along another */
    if (len >= 8 && (dl != 1 || sl != 1))
        for (int i = 0; i < last; i++)
            if (it.shape[i] >= 8 && ((dl != 1 && it.st[0][i] == 1) || (sl != 1 && it.st[1][i] == 1))) q = i;
    if (!accumulate && q < 0 && dl == 1 && sl == 1) {
        /* runs of a slice or a block: ad_copy moves a run of any length at full width */
        size_t isz = ad_itemsize(dtype), run = (size_t)len * isz;
        AD_ITER_FOR(it, od, os, o2) {
            (void)o2;
            ad_copy((char *)dst + (size_t)od * isz, (const char *)src + (size_t)os * isz, run);
        }
        return;
    }
    if (dtype == AD_F64) { if (accumulate) PASS(double, ADD); else PASS(double, SET); }
    else { if (accumulate) PASS(float, ADD); else PASS(float, SET); }
}
#undef PASS
#undef SET
#undef ADD
#undef BLOCK
#undef MICRO

/* core.h's ad_copy between 2 KB and 768 KB. GCC would turn the loop back into a memcpy call
 * (loop distribution), which is what it avoids. */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void ad_copy_mid(void *restrict dst, const void *restrict src, size_t n)
{
    typedef char v16 __attribute__((vector_size(16)));
    char *d = dst;
    const char *s = src;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        v16 a, b, c, e;
        __builtin_memcpy(&a, s + i, 16);
        __builtin_memcpy(&b, s + i + 16, 16);
        __builtin_memcpy(&c, s + i + 32, 16);
        __builtin_memcpy(&e, s + i + 48, 16);
        __builtin_memcpy(d + i, &a, 16);
        __builtin_memcpy(d + i + 16, &b, 16);
        __builtin_memcpy(d + i + 32, &c, 16);
        __builtin_memcpy(d + i + 48, &e, 16);
    }
    memcpy(d + i, s + i, n - i);
}

void ad_copy_strided(int dtype, void *dst, const void *src, int ndim, const int64_t *shape,
                     const int64_t *src_strides)
{
    int64_t sd[AD_MAXDIM];
    ad_contig_strides(ndim, shape, sd);
    ad_strided_pass(dtype, dst, sd, src, src_strides, ndim, shape, 0);
}

/* core.h's copy for large results: streaming stores of whole 64-byte lines (SSE2, in every
 * x86-64), the partial lines at either end copied normally (a line only partly streamed is read
 * back from memory to be completed: short runs side by side, as concatenate on the last axis
 * writes, were 1.6x slower so); elsewhere an ordinary copy. The fence orders the streamed stores
 * before whatever the op does next (another thread of the pool may read the result). */
void ad_copy_stream(void *restrict dst, const void *restrict src, size_t n)
{
#if defined(__SSE2__)
    char *d = dst;
    const char *s = src;
    size_t i = (64 - ((uintptr_t)d & 63)) & 63;
    if (n < 1024) { ad_copy(dst, src, n); return; }
    memcpy(d, s, i);
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i)), b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32)), e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_stream_si128((__m128i *)(d + i), a);
        _mm_stream_si128((__m128i *)(d + i + 16), b);
        _mm_stream_si128((__m128i *)(d + i + 32), c);
        _mm_stream_si128((__m128i *)(d + i + 48), e);
    }
    _mm_sfence();
    memcpy(d + i, s + i, n - i);
#else
    ad_copy(dst, src, n);
#endif
}
