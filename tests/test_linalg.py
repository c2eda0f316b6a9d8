"""ad.linalg (csrc/kernels/lapack.c, pyautodiff/linalg.py): what the op table's generic tests do not
say. Batch shapes and broadcasting, a vector or matrix b in solve, the errors NumPy raises (and
the derivative of det at a singular matrix, which raises rather than lie), float32, every order
of derivative against finite differences of the gradient.

The matrices are well conditioned (cond ~ 10), so the tolerances state rounding only: float64
values come from the same LAPACK routines NumPy calls (equal, or within a few ulp where NumPy's
own inv is compared with our solve-based rules); second derivatives by central differences of
the exact gradient with step 1e-5 carry ~1e-10 truncation and ~1e-11 rounding error, so 1e-7
relative to the Hessian's largest entry is a wide margin that a wrong rule (errors of order 1)
cannot meet."""
import numpy as np
import pytest

import pyautodiff as ad
from op_table import well_conditioned, spd

LinAlgError = np.linalg.LinAlgError
rng = np.random.default_rng(17)


def test_the_namespace_is_numpys():
    assert set(ad.linalg.__all__) >= {"inv", "det", "slogdet", "solve", "cholesky"}
    assert ad.linalg.LinAlgError is LinAlgError
    assert not hasattr(ad, "inv") and not hasattr(ad, "solve")   # numpy has them in linalg only


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_values_match_numpy(dtype):
    a = well_conditioned(rng, (2, 3, 4, 4)).astype(dtype)
    s = spd(rng, (3, 4, 4)).astype(dtype)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    for ours, theirs in [(ad.linalg.inv(a), np.linalg.inv(a)), (ad.linalg.det(a), np.linalg.det(a)),
                         (ad.linalg.slogdet(a).logabsdet, np.linalg.slogdet(a).logabsdet),
                         (ad.linalg.cholesky(s), np.linalg.cholesky(s))]:
        assert ours.dtype == dtype and ours.shape == theirs.shape
        np.testing.assert_allclose(ours.numpy(), theirs, **tol)
    sign = ad.linalg.slogdet(a).sign
    assert isinstance(sign, np.ndarray) and sign.dtype == dtype
    np.testing.assert_array_equal(sign, np.linalg.slogdet(a).sign)
    assert set(sign.ravel()) == {-1.0, 1.0}    # both signs occur (well_conditioned negates rows)


def test_float64_forward_is_numpys_bit_for_bit():
    # the same LAPACK calls on the same column-major copies as numpy.linalg; NumPy's and SciPy's
    # wheels both ship scipy-openblas, so the same kernels run (a NumPy built on another LAPACK
    # would differ here by a few ulp, and this test would say so)
    a = well_conditioned(rng, (3, 5, 5))
    b = rng.standard_normal((3, 5, 2))
    np.testing.assert_array_equal(ad.linalg.solve(a, b).numpy(), np.linalg.solve(a, b))
    np.testing.assert_array_equal(ad.linalg.inv(a).numpy(), np.linalg.inv(a))
    np.testing.assert_array_equal(ad.linalg.det(a).numpy(), np.linalg.det(a))
    np.testing.assert_array_equal(ad.linalg.slogdet(a).logabsdet.numpy(), np.linalg.slogdet(a).logabsdet)
    s = spd(rng, (3, 5, 5))
    np.testing.assert_array_equal(ad.linalg.cholesky(s).numpy(), np.linalg.cholesky(s))


@pytest.mark.parametrize("sa,sb,expected", [
    ((4, 4), (4,), (4,)), ((4, 4), (4, 3), (4, 3)), ((2, 4, 4), (4,), (2, 4)),
    ((2, 4, 4), (4, 1), (2, 4, 1)), ((4, 4), (3, 4, 2), (3, 4, 2)), ((2, 1, 4, 4), (3, 4, 2), (2, 3, 4, 2))])
def test_solve_shapes_broadcast_as_numpy(sa, sb, expected):
    a, b = well_conditioned(rng, sa), rng.standard_normal(sb)
    x = ad.linalg.solve(a, b)
    assert x.shape == expected == np.linalg.solve(a, b).shape
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a, b), rtol=1e-12, atol=1e-13)
    # gradients come back in the inputs' own (unbroadcast) shapes
    ta, tb = ad.tensor(a, requires_grad=True), ad.tensor(b, requires_grad=True)
    ad.linalg.solve(ta, tb).sum().backward()
    assert ta.grad.shape == sa and tb.grad.shape == sb


def test_mixed_and_integer_dtypes_promote_as_numpy():
    a32 = well_conditioned(rng, (3, 3)).astype(np.float32)
    b64 = rng.standard_normal(3)
    assert ad.linalg.solve(a32, b64).dtype == np.linalg.solve(a32, b64).dtype == np.float64
    ai = np.array([[2, 1], [1, 3]])
    assert ad.linalg.inv(ai).dtype == np.float64
    np.testing.assert_allclose(ad.linalg.inv(ai).numpy(), np.linalg.inv(ai), rtol=1e-15)
    with pytest.raises(TypeError):
        ad.linalg.inv(np.eye(2) * 1j)


