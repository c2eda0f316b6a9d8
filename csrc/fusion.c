/* Fused replay of elementwise regions: a plan's chain of elementwise ops on one large shape runs
 * tile by tile, so that its intermediates live in a few cache-sized scratch tiles instead of going
 * to memory once per op, forward and backward.
 *
 * A region is a run of consecutive forward steps (no other op between them in creation order,
 * hence their reverse steps are consecutive too) of unary or binary elementwise ops of at least
 * min_elements elements, all of one shape and dtype, whose operands are either of that shape or
 * a single value broadcast to it (a 0-d w in x * w). Its ops' values that something outside the
 * region reads (a later op, the root, a watched tensor) are written to the plan's arena as
 * usual; the others only to a scratch tile. Forward: for each tile of `tile` elements, each op's
 * generated forward kernel on the tile's slice. Reverse: for each tile, the region's scratch
 * values computed again from its operands, then the plan's reverse steps of the region in their
 * order, each the generated w * d_j kernel on the slice, adjoints of the region's inner values in
 * scratch tiles, those of its operands and outputs in the arena.
 *
 * Why the results are the plan's unfused ones, bit for bit. Every step is elementwise over the
 * same n elements (or sums into a one-element adjoint, below), so running the steps tile by tile
 * applies to each element the same operations in the same order as running them whole; buffers
 * the plan reuses by liveness are read before they are written at each element too. The kernels
 * give an element the same value wherever a call starts, provided calls are cut at multiples of
 * AD_PAR_ALIGN (the eager drivers' chunk and thread split rely on the same): tiles are multiples
 * of it, 64-byte aligned and apart like the arena's buffers (see arena_take in replay.c). A
 * one-element operand's adjoint is a sum over all n elements: eager's vjp_ew sums it in eight
 * lanes carried along the run (ad_ew_lane_sum); the fused reverse carries the same lanes across
 * the tiles, in the same element order, and adds the total at the same point of the sweep. So a
 * fused replay equals the unfused one (which equals eager) exactly; tests/test_fusion.py checks
 * it bit for bit. Tiles run in order on the calling thread (the lanes need the order; the eager
 * ops of 2 * 32768 elements or more are split over the pool instead).
 *
 * A sum (or mean) of all of the region's last shape that is the plan's root is folded in: the
 * forward adds each tile into the lanes of AD_SUM, block by block of AD_SUM_BLOCK as reduce.c's
 * sum does (tiles divide the block), so the summed tensor never goes to memory, and its reverse
 * step (g copied to every element) becomes a tile of copies. When a replay wants gradients with
 * the root's cotangent known before the forward (ad_plan_run), such a region runs its reverse
 * steps in the forward's pass, on the tile's values while they are in cache: one pass reads the
 * region's inputs and writes their adjoints, nothing else (the reverse later skips the region).
 * The order of every element's operations is still the unfused one: nothing before the region's
 * reverse steps touches their targets but the folded sum's step. */
#include "fusion.h"
#include <stdlib.h>
#include <string.h>

enum { TILE_BUDGET = 192 * 1024, TILE_MAX = 4096 };

/* A tile operand: element off of the tile at base + off * stride, an arena tensor (stride: the
 * item size) or a scratch tile (stride 0). base NULL: no operand. */
typedef struct { char *base; size_t stride; } tref;

static inline void *at(tref r, int64_t off) { return r.base ? r.base + (size_t)off * r.stride : NULL; }

typedef struct { ad_ew_fn fn; tref in[2]; tref out; const double *c; } top;             /* forward op */
/* a reverse step: d's product, or (uniform) the folded sum's copies of its cotangent */
typedef struct { ad_ew_wfn d; tref in[3]; tref g; tref target; const double *c; int acc, red, uniform; } tvjp;
typedef struct { void *dst; int acc; double p[8]; } tsum;                                /* into one element */
typedef struct { char *tile; const void *src; } tfill;                                   /* broadcast value */

