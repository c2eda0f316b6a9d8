"""The contestants: how each library is imported, configured for one thread, and named in reports.

Every library here except NumPy is optional. ``load`` raises ``Unavailable`` for a library that
is not installed, so a workload can report it instead of crashing the suite.
"""

import importlib
import importlib.metadata
import sys

# Report order. "numpy" is the hand-written forward + analytic backward (no AD at all).
ORDER = ["pyautodiff", "numpy", "torch", "jax", "jax_jit", "autograd", "micrograd"]

DISPLAY = {
    "pyautodiff": "pyautodiff",
    "numpy": "hand-written NumPy",
    "torch": "PyTorch eager",
    "jax": "JAX op-by-op",
    "jax_jit": "JAX jit",
    "autograd": "HIPS autograd",
    "micrograd": "micrograd",
}

# The distribution whose version is recorded for each contestant.
DISTRIBUTIONS = {
    "pyautodiff": ["pyautodiff"],
    "numpy": ["numpy"],
    "torch": ["torch"],
    "jax": ["jax", "jaxlib"],
    "jax_jit": ["jax", "jaxlib"],
    "autograd": ["autograd"],
    "micrograd": ["micrograd"],
}


class Unavailable(Exception):
    """The contestant cannot run this workload here (not installed, or a feature not there yet)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


_loaded = {}


def load(key):
    """Import the library behind a contestant, pinned to one thread. Cached per process."""
    if key in _loaded:
        return _loaded[key]
    module_name = {"jax_jit": "jax", "numpy": "numpy"}.get(key, key)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the library itself missing means "not installed"; a missing dependency of an
        # installed library is a broken install and is reported as an error.
        if exc.name == module_name:
            raise Unavailable("not installed", f"{module_name} is not installed") from None
        raise Unavailable("error", f"import {module_name} failed: {exc}") from None
    except Exception as exc:  # a library that is present but broken must not stop the suite
        raise Unavailable("error", f"import {module_name} failed: {type(exc).__name__}: {exc}") from None
    _configure(module_name, module)
    _loaded[key] = module
    return module


def _configure(name, module):
    if name == "torch":
        module.set_num_threads(1)
        try:
            module.set_num_interop_threads(1)
        except RuntimeError:
            pass  # only settable before torch's first parallel work; then it is already fixed
    elif name == "jax":
        # Every contestant computes in float64; JAX defaults to float32 without this.
        module.config.update("jax_enable_x64", True)


def version(key):
    parts = []
    for dist in DISTRIBUTIONS[key]:
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(dist)
            found = getattr(module, "__version__", None)
            parts.append(f"{dist} {found}" if found else f"{dist} (not installed)")
    return ", ".join(parts)


def thread_settings():
    """What each loaded library says about its own thread count (not what we asked for)."""
    info = {}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch.get_num_threads"] = torch.get_num_threads()
        info["torch.get_num_interop_threads"] = torch.get_num_interop_threads()
    try:
        import threadpoolctl
    except ModuleNotFoundError:
        info["threadpoolctl"] = "not installed (BLAS kernel not checked)"
        return info
    info["threadpools"] = [
        {k: pool.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                   "architecture", "threading_layer", "filepath")}
        for pool in threadpoolctl.threadpool_info()
    ]
    return info
