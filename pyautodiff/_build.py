"""cffi builder for the C core (out-of-line API mode).

The cdef is read from csrc/ad.h itself, so the header stays the one description of the C API.
PYAUTODIFF_SANITIZE=1 builds the same extension with AddressSanitizer + UndefinedBehaviorSanitizer;
PYAUTODIFF_DEBUG=1 builds it unoptimised with debug information; PYAUTODIFF_FAULT_INJECTION=1 adds
the out-of-memory fault injector (csrc/fault.c).
"""
import glob
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")


def _cdef_from_header(path):
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    # cffi parses declarations and integer #defines, not include guards or includes
    keep = [line for line in text.splitlines()
            if not re.match(r"\s*#\s*(if|ifndef|endif|include|define\s+AD_(TESTING_)?H\b)", line)]
    return "\n".join(keep)


def _sources():
    # relative paths: setuptools rejects absolute ones in a build from an sdist
    files = sorted(glob.glob(os.path.join(CSRC, "*.c")) + glob.glob(os.path.join(CSRC, "kernels", "*.c")))
    return [os.path.relpath(f, os.getcwd()) for f in files]


def _have_libmvec():
    """Does this toolchain link glibc's vector math (libmvec, with tanh: glibc >= 2.35)?"""
    import subprocess
    import tempfile
    src = ("#pragma omp declare simd notinbranch\nextern double tanh(double);\n"
           "double x[64], y[64];\nint main(void) {\n#pragma omp simd\n"
           "for (int i = 0; i < 64; i++) y[i] = tanh(x[i]);\nreturn (int)y[0]; }\n")
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "probe.c")
        with open(c, "w") as f:
            f.write(src)
        cc = os.environ.get("CC", "cc").split()
        try:
            r = subprocess.run(cc + ["-O3", "-fopenmp-simd", "-fno-math-errno", c, "-o", os.path.join(d, "probe"),
                                     "-lmvec", "-lm"], capture_output=True)
        except OSError:
            return False
        return r.returncode == 0


def _flags():
    if os.environ.get("PYAUTODIFF_SANITIZE") == "1":
        # Python is built with -fwrapv, which would silence UBSan's signed-overflow check
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-wrapv", "-UNDEBUG"]
        return ["-std=c11", "-O1", "-g"] + san, ["-fsanitize=address,undefined"]
    if os.environ.get("PYAUTODIFF_DEBUG") == "1":
        # for gdb, and for quick rebuilds while editing C (seconds instead of a minute)
        return ["-std=c11", "-O0", "-g"], []
    # -O3 and no -march=native: the wheel must run on any x86-64 / aarch64 machine.
    # -fno-trapping-math: no code here reads the floating-point exception flags, and without it
    # GCC keeps a branch around every select of the generated kernels whose arms compute (a
    # multiply might trap), so relu's and abs's VJPs ran unvectorised at 8 ns an element. It
    # changes no value (-std=c11 keeps -ffp-contract=off; no -ffast-math).
    return ["-std=c11", "-O3", "-fno-math-errno", "-fno-trapping-math"], []


