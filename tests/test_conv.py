"""Convolution and pooling (pyautodiff/nn/_conv.py over csrc/kernels/conv.c's unfold and fold)
against direct-loop NumPy references on odd shapes: stride > 1, padding, dilation, groups,
non-square kernels; finite-difference gradient checks in float64, float32 forward, a second-order
check through conv, and the errors for shapes that do not fit.

The references below loop over every output element and kernel tap, independent of im2col, so a
wrong window order or a wrong group slice in the library cannot agree with them by construction.
unfold and fold themselves are in the op table (tests/op_table.py), with every test of every op."""
import numpy as np
import pytest

import pyautodiff as ad
import pyautodiff.nn.functional as F

F32, F64 = np.float32, np.float64


def conv2d_loops(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, oh, ow))
    og = o // groups
    for b_ in range(n):
        for oc in range(o):
            g = oc // og
            for r in range(oh):
                for s in range(ow):
                    acc = 0.0 if b is None else b[oc]
                    for ic in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                hi, wi = r * sh - ph + i * dh, s * sw - pw + j * dw
                                if 0 <= hi < h and 0 <= wi < wd:
                                    acc += x[b_, g * cg + ic, hi, wi] * w[oc, ic, i, j]
                    y[b_, oc, r, s] = acc
    return y


def conv_transpose2d_loops(x, w, b, stride, padding, output_padding, groups, dilation):
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    y = np.zeros((n, og * groups, oh, ow))
    cg = c // groups
    for b_ in range(n):
        for ic in range(c):
            g = ic // cg
            for r in range(h):
                for s in range(wd):
                    for oc in range(og):
                        for i in range(kh):
                            for j in range(kw):
                                hi, wi = r * sh - ph + i * dh, s * sw - pw + j * dw
                                if 0 <= hi < oh and 0 <= wi < ow:
                                    y[b_, g * og + oc, hi, wi] += x[b_, ic, r, s] * w[ic, oc, i, j]
    if b is not None:
        y += b[None, :, None, None]
    return y


def pool_loops(x, k, s, p, d, kind, count_include_pad=True):
    n, c, h, w = x.shape
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for q in range(ow):
            vals, count = [], 0
            for i in range(k[0]):
                for j in range(k[1]):
                    hi, wi = r * s[0] - p[0] + i * d[0], q * s[1] - p[1] + j * d[1]
                    if 0 <= hi < h and 0 <= wi < w:
                        vals.append(x[:, :, hi, wi])
                        count += 1
                    elif kind == "avg":
                        vals.append(np.zeros((n, c)))
            if kind == "max":
                y[:, :, r, q] = np.max(vals, axis=0)
            else:
                y[:, :, r, q] = np.sum(vals, axis=0) / (k[0] * k[1] if count_include_pad else count)
    return y


def adaptive_loops(x, oh, ow):
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
            w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


# (x shape, weight shape, stride, padding, dilation, groups, bias)
CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 2), (1, 1), (0, 0), (1, 1), 1, True),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2, True),
    ((1, 6, 8, 7), (6, 1, 3, 3), (2, 3), (1, 1), (2, 1), 6, False),     # depthwise
    ((3, 2, 5, 5), (3, 2, 5, 5), (1, 1), (0, 0), (1, 1), 1, True),      # kernel = image: 1x1 output
    ((1, 3, 6, 10), (2, 3, 1, 4), (3, 2), (2, 0), (1, 3), 1, False),
    ((2, 3, 6, 7), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2), 1, True),      # 'same' size: unfold's one-copy path
]


