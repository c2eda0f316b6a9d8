"""unfold (im2col) and fold (col2im), PyTorch's F.unfold / F.fold layout, by direct loops over the
kernel offsets: column row (c, i, j) at window (r, s) holds x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw]
(zero in the padding). fold adds every entry back where unfold took it from, so the two are each
other's adjoint; both are linear, so each one's JVP is itself.

Parameters (all pairs of ints): ``unfold(x, kernel_size, stride, padding, dilation)``,
``fold(x, output_size, kernel_size, stride, padding, dilation)``.
"""
import numpy as np

from ._core import ref_op

OPS = {}


def _windows(h, w, kernel_size, stride, padding, dilation):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"unfold: kernel {kernel_size} with dilation {dilation} does not fit the padded image "
                         f"({h + 2 * ph}, {w + 2 * pw})")
    return oh, ow


def unfold_forward(x, kernel_size, stride, padding, dilation):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = _windows(h, w, kernel_size, stride, padding, dilation)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    out = np.zeros((n, c, kh, kw, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(oh):
                for s in range(ow):
                    out[:, :, i, j, r, s] = xp[:, :, r * sh + i * dh, s * sw + j * dw]
    return out.reshape(n, c * kh * kw, oh * ow)


def fold_forward(cols, output_size, kernel_size, stride, padding, dilation):
    h, w = output_size
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh, ow = _windows(h, w, kernel_size, stride, padding, dilation)
    n, k, length = cols.shape
    if k % (kh * kw) or length != oh * ow:
        raise ValueError(f"fold: input of shape {cols.shape} does not fit kernel {kernel_size} and output size "
                         f"{output_size}")
    c = k // (kh * kw)
    blocks = cols.reshape(n, c, kh, kw, oh, ow)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            for r in range(oh):
                for s in range(ow):
                    xp[:, :, r * sh + i * dh, s * sw + j * dw] += blocks[:, :, i, j, r, s]
    return xp[:, :, ph:ph + h, pw:pw + w]


def unfold_vjp(g, out, x, kernel_size, stride, padding, dilation):
    return (fold_forward(g, x.shape[2:], kernel_size, stride, padding, dilation),)


def unfold_jvp(tangents, out, x, kernel_size, stride, padding, dilation):
    return unfold_forward(tangents[0], kernel_size, stride, padding, dilation)


def fold_vjp(g, out, cols, output_size, kernel_size, stride, padding, dilation):
    return (unfold_forward(g, kernel_size, stride, padding, dilation),)


def fold_jvp(tangents, out, cols, output_size, kernel_size, stride, padding, dilation):
    return fold_forward(tangents[0], output_size, kernel_size, stride, padding, dilation)


OPS["unfold"] = ref_op(unfold_forward, unfold_vjp, unfold_jvp, arity=1)
OPS["fold"] = ref_op(fold_forward, fold_vjp, fold_jvp, arity=1)


def _conv2d_cols(x, w, stride, padding, dilation):
    """x's columns (N, C*kh*kw, L), w as a matrix (O, C*kh*kw), and the output's (OH, OW)."""
    cols = unfold_forward(x, w.shape[2:], stride, padding, dilation)
    return cols, w.reshape(w.shape[0], int(np.prod(w.shape[1:]))), _windows(*x.shape[2:], w.shape[2:], stride, padding, dilation)


def conv2d_forward(x, w, stride, padding, dilation):
    """PyTorch's F.conv2d with groups 1 and no bias: x (N, C, H, W), w (O, C, kh, kw)."""
    cols, w2, (oh, ow) = _conv2d_cols(x, w, stride, padding, dilation)
    return np.matmul(w2, cols).reshape(x.shape[0], w.shape[0], oh, ow)


def conv2d_vjp(g, out, x, w, stride, padding, dilation):
    cols, w2, _ = _conv2d_cols(x, w, stride, padding, dilation)
    g3 = g.reshape(g.shape[0], g.shape[1], g.shape[2] * g.shape[3])
    gx = fold_forward(np.matmul(w2.T, g3), x.shape[2:], w.shape[2:], stride, padding, dilation)
    gw = np.matmul(g3, np.swapaxes(cols, 1, 2)).sum(axis=0).reshape(w.shape)
    return gx, gw


def conv2d_jvp(tangents, out, x, w, stride, padding, dilation):
    tx, tw = tangents
    return conv2d_forward(tx, w, stride, padding, dilation) + conv2d_forward(x, tw, stride, padding, dilation)


OPS["conv2d"] = ref_op(conv2d_forward, conv2d_vjp, conv2d_jvp, arity=2)
