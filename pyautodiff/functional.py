"""Function transformations, as JAX users know them: grad, value_and_grad, vjp, jvp, jacrev,
jacfwd, hvp, hessian. They compose to any depth and in any order (grad of grad, jvp of grad,
jacfwd of jacrev, ...), and a function built from a transform is an ordinary differentiable
function of its inputs, closed-over tensors included.

Each call makes its own inputs: fresh tensors of its level, independent of everything else (a
new leaf holding a copy of an array; for a tensor already on the tape, an identity op, so the
call's sweep treats it as independent while an enclosing transform still sees the dependence).
That is what keeps nested transforms from confusing their perturbations. It then calls f once
and runs one sweep in C over the recorded graph, by one of two paths:

- numeric (the fast path): ``ad_vjp`` pulls k cotangents backwards, ``ad_jvp`` pushes k tangents
  forwards, ``ad_hvp`` does forward over reverse; jacfwd/jacrev/hessian take all their directions
  in one sweep of width n (or m). The results are plain numbers.
- recorded: ``ad_vjp_graph`` / ``ad_jvp_graph`` emit every op's derivative as recorded ops, so the
  results stay on the tape and can be differentiated again (one sweep per direction).

A call takes the recorded path only when a higher order may need its result: an enclosing
transform is evaluating the function that made this call, or an input (tangent, cotangent)
requires grad, or grad mode is on and f's output depends on a requires-grad tensor other than
the call's own inputs (a closed-over parameter W: ``(ad.grad(f)(x) * W).sum().backward()`` must
see how the gradient depends on W). Under ``ad.no_grad()`` nothing outside is differentiated
through, so the numeric path is taken. The primal output a call returns is detached on the
numeric path and stays on the tape on the recorded one.

Arguments may be Tensors, NumPy arrays, lists or Python numbers, or containers of them (a
"pytree", as in JAX): dicts, tuples (named ones too) and lists nest, and a differentiated
container gets its derivatives back in the same structure, e.g. ``grad(loss)(params)`` with
params a dict of arrays returns a dict of gradients. A list or tuple is a container when it holds
a Tensor, an array, a dict or another container; one of plain numbers is array data, as for
``ad.tensor``. Arguments not named in ``argnums`` (and keyword arguments) reach f unchanged. f
returns a Tensor (``value_and_grad`` with ``has_aux=True``: a pair ``(value, aux)``).

A function whose output does not depend on the differentiated inputs (for example because it
went through ``.numpy()`` or ``float()``, which leave the tape) gets zero derivatives and a
UserWarning saying so, never a silent zero. (Not when f's output is built from an inner
transform's derivative: there an independent output is the exact derivative of a function
linear in the input, as in ``grad(grad(lambda x: 2 * x))``.)
"""
import operator
import sys
import threading
import warnings

import numpy as np

from ._capi import ffi, lib, check, as_float_array, _call, _call_out, address
from .tensor import Tensor, _from_array

__all__ = ["grad", "value_and_grad", "vjp", "jvp", "jacrev", "jacfwd", "hvp", "hessian"]


# ---- levels ----

_state = threading.local()


def _active():
    """The transforms evaluating a user function on this thread, outermost first. A signal handler
    that raises (KeyboardInterrupt) as a level's __exit__ begins leaves the level behind: one whose
    transform's frame is no longer running is dropped here (a walk up the stack, only while a level
    is recorded)."""
    names = getattr(_state, "names", None)
    if names is None:
        names = _state.names = []
    elif names:
        running, f = set(), sys._getframe(1)
        while f is not None:
            running.add(id(f))
            f = f.f_back
        names[:] = [lv for lv in names if id(lv.frame) in running]
    return names


class _level:
    """While a transform evaluates f: grad mode on (the transform needs the graph, even when the
    caller is in no_grad()) and the transform named on this thread's stack of active ones, so
    that transforms f calls know a higher order may need their results."""

    def __init__(self, name):
        self.name = name
        # set when f called a transform that took the recorded path: f's output is then (built
        # from) a derivative, and one independent of the input is the exact derivative of a
        # function linear in it (grad(grad(lambda x: 2 * x))), no sign of a trip off the tape
        self.inner_derivative = False

    def __enter__(self):
        self.frame = sys._getframe(1)   # the transform's (see _active); a cycle until __exit__
        self._prev = lib.ad_set_grad_enabled(1)
        if self._prev < 0:
            check(self._prev)
        _active().append(self)

    def __exit__(self, *exc):
        self.frame = None
        _active()                       # drops this level (and any left behind)
        lib.ad_set_grad_enabled(self._prev)
        return False


