/* Entry points for the bindings' benchmarks and tests: compiled into the library but not part of
 * the public C API (ad.h), whose users should not come to depend on them. */
#ifndef AD_TESTING_H
#define AD_TESTING_H
#include "ad.h"

/* Records an n-node chain of scalar adds and returns the backward sweep's nanoseconds per node
 * (ad._bench_sweep, benchmarks/harness.py); a negative status on error. */
double ad_bench_sweep(int64_t n);

/* Out-of-memory fault injection (csrc/fault.c), in builds with -DAD_FAULT_INJECTION only (others
 * return AD_ERR_RUNTIME): the n-th allocation the calling thread makes from now on fails (n = 0:
 * none), and ad_fault_count gives the number of allocations it made since. */
int ad_fault_arm(int64_t n);
int64_t ad_fault_count(void);

#endif
