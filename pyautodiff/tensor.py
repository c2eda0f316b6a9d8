"""Tensor: a handle into the C tape plus operator overloads. No math happens here.

Every op is one call into the core, which computes the value at once and records the node when
gradients are wanted. A Tensor owns one reference to its node and drops it in __del__, so a graph
nobody holds any more is freed by the core without the user doing anything.

Threads: each thread records on its own tape. A tensor can be read (numpy, item, shape, grad) and
dropped on any thread, but takes part in ops, backward and no_grad only on the thread that made
it; using it in an op on another thread is a RuntimeError.
"""
import functools
import inspect
import math
import operator
import threading

import numpy as np

from ._capi import (ffi, lib, raise_status, check, as_float_array, int_tuple, dtype_code, dtype_of,
                    resolve_dtype, _call)
from . import _core

_new = object.__new__
_binary = lib.ad_binary
_unary = lib.ad_unary
_matmul = lib.ad_matmul
_release = lib.ad_release

ADD, SUB, MUL, DIV, POW = lib.AD_OP_ADD, lib.AD_OP_SUB, lib.AD_OP_MUL, lib.AD_OP_DIV, lib.AD_OP_POW
ADD_S, MUL_S, RSUB_S, DIV_S = lib.AD_OP_ADD_S, lib.AD_OP_MUL_S, lib.AD_OP_RSUB_S, lib.AD_OP_DIV_S
RDIV_S, POW_S, RPOW_S = lib.AD_OP_RDIV_S, lib.AD_OP_POW_S, lib.AD_OP_RPOW_S
NEG = lib.AD_OP_NEG
_PY_SCALARS = (float, int, bool)


def _wrap(h):
    """A Tensor owning handle h, which the caller holds (a handle from C is wrapped by _call
    instead, before any Python code runs: see _ownership.h)."""
    if h < 0:
        raise_status(h)
    t = _new(Tensor)
    t._h = h
    return t


def _adopt(self, t):
    """self takes over t's node (a constructor: Tensor(...), Parameter(...)). Whatever node self
    held before (__init__ called a second time) goes to t, which releases it as it dies: a swap
    leaves no moment in which a node belongs to nobody."""
    self._h, t._h = t._h, self._h
    if t._h:   # __init__ again: the shape and dtype self cached were its old node's
        for slot in ("_shape", "_dtype"):
            if hasattr(self, slot):
                delattr(self, slot)


def _from_array(arr, requires_grad=False):
    """Leaf from an array that as_float_array already validated."""
    shape = ffi.new("int64_t[]", arr.shape or (0,))
    ptr = ffi.from_buffer(arr, require_writable=False) if arr.size else ffi.NULL
    return _call(lib.ad_tensor_new, dtype_code(arr.dtype), arr.ndim, shape, ptr, 1 if requires_grad else 0)


def as_tensor(x, dtype=None):
    """Tensors pass through; arrays, lists and NumPy scalars become constant leaves (copied)."""
    if isinstance(x, Tensor):
        return x
    return _from_array(as_float_array(x, dtype, what="operand"))


def _index_grid(t):
    """t's flat positions laid out in t's shape: indexing this grid with NumPy tells exactly which
    elements t[index] picks, with NumPy's semantics and NumPy's IndexErrors for every index form."""
    return np.arange(t.size, dtype=np.int64).reshape(t.shape)


def _gather(t, flat, block=1):
    """The blocks of `block` consecutive elements of t starting at the flat positions `flat`,
    shaped flat.shape + `trailing` (one C call); block 1 picks single elements."""
    flat = np.asarray(flat, dtype=np.int64, order="C")
    return _gather_blocks(t, flat, flat.shape, block)


def _gather_blocks(t, flat, shape, block):
    c = ffi.new("int64_t[]", tuple(shape) or (0,))
    ptr = ffi.from_buffer("int64_t[]", flat) if flat.size else ffi.NULL
    return _call(lib.ad_gather, t._h, len(shape), c, ptr, block)


_BASIC = (int, np.integer, slice, type(None), type(Ellipsis))


def _is_basic(part):
    return isinstance(part, _BASIC) and not isinstance(part, (bool, np.bool_))


