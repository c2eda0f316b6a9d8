"""Custom functions with their own derivatives: ``ad.custom_vjp`` and ``ad.custom_jvp`` (as JAX's)
and ``ad.Function`` (as PyTorch's ``autograd.Function``).

A call records one node of kind AD_OP_CUSTOM on the tape, whose value is the function's output
and whose inputs are its tensor arguments. Every other node stays in C; when a sweep reaches a
custom node, the core calls back into Python (``pyautodiff_custom_rule``, with the tape unlocked)
and this module runs the user's rule with library ops:

- numeric sweeps (backward, vjp, jacrev, jvp, jacfwd): the rule runs under ``no_grad`` on plain
  values and only its numbers are used;
- recorded sweeps (``ad_vjp_graph`` / ``ad_jvp_graph``: grad of grad, backward(create_graph=True),
  hessian): the rule runs with grad mode on, so a rule written with library ops is itself
  recorded and differentiable again.

A rule given only one way is derived the other way by transposition, which is exact because a
VJP is linear in its cotangent and a JVP in its tangents: the JVP of a custom_vjp function is the
gradient of <bwd(g), t> with respect to g, and the VJP of a custom_jvp function the gradient of
<jvp(t), g> with respect to t. That needs the rule written with library ops; a rule whose result
does not depend on its cotangent (tangent) through the tape, yet is not zero, is an error.

Returned gradients are checked strictly against their inputs: a wrong shape is a ValueError and a
wrong dtype a TypeError, naming the function and both shapes (never summed or cast silently). An
exception raised by a rule aborts the sweep and propagates with the function's name; backward()
then leaves every .grad and the graph as they were (csrc/sweep.c).

The core keys each custom node by its handle; this module keeps a record per key (the rule and
what it saved) until the core reports the node freed (``ad_custom_reap``).
"""
import threading
import weakref

import numpy as np

from ._capi import ffi, lib, check, as_float_array, set_callback_error, _borrow, _call, _lend, address
from .tensor import Tensor, _from_array, no_grad

__all__ = ["custom_vjp", "custom_jvp", "Function", "FunctionCtx"]

_records = {}     # custom node handle -> _Rule
_in_fwd = threading.local()   # the custom_vjp function whose fwd is running on this thread
_hooks = {}       # hooked node handle -> {hook id: fn} (hooks.py)
_REAP = 256


def _reap():
    """Drop the records of custom and hooked nodes the core has freed (dropping a record may free
    more nodes: their saved tensors go)."""
    buf = ffi.new("int64_t[]", _REAP)
    while True:
        n = lib.ad_custom_reap(buf, _REAP)
        if n == 0:
            return
        for i in range(n):
            _records.pop(buf[i], None)    # may free more custom nodes: loop until none is left
            _hooks.pop(buf[i], None)


class _grad_on:
    """Grad mode on for a transposition: its rule must be recorded to be transposed."""

    def __enter__(self):
        self.prev = lib.ad_set_grad_enabled(1)
        check(min(self.prev, 0))

    def __exit__(self, *exc):
        lib.ad_set_grad_enabled(self.prev)
        return False


def _spec(t):
    return tuple(t.shape), t.dtype


def _strict(name, value, spec, what, like):
    """value as a Tensor of exactly spec's shape and dtype (None stays None, meaning zero)."""
    if value is None:
        return None
    shape, dtype = spec
    if isinstance(value, Tensor):
        vshape, vdtype = tuple(value.shape), value.dtype
    else:
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name}: {what} must be a Tensor or real numbers, got {type(value).__name__} "
                            f"of dtype {arr.dtype}")
        vshape = arr.shape
        vdtype = arr.dtype if arr.dtype.kind == "f" else dtype   # ints and literals take the dtype
    if vshape != shape:
        raise ValueError(f"{name}: {what} has shape {vshape}, but {like} has shape {shape}; they must match "
                         f"(gradients are never summed over broadcast axes silently)")
    if vdtype != dtype:
        raise TypeError(f"{name}: {what} has dtype {vdtype} (shape {vshape}), but {like} has dtype {dtype} "
                        f"(shape {shape}); they must match")
    if isinstance(value, Tensor):
        return value
    return _from_array(as_float_array(value, dtype))


def _dot(pairs):
    """sum over pairs of (a * b).sum(), recorded; None when there is no pair."""
    total = None
    for a, b in pairs:
        if a is None or b is None:
            continue
        term = (a * b).sum()
        total = term if total is None else total + term
    return total


