"""The public op functions. Each converts its arguments and makes one call into the core, where the
value is computed and the node recorded; the gradient rules live beside the kernels in csrc/kernels/.

A converted argument is bound to a name before its handle goes to C: `as_tensor(x)._h` alone would
let the temporary Tensor be freed (and its node released) before the call reads the handle."""
import builtins
import operator

import numpy as np

from ._capi import ffi, lib, check_int64, dtype_code, resolve_dtype
from .tensor import Tensor, _wrap, as_tensor, _gather, _index_grid

_PY_SCALARS = (float, int, bool)


def _unary_op(code, name, doc):
    def op(x):
        x = as_tensor(x)
        return _wrap(lib.ad_unary(code, x._h))
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    return op


negative = _unary_op(lib.AD_OP_NEG, "negative", "-x elementwise.")
exp = _unary_op(lib.AD_OP_EXP, "exp", "e**x elementwise.")
log = _unary_op(lib.AD_OP_LOG, "log", "Natural logarithm elementwise.")
sqrt = _unary_op(lib.AD_OP_SQRT, "sqrt", "Square root elementwise (gradient +inf at 0).")
abs = _unary_op(lib.AD_OP_ABS, "abs", "|x| elementwise; its gradient at 0 is 0.")
sin = _unary_op(lib.AD_OP_SIN, "sin", "Sine elementwise.")
cos = _unary_op(lib.AD_OP_COS, "cos", "Cosine elementwise.")
tanh = _unary_op(lib.AD_OP_TANH, "tanh", "Hyperbolic tangent elementwise.")
sigmoid = _unary_op(lib.AD_OP_SIGMOID, "sigmoid", "1 / (1 + exp(-x)), computed without overflow.")
relu = _unary_op(lib.AD_OP_RELU, "relu", "max(x, 0) elementwise; its gradient at 0 is 0.")


# Operands converted with as_tensor are bound to locals before their handles go to C: a temporary
# Tensor dies (and releases its node) as soon as `._h` is read from it.
def _operands(a, b):
    """Both operands as Tensors. A Python scalar facing a tensor takes the tensor's dtype, as NumPy
    treats Python scalars as weak (np.maximum(float32 array, 0.0) stays float32)."""
    if type(a) in _PY_SCALARS and type(b) not in _PY_SCALARS:
        b = as_tensor(b)
        return as_tensor(a, b.dtype), b
    a = as_tensor(a)
    if type(b) in _PY_SCALARS:
        return a, as_tensor(b, a.dtype)
    return a, as_tensor(b)


def _binary_op(code, name, scalar_rhs, scalar_lhs, doc):
    """A binary op on Tensors/arrays; with a Python scalar on either side it uses the scalar kernel
    (scalar_rhs(c) -> (op, c') for x op c; scalar_lhs for c op x), so Python numbers never become
    tensors and never change the tensor's dtype."""
    def op(a, b):
        if type(b) in _PY_SCALARS and scalar_rhs and type(a) not in _PY_SCALARS:
            k, c = scalar_rhs(b)
            a = as_tensor(a)
            return _wrap(lib.ad_scalar(k, a._h, c))
        if type(a) in _PY_SCALARS and scalar_lhs and type(b) not in _PY_SCALARS:
            k, c = scalar_lhs(a)
            b = as_tensor(b)
            return _wrap(lib.ad_scalar(k, b._h, c))
        a, b = _operands(a, b)
        return _wrap(lib.ad_binary(code, a._h, b._h))
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    return op


add = _binary_op(lib.AD_OP_ADD, "add", lambda c: (lib.AD_OP_ADD_S, c), lambda c: (lib.AD_OP_ADD_S, c),
                 "a + b with NumPy broadcasting; the gradient is distributed to both.")
subtract = _binary_op(lib.AD_OP_SUB, "subtract", lambda c: (lib.AD_OP_ADD_S, -c), lambda c: (lib.AD_OP_RSUB_S, c),
                      "a - b with NumPy broadcasting.")
multiply = _binary_op(lib.AD_OP_MUL, "multiply", lambda c: (lib.AD_OP_MUL_S, c), lambda c: (lib.AD_OP_MUL_S, c),
                      "a * b with NumPy broadcasting; the gradient swaps the operands.")
