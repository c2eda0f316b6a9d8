"""The public op functions. Each converts its arguments and makes one call into the core, where the
value is computed and the node recorded; the gradient rules live beside the kernels in csrc/kernels/."""
import builtins

import numpy as np

from ._capi import ffi, lib, as_int64_tuple, dtype_code, resolve_dtype
from .tensor import Tensor, _wrap, as_tensor

_PY_SCALARS = (float, int, bool)


def _unary_op(code, name, doc):
    def op(x):
        # a named Tensor, not as_tensor(x)._h: a temporary would die, and release its node,
        # before the call reads the handle (the same holds in every function below)
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
        a, b = as_tensor(a), as_tensor(b)
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
        axis = as_int64_tuple(axis, "axis")
    except TypeError:
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}") from None
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
    shape = as_int64_tuple(shape, "shape")
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
