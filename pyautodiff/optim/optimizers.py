"""The update rules, as in the PyTorch documentation's pseudo-code (theta: parameter, g: gradient,
lr: learning rate, wd: weight decay, t: step count from 1). Each step is one call into the core per
parameter (csrc/optim.c), which updates the values in place, bumps their versions and records
nothing. Parameters come in groups, each with its own hyperparameters, as in PyTorch."""
import math
import numbers

import numpy as np

from .._capi import ffi, lib, check, plain_array
from ..tensor import Tensor, zeros_like, full, tensor


class Optimizer:
    """Holds parameter groups (dicts with "params" and hyperparameters; a plain iterable of
    tensors is one group) and per-parameter state. step() updates every parameter that has a
    grad; zero_grad() clears the grads; state_dict() / load_state_dict() save and restore both,
    so that a resumed run continues bit for bit as an uninterrupted one."""

    # per subclass: (hyperparameter, lowest value, bound it must stay below or None)
    _ranges = (("lr", 0.0, None), ("weight_decay", 0.0, None))

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}            # parameter -> its state dict (Tensors hash by identity)
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or of dicts, got a Tensor")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)
        self._settings = ffi.new("ad_optim_t *")

    # pickle and copy.deepcopy, as in PyTorch: the parameters are copied with everything else (so
    # deepcopy((model, optimizer)) gives a copy that steps the copied model's parameters), and the
    # C settings block, a scratch area filled before every step, is made anew
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_settings"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._settings = ffi.new("ad_optim_t *")

    def add_param_group(self, param_group):
        """Add a group: its hyperparameters default to the optimizer's. A parameter may belong to
        one group only, once (a ValueError otherwise: it would be stepped twice)."""
        name = type(self).__name__
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"{name}: a parameter group is a dict with a 'params' entry, got {param_group!r}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameters must be Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                # a frozen leaf (requires_grad=False) is accepted, as PyTorch: it has no grad to step on
                raise ValueError(f"{name}: can only optimize leaf tensors, not one computed from others")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: a parameter group lists the same parameter more than once")
        taken = {id(p) for g in self.param_groups for p in g["params"]}
        if taken.intersection(ids):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        group = dict(self.defaults)
        group.update(param_group)
        group["params"] = params
        self._validate(group)
        self.param_groups.append(group)

    def _validate(self, group):
        for key, lo, hi in self._ranges:
            value = group[key]
            # NaN fails every comparison, and an infinite rate or decay turns the weights into NaN
            if (not isinstance(value, numbers.Real) or not math.isfinite(value)
                    or not (value >= lo and (hi is None or value < hi))):
                rng = f"in [{lo}, {hi})" if hi is not None else f">= {lo} (finite)"
                what = "learning rate (lr)" if key == "lr" else key
                raise ValueError(f"{type(self).__name__}: invalid {what} {value!r}: expected a number {rng}")

    @property
    def lr(self):
        raise AttributeError(f"{type(self).__name__} has no lr attribute: each parameter group has its own, "
                             f"optimizer.param_groups[i]['lr'] (or let an optim.lr_scheduler set it)")

    @lr.setter
    def lr(self, value):
        # an assignment that changed nothing would be a silent wrong schedule
        self.lr  # noqa: B018 (raises the AttributeError above)

    @property
    def params(self):
        """Every parameter, group after group."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            else:
                g = p.grad
                if g is not None:
                    g.zero_()

    def step(self, closure=None):
        """One update of every parameter that has a grad; closure (re-evaluates the loss and
        returns it) is called first when given, and its loss returned."""
        loss = closure() if closure is not None else None
        o, step = self._settings, lib.ad_optim_step
        for group in self.param_groups:
            self._configure(o, group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {"step": 0})
                s = self._buffers(p, state, group)
                state["step"] += 1
                check(step(o, p._h, *(b._h if b is not None else 0 for b in s), state["step"]))
        return loss

    def state_dict(self):
        """PyTorch's layout: {"state": {index: {"step": int, buffer name: Tensor (a copy)}},
        "param_groups": [{hyperparameters..., "params": [indices]}]}, parameters numbered across
        the groups in order."""
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {index[id(p)]: {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in s.items()}
                 for p, s in self.state.items() if id(p) in index}
        groups = [dict(g, params=[index[id(p)] for p in g["params"]]) for g in self.param_groups]
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and state saved by state_dict() from an optimizer of the same
        kind over parameters of the same shapes, in the same groups. Everything is checked first:
        on an error (ValueError) nothing has changed."""
        name = type(self).__name__
        try:
            saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'") from None
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} parameter groups, "
                             f"this optimizer {len(self.param_groups)}")
        params = self.params
        groups = []
        for i, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved.get("params", ())) != len(own["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(saved.get('params', ()))} "
                                 f"parameters in the saved state, {len(own['params'])} here")
            group = dict(own)
            group.update({k: v for k, v in saved.items() if k != "params"})
            self._validate(group)
            groups.append(group)
        state = {}
        for key, entries in dict(saved_state).items():
            if not isinstance(key, (int, np.integer)) or not 0 <= key < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {key!r}, but there are {len(params)}")
            p, restored = params[int(key)], {}
            for k, v in dict(entries).items():
                if k == "step":
                    if not isinstance(v, (numbers.Integral, float)) or v != int(v) or v < 0:
                        raise ValueError(f"{name}.load_state_dict: parameter {key}'s step count is {v!r}")
                    restored[k] = int(v)
                    continue
                arr = v.numpy() if isinstance(v, Tensor) else plain_array(v, f"{name}.load_state_dict: {k}")
                if arr.shape != p.shape or arr.dtype.kind != "f":
                    raise ValueError(f"{name}.load_state_dict: parameter {key}'s {k} has shape {arr.shape} and dtype "
                                     f"{arr.dtype}, the parameter has shape {p.shape} (a float dtype expected)")
                restored[k] = arr
            state[p] = restored
        # every entry is valid: now change things
        for own, group in zip(self.param_groups, groups):
            own.update(group)
        self.state = {p: {k: (tensor(v, dtype=p.dtype) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for p, s in state.items()}

    def _configure(self, o, group):
        raise NotImplementedError

    def _buffers(self, p, state, group):
        """The (up to three) state tensors ad_optim_step takes, created on first use."""
        raise NotImplementedError

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


def _buffer(state, key, p, value=0.0):
    if key not in state:
        state[key] = zeros_like(p) if value == 0 else full(p.shape, value, p.dtype)
    return state[key]


class SGD(Optimizer):
    """Stochastic gradient descent:  g <- g + wd*theta;  with momentum mu,
    b <- g on the first step, b <- mu*b + (1 - dampening)*g afterwards, and g <- b (or g + mu*b
    with nesterov);  theta <- theta - lr*g.  state[p]["momentum_buffer"] holds b."""

    _ranges = Optimizer._ranges + (("momentum", 0.0, None), ("dampening", 0.0, None))

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening,
                                      nesterov=nesterov))

    def _validate(self, group):
        super()._validate(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")

    def _configure(self, o, g):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_SGD, g["lr"], g["weight_decay"]
        o.momentum, o.dampening, o.nesterov = g["momentum"], g["dampening"], int(bool(g["nesterov"]))

    def _buffers(self, p, state, g):
        return (_buffer(state, "momentum_buffer", p) if g["momentum"] else None), None, None


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient, as torch.optim.Adam:
    g <- g + wd*theta;  m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;
    theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps); with amsgrad,
    v_max <- max(v_max, v) replaces v in the denominator.
    state[p] holds "step", "exp_avg" (m), "exp_avg_sq" (v) and with amsgrad "max_exp_avg_sq"."""

    decoupled = False
    _ranges = Optimizer._ranges + (("eps", 0.0, None),)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=bool(amsgrad)))

    def _validate(self, group):
        super()._validate(group)
        for i, b in enumerate(group["betas"]):
            if not isinstance(b, numbers.Real) or not 0.0 <= b < 1.0:
                raise ValueError(f"{type(self).__name__}: invalid beta{i + 1} {b!r}: expected a number in [0.0, 1.0)")

    def _configure(self, o, g):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_ADAM, g["lr"], g["weight_decay"]
        (o.beta1, o.beta2), o.eps, o.decoupled = g["betas"], g["eps"], int(self.decoupled)
        o.amsgrad = int(bool(g["amsgrad"]))

    def _buffers(self, p, state, g):
        return (_buffer(state, "exp_avg", p), _buffer(state, "exp_avg_sq", p),
                _buffer(state, "max_exp_avg_sq", p) if g["amsgrad"] else None)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.AdamW:
    theta <- theta * (1 - lr*wd) first, then the Adam step without the L2 term."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton), as torch.optim.RMSprop: g <- g + wd*theta;
    v <- alpha*v + (1-alpha)*g^2;  centered: a <- alpha*a + (1-alpha)*g and d = sqrt(v - a^2) + eps,
    else d = sqrt(v) + eps;  with momentum mu: b <- mu*b + g/d, theta <- theta - lr*b; without:
    theta <- theta - lr*g/d.  state[p]: "square_avg" (v), "momentum_buffer" (b), "grad_avg" (a)."""

    _ranges = Optimizer._ranges + (("alpha", 0.0, None), ("eps", 0.0, None), ("momentum", 0.0, None))

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=bool(centered)))

    def _configure(self, o, g):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_RMSPROP, g["lr"], g["weight_decay"]
        o.alpha, o.eps, o.momentum, o.centered = g["alpha"], g["eps"], g["momentum"], int(bool(g["centered"]))

    def _buffers(self, p, state, g):
        return (_buffer(state, "square_avg", p), _buffer(state, "momentum_buffer", p) if g["momentum"] else None,
                _buffer(state, "grad_avg", p) if g["centered"] else None)


class Adagrad(Optimizer):
    """Adagrad (Duchi et al., 2011), as torch.optim.Adagrad: g <- g + wd*theta;  s <- s + g^2;
    theta <- theta - lr / (1 + (t-1)*lr_decay) * g / (sqrt(s) + eps).  state[p]["sum"] holds s,
    starting at initial_accumulator_value."""

    _ranges = Optimizer._ranges + (("lr_decay", 0.0, None), ("eps", 0.0, None),
                                   ("initial_accumulator_value", 0.0, None))

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _configure(self, o, g):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_ADAGRAD, g["lr"], g["weight_decay"]
        o.lr_decay, o.eps = g["lr_decay"], g["eps"]

    def _buffers(self, p, state, g):
        return _buffer(state, "sum", p, g["initial_accumulator_value"]), None, None
