"""Function transformations, as JAX users know them: grad, value_and_grad, vjp, jvp, jacrev, jacfwd.

Each transformation calls f once on fresh leaf copies of the differentiated arguments (so the
caller's tensors and their .grad are never touched), then runs one sweep in C over the recorded
graph: ``ad_jvp`` pushes k tangent directions forwards, ``ad_vjp`` pulls k cotangents backwards.
jacfwd seeds all n basis directions of its inputs in one sweep of width n, jacrev all m basis
cotangents of the output in one backward sweep of width m, so a Jacobian costs one call of f and
one sweep, not a Python-level pass per row or column.

Arguments may be Tensors, NumPy arrays, lists or Python numbers; arguments not named in
``argnums`` (and keyword arguments) reach f unchanged. f returns a Tensor (``value_and_grad``
with ``has_aux=True``: a pair ``(value, aux)``). Results are Tensors; the returned primal output
is detached, so holding it keeps no graph alive.
"""
import operator

import numpy as np

from ._capi import ffi, lib, check, as_float_array
from .tensor import Tensor, _wrap, _from_array

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "jacrev", "jacfwd"]


class _grad_enabled:
    """Record inside f even when the caller is in no_grad(): the transformations need the graph."""

    def __enter__(self):
        self._prev = lib.ad_set_grad_enabled(1)
        if self._prev < 0:
            check(self._prev)

    def __exit__(self, *exc):
        lib.ad_set_grad_enabled(self._prev)
        return False


def _argnums(argnums, nargs, name):
    """Normalised argnums as a tuple of non-negative ints (negative ones count from the end)."""
    single = not isinstance(argnums, (tuple, list))
    items = (argnums,) if single else tuple(argnums)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name}: argnums must be an int or a tuple of ints, got {argnums!r}")
        a = operator.index(a)
        if not -nargs <= a < nargs:
            raise ValueError(f"{name}: argnums {a} is out of range for a function called with {nargs} "
                             f"positional argument{'s' if nargs != 1 else ''}")
        out.append(a % nargs)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: argnums {argnums!r} names the same argument twice")
    return single, tuple(out)


def _leaf(x):
    """A fresh leaf that requires grad, holding a copy of x's values (x itself is left alone)."""
    if isinstance(x, Tensor):
        t = _wrap(lib.ad_detach(x._h))
        check(lib.ad_set_requires_grad(t._h, 1))
        return t
    return _from_array(as_float_array(x, what="input"), requires_grad=True)


def _prepare(args, nums):
    args = list(args)
    leaves = []
    for i in nums:
        args[i] = _leaf(args[i])
        leaves.append(args[i])
    return leaves, args


def _output(out, name):
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        raise TypeError(f"{name}: f must return a single Tensor, got a {type(out).__name__} of "
                        f"{len(out)} items")
    try:
        # a constant output (a NumPy array or number) has a zero derivative
        return _from_array(as_float_array(out, what=f"{name} output"))
    except TypeError:
        raise TypeError(f"{name}: f must return a Tensor, got {type(out).__name__}") from None


def _handles(tensors):
    return ffi.new("int64_t[]", [t._h for t in tensors] or [0])


def _rows(arr):
    """A (k, size) tensor: the sweeps take k directions stacked on a leading axis."""
    return _from_array(np.ascontiguousarray(arr).reshape(arr.shape[0], -1))


def _jvp_sweep(out, leaves, seeds, k):
    """out's tangent for k directions, as an array of shape (k, out.size)."""
    res = ffi.new("int64_t *")
    check(lib.ad_jvp(out._h, len(leaves), _handles(leaves), _handles(seeds), k, res))
    return _wrap(res[0]).numpy().reshape(k, -1)


def _vjp_sweep(out, leaves, cotangent_rows):
    """Each leaf's k cotangent-weighted gradients, as arrays of shape (k, leaf.size)."""
    k = cotangent_rows.shape[0]
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    check(lib.ad_vjp(out._h, cotangent_rows._h, len(leaves), _handles(leaves), res))
    return [_wrap(res[i]).numpy().reshape(k, -1) for i in range(len(leaves))]


def _matching(value, like_shape, like_dtype, what, like_what):
    """value as an array of like's shape and dtype; a float array or Tensor of another dtype, or
    any other shape, is a ValueError naming both. Lists, numbers and int/bool arrays take like's
    dtype, as a literal would."""
    strict = isinstance(value, (Tensor, np.ndarray, np.generic))
    arr = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != tuple(like_shape) or (strict and arr.dtype.kind == "f" and arr.dtype != like_dtype):
        shown = arr.dtype if strict or arr.dtype.kind != "f" else like_dtype
        raise ValueError(f"{what} has shape {arr.shape} and dtype {shown}, but {like_what} has shape "
                         f"{tuple(like_shape)} and dtype {like_dtype}; they must match")
    return arr.astype(like_dtype, copy=False)


def _pick(single, items):
    return items[0] if single else tuple(items)


