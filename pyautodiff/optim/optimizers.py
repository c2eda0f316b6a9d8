"""The update rules, as in the PyTorch documentation's pseudo-code (theta: parameter, g: gradient,
lr: learning rate, wd: weight decay, t: step count from 1). Each step is one call into the core per
parameter (csrc/optim.c), which updates the values in place and records nothing."""
from .._capi import ffi, lib, check
from ..tensor import Tensor, zeros_like


class Optimizer:
    """Holds the parameters and their per-parameter state; step() updates every parameter that
    has a grad, zero_grad() clears the grads."""

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: parameters must be Tensors, got {type(p).__name__}")
            if not (p.is_leaf and p.requires_grad):
                raise ValueError(f"{type(self).__name__}: can only optimize leaf tensors with requires_grad=True")
        self.lr = _check("learning rate", lr, 0.0)
        self.state = {p: {"step": 0} for p in self.params}   # Tensors hash by identity
        self._settings = ffi.new("ad_optim_t *")

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        o = self._settings
        self._configure(o)
        step = lib.ad_optim_step
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state[p]
            s0, s1 = self._buffers(p, state)
            state["step"] += 1
            check(step(o, p._h, s0._h if s0 is not None else 0, s1._h if s1 is not None else 0, state["step"]))

    def _configure(self, o):
        raise NotImplementedError

    def _buffers(self, p, state):
        raise NotImplementedError


def _check(name, value, lo, hi=None):
    value = float(value)
    if not (value >= lo and (hi is None or value < hi)):
        rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"invalid {name} {value}: expected {rng}")
    return value


class SGD(Optimizer):
    """Stochastic gradient descent:  g <- g + wd*theta;  with momentum mu,
    b <- g on the first step, b <- mu*b + (1 - dampening)*g afterwards, and g <- b (or g + mu*b
    with nesterov);  theta <- theta - lr*g.  state[p]["momentum_buffer"] holds b."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _check("momentum", momentum, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")

    def _configure(self, o):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_SGD, self.lr, self.weight_decay
        o.momentum, o.dampening, o.nesterov = self.momentum, self.dampening, int(self.nesterov)

    def _buffers(self, p, state):
        if not self.momentum:
            return None, None
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = zeros_like(p)
        return state["momentum_buffer"], None


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient, as torch.optim.Adam:
    g <- g + wd*theta;  m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;
    theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
    state[p] holds "step", "exp_avg" (m) and "exp_avg_sq" (v)."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1 = _check("beta1", betas[0], 0.0, 1.0)
        self.beta2 = _check("beta2", betas[1], 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)

    def _configure(self, o):
        o.kind, o.lr, o.weight_decay = lib.AD_OPTIM_ADAM, self.lr, self.weight_decay
        o.beta1, o.beta2, o.eps, o.decoupled = self.beta1, self.beta2, self.eps, int(self.decoupled)

    def _buffers(self, p, state):
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = zeros_like(p), zeros_like(p)
        return state["exp_avg"], state["exp_avg_sq"]


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.AdamW:
    theta <- theta * (1 - lr*wd) first, then the Adam step without the L2 term."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
