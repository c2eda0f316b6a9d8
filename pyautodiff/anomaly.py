"""ad.detect_anomaly(): find the op where a NaN is born, and the line of user code that made it.

While the mode is on, the core checks every forward kernel, every VJP and every accumulation of
gradients for NaN made from NaN-free values, and fails with FloatingPointError naming the op and
its input shapes and dtypes. NaN that comes in with the data is propagated per IEEE and is not
reported. To say where the op was created, the core calls `pyautodiff_capture_site` before each
op and stores the id it returns in the node, so a NaN found during backward() still points at the
line that recorded the op. Sites are deduplicated: an op made in a loop is one site.

Off (the default), none of this runs: the Tensor wrapper is untouched and the core pays one
branch per op. The mode belongs to the calling thread, like no_grad().
"""
import linecache
import os
import sys
import threading

from ._capi import ffi, lib, raise_status

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_MAX_FRAMES = 6
_sites = []          # site id - 1 -> ((filename, lineno, function), ...), innermost first
_site_ids = {}
_sites_lock = threading.Lock()


@ffi.def_extern()
def pyautodiff_capture_site():
    # the frame below this callback is the one that called into the core; skip our own package
    f = sys._getframe(1)
    frames = []
    while f is not None and len(frames) < _MAX_FRAMES:
        code = f.f_code
        if not code.co_filename.startswith(_PACKAGE_DIR):
            frames.append((code.co_filename, f.f_lineno, code.co_name))
        f = f.f_back
    key = tuple(frames)
    with _sites_lock:
        site = _site_ids.get(key)
        if site is None:
            _sites.append(key)
            site = _site_ids[key] = len(_sites)
    return site


# the core calls the hook through a C trampoline that keeps the GIL bookkeeping right (_build.py)
_SITE_FN = ffi.addressof(lib, "pyautodiff_site_trampoline")


def describe_site(site):
    """The creation site of an op as traceback-style lines ("" when unknown)."""
    if not 0 < site <= len(_sites) or not _sites[site - 1]:
        return ""
    lines = ["", "The op was created at (most recent call last):"]
    for filename, lineno, name in reversed(_sites[site - 1]):
        lines.append(f'  File "{filename}", line {lineno}, in {name}')
        source = linecache.getline(filename, lineno).strip()
        if source:
            lines.append("    " + source)
    return "\n".join(lines)


class detect_anomaly:
    """Context manager (and decorator): while active on this thread, an op whose forward or
    backward produces NaN from inputs without NaN raises FloatingPointError naming the op, its
    input shapes and where in user code it was created. Nests; the previous mode comes back on
    exit, also on exceptions. Slows every op down (each is checked, and its creation site
    captured): use it to hunt a NaN, not in production."""

    __slots__ = ("_prev",)

    def __enter__(self):
        prev = lib.ad_set_anomaly(1, _SITE_FN)
        if prev < 0:
            raise_status(prev)
        self._prev = prev
        return self

    def __exit__(self, *exc):
        lib.ad_set_anomaly(self._prev, _SITE_FN if self._prev else ffi.NULL)
        return False

    def __call__(self, fn):
        from .tensor import _context_decorator
        return _context_decorator(detect_anomaly, fn)
