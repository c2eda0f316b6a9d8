/* A minimal test harness for the pure-C tests of the core: no dependency beyond libc, so the
 * core can be tested (and sanitized, leaks included) without Python in the process. */
#ifndef AD_TEST_CHECK_H
#define AD_TEST_CHECK_H

#include <stdio.h>
#include <string.h>
#include <math.h>
#include "../ad.h"

__attribute__((unused)) static int g_checks, g_failed_checks, g_tests_passed, g_tests_failed, g_cur_failed;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        g_checks++;                                                                       \
        if (!(cond)) {                                                                    \
            g_failed_checks++;                                                            \
            g_cur_failed = 1;                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last core error: %s)\n", __FILE__,  \
                    __LINE__, #cond, ad_last_error());                                    \
        }                                                                                 \
    } while (0)

/* a status must be the expected error code and come with a message */
#define CHECK_ERR(expr, code)                                                             \
    do {                                                                                  \
        int64_t r_ = (int64_t)(expr);                                                     \
        CHECK(r_ == -(int64_t)(code));                                                    \
        if (r_ != -(int64_t)(code))                                                       \
            fprintf(stderr, "    %s returned %lld, expected %d\n", #expr, (long long)r_, -(int)(code)); \
        CHECK(ad_last_error()[0] != 0);                                                   \
    } while (0)

#define CHECK_CLOSE(a, b, tol)                                                            \
    do {                                                                                  \
        double a_ = (a), b_ = (b);                                                        \
        CHECK(fabs(a_ - b_) <= (tol) * (1 + fabs(b_)));                                   \
        if (!(fabs(a_ - b_) <= (tol) * (1 + fabs(b_))))                                   \
            fprintf(stderr, "    %s = %.17g, expected %.17g\n", #a, a_, b_);              \
    } while (0)

#define RUN(test)                                                                         \
    do {                                                                                  \
        g_cur_failed = 0;                                                                 \
        test();                                                                           \
        if (g_cur_failed) { g_tests_failed++; fprintf(stderr, "FAILED %s\n", #test); }    \
        else { g_tests_passed++; printf("ok %s\n", #test); }                              \
    } while (0)

/* the plain closing line CI reads */
#define REPORT()                                                                          \
    (printf("%d checks; %d passed, %d failed\n", g_checks, g_tests_passed, g_tests_failed), \
     g_tests_failed ? 1 : 0)

#endif
