"""Transpose-like passes in 8 x 8 squares within 64 x 64 blocks (csrc/shape.c ad_strided_pass).

The squares take a fast path only when whole; the edges of every block and of the array take
the general loop. These shapes put edges at every offset from a square and a block boundary, on
both sides, and check the values, the VJP (written and accumulated) and a strided slice against
NumPy bit for bit: a transpose moves values without arithmetic, so nothing may differ."""

import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float64, np.float32]
SIDES = [7, 8, 9, 15, 16, 63, 64, 65, 127, 130]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", SIDES)
def test_a_2d_transpose_and_its_vjp_move_every_value(dtype, m):
    rng = np.random.default_rng(m)
    for n in (8, 9, 64, 65, 200):
        a = rng.standard_normal((m, n)).astype(dtype)
        w = rng.standard_normal((n, m)).astype(dtype)
        x = ad.tensor(a, requires_grad=True)
        y = ad.transpose(x)
        np.testing.assert_array_equal(y.numpy(), a.T)
        y.backward(ad.tensor(w))
        np.testing.assert_array_equal(x.grad.numpy(), w.T)
        # the second contribution adds into the first: the accumulating pass
        x.grad = None
        (ad.transpose(x) * 2.0 + ad.transpose(x)).backward(ad.tensor(w))
        np.testing.assert_array_equal(x.grad.numpy(), (w * 2.0).T + w.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 2, 0), (0, 2, 1), (2, 1, 0)])
def test_permutations_of_3d_tensors(dtype, perm):
    rng = np.random.default_rng(len(perm))
    for shape in ((9, 66, 17), (3, 64, 8), (70, 5, 65)):
        a = rng.standard_normal(shape).astype(dtype)
        x = ad.tensor(a, requires_grad=True)
        y = ad.transpose(x, perm)
        np.testing.assert_array_equal(y.numpy(), a.transpose(perm))
        w = rng.standard_normal(y.shape).astype(dtype)
        y.backward(ad.tensor(w))
        np.testing.assert_array_equal(x.grad.numpy(), w.transpose(np.argsort(perm)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_slices_of_transposed_layouts(dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((130, 67)).astype(dtype)
    x = ad.tensor(a, requires_grad=True)
    y = ad.transpose(x)[::3, 1::2]
    ref = a.T[::3, 1::2]
    np.testing.assert_array_equal(y.numpy(), ref)
    w = rng.standard_normal(ref.shape).astype(dtype)
    y.backward(ad.tensor(w))
    g = np.zeros_like(a.T)
    g[::3, 1::2] = w
    np.testing.assert_array_equal(x.grad.numpy(), g.T)
