"""Function transformations, as JAX users know them: grad, value_and_grad, vjp, jvp, jacrev, jacfwd.

Each transformation calls f once on fresh leaf copies of the differentiated arguments (so the
caller's tensors and their .grad are never touched), then runs one sweep in C over the recorded
graph: ``ad_jvp`` pushes k tangent directions forwards, ``ad_vjp`` pulls k cotangents backwards.
jacfwd seeds all n basis directions of its inputs in one sweep of width n, jacrev all m basis
cotangents of the output in one backward sweep of width m, so a Jacobian costs one call of f and
one sweep, not a Python-level pass per row or column.

Arguments may be Tensors, NumPy arrays, lists or Python numbers, or containers of them (a
"pytree", as in JAX): dicts, tuples (named ones too) and lists nest, and a differentiated
container gets its derivatives back in the same structure, e.g. ``grad(loss)(params)`` with
params a dict of arrays returns a dict of gradients. A list or tuple is a container when it holds
a Tensor, an array, a dict or another container; one of plain numbers is array data, as for
``ad.tensor``. Arguments not named in ``argnums`` (and keyword arguments) reach f unchanged. f
returns a Tensor (``value_and_grad`` with ``has_aux=True``: a pair ``(value, aux)``). Results are
Tensors; the returned primal output is detached, so holding it keeps no graph alive.
"""
import operator

import numpy as np

from ._capi import ffi, lib, check, as_float_array
from .tensor import Tensor, _wrap, _from_array

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "jacrev", "jacfwd", "hvp", "hessian"]


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


def _is_container(x):
    if isinstance(x, dict):
        return True
    if isinstance(x, (list, tuple)):
        return any(isinstance(i, (Tensor, np.ndarray, dict)) or _is_container(i) for i in x)
    return False


def _flatten(x, leaves):
    """Append x's leaves to `leaves` (depth first, containers in their own order) and return its
    structure: None for a leaf, else (container type, dict keys or None, child structures)."""
    if not _is_container(x):
        leaves.append(x)
        return None
    if isinstance(x, dict):
        return (type(x), list(x), [_flatten(v, leaves) for v in x.values()])
    return (type(x), None, [_flatten(v, leaves) for v in x])


def _unflatten(spec, leaves):
    """Rebuild the structure `spec` from the iterator `leaves`."""
    if spec is None:
        return next(leaves)
    kind, keys, children = spec
    values = [_unflatten(c, leaves) for c in children]
    if keys is not None:
        return kind(zip(keys, values))
    if hasattr(kind, "_fields"):           # a namedtuple takes its fields as arguments
        return kind(*values)
    return kind(values)


def _flatten_like(x, spec, what, path=""):
    """x's leaves, in the order of spec's; x must have that structure (ValueError naming where it
    differs otherwise)."""
    if spec is None:
        return [x]
    kind, keys, children = spec
    where = f" at {path}" if path else ""
    if keys is not None:
        if not isinstance(x, dict) or set(x) != set(keys):
            def shown(ks):
                return "[" + ", ".join(sorted(map(repr, ks))) + "]"
            got = f"a dict with keys {shown(x)}" if isinstance(x, dict) else f"a {type(x).__name__}"
            raise ValueError(f"{what}{where} must be a dict with keys {shown(keys)} like its primal, "
                             f"got {got}")
        items = [(f"{path}[{k!r}]", x[k], c) for k, c in zip(keys, children)]
    else:
        if not isinstance(x, (list, tuple)) or len(x) != len(children):
            got = f"{type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple)) else type(x).__name__
            raise ValueError(f"{what}{where} must be a {kind.__name__} of {len(children)} items like its "
                             f"primal, got a {got}")
        items = [(f"{path}[{i}]", v, c) for i, (v, c) in enumerate(zip(x, children))]
    out = []
    for sub, v, c in items:
        out += _flatten_like(v, c, what, sub)
    return out


def _leaf(x):
    """A fresh leaf that requires grad, holding a copy of x's values (x itself is left alone)."""
    if isinstance(x, Tensor):
        t = _wrap(lib.ad_detach(x._h))
        check(lib.ad_set_requires_grad(t._h, 1))
        return t
    return _from_array(as_float_array(x, what="input"), requires_grad=True)


