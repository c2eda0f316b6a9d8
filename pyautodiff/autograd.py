"""PyTorch-style entry points: ``ad.autograd.grad``, as ``torch.autograd.grad``.

For the tensors a user already holds (a loss computed from parameters): the gradients of outputs
with respect to inputs, returned instead of accumulated into ``.grad``. With
``create_graph=True`` the sweep is recorded (``ad_vjp_graph``), so the gradients are tensors on the
tape and can be differentiated again: a gradient penalty, a Hessian-vector product by double
backward. The function transforms in ``ad.grad`` and friends are the other door to the same sweeps.
"""
import numpy as np

from ._capi import ffi, lib, check, _call_out, address
from .tensor import Tensor, _from_array
from .functional import _dependence, _grads_graph, _handles, _inside_transform, _matching

__all__ = ["grad"]


def _sequence(x, what):
    items = (x,) if isinstance(x, Tensor) else tuple(x)
    for i, t in enumerate(items):
        if not isinstance(t, Tensor):
            raise TypeError(f"autograd.grad: {what} must be Tensors, but entry {i} is a {type(t).__name__}")
    return items


def _cotangents(outputs, grad_outputs):
    if grad_outputs is None:
        grad_outputs = (None,) * len(outputs)
    elif isinstance(grad_outputs, Tensor) or not isinstance(grad_outputs, (tuple, list)):
        grad_outputs = (grad_outputs,)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"autograd.grad: got {len(grad_outputs)} grad_outputs for {len(outputs)} outputs")
    cots = []
    for i, (out, g) in enumerate(zip(outputs, grad_outputs)):
        if g is None:
            if out.size != 1:
                raise RuntimeError(f"autograd.grad: grad can be implicitly created only for outputs with one "
                                   f"element, but output {i} has shape {out.shape}; pass grad_outputs")
            cots.append(np.ones(out.shape, out.dtype))
        elif isinstance(g, Tensor) and g.shape == out.shape and g.dtype == out.dtype:
            # used as it is, no copy; one that requires grad is on the tape, and a recorded sweep
            # differentiates through it
            cots.append(g)
        else:
            cots.append(_matching(g, out.shape, out.dtype, f"autograd.grad: grad_outputs[{i}]", f"output {i}"))
    return cots


def _as_tensor(cot):
    return cot if isinstance(cot, Tensor) else _from_array(np.asarray(cot, order="C"))


def _graph_sweep(out, cot, inputs):
    """One output's cotangent-weighted gradients with respect to inputs (counted as independent),
    as recorded tensors."""
    return _grads_graph(out, list(inputs), _as_tensor(cot))


def _numeric_sweep(outputs, cots, inputs):
    """The sum over outputs of their cotangent-weighted gradients with respect to inputs (counted
    as independent), in one sweep from all the outputs: the parts of one tensor (split) add into
    one adjoint, not into one full-size gradient each."""
    cs = [_as_tensor(c) for c in cots]
    res = ffi.new("int64_t[]", max(len(inputs), 1))
    return _call_out(lib.ad_vjp_many, len(inputs), address(res), len(outputs), _handles(outputs), _handles(cs),
                     len(inputs), _handles(inputs), res)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """The sum over outputs of d<grad_outputs[k], outputs[k]>/d inputs, as a tuple with one entry
    per input (as ``torch.autograd.grad``). ``.grad`` is left alone.

    ``grad_outputs`` may be omitted for outputs with one element (ones). With
    ``create_graph=True`` the gradients are recorded: differentiable again, with respect to the
    inputs, anything else the outputs depend on, and grad_outputs that require grad. An input the
    outputs do not depend on is a RuntimeError unless ``allow_unused=True``, which gives None for it.
    ``retain_graph`` is accepted for compatibility: these sweeps never release the graph (it is
    freed when no tensor references it any more), so the outputs can be differentiated again.
    """
    outputs = _sequence(outputs, "outputs")
    inputs = _sequence(inputs, "inputs")
    if not create_graph:
        _inside_transform("ad.autograd.grad without create_graph=True")
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            raise RuntimeError(f"autograd.grad: input {i} does not require grad, so no graph was recorded from it; "
                               f"create it with requires_grad=True (outside no_grad())")
    for k, out in enumerate(outputs):
        if not out.requires_grad:
            raise RuntimeError(f"autograd.grad: output {k} does not require grad (nothing it was computed from "
                               f"requires grad, or it was computed under no_grad() or detached)")
    if len({id(t) for t in inputs}) != len(inputs) or len({t._h for t in inputs}) != len(inputs):
        raise ValueError("autograd.grad: the same tensor is given twice in inputs")
    cots = _cotangents(outputs, grad_outputs)

    used = [False] * len(inputs)
    for out in outputs:
        reached, _ = _dependence(out, list(inputs))
        used = [u or r for u, r in zip(used, reached)]
    if not allow_unused and not all(used):
        i = used.index(False)
        raise RuntimeError(f"autograd.grad: input {i} was not used to compute the outputs (its gradient "
                           f"would be None); pass allow_unused=True if that is intended")

    # The sweeps count every requested input as independent. When one input was computed from
    # another, PyTorch's total derivative also takes the path through it: sweep for each input
    # alone then, so none of them stops another's path.
    chained = len(inputs) > 1 and any(
        any(_dependence(t, [u for u in inputs if u is not t])[0]) for t in inputs if not t.is_leaf)
    groups = [[i] for i in range(len(inputs))] if chained else [list(range(len(inputs)))]

    totals = [None] * len(inputs)
    for group in groups:
        ins = [inputs[i] for i in group]
        if create_graph:
            for out, cot in zip(outputs, cots):
                for i, p in zip(group, _graph_sweep(out, cot, ins)):
                    totals[i] = p if totals[i] is None else totals[i] + p
        else:
            for i, p in zip(group, _numeric_sweep(outputs, cots, ins)):
                totals[i] = p
    return tuple(total if used[i] else None for i, total in enumerate(totals))
