"""Gradient checkpointing: ``ad.checkpoint(f)(*args)`` keeps only f's inputs and output on the
tape, not the values f's ops save for their derivatives, and recomputes f's forward when a sweep
needs its derivative.

It is a custom node (pyautodiff/custom.py) whose inputs are f's tensor arguments and the
requires-grad leaves f closes over (its parameters, found by one walk over the graph f recorded
the first time, which is then dropped): so every gradient reaches its tensor as without
checkpointing, and it composes with every transform. Its backward reruns f and sweeps the
recomputed graph: numerically (ad_vjp) in a plain backward, or recorded (ad_vjp_graph) when a
higher order needs the result. f must be deterministic (the rerun must reproduce the forward).
"""
import numpy as np

from ._capi import lib, check, _borrow, _call
from .custom import _Rule, _record, _grad_on
from .tensor import Tensor, _from_array, ffi

__all__ = ["checkpoint"]


def _closure_leaves(out, args):
    """The requires-grad leaves out depends on, not looking through the tensors in args."""
    from .hooks import node_info
    stop = {a._h for a in args}
    seen, leaves, todo = set(), [], [out._h]
    while todo:
        h = todo.pop()
        if h in seen or h in stop:
            continue
        seen.add(h)
        info, ins = node_info(h)
        if not info.requires_grad:
            continue
        if info.is_leaf:
            leaves.append(h)
        todo += ins
    return leaves


def _identity(t):
    """t through a recorded identity op: a sweep may stop at it while the dependence on t stays."""
    return _call(lib.ad_reshape, t._h, t.ndim, ffi.new("int64_t[]", t.shape or (0,)))


def checkpoint(f):
    """f, checkpointed: ``ad.checkpoint(layer)(x)`` has the value and gradients of layer(x), but its
    intermediate values are recomputed in the backward sweep instead of kept. f takes tensors
    (other arguments pass through unchanged) and returns one tensor."""
    name = f"checkpoint({getattr(f, '__name__', 'f')})"

    def checkpointed(*args):
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        tensors = [args[i] for i in positions]
        if not lib.ad_grad_enabled():
            return f(*args)
        with _grad_on():
            out = f(*args)
        if not isinstance(out, Tensor):
            raise TypeError(f"{name}: f must return one Tensor, got {type(out).__name__}")
        if not out.requires_grad:
            return out
        params = []
        for h in _closure_leaves(out, tensors):
            params.append(_borrow(h))
        value = out.detach()
        del out                      # f's recorded graph goes here: only value is kept
        inputs = tensors + params

        def rerun(ins):
            full = list(args)
            for i, t in zip(positions, ins):
                full[i] = t
            with _grad_on():
                return f(*full)

        def bwd(gs):
            from .functional import _grads_graph, _vjp_sweep
            (g,) = gs
            if g.requires_grad:
                # recorded: the rerun depends on the real inputs through identity ops, where the
                # sweep stops, so higher orders see every dependence
                ids = [_identity(t) for t in tensors]
                return _grads_graph(rerun(ids), ids + params, g)
            fresh = [_from_array(t.numpy(), requires_grad=True) for t in tensors]
            redo = rerun(fresh)
            rows = _vjp_sweep(redo, fresh + params, _from_array(g.numpy().reshape(1, -1)))
            return [_from_array(np.ascontiguousarray(r.reshape(t.shape))) for r, t in zip(rows, inputs)]

        rule = _Rule(name, inputs, [value], bwd, None)
        made = _record(rule, inputs, [value])
        return value if made is None else made[0]

    checkpointed.__name__ = name
    return checkpointed