divide = _binary_op(lib.AD_OP_DIV, "divide", lambda c: (lib.AD_OP_DIV_S, c), lambda c: (lib.AD_OP_RDIV_S, c),
                    "a / b with NumPy broadcasting.")
power = _binary_op(lib.AD_OP_POW, "power", lambda c: (lib.AD_OP_POW_S, c), lambda c: (lib.AD_OP_RPOW_S, c),
                   "a ** b with NumPy broadcasting; d/db is taken as 0 where a == 0.")
maximum = _binary_op(lib.AD_OP_MAXIMUM, "maximum", None, None,
                     "Elementwise max (NaN propagates); ties split the gradient equally.")
minimum = _binary_op(lib.AD_OP_MINIMUM, "minimum", None, None,
                     "Elementwise min (NaN propagates); ties split the gradient equally.")


def matmul(a, b):
    """NumPy matmul: 1-D, 2-D and batched N-D operands with broadcast batch axes."""
    a, b = as_tensor(a), as_tensor(b)
    return _wrap(lib.ad_matmul(a._h, b._h))


def _axes(axis):
    if axis is None:
        return -1, ffi.NULL
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    try:
        # operator.index, not int(): a float axis is a TypeError (as in NumPy), not truncated
        axis = tuple(operator.index(a) for a in axis)
    except TypeError:
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}") from None
    check_int64(axis, "axis")
    return len(axis), ffi.new("int64_t[]", axis or (0,))


def _reduction(code, name, doc):
    def op(x, axis=None, keepdims=False):
        n, axes = _axes(axis)
        x = as_tensor(x)
        return _wrap(lib.ad_reduce(code, x._h, n, axes, 1 if keepdims else 0))
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    return op


sum = _reduction(lib.AD_OP_SUM, "sum", "Sum over axis (None: all; int or tuple; negative counts from the end).")
mean = _reduction(lib.AD_OP_MEAN, "mean", "Mean over axis (as sum).")
max = _reduction(lib.AD_OP_MAX, "max", "Max over axis; tied maxima share the gradient equally.")
min = _reduction(lib.AD_OP_MIN, "min", "Min over axis; tied minima share the gradient equally.")


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    check_int64(shape, "shape")
    if len(shape) > lib.AD_MAXDIM:
        raise ValueError(f"tensors have at most {lib.AD_MAXDIM} dimensions, got shape {shape}")
    return len(shape), ffi.new("int64_t[]", shape or (0,))


def reshape(x, shape):
    """Same values in a new shape (one entry may be -1)."""
    n, c = _shape(shape)
    x = as_tensor(x)
    return _wrap(lib.ad_reshape(x._h, n, c))


def transpose(x, axes=None):
    """Permute axes (None reverses them), as numpy.transpose."""
    x = as_tensor(x)
    if axes is None:
        return _wrap(lib.ad_transpose(x._h, -1, ffi.NULL))
    n, c = _shape(axes)
    return _wrap(lib.ad_transpose(x._h, n, c))


def broadcast_to(x, shape):
    """Repeat x along broadcast axes; its gradient sums them back (sum and broadcast are duals)."""
    n, c = _shape(shape)
    x = as_tensor(x)
    return _wrap(lib.ad_broadcast_to(x._h, n, c))


def astype(x, dtype):
    """x converted to float32 or float64; the gradient is converted back."""
    code = dtype_code(resolve_dtype(dtype))
    x = as_tensor(x)
    return _wrap(lib.ad_cast(x._h, code))


# ---- indexing and selection (csrc/kernels/index.c) ----

def concatenate(ts, axis=0):
    """Join tensors along an existing axis, as numpy.concatenate (axis=None flattens them first).
    The gradient hands each input its own block of the cotangent."""
    ts = [as_tensor(t) for t in ts]
    if axis is None:
        ts, axis = [reshape(t, -1) for t in ts], 0
    hs = ffi.new("int64_t[]", [t._h for t in ts] or [0])
    return _wrap(lib.ad_concatenate(len(ts), hs, operator.index(axis), 0))


def stack(ts, axis=0):
    """Join same-shaped tensors along a new axis, as numpy.stack."""
    ts = [as_tensor(t) for t in ts]
    hs = ffi.new("int64_t[]", [t._h for t in ts] or [0])
    return _wrap(lib.ad_concatenate(len(ts), hs, operator.index(axis), 1))


