/* Entry points for the bindings' benchmarks and tests: compiled into the library but not part of
 * the public C API (ad.h), whose users should not come to depend on them. */
#ifndef AD_TESTING_H
#define AD_TESTING_H
#include "ad.h"

/* Records an n-node chain of scalar adds and returns the backward sweep's nanoseconds per node
 * (ad._bench_sweep, benchmarks/harness.py); a negative status on error. */
double ad_bench_sweep(int64_t n);

#endif