def _inside_transform(what):
    """RuntimeError for an entry point whose numeric result an enclosing transform could not
    differentiate (backward() inside the function given to ad.grad, say)."""
    levels = _active()
    if levels:
        name = levels[-1].name
        raise RuntimeError(
            f"{what} inside the function given to ad.{name}: its result would be plain numbers, "
            f"so ad.{name} could not differentiate through it; pass create_graph=True (or use "
            f"an inner ad.grad/ad.vjp, which compose)")


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
        t = _call(lib.ad_detach, x._h)
        check(lib.ad_set_requires_grad(t._h, 1))
        return t
    return _from_array(as_float_array(x, what="input"), requires_grad=True)


def _on_tape(x):
    return isinstance(x, Tensor) and x.requires_grad


def _dependence(out, leaves):
    """(reached, outside): whether out depends on each of leaves, and how many requires-grad
    leaves other than them it depends on (one walk over out's recorded ancestors, in C)."""
    if not out.requires_grad:
        return [False] * len(leaves), 0
    reached = ffi.new("int[]", max(len(leaves), 1))
    outside = ffi.new("int64_t *")
    check(lib.ad_depends(out._h, len(leaves), _handles(leaves), reached, outside))
    return [bool(reached[i]) for i in range(len(leaves))], outside[0]


class _Call:
    """One transform call's own inputs, and whether its derivatives must stay on the tape.

    ``leaves`` are fresh tensors of this call's level, one per leaf of the differentiated
    arguments (``args``: the arguments to call f with). For a tensor already on the tape the fresh
    tensor is an identity op of it: the call's sweep counts it as independent (it stops there),
    while an enclosing transform's sweep goes through it to the outer variable."""

    def __init__(self, name, args, nums):
        self.name = name
        self.recording = bool(lib.ad_grad_enabled())
        self.outer = bool(_active())
        self.on_tape = False
        self.fresh = []
        args = list(args)
        self.leaves, self.specs = [], []
        for i in nums:
            values = []
            spec = _flatten(args[i], values)
            own = [self._own(v) for v in values]
            args[i] = _unflatten(spec, iter(own))
            self.leaves += own
            self.specs.append(spec)
        self.args = args
        self.graph = False
        self.level = _level(name)

    def _own(self, x):
        if self.recording and _on_tape(x):
            self.on_tape = True
            return _call(lib.ad_reshape, x._h, x.ndim, ffi.new("int64_t[]", x.shape or (0,)))
        t = _leaf(x)
        self.fresh.append(t)
        return t

    def decide(self, out, stacklevel, extra_on_tape=False):
        """Choose the path for out (see the module docstring); warn when out does not depend on
        any differentiated input."""
        reached, outside = _dependence(out, self.leaves)
        if self.leaves and not any(reached) and not self.level.inner_derivative:
            warnings.warn(f"{self.name}: the output of f does not depend on the differentiated input, so "
                          f"its derivative is zero. If that is unexpected, f may have left the tape "
                          f"(.numpy(), float(), np.asarray() or .item() give plain numbers that cannot "
                          f"be differentiated); use ad ops on tensors instead",
                          UserWarning, stacklevel=stacklevel + 1)
        self.on_tape = self.on_tape or (self.recording and extra_on_tape)
        self.graph = self.recording and (self.outer or self.on_tape or outside > 0)
        return self.graph

    def done(self):
        """After the sweeps: this call's fresh leaves stop requiring grad, so that a result that
        stayed on the tape is not taken by an enclosing call for a closure over a parameter; the
        enclosing transform learns that its f computed a derivative (see _level)."""
        if self.graph:
            levels = _active()
            if levels:
                levels[-1].inner_derivative = True
            if self.name == "vjp":
                return
            for t in self.fresh:
                check(lib.ad_set_requires_grad(t._h, 0))

    def regroup(self, per_leaf):
        return _regroup(self.specs, per_leaf)


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
    (t,) = _call_out(lib.ad_jvp, 1, address(res), out._h, len(leaves), _handles(leaves), _handles(seeds), k, res)
    return t.numpy().reshape(k, -1)


