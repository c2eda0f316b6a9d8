"""Gradient clipping, as torch.nn.utils: both change the parameters' .grad in place."""
import math

import numpy as np

from ..tensor import Tensor, no_grad, tensor


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [g for g in (p.grad for p in parameters) if g is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the grads so that their total norm (the norm of all of them as one vector) is at most
    max_norm: each is multiplied by min(1, max_norm / (total + 1e-6)), as PyTorch does. Returns the
    total norm before clipping, as a 0-d tensor (float64 when there are no grads)."""
    max_norm, norm_type = float(max_norm), float(norm_type)
    grads = _grads(parameters)
    if not grads:
        return tensor(0.0)
    dtype = np.result_type(*[g.dtype for g in grads])
    norms = np.array([np.linalg.norm(g.numpy().reshape(-1), ord=norm_type) for g in grads], dtype=dtype)
    total = np.linalg.norm(norms, ord=norm_type).astype(dtype)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is {total}, "
                           f"so they cannot be clipped; pass error_if_nonfinite=False to clip anyway")
    coef = min(1.0, float(dtype.type(max_norm) / (total + dtype.type(1e-6))))
    with no_grad():
        for g in grads:
            g.mul_(coef)
    return tensor(total, dtype=dtype)


def clip_grad_value_(parameters, clip_value):
    """Clamp every grad element into [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    with no_grad():
        for g in _grads(parameters):
            g.clamp_(-clip_value, clip_value)
