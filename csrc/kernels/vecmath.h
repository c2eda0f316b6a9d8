/* libm's transcendental functions declared `omp declare simd`, so that loops under AD_VEC_LOOP
 * call glibc's vector versions (libmvec: all of these since glibc 2.35) instead of one element at
 * a time. The build defines AD_HAVE_LIBMVEC only where a probe links against libmvec; elsewhere
 * (and under the sanitizers) the declarations are plain and the loops scalar. */
#ifndef AD_VECMATH_H
#define AD_VECMATH_H
#include <math.h>

#if defined(AD_HAVE_LIBMVEC) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define AD_VEC_DECL _Pragma("omp declare simd notinbranch")
#else
#define AD_VEC_DECL
#endif

#define AD_VEC_DECLARE(F)                    \
    AD_VEC_DECL extern double F(double);     \
    AD_VEC_DECL extern float F##f(float);
#define AD_VEC_DECLARE2(F)                           \
    AD_VEC_DECL extern double F(double, double);     \
    AD_VEC_DECL extern float F##f(float, float);

AD_VEC_DECLARE(exp) AD_VEC_DECLARE(log) AD_VEC_DECLARE(sin) AD_VEC_DECLARE(cos) AD_VEC_DECLARE(tanh)
AD_VEC_DECLARE(log1p) AD_VEC_DECLARE(expm1) AD_VEC_DECLARE(log2) AD_VEC_DECLARE(log10)
AD_VEC_DECLARE(exp2) AD_VEC_DECLARE(tan) AD_VEC_DECLARE(asin) AD_VEC_DECLARE(acos) AD_VEC_DECLARE(atan)
AD_VEC_DECLARE(sinh) AD_VEC_DECLARE(cosh) AD_VEC_DECLARE(asinh) AD_VEC_DECLARE(acosh)
AD_VEC_DECLARE(atanh) AD_VEC_DECLARE(erf)
AD_VEC_DECLARE2(pow) AD_VEC_DECLARE2(atan2) AD_VEC_DECLARE2(hypot)

#undef AD_VEC_DECLARE
#undef AD_VEC_DECLARE2
#endif