def _prepare(args, nums):
    """Fresh leaves for the arguments args[i], i in nums (every leaf of a container), the
    arguments to call f with, and each differentiated argument's structure (see _regroup)."""
    args = list(args)
    leaves, specs = [], []
    for i in nums:
        values = []
        spec = _flatten(args[i], values)
        fresh = [_leaf(v) for v in values]
        args[i] = _unflatten(spec, iter(fresh))
        leaves += fresh
        specs.append(spec)
    return leaves, args, specs


def _regroup(specs, per_leaf):
    """One result per differentiated argument, from one per leaf, in the argument's structure."""
    it = iter(per_leaf)
    return [_unflatten(spec, it) for spec in specs]


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


def _hvp_sweep(out, leaves, seeds, k):
    """Each leaf's k Hessian-vector rows (forward over reverse), as arrays of shape (k, leaf.size)."""
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    check(lib.ad_hvp(out._h, len(leaves), _handles(leaves), _handles(seeds), k, res))
    return [_wrap(res[i]).numpy().reshape(k, -1) for i in range(len(leaves))]


def _scalar_output(out, name):
    if out.size != 1:
        raise TypeError(f"{name}: f must return a scalar (a tensor with one element), but it returned "
                        f"shape {out.shape}; for a non-scalar output use ad.jacrev (the full "
                        f"Jacobian) or ad.vjp (a vector-Jacobian product)")
    return out


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
        leaves, args, specs = _prepare(args, nums)
        with _grad_enabled():
            res = f(*args, **kwargs)
        if has_aux:
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise TypeError("value_and_grad: with has_aux=True, f must return a pair (value, aux), "
                                f"got {type(res).__name__}")
            res, aux = res
        out = _scalar_output(_output(res, "value_and_grad"), "grad")
        grads = _vjp_sweep(out, leaves, _from_array(np.ones((1, 1), out.dtype)))
        g = _pick(single, _regroup(specs, [_from_array(gr.reshape(l.shape)) for gr, l in zip(grads, leaves)]))
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
    leaves, args, specs = _prepare(primals, range(len(primals)))
    with _grad_enabled():
        out = _output(f(*args), "vjp")
    shape, dtype = out.shape, out.dtype

    def vjp_fn(cotangent):
        c = _matching(cotangent, shape, dtype, "vjp: the cotangent", "the output of f")
        grads = _vjp_sweep(out, leaves, _rows(c[np.newaxis]))
        return tuple(_regroup(specs, [_from_array(gr.reshape(l.shape)) for gr, l in zip(grads, leaves)]))

    return out.detach(), vjp_fn


def _seeded(name, primals, tangents):
    """Fresh leaves for the primals, the arguments to call f with, their structures, and one
    tangent direction per leaf (for jvp and hvp)."""
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError(f"{name}: primals and tangents must be tuples (or lists), e.g. "
                        f"ad.{name}(f, (x,), (v,))")
    if len(primals) != len(tangents):
        raise ValueError(f"{name}: got {len(primals)} primals but {len(tangents)} tangents")
    leaves, args, specs = _prepare(primals, range(len(primals)))
    flat = [(i, t) for i, (tangent, spec) in enumerate(zip(tangents, specs))
            for t in _flatten_like(tangent, spec, f"{name}: tangent {i}")]
    seeds = [_rows(_matching(t, l.shape, l.dtype, f"{name}: tangent {i}", f"primal {i}")[np.newaxis])
             for (i, t), l in zip(flat, leaves)]
    return leaves, args, specs, seeds


def jvp(f, primals, tangents):
    """``(f(*primals), tangent_out)``: the directional derivative of f at primals along tangents.

    ``primals`` and ``tangents`` are sequences of the same length; each tangent has its primal's
    structure, and each of its leaves the shape and dtype of the primal's leaf."""
    leaves, args, _, seeds = _seeded("jvp", primals, tangents)
    with _grad_enabled():
        out = _output(f(*args), "jvp")
    t_out = _jvp_sweep(out, leaves, seeds, 1)
    return out.detach(), _from_array(t_out.reshape(out.shape))


def hvp(f, primals, tangents):
    """``(f(*primals), hv)``: the Hessian of scalar f at primals applied to tangents, by forward
    mode over reverse mode (one tangent pass and one reverse pass in C, exact, no differences).

    ``primals`` and ``tangents`` as for jvp; ``hv`` is a tuple with one entry per primal, in its
    structure: the derivative of f's gradient with respect to that primal along the tangents."""
    leaves, args, specs, seeds = _seeded("hvp", primals, tangents)
    with _grad_enabled():
        out = _scalar_output(_output(f(*args), "hvp"), "hvp")
    rows = _hvp_sweep(out, leaves, seeds, 1)
    return out.detach(), tuple(_regroup(specs, [_from_array(r.reshape(l.shape)) for r, l in zip(rows, leaves)]))


