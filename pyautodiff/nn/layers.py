"""Layers with PyTorch's class names, weight layouts, buffers and default initialisation, so a
state dict has the same keys and shapes as PyTorch's for the same module. Each forward is the
function of the same name in nn.functional.

Random initialisation, as Linear's: every layer takes seed=None (numpy.random.default_rng(seed),
so a given seed always gives the same layer) and dtype=None (float64; float32 for
single-precision models)."""
import math

import numpy as np

from .. import ops
from .._capi import int_arg
from ..shape_ops import pad
from ..tensor import _assign, as_tensor, tensor
from . import functional as F
from .modules import Module
from .parameter import Parameter

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten",
           "LayerNorm", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "Embedding", "Dropout", "Identity", "GELU", "SiLU",
           "LeakyReLU", "ELU", "Softplus", "Hardtanh", "CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss",
           "BCELoss", "NLLLoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "KLDivLoss"]


def _dtype(dtype):
    return np.dtype(dtype or np.float64)


def _uniform(rng, bound, shape, dtype):
    return Parameter(rng.uniform(-bound, bound, shape), dtype=_dtype(dtype))


def _tuple(v, n, what):
    if isinstance(v, (tuple, list)):
        if len(v) != n:
            raise ValueError(f"{what} must be an int or {n} ints, got {v!r}")
        return tuple(int_arg(e, what) for e in v)
    return (int_arg(v, what),) * n


