"""Loss functions (PyTorch's F.nll_loss, F.cross_entropy, F.binary_cross_entropy(_with_logits),
F.mse_loss, F.l1_loss, F.huber_loss, F.smooth_l1_loss, F.kl_div), numerically stable: logits
go through log_softmax or softplus, never through a log of an exponential.

reduction is "mean" (the default), "sum" or "none" (the per-element losses, shaped like the
target). Options after the inputs (and weight) are keyword-only: PyTorch's signatures still have
the deprecated size_average and reduce there, so a positional option would mean something else. Shapes of input and target must match exactly where PyTorch would broadcast with a
warning: a silent (N, 1) against (N,) broadcast is a classic bug."""
import math

import numpy as np

from .. import ops
from .._capi import int_arg, plain_array
from ..ops import log_softmax, softplus
from ..tensor import Tensor, _gather, as_tensor

__all__ = ["nll_loss", "cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse_loss",
           "l1_loss", "huber_loss", "smooth_l1_loss", "kl_div"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(op, loss, reduction, extra=()):
    if reduction not in _REDUCTIONS + tuple(extra):
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS + tuple(extra)}, got {reduction!r}")
    if reduction == "mean":
        return ops.mean(loss)
    if reduction == "sum":
        return ops.sum(loss)
    return loss


def _pair(op, input, target):
    x, t = as_tensor(input), as_tensor(target)
    if x.shape != t.shape:
        raise ValueError(f"{op}: input has shape {x.shape} but target has shape {t.shape}")
    return x, t


