/* The convolution family (kernels/conv.c): unfold (im2col) and fold (col2im), each the other's
 * adjoint. Declared here rather than in core.h so the family stays in its own two files. */
#ifndef AD_CONV_H
#define AD_CONV_H

#include "../core.h"

/* Window geometry of a 2-D unfold / fold: kernel, stride, padding and dilation as (rows, columns),
 * and the image's height and width (unfold's input, fold's output). */
typedef struct {
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, h, w;
} ad_conv_geom;
#define AD_CONV_GEOM_LEN 10   /* int64 entries of ad_conv_geom, kept in a node's aux */

/* Node-level constructors (core.h's contract): x (N, C, H, W) -> (N, C*kh*kw, L) and back, with
 * g->h, g->w the image size (for unfold they must equal x's). */
int ad_mk_unfold(ad_tape *T, ad_node *x, const ad_conv_geom *g, ad_node **out);
int ad_mk_fold(ad_tape *T, ad_node *x, const ad_conv_geom *g, ad_node **out);

int ad_vjp_conv(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_jvp_conv(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp_rec_conv(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_conv(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);

#endif