typedef struct {
    int64_t f_lo, f_hi, s_lo, s_hi;   /* its forward and reverse steps */
    int64_t n, tile;
    int dtype, nops, nrec, nvjp, nsum, nfill;
    top *ops;
    int *rec;          /* ops whose values are in scratch (computed again by the reverse) */
    tvjp *vjp;
    tsum *sum;
    tfill *fill;
    char *contrib;     /* scratch for a contribution summed into a one-element adjoint */
    void *mem;
    /* the folded sum (sum_dst NULL: none): of sum_src, into the root's value sum_dst */
    tref sum_src;
    void *sum_dst;
    const void *sum_g;         /* its cotangent (the plan's seed) */
    double sum_scale;          /* 1, or 1 / n for a mean */
    int64_t block;
    int merged;                /* the last forward ran the reverse steps too */
} region;

struct ad_fusion {
    int64_t nregions, nfused, nf, ns;
    region *r;
    int32_t *f_at, *s_at;   /* the region starting at forward (reverse) step k, or -1 */
};

static const ad_ew_kernels *ew_kernels(int op)
{
    if (op >= AD_OP_UNARY_FIRST && op <= AD_OP_UNARY_LAST) return &ad_ew_unary[op - AD_OP_UNARY_FIRST];
    if (op >= AD_OP_BINARY_FIRST && op <= AD_OP_BINARY_LAST) return &ad_ew_binary[op - AD_OP_BINARY_FIRST];
    return NULL;
}

static int same_shape(const ad_node *a, const ad_node *b)
{
    return a->ndim == b->ndim && !memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof(int64_t));
}

/* An op a region can hold: each operand of its shape and dtype, or one value broadcast (size 1,
 * the output larger: eager's broadcast route, one run along the whole output). */
static int fusable(const ad_fuse_plan *P, const ad_node *n, int64_t min_elements)
{
    if (n->size < min_elements || n->nin < 1 || n->nin > 2 || !ew_kernels(n->op)) return 0;
    if (P->transient && P->transient[n - P->nodes]) return 0;
    for (int j = 0; j < n->nin; j++) {
        const ad_node *m = n->in[j];
        if (m->dtype != n->dtype || (P->transient && P->transient[m - P->nodes])) return 0;
        if (!same_shape(m, n) && !(m->size == 1 && n->size > 1 && m->ndim <= n->ndim)) return 0;
    }
    return 1;
}

/* n sums all of a value shaped like a (a run's first op) and is the root (index root). */
static int folds(const ad_node *n, const ad_node *a, int64_t root, const ad_node *nodes)
{
    return (n->op == AD_OP_SUM || n->op == AD_OP_MEAN) && n->size == 1 && n - nodes == root &&
           n->dtype == a->dtype && same_shape(n->in[0], a);
}

static void region_free(region *R)
{
    free(R->ops);
    free(R->rec);
    free(R->vjp);
    free(R->sum);
    free(R->fill);
    free(R->mem);
}

void ad_fusion_rebind(ad_fusion *f, const void *from, void *to)
{
    if (!f || from == to) return;
#define REBIND(ptr) do { if ((const void *)(ptr) == from) (ptr) = to; } while (0)
    for (int64_t i = 0; i < f->nregions; i++) {
        region *R = &f->r[i];
        for (int k = 0; k < R->nops; k++) {
            REBIND(R->ops[k].in[0].base);
            REBIND(R->ops[k].in[1].base);
            REBIND(R->ops[k].out.base);
        }
        for (int k = 0; k < R->nvjp; k++) {
            for (int j = 0; j < 3; j++) REBIND(R->vjp[k].in[j].base);
            REBIND(R->vjp[k].g.base);
            REBIND(R->vjp[k].target.base);
        }
        for (int q = 0; q < R->nsum; q++) REBIND(R->sum[q].dst);
        for (int q = 0; q < R->nfill; q++) REBIND(R->fill[q].src);
        REBIND(R->sum_src.base);
        REBIND(R->sum_dst);
        REBIND(R->sum_g);
    }
#undef REBIND
}