_INT, _SLICE, _NO_START, _NO_STOP = lib.AD_INDEX_INT, lib.AD_INDEX_SLICE, lib.AD_INDEX_NO_START, lib.AD_INDEX_NO_STOP
_NEWAXIS, _ELLIPSIS = (lib.AD_INDEX_NEWAXIS, 0, 0, 1), (lib.AD_INDEX_ELLIPSIS, 0, 0, 1)
_index = lib.ad_index


def _bound(v):
    """A slice bound or step that is not an int or None, as slice.indices reads it (np.int64, ...)."""
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError("slice indices must be integers or None or have an __index__ method") from None


def _basic_code(parts):
    """The parts of a basic index (ints, slices, None, Ellipsis) as ad_index reads them, four
    int64 a part; None when a part is anything else (arrays, lists, masks, bools: NumPy's indexing)."""
    code = []
    for p in parts:
        tp = type(p)
        if tp is int:
            code += (_INT, p, 0, 1)
        elif tp is slice:
            start, stop, step, kind = p.start, p.stop, p.step, _SLICE
            if start is None:
                start, kind = 0, kind | _NO_START
            elif type(start) is not int:
                start = _bound(start)
            if stop is None:
                stop, kind = 0, kind | _NO_STOP
            elif type(stop) is not int:
                stop = _bound(stop)
            if step is None:
                step = 1
            elif type(step) is not int:
                step = _bound(step)
            code += (kind, start, stop, step)
        elif p is None:
            code += _NEWAXIS
        elif p is Ellipsis:
            code += _ELLIPSIS
        else:
            i = _int_part(p)
            if i is None:
                return None
            code += (_INT, i, 0, 1)
    return code


def _int_part(p):
    """p as an integer index where NumPy takes it as one (np.integer, any other __index__ but a
    bool's or an array's), else None."""
    if isinstance(p, (bool, np.bool_, np.ndarray, Tensor)):
        return None
    try:
        return operator.index(p)
    except TypeError:
        return None


# The modules that import this one, which Tensor's methods call into (x.sum() is ops.sum(x), ...):
# bound by pyautodiff/__init__.py once all are loaded. A function-level import statement in each
# method cost 2-4 µs per call, more than a small op itself.
_ops = _shape_ops = _reduce_ops = _linalg_ops = _hooks = _functional = None


def _bind_late(ops, shape_ops, reduce_ops, linalg_ops, hooks, functional):
    global _ops, _shape_ops, _reduce_ops, _linalg_ops, _hooks, _functional
    _ops, _shape_ops, _reduce_ops, _linalg_ops, _hooks, _functional = (
        ops, shape_ops, reduce_ops, linalg_ops, hooks, functional)


def _slice(t, parts):
    """t[parts] for a basic index: one call, in which C works out the view and copies it."""
    return _call(_index, t._h, len(parts), _basic_code(parts))


def _whole(part):
    return part is Ellipsis or (isinstance(part, slice) and part == slice(None))


def _rows(t, parts):
    """t[parts] when integer arrays or masks index the leading axes and every later axis is taken
    whole (t[idx], t[idx, :], t[mask, ...]): a gather of whole trailing blocks, with the block
    index made by NumPy from a grid of the leading axes only. None for any other index."""
    lead = list(parts)
    while lead and _whole(lead[-1]):
        lead.pop()
    if not lead or any(_is_basic(p) and not isinstance(p, (int, np.integer)) for p in lead):
        return None
    lead = [p if isinstance(p, (int, np.integer, np.ndarray)) else np.asarray(p) for p in lead]
    k = sum(p.ndim if isinstance(p, np.ndarray) and p.dtype == np.bool_ else 1 for p in lead)
    shape = t.shape
    block = int(np.prod(shape[k:], dtype=np.int64))
    if k >= len(shape) or block == 0:
        return None
    rows = np.arange(int(np.prod(shape[:k], dtype=np.int64)), dtype=np.int64).reshape(shape[:k])[tuple(lead)]
    flat = np.ascontiguousarray(rows * block)
    return _gather_blocks(t, flat, rows.shape + shape[k:], block)


def _check_index(index):
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        if isinstance(p, Tensor):
            raise TypeError("a Tensor cannot be used as an index (tensors hold floats); use an integer "
                            "or boolean NumPy array, e.g. t[mask] with mask = t > 0")


def _assign(t, values):
    """Overwrite the values of leaf t in place, recording nothing (load_state_dict)."""
    arr = np.asarray(values, dtype=t.dtype, order="C")
    if arr.shape != t.shape:
        raise ValueError(f"assign: values have shape {arr.shape} but the tensor has shape {t.shape}")
    ptr = ffi.from_buffer(arr, require_writable=False) if arr.size else ffi.NULL
    check(lib.ad_assign(t._h, ptr))