def _vjp_sweep(out, leaves, cotangent_rows):
    """Each leaf's k cotangent-weighted gradients, as arrays of shape (k, leaf.size)."""
    k = cotangent_rows.shape[0]
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    ts = _call_out(lib.ad_vjp, len(leaves), address(res), out._h, cotangent_rows._h, len(leaves), _handles(leaves), res)
    return [t.numpy().reshape(k, -1) for t in ts]


def _hvp_sweep(out, leaves, seeds, k):
    """Each leaf's k Hessian-vector rows (forward over reverse), as arrays of shape (k, leaf.size)."""
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    ts = _call_out(lib.ad_hvp, len(leaves), address(res), out._h, len(leaves), _handles(leaves), _handles(seeds), k, res)
    return [t.numpy().reshape(k, -1) for t in ts]


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


# ---- the recorded sweeps (results stay on the tape) ----

def _grads_graph(out, leaves, cotangent):
    """d<cotangent, out>/d leaf for each leaf, as recorded tensors shaped like the leaves."""
    res = ffi.new("int64_t[]", max(len(leaves), 1))
    return _call_out(lib.ad_vjp_graph, len(leaves), address(res), out._h, cotangent._h, len(leaves), _handles(leaves), res)


def _tangent_graph(out, leaves, tangents):
    """out's tangent along one direction (one tangent per leaf), as a recorded tensor."""
    res = ffi.new("int64_t *")
    return _call_out(lib.ad_jvp_graph, 1, address(res), out._h, len(leaves), _handles(leaves), _handles(tangents), res)[0]


def _ones(out):
    return _from_array(np.ones(out.shape, out.dtype))


def _basis(shape, dtype, i):
    e = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype)
    e[i] = 1
    return _from_array(e.reshape(shape))


def _flat_rows(parts):
    """Recorded tensors stacked as rows of a (len(parts), size) tensor."""
    from .ops import stack
    return stack([p.reshape(-1) for p in parts])


def _block_graph(t, shape, what):
    shape = tuple(shape)
    if len(shape) > lib.AD_MAXDIM:
        _block(np.zeros(0), shape, what)     # raises the same ValueError as the numeric path
    return t.reshape(shape)


def _tangent_value(call, value, leaf, what, like_what):
    """A tangent (or cotangent) as a tensor for a recorded sweep: a tensor on the tape is used as
    it is, so that the result depends on it; anything else is checked and copied."""
    arr = _matching(value, leaf.shape, leaf.dtype, what, like_what)
    if call.recording and _on_tape(value):
        return value
    return _from_array(np.asarray(arr, order="C"))


def _value_and_grad_call(name, f, argnums, has_aux, args, kwargs):
    single, nums = _argnums(argnums, len(args), name)
    call = _Call(name, args, nums)
    with call.level:
        res = f(*call.args, **kwargs)
    if has_aux:
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise TypeError(f"{name}: with has_aux=True, f must return a pair (value, aux), "
                            f"got {type(res).__name__}")
        res, aux = res
    out = _scalar_output(_output(res, name), name)
    if call.decide(out, stacklevel=3):
        grads = _grads_graph(out, call.leaves, _ones(out))
        value = out
    else:
        rows = _vjp_sweep(out, call.leaves, _from_array(np.ones((1, 1), out.dtype)))
        grads = [_from_array(r.reshape(l.shape)) for r, l in zip(rows, call.leaves)]
        value = out.detach()
    call.done()
    g = _pick(single, call.regroup(grads))
    return ((value, aux), g) if has_aux else (value, g)


def value_and_grad(f, argnums=0, has_aux=False):
    """A function returning (f(*args), gradient of f with respect to args[argnums]).

    f must return a tensor with one element. With a tuple ``argnums`` the gradient is a tuple.
    With ``has_aux=True`` f returns ``(value, aux)`` and the result is ``((value, aux), grad)``.
    """
    def value_and_grad_f(*args, **kwargs):
        return _value_and_grad_call("value_and_grad", f, argnums, has_aux, args, kwargs)

    value_and_grad_f.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return value_and_grad_f


