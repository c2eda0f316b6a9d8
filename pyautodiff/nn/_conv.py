"""Convolution and pooling as functions (PyTorch's F.unfold, F.fold, F.conv1d, F.conv2d,
F.conv_transpose2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d), NCHW.

Two C ops carry all of it (csrc/kernels/conv.c): unfold (im2col) and its adjoint fold (col2im). A
convolution is unfold and one matmul on BLAS; its gradient is a matmul and a fold; a transposed
convolution is a matmul and a fold. Pooling reads the same windows and reduces them with max or
mean (or, where the windows tile the image, a reshape and the reduction, with no copy of windows)."""
import numpy as np

from .. import ops
from ..shape_ops import pad
from .._capi import _call, ffi, int_arg, lib
from ..tensor import Tensor, as_tensor, full

__all__ = ["unfold", "fold", "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d",
           "adaptive_avg_pool2d"]


def _pair(v, what, low):
    """An int or a pair of ints, each at least `low`."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
        v = tuple(int_arg(e, what) for e in v)
    else:
        v = (int_arg(v, what),) * 2
    if min(v) < low:
        raise ValueError(f"{what} must be {'positive' if low else 'non-negative'}, got {v}")
    return v


def _single(v, what, low):
    """conv1d's parameters: an int or a 1-tuple."""
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{what} must be an int or a 1-tuple, got {v!r}")
        v = v[0]
    v = int_arg(v, what)
    if v < low:
        raise ValueError(f"{what} must be {'positive' if low else 'non-negative'}, got {v}")
    return v


def _c2(p):
    return ffi.new("int64_t[2]", p)


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """The sliding windows of input (N, C, H, W) as columns (N, C*kh*kw, L), PyTorch's F.unfold:
    row (c, i, j) of column (r, s) is input[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw], zero in the
    padding; L = OH * OW windows in row-major order. Linear; its gradient is fold."""
    k, d = _pair(kernel_size, "unfold: kernel_size", 1), _pair(dilation, "unfold: dilation", 1)
    p, s = _pair(padding, "unfold: padding", 0), _pair(stride, "unfold: stride", 1)
    x = as_tensor(input)
    return _call(lib.ad_unfold, x._h, _c2(k), _c2(s), _c2(p), _c2(d))


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """The adjoint of unfold, PyTorch's F.fold: columns (N, C*kh*kw, L) summed back into an image
    (N, C, *output_size), overlapping windows adding up. Linear; its gradient is unfold."""
    o = _pair(output_size, "fold: output_size", 0)
    k, d = _pair(kernel_size, "fold: kernel_size", 1), _pair(dilation, "fold: dilation", 1)
    p, s = _pair(padding, "fold: padding", 0), _pair(stride, "fold: stride", 1)
    x = as_tensor(input)
    return _call(lib.ad_fold, x._h, _c2(o), _c2(k), _c2(s), _c2(p), _c2(d))


def _describe(t):
    return f"shape {t.shape} ({np.dtype(t.dtype).name})"


def _batched(op, x, spatial):
    """x with a batch axis (PyTorch accepts one unbatched sample), and whether one was added."""
    x = as_tensor(x)
    if x.ndim == spatial + 1:
        return ops.reshape(x, (1,) + x.shape), True
    if x.ndim != spatial + 2:
        dims = "(N, C, L)" if spatial == 1 else "(N, C, H, W)"
        raise ValueError(f"{op}: input must be {dims} or without the batch axis, got {_describe(x)}")
    return x, False


def _same_padding(op, k, d):
    """'same': d * (k - 1) zeros in all per axis, half on each side; an odd one more goes on the
    right (bottom), as PyTorch; that extra one _conv pads itself."""
    return tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))


def _conv_padding(op, padding, k, s, d):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if s != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {s}")
            return _same_padding(op, k, d)
        raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return _pair(padding, f"{op}: padding", 0)


