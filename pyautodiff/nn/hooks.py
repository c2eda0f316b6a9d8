"""Module forward hooks and full backward hooks (as PyTorch's), for Module.__call__.

A full backward hook needs the gradients with respect to the module's inputs and outputs at once.
The call routes the module's tensor inputs through one identity custom function before forward
and its output through another after it (pyautodiff/custom.py): in a reverse sweep the output's
identity sees grad_output first, then the inputs' identity sees grad_input and runs the hooks,
whose returned tuple replaces grad_input. When no input requires grad the inputs' identity is not
recorded, so the output's runs the hooks with grad_input all None.
"""
import itertools

from ..custom import Function
from ..hooks import RemovableHandle
from ..tensor import Tensor

_ids = itertools.count(1)


def add_hook(module, kind, hook):
    if not callable(hook):
        raise TypeError(f"register_{kind}_hook: expected a callable, got {type(hook).__name__}")
    hooks = module.__dict__.setdefault("_module_hooks", {})
    key = (kind, next(_ids))
    hooks[key] = hook
    return RemovableHandle(hooks, key)


class _State:
    def __init__(self, module, hooks, n_inputs, inputs_recorded):
        self.module, self.hooks = module, hooks
        self.n_inputs, self.inputs_recorded = n_inputs, inputs_recorded
        self.grad_output = None

    def run(self, grad_input):
        for fn in self.hooks:
            r = fn(self.module, grad_input, self.grad_output)
            if r is not None:
                r = tuple(r) if isinstance(r, (tuple, list)) else (r,)
                if len(r) != len(grad_input):
                    raise ValueError(f"{type(self.module).__name__} backward hook returned {len(r)} gradients "
                                     f"for {len(grad_input)} inputs")
                grad_input = r
        return grad_input


class _InputsIdentity(Function):
    @staticmethod
    def forward(ctx, state, *xs):
        ctx.state = state
        return xs if len(xs) > 1 else xs[0]

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + tuple(ctx.state.run(grads))


class _OutputIdentity(Function):
    @staticmethod
    def forward(ctx, state, y):
        ctx.state = state
        return y

    @staticmethod
    def backward(ctx, g):
        ctx.state.grad_output = (g,)
        if not ctx.state.inputs_recorded:
            ctx.state.run((None,) * ctx.state.n_inputs)
        return None, g


def call_with_hooks(module, hooks, args, kwargs):
    backward = [fn for (kind, _), fn in hooks.items() if kind == "backward"]
    if backward:
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        recorded = any(args[i].requires_grad for i in positions)
        state = _State(module, backward, len(positions), recorded)
        if recorded:
            new = _InputsIdentity.apply(state, *[args[i] for i in positions])
            new = new if isinstance(new, tuple) else (new,)
            args = list(args)
            for i, t in zip(positions, new):
                args[i] = t
    out = module.forward(*args, **kwargs)
    for (kind, _), fn in list(hooks.items()):
        if kind == "forward":
            r = fn(module, tuple(args), out)
            if r is not None:
                out = r
    if backward and isinstance(out, Tensor):
        out = _OutputIdentity.apply(state, out)
    return out
