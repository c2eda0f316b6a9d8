"""Module and the layers built on it. Thin: a layer's forward is a few public ops, so its gradient
is whatever the core records for them."""
import collections
import math

import numpy as np

from .. import ops
from ..tensor import Tensor, tensor, _assign

IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of layers and models.

    A Module's parameters are its attributes that hold Tensors with requires_grad=True; its
    children are its attributes that hold Modules, or lists/tuples of Modules. Subclasses set them
    in __init__ and define forward(); calling the module calls forward. parameters() and
    named_parameters() list a module's own parameters first, then each child's, in the order the
    attributes were assigned (as PyTorch does), each Tensor once even if it is shared."""

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        hooks = self.__dict__.get("_module_hooks")
        if not hooks:
            return self.forward(*args, **kwargs)
        from .hooks import call_with_hooks
        return call_with_hooks(self, hooks, args, kwargs)

    # ---- hooks, as PyTorch's (pyautodiff/nn/hooks.py) ----
    def register_forward_hook(self, hook):
        """hook(module, inputs, output) after each forward; a returned value replaces the output.
        Returns a handle whose remove() takes the hook off."""
        from .hooks import add_hook
        return add_hook(self, "forward", hook)

    def register_full_backward_hook(self, hook):
        """hook(module, grad_input, grad_output) once the gradients with respect to the module's
        tensor inputs are known (None for inputs that need none); a returned tuple replaces
        grad_input. Returns a handle whose remove() takes the hook off."""
        from .hooks import add_hook
        return add_hook(self, "backward", hook)

    def named_children(self):
        """(name, module) for each direct child; a list attribute `blocks` gives blocks.0, ..."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def children(self):
        for _, m in self.named_children():
            yield m

    def _own_parameters(self):
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield name, value

    def named_parameters(self, prefix=""):
        seen = set()
        stack = [(prefix, self)]
        # explicit stack, children pushed in reverse so they pop in order (depth first, no recursion)
        while stack:
            pre, module = stack.pop()
            for name, p in module._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield pre + name, p
            stack.extend(reversed([(pre + name + ".", child) for name, child in module.named_children()]))

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self):
        """Clear every parameter's grad (set it to None)."""
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """An ordered dict of parameter name -> NumPy array (a copy of the values)."""
        return collections.OrderedDict((name, p.numpy()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into the existing parameters, in place (optimizers holding them keep
        working). With strict=True, missing or unexpected names are a KeyError; a shape mismatch
        is always a ValueError. Nothing is changed unless every entry is valid."""
        own = collections.OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        updates = []
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape} in the state dict "
                                 f"but {p.shape} in the module")
            updates.append((p, value))
        for p, value in updates:
            _assign(p, value)
        return IncompatibleKeys(missing, unexpected)

    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Linear(Module):
    """y = x @ weight.T + bias, with weight shaped (out_features, in_features), as in PyTorch.

    Initialisation (PyTorch's default for nn.Linear): every entry of weight and bias is drawn
    independently from U(-k, k) with k = 1 / sqrt(in_features), using
    numpy.random.default_rng(seed), so a given seed always gives the same layer. dtype is float64
    unless given (float32 for single-precision models)."""

    def __init__(self, in_features, out_features, bias=True, seed=None, dtype=None):
        in_features, out_features = int(in_features), int(out_features)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(in_features)
        dtype = dtype or np.float64
        self.weight = tensor(rng.uniform(-k, k, (out_features, in_features)), dtype=dtype, requires_grad=True)
        self.bias = tensor(rng.uniform(-k, k, out_features), dtype=dtype, requires_grad=True) if bias else None

    def forward(self, x):
        y = ops.matmul(x, self.weight.T)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Sequential(Module):
    """Modules applied one after the other; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: {type(m).__name__} is not a Module")
        self.layers = list(modules)

    def named_children(self):
        for i, m in enumerate(self.layers):
            yield str(i), m

    def forward(self, x):
        for m in self.layers:
            x = m(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)
