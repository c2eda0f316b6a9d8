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
