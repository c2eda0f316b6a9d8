"""Products of issue 17 beyond the op table (tests/op_table.py drives forward, VJP, JVP, finite
differences and the compositions of dot, vdot, outer, inner, tensordot, trace, einsum): einsum
against np.einsum on more subscripts and in float32, second order through einsum, clear errors."""
import numpy as np
import pytest

import pyautodiff as ad

RNG = np.random.default_rng(3)


def r(*shape):
    return RNG.standard_normal(shape)


MORE = [("ij,jk->ki", [(3, 4), (4, 2)]), ("ijk->kji", [(2, 3, 4)]), ("ij,j->i", [(5, 3), (3,)]),
        ("...i,...i->...", [(2, 3, 4), (4,)]), ("a...,a...->...", [(3, 2), (3, 1)]), ("ijkl,jk->il", [(2, 3, 4, 2), (3, 4)]),
        ("ab,bc,cd,de->ae", [(2, 3), (3, 4), (4, 5), (5, 2)]), ("ii,jj->ij", [(3, 3), (2, 2)]), ("ijj->i", [(2, 3, 3)]),
        ("i,j,k->ijk", [(2,), (3,), (1,)]), ("ij->i", [(0, 3)]), ("ab, bc -> ac", [(2, 3), (3, 2)]),
        ("bij,bjk->bik", [(1, 3, 4), (5, 4, 2)])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec,shapes", MORE, ids=[m[0] for m in MORE])
def test_einsum_matches_numpy(spec, shapes, dtype):
    xs = [r(*s).astype(dtype) for s in shapes]
    got = ad.einsum(spec, *xs)
    want = np.einsum(spec, *xs)
    assert got.dtype == want.dtype and got.shape == want.shape
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol)


def test_einsum_second_order_is_the_bilinear_hessian():
    # f(x) = x^T A x through einsum: Hessian A + A^T, exactly
    a = r(4, 4)
    h = ad.hessian(lambda x: ad.einsum("i,ij,j->", x, a, x))(r(4)).numpy()
    np.testing.assert_allclose(h, a + a.T, rtol=1e-14, atol=1e-14)
    h = ad.hessian(lambda m: ad.einsum("ij,ij->", m, m) + ad.trace(m @ m))(r(2, 2)).numpy().reshape(4, 4)
    want = 2 * np.eye(4)
    for i in range(2):
        for j in range(2):
            want[i * 2 + j, j * 2 + i] += 2
    np.testing.assert_allclose(h, want, rtol=1e-14, atol=1e-14)


def test_einsum_returns_a_new_tensor_for_an_identity():
    x = ad.tensor(r(2, 3), requires_grad=True)
    y = ad.einsum("ij->ij", x)
    assert y is not x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


BAD = [
    (lambda: ad.einsum("ij,jk->ik", r(2, 3), r(4, 2)), ValueError, "einsum: label 'j' has sizes"),
    (lambda: ad.einsum("ij,jk", r(2, 3)), ValueError, "einsum: 2 operand subscripts"),
    (lambda: ad.einsum("ijk", r(2, 3)), ValueError, "einsum: subscript 'ijk' has 3 labels"),
    (lambda: ad.einsum("i1", r(2, 3)), ValueError, "einsum: invalid subscript"),
    (lambda: ad.einsum("ij->iz", r(2, 3)), ValueError, "einsum: output label 'z'"),
    (lambda: ad.einsum("ij->ii", r(2, 3)), ValueError, "einsum: output subscript 'ii' repeats"),
    (lambda: ad.einsum("...i->i", r(2, 3)), ValueError, "einsum: .* no '...'"),
    (lambda: ad.einsum("ii", r(2, 3)), ValueError, "einsum: label 'i' has sizes"),
    (lambda: ad.einsum(3, r(2)), TypeError, "einsum: subscripts must be a string"),
    (lambda: ad.einsum("i"), ValueError, "einsum: no operands"),
    (lambda: ad.dot(r(2, 3), r(2, 3)), ValueError, "dot: shapes"),
    (lambda: ad.dot(r(2, 3, 4), r(3, 2)), ValueError, "dot: shapes .* not aligned"),
    (lambda: ad.vdot(r(2, 3), r(5)), ValueError, "vdot: operands of 6 and 5"),
    (lambda: ad.inner(r(2, 3), r(2)), ValueError, "inner: the last axes"),
    (lambda: ad.tensordot(r(2, 3), r(2, 3), 1), ValueError, "tensordot: shape mismatch"),
    (lambda: ad.tensordot(r(2, 3), r(2, 3), 3), ValueError, "tensordot: axes=3 is out of range"),
    (lambda: ad.tensordot(r(2, 3), r(2, 3), ((0, 1), (0,))), ValueError, "tensordot: 2 axes of a against 1"),
    (lambda: ad.tensordot(r(2, 3), r(2, 3), ((2,), (0,))), ValueError, "tensordot.*axis 2"),
    (lambda: ad.tensordot(r(2, 3), r(2, 3), "x"), TypeError, "tensordot: axes"),
    (lambda: ad.trace(r(3)), ValueError, "trace: needs at least 2 axes"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_naming_the_op(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
