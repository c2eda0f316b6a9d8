"""PyTorch's less common nn options: pooling's ceil_mode (max and avg, with and without
count_include_pad) and max_pool2d's return_indices, conv modules' padding_mode (reflect, replicate,
circular) and padding='same' with an even kernel, Embedding's max_norm, dropout's inplace.

Each against a NumPy reference written from PyTorch's documented rules with plain loops (not from
the library's own unfold or pad), finite differences for the gradients, float32 and float64."""
import numpy as np
import pytest

import pyautodiff as ad
import pyautodiff.nn as nn
import pyautodiff.nn.functional as F

from test_conv import conv2d_loops

F32, F64 = np.float32, np.float64


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _pool_out(size, k, s, p, d, ceil_mode):
    # PyTorch's pooling_output_shape, literally
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_loops_torch(x, k, s, p, d, kind, ceil_mode, count_include_pad=True):
    """PyTorch's CPU pooling kernels as loops: windows from r*s - p; max over the real elements;
    avg divides by the window clipped to [-p, size + p) (count_include_pad) or to [0, size); the
    index of a max is the first in row-major window order."""
    n, c, h, w = x.shape
    oh, ow = _pool_out(h, k[0], s[0], p[0], d[0], ceil_mode), _pool_out(w, k[1], s[1], p[1], d[1], ceil_mode)
    y, idx = np.zeros((n, c, oh, ow)), np.zeros((n, c, oh, ow), np.int64)
    for b in range(n):
        for ch in range(c):
            for r in range(oh):
                for q in range(ow):
                    h0, w0 = r * s[0] - p[0], q * s[1] - p[1]
                    best, at, total = -np.inf, -1, 0.0
                    for i in range(k[0]):
                        for j in range(k[1]):
                            hi, wi = h0 + i * d[0], w0 + j * d[1]
                            if 0 <= hi < h and 0 <= wi < w:
                                v = x[b, ch, hi, wi]
                                total += v
                                if v > best:
                                    best, at = v, hi * w + wi
                    if kind == "max":
                        y[b, ch, r, q], idx[b, ch, r, q] = best, at
                    else:
                        h1, w1 = min(h0 + k[0], h + p[0]), min(w0 + k[1], w + p[1])
                        if count_include_pad:
                            div = (h1 - h0) * (w1 - w0)
                        else:
                            div = (min(h1, h) - max(h0, 0)) * (min(w1, w) - max(w0, 0))
                        y[b, ch, r, q] = total / div
    return y, idx


# (x shape, kernel, stride, padding, dilation): ceil_mode adds a window that hangs over the bottom
# or right edge in each (and in the first both); the last one rounds up to nothing new
CEIL_CASES = [((2, 3, 7, 8), 2, 2, 0, 1), ((1, 2, 9, 7), (3, 2), (2, 3), (1, 1), 1), ((2, 1, 8, 8), 3, 2, 1, 1),
              ((1, 2, 10, 9), (2, 3), (3, 2), (1, 0), (2, 1)), ((1, 1, 5, 6), 3, 3, 1, 1), ((1, 1, 4, 4), 2, 2, 0, 1)]


@pytest.mark.parametrize("case", CEIL_CASES, ids=str)
def test_max_pool2d_ceil_mode_and_indices_match_the_loops(case):
    xs, k, s, p, d = case
    x = np.random.default_rng(1).standard_normal(xs)
    want, want_idx = pool_loops_torch(x, _pair(k), _pair(s), _pair(p), _pair(d), "max", True)
    got, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(got.numpy(), want)
    assert idx.dtype == np.int64 and isinstance(idx, np.ndarray)
    np.testing.assert_array_equal(idx, want_idx)
    got32, idx32 = F.max_pool2d(x.astype(F32), k, s, p, d, ceil_mode=True, return_indices=True)
    assert got32.dtype == F32
    np.testing.assert_array_equal(got32.numpy(), want.astype(F32))
    np.testing.assert_array_equal(idx32, want_idx)
    assert ad.gradcheck(lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=True), (x,))
    # floor mode's indices too, and an unbatched input
    want, want_idx = pool_loops_torch(x, _pair(k), _pair(s), _pair(p), _pair(d), "max", False)
    got, idx = F.max_pool2d(x[0], k, s, p, d, return_indices=True)
    np.testing.assert_array_equal(got.numpy(), want[0])
    np.testing.assert_array_equal(idx, want_idx[0])