def _generate():
    """Bring the elementwise ops' generated C up to date with pyautodiff/opdefs.py (a no-op when it
    is: the committed files are the generator's output, checked by tests/test_opdefs.py)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_genops", os.path.join(HERE, "_genops.py"))
    genops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(genops)
    genops.main([])


_generate()
ffibuilder = FFI()
_MVEC = _have_libmvec()
ffibuilder.cdef(_cdef_from_header(os.path.join(CSRC, "ad.h")))
ffibuilder.cdef(_cdef_from_header(os.path.join(CSRC, "testing.h")))
# the creation-site hook of anomaly mode (pyautodiff/anomaly.py), handed to ad_set_anomaly
ffibuilder.cdef('extern "Python" int64_t pyautodiff_capture_site(void);')
# ... through this trampoline (see _GIL_PREAMBLE), whose address anomaly.py hands to the core
ffibuilder.cdef("int64_t pyautodiff_site_trampoline(void);")
ffibuilder.cdef("void pyautodiff_keep_gil_for_short_calls(void);")
# custom functions and hooks (pyautodiff/custom.py): the core's one callback into Python
ffibuilder.cdef('extern "Python" int pyautodiff_custom_rule(int, int64_t, int, const int64_t *, int, int64_t *);')
ffibuilder.cdef("void pyautodiff_install_custom_rule(void);")
# the builtins that give every handle an owner at once (pyautodiff/_ownership.h)
ffibuilder.cdef("int pyautodiff_install_ownership(void);")

# cffi wraps every call in Py_BEGIN/END_ALLOW_THREADS. Releasing and retaking the GIL costs about
# 35 ns, a fifth of a small op's call, and buys nothing for a call that takes a few hundred
# nanoseconds. So the wrappers keep the GIL, and the core asks for it to be released before long
# work (ad_set_gil_hook: big tensors, every sweep); the wrapper retakes it once the call has
# returned, when the core holds no lock (so a thread waiting for a tape lock never holds the GIL
# that the lock's owner needs). PyGILState_Check keeps the hook harmless should a cffi version
# release the GIL some other way: then it is not held, and nothing is done.
_GIL_PREAMBLE = r"""
#include "ad.h"
#include "testing.h"
static _Thread_local PyThreadState *pyautodiff_saved;
static void pyautodiff_release_gil(void)
{
    if (!pyautodiff_saved && PyGILState_Check()) pyautodiff_saved = PyEval_SaveThread();
}
static void pyautodiff_keep_gil_for_short_calls(void) { ad_set_gil_hook(pyautodiff_release_gil); }
/* The core calls into Python (a custom rule mid-sweep, anomaly mode's creation-site hook before
 * an op) perhaps after the hook released the GIL for a long call. The callback's Python may call
 * the core again (a rule's ops; a garbage collection run by the site hook's allocations releases
 * tensors), and those calls' wrappers must release and retake the GIL for themselves: so the
 * outer call's saved state is set aside for the duration of every callback (cffi's callback takes
 * the GIL on entry and gives it back on return), and restored for the outer wrapper to retake the
 * GIL once the long call returns. Without this, an inner wrapper would "retake" the outer state
 * while holding the GIL, and wait for itself forever. */
#define PYAUTODIFF_CALLBACK(call)                                                     \
    PyThreadState *outer_ = pyautodiff_saved;                                         \
    pyautodiff_saved = NULL;                                                          \
    __typeof__(call) rc_ = (call);                                                    \
    pyautodiff_saved = outer_;                                                        \
    return rc_;
static int pyautodiff_custom_rule(int, int64_t, int, const int64_t *, int, int64_t *);
static int pyautodiff_custom_trampoline(int kind, int64_t node, int nargs, const int64_t *args, int nres,
                                        int64_t *res)
{
    PYAUTODIFF_CALLBACK(pyautodiff_custom_rule(kind, node, nargs, args, nres, res))
}
static int64_t pyautodiff_capture_site(void);
static int64_t pyautodiff_site_trampoline(void) { PYAUTODIFF_CALLBACK(pyautodiff_capture_site()) }
static void pyautodiff_install_custom_rule(void) { ad_set_custom_callback(pyautodiff_custom_trampoline); }
#include "_ownership.h"
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS                                                          \
    if (pyautodiff_saved) {                                                           \
        PyThreadState *state_ = pyautodiff_saved;                                     \
        pyautodiff_saved = NULL;                                                      \
        PyEval_RestoreThread(state_);                                                 \
    }                                                                                 \
    }
"""

_compile, _link = _flags()
if os.environ.get("PYAUTODIFF_FAULT_INJECTION") == "1":
    # out-of-memory tests: ad_fault_arm(n) fails the n-th allocation (csrc/fault.c, tools/oom_sweep.py)
    _compile = _compile + ["-DAD_FAULT_INJECTION"]
ffibuilder.set_source(
    "pyautodiff._core",
    _GIL_PREAMBLE,
    sources=_sources(),
    include_dirs=[os.path.relpath(CSRC, os.getcwd()), os.path.relpath(HERE, os.getcwd())],
    extra_compile_args=_compile + (["-fopenmp-simd", "-DAD_HAVE_LIBMVEC=1"] if _MVEC else []),
    extra_link_args=_link,
    libraries=(["mvec"] if _MVEC else []) + ["m", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