def _operand_error(op, other):
    raise TypeError(f"unsupported operand type for {op}: Tensor and {type(other).__name__}")


def _other(op, other):
    """The non-Python-scalar operand of a binary operator as a Tensor (None: not ours to handle)."""
    if isinstance(other, Tensor):   # a subclass (nn.Parameter): the fast paths test the exact type
        return other
    if isinstance(other, (np.ndarray, np.generic, list, tuple)):
        return as_tensor(other)
    return None


class Tensor:
    """An n-dimensional float32/float64 array on the autodiff tape (see ad.tensor)."""

    # _shape, _dtype: set by the first read of shape or dtype (a node's never change; a Tensor
    # changes node keeping them, _rebind, or in _adopt, which forgets them)
    __slots__ = ("_h", "_shape", "_dtype", "__weakref__")
    # make NumPy defer to our reflected operators: ndarray @ Tensor calls Tensor.__rmatmul__
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __new__(cls, *args, **kwargs):
        self = _new(cls)
        self._h = 0      # __del__ finds a handle even when __init__ rejects the data
        return self

    def __init__(self, data, dtype=None, requires_grad=False):
        _adopt(self, tensor(data, dtype, requires_grad))

    # __del__, shape and dtype are C (_ownership.h, installed below by _init): a Python __del__
    # could lose the node to a signal raised inside it; shape and dtype read the node only once

    # ---- inspection ----
    def _info(self):
        info = ffi.new("ad_info_t *")
        check(lib.ad_info(self._h, info))
        return info

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def requires_grad(self):
        return bool(self._info().requires_grad)

    @requires_grad.setter
    def requires_grad(self, flag):
        check(lib.ad_set_requires_grad(self._h, 1 if flag else 0))

    @property
    def is_leaf(self):
        return bool(self._info().is_leaf)

    def numpy(self):
        """A copy of the values: writing to it never changes the tensor."""
        rec = getattr(_recording, "rec", None)
        if rec is not None:
            rec.read(self)
        info = self._info()
        dt = dtype_of(info.dtype)
        shape = tuple(info.shape[i] for i in range(info.ndim))
        if info.size == 0:
            return np.zeros(shape, dt)
        buf = ffi.buffer(info.data, info.size * dt.itemsize)
        return np.frombuffer(buf, dtype=dt).reshape(shape).copy()

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def item(self):
        rec = getattr(_recording, "rec", None)
        if rec is not None:
            rec.read(self)
        info = self._info()
        if info.size != 1:
            raise ValueError(f"item(): only a tensor with one element can be converted to a Python "
                             f"scalar, this one has shape {self.shape}")
        if info.dtype == lib.AD_F64:
            return float(ffi.cast("double *", info.data)[0])
        return float(ffi.cast("float *", info.data)[0])

    def tolist(self):
        return self.numpy().tolist()

    def __len__(self):
        shape = self.shape
        if not shape:
            raise TypeError("len() of a 0-d tensor")
        return shape[0]

    def __getitem__(self, index):
        """NumPy indexing: ints, slices (any step), None, Ellipsis, integer arrays and boolean
        masks. The result is a new tensor (a copy, as in any op); the gradient scatter-adds back,
        so an element picked twice receives both cotangents."""
        parts = index if isinstance(index, tuple) else (index,)
        code = _basic_code(parts)
        if code is not None:
            try:
                return _call(_index, self._h, len(parts), code)
            except OverflowError:   # a number past int64, which NumPy's indexing below takes
                pass
        _check_index(index)
        rows = _rows(self, parts)
        return rows if rows is not None else _gather(self, _index_grid(self)[index])

    def __iter__(self):
        # explicit, so a 0-d tensor is a TypeError at iter() rather than a silent IndexError-ended
        # loop
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (_call(_index, self._h, 1, (_INT, i, 0, 1)) for i in range(self.shape[0]))

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor with shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return self.item()

    def __repr__(self):
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = []
        if self.dtype != np.float64:
            extra.append(f"dtype={self.dtype}")
        info = self._info()
        if info.requires_grad:
            extra.append("requires_grad=True" if info.is_leaf else "grad_fn=<recorded>")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    __hash__ = object.__hash__

    def __reduce__(self):
        # copy.copy, copy.deepcopy and pickle would otherwise copy the slot `_h` without taking a
        # reference: two objects sharing one, the first to die freeing the other's node. A copy
        # is a new leaf holding a copy of the values (the graph and grad are not copied).
        return (tensor, (self.numpy(), None, self.requires_grad))

    # ---- autodiff ----
    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf), weighted by grad, into every leaf's .grad (as PyTorch).

        Without retain_graph the swept graph is released. With create_graph=True the sweep is
        recorded, so each .grad is itself a differentiable tensor (a higher-order derivative is
        one more backward away); a leaf's grad then accumulates as a recorded sum, and the graph is
        kept (create_graph implies retain_graph). A grad that depends on its own leaf keeps that
        leaf's graph alive while the leaf is held; unlike PyTorch's reference cycle, dropping the
        leaf's last Tensor frees both. ad.autograd.grad(..., create_graph=True) returns the
        gradients instead of storing them."""
        backward_scope, _inside_transform = _hooks.backward_scope, _functional._inside_transform
        if grad is not None and not isinstance(grad, Tensor):
            arr = np.asarray(grad)
            if arr.dtype.kind not in "fiub":
                raise TypeError(f"backward: grad must be real numbers, got dtype {arr.dtype}")
            grad = as_tensor(arr, self.dtype if arr.dtype.kind != "f" else None)
        if create_graph:
            if grad is not None and grad.dtype != self.dtype:
                grad = grad.astype(self.dtype)
            with backward_scope():
                check(lib.ad_backward_graph(self._h, 0 if grad is None else grad._h))
            return
        _inside_transform("backward() without create_graph=True")
        with backward_scope():
            check(lib.ad_backward(self._h, 0 if grad is None else grad._h, 1 if retain_graph else 0))

    @property
    def grad(self):
        return _call(lib.ad_grad, self._h)    # None when there is none

    @grad.setter
    def grad(self, value):
        if value is None:
            check(lib.ad_set_grad(self._h, 0))
            return
        if not isinstance(value, Tensor):
            value = as_tensor(value, self.dtype)
        check(lib.ad_set_grad(self._h, value._h))

    def zero_grad(self):
        """Clear .grad (set it to None, as PyTorch's zero_grad(set_to_none=True) does)."""
        check(lib.ad_set_grad(self._h, 0))

    def detach(self):
        """A new leaf with the same values and no graph."""
        return _call(lib.ad_detach, self._h)

    # ---- hooks and introspection (pyautodiff/hooks.py) ----
    def register_hook(self, fn):
        """Call fn(grad) whenever a gradient flows into this tensor in a reverse sweep (backward,
        ad.grad, ad.vjp, autograd.grad); a returned tensor replaces the gradient. Returns a
        handle whose remove() takes the hook off."""
        return _hooks.register_hook(self, fn)

    def retain_grad(self):
        """Keep this computed tensor's gradient in .grad at backward() (leaves always do)."""
        _hooks.retain_grad(self)

    @property
    def grad_fn(self):
        """The recorded op that made this tensor (name, next_functions), None for a leaf."""
        return _hooks.grad_fn(self)

    # ---- arithmetic: one C call each ----
    def __add__(self, other):
        if type(other) is Tensor:
            return _call(_binary, ADD, self._h, other._h)
        elif type(other) in _PY_SCALARS:
            return _call(_unary, ADD_S, self._h, other, 0.0)
        else:
            o = _other("+", other)
            if o is None:
                return NotImplemented
            return _call(_binary, ADD, self._h, o._h)

    def __radd__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, ADD_S, self._h, other, 0.0)
        o = _other("+", other)
        return NotImplemented if o is None else _call(_binary, ADD, o._h, self._h)

    def __sub__(self, other):
        if type(other) is Tensor:
            return _call(_binary, SUB, self._h, other._h)
        elif type(other) in _PY_SCALARS:
            return _call(_unary, ADD_S, self._h, -other, 0.0)   # x - c == x + (-c) exactly in IEEE arithmetic
        else:
            o = _other("-", other)
            if o is None:
                return NotImplemented
            return _call(_binary, SUB, self._h, o._h)

    def __rsub__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, RSUB_S, self._h, other, 0.0)
        o = _other("-", other)
        return NotImplemented if o is None else _call(_binary, SUB, o._h, self._h)

    def __mul__(self, other):
        if type(other) is Tensor:
            return _call(_binary, MUL, self._h, other._h)
        elif type(other) in _PY_SCALARS:
            return _call(_unary, MUL_S, self._h, other, 0.0)
        else:
            o = _other("*", other)
            if o is None:
                return NotImplemented
            return _call(_binary, MUL, self._h, o._h)

    def __rmul__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, MUL_S, self._h, other, 0.0)
        o = _other("*", other)
        return NotImplemented if o is None else _call(_binary, MUL, o._h, self._h)

    def __truediv__(self, other):
        if type(other) is Tensor:
            return _call(_binary, DIV, self._h, other._h)
        elif type(other) in _PY_SCALARS:
            return _call(_unary, DIV_S, self._h, other, 0.0)
        else:
            o = _other("/", other)
            if o is None:
                return NotImplemented
            return _call(_binary, DIV, self._h, o._h)

    def __rtruediv__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, RDIV_S, self._h, other, 0.0)
        o = _other("/", other)
        return NotImplemented if o is None else _call(_binary, DIV, o._h, self._h)

    def __pow__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, POW_S, self._h, other, 0.0)
        o = other if type(other) is Tensor else _other("**", other)
        return NotImplemented if o is None else _call(_binary, POW, self._h, o._h)

    def __rpow__(self, other):
        if type(other) in _PY_SCALARS:
            return _call(_unary, RPOW_S, self._h, other, 0.0)
        o = _other("**", other)
        return NotImplemented if o is None else _call(_binary, POW, o._h, self._h)

    def __floordiv__(self, other):
        return _ops.floor_divide(self, other)

    def __rfloordiv__(self, other):
        return _ops.floor_divide(other, self)

    def __mod__(self, other):
        return _ops.mod(self, other)

    def __rmod__(self, other):
        return _ops.mod(other, self)

    def __matmul__(self, other):
        o = other if type(other) is Tensor else _other("@", other)
        return NotImplemented if o is None else _call(_matmul, self._h, o._h)

    def __rmatmul__(self, other):
        o = _other("@", other)
        return NotImplemented if o is None else _call(_matmul, o._h, self._h)

    def __neg__(self):
        return _call(_unary, NEG, self._h, 0.0, 0.0)

    def __pos__(self):
        return self

    def __abs__(self):
        return _call(_unary, lib.AD_OP_ABS, self._h, 0.0, 0.0)

    # ---- comparisons: NumPy bool arrays, no gradient ----
    def __lt__(self, other):
        return _compare(np.less, self, other)

    def __le__(self, other):
        return _compare(np.less_equal, self, other)

    def __gt__(self, other):
        return _compare(np.greater, self, other)

    def __ge__(self, other):
        return _compare(np.greater_equal, self, other)

    def __eq__(self, other):
        return _compare(np.equal, self, other)

    def __ne__(self, other):
        return _compare(np.not_equal, self, other)

    # ---- NumPy-style methods (the functions live in ops.py) ----
    @property
    def T(self):
        return _call(lib.ad_transpose, self._h, -1, ffi.NULL)

    def sum(self, axis=None, keepdims=False):
        return _ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops.max(self, axis, keepdims)

    def min(self, axis=None, keepdims=False):
        return _ops.min(self, axis, keepdims)

    def round(self, decimals=0):
        return _ops.round(self, decimals)

    def reshape(self, *shape):
        return _ops.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    def transpose(self, *axes):
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = axes[0]
        return _ops.transpose(self, axes if axes else None)

    def clip(self, lo=None, hi=None):
        return _ops.clip(self, lo, hi)

    def astype(self, dtype):
        return _ops.astype(self, dtype)

    # shape ops (pyautodiff/shape_ops.py); repeat is NumPy's (torch's Tensor.repeat is ad.tile)
    def squeeze(self, axis=None):
        return _shape_ops.squeeze(self, axis)

    def unsqueeze(self, dim):
        return _shape_ops.unsqueeze(self, dim)

    def flatten(self, start_dim=0, end_dim=-1):
        return _shape_ops.flatten(self, start_dim, end_dim)

    def permute(self, *dims):
        return _shape_ops.permute(self, *dims)

    def moveaxis(self, source, destination):
        return _shape_ops.moveaxis(self, source, destination)

    def swapaxes(self, axis1, axis2):
        return _shape_ops.swapaxes(self, axis1, axis2)

    def flip(self, axis=None):
        return _shape_ops.flip(self, axis)

    def roll(self, shift, axis=None):
        return _shape_ops.roll(self, shift, axis)

    def tile(self, reps):
        return _shape_ops.tile(self, reps)

    def repeat(self, repeats, axis=None):
        return _shape_ops.repeat(self, repeats, axis)

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return _shape_ops.diagonal(self, offset, axis1, axis2)

    def tril(self, k=0):
        return _shape_ops.tril(self, k)

    def triu(self, k=0):
        return _shape_ops.triu(self, k)

    def trace(self, offset=0, axis1=0, axis2=1):
        return _linalg_ops.trace(self, offset, axis1, axis2)

    def dot(self, other):
        return _linalg_ops.dot(self, other)

    # reductions and scans (pyautodiff/reduce_ops.py)
    def prod(self, axis=None, keepdims=False):
        return _reduce_ops.prod(self, axis, keepdims)

    def var(self, axis=None, ddof=0, keepdims=False):
        return _reduce_ops.var(self, axis, ddof, keepdims)

    def std(self, axis=None, ddof=0, keepdims=False):
        return _reduce_ops.std(self, axis, ddof, keepdims)

    def cumsum(self, axis=None):
        return _reduce_ops.cumsum(self, axis)

    def cumprod(self, axis=None):
        return _reduce_ops.cumprod(self, axis)

    def argmax(self, axis=None, keepdims=False):
        return _reduce_ops.argmax(self, axis, keepdims)

    def argmin(self, axis=None, keepdims=False):
        return _reduce_ops.argmin(self, axis, keepdims)

    def argsort(self, axis=-1, descending=False):
        return _reduce_ops.argsort(self, axis, descending)

    def topk(self, k, axis=-1, largest=True, sorted=True):
        return _reduce_ops.topk(self, k, axis, largest, sorted)

    def scatter_add(self, dim, index, src):
        return _shape_ops.scatter_add(self, dim, index, src)

    # ---- in-place updates, PyTorch's names (see _update) and conveniences ----
    def add_(self, other, alpha=1):
        return _update(self, "add_", lambda t: t + (other if alpha == 1 else alpha * other), other)

    def sub_(self, other, alpha=1):
        return _update(self, "sub_", lambda t: t - (other if alpha == 1 else alpha * other), other)

    def mul_(self, other):
        return _update(self, "mul_", lambda t: t * other, other)

    def div_(self, other):
        return _update(self, "div_", lambda t: t / other, other)

    __iadd__, __isub__, __imul__, __itruediv__ = add_, sub_, mul_, div_

    def clamp_(self, min=None, max=None):
        return _update(self, "clamp_", lambda t: _ops.clip(t, min, max))

    def fill_(self, value):
        return _update(self, "fill_", lambda t: _overwrite(t, np.ones(t.shape, bool), value), value)

    def zero_(self):
        return self.fill_(0.0)

    def copy_(self, src):
        """self's values become src's (broadcast to self's shape, converted to its dtype); when
        recorded, the gradient goes to src, as PyTorch's copy_."""
        return _update(self, "copy_", lambda t: _overwrite(t, np.ones(t.shape, bool), src), src)

    def __setitem__(self, index, value):
        """t[index] = value with NumPy's indexing and assignment rules (value broadcasts to the
        selection; of repeated positions the last one wins). Recorded, it is differentiable in t
        (zero where overwritten) and in value."""
        _check_index(index)
        pos = _index_grid(self)[index]
        mask = np.zeros(self.size, dtype=bool)
        mask[pos.reshape(-1)] = True
        _update(self, "__setitem__", lambda t: _overwrite(t, mask.reshape(t.shape), value, pos), value)

    def requires_grad_(self, requires_grad=True):
        self.requires_grad = requires_grad
        return self

    def clone(self):
        """A differentiable copy (gradient 1): later in-place updates of either leave the other alone."""
        return _call(_unary, MUL_S, self._h, 1.0, 0.0)   # x * 1.0 is x exactly, -0.0 and NaN included

    @property
    def data(self):
        """A leaf sharing this tensor's values, not tracked: in-place updates through it change
        this tensor too (and bump the version both report), as PyTorch's .data."""
        return _call(lib.ad_data, self._h)

    def detach_(self):
        """Make this tensor a leaf that does not require grad, keeping its values (shared)."""
        _rebind(self, _call(lib.ad_data, self._h))
        return self

    @property
    def _version(self):
        v = lib.ad_version(self._h)
        if v < 0:
            raise_status(v)
        return v

    def numel(self):
        return self.size

    def dim(self):
        return self.ndim

    def to(self, dtype):
        """This tensor in dtype (itself when it already has it), as PyTorch's t.to(dtype)."""
        return self if resolve_dtype(dtype) == self.dtype else self.astype(dtype)

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def __int__(self):
        return int(self.item())

    def __round__(self, ndigits=None):
        # PyTorch's round(t) is torch.round: a tensor
        return self.round(0 if ndigits is None else ndigits)

    def __format__(self, spec):
        if self.size == 1:
            return format(self.item(), spec)
        if spec:
            raise TypeError(f"format spec {spec!r} applies to tensors of one element, this one has shape {self.shape}")
        return str(self)