@pytest.mark.parametrize("case", [c for c in CEIL_CASES if c[4] == 1], ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_ceil_mode_matches_the_loops(case, count_include_pad):
    xs, k, s, p, _ = case
    x = np.random.default_rng(2).standard_normal(xs)
    want, _ = pool_loops_torch(x, _pair(k), _pair(s), _pair(p), (1, 1), "avg", True, count_include_pad)
    got = F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=count_include_pad)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14, atol=1e-15)
    got32 = F.avg_pool2d(x.astype(F32), k, s, p, ceil_mode=True, count_include_pad=count_include_pad)
    assert got32.dtype == F32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-6, atol=1e-6)
    assert ad.gradcheck(lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=True, count_include_pad=count_include_pad),
                        (x,))


def test_pool_modules_pass_ceil_mode_and_return_indices():
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 7))
    y, idx = nn.MaxPool2d(2, ceil_mode=True, return_indices=True)(x)
    want, want_idx = pool_loops_torch(x, (2, 2), (2, 2), (0, 0), (1, 1), "max", True)
    assert y.shape == (1, 2, 4, 4)
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal(idx, want_idx)
    want, _ = pool_loops_torch(x, (3, 3), (2, 2), (1, 1), (1, 1), "avg", True, False)
    got = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)(x)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    with pytest.raises(TypeError, match="max_pool2d: ceil_mode must be a bool"):
        F.max_pool2d(x, 2, ceil_mode="yes")


# ---- conv padding modes ----

def _pad_loops(x, pads, mode):
    """x's last len(pads) axes padded by index arithmetic: reflect mirrors without the edge,
    replicate clamps, circular wraps (PyTorch's F.pad modes)."""
    out = x
    for axis, (lo, hi) in zip(range(x.ndim - len(pads), x.ndim), pads):
        size = out.shape[axis]
        src = []
        for i in range(-lo, size + hi):
            if mode == "reflect":
                j = -i if i < 0 else 2 * (size - 1) - i if i >= size else i
            elif mode == "replicate":
                j = min(max(i, 0), size - 1)
            else:
                j = i % size
            src.append(j)
        out = np.take(out, src, axis=axis)
    return out


# (x shape, weight shape, stride, padding, dilation, groups)
MODE_CASES = [((2, 3, 6, 7), (4, 3, 3, 3), 1, 1, 1, 1), ((1, 4, 7, 5), (2, 2, 3, 2), (2, 1), (2, 1), (1, 2), 2),
              ((2, 2, 5, 6), (3, 2, 2, 3), 1, "same", (2, 1), 1), ((1, 2, 5, 5), (2, 2, 3, 3), 2, "valid", 1, 1)]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("case", MODE_CASES, ids=str)
def test_conv2d_padding_modes_match_the_loops(case, mode):
    xs, ws, s, p, d, g = case
    rng = np.random.default_rng(4)
    x = rng.standard_normal(xs)
    m = nn.Conv2d(xs[1], ws[0], ws[2:], s, p, d, g, padding_mode=mode, seed=0)
    w, b = m.weight.numpy(), m.bias.numpy()
    if p == "same":
        pads = tuple((t // 2, t - t // 2) for t in (di * (k - 1) for k, di in zip(ws[2:], _pair(d))))
    elif p == "valid":
        pads = ((0, 0), (0, 0))
    else:
        pads = tuple((v, v) for v in _pair(p))
    want = conv2d_loops(_pad_loops(x, pads, mode), w, b, _pair(s), (0, 0), _pair(d), g)
    np.testing.assert_allclose(m(x).numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m(x[0]).numpy(), want[0], rtol=1e-12, atol=1e-12)   # unbatched
    m32 = nn.Conv2d(xs[1], ws[0], ws[2:], s, p, d, g, padding_mode=mode, seed=0, dtype=F32)
    got32 = m32(x.astype(F32))
    assert got32.dtype == F32
    np.testing.assert_allclose(got32.numpy(), want, rtol=2e-5, atol=2e-5)
    # the new part is the padding in front of the conv: its gradient w.r.t. the input
    assert ad.gradcheck(lambda t: m(t), (x,))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv1d_padding_modes_match_the_loops(mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9))
    m = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode=mode, seed=1)
    w, b = m.weight.numpy(), m.bias.numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2))) if mode == "zeros" else _pad_loops(x, ((2, 2),), mode)
    want = conv2d_loops(padded[:, :, None], w[:, :, None], b, (1, 2), (0, 0), (1, 2), 2)[:, :, 0]
    np.testing.assert_allclose(m(x).numpy(), want, rtol=1e-12, atol=1e-12)
    assert ad.gradcheck(lambda t: m(t), (x,))


