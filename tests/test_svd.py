"""ad.linalg.svd, ad.linalg.svdvals and the matrix norms ord 2, -2, 'nuc' (csrc/kernels/lapack.c,
pyautodiff/linalg.py): what the op table's rows (tests/op_table.py: forward, VJP, JVP, differences,
hvp, nested transforms, replay) do not say. NumPy's values bit for bit, shapes and dtypes, the
errors (repeated or zero singular values where U and Vh's derivative divides by them, full
matrices that are not square, NaN), svdvals at repeated singular values, gauge-invariant losses
of U and Vh, every route to the second derivative. Replay, anomaly mode and the nodes the rules
leave behind are test_linalg.py's tests, svd among the other LAPACK ops.

Matrices come from op_table.separated (singular values at least 0.5 apart and from 0), so the
derivatives are well conditioned. Tolerances: first derivatives against central differences of a
NumPy loss (step 1e-6: truncation ~1e-12 |f'''|, rounding ~1e-10 |f|) at rtol 1e-6; second
derivatives against central differences of the exact gradient (step 1e-5, ~1e-10) at 1e-7 of the
largest entry, a margin no wrong rule (errors of order 1) meets."""
import numpy as np
import pytest

import pyautodiff as ad
from op_table import separated

LinAlgError = np.linalg.LinAlgError
rng = np.random.default_rng(1717)
SHAPES = [(3, 3), (4, 3), (3, 5), (2, 4, 3), (2, 1, 2, 3)]


def _fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        e = e.reshape(x.shape)
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def _weights(shape):
    return np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape) / np.prod(shape)


# Losses of U, S, Vh that do not depend on the sign gesdd gives each pair (u_i, v_i), written
# once over a namespace (ad, or NumPy for the differences): U diag(c) Vh, |U|, U U^T, Vh^T Vh
def _losses(xp, svd):
    def uv(a):
        u, s, vh = svd(a)
        return ((u * _weights(s.shape[-1:])) @ vh * _weights(a.shape[-2:])).sum()

    def abs_u(a):
        u, s, vh = svd(a)
        return (xp.abs(u) * _weights(u.shape[-2:])).sum() + (xp.abs(vh) * _weights(vh.shape[-2:])).sum()

    def projectors(a):
        u, s, vh = svd(a)
        pu, pv = u @ xp.swapaxes(u, -1, -2), xp.swapaxes(vh, -1, -2) @ vh
        return (pu * _weights(pu.shape[-2:])).sum() ** 2 + (pv * _weights(pv.shape[-2:])).sum() * (s ** 2).sum()

    def values(a):
        return (svd(a)[1] ** 3 * _weights(a.shape[:-2] + (min(a.shape[-2:]),))).sum()
    return {"uv": uv, "abs_u": abs_u, "projectors": projectors, "values": values}


AD_LOSSES = _losses(ad, lambda a: ad.linalg.svd(a, full_matrices=False))
NP_LOSSES = _losses(np, lambda a: np.linalg.svd(a, full_matrices=False))
NORMS = [{"ord": 2}, {"ord": -2}, {"ord": "nuc"}, {"ord": 2, "axis": (2, 0), "keepdims": True},
         {"ord": "nuc", "axis": (-1, 1)}, {"ord": -2, "axis": (1, 2), "keepdims": True}]


def test_the_namespace():
    assert {"svd", "svdvals", "SVDResult"} <= set(ad.linalg.__all__)
    assert ad.linalg.SVDResult._fields == ("U", "S", "Vh")


@pytest.mark.parametrize("shape", SHAPES + [(1, 1), (1, 4)], ids=str)
def test_float64_forward_is_numpys_bit_for_bit(shape):
    # gesdd, NumPy's routine, on the same column-major copies (both wheels ship scipy-openblas)
    a = rng.standard_normal(shape)
    for full in (True, False):
        ours, theirs = ad.linalg.svd(a, full_matrices=full), np.linalg.svd(a, full_matrices=full)
        assert isinstance(ours, ad.linalg.SVDResult)
        for x, y in zip(ours, theirs):
            assert isinstance(x, ad.Tensor) and x.shape == y.shape and x.dtype == np.float64
            np.testing.assert_array_equal(x.numpy(), y)
    np.testing.assert_array_equal(ad.linalg.svdvals(a).numpy(), np.linalg.svdvals(a))
    np.testing.assert_array_equal(ad.linalg.svd(a, compute_uv=False).numpy(), np.linalg.svd(a, compute_uv=False))