void ad_fusion_free(ad_fusion *f)
{
    if (!f) return;
    for (int64_t i = 0; i < f->nregions; i++) region_free(&f->r[i]);
    free(f->r);
    free(f->f_at);
    free(f->s_at);
    free(f);
}

static tref fill_of(const region *R, const void *src)
{
    for (int q = 0; q < R->nfill; q++)
        if (R->fill[q].src == src) return (tref){R->fill[q].tile, 0};
    return (tref){NULL, 0};   /* not reached: region_make listed every broadcast operand */
}

/* Builds region R (its step ranges set) from the plan: reg_of says which records are in it,
 * ext_val / ext_adj which of them have their value / adjoint in the arena. */
static int region_make(region *R, int r, const ad_fuse_plan *P, const int32_t *reg_of, const uint8_t *ext_val,
                       const uint8_t *ext_adj, int64_t *slot_of, int64_t *adj_of)
{
    const ad_node *first = &P->nodes[P->fnode[R->f_lo]];
    int dt = first->dtype;
    size_t isz = ad_itemsize(dt);
    R->n = first->size;
    R->dtype = dt;
    ad_node *last = &P->nodes[P->fnode[R->f_hi - 1]];
    int fold = !ew_kernels(last->op);     /* the region ends in a folded sum */
    R->nops = (int)(R->f_hi - R->f_lo) - fold;
    R->nvjp = (int)(R->s_hi - R->s_lo);
    R->ops = calloc((size_t)R->nops, sizeof *R->ops);
    R->rec = calloc((size_t)R->nops, sizeof *R->rec);
    R->vjp = calloc((size_t)(R->nvjp ? R->nvjp : 1), sizeof *R->vjp);
    R->sum = calloc((size_t)(R->nvjp ? R->nvjp : 1), sizeof *R->sum);
    R->fill = calloc((size_t)R->nops * 2, sizeof *R->fill);
    if (!R->ops || !R->rec || !R->vjp || !R->sum || !R->fill) return ad_err(AD_ERR_MEMORY, "record: out of memory for a fused region");
    /* scratch tiles: inner values, inner adjoints, broadcast values, one contribution */
    int64_t nslots = 0;
    for (int64_t k = R->f_lo; k < R->f_hi - fold; k++) {
        int64_t i = P->fnode[k];
        slot_of[i] = ext_val[i] ? -1 : nslots++;
        adj_of[i] = -1;
    }
    for (int64_t s = R->s_lo; s < R->s_hi; s++) {
        int64_t m = P->steps[s].input;
        if (reg_of[m] == r && !ext_adj[m] && adj_of[m] < 0) adj_of[m] = nslots++;
    }
    int64_t fill_at = nslots;
    for (int64_t k = R->f_lo; k < R->f_hi - fold; k++) {
        const ad_node *n = &P->nodes[P->fnode[k]];
        for (int j = 0; j < n->nin; j++) {
            const ad_node *m = n->in[j];
            if (reg_of[m - P->nodes] == r || m->size == R->n) continue;
            int q = 0;
            while (q < R->nfill && R->fill[q].src != m->data) q++;
            if (q == R->nfill) R->fill[R->nfill++].src = m->data;
        }
    }
    nslots += R->nfill + 1;
    /* the tile: all slots within the budget (L2), the kernels' split unit times a power of 2 (so
     * that tiles divide a sum's blocks) */
    int64_t tile = AD_PAR_ALIGN;
    while (tile * 2 <= TILE_MAX && (size_t)tile * 2 * (size_t)nslots * isz <= TILE_BUDGET && tile < R->n) tile *= 2;
    R->tile = tile;
    size_t slot_bytes = (((size_t)tile * isz + 63) & ~(size_t)63) + 64;
    if (!(R->mem = malloc((size_t)nslots * slot_bytes + 64))) return ad_err(AD_ERR_MEMORY, "record: out of memory for a fused region's tiles");
    char *base = (char *)(((uintptr_t)R->mem + 63) & ~(uintptr_t)63);
#define SLOT(q) ((tref){base + (size_t)(q) * slot_bytes, 0})
    for (int q = 0; q < R->nfill; q++) R->fill[q].tile = SLOT(fill_at + q).base;
    R->contrib = SLOT(nslots - 1).base;
    /* an operand of a region op: the region's value, an arena tensor, or a broadcast tile */
#define OPERAND(m) (reg_of[(m) - P->nodes] == r ? (slot_of[(m) - P->nodes] >= 0 ? SLOT(slot_of[(m) - P->nodes]) \
                                                  : (tref){(char *)(m)->data, isz})                          \
                    : (m)->size == R->n ? (tref){(char *)(m)->data, isz} : fill_of(R, (m)->data))
    for (int64_t k = R->f_lo; k < R->f_hi - fold; k++) {
        ad_node *n = &P->nodes[P->fnode[k]];
        top *o = &R->ops[k - R->f_lo];
        o->fn = ew_kernels(n->op)->fwd[dt];
        for (int j = 0; j < n->nin; j++) o->in[j] = OPERAND(n->in[j]);
        o->out = OPERAND(n);
        o->c = n->c;
        if (!o->out.stride) R->rec[R->nrec++] = (int)(k - R->f_lo);
    }
    for (int64_t s = R->s_lo; s < R->s_hi; s++) {
        const ad_fuse_step *S = &P->steps[s];
        ad_node *n = &P->nodes[S->node], *m = &P->nodes[S->input];
        tvjp *v = &R->vjp[s - R->s_lo];
        const ad_ew_kernels *K = ew_kernels(n->op);
        v->uniform = !K;
        v->d = K ? K->d[S->which][dt] : NULL;
        if (K) {
            for (int j = 0; j < n->nin; j++) v->in[j] = OPERAND(n->in[j]);
            v->in[2] = OPERAND(n);
        }
        v->c = n->c;
        v->acc = S->acc;
        v->g = ext_adj[S->node] ? (tref){(char *)S->g, isz} : SLOT(adj_of[S->node]);
        if (v->uniform) R->sum_g = S->g;
        v->red = -1;
        if (reg_of[S->input] == r) {
            v->target = ext_adj[S->input] ? (tref){(char *)S->target, isz} : SLOT(adj_of[S->input]);
        } else if (m->size == R->n) {
            v->target = (tref){(char *)S->target, isz};
        } else {
            v->red = R->nsum;
            R->sum[R->nsum].dst = S->target;
            R->sum[R->nsum++].acc = S->acc;
            v->target = (tref){R->contrib, 0};
        }
    }
    if (fold) {
        R->sum_src = OPERAND(last->in[0]);
        R->sum_dst = last->data;
        R->sum_scale = last->op == AD_OP_MEAN ? 1.0 / (double)R->n : 1.0;
        R->block = R->n >= 2 * AD_SUM_BLOCK ? AD_SUM_BLOCK : R->n;
    }