def grad(f, argnums=0, has_aux=False):
    """A function returning the gradient of scalar f with respect to args[argnums] (a tuple for a
    tuple argnums; ``(grad, aux)`` with ``has_aux=True``)."""
    def grad_f(*args, **kwargs):
        value, g = _value_and_grad_call("grad", f, argnums, has_aux, args, kwargs)
        return (g, value[1]) if has_aux else g

    grad_f.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return grad_f


def vjp(f, *primals):
    """``(f(*primals), vjp_fn)``; ``vjp_fn(cotangent)`` returns one cotangent-weighted gradient per
    primal (a tuple), and may be called any number of times: the graph is kept, not released."""
    call = _Call("vjp", primals, range(len(primals)))
    with call.level:
        out = _output(f(*call.args), "vjp")
    graph = call.decide(out, stacklevel=2)
    shape, dtype = out.shape, out.dtype

    def vjp_fn(cotangent):
        what = "vjp: the cotangent"
        # a cotangent on the tape (or a call from inside another transform) needs the recorded sweep
        if graph or (lib.ad_grad_enabled() and (_active() or _on_tape(cotangent))):
            c = _tangent_value(call, cotangent, out, what, "the output of f")
            grads = _grads_graph(out, call.leaves, c)
            call.graph = True
            call.done()       # (vjp's fresh leaves keep requiring grad: vjp_fn may run again)
        else:
            c = _matching(cotangent, shape, dtype, what, "the output of f")
            rows = _vjp_sweep(out, call.leaves, _rows(c[np.newaxis]))
            grads = [_from_array(r.reshape(l.shape)) for r, l in zip(rows, call.leaves)]
        return tuple(call.regroup(grads))

    return (out if graph else out.detach()), vjp_fn


def _seeded(name, primals, tangents):
    """The call's inputs for primals, and one tangent per leaf, checked against its primal leaf
    (for jvp and hvp): (call, [(tangent, what, like_what)])."""
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError(f"{name}: primals and tangents must be tuples (or lists), e.g. "
                        f"ad.{name}(f, (x,), (v,))")
    if len(primals) != len(tangents):
        raise ValueError(f"{name}: got {len(primals)} primals but {len(tangents)} tangents")
    call = _Call(name, primals, range(len(primals)))
    flat = [(t, f"{name}: tangent {i}", f"primal {i}") for i, (tangent, spec) in enumerate(zip(tangents, call.specs))
            for t in _flatten_like(tangent, spec, f"{name}: tangent {i}")]
    for (t, what, like), leaf in zip(flat, call.leaves):
        _matching(t, leaf.shape, leaf.dtype, what, like)     # a bad tangent fails before f runs
    return call, flat


def _tangents_on_tape(call, flat):
    return call.recording and any(_on_tape(t) for t, _, _ in flat)


def jvp(f, primals, tangents):
    """``(f(*primals), tangent_out)``: the directional derivative of f at primals along tangents.

    ``primals`` and ``tangents`` are sequences of the same length; each tangent has its primal's
    structure, and each of its leaves the shape and dtype of the primal's leaf."""
    call, flat = _seeded("jvp", primals, tangents)
    with call.level:
        out = _output(f(*call.args), "jvp")
    if call.decide(out, stacklevel=2, extra_on_tape=_tangents_on_tape(call, flat)):
        ts = [_tangent_value(call, t, l, what, like) for (t, what, like), l in zip(flat, call.leaves)]
        t_out = _tangent_graph(out, call.leaves, ts)
        result = out, t_out
    else:
        seeds = [_rows(_matching(t, l.shape, l.dtype, what, like)[np.newaxis])
                 for (t, what, like), l in zip(flat, call.leaves)]
        t_out = _jvp_sweep(out, call.leaves, seeds, 1)
        result = out.detach(), _from_array(t_out.reshape(out.shape))
    call.done()
    return result