def test_float32_and_integers():
    a = rng.standard_normal((2, 4, 3)).astype(np.float32)
    u, s, vh = ad.linalg.svd(a, full_matrices=False)
    assert u.dtype == s.dtype == vh.dtype == ad.linalg.svdvals(a).dtype == np.float32
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(a)[1], rtol=2e-6)
    np.testing.assert_allclose(((u * s[..., None, :]) @ vh).numpy(), a, rtol=0, atol=2e-6 * np.abs(a).max())
    ai = np.array([[3, 1], [1, 2], [0, 1]])
    assert ad.linalg.svdvals(ai).dtype == np.float64
    np.testing.assert_array_equal(ad.linalg.svdvals(ai).numpy(), np.linalg.svdvals(ai))
    with pytest.raises(TypeError):
        ad.linalg.svd(np.eye(2) * 1j)


@pytest.mark.parametrize("shape", [(3, 0), (0, 2), (2, 0, 0), (0, 3, 2)], ids=str)
def test_empty_matrices_as_numpy(shape):
    a = np.zeros(shape)
    for full in (True, False):   # full U of a (3, 0) matrix is the identity, as NumPy's
        for x, y in zip(ad.linalg.svd(a, full_matrices=full), np.linalg.svd(a, full_matrices=full)):
            assert x.shape == y.shape
            np.testing.assert_array_equal(x.numpy(), y)
    assert ad.linalg.svdvals(a).shape == np.linalg.svdvals(a).shape
    ta = ad.tensor(a, requires_grad=True)
    (ad.linalg.svdvals(ta).sum() + ad.linalg.svd(ta, full_matrices=False).U.sum()).backward()
    assert ta.grad.shape == shape and not ta.grad.numpy().any()


def test_bad_input_raises_naming_the_op():
    with pytest.raises(LinAlgError, match="svd: 1-dimensional array given"):
        ad.linalg.svd(np.ones(3))
    with pytest.raises(LinAlgError, match="svdvals: 0-dimensional array given"):
        ad.linalg.svdvals(np.float64(2.0))
    a = separated(rng, (2, 3, 3, 2))
    a[1, 2, 0, 1] = np.nan
    for fn, op in [(ad.linalg.svd, "svd"), (ad.linalg.svdvals, "svdvals")]:
        with pytest.raises(LinAlgError, match=rf"{op}: SVD did not converge \(a NaN or infinite entry\) \(batch "
                                              rf"element \(1, 2\) of a float64 matrix of shape \(2, 3, 3, 2\)\)"):
            fn(a)
    with pytest.raises(LinAlgError, match="svdvals: SVD did not converge"):
        ad.linalg.svdvals(np.array([[np.inf, 1.0], [0.0, 1.0]], np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(AD_LOSSES))
def test_gauge_invariant_losses_match_finite_differences(name, shape):
    a = separated(rng, shape)
    g = ad.grad(AD_LOSSES[name])(a).numpy()
    np.testing.assert_allclose(g, _fd_grad(NP_LOSSES[name], a), rtol=1e-6, atol=1e-7 * max(1, np.abs(g).max()))
    t = rng.standard_normal(shape)
    _, jt = ad.jvp(AD_LOSSES[name], (a,), (t,))
    np.testing.assert_allclose(float(jt), (g * t).sum(), rtol=1e-10)


@pytest.mark.parametrize("kw", NORMS, ids=str)
def test_matrix_norms_match_numpy_and_finite_differences(kw):
    x = rng.standard_normal((3, 4, 5))
    kw = dict(kw) if "axis" in kw else dict(kw, axis=(1, 2))
    y = ad.norm(x, **kw)
    expected = np.linalg.norm(x, **kw)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-14)
    w = rng.standard_normal(expected.shape)
    g = ad.grad(lambda v: (ad.norm(v, **kw) * w).sum())(x).numpy()
    np.testing.assert_allclose(g, _fd_grad(lambda v: (np.linalg.norm(v, **kw) * w).sum(), x), rtol=1e-6, atol=1e-8)


def _fd_hessian_vector(f, x, v, eps=1e-5):
    return ((ad.grad(f)(x + eps * v).numpy() - ad.grad(f)(x - eps * v).numpy()) / (2 * eps)).ravel()


