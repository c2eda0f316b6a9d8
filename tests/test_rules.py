"""The seed's gradient rules, one named test each: gradients accumulate at branches, clear them
before a new pass, add distributes, mul swaps, max routes (ties split equally), sum and broadcast
are duals; and the NaN-safety rule. Values used here are exact in binary floating point (small
integers, halves), so the expected gradients are compared exactly unless a comment says why not.
"""
import numpy as np
import pytest

import pyautodiff as ad

DTYPES = [np.float32, np.float64]


def leaf(values, dtype=np.float64):
    return ad.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ---------------------------------------------------------------------------------------------
# gradients accumulate at branches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_accumulate_at_branches(dtype):
    x = leaf([0.5, -1.0, 2.0], dtype)
    y = (x * 2.0 + x * 3.0 - x + ad.exp(x)).sum()      # x feeds four consumers
    y.backward()
    expected = 4.0 + np.exp(np.asarray([0.5, -1.0, 2.0], dtype))
    # exp is the only inexact term: float32 exp within 2 ulp, plus one rounding of the sum
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=4e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_x_times_x_gets_both_contributions(dtype):
    x = leaf([1.5, -2.0, 0.0, 3.0], dtype)
    (x * x).backward(grad=np.ones(4))
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, -4.0, 0.0, 6.0])      # 2x, exactly


def test_branch_through_intermediate_and_broadcast():
    x = leaf([[1.0], [2.0], [3.0]])                 # (3, 1)
    h = x * 2.0                                     # intermediate used twice
    y = (h * ad.tensor(np.ones((3, 4))) + h).sum()  # both uses broadcast h to (3, 4)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[16.0], [16.0], [16.0]])   # 2 * (4 + 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hundred_thousand_way_fan_out(dtype):
    x = leaf([1.0, -2.0], dtype)
    acc = x
    for _ in range(10 ** 5 - 1):
        acc = acc + x                               # x has 10^5 consumers
    acc.backward(grad=np.array([1.0, 0.5]))
    # sums of 10^5 ones and halves are exact in float32 (< 2^24) and float64
    np.testing.assert_array_equal(x.grad.numpy(), [1e5, 5e4])
    np.testing.assert_array_equal(acc.numpy(), [1e5, -2e5])


# ---------------------------------------------------------------------------------------------
# clearing, and accumulation across backward calls
# ---------------------------------------------------------------------------------------------
def test_grads_accumulate_across_backward_calls_until_cleared():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0 + 2.0, 3.0 + 4.0])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    x.grad = None
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


def test_accumulation_with_retain_graph():
    x = leaf([1.0, -1.0])
    y = (x * x * x).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [9.0, 9.0])      # 3 * 3x^2


def test_grad_handed_out_is_cleared_not_mutated_by_zero_grad():
    x = leaf([1.0, 2.0])
    (x * 2.0).sum().backward()
    g = x.grad
    x.zero_grad()
    (x * 5.0).sum().backward()
    # zero_grad drops the old grad (set_to_none semantics): the tensor handed out keeps its values
    np.testing.assert_array_equal(g.numpy(), [2.0, 2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 5.0])


