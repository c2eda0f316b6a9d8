"""Gradient hooks and graph introspection on tensors: ``t.register_hook(fn)``, ``t.retain_grad()``,
``t.grad_fn`` (``name``, ``next_functions``), used by the Tensor methods of the same names.

A hooked node carries a flag in the core (``ad_set_hook``); every reverse sweep through it calls
back here (csrc/custom.c, kind AD_CUSTOM_HOOK) once the node's gradient is complete, before it
flows on: in backward() (numeric and create_graph=True), and in the sweeps of ad.grad, ad.vjp,
jacrev and autograd.grad, once per cotangent row. Hooks run in registration order, each given the
gradient so far; one that returns a tensor replaces it (same shape and dtype, checked). A leaf's
hooks run before its .grad accumulates. Forward mode has no gradients, so no hooks.
"""
import itertools
import threading

from ._capi import ffi, lib, check
from .custom import _hooks, _reap, _strict, _borrow
from .tensor import no_grad

__all__ = ["RemovableHandle", "GradFn"]

_ids = itertools.count(1)
_RETAIN = "retain_grad"          # the hook key of retain_grad: always run last
_scope = threading.local()


class RemovableHandle:
    """Returned by register_hook: ``handle.remove()`` takes the hook off (idempotent)."""

    __slots__ = ("_hooks", "_key")

    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def _hooks_of(t):
    _reap()
    check(lib.ad_set_hook(t._h))
    return _hooks.setdefault(t._h, {})


def register_hook(t, fn):
    if not callable(fn):
        raise TypeError(f"register_hook: expected a callable, got {type(fn).__name__}")
    hooks = _hooks_of(t)
    key = next(_ids)
    hooks[key] = fn
    # retain_grad's hook stays last: it stores the gradient the other hooks made
    if _RETAIN in hooks:
        hooks[_RETAIN] = hooks.pop(_RETAIN)
    return RemovableHandle(hooks, key)


def retain_grad(t):
    if t.is_leaf:
        return      # a leaf keeps its grad anyway
    _hooks_of(t)[_RETAIN] = None


class backward_scope:
    """Set by Tensor.backward around its sweep: retain_grad stores gradients only there (as
    PyTorch, where autograd.grad leaves .grad alone)."""

    def __enter__(self):
        _scope.depth = getattr(_scope, "depth", 0) + 1

    def __exit__(self, *exc):
        _scope.depth -= 1
        return False


def _run_hooks(node, g):
    """The callback's hook kind: the hooks of node on gradient g; the replacement or None."""
    hooks = _hooks.get(node, {})
    changed = False
    for key, fn in list(hooks.items()):
        if key == _RETAIN:
            if getattr(_scope, "depth", 0):
                try:
                    t = _borrow(node)
                except RuntimeError:
                    continue    # every handle to the tensor is gone: nobody can read its grad

                old = t.grad
                with no_grad():
                    t.grad = g.detach() if old is None else old + g.detach()
            continue
        r = fn(g)
        if r is not None:
            name = getattr(fn, "__name__", "hook")
            g = _strict(f"hook {name}", r, (tuple(g.shape), g.dtype), "its returned gradient", "the gradient")
            changed = True
    return g if changed else None


# ---------------- grad_fn ----------------

def _op_name(code, key):
    if code == lib.AD_OP_CUSTOM:
        from .custom import _records
        rule = _records.get(key)
        return rule.name if rule is not None else "custom"
    if code == lib.AD_OP_LEAF:
        return "tensor"
    name = ffi.new("char **")
    check(min(lib.ad_op_rules(code, name), 0))
    return ffi.string(name[0]).decode()


def node_info(h):
    """(info, input handles) of the node behind handle h (borrowed handles: see ad_node_inputs)."""
    info = ffi.new("ad_node_info_t *")
    check(lib.ad_node_inputs(h, info, 0, ffi.NULL))
    n = info.nin
    ins = ffi.new("int64_t[]", max(n, 1))
    check(lib.ad_node_inputs(h, info, n, ins))
    return info, [ins[i] for i in range(n)]


class GradFn:
    """The recorded op that made a tensor (PyTorch's grad_fn): ``name`` (e.g. "matmul", or a custom
    function's name), ``next_functions`` (one ``(GradFn or None, 0)`` per input: None for inputs
    that need no gradient; a leaf that requires grad is an ``AccumulateGrad`` with ``variable``).
    It keeps the tensor's graph alive; after backward() released that graph, reading it is a
    RuntimeError."""

    __slots__ = ("_root", "_h")

    def __init__(self, root, h):
        self._root, self._h = root, h      # root: the Tensor whose graph holds node h

    @property
    def name(self):
        info, _ = node_info(self._h)
        return _op_name(info.op, self._h)

    @property
    def next_functions(self):
        info, ins = node_info(self._h)
        if info.graph_released:
            raise RuntimeError(f"grad_fn.next_functions: the graph of this {self.name} node was released by "
                               f"backward(); pass retain_graph=True to keep it")
        out = []
        for h in ins:
            sub, _ = node_info(h)
            if not sub.requires_grad:
                out.append((None, 0))
            elif sub.is_leaf:
                out.append((AccumulateGrad(_borrow(h)), 0))
            else:
                out.append((GradFn(self._root, h), 0))
        return tuple(out)

    def __repr__(self):
        return f"<GradFn {self.name}>"


class AccumulateGrad:
    """next_functions' entry for a leaf that requires grad: the leaf is ``variable``."""

    __slots__ = ("variable",)
    name = "AccumulateGrad"
    next_functions = ()

    def __init__(self, variable):
        self.variable = variable

    def __repr__(self):
        return "<AccumulateGrad>"


def grad_fn(t):
    info = t._info()
    if not info.requires_grad or info.is_leaf:
        return None
    return GradFn(t, t._h)