SECOND_ORDER = dict(
    {f"loss_{k}": (f, (2, 4, 3)) for k, f in AD_LOSSES.items()},
    norm_2=(lambda x: ad.norm(x, 2), (3, 4)), norm_minus2=(lambda x: ad.norm(x, -2), (4, 3)),
    norm_nuc=(lambda x: ad.norm(x, "nuc", axis=(0, 2)).sum(), (3, 2, 4)),
    wide=(AD_LOSSES["uv"], (2, 5)), tall=(AD_LOSSES["projectors"], (5, 2)))


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_every_second_order_route_matches_finite_differences(name):
    f, shape = SECOND_ORDER[name]
    x = separated(rng, shape) if len(shape) != 3 or name.startswith("loss") else rng.standard_normal(shape)
    v = rng.standard_normal(shape)
    want = _fd_hessian_vector(f, x, v)
    scale = max(1.0, np.abs(want).max())
    routes = {
        "hessian (C forward over reverse)": np.asarray(ad.hessian(f)(x)).reshape(x.size, x.size) @ v.ravel(),
        "hvp": np.asarray(ad.hvp(f, (x,), (v,))[1][0]).ravel(),
        "grad of grad": np.asarray(ad.grad(lambda y: (ad.grad(f)(y) * v).sum())(x)).ravel(),
        "jvp of grad": np.asarray(ad.jvp(ad.grad(f), (x,), (v,))[1]).ravel(),
        "jacfwd of jacrev": np.asarray(ad.jacfwd(ad.jacrev(f))(x)).reshape(x.size, x.size) @ v.ravel(),
    }
    for route, hv in routes.items():
        np.testing.assert_allclose(hv, want, rtol=0, atol=1e-7 * scale, err_msg=route)


def test_third_order_of_svdvals_matches_differences_of_the_hessian():
    x = separated(rng, (3, 2))
    f = lambda a: (ad.linalg.svdvals(a) ** 3).sum()
    v = rng.standard_normal(x.shape)
    h = lambda y: np.asarray(ad.hvp(f, (y,), (v,))[1][0])
    third = ad.jvp(lambda y: ad.hvp(f, (y,), (v,))[1][0], (x,), (v,))[1]
    np.testing.assert_allclose(np.asarray(third), (h(x + 1e-5 * v) - h(x - 1e-5 * v)) / 2e-5, rtol=1e-6, atol=1e-6)


def test_svdvals_gradient_at_repeated_singular_values():
    # U diag(g) V^T needs no 1 / (s_i - s_j): the identity, and 2 Q (all singular values 2)
    eye = np.eye(3)
    np.testing.assert_array_equal(ad.grad(lambda a: (ad.linalg.svdvals(a) ** 2).sum())(eye).numpy(), 2 * eye)
    q = np.linalg.qr(rng.standard_normal((2, 4, 4)))[0]
    for a in (2 * q, np.stack([2 * eye[:2, :2], np.diag([1.0, 1.0])])):
        # the nuclear norm is differentiable at an invertible matrix, repeated values or not: U V^T
        g = ad.grad(lambda t: ad.norm(t, "nuc", axis=(-2, -1)).sum())(a).numpy()
        np.testing.assert_allclose(g, _fd_grad(lambda t: np.linalg.norm(t, "nuc", axis=(-2, -1)).sum(), a), atol=1e-8)
    # the 2-norm at a tie (a kink): max splits among the tied values, U_t V_t^T / t, whatever basis
    # gesdd picks (a tie in floating point: 2 Q for a random Q gives values 2 +- ulp, no tie)
    p = np.array([[0.0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, -1, 0, 0]])
    assert np.all(np.linalg.svdvals(2 * p) == 2)
    np.testing.assert_allclose(ad.grad(lambda t: ad.norm(t, 2))(2 * p).numpy(), p / 4, atol=1e-15)
    # a zero singular value (a kink of s) contributes 0, the smallest subgradient
    np.testing.assert_array_equal(ad.grad(lambda t: ad.norm(t, "nuc"))(np.diag([2.0, 0.0])).numpy(),
                                  np.diag([1.0, 0.0]))
    np.testing.assert_array_equal(ad.grad(lambda t: ad.norm(t, 2))(np.zeros((2, 3))).numpy(), np.zeros((2, 3)))