def _labels(op, labels, shape, n_classes, ignore_index):
    """Integer class labels of `shape` (input's shape without the class axis), in [0, C) except
    where equal to ignore_index, and the mask of the positions that count (None: all of them)."""
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    labels = plain_array(labels, f"{op}: labels")
    kind = labels.dtype.kind
    # float labels are class numbers held in a Tensor (tensors are floats); they stay floats until
    # every check has passed, because a cast first turns inf into -9223372036854775808
    if kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError(f"{op}: label {labels[~np.isfinite(labels)][0]} is not a class index")
    if kind not in "iu" and not (kind == "f" and np.all(labels == np.round(labels))):
        raise TypeError(f"{op}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != shape:
        rows = f" to match logits with {shape[0]} rows" if len(shape) == 1 else f" to match input"
        raise ValueError(f"{op}: labels must have shape {shape}{rows}, got {labels.shape}")
    # the labels' range decides which masks are needed at all: a training step's labels are all in
    # [0, C) and none is ignore_index, and at a small batch the masks' NumPy calls cost more than
    # the loss's own ops
    lo, hi = (labels.min(), labels.max()) if labels.size else (0, 0)
    valid = labels != ignore_index if lo <= ignore_index <= hi else None
    if lo < 0 or hi >= n_classes:
        bad = ((labels < 0) | (labels >= n_classes)) & (labels != ignore_index)
        if np.any(bad):
            raise IndexError(f"{op}: label {labels[bad][0]} is out of range for {n_classes} classes")
    return labels.astype(np.int64), valid


def _class_layout(op, shape):
    """(N, C, d1, ...) input shape -> N, C, D = prod(d...); (C,) is one unbatched sample."""
    if not shape:
        raise ValueError(f"{op}: input must be (N, C) or (N, C, d1, ...), got shape {shape}")
    if len(shape) == 1:
        return 1, shape[0], 1, ()
    n, c = shape[:2]
    return n, c, math.prod(shape[2:]), (n,) + shape[2:]


def _class_weight(op, weight, c, dtype):
    if weight is None:
        return None
    w = weight.numpy() if isinstance(weight, Tensor) else plain_array(weight, f"{op}: weight")
    if w.shape != (c,):
        raise ValueError(f"{op}: weight must have shape ({c},), one per class, got {w.shape}")
    return np.asarray(w, dtype)


def _nll(op, logp, layout, target, weight, ignore_index):
    """The entries logp[target] of log-probabilities logp (N, C, d...) (layout: _class_layout) and
    their weights: (picked, sample_w, labels, valid, w); sample_w and valid are None when every
    position counts with weight 1. The per-position loss is -picked * sample_w (_nll_loss)."""
    n, c, d, shape = layout
    ignore_index = int_arg(ignore_index, f"{op}: ignore_index")
    labels, valid = _labels(op, target, shape, c, ignore_index)
    safe = labels if valid is None else np.where(valid, labels, 0)
    if shape:
        # flat position of (sample, label, spatial position) in logp's (N, C, D) layout
        flat = np.arange(n).reshape((n,) + (1,) * (len(shape) - 1)) * (c * d) + safe * d
        if d > 1:
            flat = flat + np.arange(d).reshape(shape[1:])
    else:
        flat = safe                      # one unbatched sample: logp is (C,)
    picked = _gather(logp, flat)
    if weight is None and valid is None:
        return picked, None, labels, None, None
    dt = np.dtype(logp.dtype)
    w = _class_weight(op, weight, c, dt)
    sample_w = np.ones(labels.shape, dt) if w is None else w[safe]
    if valid is not None:
        sample_w = sample_w * valid
    return picked, sample_w, labels, valid, w


def _nll_loss(picked, sample_w):
    return -picked if sample_w is None else -picked * sample_w


def _reduce_weighted(op, picked, sample_w, count, reduction):
    """_nll's per-position losses (count positions), reduced: "mean" divides by the total weight
    of the counted positions, as PyTorch (NaN if none count)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "none":
        return _nll_loss(picked, sample_w)
    if sample_w is None:
        # every position counts once: the minus sign goes into the divisor, which is exact (IEEE
        # negation commutes with the sum and the quotient), so the loss and its gradient have the
        # same bits as -picked summed and divided, with two ops fewer on the tape
        total = ops.sum(picked)
        return total / -float(count) if reduction == "mean" else -total
    total = ops.sum(-picked * sample_w)
    return total / float(sample_w.sum()) if reduction == "mean" else total


def nll_loss(input, target, weight=None, *, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of class labels under log-probabilities input (N, C) or
    (N, C, d1, ...) (or (C,) with a 0-d target), as F.nll_loss: -input[n, target[n]] * weight[target[n]];
    positions whose label is ignore_index count for nothing; "mean" divides by the total weight
    of the counted positions."""
    x = as_tensor(input)
    picked, sample_w, labels, *_ = _nll("nll_loss", x, _class_layout("nll_loss", x.shape), target, weight,
                                        ignore_index)
    return _reduce_weighted("nll_loss", picked, sample_w, labels.size, reduction)


def cross_entropy(input, target, weight=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross-entropy of logits input (N, C) or (N, C, d1, ...) (or (C,)) against class labels
    (shape (N, d1, ...)) or class probabilities (input's shape), as F.cross_entropy.

    Computed on log_softmax(input) (max-shifted: large logits neither overflow nor give log(0));
    picking the labels' entries is one gather, whose gradient scatters back. label_smoothing eps
    mixes the target with the uniform distribution: (1 - eps) * nll + eps / C * sum_c -w_c logp_c,
    with PyTorch's normalisations for weight and ignore_index. Without options the gradient
    w.r.t. the logits is (softmax - onehot) / N."""
    op = "cross_entropy"
    x = as_tensor(input)
    xshape = x.shape
    ndim = len(xshape)
    if ndim < 2 and not (ndim == 1 and np.ndim(target.numpy() if isinstance(target, Tensor) else target) == 0):
        raise ValueError(f"{op}: logits must have shape (N, C) or (N, C, d1, ...), got {xshape}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {eps}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    logp = log_softmax(x, axis=1 if ndim > 1 else 0)
    layout = _class_layout(op, xshape)
    c = layout[1]
    if _is_probabilities(target, xshape):
        return _soft_cross_entropy(logp, target, weight, reduction, eps, c)
    picked, sample_w, labels, valid, w = _nll(op, logp, layout, target, weight, ignore_index)
    if not eps:
        return _reduce_weighted(op, picked, sample_w, labels.size, reduction)
    # the smoothing terms below weigh by both masks
    valid = np.ones(labels.shape, bool) if valid is None else valid
    sample_w = np.ones(labels.shape, np.dtype(x.dtype)) if sample_w is None else sample_w
    loss = _nll_loss(picked, sample_w)
    cax = 1 if ndim > 1 else 0
    weighted = logp if w is None else logp * w.reshape((c,) + (1,) * (ndim - 1 - cax))
    smooth = -ops.sum(weighted, axis=cax) * valid.astype(np.dtype(x.dtype))
    if reduction == "none":
        return (1 - eps) * loss + smooth * (eps / c)
    nll = ops.sum(loss)
    smooth = ops.sum(smooth)
    if reduction == "mean":
        nll = nll / float(sample_w.sum())
        smooth = smooth / float(valid.sum() if w is None else w[labels[valid]].sum())
    return (1 - eps) * nll + smooth * (eps / c)


def _is_probabilities(target, shape):
    """A float target shaped like the input holds class probabilities (PyTorch's rule)."""
    if isinstance(target, Tensor):
        return target.shape == shape
    t = np.asarray(target)
    return t.shape == shape and t.dtype.kind == "f"


def _soft_cross_entropy(logp, target, weight, reduction, eps, c):
    """Class-probability targets: -sum_c w_c * t_c * logp_c per position, t smoothed to
    t (1 - eps) + eps / C; "mean" divides by the number of positions."""
    t = target if not eps else target * (1 - eps) + eps / c
    cax = 1 if logp.ndim > 1 else 0
    prod = logp * t
    w = _class_weight("cross_entropy", weight, c, np.dtype(logp.dtype))
    if w is not None:
        prod = prod * w.reshape((c,) + (1,) * (logp.ndim - 1 - cax))
    return _reduce("cross_entropy", -ops.sum(prod, axis=cax), reduction)


def _like(t, x):
    """A weight as a tensor in x's dtype: a float64 weight must not promote a float32 loss."""
    t = as_tensor(t)
    return t if t.dtype == x.dtype else ops.astype(t, x.dtype)


def _elementwise_weight(op, loss, weight):
    if weight is None:
        return loss
    w = _like(weight, loss)
    try:
        np.broadcast_shapes(w.shape, loss.shape)
    except ValueError:
        raise ValueError(f"{op}: weight of shape {w.shape} does not broadcast to the loss's shape {loss.shape}") from None
    return loss * w


def binary_cross_entropy(input, target, weight=None, *, reduction="mean"):
    """-(t log p + (1 - t) log(1 - p)) for probabilities p = input, as F.binary_cross_entropy:
    each log is clamped at -100 (as PyTorch), so p = 0 or 1 gives a finite loss and gradient.
    For logits use binary_cross_entropy_with_logits, which is exact there."""
    x, t = _pair("binary_cross_entropy", input, target)
    p = x.numpy()
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"binary_cross_entropy: input must be probabilities in [0, 1], got {p[(p < 0) | (p > 1)][0]}")
    log_p = ops.maximum(ops.log(x), -100.0)
    log_q = ops.maximum(ops.log(1.0 - x), -100.0)
    loss = -(t * log_p + (1.0 - t) * log_q)
    return _reduce("binary_cross_entropy", _elementwise_weight("binary_cross_entropy", loss, weight), reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, *, reduction="mean", pos_weight=None):
    """Binary cross-entropy of sigmoid(input) against target, as F.binary_cross_entropy_with_logits,
    in the stable form (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x) (softplus(-x) =
    -log sigmoid(x), computed as max(-x, 0) + log1p(exp(-|x|))): finite for any logit."""
    op = "binary_cross_entropy_with_logits"
    x, t = _pair(op, input, target)
    sp = softplus(-x)
    if pos_weight is None:
        loss = (1.0 - t) * x + sp
    else:
        pw = _like(pos_weight, x)
        loss = (1.0 - t) * x + (1.0 + (pw - 1.0) * t) * sp
    return _reduce(op, _elementwise_weight(op, loss, weight), reduction)


def mse_loss(input, target, *, reduction="mean"):
    """(input - target)**2, reduced. Shapes must match exactly: a silent broadcast of (N, 1)
    against (N,) to (N, N) is a classic bug, so it is a ValueError here."""
    x, t = _pair("mse_loss", input, target)
    d = x - t
    return _reduce("mse_loss", d * d, reduction)


def l1_loss(input, target, *, reduction="mean"):
    """|input - target|, reduced (gradient sign(input - target), 0 where they are equal)."""
    x, t = _pair("l1_loss", input, target)
    return _reduce("l1_loss", ops.abs(x - t), reduction)


def _positive(op, name, v, allow_zero=False):
    v = float(v)
    if not (v >= 0 if allow_zero else v > 0):
        raise ValueError(f"{op}: {name} must be {'non-negative' if allow_zero else 'positive'}, got {v}")
    return v


def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = input - target (F.huber_loss)."""
    delta = _positive("huber_loss", "delta", delta)
    x, t = _pair("huber_loss", input, target)
    a = ops.abs(x - t)
    loss = ops.where(a < delta, 0.5 * a * a, delta * (a - 0.5 * delta))
    return _reduce("huber_loss", loss, reduction)


def smooth_l1_loss(input, target, *, reduction="mean", beta=1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (F.smooth_l1_loss; beta = 0 is the L1
    loss). Equals huber_loss / beta."""
    beta = _positive("smooth_l1_loss", "beta", beta, allow_zero=True)
    x, t = _pair("smooth_l1_loss", input, target)
    a = ops.abs(x - t)
    if beta == 0:
        return _reduce("smooth_l1_loss", a, reduction)
    loss = ops.where(a < beta, (0.5 / beta) * a * a, a - 0.5 * beta)
    return _reduce("smooth_l1_loss", loss, reduction)


def kl_div(input, target, *, reduction="mean", log_target=False):
    """Pointwise KL divergence t (log t - input) for log-probabilities input, as F.kl_div (0 where
    t = 0); log_target=True takes log t as target: exp(t) (t - input). reduction "batchmean"
    divides the sum by the batch size (the true KL divergence per sample); "mean" by the number of
    elements, as PyTorch."""
    op = "kl_div"
    x, t = _pair(op, input, target)
    if log_target:
        loss = ops.exp(t) * (t - x)
    else:
        pos = t > 0
        # where t = 0 the term is 0 (t log t -> 0); the masked branch's log(0) gets a zero cotangent
        loss = ops.where(pos, t * (ops.log(ops.where(pos, t, 1.0)) - x), 0.0 * x)
    if reduction == "batchmean":
        return ops.sum(loss) / (x.shape[0] if x.ndim else 1)
    return _reduce(op, loss, reduction, extra=("batchmean",))