def _rebind(t, r):
    """Tensor t takes over r's node (t's old node is released; r is left empty). r has t's shape
    and dtype (every caller makes sure), so what t cached of them stays true."""
    h, r._h = r._h, 0
    old, t._h = t._h, h
    _release(old)


def _update(t, name, fn, operand=None):
    """t <- fn(t), in place, with PyTorch's rules. Recorded (grad mode on and t or the operand
    requires grad): t is rebound to the recorded result, a new node; the node t had stays as it
    was, so every graph that read it still reads the values it saw (a functional update, as JAX's
    .at[].set) and t's gradient flows through fn to the old node. A leaf that requires grad cannot
    be updated that way (RuntimeError, as PyTorch). Otherwise fn runs unrecorded and its result is
    written into t's buffer by the core, which bumps t's version: a graph that saved the old
    values then refuses to sweep (no stale gradient)."""
    info = t._info()
    grad_on = lib.ad_grad_enabled()
    recorded = grad_on and (info.requires_grad or (isinstance(operand, Tensor) and operand.requires_grad))
    if recorded and info.is_leaf and info.requires_grad:
        raise RuntimeError(f"{name}: a leaf tensor that requires grad is being used in an in-place operation; "
                           f"update it inside ad.no_grad() (as an optimizer does), or use an out-of-place op")
    if recorded:
        r = fn(t)
    else:
        with no_grad():
            r = fn(t)
    if not isinstance(r, Tensor):
        r = as_tensor(r, t.dtype)
    if r.shape != t.shape:
        raise ValueError(f"{name}: the result has shape {r.shape}, which does not match the tensor's shape "
                         f"{t.shape} (an in-place op cannot change a tensor's shape)")
    if r.dtype != t.dtype:
        r = r.astype(t.dtype)
    if recorded:
        _rebind(t, r)
    else:
        check(lib.ad_write(t._h, r._h))
    return t