#undef OPERAND
#undef SLOT
    return AD_OK;
}

int ad_fusion_build(const ad_fuse_plan *P, int64_t min_elements, ad_fusion **out)
{
    *out = NULL;
    if (min_elements < 1 || P->nf < 2) return AD_OK;
    size_t nn = (size_t)(P->nn > 0 ? P->nn : 1);
    int32_t *reg_of = malloc(nn * sizeof *reg_of);
    uint8_t *ext_val = calloc(nn, 1), *ext_adj = calloc(nn, 1);
    int64_t *slot_of = malloc(nn * sizeof *slot_of), *adj_of = malloc(nn * sizeof *adj_of);
    ad_fusion *f = calloc(1, sizeof *f);
    region *r = calloc((size_t)P->nf / 2 + 1, sizeof *r);
    int st = AD_OK;
    if (!reg_of || !ext_val || !ext_adj || !slot_of || !adj_of || !f || !r) {
        st = ad_err(AD_ERR_MEMORY, "record: out of memory for the fused regions");
        goto done;
    }
    for (int64_t i = 0; i < P->nn; i++) reg_of[i] = -1;
    /* runs of consecutive forward steps: fusable ops of one shape and dtype */
    int64_t nr = 0, lo = -1;
    for (int64_t k = 0; k <= P->nf; k++) {
        const ad_node *n = k < P->nf ? &P->nodes[P->fnode[k]] : NULL;
        int ok = n && fusable(P, n, min_elements);
        if (ok && lo >= 0) {
            const ad_node *a = &P->nodes[P->fnode[lo]];
            if (a->dtype == n->dtype && same_shape(a, n)) continue;
        }
        /* a sum of all of the run's values that is the root joins it */
        int fold = lo >= 0 && n && folds(n, &P->nodes[P->fnode[lo]], P->root, P->nodes);
        if (lo >= 0 && k - lo + fold >= 2) {
            r[nr].f_lo = lo;
            r[nr].f_hi = k + fold;
            r[nr].s_lo = r[nr].s_hi = -1;
            for (int64_t q = lo; q < k + fold; q++) reg_of[P->fnode[q]] = (int32_t)nr;
            if (fold && reg_of[n->in[0] - P->nodes] != (int32_t)nr) {
                reg_of[P->fnode[k]] = -1;   /* it sums a value from before the run */
                r[nr].f_hi = k;
                fold = 0;
            }
            if (r[nr].f_hi - r[nr].f_lo >= 2) nr++;
            else reg_of[P->fnode[lo]] = -1;
        }
        if (fold) { lo = -1; continue; }
        lo = ok ? k : -1;
    }
    /* their reverse steps, which must be consecutive (an empty op between two of its ops would
     * interleave its own steps: such a region is dropped) */
    uint8_t *bad = calloc((size_t)nr + 1, 1);
    if (!bad) { st = ad_err(AD_ERR_MEMORY, "record: out of memory for the fused regions"); goto done; }
    for (int64_t s = 0; s < P->ns; s++) {
        int32_t q = reg_of[P->steps[s].node];
        if (q < 0) continue;
        if (r[q].s_lo < 0) r[q].s_lo = s;
        else if (r[q].s_hi != s) bad[q] = 1;
        r[q].s_hi = s + 1;
    }
    int64_t kept = 0;
    for (int64_t q = 0; q < nr; q++) {
        if (r[q].s_lo < 0) r[q].s_lo = r[q].s_hi = 0;
        int32_t to = bad[q] ? -1 : (int32_t)kept;
        for (int64_t k = r[q].f_lo; k < r[q].f_hi; k++) reg_of[P->fnode[k]] = to;
        if (!bad[q]) r[kept++] = r[q];
    }
    free(bad);
    nr = kept;
    /* values read outside their region (a later op, the caller) and adjoints given to from outside */
    for (int64_t i = 0; i < P->nn; i++) {
        if (P->pinned[i]) ext_val[i] = ext_adj[i] = 1;
        if (!P->is_op[i]) continue;
        const ad_node *n = &P->nodes[i];
        for (int j = 0; j < n->nin; j++) {
            int64_t m = n->in[j] - P->nodes;
            if (reg_of[m] >= 0 && reg_of[m] != reg_of[i]) ext_val[m] = 1;
        }
    }
    for (int64_t s = 0; s < P->ns; s++) {
        int64_t m = P->steps[s].input;
        if (reg_of[m] >= 0 && reg_of[m] != reg_of[P->steps[s].node]) ext_adj[m] = 1;
    }
    f->r = r;
    r = NULL;
    f->nf = P->nf;
    f->ns = P->ns;
    f->f_at = malloc((size_t)P->nf * sizeof *f->f_at);
    f->s_at = malloc((size_t)(P->ns ? P->ns : 1) * sizeof *f->s_at);
    if (!f->f_at || !f->s_at) { st = ad_err(AD_ERR_MEMORY, "record: out of memory for the fused regions"); goto done; }
    for (int64_t k = 0; k < P->nf; k++) f->f_at[k] = -1;
    for (int64_t s = 0; s < P->ns; s++) f->s_at[s] = -1;
    for (int64_t q = 0; q < nr && !st; q++) {
        region *R = &f->r[q];
        f->nregions = q + 1;
        st = region_make(R, (int)q, P, reg_of, ext_val, ext_adj, slot_of, adj_of);
        f->f_at[R->f_lo] = (int32_t)q;
        if (R->s_hi > R->s_lo) f->s_at[R->s_lo] = (int32_t)q;
        f->nfused += R->f_hi - R->f_lo;   /* with a folded sum */
    }
done:
    free(r);
    free(reg_of);
    free(ext_val);
    free(ext_adj);
    free(slot_of);
    free(adj_of);
    if (st || !f || !f->nregions) {
        ad_fusion_free(f);
        return st;
    }
    *out = f;
    return AD_OK;
}