def _conv_case(rng, xs, ws, bias):
    return rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0]) if bias else None


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_direct_loops(case):
    xs, ws, s, p, d, g, bias = case
    x, w, b = _conv_case(np.random.default_rng(0), xs, ws, bias)
    want = conv2d_loops(x, w, b, s, p, d, g)
    got = F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    got32 = F.conv2d(x.astype(F32), w.astype(F32), None if b is None else b.astype(F32), stride=s, padding=p,
                     dilation=d, groups=g)
    assert got32.dtype == F32
    # float32 sums of up to 50 products of unit normals: a few ulp of |sum| ~ 1e-6 relative
    np.testing.assert_allclose(got32.numpy(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_gradients_match_finite_differences(case):
    xs, ws, s, p, d, g, bias = case
    args = _conv_case(np.random.default_rng(1), xs, ws, bias)
    args = tuple(a for a in args if a is not None)

    def f(x, w, *b):
        return F.conv2d(x, w, b[0] if b else None, stride=s, padding=p, dilation=d, groups=g)
    assert ad.gradcheck(f, args)


@pytest.mark.parametrize("case", [1, 4])   # grouped (unfold and matmul); groups 1 (the conv2d op)
def test_conv2d_vjp_matches_the_loops_transposed(case):
    # the exact gradient: conv2d is bilinear, so the gradient w.r.t. x at cotangent u is the
    # derivative of <u, conv2d_loops(x, w)>, i.e. each column of the loop reference's Jacobian,
    # and likewise w.r.t. w
    rng = np.random.default_rng(2)
    xs, ws, s, p, d, g, _ = CONV_CASES[case]
    x, w, _ = _conv_case(rng, xs, ws, False)
    u = rng.standard_normal(conv2d_loops(x, w, None, s, p, d, g).shape)
    xt, wt = ad.tensor(x, requires_grad=True), ad.tensor(w, requires_grad=True)
    (F.conv2d(xt, wt, stride=s, padding=p, dilation=d, groups=g) * u).sum().backward()
    for arg, got in ((0, xt.grad), (1, wt.grad)):
        want = np.zeros_like((x, w)[arg])
        for idx in np.ndindex(*want.shape):
            e = np.zeros_like(want)
            e[idx] = 1
            want[idx] = (conv2d_loops(*((e, w) if arg == 0 else (x, e)), None, s, p, d, g) * u).sum()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_conv1d_matches_conv2d_loops():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 4, 11)), rng.standard_normal((6, 2, 3)), rng.standard_normal(6)
    want = conv2d_loops(x[:, :, None], w[:, :, None], b, (1, 2), (0, 1), (1, 2), 2)[:, :, 0]
    got = F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert ad.gradcheck(lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2), (x, w, b))
    # unbatched input, and padding='same'
    got = F.conv1d(x[0], w, None, padding="same", groups=2)
    want = conv2d_loops(x[:1, :, None], w[:, :, None], None, (1, 1), (0, 1), (1, 1), 2)[0, :, 0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


TRANSPOSE_CASES = [
    ((2, 4, 5, 6), (4, 3, 3, 2), (2, 3), (1, 0), (1, 2), 2, (1, 2), True),
    ((1, 3, 4, 4), (3, 2, 2, 2), (2, 2), (0, 0), (0, 0), 1, (1, 1), False),
    ((2, 2, 3, 5), (2, 4, 3, 3), (1, 1), (1, 1), (0, 0), 1, (2, 1), True),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose2d_matches_direct_loops(case):
    xs, ws, s, p, op, g, d, bias = case
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * g) if bias else None
    want = conv_transpose2d_loops(x, w, b, s, p, op, g, d)
    kw = dict(stride=s, padding=p, output_padding=op, groups=g, dilation=d)
    np.testing.assert_allclose(F.conv_transpose2d(x, w, b, **kw).numpy(), want, rtol=1e-12, atol=1e-12)
    args = (x, w) + ((b,) if bias else ())
    assert ad.gradcheck(lambda x, w, *b: F.conv_transpose2d(x, w, b[0] if b else None, **kw), args)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 2))
    kw = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    y = F.conv2d(x, w, **kw)
    u = rng.standard_normal(y.shape)
    back = F.conv_transpose2d(u, w, groups=2, stride=(2, 1), padding=(1, 0), dilation=(1, 2), output_padding=(0, 0))
    back = back.numpy()[:, :, :9, :8]
    assert abs((y.numpy() * u).sum() - (x[:, :, :back.shape[2], :back.shape[3]] * back).sum()) < 1e-10


POOL_CASES = [((2, 3, 9, 7), (3, 2), (2, 1), (1, 1), (1, 2)), ((1, 2, 8, 6), 2, None, 0, 1),
              ((2, 1, 7, 7), 3, 2, 1, 1), ((1, 2, 5, 9), (2, 3), (1, 3), (0, 1), (2, 1)),
              ((1, 1, 7, 5), 2, None, 0, 1)]    # windows tile all but the last row and column


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_matches_direct_loops(case):
    xs, k, s, p, d = case
    x = np.random.default_rng(6).standard_normal(xs)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    want = pool_loops(x, pair(k), pair(k if s is None else s), pair(p), pair(d), "max")
    got = F.max_pool2d(x, k, s, p, d)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(F.max_pool2d(x.astype(F32), k, s, p, d).numpy(), want.astype(F32))
    assert ad.gradcheck(lambda t: F.max_pool2d(t, k, s, p, d), (x,))


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_direct_loops(case, count_include_pad):
    xs, k, s, p, d = case
    if d != 1:
        return          # avg_pool2d has no dilation (as PyTorch)
    x = np.random.default_rng(7).standard_normal(xs)
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    want = pool_loops(x, pair(k), pair(k if s is None else s), pair(p), (1, 1), "avg", count_include_pad)
    got = F.avg_pool2d(x, k, s, p, count_include_pad=count_include_pad)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(F.avg_pool2d(x.astype(F32), k, s, p, count_include_pad=count_include_pad).numpy(),
                               want, rtol=1e-6, atol=1e-6)
    assert ad.gradcheck(lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=count_include_pad), (x,))


