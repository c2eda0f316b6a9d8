"""The public op functions. Each converts its arguments and makes one call into the core, where the
value is computed and the node recorded; the gradient rules live beside the kernels in csrc/kernels/.

A converted argument is bound to a name before its handle goes to C: `as_tensor(x)._h` alone would
let the temporary Tensor be freed (and its node released) before the call reads the handle."""
import builtins
import inspect
import operator

import numpy as np

from . import opdefs
from ._capi import ffi, lib, int_arg, int_tuple, dtype_code, resolve_dtype, _call
from .tensor import Tensor, as_tensor, _slice, _shape_arg

_PY_SCALARS = (float, int, bool)


# ---- elementwise ops: one function per row of opdefs.py ----

def _unary_op(op):
    code = getattr(lib, op.code)
    if not op.params:
        def f(x):
            x = as_tensor(x)
            return _call(lib.ad_unary, code, x._h, 0.0, 0.0)
    else:
        names = tuple(op.params)
        sig = inspect.Signature(
            [inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD)] +
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for p, d in op.params.items()])

        def f(*args, **kwargs):
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{op.name}: {e}") from None
            bound.apply_defaults()
            c = [_constant(op.name, p, bound.arguments[p]) for p in names] + [0.0] * (2 - len(names))
            if op.name == "hardtanh" and c[0] > c[1]:
                raise ValueError(f"hardtanh: min_val ({c[0]}) must not exceed max_val ({c[1]})")
            x = as_tensor(bound.arguments["x"])
            return _call(lib.ad_unary, code, x._h, c[0], c[1])
        f.__signature__ = sig
    f.__name__ = f.__qualname__ = op.name
    f.__doc__ = op.doc
    return f


def _constant(op, name, v):
    if isinstance(v, Tensor) or np.ndim(v) != 0 or isinstance(v, (str, bytes, complex)):
        raise TypeError(f"{op}: {name} must be a real number, got {type(v).__name__}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be a real number, got {v!r}") from None


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


# x op c and c op x with a Python number c use the tensor-with-constant ops, so Python numbers never
# become tensors: op name -> (for x op c: c -> (code, c'), for c op x: c -> (code, c'))
_SCALAR_FORMS = {
    "add": (lambda c: (lib.AD_OP_ADD_S, c), lambda c: (lib.AD_OP_ADD_S, c)),
    "subtract": (lambda c: (lib.AD_OP_ADD_S, -c), lambda c: (lib.AD_OP_RSUB_S, c)),
    "multiply": (lambda c: (lib.AD_OP_MUL_S, c), lambda c: (lib.AD_OP_MUL_S, c)),
    "divide": (lambda c: (lib.AD_OP_DIV_S, c), lambda c: (lib.AD_OP_RDIV_S, c)),
    "power": (lambda c: (lib.AD_OP_POW_S, c), lambda c: (lib.AD_OP_RPOW_S, c)),
}


def _binary_op(op):
    """A binary op on Tensors/arrays with NumPy broadcasting; with a Python number on one side it
    uses the constant form where there is one, and otherwise a 0-d tensor of the other side's dtype."""
    code = getattr(lib, op.code)
    scalar_rhs, scalar_lhs = _SCALAR_FORMS.get(op.name, (None, None))

    def f(a, b):
        if scalar_rhs and type(b) in _PY_SCALARS and type(a) not in _PY_SCALARS:
            k, c = scalar_rhs(b)
            a = as_tensor(a)
            return _call(lib.ad_unary, k, a._h, c, 0.0)
        if scalar_lhs and type(a) in _PY_SCALARS and type(b) not in _PY_SCALARS:
            k, c = scalar_lhs(a)
            b = as_tensor(b)
            return _call(lib.ad_unary, k, b._h, c, 0.0)
        a, b = _operands(a, b)
        return _call(lib.ad_binary, code, a._h, b._h)
    f.__name__ = f.__qualname__ = op.name
    f.__doc__ = op.doc
    return f


