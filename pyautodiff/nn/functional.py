"""Losses and activations as functions (PyTorch's torch.nn.functional, with NumPy's `axis`)."""
import numpy as np

from .. import ops
from .._capi import plain_array
from ..ops import relu, tanh, sigmoid, softmax, log_softmax
from ..tensor import Tensor, as_tensor, _gather
from . import _conv
from ._conv import (unfold, fold, conv1d, conv2d, conv_transpose2d, max_pool2d, avg_pool2d,
                    adaptive_avg_pool2d)

__all__ = ["cross_entropy", "mse_loss", "relu", "tanh", "sigmoid", "softmax", "log_softmax"] + _conv.__all__


def _labels(labels, n, n_classes):
    if isinstance(labels, Tensor):
        labels = labels.numpy()
    labels = plain_array(labels, "cross_entropy: labels")
    kind = labels.dtype.kind
    # float labels are class numbers held in a Tensor (tensors are floats); they stay floats until
    # every check has passed, because a cast first turns inf into -9223372036854775808
    if kind == "f" and not np.all(np.isfinite(labels)):
        raise ValueError(f"cross_entropy: label {labels[~np.isfinite(labels)][0]} is not a class index")
    if kind not in "iu" and not (kind == "f" and np.all(labels == np.round(labels))):
        raise TypeError(f"cross_entropy: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"cross_entropy: labels must have shape ({n},) to match logits with {n} rows, "
                         f"got {labels.shape}")
    bad = (labels < 0) | (labels >= n_classes)
    if np.any(bad):
        raise IndexError(f"cross_entropy: label {labels[bad][0]} is out of range for {n_classes} classes")
    return labels.astype(np.int64)


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer labels under softmax(logits), for logits of shape
    (N, C) and labels of shape (N,) with values in [0, C).

    Computed as -mean(log_softmax(logits)[i, labels[i]]): log_softmax is max-shifted, so large
    logits neither overflow nor give log(0); the picked entries are one gather, whose gradient
    scatters back to the label positions. The gradient w.r.t. logits is (softmax - onehot) / N."""
    logits = as_tensor(logits)
    shape = logits.shape
    if len(shape) != 2:
        raise ValueError(f"cross_entropy: logits must have shape (N, C), got {shape}")
    n, c = shape
    labels = _labels(labels, n, c)
    picked = _gather(log_softmax(logits, axis=1), np.arange(n, dtype=np.int64) * c + labels)
    return -ops.mean(picked)


def mse_loss(pred, target):
    """Mean of (pred - target)**2. Shapes must match exactly: a silent broadcast of (N, 1)
    against (N,) to (N, N) is a classic bug, so it is a ValueError here."""
    pred, target = as_tensor(pred), as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred has shape {pred.shape} but target has shape {target.shape}")
    d = pred - target
    return ops.mean(d * d)