def hvp(f, primals, tangents):
    """``(f(*primals), hv)``: the Hessian of scalar f at primals applied to tangents, by forward
    mode over reverse mode (one tangent pass and one reverse pass in C, exact, no differences).

    ``primals`` and ``tangents`` as for jvp; ``hv`` is a tuple with one entry per primal, in its
    structure: the derivative of f's gradient with respect to that primal along the tangents.
    When a higher order needs the result it is recorded instead, as the gradient of
    <gradient, tangents> (reverse over reverse)."""
    call, flat = _seeded("hvp", primals, tangents)
    with call.level:
        out = _scalar_output(_output(f(*call.args), "hvp"), "hvp")
    graph = call.decide(out, stacklevel=2, extra_on_tape=_tangents_on_tape(call, flat))
    if graph or _custom_alive():
        ts = [_tangent_value(call, t, l, what, like) for (t, what, like), l in zip(flat, call.leaves)]
        grads = _grads_graph(out, call.leaves, _ones(out))
        inner = None
        for g, t in zip(grads, ts):
            term = (g * t).sum()
            inner = term if inner is None else inner + term
        if inner is None:
            hv = []
        else:
            hv = _grads_graph(inner, call.leaves, _ones(inner))
        value = out
        if not graph:   # recorded only for the custom nodes' sake: hand back plain numbers
            value, hv = out.detach(), [h.detach() for h in hv]
    else:
        seeds = [_rows(_matching(t, l.shape, l.dtype, what, like)[np.newaxis])
                 for (t, what, like), l in zip(flat, call.leaves)]
        rows = _hvp_sweep(out, call.leaves, seeds, 1)
        hv = [_from_array(r.reshape(l.shape)) for r, l in zip(rows, call.leaves)]
        value = out.detach()
    call.done()
    return value, tuple(call.regroup(hv))


def _custom_alive():
    """Custom functions and gradient hooks keep their rules in Python, out of reach of the one-sweep
    forward-over-reverse C path (ad_hvp): while any is alive, hvp and hessian compose the recorded
    reverse sweep with a forward one instead (exact too, one sweep per direction)."""
    return lib.ad_custom_live() > 0


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


def _zeros_block(shape, dtype):
    return _from_array(np.zeros(shape, dtype))


def _jacfwd_graph(out, leaves):
    """Recorded Jacobian blocks out.shape + leaf.shape: one recorded tangent sweep per input
    element, seeding that leaf alone (the others' tangents are zero)."""
    blocks = []
    for leaf in leaves:
        shape = tuple(out.shape) + leaf.shape
        if leaf.size == 0 or out.size == 0:
            blocks.append(_zeros_block(shape, out.dtype))
            continue
        cols = [_tangent_graph(out, [leaf], [_basis(leaf.shape, leaf.dtype, e)]) for e in range(leaf.size)]
        blocks.append(_block_graph(_flat_rows(cols).T, shape, "Jacobian"))
    return blocks


def _jacrev_graph(out, leaves):
    """Recorded Jacobian blocks out.shape + leaf.shape: one recorded reverse sweep per output element."""
    shapes = [tuple(out.shape) + l.shape for l in leaves]
    if out.size == 0:
        return [_zeros_block(s, l.dtype) for s, l in zip(shapes, leaves)]
    per_row = [_grads_graph(out, leaves, _basis(out.shape, out.dtype, r)) for r in range(out.size)]
    return [_block_graph(_flat_rows([row[i] for row in per_row]), shapes[i], "Jacobian")
            if leaves[i].size else _zeros_block(shapes[i], leaves[i].dtype) for i in range(len(leaves))]


