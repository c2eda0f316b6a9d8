#!/usr/bin/env bash
# valgrind memcheck over tools/valgrind_smoke.py against a normal (-O3, as shipped) build of the
# extension, except that buffers get their exact size and are freed at once (-DAD_EXACT_ALLOC:
# the core's size classes and pool would hide overflows and uses after free from valgrind). Fails (exit 1) on any memcheck error or definite leak that the suppressions for
# CPython's, the loader's and the libraries' own noise (tools/valgrind-python.supp) do not cover;
# those suppressions never match a frame of our extension.
#
#   tools/valgrind.sh [VENV_DIR]        VENV_DIR defaults to build/venv-valgrind
#   PYTHON=python3.11 tools/valgrind.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(realpath -m "${1:-$ROOT/build/venv-valgrind}")"
PYTHON="${PYTHON:-python3}"
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)" >&2; exit 2; }

"$PYTHON" -m venv --clear "$VENV"
VPY="$VENV/bin/python"
# -U: the venv comes with an old setuptools, and --no-build-isolation below builds with it
"$VPY" -m pip install -q --disable-pip-version-check -U numpy cffi scipy "setuptools>=77" wheel

# valgrind must start the interpreter itself: on a shell shim (pyenv's) it would check bash
REAL="$("$VPY" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
if [[ "$(head -c 4 "$REAL" | od -An -c | tr -d ' ')" != '177ELF' ]]; then
    echo "valgrind: $VPY resolves to $REAL, which is not an ELF binary; set PYTHON" >&2
    exit 2
fi

# build from a clean copy, so no object file of a sanitizer build in build/ is reused
SRC="$(mktemp -d)"
WORK="$(mktemp -d)"
trap 'rm -rf "$SRC" "$WORK"' EXIT
tar -C "$ROOT" --exclude=./.git --exclude=./build --exclude=./dist --exclude=./venv \
    --exclude=./.venv --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.hypothesis --exclude=.pytest_cache -cf - . | tar -C "$SRC" -xf -
env -u PYAUTODIFF_SANITIZE CFLAGS="${CFLAGS:-} -DAD_EXACT_ALLOC" "$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-cache-dir --no-deps "$SRC"

LOG="$ROOT/build/valgrind.log"
mkdir -p "$(dirname "$LOG")"
cd "$WORK"   # so the source tree's pyautodiff/ cannot shadow the installed one
set +e
# PYTHONMALLOC=malloc: pymalloc reads memory valgrind considers uninitialised (by design)
PYTHONMALLOC=malloc valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --num-callers=40 \
    --suppressions="$ROOT/tools/valgrind-python.supp" --log-file="$LOG" \
    "$VPY" "$ROOT/tools/valgrind_smoke.py"
status=$?
set -e
grep -E "ERROR SUMMARY|definitely lost:" "$LOG" || true
if [[ $status -ne 0 ]]; then
    echo "valgrind: failed (exit status $status); the full report:" >&2
    cat "$LOG" >&2
    exit 1
fi
echo "valgrind: no errors and no definite leaks outside the documented suppressions"
