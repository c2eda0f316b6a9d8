"""The one door to the compiled core: the cffi module, status -> exception, and array hand-over.

Everything that crosses into C passes through here: `raise_status` is the only place a C status
becomes a Python exception, and `as_float_array` the only place user data is validated and
converted (dtype, contiguity, byte order) before C reads it, because cffi itself checks nothing.
"""
import ctypes
import operator
import threading

import numpy as np

from ._core import ffi, lib

# Calls that make tensors go through these C builtins (pyautodiff/_ownership.h), so that a handle
# has its Tensor before any Python code (a signal handler) can run: _call(fn, *args) -> Tensor.
if lib.pyautodiff_install_ownership():
    raise ImportError("pyautodiff: could not set up the compiled module's builtins")
from ._core import _call, _call_out, _borrow, _lend  # noqa: E402


def address(cdata):
    """The address of a cffi array, for _call_out and _lend."""
    return int(ffi.cast("intptr_t", cdata))

F32, F64 = lib.AD_F32, lib.AD_F64
MAXDIM = lib.AD_MAXDIM
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
DEFAULT_DTYPE = float64
_CODE = {float32: F32, float64: F64}
_DTYPE = {F32: float32, F64: float64}

_EXC = {
    lib.AD_ERR_VALUE: ValueError,
    lib.AD_ERR_TYPE: TypeError,
    lib.AD_ERR_RUNTIME: RuntimeError,
    lib.AD_ERR_MEMORY: MemoryError,
    lib.AD_ERR_INDEX: IndexError,
    lib.AD_ERR_HANDLE: RuntimeError,
    lib.AD_ERR_FLOAT: FloatingPointError,
    lib.AD_ERR_LINALG: np.linalg.LinAlgError,
}


_callback = threading.local()


def set_callback_error(exc):
    """Keep the exception a custom rule or hook raised inside a sweep (pyautodiff/custom.py): the
    core aborts the sweep, and raise_status raises this exception, not the core's summary."""
    if getattr(_callback, "error", None) is None:
        _callback.error = exc


def raise_status(status):
    """Raise the exception for a negative (or positive) status returned by the core."""
    exc = getattr(_callback, "error", None)
    if exc is not None:
        _callback.error = None
        raise exc
    code = -int(status) if status < 0 else int(status)
    message = ffi.string(lib.ad_last_error()).decode("utf-8", "replace")
    if code == lib.AD_ERR_FLOAT:
        from .anomaly import describe_site
        message += describe_site(lib.ad_anomaly_site())
    raise _EXC.get(code, RuntimeError)(message or f"pyautodiff core error {code}")


def check(status):
    if status:
        raise_status(status)
    return status


def dtype_code(dtype):
    return _CODE[dtype]


def dtype_of(code):
    return _DTYPE[code]


def resolve_dtype(dtype):
    """np.float32, "float32", np.dtype(...), ad.float32 -> np.dtype; anything else is a TypeError."""
    try:
        d = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from e
    if d not in _CODE:
        raise TypeError(f"dtype must be float32 or float64, got {d}")
    return d


def plain_array(data, what):
    """np.asarray(data), except that a NumPy masked array is a TypeError: np.asarray drops the mask,
    and sum([1, --, 3]) would silently be 6."""
    if isinstance(data, np.ma.MaskedArray):
        raise TypeError(f"{what}: NumPy masked arrays are not supported (the mask would be ignored); "
                        f"pass arr.filled(value) or arr.compressed()")
    return np.asarray(data)


def as_float_array(data, dtype=None, what="tensor"):
    """Validate user data and return a C-contiguous, native-order float32/float64 array.

    float32 input stays float32 unless a dtype is given; ints and bools become float64 (the
    default float dtype); complex, object and string data are TypeErrors; ragged nested
    sequences are ValueErrors."""
    if dtype is not None:
        dtype = resolve_dtype(dtype)
    try:
        arr = plain_array(data, what)
    except ValueError as e:
        raise ValueError(f"{what}: cannot make a tensor from ragged or inhomogeneous data ({e})") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{what}: complex data (dtype {arr.dtype}) is not supported; use float32 or float64")
    if kind not in "fiub":
        raise TypeError(f"{what}: cannot make a tensor from data of dtype {arr.dtype} "
                        f"(type {type(data).__name__}); expected real numbers")
    if arr.ndim > MAXDIM:
        raise ValueError(f"{what}: tensors have at most {MAXDIM} dimensions, got shape {arr.shape}")
    if dtype is None:
        # compare in native byte order: a big-endian float32 array is still float32 data
        native = arr.dtype.newbyteorder("=")
        dtype = native if native in _CODE else (float32 if native == np.float16 else DEFAULT_DTYPE)
    # copies when the dtype, byte order or layout differs (e.g. negative strides, big-endian);
    # not np.ascontiguousarray, which turns 0-d data into shape (1,)
    return np.asarray(arr, dtype=dtype, order="C")


def int_arg(value, what):
    """One integer argument (an axis, a shape entry) as a Python int, as NumPy takes it: a bool or
    a float is a TypeError (True is not axis 1), a value past int64 a ValueError (cffi would raise
    OverflowError when it packs it)."""
    if type(value) is int and -2**63 <= value < 2**63:   # the common case, with no message made
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an int, got {value!r} (a bool)")
    try:
        # operator.index, not int(): 2.5 is a TypeError, not 2
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {value!r}") from None
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{what} {value} does not fit in int64")
    return value


def int_tuple(values, what):
    """An int or a sequence of ints (a shape, axes) as a tuple of Python ints (see int_arg)."""
    # the common cases first: formatting the messages below for every entry cost ~2 µs per op
    if type(values) is int and -2**63 <= values < 2**63:
        return (values,)
    if type(values) is tuple and all(type(v) is int and -2**63 <= v < 2**63 for v in values):
        return values
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = (values,)
    if isinstance(values, (bool, np.bool_)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what} must be an int or a sequence of ints, got {values!r}")
    return tuple(int_arg(v, f"{what} {values!r}: entry") for v in values)


def _blas_pointer(name, module="cython_blas"):
    """Address of a SciPy BLAS (or LAPACK) routine (its cython_blas or cython_lapack C-API), or NULL
    when SciPy is absent."""
    try:
        import importlib
        capi = importlib.import_module("scipy.linalg." + module).__pyx_capi__
    except ImportError:
        return ffi.NULL
    capsule = capi[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype = ctypes.c_void_p
    get_ptr.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return ffi.cast("void *", get_ptr(capsule, get_name(capsule)))


lib.ad_set_blas(*(_blas_pointer(name) for name in ("dgemm", "sgemm", "dgemv", "sgemv")))
lib.ad_set_lapack(*(_blas_pointer(name, "cython_lapack")
                    for name in ("dgetrf", "sgetrf", "dgetrs", "sgetrs", "dpotrf", "spotrf", "dgesdd", "sgesdd")))
# short calls keep the GIL, long work releases it (see _build.py)
lib.pyautodiff_keep_gil_for_short_calls()