def jacfwd(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by forward mode: all input directions in one sweep (one recorded sweep
    per direction when a higher order needs the result)."""
    def jacfwd_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacfwd")
        call = _Call("jacfwd", args, nums)
        with call.level:
            out = _output(f(*call.args, **kwargs), "jacfwd")
        if call.decide(out, stacklevel=2):
            blocks = _jacfwd_graph(out, call.leaves)
        else:
            seeds, sizes = _basis_seeds(call.leaves)
            n = sum(sizes)
            tangent = _jvp_sweep(out, call.leaves, seeds, n) if n else np.zeros((0, out.size), out.dtype)
            splits = np.cumsum(sizes)[:-1]
            blocks = _jacobian_blocks(np.split(tangent, splits), call.leaves, out.shape, False)
        call.done()
        return _pick(single, call.regroup(blocks))

    jacfwd_f.__name__ = f"jacfwd({getattr(f, '__name__', 'f')})"
    return jacfwd_f


def jacrev(f, argnums=0):
    """A function returning the Jacobian of f with respect to args[argnums], shaped
    out.shape + arg.shape, by reverse mode: all output cotangents in one backward sweep (one
    recorded sweep per output element when a higher order needs the result)."""
    def jacrev_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "jacrev")
        call = _Call("jacrev", args, nums)
        with call.level:
            out = _output(f(*call.args, **kwargs), "jacrev")
        if call.decide(out, stacklevel=2):
            blocks = _jacrev_graph(out, call.leaves)
        else:
            m = out.size
            if m == 0:
                rows = [np.zeros((0, l.size), l.dtype) for l in call.leaves]
            else:
                rows = _vjp_sweep(out, call.leaves, _from_array(np.eye(m, dtype=out.dtype)))
            blocks = _jacobian_blocks(rows, call.leaves, out.shape, True)
        call.done()
        return _pick(single, call.regroup(blocks))

    jacrev_f.__name__ = f"jacrev({getattr(f, '__name__', 'f')})"
    return jacrev_f


def _hessian_graph(out, leaves):
    """Recorded Hessian blocks (i, j) shaped leaves[i].shape + leaves[j].shape: the recorded
    gradient, concatenated, then one recorded tangent sweep per input element (forward over
    reverse, as the numeric path)."""
    from .ops import concatenate
    sizes = [l.size for l in leaves]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    grads = _grads_graph(out, leaves, _ones(out))
    flat = concatenate([g.reshape(-1) for g in grads])
    # row r of m: the derivative of the whole gradient along input direction r
    cols = [_tangent_graph(flat, [leaf], [_basis(leaf.shape, leaf.dtype, e)])
            for leaf in leaves for e in range(leaf.size)]
    m = _flat_rows(cols) if cols else None

    def block(i, j):
        shape = leaves[i].shape + leaves[j].shape
        if not sizes[i] or not sizes[j]:
            return _zeros_block(shape, out.dtype)
        part = m[int(starts[j]):int(starts[j + 1]), int(starts[i]):int(starts[i + 1])]
        return _block_graph(part.T, shape, "Hessian block")

    return [[block(i, j) for j in range(len(leaves))] for i in range(len(leaves))]


def hessian(f, argnums=0):
    """A function returning the Hessian of scalar f with respect to args[argnums]: blocks
    d2f / d args[i] d args[j] shaped args[i].shape + args[j].shape (nested tuples for a tuple
    argnums, nested structures for containers, as JAX). All n input directions go through one
    forward-over-reverse sweep of width n (recorded sweeps, one per direction, when a higher
    order needs the result)."""
    def hessian_f(*args, **kwargs):
        single, nums = _argnums(argnums, len(args), "hessian")
        call = _Call("hessian", args, nums)
        with call.level:
            out = _scalar_output(_output(f(*call.args, **kwargs), "hessian"), "hessian")
        leaves = call.leaves
        graph = call.decide(out, stacklevel=2)
        if graph or _custom_alive():
            rows_of = _hessian_graph(out, leaves)
            if not graph:   # recorded only for the custom nodes' sake: hand back plain numbers
                rows_of = [[b.detach() for b in row] for row in rows_of]
        else:
            seeds, sizes = _basis_seeds(leaves)
            n = sum(sizes)
            rows = _hvp_sweep(out, leaves, seeds, n) if n else [np.zeros((0, s), out.dtype) for s in sizes]
            starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
            rows_of = [[_block(rows[i][starts[j]:starts[j + 1]].T, leaves[i].shape + leaves[j].shape,
                               "Hessian block") for j in range(len(leaves))] for i in range(len(leaves))]
        call.done()
        # row i: d/d leaf_i of the gradient with respect to every leaf j
        return _pick(single, call.regroup([_pick(single, call.regroup(r)) for r in rows_of]))

    hessian_f.__name__ = f"hessian({getattr(f, '__name__', 'f')})"
    return hessian_f