def test_grad_handed_out_is_not_mutated_by_later_backward():
    """Accumulation is in place only while the leaf alone holds its grad; a grad tensor the user
    kept (to log it, say) keeps its values, as in PyTorch."""
    x = leaf([1.0, 2.0])
    (x * 2.0).sum().backward()
    g = x.grad
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(g.numpy(), [2.0, 2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [7.0, 7.0])
    del g
    (x * 1.0).sum().backward()                     # sole owner again: accumulates in place
    np.testing.assert_array_equal(x.grad.numpy(), [8.0, 8.0])


def test_assigned_grad_that_a_graph_still_reads_is_not_corrupted():
    z = leaf([0.0, 1.0])
    y = ad.exp(z)                                  # exp's VJP reads y's values
    w = leaf([1.0, 1.0])
    w.grad = y
    (w * 10.0).sum().backward()                    # accumulates into w's grad, not into y
    np.testing.assert_array_equal(w.grad.numpy(), np.exp([0.0, 1.0]) + 10.0)
    np.testing.assert_array_equal(y.numpy(), np.exp([0.0, 1.0]))
    y.sum().backward()
    np.testing.assert_array_equal(z.grad.numpy(), np.exp([0.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# add distributes, mul swaps
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_distributes(dtype):
    a, b = leaf([1.0, 2.0, 3.0], dtype), leaf([10.0, 20.0, 30.0], dtype)
    g = np.array([0.5, -1.0, 4.0], dtype)
    (a + b).backward(grad=g)
    np.testing.assert_array_equal(a.grad.numpy(), g)
    np.testing.assert_array_equal(b.grad.numpy(), g)
    c, d = leaf([1.0, 2.0], dtype), leaf([3.0, 4.0], dtype)
    (c - d).backward(grad=np.array([1.0, 2.0]))
    np.testing.assert_array_equal(c.grad.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(d.grad.numpy(), [-1.0, -2.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mul_swaps(dtype):
    a, b = leaf([1.0, 2.0, -3.0], dtype), leaf([4.0, -0.5, 8.0], dtype)
    g = np.array([1.0, 2.0, 0.25], dtype)
    (a * b).backward(grad=g)
    np.testing.assert_array_equal(a.grad.numpy(), g * np.array([4.0, -0.5, 8.0]))
    np.testing.assert_array_equal(b.grad.numpy(), g * np.array([1.0, 2.0, -3.0]))


# ---------------------------------------------------------------------------------------------
# max routes; ties split equally
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_routes_to_the_argmax(dtype):
    x = leaf([1.0, 5.0, 2.0], dtype)
    ad.max(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 0.0])
    y = leaf([[1.0, 7.0], [9.0, 3.0]], dtype)
    ad.min(y, axis=1).backward(grad=np.array([2.0, 3.0]))
    np.testing.assert_array_equal(y.grad.numpy(), [[2.0, 0.0], [0.0, 3.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_and_min_ties_split_equally(dtype):
    x = leaf([3.0, 3.0, 1.0], dtype)
    ad.max(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.5, 0.5, 0.0])
    y = leaf([[2.0, 2.0, 2.0, 5.0], [1.0, 0.0, 1.0, 1.0]], dtype)
    ad.min(y, axis=1, keepdims=True).backward(grad=np.array([[3.0], [6.0]]))
    np.testing.assert_array_equal(y.grad.numpy(), [[1.0, 1.0, 1.0, 0.0], [0.0, 6.0, 0.0, 0.0]])
    z = leaf(np.full((2, 2), 4.0), dtype)
    ad.max(z).backward()
    np.testing.assert_array_equal(z.grad.numpy(), np.full((2, 2), 0.25))


@pytest.mark.parametrize("dtype", DTYPES)
def test_maximum_and_minimum_route_and_split_ties(dtype):
    a, b = leaf([1.0, 5.0, 2.0, -1.0], dtype), leaf([3.0, 5.0, 0.0, -1.0], dtype)
    ad.maximum(a, b).backward(grad=np.array([1.0, 2.0, 4.0, 8.0]))
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 1.0, 4.0, 4.0])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0, 0.0, 4.0])
    a.zero_grad()
    b.zero_grad()
    ad.minimum(a, b).backward(grad=np.array([1.0, 2.0, 4.0, 8.0]))
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 1.0, 0.0, 4.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 1.0, 4.0, 4.0])


def test_maximum_of_x_with_itself_gives_x_the_whole_gradient():
    x = leaf([1.0, -2.0])
    ad.maximum(x, x).sum().backward()               # both halves land on the same leaf
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])


def test_maximum_tie_through_broadcasting():
    a = leaf([[2.0], [1.0]])                        # (2, 1) against (3,)
    b = leaf([2.0, 2.0, 0.0])
    ad.maximum(a, b).sum().backward()
    # row 0: ties at columns 0, 1 (half each), a wins column 2; row 1: b wins columns 0, 1
    np.testing.assert_array_equal(a.grad.numpy(), [[0.5 + 0.5 + 1.0], [1.0]])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5 + 1.0, 0.5 + 1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# sum and broadcast are duals
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_input_gradient_is_sum_over_broadcast_axes(dtype):
    rng = np.random.default_rng(0)
    b = leaf(rng.standard_normal((3, 1)), dtype)
    c = leaf(rng.standard_normal(4), dtype)
    x = ad.tensor(rng.standard_normal((2, 3, 4)).astype(dtype))
    g = rng.standard_normal((2, 3, 4)).astype(dtype)
    (x + b * c).backward(grad=g)
    cv, bv = c.numpy(), b.numpy()
    # float32: C adds in a different order than NumPy's pairwise sum; 8 and 6 terms of size ~1
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(b.grad.numpy(), (g * cv).sum(axis=(0, 2)).reshape(3, 1), **tol)
    np.testing.assert_allclose(c.grad.numpy(), (g * bv).sum(axis=(0, 1)), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_to_and_sum_are_adjoint(dtype):
    rng = np.random.default_rng(1)
    x = leaf(rng.standard_normal((3, 1)), dtype)
    g = rng.standard_normal((2, 3, 5)).astype(dtype)
    ad.broadcast_to(x, (2, 3, 5)).backward(grad=g)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), g.sum(axis=(0, 2)).reshape(3, 1), **tol)
    # and the other way round: sum's gradient is the cotangent broadcast back
    y = leaf(rng.standard_normal((2, 3, 5)), dtype)
    gs = rng.standard_normal(3).astype(dtype)
    ad.sum(y, axis=(0, 2)).backward(grad=gs)
    np.testing.assert_array_equal(y.grad.numpy(), np.broadcast_to(gs.reshape(1, 3, 1), (2, 3, 5)))
    # <broadcast(x), g> == <x, sum(g)>: the two maps are transposes of each other
    lhs = float(np.sum(np.broadcast_to(x.numpy(), (2, 3, 5)).astype(np.float64) * g))
    rhs = float(np.sum(x.numpy().astype(np.float64) * x.grad.numpy()))
    assert lhs == pytest.approx(rhs, rel=1e-5 if dtype == np.float32 else 1e-12)