def _fresh_points(specs):
    # ones, not zeros: a rule that left the tape then shows a nonzero value (see _transpose)
    return [_from_array(np.ones(shape, dtype), requires_grad=True) for shape, dtype in specs]


def _transpose(name, linear, zeros, specs, record, what):
    """The gradient of the scalar linear(zeros) with respect to `zeros` (fresh leaves, any point:
    the map is linear): the transpose of a linear map, by one reverse sweep (recorded when record
    is set)."""
    from .functional import _dependence, _grads_graph, _vjp_sweep
    with _grad_on():
        total, values = linear(zeros)
    if total is None:
        return [None] * len(zeros)
    reached, _ = _dependence(total, zeros)
    if not any(reached) and any(v is not None and np.any(np.asarray(v) != 0) for v in values):
        raise TypeError(f"{name}: its {what} rule's result does not depend on its argument through library ops, "
                        f"so the rule cannot be transposed; write the rule with ad ops on tensors, or define "
                        f"the other rule too")
    ones = _from_array(np.ones((), total.dtype))
    if record:
        out = _grads_graph(total, zeros, ones)
    else:
        rows = _vjp_sweep(total, zeros, _from_array(np.ones((1, 1), total.dtype)))
        out = [_from_array(r.reshape(shape).astype(dtype, copy=False)) for r, (shape, dtype) in zip(rows, specs)]
    for z in zeros:      # no enclosing transform should count them as closed-over parameters
        check(lib.ad_set_requires_grad(z._h, 0))
    return [o if r else None for o, r in zip(out, reached)]


class _Rule:
    """What a custom node needs in a sweep: its name, its inputs' and outputs' shapes and dtypes,
    and user rules `bwd(gs) -> per-input grads` and/or `fwd_tangent(ts) -> per-output tangents`
    (either may be None: derived by transposition)."""

    def __init__(self, name, inputs, outputs, bwd, fwd_tangent):
        self.name = name
        self.in_specs = [_spec(t) for t in inputs]
        self.out_specs = [_spec(t) for t in outputs]
        self.bwd = bwd
        self.fwd_tangent = fwd_tangent
        self.key = 0

    # the packed node holds every output, flattened and concatenated, when there are several
    def unpack(self, packed):
        if len(self.out_specs) == 1:
            return [packed]
        parts, start = [], 0
        for shape, _ in self.out_specs:
            size = int(np.prod(shape, dtype=np.int64))
            parts.append(packed[start:start + size].reshape(shape))
            start += size
        return parts

    def pack(self, parts):
        if len(parts) == 1:
            return parts[0]
        from .ops import concatenate
        return concatenate([p.reshape(-1) for p in parts])

    def user_vjp(self, gs):
        grads = self.bwd(gs)
        if len(grads) != len(self.in_specs):
            raise ValueError(f"{self.name}: the backward rule returned {len(grads)} gradients for "
                             f"{len(self.in_specs)} inputs")
        return [_strict(self.name, g, spec, f"the gradient for input {i}", f"input {i}")
                for i, (g, spec) in enumerate(zip(grads, self.in_specs))]

    def user_jvp(self, ts):
        tangents = self.fwd_tangent(ts)
        if len(tangents) != len(self.out_specs):
            raise ValueError(f"{self.name}: the jvp rule returned {len(tangents)} tangents for "
                             f"{len(self.out_specs)} outputs")
        return [_strict(self.name, t, spec, f"the tangent of output {i}", f"output {i}")
                for i, (t, spec) in enumerate(zip(tangents, self.out_specs))]

    def vjp(self, g, record):
        gs = self.unpack(g)
        if self.bwd is not None:
            return self.user_vjp(gs)

        def linear(ts):
            outs = self.user_jvp(ts)
            return _dot(zip(outs, gs)), outs
        return _transpose(self.name, linear, _fresh_points(self.in_specs), self.in_specs, record, "jvp")

    def jvp(self, ts, record):
        ts = [t if t is not None else _from_array(np.zeros(shape, dtype))
              for t, (shape, dtype) in zip(ts, self.in_specs)]
        if self.fwd_tangent is not None:
            outs = self.user_jvp(ts)
        else:
            def linear(gs):
                grads = self.user_vjp(gs)
                return _dot(zip(grads, ts)), grads
            outs = _transpose(self.name, linear, _fresh_points(self.out_specs), self.out_specs, record, "backward")
        outs = [o if o is not None else _from_array(np.zeros(shape, dtype))
                for o, (shape, dtype) in zip(outs, self.out_specs)]
        return self.pack(outs)


