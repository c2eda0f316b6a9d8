/* Fused replay of elementwise regions (fusion.c), for the plans of replay.c. */
#ifndef AD_FUSION_H
#define AD_FUSION_H
#include "core.h"

typedef struct ad_fusion ad_fusion;

/* One step of a plan's reverse sweep, as replay.c ordered it: node's adjoint g handed to its
 * input `which` (record `input`), whose adjoint is target (written when acc is 0, else added). */
typedef struct {
    int64_t node, input;
    int32_t which, acc;
    const void *g;
    void *target;
} ad_fuse_step;

/* What fusion needs of a plan: its records (values in the plan's arena, inputs pointing at
 * records), which are ops, which values are read by the caller (root, watched), the record of each
 * forward step and the reverse steps, both in the order a replay runs them. */
typedef struct {
    ad_node *nodes;
    int64_t nn;
    const int8_t *is_op;
    const uint8_t *pinned;
    const int64_t *fnode;
    int64_t nf;
    const ad_fuse_step *steps;
    int64_t ns;
    int64_t root;              /* the root's record, or -1 */
    /* records whose buffers replay.c shares (a value whose buffer a later value takes once its
     * last forward reader ran, a view into another value's buffer, a node whose adjoint buffer
     * another took over): a region reads its operands and arena values again in its reverse and
     * runs the plan's steps as they are, so it holds none of them */
    const uint8_t *transient;
} ad_fuse_plan;

/* The regions of plan (elementwise ops of at least min_elements elements; see fusion.c). *out is
 * NULL when there is none. */
int ad_fusion_build(const ad_fuse_plan *plan, int64_t min_elements, ad_fusion **out);
void ad_fusion_free(ad_fusion *f);
/* Every buffer address of the regions equal to from becomes to (NULL-safe): replay.c binds a
 * caller's buffer to an input's value or adjoint for one replay, then binds the plan's back. */
void ad_fusion_rebind(ad_fusion *f, const void *from, void *to);
/* When a region starts at forward (reverse) step k: runs it and returns the step after it; else
 * returns k. with_reverse: the root's cotangent is in place and the reverse follows, so a region
 * ending in the root's sum runs its reverse steps in the forward's pass (the reverse skips them). */
int64_t ad_fusion_forward(ad_fusion *f, int64_t k, int with_reverse);
int64_t ad_fusion_reverse(ad_fusion *f, int64_t k);
/* Sets fwd[k] (rev[k]) for each forward (reverse) step k that a region runs. */
void ad_fusion_mark(const ad_fusion *f, uint8_t *fwd, uint8_t *rev);
/* regions, ops fused in them, elements per tile (of the last region) */
void ad_fusion_counts(const ad_fusion *f, int64_t *regions, int64_t *ops, int64_t *tile);
#endif
