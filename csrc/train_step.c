/* A traced training step: zero_grad(), loss = f(batch), backward(), optimizer.step() as one C
 * call. The plan (replay.c) replays forward and backward with the parameters as its differentiated
 * inputs, writing each gradient straight into the parameter's grad, and optim.c's update runs on
 * it, all under one lock of the tape: no Python between the replay and the update, and the grads,
 * values and state leaves are the very tensors the Python optimizer holds, so traced and eager
 * steps can alternate. The gradient is the plan's (bit-identical to backward's) and the update is
 * ad_optim_step's, so a traced step equals the eager one bit for bit. */
#include "core.h"
#include <stdlib.h>
#include <string.h>

typedef struct {
    ad_plan *plan;
    int phase, n_params, n_groups;
    ad_train_param_t *params;
    const ad_optim_t *groups;
    const void **inputs;       /* the plan's inputs: the parameters' values, then the batch */
    void **grads;              /* where the reverse sweep writes each parameter's gradient */
    ad_node **param, **state;  /* resolved under the lock (state: three per parameter) */
    ad_node **fresh;           /* a new grad node, or NULL when the parameter's own is overwritten */
} step_ctx;

static int same_layout(const ad_node *n, const ad_info_t *info)
{
    return n->dtype == info->dtype && n->ndim == info->ndim &&
           !memcmp(n->shape, info->shape, (size_t)n->ndim * sizeof(int64_t));
}

static int prepare(ad_tape *T, void *vc)
{
    step_ctx *c = vc;
    for (int i = 0; i < c->n_params; i++) {
        ad_train_param_t *q = &c->params[i];
        if (q->group < 0 || q->group >= c->n_groups)
            return ad_err(AD_ERR_VALUE, "train_step: parameter %d names group %d of %d", i, (int)q->group, c->n_groups);
        ad_node *p, **s = &c->state[3 * i];
        /* a parameter the loss does not reach is not updated: it needs no state */
        int st = q->hit ? ad_optim_prepare(T, &c->groups[q->group], q->param, q->state, q->step + 1, &p, s)
                        : ad_resolve(T, q->param, &p);
        if (st) return st;
        ad_info_t info;
        if ((st = ad_plan_info(c->plan, i, &info))) return st;
        if (!same_layout(p, &info)) {
            char b1[160], b2[160];
            return ad_err(AD_ERR_VALUE, "train_step: parameter %d is %s %s, the step was recorded with %s %s", i,
                          ad_shape_str(b1, sizeof b1, p->ndim, p->shape), ad_dtype_name(p->dtype),
                          ad_shape_str(b2, sizeof b2, info.ndim, info.shape), ad_dtype_name(info.dtype));
        }
        c->param[i] = p;
        c->inputs[i] = p->data;
        if (c->phase == AD_TRAIN_FORWARD) continue;
        /* the grad is overwritten in place when nobody else holds it (backward's rule for
         * accumulating into it), else a new one replaces it, so a grad the caller kept never changes */
        if (p->grad && !ad_grad_shared(p->grad)) {
            c->grads[i] = p->grad->data;
        } else {
            if ((st = ad_node_new(T, AD_OP_LEAF, p->dtype, p->ndim, p->shape, &c->fresh[i]))) return st;
            c->grads[i] = c->fresh[i]->data;
        }
    }
    return AD_OK;
}

static int finish(ad_tape *T, void *vc, int st)
{
    step_ctx *c = vc;
    if (c->phase == AD_TRAIN_FORWARD) return st;
    for (int i = 0; i < c->n_params; i++) {
        ad_node *p = c->param[i], *fresh = c->fresh[i];
        ad_train_param_t *q = &c->params[i];
        if (st || !q->hit) {
            if (fresh) ad_node_unref(T, fresh);
            /* an unreached parameter has no grad, as after zero_grad() and a backward that does not
             * reach it. After an error every grad stays as it was: the replay copies the gradients
             * into grads only once the whole reverse sweep has succeeded (replay.c, backward_locked),
             * so a failed step never wrote to one, and clearing it (as this did) lost a grad an
             * out-of-memory or singular-matrix error in the forward had not touched */
            if (!st && p && p->grad) { ad_node_unref(T, p->grad); p->grad = NULL; }
            continue;
        }
        if (fresh) {
            if (p->grad) ad_node_unref(T, p->grad);
            p->grad = fresh;
        }
        ad_optim_apply(T, &c->groups[q->group], p, &c->state[3 * i], p->grad->data, q->step + 1);
        q->step++;
    }
    return st;
}

int ad_plan_train_step(ad_plan *p, int phase, int n_params, ad_train_param_t *params, int n_groups,
                       const ad_optim_t *groups, const void *const *data, void *loss)
{
    int n_inputs, n_diff;
    int st = ad_plan_inputs(p, &n_inputs, &n_diff);
    if (st) return st;
    if (phase < AD_TRAIN_STEP || phase > AD_TRAIN_FINISH)
        return ad_err(AD_ERR_VALUE, "train_step: unknown phase %d", phase);
    if (n_params != n_diff || (n_params > 0 && !params) || n_groups < 1 || !groups)
        return ad_err(AD_ERR_VALUE, "train_step: %d parameters and %d groups for a plan of %d differentiated inputs",
                      n_params, n_groups, n_diff);
    if (n_inputs > n_diff && !data) return ad_err(AD_ERR_VALUE, "train_step: data is NULL");
    size_t np = (size_t)(n_params ? n_params : 1), ni = (size_t)(n_inputs ? n_inputs : 1);
    step_ctx c = {p, phase, n_params, n_groups, params, groups, NULL, NULL, NULL, NULL, NULL};
    c.inputs = calloc(ni, sizeof *c.inputs);
    c.grads = calloc(ni, sizeof *c.grads);
    c.param = calloc(np, sizeof *c.param);
    c.state = calloc(3 * np, sizeof *c.state);
    c.fresh = calloc(np, sizeof *c.fresh);
    if (!c.inputs || !c.grads || !c.param || !c.state || !c.fresh) {
        st = ad_err(AD_ERR_MEMORY, "train_step: out of memory");
    } else {
        for (int j = n_diff; j < n_inputs; j++) c.inputs[j] = data[j - n_diff];
        ad_plan_hooks h = {prepare, finish, &c};
        st = ad_plan_replay_hooked(p, phase != AD_TRAIN_FINISH, phase != AD_TRAIN_FORWARD, c.inputs,
                                   phase == AD_TRAIN_FINISH ? NULL : loss, c.grads, &h);
    }
    free(c.inputs);
    free(c.grads);
    free(c.param);
    free(c.state);
    free(c.fresh);
    return st;
}