# every row as a function; the public ones are ad.<name>, the others are reached through gelu,
# round, the operators, or only by the tests (mul_zero_safe)
ROWS = {op.name: (_unary_op if op.kind == "unary" else _binary_op)(op) for op in opdefs.ALL}
ELEMENTWISE = {name: f for name, f in ROWS.items() if opdefs.BY_NAME[name].public}
globals().update(ELEMENTWISE)
_GELU = {"none": ROWS["gelu_erf"], "tanh": ROWS["gelu_tanh"]}
_ROUND = ROWS["round"]


def gelu(x, approximate="none"):
    """Gaussian error linear unit, x * Phi(x); approximate="tanh" uses
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as PyTorch's gelu."""
    if approximate not in _GELU:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _GELU[approximate](x)


def round(x, decimals=0):
    """Round to `decimals` places, halves to even, as numpy.round; the gradient is 0."""
    d = operator.index(decimals)
    if d == 0:
        return _ROUND(x)
    scale = 10.0 ** d
    return _ROUND(as_tensor(x) * scale) / scale


def _values(x):
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def isnan(x):
    """NaN test elementwise: a NumPy bool array (like the comparisons; no gradient)."""
    return np.isnan(_values(x))


def isinf(x):
    """Infinity test elementwise: a NumPy bool array (no gradient)."""
    return np.isinf(_values(x))


def isfinite(x):
    """Neither infinite nor NaN, elementwise: a NumPy bool array (no gradient)."""
    return np.isfinite(_values(x))


def matmul(a, b):
    """NumPy matmul: 1-D, 2-D and batched N-D operands with broadcast batch axes."""
    a, b = as_tensor(a), as_tensor(b)
    return _call(lib.ad_matmul, a._h, b._h)


def _axes(axis, name):
    if axis is None:
        return -1, ffi.NULL
    axis = int_tuple(axis, f"{name}: axis")
    return len(axis), ffi.new("int64_t[]", axis or (0,))


def _reduction(code, name, doc):
    def op(x, axis=None, keepdims=False):
        n, axes = _axes(axis, name)
        x = as_tensor(x)
        return _call(lib.ad_reduce, code, x._h, n, axes, 1 if keepdims else 0)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = doc
    return op


sum = _reduction(lib.AD_OP_SUM, "sum", "Sum over axis (None: all; int or tuple; negative counts from the end).")
mean = _reduction(lib.AD_OP_MEAN, "mean", "Mean over axis (as sum).")
max = _reduction(lib.AD_OP_MAX, "max", "Max over axis; tied maxima share the gradient equally.")
min = _reduction(lib.AD_OP_MIN, "min", "Min over axis; tied minima share the gradient equally.")


def _shape(shape):
    shape = _shape_arg(shape)
    return len(shape), ffi.new("int64_t[]", shape or (0,))


def reshape(x, shape):
    """Same values in a new shape (one entry may be -1). A view, as PyTorch's reshape of a
    contiguous tensor (every tensor here is one): no copy, and an in-place update of either made
    outside grad mode (no_grad, an optimizer step, .data) is seen by both. With grad mode on, an
    update is recorded as a new tensor and leaves the other alone (see Tensor.add_)."""
    n, c = _shape(shape)
    x = as_tensor(x)
    return _call(lib.ad_reshape, x._h, n, c)


def transpose(x, axes=None):
    """Permute axes (None reverses them), as numpy.transpose."""
    x = as_tensor(x)
    if axes is None:
        return _call(lib.ad_transpose, x._h, -1, ffi.NULL)
    n, c = _shape(axes)
    return _call(lib.ad_transpose, x._h, n, c)


def broadcast_to(x, shape):
    """Repeat x along broadcast axes; its gradient sums them back (sum and broadcast are duals)."""
    n, c = _shape(shape)
    x = as_tensor(x)
    return _call(lib.ad_broadcast_to, x._h, n, c)


def astype(x, dtype):
    """x converted to float32 or float64; the gradient is converted back."""
    code = dtype_code(resolve_dtype(dtype))
    x = as_tensor(x)
    return _call(lib.ad_cast, x._h, code)


# ---- indexing and selection (csrc/kernels/index.c) ----

