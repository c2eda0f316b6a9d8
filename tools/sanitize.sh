#!/usr/bin/env bash
# The whole pytest suite against an ASan + UBSan build of the extension (PYAUTODIFF_SANITIZE=1:
# -fsanitize=address,undefined -fno-omit-frame-pointer -fno-wrapv -UNDEBUG, see _build.py).
# Fails on a test failure, on no tests run, and on any sanitizer report.
#
#   tools/sanitize.sh [VENV_DIR] [pytest args...]     VENV_DIR defaults to build/venv-asan
#   PYTHON=python3.11 tools/sanitize.sh               interpreter to build the venv from
#
# Facts this script is built around (Debian 12, gcc 12, CPython 3.11):
# - The interpreter is not built with ASan, so libasan must be the first library loaded:
#   LD_PRELOAD=$(gcc -print-file-name=libasan.so), set on the real interpreter binary. A venv's
#   bin/python is a symlink to that ELF binary (checked below); a shell shim such as pyenv's
#   would put the preload on bash instead.
# - pytest's default capture takes over file descriptor 2, where sanitizer reports go, and the
#   report is lost when the sanitizer halts the process. So ASan writes to files (log_path) and
#   any file there fails the run, whatever pytest said; UBSan ignores its log_path here (the
#   preloaded libasan interposes the runtime symbols it would set it through) and writes to
#   stderr, so pytest runs with --capture=sys (fd 2 stays the real one), stderr is kept in a
#   file, and any sanitizer report in it fails the run too.
# - allocator_may_return_null=1: a huge allocation must become MemoryError, as in a normal
#   build, rather than an ASan abort.
# - detect_leaks=0: at exit CPython leaves a great many allocations unfreed by design, and the
#   leak report drowns anything real. LSan would not see a leak of ours there anyway: the core
#   keeps every node in its arena, reachable from a global, so a node leaked by a reference
#   count bug is never "unreachable". Leaks are caught instead by the core's live counters
#   (tape_stats(), asserted by the tests), by the pure-C tests under LSan (tools/ctest.sh)
#   and by valgrind on a smoke script (tools/valgrind.sh). No LSan suppression file is needed.
# - PYTHONMALLOC=malloc: Python objects come from malloc too, so ASan also sees a write of ours
#   that lands in a Python object (pymalloc would hide it in its arenas).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-$ROOT/build/venv-asan}")"
shift || true
PYTHON="${PYTHON:-python3}"
CC="${CC:-gcc}"

LIBASAN="$("$CC" -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" ]]; then
    echo "sanitize: $CC has no libasan.so (got '$LIBASAN'); install the compiler's ASan runtime" >&2
    exit 2
fi

# a fresh venv: nothing left over from an earlier build can be imported
"$PYTHON" -m venv --clear "$VENV"
VPY="$VENV/bin/python"
# -U: the venv comes with an old setuptools, and --no-build-isolation below builds with it
# No matplotlib here: its C++ extension throws exceptions, and under a preloaded libasan without
# libstdc++ ASan's __cxa_throw interceptor aborts (CHECK failed, asan_interceptors.cpp:320). The one
# test that draws a plot is skipped in this run; the -O3 run covers it.
"$VPY" -m pip install -q --disable-pip-version-check -U numpy cffi scipy pytest hypothesis "setuptools>=77" wheel

REAL="$("$VPY" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
if [[ "$(head -c 4 "$REAL" | od -An -c | tr -d ' ')" != '177ELF' ]]; then
    echo "sanitize: $VPY resolves to $REAL, which is not an ELF binary (a shell shim?);" \
         "LD_PRELOAD would not reach the interpreter. Set PYTHON to a real interpreter." >&2
    exit 2
fi

# build from a clean copy: setuptools reuses object files it finds in build/, and those may
# come from a normal (unsanitized) build of the same sources
SRC="$(mktemp -d)"
WORK="$(mktemp -d)"
trap 'rm -rf "$SRC" "$WORK"' EXIT
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude=./dist --exclude=./venv \
    --exclude=./.venv --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.hypothesis --exclude=.pytest_cache -cf - . | tar -C "$SRC" -xf -
PYAUTODIFF_SANITIZE=1 "$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-cache-dir --no-deps "$SRC"
SO="$(find "$VENV" -path '*/site-packages/pyautodiff/_core*.so' | head -1)"
# grep without -q reads all of ldd's output: with -q it may exit first, ldd then dies of SIGPIPE and
# pipefail turns a linked extension into a failure
if [[ -z "$SO" ]] || ! ldd "$SO" | grep libasan >/dev/null; then
    echo "sanitize: the installed extension ($SO) is not linked against libasan" >&2
    exit 2
fi

LOGS="$ROOT/build/sanitizer-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"
export ASAN_OPTIONS="log_path=$LOGS/asan:allocator_may_return_null=1:detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="log_path=$LOGS/ubsan:print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc
export PYTHONFAULTHANDLER=1

# Run from a scratch directory and import pyautodiff before pytest starts: once the module is
# in sys.modules, no path pytest or a conftest adds can swap in the source tree's pyautodiff/
# (which holds a normal build after an editable install).
STDERR_LOG="$ROOT/build/sanitize-stderr.log"
cd "$WORK"
set +e
LD_PRELOAD="$LIBASAN" "$VPY" - "$ROOT/tests" -q -p no:cacheprovider --capture=sys "$@" \
    2>"$STDERR_LOG" <<'EOF'
import os, sys
import pyautodiff
if not pyautodiff.__file__.startswith(os.path.realpath(sys.prefix)) and \
        not pyautodiff.__file__.startswith(sys.prefix):
    sys.exit(f"sanitize: imported {pyautodiff.__file__}, not the sanitized build in {sys.prefix}")
with open("/proc/self/maps") as maps:
    if "libasan" not in maps.read():
        sys.exit("sanitize: libasan is not loaded in the interpreter")
import pytest
sys.exit(pytest.main(sys.argv[1:]))
EOF
status=$?
set -e
cat "$STDERR_LOG" >&2

reports=("$LOGS"/*)
if grep -qE 'runtime error:|ERROR: [A-Za-z]+Sanitizer|WARNING: [A-Za-z]+Sanitizer' "$STDERR_LOG"; then
    echo "sanitize: a sanitizer report was written to stderr (pytest exit status $status); see above" >&2
    exit 1
fi
if [[ -e "${reports[0]}" ]]; then
    echo "sanitize: sanitizer reports were written (pytest exit status $status):" >&2
    for f in "${reports[@]}"; do
        echo "===== $f" >&2
        cat "$f" >&2
    done
    exit 1
fi
if [[ $status -ne 0 ]]; then
    echo "sanitize: pytest failed under ASan+UBSan (exit status $status; 5 means no tests ran)" >&2
    exit "$status"
fi
echo "sanitize: the suite passed under ASan+UBSan with no sanitizer reports"
