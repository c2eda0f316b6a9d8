/* Scalar helpers that elementwise forward formulas call by name (pyautodiff/opdefs.py,
 * C_FUNCTIONS): NumPy's floor_divide and mod for floats, which follow Python's divmod (the
 * remainder takes the divisor's sign) rather than C's fmod/trunc. Same steps as NumPy's
 * npy_divmod, so results agree bit for bit, signed zeros included. */
#ifndef AD_EWMATH_H
#define AD_EWMATH_H
#include <math.h>

#define AD_DEF_DIVMOD(SUF, T)                                                               \
    static inline T ad_divmod_##SUF(T a, T b, T *modulus)                                   \
    {                                                                                       \
        T mod = fmod##SUF(a, b);                                                            \
        if (!b) { *modulus = mod; return a / b; }                                           \
        /* a - mod is very nearly an integer multiple of b */                              \
        T div = (a - mod) / b;                                                              \
        if (mod) {                                                                          \
            if ((b < 0) != (mod < 0)) { mod += b; div -= 1; }                               \
        } else {                                                                            \
            mod = copysign##SUF(0, b);                                                      \
        }                                                                                   \
        T floordiv;                                                                         \
        if (div) {                                                                          \
            floordiv = floor##SUF(div);                                                     \
            if (div - floordiv > (T)0.5) floordiv += 1;                                     \
        } else {                                                                            \
            floordiv = copysign##SUF(0, a / b);                                             \
        }                                                                                   \
        *modulus = mod;                                                                     \
        return floordiv;                                                                    \
    }                                                                                       \
    static inline T ad_floor_divide_##SUF(T a, T b)                                         \
    {                                                                                       \
        T mod;                                                                              \
        return b ? ad_divmod_##SUF(a, b, &mod) : a / b;                                     \
    }                                                                                       \
    static inline T ad_mod_##SUF(T a, T b)                                                  \
    {                                                                                       \
        T mod;                                                                              \
        if (!b) return fmod##SUF(a, b);                                                     \
        ad_divmod_##SUF(a, b, &mod);                                                        \
        return mod;                                                                         \
    }
AD_DEF_DIVMOD(, double)
AD_DEF_DIVMOD(f, float)
#undef AD_DEF_DIVMOD

#define ad_floor_divide(a, b) _Generic((a), float: ad_floor_divide_f, default: ad_floor_divide_)(a, b)
#define ad_mod(a, b) _Generic((a), float: ad_mod_f, default: ad_mod_)(a, b)

#endif