# Tensor.__del__, shape and dtype, and where _call puts a handle
_core._init(Tensor, raise_status, (dtype_of(0), dtype_of(1)))   # dtypes by code: AD_F32 = 0, AD_F64 = 1


def _overwrite(t, mask, value, pos=None):
    """t with the elements where mask is true replaced by value (broadcast to pos's shape, the
    positions indexed, or to t's when pos is None), built from recorded ops (where, gather,
    scatter_add) so that it is differentiable in t and in value to any order."""
    from .ops import broadcast_to, where, _scatter_add
    value = as_tensor(value, t.dtype if not isinstance(value, Tensor) else None)
    if value.dtype != t.dtype:
        value = value.astype(t.dtype)
    if pos is None:
        return where(mask, broadcast_to(value, t.shape), t)
    flat = pos.reshape(-1)
    value = broadcast_to(value, pos.shape)
    # NumPy assigns repeated positions in order, so the last one wins: only it reaches t
    _, first_of_reversed = np.unique(flat[::-1], return_index=True)
    last = np.sort(flat.size - 1 - first_of_reversed)
    if last.size != flat.size:
        value = _gather(value, last)
        flat = flat[last]
    placed = _scatter_add(value, flat, t.shape)
    return where(mask, placed, t)


def _plain(x):
    return x.numpy() if isinstance(x, Tensor) else x


