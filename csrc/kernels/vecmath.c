/* SIMD transcendental forwards (exp, log, sin, cos, tanh, sigmoid) over contiguous arrays.
 *
 * Why: glibc's scalar tanh costs ~18 ns per element here, 13x NumPy's SIMD tanh, and exp 4x, so
 * an elementwise graph on large arrays was bound by libm. glibc's libmvec has vector versions
 * (SSE2 / AVX2 / AVX-512, at most 4 ulp error); declaring the functions `omp declare simd` lets the
 * compiler call them from vectorised loops, and AD_SIMD's clones pick the widest ISA at load time. The build defines AD_HAVE_LIBMVEC only where a probe
 * links against libmvec; elsewhere these loops fall back to scalar libm. */
#include "../core.h"
#include <math.h>

#if defined(AD_HAVE_LIBMVEC) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define VEC_DECL _Pragma("omp declare simd notinbranch")
#define VEC_LOOP _Pragma("omp simd")
#else
#define VEC_DECL
#define VEC_LOOP
#endif

VEC_DECL extern double exp(double);
VEC_DECL extern double log(double);
VEC_DECL extern double sin(double);
VEC_DECL extern double cos(double);
VEC_DECL extern double tanh(double);
VEC_DECL extern float expf(float);
VEC_DECL extern float logf(float);
VEC_DECL extern float sinf(float);
VEC_DECL extern float cosf(float);
VEC_DECL extern float tanhf(float);

#define DEF_LOOPS(NAME, TD, EXPR_D, EXPR_F)                                                    \
    AD_SIMD static void NAME##_d(const double *x, double *y, int64_t n)                    \
    { VEC_LOOP for (int64_t i = 0; i < n; i++) { double v = x[i]; y[i] = EXPR_D; } }           \
    AD_SIMD static void NAME##_f(const float *x, float *y, int64_t n)                      \
    { VEC_LOOP for (int64_t i = 0; i < n; i++) { float v = x[i]; y[i] = EXPR_F; } }

DEF_LOOPS(v_exp, double, exp(v), expf(v))
DEF_LOOPS(v_log, double, log(v), logf(v))
DEF_LOOPS(v_sin, double, sin(v), sinf(v))
DEF_LOOPS(v_cos, double, cos(v), cosf(v))
DEF_LOOPS(v_tanh, double, tanh(v), tanhf(v))
/* exp(-|v|) never overflows; the select picks the stable form for each sign */
DEF_LOOPS(v_sigmoid, double,
          (v >= 0 ? 1.0 / (1.0 + exp(-fabs(v))) : exp(-fabs(v)) / (1.0 + exp(-fabs(v)))),
          (v >= 0 ? 1.0f / (1.0f + expf(-fabsf(v))) : expf(-fabsf(v)) / (1.0f + expf(-fabsf(v)))))

/* Returns 1 when it computed y = op(x), 0 when the op has no vector loop here. */
int ad_vec_unary(int op, int dtype, const void *x, void *y, int64_t n)
{
#define PICK(NAME) do { if (dtype == AD_F64) NAME##_d(x, y, n); else NAME##_f(x, y, n); return 1; } while (0)
    switch (op) {
    case AD_OP_EXP: PICK(v_exp);
    case AD_OP_LOG: PICK(v_log);
    case AD_OP_SIN: PICK(v_sin);
    case AD_OP_COS: PICK(v_cos);
    case AD_OP_TANH: PICK(v_tanh);
    case AD_OP_SIGMOID: PICK(v_sigmoid);
    default: return 0;
    }
#undef PICK
}