def test_same_padding_with_an_even_kernel_pads_the_odd_one_on_the_right():
    # PyTorch: d * (k - 1) zeros per axis, the extra one after the input
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 2, 5, 6)), rng.standard_normal((3, 2, 2, 4))
    want = conv2d_loops(np.pad(x, ((0, 0), (0, 0), (0, 1), (1, 2))), w, None, (1, 1), (0, 0), (1, 1), 1)
    got = F.conv2d(x, w, padding="same")
    assert got.shape == (1, 3, 5, 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert ad.gradcheck(lambda x, w: F.conv2d(x, w, padding="same"), (x, w))
    x1, w1 = rng.standard_normal((2, 2, 7)), rng.standard_normal((3, 2, 4))
    want = conv2d_loops(np.pad(x1, ((0, 0), (0, 0), (1, 2)))[:, :, None], w1[:, :, None], None, (1, 1), (0, 0),
                        (1, 1), 1)[:, :, 0]
    np.testing.assert_allclose(F.conv1d(x1, w1, padding="same").numpy(), want, rtol=1e-12, atol=1e-12)


def test_padding_mode_errors():
    with pytest.raises(ValueError, match="Conv2d: padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular'"):
        nn.Conv2d(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="ConvTranspose2d: only padding_mode='zeros'"):
        nn.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="reflect needs padding < size"):
        nn.Conv2d(2, 2, 3, padding=3, padding_mode="reflect")(np.zeros((1, 2, 3, 8)))
    with pytest.raises(ValueError, match="circular padding <= size"):
        nn.Conv2d(2, 2, 3, padding=(1, 4), padding_mode="circular")(np.zeros((1, 2, 5, 3)))
    # circular may wrap a whole period (PyTorch's limit is padding <= size)
    x = np.random.default_rng(7).standard_normal((1, 2, 5, 3))
    m = nn.Conv2d(2, 2, 3, padding=(1, 3), padding_mode="circular", seed=0)
    want = conv2d_loops(_pad_loops(x, ((1, 1), (3, 3)), "circular"), m.weight.numpy(), m.bias.numpy(), (1, 1),
                        (0, 0), (1, 1), 1)
    np.testing.assert_allclose(m(x).numpy(), want, rtol=1e-12, atol=1e-12)


# ---- Embedding(max_norm) ----

def _renormed(w, idx, max_norm, norm_type):
    """PyTorch's embedding_renorm_ by hand: each distinct looked-up row above max_norm scaled by
    max_norm / (norm + 1e-7)."""
    w = w.copy()
    for i in sorted(set(idx.reshape(-1).tolist())):
        norm = np.sum(np.abs(w[i].astype(F64)) ** norm_type) ** (1 / norm_type) if np.isfinite(norm_type) \
            else np.abs(w[i]).max()
        if norm > max_norm:
            w[i] = w[i] * (max_norm / (norm + 1e-7))
    return w


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, np.inf])
def test_embedding_max_norm_renormalises_the_looked_up_rows_in_place(dtype, norm_type):
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((6, 4)) * 2).astype(dtype)
    idx = np.array([[1, 3, 3], [0, 5, 1]])                  # row 2 and 4 are not looked up
    want_w = _renormed(w, idx, 1.5, norm_type)
    assert not np.allclose(want_w, w)                       # some rows do change
    np.testing.assert_array_equal(want_w[[2, 4]], w[[2, 4]])
    wt = ad.tensor(w, requires_grad=True)
    before = wt._version
    out = F.embedding(idx, wt, max_norm=1.5, norm_type=norm_type)
    tol = 1e-6 if dtype == F32 else 1e-14
    np.testing.assert_allclose(wt.numpy(), want_w, rtol=tol, atol=tol)
    assert wt._version > before and wt.is_leaf and out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), want_w[idx], rtol=tol, atol=tol)
    # the gradient is the plain lookup's: the rescaling is not differentiated (as PyTorch)
    g = rng.standard_normal((2, 3, 4)).astype(dtype)
    (out * g).sum().backward()
    want = np.zeros_like(w)
    np.add.at(want, idx, g)
    np.testing.assert_allclose(wt.grad.numpy(), want, rtol=tol)
    # a second lookup finds every row within max_norm and changes nothing
    F.embedding(idx, wt, max_norm=1.5, norm_type=norm_type)
    np.testing.assert_allclose(wt.numpy(), want_w, rtol=tol, atol=tol)