def concatenate(ts, axis=0):
    """Join tensors along an existing axis, as numpy.concatenate (axis=None flattens them first).
    The gradient hands each input its own block of the cotangent."""
    ts = [as_tensor(t) for t in ts]
    if axis is None:
        ts, axis = [reshape(t, -1) for t in ts], 0
    hs = ffi.new("int64_t[]", [t._h for t in ts] or [0])
    return _call(lib.ad_concatenate, len(ts), hs, int_arg(axis, "concatenate: axis"), 0)


def stack(ts, axis=0):
    """Join same-shaped tensors along a new axis, as numpy.stack."""
    ts = [as_tensor(t) for t in ts]
    hs = ffi.new("int64_t[]", [t._h for t in ts] or [0])
    return _call(lib.ad_concatenate, len(ts), hs, int_arg(axis, "stack: axis"), 1)


def split(t, indices_or_sections, axis=0):
    """A list of sub-tensors, as numpy.split: an int N cuts into N equal parts (ValueError if the
    axis does not divide), a sequence of indices cuts before each of them.

    Each part is a slice of t, so the parts' gradients add back into one adjoint of t. NumPy
    splits the positions along the axis, which gives numpy.split's exact semantics and errors."""
    t = as_tensor(t)
    if isinstance(indices_or_sections, (int, np.integer)) and indices_or_sections <= 0:
        # NumPy itself fails with ZeroDivisionError here
        raise ValueError(f"split: number of sections must be larger than 0, got {indices_or_sections}")
    axis, ndim = int_arg(axis, "split: axis"), t.ndim
    if not -ndim <= axis < ndim:
        # AxisError is a ValueError, like every other bad axis here (np.split's own is an IndexError)
        raise np.exceptions.AxisError(axis, ndim, msg_prefix="split")
    before = (slice(None),) * (axis % ndim)
    parts = np.split(np.arange(t.shape[axis]), indices_or_sections)
    return [_slice(t, before + (slice(p[0], p[-1] + 1) if p.size else slice(0, 0),)) for p in parts]


def _scatter_add(t, index, shape):
    """Zeros of `shape` with t.flat[i] added at flat position index.flat[i] (repeats accumulate):
    the VJP of a gather, as an op (the differentiable rule of indexing). Internal."""
    t = as_tensor(t)
    index = np.asarray(index, dtype=np.int64, order="C").reshape(-1)
    if index.size != t.size:
        raise ValueError(f"scatter_add: {index.size} indices for a tensor of {t.size} elements")
    n, c = _shape(shape)
    ptr = ffi.from_buffer("int64_t[]", index) if index.size else ffi.NULL
    return _call(lib.ad_scatter_add, t._h, n, c, ptr, 1)


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
    return _call(lib.ad_where, cond.ndim, shape, ptr, ta._h, tb._h)


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
    return _call(lib.ad_clip, t._h, _bound(lo, "lo", -np.inf), _bound(hi, "hi", np.inf))


# ---- normalisers (csrc/kernels/softmax.c): max-shifted, finite at +-1000 ----

def logsumexp(t, axis=None, keepdims=False):
    """log(sum(exp(t))) over axis, computed as m + log(sum(exp(t - m))) with m the max, so it
    neither overflows nor underflows. Its gradient is softmax(t)."""
    n, axes = _axes(axis, "logsumexp")
    t = as_tensor(t)
    return _call(lib.ad_softmax, lib.AD_OP_LOGSUMEXP, t._h, n, axes, 1 if keepdims else 0)


def softmax(t, axis=-1):
    """exp(t) / sum(exp(t)) over axis (an int, a tuple, or None for all), max-shifted."""
    n, axes = _axes(axis, "softmax")
    t = as_tensor(t)
    return _call(lib.ad_softmax, lib.AD_OP_SOFTMAX, t._h, n, axes, 0)


def log_softmax(t, axis=-1):
    """t - logsumexp(t) over axis, computed without forming softmax, so it stays finite where
    softmax underflows to 0."""
    n, axes = _axes(axis, "log_softmax")
    t = as_tensor(t)
    return _call(lib.ad_softmax, lib.AD_OP_LOG_SOFTMAX, t._h, n, axes, 0)