@pytest.mark.parametrize("fn", ["inv", "det", "slogdet", "cholesky"])
def test_not_square_or_not_a_matrix_is_a_linalgerror(fn):
    f = getattr(ad.linalg, fn)
    with pytest.raises(LinAlgError, match=rf"{fn}: last 2 dimensions .* square, got shape \(2, 3\)"):
        f(np.ones((2, 3)))
    with pytest.raises(LinAlgError, match=rf"{fn}: 1-dimensional array given"):
        f(np.ones(3))


def test_solve_shape_errors():
    # a vector b is named as given, not as the (n, 1) column solve makes of it
    with pytest.raises(ValueError, match=r"solve: b of shape \(4,\) does not match a of shape \(3, 3\)"):
        ad.linalg.solve(np.eye(3), np.ones(4))
    with pytest.raises(ValueError, match=r"solve: b of shape \(4, 1\) does not match a of shape \(3, 3\)"):
        ad.linalg.solve(np.eye(3), np.ones((4, 1)))
    with pytest.raises(ValueError, match="do not broadcast"):
        ad.linalg.solve(np.ones((2, 3, 3)), np.ones((4, 3, 1)))
    with pytest.raises(LinAlgError, match="solve: 0-dimensional"):
        ad.linalg.solve(np.float64(1.0), np.ones(1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_singular_and_indefinite_matrices_raise_naming_the_batch_element(dtype):
    a = well_conditioned(rng, (2, 3, 3, 3)).astype(dtype)
    a[1, 2] = [[1, 2, 3], [2, 4, 6], [0, 0, 1]]    # rank 2
    name = np.dtype(dtype).name
    for call, op in [(lambda: ad.linalg.inv(a), "inv"), (lambda: ad.linalg.solve(a, np.ones(3, dtype)), "solve")]:
        with pytest.raises(LinAlgError, match=rf"{op}: singular matrix \(batch element \(1, 2\) of a {name} "
                                              rf"matrix of shape \(2, 3, 3, 3\)\)"):
            call()
    s = spd(rng, (3, 3, 3)).astype(dtype)
    s[1] = np.diag([1.0, -1.0, 1.0])
    with pytest.raises(LinAlgError, match=rf"cholesky: matrix is not positive definite \(batch element \(1,\)"):
        ad.linalg.cholesky(s)


def test_det_of_a_singular_matrix_is_zero_and_its_derivative_raises():
    a = np.array([[1.0, 2.0], [2.0, 4.0]])
    assert ad.linalg.det(a).item() == 0.0 == np.linalg.det(a)
    sign, logabs = ad.linalg.slogdet(a)
    assert sign == 0 and logabs.item() == -np.inf
    # the true derivative here is the adjugate [[4, -2], [-2, 1]] (nonzero): never a silent 0 or
    # NaN, an error naming the op
    for f, op in [(lambda x: ad.linalg.det(x), "det"), (lambda x: ad.linalg.slogdet(x).logabsdet, "slogdet")]:
        with pytest.raises(LinAlgError, match=rf"{op}: the derivative at a singular matrix .* not implemented"):
            ad.grad(f)(a)
        with pytest.raises(LinAlgError, match=op):
            ad.jvp(f, (a,), (np.ones((2, 2)),))


def test_empty_matrices_as_numpy():
    for shape in [(0, 0), (2, 0, 0)]:
        a = np.zeros(shape)
        np.testing.assert_array_equal(ad.linalg.det(a).numpy(), np.linalg.det(a))   # det of 0x0 is 1
        assert ad.linalg.inv(a).shape == shape
        assert ad.linalg.cholesky(a).shape == shape


def test_cholesky_reads_the_lower_triangle_and_its_gradient_is_zero_above_it():
    s = spd(rng, (4, 4))
    junk = s + np.triu(rng.standard_normal((4, 4)), 1)   # the upper triangle is never read
    np.testing.assert_array_equal(ad.linalg.cholesky(junk).numpy(), ad.linalg.cholesky(s).numpy())
    g = ad.grad(lambda x: (ad.linalg.cholesky(x) ** 3).sum())(s).numpy()
    assert np.all(np.triu(g, 1) == 0)
    # along a symmetric direction it agrees with the symmetric gradient (PyTorch's, JAX's)
    v = rng.standard_normal((4, 4))
    v = v + v.T
    f = lambda x: (np.linalg.cholesky(x) ** 3).sum()
    fd = (f(s + 1e-6 * v) - f(s - 1e-6 * v)) / 2e-6
    np.testing.assert_allclose((g * v).sum(), fd, rtol=1e-7)


def _fd_hessian(f, x, eps=1e-5):
    g = lambda y: np.asarray(ad.grad(f)(y))
    h = np.empty((x.size, x.size))
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = eps
        h[:, i] = ((g(x + e.reshape(x.shape)) - g(x - e.reshape(x.shape))) / (2 * eps)).ravel()
    return h


_B = rng.standard_normal((3, 2))
SECOND_ORDER = {
    "solve_a": (lambda x: (ad.linalg.solve(x, _B) ** 2).sum(), lambda: well_conditioned(rng, (3, 3))),
    "solve_both": (lambda x: (ad.linalg.solve(x[:, :3], x[:, 3]) ** 3).sum(),
                   lambda: np.concatenate([well_conditioned(rng, (3, 3)), rng.standard_normal((3, 1))], 1)),
    "inv": (lambda x: (ad.linalg.inv(x) ** 3).sum(), lambda: well_conditioned(rng, (2, 3, 3))),
    "det": (lambda x: ad.linalg.det(x).sum(), lambda: well_conditioned(rng, (2, 3, 3))),
    "slogdet": (lambda x: (ad.linalg.slogdet(x).logabsdet ** 2).sum(), lambda: well_conditioned(rng, (3, 3))),
    "cholesky": (lambda x: (ad.linalg.cholesky(x) ** 3).sum(), lambda: spd(rng, (3, 3))),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_every_second_order_route_matches_finite_differences(name):
    f, draw = SECOND_ORDER[name]
    x = draw()
    h = _fd_hessian(f, x)
    scale = np.abs(h).max()
    v = rng.standard_normal(x.shape)
    routes = {
        "hessian (C forward over reverse)": np.asarray(ad.hessian(f)(x)).reshape(x.size, x.size) @ v.ravel(),
        "hvp": np.asarray(ad.hvp(f, (x,), (v,))[1][0]).ravel(),
        "grad of grad": np.asarray(ad.grad(lambda y: (ad.grad(f)(y) * v).sum())(x)).ravel(),
        "jvp of grad": np.asarray(ad.jvp(ad.grad(f), (x,), (v,))[1]).ravel(),
    }
    for route, hv in routes.items():
        np.testing.assert_allclose(hv, h @ v.ravel(), rtol=0, atol=1e-7 * scale, err_msg=route)


@pytest.mark.parametrize("name", ["inv", "cholesky"])
def test_gradcheck_at_second_order_in_float32_agrees_with_float64(name):
    f, draw = SECOND_ORDER[name]
    x = draw()
    h64 = np.asarray(ad.hessian(f)(x))
    h32 = np.asarray(ad.hessian(f)(x.astype(np.float32)))
    assert h32.dtype == np.float32
    # float32 through chains of three solves: ~cond^2 * 1.2e-7 relative
    np.testing.assert_allclose(h32, h64, rtol=0, atol=1e-4 * np.abs(h64).max())


def test_replay_recomputes_at_new_inputs():
    a0, a1 = well_conditioned(rng, (3, 3)), well_conditioned(rng, (3, 3))
    def f(a):
        u, s, vh = ad.linalg.svd(a)   # U diag(c) Vh: independent of gesdd's signs
        return (ad.linalg.det(a) + (ad.linalg.inv(a) ** 2).sum() + ad.linalg.cholesky(a @ a.T).sum()
                + ad.norm(a, "nuc") + ((u * np.arange(1.0, 4.0)) @ vh).sum() + ad.linalg.svdvals(a).max())
    rec = ad.record(f, a0)
    v, g = rec.value_and_grad(a1)
    v1, g1 = ad.value_and_grad(f)(a1)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(v1))
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g1))