# PyTorch's padding modes as ad.pad's (NumPy's) names
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class _ConvNd(Module):
    """Weight (out, in / groups, *kernel) for a convolution, (in, out / groups, *kernel) for a
    transposed one; PyTorch's default initialisation kaiming_uniform_(a=sqrt(5)), i.e. U(-k, k)
    with k = 1 / sqrt(fan_in), fan_in = weight.shape[1] * prod(kernel), and the bias U(-k, k)."""

    _n = 2
    _transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", seed=None, dtype=None):
        name = type(self).__name__
        in_channels, out_channels = int_arg(in_channels, f"{name}: in_channels"), int_arg(out_channels,
                                                                                           f"{name}: out_channels")
        groups = int_arg(groups, f"{name}: groups")
        if in_channels < 1 or out_channels < 1 or groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"positive and divisible by groups ({groups})")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"{name}: padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', "
                             f"got {padding_mode!r}")
        if self._transposed and padding_mode != "zeros":
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got {padding_mode!r} (as PyTorch)")
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, self._n, f"{name}: kernel_size")
        self.stride = _tuple(stride, self._n, f"{name}: stride")
        self.padding = padding if isinstance(padding, str) else _tuple(padding, self._n, f"{name}: padding")
        self.dilation = _tuple(dilation, self._n, f"{name}: dilation")
        if padding == "same" and self.stride != (1,) * self._n:
            raise ValueError(f"{name}: padding='same' needs stride 1, got stride {self.stride}")
        if self._transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        k = 1.0 / math.sqrt(shape[1] * int(np.prod(self.kernel_size)))
        rng = np.random.default_rng(seed)
        self.weight = _uniform(rng, k, shape, dtype)
        self.bias = _uniform(rng, k, out_channels, dtype) if bias else None

    def extra_repr(self):
        mode = "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode!r}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
                f"{mode}")

    def _padded(self, x):
        """(input, padding for the conv): padding_mode 'zeros' leaves both to the conv; the other
        modes pad the input first with ad.pad, as PyTorch's modules do with F.pad, and convolve
        without padding. 'same' pads d * (k - 1) in all, the odd one on the right, as PyTorch."""
        if self.padding_mode == "zeros":
            return x, self.padding if isinstance(self.padding, str) or self._n == 2 else self.padding[0]
        name = type(self).__name__
        if self.padding == "valid":
            pads = ((0, 0),) * self._n
        elif self.padding == "same":
            pads = tuple((t // 2, t - t // 2) for t in (d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)))
        else:
            pads = tuple((p, p) for p in self.padding)
        x = as_tensor(x)
        spatial = x.shape[x.ndim - self._n:]
        for size, (lo, hi) in zip(spatial, pads):
            # PyTorch's limits: a reflection stays inside the axis, a wrap goes around at most once
            if (self.padding_mode == "reflect" and max(lo, hi) >= size) or \
                    (self.padding_mode == "circular" and max(lo, hi) > size) or (size == 0 and lo + hi):
                raise ValueError(f"{name}: padding {pads} in mode {self.padding_mode!r} does not fit the input of "
                                 f"shape {x.shape}: reflect needs padding < size, circular padding <= size")
        if any(lo or hi for lo, hi in pads):
            x = pad(x, ((0, 0),) * (x.ndim - self._n) + pads, mode=_PAD_MODES[self.padding_mode])
        return x, 0


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L): F.conv1d with weight (out, in / groups, k)."""
    _n = 1

    def forward(self, x):
        x, padding = self._padded(x)
        return F.conv1d(x, self.weight, self.bias, self.stride[0], padding, self.dilation[0], self.groups)


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W): F.conv2d with weight (out, in / groups, kh, kw)."""

    def forward(self, x):
        x, padding = self._padded(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution: F.conv_transpose2d with weight (in, out / groups, kh, kw)."""
    _transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", seed=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, seed, dtype)
        self.output_padding = _tuple(output_padding, 2, "ConvTranspose2d: output_padding")

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    """Axes start_dim..end_dim merged into one (default: all but the batch axis)."""

    def __init__(self, start_dim=1, end_dim=-1):
        self.start_dim, self.end_dim = int_arg(start_dim, "Flatten: start_dim"), int_arg(end_dim, "Flatten: end_dim")

    def forward(self, x):
        shape = x.shape
        nd = len(shape)
        if not (-nd <= self.start_dim < nd and -nd <= self.end_dim < nd) or \
                self.start_dim % nd > self.end_dim % nd:
            raise ValueError(f"Flatten: start_dim {self.start_dim} and end_dim {self.end_dim} do not fit a "
                             f"tensor of shape {shape}")
        s, e = self.start_dim % nd, self.end_dim % nd
        return ops.reshape(x, shape[:s] + (-1 if 0 not in shape[s:e + 1] else 0,) + shape[e + 1:])


class LayerNorm(Module):
    """F.layer_norm over the trailing normalized_shape; weight ones and bias zeros of that shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=None):
        shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
        self.normalized_shape = tuple(int_arg(s, "LayerNorm: normalized_shape") for s in shape)
        self.eps = float(eps)
        dt = _dtype(dtype)
        self.weight = Parameter(np.ones(self.normalized_shape), dtype=dt) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape), dtype=dt) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class _BatchNorm(Module):
    """weight ones, bias zeros (affine); buffers running_mean zeros, running_var ones and
    num_batches_tracked (a 0-d count, float here where PyTorch's is int64). train(): batch
    statistics, running ones updated with `momentum` (None: the cumulative average over the
    batches seen); eval(): the running statistics (batch ones without track_running_stats)."""

    _dims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, dtype=None):
        c = int_arg(num_features, f"{type(self).__name__}: num_features")
        self.num_features, self.eps, self.momentum = c, float(eps), momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dt = _dtype(dtype)
        self.weight = Parameter(np.ones(c), dtype=dt) if affine else None
        self.bias = Parameter(np.zeros(c), dtype=dt) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", tensor(np.zeros(c), dtype=dt))
            self.register_buffer("running_var", tensor(np.ones(c), dtype=dt))
            self.register_buffer("num_batches_tracked", tensor(0.0))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x):
        if x.ndim not in self._dims:
            raise ValueError(f"{type(self).__name__}: expected a {' or '.join(f'{d}-D' for d in self._dims)} input, "
                             f"got shape {x.shape}")
        use_batch = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            count = float(self.num_batches_tracked.item()) + 1
            _assign(self.num_batches_tracked, count)
            if self.momentum is None:
                momentum = 1.0 / count
        # the running buffers are None without track_running_stats
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch, momentum,
                            self.eps)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""
    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""
    _dims = (4,)