/* The broadcast operands' values copied over their tiles (they may change between replays). */
static void fill_tiles(region *R)
{
    for (int q = 0; q < R->nfill; q++) {
        if (R->dtype == AD_F64) {
            double v = *(const double *)R->fill[q].src, *t = (double *)R->fill[q].tile;
            for (int64_t i = 0; i < R->tile; i++) t[i] = v;
        } else {
            float v = *(const float *)R->fill[q].src, *t = (float *)R->fill[q].tile;
            for (int64_t i = 0; i < R->tile; i++) t[i] = v;
        }
    }
}

static inline void run_op(const top *o, int64_t off, int64_t m)
{
    const void *in[3] = {at(o->in[0], off), at(o->in[1], off), NULL};
    o->fn(in, at(o->out, off), m, o->c);
}

/* The reverse steps over the tile at off (m elements); gi: the folded sum's cotangent times its
 * scale, as SUM_VJP forms it. */
static void reverse_tile(region *R, int64_t off, int64_t m, double gi)
{
    size_t isz = ad_itemsize(R->dtype);
    for (int q = 0; q < R->nvjp; q++) {
        const tvjp *v = &R->vjp[q];
        const void *in[3] = {at(v->in[0], off), at(v->in[1], off), at(v->in[2], off)};
        if (v->uniform) {
            void *t = at(v->target, off);
            if (R->dtype == AD_F64) {
                double *d = t;
                if (v->acc) for (int64_t i = 0; i < m; i++) d[i] += gi;
                else for (int64_t i = 0; i < m; i++) d[i] = gi;
            } else {
                float *d = t, gf = (float)gi;
                if (v->acc) for (int64_t i = 0; i < m; i++) d[i] += gf;
                else for (int64_t i = 0; i < m; i++) d[i] = gf;
            }
        } else if (v->red >= 0) {
            /* a zero derivative adds zeros to the lanes, which leaves them as they are */
            if (!v->d) continue;
            v->d(in, at(v->g, off), R->contrib, m, v->c, 0);
            ad_ew_lane_sum(R->dtype, R->contrib, off, m, R->n, R->sum[v->red].p);
        } else if (v->d) {
            v->d(in, at(v->g, off), at(v->target, off), m, v->c, v->acc);
        } else if (!v->acc) {
            memset(at(v->target, off), 0, (size_t)m * isz);
        }
    }
}

