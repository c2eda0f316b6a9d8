"""Reductions and scans of issue 17: prod, var, std, norm, cumsum, cumprod, and the ordering ops
argmax, argmin, argsort, sort, topk.

Differentiable ones are compositions of ops that have every rule, so every order of derivative
comes with them. cumsum, cumprod and prod are one C op, the linear recurrence scan
(csrc/kernels/scan.c), whose rules multiply and never divide: their gradients are exact where
inputs are zero (the gradient of prod at a single zero is the product of the others, and 0 with
two zeros), where dividing by x would give 0/0.
The index-returning ops give NumPy integer arrays, as the comparisons give NumPy bool arrays.
"""
import numpy as np

from ._capi import lib, int_arg, _call
from .tensor import Tensor, as_tensor, full, _slice
from .ops import (sum as _sum, mean as _mean, max as _max, min as _min, sqrt, abs as _abs, power, reshape,
                  where)
from .shape_ops import _axis, _axes, take_along_axis
from .ops import transpose
from .linalg import svdvals


def _reduced(axis, ndim, op):
    """NumPy's reduction axes: None is every axis, an int or a tuple picks axes."""
    return tuple(range(ndim)) if axis is None else tuple(sorted(_axes(axis, ndim, op)))


def _drop(shape, axes, keepdims):
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)


def _scan(a, b, axis, reverse=False, unit=False):
    """The linear recurrence s_k = a_k s_{k-1} + b_k along axis from s_{-1} = 0, or 1 with unit
    (csrc/kernels/scan.c): one pass, and rules that are scans again, so every order follows."""
    mode = (lib.AD_SCAN_REVERSE if reverse else 0) | (lib.AD_SCAN_UNIT if unit else 0)
    return _call(lib.ad_scan, a._h, b._h, axis, mode)


def _scan_input(x, axis, name):
    x = as_tensor(x)
    if axis is None:
        return reshape(x, -1), 0
    return x, _axis(axis, x.ndim, name)


def cumsum(x, axis=None):
    """Running sums along axis (None: over the flattened tensor), as numpy.cumsum: one scan."""
    x, axis = _scan_input(x, axis, "cumsum")
    return _scan(full(x.shape, 1.0, x.dtype), x, axis)


def _cumprod(x, axis):
    # s_k = x_k s_{k-1} from s_{-1} = 1; b is a constant 0, so only x takes a gradient
    return _scan(x, full(x.shape, 0.0, x.dtype), axis, unit=True)


def cumprod(x, axis=None):
    """Running products along axis (None: over the flattened tensor), as numpy.cumprod: one scan
    whose gradient multiplies the other factors (never divides), so it is exact at zeros."""
    x, axis = _scan_input(x, axis, "cumprod")
    return _cumprod(x, axis) if x.shape[axis] else x * 1.0


def prod(x, axis=None, keepdims=False):
    """Product over axis (None: all; an int or a tuple), as numpy.prod: the last entry of the
    running product along each reduced axis. Its gradient is the product of the other elements,
    computed without division, so it is exact at zeros (at a single zero, the product of the
    others; with two, 0) and every order follows."""
    x = as_tensor(x)
    shape = x.shape
    axes = _reduced(axis, len(shape), "prod")
    out = _drop(shape, axes, keepdims)
    if any(shape[a] == 0 for a in axes):          # the empty product is 1 (gradient: nothing to reach)
        return reshape(_sum(x, axes, keepdims=True) * 0.0 + 1.0, out)
    y = x
    for ax in axes:
        n = shape[ax]
        if n > 1:
            y = _slice(_cumprod(y, ax), (slice(None),) * ax + (slice(n - 1, n),))
    return reshape(y, out)


def _ddof(ddof, name):
    if isinstance(ddof, (bool, np.bool_)) or not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: ddof must be a number, got {ddof!r}")
    return ddof