def test_embedding_module_max_norm_and_its_errors():
    layer = nn.Embedding(5, 3, max_norm=1.0, seed=0)
    w = layer.weight.numpy().copy()
    idx = np.array([0, 2, 2])
    out = layer(idx)
    want = _renormed(w, idx, 1.0, 2.0)
    np.testing.assert_allclose(layer.weight.numpy(), want, rtol=1e-14)
    np.testing.assert_allclose(out.numpy(), want[idx], rtol=1e-14)
    assert ad.gradcheck(lambda t: F.embedding(idx, t), (want,))
    with pytest.raises(TypeError, match="embedding: max_norm rescales weight's rows in place, so weight must be a Tensor"):
        F.embedding(idx, w, max_norm=1.0)


# ---- dropout(inplace=True) ----

@pytest.mark.parametrize("dtype", [F64, F32])
def test_dropout_inplace_multiplies_the_input_itself(dtype):
    x = np.random.default_rng(9).standard_normal((20, 30)).astype(dtype)
    p = 0.4
    keep = np.random.default_rng(11).random(x.shape) >= p
    want = (x * (keep * (1 / (1 - p))).astype(dtype))
    # a plain tensor: written in place, unrecorded, and returned
    t = ad.tensor(x)
    v = t._version
    y = F.dropout(t, p, inplace=True, generator=np.random.default_rng(11))
    assert y is t and t._version > v and t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), want)
    # a non-leaf: recorded, and the gradient is masked and scaled as the out-of-place one's
    xt = ad.tensor(x, requires_grad=True)
    h = xt * 2.0
    out = F.dropout(h, p, inplace=True, generator=np.random.default_rng(11))
    assert out is h
    np.testing.assert_array_equal(h.numpy(), (2 * x * (keep * (1 / (1 - p))).astype(dtype)))
    g = np.random.default_rng(10).standard_normal(x.shape).astype(dtype)
    (h * g).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), 2 * g * keep / (1 - p), rtol=1e-6 if dtype == F32 else 1e-15)
    if dtype == F64:
        def f(x):
            return F.dropout(x * 1.0, p, inplace=True, generator=np.random.default_rng(11))
        assert ad.gradcheck(f, (x,))
    # a leaf that requires grad refuses, as PyTorch; eval mode returns the input untouched
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        F.dropout(ad.tensor(x, requires_grad=True), p, inplace=True)
    t = ad.tensor(x)
    assert F.dropout(t, p, training=False, inplace=True) is t
    np.testing.assert_array_equal(t.numpy(), x)
    layer = nn.Dropout(p, inplace=True, seed=11)
    t = ad.tensor(x)
    assert layer(t) is t
    np.testing.assert_array_equal(t.numpy(), want)
    with pytest.raises(TypeError, match="dropout: inplace=True needs a Tensor input"):
        F.dropout(x, p, inplace=True)


def test_max_pool2d_indices_name_the_first_of_tied_maxima():
    # small integers tie often: PyTorch's index is the first maximum in row-major window order
    x = np.random.default_rng(12).integers(0, 3, (2, 2, 7, 8)).astype(F64)
    for k, s, p, d, ceil in [(3, 2, 1, 1, True), ((2, 3), 1, 0, (2, 1), False), (2, 2, 0, 1, True)]:
        want, want_idx = pool_loops_torch(x, _pair(k), _pair(s), _pair(p), _pair(d), "max", ceil)
        got, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
        np.testing.assert_array_equal(got.numpy(), want)
        np.testing.assert_array_equal(idx, want_idx)


def test_max_pool_module_shows_ceil_mode():
    assert repr(ad.nn.MaxPool2d(2, ceil_mode=True)) == (
        "MaxPool2d(kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=True)")