def test_avg_pool2d_divisor_override():
    x = np.random.default_rng(12).standard_normal((1, 2, 5, 6))
    want = pool_loops(x, (3, 2), (2, 2), (1, 1), (1, 1), "avg") * 6 / 5
    np.testing.assert_allclose(F.avg_pool2d(x, (3, 2), 2, 1, divisor_override=5).numpy(), want, rtol=1e-14)
    with pytest.raises(ValueError, match="divisor_override must not be 0"):
        F.avg_pool2d(x, 2, divisor_override=0)


def test_max_pool2d_ties_split_the_gradient():
    # documented rule: a window's tied maxima share its cotangent equally (ad.max's rule)
    x = ad.tensor(np.array([[[[1.0, 1.0], [0.0, 1.0]]]]), requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[[[1 / 3, 1 / 3], [0, 1 / 3]]]])


@pytest.mark.parametrize("shape,out", [((2, 3, 8, 6), (4, 3)), ((1, 2, 7, 5), (3, 4)), ((1, 1, 5, 5), 1),
                                       ((1, 2, 4, 9), (None, 2))])
def test_adaptive_avg_pool2d_matches_loops(shape, out):
    x = np.random.default_rng(8).standard_normal(shape)
    oh, ow = (out, out) if isinstance(out, int) else out
    oh, ow = oh or shape[2], ow or shape[3]
    got = F.adaptive_avg_pool2d(x, out)
    np.testing.assert_allclose(got.numpy(), adaptive_loops(x, oh, ow), rtol=1e-13, atol=1e-14)
    assert ad.gradcheck(lambda t: F.adaptive_avg_pool2d(t, out), (x,))


def test_second_order_through_conv():
    # hvp of a scalar loss through conv2d (forward over reverse) against central differences of
    # its gradient: unfold and fold have zero second-order terms, so the curvature comes from the
    # matmul and the tanh, and every path through the conv must carry it
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((3, 2, 3, 2)) * 0.5
    v = rng.standard_normal(w.shape)

    def loss(w):
        return (ad.tanh(F.conv2d(x, w, stride=(2, 1), padding=1, dilation=(1, 2))) ** 2).sum()

    _, (hv,) = ad.hvp(loss, (w,), (v,))
    grad = ad.grad(loss)
    h = 1e-5
    fd = (grad(ad.tensor(w + h * v)).numpy() - grad(ad.tensor(w - h * v)).numpy()) / (2 * h)
    np.testing.assert_allclose(np.asarray(hv), fd, rtol=1e-6, atol=1e-7)
    # and reverse over reverse agrees with forward over reverse
    hess = ad.hessian(loss)(w)
    np.testing.assert_allclose(np.tensordot(np.asarray(hess), v, axes=4), np.asarray(hv), rtol=1e-10, atol=1e-10)


def _msg(fn, *args, **kw):
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_shape_errors_name_the_op_and_the_shapes():
    x, w = np.zeros((2, 4, 5, 5)), np.zeros((6, 2, 3, 3))
    assert "conv2d" in _msg(F.conv2d, x, w) and "(6, 2, 3, 3)" in _msg(F.conv2d, x, w)
    assert "groups=3" in _msg(F.conv2d, x, np.zeros((6, 4, 3, 3)), groups=3)
    assert "(N, C, H, W)" in _msg(F.conv2d, np.zeros((5,)), w, groups=2)
    assert "larger than the padded input" in _msg(F.conv2d, x, np.zeros((6, 4, 7, 3)))
    assert "stride" in _msg(F.conv2d, x, np.zeros((6, 4, 3, 3)), stride=0)
    assert "bias" in _msg(F.conv2d, x, np.zeros((6, 4, 3, 3)), np.zeros(5))
    assert "'same' needs stride 1" in _msg(F.conv2d, x, np.zeros((6, 4, 2, 2)), padding="same", stride=2)
    assert "output_padding" in _msg(F.conv_transpose2d, x, np.zeros((4, 2, 3, 3)), stride=2, output_padding=2)
    assert "weight" in _msg(F.conv1d, np.zeros((2, 4, 5)), w)
    assert "half of kernel_size" in _msg(F.max_pool2d, x, 2, padding=2)
    # the C ops check their own boundary
    assert "unfold: input must be 4-D" in _msg(F.unfold, np.zeros((2, 3, 4)), 2)
    assert "fold: input must be 3-D" in _msg(F.fold, np.zeros((2, 7, 16)), (5, 5), 2)
    assert "kernel_size" in _msg(F.unfold, x, 0)