def _block(values, shape, what):
    """A Jacobian or Hessian block as a Tensor of the given shape."""
    shape = tuple(shape)
    if len(shape) > lib.AD_MAXDIM:
        raise ValueError(f"the {what} of shape {shape} has {len(shape)} dimensions, but tensors have "
                         f"at most {lib.AD_MAXDIM}; reshape the input or output, or use jvp/vjp/hvp")
    return _from_array(np.ascontiguousarray(values).reshape(shape))


def _jacobian_blocks(rows, leaves, out_shape, by_output):
    """Jacobian blocks of shape out_shape + leaf.shape from the sweep's rows (by_output: row i is
    output element i, as jacrev's; else row j is input direction j, as jacfwd's)."""
    return [_block(rows_i if by_output else rows_i.T, tuple(out_shape) + leaf.shape, "Jacobian")
            for rows_i, leaf in zip(rows, leaves)]


def _basis_seeds(leaves):
    """All n basis directions of the concatenated inputs, split per leaf: (seeds, sizes)."""
    sizes = [l.size for l in leaves]
    n = sum(sizes)
    seeds, offset = [], 0
    for leaf, size in zip(leaves, sizes):
        seed = np.zeros((n, size), leaf.dtype)
        seed[offset:offset + size] = np.eye(size, dtype=leaf.dtype)
        seeds.append(_from_array(seed))
        offset += size
    return seeds, sizes


def jacfwd(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by forward mode: all input directions in one sweep."""
    def jacfwd_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacfwd")
        leaves, args, specs = _prepare(args, nums)
        with _grad_enabled():
            out = _output(f(*args, **kwargs), "jacfwd")
        seeds, sizes = _basis_seeds(leaves)
        n = sum(sizes)
        tangent = _jvp_sweep(out, leaves, seeds, n) if n else np.zeros((0, out.size), out.dtype)
        splits = np.cumsum(sizes)[:-1]
        return _pick(single, _regroup(specs, _jacobian_blocks(np.split(tangent, splits), leaves, out.shape, False)))

    jacfwd_f.__name__ = f"jacfwd({getattr(f, '__name__', 'f')})"
    return jacfwd_f


def jacrev(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by reverse mode: all output cotangents in one backward sweep."""
    def jacrev_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacrev")
        leaves, args, specs = _prepare(args, nums)
        with _grad_enabled():
            out = _output(f(*args, **kwargs), "jacrev")
        m = out.size
        if m == 0:
            rows = [np.zeros((0, l.size), l.dtype) for l in leaves]
        else:
            rows = _vjp_sweep(out, leaves, _from_array(np.eye(m, dtype=out.dtype)))
        return _pick(single, _regroup(specs, _jacobian_blocks(rows, leaves, out.shape, True)))

    jacrev_f.__name__ = f"jacrev({getattr(f, '__name__', 'f')})"
    return jacrev_f


def hessian(f, argnums=0):
    """A function returning the Hessian of scalar f with respect to args[argnums]: blocks
    d2f / d args[i] d args[j] shaped args[i].shape + args[j].shape (nested tuples for a tuple
    argnums, nested structures for containers, as JAX). All n input directions go through one
    forward-over-reverse sweep of width n."""
    def hessian_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "hessian")
        leaves, args, specs = _prepare(args, nums)
        with _grad_enabled():
            out = _scalar_output(_output(f(*args, **kwargs), "hessian"), "hessian")
        seeds, sizes = _basis_seeds(leaves)
        n = sum(sizes)
        rows = _hvp_sweep(out, leaves, seeds, n) if n else [np.zeros((0, s), out.dtype) for s in sizes]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)

        def row_of(i):   # d/d leaf_i of the gradient with respect to every leaf j
            return _pick(single, _regroup(specs, [
                _block(rows[i][starts[j]:starts[j + 1]].T, leaves[i].shape + leaves[j].shape, "Hessian block")
                for j in range(len(leaves))]))

        return _pick(single, _regroup(specs, [row_of(i) for i in range(len(leaves))]))

    hessian_f.__name__ = f"hessian({getattr(f, '__name__', 'f')})"
    return hessian_f
