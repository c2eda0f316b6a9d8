/* Fault injection for out-of-memory tests, the SQLite way: a build with -DAD_FAULT_INJECTION
 * (tools/ctest.sh; PYAUTODIFF_FAULT_INJECTION=1 for the Python module) sends every allocation of
 * the core through here (core.h redirects malloc, calloc and realloc; tape.c gives every buffer
 * its own malloc and checks here before mapping a chunk of nodes), and ad_fault_arm(n) makes the
 * n-th allocation of the calling thread from then on fail. A test runs an operation with n = 1,
 * 2, ... until it no longer reaches the n-th allocation, and checks after every failure that the
 * operation reported AD_ERR_MEMORY and left the state exactly as it was (csrc/tests/test_oom.c).
 * Without the define the entry points exist (testing.h is part of every build) and say so. */
#define AD_FAULT_IMPL   /* this file calls the real allocator */
#include "core.h"
#include "testing.h"
#include <stdlib.h>

#ifdef AD_FAULT_INJECTION
static _Thread_local int64_t t_countdown;   /* allocations until the one that fails; 0: none */
static _Thread_local int64_t t_count;       /* allocations since the last ad_fault_arm */

int ad_fault_fail(void)
{
    t_count++;
    return t_countdown > 0 && --t_countdown == 0;
}

void *ad_fault_malloc(size_t n) { return ad_fault_fail() ? NULL : malloc(n); }
void *ad_fault_calloc(size_t n, size_t size) { return ad_fault_fail() ? NULL : calloc(n, size); }
void *ad_fault_realloc(void *p, size_t n) { return ad_fault_fail() ? NULL : realloc(p, n); }

int ad_fault_arm(int64_t n)
{
    if (n < 0) return ad_err(AD_ERR_VALUE, "fault_arm: n must be >= 0, got %lld", (long long)n);
    t_countdown = n;
    t_count = 0;
    return AD_OK;
}

int64_t ad_fault_count(void) { return t_count; }
#else
int ad_fault_arm(int64_t n)
{
    (void)n;
    return ad_err(AD_ERR_RUNTIME, "fault_arm: the core was built without AD_FAULT_INJECTION");
}

int64_t ad_fault_count(void) { return -AD_ERR_RUNTIME; }
#endif
