"""Normalization, embedding, dropout and one_hot as functions (PyTorch's F.layer_norm,
F.batch_norm, F.group_norm, F.embedding, F.dropout, F.one_hot). Each is a few public ops, so its
gradient (of any order) is what the core records for them."""
import numpy as np

from .. import creation, ops
from .._capi import int_arg, plain_array
from ..tensor import Tensor, _assign, _gather_blocks, as_tensor, no_grad, tensor

__all__ = ["layer_norm", "batch_norm", "group_norm", "embedding", "dropout", "one_hot"]


def _describe(t):
    return f"shape {t.shape} ({np.dtype(t.dtype).name})"


def _normalize(x, axes, eps):
    """(x - mean) / sqrt(var + eps) over axes, var biased (divided by the count), as PyTorch."""
    mean = ops.mean(x, axis=axes, keepdims=True)
    xc = x - mean
    var = ops.mean(xc * xc, axis=axes, keepdims=True)
    return xc * ((var + eps) ** -0.5)


def _eps(eps, op):
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be non-negative, got {eps}")
    return eps


def _affine(op, y, weight, bias, shape, view, scale=None):
    """y * scale * weight + bias, weight and bias of `shape` (or None) viewed as `view` to broadcast
    against y. A per-channel scale (batch norm's 1 / std) is multiplied into the weight first,
    so the full-size tensor sees one product instead of two: a pass less forward and backward."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(as_tensor(t).shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {_describe(as_tensor(t))}")
    if weight is not None:
        w = ops.reshape(as_tensor(weight), view)
        scale = w if scale is None else scale * w
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + ops.reshape(as_tensor(bias), view)
    return y


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing axes `normalized_shape` (an int or a tuple that must equal x's
    last dimensions): (x - mean) / sqrt(var + eps) * weight + bias, var biased, as F.layer_norm."""
    x = as_tensor(input)
    shape = (int_arg(normalized_shape, "layer_norm: normalized_shape"),) if not isinstance(
        normalized_shape, (tuple, list)) else tuple(int_arg(s, "layer_norm: normalized_shape") for s in normalized_shape)
    k = len(shape)
    if k == 0 or k > x.ndim or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"layer_norm: normalized_shape {shape} must be the trailing dimensions of the input, "
                         f"got input {_describe(x)}")
    axes = tuple(range(x.ndim - k, x.ndim))
    y = _normalize(x, axes, _eps(eps, "layer_norm"))
    return _affine("layer_norm", y, weight, bias, shape, shape)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization over every axis but the channel axis 1, as F.batch_norm: input (N, C),
    (N, C, L) or (N, C, H, W).

    training=True normalizes by the batch's mean and biased variance and, when the running
    tensors are given, updates them in place (recording nothing): running = (1 - momentum) *
    running + momentum * batch statistic, with the unbiased variance (n / (n - 1)) for
    running_var, as PyTorch. momentum=None gives the cumulative average, which needs the count of
    batches seen: pass num_batches_tracked (the BatchNorm modules do). training=False normalizes
    by the running statistics."""
    x = as_tensor(input)
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input must be (N, C, ...), got {_describe(x)}")
    c = x.shape[1]
    view = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    eps = _eps(eps, "batch_norm")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and (not isinstance(t, Tensor) or t.shape != (c,)):
            what = _describe(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"batch_norm: {name} must be a Tensor of shape ({c},) for input {_describe(x)}, got {what}")
    if training:
        count = x.size // c
        if count <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input "
                             f"{_describe(x)}")
        mean = ops.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        var = ops.mean(xc * xc, axis=axes, keepdims=True)
        if running_mean is not None or running_var is not None:
            _update_running(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation (training=False) needs running_mean and running_var")
        xc, var = x - ops.reshape(running_mean, view), ops.reshape(running_var, view)
    return _affine("batch_norm", xc, weight, bias, (c,), view, scale=(var + eps) ** -0.5)


def _update_running(running_mean, running_var, mean, var, count, momentum):
    """The running statistics' in-place step (momentum a float, or a 0 < factor <= 1 the modules
    pass for momentum=None)."""
    m = float(momentum)
    mean, var = mean.numpy().reshape(-1), var.numpy().reshape(-1)
    with no_grad():
        if running_mean is not None:
            _assign(running_mean, (1 - m) * running_mean.numpy() + m * mean)
        if running_var is not None:
            _assign(running_var, (1 - m) * running_var.numpy() + m * var * (count / (count - 1)))


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalize each sample's channels in num_groups groups (over the group's channels and every
    spatial position), then a per-channel weight and bias, as F.group_norm; input (N, C, ...)."""
    x = as_tensor(input)
    g = int_arg(num_groups, "group_norm: num_groups")
    if x.ndim < 2 or g < 1 or x.shape[1] % g:
        raise ValueError(f"group_norm: input (N, C, ...) with C divisible by num_groups={g}, got {_describe(x)}")
    n, c = x.shape[:2]
    y = _normalize(ops.reshape(x, (n, g, -1)), 2, _eps(eps, "group_norm"))
    y = ops.reshape(y, x.shape)
    return _affine("group_norm", y, weight, bias, (c,), (1, c) + (1,) * (x.ndim - 2))


