/* Optimizer updates applied in place to leaf values: the rules of torch.optim.SGD / Adam / AdamW /
 * RMSprop / Adagrad, one pass over each parameter in C. They live in the core because an update is a hot loop over
 * every parameter each step (in NumPy it cost more than forward and backward together for a small
 * MLP), and because they must not touch the tape: a leaf's values change, nothing is recorded. */
#include "core.h"
#include <math.h>
#include <string.h>

static int state_ok(ad_tape *T, ad_node *p, int64_t h, const char *what, ad_node **out)
{
    int st = ad_resolve(T, h, out);
    if (st) return st;
    ad_node *s = *out;
    char b1[160], b2[160];
    if (ad_storage(s) == ad_storage(p) || !(s->flags & F_LEAF) || s->dtype != p->dtype || s->ndim != p->ndim ||
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
        TT *X = p->data, *B = buf ? buf->data : NULL; const TT *G = grad;       \
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
 * v = b2*v + (1-b2)*g^2; with amsgrad v_max = max(v_max, v) stands for v in the denominator;
 * theta -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps). */
#define ADAM_STEP(TT) do {                                                               \
        TT *X = p->data, *M = m->data, *V = v->data, *VM = vmax ? vmax->data : NULL;     \
        const TT *G = grad;                                                     \
        double c1 = 1 - pow(o->beta1, (double)t), c2 = 1 - pow(o->beta2, (double)t);    \
        for (int64_t i = 0; i < p->size; i++) {                                          \
            double x = X[i], g = G[i];                                                   \
            if (o->decoupled) x -= o->lr * o->weight_decay * x;                          \
            else g += o->weight_decay * x;                                               \
            double mi = o->beta1 * (double)M[i] + (1 - o->beta1) * g;                    \
            double vi = o->beta2 * (double)V[i] + (1 - o->beta2) * g * g;                \
            M[i] = (TT)mi;                                                               \
            V[i] = (TT)vi;                                                               \
            if (VM) { vi = fmax((double)VM[i], (double)(TT)vi); VM[i] = (TT)vi; }        \
            X[i] = (TT)(x - o->lr * (mi / c1) / (sqrt(vi / c2) + o->eps));               \
        }                                                                                \
    } while (0)

/* RMSprop: g += wd*theta; v = alpha*v + (1-alpha)*g^2; centered: a = alpha*a + (1-alpha)*g and
 * the denominator is sqrt(v - a^2) + eps, else sqrt(v) + eps; with momentum mu,
 * b = mu*b + g/denominator and theta -= lr*b, else theta -= lr*g/denominator. */
#define RMSPROP_STEP(TT) do {                                                            \
        TT *X = p->data, *V = sq->data, *B = buf ? buf->data : NULL;                     \
        TT *A = gavg ? gavg->data : NULL; const TT *G = grad;                   \
        for (int64_t i = 0; i < p->size; i++) {                                          \
            double g = (double)G[i] + o->weight_decay * (double)X[i];                    \
            double vi = o->alpha * (double)V[i] + (1 - o->alpha) * g * g, var = vi;      \
            V[i] = (TT)vi;                                                               \
            if (A) {                                                                     \
                double ai = o->alpha * (double)A[i] + (1 - o->alpha) * g;                \
                A[i] = (TT)ai;                                                           \
                var = vi - ai * ai;                                                      \
            }                                                                            \
            double step = g / (sqrt(var) + o->eps);                                      \
            if (B) { step = o->momentum * (double)B[i] + step; B[i] = (TT)step; }        \
            X[i] = (TT)((double)X[i] - o->lr * step);                                    \
        }                                                                                \
    } while (0)

/* Adagrad: g += wd*theta; s += g^2; theta -= lr / (1 + (t-1)*lr_decay) * g / (sqrt(s) + eps). */
#define ADAGRAD_STEP(TT) do {                                                            \
        TT *X = p->data, *S = sum->data; const TT *G = grad;                    \
        double clr = o->lr / (1 + (double)(t - 1) * o->lr_decay);                        \
        for (int64_t i = 0; i < p->size; i++) {                                          \
            double g = (double)G[i] + o->weight_decay * (double)X[i];                    \
            double si = (double)S[i] + g * g;                                            \
            S[i] = (TT)si;                                                               \
            X[i] = (TT)((double)X[i] - clr * g / (sqrt(si) + o->eps));                   \
        }                                                                                \
    } while (0)