def var(x, axis=None, ddof=0, keepdims=False):
    """Variance over axis, sum((x - mean)^2) / (N - ddof), as numpy.var (N - ddof <= 0 gives inf or
    NaN, as NumPy's does, without its warning)."""
    x = as_tensor(x)
    axes = _reduced(axis, x.ndim, "var")
    ddof = _ddof(ddof, "var")
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    d = x - _mean(x, axes, keepdims=True)
    with np.errstate(divide="ignore"):
        scale = float(np.float64(1.0) / np.float64(max(count - ddof, 0)))
    return _sum(d * d, axes, keepdims) * scale


def std(x, axis=None, ddof=0, keepdims=False):
    """Standard deviation, sqrt(var), as numpy.std. Its gradient is NaN where the slice is
    constant (std is not differentiable there; PyTorch gives NaN too)."""
    return sqrt(var(x, axis, ddof, keepdims))


def _safe_sqrt(s):
    """sqrt(s) with gradient 0 where s == 0 (the subgradient PyTorch's norm gives at 0), rather
    than 0 * inf = NaN: sqrt is taken of 1 there and the result replaced by 0."""
    zero = s.numpy() == 0
    if not zero.any():
        return sqrt(s)
    return where(zero, 0.0, sqrt(where(zero, 1.0, s)))


def _vector_norm(x, ord, axes, keepdims):
    if ord is None or ord == 2:
        return _safe_sqrt(_sum(x * x, axes, keepdims))
    if ord == np.inf:
        return _max(_abs(x), axes, keepdims)
    if ord == -np.inf:
        return _min(_abs(x), axes, keepdims)
    if ord == 1:
        return _sum(_abs(x), axes, keepdims)
    if isinstance(ord, str):
        raise ValueError(f"norm: ord {ord!r} is for matrices; give a 2-tuple axis (a vector norm takes a number)")
    if ord == 0:   # the count of nonzero elements: piecewise constant, gradient 0
        return _sum(where(x.numpy() != 0, 1.0, x * 0.0), axes, keepdims)
    p = float(ord)
    return power(_sum(power(_abs(x), p), axes, keepdims), 1.0 / p)


def _matrix_norm(x, ord, axes, keepdims):
    r, c = axes
    if ord in (None, "fro"):
        return _safe_sqrt(_sum(x * x, axes, keepdims))
    if ord in (1, -1, np.inf, -np.inf):
        # 1: the largest column sum of |x| (sum over rows, then max over columns); inf: rows
        inner, outer = (r, c) if ord in (1, -1) else (c, r)
        pick = _max if ord in (1, np.inf) else _min
        s = _sum(_abs(x), inner, keepdims=True)
        y = pick(s, outer, keepdims=True)
        return y if keepdims else reshape(y, _drop(x.shape, axes, False))
    if ord in (2, -2, "nuc"):
        # the largest / smallest / sum of the singular values of the matrices on axes (r, c), moved
        # last; max and min split the gradient equally among tied largest (smallest) values, which
        # makes it U_t V_t^T / t over the tied singular vectors: independent of gesdd's choice of
        # basis for a repeated singular value (the centre of the subdifferential at that kink)
        s = svdvals(transpose(x, [i for i in range(x.ndim) if i not in axes] + [r, c]))
        if ord == -2 and s.shape[-1] == 0:
            raise ValueError(f"norm: ord=-2 of matrices with no singular values (shape {x.shape}, axis {axes}): "
                             f"the smallest of nothing")
        y = _sum(s, -1) if ord == "nuc" or s.shape[-1] == 0 else (_max if ord == 2 else _min)(s, -1)
        return reshape(y, _drop(x.shape, axes, True)) if keepdims else y
    raise ValueError(f"norm: invalid ord {ord!r} for a matrix norm")