def split(t, indices_or_sections, axis=0):
    """A list of sub-tensors, as numpy.split: an int N cuts into N equal parts (ValueError if the
    axis does not divide), a sequence of indices cuts before each of them.

    Each part is a gather of t, so the parts' gradients scatter back into one adjoint of t. NumPy
    splits a grid of flat positions once, which gives numpy.split's exact semantics and errors."""
    t = as_tensor(t)
    if isinstance(indices_or_sections, (int, np.integer)) and indices_or_sections <= 0:
        # NumPy itself fails with ZeroDivisionError here
        raise ValueError(f"split: number of sections must be larger than 0, got {indices_or_sections}")
    axis, ndim = operator.index(axis), t.ndim
    if not -ndim <= axis < ndim:
        # AxisError is a ValueError, like every other bad axis here (np.split's own is an IndexError)
        raise np.exceptions.AxisError(axis, ndim, msg_prefix="split")
    return [_gather(t, part) for part in np.split(_index_grid(t), indices_or_sections, axis)]


def _same_kind(x, like):
    """A Python scalar operand takes the dtype of the tensor it meets (NumPy's weak scalars), so
    where(c, t32, 0.0) stays float32; everything else converts as usual."""
    if type(x) in _PY_SCALARS and isinstance(like, (Tensor, np.ndarray)) and like.dtype == np.float32:
        return as_tensor(x, np.float32)
    return as_tensor(x)


def where(cond, a, b):
    """a where cond is true, else b, with NumPy broadcasting of all three. cond is a bool array (a
    Tensor comparison returns one) or anything NumPy reads as truth values; a and b are Tensors,
    arrays or Python scalars. The gradient goes only to the side that was chosen."""
    if isinstance(cond, Tensor):
        cond = cond.numpy()
    cond = np.asarray(cond)
    if cond.dtype != np.bool_:
        cond = cond.astype(np.bool_)
    cond = np.asarray(cond, order="C").view(np.uint8)
    ta, tb = _same_kind(a, b), _same_kind(b, a)
    shape = ffi.new("int64_t[]", cond.shape or (0,))
    ptr = ffi.from_buffer("uint8_t[]", cond) if cond.size else ffi.NULL
    return _wrap(lib.ad_where(cond.ndim, shape, ptr, ta._h, tb._h))


def _bound(v, name, default):
    if v is None:
        return default
    if isinstance(v, Tensor) or np.ndim(v) != 0:
        raise TypeError(f"clip: {name} must be a number or None, got {type(v).__name__} of shape "
                        f"{np.shape(v)}; for elementwise bounds use ad.maximum / ad.minimum")
    return float(v)


def clip(t, lo=None, hi=None):
    """Values limited to [lo, hi], as numpy.clip (None: no bound on that side). The gradient is 1
    on the closed interval, boundaries included (as PyTorch's clamp), and 0 strictly outside."""
    t = as_tensor(t)
    return _wrap(lib.ad_clip(t._h, _bound(lo, "lo", -np.inf), _bound(hi, "hi", np.inf)))


# ---- normalisers (csrc/kernels/softmax.c): max-shifted, finite at +-1000 ----

def logsumexp(t, axis=None, keepdims=False):
    """log(sum(exp(t))) over axis, computed as m + log(sum(exp(t - m))) with m the max, so it
    neither overflows nor underflows. Its gradient is softmax(t)."""
    n, axes = _axes(axis)
    t = as_tensor(t)
    return _wrap(lib.ad_softmax(lib.AD_OP_LOGSUMEXP, t._h, n, axes, 1 if keepdims else 0))


def softmax(t, axis=-1):
    """exp(t) / sum(exp(t)) over axis (an int, a tuple, or None for all), max-shifted."""
    n, axes = _axes(axis)
    t = as_tensor(t)
    return _wrap(lib.ad_softmax(lib.AD_OP_SOFTMAX, t._h, n, axes, 0))


def log_softmax(t, axis=-1):
    """t - logsumexp(t) over axis, computed without forming softmax, so it stays finite where
    softmax underflows to 0."""
    n, axes = _axes(axis)
    t = as_tensor(t)
    return _wrap(lib.ad_softmax(lib.AD_OP_LOG_SOFTMAX, t._h, n, axes, 0))