def test_rules_leave_no_node_behind_and_anomaly_mode_sees_no_nan():
    # the numeric rules run their formulas on constant nodes made and freed mid-sweep
    a = well_conditioned(rng, (2, 3, 3))
    s = spd(rng, (3, 3))
    before = ad.tape_stats()["live_nodes"]
    with ad.detect_anomaly():
        for f, x in [(lambda x: (ad.linalg.inv(x) ** 2).sum() + ad.linalg.det(x).sum(), a),
                     (lambda x: (ad.linalg.cholesky(x) ** 3).sum() + ad.linalg.slogdet(x).logabsdet, s),
                     (lambda x: ((lambda u, s, vh: (u * s[..., None, :] ** 2 @ vh * x).sum())(*ad.linalg.svd(x))
                                 + ad.norm(x, 2, axis=(1, 2)).sum()), a)]:
            ad.grad(f)(x)
            ad.hessian(f)(x)
            ad.jvp(f, (x,), (np.ones_like(x),))
            ad.grad(lambda y: (ad.grad(f)(y) ** 2).sum())(x)
    assert ad.tape_stats()["live_nodes"] == before


def test_inplace_write_to_a_saved_matrix_is_caught():
    a = ad.tensor(well_conditioned(rng, (3, 3)), requires_grad=True)
    m = a * 1.0
    y = ad.linalg.inv(m).sum()
    with ad.no_grad():
        m[0, 0] = 5.0
    with pytest.raises(RuntimeError, match="version|modified|overwritten"):
        y.backward()
