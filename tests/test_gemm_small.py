"""float32 matmuls of a small matrix with a long one, which csrc/kernels/gemm_small.c computes on
AVX2 + FMA instead of BLAS (elsewhere, or on other CPUs, BLAS computes them and these tests still
hold): forward and both VJPs against float64 NumPy, on shapes that reach every block size and tail
of its two kernels, with A transposed (b's VJP), accumulation into an existing gradient, and the
convolution shapes the kernels are there for.

Tolerance: float32 sums of k products of unit normals, each rounded; the error is a few ulp of
sqrt(k) * |largest term|, so 2e-6 relative to the result's largest magnitude, with k up to 1000."""
import numpy as np
import pytest

import pyautodiff as ad
import pyautodiff.nn.functional as F

F32 = np.float32


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale * 4)


# (m, k, n): "wide" (m * k <= 6144, n >= 64: rows in blocks of 6, the last 7-9 split in two, columns
# in strips of 16 with a masked tail) and "dots" (A @ B^T with k >= 256, m <= 64, n <= 256: blocks of 4 x 3 dot
# products, k in even slices of at most 64K / n floats (at least 256) with a masked tail: (5, 200, 2001) is seven
# slices, 288 long and a last of 273)
SHAPES = [(1, 1, 64), (2, 3, 65), (5, 7, 79), (6, 16, 96), (7, 9, 100), (8, 144, 784), (9, 75, 130), (13, 33, 257),
          (16, 75, 4096), (32, 144, 784), (144, 32, 784), (4, 300, 64), (11, 1000, 70), (6, 16, 300), (3, 17, 520),
          (5, 200, 2001)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_small_by_long_products_match_float64(shape):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + n)
    a, b = rng.standard_normal((m, k)).astype(F32), rng.standard_normal((k, n)).astype(F32)
    g = rng.standard_normal((m, n)).astype(F32)
    at, bt = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    y = at @ bt
    assert y.dtype == F32
    _close(y.numpy(), a.astype(np.float64) @ b)
    (y * g).sum().backward()
    _close(at.grad.numpy(), g.astype(np.float64) @ b.T.astype(np.float64))       # G @ B^T: dots
    _close(bt.grad.numpy(), a.T.astype(np.float64) @ g)                           # A^T @ G: wide, A transposed


def test_gradients_accumulate_into_existing_values():
    # w is used by two products: the second VJP adds to the first (the kernels' beta = 1 path)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 144)).astype(F32)
    c1, c2 = rng.standard_normal((144, 784)).astype(F32), rng.standard_normal((144, 784)).astype(F32)
    g1, g2 = rng.standard_normal((8, 784)).astype(F32), rng.standard_normal((8, 784)).astype(F32)
    wt = ad.tensor(w, requires_grad=True)
    ((wt @ c1) * g1 + (wt @ c2) * g2).sum().backward()
    want = g1.astype(np.float64) @ c1.T + g2.astype(np.float64) @ c2.T
    _close(wt.grad.numpy(), want)
    # batched: the per-sample products of a convolution's im2col, and dW summed over the batch
    x = rng.standard_normal((3, 144, 784)).astype(F32)
    g = rng.standard_normal((3, 8, 784)).astype(F32)
    wt, xt = ad.tensor(w, requires_grad=True), ad.tensor(x, requires_grad=True)
    y = wt @ xt
    _close(y.numpy(), np.einsum("ok,nkl->nol", w.astype(np.float64), x))
    (y * g).sum().backward()
    _close(wt.grad.numpy(), np.einsum("nol,nkl->ok", g.astype(np.float64), x))
    _close(xt.grad.numpy(), np.einsum("ok,nol->nkl", w.astype(np.float64), g))


@pytest.mark.parametrize("case", [((4, 16, 28, 28), (32, 16, 3, 3), 1), ((2, 3, 64, 64), (16, 3, 5, 5), 2)], ids=str)
def test_the_benchmark_convolutions_in_float32_match_float64(case):
    xs, ws, p = case
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    g = rng.standard_normal(F.conv2d(x, w, padding=p).shape)
    grads = []
    for dt in (np.float64, F32):
        xt, wt = ad.tensor(x.astype(dt), requires_grad=True), ad.tensor(w.astype(dt), requires_grad=True)
        y = F.conv2d(xt, wt, padding=p)
        (y * g.astype(dt)).sum().backward()
        grads.append((y.numpy(), xt.grad.numpy(), wt.grad.numpy()))
    for got, want in zip(grads[1], grads[0]):
        # the weight gradient sums N * L = up to 8192 products: sqrt of that times a few ulp
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