def _conv(op, x, weight, bias, stride, padding, dilation, groups):
    """conv2d on a batched 4-D input, weight (O, C/groups, kh, kw): one conv2d op (groups 1, one
    dtype), otherwise unfold, then per group one (O/groups, C/groups*kh*kw) @ (C/groups*kh*kw, L)
    matmul for every sample (a mixed-dtype pair promotes in the matmul)."""
    w = as_tensor(weight)
    groups = int_arg(groups, f"{op}: groups")
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be (out_channels, in_channels / groups, kh, kw), got {_describe(w)}")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if groups < 1 or c % groups or o % groups or cg * groups != c:
        raise ValueError(f"{op}: input {_describe(x)} and weight {_describe(w)} do not fit groups={groups}: "
                         f"in_channels ({c}) must equal weight.shape[1] * groups and out_channels ({o}) "
                         f"must be divisible by groups")
    s, d = _pair(stride, f"{op}: stride", 1), _pair(dilation, f"{op}: dilation", 1)
    p = _conv_padding(op, padding, (kh, kw), s, d)
    if isinstance(padding, str) and padding == "same" and (d[0] * (kh - 1) % 2 or d[1] * (kw - 1) % 2):
        x = pad(x, ((0, 0), (0, 0), (0, d[0] * (kh - 1) % 2), (0, d[1] * (kw - 1) % 2)))
        n, c, h, wd = x.shape
    if h + 2 * p[0] < d[0] * (kh - 1) + 1 or wd + 2 * p[1] < d[1] * (kw - 1) + 1:
        raise ValueError(f"{op}: kernel ({kh}, {kw}) with dilation {d} is larger than the padded input "
                         f"({h + 2 * p[0]}, {wd + 2 * p[1]}) (input {_describe(x)}, padding {p})")
    if groups == 1 and x.dtype == w.dtype:
        # one op, one sample's columns at a time (csrc/kernels/conv2d.c)
        return _add_bias(op, _call(lib.ad_conv2d, x._h, w._h, _c2(s), _c2(p), _c2(d)), bias, o)
    oh, ow = _out_size(h, kh, s[0], p[0], d[0]), _out_size(wd, kw, s[1], p[1], d[1])
    cols = unfold(x, (kh, kw), d, p, s)                      # (N, C*kh*kw, L)
    if groups == 1:
        y = ops.matmul(ops.reshape(w, (o, cg * kh * kw)), cols)                    # (N, O, L)
    else:
        cols = ops.reshape(cols, (n, groups, cg * kh * kw, oh * ow))
        y = ops.matmul(ops.reshape(w, (groups, o // groups, cg * kh * kw)), cols)  # (N, G, O/G, L)
    return _add_bias(op, ops.reshape(y, (n, o, oh, ow)), bias, o)


def _add_bias(op, y, bias, o):
    if bias is None:
        return y
    b = as_tensor(bias)
    if b.shape != (o,):
        raise ValueError(f"{op}: bias must have shape ({o},), got {_describe(b)}")
    return y + ops.reshape(b, (1, o, 1, 1))


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, PyTorch's F.conv2d: input (N, C, H, W) (or (C, H, W)), weight
    (O, C/groups, kh, kw), bias (O,) or None; stride, padding (int, pair, 'valid' or 'same'),
    dilation as ints or pairs. Output (N, O, OH, OW), OH = (H + 2p - d(kh - 1) - 1) // s + 1.
    Computed as unfold and a matmul on BLAS; differentiable to any order."""
    x, unbatched = _batched("conv2d", input, 2)
    y = _conv("conv2d", x, weight, bias, stride, padding, dilation, groups)
    return ops.reshape(y, y.shape[1:]) if unbatched else y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation, PyTorch's F.conv1d: input (N, C, L) (or (C, L)), weight
    (O, C/groups, k); run as conv2d on a height-1 image."""
    x, unbatched = _batched("conv1d", input, 1)
    w = as_tensor(weight)
    if w.ndim != 3:
        raise ValueError(f"conv1d: weight must be (out_channels, in_channels / groups, k), got {_describe(w)}")
    s, d = _single(stride, "conv1d: stride", 1), _single(dilation, "conv1d: dilation", 1)
    p = padding if isinstance(padding, str) else (0, _single(padding, "conv1d: padding", 0))
    n, c, length = x.shape
    y = _conv("conv1d", ops.reshape(x, (n, c, 1, length)), ops.reshape(w, w.shape[:2] + (1, w.shape[2])), bias,
              (1, s), p, (1, d), groups)
    y = ops.reshape(y, (n, y.shape[1], y.shape[3]))
    return ops.reshape(y, y.shape[1:]) if unbatched else y


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The transpose (adjoint) of conv2d, PyTorch's F.conv_transpose2d: input (N, C, H, W), weight
    (C, O/groups, kh, kw), output (N, O, OH, OW) with OH = (H - 1) s - 2p + d (kh - 1) +
    output_padding + 1. Per group one (O/groups*kh*kw, C/groups) @ (C/groups, H*W) matmul per sample,
    then fold sums the overlapping windows. output_padding must be smaller than the stride."""
    op = "conv_transpose2d"
    x, unbatched = _batched(op, input, 2)
    w = as_tensor(weight)
    groups = int_arg(groups, f"{op}: groups")
    if w.ndim != 4:
        raise ValueError(f"{op}: weight must be (in_channels, out_channels / groups, kh, kw), got {_describe(w)}")
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    if groups < 1 or ci != c or c % groups:
        raise ValueError(f"{op}: input {_describe(x)} and weight {_describe(w)} do not fit groups={groups}: "
                         f"weight.shape[0] must equal in_channels ({c}), divisible by groups")
    s, d = _pair(stride, f"{op}: stride", 1), _pair(dilation, f"{op}: dilation", 1)
    p, op_ = _pair(padding, f"{op}: padding", 0), _pair(output_padding, f"{op}: output_padding", 0)
    if op_[0] >= s[0] or op_[1] >= s[1]:
        raise ValueError(f"{op}: output_padding {op_} must be smaller than the stride {s}")
    out_hw = tuple((size - 1) * si - 2 * pi + di * (ki - 1) + opi + 1
                   for size, si, pi, di, ki, opi in zip((h, wd), s, p, d, (kh, kw), op_))
    if min(out_hw) < 1:
        raise ValueError(f"{op}: the output size {out_hw} of input {_describe(x)} is not positive "
                         f"(stride {s}, padding {p}, dilation {d}, kernel ({kh}, {kw}))")
    o = og * groups
    k = og * kh * kw
    if groups == 1:
        cols = ops.matmul(ops.transpose(ops.reshape(w, (c, k))), ops.reshape(x, (n, c, h * wd)))   # (N, O*kh*kw, HW)
    else:
        wg = ops.transpose(ops.reshape(w, (groups, c // groups, k)), (0, 2, 1))                     # (G, k, C/G)
        cols = ops.matmul(wg, ops.reshape(x, (n, groups, c // groups, h * wd)))                    # (N, G, k, HW)
        cols = ops.reshape(cols, (n, o * kh * kw, h * wd))
    y = _add_bias(op, fold(cols, out_hw, (kh, kw), d, p, s), bias, o)
    return ops.reshape(y, y.shape[1:]) if unbatched else y


# ---- pooling ----

def _pool_out(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size: floor, or with ceil_mode the ceiling, of the window count,
    where a last window that would start past the input and its left padding is dropped."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_args(op, x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """kernel, stride, padding, dilation, the output size (oh, ow), and the extra rows and columns
    (eh, ew) past the bottom and right padding that ceil_mode's last windows reach (PyTorch lets
    those windows hang over the edge and ignores the part outside)."""
    k = _pair(kernel_size, f"{op}: kernel_size", 1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride, f"{op}: stride", 1)
    p, d = _pair(padding, f"{op}: padding", 0), _pair(dilation, f"{op}: dilation", 1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding {p} must be at most half of kernel_size {k}")
    h, w = x.shape[2:]
    if h + 2 * p[0] < d[0] * (k[0] - 1) + 1 or w + 2 * p[1] < d[1] * (k[1] - 1) + 1:
        raise ValueError(f"{op}: kernel_size {k} with dilation {d} is larger than the padded input "
                         f"({h + 2 * p[0]}, {w + 2 * p[1]}) (input {_describe(x)})")
    oh, ow = (_pool_out(size, *a, ceil_mode) for size, a in zip((h, w), zip(k, s, p, d)))
    eh, ew = (max(0, (o - 1) * si + di * (ki - 1) + 1 - (size + 2 * pi))
              for o, size, ki, si, pi, di in zip((oh, ow), (h, w), k, s, p, d))
    return k, s, p, d, oh, ow, (eh, ew)


def _tiles(x, k, s, p, d, oh, ow):
    """x cut into (N, C, OH, kh, OW, kw) when the windows tile it (stride == kernel, no padding or
    dilation): a slice and a reshape, no copy of windows."""
    if s != k or p != (0, 0) or d != (1, 1):
        return None
    n, c, h, w = x.shape
    if (h, w) != (oh * k[0], ow * k[1]):
        x = x[:, :, :oh * k[0], :ow * k[1]]
    return ops.reshape(x, (n, c, oh, k[0], ow, k[1]))


def _pad_with(x, p, value, extra=(0, 0)):
    """x with p[0] rows and p[1] columns of `value` on both sides, and extra[0] more rows at the
    bottom and extra[1] more columns at the right (ceil_mode's overhanging windows): max pooling
    pads with -inf, where unfold's own padding is zeros."""
    n, c, h, w = x.shape
    if p[1] or extra[1]:
        x = ops.concatenate([full((n, c, h, p[1]), value, dtype=x.dtype), x,
                             full((n, c, h, p[1] + extra[1]), value, dtype=x.dtype)], axis=3)
    w = x.shape[3]
    if p[0] or extra[0]:
        x = ops.concatenate([full((n, c, p[0], w), value, dtype=x.dtype), x,
                             full((n, c, p[0] + extra[0], w), value, dtype=x.dtype)], axis=2)
    return x


def _windows(x, k, s, p, d, oh, ow):
    """(N, C, kh*kw, L) windows of x zero-padded by p."""
    n, c = x.shape[:2]
    return ops.reshape(unfold(x, k, d, p, s), (n, c, k[0] * k[1], oh * ow))


def _first_max_indices(x, k, s, p, d, oh, ow, extra):
    """return_indices: for each window, the flat position h * W + w in its (H, W) plane of the
    window's first maximum in row-major window order (PyTorch's choice among ties), an int64 NumPy
    array of the output's shape; padding, -inf, never wins."""
    xv = x.numpy()
    h, w = xv.shape[2:]
    xp = np.pad(xv, ((0, 0), (0, 0), (p[0], p[0] + extra[0]), (p[1], p[1] + extra[1])), constant_values=-np.inf)
    rows = (np.arange(oh) * s[0])[:, None] + np.arange(k[0]) * d[0]       # (oh, kh) rows of xp
    cols = (np.arange(ow) * s[1])[:, None] + np.arange(k[1]) * d[1]       # (ow, kw) columns of xp
    win = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]        # (N, C, oh, ow, kh, kw)
    i, j = np.divmod(np.argmax(win.reshape(win.shape[:4] + (-1,)), axis=-1), k[1])
    r = (np.arange(oh) * s[0] - p[0])[:, None] + i * d[0]
    q = (np.arange(ow) * s[1] - p[1])[None, :] + j * d[1]
    return (r * w + q).astype(np.int64)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Maximum over each window, PyTorch's F.max_pool2d (input (N, C, H, W) or (C, H, W); stride
    defaults to kernel_size; padding, at most half the kernel, never wins: it is -inf).
    ceil_mode=True rounds the output size up, as PyTorch: the last windows may hang over the bottom
    and right edges (the part outside is ignored) but start inside the input or its left padding.
    return_indices=True returns (output, indices), indices PyTorch's: an int64 NumPy array of the
    output's shape holding, for each window, the flat position h * W + w of its maximum in its
    (H, W) plane (the first in row-major window order among ties).

    Ties: the gradient of a window's maximum is split equally between its tied elements (the rule
    of ad.max), where PyTorch gives all of it to the one its indices name; both are valid
    subgradients. A tensor element in several overlapping windows gets the sum of its shares."""
    x, unbatched = _batched("max_pool2d", input, 2)
    k, s, p, d, oh, ow, extra = _pool_args("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
    n, c = x.shape[:2]
    tiles = _tiles(x, k, s, p, d, oh, ow) if extra == (0, 0) else None
    if tiles is not None:
        y = ops.max(tiles, axis=(3, 5))
    else:
        y = ops.reshape(ops.max(_windows(_pad_with(x, p, -np.inf, extra), k, s, 0, d, oh, ow), axis=2),
                        (n, c, oh, ow))
    if unbatched:
        y = ops.reshape(y, y.shape[1:])
    if not return_indices:
        return y
    idx = _first_max_indices(x, k, s, p, d, oh, ow, extra)
    return y, (idx[0] if unbatched else idx)


def _window_counts(size, o, k, s, p, count_include_pad):
    """avg_pool2d's divisor along one axis, PyTorch's: each window's length clipped to the padded
    input (ceil_mode's overhang does not count), or to the input itself without count_include_pad."""
    start = np.arange(o) * s - p
    if count_include_pad:
        return np.minimum(start + k, size + p) - start
    return np.minimum(start + k, size) - np.maximum(start, 0)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """Mean over each window, PyTorch's F.avg_pool2d (zero padding, at most half the kernel;
    count_include_pad=False divides by the number of real elements in the window instead of
    kh*kw; divisor_override divides by that number). ceil_mode=True rounds the output size up as
    in max_pool2d; an overhanging window divides by its part inside the padded input (or, without
    count_include_pad, inside the input), as PyTorch."""
    x, unbatched = _batched("avg_pool2d", input, 2)
    k, s, p, d, oh, ow, extra = _pool_args("avg_pool2d", x, kernel_size, stride, padding, 1, ceil_mode)
    n, c, h, w = x.shape
    tiles = _tiles(x, k, s, p, d, oh, ow) if extra == (0, 0) else None
    if divisor_override is not None:
        divisor_override = int_arg(divisor_override, "avg_pool2d: divisor_override")
        if divisor_override == 0:
            raise ValueError("avg_pool2d: divisor_override must not be 0")
    if tiles is not None:
        total = ops.sum(tiles, axis=(3, 5))
    elif extra == (0, 0):
        total = ops.reshape(ops.sum(_windows(x, k, s, p, d, oh, ow), axis=2), (n, c, oh, ow))
    else:
        total = ops.reshape(ops.sum(_windows(_pad_with(x, p, 0.0, extra), k, s, 0, d, oh, ow), axis=2),
                            (n, c, oh, ow))
    if divisor_override is not None:
        y = total / float(divisor_override)
    else:
        # the windows' divisors: a row count times a column count
        div = np.outer(_window_counts(h, oh, k[0], s[0], p[0], count_include_pad),
                       _window_counts(w, ow, k[1], s[1], p[1], count_include_pad))
        y = total / float(k[0] * k[1]) if (div == k[0] * k[1]).all() else total / div.astype(np.dtype(x.dtype))
    return ops.reshape(y, y.shape[1:]) if unbatched else y


def _adaptive_matrix(size, out, dtype):
    """(out, size): row i averages input[floor(i*size/out) : ceil((i+1)*size/out)] (PyTorch's bins)."""
    m = np.zeros((out, size), dtype)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool2d(input, output_size):
    """Mean over PyTorch's adaptive bins, F.adaptive_avg_pool2d: output (N, C, *output_size) (an
    int or a pair; None keeps that axis). Bins that tile the input are a reshape and a mean;
    otherwise the bins' means are two small averaging matmuls, P_h @ x @ P_w.T (a mean over a
    rectangle is separable), exact for any bins, overlapping or not."""
    x, unbatched = _batched("adaptive_avg_pool2d", input, 2)
    n, c, h, w = x.shape
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(size if o is None else o for o, size in zip(output_size, (h, w)))
    oh, ow = _pair(output_size, "adaptive_avg_pool2d: output_size", 1)
    if h == 0 or w == 0:
        raise ValueError(f"adaptive_avg_pool2d: input {_describe(x)} has an empty spatial axis")
    if h % oh == 0 and w % ow == 0:
        y = ops.mean(ops.reshape(x, (n, c, oh, h // oh, ow, w // ow)), axis=(3, 5))
    else:
        dt = np.dtype(x.dtype)
        y = ops.matmul(ops.matmul(_adaptive_matrix(h, oh, dt), x), _adaptive_matrix(w, ow, dt).T)
    return ops.reshape(y, y.shape[1:]) if unbatched else y