@ffi.def_extern()
def pyautodiff_custom_rule(kind, node, nargs, args, nres, res):
    """The core's one call into Python (csrc/custom.c), with the tape unlocked. Never raises: an
    exception is kept for raise_status and reported to the core as a failure."""
    try:
        lent = [_borrow(args[i]) if args[i] else None for i in range(nargs)]
        if kind == lib.AD_CUSTOM_HOOK:
            from .hooks import _run_hooks
            out = [_run_hooks(node, lent[0])]
        else:
            rule = _records.get(node)
            if rule is None:
                raise RuntimeError("internal: a custom node without a record reached a sweep")
            record = kind in (lib.AD_CUSTOM_VJP_GRAPH, lib.AD_CUSTOM_JVP_GRAPH)
            try:
                if record:
                    out = rule.vjp(lent[0], True) if kind == lib.AD_CUSTOM_VJP_GRAPH else [rule.jvp(lent, True)]
                else:
                    with no_grad():
                        out = rule.vjp(lent[0], False) if kind == lib.AD_CUSTOM_VJP else [rule.jvp(lent, False)]
            except Exception as e:
                e.add_note(f"(in the {'backward' if kind in (lib.AD_CUSTOM_VJP, lib.AD_CUSTOM_VJP_GRAPH) else 'jvp'} "
                           f"rule of custom function {rule.name!r})")
                raise
        if len(out) != nres:
            raise RuntimeError(f"internal: custom rule made {len(out)} results, the core expects {nres}")
        at = address(res)
        for i, t in enumerate(out):
            if t is not None:
                _lend(at, i, t._h)    # the core takes this reference over
        return 0
    except BaseException as e:   # noqa: B902 -- KeyboardInterrupt too: the sweep must abort cleanly
        for i in range(nres):
            if res[i]:
                lib.ad_release(res[i])
                res[i] = 0
        set_callback_error(e)
        return 1


lib.pyautodiff_install_custom_rule()


def _record(rule, inputs, outputs):
    """The custom node for outputs (computed by the caller) with inputs, or None when nothing is
    recorded (grad mode off, or no input requires grad): then outputs are returned as they are."""
    _reap()
    dtypes = {o.dtype for o in outputs}
    if len(dtypes) > 1:
        raise TypeError(f"{rule.name}: the outputs have dtypes {sorted(str(d) for d in dtypes)}; a custom function's "
                        f"outputs must share one dtype (cast them)")
    with no_grad():
        value = rule.pack(outputs)
    handles = ffi.new("int64_t[]", [t._h for t in inputs] or [0])
    node = _call(lib.ad_custom, len(inputs), handles, value._h)
    if not node.requires_grad:
        return None
    rule.key = node._h
    _records[node._h] = rule
    return rule.unpack(node)


def _recording(tensors):
    return lib.ad_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def _as_output(name, value, what):
    if isinstance(value, Tensor):
        return value
    try:
        return _from_array(as_float_array(value, what=f"{name} {what}"))
    except TypeError:
        raise TypeError(f"{name}: {what} must be a Tensor (or array), got {type(value).__name__}") from None


# ---------------- JAX style: custom_vjp and custom_jvp ----------------

def _split_args(args, nondiff_argnums, name):
    nondiff = tuple(sorted(a % len(args) for a in nondiff_argnums)) if args else ()
    for a in nondiff_argnums:
        if not -len(args) <= a < len(args):
            raise ValueError(f"{name}: nondiff_argnums {a} is out of range for {len(args)} arguments")
    static = [args[i] for i in nondiff]
    diff = [i for i in range(len(args)) if i not in nondiff]
    return static, diff


def _flat_inputs(args, diff):
    """Leaves of the differentiated arguments as Tensors (arrays and numbers become constants),
    with the structures to rebuild them."""
    from .functional import _flatten
    leaves, specs = [], []
    for i in diff:
        values = []
        specs.append(_flatten(args[i], values))
        leaves += values
    tensors = [v if isinstance(v, Tensor) else _from_array(as_float_array(v, what="custom function input"))
               for v in leaves]
    return tensors, specs


def _flat_outputs(name, out):
    from .functional import _flatten
    leaves = []
    spec = _flatten(out, leaves)
    return [_as_output(name, v, "output") for v in leaves], spec