def test_second_derivative_of_svdvals_at_repeated_values_raises():
    f = lambda a: (ad.linalg.svdvals(a) ** 3).sum()
    a = np.stack([separated(rng, (3, 3)), np.diag([2.0, 2.0, 1.0])])
    ad.grad(f)(a)   # first order: fine
    msg = r"svdvals: the second derivative needs distinct nonzero singular values; s\[0\] = s\[1\] = 2 \(batch element \(1,\)"
    with pytest.raises(LinAlgError, match=msg):
        ad.hvp(f, (a,), (np.ones_like(a),))
    for route in (lambda: ad.grad(lambda y: ad.grad(f)(y).sum())(a), lambda: ad.jacfwd(ad.jacrev(f))(a)):
        with pytest.raises(LinAlgError, match=r"svd: the derivative of the singular vectors .* s\[0\] = s\[1\] = 2 "
                                              r"\(batch element \(1,\) of a float64 matrix of shape \(2, 3, 3\)\)"):
            route()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_singular_vectors_at_repeated_or_zero_singular_values_raise(dtype):
    # dU and dV divide by s_j^2 - s_i^2 (and by s): an error naming the batch element, never inf/nan
    a = separated(rng, (2, 3, 4)).astype(dtype)
    a[1] = np.diag([3.0, 3.0, 1.0]) @ np.eye(3, 4)
    f = AD_LOSSES["uv"]
    name = np.dtype(dtype).name
    for call in (lambda: ad.grad(f)(a), lambda: ad.jvp(f, (a,), (np.ones_like(a),))):
        with pytest.raises(LinAlgError, match=rf"svd: the derivative of the singular vectors .* s\[0\] = s\[1\] = 3 "
                                              rf"\(batch element \(1,\) of a {name} matrix of shape \(2, 3, 4\)\)"):
            call()
    a[1] = np.diag([3.0, 1.0, 0.0]) @ np.eye(3, 4)
    with pytest.raises(LinAlgError, match=r"s\[2\] = 0 \(batch element \(1,\)"):
        ad.grad(f)(a)
    # S alone needs neither
    g = ad.grad(lambda t: ad.linalg.svd(t).S.sum())(a).numpy()
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(g, (u * (s > 0)[..., None, :]) @ vh, rtol=1e-5, atol=1e-6)


def test_full_matrices_of_a_matrix_that_is_not_square_have_no_derivative():
    a = separated(rng, (4, 2))
    with pytest.raises(LinAlgError, match=r"svd: U and Vh of full_matrices=True have no derivative for a matrix "
                                          r"that is not square \(shape \(4, 2\)\)"):
        ad.grad(lambda t: (ad.linalg.svd(t).U ** 2 * _weights((4, 4))).sum())(a)
    # S of the same call, and full matrices of a square one, are fine
    g = ad.grad(lambda t: ad.linalg.svd(t).S.sum())(a).numpy()
    np.testing.assert_allclose(g, _fd_grad(lambda t: np.linalg.svd(t)[1].sum(), a), rtol=1e-6)
    sq = separated(rng, (3, 3))
    full = _losses(ad, lambda t: ad.linalg.svd(t, full_matrices=True))["uv"]
    np.testing.assert_allclose(ad.grad(full)(sq).numpy(), ad.grad(AD_LOSSES["uv"])(sq).numpy(), rtol=1e-14)


def test_float32_hessian_agrees_with_float64():
    f = AD_LOSSES["projectors"]
    x = separated(rng, (4, 3))
    h64 = np.asarray(ad.hessian(f)(x))
    h32 = np.asarray(ad.hessian(f)(x.astype(np.float32)))
    assert h32.dtype == np.float32
    # float32 through ~10 products and F (entries ~1): ~1e-6 relative per step
    np.testing.assert_allclose(h32, h64, rtol=0, atol=1e-4 * np.abs(h64).max())


def test_failed_rule_leaves_grads_and_graph_as_they_were():
    a = ad.tensor(np.diag([2.0, 2.0, 1.0]), requires_grad=True)
    u, s, vh = ad.linalg.svd(a)
    loss = (u * _weights((3, 3))).sum() + s.sum()
    with pytest.raises(LinAlgError):
        loss.backward()
    assert a.grad is None
    s.sum().backward()   # the graph is intact: S alone goes through
    np.testing.assert_array_equal(a.grad.numpy(), np.eye(3))
