/* The op table: one row per op code, naming its VJP, the shape its contributions take, and its
 * JVP. */
#include "../core.h"

void ad_contrib_output(const ad_node *n, int which, int *ndim, int64_t *shape)
{
    (void)which;
    *ndim = n->ndim;
    for (int i = 0; i < n->ndim; i++) shape[i] = n->shape[i];
}

#define U(name) {name, ad_vjp_unary, 0, ad_jvp_unary}
#define B(name, fl) {name, ad_vjp_binary, ad_contrib_output, ad_jvp_binary, 0, AD_VJP_REDUCES | AD_VJP_BOTH | (fl)}
#define S(name) {name, ad_vjp_scalar, 0, ad_jvp_scalar}
#define R(name) {name, ad_vjp_reduce, 0, ad_jvp_reduce}

const ad_opdef ad_ops[AD_OP_COUNT] = {
    [AD_OP_LEAF] = {"tensor", 0, 0},
    [AD_OP_NEG] = U("negative"), [AD_OP_EXP] = U("exp"), [AD_OP_LOG] = U("log"),
    [AD_OP_SQRT] = U("sqrt"), [AD_OP_ABS] = U("abs"), [AD_OP_SIN] = U("sin"), [AD_OP_COS] = U("cos"),
    [AD_OP_TANH] = U("tanh"), [AD_OP_SIGMOID] = U("sigmoid"), [AD_OP_RELU] = U("relu"),
    [AD_OP_ADD] = B("add", AD_VJP_PASS0 | AD_VJP_PASS1), [AD_OP_SUB] = B("subtract", AD_VJP_PASS0),
    [AD_OP_MUL] = B("multiply", 0), [AD_OP_DIV] = B("divide", 0), [AD_OP_POW] = B("power", 0),
    [AD_OP_MAXIMUM] = B("maximum", 0), [AD_OP_MINIMUM] = B("minimum", 0),
    [AD_OP_ADD_S] = S("add"), [AD_OP_MUL_S] = S("multiply"), [AD_OP_RSUB_S] = S("subtract"),
    [AD_OP_DIV_S] = S("divide"), [AD_OP_RDIV_S] = S("divide"), [AD_OP_POW_S] = S("power"),
    [AD_OP_RPOW_S] = S("power"),
    [AD_OP_SUM] = R("sum"), [AD_OP_MEAN] = R("mean"), [AD_OP_MAX] = R("max"), [AD_OP_MIN] = R("min"),
    [AD_OP_MATMUL] = {"matmul", ad_vjp_matmul, ad_contrib_matmul, ad_jvp_matmul, ad_vjp_rows_matmul},
    [AD_OP_RESHAPE] = {"reshape", ad_vjp_layout, 0, ad_jvp_layout},
    [AD_OP_TRANSPOSE] = {"transpose", ad_vjp_layout, 0, ad_jvp_layout},
    [AD_OP_BROADCAST_TO] = {"broadcast_to", ad_vjp_layout, ad_contrib_output, ad_jvp_layout},
    [AD_OP_CAST] = {"cast", ad_vjp_layout, 0, ad_jvp_layout},
    [AD_OP_GATHER] = {"getitem", ad_vjp_index, 0, ad_jvp_index},
    [AD_OP_CONCATENATE] = {"concatenate", ad_vjp_index, 0, ad_jvp_index},
    [AD_OP_STACK] = {"stack", ad_vjp_index, 0, ad_jvp_index},
    [AD_OP_WHERE] = {"where", ad_vjp_index, ad_contrib_output, ad_jvp_index},
    [AD_OP_CLIP] = {"clip", ad_vjp_index, 0, ad_jvp_index},
    [AD_OP_LOGSUMEXP] = {"logsumexp", ad_vjp_softmax, 0, ad_jvp_softmax},
    [AD_OP_SOFTMAX] = {"softmax", ad_vjp_softmax, 0, ad_jvp_softmax},
    [AD_OP_LOG_SOFTMAX] = {"log_softmax", ad_vjp_softmax, 0, ad_jvp_softmax},
};