class _Custom:
    """What custom_vjp and custom_jvp share: the wrapped function, its static arguments, and the
    two ends of a call (the differentiated inputs; the node and the output's structure)."""

    kind = "custom"

    def __init__(self, fun, nondiff_argnums=()):
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.__name__ = getattr(fun, "__name__", self.kind)
        self.__doc__ = getattr(fun, "__doc__", None)

    def _inputs(self, args, rule, define):
        """(static args, differentiated positions, input tensors, their structures)."""
        if rule is None:
            raise TypeError(f"{self.__name__}: {self.kind} function has no rule; call {self.__name__}.{define} first")
        static, diff = _split_args(args, self.nondiff_argnums, self.__name__)
        return (static, diff) + _flat_inputs(args, diff)

    @staticmethod
    def _finish(rule, inputs, outs, out, out_struct):
        made = _record(rule, inputs, outs)
        if made is None:
            return out
        from .functional import _unflatten
        return _unflatten(out_struct, iter(made))


class custom_vjp(_Custom):
    """``f = ad.custom_vjp(f)``; ``f.defvjp(fwd, bwd)``: f with a reverse-mode rule of your own.

    As in JAX: ``fwd(*args) -> (out, residuals)`` and ``bwd(*nondiff_args, residuals, g) ->`` one
    cotangent per differentiated argument (a tuple, each in its argument's structure; None for
    zero). Outputs and arguments may be containers of tensors. Forward mode (jvp, jacfwd, hessian)
    transposes bwd, so write bwd with library ops; it is then differentiable again, too."""

    kind = "custom_vjp"
    fwd = bwd = None

    def defvjp(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd
        return self

    def __call__(self, *args):
        name = self.__name__
        static, diff, inputs, in_structs = self._inputs(args, self.fwd, "defvjp(fwd, bwd)")
        # fwd usually calls f itself for the output (as in JAX): that call is the plain function
        if not _recording(inputs) or getattr(_in_fwd, "fn", None) is self:
            return self.fun(*args)
        prev, _in_fwd.fn = getattr(_in_fwd, "fn", None), self
        try:
            res = self.fwd(*args)
        finally:
            _in_fwd.fn = prev
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise TypeError(f"{name}: fwd must return a pair (output, residuals), got {type(res).__name__}")
        out, residuals = res
        outs, out_struct = _flat_outputs(name, out)
        bwd = self.bwd

        def rule_bwd(gs):
            from .functional import _unflatten, _flatten_like
            g = _unflatten(out_struct, iter(gs))
            cts = bwd(*static, residuals, g)
            if not isinstance(cts, (tuple, list)) or len(cts) != len(diff):
                raise ValueError(f"{name}: bwd must return a tuple of {len(diff)} cotangents (one per "
                                 f"differentiated argument), got {type(cts).__name__}"
                                 + (f" of {len(cts)}" if isinstance(cts, (tuple, list)) else ""))
            flat = []
            for ct, struct, i in zip(cts, in_structs, diff):
                if ct is None:
                    flat += [None] * len(_flatten_like_none(struct))
                else:
                    flat += _flatten_like(ct, struct, f"{name}: bwd's cotangent for argument {i}")
            return flat

        return self._finish(_Rule(name, inputs, outs, rule_bwd, None), inputs, outs, out, out_struct)


def _flatten_like_none(struct):
    """As many Nones as struct has leaves."""
    if struct is None:
        return [None]
    return [x for c in struct[2] for x in _flatten_like_none(c)]


class custom_jvp(_Custom):
    """``f = ad.custom_jvp(f)``; ``f.defjvp(jvp)``: f with a forward-mode rule of your own.

    As in JAX: ``jvp(*nondiff_args, primals, tangents) -> (primal_out, tangent_out)``, primals and
    tangents tuples with one entry per differentiated argument. Reverse mode (grad, vjp, backward)
    transposes the rule, so write it with library ops; it is then differentiable again, too."""

    kind = "custom_jvp"
    jvp = None

    def defjvp(self, jvp):
        self.jvp = jvp
        return jvp

    def __call__(self, *args):
        name = self.__name__
        static, diff, inputs, in_structs = self._inputs(args, self.jvp, "defjvp(jvp)")
        if not _recording(inputs):
            return self.fun(*args)
        with no_grad():
            out = self.fun(*args)
        outs, out_struct = _flat_outputs(name, out)
        jvp = self.jvp

        def rule_jvp(ts):
            from .functional import _unflatten, _flatten_like
            it_p, it_t = iter(inputs), iter(ts)
            primals = tuple(_unflatten(s, it_p) for s in in_structs)
            tangents = tuple(_unflatten(s, it_t) for s in in_structs)
            res = jvp(*static, primals, tangents)
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise TypeError(f"{name}: the jvp rule must return a pair (primal_out, tangent_out)")
            return _flatten_like(res[1], out_struct, f"{name}: the jvp rule's tangent_out")

        return self._finish(_Rule(name, inputs, outs, None, rule_jvp), inputs, outs, out, out_struct)


# ---------------- PyTorch style: Function ----------------

class _SavedOutput:
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class FunctionCtx:
    """The ``ctx`` of an ``ad.Function``: ``save_for_backward(*tensors)``, ``saved_tensors``,
    ``needs_input_grad``; other attributes may be set freely (but a tensor the function returns
    must be saved with save_for_backward, not as an attribute: it would keep itself alive)."""

    def __init__(self):
        self._saved = ()
        self._node = None
        self.needs_input_grad = ()

    def save_for_backward(self, *tensors):
        for i, t in enumerate(tensors):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward: argument {i} is a {type(t).__name__}, not a Tensor")
        self._saved = tensors

    @property
    def saved_tensors(self):
        outs = None
        saved = []
        for t in self._saved:
            if isinstance(t, _SavedOutput):
                if outs is None:
                    node = self._node()
                    outs = node.unpack(_borrow(node.key))
                t = outs[t.index]
            saved.append(t)
        return tuple(saved)


class Function:
    """A function with its own derivative, as PyTorch's ``torch.autograd.Function``::

        class Exp(ad.Function):
            @staticmethod
            def forward(ctx, x):
                y = ad.exp(x)
                ctx.save_for_backward(y)
                return y

            @staticmethod
            def backward(ctx, g):
                (y,) = ctx.saved_tensors
                return g * y

        Exp.apply(x)

    forward runs under no_grad and returns a Tensor or a tuple of them; backward gets one gradient
    per output and returns one per argument of forward (None for arguments that are not tensors
    or need no gradient). An optional ``jvp(ctx, *tangents)`` gives forward mode (otherwise
    backward is transposed: write it with library ops). backward written with library ops on
    saved inputs and outputs is differentiable again (grad of grad, hessian)."""

    @staticmethod
    def forward(ctx, *args):
        raise NotImplementedError("ad.Function subclasses define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("ad.Function subclasses define backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args):
        name = cls.__name__
        ctx = FunctionCtx()
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        inputs = [args[i] for i in positions]
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        with no_grad():
            out = cls.forward(ctx, *args)
        single = not isinstance(out, (tuple, list))
        outs = [_as_output(name, o, "forward's output") for o in ((out,) if single else out)]
        if not _recording(inputs):
            return outs[0] if single else tuple(outs)
        # an output saved for backward is reached through the custom node itself, never held
        ctx._saved = tuple(_SavedOutput(next(j for j, o in enumerate(outs) if o is t))
                           if any(o is t for o in outs) else t for t in ctx._saved)
        nargs = len(args)

        def rule_bwd(gs):
            grads = cls.backward(ctx, *gs)
            if not isinstance(grads, (tuple, list)):
                grads = (grads,)
            if len(grads) != nargs:
                raise ValueError(f"{name}: backward returned {len(grads)} gradients, but forward took {nargs} "
                                 f"arguments (return one per argument, None where there is none)")
            for i, g in enumerate(grads):
                if g is not None and i not in positions:
                    raise TypeError(f"{name}: backward returned a gradient for argument {i}, which is a "
                                    f"{type(args[i]).__name__}, not a Tensor")
            return [grads[i] for i in positions]

        rule_jvp = None
        if "jvp" in vars(cls) or any("jvp" in vars(b) for b in cls.__mro__[1:] if b is not Function):
            def rule_jvp(ts):
                full = [None] * nargs
                for i, t in zip(positions, ts):
                    full[i] = t
                res = cls.jvp(ctx, *full)
                return list(res) if isinstance(res, (tuple, list)) else [res]

        rule = _Rule(name, inputs, outs, rule_bwd, rule_jvp)
        ctx._node = weakref.ref(rule)    # rule holds ctx (through rule_bwd): no cycle back
        made = _record(rule, inputs, outs)
        if made is None:
            return outs[0] if single else tuple(outs)
        return made[0] if single else tuple(made)