static double lanes_total(const double *p)
{
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

/* SUM_VJP's g * scale, in the dtype (exact for a sum: g * 1) */
static double sum_cotangent(const region *R)
{
    if (!R->sum_g) return 0;
    if (R->dtype == AD_F64) return *(const double *)R->sum_g * R->sum_scale;
    return (double)(*(const float *)R->sum_g * (float)R->sum_scale);
}

static void reverse_begin(region *R)
{
    fill_tiles(R);
    for (int q = 0; q < R->nsum; q++) memset(R->sum[q].p, 0, sizeof R->sum[q].p);
}

/* vjp_ew's end of the run: the adjoint zeroed (a first contribution), then the lanes' total added */
static void reverse_end(region *R)
{
    for (int q = 0; q < R->nsum; q++) {
        double total = lanes_total(R->sum[q].p);
        if (R->dtype == AD_F64) {
            double *d = R->sum[q].dst;
            if (!R->sum[q].acc) *d = 0;
            *d += total;
        } else {
            float *d = R->sum[q].dst;
            if (!R->sum[q].acc) *d = 0;
            *d += (float)total;
        }
    }
}

int64_t ad_fusion_forward(ad_fusion *f, int64_t k, int with_reverse)
{
    if (k < 0 || k >= f->nf || f->f_at[k] < 0) return k;
    region *R = &f->r[f->f_at[k]];
    /* the reverse in this pass: a folded sum's cotangent is the only one the region's steps need
     * that is not computed by them */
    R->merged = with_reverse && R->sum_dst && R->sum_g && R->nvjp > 0;
    double gi = R->merged ? sum_cotangent(R) : 0;
    if (R->merged) reverse_begin(R);
    else fill_tiles(R);
    double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0}, total = 0;
    for (int64_t off = 0; off < R->n; off += R->tile) {
        int64_t m = R->n - off < R->tile ? R->n - off : R->tile;
        for (int q = 0; q < R->nops; q++) run_op(&R->ops[q], off, m);
        if (R->sum_dst) {
            /* reduce.c's order: AD_SUM's lanes over each block, the blocks' sums added in order */
            int64_t b0 = off / R->block * R->block, blen = R->n - b0 < R->block ? R->n - b0 : R->block;
            ad_ew_lane_sum(R->dtype, at(R->sum_src, off), off - b0, m, blen, lanes);
            if (off + m == b0 + blen) {
                total += lanes_total(lanes);
                memset(lanes, 0, sizeof lanes);
            }
        }
        if (R->merged) reverse_tile(R, off, m, gi);
    }
    if (R->sum_dst) {
        if (R->dtype == AD_F64) *(double *)R->sum_dst = total * R->sum_scale;
        else *(float *)R->sum_dst = (float)(total * R->sum_scale);
    }
    if (R->merged) reverse_end(R);
    return R->f_hi;
}

