/* Anomaly mode: find the op where a NaN is born. Only NaN made from NaN-free values counts: a
 * NaN that flows in from the data is propagated per IEEE and is not the op's fault. Nothing
 * here runs unless the calling thread turned the mode on (ad_set_anomaly). */
#include "core.h"
#include <stdio.h>

static _Thread_local int64_t t_site;

int64_t ad_anomaly_site(void) { return t_site; }

int ad_any_nan(int dtype, const void *p, int64_t count)
{
    if (dtype == AD_F64) {
        const double *d = p;
        for (int64_t i = 0; i < count; i++)
            if (d[i] != d[i]) return 1;
    } else {
        const float *f = p;
        for (int64_t i = 0; i < count; i++)
            if (f[i] != f[i]) return 1;
    }
    return 0;
}

/* a value freed because nothing reads it (ad_release) is not checked */
static int node_has_nan(const ad_node *n) { return n->data && ad_any_nan(n->dtype, n->data, n->size); }

/* "(2, 3) float64 and (3,) float64" */
static const char *describe_inputs(char *buf, size_t len, int nin, ad_node **ins)
{
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < nin && k < len; i++) {
        char sh[160];
        k += (size_t)snprintf(buf + k, len - k, "%s%s %s", i == 0 ? "" : (i == nin - 1 ? " and " : ", "),
                              ad_shape_str(sh, sizeof sh, ins[i]->ndim, ins[i]->shape), ad_dtype_name(ins[i]->dtype));
    }
    return buf;
}

int ad_anomaly_forward(ad_node *n, int nin, ad_node **ins)
{
    if (!node_has_nan(n)) return AD_OK;
    for (int i = 0; i < nin; i++)
        if (node_has_nan(ins[i])) return AD_OK;
    char buf[600];
    t_site = n->site;
    return ad_err(AD_ERR_FLOAT, "anomaly: %s produced NaN from inputs without NaN (inputs: %s)",
                  ad_ops[n->op].name, nin ? describe_inputs(buf, sizeof buf, nin, ins) : "none");
}

int ad_anomaly_vjp(ad_node *n, int which, const ad_sink *s)
{
    if (!ad_any_nan(n->in[which]->dtype, s->dst, s->size)) return AD_OK;
    /* the VJP read the cotangent, the op's output and its inputs */
    if (n->adj && ad_any_nan(n->dtype, n->adj, n->size)) return AD_OK;
    if (node_has_nan(n)) return AD_OK;
    for (int i = 0; i < n->nin; i++)
        if (node_has_nan(n->in[i])) return AD_OK;
    char buf[600];
    t_site = n->site;
    return ad_err(AD_ERR_FLOAT, "anomaly: the backward (VJP) of %s produced NaN for its input %d from a "
                  "cotangent and values without NaN (inputs: %s)", ad_ops[n->op].name, which,
                  describe_inputs(buf, sizeof buf, n->nin, n->in));
}

int ad_anomaly_accumulate(ad_node *n, int which, const void *adj)
{
    const ad_node *m = n->in[which];
    if (!ad_any_nan(m->dtype, adj, m->size)) return AD_OK;
    char buf[600];
    t_site = n->site;
    return ad_err(AD_ERR_FLOAT, "anomaly: adding the gradient from %s (for its input %d) to the gradient "
                  "already there produced NaN (inf - inf, where a tensor is used more than once or "
                  "summed over broadcast axes; inputs: %s)", ad_ops[n->op].name, which, describe_inputs(buf, sizeof buf, n->nin, n->in));
}
