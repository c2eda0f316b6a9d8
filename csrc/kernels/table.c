/* The op table: one row per op code, naming its VJP, the shape its contributions take, and its
 * JVP. */
#include "../core.h"

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
#define U(name, v2, fl) {name, ad_vjp_unary, 0, ad_jvp_unary, 0, (fl), (v2)}
#define B(name, v2, fl) {name, ad_vjp_binary, ad_contrib_output, ad_jvp_binary, 0, \
                         AD_VJP_REDUCES | AD_VJP_BOTH | (fl), (v2)}
#define S(name, v2, fl) {name, ad_vjp_scalar, 0, ad_jvp_scalar, 0, (fl), (v2)}
#define R(name, fl) {name, ad_vjp_reduce, 0, ad_jvp_reduce, 0, C | (fl), 0, ad_vjp_rec_reduce, ad_jvp_rec_reduce}
/* the family's numeric VJP and JVP and its differentiable rules: ad_vjp_<fam>, ad_vjp_rec_<fam>, ... */
#define L(name, fam, contrib, fl) {name, ad_vjp_##fam, contrib, ad_jvp_##fam, 0, C | (fl), 0, \
                                   ad_vjp_rec_##fam, ad_jvp_rec_##fam}
#define SM(name) {name, ad_vjp_softmax, 0, ad_jvp_softmax, 0, 0, ad_vjp2_softmax, ad_vjp_rec_softmax, ad_jvp_rec_softmax}
#define U2 ad_vjp2_unary
#define B2 ad_vjp2_binary
#define S2 ad_vjp2_scalar

const ad_opdef ad_ops[AD_OP_COUNT] = {
    [AD_OP_LEAF] = {"tensor", 0, 0},
    [AD_OP_NEG] = U("negative", 0, C | NONE), [AD_OP_EXP] = U("exp", U2, OUT), [AD_OP_LOG] = U("log", U2, IN),
    [AD_OP_SQRT] = U("sqrt", U2, OUT), [AD_OP_ABS] = U("abs", 0, C | IN), [AD_OP_SIN] = U("sin", U2, IN | OUT),
    [AD_OP_COS] = U("cos", U2, IN | OUT), [AD_OP_TANH] = U("tanh", U2, OUT),
    [AD_OP_SIGMOID] = U("sigmoid", U2, OUT), [AD_OP_RELU] = U("relu", 0, C | IN),
    [AD_OP_ADD] = B("add", 0, C | NONE | AD_VJP_PASS0 | AD_VJP_PASS1),
    [AD_OP_SUB] = B("subtract", 0, C | NONE | AD_VJP_PASS0),
    [AD_OP_MUL] = B("multiply", B2, INS), [AD_OP_DIV] = B("divide", B2, INS | OUT),
    [AD_OP_POW] = B("power", B2, INS | OUT),
    [AD_OP_MAXIMUM] = B("maximum", 0, C | INS), [AD_OP_MINIMUM] = B("minimum", 0, C | INS),
    [AD_OP_ADD_S] = S("add", 0, C | NONE), [AD_OP_MUL_S] = S("multiply", 0, C | NONE),
    [AD_OP_RSUB_S] = S("subtract", 0, C | NONE), [AD_OP_DIV_S] = S("divide", 0, C | NONE),
    [AD_OP_RDIV_S] = S("divide", S2, IN | OUT), [AD_OP_POW_S] = S("power", S2, IN),
    [AD_OP_RPOW_S] = S("power", S2, OUT),
    [AD_OP_SUM] = R("sum", NONE), [AD_OP_MEAN] = R("mean", NONE), [AD_OP_MAX] = R("max", 0), [AD_OP_MIN] = R("min", 0),
    [AD_OP_MATMUL] = {"matmul", ad_vjp_matmul, ad_contrib_matmul, ad_jvp_matmul, ad_vjp_rows_matmul, 0,
                      ad_vjp2_matmul, ad_vjp_rec_matmul, ad_jvp_rec_matmul},
    [AD_OP_RESHAPE] = L("reshape", layout, 0, 0),
    [AD_OP_TRANSPOSE] = L("transpose", layout, 0, 0),
    [AD_OP_BROADCAST_TO] = L("broadcast_to", layout, ad_contrib_output, 0),
    [AD_OP_CAST] = L("cast", layout, 0, 0),
    [AD_OP_GATHER] = L("getitem", index, 0, 0),
    [AD_OP_CONCATENATE] = L("concatenate", index, 0, 0),
    [AD_OP_STACK] = L("stack", index, 0, 0),
    [AD_OP_WHERE] = L("where", index, ad_contrib_output, 0),
    [AD_OP_CLIP] = L("clip", index, 0, 0),
    [AD_OP_LOGSUMEXP] = SM("logsumexp"),
    [AD_OP_SOFTMAX] = SM("softmax"),
    [AD_OP_LOG_SOFTMAX] = SM("log_softmax"),
    [AD_OP_SCATTER_ADD] = L("scatter_add", index, 0, NONE),
};
