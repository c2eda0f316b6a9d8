"""The layout-specialised kernel paths (issue 15), against the NumPy reference.

Each fast kernel walks contiguous memory for one layout (softmax over a run of adjacent axes seen
as (outer, len, inner) blocks, ...), so the tests pick shapes that reach every branch: the reduced
run first, in the middle, last and covering all axes; extents on both sides of the kernels' chunk
of 512; a gap between reduced axes (the general walk); non-finite slices; a second use of the
input (the accumulating store); float32 and float64.

Tolerances: float64 kernels and reference evaluate the same formulas in double in a different
order (exp(x - lse) against exp(x - m) / s), a few ulps, so 1e-12. float32 kernels compute in
double and round once while the reference computes in float32: its accumulated rounding over a
slice of up to ~1100 terms stays below 2e-5 relative (FWD) and, for gradients, 2e-4 (as in
test_ops_models.py, whose reasoning applies unchanged)."""
import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff.reference import REFERENCE

DTYPES = [np.float64, np.float32]
FWD_TOL = {np.float64: (1e-12, 1e-13), np.float32: (2e-5, 1e-6)}
GRAD_TOL = {np.float64: (1e-11, 1e-13), np.float32: (2e-4, 1e-6)}


def _data(shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


# (shape, axis): every position of the reduced run, runs of several axes, and a gap (general walk)
SOFTMAX_LAYOUTS = [
    ((3, 1100), -1), ((1100, 3), 0), ((2, 700, 3), 1), ((4, 3, 600), 2), ((600, 3, 4), 0),
    ((5, 7), 1), ((5, 7), 0), ((2, 3, 4, 5), (1, 2)), ((2, 3, 4), (0, 1, 2)), ((3, 4, 5), (0, 2)),
    ((1, 9), 0), ((8, 1), 1), ((3, 2, 530), (0, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape,axis", SOFTMAX_LAYOUTS)
def test_softmax_family_every_layout(op, shape, axis, dtype):
    x = _data(shape).astype(dtype)
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    ref = REFERENCE[op]
    expected = ref.forward(x, axis=axis)
    np.testing.assert_allclose(out.numpy(), expected, *FWD_TOL[dtype])
    g = _data(out.shape, seed=1).astype(dtype)
    # x used a second time: the softmax contribution accumulates onto x's adjoint
    (out * ad.tensor(g)).sum().backward() if out.ndim else (out * float(g)).backward()
    (t * 2.0).sum().backward()
    (gx,) = ref.vjp(g, expected, x, axis=axis)
    np.testing.assert_allclose(t.grad.numpy(), gx + 2.0, *GRAD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [0, 1])
def test_softmax_family_non_finite_slices(op, axis, dtype):
    x = _data((4, 6)).astype(dtype)
    x[0, :] = -np.inf           # an all -inf slice on axis 1
    x[:, 1] = -np.inf           # and on axis 0
    x[2, 3] = np.inf
    x[3, 4] = np.nan
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=axis)
    with np.errstate(all="ignore"):
        expected = REFERENCE[op].forward(x, axis=axis)
    np.testing.assert_array_equal(np.isnan(out.numpy()), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out.numpy()[finite], expected[finite], *FWD_TOL[dtype])
    np.testing.assert_array_equal(out.numpy()[~finite & ~np.isnan(expected)],
                                  expected[~finite & ~np.isnan(expected)])


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_zero_cotangent_contributes_zero(op):
    x = np.array([[1000.0, -np.inf, 3.0], [np.inf, 1.0, 2.0]])
    t = ad.tensor(x, requires_grad=True)
    out = getattr(ad, op)(t, axis=1)
    out.backward(np.zeros(out.shape))
    np.testing.assert_array_equal(t.grad.numpy(), np.zeros_like(x))