def test_mean_distributes_evenly():
    x = leaf(np.zeros((4, 2)))
    ad.mean(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((4, 2), 0.125))


# ---------------------------------------------------------------------------------------------
# NaN-safety: a zero cotangent contributes exactly 0, even where the local derivative is inf/NaN
# ---------------------------------------------------------------------------------------------
def test_masked_sqrt_at_zero_has_zero_gradient():
    x = leaf([0.0, 4.0, 0.0, 9.0])
    mask = ad.tensor([0.0, 1.0, 0.0, 1.0])
    (ad.sqrt(x) * mask).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.25, 0.0, 1.0 / 6.0])


def test_nonzero_cotangent_at_a_singularity_stays_ieee():
    x = leaf([0.0, 4.0])
    ad.sqrt(x).sum().backward()
    assert x.grad.numpy()[0] == np.inf
    assert x.grad.numpy()[1] == 0.25
    y = leaf([0.0])
    ad.log(y).sum().backward()
    assert y.grad.numpy()[0] == np.inf


SINGULAR = {
    # name: (function of the leaf, input where a local derivative is inf or NaN)
    "sqrt": (ad.sqrt, [0.0, 1.0]),
    "log": (ad.log, [0.0, 1.0]),
    "log_negative": (ad.log, [-1.0, 1.0]),                   # derivative finite, value NaN
    "exp_overflow": (ad.exp, [800.0, 1.0]),                  # exp' = exp = inf
    "divide_by_zero": (lambda x: ad.tensor([1.0, 1.0]) / x, [0.0, 1.0]),
    "rdiv_scalar": (lambda x: 1.0 / x, [0.0, 1.0]),
    "div_scalar_zero": (lambda x: x / 0.0, [1.0, 1.0]),      # 1/0 = inf
    "mul_by_inf": (lambda x: x * ad.tensor([np.inf, 1.0]), [1.0, 1.0]),
    "mul_scalar_inf": (lambda x: x * np.inf, [1.0, 1.0]),
    "mul_inf_operand": (lambda x: x * ad.tensor([2.0, 1.0]), [np.inf, 1.0]),
    "pow_half_at_zero": (lambda x: x ** 0.5, [0.0, 1.0]),
    "pow_neg_at_zero": (lambda x: x ** -2.0, [0.0, 1.0]),
    "pow_tensor_base": (lambda x: x ** ad.tensor([0.5, 2.0]), [0.0, 1.0]),
    "pow_tensor_exponent": (lambda y: ad.tensor([-2.0, 2.0]) ** y, [0.5, 1.0]),   # log(-2) = NaN
    "rpow_negative_base": (lambda y: (-2.0) ** y, [0.5, 1.0]),
    "sin_inf": (ad.sin, [np.inf, 1.0]),
    "tanh_nan": (ad.tanh, [np.nan, 1.0]),
    "sigmoid_nan": (ad.sigmoid, [np.nan, 1.0]),
    "abs_nan": (ad.abs, [np.nan, 1.0]),
    "relu_nan": (ad.relu, [np.nan, 1.0]),
    "maximum_nan": (lambda x: ad.maximum(x, ad.tensor([0.0, 0.0])), [np.nan, 1.0]),
    "max_nan": (lambda x: ad.max(x.reshape(2, 1), axis=1), [np.nan, 1.0]),
    "matmul_inf": (lambda x: ad.tensor([[np.inf, 0.0], [0.0, 1.0]]) @ x, [1.0, 1.0]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SINGULAR))
def test_zero_cotangent_contributes_exactly_zero(name, dtype):
    f, value = SINGULAR[name]
    x = leaf(value, dtype)
    y = f(x)
    # element 0 sees the singular derivative and gets cotangent 0; element 1 is ordinary
    g = np.zeros(y.shape, dtype)
    g.reshape(-1)[-1] = 1.0
    y.backward(grad=g)
    grad = x.grad.numpy()
    if name == "matmul_inf":
        # matmul sums products inside gemm (BLAS), where 0 * inf is NaN as IEEE says; the
        # NaN-safety rule is stated for elementwise VJPs (reference.zero_safe), so only the
        # ordinary column is asserted here
        assert grad[1] == 1.0
        return
    assert grad[0] == 0.0, grad


def test_nan_safety_in_a_where_like_composite():
    """where(x > 0, log(x), 0) written with a mask: the masked-out log(0) gives no NaN."""
    x = leaf([0.0, 1.0, 0.0, np.e])
    m = (x > 0).astype(float)
    y = (ad.log(x) * m).sum()        # log(0) * 0 is NaN in value; its gradient must not be
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 1.0, 0.0, 1 / np.e], rtol=1e-15)
