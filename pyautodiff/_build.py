"""cffi builder for the C core (out-of-line API mode).

The cdef is read from csrc/ad.h itself, so the header stays the one description of the C API.
PYAUTODIFF_SANITIZE=1 builds the same extension with AddressSanitizer + UndefinedBehaviorSanitizer.
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
            if not re.match(r"\s*#\s*(if|ifndef|endif|include|define\s+AD_H\b)", line)]
    return "\n".join(keep)


def _sources():
    # relative paths: setuptools rejects absolute ones in a build from an sdist
    files = sorted(glob.glob(os.path.join(CSRC, "*.c")) + glob.glob(os.path.join(CSRC, "kernels", "*.c")))
    return [os.path.relpath(f, os.getcwd()) for f in files]


def _flags():
    if os.environ.get("PYAUTODIFF_SANITIZE") == "1":
        # Python is built with -fwrapv, which would silence UBSan's signed-overflow check
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-wrapv", "-UNDEBUG"]
        return ["-std=c11", "-O1", "-g"] + san, ["-fsanitize=address,undefined"]
    # -O3 and no -march=native: the wheel must run on any x86-64 / aarch64 machine
    return ["-std=c11", "-O3", "-fno-math-errno"], []


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(os.path.join(CSRC, "ad.h")))
# the creation-site hook of anomaly mode (pyautodiff/anomaly.py), handed to ad_set_anomaly
ffibuilder.cdef('extern "Python" int64_t pyautodiff_capture_site(void);')
_compile, _link = _flags()
ffibuilder.set_source(
    "pyautodiff._core",
    '#include "ad.h"',
    sources=_sources(),
    include_dirs=[os.path.relpath(CSRC, os.getcwd())],
    extra_compile_args=_compile,
    extra_link_args=_link,
    libraries=["m", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