def test_unfold_and_fold_are_adjoint():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 8, 7))
    kw = dict(kernel_size=(3, 2), dilation=(2, 1), padding=(1, 2), stride=(2, 3))
    cols = F.unfold(x, **kw)
    u = rng.standard_normal(cols.shape)
    back = F.fold(u, (8, 7), **kw)
    np.testing.assert_allclose((cols.numpy() * u).sum(), (x * back.numpy()).sum(), rtol=1e-12)


def test_conv_of_float32_input_and_float64_weight_promotes():
    x, w = np.ones((1, 1, 3, 3), F32), np.ones((1, 1, 2, 2))
    y = F.conv2d(x, w)
    assert y.dtype == F64
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 2, 2), 4.0))


def test_unfold_and_fold_are_bit_identical_for_any_thread_count():
    # both kernels split the work by (n, c) planes across the pool: each plane is computed alike
    # whatever the split, so 1 to 4 threads give the same bits
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 16, 32, 32))
    u = rng.standard_normal((8, 16 * 9, 30 * 30))
    before = ad.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 4):
            ad.set_num_threads(n)
            xt = ad.tensor(x, requires_grad=True)
            cols = F.unfold(xt, 3, dilation=1, padding=0, stride=1)
            (cols * u).sum().backward()
            results.append((cols.numpy(), F.fold(u, (32, 32), 3).numpy(), xt.grad.numpy()))
    finally:
        ad.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_conv2d_is_bit_identical_for_any_thread_count(dtype):
    # the conv2d op runs the samples in order, one gemm each, and its column passes split by
    # planes: forward and both gradients give the same bits for 1 to 4 threads
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 16, 30, 30)).astype(dtype)
    w = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
    g = rng.standard_normal((4, 32, 15, 30)).astype(dtype)
    before = ad.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 4):
            ad.set_num_threads(n)
            xt, wt = ad.tensor(x, requires_grad=True), ad.tensor(w, requires_grad=True)
            y = F.conv2d(xt, wt, stride=(2, 1), padding=1)
            y.backward(g)
            results.append((y.numpy(), xt.grad.numpy(), wt.grad.numpy()))
    finally:
        ad.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


# float32 convolutions tall enough that the conv2d op runs the forward and the input gradient a
# few window rows at a time (csrc/kernels/conv2d.c, chunk_rows: at least 256 columns), with a
# last chunk of fewer rows: stride, dilation, padding, a 'same'-size one (unfold's one-copy path)
@pytest.mark.parametrize("xs,ws,s,p,d", [((2, 3, 120, 9), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
                                         ((2, 8, 400, 7), (3, 8, 3, 2), (2, 1), (2, 0), (2, 3)),
                                         ((1, 2, 400, 5), (2, 2, 5, 3), (1, 1), (4, 1), (2, 1))])
def test_conv2d_float32_by_window_rows_matches_the_reference(xs, ws, s, p, d):
    from pyautodiff.reference import REFERENCE
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    ref = REFERENCE["conv2d"]
    want = ref.forward(x, w, stride=s, padding=p, dilation=d)
    u = rng.standard_normal(want.shape)
    want_gx, want_gw = ref.vjp(u, want, x, w, stride=s, padding=p, dilation=d)
    xt, wt = ad.tensor(x.astype(F32), requires_grad=True), ad.tensor(w.astype(F32), requires_grad=True)
    y = F.conv2d(xt, wt, stride=s, padding=p, dilation=d)
    y.backward(u.astype(F32))
    # float32 sums of up to 30 (forward), 12 (input) and 2*L (weight) products of unit normals
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(xt.grad.numpy(), want_gx, rtol=1e-5, atol=1e-5 * np.abs(want_gx).max())
    np.testing.assert_allclose(wt.grad.numpy(), want_gw, rtol=1e-5, atol=1e-5 * np.abs(want_gw).max())
