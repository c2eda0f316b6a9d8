"""pyautodiff: automatic differentiation with a C core. `import pyautodiff as ad`."""
from ._capi import float32, float64
from .tensor import (Tensor, tensor, zeros, ones, full, zeros_like, ones_like, no_grad,
                     is_grad_enabled, tape_stats, set_num_threads, get_num_threads)
from .ops import ELEMENTWISE as _ELEMENTWISE
from .ops import (gelu, round, isnan, isinf, isfinite, matmul, sum, mean, max, min, reshape,
                  transpose, broadcast_to, astype, concatenate, stack, split, where, clip, logsumexp,
                  softmax, log_softmax)
from .shape_ops import (squeeze, expand_dims, unsqueeze, flatten, permute, moveaxis, swapaxes, flip, roll,
                        tile, repeat, pad, take_along_axis, put_along_axis, scatter_add, tril, triu, diagonal)
from .reduce_ops import (prod, var, std, norm, cumsum, cumprod, argmax, argmin, argsort, sort, topk)
from .linalg_ops import dot, vdot, outer, inner, tensordot, einsum, trace
from .numerical import (numerical_grad, numerical_jacobian, gradcheck, GradcheckError, taylor_test,
                        TaylorResult, default_step)
from .functional import grad, value_and_grad, vjp, jvp, jacrev, jacfwd, hvp, hessian
from . import ops as _ops, shape_ops as _shape_ops, reduce_ops as _reduce_ops, linalg_ops as _linalg_ops
from . import hooks as _hooks, functional as _functional
from .tensor import _bind_late
_bind_late(_ops, _shape_ops, _reduce_ops, _linalg_ops, _hooks, _functional)   # Tensor's methods call these
from .anomaly import detect_anomaly
from .serialization import save, load
from .creation import (empty, arange, linspace, eye, rand, randn, full_like, empty_like, rand_like, randn_like,
                       manual_seed)
from .custom import custom_vjp, custom_jvp, Function, FunctionCtx
from .checkpoint import checkpoint
from .record import record, GuardError
from .record_step import record_step
from ._capi import lib as _lib
from . import nn, optim, data, autograd, viz
from . import linalg   # ad.linalg: inv, det, slogdet, solve, cholesky, svd, svdvals (issue 17)

# the elementwise ops, one per row of opdefs.py (exp, log1p, logaddexp, ...)
globals().update(_ELEMENTWISE)


def _bench_sweep(n_nodes):
    """Nanoseconds per node of the C backward sweep alone, over an n-node chain of scalar adds."""
    ns = _lib.ad_bench_sweep(int(n_nodes))
    if ns < 0:
        from ._capi import raise_status
        raise_status(int(ns))
    return ns


__version__ = "0.1.0"
