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

/* The columns pass of one image on its own: unfold (im2col, `unfold` 1: planes (c) of src, each
 * H x W, into planes * kh*kw rows of oh*ow columns at dst, written, or added with acc) or fold
 * (col2im, 0: those rows added back into the planes at dst, which acc keeps, else zeroes first);
 * split over the thread pool by planes. */
void ad_conv_windows(int unfold, int dtype, const ad_conv_geom *g, int64_t planes, int64_t oh, int64_t ow,
                     const void *src, void *dst, int acc);
/* The same for the window rows [rb, rb + nr) of the oh alone: columns of nr * ow at dst (unfold)
 * or src (fold); fold then adds into the planes (acc) or zeroes them first. */
void ad_conv_windows_rows(int unfold, int dtype, const ad_conv_geom *g, int64_t planes, int64_t oh, int64_t ow,
                          int64_t rb, int64_t nr, const void *src, void *dst, int acc);
/* g's output size (oh, ow), or an error naming op and every parameter (g's h, w are the image's). */
int ad_conv_geom_check(const char *op, const ad_conv_geom *g, int64_t *oh, int64_t *ow);

/* conv2d (kernels/conv2d.c): x (N, C, H, W) and w (O, C, kh, kw) of one dtype -> (N, O, OH, OW);
 * g gives stride, padding and dilation (its kernel and image sizes are taken from w and x). */
int ad_mk_conv2d(ad_tape *T, ad_node *x, ad_node *w, const ad_conv_geom *g, ad_node **out);
int ad_vjp_conv2d(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_jvp_conv2d(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp2_conv2d(ad_tape *T, ad_node *n, const void *g, const void *const *tin, const void *tout, int which,
                   ad_sink *s);
int ad_vjp_rec_conv2d(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_conv2d(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);
int ad_fwd_conv2d(ad_node *n, ad_node *const *ins);

int ad_vjp_conv(ad_tape *T, ad_node *n, const void *g, int which, ad_sink *s);
int ad_jvp_conv(ad_tape *T, ad_node *n, const void *const *tin, int64_t k, void *tout);
int ad_vjp_rec_conv(ad_tape *T, ad_node *n, ad_node *g, int which, ad_node **out);
int ad_jvp_rec_conv(ad_tape *T, ad_node *n, ad_node *const *tin, ad_node **out);

#endif
