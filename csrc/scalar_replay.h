/* The scalar replay (scalar_replay.c): a plan's runs of one-element elementwise steps compiled
 * into a compact program for one interpreter loop, for replay.c. */
#ifndef AD_SCALAR_REPLAY_H
#define AD_SCALAR_REPLAY_H
#include "core.h"

typedef struct ad_scalar ad_scalar;

/* A forward step of the plan, as replay.c runs it: its record, and whether replay.c's
 * elementwise fast path runs it (one call of the op's generated kernel, no broadcasting). */
typedef struct {
    const ad_node *node;
    int fast;
} ad_scalar_fstep;

/* A reverse step: node's cotangent g times d(node)/d(input which) written (acc 0) or added into
 * target; fast as above. */
typedef struct {
    const ad_node *node;
    const void *g;
    void *target;
    int32_t which, acc, fast;
} ad_scalar_rstep;

/* The program of the plan's fast steps of one element whose buffers are all in arena (the ones
 * marked in f_skip, s_skip, which may be NULL, are left out: fusion.c runs them). *out is NULL
 * when no step qualifies. */
int ad_scalar_build(char *arena, size_t arena_bytes, const ad_scalar_fstep *f, int64_t nf, const uint8_t *f_skip,
                    const ad_scalar_rstep *s, int64_t ns, const uint8_t *s_skip, ad_scalar **out);
void ad_scalar_free(ad_scalar *p);
/* When a run of the program starts at forward (reverse) step k: runs it and returns the step
 * after it; else returns k. */
int64_t ad_scalar_forward(const ad_scalar *p, int64_t k, char *arena);
int64_t ad_scalar_reverse(const ad_scalar *p, int64_t k, char *arena);
/* forward and reverse steps the program runs */
void ad_scalar_counts(const ad_scalar *p, int64_t *fwd, int64_t *rev);
#endif