int64_t ad_fusion_reverse(ad_fusion *f, int64_t k)
{
    if (k < 0 || k >= f->ns || f->s_at[k] < 0) return k;
    region *R = &f->r[f->s_at[k]];
    if (R->merged) {
        R->merged = 0;   /* done by the forward; a second reverse of the same forward recomputes */
        return R->s_hi;
    }
    double gi = sum_cotangent(R);
    reverse_begin(R);
    for (int64_t off = 0; off < R->n; off += R->tile) {
        int64_t m = R->n - off < R->tile ? R->n - off : R->tile;
        for (int q = 0; q < R->nrec; q++) run_op(&R->ops[R->rec[q]], off, m);
        reverse_tile(R, off, m, gi);
    }
    reverse_end(R);
    return R->s_hi;
}

void ad_fusion_counts(const ad_fusion *f, int64_t *regions, int64_t *ops, int64_t *tile)
{
    *regions = f ? f->nregions : 0;
    *ops = f ? f->nfused : 0;
    *tile = f && f->nregions ? f->r[f->nregions - 1].tile : 0;
}

void ad_fusion_mark(const ad_fusion *f, uint8_t *fwd, uint8_t *rev)
{
    for (int64_t q = 0; f && q < f->nregions; q++) {
        const region *R = &f->r[q];
        memset(fwd + R->f_lo, 1, (size_t)(R->f_hi - R->f_lo));
        memset(rev + R->s_lo, 1, (size_t)(R->s_hi - R->s_lo));
    }
}