def _indices(op, idx, limit=None, negative_ok=False):
    if isinstance(idx, Tensor):
        idx = idx.numpy()
    idx = plain_array(idx, f"{op}: indices")
    if idx.dtype.kind == "f":
        if not np.all(np.isfinite(idx)) or not np.all(idx == np.round(idx)):
            raise TypeError(f"{op}: indices must be integers, got non-integral values of dtype {idx.dtype}")
    elif idx.dtype.kind not in "iub":
        raise TypeError(f"{op}: indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if limit is not None and idx.size:
        bad = (idx < 0) | (idx >= limit)
        if np.any(bad):
            raise IndexError(f"{op}: index {idx[bad][0]} is out of range for {limit} entries")
    return idx


def _renorm_rows(w, idx, max_norm, norm_type):
    """embedding's max_norm, PyTorch's embedding_renorm_: each distinct row of w that idx looks up
    whose norm_type-norm exceeds max_norm is scaled, in place and unrecorded (no_grad), by
    max_norm / (norm + 1e-7); w's version is bumped, as by any in-place write."""
    rows = np.unique(idx)
    if not rows.size:
        return
    dt = np.dtype(w.dtype)
    vals = w.numpy()[rows]
    norms = np.linalg.norm(vals, ord=norm_type, axis=1)
    big = norms > max_norm
    if big.any():
        scale = (max_norm / (norms[big].astype(np.float64) + 1e-7)).astype(dt)
        with no_grad():
            w[rows[big]] = vals[big] * scale[:, None]


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0):
    """Rows of weight (num_embeddings, dim) at the integer indices `input` (any shape; output
    input.shape + (dim,)), as F.embedding: one gather of whole rows, whose gradient scatter-adds
    into the rows used (repeats accumulate). padding_idx: that row gets no gradient. max_norm:
    first, as PyTorch, every looked-up row whose norm_type-norm is above max_norm is rescaled in
    place to norm max_norm (weight must then be a Tensor; the rescaling is not differentiated)."""
    if max_norm is not None and not isinstance(weight, Tensor):
        raise TypeError(f"embedding: max_norm rescales weight's rows in place, so weight must be a Tensor, "
                        f"got {type(weight).__name__}")
    w = as_tensor(weight)
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be (num_embeddings, embedding_dim), got {_describe(w)}")
    num, dim = w.shape
    idx = _indices("embedding", input, num)
    if max_norm is not None:
        _renorm_rows(w, idx, float(max_norm), float(norm_type))
    out = _gather_blocks(w, idx.reshape(-1) * dim, idx.shape + (dim,), dim)
    if padding_idx is not None:
        p = int_arg(padding_idx, "embedding: padding_idx")
        p = p + num if p < 0 else p
        if not 0 <= p < num:
            raise ValueError(f"embedding: padding_idx {padding_idx} is out of range for {num} embeddings")
        mask = idx == p
        if mask.any():
            # the padding row's value, as a constant: no gradient reaches weight[padding_idx]
            out = ops.where(mask[..., None], w.detach()[p], out)
    return out


def dropout(input, p=0.5, training=True, inplace=False, *, generator=None):
    """Zero each element with probability p and scale the rest by 1 / (1 - p), as F.dropout;
    identity when training is False or p is 0.

    The mask is keep = generator.random(x.shape) >= p (float64 uniforms), generator a
    numpy.random.Generator, by default the one ad.manual_seed seeds: the same seed gives the same
    mask. The output is x * (keep / (1 - p)), a product with a constant, so the gradient is masked
    and scaled identically. inplace=True multiplies input itself (input.mul_, so PyTorch's in-place
    rules apply: unrecorded under no_grad, a leaf that requires grad refuses, any other tensor
    rebinds to the recorded product) and returns it."""
    if inplace and not isinstance(input, Tensor):
        raise TypeError(f"dropout: inplace=True needs a Tensor input, got {type(input).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = as_tensor(input)
    if not training or p == 0.0:
        return x
    rng = generator if generator is not None else creation._rng
    if p == 1.0:
        scale = np.zeros(x.shape, np.dtype(x.dtype))
    else:
        scale = ((rng.random(x.shape) >= p) * (1.0 / (1.0 - p))).astype(np.dtype(x.dtype))
    return x.mul_(scale) if inplace else x * scale


def one_hot(tensor_, num_classes=-1, dtype=None):
    """Class indices (any shape, integers) as one-hot rows, shape input.shape + (num_classes,),
    as F.one_hot; num_classes=-1 takes max + 1. A constant float Tensor (float64 unless dtype is
    given), ready to multiply log-probabilities, where PyTorch returns int64."""
    idx = _indices("one_hot", tensor_)
    k = int_arg(num_classes, "one_hot: num_classes")
    if k == -1:
        k = int(idx.max()) + 1 if idx.size else 0
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        bad = idx[(idx < 0) | (idx >= k)][0]
        raise IndexError(f"one_hot: class {bad} is out of range for num_classes={k}")
    out = np.zeros(idx.shape + (k,), dtype or np.float64)
    np.put_along_axis(out, idx[..., None], 1, axis=-1)
    return tensor(out, dtype=dtype)
