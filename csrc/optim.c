/* Optimizer updates applied in place to leaf values: the rules of torch.optim.SGD / Adam / AdamW,
 * one pass over each parameter in C. They live in the core because an update is a hot loop over
 * every parameter each step (in NumPy it cost more than forward and backward together for a small
 * MLP), and because they must not touch the tape: a leaf's values change, nothing is recorded. */
#include "core.h"
#include <math.h>
#include <string.h>

static int state_ok(ad_tape *T, const ad_node *p, int64_t h, const char *what, ad_node **out)
{
    int st = ad_resolve(T, h, out);
    if (st) return st;
    const ad_node *s = *out;
    char b1[160], b2[160];
    if (s == p || !(s->flags & F_LEAF) || s->dtype != p->dtype || s->ndim != p->ndim ||
        memcmp(s->shape, p->shape, (size_t)p->ndim * sizeof(int64_t)))
        return ad_err(AD_ERR_VALUE, "optim_step: the %s must be a separate leaf shaped like the parameter "
                      "(%s %s), got %s %s", what, ad_shape_str(b1, sizeof b1, p->ndim, p->shape),
                      ad_dtype_name(p->dtype), ad_shape_str(b2, sizeof b2, s->ndim, s->shape),
                      ad_dtype_name(s->dtype));
    return AD_OK;
}

/* SGD: g += wd*theta; b = g (t == 1) or mu*b + (1-dampening)*g; g = nesterov ? g + mu*b : b;
 * theta -= lr*g. Computed in double, stored in the parameter's dtype. */
#define SGD_STEP(TT) do {                                                                \
        TT *X = p->data, *B = buf ? buf->data : NULL; const TT *G = p->grad->data;       \
        for (int64_t i = 0; i < p->size; i++) {                                          \
            double g = (double)G[i] + o->weight_decay * (double)X[i];                    \
            if (B) {                                                                     \
                double b = t == 1 ? g : o->momentum * (double)B[i] + (1 - o->dampening) * g; \
                B[i] = (TT)b;                                                            \
                g = o->nesterov ? g + o->momentum * b : b;                               \
            }                                                                            \
            X[i] = (TT)((double)X[i] - o->lr * g);                                       \
        }                                                                                \
    } while (0)

/* Adam: theta *= 1 - lr*wd (AdamW) or g += wd*theta (Adam); m = b1*m + (1-b1)*g;
 * v = b2*v + (1-b2)*g^2; theta -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps). */
#define ADAM_STEP(TT) do {                                                               \
        TT *X = p->data, *M = m->data, *V = v->data; const TT *G = p->grad->data;        \
        double c1 = 1 - pow(o->beta1, (double)t), c2 = 1 - pow(o->beta2, (double)t);    \
        for (int64_t i = 0; i < p->size; i++) {                                          \
            double x = X[i], g = G[i];                                                   \
            if (o->decoupled) x -= o->lr * o->weight_decay * x;                          \
            else g += o->weight_decay * x;                                               \
            double mi = o->beta1 * (double)M[i] + (1 - o->beta1) * g;                    \
            double vi = o->beta2 * (double)V[i] + (1 - o->beta2) * g * g;                \
            M[i] = (TT)mi;                                                               \
            V[i] = (TT)vi;                                                               \
            X[i] = (TT)(x - o->lr * (mi / c1) / (sqrt(vi / c2) + o->eps));               \
        }                                                                                \
    } while (0)

int ad_optim_step(const ad_optim_t *o, int64_t hp, int64_t hs0, int64_t hs1, int64_t t)
{
    if (!o) return ad_err(AD_ERR_VALUE, "optim_step: settings are NULL");
    if (o->kind != AD_OPTIM_SGD && o->kind != AD_OPTIM_ADAM)
        return ad_err(AD_ERR_VALUE, "optim_step: unknown optimizer kind %d", o->kind);
    if (t < 1) return ad_err(AD_ERR_VALUE, "optim_step: step count must start at 1, got %lld", (long long)t);
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *p, *buf = NULL, *m = NULL, *v = NULL;
    if ((st = ad_resolve(T, hp, &p))) goto out;
    if (!(p->flags & F_LEAF)) {
        st = ad_err(AD_ERR_RUNTIME, "optim_step: only leaf tensors can be updated in place; this one was "
                    "computed by %s", ad_ops[p->op].name);
        goto out;
    }
    if (!p->grad) goto out;
    if (o->kind == AD_OPTIM_SGD) {
        if (o->momentum != 0 && (st = state_ok(T, p, hs0, "momentum buffer", &buf))) goto out;
        if (p->dtype == AD_F64) SGD_STEP(double); else SGD_STEP(float);
    } else {
        if ((st = state_ok(T, p, hs0, "first moment", &m)) || (st = state_ok(T, p, hs1, "second moment", &v)))
            goto out;
        if (m == v) { st = ad_err(AD_ERR_VALUE, "optim_step: the two moments must be different tensors"); goto out; }
        if (p->dtype == AD_F64) ADAM_STEP(double); else ADAM_STEP(float);
    }
    /* the values changed in place: a graph that saved them must not be swept any more */
    ad_version_bump(T, p);
    if (buf) ad_version_bump(T, buf);
    if (m) { ad_version_bump(T, m); ad_version_bump(T, v); }
out:
    ad_unlock(T);
    return st;
}