class GroupNorm(Module):
    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=None):
        self.num_groups, self.num_channels = int_arg(num_groups, "GroupNorm: num_groups"), int_arg(
            num_channels, "GroupNorm: num_channels")
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({self.num_channels}) must be divisible by num_groups "
                             f"({self.num_groups})")
        self.eps = float(eps)
        dt = _dtype(dtype)
        self.weight = Parameter(np.ones(self.num_channels), dtype=dt) if affine else None
        self.bias = Parameter(np.zeros(self.num_channels), dtype=dt) if affine else None

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class Embedding(Module):
    """weight (num_embeddings, embedding_dim) drawn from N(0, 1) (PyTorch's default), the
    padding_idx row zero (and it gets no gradient); max_norm and norm_type as F.embedding (the
    looked-up rows of weight renormalised in place at each forward)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0, seed=None,
                 dtype=None):
        self.num_embeddings = int_arg(num_embeddings, "Embedding: num_embeddings")
        self.embedding_dim = int_arg(embedding_dim, "Embedding: embedding_dim")
        w = np.random.default_rng(seed).standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            padding_idx = int_arg(padding_idx, "Embedding: padding_idx")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is out of range for "
                                 f"{self.num_embeddings} embeddings")
            padding_idx %= self.num_embeddings
            w[padding_idx] = 0
        self.padding_idx = padding_idx
        self.max_norm, self.norm_type = None if max_norm is None else float(max_norm), float(norm_type)
        self.weight = Parameter(w, dtype=_dtype(dtype))

    def forward(self, indices):
        return F.embedding(indices, self.weight, self.padding_idx, self.max_norm, self.norm_type)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """F.dropout while training, the identity in eval mode. seed gives the layer its own
    generator (reproducible masks); without one it draws from the generator ad.manual_seed seeds."""

    def __init__(self, p=0.5, inplace=False, seed=None):
        self.p, self.inplace = float(p), bool(inplace)
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {self.p}")
        self.generator = None if seed is None else np.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.inplace, generator=self.generator)

    def extra_repr(self):
        return f"p={self.p}"


class Identity(Module):
    def __init__(self, *args, **kwargs):
        pass

    def forward(self, x):
        return x


class GELU(Module):
    def __init__(self, approximate="none"):
        self.approximate = approximate

    def forward(self, x):
        return ops.gelu(x, approximate=self.approximate)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)


class ELU(Module):
    def __init__(self, alpha=1.0):
        self.alpha = float(alpha)

    def forward(self, x):
        return F.elu(x, self.alpha)


class Softplus(Module):
    """softplus(beta x) / beta, and x itself where beta x > threshold (PyTorch's linear region)."""

    def __init__(self, beta=1.0, threshold=20.0):
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x):
        y = F.softplus(x * self.beta) / self.beta if self.beta != 1.0 else F.softplus(x)
        return ops.where(x * self.beta > self.threshold, x, y)


class Hardtanh(Module):
    def __init__(self, min_val=-1.0, max_val=1.0):
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)


# ---- losses: the function of the same name with the options fixed; weights are buffers ----

class _Loss(Module):
    def __init__(self, reduction="mean"):
        self.reduction = reduction


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else tensor(weight))


class CrossEntropyLoss(_WeightedLoss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(weight, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(weight, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(_WeightedLoss):
    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(weight, reduction)
        self.register_buffer("pos_weight", None if pos_weight is None else tensor(pos_weight))

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class MSELoss(_Loss):
    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class HuberLoss(_Loss):
    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction)
        self.delta = delta

    def forward(self, input, target):
        return F.huber_loss(input, target, self.reduction, self.delta)


class SmoothL1Loss(_Loss):
    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction)
        self.beta = beta

    def forward(self, input, target):
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class KLDivLoss(_Loss):
    def __init__(self, reduction="mean", log_target=False):
        super().__init__(reduction)
        self.log_target = log_target

    def forward(self, input, target):
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