# The recording in progress on this thread (pyautodiff/record.py), if any: every read of a
# tensor's values (numpy(), item() and what goes through them) and every comparison is reported to
# it, so that a replay can check that the values it computes would have read the same.
_recording = threading.local()


def _compare(fn, t, other):
    """A comparison of t's values with other's (a NumPy bool array). While recording it is reported
    as one, so that the replay checks the mask it gives, not the values behind it."""
    rec = getattr(_recording, "rec", None)
    if rec is None:
        return fn(t.numpy(), _plain(other))
    with rec.quiet():
        result = fn(t.numpy(), _plain(other))
    rec.compare(fn, t, other, result)
    return result


def tensor(data, dtype=None, requires_grad=False):
    """A new leaf tensor holding a copy of data (float64 by default; float32 arrays stay float32;
    ints and bools become float64)."""
    if isinstance(data, Tensor):
        data = data.numpy()
    return _from_array(as_float_array(data, dtype), requires_grad)


def _shape_arg(shape):
    shape = int_tuple(shape, "shape")
    if len(shape) > lib.AD_MAXDIM:
        raise ValueError(f"tensors have at most {lib.AD_MAXDIM} dimensions, got shape {shape}")
    return shape


def full(shape, fill_value, dtype=None, requires_grad=False):
    shape = _shape_arg(shape)
    dt = resolve_dtype(dtype) if dtype is not None else np.dtype(np.float64)
    c = ffi.new("int64_t[]", shape or (0,))
    return _call(lib.ad_full, dtype_code(dt), len(shape), c, float(fill_value), 1 if requires_grad else 0)


