"""Regression tests of the sweep found while adding the ops of issue 17."""
import numpy as np
import pytest

import pyautodiff as ad


def test_failed_first_contribution_to_a_deferred_leaf_raises_cleanly():
    # With a custom node alive, backward defers leaf gradients (all or nothing). A VJP that fails
    # on a leaf's first contribution (here anomaly mode: gelu_tanh's VJP turns 1e300 into NaN)
    # used to drop the leaf's grad that deferral never made: a NULL dereference, a segfault.
    @ad.custom_vjp
    def ident(v):
        return v * 1.0

    ident.defvjp(lambda v: (v * 1.0, None), lambda res, g: (g,))
    keep = ident(ad.tensor([1.0], requires_grad=True))
    x = ad.tensor(1e300, requires_grad=True)
    with ad.detect_anomaly():
        y = ad.gelu(x, approximate="tanh")
        with pytest.raises(FloatingPointError, match="gelu_tanh"):
            y.backward()
    assert x.grad is None
    del keep


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pass_through_adjoint_handed_to_a_leaf(dtype):
    # x + y of two leaves: the cotangent buffer becomes y's grad (sweep.c, can_hand_over) and x's
    # is a copy; each grad is its own buffer, the seed is left alone, later backwards accumulate
    # without changing a grad the user already holds, and a leaf used again still sums every path
    rng = np.random.default_rng(5)
    xs, ys, gs = (rng.standard_normal(1000).astype(dtype) for _ in range(3))
    x, y, g = ad.tensor(xs, requires_grad=True), ad.tensor(ys, requires_grad=True), ad.tensor(gs)
    (x + y).backward(g)
    gx, gy = x.grad, y.grad
    np.testing.assert_array_equal(gx.numpy(), gs)
    np.testing.assert_array_equal(gy.numpy(), gs)
    (x - y).backward(g)
    np.testing.assert_array_equal(x.grad.numpy(), 2 * gs)
    np.testing.assert_array_equal(y.grad.numpy(), np.zeros_like(gs))
    np.testing.assert_array_equal(gx.numpy(), gs)          # the grads read before are unchanged
    np.testing.assert_array_equal(gy.numpy(), gs)
    np.testing.assert_array_equal(g.numpy(), gs)
    x.grad = None
    y.grad = None
    ((x + y) * 2.0 + (y + x)).backward(g)                  # each leaf takes one buffer, then sums
    np.testing.assert_allclose(x.grad.numpy(), 3 * gs, rtol=1e-6)
    np.testing.assert_allclose(y.grad.numpy(), 3 * gs, rtol=1e-6)
    z = x + y
    z.backward(g, retain_graph=True)                       # a retained graph backwards again
    z.backward(g)
    np.testing.assert_allclose(y.grad.numpy(), 5 * gs, rtol=1e-6)
