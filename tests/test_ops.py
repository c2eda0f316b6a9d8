"""Every op, driven by the op table (tests/op_table.py), in float32 and float64:

  (a) the C forward against the NumPy reference forward,
  (b) the C gradient (backward with a random cotangent) against the reference VJP,
  (c) the C gradient against central differences of u^T f along random directions, in float64
      (pyautodiff.numerical.gradcheck).
"""
import warnings
import zlib

import numpy as np
import pytest

import pyautodiff as ad
from pyautodiff.numerical import gradcheck
from pyautodiff.reference import REFERENCE

from op_table import ROWS, ISSUE2_OPS, F32, F64

DTYPES = [F32, F64]

CASES = [pytest.param(r, i, id=f"{r.name}-{i}-{s.label}") for r in ROWS for i, s in enumerate(r.sample_list())]
SMOOTH_CASES = [pytest.param(r, i, id=f"{r.name}-{i}-{s.label}") for r in ROWS if r.dtypes is None
                for i, s in enumerate(r.sample_list()) if s.smooth]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _call(r, sample, leaves):
    return r.fn(*leaves, **sample.params)


def _reference(r, sample):
    params = dict(r.params)
    params.update(sample.params)
    return REFERENCE[r.ref], params


def _quiet(fn, *args, **kw):
    """Run a reference rule without NumPy's warnings: the edge samples (mean of nothing, 0 ** -x
    in the unused gradient of a constant) produce the IEEE values on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def test_table_covers_every_issue2_op():
    covered = {r.public for r in ROWS}
    assert set(ISSUE2_OPS) <= covered, sorted(set(ISSUE2_OPS) - covered)
    for r in ROWS:
        assert r.ref in REFERENCE, r.name
        assert r.sample_list(), r.name
    # both broadcasting directions, 0-d, size-1 and 0-size appear among the samples
    labels = " ".join(s.label for r in ROWS for s in r.sample_list())
    for needle in ("(3, 1)x(1, 4)", "(5,)x(2, 5)", "()x()", "(1,)x(3,)", "(0,)", "(2, 1, 3, 4)@(5, 4, 2)"):
        assert needle in labels, needle


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("r,i", CASES)
def test_forward_matches_reference(r, i, dtype):
    sample = r.sample_list()[i]
    xs = r.cast(sample, dtype)
    y = _call(r, sample, [ad.tensor(x) for x in xs])
    ref, params = _reference(r, sample)
    expected = _quiet(ref.forward, *r.reference_inputs(xs), **params)
    got = y.numpy()
    assert isinstance(y, ad.Tensor)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    rtol, atol = r.tol[np.dtype(expected.dtype)]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("r,i", CASES)
def test_vjp_matches_reference(r, i, dtype):
    sample = r.sample_list()[i]
    xs = r.cast(sample, dtype)
    leaves = [ad.tensor(x, requires_grad=True) for x in xs]
    y = _call(r, sample, leaves)
    out = y.numpy()
    # the reference VJP gets the C output, so the VJP formula is compared on the same forward value
    g = _rng(r.name, i, str(dtype)).standard_normal(out.shape).astype(out.dtype)
    y.backward(grad=g)
    ref, params = _reference(r, sample)
    expected = _quiet(ref.vjp, g, out, *r.reference_inputs(xs), **params)
    for leaf, x, k in zip(leaves, xs, r.grad_indices(len(xs))):
        grad = leaf.grad
        assert grad is not None
        assert grad.dtype == x.dtype == expected[k].dtype      # a leaf's grad has the leaf's dtype
        assert grad.shape == x.shape
        rtol, atol = (r.grad_tol or r.tol)[np.dtype(x.dtype)]
        np.testing.assert_allclose(grad.numpy(), expected[k], rtol=rtol, atol=atol, equal_nan=True)


# Central differences in float64: with the default step (cbrt(eps) * max(1, |x|) ~ 6e-6) the
# truncation error is ~h^2 |f'''| ~ 1e-10 and the round-off ~eps |f| / h ~ 4e-11 |f|; the inputs
# here keep |f| and |f'''| below ~100, so rtol 1e-6 / atol 1e-7 leave a 100x margin and still
# catch any gradient wrong by more than a part in a million. The one exception is astype to
# float32, whose output is float32 by definition: it is checked with gradcheck's float32 defaults
# (rtol 2e-3 with steps of cbrt(float32 eps), see pyautodiff/numerical.py).
@pytest.mark.parametrize("r,i", SMOOTH_CASES)
def test_gradient_matches_finite_differences(r, i):
    sample = r.sample_list()[i]
    xs = r.cast(sample, F64)

    def f(*ts):
        return _call(r, sample, ts)

    with ad.no_grad():
        out_dtype = f(*[ad.tensor(x) for x in xs]).dtype
    tol = {"rtol": 1e-6, "atol": 1e-7} if out_dtype == F64 else {}
    assert gradcheck(f, xs, n_directions=4, seed=zlib.crc32(r.name.encode()) + i, **tol)


# ---------------------------------------------------------------------------------------------
# composites: whole graphs through several op families, against finite differences
# ---------------------------------------------------------------------------------------------
def _issue_example(W, b, x):
    return ad.tanh(x @ W + b).sum()


COMPOSITES = {
    # the issue's example: b broadcasts over the batch, x is a plain operand here
    "issue2_example": (_issue_example, lambda rng: (rng.standard_normal((3, 4)), rng.standard_normal(4),
                                                    rng.standard_normal((8, 3)))),
    "mlp_relu_mean": (lambda W1, W2, x: ad.mean(ad.relu(x @ W1) @ W2 * 0.5),
                      lambda rng: (rng.standard_normal((5, 6)), rng.standard_normal((6, 2)),
                                   rng.standard_normal((4, 5)))),
    "sum_tanh_exp": (lambda x, w, b: ad.sum(ad.tanh(x * w + b) * ad.exp(-x * x)),
                     lambda rng: (rng.standard_normal(50), rng.standard_normal(50), rng.standard_normal(()))),
    "softmax_like": (lambda x: ad.log(ad.sum(ad.exp(x - ad.max(x, axis=1, keepdims=True)), axis=1)).mean(),
                     lambda rng: (rng.standard_normal((4, 6)),)),
    "reuse_and_layout": (lambda x: (x.reshape(3, 4).T @ x.reshape(3, 4)).sum()
                         + ad.broadcast_to(x.reshape(3, 4).sum(axis=0), (2, 4)).max(),
                         lambda rng: (rng.standard_normal(12),)),
    "pow_div_sqrt": (lambda a, b: ad.sqrt(a ** b / (1.0 + a) + 2.0 ** b).sum(),
                     lambda rng: (rng.uniform(0.5, 2, (3, 2)), rng.standard_normal((1, 2)))),
    "max_min_abs_sigmoid": (lambda a, b: ad.sigmoid(ad.maximum(a, b) - ad.minimum(a, b) * ad.abs(a)).min(axis=0).sum(),
                            lambda rng: (rng.standard_normal((4, 3)), rng.standard_normal(3))),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_gradients_match_finite_differences(name):
    f, make = COMPOSITES[name]
    xs = make(np.random.default_rng(zlib.crc32(name.encode())))
    assert gradcheck(f, xs, rtol=1e-6, atol=1e-7, n_directions=6)


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_gradients_in_float32_agree_with_float64(name):
    """The same graph in float32 gives the float64 gradient to float32 precision (2e-4 relative to
    the largest gradient entry: a chain of ~5 float32 ops, each a few ulp, over sums of <= 50 terms)."""
    f, make = COMPOSITES[name]
    xs = make(np.random.default_rng(zlib.crc32(name.encode())))
    grads = {}
    for dt in DTYPES:
        leaves = [ad.tensor(np.asarray(x, dt), requires_grad=True) for x in xs]
        y = f(*leaves)
        assert y.dtype == dt
        y.backward()
        grads[dt] = [leaf.grad.numpy() for leaf in leaves]
        assert all(g.dtype == dt for g in grads[dt])
    for g32, g64 in zip(grads[F32], grads[F64]):
        scale = np.abs(g64).max() if g64.size else 1.0
        np.testing.assert_allclose(g32, g64, rtol=0, atol=2e-4 * max(scale, 1.0))
