#!/usr/bin/env bash
# Pure-C tests of the core, without Python in the process: csrc/tests/test_core.c (graphs,
# backward, release, live counters back to zero), csrc/tests/test_oom.c (out of memory at every
# allocation of every sweep, with the fault injector built in) and the C-API fuzz driver
# csrc/tests/fuzz_capi.c, both built with ASan + UBSan + LeakSanitizer. Any sanitizer report,
# failed check, leak or crash exits non-zero.
#
#   tools/ctest.sh [build-dir]        (default: build/ctest under the repo)
#   PYAUTODIFF_CFUZZ_SEEDS=N  PYAUTODIFF_CFUZZ_ITERS=M   fuzz N seeds x M calls (default 8 x 20000)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/build/ctest}"
SEEDS="${PYAUTODIFF_CFUZZ_SEEDS:-8}"
ITERS="${PYAUTODIFF_CFUZZ_ITERS:-20000}"
CC="${CC:-gcc}"
mkdir -p "$OUT"

# -fno-wrapv: keep UBSan's signed-overflow check on; -fno-sanitize-recover: the first UB aborts
CFLAGS=(-std=c11 -O1 -g -fno-omit-frame-pointer -fno-wrapv -UNDEBUG -pthread
        -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wno-unused-function)
CORE=("$ROOT"/csrc/*.c "$ROOT"/csrc/kernels/*.c)

for prog in test_core fuzz_capi; do
    "$CC" "${CFLAGS[@]}" -I"$ROOT/csrc" "${CORE[@]}" "$ROOT/csrc/tests/$prog.c" -o "$OUT/$prog" -lm
done
# out of memory at every allocation of every sweep: the core with its fault injector (csrc/fault.c)
"$CC" "${CFLAGS[@]}" -DAD_FAULT_INJECTION -I"$ROOT/csrc" "${CORE[@]}" "$ROOT/csrc/tests/test_oom.c" \
    -o "$OUT/test_oom" -lm

# detect_leaks: no Python here, so every leak report is the core's own
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

"$OUT/test_core"
"$OUT/test_oom"
for ((seed = 1; seed <= SEEDS; seed++)); do
    "$OUT/fuzz_capi" "$seed" "$ITERS"
done
echo "ctest: test_core, test_oom and $SEEDS fuzz seeds x $ITERS calls passed"