def zeros(shape, dtype=None, requires_grad=False):
    return full(shape, 0.0, dtype, requires_grad)


def ones(shape, dtype=None, requires_grad=False):
    return full(shape, 1.0, dtype, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    t = as_tensor(t)
    return full(t.shape, 0.0, dtype or t.dtype, requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    t = as_tensor(t)
    return full(t.shape, 1.0, dtype or t.dtype, requires_grad)


class no_grad:
    """Context manager (and decorator): ops inside record nothing. Nests; restores on exceptions."""

    __slots__ = ("_prev",)

    # __enter__ and __exit__ are C (_ownership.h, installed below by _init_no_grad): an interrupt
    # (Ctrl-C, an alarm) landing at the first line of a Python __exit__ would leave grad mode off.

    def __call__(self, fn):
        return _context_decorator(no_grad, fn)


_core._init_no_grad(no_grad)


def _context_decorator(context, fn):
    """fn run inside a fresh context() (no_grad, detect_anomaly) at every call. A generator
    function's body runs when the generator is resumed, not when it is called, so its generator is
    wrapped instead: the context is entered around each resumption and left at each yield, as
    PyTorch does, and the caller's code between two resumptions runs outside it."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            gen = fn(*args, **kwargs)
            try:
                with context():
                    response = gen.send(None)
                while True:
                    try:
                        request = yield response
                    except GeneratorExit:
                        with context():
                            gen.close()
                        raise
                    except BaseException as exc:
                        with context():
                            response = gen.throw(exc)
                    else:
                        with context():
                            response = gen.send(request)
            except StopIteration as stop:
                return stop.value
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)
    return wrapper


def is_grad_enabled():
    return bool(lib.ad_grad_enabled())


def tape_stats():
    """Counters of this thread's tape: live_nodes, live_bytes, pooled_bytes, tape_length."""
    from .custom import _reap
    _reap()      # records of freed custom nodes may still hold tensors
    s = ffi.new("ad_stats_t *")
    check(lib.ad_stats(s))
    return {"live_nodes": s.live_nodes, "live_bytes": s.live_bytes,
            "pooled_bytes": s.pooled_bytes, "tape_length": s.tape_length}


def set_num_threads(n):
    """Threads that one large elementwise op (forward or VJP, >= 32768 elements, nothing
    broadcast) splits its work over. The default is PYAUTODIFF_NUM_THREADS, else OMP_NUM_THREADS,
    else the machine's cores (at most 64). Results are
    bit-identical for any setting. BLAS (matmul) keeps its own setting: OPENBLAS_NUM_THREADS or
    threadpoolctl set SciPy's OpenBLAS threads."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: expected an int, got {type(n).__name__}")
    if not -2**31 <= n < 2**31:
        raise ValueError(f"set_num_threads: {n} threads is out of range")
    check(lib.ad_set_num_threads(int(n)))


def get_num_threads():
    """The current set_num_threads setting."""
    return lib.ad_get_num_threads()
