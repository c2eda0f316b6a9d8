"""The update rules, written as in the PyTorch documentation's pseudo-code (theta: parameter, g:
gradient, lr: learning rate, wd: weight decay, t: step count from 1)."""
import numpy as np

from ..tensor import Tensor, _assign


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
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {lr}")
        self.lr = float(lr)
        self.state = {p: {} for p in self.params}   # Tensors hash by identity

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p in self.params:
            grad = p.grad
            if grad is None:
                continue
            _assign(p, self._update(p.numpy(), grad.numpy(), self.state[p]))

    def _update(self, theta, g, state):
        raise NotImplementedError


def _check(name, value, lo, hi=None):
    if not (value >= lo and (hi is None or value < hi)):
        rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
        raise ValueError(f"invalid {name} {value}: expected {rng}")
    return float(value)


class SGD(Optimizer):
    """Stochastic gradient descent:  g <- g + wd*theta;  with momentum mu,
    b <- g on the first step, b <- mu*b + (1 - dampening)*g afterwards, and g <- b (or g + mu*b
    with nesterov);  theta <- theta - lr*g."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _check("momentum", momentum, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, theta, g, state):
        if self.weight_decay:
            g = g + self.weight_decay * theta
        if self.momentum:
            buf = state.get("momentum_buffer")
            buf = g.copy() if buf is None else self.momentum * buf + (1 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return theta - self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient, as torch.optim.Adam:
    g <- g + wd*theta;  m <- b1*m + (1-b1)*g;  v <- b2*v + (1-b2)*g^2;
    theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1 = _check("beta1", betas[0], 0.0, 1.0)
        self.beta2 = _check("beta2", betas[1], 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)

    def _update(self, theta, g, state):
        if self.weight_decay:
            if self.decoupled:
                theta = theta * (1 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * theta
        t = state["step"] = state.get("step", 0) + 1
        m = state["exp_avg"] = self.beta1 * state.get("exp_avg", 0.0) + (1 - self.beta1) * g
        v = state["exp_avg_sq"] = self.beta2 * state.get("exp_avg_sq", 0.0) + (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** t)
        v_hat = v / (1 - self.beta2 ** t)
        return theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.AdamW:
    theta <- theta * (1 - lr*wd) first, then the Adam step without the L2 term."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
