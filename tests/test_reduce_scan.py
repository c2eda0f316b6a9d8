"""Reductions, scans and ordering ops of issue 17 beyond the op table (tests/op_table.py drives
forward, VJP, JVP, finite differences and the compositions of prod, var, std, norm, cumsum,
cumprod, sort, topk): the index-returning ops against NumPy, the zero rules of prod and cumprod in
closed form to second order, ties, and clear errors."""
import warnings

import numpy as np
import pytest

import pyautodiff as ad

RNG = np.random.default_rng(17)
X = RNG.standard_normal((3, 4, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (-1, True), (1, False), (None, True)])
def test_argmax_argmin_match_numpy(dtype, axis, keepdims):
    x = X.astype(dtype)
    x[0, 0, :2] = x[0, 0, 2]                   # ties: the first one wins, as in NumPy
    t = ad.tensor(x)
    for ours, theirs in ((ad.argmax, np.argmax), (ad.argmin, np.argmin)):
        got = ours(t, axis, keepdims)
        want = theirs(x, axis=axis, keepdims=keepdims)
        assert isinstance(got, np.ndarray) and got.dtype == np.intp
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(t.argmax(axis, keepdims), np.argmax(x, axis=axis, keepdims=keepdims))


def test_argsort_is_stable_and_descending_keeps_ties_in_order():
    x = np.array([[3.0, 1, 3, 2, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(ad.argsort(x), np.argsort(x, kind="stable"))
    np.testing.assert_array_equal(ad.argsort(ad.tensor(x), descending=True), [[0, 2, 3, 1, 4], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(ad.argsort(x, axis=None), np.argsort(x.reshape(-1), kind="stable"))
    np.testing.assert_array_equal(ad.tensor(x).argsort(0), np.argsort(x, 0, kind="stable"))


def test_topk_values_and_indices():
    x = ad.tensor(X, requires_grad=True)
    v, i = ad.topk(x, 2, axis=1)
    np.testing.assert_array_equal(i, np.argsort(-X, axis=1, kind="stable")[:, :2])
    np.testing.assert_array_equal(v.numpy(), np.take_along_axis(X, i, 1))
    v.sum().backward()
    expected = np.zeros_like(X)
    np.put_along_axis(expected, i, 1.0, 1)
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    v, i = ad.topk(X, 3, axis=-1, largest=False)
    np.testing.assert_array_equal(v.numpy(), np.sort(X, -1)[..., :3])


def test_prod_gradient_at_zeros_is_the_product_of_the_others():
    x = np.array([2.0, 0.0, 3.0, 4.0])
    np.testing.assert_array_equal(ad.grad(ad.prod)(x).numpy(), [0.0, 24.0, 0.0, 0.0])
    np.testing.assert_array_equal(ad.grad(ad.prod)(np.array([0.0, 5.0, 0.0])).numpy(), [0.0, 0.0, 0.0])
    # second order: d2/dxi dxj prod = product of the rest (i != j), 0 on the diagonal
    h = ad.hessian(ad.prod)(x).numpy()
    want = np.array([[0 if i == j else np.prod(np.delete(x, [i, j])) for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(h, want)
    assert not np.isnan(ad.grad(ad.prod)(np.zeros(5)).numpy()).any()


def test_cumprod_hessian_at_a_zero_matches_closed_form():
    x = np.array([1.5, 0.0, -2.0, 0.5])
    w = np.array([0.3, -1.0, 2.0, 0.7])
    f = lambda t: (ad.cumprod(t) * w).sum()
    h = ad.hessian(f)(x).numpy()
    # f = sum_k w_k prod_{j<=k} x_j: d2f/dxi dxj = sum_{k >= max(i, j)} w_k prod_{l<=k, l != i, j} x_l
    want = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i != j:
                want[i, j] = sum(w[k] * np.prod(np.delete(x[:k + 1], [i, j])) for k in range(max(i, j), 4))
    np.testing.assert_allclose(h, want, rtol=1e-14, atol=1e-15)


def test_var_std_match_numpy_in_float32_and_ddof_past_the_count():
    x = X.astype(np.float32)
    assert ad.var(x, axis=1).dtype == np.float32
    np.testing.assert_allclose(ad.std(x, (0, 2), ddof=1).numpy(), np.std(x, (0, 2), ddof=1), rtol=1e-5)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # NumPy's "Degrees of freedom <= 0"
        np.testing.assert_array_equal(ad.var(np.ones((2, 1)), axis=1, ddof=1).numpy(),
                                      np.var(np.ones((2, 1)), axis=1, ddof=1))      # 0/0: NaN, as NumPy
        np.testing.assert_array_equal(ad.var(np.array([[1.0, 2.0]]), axis=0, ddof=2).numpy(),
                                      np.var(np.array([[1.0, 2.0]]), axis=0, ddof=2))   # x/0: inf


BAD = [
    (lambda: ad.prod(X, 3), ValueError, "prod.*axis 3"),
    (lambda: ad.var(X, (0, 0)), ValueError, "var: repeated axis"),
    (lambda: ad.var(X, ddof="1"), TypeError, "var: ddof"),
    (lambda: ad.cumsum(X, 3), ValueError, "cumsum.*axis 3"),
    (lambda: ad.cumprod(X, 1.0), TypeError, "cumprod: axis"),
    (lambda: ad.norm(X, 1), ValueError, "norm: ord 1 with axis None needs a 1-D or 2-D"),
    (lambda: ad.norm(X, "fro", 0), ValueError, "norm: ord 'fro' is for matrices"),
    (lambda: ad.norm(np.zeros((0, 3)), -2), ValueError, r"norm: ord=-2 of matrices with no singular values \(shape \(0, 3\)"),
    (lambda: ad.norm(X, 2, (1, -2)), ValueError, "norm: repeated axis"),
    (lambda: ad.norm(X, 3, (0, 1)), ValueError, "norm: invalid ord 3"),
    (lambda: ad.norm(X, None, (0, 1, 2)), ValueError, "norm: axis must name 1 or 2"),
    (lambda: ad.argmax(X, 3), ValueError, "argmax.*axis 3"),
    (lambda: ad.argmin(np.zeros((2, 0)), 1), ValueError, "argmin: an empty sequence"),
    (lambda: ad.argsort(X, -4), ValueError, "argsort.*axis -4"),
    (lambda: ad.sort(np.float64(1.0)), ValueError, "sort: a 0-d"),
    (lambda: ad.topk(X, 6, 2), ValueError, "topk: k=6 is out of range"),
    (lambda: ad.topk(X, 1.0), TypeError, "topk: k"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_naming_the_op(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