/* The state leaves a step needs (need[i]: state i must be given) and may use (0 otherwise). */
static void state_needs(const ad_optim_t *o, int need[3])
{
    need[0] = o->kind != AD_OPTIM_SGD || o->momentum != 0;
    need[1] = o->kind == AD_OPTIM_ADAM || (o->kind == AD_OPTIM_RMSPROP && o->momentum != 0);
    need[2] = (o->kind == AD_OPTIM_ADAM && o->amsgrad) || (o->kind == AD_OPTIM_RMSPROP && o->centered);
}

/* Check the settings, resolve p and the state leaves its step needs (s[i] NULL when not needed);
 * T is locked. Shared by ad_optim_step and the traced training step (train_step.c). */
int ad_optim_prepare(ad_tape *T, const ad_optim_t *o, int64_t hp, const int64_t hs[3], int64_t t, ad_node **pp,
                     ad_node *s[3])
{
    static const char *const names[4][3] = {
        {"momentum buffer", "", ""}, {"first moment", "second moment", "second moment's maximum"},
        {"square average", "momentum buffer", "gradient average"}, {"sum of squares", "", ""}};
    if (!o) return ad_err(AD_ERR_VALUE, "optim_step: settings are NULL");
    if (o->kind < AD_OPTIM_SGD || o->kind > AD_OPTIM_ADAGRAD)
        return ad_err(AD_ERR_VALUE, "optim_step: unknown optimizer kind %d", o->kind);
    if (t < 1) return ad_err(AD_ERR_VALUE, "optim_step: step count must start at 1, got %lld", (long long)t);
    ad_node *p;
    int need[3], st;
    s[0] = s[1] = s[2] = NULL;
    state_needs(o, need);
    if ((st = ad_resolve(T, hp, &p))) return st;
    if (!(p->flags & F_LEAF))
        return ad_err(AD_ERR_RUNTIME, "optim_step: only leaf tensors can be updated in place; this one was "
                      "computed by %s", ad_ops[p->op].name);
    for (int i = 0; i < 3; i++) {
        if (!need[i]) continue;
        if ((st = state_ok(T, p, hs[i], names[o->kind][i], &s[i]))) return st;
        for (int j = 0; j < i; j++)
            if (s[j] && ad_storage(s[j]) == ad_storage(s[i]))
                return ad_err(AD_ERR_VALUE, "optim_step: the %s and the %s must be different tensors",
                              names[o->kind][j], names[o->kind][i]);
    }
    /* no grad may go on reading the values about to change in place (tape.c, "aliases") */
    if ((st = ad_write_begin(T, p))) return st;
    for (int i = 0; i < 3; i++)
        if (s[i] && (st = ad_write_begin(T, s[i]))) return st;
    *pp = p;
    return AD_OK;
}

/* The update of p from grad (p's size and dtype) at step t, after ad_optim_prepare; T is locked. */
void ad_optim_apply(ad_tape *T, const ad_optim_t *o, ad_node *p, ad_node *const s[3], const void *grad, int64_t t)
{
    if (o->kind == AD_OPTIM_SGD) {
        ad_node *buf = s[0];
        if (p->dtype == AD_F64) SGD_STEP(double); else SGD_STEP(float);
    } else if (o->kind == AD_OPTIM_ADAM) {
        ad_node *m = s[0], *v = s[1], *vmax = s[2];
        if (p->dtype == AD_F64) ADAM_STEP(double); else ADAM_STEP(float);
    } else if (o->kind == AD_OPTIM_RMSPROP) {
        ad_node *sq = s[0], *buf = s[1], *gavg = s[2];
        if (p->dtype == AD_F64) RMSPROP_STEP(double); else RMSPROP_STEP(float);
    } else {
        ad_node *sum = s[0];
        if (p->dtype == AD_F64) ADAGRAD_STEP(double); else ADAGRAD_STEP(float);
    }
    /* the values changed in place: a graph that saved them must not be swept any more */
    ad_version_bump(T, p);
    for (int i = 0; i < 3; i++)
        if (s[i]) ad_version_bump(T, s[i]);
}

int ad_optim_step(const ad_optim_t *o, int64_t hp, int64_t hs0, int64_t hs1, int64_t hs2, int64_t t)
{
    ad_tape *T;
    int st = ad_lock_current(&T);
    if (st) return st;
    ad_node *p, *s[3];
    const int64_t hs[3] = {hs0, hs1, hs2};
    if (!(st = ad_optim_prepare(T, o, hp, hs, t, &p, s)) && p->grad) ad_optim_apply(T, o, p, s, p->grad->data, t);
    ad_unlock(T);
    return st;
}