def value_and_grad(f, argnums=0, has_aux=False):
    """A function returning (f(*args), gradient of f with respect to args[argnums]).

    f must return a tensor with one element. With a tuple ``argnums`` the gradient is a tuple.
    With ``has_aux=True`` f returns ``(value, aux)`` and the result is ``((value, aux), grad)``.
    """
    def value_and_grad_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "value_and_grad")
        leaves, args = _prepare(args, nums)
        with _grad_enabled():
            res = f(*args, **kwargs)
        if has_aux:
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise TypeError("value_and_grad: with has_aux=True, f must return a pair (value, aux), "
                                f"got {type(res).__name__}")
            res, aux = res
        out = _output(res, "value_and_grad")
        if out.size != 1:
            raise TypeError(f"grad: f must return a scalar (a tensor with one element), but it returned "
                            f"shape {out.shape}; for a non-scalar output use ad.jacrev (the full "
                            f"Jacobian) or ad.vjp (a vector-Jacobian product)")
        grads = _vjp_sweep(out, leaves, _from_array(np.ones((1, 1), out.dtype)))
        g = _pick(single, [_from_array(gr.reshape(l.shape)) for gr, l in zip(grads, leaves)])
        value = out.detach()
        return ((value, aux), g) if has_aux else (value, g)

    value_and_grad_f.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return value_and_grad_f


def grad(f, argnums=0, has_aux=False):
    """A function returning the gradient of scalar f with respect to args[argnums] (a tuple for a
    tuple argnums; ``(grad, aux)`` with ``has_aux=True``)."""
    vg = value_and_grad(f, argnums, has_aux)

    def grad_f(*args, **kwargs):
        value, g = vg(*args, **kwargs)
        return (g, value[1]) if has_aux else g

    grad_f.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return grad_f


def vjp(f, *primals):
    """``(f(*primals), vjp_fn)``; ``vjp_fn(cotangent)`` returns one cotangent-weighted gradient per
    primal (a tuple), and may be called any number of times: the graph is kept, not released."""
    leaves, args = _prepare(primals, range(len(primals)))
    with _grad_enabled():
        out = _output(f(*args), "vjp")
    shape, dtype = out.shape, out.dtype

    def vjp_fn(cotangent):
        c = _matching(cotangent, shape, dtype, "vjp: the cotangent", "the output of f")
        grads = _vjp_sweep(out, leaves, _rows(c[np.newaxis]))
        return tuple(_from_array(gr.reshape(l.shape)) for gr, l in zip(grads, leaves))

    return out.detach(), vjp_fn


def jvp(f, primals, tangents):
    """``(f(*primals), tangent_out)``: the directional derivative of f at primals along tangents.

    ``primals`` and ``tangents`` are sequences of the same length; each tangent has its primal's
    shape and dtype."""
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("jvp: primals and tangents must be tuples (or lists), e.g. "
                        "ad.jvp(f, (x,), (v,))")
    if len(primals) != len(tangents):
        raise ValueError(f"jvp: got {len(primals)} primals but {len(tangents)} tangents")
    leaves, args = _prepare(primals, range(len(primals)))
    seeds = [_rows(_matching(t, l.shape, l.dtype, f"jvp: tangent {i}", f"primal {i}")[np.newaxis])
             for i, (t, l) in enumerate(zip(tangents, leaves))]
    with _grad_enabled():
        out = _output(f(*args), "jvp")
    t_out = _jvp_sweep(out, leaves, seeds, 1)
    return out.detach(), _from_array(t_out.reshape(out.shape))


def _jacobian_blocks(rows, leaves, out_shape, by_output):
    """Jacobian blocks of shape out_shape + leaf.shape from the sweep's rows (by_output: row i is
    output element i, as jacrev's; else row j is input direction j, as jacfwd's)."""
    blocks = []
    for rows_i, leaf in zip(rows, leaves):
        shape = tuple(out_shape) + leaf.shape
        if len(shape) > lib.AD_MAXDIM:
            raise ValueError(f"the Jacobian of shape {shape} has {len(shape)} dimensions, but tensors have "
                             f"at most {lib.AD_MAXDIM}; reshape the input or output, or use jvp/vjp")
        m = rows_i if by_output else rows_i.T
        blocks.append(_from_array(np.ascontiguousarray(m).reshape(shape)))
    return blocks


def jacfwd(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by forward mode: all input directions in one sweep."""
    def jacfwd_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacfwd")
        leaves, args = _prepare(args, nums)
        with _grad_enabled():
            out = _output(f(*args, **kwargs), "jacfwd")
        sizes = [l.size for l in leaves]
        n = sum(sizes)
        if n == 0:
            tangent = np.zeros((0, out.size), out.dtype)
        else:
            seeds, offset = [], 0
            for leaf, size in zip(leaves, sizes):
                seed = np.zeros((n, size), leaf.dtype)
                seed[offset:offset + size] = np.eye(size, dtype=leaf.dtype)
                seeds.append(_from_array(seed))
                offset += size
            tangent = _jvp_sweep(out, leaves, seeds, n)
        splits = np.cumsum(sizes)[:-1]
        return _pick(single, _jacobian_blocks(np.split(tangent, splits), leaves, out.shape, False))

    jacfwd_f.__name__ = f"jacfwd({getattr(f, '__name__', 'f')})"
    return jacfwd_f


def jacrev(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by reverse mode: all output cotangents in one backward sweep."""
    def jacrev_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacrev")
        leaves, args = _prepare(args, nums)
        with _grad_enabled():
            out = _output(f(*args, **kwargs), "jacrev")
        m = out.size
        if m == 0:
            rows = [np.zeros((0, l.size), l.dtype) for l in leaves]
        else:
            rows = _vjp_sweep(out, leaves, _from_array(np.eye(m, dtype=out.dtype)))
        return _pick(single, _jacobian_blocks(rows, leaves, out.shape, True))

    jacrev_f.__name__ = f"jacrev({getattr(f, '__name__', 'f')})"
    return jacrev_f
