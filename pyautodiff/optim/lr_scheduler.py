"""Learning-rate schedulers, as torch.optim.lr_scheduler: each sets every parameter group's "lr"
(OneCycleLR also its momentum) from the number of step() calls so far, by the closed form of its
schedule, so a resumed scheduler (load_state_dict) gives exactly the numbers an uninterrupted one
does. Construction counts as step 0 and sets the initial rate; call step() after each epoch (or
batch, for OneCycleLR) once the optimizer has stepped."""
import bisect
import math
import numbers

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR", "LinearLR",
           "OneCycleLR", "ReduceLROnPlateau"]


class LRScheduler:
    """Base: subclasses define _lr(base_lr, epoch) (or _lrs(epoch)) for the rate at step count
    `epoch`. The groups' "initial_lr" (set at construction) is the base rate."""

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: {type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        for i, g in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                g.setdefault("initial_lr", g["lr"])
            elif "initial_lr" not in g:
                raise KeyError(f"{type(self).__name__}: param 'initial_lr' is not specified in param_groups[{i}] "
                               f"when resuming (last_epoch={last_epoch})")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def _lrs(self, epoch):
        return [self._lr(base, epoch) for base in self.base_lrs]

    def step(self):
        self.last_epoch += 1
        for g, lr in zip(self.optimizer.param_groups, self._lrs(self.last_epoch)):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The rates the last step() set, one per group."""
        return list(self._last_lr)

    # state: every attribute but the optimizer (and functions, which are code, not data)
    _not_state = ("optimizer", "lr_lambdas")

    def state_dict(self):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()
                if k not in self._not_state}

    def load_state_dict(self, state_dict):
        unknown = set(state_dict) - set(self.state_dict())
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected entries {sorted(unknown)}")
        self.__dict__.update(state_dict)


def _positive_int(owner, name, value):
    if not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return int(value)


class StepLR(LRScheduler):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = _positive_int("StepLR", "step_size", step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr(self, base, epoch):
        return base * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """lr = base * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr(self, base, epoch):
        return base * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """lr = base * gamma ** epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr(self, base, epoch):
        return base * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (SGDR without restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = _positive_int("CosineAnnealingLR", "T_max", T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _lr(self, base, epoch):
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LambdaLR(LRScheduler):
    """lr = base * lr_lambda(epoch), one function for every group or one per group. The functions
    are not part of state_dict() (they are code): recreate the scheduler with them, then load."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        fns = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * n
        if len(fns) != n or not all(callable(f) for f in fns):
            raise ValueError(f"LambdaLR: expected one function or {n} (one per parameter group), got {lr_lambda!r}")
        self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def _lrs(self, epoch):
        return [base * f(epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)]


class LinearLR(LRScheduler):
    """lr = base * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) / total_iters)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1] and end_factor in [0, 1], got "
                             f"{start_factor} and {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = _positive_int("LinearLR", "total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def _lr(self, base, epoch):
        return base * (self.start_factor + (self.end_factor - self.start_factor) *
                       min(self.total_iters, epoch) / self.total_iters)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, 2017), as PyTorch's, stepped after every batch: the rate
    rises from max_lr / div_factor to max_lr over the first pct_start of total_steps, then anneals
    to initial / final_div_factor (three_phase: back to the initial rate first). With
    cycle_momentum, the momentum (SGD's, or Adam's beta1) moves the opposite way between
    max_momentum and base_momentum. Stepping past total_steps is a ValueError."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                 anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, last_epoch=-1):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = _positive_int("OneCycleLR", "epochs", epochs) * \
                _positive_int("OneCycleLR", "steps_per_epoch", steps_per_epoch)
        self.total_steps = _positive_int("OneCycleLR", "total_steps", total_steps)
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        n = len(optimizer.param_groups)
        max_lrs = list(max_lr) if isinstance(max_lr, (list, tuple)) else [max_lr] * n
        if len(max_lrs) != n:
            raise ValueError(f"OneCycleLR: expected {n} values of max_lr, got {len(max_lrs)}")
        p = float(pct_start) * self.total_steps
        self.phases = ([(p - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                        (2 * p - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
                        (self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
                       if three_phase else
                       [(p - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                        (self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")])
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum and not all("momentum" in g or "betas" in g for g in optimizer.param_groups):
            raise ValueError("OneCycleLR: the optimizer has no momentum or beta1 to cycle; pass cycle_momentum=False")
        if last_epoch == -1:
            for g, m in zip(optimizer.param_groups, max_lrs):
                g["initial_lr"], g["max_lr"] = m / div_factor, m
                g["min_lr"] = g["initial_lr"] / final_div_factor
                if self.cycle_momentum:
                    g["max_momentum"], g["base_momentum"] = max_momentum, base_momentum
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _lrs(self, epoch):
        if epoch > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {epoch} times, but total_steps is {self.total_steps}")
        lrs = []
        for g in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr0, lr1, m0, m1) in enumerate(self.phases):
                if epoch <= end or i == len(self.phases) - 1:
                    pct = (epoch - start) / (end - start)
                    lrs.append(self._anneal(g[lr0], g[lr1], pct))
                    if self.cycle_momentum:
                        m = self._anneal(g[m0], g[m1], pct)
                        if "betas" in g:
                            g["betas"] = (m, *g["betas"][1:])
                        else:
                            g["momentum"] = m
                    break
                start = end
        return lrs


class ReduceLROnPlateau:
    """Multiply the rate by factor when the metric passed to step(metric) has not improved (by
    more than threshold, relative or absolute) for more than patience calls, then wait cooldown
    calls; rates never go below min_lr, and a change smaller than eps is skipped, as PyTorch's."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be below 1, got {factor}")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max' and threshold_mode 'rel' or 'abs', "
                             f"got {mode!r} and {threshold_mode!r}")
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        self.min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr] * n
        if len(self.min_lrs) != n:
            raise ValueError(f"ReduceLROnPlateau: expected {n} values of min_lr, got {len(self.min_lrs)}")
        self.mode, self.factor, self.patience, self.threshold = mode, float(factor), int(patience), float(threshold)
        self.threshold_mode, self.cooldown, self.eps = threshold_mode, int(cooldown), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def _better(self, a):
        if self.mode == "min":
            return a < (self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold)
        return a > (self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold)

    def step(self, metrics):
        current = float(metrics)
        self.last_epoch += 1
        if self._better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for g, floor in zip(self.optimizer.param_groups, self.min_lrs):
                new = max(g["lr"] * self.factor, floor)
                if g["lr"] - new > self.eps:
                    g["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    get_last_lr = LRScheduler.get_last_lr
    _not_state = ("optimizer",)
    state_dict = LRScheduler.state_dict
    load_state_dict = LRScheduler.load_state_dict