def norm(x, ord=None, axis=None, keepdims=False):
    """numpy.linalg.norm: with axis None, the 2-norm of the flattened tensor (ord None) or the
    vector / matrix norm of a 1-D / 2-D one; an int axis takes vector norms (ord None or 2, 1,
    inf, -inf, 0, any p), a 2-tuple matrix norms (None or 'fro', 1, -1, inf, -inf, and 2, -2,
    'nuc': the largest, smallest and sum of the singular values, by ad.linalg.svdvals). The
    gradient of the 2-norm at 0 is 0 (a subgradient, as in PyTorch)."""
    x = as_tensor(x)
    ndim = x.ndim
    if axis is None:
        if ord is None:
            axes = tuple(range(ndim))
            return _safe_sqrt(_sum(x * x, axes, keepdims))
        if ndim not in (1, 2):
            raise ValueError(f"norm: ord {ord!r} with axis None needs a 1-D or 2-D tensor, got shape {x.shape}")
        axis = tuple(range(ndim))
    axes = _axes(axis, ndim, "norm")
    if len(axes) == 1:
        return _vector_norm(x, ord, axes, keepdims)
    if len(axes) == 2:
        return _matrix_norm(x, ord, axes, keepdims)
    raise ValueError(f"norm: axis must name 1 or 2 axes, got {axis!r}")


# ---- the ordering ops: NumPy integer arrays out; sort and topk values differentiable ----

def _values(x):
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


def _arg_extreme(x, axis, keepdims, name, pick, what):
    v = _values(x)
    if axis is not None:
        axis = _axis(axis, v.ndim, name)
    if v.size == 0 or (axis is not None and v.shape[axis] == 0):
        raise ValueError(f"{name}: an empty sequence has no {what} element (shape {v.shape}, axis {axis})")
    return np.asarray(pick(v, axis=axis, keepdims=keepdims))


def argmax(x, axis=None, keepdims=False):
    """Index of the largest element (the first of ties; a NaN counts as largest), as numpy.argmax:
    a NumPy int64 array (no gradient)."""
    return _arg_extreme(x, axis, keepdims, "argmax", np.argmax, "largest")


def argmin(x, axis=None, keepdims=False):
    """Index of the smallest element (the first of ties), as numpy.argmin: a NumPy int64 array."""
    return _arg_extreme(x, axis, keepdims, "argmin", np.argmin, "smallest")


def argsort(x, axis=-1, descending=False):
    """Indices that sort x along axis (None: flattened), as numpy.argsort with a stable sort: tied
    elements keep their order (descending=True, as torch's: ties still in their original order)."""
    v = _values(x)
    if axis is None:
        v, axis = v.reshape(-1), 0
    axis = _axis(axis, v.ndim, "argsort")
    if descending:
        # a stable sort of the reversed order, reversed back, would put later ties first; -v
        # keeps earlier ties first (NaN still sorts last, as in NumPy)
        return np.argsort(-v, axis=axis, kind="stable")
    return np.argsort(v, axis=axis, kind="stable")


def sort(x, axis=-1, descending=False):
    """x sorted along axis (None: flattened), as numpy.sort: a gather of x at argsort's indices,
    so the gradient of each output element goes to the element sorted there (tied elements keep
    their order, so each receives the cotangent of its own place)."""
    x = as_tensor(x)
    if axis is None:
        x, axis = reshape(x, -1), 0
    if x.ndim == 0:
        raise ValueError("sort: a 0-d tensor cannot be sorted along an axis (use axis=None)")
    axis = _axis(axis, x.ndim, "sort")
    return take_along_axis(x, argsort(x, axis, descending), axis)


def topk(x, k, axis=-1, largest=True, sorted=True):
    """The k largest (largest=False: smallest) elements along axis and their indices, as
    torch.topk: (values, a NumPy int64 array of indices). Of tied elements the earlier one comes
    first; values are differentiable (gather). sorted=False still returns them sorted."""
    x = as_tensor(x)
    if x.ndim == 0:
        raise ValueError("topk: needs at least one axis")
    axis = _axis(axis, x.ndim, "topk")
    k = int_arg(k, "topk: k")
    if not 0 <= k <= x.shape[axis]:
        raise ValueError(f"topk: k={k} is out of range for an axis of length {x.shape[axis]} (shape {x.shape})")
    idx = argsort(x, axis, descending=largest)
    idx = np.ascontiguousarray(np.take(idx, np.arange(k), axis=axis))
    return take_along_axis(x, idx, axis), idx
