"""Module and the layers built on it. Thin: a layer's forward is a few public ops, so its gradient
is whatever the core records for them."""
import collections
import math

import numpy as np

from .. import ops
from .._capi import plain_array
from ..tensor import Tensor, _assign
from .parameter import Parameter

IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of layers and models, with PyTorch's registration rules.

    Assigning an nn.Parameter to an attribute registers a parameter, a Module a child, and
    register_buffer(name, tensor) a buffer; those three are the module's state (parameters(),
    state_dict(), ...). Any other attribute, a plain Tensor included (a cached activation, say),
    is not. Subclasses set their state in __init__ (calling super().__init__() is optional) and
    define forward(); calling the module calls forward. Listings go own entries first, then each
    child's, in assignment order, each Tensor once even if shared."""

    training = True

    def __init__(self):
        self._state()

    def _state(self):
        """The registries (made on first use, so subclasses need not call Module.__init__)."""
        d = self.__dict__
        if "_parameters" not in d:
            d["_parameters"], d["_buffers"], d["_modules"] = {}, {}, {}
            d["_non_persistent"] = set()
        return d["_parameters"], d["_buffers"], d["_modules"]

    def __setattr__(self, name, value):
        params, buffers, modules = self._state()
        for registry in (params, buffers, modules):
            if name in registry and not _fits(registry, value, params, buffers):
                kind = {id(params): "parameter (an nn.Parameter or None)", id(buffers): "buffer (a Tensor or None)",
                        id(modules): "child module (a Module or None)"}[id(registry)]
                raise TypeError(f"cannot assign {type(value).__name__} to {type(self).__name__}.{name}, "
                                f"which is a {kind}")
        if isinstance(value, Parameter) or name in params:
            params[name] = value
        elif isinstance(value, Module) or name in modules:
            modules[name] = value
        elif name in buffers:
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        # only called when normal lookup fails: the registries hold the state
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        params, buffers, modules = self._state()
        for registry in (params, buffers, modules):
            if name in registry:
                del registry[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is state but not a parameter (running statistics, say): in buffers() and,
        when persistent, in state_dict(); optimizers do not see it."""
        params, buffers, modules = self._state()
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_buffer: buffer name must be a non-empty string without '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name} must be a Tensor or None, got {type(tensor).__name__}")
        if name in params or name in modules or (name in self.__dict__ and name not in buffers):
            raise KeyError(f"register_buffer: attribute {name!r} already exists")
        buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name} must be an nn.Parameter or None, got {type(param).__name__}")
        self._state()[0][name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name} must be a Module or None, got {type(module).__name__}")
        self._state()[2][name] = module

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

    # ---- listings ----
    def named_children(self):
        for name, m in self._state()[2].items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        """(name, module) for this module ("" for itself) and every descendant, each once,
        depth first (an explicit stack: no recursion limit)."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            pre, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield pre, module
            stack.extend(reversed([(f"{pre}.{name}" if pre else name, child)
                                   for name, child in module.named_children()]))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named(self, registry, prefix, recurse):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for pre, module in modules:
            for name, t in module._state()[registry].items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    yield (f"{pre}.{name}" if pre else name), t

    def named_parameters(self, prefix="", recurse=True):
        return self._named(0, prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        return self._named(1, prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes and bulk changes ----
    def train(self, mode=True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn):
        """fn(m) for every child, depth first, then for this module (PyTorch's order)."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's grad: set it to None, or (set_to_none=False) zero it in place."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    # ---- state ----
    def state_dict(self):
        """An ordered dict of name -> Tensor (a copy of the values, no graph) for every parameter
        (frozen ones included) and every persistent buffer, as PyTorch's (whose entries share
        storage; here they are copies, so a saved state never changes with further training)."""
        return collections.OrderedDict((k, t.detach()) for k, t in self._state_tensors().items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into the existing parameters and persistent buffers, in place (optimizers
        holding them keep working; graphs that read the old values refuse to sweep). With
        strict=True, missing or unexpected names are a KeyError; a shape or dtype mismatch is
        always a ValueError. Nothing is changed unless every entry is valid."""
        own = self._state_tensors()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        updates = []
        for name, t in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.numpy() if isinstance(value, Tensor) else plain_array(value, f"load_state_dict: {name}")
            if value.shape != t.shape or value.dtype != t.dtype:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape} and dtype {value.dtype} in the "
                                 f"state dict, but shape {t.shape} and dtype {t.dtype} in the module")
            updates.append((t, value))
        for t, value in updates:
            _assign(t, value)
        return IncompatibleKeys(missing, unexpected)

    def _state_tensors(self):
        """The tensors state_dict() copies, by name (the module's own tensors)."""
        out = collections.OrderedDict()
        for pre, module in self.named_modules():
            params, buffers, _ = module._state()
            persistent = [(n, b) for n, b in buffers.items() if n not in module._non_persistent]
            for name, t in list(params.items()) + persistent:
                key = f"{pre}.{name}" if pre else name
                if t is not None and key not in out:
                    out[key] = t
        return out

    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _fits(registry, value, params, buffers):
    if value is None:
        return True
    if registry is params:
        return isinstance(value, Parameter)
    if registry is buffers:
        return isinstance(value, Tensor)
    return isinstance(value, Module)


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
        self.weight = Parameter(rng.uniform(-k, k, (out_features, in_features)), dtype=dtype)
        self.bias = Parameter(rng.uniform(-k, k, out_features), dtype=dtype) if bias else None

    def forward(self, x):
        y = ops.matmul(x, self.weight.T)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Sequential(Module):
    """Modules applied one after the other; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: {type(m).__name__} is not a Module")
            self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (a plain list attribute is not)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), _module_or_error("ModuleList", module))
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __setitem__(self, i, module):
        key = list(self._modules)[i]
        self._modules[key] = _module_or_error("ModuleList", module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules registered as children under their keys, in insertion order."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (dict(modules) if modules is not None else {}).items():
            self[k] = m

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        if not isinstance(key, str) or not key or "." in key:
            raise KeyError(f"ModuleDict: keys must be non-empty strings without '.', got {key!r}")
        self.add_module(key, _module_or_error("ModuleDict", module))

    def __delitem__(self, key):
        del self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


def _module_or_error(what, m):
    if not isinstance(m, Module):
        raise TypeError(f"{what}: {type(m).__name__} is not a Module")
    return m


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)
