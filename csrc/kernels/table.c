/* The op table: one row per op code, naming its VJP, the shape its contributions take, and its
 * JVP. */
#include "../core.h"
#include "conv.h"

void ad_contrib_output(const ad_node *n, int which, int *ndim, int64_t *shape)
{
    (void)which;
    *ndim = n->ndim;
    for (int i = 0; i < n->ndim; i++) shape[i] = n->shape[i];
}

/* second-order term: a vjp2 kernel, or AD_VJP_CONST where it is zero; values read (core.h) */
#define C AD_VJP_CONST
#define NONE AD_READS_KNOWN
#define IN (AD_READS_KNOWN | AD_READS_IN0)
#define OUT (AD_READS_KNOWN | AD_READS_OUT)
#define INS (AD_READS_KNOWN | AD_READS_IN0 | AD_READS_IN1)
#define R(name, fl) {name, ad_vjp_reduce, 0, ad_jvp_reduce, 0, C | (fl), 0, ad_vjp_rec_reduce, ad_jvp_rec_reduce}
/* the family's numeric VJP and JVP and its differentiable rules: ad_vjp_<fam>, ad_vjp_rec_<fam>, ... */
#define L(name, fam, contrib, fl) {name, ad_vjp_##fam, contrib, ad_jvp_##fam, 0, C | (fl), 0, \
                                   ad_vjp_rec_##fam, ad_jvp_rec_##fam}
#define SM(name) {name, ad_vjp_softmax, 0, ad_jvp_softmax, 0, 0, ad_vjp2_softmax, ad_vjp_rec_softmax, ad_jvp_rec_softmax}

const ad_opdef ad_ops[AD_OP_COUNT] = {
    [AD_OP_LEAF] = {"tensor", 0, 0},
    /* the elementwise ops, one row each in pyautodiff/opdefs.py */
#include "ops_table.inc"
    [AD_OP_SUM] = R("sum", NONE), [AD_OP_MEAN] = R("mean", NONE), [AD_OP_MAX] = R("max", 0), [AD_OP_MIN] = R("min", 0),
    [AD_OP_MATMUL] = {"matmul", ad_vjp_matmul, ad_contrib_matmul, ad_jvp_matmul, ad_vjp_rows_matmul, 0,
                      ad_vjp2_matmul, ad_vjp_rec_matmul, ad_jvp_rec_matmul},
    /* reshapes the cotangent or tangent only: the cotangent's buffer passes down as it is */
    [AD_OP_RESHAPE] = L("reshape", layout, 0, NONE | AD_VJP_PASS0),
    [AD_OP_TRANSPOSE] = L("transpose", layout, 0, 0),
    [AD_OP_BROADCAST_TO] = L("broadcast_to", layout, ad_contrib_output, 0),
    [AD_OP_CAST] = L("cast", layout, 0, 0),
    [AD_OP_GATHER] = L("getitem", index, 0, 0),
    /* their rules cut the cotangent by the inputs' shapes, never reading a value */
    [AD_OP_CONCATENATE] = L("concatenate", index, 0, NONE),
    [AD_OP_STACK] = L("stack", index, 0, NONE),
    [AD_OP_WHERE] = L("where", index, ad_contrib_output, 0),
    [AD_OP_CLIP] = L("clip", index, 0, 0),
    [AD_OP_LOGSUMEXP] = SM("logsumexp"),
    [AD_OP_SOFTMAX] = SM("softmax"),
    [AD_OP_LOG_SOFTMAX] = SM("log_softmax"),
    [AD_OP_SCATTER_ADD] = L("scatter_add", index, 0, NONE),
    [AD_OP_SLICE] = L("getitem", index, 0, NONE),
    [AD_OP_UNFOLD] = L("unfold", conv, 0, NONE),
    [AD_OP_FOLD] = L("fold", conv, 0, NONE),
    [AD_OP_CONV2D] = {"conv2d", ad_vjp_conv2d, 0, ad_jvp_conv2d, 0, INS, ad_vjp2_conv2d, ad_vjp_rec_conv2d,
                      ad_jvp_rec_conv2d},
    /* issue 17, reductions and scans */
    [AD_OP_SCAN] = {"scan", ad_vjp_scan, 0, ad_jvp_scan, 0, AD_READS_KNOWN | AD_READS_IN0 | AD_READS_OUT,
                    ad_vjp2_scan, ad_vjp_rec_scan, ad_jvp_rec_scan},
    /* issue 17, linear algebra on LAPACK */
#define LA(name) {name, ad_vjp_lapack, 0, ad_jvp_lapack, 0, 0, ad_vjp2_lapack, ad_vjp_rec_lapack, ad_jvp_rec_lapack}
    [AD_OP_SOLVE] = LA("solve"), [AD_OP_LOGDET] = LA("logdet"), [AD_OP_CHOLESKY] = LA("cholesky"),
    [AD_OP_SVD] = LA("svd"),
    [AD_OP_CUSTOM] = {"custom", ad_vjp_custom_unused, 0, ad_jvp_custom, 0, 0, 0, ad_vjp_rec_custom_unused, ad_jvp_rec_custom},
};

int ad_op_rules(int op, const char **name)
{
    if (op <= AD_OP_LEAF || op >= AD_OP_COUNT) return ad_err(AD_ERR_VALUE, "op_rules: no op code %d", op);
    const ad_opdef *d = &ad_ops[op];
    *name = d->name;
    /* a zero second-order term needs no kernel (AD_VJP_CONST) */
    return (d->vjp ? AD_RULE_VJP : 0) | (d->jvp ? AD_RULE_JVP : 0) |
           (d->vjp2 || (d->flags & AD_VJP_CONST) ? AD_RULE_SECOND_ORDER : 0) |
           (d->vjp_rec ? AD_RULE_VJP_RECORDED : 0) | (d->jvp_rec ? AD_RULE_JVP_RECORDED : 0);
}
